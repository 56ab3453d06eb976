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
