//! The training recipe: data -> model -> optimizer -> loop of steps, handing each step's
//! side work to the component whose turn it is: the logger (`logger.rs`), the evaluation
//! schedule (`Validator`), the checkpointer (`checkpointer.rs`). A step itself (micro-batches,
//! gradients, their reduction, clip, optimizer) is `step.rs`; how the run spreads over
//! processes is one component the loop asks (`parallel.rs`); the task (`TaskSpec`) builds what
//! the loop trains.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::Device;

use super::checkpointer::Checkpointer;
use super::logger::{Logger, RunSummary};
use super::parallel::{DataParallel, Parallel};
use super::step::Stepper;
use super::task::{Evaluation, Task};
use super::{config, Diverged};
use crate::config::{Config, LossScale};
use crate::distributed::Collective;
use crate::model::ParamStore;
use crate::optim::{AdamW, LossScaler, Schedule};
use crate::run_dir::RunDir;

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

/// Trains one run in the world this process was started in (one process, or an MPI rank).
pub fn train(config: Config, options: &TrainOptions) -> Result<RunSummary> {
    train_with(config, options, crate::distributed::world()?.as_ref())
}

/// Trains one run as a rank of `world` (a sweep trains its runs in one world).
pub fn train_with(config: Config, options: &TrainOptions, world: &dyn Collective) -> Result<RunSummary> {
    match train_in(config, options, world) {
        // Every rank sees the same signal agreement and the same loss: these end all of them
        // at the same step. Any other error on one rank ends the job.
        Err(err)
            if world.size() > 1
                && err.downcast_ref::<crate::interrupt::Interrupted>().is_none()
                && err.downcast_ref::<Diverged>().is_none() =>
        {
            crate::console::say(format!("taper: rank {} of {}: error: {err:#}", world.rank(), world.size()));
            world.abort(1)
        }
        result => result,
    }
}

/// `train` in `world`, data-parallel over its ranks.
fn train_in(config: Config, options: &TrainOptions, world: &dyn Collective) -> Result<RunSummary> {
    // Held until the run ends: no other process writes into its directory meanwhile.
    let (config, resume_from, _lock) = prepare(config, options, &DataParallel::new(world))?;
    let cfg = &config;
    let run = RunDir::new(cfg.run_dir());
    let (parallel, device) = DataParallel::on_device(world, &cfg.train.device)?;
    let mut params = match cfg.lora {
        Some(_) => ParamStore::with_trainable(crate::model::lora::is_trainable),
        None => ParamStore::new(),
    };
    // On the CPU, a model that cannot fit is refused before it is allocated.
    if let Some(available) = crate::memory::available().filter(|_| device.is_cpu()) {
        // A LoRA run holds its frozen weights alone.
        let per_parameter = if cfg.lora.is_some() { 4 } else { crate::memory::TRAINING_BYTES_PER_PARAMETER };
        crate::memory::check_model(&cfg.model, available, per_parameter)?;
        params = params.limited_to(available / per_parameter * 4);
    }
    // The other ranks read what the writer made of the run (tokenizer, corpus cache) as a resume does.
    let resuming = resume_from.is_some() || !parallel.is_writer();
    let (run, device) = (&run, &device);
    let launch = Launch { run, params: &params, device, resuming, resume_from, options, parallel: &parallel };
    cfg.task.kind().spec().train(cfg, &launch)
}

/// What a task is built in, and its loop runs with.
pub struct Launch<'a> {
    pub run: &'a RunDir,
    /// The store the task's model is built over.
    pub params: &'a ParamStore,
    pub device: &'a Device,
    /// The run's files (tokenizer, labels, architecture) are there to read, not to make.
    pub resuming: bool,
    resume_from: Option<PathBuf>,
    options: &'a TrainOptions,
    parallel: &'a dyn Parallel,
}

/// The writer (rank 0, or the one process) takes the run directory for itself (a second writer
/// is refused, naming the first: `fsutil::lock_dir`), readies it and picks the checkpoint to
/// resume from; the other ranks wait until it has written the run's config, then read that
/// config and the same checkpoint. A fresh run's `train.grad_accum` becomes the step's
/// micro-batches over all ranks (`Parallel::step_micro_batches`).
fn prepare(mut config: Config, options: &TrainOptions, parallel: &dyn Parallel) -> Result<Prepared> {
    if !options.resume {
        config.train.grad_accum = parallel.step_micro_batches(config.train.grad_accum);
    }
    let run = RunDir::new(config.run_dir());
    if !parallel.is_writer() {
        parallel.barrier()?; // the writer's, once the run's config.toml is written
        let config = run.load_config(&[])?;
        let which = options.checkpoint.as_deref().unwrap_or("latest");
        let resume_from =
            options.resume.then(|| crate::checkpoint::resolve_checkpoint(run.path(), which)).transpose()?;
        return Ok((config, resume_from, None));
    }
    let lock = crate::fsutil::lock_dir(run.path(), "training run")?;
    run.clean_leftovers()?;
    let resume_from = starting_point(&run, options)?;
    std::fs::create_dir_all(run.path())
        .with_context(|| format!("cannot create run directory {}", run.path().display()))?;
    crate::fsutil::write_atomic(&run.marker(), concat!("taper ", env!("CARGO_PKG_VERSION"), "\n").as_bytes())?;
    Ok((config, resume_from, Some(lock)))
}

