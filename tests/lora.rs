//! LoRA: a fresh adapter leaves its layer as it was and the merge equals the adapted layer;
//! fine-tuning the GPT-2 fixture trains the adapters alone (the base weights stay the
//! checkpoint's, the optimizer holds only the adapters), fused and composed kernels give the
//! adapters the same gradients, the export merges them (and reloads with the run's logits),
//! resume is exact with adapter dropout; a LoRA-tuned MiniLM classifier exports a plain BERT
//! that candle-transformers runs with the run's hidden states.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use taper::config::{Config, Kernels, ModelConfig};
use taper::model::layers::Linear;
use taper::model::lora::{is_trainable, merge_adapters, LoraConfig};
use taper::model::{Gpt, Mode, ParamStore};
use taper::pretrained::Pretrained;
use taper::train::causal_lm::TrainedGpt;
use taper::train::{train, TrainOptions};

mod common;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn lora(rank: usize, targets: &[&str], dropout: f64) -> LoraConfig {
    let targets = targets.iter().map(|t| t.to_string()).collect();
    LoraConfig { rank, alpha: 2.0 * rank as f64, dropout, targets }
}

#[test]
fn a_fresh_adapter_changes_nothing_and_the_merge_equals_the_adapted_layer() {
    let params = ParamStore::with_trainable(is_trainable);
    let vb = params.var_builder(5, &Device::Cpu);
    let spec = lora(4, &["q_proj"], 0.5).spec().unwrap();
    let init = candle_nn::Init::Randn { mean: 0.0, stdev: 0.2 };
    let layer =
        Linear::new(12, 6, true, init, vb.pp("q_proj")).unwrap().with_lora(Some(&spec), &vb.pp("q_proj")).unwrap();
    let x = Tensor::randn(0f32, 1.0, (3, 5, 12), &Device::Cpu).unwrap();
    let base = Linear::from_weight(layer.weight.clone(), layer.bias.clone());
    let y = layer.forward(&x, &mut Mode::eval()).unwrap();
    assert_eq!(max_diff(&y, &base.forward(&x, &mut Mode::eval()).unwrap()), 0.0, "B starts at zero");

    // A trained-looking B: x W^T + b + scale (x A^T) B^T, and the merged weight, agree.
    params.get("q_proj.lora_b").unwrap().set(&Tensor::randn(0f32, 0.5, (6, 4), &Device::Cpu).unwrap()).unwrap();
    let adapter = layer.adapter.as_ref().unwrap();
    let low = x.broadcast_matmul(&adapter.a.t().unwrap()).unwrap().broadcast_matmul(&adapter.b.t().unwrap()).unwrap();
    let want = (base.forward(&x, &mut Mode::eval()).unwrap() + (low * spec.scale).unwrap()).unwrap();
    let got = layer.forward(&x, &mut Mode::eval()).unwrap();
    assert!(max_diff(&got, &want) < 1e-5, "{}", max_diff(&got, &want));
    assert!(max_diff(&got, &y) > 1e-2, "the adapter now moves the output");
    let mut tensors: HashMap<String, Tensor> = params.detached();
    merge_adapters(&mut tensors, &spec).unwrap();
    assert!(!tensors.keys().any(|k| k.contains("lora")), "{:?}", tensors.keys());
    let merged = Linear::from_weight(tensors["q_proj.weight"].clone(), Some(tensors["q_proj.bias"].clone()));
    assert!(max_diff(&merged.forward(&x, &mut Mode::eval()).unwrap(), &got) < 1e-5);
    // Adapter dropout while training: x W^T + b + scale (dropout(x) A^T) B^T; evaluation
    // (above) applies none, so the merged weight is exact there.
    let mut train = Mode::train(taper::rng::Rng::new(3));
    let dropped = layer.forward(&x, &mut train).unwrap();
    let mut same = Mode::train(taper::rng::Rng::new(3));
    let mask = taper::kernels::dropout(&x.ones_like().unwrap(), 0.5, &mut same).unwrap();
    let low = (&x * mask).unwrap().broadcast_matmul(&adapter.a.t().unwrap()).unwrap();
    let low = low.broadcast_matmul(&adapter.b.t().unwrap()).unwrap();
    let want = (base.forward(&x, &mut Mode::eval()).unwrap() + (low * spec.scale).unwrap()).unwrap();
    assert!(max_diff(&dropped, &want) < 1e-5 && max_diff(&dropped, &got) > 1e-3, "{}", max_diff(&dropped, &want));
}

