//! Data parallelism across processes: the world a run trains in (this process's rank, how many
//! ranks) and the collective that sums what the ranks computed. One process is a world of one.
//! Built with `--features mpi`, a process that mpirun (or srun) started is a rank of the MPI
//! world and the sums are MPI all-reduces (Open MPI: the engine Horovod uses on CPUs); the
//! protocol a run follows over it is `train::run_task`'s.

use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{bail, Result};
use candle_core::Tensor;

/// Time spent in gradient all-reduces so far in this process (nanoseconds).
static ALL_REDUCE_NANOS: AtomicU64 = AtomicU64::new(0);

/// Seconds this process has spent summing gradients over the ranks.
pub fn all_reduce_seconds() -> f64 {
    ALL_REDUCE_NANOS.load(Ordering::Relaxed) as f64 * 1e-9
}

/// What a data-parallel step needs from the other ranks. Every rank calls the same methods in
/// the same order (they are collectives).
pub trait Collective {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// Sums `counts` over the ranks, in place.
    fn sum_counts(&self, counts: &mut [u64]) -> Result<()>;
    /// Sums `values` over the ranks, in place (an evaluation's sums).
    fn sum_values(&self, values: &mut [f64]) -> Result<()>;
    /// Sums the tensors over the ranks, in place, in a few flat buckets (not one call each).
    fn sum_tensors(&self, tensors: &mut [Tensor]) -> Result<()>;
    /// Replaces the tensors with rank 0's.
    fn broadcast_tensors(&self, tensors: &mut [Tensor]) -> Result<()>;
    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<()>;
    /// Ends every rank's process with `code` (one rank's error ends the job, rather than
    /// leaving the others waiting in a collective).
    fn abort(&self, code: i32) -> !;
}

/// One process: every sum is of one term.
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn sum_counts(&self, _counts: &mut [u64]) -> Result<()> {
        Ok(())
    }
    fn sum_values(&self, _values: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn sum_tensors(&self, _tensors: &mut [Tensor]) -> Result<()> {
        Ok(())
    }
    fn broadcast_tensors(&self, _tensors: &mut [Tensor]) -> Result<()> {
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// How many ranks a launcher says this process is one of (Open MPI's mpirun; MPICH's and
/// Slurm's PMI), or None when no launcher started it.
fn launched_size() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"].iter().find_map(|k| std::env::var(k).ok()?.parse().ok())
}

/// The world this process trains in: MPI's when a launcher started it (with `--features
/// mpi`), else one process. A launched process without MPI support is an error that says how
/// to build it, rather than N processes each training alone.
pub fn world() -> Result<Box<dyn Collective>> {
    match launched_size() {
        #[cfg(feature = "mpi")]
        Some(_) => Ok(Box::new(mpi_world::Mpi::init()?)),
        #[cfg(not(feature = "mpi"))]
        Some(n) if n > 1 => bail!(
            "this process is one of {n} ranks (started by mpirun or srun), but this taper was built without MPI: \
             build it with `cargo build --release --features mpi` (Debian: apt-get install libopenmpi-dev \
             openmpi-bin libclang-dev)"
        ),
        _ => Ok(Box::new(SingleProcess)),
    }
}

/// Elements per all-reduce or broadcast call: a bucket of 16 MiB of f32.
#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
const BUCKET: usize = 1 << 22;

/// The tensors as one flat f32 buffer (on the host), and how to put them back.
#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
fn flatten(tensors: &[Tensor]) -> Result<Vec<f32>> {
    let mut flat = Vec::with_capacity(tensors.iter().map(Tensor::elem_count).sum());
    for t in tensors {
        flat.extend(crate::host::vec1::<f32>(&t.to_dtype(candle_core::DType::F32)?)?);
    }
    Ok(flat)
}

/// Writes `flat` back into `tensors`, each keeping its shape, dtype and device.
#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
fn unflatten(flat: &[f32], tensors: &mut [Tensor]) -> Result<()> {
    let mut offset = 0;
    for t in tensors.iter_mut() {
        let n = t.elem_count();
        let values = Tensor::from_slice(&flat[offset..offset + n], t.shape(), t.device())?;
        *t = values.to_dtype(t.dtype())?;
        offset += n;
    }
    if offset != flat.len() {
        bail!("a collective returned {} values for {offset}", flat.len());
    }
    Ok(())
}

#[cfg(feature = "mpi")]
mod mpi_world {
    use anyhow::{Context, Result};
    use candle_core::Tensor;
    use mpi::collective::SystemOperation;
    use mpi::traits::*;

    use super::{flatten, unflatten, Collective, BUCKET};

    /// A rank of the MPI world.
    pub struct Mpi {
        // Finalises MPI when dropped, so it lives as long as the world.
        _universe: mpi::environment::Universe,
        world: mpi::topology::SimpleCommunicator,
    }

    impl Mpi {
        pub fn init() -> Result<Self> {
            // Only this thread calls MPI; the kernels' worker threads never do.
            let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Funneled)
                .context("MPI was already initialised in this process (one run per process under mpirun)")?;
            let world = universe.world();
            Ok(Self { _universe: universe, world })
        }
    }

    impl Collective for Mpi {
        fn rank(&self) -> usize {
            self.world.rank() as usize
        }
        fn size(&self) -> usize {
            self.world.size() as usize
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
            let started = std::time::Instant::now();
            let send = flatten(tensors)?;
            let mut sum = vec![0f32; send.len()];
            for (s, r) in send.chunks(BUCKET).zip(sum.chunks_mut(BUCKET)) {
                self.world.all_reduce_into(s, r, SystemOperation::sum());
            }
            let done = unflatten(&sum, tensors);
            super::ALL_REDUCE_NANOS
                .fetch_add(started.elapsed().as_nanos() as u64, std::sync::atomic::Ordering::Relaxed);
            done
        }
        fn broadcast_tensors(&self, tensors: &mut [Tensor]) -> Result<()> {
            let mut flat = flatten(tensors)?;
            let root = self.world.process_at_rank(0);
            for chunk in flat.chunks_mut(BUCKET) {
                root.broadcast_into(chunk);
            }
            unflatten(&flat, tensors)
        }
        fn barrier(&self) -> Result<()> {
            self.world.barrier();
            Ok(())
        }
        fn abort(&self, code: i32) -> ! {
            self.world.abort(code)
        }
    }
}
