//! End-to-end training through the library: loss falls, runs repeat exactly, resume equals the
//! uninterrupted run, checkpoints refuse a model of another shape, bad corpora are clear errors.

mod common;

use taper::train::{train, TrainOptions};

fn quiet() -> TrainOptions {
    TrainOptions { quiet: true, ..Default::default() }
}

#[test]
fn tiny_gpt_loss_falls_well_below_its_start_pre_and_post() {
    for norm in ["pre", "post"] {
        let dir = tempfile::tempdir().unwrap();
        let corpus = common::write_corpus(dir.path(), &common::pattern_corpus(600));
        let cfg = common::tiny_config(
            dir.path(),
            &corpus,
            &format!("model.norm={norm} train.steps=150 train.eval_every=150"),
        );
        let summary = train(cfg, &quiet()).unwrap();
        let first = summary.losses.first().unwrap().1;
        let last = summary.losses.last().unwrap().1;
        // Uniform over the ~25 characters is ln(25) = 3.2; the pattern is mostly predictable.
        assert!(first > 2.5, "{norm}: start {first}");
        assert!(last < 1.2, "{norm}: loss only fell from {first} to {last}");
        assert!(summary.val_loss.unwrap() < 1.3, "{norm}: val loss {:?}", summary.val_loss);
    }
}

#[test]
fn same_config_same_losses() {
    let losses = |sub: &str| {
        let dir = tempfile::tempdir().unwrap();
        let corpus = common::write_corpus(dir.path(), &common::pattern_corpus(300));
        let _ = sub;
        let cfg = common::tiny_config(dir.path(), &corpus, "train.steps=12 model.dropout=0.1");
        train(cfg, &quiet()).unwrap().losses
    };
    assert_eq!(losses("a"), losses("b"));
}

#[test]
fn resume_continues_exactly_like_the_uninterrupted_run() {
    let settings = "train.steps=30 checkpoint.every=10 model.dropout=0.1 train.grad_accum=2";
    let dir_a = tempfile::tempdir().unwrap();
    let corpus_a = common::write_corpus(dir_a.path(), &common::pattern_corpus(300));
    let full = train(common::tiny_config(dir_a.path(), &corpus_a, settings), &quiet()).unwrap();

    let dir_b = tempfile::tempdir().unwrap();
    let corpus_b = common::write_corpus(dir_b.path(), &common::pattern_corpus(300));
    let cfg = common::tiny_config(dir_b.path(), &corpus_b, settings);
    // "Killed" after step 17: the last checkpoint is step 10, steps 11-17 are lost.
    train(cfg.clone(), &TrainOptions { quiet: true, stop_after: Some(17), ..Default::default() }).unwrap();
    let resumed = train(cfg, &TrainOptions { quiet: true, resume: true, ..Default::default() }).unwrap();

    let tail: Vec<_> = full.losses.iter().filter(|(s, _)| *s > 10).collect();
    assert_eq!(resumed.losses.len(), tail.len());
    for ((s1, l1), (s2, l2)) in resumed.losses.iter().zip(tail) {
        assert_eq!(s1, s2);
        assert!((l1 - l2).abs() <= 1e-5, "step {s1}: resumed {l1} vs uninterrupted {l2}");
    }
    // metrics.jsonl holds each step once: the lines of the lost steps 11-17 were dropped.
    let records = taper::train::metrics::read_metrics(&dir_b.path().join("run/metrics.jsonl")).unwrap();
    let steps: Vec<u64> =
        records.iter().filter(|r| r.get("loss").is_some()).map(|r| r["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, (1..=30).collect::<Vec<_>>());
}

#[test]
fn checkpoints_keep_the_last_k_and_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path(), &common::pattern_corpus(300));
    let cfg = common::tiny_config(dir.path(), &corpus, "train.steps=20 checkpoint.every=5 checkpoint.keep_last=2");
    train(cfg, &quiet()).unwrap();
    let run = dir.path().join("run");
    let steps: Vec<usize> = taper::checkpoint::list_checkpoints(&run).unwrap().into_iter().map(|(s, _)| s).collect();
    assert_eq!(steps, vec![15, 20]);
    let trained = taper::trained::TrainedGpt::load(&run, "latest", "cpu").unwrap();
    let saved =
        taper::checkpoint::load_tensors(&trained.checkpoint.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    assert!(saved.contains_key("tok_emb.weight") && saved.contains_key("blocks.1.mlp.fc2.weight"));
    // No temporary files are left behind.
    for entry in std::fs::read_dir(run.join("checkpoints")).unwrap() {
        assert!(!entry.unwrap().file_name().to_string_lossy().ends_with(".tmp"));
    }
}

#[test]
fn resume_with_another_shape_names_the_tensor_and_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path(), &common::pattern_corpus(300));
    let cfg = common::tiny_config(dir.path(), &corpus, "train.steps=5");
    train(cfg, &quiet()).unwrap();
    let cfg = common::tiny_config(dir.path(), &corpus, "train.steps=10 model.d_model=48");
    let err =
        format!("{:#}", train(cfg, &TrainOptions { quiet: true, resume: true, ..Default::default() }).unwrap_err());
    assert!(err.contains("blocks.0.attn.k_proj.bias") && err.contains("[32]") && err.contains("[48]"), "{err}");
}

