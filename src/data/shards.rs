//! A tokenized corpus on disk: token ids (u16 when the vocabulary fits, else u32,
//! little-endian) in fixed-size shard files, and `index.json` saying which ranges of them are
//! the train and the val split. A set is written into a temporary folder and renamed into
//! place whole, so a kill leaves either no set or a complete one; it is read through memory
//! maps, so a corpus of any size costs only the pages a batch touches.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use memmap2::Mmap;
use serde::{Deserialize, Serialize};

use super::sources::Source;

pub const INDEX: &str = "index.json";
const VERSION: u32 = 1;

/// A contiguous run of ids: `len` ids of shard `shard` from id `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    pub shard: usize,
    pub start: usize,
    pub len: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardFile {
    pub file: String,
    pub tokens: usize,
}

/// What `index.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardIndex {
    pub version: u32,
    /// Bytes per id: 2 or 4.
    pub width: usize,
    /// Hash of the tokenizer's JSON, hex.
    pub tokenizer: String,
    /// The files tokenized, as found (size, modification time), and the val corpus's.
    pub sources: Vec<Source>,
    pub val_sources: Vec<Source>,
    /// How the split was made: "tokens" (one document: its last val_fraction), "documents"
    /// (each document drawn into one split), or "val-path".
    pub split: String,
    pub documents: usize,
    pub train_documents: usize,
    /// The ids put between documents.
    pub separator: Vec<u32>,
    pub shards: Vec<ShardFile>,
    pub train: Vec<Range>,
    pub val: Vec<Range>,
}

/// Writes ids into shard files of `shard_tokens` ids each, in a folder being built.
pub struct ShardWriter {
    dir: PathBuf,
    prefix: &'static str,
    width: usize,
    shard_tokens: usize,
    out: Option<BufWriter<File>>,
    in_shard: usize,
    pub shards: Vec<ShardFile>,
}

impl ShardWriter {
    pub fn new(dir: &Path, prefix: &'static str, width: usize, shard_tokens: usize) -> Self {
        Self { dir: dir.to_path_buf(), prefix, width, shard_tokens, out: None, in_shard: 0, shards: Vec::new() }
    }

    pub fn total(&self) -> usize {
        self.shards.iter().map(|s| s.tokens).sum()
    }

    pub fn push(&mut self, ids: &[u32]) -> Result<()> {
        let mut rest = ids;
        while !rest.is_empty() {
            if self.out.is_none() || self.in_shard == self.shard_tokens {
                self.open_next()?;
            }
            let take = rest.len().min(self.shard_tokens - self.in_shard);
            let (now, later) = rest.split_at(take);
            let (Some(out), Some(shard)) = (self.out.as_mut(), self.shards.last_mut()) else {
                bail!("a shard writer without an open shard");
            };
            let mut bytes = Vec::with_capacity(take * self.width);
            for &id in now {
                match self.width {
                    2 => bytes.extend_from_slice(&(id as u16).to_le_bytes()),
                    _ => bytes.extend_from_slice(&id.to_le_bytes()),
                }
            }
            out.write_all(&bytes).context("cannot write a shard file (is the disk full?)")?;
            self.in_shard += take;
            shard.tokens += take;
            rest = later;
        }
        Ok(())
    }

    fn open_next(&mut self) -> Result<()> {
        self.close()?;
        let file = format!("{}-{:05}.bin", self.prefix, self.shards.len());
        let path = self.dir.join(&file);
        let handle = File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        self.out = Some(BufWriter::with_capacity(1 << 20, handle));
        self.in_shard = 0;
        self.shards.push(ShardFile { file, tokens: 0 });
        Ok(())
    }

    /// Flushes and fsyncs the open shard.
    pub fn close(&mut self) -> Result<()> {
        if let Some(out) = self.out.take() {
            let file = out.into_inner().map_err(|e| e.into_error()).context("cannot write a shard file")?;
            file.sync_all().context("cannot fsync a shard file")?;
        }
        Ok(())
    }
}

/// Where ids live: in memory (a corpus tokenized on the spot), or in a mapped shard.
#[derive(Clone)]
enum Storage {
    Memory(Arc<Vec<u32>>),
    Mapped { map: Arc<Mmap>, width: usize },
}

impl Storage {
    fn copy(&self, start: usize, len: usize, out: &mut Vec<u32>) {
        match self {
            Self::Memory(ids) => out.extend_from_slice(&ids[start..start + len]),
            Self::Mapped { map, width } => {
                let (from, to) = (width * start, width * (start + len));
                let bytes = &map[from..to];
                match width {
                    2 => out.extend(bytes.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]]) as u32)),
                    _ => out.extend(bytes.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
                }
            }
        }
    }
}

/// Drops the process's mapping of `len` bytes of `map` from `offset` (the pages stay in the
/// page cache, and the next read faults them back in).
fn release(map: &Mmap, offset: usize, len: usize) {
    // SAFETY: the map is a read-only, shared file mapping and no slice of it is borrowed
    // (TokenStream::copy copies out): MADV_DONTNEED only drops page-table entries. A failure
    // only leaves the pages mapped.
    let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len) };
}

