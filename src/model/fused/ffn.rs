//! The whole FFN sub-layer as one autograd node, Add & Norm included: pre-LN x + FFN(LN(x)),
//! post-LN LN(x + FFN(x)), FFN(h) = act(h W1^T + b1) W2^T + b2.
//!
//! Why one node: candle's backward gives every tensor between two nodes a zeroed gradient
//! buffer and then adds into it (measured on one core: about 0.15 ms per (768, 128) tensor).
//! Here the LayerNorm output, the hidden activations and the branch output pass between the
//! kernels as plain buffers; only x and the two packed parameter tensors have gradients.
//! The parameters come packed (one `Tensor::cat` each, ~1 % of the sub-layer's bytes) because a
//! candle node has at most three inputs: [ln.weight | ln.bias | W1 | b1] and [W2 | b2].

use std::mem::MaybeUninit;
use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, Device, Layout, Result, Shape, Storage, Tensor, WithDType};

use super::linear::{activate_with_bias, backward_into, forward as linear_forward, Act};
use super::{contiguous, layer_norm_backward, layer_norm_forward, written_by, Real};

/// Shape and settings of one FFN sub-layer.
#[derive(Debug, Clone, Copy)]
pub struct FfnShape {
    /// Model width.
    pub d: usize,
    /// Hidden width.
    pub hidden: usize,
    pub act: Act,
    /// Pre-LN (norm on the branch input) or post-LN (norm on the sum).
    pub pre_norm: bool,
    pub eps: f64,
}

impl FfnShape {
    fn first_len(&self) -> usize {
        2 * self.d + self.hidden * self.d + self.hidden
    }
    fn second_len(&self) -> usize {
        self.d * self.hidden + self.d
    }
}

/// What the backward needs besides the inputs: the normed branch input (pre-LN) or the sum
/// (post-LN), the hidden activations, and act' of the pre-activations.
struct Saved {
    normed_or_sum: CpuStorage,
    hidden: CpuStorage,
    derivative: CpuStorage,
}

struct FfnOp {
    shape: FfnShape,
    /// False when no input records a graph (evaluation): nothing is kept.
    keep_for_backward: bool,
    saved: Mutex<Option<Saved>>,
}

/// The packed parameters split into their parts: (ln_w, ln_b, W1, b1) and (W2, b2).
#[allow(clippy::type_complexity)]
fn split<'a, T>(
    s: &FfnShape,
    first: &'a [T],
    second: &'a [T],
) -> ((&'a [T], &'a [T], &'a [T], &'a [T]), (&'a [T], &'a [T])) {
    let (ln_w, rest) = first.split_at(s.d);
    let (ln_b, rest) = rest.split_at(s.d);
    let (w1, b1) = rest.split_at(s.hidden * s.d);
    let (w2, b2) = second.split_at(s.d * s.hidden);
    ((ln_w, ln_b, w1, b1), (w2, b2))
}

impl FfnOp {
    fn saved(&self) -> Result<std::sync::MutexGuard<'_, Option<Saved>>> {
        self.saved.lock().map_err(|_| candle_core::Error::Msg("ffn lock poisoned".into()))
    }

    fn check(&self, x: &Layout, first: &Layout, second: &Layout) -> Result<usize> {
        let s = &self.shape;
        let width = *x.shape().dims().last().unwrap_or(&0);
        if width != s.d || first.shape().elem_count() != s.first_len() || second.shape().elem_count() != s.second_len()
        {
            candle_core::bail!(
                "ffn: input width {width} and packed parameters of {} and {} values do not fit d = {}, hidden = {}",
                first.shape().elem_count(),
                second.shape().elem_count(),
                s.d,
                s.hidden
            );
        }
        Ok(x.shape().elem_count() / s.d.max(1))
    }
}

