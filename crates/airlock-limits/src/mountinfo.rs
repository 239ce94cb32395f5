//! Parsers for `/proc/self/mountinfo` (cgroup mounts) and
//! `/proc/self/cgroup` (our own groups). Pure: they take text.

use std::path::PathBuf;

/// cgroup v1 controller names we recognise in mount options; anything else
/// there (`rw`, `xattr`, `name=systemd`, `release_agent=...`) is not a
/// controller.
const V1_CONTROLLERS: &[&str] = &[
    "blkio",
    "cpu",
    "cpuacct",
    "cpuset",
    "devices",
    "freezer",
    "hugetlb",
    "memory",
    "misc",
    "net_cls",
    "net_prio",
    "perf_event",
    "pids",
    "rdma",
];

/// Which cgroup version a mount is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupVersion {
    /// A v1 hierarchy with these controllers (possibly none, e.g.
    /// `name=systemd`).
    V1 {
        /// Controllers bound to this hierarchy, e.g. `["cpu", "cpuacct"]`.
        controllers: Vec<String>,
    },
    /// The v2 unified hierarchy (its controllers are listed in
    /// `cgroup.controllers`, not in the mount).
    V2,
}

/// One cgroup filesystem mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMount {
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// Which path of the hierarchy the mount point shows (`/` unless it is a
    /// bind mount or a cgroup namespace).
    pub root: String,
    /// v1 (with controllers) or v2.
    pub version: CgroupVersion,
}

impl CgroupMount {
    /// Whether this is a v1 hierarchy carrying `controller`.
    pub fn has_v1_controller(&self, controller: &str) -> bool {
        matches!(&self.version, CgroupVersion::V1 { controllers } if controllers.iter().any(|c| c == controller))
    }

    /// Directory of a hierarchy path (as in `/proc/self/cgroup`) below this
    /// mount, or `None` if the path is outside what the mount shows.
    pub fn dir_of(&self, hierarchy_path: &str) -> Option<PathBuf> {
        let root = self.root.trim_end_matches('/');
        let rest = hierarchy_path.strip_prefix(root)?;
        if !(rest.is_empty() || rest.starts_with('/')) {
            return None;
        }
        let rest = rest.trim_start_matches('/');
        Some(if rest.is_empty() {
            self.mount_point.clone()
        } else {
            self.mount_point.join(rest)
        })
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let v = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup mounts listed in a `/proc/self/mountinfo` text, in order.
/// Lines that are not cgroup mounts or are malformed are skipped.
pub fn parse_cgroup_mounts(mountinfo: &str) -> Vec<CgroupMount> {
    mountinfo.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<CgroupMount> {
    let (left, right) = line.split_once(" - ")?;
    let left: Vec<&str> = left.split(' ').collect();
    let mut right = right.split(' ');
    let fstype = right.next()?;
    let _source = right.next()?;
    let super_opts = right.next().unwrap_or("");
    let root = unescape(left.get(3)?);
    let mount_point = PathBuf::from(unescape(left.get(4)?));
    let version = match fstype {
        "cgroup2" => CgroupVersion::V2,
        "cgroup" => CgroupVersion::V1 {
            controllers: super_opts
                .split(',')
                .filter(|o| V1_CONTROLLERS.contains(o))
                .map(str::to_owned)
                .collect(),
        },
        _ => return None,
    };
    Some(CgroupMount {
        mount_point,
        root,
        version,
    })
}

/// One line of `/proc/self/cgroup`: `id:controllers:path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelfCgroup {
    /// Controllers of the hierarchy (empty for v2 and named hierarchies).
    pub controllers: Vec<String>,
    /// Whether this is the v2 line (`0::/path`).
    pub unified: bool,
    /// Our group's path inside that hierarchy.
    pub path: String,
}

/// Parses `/proc/self/cgroup`; malformed lines are skipped.
pub fn parse_self_cgroup(text: &str) -> Vec<SelfCgroup> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let id = parts.next()?;
            let ctrls = parts.next()?;
            let path = parts.next()?;
            if !path.starts_with('/') {
                return None;
            }
            Some(SelfCgroup {
                controllers: ctrls
                    .split(',')
                    .filter(|c| !c.is_empty() && !c.contains('='))
                    .map(str::to_owned)
                    .collect(),
                unified: id == "0" && ctrls.is_empty(),
                path: path.to_owned(),
            })
        })
        .collect()
}