fn fixture() -> PathBuf {
    root().join("tests/fixtures/tiny-gpt2")
}

/// The GPT-2 fixture with LoRA on every block layer, its parameters in a LoRA store.
fn adapted_gpt2(kernels: Kernels) -> (Gpt, ParamStore) {
    let mut model = ModelConfig::defaults();
    model.kernels = kernels;
    model.block_size = 32;
    model.lora = Some(lora(4, &["attention", "ffn"], 0.0).spec().unwrap());
    let pretrained = Pretrained::open(fixture().to_str().unwrap(), &mut model).unwrap();
    let params = ParamStore::with_trainable(is_trainable);
    let gpt = Gpt::new(&model, model.vocab_size.unwrap(), DType::F32, params.var_builder(0, &Device::Cpu)).unwrap();
    pretrained.load_into(&params, &model, &Device::Cpu).unwrap();
    for (name, var) in params.named_vars().iter().filter(|(n, _)| n.ends_with("lora_b")) {
        let mut rng = taper::rng::Rng::new(name.len() as u64); // any non-zero B, the same for both kernels
        let b: Vec<f32> = (0..var.elem_count()).map(|_| (rng.normal() * 0.1) as f32).collect();
        var.set(&Tensor::from_vec(b, var.shape(), &Device::Cpu).unwrap()).unwrap();
    }
    (gpt, params)
}

#[test]
fn fused_and_composed_kernels_give_the_adapters_the_same_gradients_and_nothing_else_any() {
    let ids = Tensor::from_vec((0..64u32).map(|i| (i * 37) % 300).collect(), (2, 32), &Device::Cpu).unwrap();
    let mut grads = Vec::new();
    for kernels in [Kernels::Fused, Kernels::Composed] {
        let (gpt, params) = adapted_gpt2(kernels);
        let logits = gpt.forward(&ids, &mut Mode::train(taper::rng::Rng::new(1))).unwrap(); // (B, T, V)
        let (b, t, v) = logits.dims3().unwrap();
        let targets = ids.narrow(1, 1, t - 1).unwrap().flatten_all().unwrap();
        let logits = logits.narrow(1, 0, t - 1).unwrap().reshape((b * (t - 1), v)).unwrap();
        let loss = candle_nn::loss::cross_entropy(&logits, &targets).unwrap();
        let store = loss.backward().unwrap();
        let by_name: HashMap<String, Option<Tensor>> =
            params.named_vars().into_iter().map(|(n, var)| (n, store.get(var.as_tensor()).cloned())).collect();
        for (name, grad) in &by_name {
            match (is_trainable(name), grad) {
                (true, Some(g)) => assert!(max_diff(g, &g.zeros_like().unwrap()) > 0.0, "{name}: a zero gradient"),
                (true, None) => panic!("{kernels:?}: adapter {name} has no gradient"),
                (false, Some(_)) => panic!("{kernels:?}: frozen {name} has a gradient"),
                (false, None) => {}
            }
        }
        grads.push(by_name);
    }
    let (fused, composed) = (&grads[0], &grads[1]);
    let adapters: Vec<&String> = fused.keys().filter(|n| is_trainable(n)).collect();
    assert_eq!(adapters.len(), 2 * 6 * 2, "q, k, v, out, fc1, fc2 of 2 blocks, A and B each: {adapters:?}");
    for name in adapters {
        let (a, b) = (fused[name].as_ref().unwrap(), composed[name].as_ref().unwrap());
        let scale = max_diff(b, &b.zeros_like().unwrap());
        assert!(
            max_diff(a, b) <= 1e-4 * scale.max(1.0),
            "{name}: fused and composed gradients differ by {}",
            max_diff(a, b)
        );
    }
}

