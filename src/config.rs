//! Run configuration: one TOML file, one section per part of the code.
//!
//! Two steps, as ripgrep and uv do it: [`Config::load`] parses the file (unknown keys are
//! rejected by serde with the valid ones listed), applies `--set` overrides, then
//! [`Config::validate`] checks values that depend on each other. Every error names the file.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub model: ModelConfig,
    pub data: DataConfig,
    #[serde(default)]
    pub tokenizer: TokenizerConfig,
    #[serde(default)]
    pub optim: OptimConfig,
    #[serde(default)]
    pub schedule: ScheduleConfig,
    pub train: TrainConfig,
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Architecture {
    /// GPT-style: causal self-attention, next-token prediction.
    DecoderOnly,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum NormPlacement {
    /// LayerNorm inside each residual branch, plus a final LayerNorm (GPT-2).
    Pre,
    /// LayerNorm after each residual add (the original Transformer, BERT).
    Post,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Activation {
    Relu,
    Gelu,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Positions {
    Learned,
    Sinusoidal,
    Rope,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Kernels {
    /// taper's fused CPU kernels (LayerNorm, GELU, bias add, causal softmax, cross-entropy)
    /// where they apply (CPU, f32/f64); candle's composed ops elsewhere.
    Fused,
    /// candle's composed ops everywhere (what CUDA and Metal always use).
    Composed,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum InitScheme {
    /// Normal(0, init_std) for every matrix and embedding (GPT-2).
    Normal,
    /// Xavier/Glorot uniform for matrices, Normal(0, d_model^-0.5) for embeddings (Vaswani et al.).
    Xavier,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    #[serde(default = "default_arch")]
    pub arch: Architecture,
    pub n_layer: usize,
    pub n_head: usize,
    pub d_model: usize,
    /// Width of the feed-forward hidden layer; 4 * d_model when absent.
    pub d_ff: Option<usize>,
    /// Context length in tokens.
    pub block_size: usize,
    #[serde(default = "default_norm")]
    pub norm: NormPlacement,
    #[serde(default = "default_activation")]
    pub activation: Activation,
    #[serde(default = "default_positions")]
    pub positions: Positions,
    #[serde(default)]
    pub dropout: f64,
    #[serde(default = "yes")]
    pub bias: bool,
    #[serde(default = "yes")]
    pub tie_embeddings: bool,
    #[serde(default = "default_ln_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_init")]
    pub init: InitScheme,
    #[serde(default = "default_init_std")]
    pub init_std: f64,
    /// Scale the init of each residual branch's output projection by 1/sqrt(2 * n_layer) (GPT-2).
    #[serde(default)]
    pub scale_residual_init: bool,
    /// Base of the rotary frequencies when `positions = "rope"`.
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default = "default_kernels")]
    pub kernels: Kernels,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Plain-text corpus, UTF-8. Relative paths are relative to the working directory.
    pub path: PathBuf,
    #[serde(default = "default_val_fraction")]
    pub val_fraction: f64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum TokenizerKind {
    /// One token per Unicode character seen in the corpus.
    Char,
    /// BPE over Metaspace pre-tokens (SentencePiece style; whitespace round-trips).
    Bpe,
    /// GPT-2's byte-level BPE.
    ByteLevelBpe,
    /// BERT's WordPiece.
    Wordpiece,
    /// SentencePiece's Unigram.
    Unigram,
    /// A `tokenizer.json` file given by `path`.
    File,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokenizerConfig {
    #[serde(default = "default_tokenizer_kind")]
    pub kind: TokenizerKind,
    /// Target vocabulary size for the trained kinds (bpe, byte-level-bpe, wordpiece, unigram).
    pub vocab_size: Option<usize>,
    /// The `tokenizer.json` to load, for `kind = "file"`.
    pub path: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    #[serde(default = "default_lr")]
    pub lr: f64,
    #[serde(default = "default_betas")]
    pub betas: [f64; 2],
    #[serde(default = "default_eps")]
    pub eps: f64,
    #[serde(default)]
    pub weight_decay: f64,
    /// Apply weight decay to token/position embeddings too (nanoGPT does; BERT does not).
    #[serde(default)]
    pub decay_embeddings: bool,
    /// Clip the global gradient norm to this value; absent or 0 turns clipping off.
    pub grad_clip: Option<f64>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Decay {
    Cosine,
    Linear,
    Constant,
    InverseSqrt,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    #[serde(default)]
    pub warmup_steps: usize,
    #[serde(default = "default_decay")]
    pub decay: Decay,
    /// Floor of the learning rate for cosine, linear and inverse-sqrt decay.
    #[serde(default)]
    pub min_lr: f64,
    /// Step at which cosine/linear decay reaches `min_lr`; `train.steps` when absent.
    pub decay_steps: Option<usize>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum DTypeName {
    F32,
    Bf16,
    F16,
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
    #[serde(default = "default_log_every")]
    pub log_every: usize,
    /// Evaluate on the val split every N steps (and at the end); 0 turns it off.
    #[serde(default = "default_eval_every")]
    pub eval_every: usize,
    #[serde(default = "default_eval_batches")]
    pub eval_batches: usize,
    /// Write per-layer diagnostics (gradient norms, update/weight ratios, residual RMS) every N
    /// steps, step 0 included; 0 turns them off and costs nothing.
    #[serde(default)]
    pub diagnostics_every: usize,
    /// Stop the run as diverged when the loss exceeds this factor times its first logged value
    /// (a NaN or infinite loss always stops it).
    pub divergence_factor: Option<f64>,
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
}

fn default_arch() -> Architecture {
    Architecture::DecoderOnly
}
fn default_norm() -> NormPlacement {
    NormPlacement::Pre
}
fn default_activation() -> Activation {
    Activation::Gelu
}
fn default_positions() -> Positions {
    Positions::Learned
}
fn yes() -> bool {
    true
}
fn one() -> usize {
    1
}
fn default_ln_eps() -> f64 {
    1e-5
}
fn default_kernels() -> Kernels {
    Kernels::Fused
}
fn default_init() -> InitScheme {
    InitScheme::Normal
}
fn default_init_std() -> f64 {
    0.02
}
fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_val_fraction() -> f64 {
    0.1
}
fn default_tokenizer_kind() -> TokenizerKind {
    TokenizerKind::Char
}
fn default_lr() -> f64 {
    1e-3
}
fn default_betas() -> [f64; 2] {
    [0.9, 0.999]
}
fn default_eps() -> f64 {
    1e-8
}
fn default_decay() -> Decay {
    Decay::Cosine
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
fn default_log_every() -> usize {
    10
}
fn default_eval_every() -> usize {
    250
}
fn default_eval_batches() -> usize {
    20
}
fn default_ckpt_every() -> usize {
    500
}
fn default_keep_last() -> usize {
    2
}

impl Default for TokenizerConfig {
    fn default() -> Self {
        Self { kind: default_tokenizer_kind(), vocab_size: None, path: None }
    }
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            lr: default_lr(),
            betas: default_betas(),
            eps: default_eps(),
            weight_decay: 0.0,
            decay_embeddings: false,
            grad_clip: None,
        }
    }
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self { warmup_steps: 0, decay: default_decay(), min_lr: 0.0, decay_steps: None }
    }
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self { dir: None, every: default_ckpt_every(), keep_last: default_keep_last() }
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

impl ModelConfig {
    pub fn d_ff(&self) -> usize {
        self.d_ff.unwrap_or(4 * self.d_model)
    }
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_head
    }
}

impl Config {
    /// Reads `path`, applies `overrides` (`section.key=value`, value in TOML syntax or a bare
    /// string), and validates the result.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
        let mut config =
            Self::from_toml_str(&text, overrides).with_context(|| format!("in config file {}", path.display()))?;
        if config.checkpoint.dir.is_none() {
            let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
            config.checkpoint.dir = Some(Path::new("runs").join(stem.unwrap_or_else(|| "run".into())));
        }
        Ok(config)
    }

    pub fn from_toml_str(text: &str, overrides: &[String]) -> Result<Self> {
        // Without overrides, parse the text itself so errors point at its line and column.
        let config: Config = if overrides.is_empty() {
            toml::from_str(text)?
        } else {
            let mut table: toml::Table = toml::from_str(text)?;
            for item in overrides {
                apply_override(&mut table, item)?;
            }
            toml::Value::Table(table).try_into()?
        };
        config.validate()?;
        Ok(config)
    }

    pub fn to_toml_string(&self) -> Result<String> {
        Ok(toml::to_string_pretty(self)?)
    }

    pub fn run_dir(&self) -> PathBuf {
        self.checkpoint.dir.clone().unwrap_or_else(|| PathBuf::from("runs/run"))
    }

    /// Checks values that serde cannot: ranges and relations between keys.
    pub fn validate(&self) -> Result<()> {
        let m = &self.model;
        let positive = [
            ("model.n_layer", m.n_layer),
            ("model.n_head", m.n_head),
            ("model.d_model", m.d_model),
            ("model.block_size", m.block_size),
            ("model.d_ff", m.d_ff()),
            ("train.steps", self.train.steps),
            ("train.batch_size", self.train.batch_size),
            ("train.grad_accum", self.train.grad_accum),
            ("train.log_every", self.train.log_every),
            ("checkpoint.keep_last", self.checkpoint.keep_last),
        ];
        for (key, value) in positive {
            if value == 0 {
                bail!("`{key}` must be at least 1");
            }
        }
        if !m.d_model.is_multiple_of(m.n_head) {
            bail!(
                "`model.n_head` ({}) must divide `model.d_model` ({}): each head gets d_model / n_head dimensions",
                m.n_head,
                m.d_model
            );
        }
        if m.positions == Positions::Rope && !m.head_dim().is_multiple_of(2) {
            bail!("`model.positions = \"rope\"` needs an even head dimension, got {}", m.head_dim());
        }
        if !(0.0..1.0).contains(&m.dropout) {
            bail!("`model.dropout` must be in [0, 1), got {}", m.dropout);
        }
        if m.init_std <= 0.0 {
            bail!("`model.init_std` must be positive, got {}", m.init_std);
        }
        if !(0.0..1.0).contains(&self.data.val_fraction) || self.data.val_fraction == 0.0 {
            bail!("`data.val_fraction` must be in (0, 1), got {}", self.data.val_fraction);
        }
        let t = &self.tokenizer;
        match t.kind {
            TokenizerKind::Char => {
                if t.vocab_size.is_some() {
                    bail!("`tokenizer.vocab_size` does not apply to `kind = \"char\"` (its vocabulary is the corpus's characters); remove it");
                }
            }
            TokenizerKind::File => {
                if t.path.is_none() {
                    bail!("`tokenizer.kind = \"file\"` needs `tokenizer.path` (a tokenizer.json)");
                }
            }
            _ => match t.vocab_size {
                None => bail!(
                    "`tokenizer.kind = \"{:?}\"` is trained on the corpus and needs `tokenizer.vocab_size`",
                    t.kind
                ),
                Some(v) if v < 32 => bail!("`tokenizer.vocab_size` must be at least 32, got {v}"),
                _ => {}
            },
        }
        if t.kind != TokenizerKind::File && t.path.is_some() {
            bail!("`tokenizer.path` only applies to `kind = \"file\"`");
        }
        let o = &self.optim;
        if o.lr <= 0.0 || !o.lr.is_finite() {
            bail!("`optim.lr` must be positive, got {}", o.lr);
        }
        for (i, b) in o.betas.iter().enumerate() {
            if !(0.0..1.0).contains(b) {
                bail!("`optim.betas[{i}]` must be in [0, 1), got {b}");
            }
        }
        if o.eps <= 0.0 || o.weight_decay < 0.0 {
            bail!("`optim.eps` must be positive and `optim.weight_decay` non-negative");
        }
        if let Some(c) = o.grad_clip {
            if c < 0.0 {
                bail!("`optim.grad_clip` must be positive (or 0 / absent for no clipping), got {c}");
            }
        }
        if let Some(f) = self.train.divergence_factor {
            if f <= 1.0 {
                bail!("`train.divergence_factor` must exceed 1 (the loss's multiple of its start), got {f}");
            }
        }
        let s = &self.schedule;
        if s.warmup_steps > self.train.steps {
            bail!(
                "`schedule.warmup_steps` ({}) exceeds `train.steps` ({}): the run would end before warmup does",
                s.warmup_steps,
                self.train.steps
            );
        }
        if s.min_lr < 0.0 || s.min_lr > o.lr {
            bail!("`schedule.min_lr` ({}) must be in [0, optim.lr = {}]", s.min_lr, o.lr);
        }
        if let Some(d) = s.decay_steps {
            if d <= s.warmup_steps {
                bail!("`schedule.decay_steps` ({d}) must exceed `schedule.warmup_steps` ({})", s.warmup_steps);
            }
        }
        if s.decay == Decay::InverseSqrt && s.warmup_steps == 0 {
            bail!("`schedule.decay = \"inverse-sqrt\"` scales by sqrt(warmup_steps / step) and needs `schedule.warmup_steps` > 0");
        }
        crate::device::parse_device_spec(&self.train.device).context("invalid `train.device`")?;
        Ok(())
    }
}

/// Applies one `section.key=value` override. The value is parsed as TOML (`0.1`, `true`,
/// `[0.9, 0.95]`, `"post"`); anything that does not parse is taken as a string (`post`).
fn apply_override(table: &mut toml::Table, item: &str) -> Result<()> {
    let (key, raw) = item.split_once('=').with_context(|| format!("--set `{item}`: expected section.key=value"))?;
    let path: Vec<&str> = key.trim().split('.').collect();
    if path.len() != 2 || path.iter().any(|p| p.is_empty()) {
        bail!("--set `{item}`: the key must be `section.key`, for example `model.norm=post`");
    }
    let raw = raw.trim();
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let section = table.entry(path[0].to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let section = section.as_table_mut().with_context(|| format!("--set `{item}`: `{}` is not a section", path[0]))?;
    section.insert(path[1].to_string(), value);
    Ok(())
}
