//! Hugging Face ALBERT (`AlbertModel`, `Albert{ForSequenceClassification,
//! ForTokenClassification, ForMaskedLM}`; `AlbertForPreTraining` files load, the sentence-order
//! head set aside): BERT's post-LN encoder with factorised embeddings (`embedding_size`, mapped to
//! the hidden size by `embedding_hidden_mapping_in`, taper's `emb_proj`) and one layer shared
//! by every layer: the name table sends each of taper's blocks to the group's one layer, so
//! they are the same parameters (built once in the store, the optimizer holds them once, their
//! gradients summed over the uses). Runs keep these names, as BERT's do.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::bert::BertConfig;
use super::{Checkpoint, Export, Family, Head, NameTable, Tokens};
use crate::config::{Architecture, ModelConfig};

/// taper's encoder paths and ALBERT's: every block is layer 0 of group 0.
const ENCODER: [(&str, &str); 14] = [
    ("tok_emb", "embeddings.word_embeddings"),
    ("pos_emb", "embeddings.position_embeddings"),
    ("type_emb", "embeddings.token_type_embeddings"),
    ("ln_emb", "embeddings.LayerNorm"),
    ("emb_proj", "encoder.embedding_hidden_mapping_in"),
    ("blocks.{i}.attn.q_proj", "encoder.albert_layer_groups.0.albert_layers.0.attention.query"),
    ("blocks.{i}.attn.k_proj", "encoder.albert_layer_groups.0.albert_layers.0.attention.key"),
    ("blocks.{i}.attn.v_proj", "encoder.albert_layer_groups.0.albert_layers.0.attention.value"),
    ("blocks.{i}.attn.out_proj", "encoder.albert_layer_groups.0.albert_layers.0.attention.dense"),
    ("blocks.{i}.ln_1", "encoder.albert_layer_groups.0.albert_layers.0.attention.LayerNorm"),
    ("blocks.{i}.mlp.fc1", "encoder.albert_layer_groups.0.albert_layers.0.ffn"),
    ("blocks.{i}.mlp.fc2", "encoder.albert_layer_groups.0.albert_layers.0.ffn_output"),
    ("blocks.{i}.ln_2", "encoder.albert_layer_groups.0.albert_layers.0.full_layer_layer_norm"),
    // The pre-LN final norm: taper's own (no ALBERT has it).
    ("ln_f", "encoder.final_layer_norm"),
];

/// The heads: BERT's pooler and classifier, the tagger, the MLM head (its decoder is the word
/// embeddings, its decoder bias the head's bias).
const HEADS: [(&str, &str); 6] = [
    ("pooler", "albert.pooler"),
    ("classifier", "classifier"),
    ("tagger", "classifier"),
    ("mlm.transform", "predictions.dense"),
    ("mlm.norm", "predictions.LayerNorm"),
    ("mlm.bias", "predictions.bias"),
];

/// ALBERT's adapter.
pub struct Albert;

fn count(config: &Value, key: &str, default: u64) -> Result<u64> {
    match config.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v.as_u64().with_context(|| format!("`{key}` must be a count, got {v}")),
    }
}

impl Family for Albert {
    fn model_type(&self) -> &'static str {
        "albert"
    }

    fn arch(&self) -> Architecture {
        Architecture::EncoderOnly
    }

    fn class(&self, head: Head) -> Option<&'static str> {
        super::encoder_class(
            head,
            ["AlbertForSequenceClassification", "AlbertForTokenClassification", "AlbertForMaskedLM"],
        )
    }

    fn encoder_prefix(&self) -> Option<&'static str> {
        Some("albert")
    }

    fn read_config(&self, config: &Value) -> Result<Checkpoint> {
        let cfg = BertConfig::parse(config, "ALBERT")?;
        for key in ["num_hidden_groups", "inner_group_num"] {
            let n = count(config, key, 1)?;
            if n != 1 {
                bail!("`{key}` = {n}: taper builds ALBERT's one shared layer (1 group of 1 layer), as every released ALBERT has");
            }
        }
        let classifier_dropout = config.get("classifier_dropout_prob").and_then(Value::as_f64);
        let model = ModelConfig { classifier_dropout, ..cfg.model_config()? };
        Ok(cfg.checkpoint(model))
    }

    fn mismatches(&self, model: &ModelConfig) -> Vec<String> {
        super::post_ln_learned_mismatches(model, "ALBERT")
    }

    fn names(&self, _model: &ModelConfig) -> NameTable {
        let encoder = NameTable::new(ENCODER);
        NameTable::new(encoder.nested("encoder", "albert").into_iter().chain(HEADS.map(|(t, c)| (t.into(), c.into()))))
    }

    /// The position-id buffer, the sentence-order head, the tied decoder's copies.
    fn ignorable(&self, name: &str) -> bool {
        name.ends_with("position_ids")
            || name.starts_with("sop_classifier.")
            || name.starts_with("predictions.decoder.")
    }

    fn keeps_names(&self) -> bool {
        true
    }

    fn tokens(&self) -> Tokens {
        Tokens {
            bos: &["[CLS]"],
            eos: &["[SEP]"],
            pad: &["<pad>"],
            cls: &["[CLS]"],
            sep: &["[SEP]"],
            mask: &["[MASK]"],
        }
    }

    fn config_json(&self, export: &Export) -> Result<Value> {
        let model = export.model;
        let albert = BertConfig {
            type_vocab_size: export.type_vocab_size,
            model_type: Some("albert".into()),
            embedding_size: Some(model.embedding_dim()),
            classifier_dropout: None,
            ..BertConfig::from_model_config(model, export.vocab_size)
        };
        let mut hf = super::finish_encoder_json(self, serde_json::to_value(&albert)?, export);
        hf["num_hidden_groups"] = json!(1);
        hf["inner_group_num"] = json!(1);
        hf["classifier_dropout_prob"] = json!(model.classifier_dropout());
        if export.ids.pad.is_none() {
            hf["pad_token_id"] = json!(0);
        }
        Ok(hf)
    }
}
