//! Data-parallel training over MPI (`--features mpi`, Open MPI's mpirun on PATH): a 2-rank run
//! with `train.grad_accum = 1` IS the one-process run with `grad_accum = 2` (the same loss at
//! every step and the same weights, up to the order of the sums) for a GPT with dropout, a
//! seq2seq model (padded pairs, label smoothing), a masked-lm BERT and a fine-tuned
//! classifier; a 2-rank run resumes in one process; a killed rank ends the job with its rank
//! named and the last checkpoint intact; evaluation split over the ranks gives the one-process
//! numbers. Without the feature, a process started by mpirun is
//! refused with the way to build one that works.

#![cfg(unix)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const TAPER: &str = env!("CARGO_BIN_EXE_taper");

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[cfg(feature = "mpi")]
fn mpirun(ranks: usize, args: &[String]) -> Command {
    let mut cmd = Command::new("mpirun");
    cmd.args(["--allow-run-as-root", "--oversubscribe", "-n", &ranks.to_string(), TAPER]).args(args);
    cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1").env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1").current_dir(root());
    // One thread per process on both sides: the kernels' sums then run in the same order, and
    // only the all-reduce's differs.
    cmd.env("RAYON_NUM_THREADS", "1");
    cmd
}

fn taper(args: &[String]) -> Command {
    let mut cmd = Command::new(TAPER);
    cmd.args(args).current_dir(root()).env("RAYON_NUM_THREADS", "1");
    cmd
}

#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
fn ok(mut cmd: Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// `train CONFIG --quiet --set k=v ...` into `run`.
fn train_args(config: &str, run: &Path, sets: &[&str]) -> Vec<String> {
    let mut args = vec!["train".into(), config.into(), "--quiet".into()];
    args.extend(["--set".into(), format!("checkpoint.dir={}", run.display())]);
    for set in sets {
        args.extend(["--set".into(), set.to_string()]);
    }
    args
}

/// The loss of every step in a run's metrics.jsonl.
#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
fn losses(run: &Path) -> Vec<(u64, f64)> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|r| Some((r.get("step")?.as_u64()?, r.get("loss")?.as_f64()?)))
        .collect()
}

/// The largest difference between the weights of two runs' checkpoints `which`.
#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
fn weight_diff(a: &Path, b: &Path, which: &str) -> f32 {
    let load = |run: &Path| {
        let dir = taper::checkpoint::resolve_checkpoint(run, which).unwrap();
        candle_core::safetensors::load(dir.join("model.safetensors"), &candle_core::Device::Cpu).unwrap()
    };
    let (a, b) = (load(a), load(b));
    assert_eq!(a.len(), b.len());
    a.iter()
        .map(|(name, t)| (t - &b[name]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap())
        .fold(0.0, f32::max)
}

#[cfg(feature = "mpi")]
fn assert_same_runs(two: &Path, one: &Path, what: &str) {
    let (a, b) = (losses(two), losses(one));
    assert!(!b.is_empty() && a.len() == b.len(), "{what}: {} vs {} logged steps", a.len(), b.len());
    for ((step, x), (_, y)) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-5, "{what}: step {step}: 2 ranks' loss {x}, one process's {y}");
    }
    let diff = weight_diff(two, one, "latest");
    assert!(diff <= 1e-5, "{what}: the final weights differ by {diff}");
}

/// The shipped configs, shortened; dropout on where the config has none.
#[cfg(feature = "mpi")]
const RUNS: [(&str, &[&str]); 3] = [
    (
        "configs/gpt-shakespeare-char.toml",
        &["train.steps=8", "schedule.warmup_steps=2", "model.dropout=0.1", "train.log_every=1", "train.eval_every=4"],
    ),
    (
        "configs/seq2seq-numbers.toml",
        &["train.steps=6", "schedule.warmup_steps=2", "train.log_every=1", "train.eval_every=0"],
    ),
    (
        "configs/bert-mlm-shakespeare.toml",
        &["train.steps=6", "schedule.warmup_steps=2", "model.dropout=0.1", "train.log_every=1", "train.eval_every=0"],
    ),
];

