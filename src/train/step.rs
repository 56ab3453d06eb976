//! One optimizer step: micro-batches -> accumulated gradients -> all-reduce -> clip ->
//! optimizer, with the per-layer diagnostics on their steps.

use anyhow::{Context, Result};
use candle_core::{Tensor, Var};
use serde_json::Value;

use super::diagnostics;
use super::task::Task;
use crate::model::Mode;
use crate::optim::{clip_factor, global_norm, AdamW};
use crate::rng::Rng;

const DROPOUT_STREAM: u64 = 3;

/// Where a data-parallel run sums what its ranks computed. One process sums nothing.
pub trait AllReduce {
    /// The step's target count over every rank, from this rank's `local` count (the loss is
    /// normalised by it, so every rank's gradients add up to the global batch's).
    fn sum_targets(&self, local: usize) -> Result<usize>;
    /// Sums the gradients over the ranks, in place.
    fn sum_gradients(&self, grads: &mut [Option<Tensor>]) -> Result<()>;
}

/// The single-process "collective": every sum is of one term.
pub struct SingleProcess;

impl AllReduce for SingleProcess {
    fn sum_targets(&self, local: usize) -> Result<usize> {
        Ok(local)
    }
    fn sum_gradients(&self, _grads: &mut [Option<Tensor>]) -> Result<()> {
        Ok(())
    }
}

/// What one step reports, still on the device (the logger reads it on logging steps).
pub struct StepOutput {
    pub loss: Tensor,
    pub grad_norm: Tensor,
    pub tokens: u64,
    /// The diagnostics record, on diagnostics steps.
    pub diagnostics: Option<Value>,
}

/// Runs the optimizer steps of a run over `vars` (aligned with the optimizer's parameters).
pub struct Stepper<'a> {
    vars: Vec<Var>,
    names: Vec<String>,
    collective: &'a dyn AllReduce,
    seed: u64,
    grad_accum: usize,
    grad_clip: Option<f64>,
    diagnostics_every: usize,
}

impl<'a> Stepper<'a> {
    pub fn new(optimizer: &AdamW, collective: &'a dyn AllReduce, cfg: &crate::config::Config) -> Self {
        Self {
            vars: optimizer.vars().cloned().collect(),
            names: optimizer.names().map(String::from).collect(),
            collective,
            seed: cfg.train.seed,
            grad_accum: cfg.train.grad_accum,
            grad_clip: cfg.optim.grad_clip.filter(|c| *c > 0.0),
            diagnostics_every: cfg.train.diagnostics_every,
        }
    }

    /// Optimizer step `step` at learning rate `lr`.
    pub fn step<T: Task>(&self, task: &T, optimizer: &mut AdamW, step: usize, lr: f64) -> Result<StepOutput> {
        let batches = (0..self.grad_accum).map(|micro| task.train_batch(step, micro)).collect::<Result<Vec<_>>>()?;
        let targets = self.collective.sum_targets(batches.iter().map(|b| task.targets(b)).sum())?;
        let tokens: u64 = batches.iter().map(|b| task.tokens(b) as u64).sum();
        let micro_losses = batches.iter().enumerate().map(|(micro, batch)| {
            let rng = Rng::derived(self.seed, &[DROPOUT_STREAM, step as u64, micro as u64]);
            if let Some(device) = self.vars.first().map(|v| v.device()).filter(|d| !d.is_cpu()) {
                // Device-side dropout draws from the device RNG: reseeded from (seed, step,
                // micro) per micro-batch, its masks are a function of the step, so a resumed
                // run sees the uninterrupted run's masks (the CPU draws from `rng` itself).
                device.set_seed({
                    let mut copy = rng;
                    copy.next_u64()
                })?;
            }
            let mut mode = Mode::train(rng);
            Ok((task.loss_sum(batch, &mut mode)? / targets.max(1) as f64)?)
        });
        let (mut grads, loss) = accumulate_gradients(&self.vars, micro_losses)?;
        self.collective.sum_gradients(&mut grads)?;
        let grad_norm = global_norm(&grads)?;
        let diagnose = self.diagnostics_every > 0 && step.is_multiple_of(self.diagnostics_every);
        let before_update = match diagnose {
            true => Some((
                diagnostics::grad_norms(&self.names, &grads)?,
                task.residual_rms(&batches[0])?,
                diagnostics::WeightSnapshot::take(&self.names, &self.vars)?,
            )),
            false => None,
        };
        let clip = self.grad_clip.map(|max_norm| clip_factor(&grad_norm, max_norm)).transpose()?;
        optimizer.step(&grads, lr, clip.as_ref())?;
        let diagnostics = match before_update {
            Some((norms, rms, snapshot)) => Some(diagnostics::record(step, norms, snapshot.update_ratios()?, rms)?),
            None => None,
        };
        Ok(StepOutput { loss, grad_norm, tokens, diagnostics })
    }
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
