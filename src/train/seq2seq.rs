//! Sequence-to-sequence: source/target pairs -> padded teacher-forcing batches -> the
//! encoder-decoder -> cross-entropy (optionally label-smoothed) on the real target tokens.
//! Evaluated by loss and token accuracy (teacher forcing), and exact match and corpus BLEU of
//! greedy decoding, on the validation file. A trained encoder-decoder loaded back: `taper
//! generate` (greedy or beam search) and `taper eval`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::shared::{detached, split_sums};
use super::task::{Evaluation, Task, Trained};
use super::{run_task, settings_of, Launch, RunSummary, TaskKind, TaskSettings, TaskSpec};
use crate::config::{higher, Architecture, Config, Metric, ModelConfig, VAL_LOSS};
use crate::data::pairs::{encode_pairs, encode_source, pad_pairs, read_pairs, EncodedPair, Pair, PairBatch, Specials};
use crate::data::sampling::{hold_out, EpochSampler};
use crate::data::TextTokenizer;
use crate::decode::{beam_search, greedy, BeamOptions, DecodeLimits, OutputLimits};
use crate::hf::Head;
use crate::host;
use crate::model::seq2seq::Seq2Seq;
use crate::model::{Mode, ParamStore};
use crate::pretrained::Pretrained;
use crate::run_dir::{OpenedCheckpoint, RunDir};

/// `task.kind = "seq2seq"`: source -> target pairs with teacher forcing (encoder-decoder).
pub struct Seq2SeqSpec;

pub static SEQ2SEQ: Seq2SeqSpec = Seq2SeqSpec;

/// `[task]` of `kind = "seq2seq"`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Seq2seqTask {
    /// The columns (TSV header, or JSONL keys) of the source and target texts.
    #[serde(default = "default_source_column")]
    pub source_column: String,
    #[serde(default = "default_target_column")]
    pub target_column: String,
    /// Truncate sources to this many tokens; `model.block_size` when absent.
    pub max_len: Option<usize>,
    /// Truncate targets to this many tokens (BOS/EOS included); also the longest output
    /// decoding produces. `model.block_size` when absent.
    pub max_target_len: Option<usize>,
    /// The smoothed target puts this much mass uniformly over the vocabulary.
    #[serde(default)]
    pub label_smoothing: f64,
}

fn default_source_column() -> String {
    "source".into()
}
fn default_target_column() -> String {
    "target".into()
}

impl TaskSpec for Seq2SeqSpec {
    fn name(&self) -> &'static str {
        "seq2seq"
    }
    fn arch(&self) -> Architecture {
        Architecture::EncoderDecoder
    }
    fn metrics(&self) -> &'static [Metric] {
        const METRICS: [Metric; 4] = [VAL_LOSS, higher("token_accuracy"), higher("exact_match"), higher("bleu")];
        &METRICS
    }
    fn settings(&self, table: toml::Table) -> Result<Box<dyn TaskSettings>, toml::de::Error> {
        settings_of::<Seq2seqTask>(table)
    }
    fn validate(&self, cfg: &Config) -> Result<()> {
        let task = settings(cfg)?;
        if !(0.0..1.0).contains(&task.label_smoothing) {
            bail!("`task.label_smoothing` must be in [0, 1), got {}", task.label_smoothing);
        }
        for (key, value) in [("task.max_len", task.max_len), ("task.max_target_len", task.max_target_len)] {
            if let Some(n) = value.filter(|&n| n < 2 || n > cfg.model.block_size) {
                bail!("`{key}` = {n} must be in [2, model.block_size = {}]", cfg.model.block_size);
            }
        }
        Ok(())
    }
    fn samples(&self) -> bool {
        true
    }
    fn head(&self, _cfg: &Config) -> Result<Head> {
        Ok(Head::Seq2SeqLm)
    }
    fn train(&self, cfg: &Config, launch: &Launch) -> Result<RunSummary> {
        run_task(&Seq2SeqTask::new(cfg, launch.run, launch.resuming, launch.params, launch.device)?, launch)
    }
    fn load(&self, opened: OpenedCheckpoint) -> Result<Box<dyn Trained>> {
        Ok(Box::new(TrainedSeq2Seq::from_checkpoint(opened)?))
    }
}

