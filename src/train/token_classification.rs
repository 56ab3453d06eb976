//! Token classification (NER-style): tagged sentences -> sub-word tokens, each word's tag on
//! its first sub-word (the others are left out of the loss) -> a token classifier (an encoder,
//! a linear head) -> cross-entropy; evaluated by token accuracy and seqeval's entity precision, recall and
//! F1 on the validation file. A trained tagger loaded back: `taper eval` and `taper predict`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::classification::{probabilities, EVAL_BATCH};
use super::encoder::{self, with_loaded, EncoderArch};
use super::shared::{detached, split_sums};
use super::task::{Evaluation, Task, Trained};
use super::{run_task, settings_of, Launch, RunSummary, TaskKind, TaskSettings, TaskSpec};
use crate::config::{higher, Architecture, Config, Metric, VAL_LOSS};
use crate::data::labelled::LabelSet;
use crate::data::padded::{pad_batch, PaddedBatch};
use crate::data::sampling::EpochSampler;
use crate::data::tagged::{encode_words, read_tagged, EncodedWords, TagColumns, TaggedSentence};
use crate::data::TextTokenizer;
use crate::entity_metrics::EntityCounts;
use crate::hf::Head;
use crate::host;
use crate::model::encoder::TokenClassifier;
use crate::model::{Mode, ParamStore};
use crate::run_dir::{OpenedCheckpoint, RunDir};

/// `task.kind = "token-classification"`: one tag per word (named entities, NER-style), from
/// CoNLL or JSONL files (encoder-only).
pub struct TokenClassificationSpec;

pub static TOKEN_CLASSIFICATION: TokenClassificationSpec = TokenClassificationSpec;

/// `[task]` of `kind = "token-classification"`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokenClassificationTask {
    /// JSONL keys of a sentence's word list and its tag list (CoNLL files: the first and the
    /// last whitespace-separated field of each line).
    #[serde(default = "default_tokens_column")]
    pub tokens_column: String,
    #[serde(default = "default_tags_column")]
    pub tags_column: String,
    /// Truncate encoded sentences to this many sub-word tokens ([CLS] and [SEP] included); the
    /// words cut off are left out of the loss and the metrics. The model's maximum positions
    /// when absent.
    pub max_len: Option<usize>,
    /// How the tags mark entities: "iob2" (B- starts every entity), "iob1", "iobes".
    #[serde(default = "default_scheme")]
    pub scheme: crate::entity_metrics::Scheme,
    /// Entity metrics as seqeval's `mode="strict"` with the scheme (an entity counts only when
    /// its tags form a well-made span); false: seqeval's default (conlleval's) matching.
    #[serde(default = "yes")]
    pub strict: bool,
}

fn default_tokens_column() -> String {
    "tokens".into()
}
fn default_tags_column() -> String {
    "tags".into()
}
fn default_scheme() -> crate::entity_metrics::Scheme {
    crate::entity_metrics::Scheme::Iob2
}
fn yes() -> bool {
    true
}

impl TaskSpec for TokenClassificationSpec {
    fn name(&self) -> &'static str {
        "token-classification"
    }
    fn arch(&self) -> Architecture {
        Architecture::EncoderOnly
    }
    fn metrics(&self) -> &'static [Metric] {
        const METRICS: [Metric; 5] =
            [VAL_LOSS, higher("token_accuracy"), higher("precision"), higher("recall"), higher("f1")];
        &METRICS
    }
    fn settings(&self, table: toml::Table) -> Result<Box<dyn TaskSettings>, toml::de::Error> {
        settings_of::<TokenClassificationTask>(table)
    }
    fn validate(&self, cfg: &Config) -> Result<()> {
        if task(cfg)?.max_len.is_some_and(|n| n < 3) {
            bail!("`task.max_len` must be at least 3 ([CLS], one token, [SEP])");
        }
        Ok(())
    }
    fn predicts(&self) -> bool {
        true
    }
    fn head(&self, _cfg: &Config) -> Result<Head> {
        Ok(Head::TokenClassification)
    }
    fn train(&self, cfg: &Config, launch: &Launch) -> Result<RunSummary> {
        run_task(&TokenClassification::new(cfg, launch.run, launch.resuming, launch.params, launch.device)?, launch)
    }
    fn load(&self, opened: OpenedCheckpoint) -> Result<Box<dyn Trained>> {
        Ok(Box::new(TrainedTagger::from_checkpoint(opened)?))
    }
}

