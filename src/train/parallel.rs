//! How a run spreads over processes: one component the training loop asks, as torchtitan's
//! loop asks its `parallelize` (which rank writes, which micro-batches this rank computes, the
//! gradients reduced for the update, the starting weights shared, a stop signal agreed), so
//! that another strategy (optimizer state or parameters sharded over the ranks) is another
//! implementation of [`Parallel`], not code woven through the loop. [`DataParallel`] is the
//! one there is: every rank holds every parameter and the gradients are summed.

use std::ops::Range;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor, Var};

use crate::distributed::Collective;
use crate::model::ParamStore;

/// What the training loop asks of the run's processes. Every rank calls the same methods in
/// the same order (the collective ones are collectives).
pub trait Parallel {
    /// The ranks' collective, for what a task sums itself (its evaluation's statistics).
    fn collective(&self) -> &dyn Collective;

    fn rank(&self) -> usize {
        self.collective().rank()
    }

    fn size(&self) -> usize {
        self.collective().size()
    }

    /// Whether this process writes the run's files (config, metrics, checkpoints, samples,
    /// summary) and runs the evaluations that are not split over the ranks.
    fn is_writer(&self) -> bool {
        self.rank() == 0
    }

    /// Returns once every rank has called it (the writer after readying the run directory, the
    /// others before they read it).
    fn barrier(&self) -> Result<()> {
        self.collective().barrier()
    }

    /// The micro-batches a step takes over every rank, for `per_rank` on the command line.
    fn step_micro_batches(&self, per_rank: usize) -> usize;

    /// Which of a step's `global` micro-batches this rank computes.
    fn micro_batches(&self, global: usize) -> Result<Range<usize>>;

    /// A step's counts (targets, tokens) summed over the ranks, in place.
    fn sum_counts(&self, counts: &mut [u64]) -> Result<()> {
        self.collective().sum_counts(counts)
    }

    /// This rank's gradients (aligned with `vars`; None: no gradient here) and loss made the
    /// step's, as the update takes them.
    fn reduce_gradients(
        &self,
        grads: Vec<Option<Tensor>>,
        loss: Tensor,
        vars: &[Var],
    ) -> Result<(Vec<Option<Tensor>>, Tensor)>;

    /// Every rank's parameters made the writer's (its initialisation, pretrained weights or
    /// checkpoint), so the ranks step in lockstep from the first step.
    fn share_parameters(&self, params: &ParamStore) -> Result<()>;

    /// The stop signal (SIGINT, SIGTERM) any rank received: every rank stops after the same step.
    fn agreed_interrupt(&self) -> Result<Option<i32>>;

    /// Seconds this rank has spent reducing gradients so far, where the reduction is
    /// synchronous (MPI's; None where it is queued on a GPU stream).
    fn reduce_seconds(&self) -> Option<f64> {
        self.collective().all_reduce_seconds()
    }
}

/// Data parallelism: every rank holds every parameter, computes its share of each step's
/// micro-batches, and the gradients and the loss are summed over the ranks (over MPI, or
/// NCCL between GPUs). One process is its world of one.
pub struct DataParallel<'a> {
    world: &'a dyn Collective,
    /// The collective between the ranks' devices, where it is not `world`'s (NCCL).
    on_device: Option<Box<dyn Collective + 'a>>,
}

impl<'a> DataParallel<'a> {
    pub fn new(world: &'a dyn Collective) -> Self {
        Self { world, on_device: None }
    }

    /// The device this rank trains on, for `train.device` = `spec` (several ranks on a machine
    /// take a GPU each), and the strategy moving its sums between those devices.
    pub fn on_device(world: &'a dyn Collective, spec: &str) -> Result<(Self, Device)> {
        let device = crate::distributed::rank_device(spec, world)?;
        let on_device = crate::distributed::on_device(world, &device)?;
        Ok((Self { world, on_device }, device))
    }
}

impl Parallel for DataParallel<'_> {
    fn collective(&self) -> &dyn Collective {
        self.on_device.as_deref().unwrap_or(self.world)
    }

    /// `train.grad_accum` on the command line is per rank; the run keeps the step's
    /// micro-batches over all ranks, so a resume with another world size keeps the batch.
    fn step_micro_batches(&self, per_rank: usize) -> usize {
        per_rank * self.size()
    }

    /// Rank r computes micro-batches r G/W .. (r + 1) G/W - 1, so a W-rank run is the
    /// one-process run with the same G, up to the order of the sums.
    fn micro_batches(&self, global: usize) -> Result<Range<usize>> {
        let ranks = self.size();
        if !global.is_multiple_of(ranks) {
            bail!(
                "`train.grad_accum` = {global} micro-batches per step cannot be split over {ranks} ranks; \
                 resume with a world size that divides it"
            );
        }
        let local = global / ranks;
        let first = self.rank() * local;
        Ok(first..first + local)
    }

    /// One collective call for the gradients and the loss; a parameter without a gradient
    /// here counts as zeros, since another rank may have one.
    fn reduce_gradients(
        &self,
        grads: Vec<Option<Tensor>>,
        loss: Tensor,
        vars: &[Var],
    ) -> Result<(Vec<Option<Tensor>>, Tensor)> {
        if self.size() == 1 {
            return Ok((grads, loss));
        }
        let mut flat: Vec<Tensor> = grads
            .into_iter()
            .zip(vars)
            .map(|(g, var)| g.map_or_else(|| var.as_tensor().zeros_like(), Ok))
            .collect::<candle_core::Result<_>>()?;
        flat.push(loss);
        self.collective().sum_tensors(&mut flat)?;
        let loss = flat.pop().context("the loss went missing in the all-reduce")?;
        Ok((flat.into_iter().map(Some).collect(), loss))
    }

    fn share_parameters(&self, params: &ParamStore) -> Result<()> {
        if self.size() == 1 {
            return Ok(());
        }
        let vars: Vec<_> = params.named_vars().into_iter().map(|(_, v)| v).collect();
        let mut values: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        self.collective().broadcast_tensors(&mut values)?;
        for (var, value) in vars.iter().zip(&values) {
            var.set(value)?;
        }
        Ok(())
    }

    /// SIGINT to mpirun reaches every rank, but not at the same instant.
    fn agreed_interrupt(&self) -> Result<Option<i32>> {
        let mine = crate::interrupt::requested();
        if self.size() == 1 {
            return Ok(mine);
        }
        let mut any = [mine.is_some() as u64];
        self.collective().sum_counts(&mut any)?;
        Ok((any[0] > 0).then(|| mine.unwrap_or(libc::SIGINT)))
    }
}
