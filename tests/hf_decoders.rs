//! Hugging Face decoders in and out: the tiny GPT-2, Llama and Qwen2 of tests/fixtures (random weights
//! made by transformers, scripts/make-hf-fixtures.sh) load with transformers' logits; load ->
//! export gives the file's tensors back; a run started from one trains and exports; a Llama
//! run's export loads in candle-transformers' Llama with taper's logits; bad directories and
//! files are clear errors.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use taper::config::{Config, ModelConfig};
use taper::model::{Gpt, Mode, ParamStore};
use taper::pretrained::Pretrained;
use taper::train::causal_lm::TrainedGpt;
use taper::train::{train, TrainOptions};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

/// The fixture's model, loaded as `model.init_from` loads it, with its parameter store.
fn load(dir: &Path, extra: impl Fn(&mut ModelConfig)) -> anyhow::Result<(Gpt, ModelConfig, ParamStore)> {
    let mut model = ModelConfig::defaults();
    extra(&mut model);
    let pretrained = Pretrained::open(dir.to_str().unwrap(), &mut model)?;
    let params = ParamStore::new();
    let gpt = Gpt::new(&model, model.vocab_size.unwrap(), DType::F32, params.var_builder(0, &Device::Cpu))?;
    pretrained.load_into(&params, &model, &Device::Cpu)?;
    Ok((gpt, model, params))
}

fn expected(dir: &Path) -> (Tensor, Tensor) {
    let t = candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
    (t["input_ids"].to_dtype(DType::U32).unwrap(), t["logits"].clone())
}

#[test]
fn hugging_face_gpt2_and_llama_load_with_transformers_logits() {
    for name in ["tiny-gpt2", "tiny-llama", "tiny-qwen2"] {
        for kernels in [taper::config::Kernels::Fused, taper::config::Kernels::Composed] {
            let (gpt, _, _) = load(&fixture(name), |m| m.kernels = kernels).unwrap();
            let (ids, want) = expected(&fixture(name));
            let got = gpt.forward(&ids, &mut Mode::eval()).unwrap();
            let diff = max_diff(&got, &want);
            assert!(diff <= 1e-4, "{name} ({kernels:?}): taper's logits differ from transformers' by {diff}");
        }
    }
}

#[test]
fn load_then_export_gives_the_files_tensors_back() {
    let families = [("tiny-gpt2", "gpt2"), ("tiny-llama", "llama"), ("tiny-qwen2", "qwen2")];
    for (name, family) in families {
        let (_, model, params) = load(&fixture(name), |_| {}).unwrap();
        assert_eq!(taper::hf::fitting(&model, taper::hf::Head::CausalLm).unwrap().model_type(), family);
        let family = taper::hf::by_model_type(family).unwrap();
        let exported = family.to_hf(&params.detached(), &model).unwrap();
        let original = candle_core::safetensors::load(fixture(name).join("model.safetensors"), &Device::Cpu).unwrap();
        let mut names: Vec<&String> = exported.keys().collect();
        names.sort();
        let mut want: Vec<&String> = original.keys().collect();
        want.sort();
        assert_eq!(names, want, "{name}: the export's tensor names");
        for (k, t) in &exported {
            assert_eq!(t.dims(), original[k].dims(), "{name}: {k}");
            assert_eq!(max_diff(t, &original[k]), 0.0, "{name}: {k} changed on the way through taper");
        }
    }
}

#[test]
fn the_byte_level_tokenizer_of_a_pretrained_gpt_round_trips_text() {
    let tokenizer = taper::data::TextTokenizer::load(&fixture("tiny-gpt2").join("tokenizer.json")).unwrap();
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("data/shakespeare.txt")).unwrap();
    let text: String = text.chars().take(20_000).chain("  naïve café — «ok»\n\tend".chars()).collect();
    let ids = tokenizer.encode_corpus(&text).unwrap();
    assert!(ids.len() < text.len() * 7 / 10, "BPE merges: {} ids for {} bytes", ids.len(), text.len());
    assert_eq!(tokenizer.decode(&ids).unwrap(), text);
}

