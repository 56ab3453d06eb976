//! The encoder (BERT-style): token + position + token-type embeddings, then LayerNorm and
//! dropout, then a stack of bidirectional blocks (the same `Block` as the GPT) with a
//! key-padding mask; and the heads taper trains on it (a sequence classifier, a token
//! classifier, a masked-language-model head). Everything is under taper's names (`tok_emb`,
//! `blocks.0.attn.q_proj`, `pooler`, `classifier`, `mlm.transform`, ...); a Hugging Face
//! family's adapter (`hf::Family::names`) gives a task model its checkpoint's names. Post-LN
//! as BERT has it; `model.norm = "pre"` moves every LayerNorm into its branch and adds a final
//! one (`ln_f`).

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;

use super::block::BlockConfig;
use super::gpt::{final_norm, init_policy, taper_blocks};
use super::layers::{Embedding, Linear};
use super::norm::LayerNorm;
use super::positions::PositionEncoding;
use super::stack::{Embeddings, Stack, StackInputs};
use crate::config::{Activation, ModelConfig};
use crate::kernels::{dropout, Mode};

/// The heads of the task models, by taper's names: what a task trains on top of the encoder
/// (`encoder.*`).
pub const HEADS: [&str; 4] = ["pooler", "classifier", "tagger", "mlm"];

/// What an encoder is built from besides `[model]`: the rows of its token and token-type
/// (segment) embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncoderVocab {
    pub tokens: usize,
    pub token_types: usize,
}

#[derive(Debug, Clone)]
pub struct Encoder {
    stack: Stack,
}

impl Encoder {
    /// The encoder of `cfg` (an encoder-only `[model]`) over `vb`: `tok_emb`, `pos_emb`,
    /// `type_emb`, `ln_emb`, `blocks.N.*`, and `ln_f` when pre-LN. `dtype` is the compute
    /// precision.
    pub fn new(cfg: &ModelConfig, vocab: EncoderVocab, dtype: DType, vb: VarBuilder) -> Result<Self> {
        let (init, d, e) = (init_policy(cfg), cfg.d_model, cfg.embedding_dim());
        let embedding = |count: usize, name: &str| Embedding::new(count, e, init.embedding(e), vb.pp(name));
        let embeddings = Embeddings {
            tokens: embedding(vocab.tokens, "tok_emb")?,
            scale: 1.0,
            // DistilBERT has none: its inputs' token types are not read.
            token_types: (vocab.token_types > 0).then(|| embedding(vocab.token_types, "type_emb")).transpose()?,
            norm: Some(LayerNorm::new(e, cfg.layer_norm_eps, vb.pp("ln_emb"))?),
            project: (e != d).then(|| Linear::new(e, d, true, head_init(cfg), vb.pp("emb_proj"))).transpose()?,
        };
        let stack = Stack {
            embeddings,
            positions: PositionEncoding::new(cfg, &init, false, vb.pp("pos_emb"))?,
            blocks: taper_blocks(&BlockConfig::from_model(cfg, false), &init, cfg.n_layer, &vb)?,
            final_norm: final_norm(cfg, &vb)?,
            causal: false,
            dropout: cfg.emb_dropout(),
            max_len: (cfg.block_size, "max_position_embeddings"),
            dtype,
            kernels: cfg.kernels,
        };
        Ok(Self { stack })
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

    /// RMS of the input of every LayerNorm of the blocks (the residual stream), by taper's
    /// name (`blocks.0.ln_1`, ..., `ln_f`).
    pub fn norm_input_rms(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>) -> Result<Vec<(String, f64)>> {
        let inputs = StackInputs { keep: attention_mask, ..Default::default() };
        self.stack.norm_input_rms(input_ids, inputs, |i| format!("blocks.{i}"), "ln_f")
    }
}

/// What a sequence classifier's pooler does to the [CLS] token before the output layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolerActivation {
    /// BERT's and RoBERTa's pooler.
    Tanh,
    /// DistilBERT's `pre_classifier`.
    Relu,
    /// ELECTRA's classification head (exact GELU).
    Gelu,
}

/// How a family's classification heads are made, beyond the shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadStyle {
    /// Dropout on [CLS] before the pooler as well as after it (RoBERTa's head: dropout, dense,
    /// tanh, dropout, out_proj).
    pub pooler_input_dropout: bool,
    pub pooler_activation: PoolerActivation,
    /// The token classifier's dropout is `model.classifier_dropout` (BERT, RoBERTa), else the
    /// hidden dropout (DistilBERT: its `seq_classif_dropout` is the sequence classifier's alone).
    pub tagger_takes_classifier_dropout: bool,
}

impl HeadStyle {
    pub const BERT: Self = Self {
        pooler_input_dropout: false,
        pooler_activation: PoolerActivation::Tanh,
        tagger_takes_classifier_dropout: true,
    };
}

/// How a sequence becomes one vector for classification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// BERT's head: `pooler` (dense) + tanh on the first ([CLS]) token.
    Cls,
    /// Mean of the real (unpadded) tokens' hidden states.
    Mean,
}