#[cfg(feature = "mpi")]
#[test]
fn two_ranks_train_as_one_process_with_twice_the_accumulation() {
    let dir = tempfile::tempdir().unwrap();
    for (i, (config, sets)) in RUNS.iter().enumerate() {
        let (two, one) = (dir.path().join(format!("two-{i}")), dir.path().join(format!("one-{i}")));
        ok(mpirun(2, &train_args(config, &two, &[sets, &["train.grad_accum=1"][..]].concat())));
        ok(taper(&train_args(config, &one, &[sets, &["train.grad_accum=2"][..]].concat())));
        assert_same_runs(&two, &one, config);
        let saved = std::fs::read_to_string(two.join("config.toml")).unwrap();
        assert!(saved.contains("grad_accum = 2"), "the run keeps the global accumulation: {saved}");
    }
}

#[cfg(feature = "mpi")]
#[test]
fn fine_tuned_classifiers_train_the_same_on_two_ranks() {
    // Padded batches of different lengths and target counts on each rank: a label per text,
    // a tag per word (sub-words left out), and a LoRA fine-tune.
    let model = root().join(".cache/models/all-MiniLM-L6-v2");
    assert!(model.join("model.safetensors").is_file(), "run scripts/fetch-minilm.sh first");
    let dir = tempfile::tempdir().unwrap();
    let sets =
        ["train.steps=3", "schedule.warmup_steps=1", "train.batch_size=4", "train.log_every=1", "train.eval_every=3"];
    let runs: [(&str, &[&str]); 3] = [
        ("configs/bert-finetune-sentiment.toml", &["accuracy", "macro_f1"]),
        ("configs/bert-finetune-ner.toml", &["token_accuracy", "precision", "recall", "f1"]),
        // LoRA: only the adapters and the head are all-reduced and stepped.
        ("configs/bert-lora-sentiment.toml", &["accuracy", "macro_f1"]),
    ];
    for (i, (config, metrics)) in runs.iter().enumerate() {
        let (two, one) = (dir.path().join(format!("two-{i}")), dir.path().join(format!("one-{i}")));
        ok(mpirun(2, &train_args(config, &two, &[&sets[..], &["train.grad_accum=1"]].concat())));
        ok(taper(&train_args(config, &one, &[&sets[..], &["train.grad_accum=2"]].concat())));
        assert_same_runs(&two, &one, config);
        // The evaluation, split over the ranks (each pads its own share's batches): the same
        // counted metrics (from summed counts), the loss within float rounding.
        let (a, b) = (val_metrics(&two), val_metrics(&one));
        assert!(!b.is_empty() && a.len() == b.len(), "{a:?} vs {b:?}");
        for ((_, key, x), (_, _, y)) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-6, "{config} {key}: {x} on 2 ranks, {y} in one process");
        }
        let keys: Vec<&str> = b.iter().map(|(_, k, _)| k.as_str()).collect();
        assert!(metrics.iter().all(|m| keys.contains(m)), "{config}: {keys:?}");
    }
}

#[cfg(feature = "mpi")]
#[test]
fn a_two_rank_run_resumes_in_one_process_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let config = "configs/gpt-shakespeare-char.toml";
    let sets =
        ["train.steps=10", "schedule.warmup_steps=2", "model.dropout=0.1", "train.log_every=1", "checkpoint.every=5"];
    let (two, one) = (dir.path().join("two"), dir.path().join("one"));
    ok(taper(&train_args(config, &one, &[&sets[..], &["train.grad_accum=2"]].concat())));
    ok(mpirun(2, &train_args(config, &two, &[&sets[..], &["train.grad_accum=1"]].concat())));
    // As if the job had died after step 5: the later checkpoint and the summary are gone.
    std::fs::remove_dir_all(taper::checkpoint::resolve_checkpoint(&two, "step-10").unwrap()).unwrap();
    std::fs::remove_file(two.join("summary.json")).unwrap();
    ok(taper(&["train".into(), "--resume".into(), two.display().to_string(), "--quiet".into()]));
    assert_same_runs(&two, &one, "resumed in one process");
}

