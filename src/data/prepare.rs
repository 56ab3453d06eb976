//! Tokenizing a corpus once into a shard set in the cache, keyed by its files (path, size,
//! modification time), how they are read, and the tokenizer; later runs map the set. Documents
//! are tokenized in parallel batches of line-cut chunks, written in corpus order, so the shards
//! are the same whatever the thread count.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use super::config::{DataConfig, TokenizerConfig, TokenizerKind};
use super::corpus::Corpus;
use super::dataset::TokenDataset;
use super::documents::DocumentSink;
use super::shards::{self, new_index, ShardIndex, ShardWriter, TokenStream};
use super::tokenizer::{LineChunker, TextTokenizer};
use crate::rng::{hash_str, Rng};

/// A corpus's shard set, mapped.
pub struct Prepared {
    pub dir: PathBuf,
    pub index: ShardIndex,
    pub train: TokenStream,
    pub val: TokenStream,
    /// What building it did (None when an existing set was mapped).
    pub built: Option<String>,
}

/// The corpus tokenized into its shard set (built on first use) and mapped as the dataset of
/// `block`-token windows; with a note on how it was split, for the start-up line.
pub fn corpus_dataset(
    data: &DataConfig,
    corpus: &Corpus,
    tokenizer: &TextTokenizer,
    block: usize,
) -> Result<(TokenDataset, String)> {
    let prepared = prepare(data, corpus, tokenizer)?;
    let index = &prepared.index;
    let note = match index.split.as_str() {
        "tokens" => String::new(),
        how => format!(" from {} documents ({} train; split by {how})", index.documents, index.train_documents),
    };
    Ok((TokenDataset::from_streams(prepared.train, prepared.val, block, &corpus.describe())?, note))
}

/// The folder tokenized corpora live under: `data.cache_dir`, `$TAPER_CACHE`,
/// `$XDG_CACHE_HOME/taper` or `~/.cache/taper`.
pub fn cache_root(data: &DataConfig) -> PathBuf {
    let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    data.cache_dir
        .clone()
        .or_else(|| env("TAPER_CACHE"))
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("taper")))
        .or_else(|| env("HOME").map(|d| d.join(".cache").join("taper")))
        .unwrap_or_else(|| PathBuf::from(".cache/taper"))
        .join("corpora")
}

/// The tokenizer `cfg` makes from the corpus, kept in the cache beside the shards (keyed by
/// the corpus files and the tokenizer settings) so that `taper prepare` and every later run
/// on the corpus use one tokenizer, and a big corpus is sampled once. `kind = "file"` loads.
pub fn corpus_tokenizer(cfg: &TokenizerConfig, data: &DataConfig, corpus: &Corpus) -> Result<TextTokenizer> {
    if cfg.kind == TokenizerKind::File {
        return TextTokenizer::from_config(cfg, corpus);
    }
    let settings = toml::to_string(cfg).context("cannot write the tokenizer settings")?;
    let what = format!("v1\n{}\n{settings}", corpus.identity());
    let path = cache_root(data).with_file_name("tokenizers").join(format!("{:016x}.json", hash_str(&what)));
    if path.is_file() {
        if let Ok(tokenizer) = TextTokenizer::load(&path) {
            return Ok(tokenizer);
        }
    }
    let tokenizer = TextTokenizer::from_config(cfg, corpus)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    tokenizer.save(&path)?;
    Ok(tokenizer)
}

/// The documents' separator: the tokenizer's end-of-text token, else the ids of a blank line.
pub fn separator(tokenizer: &TextTokenizer) -> Result<Vec<u32>> {
    for name in ["<|endoftext|>", "</s>", "[SEP]", "<|end_of_text|>", "<eos>"] {
        if let Some(id) = tokenizer.special_token_id(name) {
            return Ok(vec![id]);
        }
    }
    tokenizer.encode("\n\n").context(
        "the corpus has many documents, and the tokenizer has neither an end-of-text token nor a blank line to put \
         between them",
    )
}

