//! Run directories written by taper 0.1 at 48e3f68 (before the kernel-seam redesign), kept as
//! fixtures (`tests/fixtures/v0.1-48e3f68`, made by that build from `gpt.toml` and `mlm.toml`
//! there): they resume to the same losses that build produced uninterrupted, generate and
//! evaluate, and an encoder run exports.

use std::path::{Path, PathBuf};

use taper::generate::{generate, SamplingOptions};
use taper::run_dir::RunDir;
use taper::train::{train, TrainOptions};
use taper::trained::TrainedGpt;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/v0.1-48e3f68");

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let target = dst.join(entry.file_name());
        match entry.file_type().unwrap().is_dir() {
            true => copy_dir(&entry.path(), &target),
            false => _ = std::fs::copy(entry.path(), &target).unwrap(),
        }
    }
}

fn copied_run(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join(name);
    copy_dir(&Path::new(FIXTURE).join(name), &run);
    (dir, run)
}

#[test]
fn an_old_gpt_run_resumes_to_the_same_losses_generates_and_evaluates() {
    std::env::set_current_dir(env!("CARGO_MANIFEST_DIR")).unwrap(); // the corpus path is relative
    let (_dir, run) = copied_run("gpt-run");
    // Killed after its step-10 checkpoint; 48e3f68 went on to step 14 with these losses.
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(FIXTURE).join("gpt-expected-after-resume.json")).unwrap(),
    )
    .unwrap();
    let config = RunDir::new(&run).load_config(&[]).unwrap();
    let summary = train(config, &TrainOptions { resume: true, quiet: true, ..Default::default() }).unwrap();
    assert_eq!(summary.losses.len(), 4, "steps 11-14");
    for (step, loss) in &summary.losses {
        let want = expected["losses"][step.to_string()].as_f64().unwrap();
        assert!((loss - want).abs() < 1e-5, "step {step}: {loss} vs 48e3f68's {want}");
    }
    let want_val = expected["val_losses"]["14"].as_f64().unwrap();
    assert!((summary.val_loss.unwrap() - want_val).abs() < 1e-5, "val loss {:?} vs {want_val}", summary.val_loss);

    let trained = TrainedGpt::load(&run, "best", "cpu").unwrap();
    let prompt = trained.tokenizer.encode("anna").unwrap();
    let sample = |use_cache| {
        let opts = SamplingOptions { max_new_tokens: 20, use_cache, ..Default::default() };
        generate(&trained.model, &prompt, &opts).unwrap()
    };
    assert_eq!(sample(true), sample(false), "cached and uncached sampling agree");
    let eval = trained.evaluate(None).unwrap();
    assert!((eval["perplexity"] - eval["val_loss"].exp()).abs() < 1e-9 && eval["tokens"] > 100.0, "{eval:?}");
}

#[test]
fn an_old_encoder_run_exports() {
    std::env::set_current_dir(env!("CARGO_MANIFEST_DIR")).unwrap();
    let run = Path::new(FIXTURE).join("mlm-run");
    let out = tempfile::tempdir().unwrap();
    taper::export::export_hf(&run, "best", out.path(), false).unwrap();
    let again = format!("{:#}", taper::export::export_hf(&run, "best", out.path(), false).unwrap_err());
    assert!(again.contains("config.json") && again.contains("--overwrite"), "{again}");
    taper::export::export_hf(&run, "best", out.path(), true).unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "BertForMaskedLM");
    let device = candle_core::Device::Cpu;
    let exported = taper::checkpoint::load_tensors(&out.path().join("model.safetensors"), &device).unwrap();
    let saved =
        taper::checkpoint::load_tensors(&run.join("checkpoints/step-00000006/model.safetensors"), &device).unwrap();
    assert_eq!(exported.len(), saved.len());
    for (name, tensor) in &saved {
        let a: Vec<f32> = tensor.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = exported[name].flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(a, b, "{name}");
    }
}

/// The same config trained afresh, with the tokenizer that run trained (WordPiece training was
/// not deterministic then), gives 48e3f68's run bit for bit: every logged loss, learning rate
/// and gradient norm, and the final weights (BERT's parameters keep their names, so their seeds).
#[test]
fn a_fresh_encoder_run_reproduces_the_old_one_bit_for_bit() {
    std::env::set_current_dir(env!("CARGO_MANIFEST_DIR")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("mlm-run");
    let tokenizer = Path::new(FIXTURE).join("mlm-run/tokenizer.json");
    let toml = std::fs::read_to_string(Path::new(FIXTURE).join("mlm.toml")).unwrap();
    let toml = toml.replace("kind = \"wordpiece\"\nvocab_size = 40", &format!("kind = \"file\"\npath = {tokenizer:?}"));
    std::fs::write(dir.path().join("mlm.toml"), toml).unwrap();
    let set = [format!("checkpoint.dir={}", run.display())];
    let config = taper::config::Config::load(&dir.path().join("mlm.toml"), &set).unwrap();
    train(config, &TrainOptions { quiet: true, ..Default::default() }).unwrap();
    let lines = |path: PathBuf| -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(path).unwrap();
        let mut values: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        for value in &mut values {
            // Timing figures (they differ run to run), and the FLOPs count beside mfu, which
            // the old build did not write.
            let record = value.as_object_mut().unwrap();
            for key in ["tokens_per_s", "mfu", "flops_per_token"] {
                record.remove(key);
            }
        }
        values
    };
    assert_eq!(lines(run.join("metrics.jsonl")), lines(Path::new(FIXTURE).join("mlm-run/metrics.jsonl")));
    let file = "checkpoints/step-00000006/model.safetensors";
    let device = candle_core::Device::Cpu;
    let new = taper::checkpoint::load_tensors(&run.join(file), &device).unwrap();
    let old = taper::checkpoint::load_tensors(&Path::new(FIXTURE).join("mlm-run").join(file), &device).unwrap();
    assert_eq!(new.keys().collect::<std::collections::BTreeSet<_>>(), old.keys().collect());
    // The fixture was made on a CPU with AVX-512, whose matrix kernels sum in another order
    // than AVX2's: bit for bit there, within the float rounding of six steps elsewhere (the
    // logged metrics matched exactly on both).
    let exact = same_kernels_as_the_fixture();
    for (name, tensor) in &old {
        let (a, b): (Vec<f32>, Vec<f32>) =
            (tensor.flatten_all().unwrap().to_vec1().unwrap(), new[name].flatten_all().unwrap().to_vec1().unwrap());
        if exact {
            assert_eq!(a, b, "{name}");
        } else {
            // Measured on AVX2 (AMD EPYC): at most 1.2e-7 on weights of about 0.05; one
            // learning-rate step is 1e-3.
            let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            assert!(worst <= 1e-6, "{name}: differs by {worst}");
        }
    }
}

/// Whether this CPU runs the matrix kernels the fixture's machine ran (AVX-512).
fn same_kernels_as_the_fixture() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    false
}
