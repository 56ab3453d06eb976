//! Multi-head scaled dot-product attention as one autograd node:
//! softmax(Q K^T * scale + mask) V, with optional dropout on the weights.
//!
//! Q, K and V come in the projections' own (B, T, D) layout and the output leaves in it, so no
//! head split/merge copies are made. The work runs in parallel over batch x heads, each pair's
//! products on one thread (they are tiny: 64x64x32 in the default model; candle runs them as
//! one batched product whose batches execute one after another). The softmax weights are kept
//! for the backward pass, which runs the same way.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, Device, Layout, Result, Shape, Storage, Tensor, WithDType};
use rayon::prelude::*;

use super::gemm::{product, MatMut, MatRef};
use super::{contiguous, exp_shifted_in_place, lane_dot, lane_max, Real};

/// Which keys each query may see.
#[derive(Debug, Clone, Default)]
pub struct AttentionMask {
    /// Query i, at position `offset + i`, sees keys 0..=offset+i only.
    pub causal_offset: Option<usize>,
    /// An additive bias per (batch, key), (B x T_k) row-major: 0 to keep, a large negative
    /// number to hide (key padding).
    pub key_bias: Option<Vec<f32>>,
}

struct AttentionOp {
    n_head: usize,
    scale: f64,
    mask: AttentionMask,
    /// Inverted-dropout multipliers on the weights, (B, H, T_q, T_k): 0 or 1/(1-p).
    dropout: Option<Vec<f32>>,
    /// The softmax weights of the forward pass (before dropout), for the backward.
    weights: Mutex<Option<CpuStorage>>,
}

#[derive(Clone, Copy)]
struct Geometry {
    batch: usize,
    t_q: usize,
    t_k: usize,
    n_head: usize,
    head_dim: usize,
}

impl Geometry {
    fn width(&self) -> usize {
        self.n_head * self.head_dim
    }
    /// Offsets of head `h` of batch row `b` in Q (and the output) and in K/V.
    fn offsets(&self, pair: usize) -> (usize, usize) {
        let (b, h) = (pair / self.n_head, pair % self.n_head);
        (b * self.t_q * self.width() + h * self.head_dim, b * self.t_k * self.width() + h * self.head_dim)
    }
}

impl AttentionOp {
    fn geometry(&self, q: &Layout, k: &Layout, v: &Layout) -> Result<Geometry> {
        let (batch, t_q, width) = q.shape().dims3()?;
        let (k_batch, t_k, k_width) = k.shape().dims3()?;
        if (k_batch, k_width) != (batch, width) || v.shape() != k.shape() {
            candle_core::bail!(
                "attention: queries {:?}, keys {:?} and values {:?} do not fit together",
                q.shape(),
                k.shape(),
                v.shape()
            );
        }
        if width % self.n_head != 0 {
            candle_core::bail!("attention: width {width} is not a multiple of {} heads", self.n_head);
        }
        let g = Geometry { batch, t_q, t_k, n_head: self.n_head, head_dim: width / self.n_head };
        if self.mask.key_bias.as_ref().is_some_and(|bias| bias.len() != batch * t_k) {
            candle_core::bail!("attention: the key mask does not have {batch} x {t_k} entries");
        }
        if self.dropout.as_ref().is_some_and(|d| d.len() != batch * self.n_head * t_q * t_k) {
            candle_core::bail!("attention: the dropout mask does not match the weights' shape");
        }
        Ok(g)
    }

    /// Softmax in place over each row of one (T_q, T_k) score matrix of batch row `b`.
    fn softmax<T: Real>(&self, g: &Geometry, b: usize, scores: &mut [T]) {
        let scale = T::of(self.scale);
        let key_bias = self.mask.key_bias.as_ref().map(|bias| &bias[b * g.t_k..(b + 1) * g.t_k]);
        for (i, row) in scores.chunks_exact_mut(g.t_k).enumerate() {
            let visible = self.mask.causal_offset.map_or(g.t_k, |offset| (offset + i + 1).min(g.t_k));
            let (seen, hidden) = row.split_at_mut(visible);
            match key_bias {
                Some(bias) => seen.iter_mut().zip(bias).for_each(|(s, &b)| *s = *s * scale + T::of(b as f64)),
                None => seen.iter_mut().for_each(|s| *s *= scale),
            }
            let inv = T::of(1.0) / exp_shifted_in_place(seen, lane_max(seen));
            seen.iter_mut().for_each(|s| *s *= inv);
            hidden.iter_mut().for_each(|s| *s = T::of(0.0));
        }
    }

