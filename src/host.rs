//! Every read of a tensor's values into host memory goes through this module (a test checks
//! that no other file calls candle's `to_vec*` / `to_scalar`). On a GPU each read is a device
//! sync and a copy, so the reads that can reach a device are counted ([`reads`]), and a test
//! asserts that a training step makes none except the logged scalars on logging steps. The
//! CPU kernels' reads of tables they run on the CPU are [`cpu_vec1`]: they refuse a tensor
//! anywhere else, so they cannot hide a device copy.

use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{bail, DType, Result, Tensor, WithDType};

static READS: AtomicU64 = AtomicU64::new(0);

/// How many host reads this process has made through [`scalar`], [`vec1`] and [`vec2`].
pub fn reads() -> u64 {
    READS.load(Ordering::Relaxed)
}

fn counted() {
    READS.fetch_add(1, Ordering::Relaxed);
}

/// A scalar tensor's value, as f64 (any float dtype).
pub fn scalar(t: &Tensor) -> Result<f64> {
    counted();
    Ok(t.to_dtype(DType::F32)?.to_scalar::<f32>()? as f64)
}

/// A tensor's values, flattened (it must hold `T`'s dtype).
pub fn vec1<T: WithDType>(t: &Tensor) -> Result<Vec<T>> {
    counted();
    t.flatten_all()?.to_vec1()
}

/// A matrix's rows (it must hold `T`'s dtype).
pub fn vec2<T: WithDType>(t: &Tensor) -> Result<Vec<Vec<T>>> {
    counted();
    t.to_vec2()
}

/// The values of a CPU tensor, flattened, as f32: for kernels that run on the CPU. Not counted
/// (no device is involved); a tensor on another device is an error, not a silent copy.
pub fn cpu_vec1(t: &Tensor) -> Result<Vec<f32>> {
    if !t.device().is_cpu() {
        bail!("a CPU kernel was handed a tensor on {:?}", t.device().location());
    }
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()
}