fn run_config(dir: &Path, extra: &str) -> Config {
    Config::from_toml_str(&config_text(dir), &common::overrides(extra)).unwrap()
}

/// LoRA on every layer of the GPT-2 fixture's blocks, fine-tuned on a slice of the corpus.
fn config_text(dir: &Path) -> String {
    let text = std::fs::read_to_string(root().join("data/shakespeare.txt")).unwrap();
    let corpus = common::write_corpus(dir, &text[..60_000]);
    format!(
        "[model]\ninit_from = \"{}\"\nblock_size = 32\n[lora]\nrank = 4\ntargets = [\"attention\", \"ffn\"]\n\
         [data]\npath = \"{}\"\n[optim]\nlr = 1e-2\n[train]\nsteps = 40\nbatch_size = 8\nlog_every = 1\n\
         eval_every = 0\n[checkpoint]\ndir = \"{}\"\nevery = 10\n",
        fixture().display(),
        corpus.display(),
        dir.join("run").display()
    )
}

fn quiet() -> TrainOptions {
    TrainOptions { quiet: true, ..Default::default() }
}

fn checkpoint_file(run: &Path, file: &str) -> HashMap<String, Tensor> {
    let dir = taper::checkpoint::resolve_checkpoint(run, "latest").unwrap();
    candle_core::safetensors::load(dir.join(file), &Device::Cpu).unwrap()
}

#[test]
fn lora_on_gpt2_trains_only_the_adapters_and_the_export_merges_them() {
    let dir = tempfile::tempdir().unwrap();
    let report = train(run_config(dir.path(), ""), &quiet()).unwrap();
    let (first, last) = (report.losses[0].1, report.losses.last().unwrap().1);
    assert!(last < first - 0.5, "LoRA fine-tuning of the random GPT-2: loss {first} -> {last}");
    let run = dir.path().join("run");

    // The base weights are the fixture's, bit for bit; the optimizer knows only the adapters.
    let (_, pretrained) = adapted_gpt2(Kernels::Fused);
    let saved = checkpoint_file(&run, "model.safetensors");
    for (name, var) in pretrained.named_vars().iter().filter(|(n, _)| !is_trainable(n)) {
        assert_eq!(max_diff(&saved[name], var.as_tensor()), 0.0, "frozen {name} changed");
    }
    let optimizer = checkpoint_file(&run, "optimizer.safetensors");
    assert!(!optimizer.is_empty() && optimizer.keys().all(|k| k.contains("lora_")), "{:?}", optimizer.keys());

    // The export is plain GPT-2 (adapters merged) and reloads with the LoRA run's logits.
    let out = dir.path().join("export");
    taper::export::export_hf(&run, "latest", &out, false).unwrap();
    let exported = candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
    assert!(!exported.keys().any(|k| k.contains("lora")), "{:?}", exported.keys());
    let trained = TrainedGpt::load(&run, "latest", "cpu").unwrap();
    let mut model = ModelConfig::defaults();
    let reloaded = Pretrained::open(out.to_str().unwrap(), &mut model).unwrap();
    let params = ParamStore::new();
    let gpt = Gpt::new(&model, model.vocab_size.unwrap(), DType::F32, params.var_builder(0, &Device::Cpu)).unwrap();
    reloaded.load_into(&params, &model, &Device::Cpu).unwrap();
    let ids = Tensor::from_vec((0..32u32).map(|i| (i * 11) % 300).collect(), (1, 32), &Device::Cpu).unwrap();
    let want = trained.model.forward(&ids, &mut Mode::eval()).unwrap();
    let got = gpt.forward(&ids, &mut Mode::eval()).unwrap();
    assert!(max_diff(&got, &want) <= 1e-5, "the merged export's logits differ by {}", max_diff(&got, &want));
    let base = adapted_gpt2(Kernels::Fused).0; // B random: not the trained model
    assert!(max_diff(&base.forward(&ids, &mut Mode::eval()).unwrap(), &want) > 1e-3);
}

