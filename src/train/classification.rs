//! Sequence classification: labelled texts (or text pairs) -> padded batches -> the
//! sequence classifier (an encoder, a pooler, a linear head) -> cross-entropy; evaluated by loss, accuracy and
//! macro-F1 on the validation file. A trained classifier loaded back: `taper eval` and
//! `taper predict`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::encoder::{self, with_loaded, EncoderArch};
use super::shared::{detached, split_sums};
use super::task::{Evaluation, Task, Trained};
use super::{run_task, settings_of, Launch, RunSummary, TaskKind, TaskSettings, TaskSpec};
use crate::classification_metrics::classification_scores;
use crate::config::{higher, Architecture, Config, Metric, VAL_LOSS};
use crate::data::labelled::{read_labelled, Columns, Example, LabelSet};
use crate::data::padded::{encode_examples, pad_batch, Encoded, PaddedBatch};
use crate::data::sampling::EpochSampler;
use crate::data::TextTokenizer;
use crate::hf::Head;
use crate::host;
use crate::model::encoder::{Pooling, SequenceClassifier};
use crate::model::{Mode, ParamStore};
use crate::run_dir::{OpenedCheckpoint, RunDir};

/// Examples per forward pass when evaluating or predicting.
pub const EVAL_BATCH: usize = 32;

/// `task.kind = "sequence-classification"`: one label per text (or text pair), from a labelled
/// file (encoder-only).
pub struct SequenceClassificationSpec;

pub static SEQUENCE_CLASSIFICATION: SequenceClassificationSpec = SequenceClassificationSpec;

/// `[task]` of `kind = "sequence-classification"`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClassificationTask {
    /// Column (CSV/TSV header, or JSONL key) of the text.
    #[serde(default = "default_text_column")]
    pub text_column: String,
    /// Column of an optional second text (sentence pairs), encoded as [CLS] a [SEP] b [SEP].
    pub text_pair_column: Option<String>,
    #[serde(default = "default_label_column")]
    pub label_column: String,
    /// Truncate encoded inputs to this many tokens; the model's maximum positions when absent.
    /// Batches are padded to their longest input.
    pub max_len: Option<usize>,
    #[serde(default = "default_pooling")]
    pub pooling: PoolingName,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum PoolingName {
    /// The encoder family's head: `pooler` (dense) + tanh on the first ([CLS]) token.
    Cls,
    /// Mean of the real tokens' hidden states.
    Mean,
}

fn default_text_column() -> String {
    "text".into()
}
fn default_label_column() -> String {
    "label".into()
}
fn default_pooling() -> PoolingName {
    PoolingName::Cls
}

impl TaskSpec for SequenceClassificationSpec {
    fn name(&self) -> &'static str {
        "sequence-classification"
    }
    fn arch(&self) -> Architecture {
        Architecture::EncoderOnly
    }
    fn metrics(&self) -> &'static [Metric] {
        const METRICS: [Metric; 3] = [VAL_LOSS, higher("accuracy"), higher("macro_f1")];
        &METRICS
    }
    fn settings(&self, table: toml::Table) -> Result<Box<dyn TaskSettings>, toml::de::Error> {
        settings_of::<ClassificationTask>(table)
    }
    fn validate(&self, cfg: &Config) -> Result<()> {
        if settings(cfg)?.max_len.is_some_and(|n| n < 3) {
            bail!("`task.max_len` must be at least 3 ([CLS], one token, [SEP])");
        }
        Ok(())
    }
    fn predicts(&self) -> bool {
        true
    }
    fn head(&self, cfg: &Config) -> Result<Head> {
        if settings(cfg)?.pooling != PoolingName::Cls {
            bail!("mean pooling has no Hugging Face ...ForSequenceClassification equivalent");
        }
        Ok(Head::SequenceClassification)
    }
    fn train(&self, cfg: &Config, launch: &Launch) -> Result<RunSummary> {
        run_task(&Classification::new(cfg, launch.run, launch.resuming, launch.params, launch.device)?, launch)
    }
    fn load(&self, opened: OpenedCheckpoint) -> Result<Box<dyn Trained>> {
        Ok(Box::new(TrainedClassifier::from_checkpoint(opened)?))
    }
}

