//! Loss scaling for f16 (issue 19, part 3): the dynamic scale halves on an overflow and grows
//! after its interval, a skipped step leaves weights and moments exactly as they were, an f16
//! run recovers from an absurd initial scale and learns, and it resumes exactly.

mod common;

use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use taper::config::{Kernels, OptimConfig};
use taper::optim::{AdamW, Gate, LossScaler};
use taper::train::{train, TrainOptions};

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_dtype(DType::F32).unwrap().to_vec1().unwrap()
}

#[test]
fn the_dynamic_scale_halves_on_an_overflow_and_doubles_after_its_interval() {
    let cpu = Device::Cpu;
    let mut scaler = LossScaler::new(1024.0, true, 3, &cpu).unwrap();
    // (scaled norm, expected scale after, good steps after, skipped after, applied, multiplier)
    let inf = f32::INFINITY;
    let cases = [
        (2048.0, 1024.0, 1.0, 0.0, true, 1.0 / 1024.0),
        (inf, 512.0, 0.0, 1.0, false, 0.0),
        (512.0, 512.0, 1.0, 1.0, true, 1.0 / 512.0),
        (512.0, 512.0, 2.0, 1.0, true, 1.0 / 512.0),
        (512.0, 1024.0, 0.0, 1.0, true, 1.0 / 512.0),
        (f32::NAN, 512.0, 0.0, 2.0, false, 0.0),
    ];
    for (i, (norm, scale, good, skipped, applied, multiplier)) in cases.into_iter().enumerate() {
        let before = values(&scaler.scale().unwrap())[0];
        let out = scaler.unscale(&Tensor::new(norm, &cpu).unwrap(), None, i + 1).unwrap();
        assert_eq!(values(scaler.state()), vec![scale, good, skipped], "state after step {}", i + 1);
        assert_eq!(values(&out.gate.apply.to_dtype(DType::F32).unwrap())[0] == 1.0, applied, "step {}", i + 1);
        assert_eq!(values(&out.gate.count)[0], (i + 1) as f32 - skipped, "applied steps after step {}", i + 1);
        assert_eq!(values(&out.multiplier)[0], multiplier, "multiplier of step {}", i + 1);
        if applied {
            assert_eq!(values(&out.norm)[0], norm / before, "true norm of step {}", i + 1);
        }
    }
    // Clipping acts on the true norm: 8 over a max of 2 scales by 1/4 on top of 1/scale.
    let mut scaler = LossScaler::new(4.0, false, 3, &cpu).unwrap();
    let out = scaler.unscale(&Tensor::new(32f32, &cpu).unwrap(), Some(2.0), 1).unwrap();
    assert!((values(&out.multiplier)[0] - 0.25 * 0.25).abs() < 1e-6);
    assert_eq!(values(scaler.state()), vec![4.0, 0.0, 0.0], "a fixed scale stays");
}

/// Two parameters (a matrix, decayed, and a vector), and an optimizer over them.
fn optimizer(kernels: Kernels) -> (AdamW, Vec<Var>) {
    let cpu = Device::Cpu;
    let w = Var::from_tensor(&Tensor::arange(0f32, 12.0, &cpu).unwrap().reshape((3, 4)).unwrap()).unwrap();
    let b = Var::from_tensor(&Tensor::new(&[0.5f32, -0.25, 1.0], &cpu).unwrap()).unwrap();
    let optim: OptimConfig = toml::from_str("lr = 1e-2\nweight_decay = 0.1").unwrap();
    let mut opt = AdamW::new(vec![("b".into(), b.clone()), ("w".into(), w.clone())], &optim, &[]).unwrap();
    opt.use_kernels(kernels);
    (opt, vec![b, w])
}

fn snapshot(opt: &AdamW, vars: &[Var]) -> Vec<Vec<f32>> {
    let state = opt.state_tensors().unwrap();
    let mut names: Vec<_> = state.keys().cloned().collect();
    names.sort();
    vars.iter().map(|v| values(v.as_tensor())).chain(names.iter().map(|n| values(&state[n]))).collect()
}

fn gate(apply: bool, count: f32) -> Gate {
    let cpu = Device::Cpu;
    Gate { apply: Tensor::new(apply as u8, &cpu).unwrap(), count: Tensor::new(count, &cpu).unwrap() }
}

#[test]
fn a_skipped_step_changes_nothing_and_an_applied_one_is_the_plain_step() {
    let cpu = Device::Cpu;
    let grads = |scale: f32| {
        vec![
            Some(Tensor::new(&[0.1f32 * scale, 0.2 * scale, -0.3 * scale], &cpu).unwrap()),
            Some((Tensor::ones((3, 4), DType::F32, &cpu).unwrap() * (0.05 * scale as f64)).unwrap()),
        ]
    };
    let overflowed = vec![
        Some(Tensor::new(&[f32::INFINITY, 0.0, f32::NAN], &cpu).unwrap()),
        Some(Tensor::ones((3, 4), DType::F32, &cpu).unwrap()),
    ];
    for kernels in [Kernels::Fused, Kernels::Composed] {
        let (mut gated, gated_vars) = optimizer(kernels);
        let (mut plain, plain_vars) = optimizer(kernels);
        let inverse = Tensor::new(1f32 / 8.0, &cpu).unwrap();
        for step in 1..=3 {
            gated.step(&grads(8.0), 1e-2, Some(&inverse), Some(&gate(true, step as f32))).unwrap();
            plain.step(&grads(1.0), 1e-2, None, None).unwrap();
            let before = snapshot(&gated, &gated_vars);
            let zero = Tensor::new(0f32, &cpu).unwrap();
            gated.step(&overflowed, 1e-2, Some(&zero), Some(&gate(false, step as f32))).unwrap();
            assert_eq!(snapshot(&gated, &gated_vars), before, "{kernels:?}: a skipped step moved something");
        }
        // Same arithmetic up to the bias correction's form (powi on the host, exp(t ln b) on
        // the device for the composed path).
        for (a, b) in snapshot(&gated, &gated_vars).iter().zip(snapshot(&plain, &plain_vars)) {
            for (x, y) in a.iter().zip(&b) {
                assert!((x - y).abs() <= 1e-6 * y.abs().max(1.0), "{kernels:?}: gated {x} vs plain {y}");
            }
        }
    }
}