/// The heads' initialisation: Normal(0, `model.init_std`), a checkpoint's initializer_range.
fn head_init(cfg: &ModelConfig) -> candle_nn::Init {
    candle_nn::Init::Randn { mean: 0.0, stdev: cfg.init_std }
}

/// One label per sequence (`BertForSequenceClassification`): the encoder (`encoder`), the
/// pooler (`pooler`, with CLS pooling), dropout, and a linear `classifier`.
#[derive(Debug, Clone)]
pub struct SequenceClassifier {
    pub encoder: Encoder,
    pooler: Option<Linear>,
    classifier: Linear,
    pooling: Pooling,
    dropout: f64,
    style: HeadStyle,
}

impl SequenceClassifier {
    pub fn new(
        cfg: &ModelConfig,
        vocab: EncoderVocab,
        num_labels: usize,
        pooling: Pooling,
        vb: VarBuilder,
    ) -> Result<Self> {
        let (d, init) = (cfg.d_model, head_init(cfg));
        let pooler = match pooling {
            Pooling::Cls => Some(Linear::new(d, d, true, init, vb.pp("pooler"))?),
            Pooling::Mean => None,
        };
        Ok(Self {
            encoder: Encoder::new(cfg, vocab, DType::F32, vb.pp("encoder"))?,
            pooler,
            classifier: Linear::new(d, num_labels, true, init, vb.pp("classifier"))?,
            pooling,
            dropout: cfg.classifier_dropout(),
            style: HeadStyle::BERT,
        })
    }

    /// The pooler made as `style` says (the default is BERT's).
    pub fn styled(self, style: HeadStyle) -> Self {
        Self { style, ..self }
    }

    /// Logits (B, num_labels); arguments as for [`Encoder::forward`].
    pub fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        attention_mask: Option<&Tensor>,
        mode: &mut Mode,
    ) -> Result<Tensor> {
        let hidden = self.encoder.forward(input_ids, token_type_ids, attention_mask, mode)?;
        let pooled = match (self.pooling, &self.pooler) {
            (Pooling::Cls, Some(dense)) => {
                let first = hidden.narrow(1, 0, 1)?.squeeze(1)?; // [CLS]: (B, T, D) -> (B, D)
                let first = if self.style.pooler_input_dropout { dropout(&first, self.dropout, mode)? } else { first };
                let pooled = dense.forward(&first, mode)?;
                match self.style.pooler_activation {
                    PoolerActivation::Tanh => pooled.tanh()?,
                    PoolerActivation::Relu => pooled.relu()?,
                    PoolerActivation::Gelu => pooled.gelu_erf()?,
                }
            }
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

/// One tag per token (`BertForTokenClassification`): the encoder (`encoder`, no pooler),
/// dropout, and a linear `tagger` over tokens' hidden states (the checkpoint's `classifier`).
#[derive(Debug, Clone)]
pub struct TokenClassifier {
    pub encoder: Encoder,
    classifier: Linear,
    dropout: f64,
}

impl TokenClassifier {
    pub fn new(cfg: &ModelConfig, vocab: EncoderVocab, num_labels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            encoder: Encoder::new(cfg, vocab, DType::F32, vb.pp("encoder"))?,
            classifier: Linear::new(cfg.d_model, num_labels, true, head_init(cfg), vb.pp("tagger"))?,
            dropout: cfg.classifier_dropout(),
        })
    }

    /// The dropout as `style` says: the hidden dropout where the family's tagger does not take
    /// the classifier's.
    pub fn styled(self, style: HeadStyle, cfg: &ModelConfig) -> Self {
        let dropout = if style.tagger_takes_classifier_dropout { self.dropout } else { cfg.resid_dropout() };
        Self { dropout, ..self }
    }

    /// Tag logits (N, num_labels) at the flat positions `positions` (N) u32 of the batch (B * T
    /// positions); other arguments as for [`Encoder::forward`].
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

/// Masked-token logits (`BertForMaskedLM`): the encoder (`encoder`), then a transform
/// (`mlm.transform`: dense, activation, `mlm.norm`: LayerNorm) and a decoder that shares the
/// token embeddings, plus an output bias (`mlm.bias`).
#[derive(Debug, Clone)]
pub struct MaskedLm {
    pub encoder: Encoder,
    transform: Linear,
    transform_norm: LayerNorm,
    decoder: Linear,
    activation: Activation,
}

impl MaskedLm {
    pub fn new(cfg: &ModelConfig, vocab: EncoderVocab, vb: VarBuilder) -> Result<Self> {
        let d = cfg.d_model;
        let encoder = Encoder::new(cfg, vocab, DType::F32, vb.pp("encoder"))?;
        let head = vb.pp("mlm");
        let bias = head.get_with_hints(vocab.tokens, "bias", candle_nn::Init::Const(0.0))?;
        let decoder = Linear::from_weight(encoder.word_embeddings().clone(), Some(bias));
        Ok(Self {
            // To the embeddings' width (ELECTRA's generator head: hidden -> embedding_size).
            transform: Linear::new(d, cfg.embedding_dim(), true, head_init(cfg), head.pp("transform"))?,
            transform_norm: LayerNorm::new(cfg.embedding_dim(), cfg.layer_norm_eps, head.pp("norm"))?,
            decoder,
            encoder,
            activation: cfg.activation,
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