/// Our path in the v2 hierarchy, if `/proc/self/cgroup` has a `0::` line.
pub fn own_v2_path(entries: &[SelfCgroup]) -> Option<&str> {
    entries.iter().find(|e| e.unified).map(|e| e.path.as_str())
}

/// Our path in the v1 hierarchy carrying `controller`.
pub fn own_v1_path<'a>(entries: &'a [SelfCgroup], controller: &str) -> Option<&'a str> {
    entries
        .iter()
        .find(|e| e.controllers.iter().any(|c| c == controller))
        .map(|e| e.path.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The layout of the development machine: v1 controllers each in their
    /// own hierarchy plus a controller-less v2 mount.
    pub(crate) const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn finds_v1_hierarchies_and_the_v2_mount() {
        let mounts = parse_cgroup_mounts(HYBRID);
        assert_eq!(mounts.len(), 7, "tmpfs is not a cgroup mount");
        assert!(mounts[0].has_v1_controller("cpu"));
        assert!(!mounts[0].has_v1_controller("cpuacct"));
        let systemd = &mounts[5];
        assert_eq!(
            systemd.version,
            CgroupVersion::V1 {
                controllers: vec![]
            }
        );
        assert_eq!(mounts[6].version, CgroupVersion::V2);
        assert_eq!(
            mounts[6].mount_point,
            PathBuf::from("/sys/fs/cgroup/unified")
        );
    }

    #[test]
    fn reads_comounted_controllers_and_optional_fields() {
        let text = "25 20 0:22 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:9 master:2 - cgroup cgroup rw,cpu,cpuacct\n";
        let m = &parse_cgroup_mounts(text)[0];
        assert_eq!(m.mount_point, PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));
        assert!(m.has_v1_controller("cpu") && m.has_v1_controller("cpuacct"));
    }

    #[test]
    fn unescapes_spaces_in_mount_points() {
        let text = "1 0 0:1 / /tmp/a\\040b rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_cgroup_mounts(text)[0].mount_point,
            PathBuf::from("/tmp/a b")
        );
    }

    #[test]
    fn maps_hierarchy_paths_through_the_mount_root() {
        let m = CgroupMount {
            mount_point: "/sys/fs/cgroup".into(),
            root: "/user.slice".into(),
            version: CgroupVersion::V2,
        };
        assert_eq!(
            m.dir_of("/user.slice/a.scope"),
            Some(PathBuf::from("/sys/fs/cgroup/a.scope"))
        );
        assert_eq!(
            m.dir_of("/user.slice"),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(m.dir_of("/user.slicex"), None);
        assert_eq!(m.dir_of("/system.slice"), None);
        let rooted = CgroupMount {
            root: "/".into(),
            ..m
        };
        assert_eq!(rooted.dir_of("/"), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(
            rooted.dir_of("/x/y"),
            Some(PathBuf::from("/sys/fs/cgroup/x/y"))
        );
    }

    #[test]
    fn parses_self_cgroup_lines() {
        let text =
            "9:name=systemd:/\n4:memory:/a/b\n2:cpu,cpuacct:/\n0::/user.slice/x.scope\nbogus\n";
        let e = parse_self_cgroup(text);
        assert_eq!(e.len(), 4);
        assert_eq!(own_v2_path(&e), Some("/user.slice/x.scope"));
        assert_eq!(own_v1_path(&e, "memory"), Some("/a/b"));
        assert_eq!(own_v1_path(&e, "cpuacct"), Some("/"));
        assert_eq!(own_v1_path(&e, "pids"), None);
        assert!(e[0].controllers.is_empty());
    }

    proptest! {
        #[test]
        fn parsers_never_panic(text in "\\PC{0,400}") {
            let _ = parse_cgroup_mounts(&text);
            let _ = parse_self_cgroup(&text);
        }

        #[test]
        fn unescape_keeps_plain_text(s in "[a-zA-Z0-9/_.,-]{0,64}") {
            prop_assert_eq!(unescape(&s), s);
        }
    }
}