    /// The weights after dropout for pair `pair` (into `scratch`), or the weights themselves.
    fn dropped<'a, T: Real>(&self, pair: usize, weights: &'a [T], scratch: &'a mut Vec<T>) -> &'a [T] {
        match &self.dropout {
            Some(mask) => {
                let mask = &mask[pair * weights.len()..(pair + 1) * weights.len()];
                scratch.clear();
                scratch.extend(weights.iter().zip(mask).map(|(&w, &m)| w * T::of(m as f64)));
                scratch
            }
            None => weights,
        }
    }

    fn forward<T: Real>(&self, g: &Geometry, q: &[T], k: &[T], v: &[T]) -> (Vec<T>, Vec<T>) {
        let d = g.width();
        let mut out = vec![T::of(0.0); g.batch * g.t_q * d];
        let mut weights = vec![T::of(0.0); g.batch * g.n_head * g.t_q * g.t_k];
        let out_ptr = MatMut::rows(&mut out, 0, d);
        weights.par_chunks_mut((g.t_q * g.t_k).max(1)).enumerate().for_each_init(Vec::new, |scratch, (pair, w)| {
            let (q_at, kv_at) = g.offsets(pair);
            // SAFETY: Q/K/V are (B, T, D) and every (batch, head) pair writes its own
            // columns h*head_dim.. of its own batch rows of `out`.
            unsafe {
                let scores = MatMut::rows(w, 0, g.t_k);
                product(
                    (g.t_q, g.t_k, g.head_dim),
                    scores,
                    false,
                    MatRef::rows(q, q_at, d),
                    MatRef::transposed(k, kv_at, d),
                );
                self.softmax(g, pair / g.n_head, w);
                let w = self.dropped(pair, w, scratch);
                let dst = out_ptr.at(q_at);
                product((g.t_q, g.head_dim, g.t_k), dst, false, MatRef::rows(w, 0, g.t_k), MatRef::rows(v, kv_at, d));
            }
        });
        (out, weights)
    }

    /// [dQ | dK | dV], flattened.
    fn backward<T: Real>(&self, g: &Geometry, q: &[T], k: &[T], v: &[T], weights: &[T], grad: &[T]) -> Vec<T> {
        let d = g.width();
        let (q_len, kv_len) = (g.batch * g.t_q * d, g.batch * g.t_k * d);
        let mut out = vec![T::of(0.0); q_len + 2 * kv_len];
        let (dq, rest) = out.split_at_mut(q_len);
        let (dk, dv) = rest.split_at_mut(kv_len);
        let (dq, dk, dv) = (MatMut::rows(dq, 0, d), MatMut::rows(dk, 0, d), MatMut::rows(dv, 0, d));
        let scale = T::of(self.scale);
        let per_pair = g.t_q * g.t_k;
        (0..g.batch * g.n_head).into_par_iter().for_each_init(
            || (Vec::new(), vec![T::of(0.0); per_pair]),
            |(scratch, dscores), pair| {
                let (q_at, kv_at) = g.offsets(pair);
                let w = &weights[pair * per_pair..(pair + 1) * per_pair];
                // SAFETY: as in `forward`, each pair writes only its own head's columns of its
                // own batch rows of dQ, dK and dV; `dscores` is this task's own.
                unsafe {
                    let w_dropped = self.dropped(pair, w, scratch);
                    let dv_at = dv.at(kv_at);
                    let (p_t, grad_at) = (MatRef::transposed(w_dropped, 0, g.t_k), MatRef::rows(grad, q_at, d));
                    product((g.t_k, g.head_dim, g.t_q), dv_at, false, p_t, grad_at);
                    let ds = MatMut::rows(dscores, 0, g.t_k);
                    product((g.t_q, g.t_k, g.head_dim), ds, false, grad_at, MatRef::transposed(v, kv_at, d));
                }
                // Through dropout, then softmax: dS = scale * P * (dP - sum_j dP P).
                if let Some(mask) = &self.dropout {
                    let mask = &mask[pair * per_pair..(pair + 1) * per_pair];
                    dscores.iter_mut().zip(mask).for_each(|(g, &m)| *g *= T::of(m as f64));
                }
                for (g_row, w_row) in dscores.chunks_exact_mut(g.t_k).zip(w.chunks_exact(g.t_k)) {
                    let dot = lane_dot(g_row, w_row);
                    g_row.iter_mut().zip(w_row).for_each(|(x, &p)| *x = scale * p * (*x - dot));
                }
                // SAFETY: as above.
                unsafe {
                    let dq_at = dq.at(q_at);
                    let dk_at = dk.at(kv_at);
                    product(
                        (g.t_q, g.head_dim, g.t_k),
                        dq_at,
                        false,
                        MatRef::rows(dscores, 0, g.t_k),
                        MatRef::rows(k, kv_at, d),
                    );
                    let ds_t = MatRef::transposed(dscores, 0, g.t_k);
                    product((g.t_k, g.head_dim, g.t_q), dk_at, false, ds_t, MatRef::rows(q, q_at, d));
                }
            },
        );
        out
    }
}

