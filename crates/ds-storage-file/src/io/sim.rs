//! An in-memory file system that simulates crashes and power loss.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{Fs, FsFile, OpenMode};

/// A simulated file system for crash tests.
///
/// Each file has a durable image and a list of operations (writes, truncations) made since its
/// last [`FsFile::sync_data`]; each directory has a list of entry operations (create, remove,
/// rename) made since its last [`Fs::sync_dir`]. [`SimFs::power_loss`] keeps only the durable
/// images plus a random selection of the unsynced operations, applied in order: each is kept,
/// dropped, or (for a write) torn after a random number of bytes. [`SimFs::kill`] models a
/// process crash instead: the kernel survives, so every completed write stays visible, though
/// what was not synced is still at the mercy of a later power loss.
///
/// A store runs against one "process" ([`SimFs::process`]); after a crash, every handle and
/// file opened by an earlier process fails with an error, as if that process were dead.
/// [`SimFs::crash_after`] (and [`SimFs::kill_after`]) arms a crash that fires just before the n-th mutating operation
/// (inside whatever the store is doing at that moment), which is how crash points land between
/// a WAL write and its fsync, halfway through a checkpoint, or during recovery.
///
/// Randomness comes from the seed given to [`SimFs::new`], so a failing case can be replayed.
/// Setting the environment variable `DS_SIM_TRACE` prints every mutating operation and crash
/// to stderr, which is the quickest way to see why a replayed seed fails.
#[derive(Clone)]
pub struct SimFs {
    state: Arc<Mutex<SimState>>,
}

impl std::fmt::Debug for SimFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimFs").finish_non_exhaustive()
    }
}

struct SimState {
    generation: u64,
    next_ino: u64,
    inodes: HashMap<u64, Inode>,
    files: BTreeMap<PathBuf, u64>,
    durable_files: BTreeMap<PathBuf, u64>,
    dirs: BTreeSet<PathBuf>,
    durable_dirs: BTreeSet<PathBuf>,
    ns_pending: Vec<NsOp>,
    locks: BTreeSet<PathBuf>,
    open_handles: usize,
    max_handles: Option<usize>,
    capacity: Option<u64>,
    /// Writes to files of this name fail with ENOSPC.
    refused_name: Option<std::ffi::OsString>,
    /// Creating a file or directory fails with ENOSPC (no room for an inode or entry).
    refuse_new_entries: bool,
    /// `sync_data` and `sync_dir` fail with this OS error.
    sync_error: Option<i32>,
    /// `sync_data` of files whose name ends with this takes (at least) this long.
    slow_syncs: Option<(String, std::time::Duration)>,
    /// `write_all_at` of files whose name ends with this takes (at least) this long.
    slow_writes: Option<(String, std::time::Duration)>,
    countdown: Option<(u64, bool)>,
    crashes: u64,
    rng: u64,
}

#[derive(Default)]
struct Inode {
    data: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<DataOp>,
}

enum DataOp {
    Write { pos: usize, data: Vec<u8> },
    SetLen(usize),
}

enum NsOp {
    AddFile {
        path: PathBuf,
        ino: u64,
    },
    RemoveFile {
        path: PathBuf,
    },
    Rename {
        from: PathBuf,
        to: PathBuf,
        ino: u64,
    },
    AddDir {
        path: PathBuf,
    },
}

impl NsOp {
    fn touches_dir(&self, dir: &Path) -> bool {
        let parent_is = |p: &Path| p.parent() == Some(dir);
        match self {
            NsOp::AddFile { path, .. } | NsOp::RemoveFile { path } | NsOp::AddDir { path } => {
                parent_is(path)
            }
            NsOp::Rename { from, to, .. } => parent_is(from) || parent_is(to),
        }
    }
}

fn apply_data_op(buf: &mut Vec<u8>, op: &DataOp, keep: Option<usize>) {
    match op {
        DataOp::Write { pos, data } => {
            let n = keep.unwrap_or(data.len()).min(data.len());
            if n == 0 {
                return;
            }
            if buf.len() < pos + n {
                buf.resize(pos + n, 0);
            }
            buf[*pos..pos + n].copy_from_slice(&data[..n]);
        }
        DataOp::SetLen(len) => buf.resize(*len, 0),
    }
}

