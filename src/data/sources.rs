//! Which files a corpus is: `data.path`'s files, folders and glob patterns resolved to a
//! sorted list, each with its format (from its name) and the size and modification time that
//! key its tokenized shards.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    Text,
    Jsonl,
    JsonlGz,
    JsonlZst,
    Parquet,
}

impl Format {
    /// The format a file name says; any name that is not JSONL or Parquet is plain text.
    pub fn of(path: &Path) -> Self {
        let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
        if name.ends_with(".jsonl") || name.ends_with(".ndjson") {
            Self::Jsonl
        } else if name.ends_with(".jsonl.gz") || name.ends_with(".ndjson.gz") {
            Self::JsonlGz
        } else if name.ends_with(".jsonl.zst") || name.ends_with(".ndjson.zst") {
            Self::JsonlZst
        } else if name.ends_with(".parquet") {
            Self::Parquet
        } else {
            Self::Text
        }
    }

    /// Whether a folder's file with this name is part of the corpus (text needs .txt or .md).
    fn in_folder(path: &Path) -> bool {
        let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
        !name.starts_with('.') && (Self::of(path) != Self::Text || name.ends_with(".txt") || name.ends_with(".md"))
    }
}

/// One corpus file, as found when the corpus was resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    pub path: PathBuf,
    pub format: Format,
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: u128,
}

impl Source {
    fn stat(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path).with_context(|| format!("cannot read corpus file {}", path.display()))?;
        let mtime = meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok());
        let mtime_ns = mtime.map_or(0, |d| d.as_nanos());
        Ok(Self { path: path.to_path_buf(), format: Format::of(path), size: meta.len(), mtime_ns })
    }
}

/// Resolves `paths` (files, folders, glob patterns) in order; each folder's and pattern's
/// files sorted by name. `key` names the config key in errors. With `skip_unreadable`, a file
/// that cannot be read is left out (and named) rather than an error.
pub fn resolve(paths: &[PathBuf], key: &str, skip_unreadable: bool) -> Result<Vec<Source>> {
    let mut files = Vec::new();
    for path in paths {
        let shown = path.display();
        let text = path.to_string_lossy();
        if text.contains(['*', '?', '[']) {
            let pattern =
                glob::glob(&text).with_context(|| format!("`{key}` = {shown:?} is not a valid glob pattern"))?;
            let before = files.len();
            for entry in pattern {
                let entry = entry.with_context(|| format!("cannot read a match of `{key}` = {shown:?}"))?;
                if entry.is_file() {
                    files.push(entry);
                }
            }
            if files.len() == before {
                bail!("`{key}` = {shown:?} matches no file");
            }
        } else if path.is_dir() {
            let before = files.len();
            walk(path, &mut files)?;
            if files.len() == before {
                bail!("corpus folder {shown} (`{key}`) holds no .txt, .md, .jsonl(.gz/.zst) or .parquet file");
            }
        } else if path.is_file() {
            files.push(path.clone());
        } else if path.exists() {
            bail!("{shown} (`{key}`) is neither a file nor a folder: a corpus is read from regular files");
        } else {
            bail!("corpus file {shown} does not exist (set `{key}`)");
        }
    }
    let mut sources = Vec::new();
    for file in &files {
        match Source::stat(file) {
            Ok(source) => sources.push(source),
            Err(err) if skip_unreadable => {
                crate::console::say(format!("taper: skipping (`data.skip_unreadable`): {err:#}"))
            }
            Err(err) => return Err(err.context("set `data.skip_unreadable = true` to skip it")),
        }
    }
    if sources.is_empty() {
        bail!("no file of `{key}` can be read");
    }
    Ok(sources)
}

/// The corpus files under `dir`, recursively, in name order.
fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list corpus folder {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("cannot list corpus folder {}", dir.display()))?;
    entries.sort();
    for entry in entries {
        if entry.is_dir() {
            walk(&entry, files)?;
        } else if Format::in_folder(&entry) {
            files.push(entry);
        }
    }
    Ok(())
}

/// A fingerprint of the files as found: path, size and modification time of each, in order.
pub fn fingerprint(sources: &[Source]) -> String {
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    sources.iter().map(|s| format!("{}\0{}\0{}\n", canonical(&s.path).display(), s.size, s.mtime_ns)).collect()
}
