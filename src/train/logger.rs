//! What a run shows and records: the progress bar and console lines, `metrics.jsonl`, the
//! divergence check, throughput, and `summary.json` at the end.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use candle_core::{DType, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::json;

use super::metrics::{MetricsLog, MetricsSink};
use super::mfu::Mfu;
use super::step::StepOutput;
use super::task::Evaluation;
use crate::checkpoint::{self, TrainState};
use crate::config::Config;
use crate::run_dir::RunDir;

/// Steps left out of the throughput figure in `summary.json` (start-up, as the reference does).
const UNTIMED_STEPS: usize = 10;

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
    /// Model FLOPs per trained token (train/mfu.rs), the device's peak FLOP/s and where that
    /// figure comes from, and `tokens_per_s` as a fraction of it: absent where no peak is known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flops_per_token: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_flops: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mfu: Option<f64>,
    pub final_train_loss: Option<f64>,
    pub val_loss: Option<f64>,
    /// "finished", "stopped" (ended early on request), "interrupted" (by a signal) or "diverged".
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

pub struct Logger {
    run_dir: PathBuf,
    metrics: MetricsLog,
    progress: ProgressBar,
    quiet: bool,
    log_every: usize,
    total_steps: usize,
    divergence_factor: Option<f64>,
    started: Instant,
    start_step: usize,
    /// Where the timed part of the run starts: (time, step, tokens seen).
    timed_from: Option<(Instant, usize, u64)>,
    /// Tokens since the last logged step, and since when.
    window: (Instant, u64),
    /// Evaluation and checkpoint time, left out of the throughput figure.
    side_work: Duration,
    losses: Vec<(usize, f64)>,
    mfu: Option<Mfu>,
}

/// The places besides metrics.jsonl `cfg` sends the run's records to: one line each.
fn sinks(cfg: &Config, run: &RunDir) -> Result<Vec<Box<dyn MetricsSink>>> {
    let mut sinks: Vec<Box<dyn MetricsSink>> = Vec::new();
    if cfg.train.tensorboard {
        sinks.push(Box::new(super::tensorboard::EventWriter::create(&run.tensorboard())?));
    }
    Ok(sinks)
}

impl Logger {
    /// Opens `metrics.jsonl` (keeping its records through `state.step` on resume).
    pub fn open(run: &RunDir, cfg: &Config, state: &TrainState, quiet: bool) -> Result<Self> {
        let progress = progress_bar(cfg.train.steps, state.step, quiet);
        Ok(Self {
            run_dir: run.path().to_path_buf(),
            metrics: MetricsLog::open(&run.metrics(), Some(state.step))?.with_sinks(sinks(cfg, run)?),
            progress,
            quiet,
            log_every: cfg.train.log_every,
            total_steps: cfg.train.steps,
            divergence_factor: cfg.train.divergence_factor,
            started: Instant::now(),
            start_step: state.step,
            timed_from: None,
            window: (Instant::now(), 0),
            side_work: Duration::ZERO,
            losses: Vec::new(),
            mfu: None,
        })
    }

    /// Reports MFU beside tokens/s from now on; `Err(why)`: says once why it cannot.
    pub fn set_mfu(&mut self, mfu: Result<Mfu, String>) {
        match mfu {
            Ok(mfu) => self.mfu = Some(mfu),
            Err(why) => self.say(format!("taper: note: {why}")),
        }
    }

    /// `line`, if there is one (see `say`).
    pub fn say_some(&self, line: Option<String>) {
        if let Some(line) = line {
            self.say(line);
        }
    }

    /// A console line above the progress bar (nothing when quiet).
    pub fn say(&self, line: String) {
        if self.quiet {
        } else if self.progress.is_hidden() {
            crate::console::say(line);
        } else {
            self.progress.println(line);
        }
    }

    /// Called before step `step` of a run of `total` steps: starts the timed window.
    pub fn step_started(&mut self, step: usize, total: usize, tokens_seen: u64) {
        if step == self.start_step + UNTIMED_STEPS.min(total - self.start_step - 1) {
            self.timed_from = Some((Instant::now(), step, tokens_seen));
        }
    }

