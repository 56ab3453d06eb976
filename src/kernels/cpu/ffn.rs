//! The FFN branch of a fused sub-layer (`sublayer.rs`): act(h W1^T + b1) W2^T + b2, with the
//! parameters as [W1 | b1] and [W2 | b2] (or [W1] and [W2] without biases).

use std::sync::Mutex;

use candle_core::{CpuStorage, Result, Shape, Tensor};

use super::linear::{activate_with_bias, as_uninit, backward_into, forward as linear_forward, Act};
use super::sublayer::{apply, Branch, SublayerNorm};
use super::{written_by, zip_apply, Real};

/// The FFN's hidden width, activation, and whether its two linears have biases.
#[derive(Debug, Clone, Copy)]
pub struct FfnShape {
    pub hidden: usize,
    pub act: Act,
    pub bias: bool,
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
        (hidden * d + bias as usize * hidden, d * hidden + bias as usize * d)
    }

    fn forward<T: Real>(&self, input: &[T], shape: &Shape, (p1, p2): (&[T], &[T]), keep: bool) -> Result<Vec<T>> {
        let (d, hidden) = (width(shape), self.shape.hidden);
        let rows = input.len() / d.max(1);
        let ((w1, b1), (w2, b2)) = (p1.split_at(hidden * d), p2.split_at(d * hidden));
        let mut pre = linear_forward(input, w1, None, (rows, d, hidden));
        // Without a bias the activation pass adds zeros (the pass's width is the hidden size).
        let zeros;
        let b1 = if self.shape.bias {
            b1
        } else {
            zeros = vec![T::of(0.0); hidden];
            &zeros
        };
        let activations = activate_with_bias(&mut pre, b1, self.shape.act, keep);
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
        let rows = input.len() / d.max(1);
        let (w1, w2) = (&p1[..hidden * d], &p2[..d * hidden]);
        let (dw1, db1) = d_p1.split_at_mut(hidden * d);
        let (dw2, db2) = d_p2.split_at_mut(d * hidden);
        let (db1, db2) = (bias.then(|| as_uninit(db1)), bias.then(|| as_uninit(db2)));
        let fill =
            |d_hidden: &mut _| backward_into(activations, w2, d_out, (rows, hidden, d), d_hidden, as_uninit(dw2), db2);
        // SAFETY: backward_into writes every element of d(hidden).
        let mut d_hidden = unsafe { written_by(rows * hidden, fill) };
        zip_apply(&mut d_hidden, derivative, |g, a| *g *= a);
        let fill =
            |d_input: &mut _| backward_into(input, w1, &d_hidden, (rows, d, hidden), d_input, as_uninit(dw1), db1);
        // SAFETY: as above.
        Ok(unsafe { written_by(rows * d, fill) })
    }
}

/// The FFN sub-layer: pre-LN x + FFN(LN(x)), post-LN LN(x + FFN(x)), with FFN(h) =
/// act(h W1^T + b1) W2^T + b2, as one node. `first` = [ln.weight | ln.bias | W1 | b1] and
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
