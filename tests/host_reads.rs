//! No host round trips in a training step (issue 19, part 4). Every read of a tensor's values
//! into host memory goes through `taper::host`, which counts them (checked over src/), and a
//! step on the path accelerators take (`model.kernels = "composed"`: composed model ops,
//! composed optimizer update and norm) reads nothing back except the logged scalars, in one
//! copy, on logging steps. On a GPU each read would be a sync that stalls the step.
//!
//! One test per file touches the process-wide counter, so no other test adds to it.

mod common;

use std::path::Path;

use taper::train::{train, TrainOptions};

/// The host reads of a run stopped after `stop` of its 40 steps.
fn reads_until(stop: usize, settings: &str) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path(), &common::pattern_corpus(300));
    let cfg = common::tiny_config(dir.path(), &corpus, settings);
    let before = taper::host::reads();
    train(cfg, &TrainOptions { quiet: true, stop_after: Some(stop), ..Default::default() }).unwrap();
    taper::host::reads() - before
}

#[test]
fn a_training_step_reads_back_only_the_logged_scalars_on_logging_steps() {
    // Dropout (device RNG path), gradient accumulation, clipping; and f16 with dynamic loss
    // scaling, whose overflow check and skip are decided on the device.
    let base = "train.steps=40 model.kernels=composed model.dropout=0.1 train.grad_accum=2 optim.grad_clip=1.0";
    for extra in ["", "train.dtype=f16", "train.dtype=f16 train.loss_scale=1024"] {
        for (log_every, logged) in [(4, 2), (1, 8), (16, 1)] {
            let settings = format!("{base} {extra} train.log_every={log_every}");
            // Steps 9..=16 run in the second run only: their reads are the difference.
            let steps = reads_until(16, &settings) - reads_until(8, &settings);
            assert_eq!(steps, logged, "{settings}: 8 steps with {logged} logged made {steps} host reads");
        }
    }
}

/// Lines of `src/` (outside `src/host.rs` and `#[cfg(test)]` modules) that read tensor values
/// with candle's own calls instead of `taper::host`.
fn uncounted_reads(dir: &Path, found: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            uncounted_reads(&path, found);
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") || path.ends_with("src/host.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap();
        for (i, line) in code.lines().enumerate() {
            let reads = [".to_scalar", ".to_vec0", ".to_vec1", ".to_vec2", ".to_vec3", "to_device(&Device::Cpu"];
            if reads.iter().any(|r| line.contains(r)) && !line.trim_start().starts_with("//") {
                found.push(format!("{}:{}: {}", path.display(), i + 1, line.trim()));
            }
        }
    }
}

#[test]
fn every_host_read_in_src_goes_through_the_counted_module() {
    let mut found = Vec::new();
    uncounted_reads(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut found);
    assert!(found.is_empty(), "read through taper::host instead:\n{}", found.join("\n"));
}