    /// Records a finished step (`state` already advanced): diagnostics, and on logging steps
    /// the loss, lr, gradient norm and throughput; a diverged loss ends the run.
    pub fn step_done(&mut self, state: &mut TrainState, out: &StepOutput, lr: f64, done: bool) -> Result<()> {
        if let Some(record) = &out.diagnostics {
            self.metrics.write(record.clone())?;
        }
        self.window.1 += out.tokens;
        if !(state.step.is_multiple_of(self.log_every) || done) {
            return Ok(());
        }
        // The step's one host read, on logged steps only: its scalars in one copy.
        let mut scalars = Tensor::stack(&[&out.loss, &out.grad_norm], 0)?.to_dtype(DType::F32)?;
        if let Some(scaling) = &out.scaling {
            scalars = Tensor::cat(&[&scalars, scaling], 0)?;
        }
        let scalars = crate::host::vec1::<f32>(&scalars)?;
        let (loss, norm) = (scalars[0] as f64, scalars[1] as f64);
        let initial = *state.initial_loss.get_or_insert(loss);
        if let Some(reason) = self.divergence(loss, initial) {
            return Err(self.diverged(state.step, loss, reason)?.into());
        }
        let tokens_per_s = self.window.1 as f64 / self.window.0.elapsed().as_secs_f64().max(1e-9);
        self.window = (Instant::now(), 0);
        let mut record =
            json!({"step": state.step, "loss": loss, "lr": lr, "grad_norm": norm, "tokens_per_s": tokens_per_s});
        let mut line = format!("loss {loss:.4} lr {lr:.2e} {tokens_per_s:.0} tok/s");
        if let Some(mfu) = &self.mfu {
            record["mfu"] = json!(mfu.of(tokens_per_s));
            record["flops_per_token"] = json!(mfu.flops_per_token);
            line.push_str(&format!(" mfu {:.1}%", 100.0 * mfu.of(tokens_per_s)));
        }
        if let [scale, _, skipped] = scalars[2..] {
            record["loss_scale"] = json!(scale as f64);
            record["skipped_steps"] = json!(skipped as u64);
            line.push_str(&format!(" scale {scale} skipped {skipped}"));
        }
        self.metrics.write(record)?;
        if self.progress.is_hidden() {
            // No terminal (CI logs, a file): a line per logged step instead of the bar.
            self.say(format!("step {}/{}: {line}", state.step, self.total_steps));
        }
        self.progress.set_message(line);
        self.losses.push((state.step, loss));
        Ok(())
    }

    fn divergence(&self, loss: f64, initial: f64) -> Option<String> {
        if !loss.is_finite() {
            return Some(format!("the loss is {loss}"));
        }
        self.divergence_factor
            .filter(|f| loss > f * initial)
            .map(|f| format!("the loss {loss:.4} exceeds {f} x its start {initial:.4}"))
    }

    /// Marks the run diverged in metrics.jsonl and summary.json.
    fn diverged(&mut self, step: usize, loss: f64, reason: String) -> Result<Diverged> {
        self.progress.finish_and_clear();
        self.metrics.write(json!({"step": step, "diverged": true, "loss": loss, "reason": reason}))?;
        let summary = json!({"run_dir": self.run_dir, "steps": step, "status": "diverged", "reason": reason});
        let path = self.run_dir.join("summary.json");
        crate::fsutil::write_atomic(&path, serde_json::to_string_pretty(&summary)?.as_bytes())?;
        Ok(Diverged { step, loss, reason, run_dir: self.run_dir.clone() })
    }

    /// Writes an evaluation's metrics and shows them.
    pub fn evaluation(&mut self, step: usize, evaluation: &Evaluation) -> Result<()> {
        let mut record = json!({"step": step});
        for (name, value) in evaluation {
            record[name] = json!(value);
        }
        self.metrics.write(record)?;
        let shown: Vec<String> = evaluation.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
        self.say(format!("step {step:>6}: {}", shown.join(", ")));
        Ok(())
    }

    /// A sample of what the model generates at `step`: one metrics.jsonl record
    /// `{"step", "samples": [...]}`, and the text above the progress bar.
    pub fn samples(&mut self, step: usize, samples: &[String]) -> Result<()> {
        self.metrics.write(json!({"step": step, "samples": samples}))?;
        for sample in samples {
            self.say(format!("step {step:>6}: sample: {sample:?}"));
        }
        Ok(())
    }

