#![allow(dead_code)]
//! Helpers shared by the integration tests: a small corpus and a tiny model config in a temp dir.

use std::path::{Path, PathBuf};

use taper::config::Config;

/// A learnable corpus: short sentences built by a fixed rule, so a tiny model can get its loss
/// well below the uniform baseline in a few hundred steps.
pub fn pattern_corpus(lines: usize) -> String {
    let names = ["anna", "bert", "cleo", "dirk", "emma", "fred"];
    let verbs = ["sees", "hears", "helps", "calls"];
    let mut text = String::new();
    for i in 0..lines {
        let a = names[i % names.len()];
        let b = names[(i * 7 + 3) % names.len()];
        let v = verbs[(i / 3) % verbs.len()];
        text.push_str(&format!("{a} {v} {b}.\n"));
    }
    text
}

pub fn write_corpus(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("corpus.txt");
    std::fs::write(&path, text).unwrap();
    path
}

/// A tiny GPT (2 layers, 32 wide, context 16) on `corpus`, writing its run to `dir/run`.
pub fn tiny_config(dir: &Path, corpus: &Path, extra: &str) -> Config {
    let text = format!(
        r#"
[model]
n_layer = 2
n_head = 2
d_model = 32
block_size = 16

[data]
path = "{corpus}"
val_fraction = 0.1

[optim]
lr = 3e-3
weight_decay = 0.1
grad_clip = 1.0

[schedule]
warmup_steps = 5
min_lr = 3e-4

[train]
steps = 60
batch_size = 8
log_every = 1
eval_every = 0
eval_batches = 4
device = "cpu"

[checkpoint]
dir = "{run}"
every = 0
keep_last = 2
"#,
        corpus = corpus.display(),
        run = dir.join("run").display()
    );
    Config::from_toml_str(&text, &overrides(extra)).unwrap()
}

/// "a.b=1 c.d=x" -> ["a.b=1", "c.d=x"]
pub fn overrides(extra: &str) -> Vec<String> {
    extra.split_whitespace().map(String::from).collect()
}

/// An encoder's `[model]` (built `norm`, with `kernels`) and embedding rows from a BERT
/// config.json's text, as `model.init_from` reads one.
pub fn bert_model(
    json: &str,
    norm: taper::config::NormPlacement,
    kernels: taper::config::Kernels,
) -> (taper::config::ModelConfig, taper::model::encoder::EncoderVocab) {
    use taper::hf::Family;
    let value: serde_json::Value = serde_json::from_str(json).unwrap();
    let checkpoint = taper::hf::bert::Bert.read_config(&value).unwrap();
    let arch = taper::config::Architecture::EncoderOnly;
    let model = taper::config::ModelConfig { arch, norm, kernels, ..taper::config::ModelConfig::defaults() };
    (checkpoint.adopted(model, Path::new("config.json")).unwrap(), checkpoint.encoder_vocab())
}

/// `vb` (a store's root) through BERT's names, as an encoder run's task model sees it.
pub fn bert_names<'a>(model: &taper::config::ModelConfig, vb: candle_nn::VarBuilder<'a>) -> candle_nn::VarBuilder<'a> {
    use taper::hf::Family;
    taper::hf::bert::Bert.names(model).renamed(vb)
}
