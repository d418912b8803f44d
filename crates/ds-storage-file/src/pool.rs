//! A bounded pool of open stream files.
//!
//! A million streams must not need a million descriptors: at most `max_open_files` stream
//! files stay open, the least recently used is closed when another is needed, and running out
//! of descriptors (`EMFILE`/`ENFILE`) closes pooled files and retries instead of failing the
//! request. Handles are reference counted, so a file evicted while a read or write is using it
//! stays open until that operation finishes; the pool's bound is therefore `max_open_files`
//! plus the operations in flight.

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
        while inner.files.len() > self.capacity {
            Self::evict_lru(&mut inner);
        }
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
                        for _ in 0..n {
                            Self::evict_lru(&mut inner);
                        }
                        n
                    };
                    if evicted == 0 {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
                other => return other,
            }
        }
    }

    fn evict_lru(inner: &mut PoolInner) {
        if let Some(oldest) = inner
            .files
            .iter()
            .min_by_key(|(_, (_, used))| *used)
            .map(|(id, _)| *id)
        {
            inner.files.remove(&oldest);
        }
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
