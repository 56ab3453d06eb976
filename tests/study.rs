//! Pre-LN / post-LN studies: sweeps, diagnostics, divergence handling and `compare`.

mod common;

use std::path::Path;

use serde_json::Value;
use taper::sweep::{expand, run_sweep};
use taper::train::metrics::read_metrics;

fn write_config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let corpus = common::write_corpus(dir, &common::pattern_corpus(300));
    let cfg = common::tiny_config(dir, &corpus, extra);
    let path = dir.join("study.toml");
    std::fs::write(&path, cfg.to_toml_string().unwrap()).unwrap();
    path
}

fn diagnostics(run: &Path) -> Vec<Value> {
    read_metrics(&run.join("metrics.jsonl")).unwrap().into_iter().filter(|r| r.get("diagnostics").is_some()).collect()
}

#[test]
fn grid_expansion_and_run_names() {
    let runs = expand(&["model.norm=pre,post".into(), "schedule.warmup_steps=0,100".into()], &[1, 2]).unwrap();
    let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names.len(), 8);
    assert_eq!(names[0], "norm-pre_warmup_steps-0_seed-1");
    assert_eq!(names[7], "norm-post_warmup_steps-100_seed-2");
    assert_eq!(runs[3].overrides, vec!["model.norm=pre", "schedule.warmup_steps=100", "train.seed=2"]);
    // Keys that share a last part keep their section in the name.
    let clash = expand(&["optim.eps=1e-8".into(), "model.layer_norm_eps=1e-5".into(), "train.eps=3".into()], &[]);
    assert!(clash.is_ok());
    let both = expand(&["optim.lr=1e-3".into(), "schedule.lr=2".into()], &[]).unwrap();
    assert_eq!(both[0].name, "optim-lr-1e-3_schedule-lr-2");
    assert!(expand(&["model.norm".into()], &[]).is_err());
    assert!(expand(&[], &[]).is_err());
}

#[test]
fn paired_runs_share_initial_weights_and_batches_and_a_sweep_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "train.steps=12 train.diagnostics_every=4 schedule.warmup_steps=0");
    let out = dir.path().join("sweep");
    let runs = expand(&["schedule.warmup_steps=0,6".into(), "model.norm=pre,post".into()], &[]).unwrap();
    let outcomes = run_sweep(&config, &[], &runs, &out, true).unwrap();
    assert!(outcomes.iter().all(|o| o.status == "finished"), "{outcomes:?}");

    // Step 0's diagnostics are taken before the first update: warmup cannot have acted, so the
    // gradients and residual RMS of a warmup pair are equal iff the initial weights and the
    // first batch are.
    for norm in ["pre", "post"] {
        let a = diagnostics(&out.join(format!("warmup_steps-0_norm-{norm}")));
        let b = diagnostics(&out.join(format!("warmup_steps-6_norm-{norm}")));
        assert_eq!(a.len(), 3, "diagnostics at steps 0, 4, 8");
        for key in ["grad_norm", "residual_rms"] {
            assert_eq!(a[0]["diagnostics"][key], b[0]["diagnostics"][key], "{norm}: step-0 {key} differs");
        }
        assert_ne!(a[2], b[2], "{norm}: the schedules differ afterwards");
        let d = &a[0]["diagnostics"];
        for key in ["blocks.0", "blocks.0.attn", "blocks.1.mlp", "tok_emb"] {
            assert!(d["grad_norm"][key].as_f64().unwrap() > 0.0, "{key}");
        }
        assert!(d["update_ratio"]["blocks.1"].as_f64().unwrap() > 0.0);
        assert!(d["residual_rms"]["blocks.0.ln_1"].as_f64().unwrap() > 0.0);
        assert_eq!(d["residual_rms"].get("ln_f").is_some(), norm == "pre");
    }

    // Again: everything is skipped.
    let again = run_sweep(&config, &[], &runs, &out, true).unwrap();
    assert!(again.iter().all(|o| o.status == "skipped (finished before)"), "{again:?}");

    // An interrupted run (checkpoint at step 6, stopped at 9) is resumed and finishes.
    let extra = ["checkpoint.every=6".to_string()];
    let out2 = dir.path().join("sweep2");
    let one = expand(&["model.norm=post".into()], &[]).unwrap();
    let mut cfg = taper::config::Config::load(&config, &["checkpoint.every=6".into()]).unwrap();
    cfg.checkpoint.dir = Some(out2.join(&one[0].name));
    cfg.model.norm = taper::config::NormPlacement::Post;
    let opts = taper::train::TrainOptions { quiet: true, stop_after: Some(9), ..Default::default() };
    taper::train::train(cfg, &opts).unwrap();
    let resumed = run_sweep(&config, &extra, &one, &out2, true).unwrap();
    assert_eq!(resumed[0].status, "finished");
}

