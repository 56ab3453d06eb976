//! The encoder families beside BERT in and out (RoBERTa, XLM-RoBERTa, DistilBERT, ELECTRA, ALBERT): the tiny
//! models of tests/fixtures (random weights made by transformers,
//! scripts/make-encoder-fixtures.sh) give transformers' hidden states and each head's logits
//! (1e-4) in taper's encoder, with fused and composed kernels; their tokenizers give
//! transformers' ids for texts and pairs under truncation; a fine-tune from one exports as the
//! family's class with its names and reloads in taper with the run's predictions.

mod common;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use taper::config::{Architecture, Kernels, ModelConfig};
use taper::hf::{Family, Tensors};
use taper::model::encoder::{Encoder, MaskedLm, Pooling, SequenceClassifier, TokenClassifier};
use taper::model::Mode;

/// The ids an export's config.json names: pad, bos, eos.
type Ids = (u64, Option<u64>, Option<u64>);

/// Each family's model_type, position offset and ids of the fixtures.
const FAMILIES: [(&str, usize, Ids); 5] = [
    ("roberta", 2, (1, Some(0), Some(2))),
    ("xlm-roberta", 2, (1, Some(0), Some(2))),
    ("distilbert", 0, (0, None, None)),
    ("electra", 0, (0, None, None)),
    ("albert", 0, (0, Some(2), Some(3))),
];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// The fixture's family (found by config.json's model_type), architecture and tensors.
fn open(name: &str) -> (&'static dyn Family, taper::hf::Checkpoint, Tensors) {
    let (config, path) = taper::hf::read_config_json(&fixture(name)).unwrap();
    let family = taper::hf::family_of(&config, &path, Architecture::EncoderOnly).unwrap();
    let checkpoint = family.read_config(&config).unwrap();
    let tensors = candle_core::safetensors::load(fixture(name).join("model.safetensors"), &Device::Cpu).unwrap();
    (family, checkpoint, tensors)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

fn u32s(t: &Tensor) -> Tensor {
    t.to_dtype(DType::U32).unwrap()
}

/// The flat (B * T) positions of the real tokens, and those tokens' rows of `t` (B, T, ...).
fn real_positions(mask: &Tensor) -> Vec<u32> {
    let mask = mask.to_dtype(DType::U32).unwrap().flatten_all().unwrap().to_vec1::<u32>().unwrap();
    mask.iter().enumerate().filter(|(_, &m)| m == 1).map(|(i, _)| i as u32).collect()
}

fn rows(t: &Tensor, positions: &[u32]) -> Tensor {
    let (b, n) = (t.dim(0).unwrap(), t.dim(1).unwrap());
    let flat = t.reshape((b * n, ())).unwrap(); // (B, T, X) -> (B*T, X)
    flat.index_select(&Tensor::new(positions, &Device::Cpu).unwrap(), 0).unwrap()
}

#[test]
fn roberta_and_xlm_r_give_transformers_hidden_states_and_logits() {
    for (family_name, offset, _) in FAMILIES {
        for head in ["cls", "tok", "mlm"] {
            let name = format!("tiny-{family_name}-{head}");
            let (family, checkpoint, tensors) = open(&name);
            assert_eq!(family.model_type(), family_name);
            assert_eq!((checkpoint.model.position_offset, checkpoint.model.block_size), (offset, 64), "{name}");
            let prefix = family.encoder_prefix().unwrap();
            let expected =
                candle_core::safetensors::load(fixture(&name).join("expected.safetensors"), &Device::Cpu).unwrap();
            let (ids, mask) = (u32s(&expected["input_ids"]), u32s(&expected["attention_mask"]));
            let real = real_positions(&mask);
            for kernels in [Kernels::Fused, Kernels::Composed] {
                let model = ModelConfig { kernels, ..checkpoint.model.clone() };
                let vocab = checkpoint.encoder_vocab();
                let vb =
                    family.names(&model).renamed(VarBuilder::from_tensors(tensors.clone(), DType::F32, &Device::Cpu));
                let what = format!("{name} ({kernels:?})");
                let mut mode = Mode::eval();
                let bare = family.names(&model).under("encoder", prefix);
                let encoder_vb = bare.renamed(VarBuilder::from_tensors(
                    tensors
                        .iter()
                        .filter_map(|(k, v)| Some((k.strip_prefix(&format!("{prefix}."))?.to_string(), v.clone())))
                        .collect(),
                    DType::F32,
                    &Device::Cpu,
                ));
                let encoder = Encoder::new(&model, vocab, DType::F32, encoder_vb).unwrap();
                let hidden = encoder.forward(&ids, None, Some(&mask), &mut mode).unwrap();
                let diff = max_diff(&rows(&hidden, &real), &rows(&expected["hidden"], &real));
                assert!(diff <= 1e-4, "{what}: hidden states differ by {diff}");
                let diff = match head {
                    "cls" => {
                        let m = SequenceClassifier::new(&model, vocab, 2, Pooling::Cls, vb)
                            .unwrap()
                            .styled(family.head_style());
                        max_diff(&m.forward(&ids, None, Some(&mask), &mut mode).unwrap(), &expected["logits"])
                    }
                    "tok" => {
                        let m = TokenClassifier::new(&model, vocab, 5, vb).unwrap();
                        let at = Tensor::new(real.as_slice(), &Device::Cpu).unwrap();
                        let ours = m.logits_at(&ids, None, Some(&mask), &at, &mut mode).unwrap();
                        max_diff(&ours, &rows(&expected["logits"], &real))
                    }
                    _ => {
                        let m = MaskedLm::new(&model, vocab, vb).unwrap();
                        // One row at a time, unpadded (the MLM head takes no mask).
                        (0..2)
                            .map(|b| {
                                let n = mask.i(b).unwrap().sum_all().unwrap().to_scalar::<u32>().unwrap() as usize;
                                let row = ids.i(b).unwrap().narrow(0, 0, n).unwrap().unsqueeze(0).unwrap();
                                let at = Tensor::arange(0u32, n as u32, &Device::Cpu).unwrap();
                                let ours = m.logits_at(&row, &at, &mut mode).unwrap();
                                max_diff(&ours, &expected["logits"].i(b).unwrap().narrow(0, 0, n).unwrap())
                            })
                            .fold(0.0, f32::max)
                    }
                };
                assert!(diff <= 1e-4, "{what}: logits differ from transformers' by {diff}");
            }
        }
    }
}

#[test]
fn their_tokenizers_give_transformers_ids_for_texts_and_pairs() {
    for (family_name, ..) in FAMILIES {
        let dir = fixture(&format!("tiny-{family_name}-cls"));
        let tokenizer = taper::data::TextTokenizer::load(&dir.join("tokenizer.json")).unwrap();
        let text = std::fs::read_to_string(dir.join("tokenization.json")).unwrap();
        let cases: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
        for case in cases {
            let example = taper::data::labelled::Example {
                text: case["text"].as_str().unwrap().into(),
                text_pair: case["text_pair"].as_str().map(String::from),
                label: None,
                line: 1,
            };
            let max_len = case["max_length"].as_u64().unwrap() as usize;
            let ours = taper::data::padded::encode_examples(&tokenizer, &[example], max_len, &dir).unwrap();
            let theirs: Vec<u32> =
                case["input_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
            assert_eq!(ours[0].ids, theirs, "{family_name}: {case}");
        }
    }
}

/// A sequence-classification run from `fixture` on the shipped sentiment rows.
fn finetune(dir: &Path, fixture_dir: &Path, steps: usize) -> PathBuf {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/sentiment");
    let toml = format!(
        "[model]\narch = \"encoder-only\"\ninit_from = \"{}\"\n[task]\nkind = \"sequence-classification\"\n\
         max_len = 32\n[data]\npath = \"{}\"\nval_path = \"{}\"\n[optim]\nlr = 1e-3\n[train]\nsteps = {steps}\n\
         batch_size = 16\neval_every = 0\nlog_every = 1\n[checkpoint]\ndir = \"{}\"\nevery = 0\n",
        fixture_dir.display(),
        data.join("train.csv").display(),
        data.join("val.csv").display(),
        dir.join("run").display()
    );
    let cfg = taper::config::Config::from_toml_str(&toml, &[]).unwrap();
    let quiet = taper::train::TrainOptions { quiet: true, ..Default::default() };
    let report = taper::train::train(cfg, &quiet).unwrap();
    let mean = |l: &[(usize, f64)]| l.iter().map(|x| x.1).sum::<f64>() / l.len() as f64;
    let (first, last) = (mean(&report.losses[..10]), mean(&report.losses[steps - 10..]));
    assert!(last < first, "fine-tuning {}: mean loss {first} -> {last}", fixture_dir.display());
    dir.join("run")
}

#[test]
fn a_fine_tune_exports_as_its_family_and_reloads_with_the_runs_logits() {
    for (family_name, offset, (pad, bos, eos)) in FAMILIES {
        let dir = tempfile::tempdir().unwrap();
        let source = fixture(&format!("tiny-{family_name}-cls"));
        let run = finetune(dir.path(), &source, 80);
        // The checkpoint's head dropout is the run's (DistilBERT's seq_classif_dropout 0.2;
        // RoBERTa's classifier_dropout null: the hidden dropout).
        let saved = taper::run_dir::RunDir::new(&run).load_config(&[]).unwrap();
        let want = match family_name {
            "distilbert" => Some(0.2),
            "albert" => Some(0.1), // classifier_dropout_prob
            _ => None,
        };
        assert_eq!(saved.model.classifier_dropout, want, "{family_name}");
        let out = dir.path().join("export");
        taper::export::export_hf(&run, "latest", &out, false).unwrap();
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
        let class = config["architectures"][0].as_str().unwrap();
        assert!(class.ends_with("ForSequenceClassification") && config["model_type"] == family_name, "{config}");
        let positions = 64 + offset as u64;
        assert_eq!(
            (config["max_position_embeddings"].as_u64(), config["pad_token_id"].as_u64()),
            (Some(positions), Some(pad))
        );
        assert_eq!((config["bos_token_id"].as_u64(), config["eos_token_id"].as_u64()), (bos, eos));
        // The same tensor names as the checkpoint it started from, and the same shapes.
        let start = candle_core::safetensors::load(source.join("model.safetensors"), &Device::Cpu).unwrap();
        let exported = candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
        let mut names: Vec<&String> = exported.keys().collect();
        let mut want: Vec<&String> = start.keys().collect();
        names.sort();
        want.sort();
        assert_eq!(names, want);
        for (name, t) in &exported {
            assert_eq!(t.dims(), start[name].dims(), "{name}");
        }
        // Reloaded as `init_from` loads it, the export predicts as the run does.
        let ours = taper::train::classification::TrainedClassifier::load(&run, "latest", "cpu").unwrap();
        let texts = ["a gentle and most noble play", "tedious, and the jokes fall flat"];
        let (family, checkpoint, tensors) = open_dir(&out);
        let model = checkpoint.model.clone();
        let vb = family.names(&model).renamed(VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu));
        let reloaded = SequenceClassifier::new(&model, checkpoint.encoder_vocab(), 2, Pooling::Cls, vb)
            .unwrap()
            .styled(family.head_style());
        let tokenizer = taper::data::TextTokenizer::load(&out.join("tokenizer.json")).unwrap();
        for text in texts {
            let ids = tokenizer.inner().encode(text, true).unwrap().get_ids().to_vec();
            let ids = Tensor::from_vec(ids.clone(), (1, ids.len()), &Device::Cpu).unwrap();
            let theirs = reloaded.forward(&ids, None, None, &mut Mode::eval()).unwrap();
            let run_logits = ours.model.forward(&ids, None, None, &mut Mode::eval()).unwrap();
            let diff = max_diff(&theirs, &run_logits);
            assert!(diff <= 1e-5, "{family_name}: the export's logits differ from the run's by {diff}");
        }
    }
}

fn open_dir(dir: &Path) -> (&'static dyn Family, taper::hf::Checkpoint, Tensors) {
    let (config, path) = taper::hf::read_config_json(dir).unwrap();
    let family = taper::hf::family_of(&config, &path, Architecture::EncoderOnly).unwrap();
    let checkpoint = family.read_config(&config).unwrap();
    let tensors = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    (family, checkpoint, tensors)
}

#[test]
fn a_config_key_taper_does_not_build_is_refused_by_name() {
    let (config, path) = taper::hf::read_config_json(&fixture("tiny-distilbert-cls")).unwrap();
    let family = taper::hf::family_of(&config, &path, Architecture::EncoderOnly).unwrap();
    for (key, value) in [("sinusoidal_pos_embds", serde_json::json!(true)), ("tie_weights_", serde_json::json!(false))]
    {
        let mut changed = config.clone();
        changed[key] = value;
        let err = format!("{:#}", family.read_config(&changed).unwrap_err());
        assert!(err.contains(&format!("`{key}`")), "{err}");
    }
    let (config, path) = taper::hf::read_config_json(&fixture("tiny-roberta-cls")).unwrap();
    let family = taper::hf::family_of(&config, &path, Architecture::EncoderOnly).unwrap();
    let mut changed = config.clone();
    changed["position_embedding_type"] = serde_json::json!("relative_key");
    let err = format!("{:#}", family.read_config(&changed).unwrap_err());
    assert!(err.contains("relative_key"), "{err}");
    // taper's own keys for these layouts, where they mean nothing.
    for (extra, key) in
        [("embedding_size = 16", "embedding_size"), ("position_offset = 2\npositions = \"rope\"", "position_offset")]
    {
        let toml = format!(
            "[model]\nn_layer = 1\nn_head = 2\nd_model = 32\nblock_size = 16\n{extra}\n[data]\npath = \"x.txt\"\n[train]\nsteps = 1\nbatch_size = 1\n"
        );
        let err = format!("{:#}", taper::config::Config::from_toml_str(&toml, &[]).unwrap_err());
        assert!(err.contains(&format!("`model.{key}`")), "{err}");
    }
}

#[test]
fn a_checkpoint_of_pickled_weights_is_refused_with_the_conversion() {
    let dir = tempfile::tempdir().unwrap();
    for file in ["config.json", "tokenizer.json"] {
        std::fs::copy(fixture("tiny-roberta-cls").join(file), dir.path().join(file)).unwrap();
    }
    std::fs::write(dir.path().join("pytorch_model.bin"), b"not read").unwrap();
    let mut model = ModelConfig { arch: Architecture::EncoderOnly, ..ModelConfig::defaults() };
    let spec = dir.path().to_str().unwrap();
    let err = format!("{:#}", taper::pretrained::Pretrained::open(spec, &mut model).err().unwrap());
    assert!(err.contains("pytorch_model.bin") && err.contains("safe_serialization=True"), "{err}");
}
