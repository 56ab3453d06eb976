//! Hugging Face BERT's name table covers every parameter of taper's BERT models, both ways.

mod common;

use candle_core::{DType, Device};

use taper::config::{Kernels, NormPlacement};
use taper::hf::bert::Bert;
use taper::hf::{Family, NameTable};
use taper::model::encoder::{Encoder, MaskedLm, Pooling, SequenceClassifier};
use taper::model::ParamStore;

const CONFIG: &str = r#"{"vocab_size": 30, "hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 16, "hidden_act": "gelu", "max_position_embeddings": 16}"#;

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
    let dev = Device::Cpu;
    for norm in [NormPlacement::Post, NormPlacement::Pre] {
        let (cfg, vocab) = common::bert_model(CONFIG, norm, Kernels::Fused);
        let (task_model, encoder) = (Bert.names(&cfg), Bert.names(&cfg).under("encoder", "bert"));
        let params = ParamStore::new();
        SequenceClassifier::new(&cfg, vocab, 3, Pooling::Cls, task_model.renamed(params.var_builder(0, &dev))).unwrap();
        let must = [
            "bert.embeddings.word_embeddings.weight",
            "bert.encoder.layer.1.attention.self.query.weight",
            "bert.encoder.layer.0.output.LayerNorm.bias",
            "bert.pooler.dense.weight",
            "classifier.bias",
        ];
        assert_round_trips(&task_model, &params, &must);

        let params = ParamStore::new();
        MaskedLm::new(&cfg, vocab, task_model.renamed(params.var_builder(0, &dev))).unwrap();
        let must = [
            "cls.predictions.bias",
            "cls.predictions.transform.LayerNorm.weight",
            "bert.embeddings.token_type_embeddings.weight",
        ];
        assert_round_trips(&task_model, &params, &must);

        let params = ParamStore::new();
        Encoder::new(&cfg, vocab, DType::F32, encoder.renamed(params.var_builder(0, &dev))).unwrap();
        let must = ["embeddings.position_embeddings.weight", "encoder.layer.1.intermediate.dense.weight"];
        assert_round_trips(&encoder, &params, &must);
        let final_norm = params.get("encoder.final_layer_norm.weight").is_some();
        assert_eq!(final_norm, norm == NormPlacement::Pre, "the final norm exists pre-LN only");
    }
}
