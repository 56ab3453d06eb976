//! Crash-safe file writes: a kill at any moment leaves either the old file or the new one.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

/// Writes `bytes` to `path.tmp`, fsyncs it, renames it over `path`, and fsyncs the directory.
/// A failed write (a full disk) removes `path.tmp` and leaves `path` as it was.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    let written =
        File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display())).and_then(|mut file| {
            file.write_all(bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
            Ok(file.sync_all()?)
        });
    if let Err(err) = written {
        let _ = fs::remove_file(&tmp);
        return Err(err);
    }
    fs::rename(&tmp, path).with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
    sync_dir(path.parent())
}

pub fn tmp_path(path: &Path) -> std::path::PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

pub fn sync_file(path: &Path) -> Result<()> {
    File::open(path).and_then(|f| f.sync_all()).with_context(|| format!("cannot fsync {}", path.display()))
}

pub fn sync_dir(dir: Option<&Path>) -> Result<()> {
    let dir = match dir {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // Directories cannot be fsynced on every platform; a failure here loses no data.
    if let Ok(handle) = File::open(dir) {
        let _ = handle.sync_all();
    }
    Ok(())
}

/// The file in a directory whose lock says a writer holds the directory.
pub const LOCK_FILE: &str = ".taper-lock";

/// One writer's hold on a directory (a run being trained, an export being written): an
/// advisory `flock` on `<dir>/.taper-lock`, held until the value is dropped or the process
/// ends, however it ends (the kernel releases a killed process's locks: a `kill -9` leaves no
/// stale lock). The file says which process holds it.
pub struct DirLock {
    _file: File,
    /// The lock file, removed when the hold ends (a directory that is not a run's, an export's,
    /// is left as the writer made it).
    remove: Option<std::path::PathBuf>,
}

impl DirLock {
    /// This hold, its lock file removed when it ends.
    pub fn removed_at_end(mut self, dir: &Path) -> Self {
        self.remove = Some(dir.join(LOCK_FILE));
        self
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        if let Some(path) = &self.remove {
            let _ = fs::remove_file(path);
        }
    }
}

/// Takes `dir` (created if needed) for this process to write `what` into; another writer
/// already there is an error naming its pid. Readers take no lock.
pub fn lock_dir(dir: &Path, what: &str) -> Result<DirLock> {
    use std::io::{Read, Seek};
    use std::os::unix::io::AsRawFd;
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(LOCK_FILE);
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock on a descriptor this function owns; LOCK_NB makes it return at once.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(err).with_context(|| format!("cannot lock {}", path.display()));
        }
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let holder = holder.trim();
        let holder = if holder.is_empty() { "another process".to_string() } else { format!("pid {holder}") };
        anyhow::bail!(
            "{} is in use: taper ({holder}) is writing it now; a second {what} there would interleave with it. Wait \
             for that one to end, or choose another directory (`--set checkpoint.dir=...`, `--out ...`)",
            dir.display()
        );
    }
    file.set_len(0)?;
    file.rewind()?;
    write!(file, "{}", std::process::id())?;
    Ok(DirLock { _file: file, remove: None })
}
