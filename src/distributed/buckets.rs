//! Tensors summed (or broadcast) over the ranks in a few flat buckets, whatever moves them: the
//! tensors are packed in order into 1-D f32 buckets of about `BUCKET` elements (a tensor
//! larger than that is a bucket of its own), each bucket goes through the transport in one call,
//! and the result is unpacked into tensors of the original shapes, dtypes and device. MPI's
//! transport moves host memory and NCCL's GPU memory; this packing is the same for both, so the
//! CPU tests under mpirun run every line of it.

use std::ops::Range;

use anyhow::{bail, Result};
use candle_core::{DType, Tensor};

/// Elements per bucket: 16 MiB of f32.
pub const BUCKET: usize = 1 << 22;

/// What moves one flat bucket (1-D, f32, on the tensors' device) between the ranks.
pub trait Transport {
    /// The bucket summed over the ranks.
    fn sum(&self, bucket: &Tensor) -> Result<Tensor>;
    /// Rank 0's bucket.
    fn broadcast(&self, bucket: &Tensor) -> Result<Tensor>;
}

/// Consecutive runs of tensors (by index) that share a bucket: as many tensors as fit in `cap`
/// elements, and at least one.
pub fn plan(sizes: &[usize], cap: usize) -> Vec<Range<usize>> {
    let mut buckets = Vec::new();
    let (mut start, mut filled) = (0, 0);
    for (i, &n) in sizes.iter().enumerate() {
        if i > start && filled + n > cap {
            buckets.push(start..i);
            (start, filled) = (i, 0);
        }
        filled += n;
    }
    if start < sizes.len() {
        buckets.push(start..sizes.len());
    }
    buckets
}

/// Sums the tensors over the ranks, in place, one transport call per bucket.
pub fn sum_tensors(transport: &dyn Transport, tensors: &mut [Tensor]) -> Result<()> {
    through(tensors, BUCKET, |bucket| transport.sum(bucket))
}

/// Replaces the tensors with rank 0's, one transport call per bucket.
pub fn broadcast_tensors(transport: &dyn Transport, tensors: &mut [Tensor]) -> Result<()> {
    through(tensors, BUCKET, |bucket| transport.broadcast(bucket))
}

/// Sends each bucket of `tensors` (of at most `cap` elements, or one tensor) through `send`.
fn through(tensors: &mut [Tensor], cap: usize, send: impl Fn(&Tensor) -> Result<Tensor>) -> Result<()> {
    let sizes: Vec<usize> = tensors.iter().map(Tensor::elem_count).collect();
    for range in plan(&sizes, cap) {
        let members = &mut tensors[range];
        let flat = pack(members)?;
        let back = send(&flat)?;
        if back.dims() != flat.dims() {
            bail!("a collective returned {:?} values for a bucket of {:?}", back.dims(), flat.dims());
        }
        unpack(&back, members)?;
    }
    Ok(())
}

/// The tensors, flattened to f32, one after the other: (sum of sizes,).
fn pack(tensors: &[Tensor]) -> Result<Tensor> {
    let flat: Vec<Tensor> =
        tensors.iter().map(|t| t.flatten_all()?.to_dtype(DType::F32)).collect::<candle_core::Result<_>>()?;
    Ok(Tensor::cat(&flat, 0)?)
}

/// Cuts `flat` back into `tensors`, each keeping its shape and dtype.
fn unpack(flat: &Tensor, tensors: &mut [Tensor]) -> Result<()> {
    let mut offset = 0;
    for t in tensors.iter_mut() {
        let n = t.elem_count();
        // (n,) -> t's shape
        *t = flat.narrow(0, offset, n)?.reshape(t.shape())?.to_dtype(t.dtype())?;
        offset += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use std::cell::RefCell;

    #[test]
    fn buckets_hold_consecutive_tensors_up_to_the_cap_and_a_large_one_alone() {
        assert_eq!(plan(&[3, 4, 2, 10, 1, 1], 8), vec![0..2, 2..3, 3..4, 4..6]);
        assert_eq!(plan(&[8, 8], 8), vec![0..1, 1..2]);
        assert_eq!(plan(&[1, 2, 3], 100), vec![0..3]);
        assert!(plan(&[], 8).is_empty());
    }

    /// A pretend world of `ranks` ranks that all hold the same tensors; it records bucket sizes.
    struct Copies {
        ranks: f64,
        calls: RefCell<Vec<usize>>,
    }

    impl Transport for Copies {
        fn sum(&self, bucket: &Tensor) -> Result<Tensor> {
            self.calls.borrow_mut().push(bucket.elem_count());
            Ok((bucket * self.ranks)?)
        }
        fn broadcast(&self, bucket: &Tensor) -> Result<Tensor> {
            self.calls.borrow_mut().push(bucket.elem_count());
            Ok(bucket.copy()?)
        }
    }

    #[test]
    fn packing_and_unpacking_keep_every_shape_dtype_and_value() -> Result<()> {
        let dev = Device::Cpu;
        let original = vec![
            Tensor::arange(0f32, 6., &dev)?.reshape((2, 3))?,
            Tensor::new(&[1.5f64, -2.0], &dev)?,
            Tensor::arange(0f32, 5., &dev)?.to_dtype(DType::BF16)?,
            Tensor::new(7f32, &dev)?,
        ];
        let transport = Copies { ranks: 3.0, calls: RefCell::default() };
        let mut tensors = original.clone();
        through(&mut tensors, 8, |b| transport.sum(b))?;
        assert_eq!(*transport.calls.borrow(), vec![8, 6], "buckets of 6 + 2 and 5 + 1");
        for (got, want) in tensors.iter().zip(&original) {
            assert_eq!((got.dims(), got.dtype()), (want.dims(), want.dtype()));
            let (got, want) = (got.to_dtype(DType::F64)?.flatten_all()?, want.to_dtype(DType::F64)?.flatten_all()?);
            assert_eq!(got.to_vec1::<f64>()?, (want * 3.0)?.to_vec1::<f64>()?);
        }
        broadcast_tensors(&transport, &mut tensors)?;
        assert_eq!(transport.calls.borrow().len(), 3, "one bucket: they all fit in BUCKET");
        Ok(())
    }

    /// A transport whose answer has the wrong length is an error, not a silent misplacement.
    struct Short;

    impl Transport for Short {
        fn sum(&self, bucket: &Tensor) -> Result<Tensor> {
            Ok(bucket.narrow(0, 1, bucket.elem_count() - 1)?)
        }
        fn broadcast(&self, bucket: &Tensor) -> Result<Tensor> {
            self.sum(bucket)
        }
    }

    #[test]
    fn a_bucket_of_the_wrong_length_is_refused() {
        let mut tensors = vec![Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap()];
        let err = sum_tensors(&Short, &mut tensors).unwrap_err();
        assert!(err.to_string().contains("returned [3] values for a bucket of [4]"), "{err}");
    }
}
