//! A bounded pool of open stream files.
//!
//! A million streams must not need a million descriptors: at most `max_open_files` stream
//! files stay open, the least recently used is closed when another is needed, and running out
//! of descriptors (`EMFILE`/`ENFILE`) closes pooled files and retries instead of failing the
//! request. Eviction closes the oldest sixteenth of the pool at once (one pass over it, not one
//! per eviction), and the files are closed after the pool's lock is released. Handles are
//! reference counted, so a file evicted while a read or write is using it stays open until
//! that operation finishes; the pool's bound is therefore `max_open_files` plus the
//! operations in flight.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::io::{Fs, FsFile, OpenMode, is_fd_exhaustion};
use crate::layout;

/// How often opening a file is retried while descriptors are exhausted and nothing can be
/// evicted (other operations still hold their handles), with a short sleep between tries.
const EXHAUSTED_RETRIES: u32 = 200;

pub(crate) struct FilePool {
    fs: Arc<dyn Fs>,
    root: PathBuf,
    capacity: usize,
    inner: Mutex<PoolInner>,
}

struct PoolInner {
    files: HashMap<u64, (Arc<dyn FsFile>, u64)>,
    tick: u64,
}

impl FilePool {
    pub(crate) fn new(fs: Arc<dyn Fs>, root: PathBuf, capacity: usize) -> Self {
        FilePool {
            fs,
            root,
            capacity: capacity.max(1),
            inner: Mutex::new(PoolInner {
                files: HashMap::new(),
                tick: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, PoolInner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The open file of stream `id`, opening it (or, with `create`, creating it empty) if it is
    /// not pooled.
    pub(crate) fn get(&self, id: u64, mode: OpenMode) -> io::Result<Arc<dyn FsFile>> {
        if mode != OpenMode::Truncate {
            let mut inner = self.lock();
            inner.tick += 1;
            let tick = inner.tick;
            if let Some((file, used)) = inner.files.get_mut(&id) {
                *used = tick;
                return Ok(Arc::clone(file));
            }
        }
        let file = self.open(&layout::stream_file(&self.root, id), mode)?;
        let mut inner = self.lock();
        inner.tick += 1;
        let tick = inner.tick;
        if mode != OpenMode::Truncate
            && let Some((pooled, used)) = inner.files.get_mut(&id)
        {
            // Another thread opened it meanwhile; share theirs.
            *used = tick;
            return Ok(Arc::clone(pooled));
        }
        inner.files.insert(id, (Arc::clone(&file), tick));
        let over = inner.files.len().saturating_sub(self.capacity);
        let evicted = if over > 0 {
            Self::evict_oldest(&mut inner, over + self.capacity / 16)
        } else {
            Vec::new()
        };
        drop(inner);
        // Closed here, outside the lock.
        drop(evicted);
        Ok(file)
    }

    /// Opens any file, closing pooled files while descriptors are exhausted.
    pub(crate) fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn FsFile>> {
        self.retrying(|| self.fs.open(path, mode))
    }

    /// Syncs a directory (which takes a descriptor), like [`FilePool::open`].
    pub(crate) fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.retrying(|| self.fs.sync_dir(path))
    }

    /// Lists a directory (which takes a descriptor), like [`FilePool::open`].
    pub(crate) fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.retrying(|| self.fs.list_dir(path))
    }

    /// Runs `op`, closing pooled files and retrying while descriptors are exhausted.
    fn retrying<T>(&self, mut op: impl FnMut() -> io::Result<T>) -> io::Result<T> {
        let mut tries = 0;
        loop {
            match op() {
                Err(e) if is_fd_exhaustion(&e) && tries < EXHAUSTED_RETRIES => {
                    tries += 1;
                    let evicted = {
                        let mut inner = self.lock();
                        // Close a quarter of the pool at once, so a burst of opens does not
                        // evict one file per failed open.
                        let n = inner.files.len().div_ceil(4);
                        Self::evict_oldest(&mut inner, n)
                    };
                    let none = evicted.is_empty();
                    drop(evicted);
                    if none {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
                other => return other,
            }
        }
    }

    /// Takes the `n` least recently used files out of the pool (all of them if it holds no
    /// more) and returns them, so the caller closes them after releasing the lock.
    fn evict_oldest(inner: &mut PoolInner, n: usize) -> Vec<Arc<dyn FsFile>> {
        let mut by_age: Vec<(u64, u64)> = inner
            .files
            .iter()
            .map(|(id, (_, used))| (*used, *id))
            .collect();
        let n = n.min(by_age.len());
        if n == 0 {
            return Vec::new();
        }
        if n < by_age.len() {
            by_age.select_nth_unstable(n - 1);
        }
        by_age[..n]
            .iter()
            .filter_map(|(_, id)| inner.files.remove(id).map(|(file, _)| file))
            .collect()
    }

    /// Forgets the file of a stream (deleted, or its file replaced).
    pub(crate) fn remove(&self, id: u64) {
        self.lock().files.remove(&id);
    }

    /// How many files the pool holds open.
    pub(crate) fn len(&self) -> usize {
        self.lock().files.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::SimFs;

    /// A pool over a simulated disk holding the stream files of ids `0..n`.
    fn pool_with_files(capacity: usize, n: u64) -> FilePool {
        let sim = SimFs::new(1);
        let fs = sim.process();
        let root = PathBuf::from("/data");
        for id in 0..n {
            let path = layout::stream_file(&root, id);
            fs.create_dir_all(path.parent().expect("fan-out dir"))
                .expect("dir");
            fs.open(&path, OpenMode::Truncate).expect("create");
        }
        FilePool::new(fs, root, capacity)
    }

    #[test]
    fn eviction_closes_the_least_recently_used_files_in_one_pass() {
        let pool = pool_with_files(32, 200);
        let hot = pool.get(7, OpenMode::Existing).expect("hot file");
        let mut evictions = 0;
        for id in 0..200 {
            let before = pool.len();
            if id != 7 {
                pool.get(id, OpenMode::Existing).expect("open");
            }
            let after = pool.len();
            assert!(after <= 32, "{after} files pooled");
            if after < before {
                // 33 files, less the overflow and a sixteenth of the capacity (2).
                assert_eq!(after, 30, "one eviction pass takes three files");
                evictions += 1;
            }
            // The hot file is used between every two others, so it is never the oldest.
            let again = pool.get(7, OpenMode::Existing).expect("hot file");
            assert!(
                Arc::ptr_eq(&hot, &again),
                "the hot file was evicted at {id}"
            );
        }
        assert!(evictions > 50, "{evictions} eviction passes");
        // The newest files stay pooled; the oldest went first.
        let inner = pool.lock();
        assert!(inner.files.contains_key(&199));
        assert!(inner.files.contains_key(&198));
        assert!(!inner.files.contains_key(&0));
        assert!(!inner.files.contains_key(&100));
    }

    #[test]
    fn eviction_takes_at_most_what_the_pool_holds() {
        let pool = pool_with_files(4, 3);
        for id in 0..3 {
            pool.get(id, OpenMode::Existing).expect("open");
        }
        let mut inner = pool.lock();
        assert_eq!(FilePool::evict_oldest(&mut inner, 10).len(), 3);
        assert!(inner.files.is_empty());
        assert!(FilePool::evict_oldest(&mut inner, 1).is_empty());
    }
}