#[test]
fn a_refused_resume_leaves_the_run_as_it_was() {
    // Issue 13, defect 1: the new settings were written to config.toml before the checkpoint
    // was checked against them, and the run no longer loaded.
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path(), &common::pattern_corpus(300));
    train(common::tiny_config(dir.path(), &corpus, "train.steps=8"), &quiet()).unwrap();
    let run = dir.path().join("run");
    let saved = std::fs::read_to_string(run.join("config.toml")).unwrap();
    let resume = TrainOptions { quiet: true, resume: true, ..Default::default() };
    for (set, expected) in [("train.steps=6", "already completed"), ("model.d_model=48", "blocks.0")] {
        let cfg = taper::run_dir::RunDir::new(&run).load_config(&[set.to_string()]).unwrap();
        let err = format!("{:#}", train(cfg, &resume).unwrap_err());
        assert!(err.contains(expected), "--set {set}: {err}");
        assert_eq!(std::fs::read_to_string(run.join("config.toml")).unwrap(), saved, "--set {set} changed config.toml");
    }
    taper::trained::TrainedGpt::load(&run, "latest", "cpu").unwrap();
    let cfg = taper::run_dir::RunDir::new(&run).load_config(&["train.steps=10".to_string()]).unwrap();
    assert_eq!(train(cfg, &resume).unwrap().steps, 10, "and it still resumes");
}

#[test]
fn a_fresh_run_refuses_to_overwrite_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path(), &common::pattern_corpus(300));
    let cfg = common::tiny_config(dir.path(), &corpus, "train.steps=6");
    train(cfg.clone(), &quiet()).unwrap();
    let err = format!("{:#}", train(cfg, &quiet()).unwrap_err());
    assert!(err.contains("--resume"), "{err}");
}

#[test]
fn bad_corpora_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.txt");
    let err = format!("{:#}", train(common::tiny_config(dir.path(), &missing, ""), &quiet()).unwrap_err());
    assert!(err.contains("nope.txt") && err.contains("does not exist"), "{err}");

    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "  \n").unwrap();
    let err = format!("{:#}", train(common::tiny_config(dir.path(), &empty, ""), &quiet()).unwrap_err());
    assert!(err.contains("empty.txt") && err.contains("empty"), "{err}");

    let short = dir.path().join("short.txt");
    std::fs::write(&short, "to be or not to be, that is the question").unwrap();
    let err = format!("{:#}", train(common::tiny_config(dir.path(), &short, ""), &quiet()).unwrap_err());
    assert!(err.contains("short.txt") && err.contains("block_size"), "{err}");
}

