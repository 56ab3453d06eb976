//! Hugging Face DistilBERT (`DistilBertModel`, `DistilBertFor{SequenceClassification,
//! TokenClassification, MaskedLM}`): BERT's post-LN encoder without token types or pooler,
//! its own names (`q_lin`, `sa_layer_norm`, `ffn.lin1`, ...), a sequence classifier of
//! `pre_classifier` + ReLU, dropout (`seq_classif_dropout`) and `classifier`, and an MLM head of
//! `vocab_transform`, activation, `vocab_layer_norm` and the tied `vocab_projector`. Runs keep
//! these names, as BERT's do.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{show, Checkpoint, ContextLength, Export, Family, Head, NameTable, Tokens};
use crate::config::{Activation, Architecture, ModelConfig, NormKind, NormPlacement, Positions};
use crate::model::encoder::{HeadStyle, PoolerActivation};

/// DistilBERT's LayerNorms: eps fixed in its code, not in config.json.
const EPS: f64 = 1e-12;

fn default_dropout() -> f64 {
    0.1
}
fn default_seq_dropout() -> f64 {
    0.2
}
fn default_init_range() -> f64 {
    0.02
}
fn yes() -> bool {
    true
}

/// The fields of a DistilBERT `config.json` (transformers' defaults where absent).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DistilBertConfig {
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub sinusoidal_pos_embds: bool,
    pub n_layers: usize,
    pub n_heads: usize,
    pub dim: usize,
    pub hidden_dim: usize,
    #[serde(default = "default_dropout")]
    pub dropout: f64,
    #[serde(default = "default_dropout")]
    pub attention_dropout: f64,
    pub activation: String,
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
    #[serde(default = "default_seq_dropout")]
    pub seq_classif_dropout: f64,
    #[serde(default = "yes")]
    pub tie_weights_: bool,
    #[serde(default)]
    pub pad_token_id: usize,
    pub model_type: Option<String>,
}

impl DistilBertConfig {
    fn activation(&self) -> Result<Activation> {
        match self.activation.as_str() {
            "gelu" => Ok(Activation::Gelu),
            "relu" => Ok(Activation::Relu),
            other => bail!("activation `{other}` is not DistilBERT's (gelu or relu)"),
        }
    }

    fn model_config(&self) -> Result<ModelConfig> {
        Ok(ModelConfig {
            arch: Architecture::EncoderOnly,
            n_layer: self.n_layers,
            n_head: self.n_heads,
            d_model: self.dim,
            d_ff: Some(self.hidden_dim),
            block_size: self.max_position_embeddings,
            norm: NormPlacement::Post,
            norm_kind: NormKind::Layer,
            activation: self.activation()?,
            positions: Positions::Learned,
            layer_norm_eps: EPS,
            init_std: self.initializer_range,
            classifier_dropout: Some(self.seq_classif_dropout),
            ..ModelConfig::defaults()
        })
    }
}

/// taper's encoder paths and DistilBERT's.
const ENCODER: [(&str, &str); 12] = [
    ("tok_emb", "embeddings.word_embeddings"),
    ("pos_emb", "embeddings.position_embeddings"),
    ("ln_emb", "embeddings.LayerNorm"),
    ("blocks.{i}.attn.q_proj", "transformer.layer.{i}.attention.q_lin"),
    ("blocks.{i}.attn.k_proj", "transformer.layer.{i}.attention.k_lin"),
    ("blocks.{i}.attn.v_proj", "transformer.layer.{i}.attention.v_lin"),
    ("blocks.{i}.attn.out_proj", "transformer.layer.{i}.attention.out_lin"),
    ("blocks.{i}.ln_1", "transformer.layer.{i}.sa_layer_norm"),
    ("blocks.{i}.mlp.fc1", "transformer.layer.{i}.ffn.lin1"),
    ("blocks.{i}.mlp.fc2", "transformer.layer.{i}.ffn.lin2"),
    ("blocks.{i}.ln_2", "transformer.layer.{i}.output_layer_norm"),
    // The pre-LN final norm: taper's own (no DistilBERT has it).
    ("ln_f", "transformer.final_layer_norm"),
];

/// The heads: `pre_classifier` (taper's pooler), `classifier` (the sequence classifier's and the
/// tagger's), the MLM head (its decoder is the word embeddings).
const HEADS: [(&str, &str); 6] = [
    ("pooler", "pre_classifier"),
    ("classifier", "classifier"),
    ("tagger", "classifier"),
    ("mlm.transform", "vocab_transform"),
    ("mlm.norm", "vocab_layer_norm"),
    ("mlm.bias", "vocab_projector.bias"),
];

