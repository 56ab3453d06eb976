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
