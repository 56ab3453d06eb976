//! Fused CPU kernels with hand-written backward passes, for the ops where candle's composed
//! form is slow on the CPU: linear layers and attention (`linear.rs`, `attention.rs`, on
//! `gemm.rs`), LayerNorm, GELU, bias (and position) add, causal softmax, and cross-entropy. Each replaces several full passes over memory (and several autograd nodes,
//! each of which allocates a zeroed gradient) by one pass forward and one backward.
//!
//! Only f32 and f64 CPU tensors take these paths: the seam's CPU backend (`kernels/cpu_backend.rs`)
//! runs them there, and every other dtype and device keeps the composed ops (or an accelerator's).
//! `tests/fused_ops.rs` checks every forward and gradient against the composed form in f64.
//!
//! A backward pass must return tensors, so each backward is itself a (forward-only) CustomOp.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Elements below which a kernel runs on the calling thread (a task costs a few microseconds).
pub(crate) const PARALLEL_MIN: usize = 1 << 14;

/// The float arithmetic the kernels need, for f32 (training) and f64 (gradient checks).
pub trait Real:
    WithDType
    + Copy
    + Send
    + Sync
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::Neg<Output = Self>
    + std::ops::AddAssign
    + std::ops::SubAssign
    + std::ops::MulAssign
    + PartialOrd
{
    fn of(v: f64) -> Self;
    fn exp_(self) -> Self;
    fn sqrt_(self) -> Self;
    fn ln_(self) -> Self;
    fn abs_(self) -> Self;
    /// |self| with the sign of `sign`.
    fn copysign_(self, sign: Self) -> Self;
    /// self * a + b, as one fused multiply-add where the target has one (Rust never contracts
    /// `self * a + b` itself, so polynomials would otherwise cost two instructions a term).
    fn mul_add_(self, a: Self, b: Self) -> Self;
}

macro_rules! mul_add_impl {
    () => {
        #[inline(always)]
        fn mul_add_(self, a: Self, b: Self) -> Self {
            // Without the instruction, mul_add is a libm call: slower than two operations.
            #[cfg(target_feature = "fma")]
            return self.mul_add(a, b);
            #[cfg(not(target_feature = "fma"))]
            return self * a + b;
        }
    };
}

impl Real for f32 {
    fn of(v: f64) -> Self {
        v as f32
    }
    fn exp_(self) -> Self {
        fast_exp(self)
    }
    fn sqrt_(self) -> Self {
        self.sqrt()
    }
    fn ln_(self) -> Self {
        self.ln()
    }
    fn abs_(self) -> Self {
        self.abs()
    }
    fn copysign_(self, sign: Self) -> Self {
        self.copysign(sign)
    }
    mul_add_impl!();
}

impl Real for f64 {
    fn of(v: f64) -> Self {
        v
    }
    fn exp_(self) -> Self {
        self.exp()
    }
    fn sqrt_(self) -> Self {
        self.sqrt()
    }
    fn ln_(self) -> Self {
        self.ln()
    }
    fn abs_(self) -> Self {
        self.abs()
    }
    fn copysign_(self, sign: Self) -> Self {
        self.copysign(sign)
    }
    mul_add_impl!();
}

/// e^x for f32 in plain arithmetic (no libm call), so loops over it vectorise. Range reduction
/// to r in [-ln2/2, ln2/2], a degree-6 polynomial, and the exponent set through the bits.
/// Relative error below 3e-7 over the whole range; flushes to 0 below -87.
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let x = x.clamp(-87.0, 88.0);
    let shifted = x.mul_add_(LOG2E, MAGIC);
    let n = shifted - MAGIC;
    let r = (-n).mul_add_(LN2_LO, (-n).mul_add_(LN2_HI, x));
    // Horner's scheme, one multiply-add a term.
    let mut p = 1.0 / 5040.0;
    for c in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = p.mul_add_(r, c);
    }
    let exponent = (shifted.to_bits() as i32 - MAGIC.to_bits() as i32 + 127) as u32;
    p * f32::from_bits(exponent << 23)
}