/// A sentence ready for the model: its tokens, where its words start, and their tag ids.
struct TaggedRow {
    words: EncodedWords,
    tags: Vec<u32>,
}

pub struct TokenClassification {
    cfg: Config,
    model: TokenClassifier,
    arch: EncoderArch,
    labels: LabelSet,
    train: Vec<TaggedRow>,
    val: Vec<TaggedRow>,
    pad_id: u32,
    sampler: EpochSampler,
    /// Words of the training file past `task.max_len` (left out of the loss).
    cut_words: usize,
    loaded: Option<String>,
    device: Device,
}

fn task(cfg: &Config) -> Result<&TokenClassificationTask> {
    cfg.task.settings::<TokenClassificationTask>()
}

fn read(cfg: &Config, path: &Path, require_tags: bool) -> Result<Vec<TaggedSentence>> {
    let task = task(cfg)?;
    let columns = TagColumns { tokens: task.tokens_column.clone(), tags: task.tags_column.clone() };
    read_tagged(path, &columns, task.scheme, require_tags)
}

/// The tags of the training sentences, sorted: tag i is output i.
fn tag_set(sentences: &[TaggedSentence], source: &Path) -> Result<LabelSet> {
    let names: std::collections::BTreeSet<String> =
        sentences.iter().flat_map(|s| s.tags.iter().flatten().cloned()).collect();
    if names.len() < 2 {
        anyhow::bail!("{}: a tagger needs at least two tags; the training data has {}", source.display(), names.len());
    }
    Ok(LabelSet { names: names.into_iter().collect() })
}

/// Encodes `sentences` and maps their tags to ids; a tag outside `labels` is an error naming
/// the file and line.
fn encode_tagged(
    tokenizer: &TextTokenizer,
    sentences: &[TaggedSentence],
    labels: &LabelSet,
    max_len: usize,
    source: &Path,
) -> Result<Vec<TaggedRow>> {
    let encoded = encode_words(tokenizer, sentences, max_len, source)?;
    sentences
        .iter()
        .zip(encoded)
        .map(|(sentence, words)| {
            let tags = sentence.tags.as_deref().unwrap_or_default();
            let tags = tags.iter().map(|t| labels.id(t, source, sentence.line)).collect::<Result<Vec<u32>>>()?;
            Ok(TaggedRow { words, tags })
        })
        .collect()
}

fn cut_words(rows: &[TaggedRow]) -> usize {
    rows.iter().map(|r| r.words.first_token.iter().filter(|t| t.is_none()).count()).sum()
}

impl TokenClassification {
    /// Reads the tagged files, sets up the encoder (pretrained or resumed), and builds the
    /// model over `params`, loading the pretrained weights on a fresh run.
    pub fn new(cfg: &Config, run: &RunDir, resuming: bool, params: &ParamStore, device: &Device) -> Result<Self> {
        let setup = encoder::setup(cfg, run, resuming, None)?;
        let (arch, tokenizer, config) = (setup.arch, &setup.tokenizer, &setup.config);
        let max_len = encoder::max_len(task(config)?.max_len, &config.model)?;
        let rows = encoder::labelled_rows(
            cfg,
            run,
            resuming,
            "sentences",
            |path| read(cfg, path, true),
            tag_set,
            |sentences, labels, source| encode_tagged(tokenizer, sentences, labels, max_len, source),
        )?;
        let (labels, train, val) = (rows.labels, rows.train, rows.val);
        let pad_id = arch.special_id(tokenizer, |t| t.pad, "padding batches")?;
        let vb = arch.renamed(&config.model, params.var_builder(cfg.train.seed, device));
        let model = build_model(config, &arch, labels.names.len(), vb)?;
        let loaded = encoder::load_pretrained(&setup, params, device, &["tagger"])?;
        let sampler = EpochSampler::new(cfg.train.seed, train.len());
        let cut_words = cut_words(&train);
        Ok(Self {
            cfg: setup.config,
            model,
            arch,
            labels,
            train,
            val,
            pad_id,
            sampler,
            cut_words,
            loaded,
            device: device.clone(),
        })
    }
}

