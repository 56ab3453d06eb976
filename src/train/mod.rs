//! The training recipe: data -> model -> optimizer -> loop of (forward, backward, clip, step),
//! with evaluation, metrics, progress and checkpoints along the way.

pub mod diagnostics;
pub mod metrics;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::json;

use crate::checkpoint::{self, TrainState};
use crate::config::Config;
use crate::data::{read_corpus, tokenize_cached, BatchBuffers, TextTokenizer, TokenDataset};
use crate::model::{Gpt, Mode, ParamStore};
use crate::optim::{clip_factor, global_norm, AdamW, Schedule};
use crate::rng::{hash_str, Rng};
use crate::run_dir::RunDir;
use metrics::MetricsLog;

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
    let dtype = cfg.train.dtype.to_dtype();

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

    // Data and tokenizer.
    let text = read_corpus(&cfg.data.path)?;
    let tokenizer = if resume_from.is_some() {
        TextTokenizer::load(&run.tokenizer())?
    } else {
        let tokenizer = TextTokenizer::from_config(&cfg.tokenizer, &cfg.data.path, &text)?;
        tokenizer.save(&run.tokenizer())?;
        tokenizer
    };
    let ids = tokenize_cached(&tokenizer, &text, &run.path().join("tokens.bin"))?;
    let data = TokenDataset::new(ids, cfg.data.val_fraction, cfg.model.block_size, &cfg.data.path)?;
    let config_text = cfg.to_toml_string()?;
    crate::fsutil::write_atomic(&run.config(), config_text.as_bytes())?;

    // Model and optimizer.
    let params = ParamStore::new();
    let model = Gpt::new(&cfg.model, tokenizer.vocab_size(), dtype, params.var_builder(cfg.train.seed, &device))?;
    let mut optimizer = AdamW::new(params.named_vars(), &cfg.optim)?;
    let schedule = Schedule::new(&cfg.schedule, cfg.optim.lr, cfg.train.steps);
    let mut state = TrainState {
        step: 0,
        seed: cfg.train.seed,
        tokens_seen: 0,
        best_val_loss: None,
        best_step: None,
        last_val_loss: None,
        initial_loss: None,
        config_hash: format!("{:016x}", hash_str(&config_text)),
        taper_version: env!("CARGO_PKG_VERSION").into(),
    };
    if let Some(ckpt) = &resume_from {
        checkpoint::load_into(&params, checkpoint::load_tensors(&ckpt.join("model.safetensors"), &device)?, ckpt)?;
        state = checkpoint::read_state(ckpt)?;
        let moments = checkpoint::load_tensors(&ckpt.join("optimizer.safetensors"), &device)?;
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
    let (batch, block, accum) = (cfg.train.batch_size, cfg.model.block_size, cfg.train.grad_accum);
    let tokens_per_step = (batch * block * accum) as u64;
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
        "taper: {} parameters on {}, {} train / {} val tokens, run dir {}",
        params.num_elements(),
        crate::device::describe(&device),
        data.len(crate::data::Split::Train),
        data.len(crate::data::Split::Val),
        run.path().display()
    ));

    let mut buffers = BatchBuffers::default();
    let mut losses = Vec::new();
    let start_step = state.step;
    let started = Instant::now();
    let mut timed_from: Option<(Instant, usize)> = None;
    let mut window = (Instant::now(), 0u64);
    let mut last_loss = None;
    // Evaluation and checkpoint time, left out of the throughput figure.
    let mut side_work = std::time::Duration::ZERO;
    for step in start_step..cfg.train.steps {
        if step == start_step + UNTIMED_STEPS.min(cfg.train.steps - start_step - 1) {
            timed_from = Some((Instant::now(), step));
        }
        let lr = schedule.lr(step);
        let micro_batches = (0..accum).map(|micro| {
            let (inputs, targets) = data.train_batch(cfg.train.seed, step, micro, batch, &device, &mut buffers)?;
            let mode = Mode::train(Rng::derived(cfg.train.seed, &[DROPOUT_STREAM, step as u64, micro as u64]));
            Ok((inputs, targets, mode))
        });
        let (grads, step_loss) = accumulate_gradients(&model, &vars, micro_batches, tokens_per_step as usize)?;
        let grad_norm = global_norm(&grads)?;
        let diagnose = cfg.train.diagnostics_every > 0 && step.is_multiple_of(cfg.train.diagnostics_every);
        let before_update = if diagnose {
            let (inputs, _) = data.train_batch(cfg.train.seed, step, 0, batch, &device, &mut buffers)?;
            let norms = diagnostics::grad_norms(&names, &grads)?;
            let rms = diagnostics::residual_rms(&model, &inputs)?;
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
        state.tokens_seen += tokens_per_step;
        window.1 += tokens_per_step;
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
        if cfg.train.eval_every > 0 && (state.step.is_multiple_of(cfg.train.eval_every) || done) {
            let val_loss = evaluate(cfg, &params, tokenizer.vocab_size(), dtype, &device, &data, &mut buffers)?;
            metrics.write(json!({"step": state.step, "val_loss": val_loss}))?;
            state.last_val_loss = Some(val_loss);
            if state.best_val_loss.is_none_or(|best| val_loss < best) {
                state.best_val_loss = Some(val_loss);
                state.best_step = Some(state.step);
            }
            say(format!("step {:>6}: val loss {val_loss:.4}", state.step));
        }
        if done || (cfg.checkpoint.every > 0 && state.step.is_multiple_of(cfg.checkpoint.every)) {
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
    let (timed_start, timed_step) = timed_from.unwrap_or((started, start_step));
    let timed_steps = (state.step - timed_step).max(1);
    let timed_secs = (timed_start.elapsed() - side_work.min(timed_start.elapsed())).as_secs_f64();
    let summary = RunSummary {
        run_dir: run.path().to_path_buf(),
        steps: state.step,
        params: params.num_elements(),
        elapsed_s: elapsed,
        tokens_per_s: (timed_steps as u64 * tokens_per_step) as f64 / timed_secs,
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

/// Forward and backward over each micro-batch, summing gradients. Each loss is the sum over
/// its target tokens divided by `total_tokens` (all target tokens of the step), so k
/// micro-batches of n sequences give the same gradient as one batch of k * n. Returns the
/// gradients (aligned with `vars`) and the step's loss, both still on the device.
pub fn accumulate_gradients(
    model: &Gpt,
    vars: &[Var],
    micro_batches: impl Iterator<Item = Result<(Tensor, Tensor, Mode)>>,
    total_tokens: usize,
) -> Result<(Vec<Option<Tensor>>, Tensor)> {
    let mut grads: Vec<Option<Tensor>> = vec![None; vars.len()];
    let mut step_loss: Option<Tensor> = None;
    for item in micro_batches {
        let (inputs, targets, mut mode) = item?;
        let loss = (model.loss_sum(&inputs, &targets, &mut mode)? / total_tokens as f64)?;
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

/// Mean next-token loss over the fixed val batches, with a model over detached weights (no
/// graph is recorded).
fn evaluate(
    cfg: &Config,
    params: &ParamStore,
    vocab_size: usize,
    dtype: DType,
    device: &Device,
    data: &TokenDataset,
    buffers: &mut BatchBuffers,
) -> Result<f64> {
    let vb = VarBuilder::from_tensors(params.detached(), DType::F32, device);
    let model = Gpt::new(&cfg.model, vocab_size, dtype, vb)?;
    let batch = cfg.train.batch_size;
    let mut total = 0f64;
    for index in 0..cfg.train.eval_batches {
        let (inputs, targets) = data.eval_batch(cfg.train.seed, index, batch, device, buffers)?;
        total += model.loss_sum(&inputs, &targets, &mut Mode::eval())?.to_scalar::<f32>()? as f64;
    }
    Ok(total / (cfg.train.eval_batches.max(1) * batch * cfg.model.block_size) as f64)
}

fn progress_bar(total: usize, done: usize, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30.cyan/blue} step {pos}/{len} {msg} [{elapsed_precise}<{eta_precise}]")
            .expect("valid template")
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
