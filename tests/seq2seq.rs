//! The encoder-decoder, with every position encoding and norm placement: source padding changes nothing, cached
//! decoding equals uncached, beam size 1 equals greedy, label smoothing is the formula, and a tiny model learns to copy.

use candle_core::{DType, Device, Tensor};
use taper::config::Config;
use taper::decode::{beam_search, greedy, BeamOptions, DecodeLimits, OutputRules};
use taper::model::seq2seq::Seq2Seq;
use taper::model::{Mode, ParamStore};
use taper::train::{train, TrainOptions};

const VOCAB: usize = 20;
/// Every position encoding and every norm placement.
const POSITIONS: [(&str, &str); 10] = [
    ("pre", "sinusoidal"),
    ("post", "learned"),
    ("pre", "rope"),
    ("pre", "alibi"),
    ("post", "t5"),
    ("pre", "shaw"),
    ("post", "none"),
    ("sandwich", "rope"),
    ("deepnorm", "t5"),
    // QK-norm in self- and cross-attention, written as a TOML line after `positions`.
    ("pre", "rope\"\nqk_norm = true\nnorm_kind = \"rms"),
];
const LIMITS: DecodeLimits = DecodeLimits { bos: 18, eos: 19, max_len: 12, rules: OutputRules::NONE };

fn model_config(norm: &str, positions: &str) -> Config {
    let text = format!(
        r#"
[model]
arch = "encoder-decoder"
n_layer = 2
n_decoder_layer = 2
n_head = 2
d_model = 32
block_size = 16
norm = "{norm}"
positions = "{positions}"
init_std = 0.3
[task]
kind = "seq2seq"
[data]
path = "unused.tsv"
[train]
steps = 1
batch_size = 1
"#
    );
    Config::from_toml_str(&text, &[]).unwrap()
}

/// A random model: large init, so its outputs depend strongly on the input.
fn random_model(norm: &str, positions: &str) -> Seq2Seq {
    let cfg = model_config(norm, positions);
    Seq2Seq::new(&cfg.model, VOCAB, VOCAB, DType::F32, ParamStore::new().var_builder(7, &Device::Cpu)).unwrap()
}

