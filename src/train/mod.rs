//! The training recipe: data -> model -> optimizer -> loop of steps, handing each step's
//! side work to the component whose turn it is: the logger (`logger.rs`), the evaluation
//! schedule (`Validator`), the checkpointer (`checkpointer.rs`). A step itself (micro-batches,
//! gradients, all-reduce, clip, optimizer) is `step.rs`.

pub mod causal_lm;
pub mod checkpointer;
pub mod classification;
pub mod config;
pub mod diagnostics;
pub mod encoder;
pub mod logger;
pub mod masked_lm;
pub mod metrics;
pub mod seq2seq;
pub mod step;
pub mod task;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::Device;

use crate::config::{Config, TaskKind};
use crate::model::ParamStore;
use crate::optim::{AdamW, Schedule};
use crate::run_dir::RunDir;
use causal_lm::CausalLm;
use checkpointer::Checkpointer;
use classification::Classification;
use logger::Logger;
pub use logger::{peak_rss_mb, Diverged, RunSummary};
use masked_lm::MaskedLm;
use seq2seq::Seq2SeqTask;
pub use step::accumulate_gradients;
use step::{AllReduce, SingleProcess, Stepper};
use task::{Evaluation, Task};

#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Continue the run in `checkpoint.dir` from its latest checkpoint.
    pub resume: bool,
    /// No progress bar and no console lines (tests).
    pub quiet: bool,
    /// End this invocation after this step, as if killed there (tests of resume).
    pub stop_after: Option<usize>,
    /// With `resume`: the checkpoint to continue from (`step-N`; default: the newest intact one).
    pub checkpoint: Option<String>,
    /// Start afresh in a run directory that holds a run's files from before (they are
    /// removed first, checkpoints included); without it such a directory is refused.
    pub overwrite: bool,
}

pub fn train(config: Config, options: &TrainOptions) -> Result<RunSummary> {
    let cfg = &config;
    let run = RunDir::new(cfg.run_dir());
    let device = crate::device::open_device(&cfg.train.device)?;
    run.clean_leftovers()?;
    let resume_from = starting_point(&run, options)?;
    std::fs::create_dir_all(run.path())
        .with_context(|| format!("cannot create run directory {}", run.path().display()))?;
    crate::fsutil::write_atomic(&run.marker(), concat!("taper ", env!("CARGO_PKG_VERSION"), "\n").as_bytes())?;

    let params = ParamStore::new();
    let resuming = resume_from.is_some();
    let (run, device) = (&run, &device);
    match cfg.task.kind() {
        TaskKind::CausalLm => {
            run_task(&CausalLm::new(cfg, run, resuming, &params, device)?, run, &params, device, resume_from, options)
        }
        TaskKind::SequenceClassification => {
            let task = Classification::new(cfg, run, resuming, &params, device)?;
            run_task(&task, run, &params, device, resume_from, options)
        }
        TaskKind::MaskedLm => {
            run_task(&MaskedLm::new(cfg, run, resuming, &params, device)?, run, &params, device, resume_from, options)
        }
        TaskKind::Seq2seq => {
            let task = Seq2SeqTask::new(cfg, run, resuming, &params, device)?;
            run_task(&task, run, &params, device, resume_from, options)
        }
    }
}

/// The checkpoint a run continues from (`--resume`), or None for a fresh start, which needs a
/// directory without a run's files in it, or one where taper's attempt at a run never trained
/// a step (a setup error: its files are derived and made again), or `overwrite`, which
/// removes them.
fn starting_point(run: &RunDir, options: &TrainOptions) -> Result<Option<PathBuf>> {
    let dir = run.path().display();
    if options.resume {
        return resume_point(run, options.checkpoint.as_deref()).map(Some);
    }
    let existing = run.existing();
    let restartable = run.marker().is_file() && !run.has_trained();
    if existing.is_empty() {
        return Ok(None);
    }
    if !options.overwrite && !restartable {
        let names: Vec<String> =
            existing.iter().filter_map(|p| Some(p.file_name()?.to_string_lossy().into_owned())).collect();
        let hint = if names.iter().any(|n| n == "checkpoints") {
            format!("continue the run with `taper train --resume {dir}`, ")
        } else {
            String::new()
        };
        bail!(
            "run directory {dir} already holds {}; taper does not overwrite them: {hint}choose another directory \
             with `--set checkpoint.dir=...`, or pass --overwrite to remove them and start afresh",
            names.join(", ")
        );
    }
    for path in existing {
        let removed = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        removed.with_context(|| format!("cannot remove {}", path.display()))?;
    }
    Ok(None)
}