fn settings(cfg: &Config) -> Result<&ClassificationTask> {
    cfg.task.settings::<ClassificationTask>()
}

pub struct Classification {
    cfg: Config,
    model: SequenceClassifier,
    arch: EncoderArch,
    labels: LabelSet,
    train: Vec<(Encoded, u32)>,
    val: Vec<(Encoded, u32)>,
    pad_id: u32,
    sampler: EpochSampler,
    /// What loading the pretrained weights did (fresh runs with `model.init_from`).
    loaded: Option<String>,
    device: Device,
}

fn columns(cfg: &Config) -> Result<Columns> {
    let task = settings(cfg)?;
    Ok(Columns {
        text: task.text_column.clone(),
        text_pair: task.text_pair_column.clone(),
        label: task.label_column.clone(),
    })
}

fn pooling(cfg: &Config) -> Result<Pooling> {
    Ok(match settings(cfg)?.pooling {
        PoolingName::Cls => Pooling::Cls,
        PoolingName::Mean => Pooling::Mean,
    })
}

/// The longest input the model takes: `task.max_len`, at most the model's positions.
fn max_len(cfg: &Config) -> Result<usize> {
    encoder::max_len(settings(cfg)?.max_len, &cfg.model)
}

/// Encodes `examples` and maps their labels to ids; a label outside `labels` is an error
/// naming the file and line.
fn encode_labelled(
    tokenizer: &TextTokenizer,
    examples: &[Example],
    labels: &LabelSet,
    max_len: usize,
    source: &Path,
) -> Result<Vec<(Encoded, u32)>> {
    let encoded = encode_examples(tokenizer, examples, max_len, source)?;
    examples
        .iter()
        .zip(encoded)
        .map(|(example, encoded)| {
            let label =
                example.label.as_deref().with_context(|| format!("{}:{}: no label", source.display(), example.line))?;
            Ok((encoded, labels.id(label, source, example.line)?))
        })
        .collect()
}

impl Classification {
    /// Reads the labelled files, sets up the encoder (pretrained or resumed), and builds the
    /// model over `params`, loading the pretrained weights on a fresh run.
    pub fn new(cfg: &Config, run: &RunDir, resuming: bool, params: &ParamStore, device: &Device) -> Result<Self> {
        let setup = encoder::setup(cfg, run, resuming, None)?;
        let (arch, tokenizer, config) = (setup.arch, &setup.tokenizer, &setup.config);
        let (columns, max_len) = (columns(cfg)?, max_len(config)?);
        let rows = encoder::labelled_rows(
            cfg,
            run,
            resuming,
            "examples",
            |path| read_labelled(path, &columns, true),
            |examples, source| LabelSet::from_examples(examples).with_context(|| format!("in {}", source.display())),
            |examples, labels, source| encode_labelled(tokenizer, examples, labels, max_len, source),
        )?;
        let (labels, train, val) = (rows.labels, rows.train, rows.val);
        let pad_id = arch.special_id(tokenizer, |t| t.pad, "padding batches")?;
        let vb = arch.renamed(&config.model, params.var_builder(cfg.train.seed, device));
        let model = build_model(config, &arch, labels.names.len(), vb)?;
        let loaded = encoder::load_pretrained(&setup, params, device, &["pooler", "classifier"])?;
        let sampler = EpochSampler::new(cfg.train.seed, train.len());
        let device = device.clone();
        Ok(Self { cfg: setup.config, model, arch, labels, train, val, pad_id, sampler, loaded, device })
    }
}

/// The classifier a run's config describes, over `vb` (seen through the family's names).
fn build_model(cfg: &Config, arch: &EncoderArch, num_labels: usize, vb: VarBuilder) -> Result<SequenceClassifier> {
    let model = SequenceClassifier::new(&cfg.model, arch.vocab, num_labels, pooling(cfg)?, vb)?;
    Ok(model.styled(arch.family.head_style()))
}