/// Prints file system events when `DS_SIM_TRACE` is set (debugging crash tests).
fn trace(what: std::fmt::Arguments<'_>) {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *ON.get_or_init(|| std::env::var_os("DS_SIM_TRACE").is_some()) {
        eprintln!("sim: {what}");
    }
}

fn crashed() -> io::Error {
    io::Error::other("simulated crash: this process is dead")
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file or directory", path.display()),
    )
}

impl SimState {
    fn rand(&mut self) -> u64 {
        // xorshift64*: small, fast, and good enough to pick crash outcomes.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Called by every mutating operation of process `generation`: fails if that process is
    /// dead, and fires an armed crash.
    fn mutate(&mut self, generation: u64) -> io::Result<()> {
        if generation != self.generation {
            return Err(crashed());
        }
        match self.countdown {
            Some((0, kill)) => {
                self.countdown = None;
                if kill {
                    self.kill();
                } else {
                    self.power_loss();
                }
                Err(crashed())
            }
            Some((n, kill)) => {
                self.countdown = Some((n - 1, kill));
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn alive(&self, generation: u64) -> io::Result<()> {
        if generation == self.generation {
            Ok(())
        } else {
            Err(crashed())
        }
    }

    fn end_process(&mut self) {
        trace(format_args!("=== crash of process {}", self.generation));
        self.generation += 1;
        self.open_handles = 0;
        self.locks.clear();
        self.crashes += 1;
    }

    fn kill(&mut self) {
        // The process dies; the kernel keeps its page cache, so nothing written is lost, but
        // nothing unsynced becomes durable either: a later power loss can still drop it.
        self.end_process();
    }

    fn power_loss(&mut self) {
        self.end_process();
        let mut inos: Vec<u64> = self.inodes.keys().copied().collect();
        inos.sort_unstable();
        for ino in inos {
            let pending = std::mem::take(&mut self.inodes.get_mut(&ino).expect("listed").pending);
            let mut image = std::mem::take(&mut self.inodes.get_mut(&ino).expect("listed").durable);
            for op in &pending {
                match self.rand() % 3 {
                    0 => apply_data_op(&mut image, op, None),
                    1 => {}
                    _ => {
                        let keep = match op {
                            DataOp::Write { data, .. } => {
                                Some((self.rand() % (data.len() as u64 + 1)) as usize)
                            }
                            DataOp::SetLen(_) => None,
                        };
                        apply_data_op(&mut image, op, keep);
                    }
                }
            }
            let inode = self.inodes.get_mut(&ino).expect("listed");
            inode.data.clone_from(&image);
            inode.durable = image;
        }
        let pending = std::mem::take(&mut self.ns_pending);
        for op in pending {
            if self.rand().is_multiple_of(2) {
                self.apply_ns(op);
            }
        }
        // Entries below a directory that did not survive are unreachable.
        let dirs = self.durable_dirs.clone();
        let reachable = |p: &Path| p.ancestors().skip(1).all(|a| dirs.contains(a));
        self.durable_dirs.retain(|d| reachable(d));
        self.durable_files.retain(|p, _| reachable(p));
        self.files.clone_from(&self.durable_files);
        self.dirs.clone_from(&self.durable_dirs);
        let live: BTreeSet<u64> = self.files.values().copied().collect();
        self.inodes.retain(|ino, _| live.contains(ino));
    }

    fn apply_ns(&mut self, op: NsOp) {
        match op {
            NsOp::AddFile { path, ino } => {
                self.durable_files.insert(path, ino);
            }
            NsOp::RemoveFile { path } => {
                self.durable_files.remove(&path);
            }
            NsOp::Rename { from, to, ino } => {
                if self.durable_files.get(&from) == Some(&ino) {
                    self.durable_files.remove(&from);
                }
                self.durable_files.insert(to, ino);
            }
            NsOp::AddDir { path } => {
                self.durable_dirs.insert(path);
            }
        }
    }

    /// Bytes held by files that have a name.
    fn used(&self) -> u64 {
        self.files
            .values()
            .filter_map(|ino| self.inodes.get(ino))
            .map(|i| i.data.len() as u64)
            .sum()
    }

    fn check_parent(&self, path: &Path) -> io::Result<()> {
        match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() && !self.dirs.contains(dir) => {
                Err(not_found(dir))
            }
            _ => Ok(()),
        }
    }
}

impl SimFs {
    /// An empty file system whose crash outcomes follow `seed`.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        let mut dirs = BTreeSet::new();
        dirs.insert(PathBuf::from("/"));
        SimFs {
            state: Arc::new(Mutex::new(SimState {
                generation: 0,
                next_ino: 1,
                inodes: HashMap::new(),
                files: BTreeMap::new(),
                durable_files: BTreeMap::new(),
                durable_dirs: dirs.clone(),
                dirs,
                ns_pending: Vec::new(),
                locks: BTreeSet::new(),
                open_handles: 0,
                max_handles: None,
                capacity: None,
                refused_name: None,
                refuse_new_entries: false,
                sync_error: None,
                slow_syncs: None,
                slow_writes: None,
                countdown: None,
                crashes: 0,
                rng: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            })),
        }
    }

    fn lock_state(&self) -> MutexGuard<'_, SimState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A handle for a new process: a store opened on it works until the next crash.
    #[must_use]
    pub fn process(&self) -> Arc<dyn Fs> {
        let generation = self.lock_state().generation;
        Arc::new(SimProcess {
            state: Arc::clone(&self.state),
            generation,
        })
    }

    /// Simulates power loss now: unsynced data and directory entries are kept, dropped or torn
    /// at random, and every handle of the current process dies.
    pub fn power_loss(&self) {
        let mut st = self.lock_state();
        st.countdown = None;
        st.power_loss();
    }

    /// Simulates `kill -9` of the process: handles die; every completed write stays visible
    /// (still unsynced, as in the kernel's page cache).
    pub fn kill(&self) {
        let mut st = self.lock_state();
        st.countdown = None;
        st.kill();
    }

    /// Arms a power loss that fires just before the `ops`-th next mutating operation (0 = the
    /// very next one). Replaces any armed crash.
    pub fn crash_after(&self, ops: u64) {
        self.lock_state().countdown = Some((ops, false));
    }

    /// Like [`SimFs::crash_after`], but the crash is a process kill ([`SimFs::kill`]).
    pub fn kill_after(&self, ops: u64) {
        self.lock_state().countdown = Some((ops, true));
    }

    /// Disarms a crash armed with [`SimFs::crash_after`].
    pub fn disarm(&self) {
        self.lock_state().countdown = None;
    }

    /// How many crashes (armed, power losses and kills) have happened.
    #[must_use]
    pub fn crashes(&self) -> u64 {
        self.lock_state().crashes
    }

    /// Limits how many files may be open at once; opening more fails with `EMFILE`.
    pub fn set_max_open_files(&self, max: Option<usize>) {
        self.lock_state().max_handles = max;
    }

    /// Limits the bytes all named files may hold; a write past it writes what fits and fails
    /// with `ENOSPC`.
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.lock_state().capacity = bytes;
    }

    /// Makes every write to a file named `file_name` (any directory) fail with `ENOSPC`, as
    /// if the disk were full just when that file is written; `None` lifts it.
    pub fn refuse_writes_to(&self, file_name: Option<&str>) {
        self.lock_state().refused_name = file_name.map(std::ffi::OsString::from);
    }

    /// Makes creating a file or a directory fail with `ENOSPC` (the file system has no room
    /// for a new inode or directory entry); existing files can still be opened and written.
    pub fn refuse_new_entries(&self, refuse: bool) {
        self.lock_state().refuse_new_entries = refuse;
    }

    /// Makes every `sync_data` and `sync_dir` fail with the OS error `errno` (say `ENOSPC`,
    /// 28, as NFS or a thin-provisioned volume report a flush they had no room for) without
    /// making anything durable; `None` lifts it.
    pub fn fail_syncs(&self, errno: Option<i32>) {
        self.lock_state().sync_error = errno;
    }

    /// Makes `sync_data` of every file whose name ends with `suffix` (say `".dat"`, stream
    /// files) sleep `delay` first, without blocking other operations, as a slow device flush
    /// would; `None` lifts it.
    pub fn slow_syncs(&self, slow: Option<(&str, std::time::Duration)>) {
        self.lock_state().slow_syncs = slow.map(|(suffix, delay)| (suffix.to_owned(), delay));
    }

    /// Makes `write_all_at` of every file whose name ends with `suffix` sleep `delay` first,
    /// without blocking other operations, as writes to a busy device would; `None` lifts it.
    pub fn slow_writes(&self, slow: Option<(&str, std::time::Duration)>) {
        self.lock_state().slow_writes = slow.map(|(suffix, delay)| (suffix.to_owned(), delay));
    }

    /// Every file path currently visible, in order.
    #[must_use]
    pub fn files(&self) -> Vec<PathBuf> {
        self.lock_state().files.keys().cloned().collect()
    }

    /// The visible content of a file, if it exists.
    #[must_use]
    pub fn read_file(&self, path: &Path) -> Option<Vec<u8>> {
        let st = self.lock_state();
        let ino = st.files.get(path)?;
        st.inodes.get(ino).map(|i| i.data.clone())
    }

    /// Replaces the content of a file, durably (for tests that damage files by hand).
    pub fn write_file(&self, path: &Path, data: Vec<u8>) {
        let mut st = self.lock_state();
        if let Some(ino) = st.files.get(path).copied()
            && let Some(inode) = st.inodes.get_mut(&ino)
        {
            inode.durable.clone_from(&data);
            inode.data = data;
            inode.pending.clear();
        }
    }
}

/// One process's view of a [`SimFs`].
struct SimProcess {
    state: Arc<Mutex<SimState>>,
    generation: u64,
}

impl SimProcess {
    fn lock_state(&self) -> MutexGuard<'_, SimState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

struct SimFile {
    state: Arc<Mutex<SimState>>,
    generation: u64,
    ino: u64,
    /// The name it was opened by.
    name: Option<std::ffi::OsString>,
}

impl SimFile {
    fn lock_state(&self) -> MutexGuard<'_, SimState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The delay a `slow_*` setting puts on this file, if its name matches.
    fn delay(
        &self,
        setting: impl FnOnce(&SimState) -> Option<&(String, std::time::Duration)>,
    ) -> Option<std::time::Duration> {
        let st = self.lock_state();
        let (suffix, delay) = setting(&st)?;
        let name = self.name.as_ref()?.to_string_lossy();
        name.ends_with(suffix.as_str()).then_some(*delay)
    }
}

impl Drop for SimFile {
    fn drop(&mut self) {
        let mut st = self.lock_state();
        if st.generation == self.generation {
            st.open_handles = st.open_handles.saturating_sub(1);
        }
    }
}

struct SimLock {
    state: Arc<Mutex<SimState>>,
    generation: u64,
    path: PathBuf,
}

impl Drop for SimLock {
    fn drop(&mut self) {
        let mut st = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if st.generation == self.generation {
            st.locks.remove(&self.path);
        }
    }
}

impl Fs for SimProcess {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn FsFile>> {
        let mut st = self.lock_state();
        if mode == OpenMode::Existing {
            st.alive(self.generation)?;
        } else {
            st.mutate(self.generation)?;
        }
        st.check_parent(path)?;
        if st.max_handles.is_some_and(|max| st.open_handles >= max) {
            return Err(io::Error::from_raw_os_error(24));
        }
        let ino = match (st.files.get(path).copied(), mode) {
            (Some(ino), OpenMode::Truncate) => {
                let inode = st.inodes.get_mut(&ino).expect("named inodes exist");
                inode.data.clear();
                inode.pending.push(DataOp::SetLen(0));
                ino
            }
            (Some(ino), _) => ino,
            (None, OpenMode::Existing) => return Err(not_found(path)),
            (None, _) if st.refuse_new_entries => return Err(io::Error::from_raw_os_error(28)),
            (None, _) => {
                let ino = st.next_ino;
                st.next_ino += 1;
                st.inodes.insert(ino, Inode::default());
                st.files.insert(path.to_path_buf(), ino);
                st.ns_pending.push(NsOp::AddFile {
                    path: path.to_path_buf(),
                    ino,
                });
                ino
            }
        };
        trace(format_args!(
            "open {} {mode:?} -> ino {ino}",
            path.display()
        ));
        st.open_handles += 1;
        Ok(Arc::new(SimFile {
            state: Arc::clone(&self.state),
            generation: self.generation,
            ino,
            name: path.file_name().map(std::ffi::OsStr::to_os_string),
        }))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut st = self.lock_state();
        st.mutate(self.generation)?;
        if st.files.remove(path).is_none() {
            return Err(not_found(path));
        }
        trace(format_args!("unlink {}", path.display()));
        st.ns_pending.push(NsOp::RemoveFile {
            path: path.to_path_buf(),
        });
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.lock_state();
        st.mutate(self.generation)?;
        st.check_parent(to)?;
        let ino = st.files.remove(from).ok_or_else(|| not_found(from))?;
        trace(format_args!(
            "rename {} -> {}",
            from.display(),
            to.display()
        ));
        st.files.insert(to.to_path_buf(), ino);
        st.ns_pending.push(NsOp::Rename {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
            ino,
        });
        Ok(())
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut st = self.lock_state();
        st.alive(self.generation)?;
        let mut missing: Vec<PathBuf> = path
            .ancestors()
            .filter(|a| !a.as_os_str().is_empty() && !st.dirs.contains(*a))
            .map(Path::to_path_buf)
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        st.mutate(self.generation)?;
        if st.refuse_new_entries {
            return Err(io::Error::from_raw_os_error(28));
        }
        missing.reverse();
        for dir in missing {
            st.dirs.insert(dir.clone());
            st.ns_pending.push(NsOp::AddDir { path: dir });
        }
        Ok(())
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let st = self.lock_state();
        st.alive(self.generation)?;
        if !st.dirs.contains(path) {
            return Err(not_found(path));
        }
        let name = |p: &Path| {
            (p.parent() == Some(path))
                .then(|| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .flatten()
        };
        Ok(st
            .files
            .keys()
            .filter_map(|p| name(p))
            .chain(st.dirs.iter().filter_map(|p| name(p)))
            .collect())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut st = self.lock_state();
        st.mutate(self.generation)?;
        if !st.dirs.contains(path) {
            return Err(not_found(path));
        }
        if let Some(errno) = st.sync_error {
            return Err(io::Error::from_raw_os_error(errno));
        }
        trace(format_args!("sync dir {}", path.display()));
        let pending = std::mem::take(&mut st.ns_pending);
        let mut rest = Vec::new();
        for op in pending {
            if op.touches_dir(path) {
                st.apply_ns(op);
            } else {
                rest.push(op);
            }
        }
        st.ns_pending = rest;
        Ok(())
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn Any + Send + Sync>> {
        let mut st = self.lock_state();
        st.alive(self.generation)?;
        if !st.locks.insert(path.to_path_buf()) {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "data directory is locked by another process (pid {}, lock file {})",
                    std::process::id(),
                    path.display()
                ),
            ));
        }
        Ok(Box::new(SimLock {
            state: Arc::clone(&self.state),
            generation: self.generation,
            path: path.to_path_buf(),
        }))
    }
}

impl FsFile for SimFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        let st = self.lock_state();
        st.alive(self.generation)?;
        let data = &st.inodes.get(&self.ino).ok_or_else(crashed)?.data;
        let pos = usize::try_from(pos).unwrap_or(usize::MAX);
        if pos >= data.len() {
            return Ok(0);
        }
        let n = buf.len().min(data.len() - pos);
        buf[..n].copy_from_slice(&data[pos..pos + n]);
        Ok(n)
    }

    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        if let Some(delay) = self.delay(|st| st.slow_writes.as_ref()) {
            std::thread::sleep(delay);
        }
        let mut st = self.lock_state();
        st.mutate(self.generation)?;
        if st.refused_name.is_some() && st.refused_name == self.name {
            return Err(io::Error::from_raw_os_error(28));
        }
        if let Some(capacity) = st.capacity {
            let current = st.inodes.get(&self.ino).map_or(0, |i| i.data.len() as u64);
            let grows = (pos + buf.len() as u64).saturating_sub(current);
            let room = capacity.saturating_sub(st.used());
            if grows > room {
                // Like a real disk, write what fits, then fail: the caller must not leave the
                // torn prefix behind.
                let fits = (current + room).saturating_sub(pos).min(buf.len() as u64);
                if fits > 0 {
                    let inode = st.inodes.get_mut(&self.ino).ok_or_else(crashed)?;
                    let op = DataOp::Write {
                        pos: usize::try_from(pos).map_err(io::Error::other)?,
                        data: buf[..usize::try_from(fits).map_err(io::Error::other)?].to_vec(),
                    };
                    apply_data_op(&mut inode.data, &op, None);
                    inode.pending.push(op);
                }
                return Err(io::Error::from_raw_os_error(28));
            }
        }
        trace(format_args!(
            "write ino {} at {pos} len {}",
            self.ino,
            buf.len()
        ));
        let inode = st.inodes.get_mut(&self.ino).ok_or_else(crashed)?;
        let op = DataOp::Write {
            pos: usize::try_from(pos).map_err(io::Error::other)?,
            data: buf.to_vec(),
        };
        apply_data_op(&mut inode.data, &op, None);
        inode.pending.push(op);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let delay = self.delay(|st| st.slow_syncs.as_ref());
        if let Some(delay) = delay {
            // Like a device flush: other operations go on meanwhile.
            std::thread::sleep(delay);
        }
        let mut st = self.lock_state();
        st.mutate(self.generation)?;
        if let Some(errno) = st.sync_error {
            return Err(io::Error::from_raw_os_error(errno));
        }
        trace(format_args!("sync ino {}", self.ino));
        let inode = st.inodes.get_mut(&self.ino).ok_or_else(crashed)?;
        for op in std::mem::take(&mut inode.pending) {
            apply_data_op(&mut inode.durable, &op, None);
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut st = self.lock_state();
        st.mutate(self.generation)?;
        let inode = st.inodes.get_mut(&self.ino).ok_or_else(crashed)?;
        trace(format_args!("set_len ino {} to {len}", self.ino));
        let op = DataOp::SetLen(usize::try_from(len).map_err(io::Error::other)?);
        apply_data_op(&mut inode.data, &op, None);
        inode.pending.push(op);
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        let st = self.lock_state();
        st.alive(self.generation)?;
        Ok(st.inodes.get(&self.ino).ok_or_else(crashed)?.data.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synced_data_survives_power_loss_and_dead_handles_fail() {
        let sim = SimFs::new(1);
        let fs = sim.process();
        fs.create_dir_all(Path::new("/d")).expect("mkdir");
        let f = fs
            .open(Path::new("/d/f"), OpenMode::Create)
            .expect("create");
        f.write_all_at(b"durable", 0).expect("write");
        f.sync_data().expect("sync");
        fs.sync_dir(Path::new("/d")).expect("sync dir");
        fs.sync_dir(Path::new("/")).expect("sync root");
        f.write_all_at(b" and maybe not", 7).expect("write");
        sim.power_loss();
        assert!(f.read_at(&mut [0; 4], 0).is_err());
        let data = sim.read_file(Path::new("/d/f")).expect("file survives");
        assert!(data.starts_with(b"durable"));
        assert!(data.len() <= 21);
    }

    #[test]
    fn kill_keeps_every_completed_write() {
        let sim = SimFs::new(2);
        let fs = sim.process();
        let f = fs.open(Path::new("/f"), OpenMode::Create).expect("create");
        f.write_all_at(b"acked", 0).expect("write");
        sim.kill();
        assert_eq!(
            sim.read_file(Path::new("/f")).as_deref(),
            Some(&b"acked"[..])
        );
    }

    #[test]
    fn armed_crash_fires_inside_an_operation() {
        let sim = SimFs::new(3);
        let fs = sim.process();
        let f = fs.open(Path::new("/f"), OpenMode::Create).expect("create");
        sim.crash_after(1);
        f.write_all_at(b"a", 0).expect("first write");
        assert!(f.write_all_at(b"b", 1).is_err());
        assert_eq!(sim.crashes(), 1);
        assert!(
            sim.process()
                .open(Path::new("/g"), OpenMode::Create)
                .is_ok()
        );
    }
}
