//! One writer per run, and a console that closes never costs a run: real processes. A second
//! `train` (fresh, `--overwrite`, `--resume`) or an `export` into a directory another process
//! is training is refused at once, naming its pid, while readers keep reading; a `kill -9`
//! leaves no stale lock. A training run whose output pipe closes goes on to its end; `generate`
//! into a closed pipe ends quietly.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn taper(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_taper")).args(args).output().unwrap()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A tiny GPT config of `steps` steps, a checkpoint every 5, written to `dir/tiny.toml`.
fn tiny(dir: &Path, steps: usize) -> PathBuf {
    let corpus = common::write_corpus(dir, &common::pattern_corpus(300));
    let config = common::tiny_config(dir, &corpus, &format!("train.steps={steps} checkpoint.every=5"));
    let path = dir.join("tiny.toml");
    std::fs::write(&path, config.to_toml_string().unwrap()).unwrap();
    path
}

/// Waits (up to 2 minutes) until `ready` holds.
fn wait_for(what: &str, ready: impl Fn() -> bool) {
    let started = Instant::now();
    while !ready() {
        assert!(started.elapsed() < Duration::from_secs(120), "never: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn logged_steps(run: &Path) -> usize {
    std::fs::read_to_string(run.join("metrics.jsonl")).map_or(0, |t| t.lines().count())
}

fn kill9(child: &mut Child) {
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGKILL) }, 0);
    child.wait().unwrap();
}

#[test]
fn a_second_writer_is_refused_naming_the_first_and_readers_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny(dir.path(), 1_000_000);
    let (config, run) = (config.to_str().unwrap(), dir.path().join("run"));
    let mut first = Command::new(env!("CARGO_BIN_EXE_taper"))
        .args(["train", config, "--quiet"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("a checkpoint and 3 logged steps", || run.join("checkpoints").is_dir() && logged_steps(&run) >= 6);
    let pid = first.id().to_string();
    let run_arg = run.to_str().unwrap();
    let export_into_run = ["export", run_arg, "--out", run_arg, "--checkpoint", "latest", "--overwrite"];
    let writers: [&[&str]; 4] =
        [&["train", config], &["train", config, "--overwrite"], &["train", "--resume", run_arg], &export_into_run];
    for args in writers {
        let out = taper(args);
        let err = stderr(&out);
        assert!(!out.status.success() && err.contains("in use") && err.contains(&pid), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // The first run lost nothing and goes on; a reader reads.
    let before = logged_steps(&run);
    wait_for("more steps from the first run", || logged_steps(&run) > before + 3);
    let out = taper(&["compare", run_arg, "--out", dir.path().join("cmp").to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    // A killed writer leaves no lock behind: the run resumes.
    kill9(&mut first);
    let step: usize = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("step-")?.parse().ok())
        .max()
        .unwrap();
    let steps = format!("train.steps={}", step + 2);
    let out = taper(&["train", "--resume", run_arg, "--quiet", "--set", &steps]);
    assert!(out.status.success(), "the lock died with its process: {}", stderr(&out));
}

#[test]
fn a_run_whose_console_closes_goes_on_to_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny(dir.path(), 120);
    let mut child = Command::new(env!("CARGO_BIN_EXE_taper"))
        .args(["train", config.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read two lines of its console, then close both of its pipes (as `| head -2` does).
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    for _ in 0..2 {
        lines.next().unwrap().unwrap();
    }
    drop(lines);
    drop(child.stdout.take());
    let status = child.wait().unwrap();
    assert!(status.success(), "the run died with its console: {status:?}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("run/summary.json")).unwrap()).unwrap();
    assert_eq!((summary["status"].as_str(), summary["steps"].as_u64()), (Some("finished"), Some(120)));
    assert!(dir.path().join("run/checkpoints/step-00000120/model.safetensors").is_file());
}

#[test]
fn generate_into_a_closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let config = tiny(dir.path(), 5);
    assert!(taper(&["train", config.to_str().unwrap(), "--quiet"]).status.success());
    let run = dir.path().join("run");
    let mut child = Command::new(env!("CARGO_BIN_EXE_taper"))
        .args(["generate", run.to_str().unwrap(), "--max-new-tokens", "5000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // `taper generate ... | true`
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{err}");
    assert!(out.status.success() || out.status.signal() == Some(libc::SIGPIPE), "{:?}: {err}", out.status);
}