/// Phi(x) and phi(x), the standard normal CDF and density, sharing one exponential:
/// erf by Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7) needs e^(-x^2/2) too.
/// Plain arithmetic and no branches, so loops over it vectorise.
#[inline(always)]
pub(crate) fn normal_cdf_pdf<T: Real>(x: T) -> (T, T) {
    let a = x.abs_() * T::of(FRAC_1_SQRT_2);
    let t = T::of(1.0) / a.mul_add_(T::of(0.327_591_1), T::of(1.0));
    let mut poly = T::of(1.061_405_429);
    for c in [-1.453_152_027, 1.421_413_741, -0.284_496_736, 0.254_829_592] {
        poly = poly.mul_add_(t, T::of(c));
    }
    let poly = poly * t;
    let e = (-(a * a)).exp_();
    let erf = (-poly).mul_add_(e, T::of(1.0)).copysign_(x);
    (erf.mul_add_(T::of(0.5), T::of(0.5)), T::of(INV_SQRT_2PI) * e)
}

/// Independent accumulators in the reductions below: a plain fold is one dependent chain
/// (floating-point addition may not be reordered), which keeps the loop scalar.
const LANES: usize = 8;

/// The sum of f(x) over `xs`, in `LANES` independent partial sums, so the loop vectorises.
#[inline(always)]
pub(crate) fn lane_sum<T: Real>(xs: &[T], f: impl Fn(T) -> T) -> T {
    let mut acc = [T::of(0.0); LANES];
    let chunks = xs.chunks_exact(LANES);
    let mut total = chunks.remainder().iter().fold(T::of(0.0), |a, &v| a + f(v));
    for chunk in chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a += f(v);
        }
    }
    for a in acc {
        total += a;
    }
    total
}

/// The sum of x_i * y_i, in `LANES` independent partial sums.
#[inline(always)]
pub(crate) fn lane_dot<T: Real>(xs: &[T], ys: &[T]) -> T {
    let mut acc = [T::of(0.0); LANES];
    let (xc, yc) = (xs.chunks_exact(LANES), ys.chunks_exact(LANES));
    let mut total = xc.remainder().iter().zip(yc.remainder()).fold(T::of(0.0), |a, (&x, &y)| a + x * y);
    for (x, y) in xc.zip(yc) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    for a in acc {
        total += a;
    }
    total
}

/// The largest element of a non-empty `xs`, in `LANES` independent running maxima.
#[inline(always)]
pub(crate) fn lane_max<T: Real>(xs: &[T]) -> T {
    let pick = |m: T, v: T| if v > m { v } else { m };
    let mut acc = [xs[0]; LANES];
    let chunks = xs.chunks_exact(LANES);
    let mut best = chunks.remainder().iter().fold(xs[0], |m, &v| pick(m, v));
    for chunk in chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a = pick(*a, v);
        }
    }
    for a in acc {
        best = pick(best, a);
    }
    best
}

/// Replaces each x by e^(x - max) and returns their sum (max: the largest x).
#[inline(always)]
pub(crate) fn exp_shifted_in_place<T: Real>(xs: &mut [T], max: T) -> T {
    xs.iter_mut().for_each(|v| *v = (*v - max).exp_());
    lane_sum(xs, |v| v)
}

pub(crate) fn contiguous<'a, T: WithDType>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [T]> {
    let data = storage.as_slice::<T>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("fused op needs contiguous input"),
    }
}

/// A vector of `len` values, every one written by `fill` into the uninitialised buffer it gets:
/// kernel outputs skip the zeroing pass that `vec![0.0; len]` costs (about 2 % of a step).
///
/// # Safety
/// `fill` must write every element of the buffer.
pub(crate) unsafe fn written_by<T>(len: usize, fill: impl FnOnce(&mut [MaybeUninit<T>])) -> Vec<T> {
    let mut values = Vec::with_capacity(len);
    fill(&mut values.spare_capacity_mut()[..len]);
    // SAFETY: the caller's `fill` initialised all `len` elements.
    unsafe { values.set_len(len) };
    values
}

/// `f(a, b)` for each pair of elements of `out` and `other` (the same length), in parallel
/// chunks when large.
pub(crate) fn zip_apply<T: Send, U: Copy + Sync>(out: &mut [T], other: &[U], f: impl Fn(&mut T, U) + Sync + Send) {
    out.par_chunks_mut(PARALLEL_MIN)
        .zip(other.par_chunks(PARALLEL_MIN))
        .for_each(|(out, other)| out.iter_mut().zip(other).for_each(|(a, &b)| f(a, b)));
}

