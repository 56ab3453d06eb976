//! Encoder runs end to end through `taper::train`: masked-lm from scratch (the loss falls,
//! masked tokens get predicted), resume of an encoder run, and config errors of encoder runs.

mod common;

use std::path::Path;

use taper::config::Config;
use taper::train::{train, TrainOptions};

fn mlm_config(dir: &Path, corpus: &Path, extra: &str) -> Config {
    let text = format!(
        r#"
[model]
arch = "encoder-only"
n_layer = 2
n_head = 2
d_model = 32
block_size = 18
norm = "post"

[task]
kind = "masked-lm"

[tokenizer]
kind = "wordpiece"
vocab_size = 60

[data]
path = "{corpus}"

[optim]
lr = 3e-3

[schedule]
warmup_steps = 10

[train]
steps = 150
batch_size = 16
log_every = 10
eval_every = 150
eval_batches = 4
device = "cpu"

[checkpoint]
dir = "{run}"
every = 0
"#,
        corpus = corpus.display(),
        run = dir.join("run").display()
    );
    Config::from_toml_str(&text, &common::overrides(extra)).unwrap()
}

fn quiet() -> TrainOptions {
    TrainOptions { quiet: true, ..Default::default() }
}

fn last_eval(run: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .rev()
        .find(|v| v.get("val_loss").is_some())
        .unwrap()
}

/// Lines of one name repeated eight times, names drawn at random: a masked name is given away
/// by its neighbours, which the encoder must learn to attend to by position.
fn repeated_names(lines: usize) -> String {
    let names = ["anna", "bert", "cleo", "dirk", "emma", "fred"];
    let mut rng = taper::rng::Rng::new(3);
    (0..lines).map(|_| format!("{}\n", [names[rng.below(6)]; 8].join(" "))).collect()
}

#[test]
fn masked_lm_loss_falls_and_masked_tokens_are_predicted() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path(), &repeated_names(3000));
    let summary =
        train(mlm_config(dir.path(), &corpus, "train.steps=250 train.eval_every=250 train.log_every=1"), &quiet())
            .unwrap();
    let (first, last) = (summary.losses[0].1, summary.losses.last().unwrap().1);
    let eval = last_eval(&dir.path().join("run"));
    let (val_loss, accuracy) = (eval["val_loss"].as_f64().unwrap(), eval["masked_accuracy"].as_f64().unwrap());
    eprintln!("masked-lm: train loss {first:.3} -> {last:.3}; val {eval}");
    // Uniform over the 60-token vocabulary is ln 60 = 4.09; guessing names by frequency alone
    // is ln 6 = 1.79 and 1/6 accuracy. Below those, the model reads the context. (Hugging Face's
    // BertForMaskedLM of the same shape, data and schedule: 1.34 and 0.54 at step 250.)
    assert!(first > 3.5, "initial loss {first}");
    assert!(val_loss < 1.5, "val loss {val_loss}");
    assert!(accuracy > 0.4, "masked-token accuracy {accuracy}");
    let run = dir.path().join("run");
    for file in ["bert_config.json", "tokenizer.json", "config.toml"] {
        assert!(run.join(file).is_file(), "{file} missing from the run");
    }
}

#[test]
fn a_resumed_encoder_run_equals_the_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path(), &common::pattern_corpus(2000));
    let extra = "train.steps=30 train.log_every=1 checkpoint.every=10 model.dropout=0.1";
    let whole = train(mlm_config(&dir.path().join("a"), &corpus, extra), &quiet()).unwrap();
    // The same tokenizer for both runs: the `tokenizers` WordPiece trainer breaks frequency ties
    // in hash-map order, so two trainings can number the vocabulary differently.
    let tokenizer = dir.path().join("a/run/tokenizer.json");
    let mut cfg = mlm_config(&dir.path().join("b"), &corpus, extra);
    cfg.tokenizer = taper::config::TokenizerConfig {
        kind: taper::config::TokenizerKind::File,
        path: Some(tokenizer),
        ..Default::default()
    };
    train(cfg.clone(), &TrainOptions { quiet: true, stop_after: Some(15), ..Default::default() }).unwrap();
    let resumed = train(cfg, &TrainOptions { quiet: true, resume: true, ..Default::default() }).unwrap();
    for (step, loss) in &resumed.losses {
        let want = whole.losses.iter().find(|(s, _)| s == step).unwrap().1;
        assert!((loss - want).abs() < 1e-5, "step {step}: resumed {loss} vs uninterrupted {want}");
    }
    assert_eq!(resumed.losses.first().unwrap().0, 11, "resumed from the step-10 checkpoint");
}