fn settings(cfg: &Config) -> Result<&Seq2seqTask> {
    cfg.task.settings::<Seq2seqTask>()
}

/// Pairs per forward pass when evaluating.
const EVAL_BATCH: usize = 64;
/// Val sources a sample (`train.sample_every`) decodes.
const SAMPLES: usize = 3;

/// The two sides' tokenizers (the same one when embeddings are shared) and special ids.
#[derive(Clone)]
pub struct Vocabularies {
    pub source: TextTokenizer,
    pub target: TextTokenizer,
    pub source_specials: Specials,
    pub target_specials: Specials,
    /// Embedding rows of each side.
    rows: (usize, usize),
}

impl Vocabularies {
    pub fn source_size(&self) -> usize {
        self.rows.0
    }
    pub fn target_size(&self) -> usize {
        self.rows.1
    }

    /// `rows`: `model.vocab_size` (a shared vocabulary's rows, when set).
    fn new(source: TextTokenizer, target: TextTokenizer, rows: Option<usize>) -> Result<Self> {
        let (source_specials, target_specials) = (Specials::of(&source), Specials::of(&target));
        let needed = (source_specials.rows(&source), target_specials.rows(&target));
        let rows = match rows {
            Some(n) if n < needed.0.max(needed.1) => anyhow::bail!(
                "`model.vocab_size` = {n} is smaller than the vocabulary with its special tokens ({}); remove the key or raise it",
                needed.0.max(needed.1)
            ),
            Some(n) => (n, n),
            None => needed,
        };
        Ok(Self { source, target, source_specials, target_specials, rows })
    }

    /// The run's saved tokenizers.
    pub fn load(run: &RunDir, model: &ModelConfig) -> Result<Self> {
        let source = TextTokenizer::load(&run.tokenizer())?;
        let target = match model.share_embeddings {
            true => source.clone(),
            false => TextTokenizer::load(&target_tokenizer_path(run))?,
        };
        Self::new(source, target, model.vocab_size)
    }

    /// The pretrained model's config.json must name the ids its tokenizer's specials have.
    fn agree_with(&self, pretrained: &Pretrained) -> Result<()> {
        let (ours, theirs) = (self.source_specials, pretrained.ids());
        let ours_ids = (Some(ours.pad), Some(ours.eos), Some(ours.bos));
        if ours_ids != (theirs.pad, theirs.eos, theirs.decoder_start) {
            let show = |id: Option<u32>| id.map_or("none".to_string(), |id| id.to_string());
            anyhow::bail!(
                "{}: config.json's pad / eos / decoder_start ids are {} / {} / {}, its tokenizer.json's <pad> / </s> / \
                 <s> (or <pad>) are {} / {} / {}; taper needs them to agree",
                pretrained.dir.display(),
                show(theirs.pad),
                show(theirs.eos),
                show(theirs.decoder_start),
                ours.pad,
                ours.eos,
                ours.bos
            );
        }
        Ok(())
    }

    /// A pretrained model's shared tokenizer, saved into the run.
    fn pretrained(tokenizer: TextTokenizer, run: &RunDir, model: &ModelConfig) -> Result<Self> {
        tokenizer.save(&run.tokenizer())?;
        Self::new(tokenizer.clone(), tokenizer, model.vocab_size)
    }

    /// Trains the tokenizer(s) on the training pairs (both sides when shared) and saves them.
    fn train(cfg: &Config, run: &RunDir, pairs: &[Pair]) -> Result<Self> {
        let make = |texts: Vec<&str>, name: &str| -> Result<TextTokenizer> {
            let text = texts.join("\n");
            // The tokenizer learns from a corpus file of the pairs' texts.
            let corpus = run.path().join(format!("{name}.tmp"));
            std::fs::write(&corpus, &text).with_context(|| format!("cannot write {}", corpus.display()))?;
            let tokenizer =
                crate::data::Corpus::text_file(&corpus).and_then(|c| TextTokenizer::from_config(&cfg.tokenizer, &c));
            std::fs::remove_file(&corpus).ok();
            tokenizer
        };
        let sources = pairs.iter().map(|p| p.source.as_str());
        let targets = pairs.iter().map(|p| p.target.as_str());
        let vocabularies = if cfg.model.share_embeddings {
            let shared = make(sources.chain(targets).collect(), "tokenizer-corpus")?;
            Self::new(shared.clone(), shared, cfg.model.vocab_size)?
        } else {
            Self::new(make(sources.collect(), "source-corpus")?, make(targets.collect(), "target-corpus")?, None)?
        };
        vocabularies.source.save(&run.tokenizer())?;
        if !cfg.model.share_embeddings {
            vocabularies.target.save(&target_tokenizer_path(run))?;
        }
        Ok(vocabularies)
    }

