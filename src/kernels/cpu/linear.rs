//! y = x W^T + b as one autograd node: the bias is the product's starting value (no separate
//! pass, no broadcast-add node), input of any rank needs no reshape nodes, and the backward
//! computes dX = dY W and dW = dY^T X side by side, with db as dY's column sums.
//! `linear_gelu` adds GELU to the same node (the FFN's first layer): the pre-activation is
//! kept for the backward, which saves a node, its gradient buffers and a pass.

use std::mem::MaybeUninit;
use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Device, Layout, Result, Shape, Storage, Tensor, WithDType};
use rayon::prelude::*;

use super::gemm::{product_parallel, MatRef};
use super::{contiguous, normal_cdf_pdf, written_by, Real, PARALLEL_MIN};

/// (x, W) or (x, W, b) -> x W^T (+ b).
struct LinearOp;
/// (x, W, dY) -> [dX | dW | db] flattened, db present when `bias`.
struct LinearGrad {
    bias: bool,
}

/// Rows of x, its width (= W's columns), and W's rows.
fn dims(x: &Layout, w: &Layout) -> Result<(usize, usize, usize)> {
    let (out_features, in_features) = w.shape().dims2()?;
    let width = *x.shape().dims().last().unwrap_or(&0);
    if width != in_features {
        candle_core::bail!("linear: input width {width} does not match the weight's {in_features} columns");
    }
    Ok((x.shape().elem_count() / in_features.max(1), in_features, out_features))
}

/// `dims`, checking that the bias has one value per output.
fn dims_with_bias(x: &Layout, w: &Layout, b: &Layout) -> Result<(usize, usize, usize)> {
    let dims = dims(x, w)?;
    if b.shape().elem_count() != dims.2 {
        candle_core::bail!("linear: bias of {} values for {} outputs", b.shape().elem_count(), dims.2);
    }
    Ok(dims)
}

fn output_shape(x: &Layout, out_features: usize) -> Shape {
    let mut dims = x.shape().dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = out_features;
    }
    Shape::from(dims)
}

/// x W^T (+ b): the bias rows are the product's starting value.
pub(super) fn forward<T: Real>(x: &[T], w: &[T], bias: Option<&[T]>, (rows, k, m): (usize, usize, usize)) -> Vec<T> {
    let fill = |y: &mut [MaybeUninit<T>]| {
        if let Some(b) = bias {
            for row in y.chunks_exact_mut(m) {
                row.iter_mut().zip(b).for_each(|(y, &b)| _ = y.write(b));
            }
        }
        // SAFETY: x is rows x k and W is m x k (checked by `dims`), so W^T is k x m; with a bias,
        // y was initialised just above.
        unsafe { product_parallel((rows, m, k), y, bias.is_some(), MatRef::rows(x, 0, k), MatRef::transposed(w, 0, k)) }
    };
    // SAFETY: the product writes every element.
    unsafe { written_by(rows * m, fill) }
}

impl CustomOp2 for LinearOp {
    fn name(&self) -> &'static str {
        "taper-linear"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = dims(l1, l2)?;
        dispatch!(s1, "taper-linear", |T| {
            let y = forward::<T>(contiguous(s1, l1)?, contiguous(s2, l2)?, None, dims);
            Ok((T::to_cpu_storage_owned(y), output_shape(l1, dims.2)))
        })
    }
    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = unpack(x, w, false, grad)?;
        Ok((Some(dx), Some(dw)))
    }
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "taper-linear"
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
        let dims = dims_with_bias(l1, l2, l3)?;
        dispatch!(s1, "taper-linear", |T| {
            let y = forward::<T>(contiguous(s1, l1)?, contiguous(s2, l2)?, Some(contiguous(s3, l3)?), dims);
            Ok((T::to_cpu_storage_owned(y), output_shape(l1, dims.2)))
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
        let (dx, dw, db) = unpack(x, w, true, grad)?;
        Ok((Some(dx), Some(dw), db))
    }
}

/// dX, dW and (with `bias`) db, as views of one packed gradient buffer.
fn unpack(x: &Tensor, w: &Tensor, bias: bool, grad: &Tensor) -> Result<(Tensor, Tensor, Option<Tensor>)> {
    let packed = x.apply_op3_no_bwd(w, &grad.contiguous()?, &LinearGrad { bias })?;
    let (x_len, w_len) = (x.elem_count(), w.elem_count());
    let dx = packed.narrow(0, 0, x_len)?.reshape(x.shape())?;
    let dw = packed.narrow(0, x_len, w_len)?.reshape(w.shape())?;
    let db = if bias { Some(packed.narrow(0, x_len + w_len, w.dim(0)?)?) } else { None };
    Ok((dx, dw, db))
}

