//! Token classification: tagged files (CoNLL and JSONL) read the same, bad input names its
//! line, each word's tag sits on its first sub-word, and a MiniLM fine-tune (the real
//! all-MiniLM-L6-v2, scripts/fetch-minilm.sh) learns to tag names, scored the same by
//! training, `eval` and seqeval's rules; predict tags each word; resume is exact; the export
//! is a BertForTokenClassification with the tags.

use std::path::{Path, PathBuf};

use taper::config::Config;
use taper::data::tagged::{encode_words, read_tagged, TagColumns};
use taper::data::TextTokenizer;
use taper::entity_metrics::Scheme;
use taper::train::{train, TrainOptions};
use taper::trained::{TrainedRun, TrainedTagger};

fn minilm() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/models/all-MiniLM-L6-v2");
    assert!(dir.join("model.safetensors").is_file(), "run scripts/fetch-minilm.sh (scripts/test.sh does)");
    dir
}

fn columns() -> TagColumns {
    TagColumns { tokens: "tokens".into(), tags: "tags".into() }
}

#[test]
fn conll_and_jsonl_give_the_same_sentences() {
    let dir = tempfile::tempdir().unwrap();
    let conll = dir.path().join("a.conll");
    std::fs::write(
        &conll,
        "-DOCSTART- -X- O O\n\nBrutus NNP B-NP B-PER\nspoke VBD B-VP O\n\n\nin IN O O\nRome NNP B-NP B-LOC\n",
    )
    .unwrap();
    let jsonl = dir.path().join("a.jsonl");
    std::fs::write(
        &jsonl,
        "{\"tokens\": [\"Brutus\", \"spoke\"], \"tags\": [\"B-PER\", \"O\"]}\n\n{\"tokens\": [\"in\", \"Rome\"], \"tags\": [\"O\", \"B-LOC\"]}\n",
    )
    .unwrap();
    let a = read_tagged(&conll, &columns(), Scheme::Iob2, true).unwrap();
    let b = read_tagged(&jsonl, &columns(), Scheme::Iob2, true).unwrap();
    let strip = |s: &[taper::data::tagged::TaggedSentence]| -> Vec<_> {
        s.iter().map(|s| (s.words.clone(), s.tags.clone())).collect()
    };
    assert_eq!(strip(&a), strip(&b));
    assert_eq!(a.len(), 2);
    assert_eq!((a[0].line, a[1].line), (3, 7), "each sentence's first line");
    // Inputs to tag: words alone.
    std::fs::write(&conll, "Brutus\nspoke\n").unwrap();
    let untagged = read_tagged(&conll, &columns(), Scheme::Iob2, false).unwrap();
    assert_eq!((untagged[0].words.len(), untagged[0].tags.clone()), (2, None));
}

#[test]
fn bad_tagged_input_names_the_line_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &str, &str); 6] = [
        ("a.conll", "Brutus B-PER\nspoke\n", "a.conll:2: `spoke` has no tag"),
        ("b.conll", "Brutus B-PER\n\nspoke S-PER\n", "b.conll:3"),
        ("c.jsonl", "{\"tokens\": [\"a\", \"b\"], \"tags\": [\"O\"]}\n", "c.jsonl:1: 2 words but 1 tags"),
        ("d.jsonl", "{\"tokens\": [\"a\"], \"tags\": [3]}\n", "not their ids"),
        ("e.jsonl", "{\"words\": [\"a\"], \"tags\": [\"O\"]}\n", "e.jsonl:1: no words (key `tokens`)"),
        ("f.csv", "text,label\n", "unknown tagged-data format `.csv`"),
    ];
    for (name, text, expected) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let err = format!("{:#}", read_tagged(&path, &columns(), Scheme::Iob2, true).unwrap_err());
        assert!(err.contains(expected), "{name}: {err}");
    }
    let err = format!("{:#}", read_tagged(&dir.path().join("b.conll"), &columns(), Scheme::Iob2, true).unwrap_err());
    assert!(err.contains("`S-PER`") && err.contains("task.scheme"), "{err}");
    assert!(read_tagged(&dir.path().join("b.conll"), &columns(), Scheme::Iobes, true).is_ok());
}

