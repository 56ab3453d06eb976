//! Fine-tuning the real pretrained all-MiniLM-L6-v2 (scripts/fetch-minilm.sh) on a small
//! labelled set, end to end: train -> eval -> predict -> export, and the export loads back
//! through candle-transformers' BertModel with the same hidden states.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use taper::config::Config;
use taper::model::Mode;
use taper::train::{train, TrainOptions};
use taper::trained::TrainedClassifier;

fn minilm() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/models/all-MiniLM-L6-v2");
    assert!(dir.join("model.safetensors").is_file(), "run scripts/fetch-minilm.sh (scripts/test.sh does)");
    dir
}

const GOOD: [&str; 8] = ["good", "great", "happy", "lovely", "wonderful", "excellent", "delightful", "superb"];
const BAD: [&str; 8] = ["bad", "awful", "sad", "dreadful", "terrible", "horrible", "miserable", "poor"];
const THINGS: [&str; 6] = ["film", "meal", "day", "book", "song", "trip"];

/// "the <thing> was <adjective>" rows, positive or negative by the adjective; each thing
/// appears with both labels.
fn write_csv(path: &Path, rows: impl Iterator<Item = usize>) {
    let mut text = String::from("text,label\n");
    for i in rows {
        let (words, label) = if i % 2 == 0 { (&GOOD, "pos") } else { (&BAD, "neg") };
        text.push_str(&format!("\"the {} was {}, truly\",{label}\n", THINGS[(i / 2) % 6], words[(i / 2) % 8]));
    }
    std::fs::write(path, text).unwrap();
}

fn config(dir: &Path) -> Config {
    write_csv(&dir.join("train.csv"), 0..48);
    write_csv(&dir.join("val.csv"), 100..116);
    let text = format!(
        r#"
[model]
arch = "encoder-only"
init_from = "{model}"

[task]
kind = "sequence-classification"
max_len = 16

[data]
path = "{dir}/train.csv"
val_path = "{dir}/val.csv"

[optim]
lr = 2e-4

[train]
steps = 30
batch_size = 8
log_every = 1
eval_every = 10
device = "cpu"

[checkpoint]
dir = "{dir}/run"
every = 0
best_metric = "accuracy"
"#,
        model = minilm().display(),
        dir = dir.display()
    );
    Config::from_toml_str(&text, &[]).unwrap()
}