fn quiet() -> TrainOptions {
    TrainOptions { quiet: true, ..Default::default() }
}

/// metrics.jsonl's training records: (step, loss, loss_scale, skipped_steps).
fn scaling(run: &Path) -> Vec<(u64, f64, f64, u64)> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let records = text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap());
    records
        .filter(|r| r.get("loss_scale").is_some())
        .map(|r| {
            let number = |k: &str| r[k].as_f64().unwrap();
            (r["step"].as_u64().unwrap(), number("loss"), number("loss_scale"), r["skipped_steps"].as_u64().unwrap())
        })
        .collect()
}

#[test]
fn an_f16_run_backs_off_an_overflowing_scale_learns_and_resumes_exactly() {
    let settings = "train.dtype=f16 train.loss_scale_init=1099511627776 train.loss_scale_growth_interval=10 \
                    train.steps=120 checkpoint.every=40 model.dropout=0.1";
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path(), &common::pattern_corpus(600));
    let summary = train(common::tiny_config(dir.path(), &corpus, settings), &quiet()).unwrap();
    let records = scaling(&dir.path().join("run"));
    assert_eq!(records.len(), 120, "every step logs its scale");
    let (first, last) = (records[0], records[119]);
    assert_eq!((first.2, first.3), (2f64.powi(39), 1), "the first step overflows (2^40): skipped, scale halved");
    assert!(last.3 >= 10, "{} skipped steps: 2^40 needs many halvings to fit f16", last.3);
    assert!(last.3 < 60, "{} of 120 steps skipped", last.3);
    assert!(records.windows(2).any(|w| w[1].2 == 2.0 * w[0].2), "the scale grows after 10 good steps");
    assert!(last.1 < 1.6 && first.1 > 2.5, "f16 loss fell only from {} to {}", first.1, last.1);
    assert!(summary.losses.iter().all(|(_, l)| l.is_finite()));

    // Stopped after step 57 (last checkpoint: step 40), resumed: the same losses and scales.
    let dir_b = tempfile::tempdir().unwrap();
    let corpus_b = common::write_corpus(dir_b.path(), &common::pattern_corpus(600));
    let cfg = common::tiny_config(dir_b.path(), &corpus_b, settings);
    train(cfg.clone(), &TrainOptions { quiet: true, stop_after: Some(57), ..Default::default() }).unwrap();
    train(cfg, &TrainOptions { quiet: true, resume: true, ..Default::default() }).unwrap();
    let resumed: Vec<_> = scaling(&dir_b.path().join("run")).into_iter().filter(|r| r.0 > 57).collect();
    let tail: Vec<_> = records.into_iter().filter(|r| r.0 > 57).collect();
    assert_eq!(resumed, tail, "resumed == uninterrupted: loss, scale and skipped count at every step");
}

#[test]
fn loss_scale_settings_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path(), &common::pattern_corpus(50));
    let base = |extra: &str| {
        let args = common::overrides(extra);
        let cfg = format!(
            "[model]\nn_layer = 1\nn_head = 1\nd_model = 8\nblock_size = 8\n[data]\npath = \"{}\"\n\
             [optim]\nlr = 1e-3\n[train]\nsteps = 2\nbatch_size = 2\n",
            corpus.display()
        );
        taper::config::Config::from_toml_str(&cfg, &args).map(|c| c.train.loss_scale()).map_err(|e| format!("{e:#}"))
    };
    use taper::config::LossScale;
    assert_eq!(base("").unwrap(), LossScale::Off, "f32: no scaling");
    assert_eq!(base("train.dtype=bf16").unwrap(), LossScale::Off, "bf16 has f32's range");
    assert_eq!(base("train.dtype=f16").unwrap(), LossScale::Dynamic, "f16 scales by default");
    assert_eq!(base("train.dtype=f16 train.loss_scale=none").unwrap(), LossScale::Off);
    assert_eq!(base("train.loss_scale=128").unwrap(), LossScale::Fixed(128.0));
    let err = base("train.loss_scale=auto").unwrap_err();
    assert!(err.contains("loss_scale") && err.contains("\"dynamic\""), "{err}");
    let err = base("train.loss_scale=-2").unwrap_err();
    assert!(err.contains("`train.loss_scale` must be a positive number"), "{err}");
    let err = base("train.dtype=f16 train.loss_scale_init=0").unwrap_err();
    assert!(err.contains("`train.loss_scale_init`"), "{err}");
    let err = base("train.loss_scale_growth_interval=0").unwrap_err();
    assert!(err.contains("`train.loss_scale_growth_interval` must be at least 1"), "{err}");
}
