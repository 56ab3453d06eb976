//! Hugging Face BERT (`BertModel`, `BertFor{SequenceClassification, TokenClassification,
//! MaskedLM}`) for taper's encoder and its heads: its config.json ([`BertConfig`]), its tensor
//! names, its special tokens. An encoder run keeps these names in its store and checkpoints
//! (its task model is built through [`Family::names`]), so a BERT file loads by name and an
//! export writes the weights as they are.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{show, Checkpoint, ContextLength, Export, Family, Head, NameTable, Tokens};
use crate::config::{Activation, Architecture, ModelConfig, NormKind, NormPlacement, Positions};

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

/// The fields of a Hugging Face BERT `config.json` that shape the model (transformers'
/// defaults where absent). An encoder run saves its own as `bert_config.json`.
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
    /// The classification heads' dropout (null: hidden_dropout_prob).
    #[serde(default)]
    pub classifier_dropout: Option<f64>,
    /// ELECTRA's embedding width (projected to hidden_size); BERT has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_size: Option<usize>,
    /// taper's positions for an encoder trained here with other than BERT's learned table (not
    /// a Hugging Face field: such an encoder has no Hugging Face export).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taper_positions: Option<EncoderPositions>,
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

/// Hugging Face's `hidden_act` of an elementwise activation, and back (the first name of an
/// activation is the one an export writes).
const ACTIVATIONS: [(&str, Activation); 6] = [
    ("gelu", Activation::Gelu),
    ("relu", Activation::Relu),
    ("gelu_new", Activation::GeluTanh),
    ("gelu_pytorch_tanh", Activation::GeluTanh),
    ("silu", Activation::Silu),
    ("swish", Activation::Silu),
];

impl BertConfig {
    /// A BERT-layout config.json (BERT, RoBERTa, ELECTRA, ALBERT: `what`), with the checks they
    /// share: absolute positions, heads that divide the width.
    pub(super) fn parse(config: &Value, what: &str) -> Result<Self> {
        let cfg: Self = serde_json::from_value(config.clone()).with_context(|| format!("not a {what} config"))?;
        if let Some(p) = cfg.position_embedding_type.as_deref().filter(|p| *p != "absolute") {
            bail!("position_embedding_type `{p}` is not supported (only `absolute`)");
        }
        if !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads.max(1)) {
            bail!("num_attention_heads must divide hidden_size");
        }
        Ok(cfg)
    }

    /// What this config describes, as a BERT-layout checkpoint: `model` (its architecture,
    /// `model_config` with a family's changes) taking `model.block_size` positions exactly, its
    /// rows and its dropout; a run may rebuild it pre-LN.
    pub(super) fn checkpoint(&self, model: ModelConfig) -> Checkpoint {
        Checkpoint {
            context: ContextLength::Exactly(model.block_size),
            model,
            vocab_size: self.vocab_size,
            type_vocab_size: self.type_vocab_size,
            dropout: Some((self.hidden_dropout_prob, self.attention_probs_dropout_prob)),
            run_chooses: &["norm"],
        }
    }

    pub fn activation(&self) -> Result<Activation> {
        match ACTIVATIONS.iter().find(|(name, _)| *name == self.hidden_act) {
            Some(&(_, act)) => Ok(act),
            None => bail!(
                "hidden_act `{}` is not supported (gelu, relu, gelu_new, gelu_pytorch_tanh, silu, swish)",
                self.hidden_act
            ),
        }
    }

    /// The config of an encoder of `model`'s shape with `vocab_size` rows (two token types),
    /// as a run from scratch saves it.
    pub fn from_model_config(model: &ModelConfig, vocab_size: usize) -> Self {
        Self {
            vocab_size,
            hidden_size: model.d_model,
            num_hidden_layers: model.n_layer,
            num_attention_heads: model.n_head,
            intermediate_size: model.d_ff(),
            // Hugging Face's names; a gated FFN has none in BERT (`config.rs` refuses it there).
            hidden_act: match ACTIVATIONS.iter().find(|(_, a)| *a == model.activation) {
                Some((name, _)) => name.to_string(),
                None => format!("{:?}", model.activation).to_lowercase(),
            },
            max_position_embeddings: model.block_size,
            type_vocab_size: default_type_vocab(),
            layer_norm_eps: model.layer_norm_eps,
            hidden_dropout_prob: model.resid_dropout(),
            attention_probs_dropout_prob: model.attn_dropout(),
            initializer_range: model.init_std,
            model_type: Some("bert".into()),
            position_embedding_type: Some("absolute".into()),
            classifier_dropout: model.classifier_dropout,
            embedding_size: model.embedding_size,
            taper_positions: (model.positions != Positions::Learned).then_some(EncoderPositions {
                positions: model.positions,
                rope_theta: model.rope_theta,
                relative_buckets: model.relative_buckets,
                relative_max_distance: model.relative_max_distance,
                shaw_clip: model.shaw_clip,
            }),
        }
    }

    /// The architecture this config describes, as `[model]`.
    pub(super) fn model_config(&self) -> Result<ModelConfig> {
        let positions = self.taper_positions.unwrap_or(EncoderPositions {
            positions: Positions::Learned,
            rope_theta: crate::model::config::default_rope_theta(),
            relative_buckets: ModelConfig::defaults().relative_buckets,
            relative_max_distance: ModelConfig::defaults().relative_max_distance,
            shaw_clip: ModelConfig::defaults().shaw_clip,
        });
        Ok(ModelConfig {
            arch: Architecture::EncoderOnly,
            n_layer: self.num_hidden_layers,
            n_head: self.num_attention_heads,
            d_model: self.hidden_size,
            d_ff: Some(self.intermediate_size),
            block_size: self.max_position_embeddings,
            norm: NormPlacement::Post,
            norm_kind: NormKind::Layer,
            activation: self.activation()?,
            positions: positions.positions,
            rope_theta: positions.rope_theta,
            relative_buckets: positions.relative_buckets,
            relative_max_distance: positions.relative_max_distance,
            shaw_clip: positions.shaw_clip,
            layer_norm_eps: self.layer_norm_eps,
            init_std: self.initializer_range,
            classifier_dropout: self.classifier_dropout,
            embedding_size: self.embedding_size.filter(|&e| e != self.hidden_size),
            ..ModelConfig::defaults()
        })
    }
}