    pub fn limits(&self, cfg: &Config) -> Result<DecodeLimits> {
        let (bos, eos) = (self.target_specials.bos, self.target_specials.eos);
        Ok(DecodeLimits { bos, eos, max_len: max_target_len(cfg)?, rules: Default::default() })
    }

    /// A decoded output as text (the specials, and ids past the tokenizer's vocabulary, dropped).
    pub fn target_text(&self, ids: &[u32]) -> Result<String> {
        let (vocab, specials) = (self.target.vocab_size() as u32, self.target_specials);
        let ids: Vec<u32> = ids.iter().copied().filter(|&id| id < vocab && !specials.contains(id)).collect();
        self.target.decode(&ids)
    }
}

/// Where a run with separate vocabularies keeps its target tokenizer.
pub fn target_tokenizer_path(run: &RunDir) -> PathBuf {
    run.path().join("target_tokenizer.json")
}

fn max_len(cfg: &Config) -> Result<usize> {
    Ok(settings(cfg)?.max_len.unwrap_or(cfg.model.block_size))
}

fn max_target_len(cfg: &Config) -> Result<usize> {
    Ok(settings(cfg)?.max_target_len.unwrap_or(cfg.model.block_size))
}

fn build_model(cfg: &Config, vocab: &Vocabularies, vb: VarBuilder) -> Result<Seq2Seq> {
    Ok(Seq2Seq::new(&cfg.model, vocab.source_size(), vocab.target_size(), cfg.train.dtype.to_dtype(), vb)?)
}

fn encode(cfg: &Config, vocab: &Vocabularies, pairs: &[Pair], path: &Path) -> Result<Vec<EncodedPair>> {
    let eos = vocab.source_specials.eos;
    encode_pairs(pairs, &vocab.source, &vocab.target, eos, max_len(cfg)?, max_target_len(cfg)?, path)
}

pub struct Seq2SeqTask {
    cfg: Config,
    vocab: Vocabularies,
    model: Seq2Seq,
    train: Vec<EncodedPair>,
    val: Vec<EncodedPair>,
    /// The validation targets as text, for exact match and BLEU.
    val_targets: Vec<String>,
    sampler: EpochSampler,
    device: Device,
    label_smoothing: f64,
    /// What loading the pretrained weights did (fresh runs with `model.init_from`).
    loaded: Option<String>,
}

impl Seq2SeqTask {
    pub fn new(cfg: &Config, run: &RunDir, resuming: bool, params: &ParamStore, device: &Device) -> Result<Self> {
        let task = settings(cfg)?;
        let (source, target) = (&task.source_column, &task.target_column);
        let mut train_pairs = read_pairs(cfg.data.path.file()?, source, target)?;
        let (val_pairs, val_path) = match &cfg.data.val_path {
            Some(path) => (read_pairs(path, source, target)?, path.clone()),
            None => {
                let (fraction, seed) = (cfg.data.val_fraction, cfg.train.seed);
                (
                    hold_out(&mut train_pairs, fraction, seed, "pairs", cfg.data.path.file()?)?,
                    cfg.data.path.file()?.to_path_buf(),
                )
            }
        };
        let mut cfg = cfg.clone();
        let (vocab, pretrained) = match (&cfg.model.init_from, resuming) {
            (_, true) => (Vocabularies::load(run, &cfg.model)?, None),
            (Some(spec), false) => {
                let pretrained = Pretrained::open(&spec.clone(), &mut cfg.model)?;
                cfg.validate()?;
                let vocab = Vocabularies::pretrained(pretrained.tokenizer.clone(), run, &cfg.model)?;
                vocab.agree_with(&pretrained)?;
                pretrained.copy_generation_config(&run.generation_config())?;
                (vocab, Some(pretrained))
            }
            (None, false) => (Vocabularies::train(&cfg, run, &train_pairs)?, None),
        };
        let train = encode(&cfg, &vocab, &train_pairs, cfg.data.path.file()?)?;
        let val = encode(&cfg, &vocab, &val_pairs, &val_path)?;
        let val_targets = val_pairs.into_iter().map(|p| p.target).collect();
        let model = build_model(&cfg, &vocab, params.var_builder(cfg.train.seed, device))?;
        let loaded = pretrained.map(|p| p.load_into(params, &cfg.model, device)).transpose()?;
        let sampler = EpochSampler::new(cfg.train.seed, train.len());
        let (device, label_smoothing) = (device.clone(), task.label_smoothing);
        Ok(Self { cfg, vocab, model, train, val, val_targets, sampler, device, label_smoothing, loaded })
    }
}