fn ids(rows: &[&[u32]]) -> Tensor {
    let t = rows[0].len();
    Tensor::from_vec(rows.concat(), (rows.len(), t), &Device::Cpu).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn padding_in_the_source_does_not_change_the_decoder() {
    for (norm, positions) in POSITIONS {
        let model = random_model(norm, positions);
        let alone = model.encode(&ids(&[&[3, 4, 5, 19]]), None, &mut Mode::eval()).unwrap();
        let src = ids(&[&[3, 4, 5, 19, 17, 17, 17], &[6, 7, 8, 9, 10, 11, 19]]);
        let keep = ids(&[&[1, 1, 1, 1, 0, 0, 0], &[1, 1, 1, 1, 1, 1, 1]]);
        let batch = model.encode(&src, Some(&keep), &mut Mode::eval()).unwrap();
        let tgt = ids(&[&[18, 2, 3, 4]]);
        let want = model.forward(&tgt, &alone, &mut Mode::eval()).unwrap();
        let got = model.forward(&ids(&[&[18, 2, 3, 4], &[18, 5, 6, 7]]), &batch, &mut Mode::eval()).unwrap();
        let diff = max_diff(&got.get(0).unwrap().unsqueeze(0).unwrap(), &want);
        assert!(diff < 1e-5, "{norm}/{positions}: padding moved the decoder's logits by {diff}");
        // ... and the padding mask is what does it: without it the logits move.
        let unmasked = model.encode(&src, None, &mut Mode::eval()).unwrap();
        let moved = model.forward(&ids(&[&[18, 2, 3, 4], &[18, 5, 6, 7]]), &unmasked, &mut Mode::eval()).unwrap();
        assert!(max_diff(&moved.get(0).unwrap().unsqueeze(0).unwrap(), &want) > 1e-3);
    }
}

#[test]
fn cached_decoding_equals_uncached() {
    for (norm, positions) in POSITIONS {
        let model = random_model(norm, positions);
        let src = ids(&[&[3, 4, 5, 6, 19, 17], &[9, 8, 7, 6, 5, 19]]);
        let keep = ids(&[&[1, 1, 1, 1, 1, 0], &[1, 1, 1, 1, 1, 1]]);
        let memory = model.encode(&src, Some(&keep), &mut Mode::eval()).unwrap();
        // Step by step with the cache == the whole prefix at once.
        let tgt = ids(&[&[18, 2, 3, 4, 5], &[18, 6, 7, 8, 9]]);
        let full = model.forward(&tgt, &memory, &mut Mode::eval()).unwrap();
        let mut caches = model.new_caches();
        for t in 0..5 {
            let step = model.decode_step(&tgt.narrow(1, t, 1).unwrap(), &memory, &mut caches).unwrap();
            let diff = max_diff(&step, &full.narrow(1, t, 1).unwrap().squeeze(1).unwrap());
            assert!(diff < 1e-4, "{norm}/{positions}: position {t} differs by {diff}");
        }
        let cached = greedy(&model, &memory, LIMITS, true).unwrap();
        let uncached = greedy(&model, &memory, LIMITS, false).unwrap();
        assert_eq!(cached, uncached, "{norm}/{positions}");
        assert!(cached.iter().any(|o| o.len() > 2), "the outputs are trivially short: {cached:?}");
    }
}

#[test]
fn beam_size_one_equals_greedy() {
    for (positions, source) in ["sinusoidal", "alibi", "t5", "shaw"].into_iter().zip([
        &[3u32, 4, 5, 19][..],
        &[10, 11, 12, 13, 14, 19],
        &[2, 19],
        &[7, 6, 5, 4, 19],
    ]) {
        let model = random_model("pre", positions);
        let memory = model.encode(&ids(&[source]), None, &mut Mode::eval()).unwrap();
        let want = greedy(&model, &memory, LIMITS, true).unwrap().remove(0);
        let got = beam_search(&model, &memory, LIMITS, BeamOptions::default()).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].tokens, want, "{positions}: source {source:?}");
        let options = BeamOptions { beam_size: 4, num_return_sequences: 4, ..Default::default() };
        let wide = beam_search(&model, &memory, LIMITS, options).unwrap();
        assert!(wide.iter().all(|h| h.tokens.len() <= LIMITS.max_len) && wide.len() == 4);
        assert!(wide.windows(2).all(|w| w[0].score >= w[1].score), "best first: {wide:?}");
    }
}

#[test]
fn label_smoothing_is_the_formula() {
    let model = random_model("pre", "sinusoidal");
    let logits = Tensor::new(&[[[1.0f32, 2.0, 0.5], [0.0, -1.0, 3.0]]], &Device::Cpu).unwrap();
    let positions = Tensor::new(&[0u32, 1], &Device::Cpu).unwrap();
    let targets = Tensor::new(&[1u32, 0], &Device::Cpu).unwrap();
    let got =
        model.loss_sum(&logits, &positions, &targets, 0.1, &Mode::eval()).unwrap().to_scalar::<f32>().unwrap() as f64;
    let mut want = 0.0;
    for (row, target) in [([1.0f64, 2.0, 0.5], 1usize), ([0.0, -1.0, 3.0], 0)] {
        let lse = row.iter().map(|x| x.exp()).sum::<f64>().ln();
        let log_p: Vec<f64> = row.iter().map(|x| x - lse).collect();
        want += 0.9 * -log_p[target] + 0.1 * -log_p.iter().sum::<f64>() / 3.0;
    }
    assert!((got - want).abs() < 1e-5, "{got} vs {want}");
}