/// The backward of y = x W^T (+ b) for dY: dX = dY W and dW = dY^T X side by side, and db (when
/// wanted) as dY's column sums; every element of the three outputs is written.
pub(super) fn backward_into<T: Real>(
    x: &[T],
    w: &[T],
    dy: &[T],
    (rows, k, m): (usize, usize, usize),
    dx: &mut [MaybeUninit<T>],
    dw: &mut [MaybeUninit<T>],
    db: Option<&mut [MaybeUninit<T>]>,
) {
    rayon::join(
        // SAFETY: dY is rows x m and W is m x k.
        || unsafe { product_parallel((rows, k, m), dx, false, MatRef::rows(dy, 0, m), MatRef::rows(w, 0, k)) },
        || {
            // SAFETY: dY^T is m x rows and x is rows x k.
            unsafe { product_parallel((m, k, rows), dw, false, MatRef::transposed(dy, 0, m), MatRef::rows(x, 0, k)) };
            if let Some(db) = db {
                let mut sums = vec![T::of(0.0); m];
                for row in dy.chunks_exact(m) {
                    sums.iter_mut().zip(row).for_each(|(s, &g)| *s += g);
                }
                db.iter_mut().zip(sums).for_each(|(db, s)| _ = db.write(s));
            }
        },
    );
}

impl CustomOp3 for LinearGrad {
    fn name(&self) -> &'static str {
        "taper-linear-grad"
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
        let (rows, k, m) = dims(l1, l2)?;
        dispatch!(s1, self.name(), |T| {
            let (x, w, dy) = (contiguous::<T>(s1, l1)?, contiguous::<T>(s2, l2)?, contiguous::<T>(s3, l3)?);
            if dy.len() != rows * m {
                candle_core::bail!("linear backward: gradient of {} values for {rows}x{m} outputs", dy.len());
            }
            let fill = |out: &mut [MaybeUninit<T>]| {
                let (dx, rest) = out.split_at_mut(rows * k);
                let (dw, db) = rest.split_at_mut(m * k);
                backward_into(x, w, dy, (rows, k, m), dx, dw, self.bias.then_some(db));
            };
            let len = rows * k + m * k + if self.bias { m } else { 0 };
            // SAFETY: the two products write dX and dW whole, and db is written from its sums.
            let out = unsafe { written_by(len, fill) };
            Ok((T::to_cpu_storage_owned(out), Shape::from(len)))
        })
    }
}

/// x W^T + b over the last dimension of `x` (any rank), as one node.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    match b {
        Some(b) => x.apply_op3(&w, &b.contiguous()?, LinearOp),
        None => x.apply_op2(&w, LinearOp),
    }
}

/// An initialised slice as a destination that kernels may overwrite (they write only values).
pub(super) fn as_uninit<T>(data: &mut [T]) -> &mut [MaybeUninit<T>] {
    // SAFETY: MaybeUninit<T> has T's layout, and the writers store only initialised values.
    unsafe { &mut *(data as *mut [T] as *mut [MaybeUninit<T>]) }
}

/// The activations the fused FFN kernels apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    Gelu,
    /// GPT-2's tanh approximation of GELU.
    GeluTanh,
    Relu,
    /// x * sigmoid(x).
    Silu,
}

/// (act(z), act'(z)) for one pre-activation.
fn value_and_derivative<T: Real>(act: Act, pre: T) -> (T, T) {
    match act {
        Act::Gelu => {
            let (cdf, pdf) = normal_cdf_pdf(pre);
            (pre * cdf, pre.mul_add_(pdf, cdf))
        }
        Act::GeluTanh => {
            // 0.5 z (1 + tanh(u)), u = sqrt(2 / pi) (z + 0.044715 z^3); tanh from one exp.
            let (c, k) = (T::of(0.797_884_560_802_865_4), T::of(0.044_715));
            let z2 = pre * pre;
            let u = c * pre * z2.mul_add_(k, T::of(1.0));
            let tanh = T::of(1.0) - T::of(2.0) / ((u + u).exp_() + T::of(1.0));
            let half = T::of(0.5) * (T::of(1.0) + tanh);
            let du = c * (T::of(3.0) * k).mul_add_(z2, T::of(1.0));
            // d/dz = 0.5 (1 + t) + 0.5 z (1 - t^2) du
            (pre * half, (T::of(0.5) * pre * du).mul_add_(T::of(1.0) - tanh * tanh, half))
        }
        Act::Relu if pre > T::of(0.0) => (pre, T::of(1.0)),
        Act::Relu => (T::of(0.0), T::of(0.0)),
        Act::Silu => {
            let sigmoid = T::of(1.0) / (T::of(1.0) + (-pre).exp_());
            // d/dz z s(z) = s (1 + z (1 - s))
            (pre * sigmoid, sigmoid * pre.mul_add_(T::of(1.0) - sigmoid, T::of(1.0)))
        }
    }
}