fn key(data: &DataConfig, corpus: &Corpus, tokenizer_hash: &str) -> String {
    let split = if data.val_path.is_some() { "val-path".to_string() } else { format!("{}", data.val_fraction) };
    let what = format!("v1\n{}\n{split}\n{}\n{tokenizer_hash}", corpus.identity(), data.shard_tokens);
    format!("{:016x}", hash_str(&what))
}

/// Maps the corpus's shard set, building it first when there is none, or the one there is
/// was cut short or made from other files or by another tokenizer (said, and rebuilt).
pub fn prepare(data: &DataConfig, corpus: &Corpus, tokenizer: &TextTokenizer) -> Result<Prepared> {
    let json = tokenizer.inner().to_string(false).map_err(anyhow::Error::msg)?;
    let tokenizer_hash = format!("{:016x}", hash_str(&json));
    let root = cache_root(data);
    let dir = root.join(key(data, corpus, &tokenizer_hash));
    if let Some(index) = shards::read_index(&dir) {
        let why = if index.tokenizer != tokenizer_hash {
            "it was made by another tokenizer".to_string()
        } else if !same_files(&index.sources, &corpus.sources) || !same_files(&index.val_sources, &corpus.val_sources) {
            "it was made from other corpus files".to_string()
        } else {
            match shards::open(&dir, &index) {
                Ok((train, val)) => return Ok(Prepared { dir, index, train, val, built: None }),
                Err(err) => format!("{err:#}"),
            }
        };
        crate::console::say(format!("taper: rebuilding the tokenized corpus in {}: {why}", dir.display()));
    }
    let started = Instant::now();
    let tmp = root.join(format!(
        ".{}.tmp-{}",
        dir.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(),
        std::process::id()
    ));
    remove_stale(&root);
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let built = build(data, corpus, tokenizer, &tmp, tokenizer_hash);
    let index = match built {
        Ok(index) => index,
        Err(err) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(err);
        }
    };
    publish(&tmp, &dir)?;
    let (train, val) = shards::open(&dir, &index)?;
    let seconds = started.elapsed().as_secs_f64();
    let bytes: u64 = corpus.sources.iter().chain(&corpus.val_sources).map(|s| s.size).sum();
    let built = format!(
        "tokenized {} documents ({:.1} MB) into {} tokens in {seconds:.1} s ({:.1} MB/s), in {}",
        index.documents,
        bytes as f64 / 1e6,
        train.len() + val.len(),
        bytes as f64 / 1e6 / seconds.max(1e-9),
        dir.display()
    );
    crate::console::say(format!("taper: {built}"));
    Ok(Prepared { dir, index, train, val, built: Some(built) })
}

/// Whether two lists name files of the same sizes and times (their paths are in the key,
/// canonical, while the index keeps them as written).
fn same_files(a: &[super::sources::Source], b: &[super::sources::Source]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x.size, x.mtime_ns, x.format) == (y.size, y.mtime_ns, y.format))
}

