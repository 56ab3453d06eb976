//! Bad input gets a clear error naming what is wrong, never an abort or a silent run; damaged
//! files are found, never deleted; nothing the user wrote is overwritten (issue 38's list, each
//! tried as a user would, through the binary where that is how they meet it).

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use taper::config::Config;

fn taper(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_taper")).args(args).env_remove("RUST_BACKTRACE").output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The tiny GPT config (`extra` overrides) written to `dir/tiny.toml`.
fn tiny(dir: &Path, extra: &str) -> PathBuf {
    let corpus = common::write_corpus(dir, &common::pattern_corpus(300));
    let config = common::tiny_config(dir, &corpus, extra);
    let path = dir.join("tiny.toml");
    std::fs::write(&path, config.to_toml_string().unwrap()).unwrap();
    path
}

fn refused(args: &[&str], says: &[&str]) {
    let (ok, err) = taper(args);
    assert!(!ok, "{args:?} was accepted");
    assert!(!err.contains("panicked") && !err.contains("memory allocation"), "{args:?}: {err}");
    for s in says {
        assert!(err.contains(s), "{args:?}: the error should say `{s}`: {err}");
    }
}

#[test]
fn sizes_that_cannot_fit_are_refused_with_the_key_not_aborted() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny(dir.path(), "train.steps=2 schedule.warmup_steps=1");
    let config = config.to_str().unwrap();
    let cases: [(&str, &[&str]); 4] = [
        ("model.d_model=1048576", &["model.d_model", "GB"]),
        ("model.vocab_size=10000000000", &["tok_emb", "model.vocab_size"]),
        ("train.batch_size=1000000000", &["train.batch_size", "GB"]),
        ("model.n_layer=1000000000", &["model.n_layer", "GB"]),
    ];
    for (set, says) in cases {
        refused(&["train", config, "--set", set, "--overwrite", "--quiet"], says);
    }
}

#[test]
fn config_values_that_mean_nothing_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny(dir.path(), "");
    let text = std::fs::read_to_string(&config).unwrap();
    let error = |text: &str, overrides: &[&str]| {
        let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        format!("{:#}", Config::from_toml_str(text, &overrides).unwrap_err())
    };
    let err = error(&text, &["model.layer_norm_eps=nan"]);
    assert!(err.contains("`model.layer_norm_eps`") && err.contains("finite"), "{err}");
    let err = error(&text.replace("layer_norm_eps = 0.00001", "layer_norm_eps = inf"), &[]);
    assert!(err.contains("`model.layer_norm_eps`") && err.contains("finite"), "{err}");
    let err = error(&text, &["optim.weight_decay=-0.1"]);
    assert!(err.contains("`optim.weight_decay`") && !err.contains("eps"), "names the one that is wrong: {err}");
    let err = error(&text, &["checkpoint.dir="]);
    assert!(err.contains("`checkpoint.dir` is empty"), "{err}");
    let err = error(&text, &["data.path=42"]);
    assert!(err.contains("a path") && !err.contains("untagged"), "says what the key takes: {err}");
    refused(
        &["train", config.to_str().unwrap(), "--set", "data.path=\"/dev/zero\"", "--quiet"],
        &["/dev/zero", "neither a file"],
    );
}

#[test]
fn the_same_sweep_key_twice_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny(dir.path(), "");
    let out = dir.path().join("sweep");
    refused(
        &[
            "sweep",
            config.to_str().unwrap(),
            "--grid",
            "model.norm=pre",
            "--grid",
            "model.norm=post",
            "--out",
            out.to_str().unwrap(),
        ],
        &["model.norm", "twice"],
    );
    assert!(!out.exists(), "nothing ran");
}

#[test]
fn generation_options_out_of_range_are_said_so_and_tokens_stream() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny(dir.path(), "train.steps=5");
    assert!(taper(&["train", config.to_str().unwrap(), "--quiet"]).0);
    let run = dir.path().join("run");
    let run = run.to_str().unwrap();
    refused(&["generate", run, "--temperature", "-1"], &["--temperature", ">= 0"]);
    refused(&["generate", run, "--top-k", "-3"], &["--top-k", ">= 0"]);
    refused(&["generate", run, "--top-p", "-0.5"], &["--top-p", "(0, 1]"]);
    // A huge count streams its tokens as they come (the context is said, once).
    let mut child = Command::new(env!("CARGO_BIN_EXE_taper"))
        .args(["generate", run, "--max-new-tokens", "1000000000000", "--prompt", "anna"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut got = Vec::new();
    let started = Instant::now();
    while got.len() < 40 {
        assert!(started.elapsed() < Duration::from_secs(60), "no tokens came: {got:?}");
        let mut buf = [0u8; 64];
        let n = stdout.read(&mut buf).unwrap();
        assert!(n > 0, "the output ended");
        got.extend_from_slice(&buf[..n]);
    }
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(got.starts_with(b"anna"), "{:?}", String::from_utf8_lossy(&got));
    assert!(String::from_utf8_lossy(&out.stderr).contains("context"), "says the context bounds what it sees");
}

#[test]
fn predictions_never_replace_a_file_unasked() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.csv");
    std::fs::write(&input, "text\nhello\n").unwrap();
    let existing = dir.path().join("out.jsonl");
    std::fs::write(&existing, "keep me\n").unwrap();
    let (input, existing) = (input.to_str().unwrap(), existing.to_str().unwrap());
    // The run is checked after the output: any run directory will do for these refusals.
    let run = dir.path().to_str().unwrap();
    refused(&["predict", run, "--input", input, "--output", input], &["is the --input file"]);
    refused(&["predict", run, "--input", input, "--output", existing], &["already exists", "--overwrite"]);
    assert_eq!(std::fs::read_to_string(existing).unwrap(), "keep me\n");
    assert_eq!(std::fs::read_to_string(input).unwrap(), "text\nhello\n");
}