/// The pid of the taper process training into `run` whose environment says it is MPI rank
/// `rank` (other tests' jobs run beside this one).
#[cfg(feature = "mpi")]
fn pid_of_rank(run: &Path, rank: usize) -> Option<u32> {
    let wanted = format!("OMPI_COMM_WORLD_RANK={rank}");
    let run = format!("checkpoint.dir={}", run.display());
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let environ = std::fs::read(entry.path().join("environ")).ok()?;
        let cmdline = String::from_utf8_lossy(&std::fs::read(entry.path().join("cmdline")).ok()?).replace('\0', " ");
        let has_rank = environ.split(|&b| b == 0).any(|kv| kv == wanted.as_bytes());
        (cmdline.contains(TAPER) && cmdline.contains(&run) && has_rank).then_some(pid)
    })
}

/// Kills the job when the test ends, whatever happens.
#[cfg(feature = "mpi")]
struct Job(Option<std::process::Child>);

#[cfg(feature = "mpi")]
impl Drop for Job {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            child.kill().ok();
            child.wait().ok();
        }
    }
}

#[cfg(feature = "mpi")]
#[test]
fn a_killed_rank_ends_the_job_naming_it_and_the_run_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let sets = ["train.steps=100000", "schedule.warmup_steps=2", "checkpoint.every=5", "train.eval_every=0"];
    let mut job = mpirun(2, &train_args("configs/gpt-shakespeare-char.toml", &run, &sets[..]));
    let mut job = Job(Some(job.stderr(std::process::Stdio::piped()).spawn().unwrap()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while taper::checkpoint::list_checkpoints(&run).map_or(true, |c| c.len() < 2) {
        assert!(std::time::Instant::now() < deadline, "no checkpoints after 2 minutes");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let victim = pid_of_rank(&run, 1).expect("rank 1 is running");
    // SAFETY: kill(2) on a pid this test found running; no memory is touched.
    unsafe { libc::kill(victim as i32, libc::SIGKILL) };
    let out = job.0.take().unwrap().wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the job must fail when a rank dies");
    assert!(stderr.contains("rank 1") && stderr.contains("signal 9"), "mpirun names the rank: {stderr}");
    // Every checkpoint left is whole, and the run resumes from the newest (one process, 2 steps more).
    for (_, path) in taper::checkpoint::list_checkpoints(&run).unwrap() {
        taper::checkpoint::verify(&path).unwrap();
    }
    let (step, _) = *taper::checkpoint::list_checkpoints(&run).unwrap().last().unwrap();
    let resume = ["train".into(), "--resume".into(), run.display().to_string(), "--quiet".into()];
    let more = [&resume[..], &["--set".into(), format!("train.steps={}", step + 2)]].concat();
    ok(taper(&more));
    assert_eq!(losses(&run).last().unwrap().0, step as u64 + 2);
}

/// One process of a one-step run into `run`, with `env` added (what a launcher would set).
fn one_step(run: &Path, env: &[(&str, &str)]) -> Output {
    let args = train_args("configs/gpt-shakespeare-char.toml", run, &["train.steps=1", "schedule.warmup_steps=0"]);
    let mut cmd = taper(&args);
    cmd.envs(env.iter().copied()).env("OMPI_ALLOW_RUN_AS_ROOT", "1").env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    cmd.output().unwrap()
}

#[cfg(not(feature = "mpi"))]
#[test]
fn a_process_started_by_mpirun_without_mpi_support_says_how_to_build_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = one_step(&dir.path().join("run"), &[("OMPI_COMM_WORLD_SIZE", "2")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("--features mpi"), "{stderr}");
    assert!(!dir.path().join("run").exists(), "nothing is written");
}

/// A process that srun says is one of 2 ranks, but that MPI sees alone (srun without a PMI
/// plugin), refuses to train rather than train alone into a directory another rank shares.
#[cfg(feature = "mpi")]
#[test]
fn a_process_srun_started_that_mpi_sees_alone_refuses_to_train() {
    let dir = tempfile::tempdir().unwrap();
    let out = one_step(&dir.path().join("run"), &[("SLURM_STEP_NUM_TASKS", "2")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("MPI sees a world of 1") && stderr.contains("srun --mpi=pmix"),
        "{stderr}"
    );
    assert!(!dir.path().join("run").exists(), "nothing is written");
}

/// Every evaluation metric (`val_*`, the accuracies, F1s, precision, recall) in a run's
/// metrics.jsonl, by step.
#[cfg(feature = "mpi")]
fn val_metrics(run: &Path) -> Vec<(u64, String, f64)> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let mut out = Vec::new();
    for record in text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()) {
        let step = record["step"].as_u64().unwrap();
        for (key, value) in record.as_object().unwrap() {
            let counted = [
                "masked_accuracy",
                "accuracy",
                "macro_f1",
                "token_accuracy",
                "precision",
                "recall",
                "f1",
                "bleu",
                "exact_match",
            ];
            if key.starts_with("val_") || counted.contains(&key.as_str()) {
                out.push((step, key.clone(), value.as_f64().unwrap()));
            }
        }
    }
    out
}

/// Evaluation is split over the ranks (batch i on rank i mod 2) and summed: the val metrics
/// of one process, for an odd number of sampled batches and for the whole val split, for a
/// GPT and a masked-lm BERT.
#[cfg(feature = "mpi")]
#[test]
fn evaluation_split_over_two_ranks_gives_the_one_process_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let runs: [(&str, &[&str]); 3] = [
        ("configs/gpt-shakespeare-char.toml", &["train.eval_batches=3"]),
        ("configs/gpt-shakespeare-char.toml", &["train.eval_batches=\"all\""]),
        ("configs/bert-mlm-shakespeare.toml", &["train.eval_batches=3"]),
    ];
    for (i, (config, eval)) in runs.iter().enumerate() {
        let sets = [&["train.steps=4", "schedule.warmup_steps=1", "train.eval_every=2"][..], eval].concat();
        let (two, one) = (dir.path().join(format!("two-{i}")), dir.path().join(format!("one-{i}")));
        ok(mpirun(2, &train_args(config, &two, &[&sets[..], &["train.grad_accum=1"]].concat())));
        ok(taper(&train_args(config, &one, &[&sets[..], &["train.grad_accum=2"]].concat())));
        let (a, b) = (val_metrics(&two), val_metrics(&one));
        assert!(b.len() >= 2 && a.len() == b.len(), "{config} {eval:?}: {a:?} vs {b:?}");
        for ((step, key, x), (_, _, y)) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-9, "{config} {eval:?}: step {step}: {key} {x} on 2 ranks, {y} in one process");
        }
    }
}