impl CustomOp3 for FfnOp {
    fn name(&self) -> &'static str {
        "taper-ffn"
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
        let rows = self.check(l1, l2, l3)?;
        let s = self.shape;
        dispatch!(s1, "taper-ffn", |T| {
            let x = contiguous::<T>(s1, l1)?;
            let ((ln_w, ln_b, w1, b1), (w2, b2)) = split(&s, contiguous::<T>(s2, l2)?, contiguous::<T>(s3, l3)?);
            let normed = if s.pre_norm { Some(layer_norm_forward(x, ln_w, ln_b, s.eps)) } else { None };
            let branch_in = normed.as_deref().unwrap_or(x);
            let mut pre = linear_forward(branch_in, w1, None, (rows, s.d, s.hidden));
            let hidden = activate_with_bias(&mut pre, b1, s.act, self.keep_for_backward);
            let mut sum = linear_forward(&hidden, w2, Some(b2), (rows, s.hidden, s.d));
            sum.iter_mut().zip(x).for_each(|(y, &x)| *y += x);
            let (out, normed_or_sum) = match normed {
                Some(normed) => (sum, normed),
                None => (layer_norm_forward(&sum, ln_w, ln_b, s.eps), sum),
            };
            if self.keep_for_backward {
                *self.saved()? = Some(Saved {
                    normed_or_sum: T::to_cpu_storage_owned(normed_or_sum),
                    hidden: T::to_cpu_storage_owned(hidden),
                    derivative: T::to_cpu_storage_owned(pre),
                });
            }
            Ok((T::to_cpu_storage_owned(out), l1.shape().clone()))
        })
    }
    fn bwd(
        &self,
        x: &Tensor,
        first: &Tensor,
        second: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let saved = self.saved()?;
        let Some(saved) = saved.as_ref() else { candle_core::bail!("ffn backward without a forward pass") };
        let s = self.shape;
        let rows = x.elem_count() / s.d.max(1);
        let (x_storage, x_layout) = x.storage_and_layout();
        let (p1_storage, p1_layout) = first.storage_and_layout();
        let (p2_storage, p2_layout) = second.storage_and_layout();
        let (g_storage, g_layout) = grad.storage_and_layout();
        let (Storage::Cpu(sx), Storage::Cpu(s1), Storage::Cpu(s2), Storage::Cpu(sg)) =
            (&*x_storage, &*p1_storage, &*p2_storage, &*g_storage)
        else {
            candle_core::bail!("fused ops run on the CPU only")
        };
        let (dx, d1, d2) = dispatch!(sx, "taper-ffn", |T| {
            let x = contiguous::<T>(sx, x_layout)?;
            let dy = contiguous::<T>(sg, g_layout)?;
            let ((ln_w, _, w1, _), (w2, _)) =
                split(&s, contiguous::<T>(s1, p1_layout)?, contiguous::<T>(s2, p2_layout)?);
            let normed_or_sum = saved.normed_or_sum.as_slice::<T>()?;
            let (hidden, derivative) = (saved.hidden.as_slice::<T>()?, saved.derivative.as_slice::<T>()?);
            let mut d1 = vec![T::of(0.0); s.first_len()];
            let (dln, d_fc1) = d1.split_at_mut(2 * s.d);
            let (dw1, db1) = d_fc1.split_at_mut(s.hidden * s.d);
            // Post-LN: through the final norm first; the sum's gradient then feeds both the
            // branch and the skip connection.
            let d_sum = if s.pre_norm {
                None
            } else {
                let mut d_sum = vec![T::of(0.0); rows * s.d];
                layer_norm_backward(normed_or_sum, ln_w, dy, None, s.eps, &mut d_sum, dln);
                Some(d_sum)
            };
            let d_branch = d_sum.as_deref().unwrap_or(dy);
            // Second layer: dW2, db2 and d(hidden).
            let mut d2 = Vec::with_capacity(s.second_len());
            let mut d_hidden = Vec::with_capacity(rows * s.hidden);
            {
                let (dw2, db2) = d2.spare_capacity_mut()[..s.second_len()].split_at_mut(s.d * s.hidden);
                let d_hidden_out = &mut d_hidden.spare_capacity_mut()[..rows * s.hidden];
                backward_into(hidden, w2, d_branch, (rows, s.hidden, s.d), d_hidden_out, dw2, Some(db2));
            }
            // SAFETY: backward_into wrote every element of both.
            unsafe {
                d2.set_len(s.second_len());
                d_hidden.set_len(rows * s.hidden);
            }
            // Through the activation (in place), then the first layer.
            d_hidden.iter_mut().zip(derivative).for_each(|(g, &a)| *g *= a);
            let branch_in = if s.pre_norm { normed_or_sum } else { x };
            let fill = |d_in: &mut [MaybeUninit<T>]| {
                let (dw1, db1) = (as_uninit(dw1), as_uninit(db1));
                backward_into(branch_in, w1, &d_hidden, (rows, s.d, s.hidden), d_in, dw1, Some(db1));
            };
            // SAFETY: backward_into writes every element of d_in.
            let d_in = unsafe { written_by(rows * s.d, fill) };
            let dx = if s.pre_norm {
                // d(x) = dy (skip connection) + the norm's backward of d(normed).
                let mut dx = vec![T::of(0.0); rows * s.d];
                layer_norm_backward(x, ln_w, &d_in, Some(dy), s.eps, &mut dx, dln);
                dx
            } else {
                let mut dx = d_in;
                dx.iter_mut().zip(d_branch).for_each(|(g, &skip)| *g += skip);
                dx
            };
            (
                Tensor::from_vec(dx, x_layout.shape(), &Device::Cpu)?,
                Tensor::from_vec(d1, s.first_len(), &Device::Cpu)?,
                Tensor::from_vec(d2, s.second_len(), &Device::Cpu)?,
            )
        });
        Ok((Some(dx), Some(d1), Some(d2)))
    }
}

/// An initialised slice as a destination that kernels may overwrite (they write only values).
fn as_uninit<T>(data: &mut [T]) -> &mut [MaybeUninit<T>] {
    // SAFETY: MaybeUninit<T> has T's layout, and the writers store only initialised values.
    unsafe { &mut *(data as *mut [T] as *mut [MaybeUninit<T>]) }
}

/// The FFN sub-layer of `shape` on x (last dimension d), with the packed parameters
/// [ln.weight | ln.bias | W1 | b1] and [W2 | b2] (see `pack_ffn_parameters`).
pub fn ffn_sublayer(x: &Tensor, first: &Tensor, second: &Tensor, shape: FfnShape) -> Result<Tensor> {
    let keep_for_backward = x.track_op() || first.track_op() || second.track_op();
    let op = FfnOp { shape, keep_for_backward, saved: Mutex::new(None) };
    x.contiguous()?.apply_op3(&first.contiguous()?, &second.contiguous()?, op)
}

/// The two packed parameter tensors of an FFN sub-layer, built from the model's own tensors
/// (their gradients flow back through the concatenation).
pub fn pack_ffn_parameters(
    ln: (&Tensor, &Tensor),
    fc1: (&Tensor, &Tensor),
    fc2: (&Tensor, &Tensor),
) -> Result<(Tensor, Tensor)> {
    let first =
        Tensor::cat(&[ln.0.flatten_all()?, ln.1.flatten_all()?, fc1.0.flatten_all()?, fc1.1.flatten_all()?], 0)?;
    let second = Tensor::cat(&[fc2.0.flatten_all()?, fc2.1.flatten_all()?], 0)?;
    Ok((first, second))
}