/// Runs `f(first_row, rows)` over `out` in blocks of whole rows, in parallel when large.
fn for_row_blocks<T: Send>(out: &mut [T], row_len: usize, f: impl Fn(usize, &mut [T]) + Sync + Send) {
    let rows = out.len() / row_len.max(1);
    let threads = rayon::current_num_threads().max(1);
    if out.len() < PARALLEL_MIN || threads == 1 || rows < 2 {
        f(0, out);
        return;
    }
    let rows_per_block = rows.div_ceil(threads * 4).max(PARALLEL_MIN / row_len.max(1) / 4).max(1);
    out.par_chunks_mut(rows_per_block * row_len).enumerate().for_each(|(i, block)| f(i * rows_per_block, block));
}

macro_rules! dispatch {
    ($storage:expr, $name:expr, |$t:ident| $body:expr) => {
        match $storage {
            CpuStorage::F32(_) => {
                type $t = f32;
                $body
            }
            CpuStorage::F64(_) => {
                type $t = f64;
                $body
            }
            _ => candle_core::bail!("{}: only f32 and f64 are supported", $name),
        }
    };
}

// Declared after `dispatch!`, which they use.
mod adamw;
mod attention;
mod ffn;
mod gemm;
mod linear;
mod relative;
mod rms_norm;
mod sublayer;
pub use adamw::adamw_in_place;
pub use attention::{
    attention, attention_packed, self_attention_sublayer, AttentionMask, QkNorm, Rotation, SelfAttentionShape,
};
pub use ffn::{ffn_sublayer, FfnShape};
pub use linear::{linear, linear_gelu, Act};
pub use rms_norm::rms_norm;
pub use sublayer::{pack_parameters, SublayerNorm, SumProbe};

// ---------------------------------------------------------------------------------------------
// x + b, b broadcast over the rows of x (biases, position embeddings).

struct AddRowVector;
struct SumRows;

impl CustomOp2 for AddRowVector {
    fn name(&self) -> &'static str {
        "taper-add-row-vector"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        dispatch!(s1, self.name(), |T| {
            let x = contiguous::<T>(s1, l1)?;
            let b = contiguous::<T>(s2, l2)?;
            let mut out = x.to_vec();
            for_row_blocks(&mut out, b.len(), |_, block| {
                for row in block.chunks_exact_mut(b.len()) {
                    row.iter_mut().zip(b).for_each(|(o, &v)| *o += v);
                }
            });
            Ok((T::to_cpu_storage_owned(out), l1.shape().clone()))
        })
    }
    fn bwd(&self, _x: &Tensor, b: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let rows = grad.elem_count() / b.elem_count();
        let grad_b = grad.contiguous()?.reshape((rows, b.elem_count()))?.apply_op1_no_bwd(&SumRows)?;
        Ok((Some(grad.clone()), Some(grad_b.reshape(b.shape())?)))
    }
}

impl CustomOp1 for SumRows {
    fn name(&self) -> &'static str {
        "taper-sum-rows"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (_, cols) = l.shape().dims2()?;
        dispatch!(s, self.name(), |T| {
            let x = contiguous::<T>(s, l)?;
            let mut sum = vec![T::of(0.0); cols];
            for row in x.chunks_exact(cols) {
                sum.iter_mut().zip(row).for_each(|(s, &v)| *s += v);
            }
            Ok((T::to_cpu_storage_owned(sum), Shape::from(cols)))
        })
    }
}

/// `x + b` where `b`'s shape is a suffix of `x`'s (x: (.., F), b: (F); or x: (B, T, D), b: (T, D)).
pub fn add_row_vector(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&b.contiguous()?, AddRowVector)
}

// ---------------------------------------------------------------------------------------------
// LayerNorm over the last dimension.

struct LayerNormOp {
    eps: f64,
}
struct LayerNormGrad {
    eps: f64,
}