/// The tagger a run's config describes, over `vb` (seen through the family's names).
fn build_model(cfg: &Config, arch: &EncoderArch, num_labels: usize, vb: VarBuilder) -> Result<TokenClassifier> {
    Ok(TokenClassifier::new(&cfg.model, arch.vocab, num_labels, vb)?.styled(arch.family.head_style(), &cfg.model))
}

/// The padded batch of `rows` and the flat (B * T) positions of their scored words' first
/// sub-words, row by row.
fn batch_of(rows: &[&EncodedWords], pad_id: u32, device: &Device) -> Result<(PaddedBatch, Tensor, usize)> {
    let padded = pad_batch(rows.iter().map(|r| &r.encoded), pad_id, device)?;
    let width = padded.ids.dim(1)?;
    let positions: Vec<u32> =
        rows.iter().enumerate().flat_map(|(i, r)| r.scored_words().map(move |(_, t)| (i * width + t) as u32)).collect();
    let n = positions.len();
    Ok((padded, Tensor::from_vec(positions, n, device)?, n))
}

/// Tag logits of each row's scored words (row by row, in input order), without a graph.
/// Rows are batched by length so that little of each batch is padding.
fn word_logits(
    model: &TokenClassifier,
    rows: &[&EncodedWords],
    pad_id: u32,
    device: &Device,
) -> Result<Vec<Vec<Vec<f32>>>> {
    let mut by_length: Vec<usize> = (0..rows.len()).collect();
    by_length.sort_by_key(|&i| rows[i].encoded.ids.len());
    let mut out = vec![Vec::new(); rows.len()];
    for chunk in by_length.chunks(EVAL_BATCH) {
        let batch_rows: Vec<&EncodedWords> = chunk.iter().map(|&i| rows[i]).collect();
        let (batch, positions, n) = batch_of(&batch_rows, pad_id, device)?;
        if n == 0 {
            continue;
        }
        let logits =
            model.logits_at(&batch.ids, Some(&batch.type_ids), Some(&batch.mask), &positions, &mut Mode::eval())?;
        let mut logits = host::vec2::<f32>(&logits.to_dtype(DType::F32)?)?.into_iter();
        for &i in chunk {
            out[i] = logits.by_ref().take(rows[i].scored_words().count()).collect();
        }
    }
    Ok(out)
}

/// Softmax of a row, in f64, and its best index.
fn softmax_best(logits: &[f32]) -> (Vec<f64>, usize) {
    let p = probabilities(logits);
    let best = (0..p.len()).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap_or(0);
    (p, best)
}

/// What the metrics are computed from, as sums (so ranks' shares add up): [loss sum, scored
/// words, correct words, correct entities, predicted entities, true entities].
fn tally(
    model: &TokenClassifier,
    rows: &[&TaggedRow],
    labels: &LabelSet,
    task: &TokenClassificationTask,
    pad_id: u32,
    device: &Device,
) -> Result<Vec<f64>> {
    let inputs: Vec<&EncodedWords> = rows.iter().map(|r| &r.words).collect();
    let all = word_logits(model, &inputs, pad_id, device)?;
    let (mut sums, mut entities) = (vec![0f64; 6], EntityCounts::default());
    for (row, logits) in rows.iter().zip(&all) {
        let (mut truth, mut predicted) = (Vec::new(), Vec::new());
        for ((w, _), logits) in row.words.scored_words().zip(logits) {
            let (p, best) = softmax_best(logits);
            let gold = row.tags[w] as usize;
            sums[0] -= p[gold].max(1e-300).ln();
            sums[1] += 1.0;
            sums[2] += (best == gold) as u8 as f64;
            truth.push(labels.names[gold].as_str());
            predicted.push(labels.names[best].as_str());
        }
        entities.add(EntityCounts::of(&truth, &predicted, task.scheme, task.strict));
    }
    sums[3..].copy_from_slice(&[entities.correct as f64, entities.predicted as f64, entities.true_entities as f64]);
    Ok(sums)
}

