//! T5 in and out: the tiny T5 of tests/fixtures (random weights made by transformers,
//! scripts/make-hf-fixtures.sh) gives transformers' logits in taper's encoder-decoder, and
//! load -> export gives its tensors back; a T5-shaped seq2seq run's export loads in
//! candle-transformers' T5 with taper's logits; a run that is not T5-shaped is refused.

mod common;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use taper::config::Config;
use taper::hf::Family;
use taper::model::seq2seq::Seq2Seq;
use taper::model::Mode;
use taper::train::seq2seq::TrainedSeq2Seq;
use taper::train::{train, TrainOptions};

fn fixture() -> PathBuf {
    fixture_named("tiny-t5")
}

/// tiny-t5: v1.0's recipe (ReLU, tied head); tiny-t5-v1_1: v1.1's (gated tanh GELU, untied).
fn fixture_named(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn hugging_face_t5_gives_transformers_logits_and_exports_its_tensors_back() {
    check_fixture(&fixture_named("tiny-t5"));
    check_fixture(&fixture_named("tiny-t5-v1_1"));
}

fn check_fixture(fixture: &Path) {
    let fixture = || fixture.to_path_buf();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("config.json")).unwrap()).unwrap();
    let t5 = taper::hf::t5::T5;
    let checkpoint = t5.read_config(&config).unwrap();
    let (model, vocab) = (taper::config::ModelConfig { block_size: 64, ..checkpoint.model }, checkpoint.vocab_size);
    let scaled_head =
        config["scale_decoder_outputs"].as_bool().unwrap_or(config["tie_word_embeddings"].as_bool() != Some(false));
    assert!(t5.mismatches(&model).is_empty());
    let file = candle_core::safetensors::load(fixture().join("model.safetensors"), &Device::Cpu).unwrap();
    let (tensors, unused) = t5.to_taper(file.clone(), &model, &config).unwrap();
    assert!(unused.iter().all(|n| n.ends_with("embed_tokens.weight")), "{unused:?}");
    let expected = candle_core::safetensors::load(fixture().join("expected.safetensors"), &Device::Cpu).unwrap();
    let src = expected["input_ids"].to_dtype(DType::U32).unwrap();
    let tgt = expected["decoder_input_ids"].to_dtype(DType::U32).unwrap();
    for kernels in [taper::config::Kernels::Fused, taper::config::Kernels::Composed] {
        let model = taper::config::ModelConfig { kernels, ..model.clone() };
        let vb = VarBuilder::from_tensors(tensors.clone(), DType::F32, &Device::Cpu);
        let s2s = Seq2Seq::new(&model, vocab, vocab, DType::F32, vb).unwrap();
        let memory = s2s.encode(&src, None, &mut Mode::eval()).unwrap();
        let logits = s2s.forward(&tgt, &memory, &mut Mode::eval()).unwrap();
        let diff = max_diff(&logits, &expected["logits"]);
        assert!(
            diff <= 1e-4,
            "{}: {kernels:?}: taper's T5 logits differ from transformers' by {diff}",
            fixture().display()
        );
    }
    if !scaled_head {
        return; // tied and unscaled (transformers 5's T5 v1.1): taper writes a tied head scaled
    }
    let back = t5.to_hf(&tensors, &model).unwrap();
    let originals: Vec<&String> = file.keys().filter(|k| !k.ends_with("embed_tokens.weight")).collect();
    assert_eq!(back.len(), originals.len());
    for name in originals {
        assert_eq!(max_diff(&back[name], &file[name]), 0.0, "{name} changed on the way through taper");
    }
}

/// A seq2seq run on a slice of data/numbers with `extra` overrides.
fn seq2seq_config(dir: &Path, extra: &str) -> Config {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/numbers");
    let toml = format!(
        "[model]\narch = \"encoder-decoder\"\nn_layer = 2\nn_decoder_layer = 2\nn_head = 4\nd_model = 64\nd_ff = 128\n\
         block_size = 72\n[task]\nkind = \"seq2seq\"\n[data]\npath = \"{}\"\nval_path = \"{}\"\n[optim]\nlr = 3e-3\n\
         [train]\nsteps = 4\nbatch_size = 16\nlog_every = 1\neval_every = 0\n[checkpoint]\ndir = \"{}\"\nevery = 0\n",
        root.join("train.tsv").display(),
        root.join("val.tsv").display(),
        dir.join("run").display()
    );
    Config::from_toml_str(&toml, &common::overrides(extra)).unwrap()
}