#[test]
fn fine_tune_eval_predict_and_export_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let summary = train(cfg, &TrainOptions { quiet: true, ..Default::default() }).unwrap();
    let run = dir.path().join("run");
    let resolved = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(resolved.contains("n_layer = 6") && resolved.contains("d_model = 384"), "shape filled in:\n{resolved}");

    // eval: the best checkpoint separates the classes.
    let classifier = TrainedClassifier::load(&run, "best", "cpu").unwrap();
    let metrics = classifier.evaluate(&dir.path().join("val.csv")).unwrap();
    eprintln!("after {} steps: {metrics:?}", summary.steps);
    assert!(metrics["accuracy"] >= 0.9, "{metrics:?}");
    assert_eq!(classifier.labels.names, vec!["neg", "pos"]);

    // predict: one record per input, probabilities sum to 1, label = the most probable.
    let input = dir.path().join("input.jsonl");
    std::fs::write(&input, "{\"text\": \"the meal was wonderful, truly\"}\n{\"text\": \"the trip was dreadful\"}\n")
        .unwrap();
    let records = classifier.predict(&input).unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0]["label"], "pos");
    assert_eq!(records[1]["label"], "neg");
    for r in &records {
        let p = r["probabilities"].as_object().unwrap();
        let total: f64 = p.values().map(|v| v.as_f64().unwrap()).sum();
        assert!((total - 1.0).abs() < 1e-6, "{r}");
    }
    // An input labelled with a label the model never saw is refused with its file and line.
    std::fs::write(&input, "{\"text\": \"fine\", \"label\": \"pos\"}\n{\"text\": \"meh\", \"label\": \"neutral\"}\n")
        .unwrap();
    let err = format!("{:#}", classifier.predict(&input).unwrap_err());
    assert!(err.contains("input.jsonl:2") && err.contains("neutral") && err.contains("neg, pos"), "{err}");

    // export: Hugging Face layout, loadable by candle-transformers with the same hidden states.
    let out = dir.path().join("exported");
    taper::export::export_hf(&run, "best", &out, false).unwrap();
    let hf: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(hf["architectures"][0], "BertForSequenceClassification");
    assert_eq!(hf["id2label"]["1"], "pos");
    assert_eq!(hf["label2id"]["neg"], 0);
    let config: candle_transformers::models::bert::Config = serde_json::from_value(hf).unwrap();
    // SAFETY: the file is not modified while mapped.
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(&[out.join("model.safetensors")], DType::F32, &Device::Cpu).unwrap()
    };
    let reference = candle_transformers::models::bert::BertModel::load(vb, &config).unwrap();
    let tokenizer = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    let a = tokenizer.encode("the day was superb, truly", true).unwrap().get_ids().to_vec();
    let b = tokenizer.encode("awful", true).unwrap().get_ids().to_vec();
    let t = a.len();
    let padded: Vec<u32> =
        a.iter().copied().chain(b.iter().copied()).chain(std::iter::repeat_n(0, t - b.len())).collect();
    let mask: Vec<u32> = (0..2 * t).map(|i| (i < t || i - t < b.len()) as u32).collect();
    let ids = Tensor::from_vec(padded, (2, t), &Device::Cpu).unwrap();
    let mask = Tensor::from_vec(mask, (2, t), &Device::Cpu).unwrap();
    let types = ids.zeros_like().unwrap();
    let want = reference.forward(&ids, &types, Some(&mask)).unwrap();
    let got = classifier.model.encoder.forward(&ids, Some(&types), Some(&mask), &mut Mode::eval()).unwrap();
    for (row, len) in [(0, t), (1, b.len())] {
        let diff = (got.get(row).unwrap().narrow(0, 0, len).unwrap()
            - want.get(row).unwrap().narrow(0, 0, len).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
        assert!(diff <= 1e-4, "row {row}: export differs from the run by {diff}");
    }
}

#[test]
fn bad_labelled_data_and_base_directories_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let quiet = TrainOptions { quiet: true, ..Default::default() };
    // A row without a label.
    std::fs::write(dir.path().join("train.csv"), "text,label\nfine,pos\nno label here,\n").unwrap();
    let err = format!("{:#}", train(cfg.clone(), &quiet).unwrap_err());
    assert!(err.contains("train.csv:3") && err.contains("label"), "{err}");
    // An empty file.
    std::fs::write(dir.path().join("train.csv"), "").unwrap();
    let err = format!("{:#}", train(cfg.clone(), &quiet).unwrap_err());
    assert!(err.contains("train.csv") && err.contains("empty"), "{err}");
    // A val label the training data never had.
    write_csv(&dir.path().join("train.csv"), 0..8);
    std::fs::write(dir.path().join("val.csv"), "text,label\nfine,pos\nodd,neutral\n").unwrap();
    let err = format!("{:#}", train(cfg.clone(), &quiet).unwrap_err());
    assert!(err.contains("val.csv:3") && err.contains("neutral"), "{err}");
    // A base directory without config.json.
    let mut bad = cfg.clone();
    bad.model.init_from = Some(dir.path().display().to_string());
    let err = format!("{:#}", train(bad, &quiet).unwrap_err());
    assert!(err.contains("config.json"), "{err}");
    // A shape key that disagrees with the checkpoint.
    let mut bad = cfg;
    bad.model.d_model = 128;
    let err = format!("{:#}", train(bad, &quiet).unwrap_err());
    assert!(err.contains("model.d_model") && err.contains("384"), "{err}");
}
