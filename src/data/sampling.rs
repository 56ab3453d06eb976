//! How example-based tasks (classification, seq2seq) draw their data: a seeded validation
//! hold-out, and epochs that visit every training example once in a seeded order. Both are pure
//! functions of the seed, so a resumed run sees what the uninterrupted run saw.

use std::cell::RefCell;

use anyhow::{bail, Result};

use crate::rng::Rng;

const TRAIN_STREAM: u64 = 1;
const SPLIT_STREAM: u64 = 4;

/// A uniformly random permutation of 0..n (Fisher-Yates).
pub fn permutation(n: usize, rng: &mut Rng) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, rng.below(i + 1));
    }
    order
}

/// Moves a seeded random `fraction` of `items` (at least one) out, keeping both parts in file
/// order. `what` and `source` name them in the error when too few are left to train on.
pub fn hold_out<T>(
    items: &mut Vec<T>,
    fraction: f64,
    seed: u64,
    what: &str,
    source: &std::path::Path,
) -> Result<Vec<T>> {
    let n = items.len();
    let count = ((fraction * n as f64).round() as usize).max(1);
    if count >= n {
        bail!("{} has {n} {what}: too few to hold out a validation share; add `data.val_path`", source.display());
    }
    let mut held = vec![false; n];
    for &i in &permutation(n, &mut Rng::derived(seed, &[SPLIT_STREAM]))[..count] {
        held[i] = true;
    }
    let (mut kept, mut val) = (Vec::with_capacity(n - count), Vec::with_capacity(count));
    for (item, held) in std::mem::take(items).into_iter().zip(held) {
        if held {
            val.push(item);
        } else {
            kept.push(item);
        }
    }
    *items = kept;
    Ok(val)
}

/// Which training examples each micro-batch sees: epoch e visits all n examples in an order
/// drawn from (seed, e). The current epoch's order is kept, so a step costs O(batch), not O(n).
pub struct EpochSampler {
    seed: u64,
    n: usize,
    order: RefCell<Option<(usize, Vec<usize>)>>,
}

impl EpochSampler {
    pub fn new(seed: u64, n: usize) -> Self {
        Self { seed, n, order: RefCell::new(None) }
    }

    /// Indices of the `batch` examples of micro-batch `micro` of step `step`.
    pub fn batch(&self, step: usize, micro: usize, grad_accum: usize, batch: usize) -> Vec<usize> {
        let first = (step * grad_accum + micro) * batch;
        let mut order = self.order.borrow_mut();
        (first..first + batch)
            .map(|global| {
                let epoch = global / self.n;
                if order.as_ref().is_some_and(|(e, _)| *e != epoch) {
                    *order = None;
                }
                let (_, permuted) = order.get_or_insert_with(|| {
                    (epoch, permutation(self.n, &mut Rng::derived(self.seed, &[TRAIN_STREAM, epoch as u64])))
                });
                permuted[global % self.n]
            })
            .collect()
    }
}
