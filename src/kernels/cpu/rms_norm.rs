//! RMSNorm (Zhang & Sennrich 2019, Llama's norm) over the last dimension as one node with its
//! backward: y = x / sqrt(mean(x^2) + eps) * w. Composed, it is six candle nodes with a
//! gradient buffer each.

use candle_core::{CpuStorage, CustomOp2, Device, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::{contiguous, lane_dot, Real};

struct RmsNormOp {
    eps: f64,
}

/// 1 / sqrt(mean(row^2) + eps).
fn inverse_rms<T: Real>(row: &[T], eps: f64) -> T {
    T::of(1.0) / (lane_dot(row, row) / T::of(row.len() as f64) + T::of(eps)).sqrt_()
}

/// Rows per parallel task.
const ROWS_PER_TASK: usize = 64;

pub(super) fn rms_norm_forward<T: Real>(x: &[T], w: &[T], eps: f64) -> Vec<T> {
    let d = w.len();
    let mut out = vec![T::of(0.0); x.len()];
    out.par_chunks_mut(d * ROWS_PER_TASK).zip(x.par_chunks(d * ROWS_PER_TASK)).for_each(|(out, x)| {
        for (out_row, row) in out.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
            let r = inverse_rms(row, eps);
            out_row.iter_mut().zip(row).zip(w).for_each(|((y, &v), &g)| *y = v * r * g);
        }
    });
    out
}

/// With g = dy * w: dx = r g - x r^3 mean(g x) (plus `residual`, a gradient arriving through a
/// skip connection), into `dx`; dw += the sum over rows of dy x r, into `dw` (d values).
pub(super) fn rms_norm_backward<T: Real>(
    x: &[T],
    w: &[T],
    dy: &[T],
    residual: Option<&[T]>,
    eps: f64,
    (dx, dw): (&mut [T], &mut [T]),
) {
    let d = w.len();
    let chunk = d * ROWS_PER_TASK;
    let partials: Vec<Vec<T>> = dx
        .par_chunks_mut(chunk)
        .enumerate()
        .map(|(task, dx)| {
            let at = task * chunk;
            let (x, dy) = (&x[at..at + dx.len()], &dy[at..at + dx.len()]);
            let skip = residual.map(|r| &r[at..at + dx.len()]);
            let mut dw = vec![T::of(0.0); d];
            let mut g = vec![T::of(0.0); d];
            for (i, dx_row) in dx.chunks_exact_mut(d).enumerate() {
                let (row, dy_row) = (&x[i * d..(i + 1) * d], &dy[i * d..(i + 1) * d]);
                let r = inverse_rms(row, eps);
                g.iter_mut().zip(dy_row).zip(w).for_each(|((g, &dy), &w)| *g = dy * w);
                let mean_gx = lane_dot(&g, row) / T::of(d as f64);
                let r3 = r * r * r;
                for j in 0..d {
                    dx_row[j] = r * g[j] - row[j] * r3 * mean_gx;
                    dw[j] += dy_row[j] * row[j] * r;
                }
                if let Some(skip) = skip {
                    dx_row.iter_mut().zip(&skip[i * d..(i + 1) * d]).for_each(|(g, &s)| *g += s);
                }
            }
            dw
        })
        .collect();
    for part in partials {
        dw.iter_mut().zip(part).for_each(|(a, p)| *a += p);
    }
}

impl CustomOp2 for RmsNormOp {
    fn name(&self) -> &'static str {
        "taper-rms-norm"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        dispatch!(s1, self.name(), |T| {
            let out = rms_norm_forward(contiguous::<T>(s1, l1)?, contiguous::<T>(s2, l2)?, self.eps);
            Ok((T::to_cpu_storage_owned(out), l1.shape().clone()))
        })
    }
    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (xs, xl) = x.storage_and_layout();
        let (ws, wl) = w.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let (candle_core::Storage::Cpu(xs), candle_core::Storage::Cpu(ws), candle_core::Storage::Cpu(gs)) =
            (&*xs, &*ws, &*gs)
        else {
            candle_core::bail!("taper-rms-norm runs on the CPU only")
        };
        let (dx, dw) = dispatch!(xs, self.name(), |T| {
            let (xv, wv, gv) = (contiguous::<T>(xs, xl)?, contiguous::<T>(ws, wl)?, contiguous::<T>(gs, gl)?);
            let (mut dx, mut dw) = (vec![T::of(0.0); xv.len()], vec![T::of(0.0); wv.len()]);
            rms_norm_backward(xv, wv, gv, None, self.eps, (&mut dx, &mut dw));
            (Tensor::from_vec(dx, x.shape(), &Device::Cpu)?, Tensor::from_vec(dw, w.shape(), &Device::Cpu)?)
        });
        Ok((Some(dx), Some(dw)))
    }
}

/// RMSNorm over the last dimension of `x` with gain `w`.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    if x.dims().last() != Some(&w.elem_count()) {
        candle_core::bail!("rms-norm: gain of {} values for input {:?}", w.elem_count(), x.shape());
    }
    x.contiguous()?.apply_op2(&w.contiguous()?, RmsNormOp { eps })
}
