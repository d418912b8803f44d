//! A scratch directory under the system temp dir, removed when dropped.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

/// Distinguishes directories made by this process within the same instant.
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A freshly created, uniquely named directory; deleted with its contents on drop.
pub(crate) struct TempDir {
    /// Absolute path of the directory.
    path: PathBuf,
}

impl TempDir {
    /// Creates `<temp>/xtask-<label>-<pid>-<nanos>-<n>`, retrying on the
    /// (unlikely) name collision.
    pub(crate) fn new(label: &str) -> Result<Self> {
        let base = std::env::temp_dir();
        let pid = std::process::id();
        for _ in 0..100 {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = base.join(format!("xtask-{label}-{pid}-{nanos}-{n}"));
            match fs::create_dir(&path) {
                Ok(()) => return Ok(Self { path }),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("creating temp dir {}", path.display()));
                }
            }
        }
        anyhow::bail!(
            "could not find a free temp dir name under {}",
            base.display()
        )
    }

    /// Path of the directory.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the directory now, reporting failure.
    pub(crate) fn remove(mut self) -> Result<()> {
        // Taking the path leaves an empty one, which tells drop there is nothing left to do.
        let path = std::mem::take(&mut self.path);
        fs::remove_dir_all(&path).with_context(|| format!("removing temp dir {}", path.display()))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            // Best effort: drop cannot report errors.
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TempDir;

    #[test]
    fn creates_distinct_dirs_and_removes_them() {
        let a = TempDir::new("test").expect("temp dir");
        let b = TempDir::new("test").expect("temp dir");
        assert_ne!(a.path(), b.path());
        assert!(a.path().is_dir());
        std::fs::write(a.path().join("file"), b"x").expect("write");
        let (pa, pb) = (a.path().to_path_buf(), b.path().to_path_buf());
        a.remove().expect("remove");
        drop(b);
        assert!(!pa.exists());
        assert!(!pb.exists());
    }
}
