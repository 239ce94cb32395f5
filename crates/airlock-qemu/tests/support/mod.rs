//! Test support: a tiny x86 guest "kernel" and QEMU helpers.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};

/// Physical load address of the stub.
const LOAD_ADDR: u32 = 0x0010_0000;

/// A minimal 32-bit ELF that QEMU boots through the PVH entry point
/// (`XEN_ELFNOTE_PHYS32_ENTRY`): it writes `message` to the 8250 UART at
/// 0x3f8, then triple-faults, which with `-no-reboot` ends QEMU with status
/// 0. It lets real-QEMU tests run in about 50 ms without a guest image.
pub fn pvh_stub_kernel(message: &str) -> Vec<u8> {
    const EHDR: u32 = 52;
    const PHDR: u32 = 32;
    let note_off = EHDR + 2 * PHDR;
    let note_len = 20;
    let code_off = note_off + note_len;
    let entry = LOAD_ADDR + code_off;
    let idt_addr = entry + 25;
    let msg_addr = entry + 31;

    let mut code = Vec::new();
    code.extend_from_slice(&[0x66, 0xba, 0xf8, 0x03]); // mov dx, 0x3f8
    code.push(0xbe); // mov esi, msg
    code.extend_from_slice(&msg_addr.to_le_bytes());
    code.push(0xac); // lodsb
    code.extend_from_slice(&[0x84, 0xc0]); // test al, al
    code.extend_from_slice(&[0x74, 0x03]); // je +3 (to lidt)
    code.push(0xee); // out dx, al
    code.extend_from_slice(&[0xeb, 0xf8]); // jmp lodsb
    code.extend_from_slice(&[0x0f, 0x01, 0x1d]); // lidt [idt]
    code.extend_from_slice(&idt_addr.to_le_bytes());
    code.push(0xcc); // int3 with an empty IDT: triple fault
    assert_eq!(code.len(), 25);
    code.extend_from_slice(&[0; 6]); // the empty IDT descriptor
    code.extend_from_slice(message.as_bytes());
    code.push(0);

    let file_len = code_off + code.len() as u32;
    let mut elf = Vec::new();
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    for half in [2u16, 3] {
        elf.extend_from_slice(&half.to_le_bytes()); // ET_EXEC, EM_386
    }
    for word in [1u32, entry, EHDR, 0, 0] {
        elf.extend_from_slice(&word.to_le_bytes()); // version, entry, phoff, shoff, flags
    }
    for half in [EHDR as u16, PHDR as u16, 2, 40, 0, 0] {
        elf.extend_from_slice(&half.to_le_bytes());
    }
    // PT_LOAD: the whole file at LOAD_ADDR, read + execute.
    for word in [1u32, 0, LOAD_ADDR, LOAD_ADDR, file_len, file_len, 5, 0x1000] {
        elf.extend_from_slice(&word.to_le_bytes());
    }
    // PT_NOTE: the Xen note with the PVH entry point.
    let note_addr = LOAD_ADDR + note_off;
    for word in [
        4u32, note_off, note_addr, note_addr, note_len, note_len, 4, 4,
    ] {
        elf.extend_from_slice(&word.to_le_bytes());
    }
    for word in [4u32, 4, 18] {
        elf.extend_from_slice(&word.to_le_bytes()); // namesz, descsz, XEN_ELFNOTE_PHYS32_ENTRY
    }
    elf.extend_from_slice(b"Xen\0");
    elf.extend_from_slice(&entry.to_le_bytes());
    assert_eq!(elf.len() as u32, code_off);
    elf.extend_from_slice(&code);
    elf
}

/// Writes the stub kernel and a dummy initramfs into `dir`.
pub fn write_stub_images(dir: &Path, message: &str) -> airlock_qemu::BootImages {
    let kernel = dir.join("stub-kernel.elf");
    let initramfs = dir.join("stub-initramfs.bin");
    std::fs::write(&kernel, pvh_stub_kernel(message)).unwrap();
    std::fs::write(&initramfs, b"not a cpio: the stub never reads it").unwrap();
    airlock_qemu::BootImages { kernel, initramfs }
}

/// Whether real-QEMU tests are switched off (`AIRLOCK_SKIP_QEMU_TESTS=1`).
pub fn qemu_tests_skipped() -> bool {
    let skip = std::env::var_os("AIRLOCK_SKIP_QEMU_TESTS").is_some_and(|v| v == "1");
    if skip {
        eprintln!("AIRLOCK_SKIP_QEMU_TESTS=1: skipping a real-QEMU test");
    }
    skip
}

/// `qemu-img` next to the QEMU binary or on PATH.
pub fn qemu_img(qemu: &Path) -> Option<PathBuf> {
    let sibling = qemu.with_file_name("qemu-img");
    if sibling.is_file() {
        return Some(sibling);
    }
    airlock_sys_util::find_executable(&std::env::var_os("PATH")?, "qemu-img")
}