fn run_config(dir: &Path, init_from: Option<&Path>, extra: &str) -> Config {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("data/shakespeare.txt")).unwrap();
    let corpus = common::write_corpus(dir, &text[..60_000]);
    let model = match init_from {
        Some(d) => format!("init_from = \"{}\"\nblock_size = 32", d.display()),
        None => "n_layer = 2\nn_head = 4\nd_model = 32\nblock_size = 32".into(),
    };
    let toml = format!(
        "[model]\n{model}\n[data]\npath = \"{}\"\n[optim]\nlr = 3e-3\n[train]\nsteps = 40\nbatch_size = 8\n\
         log_every = 1\neval_every = 0\n[checkpoint]\ndir = \"{}\"\nevery = 0\n",
        corpus.display(),
        dir.join("run").display()
    );
    Config::from_toml_str(&toml, &common::overrides(extra)).unwrap()
}

fn quiet() -> TrainOptions {
    TrainOptions { quiet: true, ..Default::default() }
}

#[test]
fn a_run_from_a_pretrained_gpt2_trains_exports_and_reloads_equal() {
    let dir = tempfile::tempdir().unwrap();
    let report = train(run_config(dir.path(), Some(&fixture("tiny-gpt2")), ""), &quiet()).unwrap();
    let (first, last) = (report.losses[0].1, report.losses.last().unwrap().1);
    assert!(last < first - 1.0, "fine-tuning the random GPT-2: loss {first} -> {last}");
    let run = dir.path().join("run");
    let saved = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(saved.contains("n_layer = 2") && saved.contains("vocab_size = 320"), "{saved}");

    let out = dir.path().join("export");
    taper::export::export_hf(&run, "latest", &out, false).unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "GPT2LMHeadModel");
    assert_eq!(config["n_positions"], 32);
    assert!(out.join("generation_config.json").is_file() && out.join("tokenizer.json").is_file());

    let trained = TrainedGpt::load(&run, "latest", "cpu").unwrap();
    let (reloaded, _, _) = load(&out, |_| {}).unwrap();
    let (ids, _) = expected(&fixture("tiny-gpt2"));
    let ids = ids.narrow(1, 0, 32).unwrap();
    let want = trained.model.forward(&ids, &mut Mode::eval()).unwrap();
    let diff = max_diff(&reloaded.forward(&ids, &mut Mode::eval()).unwrap(), &want);
    assert!(diff <= 1e-6, "the export reloads with logits {diff} away from the run's");
    let err = taper::export::export_hf(&run, "latest", &out, false).unwrap_err();
    assert!(format!("{err:#}").contains("--overwrite"), "{err:#}");
}

#[test]
fn a_llama_runs_export_loads_in_candle_transformers_with_tapers_logits() {
    use candle_transformers::models::llama;
    for (init_from, extra) in [
        (None, "model.norm_kind=rms model.activation=swiglu model.positions=rope model.n_kv_head=2 model.bias=false"),
        (Some(fixture("tiny-llama")), ""),
    ] {
        let dir = tempfile::tempdir().unwrap();
        train(run_config(dir.path(), init_from.as_deref(), &format!("train.steps=5 {extra}")), &quiet()).unwrap();
        let (run, out) = (dir.path().join("run"), dir.path().join("export"));
        taper::export::export_hf(&run, "latest", &out, false).unwrap();
        let text = std::fs::read_to_string(out.join("config.json")).unwrap();
        let config: llama::LlamaConfig = serde_json::from_str(&text).unwrap();
        let config = config.into_config(false);
        let weights = candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
        let candle = llama::Llama::load(VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu), &config).unwrap();
        let trained = TrainedGpt::load(&run, "latest", "cpu").unwrap();
        let ids: Vec<u32> = (0..20u32).map(|i| (i * 7 + 3) % 30).collect();
        let ids = Tensor::from_vec(ids, (1, 20), &Device::Cpu).unwrap();
        let ours = trained.model.forward(&ids, &mut Mode::eval()).unwrap(); // (1, T, V)
        for t in [1, 7, 20] {
            let mut cache = llama::Cache::new(false, DType::F32, &config, &Device::Cpu).unwrap();
            let theirs = candle.forward(&ids.narrow(1, 0, t).unwrap(), 0, &mut cache).unwrap(); // (1, V)
            let diff = max_diff(&theirs, &ours.i((.., t - 1, ..)).unwrap());
            assert!(diff <= 1e-4, "{init_from:?}: position {t}: candle-transformers' Llama differs by {diff}");
        }
    }
}

