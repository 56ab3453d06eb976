//! A rank of the MPI world (rsmpi over Open MPI, the engine Horovod uses on CPUs): the host's
//! collectives, and a bucket transport through host memory.

use std::cell::Cell;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use candle_core::Tensor;
use mpi::collective::SystemOperation;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use super::buckets::{self, Transport};
use super::Collective;

/// A rank of the MPI world.
pub struct Mpi {
    // Finalises MPI when dropped, so it lives as long as the world.
    _universe: mpi::environment::Universe,
    world: SimpleCommunicator,
    /// (rank, size) among the ranks on this machine.
    local: (usize, usize),
    /// Time spent summing gradients so far.
    all_reduce: Cell<Duration>,
}

impl Mpi {
    pub fn init() -> Result<Self> {
        // Only this thread calls MPI; the kernels' worker threads never do.
        let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Funneled)
            .context("MPI was already initialised in this process (one run per process under mpirun)")?;
        let world = universe.world();
        // The ranks that share this machine's memory, ordered by world rank.
        let node = world.split_shared(world.rank());
        let local = (node.rank() as usize, node.size() as usize);
        Ok(Self { _universe: universe, world, local, all_reduce: Cell::default() })
    }
}

/// Buckets through host memory: read, all-reduced by MPI, written back to the bucket's device.
struct HostTransport<'a>(&'a SimpleCommunicator);

impl Transport for HostTransport<'_> {
    fn sum(&self, bucket: &Tensor) -> Result<Tensor> {
        let send = crate::host::vec1::<f32>(bucket)?;
        let mut sum = vec![0f32; send.len()];
        self.0.all_reduce_into(&send[..], &mut sum[..], SystemOperation::sum());
        Ok(Tensor::from_vec(sum, send.len(), bucket.device())?)
    }
    fn broadcast(&self, bucket: &Tensor) -> Result<Tensor> {
        let mut values = crate::host::vec1::<f32>(bucket)?;
        self.0.process_at_rank(0).broadcast_into(&mut values[..]);
        Ok(Tensor::from_vec(values, bucket.elem_count(), bucket.device())?)
    }
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }
    fn size(&self) -> usize {
        self.world.size() as usize
    }
    fn local(&self) -> (usize, usize) {
        self.local
    }
    fn sum_counts(&self, counts: &mut [u64]) -> Result<()> {
        let send = counts.to_vec();
        self.world.all_reduce_into(&send[..], counts, SystemOperation::sum());
        Ok(())
    }
    fn sum_values(&self, values: &mut [f64]) -> Result<()> {
        let send = values.to_vec();
        self.world.all_reduce_into(&send[..], values, SystemOperation::sum());
        Ok(())
    }
    fn sum_tensors(&self, tensors: &mut [Tensor]) -> Result<()> {
        let started = Instant::now();
        let done = buckets::sum_tensors(&HostTransport(&self.world), tensors);
        self.all_reduce.set(self.all_reduce.get() + started.elapsed());
        done
    }
    fn broadcast_tensors(&self, tensors: &mut [Tensor]) -> Result<()> {
        buckets::broadcast_tensors(&HostTransport(&self.world), tensors)
    }
    fn broadcast_bytes(&self, bytes: &mut [u8]) -> Result<()> {
        self.world.process_at_rank(0).broadcast_into(bytes);
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        self.world.barrier();
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
    fn all_reduce_seconds(&self) -> Option<f64> {
        Some(self.all_reduce.get().as_secs_f64())
    }
}
