//! A whole Transformer sub-layer as one autograd node, Add & Norm included: pre-LN
//! x + f(LN(x)), sandwich x + LN'(f(LN(x))), post-LN LN(alpha x + f(x)) (alpha = 1, or
//! DeepNorm's), for a branch f (the FFN in `ffn.rs`, self-attention in
//! `attention.rs`).
//!
//! Why one node: candle's backward gives every tensor between two nodes a zeroed gradient
//! buffer and then adds into it (measured on one core: about 0.15 ms per (768, 128) tensor,
//! with the add node itself). Inside one node the LayerNorm output, the branch's intermediate
//! activations and its output pass between the kernels as plain buffers; only x and two packed
//! parameter tensors get gradients. The parameters come packed because a candle node has at
//! most three inputs: [ln.weight | ln.bias | the branch's first part] and [its second part],
//! one `Tensor::cat` each (about 1 % of the sub-layer's bytes).

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Device, Layout, Result, Shape, Storage, Tensor, WithDType};

use super::rms_norm::{rms_norm_backward, rms_norm_forward};
use super::{contiguous, layer_norm_backward, layer_norm_forward, zip_apply, Real};

/// The f of a sub-layer. Its parameters are two flat slices; it keeps what its backward needs.
pub(super) trait Branch: Send + Sync + 'static {
    const NAME: &'static str;
    /// The lengths of the two parameter slices, for model width `d`.
    fn parameter_lens(&self, d: usize) -> (usize, usize);
    /// f(input) for input of `shape` (last dimension d). `keep`: a backward pass will follow.
    fn forward<T: Real>(&self, input: &[T], shape: &Shape, params: (&[T], &[T]), keep: bool) -> Result<Vec<T>>;
    /// d(input) for d(output); the parameters' gradients go into `grads` (which start zeroed).
    fn backward<T: Real>(
        &self,
        input: &[T],
        shape: &Shape,
        params: (&[T], &[T]),
        d_out: &[T],
        grads: (&mut [T], &mut [T]),
    ) -> Result<Vec<T>>;
}

/// Where a post-LN node leaves its norm's input, the sum x + f(x), for LayerNorm probing
/// (the pre-LN norm's input is x itself).
pub type SumProbe = Arc<Mutex<Option<Tensor>>>;

/// The sub-layer's norm (LayerNorm, or RMSNorm when `rms`), where it sits, its epsilon, the
/// skip connection's multiplier `alpha` (post-LN only: DeepNorm's; 1 otherwise), whether a
/// second norm of the same kind follows the branch (`sandwich`, pre-LN only; its parameters
/// end the second packed tensor), and the probe for the norms' inputs after the first.
#[derive(Debug, Clone)]
pub struct SublayerNorm {
    pub pre_norm: bool,
    pub rms: bool,
    pub eps: f64,
    pub alpha: f64,
    pub sandwich: bool,
    pub probe: Option<SumProbe>,
}

impl SublayerNorm {
    /// Values of the norm's parameters at the head of the first packed tensor: [weight | bias],
    /// or [weight] for RMSNorm.
    pub(super) fn len(&self, d: usize) -> usize {
        if self.rms {
            d
        } else {
            2 * d
        }
    }

    /// Values of the sandwich's second norm at the end of the second packed tensor.
    fn out_len(&self, d: usize) -> usize {
        if self.sandwich {
            self.len(d)
        } else {
            0
        }
    }

    pub(super) fn forward<T: Real>(&self, x: &[T], params: &[T], d: usize) -> Vec<T> {
        match self.rms {
            true => rms_norm_forward(x, params, self.eps),
            false => layer_norm_forward(x, &params[..d], &params[d..], self.eps),
        }
    }

    /// dx (with `residual` added) into `dx`; the parameters' gradients into `d_params`.
    pub(super) fn backward<T: Real>(
        &self,
        x: &[T],
        params: &[T],
        dy: &[T],
        residual: Option<&[T]>,
        dx: &mut [T],
        d_params: &mut [T],
    ) {
        let d = d_params.len() / if self.rms { 1 } else { 2 };
        match self.rms {
            true => rms_norm_backward(x, params, dy, residual, self.eps, (dx, d_params)),
            false => layer_norm_backward(x, &params[..d], dy, residual, self.eps, dx, d_params),
        }
    }
}

pub(super) struct SublayerOp<B: Branch> {
    branch: B,
    norm: SublayerNorm,
    /// Inverted-dropout multipliers for the branch's output (0 or 1/(1-p), one per element),
    /// in training with residual dropout.
    dropout: Option<Vec<f32>>,
    /// False when no input records a graph (evaluation): nothing is kept.
    keep: bool,
    saved: Mutex<Option<Saved>>,
}

/// What a sub-layer's forward keeps for its backward: the normed input (pre-LN) or the sum
/// (post-LN), and the branch's output (sandwich).
type Saved = (CpuStorage, Option<CpuStorage>);

