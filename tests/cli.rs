//! The binary: bad input exits non-zero with a message, never a panic.

mod common;

use std::process::Command;

fn taper(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_taper")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn typo_in_config_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typo.toml");
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/configs/gpt-shakespeare-char.toml")).unwrap();
    std::fs::write(&path, text.replace("batch_size", "batchsize")).unwrap();
    let (ok, err) = taper(&["train", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.starts_with("error:") && err.contains("batchsize") && err.contains("typo.toml"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn missing_config_and_missing_run_are_errors() {
    let (ok, err) = taper(&["train", "/nonexistent/config.toml"]);
    assert!(!ok && err.contains("/nonexistent/config.toml"), "{err}");
    let (ok, err) = taper(&["generate", "/nonexistent/run"]);
    assert!(!ok && err.contains("/nonexistent/run") && !err.contains("panicked"), "{err}");
}

#[test]
fn train_then_generate_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path(), &common::pattern_corpus(300));
    let config = common::tiny_config(dir.path(), &corpus, "train.steps=20");
    let path = dir.path().join("tiny.toml");
    std::fs::write(&path, config.to_toml_string().unwrap()).unwrap();
    let (ok, err) = taper(&["train", path.to_str().unwrap(), "--set", "model.norm=post", "--quiet"]);
    assert!(ok, "{err}");
    let run = dir.path().join("run");
    let out = Command::new(env!("CARGO_BIN_EXE_taper"))
        .args(["generate", run.to_str().unwrap(), "--prompt", "anna", "--max-new-tokens", "10"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("anna"));
    let saved = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(saved.contains("norm = \"post\""), "the resolved config is saved with the override");
    let (ok, err) = taper(&["generate", run.to_str().unwrap(), "--prompt", "§"]);
    assert!(!ok && err.contains("prompt") && err.contains("'§' (U+00A7)"), "names the character: {err}");
    // Commands for other kinds of run say what they need instead of failing obscurely.
    let run = run.to_str().unwrap();
    for (args, expected) in [
        (vec!["generate", run, "--input", "x"], "seq2seq"),
        (vec!["eval", run, "--file", "/nonexistent/x.txt", "--checkpoint", "latest"], "/nonexistent/x.txt"),
        (vec!["predict", run, "--input", "x.csv"], "not a sequence- or token-classification run"),
        (vec!["export", run, "--out", "x", "--checkpoint", "latest"], "`model.norm = \"post\"` (it is pre-LN)"),
        (vec!["export", run, "--out", "x", "--format", "onnx"], "valid: hf"),
    ] {
        let (ok, err) = taper(&args);
        assert!(!ok && err.contains(expected) && !err.contains("panicked"), "{args:?}: {err}");
    }
    // A GPT run is scored on its validation split: loss and perplexity = e^loss.
    let out = Command::new(env!("CARGO_BIN_EXE_taper")).args(["eval", run, "--checkpoint", "latest"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let value = |name: &str| -> f64 {
        let line = stdout.lines().find(|l| l.trim_start().starts_with(name)).unwrap_or_else(|| panic!("{stdout}"));
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    let (loss, perplexity) = (value("val_loss"), value("perplexity"));
    assert!(loss > 0.0 && loss < (20f64).ln(), "val loss {loss} should beat the uniform baseline: {stdout}");
    assert!((perplexity - loss.exp()).abs() < 1e-3 * perplexity, "{stdout}");
}

/// Without a terminal (CI logs), a line per logged step stands in for the progress bar.
#[test]
fn logs_without_a_terminal_get_a_line_per_logged_step() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path(), &common::pattern_corpus(300));
    let config = common::tiny_config(dir.path(), &corpus, "train.steps=20 train.log_every=10");
    let path = dir.path().join("tiny.toml");
    std::fs::write(&path, config.to_toml_string().unwrap()).unwrap();
    let (ok, err) = taper(&["train", path.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(err.contains("step 10/20: loss") && err.contains("step 20/20: loss"), "{err}");
}

#[test]
fn shell_completions_and_the_man_page_describe_the_commands() {
    let out = Command::new(env!("CARGO_BIN_EXE_taper")).args(["completions", "bash"]).output().unwrap();
    assert!(out.status.success());
    let script = String::from_utf8(out.stdout).unwrap();
    assert!(script.contains("--resume") && script.contains("inspect-init"), "every subcommand and flag");
    // bash loads it and registers the completion for `taper`.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("taper.bash"), &script).unwrap();
    let check = Command::new("bash")
        .arg("-c")
        .arg(format!("source {} && complete -p taper", dir.path().join("taper.bash").display()))
        .output()
        .unwrap();
    assert!(check.status.success() && String::from_utf8_lossy(&check.stdout).contains("taper"), "{check:?}");
    for shell in ["zsh", "fish"] {
        let out = Command::new(env!("CARGO_BIN_EXE_taper")).args(["completions", shell]).output().unwrap();
        assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("resume"), "{shell}");
    }
    let man = Command::new(env!("CARGO_BIN_EXE_taper")).arg("man").output().unwrap();
    let page = String::from_utf8(man.stdout).unwrap();
    assert!(page.contains(".TH taper 1") && page.contains("train"), "{page}");
}

#[test]
fn half_precision_on_the_cpu_is_said_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path(), &common::pattern_corpus(100));
    let config = dir.path().join("c.toml");
    let run = |dtype: &str| {
        let cfg = common::tiny_config(
            dir.path(),
            &corpus,
            &format!("train.steps=1 train.dtype={dtype} schedule.warmup_steps=0"),
        );
        std::fs::write(&config, cfg.to_toml_string().unwrap()).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_taper"))
            .args(["train", config.to_str().unwrap(), "--overwrite"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    };
    assert!(run("bf16").contains("note: train.dtype = \"bf16\" on the CPU"), "the note is missing");
    assert!(!run("f32").contains("note: train.dtype"), "no note for f32");
}
