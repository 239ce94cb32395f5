//! Choosing the root disk among the block devices by virtio serial.

/// A block device and the content of its `/sys/block/<name>/serial`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSerial {
    /// The device name, e.g. `vda`.
    pub name: String,
    /// The raw serial as read from sysfs (may end with a newline).
    pub serial: String,
}

impl DiskSerial {
    /// A disk named `name` whose sysfs serial reads `serial`.
    pub fn new(name: impl Into<String>, serial: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            serial: serial.into(),
        }
    }
}

/// The name of the disk whose serial is exactly `wanted` (surrounding
/// whitespace and NUL padding ignored). With several matches the first by
/// name wins, so the choice does not depend on directory order.
pub fn find_root_disk<'a>(disks: &'a [DiskSerial], wanted: &str) -> Option<&'a str> {
    disks
        .iter()
        .filter(|d| clean_serial(&d.serial) == wanted)
        .map(|d| d.name.as_str())
        .min()
}

/// A serial with whitespace and NUL padding removed.
pub(crate) fn clean_serial(raw: &str) -> &str {
    raw.trim_matches(|c: char| c.is_whitespace() || c == '\0')
}

/// A short `name=serial` list of the disks seen, for error messages.
pub fn describe_disks(disks: &[DiskSerial]) -> String {
    if disks.is_empty() {
        return "no block devices".to_owned();
    }
    disks
        .iter()
        .map(|d| format!("{}={:?}", d.name, clean_serial(&d.serial)))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_protocol::abi::ROOT_SERIAL;
    use proptest::prelude::*;

    #[test]
    fn finds_the_disk_with_the_root_serial() {
        let disks = [
            DiskSerial::new("vda", "scratch\n"),
            DiskSerial::new("vdb", "airlock-root\n"),
        ];
        assert_eq!(find_root_disk(&disks, ROOT_SERIAL), Some("vdb"));
    }

    #[test]
    fn ignores_nul_padding() {
        let disks = [DiskSerial::new("vda", "airlock-root\0\0\0")];
        assert_eq!(find_root_disk(&disks, ROOT_SERIAL), Some("vda"));
    }

    #[test]
    fn prefix_is_not_a_match() {
        let disks = [
            DiskSerial::new("vda", "airlock-root-old"),
            DiskSerial::new("vdb", "airlock"),
        ];
        assert_eq!(find_root_disk(&disks, ROOT_SERIAL), None);
    }

    #[test]
    fn no_disks_no_match() {
        assert_eq!(find_root_disk(&[], ROOT_SERIAL), None);
    }

    #[test]
    fn several_matches_pick_the_first_name() {
        let disks = [
            DiskSerial::new("vdc", "airlock-root"),
            DiskSerial::new("vdb", "airlock-root"),
        ];
        assert_eq!(find_root_disk(&disks, ROOT_SERIAL), Some("vdb"));
    }

    #[test]
    fn describes_seen_disks() {
        let disks = [DiskSerial::new("vda", "x\n"), DiskSerial::new("vdb", "")];
        assert_eq!(describe_disks(&disks), r#"vda="x", vdb="""#);
        assert_eq!(describe_disks(&[]), "no block devices");
    }

    proptest! {
        #[test]
        fn a_match_always_has_the_wanted_serial(serials in proptest::collection::vec(".{0,16}", 0..6)) {
            let disks: Vec<_> = serials
                .iter()
                .enumerate()
                .map(|(i, s)| DiskSerial::new(format!("vd{i}"), s.clone()))
                .collect();
            if let Some(name) = find_root_disk(&disks, ROOT_SERIAL) {
                let disk = disks.iter().find(|d| d.name == name).unwrap();
                prop_assert_eq!(clean_serial(&disk.serial), ROOT_SERIAL);
            }
        }
    }
}