/// Teacher-forced loss (plain NLL) and token accuracy, then greedy decoding: exact match and
/// corpus BLEU against `references`. What the metrics are computed from, as sums (so ranks'
/// shares add up): [loss sum, correct tokens, tokens, exact matches, pairs, BLEU's statistics].
fn tally(
    model: &Seq2Seq,
    vocab: &Vocabularies,
    pairs: &[&EncodedPair],
    references: &[&String],
    limits: DecodeLimits,
    device: &Device,
) -> Result<Vec<f64>> {
    let (mut loss, mut correct, mut count) = (0f64, 0usize, 0usize);
    let mut hypotheses = Vec::with_capacity(pairs.len());
    for chunk in pairs.chunks(EVAL_BATCH) {
        let batch = pad_pairs(chunk.iter().copied(), vocab.source_specials.pad, vocab.target_specials, device)?;
        let mut mode = Mode::eval();
        let memory = model.encode(&batch.source, Some(&batch.source_keep), &mut mode)?;
        let logits = model.forward(&batch.target_in, &memory, &mut mode)?;
        loss += host::scalar(&model.loss_sum(&logits, &batch.positions, &batch.target_out, 0.0, &mode)?)?;
        let (b, t, v) = logits.dims3()?;
        let predicted: Vec<u32> =
            host::vec1(&logits.reshape((b * t, v))?.index_select(&batch.positions, 0)?.argmax(1)?)?;
        let wanted: Vec<u32> = host::vec1(&batch.target_out)?;
        correct += predicted.iter().zip(&wanted).filter(|(p, w)| p == w).count();
        count += wanted.len();
        for output in greedy(model, &memory, limits, true)? {
            hypotheses.push(vocab.target_text(&output)?);
        }
    }
    let exact = hypotheses
        .iter()
        .zip(pairs)
        .filter(|(hyp, pair)| vocab.target_text(&pair.target).is_ok_and(|reference| reference.trim() == hyp.trim()))
        .count();
    let references: Vec<String> = references.iter().map(|r| r.to_string()).collect();
    let bleu = crate::bleu::BleuStats::of(&hypotheses, &references)?;
    let mut sums = vec![loss, correct as f64, count as f64, exact as f64, pairs.len() as f64];
    sums.extend(bleu.to_values());
    Ok(sums)
}

/// The metrics of summed tallies.
fn from_tally(sums: &[f64]) -> Evaluation {
    let count = sums[2].max(1.0);
    BTreeMap::from([
        ("val_loss".to_string(), sums[0] / count),
        ("token_accuracy".to_string(), sums[1] / count),
        ("exact_match".to_string(), sums[3] / sums[4].max(1.0)),
        ("bleu".to_string(), crate::bleu::BleuStats::from_values(&sums[5..]).bleu().score),
    ])
}

impl Task for Seq2SeqTask {
    type Batch = PairBatch;

    fn config(&self) -> &Config {
        &self.cfg
    }

    fn describe(&self) -> String {
        let shortfall = self.cfg.tokenizer.shortfall(self.vocab.source_size().min(self.vocab.target_size()));
        let data = format!(
            "{} train / {} val pairs, vocabularies {} / {}{}",
            self.train.len(),
            self.val.len(),
            self.vocab.source_size(),
            self.vocab.target_size(),
            shortfall.unwrap_or_default()
        );
        super::encoder::with_loaded(data, &self.loaded)
    }