/// A seq2seq run's evaluation (teacher-forced loss, greedy decoding's exact match and BLEU, from
/// summed n-gram counts) split over the ranks: the one process's numbers.
#[cfg(feature = "mpi")]
#[test]
fn a_seq2seq_evaluation_split_over_two_ranks_gives_the_one_process_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let val = dir.path().join("val.tsv");
    let text = std::fs::read_to_string(root().join("data/numbers/val.tsv")).unwrap();
    std::fs::write(&val, text.lines().take(42).collect::<Vec<_>>().join("\n") + "\n").unwrap(); // 41 pairs
    let config = "configs/seq2seq-numbers.toml";
    let val_path = format!("data.val_path=\"{}\"", val.display());
    let sets = ["train.steps=150", "schedule.warmup_steps=10", "train.eval_every=75", &val_path];
    let (two, one) = (dir.path().join("two"), dir.path().join("one"));
    ok(mpirun(2, &train_args(config, &two, &[&sets[..], &["train.grad_accum=1"]].concat())));
    ok(taper(&train_args(config, &one, &[&sets[..], &["train.grad_accum=2"]].concat())));
    let (a, b) = (val_metrics(&two), val_metrics(&one));
    let keys: Vec<&str> = b.iter().map(|(_, k, _)| k.as_str()).collect();
    assert!(["bleu", "exact_match", "token_accuracy"].iter().all(|k| keys.contains(k)), "{keys:?}");
    assert!(b.len() >= 8 && a.len() == b.len(), "{a:?} vs {b:?}");
    assert!(b.iter().any(|(_, k, v)| k == "bleu" && *v > 0.0), "BLEU is 0 throughout: {b:?}");
    for ((step, key, x), (_, _, y)) in a.iter().zip(&b) {
        // Each rank pads its own share's batches: the loss within float rounding.
        let tolerance = if key == "val_loss" { 1e-6 } else { 1e-12 };
        assert!((x - y).abs() <= tolerance, "step {step}: {key} {x} on 2 ranks, {y} in one process");
    }
}