#[test]
fn a_resumed_lora_run_with_adapter_dropout_equals_the_uninterrupted_one() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let extra = "lora.dropout=0.1 train.steps=20";
    let whole = train(run_config(a.path(), extra), &quiet()).unwrap();
    train(run_config(b.path(), extra), &TrainOptions { stop_after: Some(10), ..quiet() }).unwrap();
    // As `taper train --resume RUN`: the run's own config.
    let saved = taper::run_dir::RunDir::new(b.path().join("run")).load_config(&[]).unwrap();
    let resumed = train(saved, &TrainOptions { resume: true, ..quiet() }).unwrap();
    assert_eq!(resumed.losses.first().unwrap().0, 11);
    for (step, loss) in &resumed.losses {
        let want = whole.losses.iter().find(|(s, _)| s == step).unwrap().1;
        assert!((loss - want).abs() < 1e-6, "step {step}: resumed {loss} vs uninterrupted {want}");
    }
}

/// An encoder-decoder (the T5 fixture): adapters in self- and cross-attention train, the run
/// generates and exports merged.
#[test]
fn lora_on_t5_adapts_self_and_cross_attention() {
    let dir = tempfile::tempdir().unwrap();
    let toml = std::fs::read_to_string(root().join("configs/t5-finetune-numbers.toml")).unwrap();
    let sets = [
        format!("model.init_from=\"{}\"", root().join("tests/fixtures/tiny-t5").display()),
        format!("data.path=\"{}\"", root().join("data/numbers/train.tsv").display()),
        format!("data.val_path=\"{}\"", root().join("data/numbers/val.tsv").display()),
        "lora.rank=4".into(),
        "lora.targets=[\"attention\"]".into(),
        "train.steps=20".into(),
        "train.eval_every=0".into(),
        "train.log_every=1".into(),
        "optim.lr=1e-2".into(),
        format!("checkpoint.dir=\"{}\"", dir.path().join("run").display()),
    ];
    let report = train(Config::from_toml_str(&toml, &sets).unwrap(), &quiet()).unwrap();
    assert!(report.losses.last().unwrap().1 < report.losses[0].1, "{:?}", report.losses);
    let run = dir.path().join("run");
    let optimizer = checkpoint_file(&run, "optimizer.safetensors");
    for stack in ["encoder", "decoder"] {
        assert!(
            optimizer.keys().any(|k| k.contains(&format!("{stack}.blocks.")) && k.contains("q_proj.lora_a")),
            "{stack}: {:?}",
            optimizer.keys()
        );
    }
    assert!(
        optimizer.keys().any(|k| k.contains("cross") && k.ends_with("lora_b")),
        "cross-attention: {:?}",
        optimizer.keys()
    );
    assert!(optimizer.keys().all(|k| k.contains("lora_")), "{:?}", optimizer.keys());
    let trained = taper::trained::TrainedRun::load(&run, "latest", "cpu").unwrap();
    assert!(trained.as_any().is::<taper::trained::TrainedSeq2Seq>());
    taper::export::export_hf(&run, "latest", &dir.path().join("hf"), false).unwrap();
}

