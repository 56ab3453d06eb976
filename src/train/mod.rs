//! The training recipe: data -> model -> optimizer -> loop of (forward, backward, clip, step),
//! with evaluation, metrics, progress and checkpoints along the way.

pub mod causal_lm;
pub mod classification;
pub mod diagnostics;
pub mod encoder;
pub mod masked_lm;
pub mod metrics;
pub mod seq2seq;
pub mod task;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor, Var};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::json;

use crate::checkpoint::{self, TrainState};
use crate::config::{higher_is_better, Config, TaskKind};
use crate::model::{Mode, ParamStore};
use crate::optim::{clip_factor, global_norm, AdamW, Schedule};
use crate::rng::{hash_str, Rng};
use crate::run_dir::RunDir;
use causal_lm::CausalLm;
use classification::Classification;
use masked_lm::MaskedLm;
use metrics::MetricsLog;
use seq2seq::Seq2SeqTask;
use task::Task;

const DROPOUT_STREAM: u64 = 3;
/// Steps left out of the throughput figure in `summary.json` (start-up, as the reference does).
const UNTIMED_STEPS: usize = 10;

#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Continue the run in `checkpoint.dir` from its latest checkpoint.
    pub resume: bool,
    /// No progress bar and no console lines (tests).
    pub quiet: bool,
    /// End this invocation after this step, as if killed there (tests of resume).
    pub stop_after: Option<usize>,
}

/// What a finished run reports (also written to `summary.json`).
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub run_dir: PathBuf,
    pub steps: usize,
    pub params: usize,
    pub elapsed_s: f64,
    pub tokens_per_s: f64,
    pub ms_per_step: f64,
    pub peak_rss_mb: f64,
    pub final_train_loss: Option<f64>,
    pub val_loss: Option<f64>,
    /// "finished", "stopped" (ended early on request) or "diverged".
    pub status: String,
    /// (step, train loss) for every logged step of this invocation.
    #[serde(skip)]
    pub losses: Vec<(usize, f64)>,
}

/// The error a diverged run ends with: its loss became NaN/infinite, or grew past
/// `train.divergence_factor` times its start. `summary.json` and `metrics.jsonl` say so too.
#[derive(Debug, Clone)]
pub struct Diverged {
    pub step: usize,
    pub loss: f64,
    pub reason: String,
    pub run_dir: PathBuf,
}

impl std::fmt::Display for Diverged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "training diverged at step {}: {}; checkpoints saved before it are kept in {}. \
             Try a lower `optim.lr`, more `schedule.warmup_steps`, or `optim.grad_clip`",
            self.step,
            self.reason,
            checkpoint::checkpoints_dir(&self.run_dir).display()
        )
    }
}

impl std::error::Error for Diverged {}