/// Logits (one row per input, in input order) of `model` on `rows`, without a graph. Inputs
/// are batched by length so that little of each batch is padding.
fn logits(model: &SequenceClassifier, rows: &[&Encoded], pad_id: u32, device: &Device) -> Result<Vec<Vec<f32>>> {
    let mut by_length: Vec<usize> = (0..rows.len()).collect();
    by_length.sort_by_key(|&i| rows[i].ids.len());
    let mut out = vec![Vec::new(); rows.len()];
    for chunk in by_length.chunks(EVAL_BATCH) {
        let batch = pad_batch(chunk.iter().map(|&i| rows[i]), pad_id, device)?;
        let logits = model.forward(&batch.ids, Some(&batch.type_ids), Some(&batch.mask), &mut Mode::eval())?;
        for (&i, row) in chunk.iter().zip(host::vec2::<f32>(&logits.to_dtype(DType::F32)?)?) {
            out[i] = row;
        }
    }
    Ok(out)
}

/// Softmax of a row of logits, computed in f64.
pub fn probabilities(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let exps: Vec<f64> = logits.iter().map(|&l| (l as f64 - max).exp()).collect();
    let total: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / total).collect()
}

/// Loss, accuracy and macro-F1 of `model` on labelled rows.
fn score(
    model: &SequenceClassifier,
    rows: &[(Encoded, u32)],
    num_labels: usize,
    pad_id: u32,
    device: &Device,
) -> Result<Evaluation> {
    let rows: Vec<&(Encoded, u32)> = rows.iter().collect();
    from_tally(&tally(model, &rows, num_labels, pad_id, device)?, num_labels)
}

/// What the metrics are computed from, as sums (so ranks' shares add up): [loss sum, rows,
/// confusion counts with predicted p and label y at 2 + p * num_labels + y].
fn tally(
    model: &SequenceClassifier,
    rows: &[&(Encoded, u32)],
    num_labels: usize,
    pad_id: u32,
    device: &Device,
) -> Result<Vec<f64>> {
    let inputs: Vec<&Encoded> = rows.iter().map(|(e, _)| e).collect();
    let all = logits(model, &inputs, pad_id, device)?;
    let mut sums = vec![0f64; 2 + num_labels * num_labels];
    for (row, (_, label)) in all.iter().zip(rows) {
        let p = probabilities(row);
        sums[0] -= p[*label as usize].max(1e-300).ln();
        sums[1] += 1.0;
        let best = (0..p.len()).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap_or(0);
        sums[2 + best * num_labels + *label as usize] += 1.0;
    }
    Ok(sums)
}

/// The metrics of summed tallies.
fn from_tally(sums: &[f64], num_labels: usize) -> Result<Evaluation> {
    let (mut predicted, mut labels) = (Vec::new(), Vec::new());
    for (cell, &count) in sums[2..].iter().enumerate() {
        for _ in 0..count as usize {
            predicted.push((cell / num_labels) as u32);
            labels.push((cell % num_labels) as u32);
        }
    }
    let scores = classification_scores(&predicted, &labels, num_labels)?;
    Ok(BTreeMap::from([
        ("val_loss".to_string(), sums[0] / sums[1].max(1.0)),
        ("accuracy".to_string(), scores.accuracy),
        ("macro_f1".to_string(), scores.macro_f1),
    ]))
}

impl Task for Classification {
    /// The padded inputs and the label ids (B) u32.
    type Batch = (PaddedBatch, Tensor);