/// DistilBERT's adapter.
pub struct DistilBert;

impl Family for DistilBert {
    fn model_type(&self) -> &'static str {
        "distilbert"
    }

    fn arch(&self) -> Architecture {
        Architecture::EncoderOnly
    }

    fn class(&self, head: Head) -> Option<&'static str> {
        super::encoder_class(
            head,
            ["DistilBertForSequenceClassification", "DistilBertForTokenClassification", "DistilBertForMaskedLM"],
        )
    }

    fn encoder_prefix(&self) -> Option<&'static str> {
        Some("distilbert")
    }

    fn read_config(&self, config: &Value) -> Result<Checkpoint> {
        let cfg: DistilBertConfig = serde_json::from_value(config.clone()).context("not a DistilBERT config")?;
        if cfg.sinusoidal_pos_embds {
            bail!("`sinusoidal_pos_embds` = true is not supported yet (DistilBERT's fixed position table): taper loads learned ones");
        }
        if !cfg.tie_weights_ {
            bail!("`tie_weights_` = false is not supported: taper's masked-LM decoder is the word embeddings");
        }
        if !cfg.dim.is_multiple_of(cfg.n_heads.max(1)) {
            bail!("n_heads must divide dim");
        }
        Ok(Checkpoint {
            model: cfg.model_config()?,
            vocab_size: cfg.vocab_size,
            type_vocab_size: 0,
            context: ContextLength::Exactly(cfg.max_position_embeddings),
            dropout: Some((cfg.dropout, cfg.attention_dropout)),
            run_chooses: &["norm"],
        })
    }

    fn mismatches(&self, model: &ModelConfig) -> Vec<String> {
        let mut out = Vec::new();
        if model.norm != NormPlacement::Post {
            out.push(format!("`model.norm = {}` (DistilBERT is post-LN)", show(&model.norm)));
        }
        if model.positions != Positions::Learned || model.position_offset != 0 {
            out.push(format!("`model.positions = {}` (DistilBERT's are learned, from 0)", show(&model.positions)));
        }
        if !matches!(model.activation, Activation::Gelu | Activation::Relu) {
            out.push(format!("`model.activation = {}` (DistilBERT's is gelu or relu)", show(&model.activation)));
        }
        if let Some(e) = model.embedding_size {
            out.push(format!("`model.embedding_size = {e}` (DistilBERT's embeddings are d_model wide)"));
        }
        out
    }

    fn names(&self, _model: &ModelConfig) -> NameTable {
        let encoder = NameTable::new(ENCODER);
        NameTable::new(
            encoder.nested("encoder", "distilbert").into_iter().chain(HEADS.map(|(t, c)| (t.into(), c.into()))),
        )
    }

    fn head_style(&self) -> HeadStyle {
        HeadStyle {
            pooler_input_dropout: false,
            pooler_activation: PoolerActivation::Relu,
            tagger_takes_classifier_dropout: false,
        }
    }

    /// The position-id buffer and the tied MLM decoder's copy of the word embeddings.
    fn ignorable(&self, name: &str) -> bool {
        name.ends_with("position_ids") || name == "vocab_projector.weight"
    }

    fn keeps_names(&self) -> bool {
        true
    }

    fn tokens(&self) -> Tokens {
        Tokens { bos: &[], eos: &[], pad: &["[PAD]"], cls: &["[CLS]"], sep: &["[SEP]"], mask: &["[MASK]"] }
    }

    fn config_json(&self, export: &Export) -> Result<Value> {
        let model = export.model;
        let activation = match model.activation {
            Activation::Relu => "relu",
            _ => "gelu",
        };
        let distil = DistilBertConfig {
            vocab_size: export.vocab_size,
            max_position_embeddings: model.block_size,
            sinusoidal_pos_embds: false,
            n_layers: model.n_layer,
            n_heads: model.n_head,
            dim: model.d_model,
            hidden_dim: model.d_ff(),
            dropout: model.resid_dropout(),
            attention_dropout: model.attn_dropout(),
            activation: activation.into(),
            initializer_range: model.init_std,
            seq_classif_dropout: model.classifier_dropout(),
            tie_weights_: true,
            pad_token_id: export.ids.pad.unwrap_or(0) as usize,
            model_type: Some("distilbert".into()),
        };
        let hf = super::finish_encoder_json(self, serde_json::to_value(&distil)?, export);
        Ok(hf)
    }
}