/// Mean and 1/std of one row.
#[inline(always)]
fn row_stats<T: Real>(row: &[T], eps: f64) -> (T, T) {
    let n = T::of(row.len() as f64);
    let mean = lane_sum(row, |v| v) / n;
    let var = lane_sum(row, |v| (v - mean) * (v - mean)) / n;
    (mean, T::of(1.0) / (var + T::of(eps)).sqrt_())
}

/// LayerNorm over rows of width `w.len()`: (x - mean) / std * w + b.
pub(crate) fn layer_norm_forward<T: Real>(x: &[T], w: &[T], b: &[T], eps: f64) -> Vec<T> {
    let d = w.len();
    let fill = |out: &mut [MaybeUninit<T>]| {
        for_row_blocks(out, d, |first, block| {
            for (i, out_row) in block.chunks_exact_mut(d).enumerate() {
                let row = &x[(first + i) * d..(first + i + 1) * d];
                let (mean, rstd) = row_stats(row, eps);
                for j in 0..d {
                    out_row[j].write((row[j] - mean) * rstd * w[j] + b[j]);
                }
            }
        })
    };
    // SAFETY: the row blocks cover `out`, and each row is written whole.
    unsafe { written_by(x.len(), fill) }
}

/// LayerNorm's backward: dx into `dx` (plus `residual`, the gradient that reaches x by a skip
/// connection), and dw, db added into `dwdb` ([dw | db]).
pub(crate) fn layer_norm_backward<T: Real>(
    x: &[T],
    w: &[T],
    dy: &[T],
    residual: Option<&[T]>,
    eps: f64,
    dx: &mut [T],
    dwdb: &mut [T],
) {
    let d = w.len();
    let rows = x.len() / d.max(1);
    let block_rows = if x.len() < PARALLEL_MIN { rows } else { rows.div_ceil(rayon::current_num_threads() * 2) };
    let partials: Vec<Vec<T>> = dx
        .par_chunks_mut(block_rows.max(1) * d)
        .enumerate()
        .map(|(bi, block)| {
            let mut acc = vec![T::of(0.0); 2 * d];
            let mut xhat = vec![T::of(0.0); d];
            let mut gw = vec![T::of(0.0); d];
            for (i, dx_row) in block.chunks_exact_mut(d).enumerate() {
                let r = bi * block_rows + i;
                let row = &x[r * d..(r + 1) * d];
                let g = &dy[r * d..(r + 1) * d];
                let (mean, rstd) = row_stats(row, eps);
                for j in 0..d {
                    xhat[j] = (row[j] - mean) * rstd;
                    gw[j] = g[j] * w[j];
                    acc[j] += g[j] * xhat[j];
                    acc[d + j] += g[j];
                }
                let (sum_gw, sum_gw_xhat) = (lane_sum(&gw, |v| v), lane_dot(&gw, &xhat));
                let n = T::of(d as f64);
                let dx_of = |j: usize| rstd * (gw[j] - (sum_gw + xhat[j] * sum_gw_xhat) / n);
                match residual {
                    Some(skip) => {
                        let skip = &skip[r * d..(r + 1) * d];
                        (0..d).for_each(|j| dx_row[j] = skip[j] + dx_of(j));
                    }
                    None => (0..d).for_each(|j| dx_row[j] = dx_of(j)),
                }
            }
            acc
        })
        .collect();
    for part in partials {
        dwdb.iter_mut().zip(part).for_each(|(a, p)| *a += p);
    }
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "taper-layer-norm"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        dispatch!(s1, self.name(), |T| {
            let x = contiguous::<T>(s1, l1)?;
            let w = contiguous::<T>(s2, l2)?;
            let b = contiguous::<T>(s3, l3)?;
            let out = layer_norm_forward(x, w, b, self.eps);
            Ok((T::to_cpu_storage_owned(out), l1.shape().clone()))
        })
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = w.elem_count();
        let rows = x.elem_count() / d;
        let packed = x.apply_op3_no_bwd(w, &grad.contiguous()?, &LayerNormGrad { eps: self.eps })?;
        let grad_x = packed.narrow(0, 0, rows)?.reshape(x.shape())?;
        Ok((Some(grad_x), Some(packed.get(rows)?), Some(packed.get(rows + 1)?)))
    }
}