#[test]
fn diagnostics_off_writes_nothing_and_do_not_change_training() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path(), &common::pattern_corpus(300));
    let off = common::tiny_config(&dir.path().join("off"), &corpus, "train.steps=8");
    let on = common::tiny_config(&dir.path().join("on"), &corpus, "train.steps=8 train.diagnostics_every=2");
    let opts = taper::train::TrainOptions { quiet: true, ..Default::default() };
    let a = taper::train::train(off, &opts).unwrap();
    let b = taper::train::train(on, &opts).unwrap();
    assert_eq!(a.losses, b.losses);
    assert!(diagnostics(&dir.path().join("off/run")).is_empty());
    assert_eq!(diagnostics(&dir.path().join("on/run")).len(), 4);
}

#[test]
fn a_diverged_run_is_marked_and_the_sweep_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "train.steps=30 optim.grad_clip=0 schedule.warmup_steps=0 schedule.min_lr=0");
    let out = dir.path().join("sweep");
    // The first run blows up; the second trains.
    let runs = expand(&["optim.lr=1e9,1e-3".into()], &[]).unwrap();
    let outcomes = run_sweep(&config, &[], &runs, &out, true).unwrap();
    assert_eq!(outcomes[0].status, "diverged");
    assert_eq!(outcomes[1].status, "finished");
    let run = out.join(&outcomes[0].name);
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["status"], "diverged");
    let records = read_metrics(&run.join("metrics.jsonl")).unwrap();
    assert!(records.iter().any(|r| r.get("diverged") == Some(&Value::Bool(true))));
    // A diverged run is not retried.
    let again = run_sweep(&config, &[], &runs, &out, true).unwrap();
    assert_eq!(again[0].status, "skipped (diverged before)");
}

#[test]
fn loss_growing_past_the_factor_counts_as_divergence() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path(), &common::pattern_corpus(300));
    let cfg = common::tiny_config(
        dir.path(),
        &corpus,
        "train.steps=40 optim.lr=30 optim.grad_clip=0 schedule.warmup_steps=0 schedule.min_lr=0 train.divergence_factor=1.5",
    );
    let err = taper::train::train(cfg, &taper::train::TrainOptions { quiet: true, ..Default::default() }).unwrap_err();
    let diverged = err.downcast_ref::<taper::train::Diverged>().expect("a Diverged error");
    assert!(
        diverged.reason.contains("exceeds") || diverged.reason.contains("NaN") || diverged.reason.contains("inf"),
        "{}",
        diverged.reason
    );
}

/// A run directory as `compare` reads it, written by hand.
fn fixture_run(dir: &Path, name: &str, norm: &str, seed: u64, val: &[(u64, f64)], status: &str) -> std::path::PathBuf {
    let run = dir.join(name);
    std::fs::create_dir_all(&run).unwrap();
    let cfg = common::tiny_config(dir, &dir.join("c.txt"), &format!("model.norm={norm} train.seed={seed}"));
    std::fs::write(run.join("config.toml"), cfg.to_toml_string().unwrap()).unwrap();
    let mut metrics = String::new();
    for (i, (step, v)) in val.iter().enumerate() {
        metrics.push_str(&format!(
            "{{\"step\":{step},\"loss\":{},\"lr\":0.001,\"grad_norm\":1.0,\"tokens_per_s\":100.0}}\n",
            v + 0.1 * i as f64
        ));
        metrics.push_str(&format!("{{\"step\":{step},\"val_loss\":{v}}}\n"));
    }
    metrics.push_str("{\"step\":0,\"diagnostics\":{\"grad_norm\":{\"blocks.0\":2.0,\"blocks.1\":1.0},\"update_ratio\":{},\"residual_rms\":{\"blocks.0.ln_1\":1.0,\"blocks.1.ln_1\":2.0}}}\n");
    std::fs::write(run.join("metrics.jsonl"), metrics).unwrap();
    // pre-LN runs carry an mfu (0.2, 0.3 for seeds 1, 2); post-LN runs are from before it.
    let mfu = if norm == "pre" { format!(",\"mfu\":{}", 0.1 + 0.1 * seed as f64) } else { String::new() };
    let summary = format!("{{\"status\":\"{status}\",\"tokens_per_s\":1000.0{mfu}}}");
    std::fs::write(run.join("summary.json"), summary).unwrap();
    run
}

