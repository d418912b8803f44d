//! Data dirs of finished runs, removed when the bench ends rather than right after each run.
//!
//! On ext4 without a journal (the bench machines), the inode allocator skips inodes freed in
//! the last minute or so (`recently_deleted` in `find_inode_bit`): right after a run's
//! thousands of files are deleted, every file the next server creates costs 0.5 to 1 ms
//! instead of tens of microseconds (1,000 creates measured at 500 to 630 µs each on
//! 2026-11-25). Deleting each data dir as its run ends made the next server, whichever it was,
//! pay for the previous one's cleanup inside its timed window: a server that keeps a file
//! per stream spent the first second of `append-many` creating 1,000 of them. So data dirs
//! are kept until the end, up to [`KEEP_BYTES`] in all; past that the oldest go first (the
//! large ones are the read scenarios' few big files, whose removal frees few inodes).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

/// Most bytes of finished runs' data dirs kept until the end.
pub(crate) const KEEP_BYTES: u64 = 4 * 1024 * 1024 * 1024;

/// Finished runs' data dirs, oldest first.
pub(crate) struct Leftovers {
    dirs: VecDeque<(PathBuf, u64)>,
    bytes: u64,
    keep_bytes: u64,
}

impl Leftovers {
    /// Keeps up to `keep_bytes` of data dirs.
    pub(crate) fn new(keep_bytes: u64) -> Self {
        Leftovers {
            dirs: VecDeque::new(),
            bytes: 0,
            keep_bytes,
        }
    }

    /// Takes a finished run's data dir; removes the oldest kept ones while over the budget.
    pub(crate) fn keep(&mut self, dir: PathBuf) {
        let size = dir_bytes(&dir);
        self.dirs.push_back((dir, size));
        self.bytes += size;
        while self.bytes > self.keep_bytes {
            let Some((old, size)) = self.dirs.pop_front() else {
                break;
            };
            let _ = std::fs::remove_dir_all(&old);
            self.bytes -= size;
        }
    }

    /// Removes every kept data dir.
    pub(crate) fn clear(&mut self) {
        for (dir, _) in self.dirs.drain(..) {
            let _ = std::fs::remove_dir_all(&dir);
        }
        self.bytes = 0;
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        self.clear();
    }
}

/// Bytes of the regular files under `dir` (0 for what cannot be read).
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_dir(root: &Path, name: &str, bytes: usize) -> PathBuf {
        let dir = root.join(name).join("data");
        std::fs::create_dir_all(dir.join("streams")).expect("mkdir");
        std::fs::write(dir.join("streams").join("s"), vec![0u8; bytes]).expect("write");
        dir
    }

    #[test]
    fn data_dirs_are_kept_until_cleared_and_the_oldest_go_past_the_budget() {
        let root = std::env::temp_dir().join(format!("ds-bench-leftovers-{}", std::process::id()));
        let mut kept = Leftovers::new(250);
        let a = data_dir(&root, "a", 100);
        let b = data_dir(&root, "b", 100);
        let c = data_dir(&root, "c", 100);
        kept.keep(a.clone());
        kept.keep(b.clone());
        assert!(a.exists() && b.exists(), "within the budget both stay");
        kept.keep(c.clone());
        assert!(!a.exists(), "past the budget the oldest goes");
        assert!(b.exists() && c.exists());
        kept.clear();
        assert!(!b.exists() && !c.exists(), "clear removes the rest");
        let d = data_dir(&root, "d", 10);
        kept.keep(d.clone());
        drop(kept);
        assert!(!d.exists(), "dropping removes what is left");
        std::fs::remove_dir_all(&root).expect("clean up");
    }
}