#[test]
fn a_run_that_fits_no_family_is_refused_naming_the_option() {
    let dir = tempfile::tempdir().unwrap();
    train(run_config(dir.path(), None, "train.steps=1 model.positions=sinusoidal"), &quiet()).unwrap();
    let err = taper::export::export_hf(&dir.path().join("run"), "latest", &dir.path().join("e"), false).unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("`model.positions = \"sinusoidal\"`") && text.contains("GPT2LMHeadModel"), "{text}");
    assert!(!dir.path().join("e").join("model.safetensors").exists());
}

/// A copy of the GPT-2 fixture whose `file` `edit` changes.
fn broken_copy(dir: &Path, file: &str, edit: impl Fn(Vec<u8>) -> Vec<u8>) -> PathBuf {
    let copy = dir.join(format!("broken-{}", file.replace('.', "-")));
    std::fs::create_dir_all(&copy).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        let bytes = std::fs::read(fixture("tiny-gpt2").join(f)).unwrap();
        std::fs::write(copy.join(f), if f == file { edit(bytes) } else { bytes }).unwrap();
    }
    copy
}

fn load_error(dir: &Path, extra: impl Fn(&mut ModelConfig)) -> String {
    format!("{:#}", load(dir, extra).err().expect("the load must fail"))
}

#[test]
fn bad_pretrained_directories_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let e = load_error(&empty, |_| {});
    assert!(e.contains("has no config.json"), "{e}");

    let t5 = broken_copy(tmp.path(), "config.json", |_| br#"{"model_type": "t5"}"#.to_vec());
    let e = load_error(&t5, |_| {});
    assert!(e.contains("model_type `t5` is not a decoder taper loads"), "{e}");

    let wide = broken_copy(tmp.path(), "config.json", |b| {
        String::from_utf8(b).unwrap().replace("\"n_inner\": null", "\"n_inner\": 100").into_bytes()
    });
    let e = load_error(&wide, |_| {});
    assert!(e.contains("`transformer.h.0.mlp.c_fc") && e.contains("config.json"), "{e}");
    assert!(e.contains("128") && e.contains("100"), "both shapes: {e}");

    let truncated = broken_copy(tmp.path(), "model.safetensors", |b| b[..b.len() / 2].to_vec());
    let e = load_error(&truncated, |_| {});
    assert!(e.contains("cannot read") && e.contains("model.safetensors"), "{e}");

    let huge_header = broken_copy(tmp.path(), "model.safetensors", |mut b| {
        b[..8].copy_from_slice(&(1u64 << 50).to_le_bytes());
        b
    });
    let e = load_error(&huge_header, |_| {});
    assert!(e.contains("cannot read") && e.contains("model.safetensors"), "{e}");

    let e = load_error(&fixture("tiny-gpt2"), |m| m.n_layer = 3);
    assert!(e.contains("`model.n_layer` = 3 disagrees with") && e.contains("config.json (2)"), "{e}");
    let e = load_error(&fixture("tiny-gpt2"), |m| m.block_size = 128);
    assert!(e.contains("`model.block_size` = 128 is longer than"), "{e}");
    let e = load_error(&fixture("tiny-llama"), |m| m.positions = taper::config::Positions::Alibi);
    assert!(e.contains("`model.positions` = \"alibi\" disagrees"), "{e}");
    let pretrained = Pretrained::open(fixture("tiny-llama").to_str().unwrap(), &mut ModelConfig::defaults()).unwrap();
    let (family, shape) = (pretrained.family.model_type(), pretrained.checkpoint.model);
    assert_eq!((family, shape.n_kv_head(), shape.tie_embeddings), ("llama", 2, false));
}

#[test]
fn unused_tensors_of_a_checkpoint_are_named() {
    // An extra tensor the model has no place for is an error that names it.
    let tmp = tempfile::tempdir().unwrap();
    let dir = broken_copy(tmp.path(), "config.json", |b| b);
    let mut tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    tensors.insert(
        "transformer.h.9.attn.c_proj.weight".into(),
        Tensor::zeros((32, 32), DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
    let e = load_error(&dir, |_| {});
    assert!(e.contains("blocks.9.attn.out_proj.weight"), "{e}");
}