/// The run's config, the checkpoint it resumes from, and the writer's hold on its directory.
type Prepared = (Config, Option<PathBuf>, Option<crate::fsutil::DirLock>);

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
                    Err(err) => crate::console::say(format!("taper: skipping checkpoint {}: {err:#}", path.display())),
                }
            }
            newest_intact.with_context(|| format!("cannot resume: no checkpoint of {dir} is intact"))?
        }
    };
    for discarded in discard_after(run.path(), step)? {
        crate::console::say(match discarded {
            crate::checkpoint::Discarded::Removed(path) => {
                format!("taper: resuming from step {step}: removed the later checkpoint {}", path.display())
            }
            crate::checkpoint::Discarded::SetAside(path, aside) => format!(
                "taper: resuming from step {step}: the later checkpoint {} is damaged; moved it aside to {}",
                path.display(),
                aside.display()
            ),
        });
    }
    Ok(path)
}

/// What a LoRA run trains, for the start-up line (nothing without `[lora]`).
fn lora_note(cfg: &Config, params: &ParamStore) -> String {
    match &cfg.lora {
        Some(lora) => {
            let trainable: usize = params.trainable_vars().iter().map(|(_, v)| v.elem_count()).sum();
            format!(" ({trainable} trained: LoRA rank {} on {})", lora.rank, lora.targets.join(", "))
        }
        None => String::new(),
    }
}

/// On the CPU, refuses a micro-batch whose activations cannot fit beside the trained
/// parameters' gradients and AdamW moments (12 bytes each).
fn check_step_fits<T: Task>(task: &T, params: &ParamStore, device: &Device) -> Result<()> {
    let Some(available) = crate::memory::available().filter(|_| device.is_cpu()) else { return Ok(()) };
    let cfg = task.config();
    let vocab = task.embedding_tables().first().map_or(0, |t| t.dim(0).unwrap_or(0));
    let trained: usize = params.trainable_vars().iter().map(|(_, v)| v.elem_count()).sum();
    crate::memory::check_step(&cfg.model, cfg.train.batch_size, vocab, trained as u64 * 12, available)
}