/// One split's ids as one sequence, over any number of ranges of storage.
#[derive(Clone)]
pub struct TokenStream {
    parts: Vec<(Storage, usize, usize)>,
    /// Where each part starts in the sequence, and the sequence's length last.
    starts: Vec<usize>,
}

impl TokenStream {
    pub fn from_vec(ids: Vec<u32>) -> Self {
        let len = ids.len();
        Self { parts: vec![(Storage::Memory(Arc::new(ids)), 0, len)], starts: vec![0, len] }
    }

    fn from_parts(parts: Vec<(Storage, usize, usize)>) -> Self {
        let mut starts = vec![0];
        for (_, _, len) in &parts {
            starts.push(starts.last().copied().unwrap_or(0) + len);
        }
        Self { parts, starts }
    }

    pub fn len(&self) -> usize {
        self.starts.last().copied().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends ids `start..start + len` to `out`.
    pub fn copy(&self, start: usize, len: usize, out: &mut Vec<u32>) {
        let (mut at, end) = (start, start + len);
        let mut part = self.starts.partition_point(|&s| s <= at) - 1;
        while at < end {
            let (storage, offset, part_len) = &self.parts[part];
            let within = at - self.starts[part];
            let take = (end - at).min(part_len - within);
            storage.copy(offset + within, take, out);
            at += take;
            part += 1;
        }
    }

    /// Unmaps every page read so far. Random blocks over a corpus of GBs would otherwise leave
    /// each page they touched (and the 64 KiB or more the kernel maps around it) resident, and
    /// the process's RSS would grow with the steps towards the corpus's size; one call per
    /// batch keeps it at a batch's pages. Zapping a mostly unmapped range costs microseconds.
    pub fn release(&self) {
        for (storage, offset, len) in &self.parts {
            if let Storage::Mapped { map, width } = storage {
                release(map, offset * width, len * width);
            }
        }
    }

    pub fn to_vec(&self) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.len());
        self.copy(0, self.len(), &mut out);
        out
    }
}

/// The index of the set in `dir`, if it has one that parses.
pub fn read_index(dir: &Path) -> Option<ShardIndex> {
    let text = std::fs::read_to_string(dir.join(INDEX)).ok()?;
    serde_json::from_str::<ShardIndex>(&text).ok().filter(|i| i.version == VERSION)
}

pub fn new_index(width: usize, tokenizer: String) -> ShardIndex {
    ShardIndex {
        version: VERSION,
        width,
        tokenizer,
        sources: Vec::new(),
        val_sources: Vec::new(),
        split: String::new(),
        documents: 0,
        train_documents: 0,
        separator: Vec::new(),
        shards: Vec::new(),
        train: Vec::new(),
        val: Vec::new(),
    }
}

/// Maps the set in `dir` as its (train, val) streams, checking that every shard file has
/// exactly the size its index says (a shard cut short is an error, and the caller rebuilds).
pub fn open(dir: &Path, index: &ShardIndex) -> Result<(TokenStream, TokenStream)> {
    let mut maps = Vec::new();
    for shard in &index.shards {
        let path = dir.join(&shard.file);
        let file = File::open(&path).with_context(|| format!("cannot open shard {}", path.display()))?;
        let size = file.metadata()?.len();
        let expected = (shard.tokens * index.width) as u64;
        if size != expected {
            bail!("shard {} has {size} bytes where its index says {expected}", path.display());
        }
        // SAFETY: a published shard set is never written again (taper builds a new set in a
        // new folder); a file changed under a running job by someone else is outside this.
        let map = unsafe { Mmap::map(&file) }.with_context(|| format!("cannot map shard {}", path.display()))?;
        // Blocks are drawn at random: no read-ahead around them.
        let _ = map.advise(memmap2::Advice::Random);
        maps.push(Arc::new(map));
    }
    let stream = |ranges: &[Range]| -> Result<TokenStream> {
        let mut parts = Vec::new();
        for r in ranges {
            let shard = index.shards.get(r.shard).context("the index names a shard it does not list")?;
            if r.start + r.len > shard.tokens {
                bail!("the index's range {r:?} runs past shard {}", shard.file);
            }
            parts.push((Storage::Mapped { map: maps[r.shard].clone(), width: index.width }, r.start, r.len));
        }
        Ok(TokenStream::from_parts(parts))
    };
    Ok((stream(&index.train)?, stream(&index.val)?))
}

/// Ranges covering ids `from..to` of the shards `shards` (numbered from `first`), laid end to end.
pub fn ranges(shards: &[ShardFile], first: usize, from: usize, to: usize) -> Vec<Range> {
    let (mut out, mut at) = (Vec::new(), 0);
    for (i, shard) in shards.iter().enumerate() {
        let (lo, hi) = (from.max(at), to.min(at + shard.tokens));
        if lo < hi {
            out.push(Range { shard: first + i, start: lo - at, len: hi - lo });
        }
        at += shard.tokens;
    }
    out
}