/// The metrics of summed tallies.
fn from_tally(sums: &[f64]) -> Evaluation {
    let counts =
        EntityCounts { correct: sums[3] as usize, predicted: sums[4] as usize, true_entities: sums[5] as usize };
    let (precision, recall, f1) = counts.scores();
    let words = sums[1].max(1.0);
    BTreeMap::from([
        ("val_loss".to_string(), sums[0] / words),
        ("token_accuracy".to_string(), sums[2] / words),
        ("precision".to_string(), precision),
        ("recall".to_string(), recall),
        ("f1".to_string(), f1),
    ])
}

impl Task for TokenClassification {
    /// The padded inputs, the flat positions of the tagged sub-words (N) u32 and their tag ids (N) u32.
    type Batch = (PaddedBatch, Tensor, Tensor);

    fn describe(&self) -> String {
        let cut = match self.cut_words {
            0 => String::new(),
            n => format!("; {n} training words past `task.max_len` left out"),
        };
        let data = format!(
            "{} train / {} val sentences, tags {}{cut}",
            self.train.len(),
            self.val.len(),
            self.labels.names.join(", ")
        );
        with_loaded(data, &self.loaded)
    }

    fn config(&self) -> &Config {
        &self.cfg
    }

    fn train_batch(&self, step: usize, micro: usize) -> Result<Self::Batch> {
        let train = &self.cfg.train;
        let indices = self.sampler.batch(step, micro, train.grad_accum, train.batch_size);
        let rows: Vec<&EncodedWords> = indices.iter().map(|&i| &self.train[i].words).collect();
        let (padded, positions, n) = batch_of(&rows, self.pad_id, &self.device)?;
        let tags: Vec<u32> = indices
            .iter()
            .flat_map(|&i| self.train[i].words.scored_words().map(move |(w, _)| self.train[i].tags[w]))
            .collect();
        Ok((padded, positions, Tensor::from_vec(tags, n, &self.device)?))
    }

    fn embedding_tables(&self) -> Vec<Tensor> {
        self.model.encoder.embedding_tables()
    }

    fn targets(&self, batch: &Self::Batch) -> usize {
        batch.2.elem_count()
    }

    fn tokens(&self, batch: &Self::Batch) -> usize {
        batch.0.tokens
    }

    fn context(&self) -> usize {
        task(&self.cfg).and_then(|t| encoder::max_len(t.max_len, &self.cfg.model)).unwrap_or(self.cfg.model.block_size)
    }

    fn residual_rms(&self, (inputs, ..): &Self::Batch) -> Result<BTreeMap<String, f64>> {
        encoder::residual_rms(&self.arch, &self.cfg.model, &self.model.encoder, &inputs.ids, Some(&inputs.mask))
    }

    fn loss_sum(&self, (inputs, positions, tags): &Self::Batch, mode: &mut Mode) -> Result<Tensor> {
        let logits = self.model.logits_at(&inputs.ids, Some(&inputs.type_ids), Some(&inputs.mask), positions, mode)?;
        Ok(mode.backend().cross_entropy_sum(&logits, tags)?)
    }

    /// Each rank scores val sentences rank, rank + size, ...; the sums (loss, words, entity
    /// counts) are added over the ranks, so the metrics are the one process's.
    fn evaluate(&self, params: &ParamStore, world: &dyn crate::distributed::Collective) -> Result<Evaluation> {
        let vb = self.arch.renamed(&self.cfg.model, detached(params, &self.device));
        let model = build_model(&self.cfg, &self.arch, self.labels.names.len(), vb)?;
        let task = task(&self.cfg)?;
        let sums =
            split_sums(world, &self.val, |mine| tally(&model, mine, &self.labels, task, self.pad_id, &self.device))?;
        Ok(from_tally(&sums))
    }

    fn splits_evaluation(&self) -> bool {
        true
    }
}