/// taper's encoder task models (the encoder under `encoder`, its heads) and BERT's names.
pub(super) const ENCODER: [(&str, &str); 13] = [
    ("tok_emb", "embeddings.word_embeddings"),
    ("pos_emb", "embeddings.position_embeddings"),
    ("type_emb", "embeddings.token_type_embeddings"),
    ("ln_emb", "embeddings.LayerNorm"),
    ("blocks.{i}.attn.q_proj", "encoder.layer.{i}.attention.self.query"),
    ("blocks.{i}.attn.k_proj", "encoder.layer.{i}.attention.self.key"),
    ("blocks.{i}.attn.v_proj", "encoder.layer.{i}.attention.self.value"),
    ("blocks.{i}.attn.out_proj", "encoder.layer.{i}.attention.output.dense"),
    ("blocks.{i}.ln_1", "encoder.layer.{i}.attention.output.LayerNorm"),
    ("blocks.{i}.mlp.fc1", "encoder.layer.{i}.intermediate.dense"),
    ("blocks.{i}.mlp.fc2", "encoder.layer.{i}.output.dense"),
    ("blocks.{i}.ln_2", "encoder.layer.{i}.output.LayerNorm"),
    // The pre-LN final norm: taper's own (no post-LN checkpoint has it).
    ("ln_f", "encoder.final_layer_norm"),
];

/// The heads of `BertForSequenceClassification`, `BertForTokenClassification` (taper's
/// `tagger`) and `BertForMaskedLM` (the MLM decoder shares the word embeddings and has only its
/// bias).
const HEADS: [(&str, &str); 6] = [
    ("pooler", "bert.pooler.dense"),
    ("classifier", "classifier"),
    ("tagger", "classifier"),
    ("mlm.transform", "cls.predictions.transform.dense"),
    ("mlm.norm", "cls.predictions.transform.LayerNorm"),
    ("mlm.bias", "cls.predictions.bias"),
];

/// BERT's adapter.
pub struct Bert;

impl Family for Bert {
    fn model_type(&self) -> &'static str {
        "bert"
    }

    fn arch(&self) -> Architecture {
        Architecture::EncoderOnly
    }

    fn class(&self, head: Head) -> Option<&'static str> {
        super::encoder_class(head, ["BertForSequenceClassification", "BertForTokenClassification", "BertForMaskedLM"])
    }

    fn encoder_prefix(&self) -> Option<&'static str> {
        Some("bert")
    }

    fn read_config(&self, config: &Value) -> Result<Checkpoint> {
        let cfg = BertConfig::parse(config, "BERT")?;
        Ok(cfg.checkpoint(cfg.model_config()?))
    }

    fn mismatches(&self, model: &ModelConfig) -> Vec<String> {
        let mut out = Vec::new();
        if model.norm != NormPlacement::Post {
            out.push(format!("`model.norm = {}` (Hugging Face's BERT is post-LN)", show(&model.norm)));
        }
        if model.positions != Positions::Learned {
            out.push(format!("`model.positions = {}` (BERT has learned positions)", show(&model.positions)));
        }
        if model.position_offset != 0 {
            out.push(format!("`model.position_offset = {}` (BERT's positions start at 0)", model.position_offset));
        }
        if let Some(e) = model.embedding_size {
            out.push(format!("`model.embedding_size = {e}` (BERT's embeddings are d_model wide)"));
        }
        out
    }

    fn names(&self, _model: &ModelConfig) -> NameTable {
        let encoder = NameTable::new(ENCODER);
        NameTable::new(encoder.nested("encoder", "bert").into_iter().chain(HEADS.map(|(t, c)| (t.into(), c.into()))))
    }

    /// The next-sentence head of `BertForPreTraining` and the position-id buffer: nothing taper
    /// builds.
    fn ignorable(&self, name: &str) -> bool {
        name.ends_with("position_ids") || name.starts_with("cls.seq_relationship")
    }

    fn keeps_names(&self) -> bool {
        true
    }

    fn tokens(&self) -> Tokens {
        Tokens { bos: &[], eos: &[], pad: &["[PAD]"], cls: &["[CLS]"], sep: &["[SEP]"], mask: &["[MASK]"] }
    }

    fn config_json(&self, export: &Export) -> Result<Value> {
        let bert = BertConfig {
            type_vocab_size: export.type_vocab_size,
            ..BertConfig::from_model_config(export.model, export.vocab_size)
        };
        let hf = super::finish_encoder_json(self, serde_json::to_value(&bert)?, export);
        Ok(hf)
    }
}