/// The sub-layer of `branch` on x, with the packed parameters `first` = [ln.weight | ln.bias |
/// the branch's first slice] and `second` = the branch's second slice, and `dropout`
/// multipliers on the branch's output (see `Mode::dropout_mask`).
pub(super) fn apply<B: Branch>(
    x: &Tensor,
    (first, second): (&Tensor, &Tensor),
    branch: B,
    norm: SublayerNorm,
    dropout: Option<Vec<f32>>,
) -> Result<Tensor> {
    if dropout.as_ref().is_some_and(|d| d.len() != x.elem_count()) {
        candle_core::bail!("{}: the dropout mask does not match the input's shape", B::NAME);
    }
    if norm.pre_norm && norm.alpha != 1.0 {
        candle_core::bail!("{}: a scaled skip connection (alpha {}) is post-LN only", B::NAME, norm.alpha);
    }
    if norm.sandwich && !norm.pre_norm {
        candle_core::bail!("{}: the sandwich's second norm needs the first before the branch (pre-LN)", B::NAME);
    }
    let keep = x.track_op() || first.track_op() || second.track_op();
    let op = SublayerOp { branch, norm, dropout, keep, saved: Mutex::new(None) };
    x.contiguous()?.apply_op3(&first.contiguous()?, &second.contiguous()?, op)
}

impl<B: Branch> SublayerOp<B> {
    /// Model width and rows of x, checking the parameters' lengths.
    fn dims(&self, x: &Shape, first: usize, second: usize) -> Result<(usize, usize)> {
        let d = *x.dims().last().unwrap_or(&0);
        let (p1, p2) = self.branch.parameter_lens(d);
        let (norm, out) = (self.norm.len(d), self.norm.out_len(d));
        if first != norm + p1 || second != p2 + out {
            candle_core::bail!(
                "{}: packed parameters of {first} and {second} values do not fit width {d} (expected {} and {})",
                B::NAME,
                norm + p1,
                p2 + out
            );
        }
        Ok((d, x.elem_count() / d.max(1)))
    }

    /// The gradient at the branch's output from the one at its term of the skip sum: through
    /// dropout (the skip connection has none), then for a sandwich back through the second
    /// norm (its input `y`, parameters, and their gradients' slice). None: `d_branch` itself.
    fn branch_gradient<T: Real>(&self, d_branch: &[T], sandwich: Option<(&[T], &[T], &mut [T])>) -> Option<Vec<T>> {
        let d_dropped = self.dropout.as_ref().map(|mask| {
            let mut g = d_branch.to_vec();
            zip_apply(&mut g, mask, |g, m| *g *= T::of(m as f64));
            g
        });
        let Some((y, ln_out, d_ln_out)) = sandwich else { return d_dropped };
        let mut d_y = vec![T::of(0.0); y.len()];
        self.norm.backward(y, ln_out, d_dropped.as_deref().unwrap_or(d_branch), None, &mut d_y, d_ln_out);
        Some(d_y)
    }

    /// What the forward leaves for the probe: a post-LN norm's input (the sum), or the
    /// sandwich's second norm's input (the branch's output).
    fn leave_for_probe<T: Real>(&self, values: &[T], shape: &Shape) -> Result<()> {
        if let Some(probe) = &self.norm.probe {
            let values = Tensor::from_slice(values, shape, &Device::Cpu)?;
            *probe.lock().map_err(|_| candle_core::Error::Msg("probe lock poisoned".into()))? = Some(values);
        }
        Ok(())
    }

    fn saved(&self) -> Result<std::sync::MutexGuard<'_, Option<Saved>>> {
        self.saved.lock().map_err(|_| candle_core::Error::Msg(format!("{} lock poisoned", B::NAME)))
    }
}