pub fn train(config: Config, options: &TrainOptions) -> Result<RunSummary> {
    let cfg = &config;
    let run = RunDir::new(cfg.run_dir());
    let device = crate::device::open_device(&cfg.train.device)?;
    if !device.is_cpu() {
        // Device-side dropout draws from the device RNG; seed it so GPU runs repeat too.
        device.set_seed(cfg.train.seed)?;
    }
    let existing = checkpoint::list_checkpoints(run.path())?;
    let resume_from = match (options.resume, existing.last()) {
        (true, Some((_, path))) => Some(path.clone()),
        (true, None) => bail!("cannot resume: {} has no checkpoints", run.path().display()),
        (false, Some(_)) => bail!(
            "run directory {} already holds checkpoints; continue it with `taper train --resume {}`, \
             or choose another directory with `--set checkpoint.dir=...`",
            run.path().display(),
            run.path().display()
        ),
        (false, None) => None,
    };
    std::fs::create_dir_all(run.path())
        .with_context(|| format!("cannot create run directory {}", run.path().display()))?;

    let params = ParamStore::new();
    let resuming = resume_from.is_some();
    let (run, device) = (&run, &device);
    match cfg.task.kind {
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

/// The recipe, the same for every task: optimizer and schedule over the task's parameters,
/// then per step: micro-batches -> accumulated gradients -> clip -> AdamW; logging,
/// evaluation and checkpoints on their schedules.
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
    crate::fsutil::write_atomic(&run.config(), config_text.as_bytes())?;
    let mut optimizer = AdamW::new(params.named_vars(), &cfg.optim)?;
    let schedule = Schedule::new(&cfg.schedule, cfg.optim.lr, cfg.train.steps);
    let mut state = TrainState {
        step: 0,
        seed: cfg.train.seed,
        tokens_seen: 0,
        best_val_loss: None,
        best_step: None,
        best_score: None,
        last_val_loss: None,
        initial_loss: None,
        config_hash: format!("{:016x}", hash_str(&config_text)),
        taper_version: env!("CARGO_PKG_VERSION").into(),
    };
    if let Some(ckpt) = &resume_from {
        checkpoint::load_into(params, checkpoint::load_tensors(&ckpt.join("model.safetensors"), device)?, ckpt)?;
        state = checkpoint::read_state(ckpt)?;
        let moments = checkpoint::load_tensors(&ckpt.join("optimizer.safetensors"), device)?;
        optimizer
            .load_state(moments, state.step)
            .with_context(|| format!("cannot restore optimizer from {}", ckpt.display()))?;
        state.config_hash = format!("{:016x}", hash_str(&config_text));
    }
    if state.step >= cfg.train.steps {
        bail!(
            "run {} has already completed {} of {} steps; raise `train.steps` to continue it",
            run.path().display(),
            state.step,
            cfg.train.steps
        );
    }
    let mut metrics = MetricsLog::open(&run.metrics(), Some(state.step))?;

    let vars: Vec<Var> = optimizer.vars().cloned().collect();
    let names: Vec<String> = optimizer.names().map(String::from).collect();
    let accum = cfg.train.grad_accum;
    let progress = progress_bar(cfg.train.steps, state.step, options.quiet);
    let say = |line: String| {
        if options.quiet {
        } else if progress.is_hidden() {
            eprintln!("{line}");
        } else {
            progress.println(line);
        }
    };
    say(format!(
        "taper: {} parameters on {}, {}, run dir {}",
        params.num_elements(),
        crate::device::describe(device),
        task.describe(),
        run.path().display()
    ));

    let mut losses = Vec::new();
    let start_step = state.step;
    let started = Instant::now();
    let mut timed_from: Option<(Instant, usize, u64)> = None;
    let mut window = (Instant::now(), 0u64);
    let mut last_loss = None;
    // Evaluation and checkpoint time, left out of the throughput figure.
    let mut side_work = std::time::Duration::ZERO;
    for step in start_step..cfg.train.steps {
        if step == start_step + UNTIMED_STEPS.min(cfg.train.steps - start_step - 1) {
            timed_from = Some((Instant::now(), step, state.tokens_seen));
        }
        let lr = schedule.lr(step);
        let batches = (0..accum).map(|micro| task.train_batch(step, micro)).collect::<Result<Vec<_>>>()?;
        let targets: usize = batches.iter().map(|b| task.targets(b)).sum();
        let step_tokens: u64 = batches.iter().map(|b| task.tokens(b) as u64).sum();
        let micro_losses = batches.iter().enumerate().map(|(micro, batch)| {
            let mut mode = Mode::train(Rng::derived(cfg.train.seed, &[DROPOUT_STREAM, step as u64, micro as u64]));
            Ok((task.loss_sum(batch, &mut mode)? / targets.max(1) as f64)?)
        });
        let (grads, step_loss) = accumulate_gradients(&vars, micro_losses)?;
        let grad_norm = global_norm(&grads)?;
        let diagnose = cfg.train.diagnostics_every > 0 && step.is_multiple_of(cfg.train.diagnostics_every);
        let before_update = if diagnose {
            let norms = diagnostics::grad_norms(&names, &grads)?;
            let rms = task.residual_rms(&batches[0])?;
            Some((norms, rms, diagnostics::WeightSnapshot::take(&names, &vars)?))
        } else {
            None
        };
        let clip = match cfg.optim.grad_clip.filter(|c| *c > 0.0) {
            Some(max_norm) => Some(clip_factor(&grad_norm, max_norm)?),
            None => None,
        };
        optimizer.step(&grads, lr, clip.as_ref())?;
        if let Some((norms, rms, snapshot)) = before_update {
            metrics.write(diagnostics::record(step, norms, snapshot.update_ratios()?, rms)?)?;
        }
        state.step = step + 1;
        state.tokens_seen += step_tokens;
        window.1 += step_tokens;
        let done = state.step == cfg.train.steps;

        if state.step.is_multiple_of(cfg.train.log_every) || done {
            // The only host reads of the step, and only on logged steps.
            let loss = step_loss.to_scalar::<f32>()? as f64;
            let norm = grad_norm.to_scalar::<f32>()? as f64;
            let initial = *state.initial_loss.get_or_insert(loss);
            let reason = if !loss.is_finite() {
                Some(format!("the loss is {loss}"))
            } else {
                cfg.train
                    .divergence_factor
                    .filter(|f| loss > f * initial)
                    .map(|f| format!("the loss {loss:.4} exceeds {f} x its start {initial:.4}"))
            };
            if let Some(reason) = reason {
                progress.finish_and_clear();
                let record = json!({"step": state.step, "diverged": true, "loss": loss, "reason": reason});
                metrics.write(record)?;
                let summary =
                    json!({"run_dir": run.path(), "steps": state.step, "status": "diverged", "reason": reason});
                crate::fsutil::write_atomic(
                    &run.path().join("summary.json"),
                    serde_json::to_string_pretty(&summary)?.as_bytes(),
                )?;
                return Err(Diverged { step: state.step, loss, reason, run_dir: run.path().to_path_buf() }.into());
            }
            let tokens_per_s = window.1 as f64 / window.0.elapsed().as_secs_f64().max(1e-9);
            window = (Instant::now(), 0);
            metrics.write(
                json!({"step": state.step, "loss": loss, "lr": lr, "grad_norm": norm, "tokens_per_s": tokens_per_s}),
            )?;
            progress.set_message(format!("loss {loss:.4} lr {lr:.2e} {:.0} tok/s", tokens_per_s));
            losses.push((state.step, loss));
            last_loss = Some(loss);
        }
        let side_started = Instant::now();
        let mut new_best = false;
        if cfg.train.eval_every > 0 && (state.step.is_multiple_of(cfg.train.eval_every) || done) {
            let evaluation = task.evaluate(params)?;
            let mut record = json!({"step": state.step});
            for (name, value) in &evaluation {
                record[name] = json!(value);
            }
            metrics.write(record)?;
            if let Some(&val_loss) = evaluation.get("val_loss") {
                state.last_val_loss = Some(val_loss);
                if state.best_val_loss.is_none_or(|best| val_loss < best) {
                    state.best_val_loss = Some(val_loss);
                }
            }
            let metric = &cfg.checkpoint.best_metric;
            let score = *evaluation.get(metric).with_context(|| format!("the evaluation did not report `{metric}`"))?;
            let better = |best: f64| if higher_is_better(metric) { score > best } else { score < best };
            if state.best_score.is_none_or(better) {
                state.best_score = Some(score);
                state.best_step = Some(state.step);
                new_best = true;
            }
            let shown: Vec<String> = evaluation.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
            say(format!("step {:>6}: {}", state.step, shown.join(", ")));
        }
        // A new best is saved whatever the schedule, so `--checkpoint best` always exists.
        if done || new_best || (cfg.checkpoint.every > 0 && state.step.is_multiple_of(cfg.checkpoint.every)) {
            let moments = optimizer.state_tensors()?;
            let tensors = params.detached();
            checkpoint::save(run.path(), &tensors, &moments, &state, cfg.checkpoint.keep_last)?;
        }
        if timed_from.is_some() {
            side_work += side_started.elapsed();
        }
        progress.inc(1);
        if options.stop_after == Some(state.step) {
            break;
        }
    }
    progress.finish_and_clear();

    let elapsed = started.elapsed().as_secs_f64();
    let (timed_start, timed_step, timed_tokens) = timed_from.unwrap_or((started, start_step, 0));
    let timed_steps = (state.step - timed_step).max(1);
    let timed_secs = (timed_start.elapsed() - side_work.min(timed_start.elapsed())).as_secs_f64();
    let summary = RunSummary {
        run_dir: run.path().to_path_buf(),
        steps: state.step,
        params: params.num_elements(),
        elapsed_s: elapsed,
        tokens_per_s: (state.tokens_seen - timed_tokens) as f64 / timed_secs,
        ms_per_step: 1000.0 * timed_secs / timed_steps as f64,
        peak_rss_mb: peak_rss_mb(),
        final_train_loss: last_loss,
        val_loss: state.last_val_loss,
        status: if state.step == cfg.train.steps { "finished".into() } else { "stopped".into() },
        losses,
    };
    crate::fsutil::write_atomic(&run.path().join("summary.json"), serde_json::to_string_pretty(&summary)?.as_bytes())?;
    say(format!(
        "done: {} steps in {:.1}s ({:.0} tokens/s), train loss {}, val loss {}",
        summary.steps,
        elapsed,
        summary.tokens_per_s,
        summary.final_train_loss.map_or("-".into(), |l| format!("{l:.4}")),
        summary.val_loss.map_or("-".into(), |l| format!("{l:.4}")),
    ));
    Ok(summary)
}

/// Backward over each micro-batch's loss (already divided by the step's total target count,
/// so k micro-batches of n sequences give the gradient of one batch of k * n), summing
/// gradients. The iterator is lazy: each graph is freed before the next forward. Returns the
/// gradients (aligned with `vars`) and the step's loss, both still on the device.
pub fn accumulate_gradients(
    vars: &[Var],
    micro_losses: impl Iterator<Item = Result<Tensor>>,
) -> Result<(Vec<Option<Tensor>>, Tensor)> {
    let mut grads: Vec<Option<Tensor>> = vec![None; vars.len()];
    let mut step_loss: Option<Tensor> = None;
    for loss in micro_losses {
        let loss = loss?;
        let store = loss.backward()?;
        for (slot, var) in grads.iter_mut().zip(vars) {
            if let Some(g) = store.get(var.as_tensor()) {
                *slot = Some(match slot.take() {
                    Some(acc) => (acc + g)?,
                    None => g.clone(),
                });
            }
        }
        step_loss = Some(match step_loss {
            Some(acc) => (acc + loss.detach())?,
            None => loss.detach(),
        });
    }
    Ok((grads, step_loss.context("a step needs at least one micro-batch")?))
}

fn progress_bar(total: usize, done: usize, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30.cyan/blue} step {pos}/{len} {msg} [{elapsed_precise}<{eta_precise}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_position(done as u64);
    bar
}

/// Peak resident memory of this process, in MiB.
pub fn peak_rss_mb() -> f64 {
    // SAFETY: getrusage only writes into the struct we pass.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) == 0 {
            return usage.ru_maxrss as f64 / 1024.0;
        }
    }
    0.0
}
