//! Which keys each query may attend to, as a plain description (a causal offset, a key-padding
//! vector), and what positions add to the scores (ALiBi's slopes, T5's learned bias); each
//! backend builds its own form from it, once per forward (the form is kept in the mask, which
//! every layer of the forward shares).
//!
//! Positions: the keys are positions 0..T_k and the queries the last T_q of them (query i sits
//! at T_k - T_q + i), which holds for self-attention with or without a KV-cache.

use std::cell::OnceCell;
use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor};

use super::cpu::AttentionMask;

/// Large enough to zero a softmax weight, small enough for f16/bf16 and to keep a fully masked
/// row finite (it then attends uniformly instead of producing NaN).
pub const MASKED: f32 = -1e4;

/// What positions add to self-attention's scores.
#[derive(Debug, Clone)]
pub enum ScoreBias {
    /// ALiBi: -slope_h * |query position - key position|, one slope per head (fixed).
    Alibi(Arc<[f32]>),
    /// A learned bias (1, H, T_q, T_k), through which its table gets a gradient (T5).
    Learned(Tensor),
}

/// Which keys each query sees: all of them, a causal prefix, and/or the unpadded ones; and the
/// position bias on the scores, if any.
#[derive(Debug, Clone, Default)]
pub struct Mask<'a> {
    /// Query i, at position `offset + i`, sees keys 0..=offset+i only.
    causal_offset: Option<usize>,
    /// (B, T_k): 1 for a real key, 0 for padding.
    key_keep: Option<&'a Tensor>,
    score_bias: Option<ScoreBias>,
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

    /// This mask with a position bias on the scores as well.
    pub fn with_bias(self, score_bias: Option<ScoreBias>) -> Self {
        Self { score_bias, ..self }
    }

    /// Whether the scores take a learned bias, which the composed attention and the CPU
    /// self-attention sub-layer node apply (the other CPU attention nodes do not).
    pub fn has_learned_bias(&self) -> bool {
        self.learned_bias().is_some()
    }

    /// The learned bias (1, H, T_q, T_k), if the scores take one.
    pub fn learned_bias(&self) -> Option<&Tensor> {
        match &self.score_bias {
            Some(ScoreBias::Learned(bias)) => Some(bias),
            _ => None,
        }
    }

    /// The additive form for `t_q` queries over `t_k` keys: causal (T_q, T_k), padding
    /// (B, 1, 1, T_k), position bias (1, H, T_q, T_k), summed; None when nothing is added.
    /// Built on the first call (every layer of a forward has the same queries) and reused.
    pub fn additive(&self, t_q: usize, t_k: usize, device: &Device) -> Result<Option<&Tensor>> {
        if self.additive.get().is_none() {
            let causal = self.causal_offset.map(|offset| causal_mask(t_q, offset, device)).transpose()?;
            let padding = self.key_keep.map(padding_mask).transpose()?;
            let bias = match &self.score_bias {
                Some(ScoreBias::Alibi(slopes)) => Some(alibi_bias(slopes, t_q, t_k, device)?),
                Some(ScoreBias::Learned(bias)) => Some(bias.to_dtype(DType::F32)?),
                None => None,
            };
            let mut form: Option<Tensor> = None;
            for part in [causal, padding, bias].into_iter().flatten() {
                form = Some(match form {
                    Some(sum) => sum.broadcast_add(&part)?,
                    None => part,
                });
            }
            let _ = self.additive.set(form);
        }
        Ok(self.additive.get().and_then(Option::as_ref))
    }

    /// The CPU kernels' form: the causal offset, the per-(batch, key) additive bias, ALiBi's
    /// slopes. A learned bias is not in it: it needs a gradient, so the self-attention node
    /// takes it as a parameter (`learned_bias`), and the other CPU nodes refuse it.
    pub fn cpu_form(&self) -> Result<&AttentionMask> {
        if self.cpu.get().is_none() {
            let key_bias = match self.key_keep {
                Some(keep) => Some(crate::host::cpu_vec1(&padding_mask(keep)?)?),
                None => None,
            };
            let alibi = match &self.score_bias {
                Some(ScoreBias::Alibi(slopes)) => Some(slopes.to_vec()),
                _ => None,
            };
            let _ = self.cpu.set(AttentionMask { causal_offset: self.causal_offset, key_bias, alibi });
        }
        self.cpu.get().ok_or_else(|| candle_core::Error::Msg("attention mask form missing".into()))
    }
}

/// ALiBi's bias (1, H, T_q, T_k): -slope_h * |i' - j| for query i at position i' = T_k - T_q + i.
pub fn alibi_bias(slopes: &[f32], t_q: usize, t_k: usize, device: &Device) -> Result<Tensor> {
    let first = t_k - t_q;
    let values: Vec<f32> = slopes
        .iter()
        .flat_map(|&m| (0..t_q).flat_map(move |i| (0..t_k).map(move |j| -m * (first + i).abs_diff(j) as f32)))
        .collect();
    Tensor::from_vec(values, (1, slopes.len(), t_q, t_k), device)
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
