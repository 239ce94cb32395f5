//! Which files of the pool directory to delete (pure).
//!
//! The pool sweeps its directory when it starts (leftovers of a crashed
//! process) and when it stops. At those moments no creation is in flight, so
//! every temp file is a half-made overlay; a finished overlay survives only if
//! its base is still live (at start none is: the new pool has registered no
//! base yet, and it does not trust overlays it did not see being made).

use crate::naming::{parse_pool_file, BaseId, PoolFile};

/// Why a file is swept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SweepReason {
    /// A temp file: creation never finished.
    Partial,
    /// A finished overlay whose base is not live (retired or unknown).
    Retired,
}

/// Picks the files to delete among `names` (file names of the pool
/// directory); `is_live` says whether overlays of a base may be kept.
/// The lock file and foreign files are never picked.
pub fn sweep_plan<'a, I, F>(names: I, is_live: F) -> Vec<(&'a str, SweepReason)>
where
    I: IntoIterator<Item = &'a str>,
    F: Fn(&BaseId) -> bool,
{
    names
        .into_iter()
        .filter_map(|name| match parse_pool_file(name) {
            PoolFile::Temp { .. } => Some((name, SweepReason::Partial)),
            PoolFile::Ready { base, .. } if !is_live(&base) => Some((name, SweepReason::Retired)),
            PoolFile::Ready { .. } | PoolFile::Lock | PoolFile::Foreign => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::naming::{ready_name, temp_name, BaseStat};

    fn id(ino: u64) -> BaseId {
        BaseId::from_stat(&BaseStat {
            dev: 1,
            ino,
            size_bytes: 1,
            mtime_sec: 1,
            mtime_nsec: 1,
        })
    }

    #[test]
    fn at_start_every_overlay_and_temp_file_is_swept_but_nothing_else() {
        let (a, b) = (id(1), id(2));
        let names = [
            ready_name(&a, 1),
            temp_name(&a, 2),
            ready_name(&b, 3),
            ".lock".to_string(),
            "notes.txt".to_string(),
            "base.qcow2".to_string(),
        ];

        let plan = sweep_plan(names.iter().map(String::as_str), |_| false);

        assert_eq!(
            plan,
            vec![
                (names[0].as_str(), SweepReason::Retired),
                (names[1].as_str(), SweepReason::Partial),
                (names[2].as_str(), SweepReason::Retired),
            ]
        );
    }

    #[test]
    fn overlays_of_live_bases_are_kept_and_their_temp_files_are_not() {
        let (live, retired) = (id(1), id(2));
        let names = [
            ready_name(&live, 1),
            temp_name(&live, 2),
            ready_name(&retired, 3),
        ];

        let plan = sweep_plan(names.iter().map(String::as_str), |b| *b == live);

        assert_eq!(
            plan,
            vec![
                (names[1].as_str(), SweepReason::Partial),
                (names[2].as_str(), SweepReason::Retired),
            ]
        );
    }

    #[test]
    fn an_empty_directory_needs_no_sweep() {
        assert!(sweep_plan(std::iter::empty(), |_| false).is_empty());
    }
}
