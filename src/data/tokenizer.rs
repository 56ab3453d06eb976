//! Tokenizers: every kind is a Hugging Face `tokenizers::Tokenizer`, so each run saves a
//! standard `tokenizer.json` that other tools load too.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{bail, Context, Result};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::unigram::{Unigram, UnigramTrainerBuilder};
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::models::{ModelWrapper, TrainerWrapper};
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer, Trainer};

use super::corpus::Corpus;
use super::trainers::WordPieceTrainer;

use crate::config::{TokenizerConfig, TokenizerKind};

#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
}

impl TextTokenizer {
    /// Builds the tokenizer a config asks for: loaded from a file, or made from the corpus
    /// (char-level: its characters; trained kinds: its first `tokenizer.sample_bytes`).
    pub fn from_config(cfg: &TokenizerConfig, corpus: &Corpus) -> Result<Self> {
        let special = |names: &[&str]| names.iter().map(|n| AddedToken::from(n.to_string(), true)).collect::<Vec<_>>();
        let vocab_size = cfg.vocab_size.unwrap_or(0);
        let mut tokenizer = match cfg.kind {
            TokenizerKind::File => {
                let path = cfg.path.as_deref().context("`tokenizer.path` is required for kind = \"file\"")?;
                return Self::load(path);
            }
            // Streamed, so a corpus of any size is never held whole.
            TokenizerKind::Char => return Self::char_level(&corpus.chars()?.into_iter().collect::<String>()),
            TokenizerKind::Bpe => {
                let mut tokenizer =
                    Tokenizer::new(BPE::builder().unk_token("<unk>".into()).build().map_err(anyhow::Error::msg)?);
                let metaspace = Metaspace::new('▁', PrependScheme::Always, true);
                tokenizer.with_pre_tokenizer(Some(metaspace.clone()));
                tokenizer.with_decoder(Some(metaspace));
                let trainer = BpeTrainerBuilder::new()
                    .show_progress(false)
                    .vocab_size(vocab_size)
                    .special_tokens(special(&["<unk>"]))
                    .build();
                train(tokenizer, TrainerWrapper::from(trainer), corpus, cfg.sample_bytes)?
            }
            TokenizerKind::ByteLevelBpe => {
                let mut tokenizer = Tokenizer::new(BPE::default());
                tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
                tokenizer.with_decoder(Some(ByteLevelDecoder::new(false, true, true)));
                let trainer = BpeTrainerBuilder::new()
                    .show_progress(false)
                    .vocab_size(vocab_size)
                    .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
                    .special_tokens(special(&["<|endoftext|>"]))
                    .build();
                train(tokenizer, TrainerWrapper::from(trainer), corpus, cfg.sample_bytes)?
            }
            TokenizerKind::Wordpiece => {
                let mut tokenizer = Tokenizer::new(WordPiece::default());
                tokenizer.with_normalizer(Some(BertNormalizer::new(true, true, None, false)));
                tokenizer.with_pre_tokenizer(Some(BertPreTokenizer));
                tokenizer.with_decoder(Some(WordPieceDecoder::default()));
                let specials = special(&["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]);
                let mut tokenizer =
                    train(tokenizer, WordPieceTrainer::new(vocab_size, specials), corpus, cfg.sample_bytes)?;
                // BERT's input template, applied when encoding with special tokens (classifier
                // inputs); corpus encoding for language models leaves it out.
                let id = |name: &str| tokenizer.token_to_id(name).context("trained WordPiece lacks a special token");
                let template = TemplateProcessing::builder()
                    .try_single("[CLS] $A [SEP]")
                    .and_then(|t| t.try_pair("[CLS] $A [SEP] $B:1 [SEP]:1"))
                    .map_err(anyhow::Error::msg)?
                    .special_tokens(vec![("[CLS]", id("[CLS]")?), ("[SEP]", id("[SEP]")?)])
                    .build()
                    .map_err(anyhow::Error::msg)?;
                tokenizer.with_post_processor(Some(template));
                tokenizer
            }
            TokenizerKind::Unigram => {
                let mut tokenizer = Tokenizer::new(Unigram::default());
                let metaspace = Metaspace::new('▁', PrependScheme::Always, true);
                tokenizer.with_pre_tokenizer(Some(metaspace.clone()));
                tokenizer.with_decoder(Some(metaspace));
                let trainer = UnigramTrainerBuilder::default()
                    .show_progress(false)
                    .vocab_size(vocab_size as u32)
                    .special_tokens(special(&["<unk>"]))
                    .unk_token(Some("<unk>".into()))
                    .build()
                    .map_err(anyhow::Error::msg)?;
                train(tokenizer, TrainerWrapper::from(trainer), corpus, cfg.sample_bytes)?
            }
        };
        tokenizer.with_truncation(None).map_err(anyhow::Error::msg)?;
        Ok(Self { inner: tokenizer })
    }

    /// One token per distinct character of `text`, in sorted order (as nanoGPT's char model).
    pub fn char_level(text: &str) -> Result<Self> {
        let chars: BTreeSet<char> = text.chars().collect();
        if chars.is_empty() {
            bail!("cannot build a character vocabulary from empty text");
        }
        let vocab = chars.iter().enumerate().map(|(i, c)| (c.to_string(), i as u32)).collect();
        // WordLevel insists on an unknown token name; it is not in the vocabulary, so an unseen
        // character is an error rather than a silent substitution.
        let model = WordLevel::builder().vocab(vocab).unk_token("<unk>".into()).build().map_err(anyhow::Error::msg)?;
        let mut tokenizer = Tokenizer::new(model);
        let split = Split::new(SplitPattern::Regex(r"[\s\S]".into()), SplitDelimiterBehavior::Isolated, false)
            .map_err(anyhow::Error::msg)?;
        tokenizer.with_pre_tokenizer(Some(split));
        tokenizer.with_decoder(Some(Fuse::new()));
        Ok(Self { inner: tokenizer })
    }

    pub fn load(path: &Path) -> Result<Self> {
        if !path.is_file() {
            bail!("tokenizer file {} does not exist", path.display());
        }
        let mut inner = Tokenizer::from_file(path)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("cannot load tokenizer {}", path.display()))?;
        // taper truncates and pads itself (to the longest in a batch); a file's own settings,
        // such as sentence-transformers' fixed padding to 128, would pad every input and mark
        // the padding as real tokens.
        inner.with_padding(None);
        inner.with_truncation(None).map_err(anyhow::Error::msg)?;
        Ok(Self { inner })
    }

    /// Writes `tokenizer.json` (to a temporary name first, then renamed).
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = self.inner.to_string(true).map_err(anyhow::Error::msg)?;
        crate::fsutil::write_atomic(path, json.as_bytes())
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of `text`. A vocabulary without an unknown token (the char-level one) cannot
    /// encode a character it lacks: the error lists them.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match self.inner.encode_fast(text, false) {
            Ok(encoding) => Ok(encoding.get_ids().to_vec()),
            Err(e) => {
                let mut unknown: Vec<char> =
                    text.chars().filter(|c| self.inner.token_to_id(&c.to_string()).is_none()).collect();
                unknown.sort_unstable();
                unknown.dedup();
                if unknown.is_empty() {
                    bail!("cannot tokenize text: {e}");
                }
                let shown: Vec<String> = unknown.iter().map(|c| format!("{c:?} (U+{:04X})", *c as u32)).collect();
                bail!(
                    "the text has characters the vocabulary lacks: {} (it holds the characters of the training corpus)",
                    shown.join(", ")
                )
            }
        }
    }

    /// Tokenizes a whole corpus, in parallel chunks cut at line ends.
    pub fn encode_corpus(&self, text: &str) -> Result<Vec<u32>> {
        let mut chunks = Vec::new();
        let mut chunker = LineChunker::default();
        chunker.push(text, &mut |c| chunks.push(c));
        chunker.finish(&mut |c| chunks.push(c));
        Ok(self.encode_chunks(&chunks)?.concat())
    }

    /// The ids of each chunk, encoded on rayon's threads (each chunk alone, so the result does
    /// not depend on the thread count; each thread also frees its chunks' encodings).
    pub fn encode_chunks(&self, chunks: &[String]) -> Result<Vec<Vec<u32>>> {
        use rayon::prelude::*;
        let encoded: Option<Vec<Vec<u32>>> = chunks
            .par_iter()
            .map(|chunk| self.inner.encode_fast(chunk.as_str(), false).ok().map(|e| e.get_ids().to_vec()))
            .collect();
        match encoded {
            Some(ids) => Ok(ids),
            // The one-text path names the characters the vocabulary lacks.
            None => {
                for chunk in chunks {
                    self.encode(chunk)?;
                }
                bail!("cannot tokenize the corpus")
            }
        }
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(|e| anyhow::anyhow!("cannot decode tokens: {e}"))
    }

    /// The id of a special token such as `[MASK]`, or an error that says which tokenizer lacks it.
    pub fn special_id(&self, token: &str, what: &str) -> Result<u32> {
        self.inner.token_to_id(token).with_context(|| {
            format!("the tokenizer has no `{token}` token, which {what} needs (use `tokenizer.kind = \"wordpiece\"` or a BERT tokenizer.json)")
        })
    }

    /// The id of `name` if the tokenizer holds it as a special (added) token.
    pub fn special_token_id(&self, name: &str) -> Option<u32> {
        let added = self.inner.get_added_tokens_decoder();
        added.into_iter().find(|(_, t)| t.special && t.content == name).map(|(id, _)| id)
    }

    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }
}