/// A run of 20 steps with a checkpoint every 10 (and every step's loss logged).
fn checkpointed_run(dir: &Path) -> PathBuf {
    let config = tiny(dir, "train.steps=20 checkpoint.every=10 checkpoint.keep_last=5");
    assert!(taper(&["train", config.to_str().unwrap(), "--quiet"]).0);
    dir.join("run")
}

fn losses(run: &Path) -> Vec<(u64, f64)> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let records = text.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok());
    records.filter_map(|r| Some((r["step"].as_u64()?, r.get("loss")?.as_f64()?))).collect()
}

#[test]
fn damaged_checkpoints_are_found_and_set_aside_never_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let run = checkpointed_run(dir.path());
    let want = losses(&run);
    let step20 = run.join("checkpoints/step-00000020");
    // Flipped bytes in the weights: eval and generate refuse them.
    let weights = step20.join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let n = bytes.len();
    bytes[n - 9] ^= 0xff;
    std::fs::write(&weights, &bytes).unwrap();
    let run_arg = run.to_str().unwrap();
    refused(&["eval", run_arg, "--checkpoint", "step-20"], &["damaged", "model.safetensors"]);
    refused(&["generate", run_arg, "--checkpoint", "step-20"], &["damaged", "model.safetensors"]);
    bytes[n - 9] ^= 0xff;
    std::fs::write(&weights, &bytes).unwrap();
    // state.json naming another step than its directory: not resumed from, set aside whole.
    let state_path = step20.join("state.json");
    let state = std::fs::read_to_string(&state_path).unwrap().replace("\"step\": 20", "\"step\": 15");
    std::fs::write(&state_path, state).unwrap();
    let (ok, err) = taper(&["train", "--resume", run_arg, "--quiet", "--set", "train.steps=20"]);
    assert!(ok, "{err}");
    assert!(err.contains("step 15") && err.contains("moved it aside"), "{err}");
    let aside = run.join("checkpoints/step-00000020.damaged");
    assert!(aside.join("model.safetensors").is_file(), "the damaged checkpoint's weights are kept");
    // Resumed from step 10, the run made steps 11-20 again, as the uninterrupted run did.
    let got: Vec<(u64, f64)> = losses(&run).into_iter().filter(|(s, _)| *s > 10).collect();
    let again: Vec<(u64, f64)> = want.into_iter().filter(|(s, _)| *s > 10).collect();
    assert_eq!(got, again);
    // An optimizer file missing: set aside too, its intact weights kept.
    let step20 = run.join("checkpoints/step-00000020");
    std::fs::remove_file(step20.join("optimizer.safetensors")).unwrap();
    let (ok, err) = taper(&["train", "--resume", run_arg, "--quiet", "--set", "train.steps=20"]);
    assert!(ok && err.contains("moved it aside"), "{err}");
    assert!(run.join("checkpoints/step-00000020.damaged-2/model.safetensors").is_file());
}

#[test]
fn compare_reads_a_metrics_file_whose_last_line_was_cut_short() {
    let dir = tempfile::tempdir().unwrap();
    let run = checkpointed_run(dir.path());
    let metrics = run.join("metrics.jsonl");
    let mut text = std::fs::read_to_string(&metrics).unwrap();
    text.push_str("{\"step\": 21, \"loss\": 2.");
    std::fs::write(&metrics, text).unwrap();
    let (ok, err) = taper(&["compare", run.to_str().unwrap(), "--out", dir.path().join("cmp").to_str().unwrap()]);
    assert!(ok && err.contains("cut short"), "{err}");
}

#[test]
fn an_unknown_model_type_lists_the_registered_families() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::write(model.join("config.json"), r#"{"model_type": "bogus"}"#).unwrap();
    let config = tiny(dir.path(), &format!("model.init_from={}", model.display()));
    refused(&["train", config.to_str().unwrap(), "--quiet"], &["bogus", "gpt2, llama, qwen2"]);
}
