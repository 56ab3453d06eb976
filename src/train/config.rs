//! `[train]`, `[checkpoint]` and `[task]`: the loop, its checkpoints, and what it trains.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum DTypeName {
    F32,
    Bf16,
    F16,
}

/// `train.eval_batches`: how much of the val split an evaluation reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvalBatches {
    /// This many batches of blocks drawn at seeded random offsets (the same at every evaluation).
    Sampled(usize),
    /// Every non-overlapping block of the val split, in order.
    All,
}

impl Serialize for EvalBatches {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Self::Sampled(n) => serializer.serialize_u64(*n as u64),
            Self::All => serializer.serialize_str("all"),
        }
    }
}

impl<'de> Deserialize<'de> for EvalBatches {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = EvalBatches;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number of batches or \"all\"")
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> std::result::Result<EvalBatches, E> {
                usize::try_from(n)
                    .map(EvalBatches::Sampled)
                    .map_err(|_| E::custom("the number of batches cannot be negative"))
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> std::result::Result<EvalBatches, E> {
                Ok(EvalBatches::Sampled(n as usize))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> std::result::Result<EvalBatches, E> {
                match s {
                    "all" => Ok(EvalBatches::All),
                    other => Err(E::custom(format!("expected a number of batches or \"all\", got \"{other}\""))),
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// `train.loss_scale`: how a half-precision run keeps small gradients from flushing to zero.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LossScale {
    /// PyTorch's GradScaler: the loss is multiplied by a scale that starts at
    /// `train.loss_scale_init`, halves after a step whose gradients overflow (that step is
    /// skipped) and doubles after `train.loss_scale_growth_interval` steps without one.
    Dynamic,
    /// A constant multiplier; a step whose gradients overflow is still skipped (and counted).
    Fixed(f64),
    /// No scaling, no overflow check.
    Off,
}

impl Serialize for LossScale {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Self::Dynamic => serializer.serialize_str("dynamic"),
            Self::Fixed(x) => serializer.serialize_f64(*x),
            Self::Off => serializer.serialize_str("none"),
        }
    }
}

impl<'de> Deserialize<'de> for LossScale {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = LossScale;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"dynamic\", \"none\" or a fixed scale")
            }
            fn visit_f64<E: serde::de::Error>(self, x: f64) -> std::result::Result<LossScale, E> {
                Ok(LossScale::Fixed(x))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> std::result::Result<LossScale, E> {
                Ok(LossScale::Fixed(n as f64))
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> std::result::Result<LossScale, E> {
                Ok(LossScale::Fixed(n as f64))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> std::result::Result<LossScale, E> {
                match s {
                    "dynamic" => Ok(LossScale::Dynamic),
                    "none" => Ok(LossScale::Off),
                    other => Err(E::custom(format!("expected \"dynamic\", \"none\" or a number, got \"{other}\""))),
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub steps: usize,
    pub batch_size: usize,
    /// Micro-batches per optimizer step; the loss is normalised by all their target tokens.
    #[serde(default = "one")]
    pub grad_accum: usize,
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// "auto" | "cpu" | "cuda" | "cuda:N" | "metal"
    #[serde(default = "default_device")]
    pub device: String,
    #[serde(default = "default_dtype")]
    pub dtype: DTypeName,
    /// "dynamic" | "none" | a fixed scale; unset: dynamic for f16, none for f32 and bf16
    /// (bf16 has f32's range). See [`LossScale`].
    pub loss_scale: Option<LossScale>,
    /// The dynamic loss scale's first value (PyTorch's GradScaler: 2^16).
    #[serde(default = "default_loss_scale_init")]
    pub loss_scale_init: f64,
    /// Steps without an overflow after which the dynamic scale doubles (GradScaler: 2000).
    #[serde(default = "default_loss_scale_growth_interval")]
    pub loss_scale_growth_interval: usize,
    #[serde(default = "default_log_every")]
    pub log_every: usize,
    /// Evaluate on the val split every N steps (and at the end); 0 turns it off.
    #[serde(default = "default_eval_every")]
    pub eval_every: usize,
    /// Val batches per evaluation: a number of sampled batches (the same ones every time), or
    /// "all": every non-overlapping block of the val split (language models).
    #[serde(default = "default_eval_batches")]
    pub eval_batches: EvalBatches,
    /// Write per-layer diagnostics (gradient norms, update/weight ratios, residual RMS) every N
    /// steps, step 0 included; 0 turns them off and costs nothing.
    #[serde(default)]
    pub diagnostics_every: usize,
    /// Stop the run as diverged when the loss exceeds this factor times its first logged value
    /// (a NaN or infinite loss always stops it).
    pub divergence_factor: Option<f64>,
    /// Every N steps (and at the end) show what the model makes: a GPT continues
    /// `sample_prompt` by `sample_tokens` tokens (fixed seed), a seq2seq model decodes the
    /// first three val sources greedily; written to the console and metrics.jsonl. 0: never.
    #[serde(default)]
    pub sample_every: usize,
    /// The prompt of a GPT's samples.
    #[serde(default = "default_sample_prompt")]
    pub sample_prompt: String,
    /// Tokens a GPT's sample adds.
    #[serde(default = "default_sample_tokens")]
    pub sample_tokens: usize,
    /// Also write metrics.jsonl's scalars as TensorBoard event files in `<run>/tensorboard/`.
    #[serde(default)]
    pub tensorboard: bool,
}

fn default_sample_prompt() -> String {
    "\n".into()
}
fn default_sample_tokens() -> usize {
    100
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Run directory; `runs/<config file name>` when absent.
    pub dir: Option<PathBuf>,
    /// Save every N steps (and at the end); 0 saves only at the end.
    #[serde(default = "default_ckpt_every")]
    pub every: usize,
    /// How many of the newest checkpoints to keep (the best by val loss is always kept too).
    #[serde(default = "default_keep_last")]
    pub keep_last: usize,
    /// The evaluation metric that picks the best checkpoint: `val_loss` (lowest), or
    /// `accuracy` / `macro_f1` (classification), `masked_accuracy` (masked-lm), `f1` /
    /// `precision` / `recall` / `token_accuracy` (token-classification), highest.
    #[serde(default = "default_best_metric")]
    pub best_metric: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum TaskKind {
    /// Next-token prediction on a plain corpus (decoder-only).
    CausalLm,
    /// One label per text (or text pair), from a labelled file (encoder-only).
    SequenceClassification,
    /// BERT's masked-language modelling on a plain corpus (encoder-only).
    MaskedLm,
    /// Source -> target pairs with teacher forcing (encoder-decoder).
    Seq2seq,
    /// One tag per word (named entities, NER-style), from CoNLL or JSONL files (encoder-only).
    TokenClassification,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum PoolingName {
    /// Hugging Face's head: `pooler.dense` + tanh on the [CLS] token.
    Cls,
    /// Mean of the real tokens' hidden states.
    Mean,
}

/// What the model is trained to do, and how the data's columns feed it: `[task]` with its
/// `kind` and that kind's keys only (a key of another kind is an error).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum TaskConfig {
    /// Next-token prediction on a plain corpus (decoder-only).
    CausalLm(CausalLmTask),
    /// One label per text (or text pair), from a labelled file (encoder-only).
    SequenceClassification(ClassificationTask),
    /// BERT's masked-language modelling on a plain corpus (encoder-only).
    MaskedLm(MaskedLmTask),
    /// Source -> target pairs with teacher forcing (encoder-decoder).
    Seq2seq(Seq2seqTask),
    /// One tag per word (named entities, NER-style), from CoNLL or JSONL files (encoder-only).
    TokenClassification(TokenClassificationTask),
}

impl Default for TaskConfig {
    fn default() -> Self {
        Self::CausalLm(CausalLmTask {})
    }
}

/// `[task]` of `kind = "causal-lm"`: no keys of its own.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CausalLmTask {}

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

/// `[task]` of `kind = "masked-lm"`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MaskedLmTask {
    /// Share of tokens selected (of which 80 % become [MASK], 10 % a random token, 10 % stay).
    #[serde(default = "default_mask_prob")]
    pub mask_prob: f64,
}

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

impl TaskConfig {
    pub fn kind(&self) -> TaskKind {
        match self {
            Self::CausalLm(_) => TaskKind::CausalLm,
            Self::SequenceClassification(_) => TaskKind::SequenceClassification,
            Self::MaskedLm(_) => TaskKind::MaskedLm,
            Self::Seq2seq(_) => TaskKind::Seq2seq,
            Self::TokenClassification(_) => TaskKind::TokenClassification,
        }
    }

    pub fn token_classification(&self) -> Result<&TokenClassificationTask> {
        match self {
            Self::TokenClassification(task) => Ok(task),
            other => bail!("not a token-classification task (kind {:?})", other.kind()),
        }
    }

    /// The classification keys (an error for another kind of run).
    pub fn classification(&self) -> Result<&ClassificationTask> {
        match self {
            Self::SequenceClassification(task) => Ok(task),
            other => bail!("not a sequence-classification task (kind {:?})", other.kind()),
        }
    }

    pub fn masked_lm(&self) -> Result<&MaskedLmTask> {
        match self {
            Self::MaskedLm(task) => Ok(task),
            other => bail!("not a masked-lm task (kind {:?})", other.kind()),
        }
    }

    pub fn seq2seq(&self) -> Result<&Seq2seqTask> {
        match self {
            Self::Seq2seq(task) => Ok(task),
            other => bail!("not a seq2seq task (kind {:?})", other.kind()),
        }
    }
}

/// Reads a `[task]` table written before `[task]` was tagged on its kind (every run's
/// config.toml held every kind's keys): `kind` defaults to causal-lm, and another kind's keys
/// are dropped where they hold their default (so did nothing); others stay, and are refused.
pub fn upgrade_task_table(task: &mut toml::Table) {
    let kind = task.entry("kind").or_insert_with(|| "causal-lm".into());
    let kind = kind.as_str().unwrap_or_default().to_string();
    let own: &[&str] = match kind.as_str() {
        "sequence-classification" => &["text_column", "text_pair_column", "label_column", "max_len", "pooling"],
        "masked-lm" => &["mask_prob"],
        "seq2seq" => &["source_column", "target_column", "max_len", "max_target_len", "label_smoothing"],
        _ => &[],
    };
    let defaults: [(&str, toml::Value); 7] = [
        ("text_column", default_text_column().into()),
        ("label_column", default_label_column().into()),
        ("pooling", "cls".into()),
        ("mask_prob", default_mask_prob().into()),
        ("source_column", default_source_column().into()),
        ("target_column", default_target_column().into()),
        ("label_smoothing", 0.0.into()),
    ];
    task.retain(|key, value| {
        key == "kind" || own.contains(&key) || !defaults.iter().any(|(k, d)| *k == key && d == value)
    });
}

/// A metric an evaluation reports: its name in metrics.jsonl, and which way is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    pub name: &'static str,
    pub higher_is_better: bool,
}

impl Metric {
    /// Whether `score` beats `best`.
    pub fn better(&self, score: f64, best: f64) -> bool {
        if self.higher_is_better {
            score > best
        } else {
            score < best
        }
    }
}

const fn lower(name: &'static str) -> Metric {
    Metric { name, higher_is_better: false }
}
const fn higher(name: &'static str) -> Metric {
    Metric { name, higher_is_better: true }
}
const VAL_LOSS: Metric = lower("val_loss");
const CAUSAL_LM: [Metric; 1] = [VAL_LOSS];
const CLASSIFICATION: [Metric; 3] = [VAL_LOSS, higher("accuracy"), higher("macro_f1")];
const MASKED_LM: [Metric; 2] = [VAL_LOSS, higher("masked_accuracy")];
const SEQ2SEQ: [Metric; 4] = [VAL_LOSS, higher("token_accuracy"), higher("exact_match"), higher("bleu")];
const TOKEN_CLASSIFICATION: [Metric; 5] =
    [VAL_LOSS, higher("token_accuracy"), higher("precision"), higher("recall"), higher("f1")];

impl std::fmt::Display for TaskKind {
    /// As `task.kind` spells it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TaskKind::CausalLm => "causal-lm",
            TaskKind::SequenceClassification => "sequence-classification",
            TaskKind::MaskedLm => "masked-lm",
            TaskKind::Seq2seq => "seq2seq",
            TaskKind::TokenClassification => "token-classification",
        })
    }
}