#[test]
fn each_word_is_scored_at_its_first_sub_word_and_words_past_max_len_are_not() {
    let tokenizer = TextTokenizer::load(&minilm().join("tokenizer.json")).unwrap();
    let words = ["Menenius", "Agrippa", "spoke", "unbelievably", "well"];
    let sentence = taper::data::tagged::TaggedSentence {
        words: words.iter().map(|w| w.to_string()).collect(),
        tags: None,
        line: 1,
    };
    let source = Path::new("test");
    let full = &encode_words(&tokenizer, std::slice::from_ref(&sentence), 64, source).unwrap()[0];
    let first: Vec<usize> = full.first_token.iter().map(|t| t.unwrap()).collect();
    assert!(full.encoded.ids.len() > words.len() + 2, "some words are several sub-words: {:?}", full.encoded.ids);
    assert_eq!(first[0], 1, "after [CLS]");
    assert!(first.windows(2).all(|w| w[0] < w[1]), "{first:?}");
    for (word, &t) in words.iter().zip(&first) {
        let piece = tokenizer.inner().id_to_token(full.encoded.ids[t]).unwrap();
        assert!(word.to_lowercase().starts_with(&piece), "{word}: its first sub-word is {piece}");
    }
    // Cut to 5 tokens: [CLS], three sub-words, [SEP]; the words that start later are unscored.
    let cut = &encode_words(&tokenizer, &[sentence], 5, source).unwrap()[0];
    assert_eq!(cut.encoded.ids.len(), 5);
    let scored: Vec<usize> = cut.scored_words().map(|(w, _)| w).collect();
    assert_eq!(scored, (0..scored.len()).collect::<Vec<_>>(), "a prefix of the words");
    assert!(scored.len() < words.len() && cut.first_token[words.len() - 1].is_none());
}

const PEOPLE: [&str; 8] = ["Brutus", "Cassius", "Portia", "Antony", "Juliet", "Romeo", "Iago", "Lear"];
const PLACES: [&str; 6] = ["Rome", "Egypt", "Verona", "Athens", "Venice", "Mantua"];
const VERBS: [&str; 4] = ["went", "rode", "sailed", "walked"];