/// Writes a copy task (train.tsv, val.tsv) into `dir` and returns its config, run in `dir/run`.
fn copy_task(dir: &std::path::Path, extra: &[&str]) -> Config {
    let mut rng = taper::rng::Rng::new(5);
    // Four or five one-letter "words" from a-h, "a c h b": enough words for BLEU's 4-grams.
    let mut word = || -> String {
        let words: Vec<String> =
            (0..4 + rng.below(2)).map(|_| ((b'a' + rng.below(8) as u8) as char).to_string()).collect();
        words.join(" ")
    };
    let mut write = |name: &str, n: usize| {
        let rows: String = (0..n).map(|_| word()).map(|w| format!("{w}\t{w}\n")).collect();
        std::fs::write(dir.join(name), format!("source\ttarget\n{rows}")).unwrap();
    };
    write("train.tsv", 2000);
    write("val.tsv", 100);
    let text = format!(
        r#"
[model]
arch = "encoder-decoder"
n_layer = 2
n_head = 4
d_model = 64
block_size = 10
positions = "sinusoidal"
scale_embeddings = true
init = "xavier"
[task]
kind = "seq2seq"
[data]
path = "{dir}/train.tsv"
val_path = "{dir}/val.tsv"
[optim]
lr = 3e-3
[schedule]
warmup_steps = 30
[train]
steps = 300
batch_size = 32
eval_every = 300
device = "cpu"
[checkpoint]
dir = "{dir}/run"
every = 0
best_metric = "exact_match"
"#,
        dir = dir.display()
    );
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    Config::from_toml_str(&text, &extra).unwrap()
}