/// The checkpoint to resume from: `which` (`step-N`), or the newest whose files match their
/// checksums, saying which damaged ones it passed over. Checkpoints after it are discarded.
fn resume_point(run: &RunDir, which: Option<&str>) -> Result<PathBuf> {
    use crate::checkpoint::{discard_after, list_checkpoints, resolve_checkpoint, verify};
    let dir = run.path().display();
    let all = list_checkpoints(run.path())?;
    if all.is_empty() {
        bail!("cannot resume: {dir} has no checkpoints");
    }
    let (step, path) = match which {
        Some(which) => {
            let path = resolve_checkpoint(run.path(), which)?;
            verify(&path).context("choose another with --checkpoint step-N")?;
            (crate::checkpoint::read_state(&path)?.step, path)
        }
        None => {
            let mut newest_intact = None;
            for (step, path) in all.iter().rev() {
                match verify(path) {
                    Ok(()) => {
                        newest_intact = Some((*step, path.clone()));
                        break;
                    }
                    Err(err) => eprintln!("taper: skipping checkpoint {}: {err:#}", path.display()),
                }
            }
            newest_intact.with_context(|| format!("cannot resume: no checkpoint of {dir} is intact"))?
        }
    };
    for discarded in discard_after(run.path(), step)? {
        eprintln!("taper: resuming from step {step}: removed the later checkpoint {}", discarded.display());
    }
    Ok(path)
}

/// The recipe, the same for every task: optimizer and schedule over the task's parameters,
/// then per step: the step itself, then logging, evaluation and checkpoints on their turns.
fn run_task<T: Task>(
    task: &T,
    run: &RunDir,
    params: &ParamStore,
    device: &Device,
    resume_from: Option<PathBuf>,
    options: &TrainOptions,
) -> Result<RunSummary> {
    let cfg = task.config();
    let config_text = cfg.to_toml_string()?;
    let mut optimizer = AdamW::new(params.named_vars(), &cfg.optim, &task.embedding_tables())?;
    let schedule = Schedule::new(&cfg.schedule, cfg.optim.lr, cfg.train.steps);
    let checkpointer = Checkpointer::new(run, cfg, &config_text)?;
    let mut state = checkpointer.start(cfg, resume_from.as_deref(), params, &mut optimizer, device)?;
    // Written only once the run really continues: a refused resume leaves the run as it was.
    crate::fsutil::write_atomic(&run.config(), config_text.as_bytes())?;
    let mut logger = Logger::open(run, cfg, &state, options.quiet)?;
    let (elements, on) = (params.num_elements(), crate::device::describe(device));
    logger.say(format!("taper: {elements} parameters on {on}, {}, run dir {}", task.describe(), run.path().display()));
    let collective: &dyn AllReduce = &SingleProcess;
    let stepper = Stepper::new(&optimizer, collective, cfg);
    let validator = Validator { every: cfg.train.eval_every };
    for step in state.step..cfg.train.steps {
        logger.step_started(step, cfg.train.steps, state.tokens_seen);
        let lr = schedule.lr(step);
        let out = stepper.step(task, &mut optimizer, step, lr)?;
        state.step = step + 1;
        state.tokens_seen += out.tokens;
        let done = state.step == cfg.train.steps;
        let interrupted = crate::interrupt::requested();
        logger.step_done(&mut state, &out, lr, done)?;
        logger.side_work(|logger| {
            let mut new_best = false;
            if let Some(evaluation) = validator.evaluate(state.step, done, task, params)? {
                logger.evaluation(state.step, &evaluation)?;
                new_best = checkpointer.observe(&mut state, &evaluation)?;
            }
            checkpointer.maybe_save(&state, done || interrupted.is_some(), new_best, params, &optimizer)
        })?;
        if let Some(signal) = interrupted.filter(|_| !done) {
            logger.finish(&state, params.num_elements(), cfg.train.steps, true)?;
            let run_dir = run.path().to_path_buf();
            return Err(crate::interrupt::Interrupted { signal, step: state.step, run_dir }.into());
        }
        if options.stop_after == Some(state.step) {
            break;
        }
    }
    logger.finish(&state, params.num_elements(), cfg.train.steps, false)
}

/// The evaluation schedule: every `train.eval_every` steps and at the end (0: never).
struct Validator {
    every: usize,
}

impl Validator {
    fn evaluate<T: Task>(&self, step: usize, done: bool, task: &T, params: &ParamStore) -> Result<Option<Evaluation>> {
        if self.every > 0 && (step.is_multiple_of(self.every) || done) {
            return Ok(Some(task.evaluate(params)?));
        }
        Ok(None)
    }
}