    fn train_batch(&self, step: usize, micro: usize) -> Result<Self::Batch> {
        let train = &self.cfg.train;
        let indices = self.sampler.batch(step, micro, train.grad_accum, train.batch_size);
        let rows = indices.iter().map(|&i| &self.train[i]);
        pad_pairs(rows, self.vocab.source_specials.pad, self.vocab.target_specials, &self.device)
    }

    fn tied_head(&self) -> bool {
        self.cfg.model.tie_embeddings
    }

    fn embedding_tables(&self) -> Vec<Tensor> {
        self.model.embedding_tables()
    }

    fn targets(&self, batch: &Self::Batch) -> usize {
        batch.target_out.elem_count()
    }

    fn tokens(&self, batch: &Self::Batch) -> usize {
        batch.tokens
    }

    /// The source length (the decoder's rows are usually shorter: an upper bound).
    fn context(&self) -> usize {
        max_len(&self.cfg).unwrap_or(self.cfg.model.block_size)
    }

    fn residual_rms(&self, batch: &Self::Batch) -> Result<BTreeMap<String, f64>> {
        let rms = self.model.norm_input_rms(&batch.source, &batch.source_keep, &batch.target_in)?;
        Ok(rms.into_iter().collect())
    }

    fn loss_sum(&self, batch: &Self::Batch, mode: &mut Mode) -> Result<Tensor> {
        let memory = self.model.encode(&batch.source, Some(&batch.source_keep), mode)?;
        let logits = self.model.forward(&batch.target_in, &memory, mode)?;
        Ok(self.model.loss_sum(&logits, &batch.positions, &batch.target_out, self.label_smoothing, mode)?)
    }

    /// Each rank scores val pairs rank, rank + size, ...; the sums (loss, tokens, exact matches,
    /// BLEU's n-gram counts and lengths) are added over the ranks, so the metrics are the one
    /// process's.
    fn evaluate(&self, params: &ParamStore, world: &dyn crate::distributed::Collective) -> Result<Evaluation> {
        let model = build_model(&self.cfg, &self.vocab, detached(params, &self.device))?;
        let limits = self.vocab.limits(&self.cfg)?;
        let rows: Vec<(&EncodedPair, &String)> = self.val.iter().zip(&self.val_targets).collect();
        let sums = split_sums(world, &rows, |mine| {
            let (pairs, references): (Vec<&EncodedPair>, Vec<&String>) = mine.iter().map(|&&(p, r)| (p, r)).unzip();
            tally(&model, &self.vocab, &pairs, &references, limits, &self.device)
        })?;
        Ok(from_tally(&sums))
    }

    fn splits_evaluation(&self) -> bool {
        true
    }

    /// The first `SAMPLES` val sources decoded greedily, as `source -> output`.
    fn sample(&self, params: &ParamStore) -> Result<Vec<String>> {
        let model = build_model(&self.cfg, &self.vocab, detached(params, &self.device))?;
        let pairs = &self.val[..self.val.len().min(SAMPLES)];
        let batch = pad_pairs(pairs.iter(), self.vocab.source_specials.pad, self.vocab.target_specials, &self.device)?;
        let memory = model.encode(&batch.source, Some(&batch.source_keep), &mut Mode::eval())?;
        let outputs = greedy(&model, &memory, self.vocab.limits(&self.cfg)?, true)?;
        let eos = self.vocab.source_specials.eos;
        let source_text = |p: &EncodedPair| -> Result<String> {
            let ids: Vec<u32> = p.source.iter().copied().filter(|&id| id != eos).collect();
            self.vocab.source.decode(&ids)
        };
        pairs
            .iter()
            .zip(outputs)
            .map(|(p, out)| Ok(format!("{} -> {}", source_text(p)?, self.vocab.target_text(&out)?)))
            .collect()
    }
}

/// A trained encoder-decoder loaded back from its run directory: `taper generate` (greedy or
/// beam search on one input or a file of inputs) and `taper eval` (loss, token accuracy,
/// exact match and BLEU on a file of pairs).
pub struct TrainedSeq2Seq {
    pub config: Config,
    pub vocab: Vocabularies,
    pub model: Seq2Seq,
    pub checkpoint: PathBuf,
    device: Device,
}