impl<B: Branch> CustomOp3 for SublayerOp<B> {
    fn name(&self) -> &'static str {
        B::NAME
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
        let (d, _) = self.dims(l1.shape(), l2.shape().elem_count(), l3.shape().elem_count())?;
        let pre_norm = self.norm.pre_norm;
        dispatch!(s1, B::NAME, |T| {
            let x = contiguous::<T>(s1, l1)?;
            let (ln, p1) = contiguous::<T>(s2, l2)?.split_at(self.norm.len(d));
            let second = contiguous::<T>(s3, l3)?;
            let (p2, ln_out) = second.split_at(second.len() - self.norm.out_len(d));
            let normed = if pre_norm { Some(self.norm.forward(x, ln, d)) } else { None };
            let input = normed.as_deref().unwrap_or(x);
            let branch_out = self.branch.forward(input, l1.shape(), (p1, p2), self.keep)?;
            // Sandwich: the branch's output is normed again before the skip connection.
            let (mut sum, branch_out) = match self.norm.sandwich {
                true => (self.norm.forward(&branch_out, ln_out, d), Some(branch_out)),
                false => (branch_out, None),
            };
            if let Some(mask) = &self.dropout {
                zip_apply(&mut sum, mask, |y, m| *y *= T::of(m as f64));
            }
            match self.norm.alpha {
                1.0 => zip_apply(&mut sum, x, |y, x| *y += x),
                alpha => zip_apply(&mut sum, x, |y, x| *y += T::of(alpha) * x),
            }
            let (out, normed_or_sum) = match normed {
                Some(normed) => (sum, normed),
                None => (self.norm.forward(&sum, ln, d), sum),
            };
            match &branch_out {
                Some(branch_out) => self.leave_for_probe(branch_out, l1.shape())?,
                None if !pre_norm => self.leave_for_probe(&normed_or_sum, l1.shape())?,
                None => {}
            }
            if self.keep {
                let branch_out = branch_out.map(T::to_cpu_storage_owned);
                *self.saved()? = Some((T::to_cpu_storage_owned(normed_or_sum), branch_out));
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
        let Some((normed_or_sum, branch_out)) = saved.as_ref() else {
            candle_core::bail!("{} backward without a forward pass", B::NAME)
        };
        let (d, rows) = self.dims(x.shape(), first.elem_count(), second.elem_count())?;
        let pre_norm = self.norm.pre_norm;
        let (x_storage, x_layout) = x.storage_and_layout();
        let (p1_storage, p1_layout) = first.storage_and_layout();
        let (p2_storage, p2_layout) = second.storage_and_layout();
        let (g_storage, g_layout) = grad.storage_and_layout();
        let (Storage::Cpu(sx), Storage::Cpu(s1), Storage::Cpu(s2), Storage::Cpu(sg)) =
            (&*x_storage, &*p1_storage, &*p2_storage, &*g_storage)
        else {
            candle_core::bail!("fused ops run on the CPU only")
        };
        let (dx, d_first, d_second) = dispatch!(sx, B::NAME, |T| {
            let (x, dy) = (contiguous::<T>(sx, x_layout)?, contiguous::<T>(sg, g_layout)?);
            let (ln, p1) = contiguous::<T>(s1, p1_layout)?.split_at(self.norm.len(d));
            let (p2, ln_out) = contiguous::<T>(s2, p2_layout)?.split_at(second.elem_count() - self.norm.out_len(d));
            let normed_or_sum = normed_or_sum.as_slice::<T>()?;
            let mut d_first = vec![T::of(0.0); first.elem_count()];
            let mut d_second = vec![T::of(0.0); second.elem_count()];
            let (d_ln, d_p1) = d_first.split_at_mut(self.norm.len(d));
            let (d_p2, d_ln_out) = d_second.split_at_mut(p2.len());
            // Post-LN: through the norm first; the sum's gradient feeds the branch and the skip.
            let d_sum = if pre_norm {
                None
            } else {
                let mut d_sum = vec![T::of(0.0); rows * d];
                self.norm.backward(normed_or_sum, ln, dy, None, &mut d_sum, d_ln);
                Some(d_sum)
            };
            let d_branch = d_sum.as_deref().unwrap_or(dy);
            let branch_out = branch_out.as_ref().map(|y| y.as_slice::<T>()).transpose()?;
            let d_out = self.branch_gradient(d_branch, branch_out.map(|y| (y, ln_out, d_ln_out)));
            let input = if pre_norm { normed_or_sum } else { x };
            let d_out = d_out.as_deref().unwrap_or(d_branch);
            let d_input = self.branch.backward(input, x_layout.shape(), (p1, p2), d_out, (d_p1, d_p2))?;
            let dx = if pre_norm {
                // d(x) = dy (the skip connection) + the norm's backward of d(normed).
                let mut dx = vec![T::of(0.0); rows * d];
                self.norm.backward(x, ln, &d_input, Some(dy), &mut dx, d_ln);
                dx
            } else {
                let mut dx = d_input;
                match self.norm.alpha {
                    1.0 => zip_apply(&mut dx, d_branch, |g, skip| *g += skip),
                    alpha => zip_apply(&mut dx, d_branch, |g, skip| *g += T::of(alpha) * skip),
                }
                dx
            };
            (
                Tensor::from_vec(dx, x_layout.shape(), &Device::Cpu)?,
                Tensor::from_vec(d_first, first.elem_count(), &Device::Cpu)?,
                Tensor::from_vec(d_second, second.elem_count(), &Device::Cpu)?,
            )
        });
        Ok((Some(dx), Some(d_first), Some(d_second)))
    }
}

/// Parameters packed for `apply`: [norm.weight | norm.bias (LayerNorm) | first...] and
/// [second...], built from the model's own tensors (their gradients flow back through the
/// concatenation).
pub fn pack_parameters(norm: &[&Tensor], first: &[&Tensor], second: &[&Tensor]) -> Result<(Tensor, Tensor)> {
    let flat = |ts: &[&Tensor]| -> Result<Tensor> {
        let parts = ts.iter().map(|t| t.flatten_all()).collect::<Result<Vec<_>>>()?;
        Tensor::cat(&parts, 0)
    };
    let mut head = norm.to_vec();
    head.extend_from_slice(first);
    Ok((flat(&head)?, flat(second)?))
}
