//! Ctrl-C and SIGTERM lose nothing: the first one ends the run after its current step with a
//! checkpoint and summary.json (status "interrupted") and exit 130 / 143; the run resumes to
//! the losses of a run never interrupted.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn losses(run: &Path) -> Vec<(u64, f64)> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let records = text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap());
    records.filter_map(|r| Some((r["step"].as_u64()?, r.get("loss")?.as_f64()?))).collect()
}

fn taper(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_taper")).args(args).output().unwrap()
}

/// Trains a long run, sends `signal` once step 3 is logged, returns (exit code, steps done).
fn interrupted_run(dir: &Path, config: &Path, signal: i32) -> (i32, u64) {
    let child = Command::new(env!("CARGO_BIN_EXE_taper"))
        .args(["train", config.to_str().unwrap(), "--quiet"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let metrics = dir.join("run/metrics.jsonl");
    let started = Instant::now();
    while std::fs::read_to_string(&metrics).map_or(true, |t| t.lines().count() < 3) {
        assert!(started.elapsed() < Duration::from_secs(120), "the run never logged 3 steps");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(stderr.contains("taper train --resume"), "says how to resume: {stderr}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("run/summary.json")).unwrap()).unwrap();
    assert_eq!(summary["status"], "interrupted", "{summary}");
    (out.status.code().unwrap(), summary["steps"].as_u64().unwrap())
}

fn check_signal(signal: i32, exit_code: i32) {
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path(), &common::pattern_corpus(300));
    // A fixed decay length: the schedule does not depend on train.steps, so the run can be
    // stopped early and continued to any length.
    let config = common::tiny_config(dir.path(), &corpus, "train.steps=1000000 schedule.decay_steps=300");
    let path = dir.path().join("long.toml");
    std::fs::write(&path, config.to_toml_string().unwrap()).unwrap();
    let (code, done) = interrupted_run(dir.path(), &path, signal);
    assert_eq!(code, exit_code);
    let checkpoint = dir.path().join(format!("run/checkpoints/step-{done:08}"));
    assert!(checkpoint.join("state.json").is_file(), "a checkpoint at the last finished step {done}");

    let total = (done + 4).to_string();
    let run = dir.path().join("run");
    let set_steps = format!("train.steps={total}");
    let out = taper(&["train", "--resume", run.to_str().unwrap(), "--set", &set_steps, "--quiet"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let reference = dir.path().join("reference");
    let set_dir = format!("checkpoint.dir={}", reference.display());
    let out = taper(&["train", path.to_str().unwrap(), "--set", &set_steps, "--set", &set_dir, "--quiet"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(losses(&run), losses(&reference), "interrupted + resumed == uninterrupted, step by step");
}

#[test]
fn ctrl_c_checkpoints_and_the_run_resumes_exactly() {
    check_signal(libc::SIGINT, 130);
}

#[test]
fn sigterm_checkpoints_and_exits_143() {
    check_signal(libc::SIGTERM, 143);
}
