//! `[train]`, `[checkpoint]` and `[task]`: the loop, its checkpoints, and what it trains (the
//! kind's own keys are its task file's: `train::TASKS`).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

pub use super::TaskKind;
use super::{TaskSettings, TaskSpec};

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

/// What the model is trained to do, and how the data's columns feed it: `[task]` with its
/// `kind` (a registered task, `train::TASKS`) and that kind's keys only (a key of another kind is
/// an error).
#[derive(Clone)]
pub struct TaskConfig {
    kind: TaskKind,
    settings: Arc<dyn TaskSettings>,
}

impl TaskConfig {
    pub fn kind(&self) -> TaskKind {
        self.kind
    }

    /// The kind's keys, as its own settings type `T` (an error for another kind of run).
    pub fn settings<T: 'static>(&self) -> Result<&T> {
        self.settings
            .as_any()
            .downcast_ref::<T>()
            .with_context(|| format!("a {} run has no such [task] keys", self.kind))
    }

    /// `[task]`'s table (without `kind`) as the task called `kind` reads it.
    fn parse(kind: &str, table: toml::Table) -> std::result::Result<Self, String> {
        let Some(kind) = crate::train::task_kind(kind) else {
            let known: Vec<&str> = crate::train::TASKS.iter().map(|t| t.name()).collect();
            return Err(format!("unknown `task.kind` \"{kind}\": taper trains {}", known.join(", ")));
        };
        let settings = kind.spec().settings(table).map_err(|e| e.message().to_string())?;
        Ok(Self { kind, settings: Arc::from(settings) })
    }
}

impl Default for TaskConfig {
    /// Next-token prediction, the default task.
    fn default() -> Self {
        Self::parse(DEFAULT_KIND, toml::Table::new()).unwrap_or_else(|e| panic!("the default task: {e}"))
    }
}

/// `task.kind` when `[task]` (or its `kind`) is left out.
const DEFAULT_KIND: &str = "causal-lm";

impl PartialEq for TaskConfig {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.settings.same(other.settings.as_ref())
    }
}

impl std::fmt::Debug for TaskConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TaskConfig {{ kind: {}, {:?} }}", self.kind, self.settings)
    }
}

impl Serialize for TaskConfig {
    /// `kind`, then the kind's keys.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeMap};
        let keys = self.settings.to_table().map_err(S::Error::custom)?;
        let mut map = serializer.serialize_map(Some(keys.len() + 1))?;
        map.serialize_entry("kind", self.kind.spec().name())?;
        for (key, value) in &keys {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for TaskConfig {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let mut table = toml::Table::deserialize(deserializer)?;
        let kind = match table.remove("kind") {
            None => DEFAULT_KIND.to_string(),
            Some(toml::Value::String(kind)) => kind,
            Some(other) => return Err(serde::de::Error::custom(format!("`task.kind` is a name, not {other}"))),
        };
        Self::parse(&kind, table).map_err(serde::de::Error::custom)
    }
}

/// Reads a `[task]` table written before `[task]` was tagged on its kind (every run's
/// config.toml held every kind's keys): `kind` defaults to causal-lm, and a key the kind does not
/// have is dropped where it holds another kind's default for it (so did nothing); others stay,
/// and are refused.
pub fn upgrade_task_table(task: &mut toml::Table) {
    let kind = task.entry("kind").or_insert_with(|| DEFAULT_KIND.into());
    let kind = kind.as_str().unwrap_or_default().to_string();
    let defaults = |spec: &dyn TaskSpec| spec.settings(toml::Table::new()).ok()?.to_table().ok();
    let own = crate::train::task_kind(&kind).and_then(|k| defaults(k.spec())).unwrap_or_default();
    let others: Vec<toml::Table> =
        crate::train::TASKS.iter().filter(|t| t.name() != kind).filter_map(|t| defaults(*t)).collect();
    task.retain(|key, value| {
        key == "kind" || own.contains_key(key) || !others.iter().any(|d| d.get(key) == Some(value))
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

/// A metric where lower is better (a loss).
pub const fn lower(name: &'static str) -> Metric {
    Metric { name, higher_is_better: false }
}

/// A metric where higher is better (an accuracy).
pub const fn higher(name: &'static str) -> Metric {
    Metric { name, higher_is_better: true }
}

/// Every task's validation loss.
pub const VAL_LOSS: Metric = lower("val_loss");

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
        if self.dir.as_ref().is_some_and(|d| d.as_os_str().is_empty()) {
            bail!("`checkpoint.dir` is empty: name the run's directory (or remove the key: runs/<config name>)");
        }
        if self.keep_last == 0 {
            bail!("`checkpoint.keep_last` must be at least 1");
        }
        Ok(())
    }
}