#[test]
fn nan_loss_stops_the_run_and_keeps_earlier_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path(), &common::pattern_corpus(300));
    let cfg = common::tiny_config(dir.path(), &corpus, "train.steps=5 checkpoint.every=2");
    train(cfg, &quiet()).unwrap();
    // An absurd learning rate without clipping blows the weights up.
    let cfg = common::tiny_config(
        dir.path(),
        &corpus,
        "train.steps=40 checkpoint.every=2 optim.lr=1e12 schedule.min_lr=0 optim.grad_clip=0",
    );
    let err =
        format!("{:#}", train(cfg, &TrainOptions { quiet: true, resume: true, ..Default::default() }).unwrap_err());
    assert!(err.contains("diverged"), "{err}");
    let steps = taper::checkpoint::list_checkpoints(&dir.path().join("run")).unwrap();
    assert!(!steps.is_empty(), "earlier checkpoints survive");
    taper::trained::TrainedGpt::load(&dir.path().join("run"), "latest", "cpu").unwrap();
}

#[test]
fn bf16_compute_trains() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path(), &common::pattern_corpus(300));
    let cfg = common::tiny_config(dir.path(), &corpus, "train.steps=40 train.dtype=bf16");
    let summary = train(cfg, &quiet()).unwrap();
    let first = summary.losses.first().unwrap().1;
    let last = summary.losses.last().unwrap().1;
    assert!(last.is_finite() && last < first - 0.5, "bf16: {first} -> {last}");
    // Master weights stay f32.
    let saved = taper::checkpoint::load_tensors(
        &taper::checkpoint::resolve_checkpoint(&dir.path().join("run"), "latest").unwrap().join("model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert_eq!(saved["tok_emb.weight"].dtype(), candle_core::DType::F32);
}

/// A fresh run into a directory that already holds a run's file names refuses, naming the
/// file, and leaves it as it was: a user's config.toml, a killed run's metrics.jsonl without a
/// checkpoint. `overwrite` starts afresh there.
#[test]
fn a_fresh_run_never_overwrites_files_already_in_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path(), &common::pattern_corpus(300));
    let cfg = common::tiny_config(dir.path(), &corpus, "train.steps=6");
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    for (file, text) in [("config.toml", "# my notes\n"), ("metrics.jsonl", "{\"step\":1,\"loss\":3.0}\n")] {
        let _ = std::fs::remove_file(run.join("config.toml"));
        std::fs::write(run.join(file), text).unwrap();
        let err = format!("{:#}", train(cfg.clone(), &quiet()).unwrap_err());
        assert!(err.contains(file) && err.contains("--overwrite"), "{err}");
        assert_eq!(std::fs::read_to_string(run.join(file)).unwrap(), text, "{file} left as it was");
    }
    let summary = train(cfg, &TrainOptions { overwrite: true, ..quiet() }).unwrap();
    assert_eq!(summary.steps, 6);
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 6, "the old lines are gone: {metrics}");
}

/// What a kill or a full disk leaves (a checkpoint write or a pruning cut short, a temporary
/// run file) is removed when the run starts again; the intact checkpoints are kept.
#[test]
fn leftovers_of_a_kill_are_cleaned_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path(), &common::pattern_corpus(300));
    let cfg = common::tiny_config(dir.path(), &corpus, "train.steps=12 checkpoint.every=6");
    train(cfg.clone(), &TrainOptions { quiet: true, stop_after: Some(6), ..Default::default() }).unwrap();
    let run = dir.path().join("run");
    let leftovers = [run.join("checkpoints/step-00000007.tmp"), run.join("checkpoints/step-00000003.trash")];
    for path in &leftovers {
        std::fs::create_dir_all(path).unwrap();
        std::fs::write(path.join("model.safetensors"), b"half").unwrap();
    }
    std::fs::write(run.join("metrics.jsonl.tmp"), b"{").unwrap();
    // A metrics line cut short by the kill.
    let mut metrics = std::fs::OpenOptions::new().append(true).open(run.join("metrics.jsonl")).unwrap();
    std::io::Write::write_all(&mut metrics, b"{\"step\": 7, \"lo").unwrap();
    train(cfg, &TrainOptions { quiet: true, resume: true, ..Default::default() }).unwrap();
    for path in leftovers.iter().chain([&run.join("metrics.jsonl.tmp")]) {
        assert!(!path.exists(), "{} is left", path.display());
    }
    let kept: Vec<usize> = taper::checkpoint::list_checkpoints(&run).unwrap().into_iter().map(|(s, _)| s).collect();
    assert_eq!(kept, vec![6, 12]);
    let records = taper::train::metrics::read_metrics(&run.join("metrics.jsonl")).expect("the cut line is dropped");
    assert_eq!(records.iter().filter(|r| r.get("loss").is_some()).count(), 12);
}