    fn describe(&self) -> String {
        let data = format!(
            "{} train / {} val examples, labels {}",
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
        let rows: Vec<&Encoded> = indices.iter().map(|&i| &self.train[i].0).collect();
        let labels: Vec<u32> = indices.iter().map(|&i| self.train[i].1).collect();
        let padded = pad_batch(rows.into_iter(), self.pad_id, &self.device)?;
        Ok((padded, Tensor::from_vec(labels, indices.len(), &self.device)?))
    }

    fn embedding_tables(&self) -> Vec<Tensor> {
        self.model.encoder.embedding_tables()
    }

    fn targets(&self, batch: &Self::Batch) -> usize {
        batch.1.elem_count()
    }

    fn tokens(&self, batch: &Self::Batch) -> usize {
        batch.0.tokens
    }

    fn context(&self) -> usize {
        max_len(&self.cfg).unwrap_or(self.cfg.model.block_size)
    }

    fn residual_rms(&self, (inputs, _): &Self::Batch) -> Result<BTreeMap<String, f64>> {
        encoder::residual_rms(&self.arch, &self.cfg.model, &self.model.encoder, &inputs.ids, Some(&inputs.mask))
    }

    fn loss_sum(&self, (inputs, labels): &Self::Batch, mode: &mut Mode) -> Result<Tensor> {
        let logits = self.model.forward(&inputs.ids, Some(&inputs.type_ids), Some(&inputs.mask), mode)?;
        Ok(mode.backend().cross_entropy_sum(&logits, labels)?)
    }

    /// Each rank scores val rows rank, rank + size, ...; the loss and the confusion counts are
    /// summed over the ranks, so accuracy and macro-F1 are the one process's.
    fn evaluate(&self, params: &ParamStore, world: &dyn crate::distributed::Collective) -> Result<Evaluation> {
        let n = self.labels.names.len();
        let vb = self.arch.renamed(&self.cfg.model, detached(params, &self.device));
        let model = build_model(&self.cfg, &self.arch, n, vb)?;
        let sums = split_sums(world, &self.val, |mine| tally(&model, mine, n, self.pad_id, &self.device))?;
        from_tally(&sums, n)
    }

    fn splits_evaluation(&self) -> bool {
        true
    }
}

/// A trained classifier loaded back from its run directory: `taper eval` (loss, accuracy,
/// macro-F1 on a labelled file) and `taper predict` (label and probabilities per input line).
pub struct TrainedClassifier {
    pub config: Config,
    pub tokenizer: TextTokenizer,
    pub labels: LabelSet,
    pub model: SequenceClassifier,
    pub checkpoint: PathBuf,
    pad_id: u32,
    device: Device,
}

impl TrainedClassifier {
    /// `which`: "latest", "best" or "step-N"; `device` as in `train.device`.
    pub fn load(run_dir: &Path, which: &str, device: &str) -> Result<Self> {
        Self::from_checkpoint(OpenedCheckpoint::open(run_dir, which, device, TaskKind::new(&SEQUENCE_CLASSIFICATION))?)
    }

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

    /// Loss, accuracy and macro-F1 on a labelled file (columns as in training).
    pub fn evaluate(&self, file: &Path) -> Result<Evaluation> {
        let examples = read_labelled(file, &columns(&self.config)?, true)?;
        let rows = encode_labelled(&self.tokenizer, &examples, &self.labels, max_len(&self.config)?, file)?;
        score(&self.model, &rows, self.labels.names.len(), self.pad_id, &self.device)
    }

    /// One JSON object per input example: its line, text, predicted label and the probability
    /// of every label. A label present in the input must be one the model knows.
    pub fn predict(&self, input: &Path) -> Result<Vec<serde_json::Value>> {
        let examples = read_labelled(input, &columns(&self.config)?, false)?;
        for example in &examples {
            if let Some(label) = &example.label {
                self.labels.id(label, input, example.line)?;
            }
        }
        let encoded = encode_examples(&self.tokenizer, &examples, max_len(&self.config)?, input)?;
        let rows: Vec<_> = encoded.iter().collect();
        let all = logits(&self.model, &rows, self.pad_id, &self.device)?;
        Ok(examples
            .iter()
            .zip(all)
            .map(|(example, logits)| {
                let p = probabilities(&logits);
                let best = (0..p.len()).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap_or(0);
                let by_label: serde_json::Map<String, serde_json::Value> =
                    self.labels.names.iter().zip(&p).map(|(n, v)| (n.clone(), json!(v))).collect();
                let mut record = json!({"line": example.line, "text": example.text, "label": self.labels.names[best], "probabilities": by_label});
                if let Some(pair) = &example.text_pair {
                    record["text_pair"] = json!(pair);
                }
                record
            })
            .collect())
    }
}

impl Trained for TrainedClassifier {
    fn checkpoint(&self) -> &Path {
        &self.checkpoint
    }

    /// On `file`, or the run's `data.val_path`.
    fn evaluate(&self, file: Option<&Path>) -> Result<(Evaluation, String)> {
        let file = file.map_or_else(|| self.config.val_file(), |f| Ok(f.to_path_buf()))?;
        Ok((TrainedClassifier::evaluate(self, &file)?, file.display().to_string()))
    }

    fn predict(&self, input: &Path) -> Result<Vec<serde_json::Value>> {
        TrainedClassifier::predict(self, input)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