const T5_SHAPE: &str = "model.norm=pre model.norm_kind=rms model.positions=t5 model.bias=false";

#[test]
fn a_t5_shaped_runs_export_loads_in_candle_transformers_t5_with_tapers_logits() {
    use candle_transformers::models::t5 as candle_t5;
    for extra in ["model.activation=relu", "model.activation=swiglu model.tie_embeddings=false"] {
        let dir = tempfile::tempdir().unwrap();
        let quiet = TrainOptions { quiet: true, ..Default::default() };
        train(seq2seq_config(dir.path(), &format!("{T5_SHAPE} {extra}")), &quiet).unwrap();
        let (run, out) = (dir.path().join("run"), dir.path().join("export"));
        taper::export::export_hf(&run, "latest", &out, false).unwrap();
        let text = std::fs::read_to_string(out.join("config.json")).unwrap();
        let config: candle_t5::Config = serde_json::from_str(&text).unwrap();
        let weights = candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
        let vb = VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
        let mut candle = candle_t5::T5ForConditionalGeneration::load(vb, &config).unwrap();

        let trained = TrainedSeq2Seq::load(&run, "latest", "cpu").unwrap();
        let specials = trained.vocab.source_specials;
        let src = trained.vocab.source.encode("90210").unwrap().into_iter().chain([specials.eos]).collect::<Vec<_>>();
        let src = Tensor::from_vec(src.clone(), (1, src.len()), &Device::Cpu).unwrap();
        let tgt: Vec<u32> = [specials.bos].into_iter().chain(trained.vocab.target.encode("ninety").unwrap()).collect();
        let tgt = Tensor::from_vec(tgt.clone(), (1, tgt.len()), &Device::Cpu).unwrap();
        let memory = trained.model.encode(&src, None, &mut Mode::eval()).unwrap();
        let ours = trained.model.forward(&tgt, &memory, &mut Mode::eval()).unwrap(); // (1, T, V)
                                                                                     // candle-transformers 0.11 multiplies a tied T5's decoder output by sqrt(d_model) where
                                                                                     // transformers (and Mesh TensorFlow) multiply by d_model^-0.5: its tied logits are
                                                                                     // d_model times transformers'. taper's agree with transformers' (the test above).
        let candle_scale = if config.tie_word_embeddings { config.d_model as f64 } else { 1.0 };
        for t in [1, 3, tgt.dim(1).unwrap()] {
            candle.clear_kv_cache();
            let theirs = (candle.forward(&src, &tgt.narrow(1, 0, t).unwrap()).unwrap() / candle_scale).unwrap();
            let diff = max_diff(&theirs, &ours.i((.., t - 1, ..)).unwrap());
            assert!(diff <= 1e-4, "{extra}: position {t}: candle-transformers' T5 differs by {diff}");
        }
        let tokenizer = taper::data::TextTokenizer::load(&out.join("tokenizer.json")).unwrap();
        assert_eq!(tokenizer.inner().token_to_id("</s>"), Some(specials.eos));
        assert_eq!(tokenizer.vocab_size(), config.vocab_size);
    }
}

#[test]
fn a_seq2seq_run_that_is_not_t5_shaped_is_refused_naming_the_options() {
    let dir = tempfile::tempdir().unwrap();
    let quiet = TrainOptions { quiet: true, ..Default::default() };
    train(seq2seq_config(dir.path(), "train.steps=1 model.positions=sinusoidal"), &quiet).unwrap();
    let err = taper::export::export_hf(&dir.path().join("run"), "latest", &dir.path().join("e"), false).unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("T5ForConditionalGeneration") && text.contains("`model.positions = \"sinusoidal\"`"),
        "{text}"
    );
    assert!(text.contains("`model.norm_kind = \"layer\"`") && text.contains("`model.bias = true`"), "{text}");
}