impl TaskKind {
    /// The metrics an evaluation of this task reports, any of which may pick the best checkpoint.
    pub fn metrics(self) -> &'static [Metric] {
        match self {
            TaskKind::CausalLm => &CAUSAL_LM,
            TaskKind::SequenceClassification => &CLASSIFICATION,
            TaskKind::MaskedLm => &MASKED_LM,
            TaskKind::Seq2seq => &SEQ2SEQ,
            TaskKind::TokenClassification => &TOKEN_CLASSIFICATION,
        }
    }

    /// The metric of this task called `name`.
    pub fn metric(self, name: &str) -> Option<Metric> {
        self.metrics().iter().copied().find(|m| m.name == name)
    }
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            dir: None,
            every: default_ckpt_every(),
            keep_last: default_keep_last(),
            best_metric: default_best_metric(),
        }
    }
}

impl DTypeName {
    pub fn to_dtype(self) -> candle_core::DType {
        match self {
            DTypeName::F32 => candle_core::DType::F32,
            DTypeName::Bf16 => candle_core::DType::BF16,
            DTypeName::F16 => candle_core::DType::F16,
        }
    }
}

fn one() -> usize {
    1
}
fn default_seed() -> u64 {
    1337
}
fn default_device() -> String {
    "auto".into()
}
fn default_dtype() -> DTypeName {
    DTypeName::F32
}
fn default_loss_scale_init() -> f64 {
    65536.0
}
fn default_loss_scale_growth_interval() -> usize {
    2000
}
fn default_log_every() -> usize {
    10
}
fn default_eval_every() -> usize {
    250
}
fn default_eval_batches() -> EvalBatches {
    EvalBatches::Sampled(20)
}
fn default_ckpt_every() -> usize {
    500
}
fn default_keep_last() -> usize {
    2
}
fn default_best_metric() -> String {
    "val_loss".into()
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
fn default_mask_prob() -> f64 {
    0.15
}
fn default_source_column() -> String {
    "source".into()
}
fn default_target_column() -> String {
    "target".into()
}

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("train.steps", self.steps),
            ("train.batch_size", self.batch_size),
            ("train.grad_accum", self.grad_accum),
            ("train.log_every", self.log_every),
        ];
        for (key, value) in positive {
            if value == 0 {
                bail!("`{key}` must be at least 1");
            }
        }
        if self.eval_every > 0 && self.eval_batches == EvalBatches::Sampled(0) {
            bail!("`train.eval_batches` must be at least 1 (to turn evaluation off, set `train.eval_every = 0`)");
        }
        if let Some(f) = self.divergence_factor.filter(|f| *f <= 1.0) {
            bail!("`train.divergence_factor` must exceed 1 (the loss's multiple of its start), got {f}");
        }
        crate::device::parse_device_spec(&self.device).context("invalid `train.device`")?;
        let scale = match self.loss_scale() {
            LossScale::Fixed(x) => Some(("train.loss_scale", x)),
            LossScale::Dynamic => Some(("train.loss_scale_init", self.loss_scale_init)),
            LossScale::Off => None,
        };
        if let Some((key, x)) = scale.filter(|(_, x)| !(x.is_finite() && *x > 0.0)) {
            bail!("`{key}` must be a positive number, got {x}");
        }
        if self.loss_scale_growth_interval == 0 {
            bail!("`train.loss_scale_growth_interval` must be at least 1");
        }
        Ok(())
    }

    /// `train.loss_scale`, or its default for `train.dtype`.
    pub fn loss_scale(&self) -> LossScale {
        match (self.loss_scale, self.dtype) {
            (Some(scale), _) => scale,
            (None, DTypeName::F16) => LossScale::Dynamic,
            (None, _) => LossScale::Off,
        }
    }
}

impl CheckpointConfig {
    pub fn validate(&self) -> Result<()> {
        if self.keep_last == 0 {
            bail!("`checkpoint.keep_last` must be at least 1");
        }
        Ok(())
    }
}