#[test]
fn compare_computes_the_table_and_writes_plots() {
    let dir = tempfile::tempdir().unwrap();
    let runs = vec![
        fixture_run(dir.path(), "pre1", "pre", 1, &[(10, 3.0), (20, 2.0)], "finished"),
        fixture_run(dir.path(), "pre2", "pre", 2, &[(10, 3.0), (20, 1.0)], "finished"),
        fixture_run(dir.path(), "post1", "post", 1, &[(10, 3.0), (20, 2.8)], "finished"),
        fixture_run(dir.path(), "post2", "post", 2, &[(10, 4.0)], "diverged"),
    ];
    let out = dir.path().join("report");
    let table = taper::compare::compare(&runs, &out, Some(2.5)).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    let post = lines.iter().find(|l| l.contains("norm=post")).unwrap();
    let pre = lines.iter().find(|l| l.contains("norm=pre")).unwrap();
    // pre: final val 2.0 and 1.0 -> 1.5 ± 0.5; both reach 2.5 at step 20.
    assert!(pre.contains("1.5000 ± 0.5000") && pre.contains("20 (2/2)"), "{pre}");
    // post: one diverged run; the other ends at 2.8, never reaching 2.5.
    assert!(post.contains("| 2.8000 |") && post.contains("never (0/2)") && post.contains("| 1 |"), "{post}");
    // The mean mfu of the runs that report one; "-" where none does.
    assert!(pre.ends_with("| 1000 | 25.0% |") && post.ends_with("| 1000 | - |"), "{pre}\n{post}");
    for svg in
        ["train_loss.svg", "val_loss.svg", "grad_norm_init.svg", "residual_rms_last.svg", "grad_norm_over_time.svg"]
    {
        let text = std::fs::read_to_string(out.join(svg)).unwrap();
        assert!(text.starts_with("<svg") && text.contains("<polyline"), "{svg}");
    }
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("![train_loss.svg](train_loss.svg)"));
}

#[test]
fn inspect_init_measures_every_block() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path(), &common::pattern_corpus(300));
    let cfg = common::tiny_config(dir.path(), &corpus, "");
    let profiles = taper::inspect::inspect_init(&cfg, &[2, 4]).unwrap();
    assert_eq!(profiles.len(), 4);
    for p in &profiles {
        assert_eq!(p.ffn_grad_norms.len(), p.depth);
        assert!(p.ffn_grad_norms.iter().all(|g| *g > 0.0 && g.is_finite()));
    }
    taper::inspect::write_report(&profiles, &dir.path().join("r")).unwrap();
    assert!(std::fs::read_to_string(dir.path().join("r/inspect-init.svg")).unwrap().contains("<polyline"));
}

/// A run killed between its last checkpoint and its summary.json is recognised as finished
/// (summarised from its checkpoint and metrics) and the sweep goes on to the runs after it.
#[test]
fn a_sweep_gets_past_a_run_killed_before_its_summary() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "train.steps=6 schedule.warmup_steps=0");
    let out = dir.path().join("sweep");
    let runs = expand(&["model.norm=pre,post".into()], &[]).unwrap();
    run_sweep(&config, &[], &runs, &out, true).unwrap();
    let (first, second) = (out.join(&runs[0].name), out.join(&runs[1].name));
    let summary = |run: &Path| -> Value {
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap()
    };
    let before = summary(&first);
    let metrics = std::fs::read_to_string(first.join("metrics.jsonl")).unwrap();
    std::fs::remove_file(first.join("summary.json")).unwrap();
    std::fs::remove_dir_all(&second).unwrap();

    let again = run_sweep(&config, &[], &runs, &out, true).unwrap();
    assert!(again.iter().all(|o| o.status == "finished"), "{again:?}");
    let after = summary(&first);
    assert_eq!((&after["status"], &after["steps"]), (&before["status"], &before["steps"]));
    assert_eq!(after["final_train_loss"], before["final_train_loss"]);
    assert!(after["tokens_per_s"].as_f64().unwrap() > 0.0, "{after}");
    assert_eq!(std::fs::read_to_string(first.join("metrics.jsonl")).unwrap(), metrics, "no line lost or repeated");
    assert!(second.join("summary.json").is_file(), "the run after it ran");
}

/// A rerun with other settings is refused, naming the key; where only train.steps grew, the
/// finished runs are extended.
#[test]
fn a_sweep_rerun_with_other_settings_is_refused_and_more_steps_extend() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "train.steps=6 schedule.warmup_steps=0");
    let out = dir.path().join("sweep");
    let runs = expand(&["model.norm=post".into()], &[]).unwrap();
    run_sweep(&config, &[], &runs, &out, true).unwrap();
    let err = format!("{:#}", run_sweep(&config, &["optim.lr=0.01".into()], &runs, &out, true).unwrap_err());
    assert!(err.contains("optim.lr: 0.003 -> 0.01") && err.contains("config.toml"), "{err}");

    let more = run_sweep(&config, &["train.steps=9".into()], &runs, &out, true).unwrap();
    assert_eq!(more[0].status, "finished");
    let steps: Vec<u64> = read_metrics(&out.join(&runs[0].name).join("metrics.jsonl"))
        .unwrap()
        .iter()
        .filter(|r| r.get("loss").is_some())
        .filter_map(|r| r["step"].as_u64())
        .collect();
    assert_eq!(steps, (1..=9).collect::<Vec<u64>>());
}

#[test]
fn a_broken_metrics_line_is_named_by_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.jsonl");
    std::fs::write(&path, "{\"step\": 1, \"loss\": 2.0}\n{\"step\": 2, \"lo\n").unwrap();
    let err = format!("{:#}", read_metrics(&path).unwrap_err());
    assert!(err.contains("metrics.jsonl:2"), "{err}");
}