impl CustomOp3 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "taper-layer-norm-grad"
    }
    /// Output (rows + 2, d): dx, then dw, then db.
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        dispatch!(s1, self.name(), |T| {
            let x = contiguous::<T>(s1, l1)?;
            let w = contiguous::<T>(s2, l2)?;
            let dy = contiguous::<T>(s3, l3)?;
            let d = w.len();
            let rows = x.len() / d;
            let mut out = vec![T::of(0.0); (rows + 2) * d];
            let (dx, dwdb) = out.split_at_mut(rows * d);
            layer_norm_backward(x, w, dy, None, self.eps, dx, dwdb);
            Ok((T::to_cpu_storage_owned(out), Shape::from((rows + 2, d))))
        })
    }
}

/// LayerNorm over the last dimension of `x` with gain `w` and bias `b`.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op3(&w.contiguous()?, &b.contiguous()?, LayerNormOp { eps })
}

// ---------------------------------------------------------------------------------------------
// GELU (exact form: x * Phi(x)).

struct Gelu;
struct GeluGrad;

const FRAC_1_SQRT_2: f64 = std::f64::consts::FRAC_1_SQRT_2;
/// 1 / sqrt(2 pi)
const INV_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "taper-gelu"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        dispatch!(s, self.name(), |T| {
            let x = contiguous::<T>(s, l)?;
            let mut out = x.to_vec();
            for_row_blocks(&mut out, 1, |_, block| {
                for v in block.iter_mut() {
                    *v = *v * normal_cdf_pdf(*v).0;
                }
            });
            Ok((T::to_cpu_storage_owned(out), l.shape().clone()))
        })
    }
    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&grad.contiguous()?, &GeluGrad)?))
    }
}

impl CustomOp2 for GeluGrad {
    fn name(&self) -> &'static str {
        "taper-gelu-grad"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        dispatch!(s1, self.name(), |T| {
            let x = contiguous::<T>(s1, l1)?;
            let dy = contiguous::<T>(s2, l2)?;
            let mut out = dy.to_vec();
            for_row_blocks(&mut out, 1, |first, block| {
                for (i, g) in block.iter_mut().enumerate() {
                    let v = x[first + i];
                    let (cdf, pdf) = normal_cdf_pdf(v);
                    *g *= cdf + v * pdf;
                }
            });
            Ok((T::to_cpu_storage_owned(out), l1.shape().clone()))
        })
    }
}

pub fn gelu(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Gelu)
}

// ---------------------------------------------------------------------------------------------
// softmax(scale * x) over the last dimension, optionally causal: in row i of each (T_q, T_k)
// matrix only keys j <= offset + i are visible, the others get probability 0.

#[derive(Clone, Copy)]
struct ScaledSoftmax {
    scale: f64,
    causal_offset: Option<usize>,
}
struct SoftmaxGrad {
    scale: f64,
}

impl CustomOp1 for ScaledSoftmax {
    fn name(&self) -> &'static str {
        "taper-scaled-softmax"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = l.shape().dims();
        let t_k = *dims.last().unwrap_or(&1);
        let t_q = if dims.len() >= 2 { dims[dims.len() - 2] } else { 1 };
        dispatch!(s, self.name(), |T| {
            let x = contiguous::<T>(s, l)?;
            let mut out = vec![T::of(0.0); x.len()];
            let scale = T::of(self.scale);
            for_row_blocks(&mut out, t_k, |first, block| {
                for (i, out_row) in block.chunks_exact_mut(t_k).enumerate() {
                    let r = first + i;
                    let visible = match self.causal_offset {
                        Some(offset) => (offset + r % t_q + 1).min(t_k),
                        None => t_k,
                    };
                    let row = &x[r * t_k..r * t_k + visible];
                    let seen = &mut out_row[..visible];
                    seen.iter_mut().zip(row).for_each(|(o, &v)| *o = v * scale);
                    let inv = T::of(1.0) / exp_shifted_in_place(seen, lane_max(seen));
                    out_row[..visible].iter_mut().for_each(|o| *o *= inv);
                }
            });
            Ok((T::to_cpu_storage_owned(out), l.shape().clone()))
        })
    }
    fn bwd(&self, _x: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(res.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxGrad { scale: self.scale })?))
    }
}

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "taper-softmax-grad"
    }
    /// dx = scale * y * (dy - sum(dy * y)); masked entries have y = 0 and get 0.
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let t_k = *l1.shape().dims().last().unwrap_or(&1);
        dispatch!(s1, self.name(), |T| {
            let y = contiguous::<T>(s1, l1)?;
            let dy = contiguous::<T>(s2, l2)?;
            let mut out = vec![T::of(0.0); y.len()];
            let scale = T::of(self.scale);
            for_row_blocks(&mut out, t_k, |first, block| {
                for (i, out_row) in block.chunks_exact_mut(t_k).enumerate() {
                    let r = first + i;
                    let (y_row, g_row) = (&y[r * t_k..(r + 1) * t_k], &dy[r * t_k..(r + 1) * t_k]);
                    let dot = lane_dot(y_row, g_row);
                    for j in 0..t_k {
                        out_row[j] = scale * y_row[j] * (g_row[j] - dot);
                    }
                }
            });
            Ok((T::to_cpu_storage_owned(out), l1.shape().clone()))
        })
    }
}