#[test]
fn a_tiny_model_learns_to_copy() {
    let dir = tempfile::tempdir().unwrap();
    let summary = train(copy_task(dir.path(), &[]), &TrainOptions { quiet: true, ..Default::default() }).unwrap();
    let metrics = std::fs::read_to_string(dir.path().join("run/metrics.jsonl")).unwrap();
    let last: serde_json::Value =
        serde_json::from_str(metrics.lines().rev().find(|l| l.contains("exact_match")).unwrap()).unwrap();
    eprintln!("copy task after {} steps: {last}", summary.steps);
    assert!(last["exact_match"].as_f64().unwrap() >= 0.95, "{last}");
    assert!(last["bleu"].as_f64().unwrap() >= 90.0, "{last}");
    // The CLI side: generate with beams, and eval, on the trained run.
    let trained = taper::trained::TrainedSeq2Seq::load(&dir.path().join("run"), "best", "cpu").unwrap();
    let inputs = vec!["a b c d".to_string(), "h g f e a".to_string()];
    for beam_size in [1, 3] {
        let options = BeamOptions { beam_size, ..Default::default() };
        let out = trained.translate(&inputs, options, Default::default()).unwrap();
        assert_eq!(out, inputs.iter().map(|i| vec![i.clone()]).collect::<Vec<_>>(), "beam size {beam_size}");
    }
    let eval = trained.evaluate(&dir.path().join("val.tsv")).unwrap();
    assert!((eval["exact_match"] - last["exact_match"].as_f64().unwrap()).abs() < 1e-9, "{eval:?}");
    // A length penalty that is not a finite number is refused by name.
    let run = dir.path().join("run");
    for bad in ["NaN", "inf", "-inf"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_taper"))
            .args(["generate", run.to_str().unwrap(), "--input", "a b", "--length-penalty", bad])
            .env_remove("RUST_BACKTRACE")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success()
                && err.contains("length penalty must be a finite number")
                && err.contains("--length-penalty"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn seq2seq_config_errors_name_the_key() {
    let base = toml::to_string(&model_config("pre", "sinusoidal")).unwrap();
    for (set, expected) in [
        ("model.arch=decoder-only", "seq2seq needs encoder-decoder"),
        ("task.label_smoothing=1.0", "task.label_smoothing"),
        ("task.max_target_len=40", "task.max_target_len"),
        ("checkpoint.best_metric=accuracy", "bleu"),
    ] {
        let err = format!("{:#}", Config::from_toml_str(&base, &[set.to_string()]).unwrap_err());
        assert!(err.contains(expected), "--set {set}: {err}");
    }
}

#[test]
fn a_resumed_seq2seq_run_equals_the_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let extra = [
        "train.steps=16",
        "schedule.warmup_steps=4",
        "train.log_every=1",
        "train.eval_every=8",
        "checkpoint.every=8",
        "model.dropout=0.1",
    ];
    let whole = train(copy_task(dir.path(), &extra), &TrainOptions { quiet: true, ..Default::default() }).unwrap();
    let mut cfg = copy_task(dir.path(), &extra);
    cfg.checkpoint.dir = Some(dir.path().join("b"));
    train(cfg.clone(), &TrainOptions { quiet: true, stop_after: Some(12), ..Default::default() }).unwrap();
    let resumed = train(cfg, &TrainOptions { quiet: true, resume: true, ..Default::default() }).unwrap();
    assert_eq!(resumed.losses.first().unwrap().0, 9, "resumed from the step-8 checkpoint");
    for (step, loss) in &resumed.losses {
        let want = whole.losses.iter().find(|(s, _)| s == step).unwrap().1;
        assert!((loss - want).abs() < 1e-5, "step {step}: resumed {loss} vs uninterrupted {want}");
    }
}

#[test]
fn fused_and_composed_seq2seq_models_train_alike() {
    // Padded sources, cross-attention and dropout, through the CPU kernels and candle's ops.
    let dir = tempfile::tempdir().unwrap();
    let run = |kernels: &str| {
        let kernels = format!("model.kernels={kernels}");
        let extra = [
            "train.steps=12",
            "schedule.warmup_steps=4",
            "train.log_every=1",
            "train.eval_every=0",
            "model.dropout=0.1",
            &kernels,
        ];
        let mut cfg = copy_task(dir.path(), &extra);
        cfg.checkpoint.dir = Some(dir.path().join(kernels));
        train(cfg, &TrainOptions { quiet: true, ..Default::default() }).unwrap().losses
    };
    let (fused, composed) = (run("fused"), run("composed"));
    assert_eq!(fused.len(), 12);
    for ((step, a), (_, b)) in fused.iter().zip(&composed) {
        assert!((a - b).abs() < 1e-4, "step {step}: fused {a} vs composed {b}");
    }
}

#[test]
fn diagnostics_cover_both_stacks() {
    let dir = tempfile::tempdir().unwrap();
    let extra = ["train.steps=4", "schedule.warmup_steps=2", "train.diagnostics_every=2", "train.eval_every=0"];
    train(copy_task(dir.path(), &extra), &TrainOptions { quiet: true, ..Default::default() }).unwrap();
    let records = taper::train::metrics::read_metrics(&dir.path().join("run/metrics.jsonl")).unwrap();
    let diagnostics: Vec<_> = records.iter().filter_map(|r| r.get("diagnostics")).collect();
    assert_eq!(diagnostics.len(), 2, "steps 0 and 2");
    let d = diagnostics[0];
    for layer in ["encoder.blocks.0", "encoder.blocks.1.attn", "decoder.blocks.1", "decoder.blocks.0.cross_attn"] {
        assert!(d["grad_norm"][layer].as_f64().is_some_and(|v| v > 0.0), "grad_norm {layer}: {d}");
    }
    assert!(d["update_ratio"]["decoder.blocks.1"].as_f64().is_some_and(|v| v > 0.0), "{d}");
    for norm in ["encoder.blocks.0.ln_1", "encoder.blocks.1.ln_2", "decoder.blocks.0.ln_cross", "decoder.blocks.1.ln_2"]
    {
        assert!(d["residual_rms"][norm].as_f64().is_some_and(|v| v > 0.0), "residual_rms {norm}: {d}");
    }
}
