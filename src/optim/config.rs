//! `[optim]` and `[schedule]`: AdamW's settings and the learning-rate schedule.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    #[serde(default = "default_lr")]
    pub lr: f64,
    #[serde(default = "default_betas")]
    pub betas: [f64; 2],
    #[serde(default = "default_eps")]
    pub eps: f64,
    #[serde(default)]
    pub weight_decay: f64,
    /// Apply weight decay to token/position embeddings too (nanoGPT does; BERT does not).
    #[serde(default)]
    pub decay_embeddings: bool,
    /// Clip the global gradient norm to this value; absent or 0 turns clipping off.
    pub grad_clip: Option<f64>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Decay {
    Cosine,
    Linear,
    Constant,
    InverseSqrt,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    #[serde(default)]
    pub warmup_steps: usize,
    #[serde(default = "default_decay")]
    pub decay: Decay,
    /// Floor of the learning rate for cosine, linear and inverse-sqrt decay.
    #[serde(default)]
    pub min_lr: f64,
    /// Step at which cosine/linear decay reaches `min_lr`; `train.steps` when absent.
    pub decay_steps: Option<usize>,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            lr: default_lr(),
            betas: default_betas(),
            eps: default_eps(),
            weight_decay: 0.0,
            decay_embeddings: false,
            grad_clip: None,
        }
    }
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self { warmup_steps: 0, decay: default_decay(), min_lr: 0.0, decay_steps: None }
    }
}

fn default_lr() -> f64 {
    1e-3
}
fn default_betas() -> [f64; 2] {
    [0.9, 0.999]
}
fn default_eps() -> f64 {
    1e-8
}
fn default_decay() -> Decay {
    Decay::Cosine
}

impl OptimConfig {
    pub fn validate(&self) -> Result<()> {
        if self.lr <= 0.0 || !self.lr.is_finite() {
            bail!("`optim.lr` must be positive, got {}", self.lr);
        }
        for (i, b) in self.betas.iter().enumerate() {
            if !(0.0..1.0).contains(b) {
                bail!("`optim.betas[{i}]` must be in [0, 1), got {b}");
            }
        }
        if self.eps <= 0.0 {
            bail!("`optim.eps` must be positive, got {}", self.eps);
        }
        if self.weight_decay < 0.0 {
            bail!("`optim.weight_decay` must be non-negative (0: none), got {}", self.weight_decay);
        }
        if let Some(c) = self.grad_clip.filter(|c| *c < 0.0) {
            bail!("`optim.grad_clip` must be positive (or 0 / absent for no clipping), got {c}");
        }
        Ok(())
    }
}

impl ScheduleConfig {
    /// The schedule of a run of `total_steps` steps peaking at `peak_lr` (`optim.lr`).
    pub fn validate(&self, total_steps: usize, peak_lr: f64) -> Result<()> {
        if self.warmup_steps > total_steps {
            bail!(
                "`schedule.warmup_steps` ({}) exceeds `train.steps` ({total_steps}): the run would end before warmup does",
                self.warmup_steps
            );
        }
        if self.min_lr < 0.0 || self.min_lr > peak_lr {
            bail!("`schedule.min_lr` ({}) must be in [0, optim.lr = {peak_lr}]", self.min_lr);
        }
        if let Some(d) = self.decay_steps.filter(|&d| d <= self.warmup_steps) {
            bail!("`schedule.decay_steps` ({d}) must exceed `schedule.warmup_steps` ({})", self.warmup_steps);
        }
        if self.decay == Decay::InverseSqrt && self.warmup_steps == 0 {
            bail!("`schedule.decay = \"inverse-sqrt\"` scales by sqrt(warmup_steps / step) and needs `schedule.warmup_steps` > 0");
        }
        Ok(())
    }
}