/// The recipe, the same for every task: optimizer and schedule over the task's parameters,
/// then per step: the step itself, then logging, evaluation and checkpoints on their turns.
/// With several ranks, the writer alone writes (config, metrics, checkpoints, summary); every
/// rank starts from the writer's weights and stops at the same step.
pub fn run_task<T: Task>(task: &T, launch: &Launch) -> Result<RunSummary> {
    let Launch { run, params, device, options, parallel, .. } = *launch;
    let root = parallel.is_writer();
    let cfg = task.config();
    let config_text = cfg.to_toml_string()?;
    let mut optimizer = AdamW::new(params.trainable_vars(), &cfg.optim, &task.embedding_tables())?;
    optimizer.use_kernels(cfg.model.kernels);
    optimizer.scaler = loss_scaler(cfg, device)?;
    let schedule = Schedule::new(&cfg.schedule, cfg.optim.lr, cfg.train.steps);
    check_step_fits(task, params, device)?;
    let checkpointer = Checkpointer::new(run, cfg, &config_text)?;
    let mut state = checkpointer.start(cfg, launch.resume_from.as_deref(), params, &mut optimizer, device)?;
    if root {
        // Written only once the run really continues: a refused resume leaves the run as it was.
        crate::fsutil::write_atomic(&run.config(), config_text.as_bytes())?;
        parallel.barrier()?; // the other ranks read it now
    }
    parallel.share_parameters(params)?;
    let scratch = (!root).then(|| follower_scratch(parallel.rank())).transpose()?;
    let log_dir = scratch.as_ref().map(RunDir::new);
    let mut logger = Logger::open(log_dir.as_ref().unwrap_or(run), cfg, &state, options.quiet || !root)?;
    logger.set_mfu(super::mfu::for_run(task, params, device, parallel.size())?);
    let (elements, on) = (params.num_elements(), crate::device::describe(device));
    let ranks = if parallel.size() > 1 { format!(" x {} ranks", parallel.size()) } else { String::new() };
    logger.say(format!(
        "taper: {elements} parameters{} on {on}{ranks}, {}, run dir {}",
        lora_note(cfg, params),
        task.describe(),
        run.path().display()
    ));
    logger.say_some(half_precision_note(cfg, device));
    logger.say_some(loss_scale_note(cfg));
    let stepper = Stepper::new(&optimizer, parallel, cfg)?;
    let validator = Validator { every: cfg.train.eval_every };
    let sampler = Validator { every: cfg.train.sample_every };
    let (launch_step, reduced_before) = (state.step, parallel.reduce_seconds());
    for step in state.step..cfg.train.steps {
        logger.step_started(step, cfg.train.steps, state.tokens_seen);
        let lr = schedule.lr(step);
        let out = stepper.step(task, &mut optimizer, step, lr)?;
        state.step = step + 1;
        state.tokens_seen += out.tokens;
        let done = state.step == cfg.train.steps;
        let interrupted = parallel.agreed_interrupt()?;
        logger.step_done(&mut state, &out, lr, done)?;
        logger.side_work(|logger| {
            let evaluation = validator.evaluate(state.step, done, task, params, parallel)?;
            if !root {
                return Ok(());
            }
            let mut new_best = false;
            if let Some(evaluation) = evaluation {
                logger.evaluation(state.step, &evaluation)?;
                new_best = checkpointer.observe(&mut state, &evaluation)?;
            }
            if sampler.is_due(state.step, done) {
                logger.samples(state.step, &task.sample(params)?)?;
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
    if let (true, Some(now), Some(before)) = (parallel.size() > 1, parallel.reduce_seconds(), reduced_before) {
        let ms = (now - before) * 1e3 / (state.step - launch_step).max(1) as f64;
        logger.say(format!("all-reduce: {ms:.2} ms per step over {} ranks (rank 0's wait included)", parallel.size()));
    }
    let summary = logger.finish(&state, params.num_elements(), cfg.train.steps, false);
    if let Some(dir) = scratch {
        std::fs::remove_dir_all(dir).ok();
    }
    summary
}

/// What bf16 or f16 costs on the CPU, said at start-up (docs/performance.md §28: 10.6x the
/// f32 step on the default model; the f32 master weights and moments stay, so little memory
/// is saved).
fn half_precision_note(cfg: &Config, device: &Device) -> Option<String> {
    (device.is_cpu() && cfg.train.dtype != config::DTypeName::F32).then(|| {
        format!(
            "taper: note: train.dtype = {} on the CPU runs candle's composed ops in half precision, about 10x \
             slower than f32 here, for little memory; use f32 on the CPU (bf16 and f16 pay on GPUs)",
            crate::hf::show(&cfg.train.dtype)
        )
    })
}

/// The run's loss scaler (`train.loss_scale`), if it scales its loss.
fn loss_scaler(cfg: &Config, device: &Device) -> Result<Option<LossScaler>> {
    let interval = cfg.train.loss_scale_growth_interval;
    Ok(match cfg.train.loss_scale() {
        LossScale::Off => None,
        LossScale::Dynamic => Some(LossScaler::new(cfg.train.loss_scale_init, true, interval, device)?),
        LossScale::Fixed(scale) => Some(LossScaler::new(scale, false, interval, device)?),
    })
}

/// What the loss scaling does, said at start-up.
fn loss_scale_note(cfg: &Config) -> Option<String> {
    let train = &cfg.train;
    let how = match train.loss_scale() {
        LossScale::Off => return None,
        LossScale::Dynamic => format!(
            "dynamic loss scale from {} (halved on an overflow, doubled after {} steps without one)",
            train.loss_scale_init, train.loss_scale_growth_interval
        ),
        LossScale::Fixed(scale) => format!("fixed loss scale {scale}"),
    };
    Some(format!(
        "taper: {how}; a step whose gradients overflow is skipped: `loss_scale` and `skipped_steps` in metrics.jsonl"
    ))
}

/// Where a rank other than 0 keeps its logger's files (removed at the end): only rank 0
/// writes into the run directory.
fn follower_scratch(rank: usize) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("taper-rank{rank}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// The evaluation (and sample) schedule: every `train.eval_every` (`train.sample_every`) steps
/// and at the end (0: never).
struct Validator {
    every: usize,
}

impl Validator {
    fn is_due(&self, step: usize, done: bool) -> bool {
        self.every > 0 && (step.is_multiple_of(self.every) || done)
    }

    /// The evaluation when it is due: on every rank for a task that splits it, else on the writer.
    fn evaluate<T: Task>(
        &self,
        step: usize,
        done: bool,
        task: &T,
        params: &ParamStore,
        parallel: &dyn Parallel,
    ) -> Result<Option<Evaluation>> {
        if self.is_due(step, done) && (task.splits_evaluation() || parallel.is_writer()) {
            return Ok(Some(task.evaluate(params, parallel.collective())?));
        }
        Ok(None)
    }
}