/// act(z + b) for z of rows of width `b.len()`. With `keep_derivative`, act'(z + b) is written
/// over z (erf and e^(-z^2/2) are computed once, in the pass that needs them anyway).
pub(super) fn activate_with_bias<T: Real>(z: &mut [T], b: &[T], act: Act, keep_derivative: bool) -> Vec<T> {
    // One loop for each case: a branch inside the loop would be evaluated (and blended) for
    // every element.
    match (act, keep_derivative) {
        (Act::Gelu, true) => activate_rows::<T, _, true>(z, b, |z| value_and_derivative(Act::Gelu, z)),
        (Act::Gelu, false) => activate_rows::<T, _, false>(z, b, |z| value_and_derivative(Act::Gelu, z)),
        (Act::GeluTanh, true) => activate_rows::<T, _, true>(z, b, |z| value_and_derivative(Act::GeluTanh, z)),
        (Act::GeluTanh, false) => activate_rows::<T, _, false>(z, b, |z| value_and_derivative(Act::GeluTanh, z)),
        (Act::Relu, true) => activate_rows::<T, _, true>(z, b, |z| value_and_derivative(Act::Relu, z)),
        (Act::Relu, false) => activate_rows::<T, _, false>(z, b, |z| value_and_derivative(Act::Relu, z)),
        (Act::Silu, true) => activate_rows::<T, _, true>(z, b, |z| value_and_derivative(Act::Silu, z)),
        (Act::Silu, false) => activate_rows::<T, _, false>(z, b, |z| value_and_derivative(Act::Silu, z)),
    }
}

/// A gated FFN's hidden layer, act(g + b_g) * (u + b_u), for rows of z = [g | u] (each half
/// `b.len() / 2` wide, b = [b_g | b_u]). With `keep_derivative`, z is overwritten with the
/// multipliers of the backward, [act'(g) (u + b_u) | act(g)]: d(g) = d(h) act'(g) (u + b_u),
/// d(u) = d(h) act(g).
pub(super) fn gate_with_bias<T: Real>(z: &mut [T], b: &[T], act: Act, keep_derivative: bool) -> Vec<T> {
    // One monomorphic loop per activation, as in `activate_with_bias`.
    match act {
        Act::Gelu => gate_rows(z, b, keep_derivative, |z| value_and_derivative(Act::Gelu, z)),
        Act::GeluTanh => gate_rows(z, b, keep_derivative, |z| value_and_derivative(Act::GeluTanh, z)),
        Act::Relu => gate_rows(z, b, keep_derivative, |z| value_and_derivative(Act::Relu, z)),
        Act::Silu => gate_rows(z, b, keep_derivative, |z| value_and_derivative(Act::Silu, z)),
    }
}

/// The loop of `gate_with_bias`: `f(pre)` is (value, derivative).
fn gate_rows<T: Real, F: Fn(T) -> (T, T) + Sync>(z: &mut [T], b: &[T], keep_derivative: bool, f: F) -> Vec<T> {
    let hidden = b.len() / 2;
    let rows = z.len() / b.len().max(1);
    let block = PARALLEL_MIN.div_ceil(b.len().max(1)).max(1);
    let fill = |y: &mut [MaybeUninit<T>]| {
        y.par_chunks_mut(block * hidden).zip(z.par_chunks_mut(block * 2 * hidden)).for_each(|(y, z)| {
            for (y, z) in y.chunks_exact_mut(hidden).zip(z.chunks_exact_mut(2 * hidden)) {
                let (gates, ups) = z.split_at_mut(hidden);
                for (j, (y, (g, u))) in y.iter_mut().zip(gates.iter_mut().zip(ups.iter_mut())).enumerate() {
                    let up = *u + b[hidden + j];
                    let (value, derivative) = f(*g + b[j]);
                    y.write(value * up);
                    if keep_derivative {
                        (*g, *u) = (derivative * up, value);
                    }
                }
            }
        })
    };
    // SAFETY: the blocks cover y (whole rows), and every element is written.
    unsafe { written_by(rows * hidden, fill) }
}