/// Trains on the corpus file itself when it is one text file within `sample_bytes`, else on
/// the lines of its first `sample_bytes`.
fn train<T: Trainer<Model = ModelWrapper> + Sync>(
    mut tokenizer: Tokenizer,
    mut trainer: T,
    corpus: &Corpus,
    sample_bytes: usize,
) -> Result<Tokenizer> {
    let whole = corpus.single_text().filter(|_| corpus.sources[0].size <= sample_bytes as u64);
    let trained = match whole {
        Some(path) => {
            let file = path.to_str().context("corpus path is not valid UTF-8")?.to_string();
            tokenizer.train_from_files(&mut trainer, vec![file]).map(|_| ())
        }
        None => {
            let lines = corpus.sample_lines(sample_bytes)?;
            tokenizer.train(&mut trainer, lines.into_iter()).map(|_| ())
        }
    };
    trained
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("cannot train the tokenizer on {}", corpus.describe()))?;
    Ok(tokenizer)
}

/// Cuts a stream of text into chunks of at least 64 KiB that end just after a newline (the
/// last chunk takes what is left): the pieces a corpus is tokenized in, the same cuts however
/// the text arrives.
#[derive(Default)]
pub struct LineChunker {
    buf: String,
    /// Bytes of `buf` past the 64 KiB mark already searched for a newline.
    searched: usize,
}

impl LineChunker {
    const CHUNK: usize = 1 << 16;

    pub fn push(&mut self, text: &str, out: &mut dyn FnMut(String)) {
        self.buf.push_str(text);
        self.drain(false, out);
    }

    /// Hands out what is left.
    pub fn finish(&mut self, out: &mut dyn FnMut(String)) {
        self.drain(true, out);
    }

    fn drain(&mut self, eof: bool, out: &mut dyn FnMut(String)) {
        let mut start = 0;
        loop {
            let rest = &self.buf[start..];
            if rest.is_empty() {
                break;
            }
            let mut end = Self::CHUNK.min(rest.len());
            while !rest.is_char_boundary(end) {
                end += 1;
            }
            let from = end + if start == 0 { self.searched } else { 0 };
            match rest[from.min(rest.len())..].find('\n') {
                Some(nl) if end < rest.len() => {
                    let cut = from + nl + 1;
                    out(rest[..cut].to_string());
                    start += cut;
                    self.searched = 0;
                }
                _ if eof => {
                    out(rest.to_string());
                    start = self.buf.len();
                }
                _ => {
                    self.searched = rest.len().saturating_sub(end);
                    break;
                }
            }
        }
        if start > 0 {
            self.buf.drain(..start);
        }
    }
}
