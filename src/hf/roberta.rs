//! Hugging Face RoBERTa and XLM-RoBERTa (`RobertaModel`, `Roberta{ForSequenceClassification,
//! ForTokenClassification, ForMaskedLM}` and the `XLMRoberta...` classes, the same modules):
//! BERT's encoder with its position table starting at `pad_token_id + 1` (taper's
//! `model.position_offset`; right-padded inputs get RoBERTa's position ids), one token type,
//! `<s> A </s></s> B </s>` inputs (the tokenizer's post-processor), a classification head of
//! dropout, dense, tanh, dropout, out_proj on `<s>`, and an MLM head of dense, GELU, LayerNorm
//! and the tied decoder with its bias. Runs keep these names, as BERT's do.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::bert::{BertConfig, ENCODER};
use super::{show, Checkpoint, Export, Family, Head, NameTable, Tokens};
use crate::config::{Architecture, ModelConfig, NormPlacement, Positions};
use crate::model::encoder::HeadStyle;

/// The heads, by the checkpoint's names: `RobertaClassificationHead`'s dense (taper's pooler)
/// and out_proj, the token classifier (taper's tagger), `RobertaLMHead` (its decoder is the
/// word embeddings, its decoder bias the head's bias).
const HEADS: [(&str, &str); 6] = [
    ("pooler", "classifier.dense"),
    ("classifier", "classifier.out_proj"),
    ("tagger", "classifier"),
    ("mlm.transform", "lm_head.dense"),
    ("mlm.norm", "lm_head.layer_norm"),
    ("mlm.bias", "lm_head.bias"),
];

/// A RoBERTa-architecture family: its `model_type` and its classes' prefix.
pub struct Roberta {
    model_type: &'static str,
    classes: [&'static str; 3],
}

pub static ROBERTA: Roberta = Roberta {
    model_type: "roberta",
    classes: ["RobertaForSequenceClassification", "RobertaForTokenClassification", "RobertaForMaskedLM"],
};

pub static XLM_ROBERTA: Roberta = Roberta {
    model_type: "xlm-roberta",
    classes: ["XLMRobertaForSequenceClassification", "XLMRobertaForTokenClassification", "XLMRobertaForMaskedLM"],
};

/// config.json's `pad_token_id` (RoBERTa's default 1): the position table's first row read is
/// the one after it.
fn pad_id(config: &Value) -> Result<usize> {
    match config.get("pad_token_id") {
        None | Some(Value::Null) => Ok(1),
        Some(v) => v.as_u64().map(|n| n as usize).with_context(|| format!("`pad_token_id` must be an id, got {v}")),
    }
}

impl Family for Roberta {
    fn model_type(&self) -> &'static str {
        self.model_type
    }

    fn arch(&self) -> Architecture {
        Architecture::EncoderOnly
    }

    fn class(&self, head: Head) -> Option<&'static str> {
        super::encoder_class(head, self.classes)
    }

    fn encoder_prefix(&self) -> Option<&'static str> {
        Some("roberta")
    }

    fn read_config(&self, config: &Value) -> Result<Checkpoint> {
        let cfg = BertConfig::parse(config, "RoBERTa")?;
        if config.get("is_decoder").and_then(Value::as_bool) == Some(true) {
            bail!("`is_decoder` = true (a causal RoBERTa) is not an encoder taper builds");
        }
        let offset = pad_id(config)? + 1;
        if cfg.max_position_embeddings <= offset {
            bail!(
                "max_position_embeddings ({}) leaves no position after pad_token_id + 1",
                cfg.max_position_embeddings
            );
        }
        let positions = cfg.max_position_embeddings - offset;
        let model = ModelConfig { block_size: positions, position_offset: offset, ..cfg.model_config()? };
        Ok(cfg.checkpoint(model))
    }

    fn mismatches(&self, model: &ModelConfig) -> Vec<String> {
        let mut out = Vec::new();
        if model.norm != NormPlacement::Post {
            out.push(format!("`model.norm = {}` (RoBERTa is post-LN)", show(&model.norm)));
        }
        if model.positions != Positions::Learned || model.position_offset == 0 {
            out.push(format!(
                "`model.positions = {}` with `model.position_offset = {}` (RoBERTa's learned positions start at \
                 pad_token_id + 1)",
                show(&model.positions),
                model.position_offset
            ));
        }
        if let Some(e) = model.embedding_size {
            out.push(format!("`model.embedding_size = {e}` (RoBERTa's embeddings are d_model wide)"));
        }
        out
    }

    fn names(&self, _model: &ModelConfig) -> NameTable {
        let encoder = NameTable::new(ENCODER);
        NameTable::new(encoder.nested("encoder", "roberta").into_iter().chain(HEADS.map(|(t, c)| (t.into(), c.into()))))
    }

    fn head_style(&self) -> HeadStyle {
        HeadStyle { pooler_input_dropout: true, ..HeadStyle::BERT }
    }

    /// The position-id buffers, a bare model's pooler (no task model has it), and the tied MLM
    /// decoder's copies of the word embeddings and of the head's bias.
    fn ignorable(&self, name: &str) -> bool {
        name.ends_with("position_ids")
            || name.ends_with("token_type_ids")
            || name.starts_with("pooler.")
            || name.starts_with("roberta.pooler.")
            || name.starts_with("lm_head.decoder.")
    }

    fn keeps_names(&self) -> bool {
        true
    }

    fn tokens(&self) -> Tokens {
        Tokens { bos: &["<s>"], eos: &["</s>"], pad: &["<pad>"], cls: &["<s>"], sep: &["</s>"], mask: &["<mask>"] }
    }

    fn config_json(&self, export: &Export) -> Result<Value> {
        let model = export.model;
        let pad = model.position_offset.checked_sub(1).context("a RoBERTa's positions start after its pad id")?;
        let roberta = BertConfig {
            type_vocab_size: export.type_vocab_size,
            max_position_embeddings: model.block_size + model.position_offset,
            model_type: Some(self.model_type.into()),
            ..BertConfig::from_model_config(model, export.vocab_size)
        };
        let mut hf = super::finish_encoder_json(self, serde_json::to_value(&roberta)?, export);
        hf["pad_token_id"] = json!(pad);
        Ok(hf)
    }
}