/// The loop of `activate_with_bias`: `f(pre)` is (value, derivative).
fn activate_rows<T: Real, F: Fn(T) -> (T, T) + Sync, const KEEP: bool>(z: &mut [T], b: &[T], f: F) -> Vec<T> {
    let width = b.len().max(1);
    let block = PARALLEL_MIN.div_ceil(width).max(1) * width;
    let len = z.len();
    let fill = |y: &mut [MaybeUninit<T>]| {
        y.par_chunks_mut(block).zip(z.par_chunks_mut(block)).for_each(|(y, z)| {
            for (y, z) in y.chunks_exact_mut(width).zip(z.chunks_exact_mut(width)) {
                for ((y, z), &b) in y.iter_mut().zip(z.iter_mut()).zip(b) {
                    let (value, derivative) = f(*z + b);
                    y.write(value);
                    if KEEP {
                        *z = derivative;
                    }
                }
            }
        })
    };
    // SAFETY: the blocks cover y (whole rows), and every element is written.
    unsafe { written_by(len, fill) }
}

/// (x, W, b) -> GELU(x W^T + b). When a backward will come, the forward pass also keeps
/// GELU'(z) for z = x W^T + b, written over z itself: erf and e^(-z^2/2) are computed once, in
/// the pass that needs them anyway, and the backward is one multiplication.
struct LinearGeluOp {
    keep_derivative: bool,
    derivative: Mutex<Option<CpuStorage>>,
}

impl LinearGeluOp {
    fn saved(&self) -> Result<std::sync::MutexGuard<'_, Option<CpuStorage>>> {
        self.derivative.lock().map_err(|_| candle_core::Error::Msg("linear-gelu lock poisoned".into()))
    }
}

impl CustomOp3 for LinearGeluOp {
    fn name(&self) -> &'static str {
        "taper-linear-gelu"
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
        let dims = dims_with_bias(l1, l2, l3)?;
        dispatch!(s1, "taper-linear-gelu", |T| {
            // The bias is added in the GELU pass, which is arithmetic-bound: cheaper than
            // starting the product from copies of it.
            let mut z = forward::<T>(contiguous(s1, l1)?, contiguous(s2, l2)?, None, dims);
            let y = activate_with_bias(&mut z, contiguous::<T>(s3, l3)?, Act::Gelu, self.keep_derivative);
            let keep_derivative = self.keep_derivative;
            if keep_derivative {
                *self.saved()? = Some(T::to_cpu_storage_owned(z));
            }
            Ok((T::to_cpu_storage_owned(y), output_shape(l1, dims.2)))
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
        // dZ = dY * GELU'(Z), then the linear layer's backward.
        let grad = grad.contiguous()?;
        let grad_z = {
            let saved = self.saved()?;
            let Some(derivative) = saved.as_ref() else {
                candle_core::bail!("linear-gelu backward without a forward pass that kept GELU'")
            };
            let (grad_storage, grad_layout) = grad.storage_and_layout();
            let Storage::Cpu(grad_storage) = &*grad_storage else {
                candle_core::bail!("fused ops run on the CPU only")
            };
            dispatch!(derivative, "taper-linear-gelu", |T| {
                let (derivative, dy) = (derivative.as_slice::<T>()?, contiguous::<T>(grad_storage, grad_layout)?);
                let dz: Vec<T> =
                    derivative.par_iter().zip(dy.par_iter()).with_min_len(PARALLEL_MIN).map(|(&d, &g)| d * g).collect();
                Tensor::from_vec(dz, grad.shape(), &Device::Cpu)?
            })
        };
        let (dx, dw, db) = unpack(x, w, true, &grad_z)?;
        Ok((Some(dx), Some(dw), db))
    }
}

/// GELU(x W^T + b) as one node (exact GELU, as `fused::gelu`).
pub fn linear_gelu(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    // Inputs that record no graph (evaluation, generation) get no backward: skip GELU'.
    let keep_derivative = x.track_op() || w.track_op() || b.track_op();
    let op = LinearGeluOp { keep_derivative, derivative: Mutex::new(None) };
    x.contiguous()?.apply_op3(&w.contiguous()?, &b.contiguous()?, op)
}