    /// Runs `work` (evaluation, checkpoints) outside the throughput figure.
    pub fn side_work<R>(&mut self, work: impl FnOnce(&mut Self) -> Result<R>) -> Result<R> {
        let started = Instant::now();
        let out = work(self)?;
        if self.timed_from.is_some() {
            self.side_work += started.elapsed();
        }
        self.progress.inc(1);
        Ok(out)
    }

    /// Ends the run: summary.json and the closing line. `interrupted`: the run stops for a
    /// signal (status "interrupted").
    pub fn finish(
        self,
        state: &TrainState,
        params: usize,
        total_steps: usize,
        interrupted: bool,
    ) -> Result<RunSummary> {
        self.progress.finish_and_clear();
        let elapsed = self.started.elapsed().as_secs_f64();
        let (tokens_per_s, ms_per_step, final_train_loss) = match state.step > self.start_step {
            true => self.throughput(state),
            false => self.recorded(state)?,
        };
        let summary = RunSummary {
            run_dir: self.run_dir.clone(),
            steps: state.step,
            params,
            elapsed_s: elapsed,
            tokens_per_s,
            ms_per_step,
            peak_rss_mb: peak_rss_mb(),
            flops_per_token: self.mfu.as_ref().map(|m| m.flops_per_token),
            peak_flops: self.mfu.as_ref().map(|m| m.peak_flops),
            peak_source: self.mfu.as_ref().map(|m| m.peak_source.clone()),
            mfu: self.mfu.as_ref().map(|m| m.of(tokens_per_s)),
            final_train_loss,
            val_loss: state.last_val_loss,
            status: match (state.step == total_steps, interrupted) {
                (true, _) => "finished".into(),
                (false, true) => "interrupted".into(),
                (false, false) => "stopped".into(),
            },
            losses: self.losses.clone(),
        };
        let path = self.run_dir.join("summary.json");
        crate::fsutil::write_atomic(&path, serde_json::to_string_pretty(&summary)?.as_bytes())?;
        let shown = |l: Option<f64>| l.map_or("-".into(), |l| format!("{l:.4}"));
        let mfu = summary.mfu.map_or(String::new(), |m| format!(", mfu {:.1}%", 100.0 * m));
        self.say(format!(
            "{}: {} steps in {elapsed:.1}s ({:.0} tokens/s{mfu}), train loss {}, val loss {}",
            if interrupted { "interrupted" } else { "done" },
            summary.steps,
            summary.tokens_per_s,
            shown(summary.final_train_loss),
            shown(summary.val_loss),
        ));
        Ok(summary)
    }
}

impl Logger {
    /// Throughput of this invocation's timed steps, and its last logged loss.
    fn throughput(&self, state: &TrainState) -> (f64, f64, Option<f64>) {
        let (timed_start, timed_step, timed_tokens) = self.timed_from.unwrap_or((self.started, self.start_step, 0));
        let timed_steps = (state.step - timed_step).max(1);
        let timed_secs = (timed_start.elapsed() - self.side_work.min(timed_start.elapsed())).as_secs_f64();
        let tokens_per_s = (state.tokens_seen - timed_tokens) as f64 / timed_secs;
        (tokens_per_s, 1000.0 * timed_secs / timed_steps as f64, self.losses.last().map(|(_, l)| *l))
    }

    /// For a run summarised without training a step (killed after its last checkpoint):
    /// throughput and last loss as metrics.jsonl recorded them.
    fn recorded(&self, state: &TrainState) -> Result<(f64, f64, Option<f64>)> {
        let records = super::metrics::read_metrics(&self.run_dir.join("metrics.jsonl"))?;
        let values = |key: &str| records.iter().filter_map(|r| r.get(key)?.as_f64()).collect::<Vec<f64>>();
        let speeds = values("tokens_per_s");
        let tokens_per_s = speeds.iter().sum::<f64>() / speeds.len().max(1) as f64;
        let tokens_per_step = state.tokens_seen as f64 / state.step.max(1) as f64;
        let ms_per_step = if tokens_per_s > 0.0 { 1000.0 * tokens_per_step / tokens_per_s } else { 0.0 };
        Ok((tokens_per_s, ms_per_step, values("loss").last().copied()))
    }
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
