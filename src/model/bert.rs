//! BERT-style encoder: token + position + token-type embeddings, then LayerNorm and dropout,
//! then a stack of bidirectional blocks (the same `Block` as the GPT, under taper's names;
//! `model::names::bert` maps them to Hugging Face's) with a key-padding mask. Post-LN as BERT has it; `NormPlacement::Pre`
//! moves every LayerNorm into its branch and adds a final one (`encoder.final_layer_norm`).
//! The architecture is read from a checkpoint's `config.json`.

use std::path::Path;

use anyhow::{bail, Context};
use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::block::{Block, BlockConfig};
use super::layers::{Embedding, InitPolicy, Linear};
use super::names::bert::{ENCODER, TASK_MODEL};
use super::norm::{DeepNorm, LayerNorm, Norm, StackRole};
use super::positions::PositionEncoding;
use super::stack::{Embeddings, Stack, StackInputs};
use crate::config::{Activation, InitScheme, Kernels, ModelConfig, NormKind, NormPlacement, Positions};
use crate::kernels::{dropout, Mode};

fn default_max_positions() -> usize {
    512
}
fn default_type_vocab() -> usize {
    2
}
fn default_bert_eps() -> f64 {
    1e-12
}
fn default_dropout() -> f64 {
    0.1
}
fn default_init_range() -> f64 {
    0.02
}

/// The fields of a Hugging Face BERT `config.json` that shape the model.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub hidden_act: String,
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_bert_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
    pub model_type: Option<String>,
    pub position_embedding_type: Option<String>,
    /// taper's positions for an encoder trained here with other than BERT's learned table (not
    /// a Hugging Face field: such an encoder has no Hugging Face export).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taper_positions: Option<EncoderPositions>,
    /// The run's LoRA adapters (`[lora]`; not a config.json field).
    #[serde(skip)]
    pub lora: Option<super::lora::LoraSpec>,
}

/// An encoder's positions other than learned ones, with their settings (`[model]`'s keys).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct EncoderPositions {
    pub positions: Positions,
    pub rope_theta: f64,
    pub relative_buckets: usize,
    pub relative_max_distance: usize,
    pub shaw_clip: usize,
}

impl EncoderPositions {
    fn of(model: &ModelConfig) -> Option<Self> {
        (model.positions != Positions::Learned).then_some(Self {
            positions: model.positions,
            rope_theta: model.rope_theta,
            relative_buckets: model.relative_buckets,
            relative_max_distance: model.relative_max_distance,
            shaw_clip: model.shaw_clip,
        })
    }

    /// The `[model]` keys `PositionEncoding::new` reads, for an encoder of `cfg`'s shape.
    fn model_config(&self, cfg: &BertConfig) -> ModelConfig {
        ModelConfig {
            d_model: cfg.hidden_size,
            n_head: cfg.num_attention_heads,
            block_size: cfg.max_position_embeddings,
            positions: self.positions,
            rope_theta: self.rope_theta,
            relative_buckets: self.relative_buckets,
            relative_max_distance: self.relative_max_distance,
            shaw_clip: self.shaw_clip,
            ..ModelConfig::defaults()
        }
    }
}

