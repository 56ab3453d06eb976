//! What the task files share: a model rebuilt over the training parameters for an evaluation,
//! and the evaluation split over the ranks (each scores its share, the statistics are summed, so
//! every rank gets the one process's numbers up to the order of the sums).

use anyhow::Result;
use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use crate::distributed::Collective;
use crate::model::ParamStore;

/// The training parameters, detached (no graph), as a model for an evaluation is built over.
pub fn detached(params: &ParamStore, device: &Device) -> VarBuilder<'static> {
    VarBuilder::from_tensors(params.detached(), DType::F32, device)
}

/// This rank's share of `items`: items rank, rank + size, ...
pub fn share<'a, T>(world: &dyn Collective, items: &'a [T]) -> Vec<&'a T> {
    items.iter().skip(world.rank()).step_by(world.size()).collect()
}

/// This rank's share of `count` numbered batches.
pub fn batch_share(world: &dyn Collective, count: usize) -> impl Iterator<Item = usize> {
    (world.rank()..count).step_by(world.size())
}

/// The sums `tally` makes of this rank's share of `items`, summed over the ranks.
pub fn split_sums<T>(
    world: &dyn Collective,
    items: &[T],
    tally: impl FnOnce(&[&T]) -> Result<Vec<f64>>,
) -> Result<Vec<f64>> {
    let mut sums = tally(&share(world, items))?;
    world.sum_values(&mut sums)?;
    Ok(sums)
}