/// A trained tagger loaded back from its run directory: `taper eval` (loss, token accuracy,
/// entity precision / recall / F1 on a tagged file) and `taper predict` (a tag per word).
pub struct TrainedTagger {
    pub config: Config,
    pub tokenizer: TextTokenizer,
    pub labels: LabelSet,
    pub model: TokenClassifier,
    pub checkpoint: PathBuf,
    pad_id: u32,
    device: Device,
}

impl TrainedTagger {
    pub fn from_checkpoint(opened: OpenedCheckpoint) -> Result<Self> {
        let arch = encoder::trained_arch(&opened)?;
        let tokenizer = TextTokenizer::load(&opened.run.tokenizer())?;
        let labels = opened.run.read_labels()?;
        let (cfg, n) = (&opened.config, labels.names.len());
        let model = opened.build(|vb| build_model(cfg, &arch, n, arch.renamed(&cfg.model, vb)))?;
        let pad_id = arch.special_id(&tokenizer, |t| t.pad, "padding batches")?;
        let OpenedCheckpoint { config, checkpoint, device, .. } = opened;
        Ok(Self { config, tokenizer, labels, model, checkpoint, pad_id, device })
    }

    pub fn load(run_dir: &Path, which: &str, device: &str) -> Result<Self> {
        Self::from_checkpoint(OpenedCheckpoint::open(run_dir, which, device, TaskKind::new(&TOKEN_CLASSIFICATION))?)
    }

    fn max_len(&self) -> Result<usize> {
        encoder::max_len(task(&self.config)?.max_len, &self.config.model)
    }

    /// Loss, token accuracy and entity precision / recall / F1 on a tagged file.
    pub fn evaluate(&self, file: &Path) -> Result<Evaluation> {
        let sentences = read(&self.config, file, true)?;
        let rows = encode_tagged(&self.tokenizer, &sentences, &self.labels, self.max_len()?, file)?;
        let rows: Vec<&TaggedRow> = rows.iter().collect();
        Ok(from_tally(&tally(&self.model, &rows, &self.labels, task(&self.config)?, self.pad_id, &self.device)?))
    }

    /// One JSON object per input sentence: its line, words, a predicted tag per word and that
    /// tag's probability. Words past `task.max_len` (or without a token) get `O` and a null
    /// probability, and are listed under `unscored`. Tags in the input must be ones the model
    /// knows.
    pub fn predict(&self, input: &Path) -> Result<Vec<serde_json::Value>> {
        let sentences = read(&self.config, input, false)?;
        let rows = encode_tagged(&self.tokenizer, &sentences, &self.labels, self.max_len()?, input)?;
        let inputs: Vec<&EncodedWords> = rows.iter().map(|r| &r.words).collect();
        let all = word_logits(&self.model, &inputs, self.pad_id, &self.device)?;
        Ok(sentences
            .iter()
            .zip(&rows)
            .zip(all)
            .map(|((sentence, row), logits)| {
                let n = sentence.words.len();
                let (mut tags, mut confidence) = (vec![json!("O"); n], vec![serde_json::Value::Null; n]);
                for ((w, _), logits) in row.words.scored_words().zip(&logits) {
                    let (p, best) = softmax_best(logits);
                    tags[w] = json!(self.labels.names[best]);
                    confidence[w] = json!(p[best]);
                }
                let mut record =
                    json!({"line": sentence.line, "tokens": sentence.words, "tags": tags, "confidence": confidence});
                let unscored: Vec<usize> = (0..n).filter(|&w| row.words.first_token[w].is_none()).collect();
                if !unscored.is_empty() {
                    record["unscored"] = json!(unscored);
                }
                record
            })
            .collect())
    }
}

impl Trained for TrainedTagger {
    fn checkpoint(&self) -> &Path {
        &self.checkpoint
    }

    /// On `file`, or the run's `data.val_path`.
    fn evaluate(&self, file: Option<&Path>) -> Result<(Evaluation, String)> {
        let file = file.map_or_else(|| self.config.val_file(), |f| Ok(f.to_path_buf()))?;
        Ok((TrainedTagger::evaluate(self, &file)?, file.display().to_string()))
    }

    fn predict(&self, input: &Path) -> Result<Vec<serde_json::Value>> {
        TrainedTagger::predict(self, input)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
