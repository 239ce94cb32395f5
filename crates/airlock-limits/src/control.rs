//! The files of one VM's group: making its directories, writing its
//! limits, and the error of a failed read, each naming the VM. The backends
//! (`v1`, `v2`) and the [`crate::VmGroup`] interface share them.

use std::io;
use std::path::Path;

use crate::cgroupfs::write_value;
use crate::LimitsError;

/// Makes a directory that may exist already (a tenant or `airlock/`).
pub(crate) fn make_dir(vm_id: &str, dir: &Path) -> Result<(), LimitsError> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(LimitsError::Create {
            vm_id: vm_id.to_owned(),
            path: dir.to_owned(),
            source,
        }),
    }
}

/// Makes a VM's group directory, which must not exist yet.
pub(crate) fn make_group_dir(vm_id: &str, dir: &Path) -> Result<(), LimitsError> {
    std::fs::create_dir(dir).map_err(|source| LimitsError::Create {
        vm_id: vm_id.to_owned(),
        path: dir.to_owned(),
        source,
    })
}

/// Writes a limit, with context on failure.
pub(crate) fn write_control(vm_id: &str, path: &Path, value: &str) -> Result<(), LimitsError> {
    write_value(path, value).map_err(|source| LimitsError::Write {
        vm_id: vm_id.to_owned(),
        path: path.to_owned(),
        value: value.to_owned(),
        source,
    })
}

/// The error of a failed read of a group file.
pub(crate) fn read_error(vm_id: &str, path: &Path, source: io::Error) -> LimitsError {
    LimitsError::Read {
        vm_id: vm_id.to_owned(),
        path: path.to_owned(),
        source,
    }
}
