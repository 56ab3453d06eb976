//! Which keys each query may attend to, as a plain description (a causal offset, a key-padding
//! vector); each backend builds its own form from it, once per forward (the form is kept in
//! the mask, which every layer of the forward shares).

use std::cell::OnceCell;

use candle_core::{DType, Device, Result, Tensor};

use super::cpu::AttentionMask;

/// Large enough to zero a softmax weight, small enough for f16/bf16 and to keep a fully masked
/// row finite (it then attends uniformly instead of producing NaN).
pub const MASKED: f32 = -1e4;

/// Which keys each query sees: all of them, a causal prefix, and/or the unpadded ones.
#[derive(Debug, Clone, Default)]
pub struct Mask<'a> {
    /// Query i, at position `offset + i`, sees keys 0..=offset+i only.
    causal_offset: Option<usize>,
    /// (B, T_k): 1 for a real key, 0 for padding.
    key_keep: Option<&'a Tensor>,
    /// The composed backend's additive form, broadcastable to (B, H, T_q, T_k).
    additive: OnceCell<Option<Tensor>>,
    /// The CPU kernels' form.
    cpu: OnceCell<AttentionMask>,
}

impl<'a> Mask<'a> {
    /// Every query sees every key.
    pub fn none() -> Self {
        Self::default()
    }
    /// Causal self-attention over queries at positions `offset..`.
    pub fn causal(offset: usize) -> Self {
        Self { causal_offset: Some(offset), ..Self::default() }
    }
    /// Key padding: `keep` (B, T_k), 1 for real tokens and 0 for padding.
    pub fn padding(keep: &'a Tensor) -> Self {
        Self { key_keep: Some(keep), ..Self::default() }
    }
    /// Key padding when `keep` is given, else no mask.
    pub fn padding_or_none(keep: Option<&'a Tensor>) -> Self {
        Self { key_keep: keep, ..Self::default() }
    }

    /// The additive form for `t_q` queries: causal (T_q, offset + T_q), padding (B, 1, 1, T_k),
    /// or both summed; None when nothing is hidden. Built on the first call (every layer of a
    /// forward has the same queries) and reused.
    pub fn additive(&self, t_q: usize, device: &Device) -> Result<Option<&Tensor>> {
        if self.additive.get().is_none() {
            let causal = self.causal_offset.map(|offset| causal_mask(t_q, offset, device)).transpose()?;
            let padding = self.key_keep.map(padding_mask).transpose()?;
            let form = match (causal, padding) {
                (Some(c), Some(p)) => Some(p.broadcast_add(&c)?),
                (c, p) => c.or(p),
            };
            let _ = self.additive.set(form);
        }
        Ok(self.additive.get().and_then(Option::as_ref))
    }

    /// The CPU kernels' form: the causal offset and the per-(batch, key) additive bias.
    pub fn cpu_form(&self) -> Result<&AttentionMask> {
        if self.cpu.get().is_none() {
            let key_bias = match self.key_keep {
                Some(keep) => Some(padding_mask(keep)?.flatten_all()?.to_vec1::<f32>()?),
                None => None,
            };
            let _ = self.cpu.set(AttentionMask { causal_offset: self.causal_offset, key_bias });
        }
        self.cpu.get().ok_or_else(|| candle_core::Error::Msg("attention mask form missing".into()))
    }
}

/// The additive mask for causal self-attention: (q_len, offset + q_len), 0 where query
/// `offset + i` may see key `j` (j <= offset + i), MASKED elsewhere.
pub fn causal_mask(q_len: usize, offset: usize, device: &Device) -> Result<Tensor> {
    let k_len = offset + q_len;
    let values: Vec<f32> =
        (0..q_len).flat_map(|i| (0..k_len).map(move |j| if j <= offset + i { 0.0 } else { MASKED })).collect();
    Tensor::from_vec(values, (q_len, k_len), device)
}

/// The additive mask for key padding: `keep` (B, T_k) with 1 for real tokens, 0 for padding,
/// as (B, 1, 1, T_k), to broadcast over heads and queries.
pub fn padding_mask(keep: &Tensor) -> Result<Tensor> {
    let (b, t) = keep.dims2()?;
    let keep = keep.to_dtype(DType::F32)?;
    ((1.0 - keep)? * MASKED as f64)?.reshape((b, 1, 1, t)) // (B, T_k) -> (B, 1, 1, T_k)
}
