//! One optimizer step: micro-batches -> accumulated gradients -> all-reduce -> clip ->
//! optimizer, with the per-layer diagnostics on their steps.

use anyhow::{Context, Result};
use candle_core::{Tensor, Var};
use serde_json::Value;

use super::diagnostics;
use super::parallel::Parallel;
use super::task::Task;
use crate::kernels::Backend;
use crate::model::Mode;
use crate::optim::{clip_factor, AdamW, Gate};
use crate::rng::Rng;

const DROPOUT_STREAM: u64 = 3;

/// What one step reports, still on the device (the logger reads it on logging steps).
pub struct StepOutput {
    pub loss: Tensor,
    pub grad_norm: Tensor,
    pub tokens: u64,
    /// With loss scaling: the scaler's state after the step (scale, good steps, skipped steps).
    pub scaling: Option<Tensor>,
    /// The diagnostics record, on diagnostics steps.
    pub diagnostics: Option<Value>,
}

/// Runs the optimizer steps of a run over `vars` (aligned with the optimizer's parameters).
/// `train.grad_accum` counts the step's micro-batches over all ranks; `parallel` says which
/// this rank computes and reduces the gradients.
pub struct Stepper<'a> {
    vars: Vec<Var>,
    names: Vec<String>,
    parallel: &'a dyn Parallel,
    seed: u64,
    /// This rank's micro-batches of each step.
    micro: std::ops::Range<usize>,
    grad_clip: Option<f64>,
    diagnostics_every: usize,
    /// The backend of the parameters' work (the optimizer's): the gradient norm.
    backend: &'static dyn Backend,
}

impl<'a> Stepper<'a> {
    pub fn new(optimizer: &AdamW, parallel: &'a dyn Parallel, cfg: &crate::config::Config) -> Result<Self> {
        Ok(Self {
            vars: optimizer.vars().cloned().collect(),
            names: optimizer.names().map(String::from).collect(),
            parallel,
            seed: cfg.train.seed,
            micro: parallel.micro_batches(cfg.train.grad_accum)?,
            grad_clip: cfg.optim.grad_clip.filter(|c| *c > 0.0),
            diagnostics_every: cfg.train.diagnostics_every,
            backend: optimizer.backend(),
        })
    }

    /// Optimizer step `step` at learning rate `lr`.
    pub fn step<T: Task>(&self, task: &T, optimizer: &mut AdamW, step: usize, lr: f64) -> Result<StepOutput> {
        let batches = self.micro.clone().map(|micro| task.train_batch(step, micro)).collect::<Result<Vec<_>>>()?;
        // The loss is normalised by the step's target count over every rank, so the ranks'
        // gradients add up to the global batch's.
        let mut counts =
            [batches.iter().map(|b| task.targets(b) as u64).sum(), batches.iter().map(|b| task.tokens(b) as u64).sum()];
        self.parallel.sum_counts(&mut counts)?;
        let [targets, tokens] = counts;
        let micro_losses = self.micro.clone().zip(&batches).map(|(micro, batch)| {
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
        let loss_scale = optimizer.scaler.as_ref().map(|s| s.scale()).transpose()?;
        let (grads, loss) = accumulate_gradients(&self.vars, micro_losses, loss_scale.as_ref())?;
        let (grads, loss) = self.parallel.reduce_gradients(grads, loss, &self.vars)?;
        let diagnose = self.diagnostics_every > 0 && step.is_multiple_of(self.diagnostics_every);
        let before_update = match diagnose {
            true => Some((
                diagnostics::grad_norms(&self.names, &grads, loss_scale.as_ref())?,
                task.residual_rms(&batches[0])?,
                diagnostics::WeightSnapshot::take(&self.names, &self.vars)?,
            )),
            false => None,
        };
        let update = self.update(optimizer, &grads)?;
        optimizer.step(&grads, lr, update.multiplier.as_ref(), update.gate.as_ref())?;
        let diagnostics = match before_update {
            Some((norms, rms, snapshot)) => Some(diagnostics::record(step, norms, snapshot.update_ratios()?, rms)?),
            None => None,
        };
        let (grad_norm, scaling) = (update.norm, optimizer.scaler.as_ref().map(|s| s.state().clone()));
        Ok(StepOutput { loss, grad_norm, tokens, scaling, diagnostics })
    }

    /// How the optimizer takes the summed gradients: their norm, their multiplier (clipping,
    /// and 1 / the loss scale) and, with loss scaling, whether the step applies.
    fn update(&self, optimizer: &mut AdamW, grads: &[Option<Tensor>]) -> Result<Update> {
        let norm = self.backend.global_norm(grads)?;
        let attempted = optimizer.steps + 1;
        Ok(match optimizer.scaler.as_mut() {
            Some(scaler) => {
                let unscaled = scaler.unscale(&norm, self.grad_clip, attempted)?;
                Update { norm: unscaled.norm, multiplier: Some(unscaled.multiplier), gate: Some(unscaled.gate) }
            }
            None => {
                let multiplier = self.grad_clip.map(|max_norm| clip_factor(&norm, max_norm)).transpose()?;
                Update { norm, multiplier, gate: None }
            }
        })
    }
}

/// The optimizer's view of a step's gradients, on the device.
struct Update {
    norm: Tensor,
    multiplier: Option<Tensor>,
    gate: Option<Gate>,
}

/// Backward over each micro-batch's loss (already divided by the step's total target count,
/// so k micro-batches of n sequences give the gradient of one batch of k * n), summing
/// gradients. The iterator is lazy: each graph is freed before the next forward. Returns the
/// gradients (aligned with `vars`) and the step's loss, both still on the device. With a
/// `loss_scale` the backward runs on loss x scale (the gradients come out scaled by it; the
/// loss returned is not).
pub fn accumulate_gradients(
    vars: &[Var],
    micro_losses: impl Iterator<Item = Result<Tensor>>,
    loss_scale: Option<&Tensor>,
) -> Result<(Vec<Option<Tensor>>, Tensor)> {
    let mut grads: Vec<Option<Tensor>> = vec![None; vars.len()];
    let mut step_loss: Option<Tensor> = None;
    for loss in micro_losses {
        let loss = loss?;
        let store = match loss_scale {
            Some(scale) => loss.broadcast_mul(scale)?.backward()?,
            None => loss.backward()?,
        };
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