/// Moves a finished set into place. A whole set another process published under the same
/// key meanwhile (made from the same inputs) is kept; a damaged one is replaced.
fn publish(tmp: &Path, dir: &Path) -> Result<()> {
    if dir.exists() {
        if shards::read_index(dir).is_some_and(|i| shards::open(dir, &i).is_ok()) {
            let _ = std::fs::remove_dir_all(tmp);
            return Ok(());
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    std::fs::rename(tmp, dir).with_context(|| format!("cannot rename {} to {}", tmp.display(), dir.display()))?;
    crate::fsutil::sync_dir(dir.parent())
}

/// Removes temporary folders of preparations whose process is gone (killed mid-way).
fn remove_stale(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.rsplit_once(".tmp-").and_then(|(_, pid)| pid.parse::<i32>().ok()) else { continue };
        // SAFETY: kill with signal 0 only asks whether the process exists.
        let alive =
            unsafe { libc::kill(pid, 0) } == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if !alive {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn progress_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "tokenizing {bar:30.cyan/blue} {bytes}/{total_bytes} {bytes_per_sec} {msg} [{elapsed_precise}<{eta_precise}]",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar
}

/// Tokenizes the corpus into shard files in `tmp` and writes their index.
fn build(
    data: &DataConfig,
    corpus: &Corpus,
    tokenizer: &TextTokenizer,
    tmp: &Path,
    hash: String,
) -> Result<ShardIndex> {
    let width = if tokenizer.vocab_size() <= 1 << 16 { 2 } else { 4 };
    let single = corpus.single_text().is_some();
    let separator = if single { Vec::new() } else { separator(tokenizer)? };
    let mut index = new_index(width, hash);
    let total = corpus.sources.iter().chain(&corpus.val_sources).map(|s| s.size).sum();
    let bar = progress_bar(total);
    let mut sink = Tokenizing {
        tokenizer,
        writers: [
            ShardWriter::new(tmp, "train", width, data.shard_tokens),
            ShardWriter::new(tmp, "val", width, data.shard_tokens),
        ],
        chunker: LineChunker::default(),
        pending: Vec::new(),
        files: Vec::new(),
        pending_bytes: 0,
        separator: separator.clone(),
        split: if corpus.val_sources.is_empty() { Split::Draw(data.val_fraction) } else { Split::All(0) },
        documents: [0, 0],
        bar: bar.clone(),
    };
    corpus.read(&corpus.sources, &mut sink, &mut |n| bar.set_position(n))?;
    if !corpus.val_sources.is_empty() {
        let done: u64 = corpus.sources.iter().map(|s| s.size).sum();
        sink.split = Split::All(1);
        corpus.read(&corpus.val_sources, &mut sink, &mut |n| bar.set_position(done + n))?;
    }
    sink.flush()?;
    bar.finish_and_clear();
    let [mut train, mut val] = sink.writers;
    train.close()?;
    val.close()?;
    let documents = sink.documents;
    if documents[0] + documents[1] == 0 {
        bail!("the corpus ({}) holds no text", corpus.describe());
    }
    index.split = if single {
        // One document: its last val_fraction of tokens is val, as nanoGPT's.
        let n = train.total();
        let at = ((1.0 - data.val_fraction) * n as f64) as usize;
        index.train = shards::ranges(&train.shards, 0, 0, at);
        index.val = shards::ranges(&train.shards, 0, at, n);
        "tokens".into()
    } else {
        if documents[1] == 0 {
            bail!(
                "none of the corpus's {} documents fell into the val split (`data.val_fraction` = {}): raise it, \
                 give `data.val_path`, or read text files with `data.documents = \"blank-line\"`",
                documents[0],
                data.val_fraction
            );
        }
        index.train = shards::ranges(&train.shards, 0, 0, train.total());
        index.val = shards::ranges(&val.shards, train.shards.len(), 0, val.total());
        if corpus.val_sources.is_empty() { "documents" } else { "val-path" }.into()
    };
    index.shards = train.shards.into_iter().chain(val.shards).collect();
    index.documents = documents[0] + documents[1];
    index.train_documents = documents[0];
    index.separator = separator;
    index.sources = corpus.sources.clone();
    index.val_sources = corpus.val_sources.clone();
    crate::fsutil::write_atomic(&tmp.join(shards::INDEX), serde_json::to_string_pretty(&index)?.as_bytes())?;
    Ok(index)
}

/// Which split a document goes to.
#[derive(Clone, Copy)]
enum Split {
    /// Each document is val with this probability, drawn from its ordinal alone (so adding
    /// files at the end moves no document).
    Draw(f64),
    /// Every document goes to writer 0 (train) or 1 (val).
    All(usize),
}

const SPLIT_SALT: u64 = 0x7461_7065_725f_7631;

/// Batches line-cut chunks of documents, tokenizes each batch in parallel, and appends the ids
/// (and a separator after each document) to the writer of the document's split.
struct Tokenizing<'a> {
    tokenizer: &'a TextTokenizer,
    writers: [ShardWriter; 2],
    chunker: LineChunker,
    /// Chunks waiting to be tokenized: (text, writer, ends its document, file).
    pending: Vec<(String, usize, bool, usize)>,
    /// The files read so far, the current one last.
    files: Vec<PathBuf>,
    pending_bytes: usize,
    separator: Vec<u32>,
    split: Split,
    documents: [usize; 2],
    bar: ProgressBar,
}

impl Tokenizing<'_> {
    /// Text per parallel batch: 16 chunks per thread keeps every core busy, while the
    /// batch's encodings (tokenizers keeps offsets and token strings per id, about 100 bytes
    /// each) stay within tens of MB.
    fn batch_bytes() -> usize {
        (16 << 16) * rayon::current_num_threads().max(2)
    }

    fn writer(&self) -> usize {
        match self.split {
            Split::All(w) => w,
            Split::Draw(fraction) => {
                let ordinal = (self.documents[0] + self.documents[1]) as u64;
                usize::from(Rng::derived(SPLIT_SALT, &[ordinal]).uniform() < fraction)
            }
        }
    }

    fn take_chunks(&mut self, eof: bool, text: &str) {
        let w = self.writer();
        let mut chunks = Vec::new();
        if eof {
            self.chunker.finish(&mut |c| chunks.push(c));
        } else {
            self.chunker.push(text, &mut |c| chunks.push(c));
        }
        if eof && chunks.is_empty() {
            // The document's text all went out with earlier chunks: an empty one ends it.
            chunks.push(String::new());
        }
        let last = chunks.len().saturating_sub(1);
        for (i, chunk) in chunks.into_iter().enumerate() {
            self.pending_bytes += chunk.len();
            self.pending.push((chunk, w, eof && i == last, self.files.len().saturating_sub(1)));
        }
    }

    fn flush(&mut self) -> Result<()> {
        let batch = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        let (texts, places): (Vec<String>, Vec<(usize, bool, usize)>) =
            batch.into_iter().map(|(text, w, ends, file)| (text, (w, ends, file))).unzip();
        let ids = match self.tokenizer.encode_chunks(&texts) {
            Ok(ids) => ids,
            Err(err) => {
                // The first chunk that fails names its file.
                let failing = texts.iter().position(|t| self.tokenizer.encode(t).is_err()).unwrap_or(0);
                let file = places.get(failing).and_then(|&(_, _, file)| self.files.get(file));
                let shown = file.map(|p| p.display().to_string()).unwrap_or_default();
                return Err(err.context(format!("cannot tokenize corpus file {shown}")));
            }
        };
        for ((w, ends, _), ids) in places.into_iter().zip(ids) {
            self.writers[w].push(&ids)?;
            if ends {
                self.writers[w].push(&self.separator)?;
            }
        }
        Ok(())
    }
}

impl DocumentSink for Tokenizing<'_> {
    fn begin_file(&mut self, path: &Path) {
        self.files.push(path.to_path_buf());
    }

    fn text(&mut self, piece: &str) -> Result<()> {
        self.take_chunks(false, piece);
        if self.pending_bytes >= Self::batch_bytes() {
            self.flush()?;
        }
        Ok(())
    }

    fn end_document(&mut self) -> Result<()> {
        let w = self.writer();
        self.take_chunks(true, "");
        self.documents[w] += 1;
        let n = self.documents[0] + self.documents[1];
        if n % 256 == 1 {
            let per_s = n as f64 / self.bar.elapsed().as_secs_f64().max(1e-3);
            self.bar.set_message(format!("{n} documents ({per_s:.0}/s)"));
        }
        if self.pending_bytes >= Self::batch_bytes() {
            self.flush()?;
        }
        Ok(())
    }
}
