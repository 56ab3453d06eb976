//! The FFN branch of a fused sub-layer (`sublayer.rs`): act(h W1^T + b1) W2^T + b2, with the
//! parameters as [W1 | b1] and [W2 | b2] (or [W1] and [W2] without biases); or gated,
//! (act(h Wg^T + bg) * (h Wu^T + bu)) W2^T + b2, with W1 = [Wg; Wu] stacked (one product for
//! both input projections) and b1 = [bg | bu].

use std::sync::Mutex;

use rayon::prelude::*;

use candle_core::{CpuStorage, Result, Shape, Tensor};

use super::linear::{activate_with_bias, as_uninit, backward_into, forward as linear_forward, gate_with_bias, Act};
use super::sublayer::{apply, Branch, SublayerNorm};
use super::{written_by, zip_apply, Real};

/// The FFN's hidden width, activation (the gate's, when gated), whether its linears have
/// biases, and whether it is gated (two input projections of width `hidden`).
#[derive(Debug, Clone, Copy)]
pub struct FfnShape {
    pub hidden: usize,
    pub act: Act,
    pub bias: bool,
    pub gated: bool,
}

impl FfnShape {
    /// Width of the first product: the hidden layer, or gate and up side by side.
    fn first_width(&self) -> usize {
        if self.gated {
            2 * self.hidden
        } else {
            self.hidden
        }
    }
}

struct FfnBranch {
    shape: FfnShape,
    /// The hidden activations and act' of the pre-activations.
    saved: Mutex<Option<(CpuStorage, CpuStorage)>>,
}

impl FfnBranch {
    fn saved(&self) -> Result<std::sync::MutexGuard<'_, Option<(CpuStorage, CpuStorage)>>> {
        self.saved.lock().map_err(|_| candle_core::Error::Msg("ffn lock poisoned".into()))
    }
}

fn width(shape: &Shape) -> usize {
    *shape.dims().last().unwrap_or(&0)
}

impl Branch for FfnBranch {
    const NAME: &'static str = "taper-ffn";

    fn parameter_lens(&self, d: usize) -> (usize, usize) {
        let FfnShape { hidden, bias, .. } = self.shape;
        let first = self.shape.first_width();
        (first * d + bias as usize * first, d * hidden + bias as usize * d)
    }

    fn forward<T: Real>(&self, input: &[T], shape: &Shape, (p1, p2): (&[T], &[T]), keep: bool) -> Result<Vec<T>> {
        let (d, hidden, first) = (width(shape), self.shape.hidden, self.shape.first_width());
        let rows = input.len() / d.max(1);
        let ((w1, b1), (w2, b2)) = (p1.split_at(first * d), p2.split_at(d * hidden));
        let mut pre = linear_forward(input, w1, None, (rows, d, first));
        // Without a bias the activation pass adds zeros (the pass's width is the first product's).
        let zeros;
        let b1 = if self.shape.bias {
            b1
        } else {
            zeros = vec![T::of(0.0); first];
            &zeros
        };
        // `pre` keeps the backward's multipliers: act'(z), or [act'(g) u | act(g)] when gated.
        let activations = match self.shape.gated {
            true => gate_with_bias(&mut pre, b1, self.shape.act, keep),
            false => activate_with_bias(&mut pre, b1, self.shape.act, keep),
        };
        let b2 = self.shape.bias.then_some(b2);
        let out = linear_forward(&activations, w2, b2, (rows, hidden, d));
        if keep {
            *self.saved()? = Some((T::to_cpu_storage_owned(activations), T::to_cpu_storage_owned(pre)));
        }
        Ok(out)
    }

    fn backward<T: Real>(
        &self,
        input: &[T],
        shape: &Shape,
        (p1, p2): (&[T], &[T]),
        d_out: &[T],
        (d_p1, d_p2): (&mut [T], &mut [T]),
    ) -> Result<Vec<T>> {
        let saved = self.saved()?;
        let Some((activations, derivative)) = saved.as_ref() else {
            candle_core::bail!("ffn backward without a forward pass")
        };
        let (activations, derivative) = (activations.as_slice::<T>()?, derivative.as_slice::<T>()?);
        let (d, hidden, bias) = (width(shape), self.shape.hidden, self.shape.bias);
        let first = self.shape.first_width();
        let rows = input.len() / d.max(1);
        let (w1, w2) = (&p1[..first * d], &p2[..d * hidden]);
        let (dw1, db1) = d_p1.split_at_mut(first * d);
        let (dw2, db2) = d_p2.split_at_mut(d * hidden);
        let (db1, db2) = (bias.then(|| as_uninit(db1)), bias.then(|| as_uninit(db2)));
        let fill =
            |d_hidden: &mut _| backward_into(activations, w2, d_out, (rows, hidden, d), d_hidden, as_uninit(dw2), db2);
        // SAFETY: backward_into writes every element of d(hidden).
        let mut d_hidden = unsafe { written_by(rows * hidden, fill) };
        let d_pre = match self.shape.gated {
            // d(pre) = [d(h) act'(g) u | d(h) act(g)], row by row.
            true => {
                let mut d_pre = vec![T::of(0.0); rows * first];
                let (dh_rows, m_rows) = (d_hidden.par_chunks(hidden.max(1)), derivative.par_chunks(first.max(1)));
                d_pre.par_chunks_mut(first.max(1)).zip(dh_rows).zip(m_rows).for_each(|((out, dh), m)| {
                    let (out_gate, out_up) = out.split_at_mut(hidden);
                    for (j, &g) in dh.iter().enumerate() {
                        out_gate[j] = g * m[j];
                        out_up[j] = g * m[hidden + j];
                    }
                });
                d_pre
            }
            false => {
                zip_apply(&mut d_hidden, derivative, |g, a| *g *= a);
                d_hidden
            }
        };
        let fill = |d_input: &mut _| backward_into(input, w1, &d_pre, (rows, d, first), d_input, as_uninit(dw1), db1);
        // SAFETY: as above.
        Ok(unsafe { written_by(rows * d, fill) })
    }
}

/// The FFN sub-layer: pre-LN x + FFN(LN(x)), post-LN LN(x + FFN(x)), with FFN(h) =
/// act(h W1^T + b1) W2^T + b2 (or gated, see the module), as one node. `first` =
/// [ln.weight | ln.bias | W1 | b1] and
/// `second` = [W2 | b2] (without the biases when `shape.bias` is false; see
/// `pack_parameters`); `dropout`: multipliers on FFN's output.
pub fn ffn_sublayer(
    x: &Tensor,
    (first, second): (&Tensor, &Tensor),
    shape: FfnShape,
    norm: SublayerNorm,
    dropout: Option<Vec<f32>>,
) -> Result<Tensor> {
    apply(x, (first, second), FfnBranch { shape, saved: Mutex::new(None) }, norm, dropout)
}
