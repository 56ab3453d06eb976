//! Learning rate as a pure function of the step: linear warmup, then a decay to `min_lr`.

use crate::config::{Decay, ScheduleConfig};

#[derive(Debug, Clone)]
pub struct Schedule {
    pub peak_lr: f64,
    pub min_lr: f64,
    pub warmup_steps: usize,
    pub decay_steps: usize,
    pub decay: Decay,
}

impl Schedule {
    pub fn new(cfg: &ScheduleConfig, peak_lr: f64, total_steps: usize) -> Self {
        Self {
            peak_lr,
            min_lr: cfg.min_lr,
            warmup_steps: cfg.warmup_steps,
            decay_steps: cfg.decay_steps.unwrap_or(total_steps),
            decay: cfg.decay,
        }
    }

    /// The learning rate of (0-based) optimizer step `step`.
    pub fn lr(&self, step: usize) -> f64 {
        let (peak, floor, warmup) = (self.peak_lr, self.min_lr, self.warmup_steps);
        if step < warmup {
            // (step + 1) / (warmup + 1): never 0 on the first step, just under peak on the last
            // warmup step (nanoGPT and taper's PyTorch reference do the same).
            return peak * (step + 1) as f64 / (warmup + 1) as f64;
        }
        let progress = ((step - warmup) as f64 / (self.decay_steps.saturating_sub(warmup)).max(1) as f64).min(1.0);
        match self.decay {
            Decay::Constant => peak,
            Decay::Cosine => floor + 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()) * (peak - floor),
            Decay::Linear => peak - (peak - floor) * progress,
            // Vaswani et al.: peak at the end of warmup, then proportional to 1/sqrt(step).
            Decay::InverseSqrt => (peak * (warmup as f64 / (step + 1) as f64).sqrt()).max(floor),
        }
    }
}