/// softmax(scale * x) over the last dimension; with `causal_offset = Some(o)`, query row i of
/// each (T_q, T_k) matrix sees keys 0..=o+i only.
pub fn scaled_softmax(x: &Tensor, scale: f64, causal_offset: Option<usize>) -> Result<Tensor> {
    x.contiguous()?.apply_op1(ScaledSoftmax { scale, causal_offset })
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy, summed over rows: sum_i -log softmax(logits_i)[target_i].

struct CrossEntropySum;
struct CrossEntropyGrad;

impl CustomOp2 for CrossEntropySum {
    fn name(&self) -> &'static str {
        "taper-cross-entropy-sum"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (_, vocab) = l1.shape().dims2()?;
        let targets = contiguous::<u32>(s2, l2)?;
        dispatch!(s1, self.name(), |T| {
            let logits = contiguous::<T>(s1, l1)?;
            let mut total = 0f64;
            for (row, &target) in logits.chunks_exact(vocab).zip(targets) {
                let target = target as usize;
                if target >= vocab {
                    candle_core::bail!("target id {target} is outside the vocabulary of {vocab}");
                }
                let max = lane_max(row);
                let sum = lane_sum(row, |v| (v - max).exp_());
                total += ((max + sum.ln_()) - row[target]).to_f64();
            }
            Ok((T::to_cpu_storage_owned(vec![T::of(total)]), Shape::from(())))
        })
    }
    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let scale = grad.to_dtype(logits.dtype())?.reshape(1)?;
        Ok((Some(logits.apply_op3_no_bwd(targets, &scale, &CrossEntropyGrad)?), None))
    }
}

impl CustomOp3 for CrossEntropyGrad {
    fn name(&self) -> &'static str {
        "taper-cross-entropy-grad"
    }
    /// d/dlogits = g * (softmax(logits) - onehot(target)).
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, vocab) = l1.shape().dims2()?;
        let targets = contiguous::<u32>(s2, l2)?;
        dispatch!(s1, self.name(), |T| {
            let logits = contiguous::<T>(s1, l1)?;
            let g = contiguous::<T>(s3, l3)?[0];
            let mut out = vec![T::of(0.0); logits.len()];
            for_row_blocks(&mut out, vocab, |first, block| {
                for (i, out_row) in block.chunks_exact_mut(vocab).enumerate() {
                    let r = first + i;
                    let row = &logits[r * vocab..(r + 1) * vocab];
                    out_row.copy_from_slice(row);
                    let sum = exp_shifted_in_place(out_row, lane_max(row));
                    let k = g / sum;
                    out_row.iter_mut().for_each(|o| *o *= k);
                    let t = targets[r] as usize;
                    out_row[t] -= g;
                }
            });
            Ok((T::to_cpu_storage_owned(out), l1.shape().clone()))
        })
    }
}

/// Sum over rows of -log softmax(logits)[target]; `logits` (N, V), `targets` (N,) u32.
pub fn cross_entropy_sum(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    logits.contiguous()?.apply_op2(&targets.contiguous()?, CrossEntropySum)
}
