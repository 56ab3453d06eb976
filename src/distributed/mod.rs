//! Data parallelism across processes: the world a run trains in (this process's rank, how many
//! ranks) and the collective that sums what the ranks computed. One process is a world of one.
//! Built with `--features mpi`, a process that mpirun (or srun) started is a rank of the MPI
//! world and the sums are MPI all-reduces (`mpi.rs`); with `--features nccl`, ranks on CUDA
//! devices take one GPU each and sum their gradients with NCCL (`nccl.rs`). Both move gradients
//! in the flat buckets of `buckets.rs`. The protocol a run follows over them is
//! `train::run_task`'s.

#[cfg(any(feature = "mpi", test))]
mod buckets;
#[cfg(feature = "mpi")]
mod mpi;
#[cfg(feature = "nccl")]
mod nccl;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};

/// What a data-parallel step needs from the other ranks. Every rank calls the same methods in
/// the same order (they are collectives).
pub trait Collective {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// (rank, size) among the ranks on this machine: which GPU a rank takes.
    fn local(&self) -> (usize, usize);
    /// Sums `counts` over the ranks, in place.
    fn sum_counts(&self, counts: &mut [u64]) -> Result<()>;
    /// Sums `values` over the ranks, in place (an evaluation's sums).
    fn sum_values(&self, values: &mut [f64]) -> Result<()>;
    /// Sums the tensors over the ranks, in place, in a few flat buckets (not one call each).
    fn sum_tensors(&self, tensors: &mut [Tensor]) -> Result<()>;
    /// Replaces the tensors with rank 0's.
    fn broadcast_tensors(&self, tensors: &mut [Tensor]) -> Result<()>;
    /// Replaces the bytes with rank 0's.
    fn broadcast_bytes(&self, bytes: &mut [u8]) -> Result<()>;
    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<()>;
    /// Ends every rank's process with `code` (one rank's error ends the job, rather than
    /// leaving the others waiting in a collective).
    fn abort(&self, code: i32) -> !;
    /// Seconds this rank has spent in `sum_tensors` so far, where the sums are synchronous
    /// (MPI's); None where they are queued on a GPU stream (NCCL's: a profiler times those).
    fn all_reduce_seconds(&self) -> Option<f64> {
        None
    }
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
    fn local(&self) -> (usize, usize) {
        (0, 1)
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
    fn broadcast_bytes(&self, _bytes: &mut [u8]) -> Result<()> {
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
/// Slurm's PMI; Slurm's srun, whatever its PMI plugin), or None when no launcher started it.
fn launched_size() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS"]
        .iter()
        .find_map(|k| std::env::var(k).ok()?.parse().ok())
}

/// The world this process trains in: MPI's when a launcher started it (with `--features
/// mpi`), else one process. A launched process without MPI support is an error that says how
/// to build it, rather than N processes each training alone.
pub fn world() -> Result<Box<dyn Collective>> {
    match launched_size() {
        #[cfg(feature = "mpi")]
        Some(n) => {
            let world = mpi::Mpi::init()?;
            if world.size() != n {
                // Each process would train alone, all of them into the same run directory.
                bail!(
                    "the launcher started {n} processes, but MPI sees a world of {}: under Slurm, start the ranks \
                     with `srun --mpi=pmix` (or pmi2, as your Open MPI was built)",
                    world.size()
                );
            }
            same_build(&world)?;
            Ok(Box::new(world))
        }
        #[cfg(not(feature = "mpi"))]
        Some(n) if n > 1 => bail!(
            "this process is one of {n} ranks (started by mpirun or srun), but this taper was built without MPI: \
             build it with `cargo build --release --features mpi` (Debian: apt-get install libopenmpi-dev \
             openmpi-bin libclang-dev)"
        ),
        _ => Ok(Box::new(SingleProcess)),
    }
}

/// What every rank of a run must be: taper's version and the features it was built with.
#[cfg(any(feature = "mpi", test))]
fn build_id() -> String {
    let features = [
        ("cuda", cfg!(feature = "cuda")),
        ("cudnn", cfg!(feature = "cudnn")),
        ("metal", cfg!(feature = "metal")),
        ("mkl", cfg!(feature = "mkl")),
        ("accelerate", cfg!(feature = "accelerate")),
        ("mpi", cfg!(feature = "mpi")),
        ("nccl", cfg!(feature = "nccl")),
        ("parquet", cfg!(feature = "parquet")),
    ];
    let on: Vec<&str> = features.iter().filter(|(_, on)| *on).map(|(name, _)| *name).collect();
    format!("taper {} ({})", env!("CARGO_PKG_VERSION"), on.join(", "))
}

/// Every rank checks its build against rank 0's (a hostfile's machines can hold different
/// tapers, and those would disagree somewhere in the step); if any differs, every rank stops
/// here, before anything is written, the ones that differ saying how.
#[cfg(feature = "mpi")]
fn same_build(world: &dyn Collective) -> Result<()> {
    let mine = build_id(); // 69 bytes with every feature on: it fits the buffer whole
    let mut bytes = [0u8; 128];
    let n = mine.len().min(bytes.len());
    bytes[..n].copy_from_slice(&mine.as_bytes()[..n]);
    world.broadcast_bytes(&mut bytes)?;
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let verdict = compare_builds(&mine, &String::from_utf8_lossy(&bytes[..end]), world.rank());
    let mut differing = [verdict.is_err() as u64];
    world.sum_counts(&mut differing)?;
    match (verdict, differing[0]) {
        (Err(err), _) => Err(err),
        (Ok(()), 0) => Ok(()),
        (Ok(()), n) => bail!("{n} of the {} ranks run another taper build than rank 0 (they say which)", world.size()),
    }
}

#[cfg(any(feature = "mpi", test))]
fn compare_builds(mine: &str, root: &str, rank: usize) -> Result<()> {
    if mine != root {
        bail!("rank {rank} runs {mine}, rank 0 runs {root}: start the same taper build on every machine");
    }
    Ok(())
}

/// The device this rank trains on: `train.device` as written, except that with several ranks on
/// a machine `cuda` and `auto` (where a GPU answers) take the GPU of the rank's local rank, and
/// one GPU named for all of them is refused.
pub fn rank_device(spec: &str, world: &dyn Collective) -> Result<Device> {
    use crate::device::{open_device, parse_device_spec, DeviceSpec};
    let (local_rank, local_size) = world.local();
    let own_gpu = || {
        open_device(&format!("cuda:{local_rank}")).with_context(|| {
            format!("this rank is number {local_rank} of {local_size} on its machine, and takes GPU {local_rank}: start at most one rank per GPU")
        })
    };
    if world.size() == 1 {
        return open_device(spec);
    }
    match spec.trim() {
        "cuda" => own_gpu(),
        "auto" if crate::device::cuda_device_count() > 0 => own_gpu(),
        _ => match parse_device_spec(spec)? {
            DeviceSpec::Cuda(n) if local_size > 1 => bail!(
                "train.device = \"{spec}\" puts all {local_size} ranks of this machine on GPU {n}: write \"cuda\" \
                 (each rank takes the GPU of its local rank)"
            ),
            _ => open_device(spec),
        },
    }
}

/// The collective a run on `device` uses, where it is not `world` itself: NCCL's for ranks on
/// CUDA devices. Ranks on CUDA without NCCL support are refused (their gradients would cross
/// host memory every step).
pub fn on_device<'a>(world: &'a dyn Collective, device: &Device) -> Result<Option<Box<dyn Collective + 'a>>> {
    if world.size() == 1 || !device.is_cuda() {
        return Ok(None);
    }
    #[cfg(feature = "nccl")]
    return Ok(Some(Box::new(nccl::Nccl::join(world, device)?)));
    #[cfg(not(feature = "nccl"))]
    bail!(
        "{} ranks on CUDA devices sum their gradients with NCCL, and this taper was built without it: \
         build it with `cargo build --release --features nccl`",
        world.size()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rank `local.0` of `local.1` ranks on this machine, in a world of `size`; no collective runs.
    struct Pretend {
        size: usize,
        local: (usize, usize),
    }

    impl Collective for Pretend {
        fn rank(&self) -> usize {
            self.local.0
        }
        fn size(&self) -> usize {
            self.size
        }
        fn local(&self) -> (usize, usize) {
            self.local
        }
        fn sum_counts(&self, _: &mut [u64]) -> Result<()> {
            unreachable!()
        }
        fn sum_values(&self, _: &mut [f64]) -> Result<()> {
            unreachable!()
        }
        fn sum_tensors(&self, _: &mut [Tensor]) -> Result<()> {
            unreachable!()
        }
        fn broadcast_tensors(&self, _: &mut [Tensor]) -> Result<()> {
            unreachable!()
        }
        fn broadcast_bytes(&self, _: &mut [u8]) -> Result<()> {
            unreachable!()
        }
        fn barrier(&self) -> Result<()> {
            unreachable!()
        }
        fn abort(&self, _: i32) -> ! {
            unreachable!()
        }
    }

    #[test]
    fn a_rank_of_another_build_is_named() {
        let mine = build_id();
        assert!(mine.starts_with("taper ") && mine.contains(env!("CARGO_PKG_VERSION")), "{mine}");
        assert!(compare_builds(&mine, &mine, 3).is_ok());
        let err = compare_builds("taper 0.1.0 (mpi)", "taper 0.1.0 (cuda, mpi, nccl)", 3).unwrap_err().to_string();
        assert!(err.contains("rank 3 runs taper 0.1.0 (mpi), rank 0 runs taper 0.1.0 (cuda, mpi, nccl)"), "{err}");
    }

    #[test]
    fn each_rank_of_a_machine_takes_its_own_gpu_and_one_named_gpu_for_all_is_refused() {
        let second = Pretend { size: 4, local: (1, 2) };
        assert!(rank_device("cpu", &second).unwrap().is_cpu());
        let named = rank_device("cuda:0", &second).unwrap_err().to_string();
        assert!(
            named.contains("puts all 2 ranks of this machine on GPU 0") && named.contains("write \"cuda\""),
            "{named}"
        );
        if !candle_core::utils::cuda_is_available() {
            // The GPU chosen is the local rank's, as the refusal to open it says.
            let own = format!("{:#}", rank_device("cuda", &second).unwrap_err());
            assert!(own.contains("takes GPU 1") && own.contains("`cuda:1`"), "{own}");
        }
        // Alone on its machine, a rank may name its GPU.
        let alone = rank_device("cuda:3", &Pretend { size: 4, local: (0, 1) });
        assert!(candle_core::utils::cuda_is_available() || alone.unwrap_err().to_string().contains("`cuda:3`"));
        // On the CPU the launcher's world sums the tensors itself.
        assert!(on_device(&second, &Device::Cpu).unwrap().is_none());
    }
}