impl TrainedSeq2Seq {
    /// `which`: "latest", "best" or "step-N"; `device` as in `train.device`.
    pub fn load(run_dir: &Path, which: &str, device: &str) -> Result<Self> {
        Self::from_checkpoint(OpenedCheckpoint::open(run_dir, which, device, TaskKind::new(&SEQ2SEQ))?)
    }

    pub fn from_checkpoint(opened: OpenedCheckpoint) -> Result<Self> {
        let vocab = Vocabularies::load(&opened.run, &opened.config.model)?;
        let model = opened.build(|vb| build_model(&opened.config, &vocab, vb))?;
        let OpenedCheckpoint { config, checkpoint, device, .. } = opened;
        Ok(Self { config, vocab, model, checkpoint, device })
    }

    /// Outputs for `inputs`, `beam.num_return_sequences` each, best first: greedy when
    /// `beam.beam_size` is 1 (batched), else beam search one input at a time. `limits` as
    /// `DecodeLimits` for the ones that are set (default: the run's max_target_len, no n-gram rule).
    pub fn translate(&self, inputs: &[String], beam: BeamOptions, limits: OutputLimits) -> Result<Vec<Vec<String>>> {
        beam.validate()?;
        let limits = limits.over(self.vocab.limits(&self.config)?, self.vocab.target.vocab_size())?;
        let (eos, max_len) = (self.vocab.source_specials.eos, max_len(&self.config)?);
        let sources: Vec<Vec<u32>> =
            inputs.iter().map(|text| encode_source(&self.vocab.source, text, eos, max_len)).collect::<Result<_>>()?;
        let mut outputs = Vec::with_capacity(inputs.len());
        if beam.beam_size <= 1 {
            for chunk in sources.chunks(64) {
                let longest = chunk.iter().map(Vec::len).max().unwrap_or(1);
                let pad = self.vocab.source_specials.pad;
                let ids: Vec<u32> = chunk
                    .iter()
                    .flat_map(|s| s.iter().copied().chain(std::iter::repeat_n(pad, longest - s.len())))
                    .collect();
                let keep: Vec<u32> = chunk.iter().flat_map(|s| (0..longest).map(|i| (i < s.len()) as u32)).collect();
                let ids = Tensor::from_vec(ids, (chunk.len(), longest), &self.device)?;
                let keep = Tensor::from_vec(keep, (chunk.len(), longest), &self.device)?;
                let memory = self.model.encode(&ids, Some(&keep), &mut Mode::eval())?;
                for output in greedy(&self.model, &memory, limits, true)? {
                    outputs.push(vec![self.vocab.target_text(&output)?]);
                }
            }
        } else {
            for source in &sources {
                let ids = Tensor::from_vec(source.clone(), (1, source.len()), &self.device)?;
                let memory = self.model.encode(&ids, None, &mut Mode::eval())?;
                let hypotheses = beam_search(&self.model, &memory, limits, beam)?;
                outputs.push(hypotheses.iter().map(|h| self.vocab.target_text(&h.tokens)).collect::<Result<_>>()?);
            }
        }
        Ok(outputs)
    }

    /// Loss, token accuracy, exact match and BLEU (greedy decoding) on a file of pairs.
    pub fn evaluate(&self, file: &Path) -> Result<Evaluation> {
        let task = settings(&self.config)?;
        let pairs = read_pairs(file, &task.source_column, &task.target_column)?;
        let encoded = encode(&self.config, &self.vocab, &pairs, file)?;
        let references: Vec<String> = pairs.into_iter().map(|p| p.target).collect();
        let (encoded, references): (Vec<&EncodedPair>, Vec<&String>) =
            (encoded.iter().collect(), references.iter().collect());
        let limits = self.vocab.limits(&self.config)?;
        Ok(from_tally(&tally(&self.model, &self.vocab, &encoded, &references, limits, &self.device)?))
    }
}

impl Trained for TrainedSeq2Seq {
    fn checkpoint(&self) -> &Path {
        &self.checkpoint
    }

    /// On `file`, or the run's `data.val_path`.
    fn evaluate(&self, file: Option<&Path>) -> Result<(Evaluation, String)> {
        let file = file.map_or_else(|| self.config.val_file(), |f| Ok(f.to_path_buf()))?;
        Ok((TrainedSeq2Seq::evaluate(self, &file)?, file.display().to_string()))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
