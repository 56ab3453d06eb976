//! Learning-rate schedule values at the boundaries.

use taper::config::{Decay, ScheduleConfig};
use taper::optim::Schedule;

fn schedule(decay: Decay, warmup: usize) -> Schedule {
    let cfg = ScheduleConfig { warmup_steps: warmup, decay, min_lr: 1e-4, decay_steps: None };
    Schedule::new(&cfg, 1e-3, 1000)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

#[test]
fn warmup_is_linear_and_never_zero() {
    let s = schedule(Decay::Cosine, 100);
    assert!(close(s.lr(0), 1e-3 / 101.0));
    assert!(close(s.lr(49), 1e-3 * 50.0 / 101.0));
    assert!(close(s.lr(99), 1e-3 * 100.0 / 101.0));
    assert!(close(s.lr(100), 1e-3), "peak right after warmup");
}

#[test]
fn cosine_ends_at_min_lr_and_stays_there() {
    let s = schedule(Decay::Cosine, 100);
    assert!(close(s.lr(550), 1e-4 + 0.5 * (1e-3 - 1e-4)), "half way");
    assert!(close(s.lr(1000), 1e-4));
    assert!(close(s.lr(5000), 1e-4));
}

#[test]
fn linear_decay() {
    let s = schedule(Decay::Linear, 0);
    assert!(close(s.lr(0), 1e-3));
    assert!(close(s.lr(500), 1e-3 - 0.5 * 9e-4));
    assert!(close(s.lr(1000), 1e-4));
}

#[test]
fn constant_after_warmup() {
    let s = schedule(Decay::Constant, 10);
    assert!(close(s.lr(10), 1e-3) && close(s.lr(999), 1e-3));
}

#[test]
fn inverse_sqrt_peaks_after_warmup_then_falls_as_one_over_sqrt() {
    let s = schedule(Decay::InverseSqrt, 100);
    assert!(close(s.lr(99), 1e-3 * 100.0 / 101.0));
    assert!(close(s.lr(399), 1e-3 * 0.5), "{}", s.lr(399));
    assert!(close(s.lr(10_000_000), 1e-4), "floored at min_lr");
}

#[test]
fn no_warmup_starts_at_peak() {
    assert!(close(schedule(Decay::Cosine, 0).lr(0), 1e-3));
}