/// Rank 0 of a pretend two-rank world whose other rank adds nothing: what rank 0's share of an
/// evaluation is, seen through the sums it hands to the collective.
struct FirstOfTwo {
    values: std::cell::RefCell<Vec<Vec<f64>>>,
}

impl taper::distributed::Collective for FirstOfTwo {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        2
    }
    fn local(&self) -> (usize, usize) {
        (0, 2)
    }
    fn sum_counts(&self, _counts: &mut [u64]) -> anyhow::Result<()> {
        Ok(())
    }
    fn sum_values(&self, values: &mut [f64]) -> anyhow::Result<()> {
        self.values.borrow_mut().push(values.to_vec());
        Ok(())
    }
    fn sum_tensors(&self, _tensors: &mut [candle_core::Tensor]) -> anyhow::Result<()> {
        Ok(())
    }
    fn broadcast_tensors(&self, tensors: &mut [candle_core::Tensor]) -> anyhow::Result<()> {
        // Rank 0's own values, as new tensors (as a real broadcast gives).
        for t in tensors.iter_mut() {
            *t = t.copy()?;
        }
        Ok(())
    }
    fn broadcast_bytes(&self, _bytes: &mut [u8]) -> anyhow::Result<()> {
        Ok(())
    }
    fn barrier(&self) -> anyhow::Result<()> {
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        panic!("abort({code})")
    }
}

/// Each rank scores only its share of the val batches (rank 0 of 2: batches 0 and 2 of 3),
/// not all of them: the split is real, not the same work twice.
#[test]
fn each_rank_scores_only_its_share_of_the_val_batches() {
    let dir = tempfile::tempdir().unwrap();
    let config = root().join("configs/gpt-shakespeare-char.toml");
    let sets: Vec<String> = ["train.steps=2", "schedule.warmup_steps=1", "train.eval_every=2", "train.eval_batches=3"]
        .iter()
        .map(|s| s.to_string())
        .chain([format!("checkpoint.dir={:?}", dir.path().join("run").display().to_string())])
        .collect();
    let mut cfg = taper::config::Config::load(&config, &sets).unwrap();
    cfg.data.path = taper::data::config::CorpusPaths::One(root().join("data/shakespeare.txt"));
    let world = FirstOfTwo { values: Default::default() };
    let options = taper::train::TrainOptions { quiet: true, ..Default::default() };
    taper::train::train_with(cfg.clone(), &options, &world).unwrap();
    let values = world.values.borrow();
    let [_, targets] = values.last().unwrap()[..] else { panic!("{values:?}") };
    let per_batch = (cfg.train.batch_size * cfg.model.block_size) as f64;
    assert_eq!(targets, 2.0 * per_batch, "rank 0 of 2 scores batches 0 and 2 of 3");
}