#[test]
fn a_run_from_a_pretrained_t5_fine_tunes_exports_and_reloads_equal() {
    let dir = tempfile::tempdir().unwrap();
    let toml_model = format!("model.init_from={} model.n_layer=0 train.steps=30", fixture().display());
    let mut cfg = seq2seq_config(dir.path(), &toml_model);
    // The shape keys come from the checkpoint; the ones the helper set must go.
    cfg.model.n_decoder_layer = None;
    (cfg.model.n_head, cfg.model.d_model, cfg.model.d_ff) = (0, 0, None);
    let quiet = TrainOptions { quiet: true, ..Default::default() };
    let report = train(cfg, &quiet).unwrap();
    let (first, last) = (report.losses[0].1, report.losses.last().unwrap().1);
    assert!(last < first - 0.5, "fine-tuning the random T5: loss {first} -> {last}");
    let run = dir.path().join("run");
    let trained = TrainedSeq2Seq::load(&run, "latest", "cpu").unwrap();
    // It started from the checkpoint: 30 Adam steps of 3e-3 leave a weight of std 0.2 near it.
    let weights = candle_core::safetensors::load(trained.checkpoint.join("model.safetensors"), &Device::Cpu).unwrap();
    let start = candle_core::safetensors::load(fixture().join("model.safetensors"), &Device::Cpu).unwrap();
    let (a, b) =
        (&weights["encoder.blocks.1.attn.k_proj.weight"], &start["encoder.block.1.layer.0.SelfAttention.k.weight"]);
    let dot = |x: &Tensor, y: &Tensor| (x * y).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
    let cosine = dot(a, b) / (dot(a, a) * dot(b, b)).sqrt();
    assert!(cosine > 0.8, "the trained k_proj is not the pretrained one moved a little: cosine {cosine}");
    assert_eq!(trained.vocab.source_specials.pad, 0, "T5's own <pad>");
    assert_eq!((trained.vocab.source_specials.bos, trained.vocab.source_specials.eos), (0, 1));

    let out = dir.path().join("export");
    taper::export::export_hf(&run, "latest", &out, false).unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!((config["pad_token_id"].as_u64(), config["decoder_start_token_id"].as_u64()), (Some(0), Some(0)));
    assert_eq!(config["vocab_size"], 320);

    // The export, loaded as `init_from` loads it, is the trained model.
    let t5 = taper::hf::t5::T5;
    let checkpoint = t5.read_config(&config).unwrap();
    let (model, vocab) = (taper::config::ModelConfig { block_size: 72, ..checkpoint.model }, checkpoint.vocab_size);
    let file = candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
    let (tensors, _) = t5.to_taper(file, &model, &config).unwrap();
    let reloaded =
        Seq2Seq::new(&model, vocab, vocab, DType::F32, VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu))
            .unwrap();
    let src = Tensor::new(&[[5u32, 9, 2, 7, 1]], &Device::Cpu).unwrap();
    let tgt = Tensor::new(&[[0u32, 4, 8, 3]], &Device::Cpu).unwrap();
    let logits = |m: &Seq2Seq| {
        let memory = m.encode(&src, None, &mut Mode::eval()).unwrap();
        m.forward(&tgt, &memory, &mut Mode::eval()).unwrap()
    };
    let diff = max_diff(&logits(&reloaded), &logits(&trained.model));
    assert!(diff <= 1e-5, "the export reloads with logits {diff} away from the run's");
}

#[test]
fn a_pretrained_t5_whose_keys_disagree_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("model.init_from={} model.positions=rope", fixture().display());
    let mut cfg = seq2seq_config(dir.path(), &extra);
    (cfg.model.n_layer, cfg.model.n_decoder_layer, cfg.model.n_head, cfg.model.d_model) = (0, None, 0, 0);
    cfg.model.d_ff = None;
    let err = train(cfg, &TrainOptions { quiet: true, ..Default::default() }).unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("`model.positions` = \"rope\" disagrees with") && text.contains("\"t5\""), "{text}");
}