/// A damaged newest checkpoint (garbage in its weights) is found by its checksum: resume passes
/// over it to the newest intact one and continues exactly; asking for it by name is an error
/// that says it is damaged.
#[test]
fn resume_skips_a_damaged_checkpoint() {
    let settings = "train.steps=16 checkpoint.every=4 checkpoint.keep_last=5";
    let full_dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(full_dir.path(), &common::pattern_corpus(300));
    let full = train(common::tiny_config(full_dir.path(), &corpus, settings), &quiet()).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path(), &common::pattern_corpus(300));
    let cfg = common::tiny_config(dir.path(), &corpus, settings);
    train(cfg.clone(), &TrainOptions { stop_after: Some(12), ..quiet() }).unwrap();
    let weights = dir.path().join("run/checkpoints/step-00000012/model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff; // one flipped byte inside a tensor: the file still parses
    std::fs::write(&weights, bytes).unwrap();

    let named = TrainOptions { resume: true, checkpoint: Some("step-12".into()), ..quiet() };
    let err = format!("{:#}", train(cfg.clone(), &named).unwrap_err());
    assert!(err.contains("damaged") && err.contains("model.safetensors") && err.contains("--checkpoint"), "{err}");
    let resumed = train(cfg, &TrainOptions { resume: true, ..quiet() }).unwrap();
    let tail: Vec<(usize, f64)> = full.losses.iter().copied().filter(|(s, _)| *s > 8).collect();
    assert_eq!(resumed.losses, tail, "resumed from step 8, exactly as the uninterrupted run");
}

#[test]
fn mfu_is_tokens_per_second_times_flops_per_token_over_the_measured_peak() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path(), &common::pattern_corpus(300));
    let cfg = common::tiny_config(dir.path(), &corpus, "train.steps=12 train.log_every=4");
    let (layers, context, width) = (cfg.model.n_layer, cfg.model.block_size, cfg.model.d_model);
    assert!(cfg.model.tie_embeddings, "the count below takes the head tied to the token table");
    let summary = train(cfg, &quiet()).unwrap();
    let run = &summary.run_dir;
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    let flops = written["flops_per_token"].as_f64().unwrap();
    // Every weight trains: PaLM's 6N + 12 L T d, N without the learned positions' table (looked
    // up, not multiplied) but with the token table (the tied head multiplies by it).
    let weights = summary.params - context * width;
    assert_eq!(flops, 6.0 * weights as f64 + 12.0 * (layers * context * width) as f64);
    let peak = written["peak_flops"].as_f64().unwrap();
    assert!(peak > 1e8 && peak.is_finite(), "{written}");
    assert!(written["peak_source"].as_str().unwrap().starts_with("GEMM probe on this CPU, f32"), "{written}");
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs();
    let mfu = written["mfu"].as_f64().unwrap();
    assert!(close(mfu, written["tokens_per_s"].as_f64().unwrap() * flops / peak), "{written}");
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let logged: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let speeds: Vec<&serde_json::Value> = logged.iter().filter(|r| r.get("tokens_per_s").is_some()).collect();
    assert_eq!(speeds.len(), 3, "{text}");
    for record in speeds {
        assert_eq!(record["flops_per_token"].as_f64().unwrap(), flops, "{record}");
        let expected = record["tokens_per_s"].as_f64().unwrap() * flops / peak;
        assert!(close(record["mfu"].as_f64().unwrap(), expected), "{record}");
    }
}
