//! Run configuration: one TOML file, one section per part of the code.
//!
//! Two steps, as ripgrep and uv do it: [`Config::load`] parses the file (unknown keys are
//! rejected by serde with the valid ones listed), applies `--set` overrides, then
//! [`Config::validate`] checks values that depend on each other. Every error names the file.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

pub use crate::kernels::{Activation, Kernels};

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
    #[serde(default)]
    pub task: TaskConfig,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Architecture {
    /// GPT-style: causal self-attention, next-token prediction.
    DecoderOnly,
    /// BERT-style: bidirectional self-attention with a key-padding mask, token-type embeddings.
    EncoderOnly,
    /// The original Transformer (T5/BART-style): an encoder, and a decoder with masked
    /// self-attention and cross-attention over the encoder's output.
    EncoderDecoder,
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
pub enum Positions {
    Learned,
    Sinusoidal,
    Rope,
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
    /// A pretrained BERT-family checkpoint to start from (encoder-only): a local directory with
    /// config.json, model.safetensors and tokenizer.json, or a Hugging Face Hub id. Its
    /// config.json sets the shape; shape keys given here must agree with it.
    pub init_from: Option<String>,
    // The four shape keys are required unless `init_from` supplies them (0 = not given).
    #[serde(default)]
    pub n_layer: usize,
    /// Decoder blocks of an encoder-decoder; `n_layer` when absent (`n_layer` counts the encoder's).
    pub n_decoder_layer: Option<usize>,
    /// Encoder-decoder: one vocabulary and embedding table for source and target (true), or a
    /// tokenizer and table for each side (false).
    #[serde(default = "yes")]
    pub share_embeddings: bool,
    /// Encoder-decoder: multiply token embeddings by sqrt(d_model) (Vaswani et al.).
    #[serde(default)]
    pub scale_embeddings: bool,
    #[serde(default)]
    pub n_head: usize,
    #[serde(default)]
    pub d_model: usize,
    /// Width of the feed-forward hidden layer; 4 * d_model when absent.
    pub d_ff: Option<usize>,
    /// Context length in tokens (an encoder's maximum positions).
    #[serde(default)]
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
    /// Training data, relative to the working directory: a plain UTF-8 corpus (language
    /// models), or a labelled .csv/.tsv/.jsonl file (sequence classification).
    pub path: PathBuf,
    /// A separate validation file (sequence classification); without it, `val_fraction` of
    /// the training data is held out.
    pub val_path: Option<PathBuf>,
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
    /// The evaluation metric that picks the best checkpoint: `val_loss` (lowest), or
    /// `accuracy` / `macro_f1` (classification) / `masked_accuracy` (masked-lm), highest.
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
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum PoolingName {
    /// Hugging Face's head: `pooler.dense` + tanh on the [CLS] token.
    Cls,
    /// Mean of the real tokens' hidden states.
    Mean,
}

/// What the model is trained to do, and how the data's columns feed it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TaskConfig {
    #[serde(default = "default_task_kind")]
    pub kind: TaskKind,
    /// Column (CSV/TSV header, or JSONL key) of the text, for sequence classification.
    #[serde(default = "default_text_column")]
    pub text_column: String,
    /// Column of an optional second text (sentence pairs), encoded as [CLS] a [SEP] b [SEP].
    pub text_pair_column: Option<String>,
    #[serde(default = "default_label_column")]
    pub label_column: String,
    /// Truncate encoded inputs to this many tokens (sequence classification); the model's
    /// maximum positions when absent. Batches are padded to their longest input.
    pub max_len: Option<usize>,
    #[serde(default = "default_pooling")]
    pub pooling: PoolingName,
    /// Share of tokens selected for masked-lm (of which 80 % become [MASK], 10 % a random
    /// token, 10 % stay).
    #[serde(default = "default_mask_prob")]
    pub mask_prob: f64,
    /// Seq2seq: the columns (TSV header, or JSONL keys) of the source and target texts.
    #[serde(default = "default_source_column")]
    pub source_column: String,
    #[serde(default = "default_target_column")]
    pub target_column: String,
    /// Seq2seq: truncate targets to this many tokens (BOS/EOS included); also the longest
    /// output decoding produces. `model.block_size` when absent.
    pub max_target_len: Option<usize>,
    /// Seq2seq: the smoothed target puts this much mass uniformly over the vocabulary.
    #[serde(default)]
    pub label_smoothing: f64,
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
fn default_best_metric() -> String {
    "val_loss".into()
}
fn default_task_kind() -> TaskKind {
    TaskKind::CausalLm
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
fn default_mask_prob() -> f64 {
    0.15
}
fn default_source_column() -> String {
    "source".into()
}
fn default_target_column() -> String {
    "target".into()
}

impl Default for TaskConfig {
    fn default() -> Self {
        Self {
            kind: default_task_kind(),
            text_column: default_text_column(),
            text_pair_column: None,
            label_column: default_label_column(),
            max_len: None,
            pooling: default_pooling(),
            mask_prob: default_mask_prob(),
            source_column: default_source_column(),
            target_column: default_target_column(),
            max_target_len: None,
            label_smoothing: 0.0,
        }
    }
}

impl TaskKind {
    /// The metrics an evaluation of this task reports, any of which may pick the best checkpoint.
    pub fn metrics(self) -> &'static [&'static str] {
        match self {
            TaskKind::CausalLm => &["val_loss"],
            TaskKind::SequenceClassification => &["val_loss", "accuracy", "macro_f1"],
            TaskKind::MaskedLm => &["val_loss", "masked_accuracy"],
            TaskKind::Seq2seq => &["val_loss", "token_accuracy", "exact_match", "bleu"],
        }
    }
}

/// Whether a higher value of `metric` is better (losses are lower-is-better).
pub fn higher_is_better(metric: &str) -> bool {
    !metric.ends_with("loss")
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
        let mut table: toml::Table = toml::from_str(text)?;
        for item in overrides {
            apply_override(&mut table, item)?;
        }
        let default_norm = encoder_norm_default(&mut table);
        let config: Config = if overrides.is_empty() && !default_norm {
            toml::from_str(text)?
        } else {
            toml::Value::Table(table).try_into()?
        };
        config.validate()?;
        Ok(config)
    }

    pub fn to_toml_string(&self) -> Result<String> {
        Ok(toml::to_string_pretty(self)?)
    }

    /// The file `taper eval` scores when none is given: `data.val_path`.
    pub fn val_file(&self) -> Result<PathBuf> {
        self.data.val_path.clone().context(
            "the run has no `data.val_path` (its validation share was held out of the training file); give --file",
        )
    }

    pub fn run_dir(&self) -> PathBuf {
        self.checkpoint.dir.clone().unwrap_or_else(|| PathBuf::from("runs/run"))
    }

    /// Checks values that serde cannot: ranges and relations between keys.
    pub fn validate(&self) -> Result<()> {
        let m = &self.model;
        self.validate_task()?;
        let shape = [
            ("model.n_layer", m.n_layer),
            ("model.n_head", m.n_head),
            ("model.d_model", m.d_model),
            ("model.block_size", m.block_size),
        ];
        for (key, value) in shape {
            if value == 0 && m.init_from.is_none() {
                bail!("`{key}` is missing (or 0): the model's shape needs it unless `model.init_from` gives a pretrained one");
            }
        }
        let positive = [
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
        if m.d_ff == Some(0) {
            bail!("`model.d_ff` must be at least 1");
        }
        self.validate_rest()
    }

    /// Which task goes with which architecture, and the task's own keys.
    fn validate_task(&self) -> Result<()> {
        let (m, task) = (&self.model, &self.task);
        match (m.arch, task.kind) {
            (Architecture::DecoderOnly, TaskKind::CausalLm) => {}
            (Architecture::EncoderOnly, TaskKind::SequenceClassification | TaskKind::MaskedLm) => {}
            (Architecture::EncoderDecoder, TaskKind::Seq2seq) => {}
            (arch, kind) => bail!(
                "`task.kind = \"{}\"` does not go with `model.arch = \"{}\"`: causal-lm needs decoder-only; \
                 sequence-classification and masked-lm need encoder-only; seq2seq needs encoder-decoder",
                kebab(&kind),
                kebab(&arch)
            ),
        }
        if m.init_from.is_some() && m.arch != Architecture::EncoderOnly {
            bail!("`model.init_from` loads BERT-family checkpoints and needs `model.arch = \"encoder-only\"`");
        }
        if m.arch == Architecture::EncoderOnly && m.positions != Positions::Learned {
            bail!(
                "an encoder-only (BERT) model has learned positions; remove `model.positions` or set it to \"learned\""
            );
        }
        if m.init_from.is_some() && (self.tokenizer.kind != TokenizerKind::Char || self.tokenizer.path.is_some()) {
            bail!("with `model.init_from` the tokenizer is the checkpoint's tokenizer.json; remove the [tokenizer] section");
        }
        if !matches!(task.kind, TaskKind::SequenceClassification | TaskKind::Seq2seq) && self.data.val_path.is_some() {
            bail!("`data.val_path` applies to sequence-classification and seq2seq; language models hold out `data.val_fraction`");
        }
        if m.arch != Architecture::EncoderDecoder
            && (m.n_decoder_layer.is_some() || !m.share_embeddings || m.scale_embeddings)
        {
            bail!("`model.n_decoder_layer`, `model.share_embeddings` and `model.scale_embeddings` apply to `arch = \"encoder-decoder\"`");
        }
        if m.n_decoder_layer == Some(0) {
            bail!("`model.n_decoder_layer` must be at least 1");
        }
        if !(0.0..1.0).contains(&task.label_smoothing) {
            bail!("`task.label_smoothing` must be in [0, 1), got {}", task.label_smoothing);
        }
        if task.kind == TaskKind::Seq2seq {
            for (key, value) in [("task.max_len", task.max_len), ("task.max_target_len", task.max_target_len)] {
                if let Some(n) = value.filter(|&n| n < 2 || n > m.block_size) {
                    bail!("`{key}` = {n} must be in [2, model.block_size = {}]", m.block_size);
                }
            }
        }
        if !(0.0..1.0).contains(&task.mask_prob) || task.mask_prob == 0.0 {
            bail!("`task.mask_prob` must be in (0, 1), got {}", task.mask_prob);
        }
        if task.max_len.is_some_and(|n| n < 3) {
            bail!("`task.max_len` must be at least 3 ([CLS], one token, [SEP])");
        }
        let metrics = task.kind.metrics();
        if !metrics.contains(&self.checkpoint.best_metric.as_str()) {
            bail!(
                "`checkpoint.best_metric = \"{}\"` is not a metric of task {}; valid: {}",
                self.checkpoint.best_metric,
                kebab(&task.kind),
                metrics.join(", ")
            );
        }
        Ok(())
    }

    fn validate_rest(&self) -> Result<()> {
        let m = &self.model;
        // Shape keys left 0 with `init_from` are filled from its config.json, then checked again.
        if m.n_head > 0 && !m.d_model.is_multiple_of(m.n_head) {
            bail!(
                "`model.n_head` ({}) must divide `model.d_model` ({}): each head gets d_model / n_head dimensions",
                m.n_head,
                m.d_model
            );
        }
        if m.positions == Positions::Rope && m.n_head > 0 && !m.head_dim().is_multiple_of(2) {
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
                if t.vocab_size.is_some() {
                    bail!("`tokenizer.vocab_size` does not apply to `kind = \"file\"` (the file fixes the vocabulary); remove it");
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

/// An encoder's `model.norm` defaults to BERT's post-LN (a decoder's to GPT-2's pre-LN), so a
/// pretrained BERT is never silently rebuilt pre-LN. Returns whether it filled the key in.
fn encoder_norm_default(table: &mut toml::Table) -> bool {
    let Some(model) = table.get_mut("model").and_then(|m| m.as_table_mut()) else { return false };
    let encoder = model.get("arch").and_then(|a| a.as_str()) == Some("encoder-only");
    if encoder && !model.contains_key("norm") {
        model.insert("norm".into(), toml::Value::String("post".into()));
        return true;
    }
    false
}

/// A config enum's name as written in TOML (`encoder-only`).
fn kebab<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
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