#[test]
fn lora_settings_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("lora.rank=0", "`lora.rank` must be at least 1"),
        ("lora.targets=[\"query\"]", "`lora.targets` names `query`"),
        ("lora.dropout=1.0", "`lora.dropout` must be in [0, 1)"),
    ];
    let base = config_text(dir.path());
    for (set, expected) in cases {
        let err = format!("{:#}", Config::from_toml_str(&base, &[set.to_string()]).unwrap_err());
        assert!(err.contains(expected), "{set}: {err}");
    }
    let scratch =
        base.replace(&format!("init_from = \"{}\"", fixture().display()), "n_layer = 2\nn_head = 2\nd_model = 16");
    assert_ne!(scratch, base);
    let err = format!("{:#}", Config::from_toml_str(&scratch, &[]).unwrap_err());
    assert!(err.contains("[lora] adapts a pretrained model"), "{err}");
}

const GOOD: [&str; 4] = ["good", "great", "lovely", "superb"];
const BAD: [&str; 4] = ["bad", "awful", "dreadful", "poor"];

#[test]
fn a_lora_tuned_classifier_exports_a_plain_bert_with_its_hidden_states() {
    let model = root().join(".cache/models/all-MiniLM-L6-v2");
    assert!(model.join("model.safetensors").is_file(), "run scripts/fetch-minilm.sh (scripts/test.sh does)");
    let dir = tempfile::tempdir().unwrap();
    let mut csv = String::from("text,label\n");
    for i in 0..32 {
        let (word, label) = if i % 2 == 0 { (GOOD[i / 2 % 4], "pos") } else { (BAD[i / 2 % 4], "neg") };
        csv.push_str(&format!("the day was {word},{label}\n"));
    }
    std::fs::write(dir.path().join("train.csv"), &csv).unwrap();
    let toml = format!(
        "[model]\narch = \"encoder-only\"\ninit_from = \"{}\"\n[lora]\nrank = 4\ntargets = [\"attention\", \"ffn\"]\n\
         [task]\nkind = \"sequence-classification\"\nmax_len = 16\n[data]\npath = \"{dir}/train.csv\"\n\
         val_path = \"{dir}/train.csv\"\n[optim]\nlr = 2e-3\n[train]\nsteps = 12\nbatch_size = 8\n\
         log_every = 1\neval_every = 0\ndevice = \"cpu\"\n[checkpoint]\ndir = \"{dir}/run\"\nevery = 0\n",
        model.display(),
        dir = dir.path().display()
    );
    let report = train(Config::from_toml_str(&toml, &[]).unwrap(), &quiet()).unwrap();
    assert!(report.losses.last().unwrap().1 < report.losses[0].1, "{:?}", report.losses);
    let run = dir.path().join("run");
    let out = dir.path().join("hf");
    taper::export::export_hf(&run, "latest", &out, false).unwrap();
    let hf: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    let config: candle_transformers::models::bert::Config = serde_json::from_value(hf).unwrap();
    // SAFETY: the file is not modified while mapped.
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(&[out.join("model.safetensors")], DType::F32, &Device::Cpu).unwrap()
    };
    let reference = candle_transformers::models::bert::BertModel::load(vb, &config).unwrap();
    let classifier = taper::trained::TrainedClassifier::load(&run, "latest", "cpu").unwrap();
    let ids = classifier.tokenizer.inner().encode("the day was great", true).unwrap().get_ids().to_vec();
    let ids = Tensor::from_vec(ids.clone(), (1, ids.len()), &Device::Cpu).unwrap();
    let types = ids.zeros_like().unwrap();
    let want = reference.forward(&ids, &types, None).unwrap();
    let got = classifier.model.encoder.forward(&ids, Some(&types), None, &mut Mode::eval()).unwrap();
    assert!(max_diff(&got, &want) <= 1e-4, "the merged export's hidden states differ by {}", max_diff(&got, &want));
    let pretrained = candle_core::safetensors::load(model.join("model.safetensors"), &Device::Cpu).unwrap();
    let exported = candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
    let query = "encoder.layer.0.attention.self.query.weight";
    assert!(max_diff(&exported[&format!("bert.{query}")], &pretrained[query]) > 0.0, "the adapter is merged in");
}
