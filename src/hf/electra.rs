//! Hugging Face ELECTRA (`ElectraModel`, `Electra{ForSequenceClassification,
//! ForTokenClassification, ForMaskedLM}`; a discriminator's `ElectraForPreTraining` file loads,
//! its replaced-token head set aside): BERT's encoder with embeddings `embedding_size` wide
//! projected to the hidden size (`embeddings_project`, taper's `model.embedding_size`), no
//! pooler, a classification head of dropout, dense, GELU, dropout, out_proj on [CLS], and the
//! generator's MLM head (dense to `embedding_size`, GELU, LayerNorm, the tied decoder with its
//! bias). Runs keep these names, as BERT's do.

use anyhow::{bail, Result};
use serde_json::{json, Value};

use super::bert::{BertConfig, ENCODER};
use super::{Checkpoint, Export, Family, Head, NameTable, Tokens};
use crate::config::{Architecture, ModelConfig};
use crate::model::encoder::{HeadStyle, PoolerActivation};

/// The heads by the checkpoint's names: `ElectraClassificationHead` (taper's pooler and
/// classifier), the token classifier (taper's tagger), the generator's MLM head.
const HEADS: [(&str, &str); 6] = [
    ("pooler", "classifier.dense"),
    ("classifier", "classifier.out_proj"),
    ("tagger", "classifier"),
    ("mlm.transform", "generator_predictions.dense"),
    ("mlm.norm", "generator_predictions.LayerNorm"),
    ("mlm.bias", "generator_lm_head.bias"),
];

/// ELECTRA's adapter.
pub struct Electra;

impl Family for Electra {
    fn model_type(&self) -> &'static str {
        "electra"
    }

    fn arch(&self) -> Architecture {
        Architecture::EncoderOnly
    }

    fn class(&self, head: Head) -> Option<&'static str> {
        super::encoder_class(
            head,
            ["ElectraForSequenceClassification", "ElectraForTokenClassification", "ElectraForMaskedLM"],
        )
    }

    fn encoder_prefix(&self) -> Option<&'static str> {
        Some("electra")
    }

    fn read_config(&self, config: &Value) -> Result<Checkpoint> {
        let cfg = BertConfig::parse(config, "ELECTRA")?;
        if cfg.hidden_act != "gelu" {
            bail!("hidden_act `{}`: ELECTRA's MLM head is GELU whatever hidden_act says; taper's follows hidden_act, so only `gelu` loads", cfg.hidden_act);
        }
        Ok(cfg.checkpoint(cfg.model_config()?))
    }

    fn mismatches(&self, model: &ModelConfig) -> Vec<String> {
        super::post_ln_learned_mismatches(model, "ELECTRA")
    }

    fn names(&self, _model: &ModelConfig) -> NameTable {
        let encoder = NameTable::new(ENCODER.into_iter().chain([("emb_proj", "embeddings_project")]));
        NameTable::new(encoder.nested("encoder", "electra").into_iter().chain(HEADS.map(|(t, c)| (t.into(), c.into()))))
    }

    fn head_style(&self) -> HeadStyle {
        HeadStyle { pooler_input_dropout: true, pooler_activation: PoolerActivation::Gelu, ..HeadStyle::BERT }
    }

    /// The position-id buffer, a discriminator's replaced-token head, the tied decoder's copy of
    /// the word embeddings.
    fn ignorable(&self, name: &str) -> bool {
        name.ends_with("position_ids")
            || name.starts_with("discriminator_predictions.")
            || name == "generator_lm_head.weight"
    }

    fn keeps_names(&self) -> bool {
        true
    }

    fn tokens(&self) -> Tokens {
        Tokens { bos: &[], eos: &[], pad: &["[PAD]"], cls: &["[CLS]"], sep: &["[SEP]"], mask: &["[MASK]"] }
    }

    fn config_json(&self, export: &Export) -> Result<Value> {
        let model = export.model;
        let electra = BertConfig {
            type_vocab_size: export.type_vocab_size,
            model_type: Some("electra".into()),
            embedding_size: Some(model.embedding_dim()),
            ..BertConfig::from_model_config(model, export.vocab_size)
        };
        let mut hf = super::finish_encoder_json(self, serde_json::to_value(&electra)?, export);
        if export.ids.pad.is_none() {
            hf["pad_token_id"] = json!(0);
        }
        Ok(hf)
    }
}