impl BertConfig {
    /// Reads `dir/config.json`, refusing what this encoder cannot reproduce exactly.
    pub fn from_dir(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join("config.json");
        if !path.is_file() {
            bail!("{} has no config.json: not a Hugging Face model directory", dir.display());
        }
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let cfg: Self =
            serde_json::from_str(&text).with_context(|| format!("{} is not a BERT config", path.display()))?;
        match cfg.model_type.as_deref() {
            Some("bert") | None => {}
            Some(other) => bail!(
                "{}: model_type `{other}` is not supported; taper loads BERT (`bert`) checkpoints",
                path.display()
            ),
        }
        if let Some(p) = cfg.position_embedding_type.as_deref().filter(|p| *p != "absolute") {
            bail!("{}: position_embedding_type `{p}` is not supported (only `absolute`)", path.display());
        }
        cfg.activation().with_context(|| format!("in {}", path.display()))?;
        if !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads) {
            bail!("{}: num_attention_heads must divide hidden_size", path.display());
        }
        Ok(cfg)
    }

    /// The config of an encoder trained from scratch with `model` (positions learned, two token types).
    pub fn from_model_config(model: &ModelConfig, vocab_size: usize) -> Self {
        Self {
            vocab_size,
            hidden_size: model.d_model,
            num_hidden_layers: model.n_layer,
            num_attention_heads: model.n_head,
            intermediate_size: model.d_ff(),
            // Hugging Face's names; a gated FFN has none in BERT (`config.rs` refuses it there).
            hidden_act: match model.activation {
                Activation::Gelu => "gelu".into(),
                Activation::Relu => "relu".into(),
                Activation::GeluTanh => "gelu_new".into(),
                Activation::Silu => "silu".into(),
                gated => format!("{gated:?}").to_lowercase(),
            },
            max_position_embeddings: model.block_size,
            type_vocab_size: default_type_vocab(),
            layer_norm_eps: model.layer_norm_eps,
            hidden_dropout_prob: model.resid_dropout(),
            attention_probs_dropout_prob: model.attn_dropout(),
            initializer_range: model.init_std,
            model_type: Some("bert".into()),
            position_embedding_type: Some("absolute".into()),
            taper_positions: EncoderPositions::of(model),
            lora: model.lora,
        }
    }

    pub fn activation(&self) -> anyhow::Result<Activation> {
        match self.hidden_act.as_str() {
            "gelu" => Ok(Activation::Gelu),
            "relu" => Ok(Activation::Relu),
            "gelu_new" | "gelu_pytorch_tanh" => Ok(Activation::GeluTanh),
            "silu" | "swish" => Ok(Activation::Silu),
            other => {
                bail!("hidden_act `{other}` is not supported (gelu, relu, gelu_new, gelu_pytorch_tanh, silu, swish)")
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct BertEncoder {
    stack: Stack,
}

impl BertEncoder {
    /// Builds the encoder over `vb` under taper's names (`tok_emb`, `blocks.0.attn.q_proj`,
    /// ...); [`BertEncoder::bare`] and the task models see them through Hugging Face's table.
    pub fn new(cfg: &BertConfig, norm: NormPlacement, kernels: Kernels, dtype: DType, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let init = InitPolicy {
            scheme: InitScheme::Normal,
            std: cfg.initializer_range,
            residual_scale: 1.0,
            branch_gain: 1.0,
            lora: cfg.lora,
        };
        let activation = cfg.activation().map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let embedding = |count: usize, name: &str| Embedding::new(count, d, init.embedding(d), vb.pp(name));
        let block_cfg = BlockConfig {
            d_model: d,
            n_head: cfg.num_attention_heads,
            d_ff: cfg.intermediate_size,
            activation,
            norm,
            attn_dropout: cfg.attention_probs_dropout_prob,
            resid_dropout: cfg.hidden_dropout_prob,
            biases: (true, true, true),
            layer_norm_eps: cfg.layer_norm_eps,
            norm_kind: NormKind::Layer,
            n_kv_head: cfg.num_attention_heads,
            shaw_clip: cfg.taper_positions.filter(|p| p.positions == Positions::Shaw).map(|p| p.shaw_clip),
            deepnorm: match norm {
                NormPlacement::DeepNorm => DeepNorm::for_stack(StackRole::Alone { layers: cfg.num_hidden_layers }),
                _ => DeepNorm::NONE,
            },
            qk_norm: false,
            cross_attention: false,
        };
        let blocks = (0..cfg.num_hidden_layers)
            .map(|i| Block::new(&block_cfg, &init, vb.pp(format!("blocks.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let final_norm = match norm.has_final_norm() {
            true => Some(Norm::Layer(LayerNorm::new(d, cfg.layer_norm_eps, vb.pp("ln_f"))?)),
            false => None,
        };
        let embeddings = Embeddings {
            tokens: embedding(cfg.vocab_size, "tok_emb")?,
            scale: 1.0,
            token_types: Some(embedding(cfg.type_vocab_size, "type_emb")?),
            norm: Some(LayerNorm::new(d, cfg.layer_norm_eps, vb.pp("ln_emb"))?),
        };
        let positions = match &cfg.taper_positions {
            None => PositionEncoding::Learned(embedding(cfg.max_position_embeddings, "pos_emb")?),
            Some(p) => PositionEncoding::new(&p.model_config(cfg), &init, false, vb.pp("pos_emb"))?,
        };
        let stack = Stack {
            embeddings,
            positions,
            blocks,
            final_norm,
            causal: false,
            dropout: cfg.hidden_dropout_prob,
            max_len: (cfg.max_position_embeddings, "max_position_embeddings"),
            dtype,
            kernels,
        };
        Ok(Self { stack })
    }

    /// A bare encoder (Hugging Face's `BertModel`) over `vb` at the root of a store that holds
    /// its parameters under Hugging Face's names (`embeddings.word_embeddings`, ...).
    pub fn bare(cfg: &BertConfig, norm: NormPlacement, kernels: Kernels, dtype: DType, vb: VarBuilder) -> Result<Self> {
        Self::new(cfg, norm, kernels, dtype, ENCODER.renamed(vb))
    }

    /// The embedding tables (words, token types, positions).
    pub fn embedding_tables(&self) -> Vec<Tensor> {
        self.stack.embedding_tables()
    }

    /// The token-embedding matrix (vocab, D), which a masked-LM decoder shares.
    pub fn word_embeddings(&self) -> &Tensor {
        &self.stack.embeddings.tokens.weight
    }

    /// Last hidden states (B, T, D). `input_ids` (B, T) u32; `token_type_ids` (B, T) u32 or
    /// None (all 0); `attention_mask` (B, T), 1 for real tokens and 0 for padding, or None.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        attention_mask: Option<&Tensor>,
        mode: &mut Mode,
    ) -> Result<Tensor> {
        let inputs = StackInputs { token_types: token_type_ids, keep: attention_mask, ..Default::default() };
        self.stack.forward(input_ids, inputs, None, mode)
    }

    /// RMS of the input of every LayerNorm of the blocks (the residual stream), by its
    /// Hugging Face name (`encoder.layer.0.attention.output.LayerNorm`, ...).
    pub fn norm_input_rms(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>) -> Result<Vec<(String, f64)>> {
        let inputs = StackInputs { keep: attention_mask, ..Default::default() };
        let rms = self.stack.norm_input_rms(input_ids, inputs, |i| format!("blocks.{i}"), "ln_f")?;
        Ok(rms.into_iter().map(|(name, v)| (ENCODER.checkpoint_name(&name).unwrap_or(name), v)).collect())
    }
}

/// How a sequence becomes one vector for classification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Hugging Face's head: `pooler.dense` + tanh on the first ([CLS]) token.
    Cls,
    /// Mean of the real (unpadded) tokens' hidden states.
    Mean,
}

/// Hugging Face's `BertForSequenceClassification`: the encoder, the pooler, dropout, and a
/// linear `classifier` (the pooler loads from a BERT checkpoint that has one; the classifier
/// starts fresh). Built over the root of a store in Hugging Face's names (`bert.`, `classifier`).
#[derive(Debug, Clone)]
pub struct SequenceClassifier {
    pub encoder: BertEncoder,
    pooler: Option<Linear>,
    classifier: Linear,
    pooling: Pooling,
    dropout: f64,
}

impl SequenceClassifier {
    pub fn new(
        cfg: &BertConfig,
        num_labels: usize,
        pooling: Pooling,
        norm: NormPlacement,
        kernels: Kernels,
        vb: VarBuilder,
    ) -> Result<Self> {
        let d = cfg.hidden_size;
        let init = candle_nn::Init::Randn { mean: 0.0, stdev: cfg.initializer_range };
        let vb = TASK_MODEL.renamed(vb);
        let pooler = match pooling {
            Pooling::Cls => Some(Linear::new(d, d, true, init, vb.pp("pooler"))?),
            Pooling::Mean => None,
        };
        Ok(Self {
            encoder: BertEncoder::new(cfg, norm, kernels, DType::F32, vb.pp("encoder"))?,
            pooler,
            classifier: Linear::new(d, num_labels, true, init, vb.pp("classifier"))?,
            pooling,
            dropout: cfg.hidden_dropout_prob,
        })
    }

    /// Logits (B, num_labels); arguments as for [`BertEncoder::forward`].
    pub fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        attention_mask: Option<&Tensor>,
        mode: &mut Mode,
    ) -> Result<Tensor> {
        let hidden = self.encoder.forward(input_ids, token_type_ids, attention_mask, mode)?;
        let pooled = match (self.pooling, &self.pooler) {
            (Pooling::Cls, Some(dense)) => dense.forward(&hidden.narrow(1, 0, 1)?.squeeze(1)?, mode)?.tanh()?, // [CLS]: (B, D)
            (Pooling::Mean, _) => match attention_mask {
                Some(mask) => {
                    let mask = mask.to_dtype(hidden.dtype())?.unsqueeze(2)?; // (B, T, 1)
                    hidden.broadcast_mul(&mask)?.sum(1)?.broadcast_div(&mask.sum(1)?)?
                }
                None => hidden.mean(1)?,
            },
            (Pooling::Cls, None) => candle_core::bail!("CLS pooling without a pooler"),
        };
        let pooled = dropout(&pooled, self.dropout, mode)?;
        self.classifier.forward(&pooled, mode)
    }
}

/// Hugging Face's `BertForTokenClassification`: the encoder (no pooler), dropout, and a linear
/// `classifier` over tokens' hidden states. Built over the root of a store in Hugging Face's
/// names (`bert.`, `classifier`).
#[derive(Debug, Clone)]
pub struct TokenClassifier {
    pub encoder: BertEncoder,
    classifier: Linear,
    dropout: f64,
}

impl TokenClassifier {
    pub fn new(
        cfg: &BertConfig,
        num_labels: usize,
        norm: NormPlacement,
        kernels: Kernels,
        vb: VarBuilder,
    ) -> Result<Self> {
        let init = candle_nn::Init::Randn { mean: 0.0, stdev: cfg.initializer_range };
        let vb = TASK_MODEL.renamed(vb);
        Ok(Self {
            encoder: BertEncoder::new(cfg, norm, kernels, DType::F32, vb.pp("encoder"))?,
            classifier: Linear::new(cfg.hidden_size, num_labels, true, init, vb.pp("classifier"))?,
            dropout: cfg.hidden_dropout_prob,
        })
    }

    /// Tag logits (N, num_labels) at the flat positions `positions` (N) u32 of the batch (B * T
    /// positions); other arguments as for [`BertEncoder::forward`].
    pub fn logits_at(
        &self,
        input_ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        attention_mask: Option<&Tensor>,
        positions: &Tensor,
        mode: &mut Mode,
    ) -> Result<Tensor> {
        let hidden = self.encoder.forward(input_ids, token_type_ids, attention_mask, mode)?;
        let (b, t, d) = hidden.dims3()?;
        let selected = hidden.reshape((b * t, d))?.index_select(positions, 0)?; // (B, T, D) -> (B*T, D) -> (N, D)
        self.classifier.forward(&dropout(&selected, self.dropout, mode)?, mode)
    }
}

/// Hugging Face's `BertForMaskedLM`: the encoder, then a transform (dense, activation,
/// LayerNorm) and a decoder that shares the token embeddings, plus an output bias. Built over
/// the root of a store in Hugging Face's names (`bert.`, `cls.predictions.`).
#[derive(Debug, Clone)]
pub struct MaskedLm {
    pub encoder: BertEncoder,
    transform: Linear,
    transform_norm: LayerNorm,
    decoder: Linear,
    activation: Activation,
}

impl MaskedLm {
    pub fn new(cfg: &BertConfig, norm: NormPlacement, kernels: Kernels, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let init = candle_nn::Init::Randn { mean: 0.0, stdev: cfg.initializer_range };
        let vb = TASK_MODEL.renamed(vb);
        let encoder = BertEncoder::new(cfg, norm, kernels, DType::F32, vb.pp("encoder"))?;
        let head = vb.pp("mlm");
        let bias = head.get_with_hints(cfg.vocab_size, "bias", candle_nn::Init::Const(0.0))?;
        let decoder = Linear::from_weight(encoder.word_embeddings().clone(), Some(bias));
        Ok(Self {
            transform: Linear::new(d, d, true, init, head.pp("transform"))?,
            transform_norm: LayerNorm::new(d, cfg.layer_norm_eps, head.pp("norm"))?,
            decoder,
            encoder,
            activation: cfg.activation().map_err(|e| candle_core::Error::Msg(e.to_string()))?,
        })
    }

    /// Vocabulary logits (N, vocab) at the flat positions `positions` (N) u32 of the batch
    /// (B * T positions): only the selected tokens go through the head.
    pub fn logits_at(&self, input_ids: &Tensor, positions: &Tensor, mode: &mut Mode) -> Result<Tensor> {
        let hidden = self.encoder.forward(input_ids, None, None, mode)?;
        let (b, t, d) = hidden.dims3()?;
        let selected = hidden.reshape((b * t, d))?.index_select(positions, 0)?; // (B, T, D) -> (B*T, D) -> (N, D)
        let x = mode.backend().activate(&self.transform.forward(&selected, mode)?, self.activation)?;
        self.decoder.forward(&self.transform_norm.forward(&x, mode)?, mode)
    }
}