/// "<person> went to <place> with <person> <surname>" sentences in CoNLL form.
fn write_conll(path: &Path, rows: impl Iterator<Item = usize>) {
    let mut text = String::new();
    for i in rows {
        let words =
            [PEOPLE[i % 8], VERBS[i % 4], "to", PLACES[(i / 3) % 6], "with", PEOPLE[(i / 2 + 3) % 8], "Agrippa", "."];
        let tags = ["B-PER", "O", "O", "B-LOC", "O", "B-PER", "I-PER", "O"];
        for (w, t) in words.iter().zip(tags) {
            text.push_str(&format!("{w} {t}\n"));
        }
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

fn config(dir: &Path, steps: usize) -> Config {
    write_conll(&dir.join("train.conll"), 0..48);
    write_conll(&dir.join("val.conll"), 100..116);
    let text = format!(
        r#"
[model]
arch = "encoder-only"
init_from = "{model}"

[task]
kind = "token-classification"
max_len = 32

[data]
path = "{dir}/train.conll"
val_path = "{dir}/val.conll"

[optim]
lr = 2e-4

[train]
steps = {steps}
batch_size = 8
log_every = 1
eval_every = 10
device = "cpu"

[checkpoint]
dir = "{dir}/run"
every = 10
best_metric = "f1"
"#,
        model = minilm().display(),
        dir = dir.display()
    );
    Config::from_toml_str(&text, &[]).unwrap()
}

fn last_eval(run: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines()
        .rev()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r.get("f1").is_some())
        .unwrap()
}

#[test]
fn a_fine_tuned_tagger_learns_and_eval_predict_and_export_agree() {
    let dir = tempfile::tempdir().unwrap();
    let summary = train(config(dir.path(), 30), &TrainOptions { quiet: true, ..Default::default() }).unwrap();
    let run = dir.path().join("run");
    let logged = last_eval(&run);
    assert!(logged["f1"].as_f64().unwrap() >= 0.95, "entity F1 after 30 steps: {logged}");
    assert!(summary.val_loss.unwrap() < 0.2, "{:?}", summary.val_loss);

    // `taper eval` scores the val file as training did.
    let trained = TrainedRun::load(&run, "latest", "cpu").unwrap();
    let (metrics, _) = trained.evaluate(None).unwrap();
    for key in ["val_loss", "token_accuracy", "precision", "recall", "f1"] {
        let (a, b) = (metrics[key], logged[key].as_f64().unwrap());
        assert!((a - b).abs() < 1e-9, "{key}: eval {a}, training {b}");
    }

    // predict: a tag per word, the unseen words past max_len marked.
    let input = dir.path().join("input.conll");
    let long: String = (0..40).map(|i| format!("word{i}\n")).collect();
    std::fs::write(&input, format!("Portia\nsailed\nto\nVenice\n\n{long}")).unwrap();
    let records = trained.predict(&input).unwrap();
    assert_eq!(records[0]["tags"], serde_json::json!(["B-PER", "O", "O", "B-LOC"]), "{}", records[0]);
    assert_eq!(records[1]["tags"].as_array().unwrap().len(), 40);
    assert!(!records[1]["unscored"].as_array().unwrap().is_empty(), "words past max_len: {}", records[1]);

    // The export: BertForTokenClassification with the tags, weights under Hugging Face's names.
    let out = dir.path().join("hf");
    taper::export::export_hf(&run, "latest", &out, false).unwrap();
    let hf: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(hf["architectures"][0], "BertForTokenClassification");
    let tagger = TrainedTagger::load(&run, "latest", "cpu").unwrap();
    for (i, name) in tagger.labels.names.iter().enumerate() {
        assert_eq!(hf["id2label"][i.to_string()], *name);
        assert_eq!(hf["label2id"][name], i);
    }
    let weights = candle_core::safetensors::load(out.join("model.safetensors"), &candle_core::Device::Cpu).unwrap();
    assert_eq!(weights["classifier.weight"].dims(), &[tagger.labels.names.len(), 384]);
    assert!(weights.contains_key("bert.embeddings.word_embeddings.weight"));
    assert!(!weights.keys().any(|k| k.contains("pooler")), "no pooler in a token classifier");
}

#[test]
fn a_resumed_tagger_run_equals_the_uninterrupted_one() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let quiet = TrainOptions { quiet: true, ..Default::default() };
    let whole = train(config(a.path(), 20), &quiet).unwrap();
    train(config(b.path(), 20), &TrainOptions { stop_after: Some(10), ..quiet.clone() }).unwrap();
    let resumed = train(config(b.path(), 20), &TrainOptions { resume: true, ..quiet }).unwrap();
    assert_eq!(resumed.losses.first().unwrap().0, 11, "resumed from the step-10 checkpoint");
    for (step, loss) in &resumed.losses {
        let want = whole.losses.iter().find(|(s, _)| s == step).unwrap().1;
        assert!((loss - want).abs() < 1e-6, "step {step}: resumed {loss} vs uninterrupted {want}");
    }
    let load = |dir: &Path| {
        let ckpt = taper::checkpoint::resolve_checkpoint(&dir.join("run"), "latest").unwrap();
        candle_core::safetensors::load(ckpt.join("model.safetensors"), &candle_core::Device::Cpu).unwrap()
    };
    let (x, y) = (load(a.path()), load(b.path()));
    for (name, t) in &x {
        let diff = (t - &y[name]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff <= 1e-6, "{name} differs by {diff} after resume");
    }
}