#[test]
fn encoder_config_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path(), &common::pattern_corpus(100));
    let base = mlm_config(dir.path(), &corpus, "");
    let text = toml::to_string(&base).unwrap();
    let cases = [
        ("model.arch=decoder-only", "task.kind"),
        ("checkpoint.best_metric=accuracy", "masked_accuracy"),
        ("model.emb_dropout=0.3", "model.emb_dropout"),
        ("task.mask_prob=1.5", "task.mask_prob"),
        ("data.val_path=x.csv", "corpus file x.csv does not exist (set `data.val_path`)"),
    ];
    for (set, expected) in cases {
        // A config error, or else the error of the run it would start.
        let err = match Config::from_toml_str(&text, &[set.to_string()]) {
            Err(err) => format!("{err:#}"),
            Ok(cfg) => format!("{:#}", train(cfg, &quiet()).unwrap_err()),
        };
        assert!(err.contains(expected), "--set {set}: {err}");
    }
    let err = format!(
        "{:#}",
        Config::from_toml_str(&text, &["task.kind=sequence-classification".into()])
            .map(|c| train(c, &quiet()))
            .unwrap()
            .unwrap_err()
    );
    assert!(err.contains("model.init_from"), "{err}");
}

#[test]
fn the_bert_base_preset_has_bert_base_parameters() {
    // Hugging Face's BertForMaskedLM(BertConfig()) has 109,514,298 parameters.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/bert-base.toml");
    let cfg = Config::load(&path, &[]).unwrap();
    let vocab = taper::model::encoder::EncoderVocab { tokens: 30522, token_types: 2 };
    let params = taper::model::ParamStore::new();
    let vb = params.var_builder(0, &candle_core::Device::Cpu);
    taper::model::encoder::MaskedLm::new(&cfg.model, vocab, vb).unwrap();
    assert_eq!(params.num_elements(), 109_514_298);
}

/// Writes a labelled CSV whose label is whether the line names "anna".
fn write_labelled(path: &Path, lines: usize) {
    let corpus = common::pattern_corpus(lines);
    let mut text = String::from("text,label\n");
    for line in corpus.lines() {
        text.push_str(&format!("{line},{}\n", if line.contains("anna") { "yes" } else { "no" }));
    }
    std::fs::write(path, text).unwrap();
}

#[test]
fn an_exported_mlm_run_fine_tunes_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path(), &repeated_names(500));
    train(mlm_config(dir.path(), &corpus, "train.steps=20 train.eval_every=20"), &quiet()).unwrap();
    let export = dir.path().join("export");
    taper::export::export_hf(&dir.path().join("run"), "best", &export, false).unwrap();
    write_labelled(&dir.path().join("train.csv"), 200);
    let text = format!(
        r#"
[model]
arch = "encoder-only"
init_from = "{export}"
dropout = 0.1
[task]
kind = "sequence-classification"
[data]
path = "{dir}/train.csv"
val_fraction = 0.2
[optim]
lr = 1e-3
[train]
steps = 24
batch_size = 8
log_every = 1
eval_every = 8
device = "cpu"
[checkpoint]
every = 8
keep_last = 5
best_metric = "macro_f1"
"#,
        export = export.display(),
        dir = dir.path().display()
    );
    let config = |run: &str| {
        let mut cfg = Config::from_toml_str(&text, &[]).unwrap();
        cfg.checkpoint.dir = Some(dir.path().join(run));
        cfg
    };
    let whole = train(config("a"), &quiet()).unwrap();
    train(config("b"), &TrainOptions { quiet: true, stop_after: Some(12), ..Default::default() }).unwrap();
    let resumed = train(config("b"), &TrainOptions { quiet: true, resume: true, ..Default::default() }).unwrap();
    assert_eq!(resumed.losses.first().unwrap().0, 9, "resumed from the step-8 checkpoint");
    for (step, loss) in &resumed.losses {
        let want = whole.losses.iter().find(|(s, _)| s == step).unwrap().1;
        assert!((loss - want).abs() < 1e-5, "step {step}: resumed {loss} vs uninterrupted {want}");
    }
    let resolved = std::fs::read_to_string(dir.path().join("b/config.toml")).unwrap();
    assert!(resolved.contains("n_layer = 2") && resolved.contains("d_model = 32"), "after resume:\n{resolved}");
    let labels = std::fs::read_to_string(dir.path().join("a/labels.json")).unwrap();
    assert!(labels.contains("\"no\"") && labels.contains("\"yes\""), "{labels}");
}
