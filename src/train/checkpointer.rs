//! The run's checkpoints: the starting state (fresh, or restored from a checkpoint), best
//! tracking on `checkpoint.best_metric`, and the save schedule.

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::Device;

use super::task::Evaluation;
use crate::checkpoint::{self, TrainState};
use crate::config::{Config, Metric};
use crate::model::ParamStore;
use crate::optim::AdamW;
use crate::rng::hash_str;
use crate::run_dir::RunDir;

pub struct Checkpointer<'a> {
    run: &'a RunDir,
    every: usize,
    keep_last: usize,
    best_metric: Metric,
    config_hash: String,
}

impl<'a> Checkpointer<'a> {
    /// `config_text`: the resolved config the run trains with (its hash goes into each state).
    pub fn new(run: &'a RunDir, cfg: &Config, config_text: &str) -> Result<Self> {
        let name = &cfg.checkpoint.best_metric;
        let best_metric =
            cfg.task.kind().metric(name).with_context(|| format!("`{name}` is not a metric of this task"))?;
        Ok(Self {
            run,
            every: cfg.checkpoint.every,
            keep_last: cfg.checkpoint.keep_last,
            best_metric,
            config_hash: format!("{:016x}", hash_str(config_text)),
        })
    }

    /// The state the run starts from: fresh, or the checkpoint `resume_from` restored into
    /// `params` and `optimizer`. A run that has already done its `train.steps` is an error,
    /// unless it was stopped before its summary.json said so (killed between its last
    /// checkpoint and its summary): then it starts at its end, and the loop only summarises.
    pub fn start(
        &self,
        cfg: &Config,
        resume_from: Option<&Path>,
        params: &ParamStore,
        optimizer: &mut AdamW,
        device: &Device,
    ) -> Result<TrainState> {
        let state = match resume_from {
            None => TrainState {
                step: 0,
                seed: cfg.train.seed,
                tokens_seen: 0,
                best_val_loss: None,
                best_step: None,
                best_score: None,
                last_val_loss: None,
                initial_loss: None,
                config_hash: self.config_hash.clone(),
                taper_version: env!("CARGO_PKG_VERSION").into(),
                files: Default::default(),
            },
            Some(ckpt) => self.restore(ckpt, params, optimizer, device)?,
        };
        let unsummarised = state.step == cfg.train.steps && self.run.status().as_deref() != Some("finished");
        if state.step >= cfg.train.steps && !unsummarised {
            bail!(
                "run {} has already completed {} of {} steps; raise `train.steps` to continue it",
                self.run.path().display(),
                state.step,
                cfg.train.steps
            );
        }
        Ok(state)
    }

    fn restore(&self, ckpt: &Path, params: &ParamStore, optimizer: &mut AdamW, device: &Device) -> Result<TrainState> {
        checkpoint::load_into(params, checkpoint::load_tensors(&ckpt.join("model.safetensors"), device)?, ckpt)?;
        let mut state = checkpoint::read_state(ckpt)?;
        let moments = checkpoint::load_tensors(&ckpt.join("optimizer.safetensors"), device)?;
        optimizer
            .load_state(moments, state.step)
            .with_context(|| format!("cannot restore optimizer from {}", ckpt.display()))?;
        state.config_hash = self.config_hash.clone();
        Ok(state)
    }

    /// Takes an evaluation into the state (last and best val loss, best score); true when it
    /// is the best so far on `checkpoint.best_metric`.
    pub fn observe(&self, state: &mut TrainState, evaluation: &Evaluation) -> Result<bool> {
        if let Some(&val_loss) = evaluation.get("val_loss") {
            state.last_val_loss = Some(val_loss);
            if state.best_val_loss.is_none_or(|best| val_loss < best) {
                state.best_val_loss = Some(val_loss);
            }
        }
        let metric = self.best_metric;
        let name = metric.name;
        let score = *evaluation.get(name).with_context(|| format!("the evaluation did not report `{name}`"))?;
        if state.best_score.is_none_or(|best| metric.better(score, best)) {
            state.best_score = Some(score);
            state.best_step = Some(state.step);
            return Ok(true);
        }
        Ok(false)
    }

    /// Saves a checkpoint when this step is its turn: `now` (the last step, or the run stops
    /// for a signal), a new best (so `--checkpoint best` always exists), or every
    /// `checkpoint.every` steps.
    pub fn maybe_save(
        &self,
        state: &TrainState,
        now: bool,
        new_best: bool,
        params: &ParamStore,
        optimizer: &AdamW,
    ) -> Result<()> {
        if now || new_best || (self.every > 0 && state.step.is_multiple_of(self.every)) {
            let moments = optimizer.state_tensors()?;
            checkpoint::save(self.run.path(), &params.detached(), &moments, state, self.keep_last)?;
        }
        Ok(())
    }
}
