//! GPU ranks (`--features nccl`): one rank per GPU, gradients summed by NCCL on the GPUs'
//! memory (candle's `nccl` feature, over cudarc), everything else over the MPI world that
//! launched the ranks, which also carries NCCL's unique id from rank 0. The bucket packing is
//! `buckets`' (run on the CPU under mpirun); what is here is only the NCCL calls.

use anyhow::{bail, Context, Result};
use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::CudaSlice;
use candle_core::cuda::cudarc::nccl::safe::{Comm, Id, ReduceOp};
use candle_core::{CpuStorage, CudaStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};

use super::buckets::{self, Transport};
use super::Collective;

/// A rank of `host`'s world whose tensors live on one GPU and are summed by NCCL.
pub struct Nccl<'a> {
    host: &'a dyn Collective,
    comm: Comm,
}

impl<'a> Nccl<'a> {
    /// Joins the NCCL communicator of `host`'s ranks on `device` (every rank calls it).
    pub fn join(host: &'a dyn Collective, device: &Device) -> Result<Self> {
        let Device::Cuda(cuda) = device else { bail!("NCCL sums tensors on CUDA devices, not on {device:?}") };
        let mut id = [0u8; 128];
        if host.rank() == 0 {
            let fresh = Id::new().map_err(|e| anyhow::anyhow!("NCCL could not make its unique id: {e:?}"))?;
            id.iter_mut().zip(fresh.internal()).for_each(|(b, c)| *b = *c as u8);
        }
        host.broadcast_bytes(&mut id)?;
        let id = Id::uninit(id.map(|b| b as std::ffi::c_char));
        // On candle's stream: NCCL's sums are ordered with the kernels around them.
        let comm = Comm::from_rank(cuda.cuda_stream(), host.rank(), host.size(), id)
            .map_err(|e| anyhow::anyhow!("NCCL could not join rank {} of {}: {e:?}", host.rank(), host.size()))
            .context(
                "each rank needs a GPU of its own, and the machines must reach each other (NCCL_DEBUG=INFO says more)",
            )?;
        Ok(Self { host, comm })
    }
}

impl Transport for Nccl<'_> {
    fn sum(&self, bucket: &Tensor) -> Result<Tensor> {
        Ok(bucket.apply_op1_no_bwd(&OnGpu { comm: &self.comm, call: Call::Sum })?)
    }
    fn broadcast(&self, bucket: &Tensor) -> Result<Tensor> {
        Ok(bucket.apply_op1_no_bwd(&OnGpu { comm: &self.comm, call: Call::Broadcast })?)
    }
}

#[derive(Clone, Copy)]
enum Call {
    Sum,
    Broadcast,
}

/// One NCCL collective on an f32 bucket, as a candle op: its output is a new bucket on the
/// same stream (the tensors in flight are never written behind candle's back).
struct OnGpu<'a> {
    comm: &'a Comm,
    call: Call,
}

impl CustomOp1 for OnGpu<'_> {
    fn name(&self) -> &'static str {
        "nccl"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("NCCL moves tensors on CUDA devices; this bucket is in host memory")
    }

    fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let n = layout.shape().elem_count();
        let (start, end) = match layout.contiguous_offsets() {
            Some(range) if storage.dtype() == DType::F32 => range,
            _ => candle_core::bail!("an NCCL bucket is a contiguous f32 tensor"),
        };
        let src: &CudaSlice<f32> = storage.as_cuda_slice()?;
        let src = src.slice(start..end);
        let device = storage.device().clone();
        // SAFETY: uninitialised device memory, every element of which both collectives write
        // (on the stream the buffer's later readers run on) before anything reads it; a zeroed
        // buffer would add a memset of the bucket to every step.
        let mut dst = unsafe { device.alloc::<f32>(n) }?;
        let done = match self.call {
            Call::Sum => self.comm.all_reduce(&src, &mut dst, &ReduceOp::Sum),
            Call::Broadcast => self.comm.broadcast(Some(&src), &mut dst, 0),
        };
        done.map_err(|e| candle_core::Error::Msg(format!("NCCL: {e:?}")))?;
        Ok((CudaStorage::wrap_cuda_slice(dst, device), layout.shape().clone()))
    }
}

impl Collective for Nccl<'_> {
    fn rank(&self) -> usize {
        self.host.rank()
    }
    fn size(&self) -> usize {
        self.host.size()
    }
    fn local(&self) -> (usize, usize) {
        self.host.local()
    }
    fn sum_counts(&self, counts: &mut [u64]) -> Result<()> {
        self.host.sum_counts(counts)
    }
    fn sum_values(&self, values: &mut [f64]) -> Result<()> {
        self.host.sum_values(values)
    }
    fn sum_tensors(&self, tensors: &mut [Tensor]) -> Result<()> {
        buckets::sum_tensors(self, tensors)
    }
    fn broadcast_tensors(&self, tensors: &mut [Tensor]) -> Result<()> {
        buckets::broadcast_tensors(self, tensors)
    }
    fn broadcast_bytes(&self, bytes: &mut [u8]) -> Result<()> {
        self.host.broadcast_bytes(bytes)
    }
    fn barrier(&self) -> Result<()> {
        self.host.barrier()
    }
    fn abort(&self, code: i32) -> ! {
        self.host.abort(code)
    }
}