impl CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "taper-attention"
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
        let g = self.geometry(l1, l2, l3)?;
        dispatch!(s1, self.name(), |T| {
            let (out, weights) = self.forward::<T>(&g, contiguous(s1, l1)?, contiguous(s2, l2)?, contiguous(s3, l3)?);
            *self.weights.lock().map_err(|_| candle_core::Error::Msg("attention weights lock poisoned".into()))? =
                Some(T::to_cpu_storage_owned(weights));
            Ok((T::to_cpu_storage_owned(out), l1.shape().clone()))
        })
    }
    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let saved =
            self.weights.lock().map_err(|_| candle_core::Error::Msg("attention weights lock poisoned".into()))?;
        let Some(weights) = saved.as_ref() else { candle_core::bail!("attention backward without a forward pass") };
        let (q_storage, q_layout) = q.storage_and_layout();
        let (k_storage, k_layout) = k.storage_and_layout();
        let (v_storage, v_layout) = v.storage_and_layout();
        let (grad_storage, grad_layout) = grad.storage_and_layout();
        let (Storage::Cpu(sq), Storage::Cpu(sk), Storage::Cpu(sv), Storage::Cpu(sg)) =
            (&*q_storage, &*k_storage, &*v_storage, &*grad_storage)
        else {
            candle_core::bail!("fused attention runs on the CPU only")
        };
        let g = self.geometry(q_layout, k_layout, v_layout)?;
        let packed = dispatch!(sq, self.name(), |T| {
            let (q, k, v) =
                (contiguous::<T>(sq, q_layout)?, contiguous::<T>(sk, k_layout)?, contiguous::<T>(sv, v_layout)?);
            let grad = contiguous::<T>(sg, grad_layout)?;
            let packed = self.backward::<T>(&g, q, k, v, weights.as_slice::<T>()?, grad);
            let len = packed.len();
            Tensor::from_vec(packed, len, &Device::Cpu)?
        });
        let (q_len, kv_len) = (q.elem_count(), k.elem_count());
        let dq = packed.narrow(0, 0, q_len)?.reshape(q.shape())?;
        let dk = packed.narrow(0, q_len, kv_len)?.reshape(k.shape())?;
        let dv = packed.narrow(0, q_len + kv_len, kv_len)?.reshape(v.shape())?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

/// softmax(Q K^T / sqrt(head_dim) + mask) V over `n_head` heads, for Q (B, T_q, D) and K, V
/// (B, T_k, D), heads side by side in D; the result is (B, T_q, D). `dropout`: multipliers for
/// the weights, (B, H, T_q, T_k) row-major, 0 or 1/(1-p) (see `Mode::dropout_mask`).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    n_head: usize,
    mask: AttentionMask,
    dropout: Option<Vec<f32>>,
) -> Result<Tensor> {
    let head_dim = q.dim(2)? / n_head.max(1);
    let op = AttentionOp { n_head, scale: 1.0 / (head_dim as f64).sqrt(), mask, dropout, weights: Mutex::new(None) };
    q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}
