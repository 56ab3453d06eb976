//! Hugging Face BERT's names for taper's encoder and its heads. A BERT-family run keeps these
//! names in its store and checkpoints, so a `BertModel` / `BertFor*` file loads by name and
//! `taper export --format hf` writes the weights as they are.

use std::sync::LazyLock;

use super::NameTable;

/// taper's encoder (a bare `BertModel`): embeddings, blocks, and the pre-LN final norm (taper's
/// own; no post-LN checkpoint has it).
const ENCODER_RULES: [(&str, &str); 12] = [
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
];
const FINAL_NORM: (&str, &str) = ("ln_f", "encoder.final_layer_norm");

/// The heads of `BertForSequenceClassification` and `BertForMaskedLM` (the MLM decoder shares
/// the word embeddings and has only its bias).
const HEAD_RULES: [(&str, &str); 5] = [
    ("pooler", "bert.pooler.dense"),
    ("classifier", "classifier"),
    ("mlm.transform", "cls.predictions.transform.dense"),
    ("mlm.norm", "cls.predictions.transform.LayerNorm"),
    ("mlm.bias", "cls.predictions.bias"),
];

/// A bare encoder at the root (`tok_emb` <-> `embeddings.word_embeddings`).
pub static ENCODER: LazyLock<NameTable> =
    LazyLock::new(|| NameTable::new(ENCODER_RULES.iter().copied().chain([FINAL_NORM])));

/// A task model: the encoder under `encoder` <-> `bert`, and the heads.
pub static TASK_MODEL: LazyLock<NameTable> =
    LazyLock::new(|| NameTable::new(ENCODER.nested("encoder", "bert").into_iter().chain(HEAD_RULES.map(own))));

fn own((a, b): (&str, &str)) -> (String, String) {
    (a.to_string(), b.to_string())
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};

    use super::*;
    use crate::config::{Kernels, NormPlacement};
    use crate::model::bert::{BertConfig, BertEncoder, MaskedLm, Pooling, SequenceClassifier};
    use crate::model::ParamStore;

    fn config() -> BertConfig {
        let json = r#"{"vocab_size": 30, "hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2,
            "intermediate_size": 16, "hidden_act": "gelu", "max_position_embeddings": 16}"#;
        serde_json::from_str(json).unwrap()
    }

    /// Every parameter's stored name is Hugging Face's, and maps to a taper path and back.
    fn assert_round_trips(table: &NameTable, params: &ParamStore, must_hold: &[&str]) {
        let names: Vec<String> = params.named_vars().into_iter().map(|(n, _)| n).collect();
        for name in &names {
            let taper = table.taper_name(name).unwrap_or_else(|| panic!("no rule covers `{name}`"));
            assert_eq!(table.checkpoint_name(&taper).as_deref(), Some(name.as_str()), "{taper}");
        }
        for want in must_hold {
            assert!(names.iter().any(|n| n == want), "`{want}` missing from {names:?}");
        }
    }

    #[test]
    fn every_bert_parameter_has_its_hugging_face_name() {
        let (cfg, dev) = (config(), Device::Cpu);
        for norm in [NormPlacement::Post, NormPlacement::Pre] {
            let params = ParamStore::new();
            SequenceClassifier::new(&cfg, 3, Pooling::Cls, norm, Kernels::Fused, params.var_builder(0, &dev)).unwrap();
            let must = [
                "bert.embeddings.word_embeddings.weight",
                "bert.encoder.layer.1.attention.self.query.weight",
                "bert.encoder.layer.0.output.LayerNorm.bias",
                "bert.pooler.dense.weight",
                "classifier.bias",
            ];
            assert_round_trips(&TASK_MODEL, &params, &must);

            let params = ParamStore::new();
            MaskedLm::new(&cfg, norm, Kernels::Fused, params.var_builder(0, &dev)).unwrap();
            let must = [
                "cls.predictions.bias",
                "cls.predictions.transform.LayerNorm.weight",
                "bert.embeddings.token_type_embeddings.weight",
            ];
            assert_round_trips(&TASK_MODEL, &params, &must);

            let params = ParamStore::new();
            BertEncoder::bare(&cfg, norm, Kernels::Fused, DType::F32, params.var_builder(0, &dev)).unwrap();
            let must = ["embeddings.position_embeddings.weight", "encoder.layer.1.intermediate.dense.weight"];
            assert_round_trips(&ENCODER, &params, &must);
            let final_norm = params.get("encoder.final_layer_norm.weight").is_some();
            assert_eq!(final_norm, norm == NormPlacement::Pre, "the final norm exists pre-LN only");
        }
    }
}
