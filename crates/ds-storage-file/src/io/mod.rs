//! The I/O seam: every file operation of the backend goes through [`Fs`] and [`FsFile`].
//!
//! [`RealFs`] is the operating system. [`SimFs`] is an in-memory file system for tests that
//! models what power loss does: bytes written but not yet synced, and directory entries
//! created, renamed or removed but not yet synced, live in a volatile layer that a simulated
//! crash drops, keeps, or tears at a random byte. Handles opened before a crash fail every
//! operation afterwards, as the dead process's would.
//!
//! The seam is deliberately small: positional reads and writes (`pread`/`pwrite`), `fdatasync`,
//! truncation, and the few directory operations the backend needs.

mod real;
mod sim;

use std::any::Any;
use std::io;
use std::path::Path;
use std::sync::Arc;

pub use real::RealFs;
pub use sim::SimFs;

/// How [`Fs::open`] opens a file (always for reading and writing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// The file must exist.
    Existing,
    /// Create the file if missing, keep its content otherwise.
    Create,
    /// Create the file, or truncate it to zero length.
    Truncate,
}

/// A file system.
pub trait Fs: Send + Sync + 'static {
    /// Opens a file for reading and writing.
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn FsFile>>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Renames a file, replacing `to` atomically.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Creates a directory and its missing parents.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// The names of the entries of a directory.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    /// Makes the directory's entries (creations, renames, removals) durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// Takes an exclusive lock on `path` (created if missing) and writes this process's id
    /// into it. Fails with [`io::ErrorKind::WouldBlock`] naming the holder when another
    /// process holds it. The lock is held until the returned guard is dropped.
    fn lock(&self, path: &Path) -> io::Result<Box<dyn Any + Send + Sync>>;
}

/// An open file.
pub trait FsFile: Send + Sync {
    /// Reads at `pos` into `buf`; returns how many bytes were read (0 at the end).
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `pos`, extending the file as needed.
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()>;
    /// Makes the file's data (and its length) durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
    /// Truncates or extends the file.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// The file's current length.
    fn len(&self) -> io::Result<u64>;

    /// Extends a new file to `len` bytes ahead of the writes that will fill it, where that
    /// makes their syncs cheaper. On ext4 an `fdatasync` after an append that grows the file
    /// must also commit the new length through the journal; one after a write inside the
    /// file's length need not (a 512-byte write and `fdatasync` loop measured 8.0–8.5k syncs/s
    /// appending and 10.2–11.5k/s inside a preextended file). The extension is sparse (no
    /// blocks are allocated) and reads as zeros, which no record starts with. The default does
    /// nothing.
    fn reserve(&self, len: u64) -> io::Result<()> {
        let _ = len;
        Ok(())
    }

    /// Whether the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// The operating system's handle of this file, for reads answered with regions of it
    /// ([`ds_storage::FileRegion`]); `None` (the default) for a file that is not one.
    fn shared_file(&self) -> Option<Arc<std::fs::File>> {
        None
    }
}

/// Reads exactly `buf.len()` bytes at `pos`, failing with `UnexpectedEof` if the file is
/// shorter.
pub(crate) fn read_exact_at(file: &dyn FsFile, buf: &mut [u8], pos: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], pos + done as u64) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Whether an error means the process (or system) ran out of file descriptors.
pub(crate) fn is_fd_exhaustion(e: &io::Error) -> bool {
    // EMFILE (24) and ENFILE (23) have these numbers on Linux, the BSDs and macOS.
    cfg!(unix) && matches!(e.raw_os_error(), Some(23 | 24))
}
