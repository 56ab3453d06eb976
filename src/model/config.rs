//! `[model]`: the architecture and shape of the Transformer, with its defaults.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::norm::NormKind;
use crate::kernels::{Activation, Kernels};

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
    /// A norm before and after each branch, x + LN_out(f(LN(x))), plus a final norm (Ding et
    /// al. 2021, CogView).
    Sandwich,
    /// Post-LN with the residual scaled up, LN(alpha x + f(x)), and the branches' value, output
    /// and FFN weights initialised scaled by beta (Wang et al. 2022, DeepNet).
    #[serde(rename = "deepnorm")]
    DeepNorm,
}

impl NormPlacement {
    /// Whether the stack ends with a final norm (the residual stream is never normed otherwise).
    pub fn has_final_norm(self) -> bool {
        matches!(self, Self::Pre | Self::Sandwich)
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Positions {
    /// A learned table added to the embeddings (GPT-2, BERT).
    Learned,
    /// Fixed sinusoids added to the embeddings (Vaswani et al.).
    Sinusoidal,
    /// Rotary embeddings of queries and keys (Su et al.; Llama), base `rope_theta`.
    Rope,
    /// A fixed linear penalty on each head's scores by query-key distance (Press et al. 2022).
    Alibi,
    /// A learned per-head bias by bucketed relative distance, one table per stack (T5).
    T5,
    /// Learned relative key and value embeddings per layer, distances clipped at `shaw_clip`
    /// (Shaw et al. 2018).
    Shaw,
    /// No position information (a causal decoder can infer order from the mask).
    None,
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
    /// A pretrained checkpoint to start from: a BERT-family encoder (encoder-only) or a GPT-2 or
    /// Llama decoder (decoder-only), as a local directory with config.json, model.safetensors
    /// and tokenizer.json, or a Hugging Face Hub id. Its config.json sets the architecture;
    /// keys given here must agree with it.
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
    /// Heads of the keys and values (grouped-query attention; 1: multi-query); `n_head` when
    /// absent. Each key/value head serves n_head / n_kv_head query heads.
    pub n_kv_head: Option<usize>,
    #[serde(default)]
    pub d_model: usize,
    /// Width of the feed-forward hidden layer; 4 * d_model when absent, or for a gated FFN
    /// (swiglu, geglu, reglu) 8/3 * d_model rounded up to a multiple of 32 (Llama's choice:
    /// about the parameters of the 4x FFN with three matrices).
    pub d_ff: Option<usize>,
    /// Context length in tokens (an encoder's maximum positions).
    #[serde(default)]
    pub block_size: usize,
    #[serde(default = "default_norm")]
    pub norm: NormPlacement,
    /// `layer` (LayerNorm) or `rms` (RMSNorm), for every norm of the blocks and the final one.
    #[serde(default)]
    pub norm_kind: NormKind,
    #[serde(default = "default_activation")]
    pub activation: Activation,
    #[serde(default = "default_positions")]
    pub positions: Positions,
    /// `positions = "learned"`: token t reads row t + offset of a table of block_size + offset
    /// rows (RoBERTa's and BART's tables start at 2; their first rows are never read). Default 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub position_offset: usize,
    /// Encoder-only: the width of the embeddings (tokens, token types, learned positions, their
    /// LayerNorm), projected to `d_model` before the blocks (`emb_proj`; ELECTRA's
    /// `embedding_size`). Default: `d_model`, no projection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_size: Option<usize>,
    /// Dropout at every site unless a site's own key is set.
    #[serde(default)]
    pub dropout: f64,
    /// Dropout on the attention weights (`dropout` when absent).
    pub attn_dropout: Option<f64>,
    /// Dropout on each residual branch's output (`dropout` when absent).
    pub resid_dropout: Option<f64>,
    /// Dropout on the embedded input (`dropout` when absent).
    pub emb_dropout: Option<f64>,
    /// An encoder's classification heads: dropout before the output layer (`resid_dropout` when
    /// absent; Hugging Face's `classifier_dropout`, DistilBERT's `seq_classif_dropout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classifier_dropout: Option<f64>,
    /// Biases in every linear layer, unless a group's own key says otherwise.
    #[serde(default = "yes")]
    pub bias: bool,
    /// Biases of the query, key and value projections (`bias` when absent; Qwen2: true alone).
    pub qkv_bias: Option<bool>,
    /// Bias of the attention output projection (`bias` when absent).
    pub out_bias: Option<bool>,
    /// Biases of the FFN's projections (`bias` when absent).
    pub ffn_bias: Option<bool>,
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
    /// `positions = "t5"`: relative-distance buckets (half per direction in an encoder).
    #[serde(default = "default_relative_buckets")]
    pub relative_buckets: usize,
    /// `positions = "t5"`: distances from here on share the last bucket.
    #[serde(default = "default_relative_max_distance")]
    pub relative_max_distance: usize,
    /// Rows of a decoder's token embedding and head; the tokenizer's vocabulary when absent
    /// (it may be larger: a pretrained GPT-2's 50257, or a padded size). Decoder-only, or an
    /// encoder-decoder's shared vocabulary (T5's 32128).
    pub vocab_size: Option<usize>,
    /// QK-norm: normalise each head's queries and keys (with `norm_kind`) before the scores.
    #[serde(default)]
    pub qk_norm: bool,
    /// `positions = "shaw"`: relative distances beyond this share one embedding (k).
    #[serde(default = "default_shaw_clip")]
    pub shaw_clip: usize,
    #[serde(default = "default_kernels")]
    pub kernels: Kernels,
    /// The run's LoRA adapters: `[lora]`, resolved when the config is read (`Config::from_toml_str`).
    #[serde(skip)]
    pub lora: Option<super::lora::LoraSpec>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl ModelConfig {
    /// Every key at its default (the shape keys 0).
    pub fn defaults() -> Self {
        toml::from_str("").expect("every [model] key has a default")
    }
    pub fn d_ff(&self) -> usize {
        match (self.d_ff, self.activation.gate()) {
            (Some(d_ff), _) => d_ff,
            (None, Some(_)) => (8 * self.d_model).div_ceil(3).div_ceil(32) * 32,
            (None, None) => 4 * self.d_model,
        }
    }
    /// The biases of the linear groups: (query/key/value, attention output, FFN).
    pub fn biases(&self) -> (bool, bool, bool) {
        let or = |b: Option<bool>| b.unwrap_or(self.bias);
        (or(self.qkv_bias), or(self.out_bias), or(self.ffn_bias))
    }
    pub fn attn_dropout(&self) -> f64 {
        self.attn_dropout.unwrap_or(self.dropout)
    }
    pub fn resid_dropout(&self) -> f64 {
        self.resid_dropout.unwrap_or(self.dropout)
    }
    pub fn emb_dropout(&self) -> f64 {
        self.emb_dropout.unwrap_or(self.dropout)
    }
    /// The embeddings' width: `embedding_size`, else `d_model`.
    pub fn embedding_dim(&self) -> usize {
        self.embedding_size.unwrap_or(self.d_model)
    }
    pub fn classifier_dropout(&self) -> f64 {
        self.classifier_dropout.unwrap_or(self.resid_dropout())
    }
    pub fn n_kv_head(&self) -> usize {
        self.n_kv_head.unwrap_or(self.n_head)
    }
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_head
    }
}

fn yes() -> bool {
    true
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
fn default_ln_eps() -> f64 {
    1e-5
}
fn default_relative_buckets() -> usize {
    32
}
fn default_relative_max_distance() -> usize {
    128
}
fn default_shaw_clip() -> usize {
    16
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
pub fn default_rope_theta() -> f64 {
    10_000.0
}

impl ModelConfig {
    /// The checks of `[model]` on its own. Shape keys left 0 with `init_from` are filled from
    /// its config.json, then checked again.
    pub fn validate(&self) -> Result<()> {
        let shape = [
            ("model.n_layer", self.n_layer),
            ("model.n_head", self.n_head),
            ("model.d_model", self.d_model),
            ("model.block_size", self.block_size),
        ];
        for (key, value) in shape {
            if value == 0 && self.init_from.is_none() {
                bail!("`{key}` is missing (or 0): the model's shape needs it unless `model.init_from` gives a pretrained one");
            }
        }
        let one_vocabulary = self.arch == Architecture::DecoderOnly
            || (self.arch == Architecture::EncoderDecoder && self.share_embeddings);
        if self.vocab_size.is_some() && !one_vocabulary {
            bail!(
                "`model.vocab_size` sets the rows of a decoder-only model or of an encoder-decoder's shared vocabulary; \
                 here the vocabulary is the tokenizer's: remove the key"
            );
        }
        if self.d_ff == Some(0) {
            bail!("`model.d_ff` must be at least 1");
        }
        if self.n_head > 0 && !self.d_model.is_multiple_of(self.n_head) {
            bail!(
                "`model.n_head` ({}) must divide `model.d_model` ({}): each head gets d_model / n_head dimensions",
                self.n_head,
                self.d_model
            );
        }
        if let Some(kv) = self.n_kv_head {
            if kv == 0 || !self.n_head.is_multiple_of(kv) {
                bail!(
                    "`model.n_kv_head` ({kv}) must divide `model.n_head` ({}): each key/value head serves a group of query heads",
                    self.n_head
                );
            }
        }
        self.validate_embeddings_and_positions()?;
        let sites = [
            ("dropout", Some(self.dropout)),
            ("attn_dropout", self.attn_dropout),
            ("resid_dropout", self.resid_dropout),
            ("emb_dropout", self.emb_dropout),
            ("classifier_dropout", self.classifier_dropout),
        ];
        for (key, p) in sites {
            if let Some(p) = p.filter(|p| !(0.0..1.0).contains(p)) {
                bail!("`model.{key}` must be in [0, 1), got {p}");
            }
        }
        if self.init_std <= 0.0 {
            bail!("`model.init_std` must be positive, got {}", self.init_std);
        }
        Ok(())
    }

    /// The embedding width and the position keys: each only where it means something.
    fn validate_embeddings_and_positions(&self) -> Result<()> {
        if let Some(e) = self.embedding_size {
            if e == 0 || self.arch != Architecture::EncoderOnly {
                bail!(
                    "`model.embedding_size` ({e}) sets an encoder-only model's embedding width (projected to d_model); \
                     remove it"
                );
            }
            if !matches!(self.positions, Positions::Learned | Positions::Sinusoidal | Positions::None) {
                bail!(
                    "`model.embedding_size` works with learned, sinusoidal or no positions; remove it or the other key"
                );
            }
        }
        if self.position_offset > 0 && self.positions != Positions::Learned {
            bail!(
                "`model.position_offset` shifts a learned position table; `model.positions` is {}: remove the key",
                serde_json::to_string(&self.positions).unwrap_or_default()
            );
        }
        if self.positions == Positions::Rope && self.n_head > 0 && !self.head_dim().is_multiple_of(2) {
            bail!("`model.positions = \"rope\"` needs an even head dimension, got {}", self.head_dim());
        }
        if self.positions == Positions::T5
            && (self.relative_buckets < 4 || self.relative_max_distance < self.relative_buckets / 2)
        {
            bail!(
                "`model.relative_buckets` must be at least 4 and `model.relative_max_distance` at least half of it, got {} and {}",
                self.relative_buckets,
                self.relative_max_distance
            );
        }
        if self.positions == Positions::Shaw && self.shaw_clip == 0 {
            bail!("`model.shaw_clip` must be at least 1 (the distance k beyond which relative positions share one embedding)");
        }
        Ok(())
    }
}
