//! Multi-head scaled dot-product attention as one autograd node:
//! softmax(Q K^T * scale + mask) V, with optional dropout on the weights.
//!
//! Q, K and V come in the projections' own (B, T, D) layout and the output leaves in it, so no
//! head split/merge copies are made. The work runs in parallel over batch x heads, each pair's
//! products on one thread (they are tiny: 64x64x32 in the default model; candle runs them as
//! one batched product whose batches execute one after another). The softmax weights are kept
//! for the backward pass, which runs the same way.

use std::mem::MaybeUninit;
use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Device, Layout, Result, Shape, Storage, Tensor, WithDType, D};
use rayon::prelude::*;

use super::gemm::{product, MatMut, MatRef};
use super::linear::{as_uninit, backward_into, forward as linear_forward};
use super::relative::{PairView, Relative};
use super::sublayer::{apply, Branch, SublayerNorm};
use super::{contiguous, exp_shifted_in_place, lane_dot, lane_max, written_by, Real};

/// Which keys each query may see.
#[derive(Debug, Clone, Default)]
pub struct AttentionMask {
    /// Query i, at position `offset + i`, sees keys 0..=offset+i only.
    pub causal_offset: Option<usize>,
    /// An additive bias per (batch, key), (B x T_k) row-major: 0 to keep, a large negative
    /// number to hide (key padding).
    pub key_bias: Option<Vec<f32>>,
    /// ALiBi's slope per head: query i (at key position T_k - T_q + i) adds
    /// -slope_h * |T_k - T_q + i - j| to its score of key j.
    pub alibi: Option<Vec<f32>>,
}

/// Where the backward sends the gradients of the scores' extras: the learned bias's, and
/// Shaw's tables with theirs ([keys | values]).
type ExtraGrads<'a, T> = (Option<&'a mut [T]>, Option<(Relative<'a, T>, &'a mut [T])>);
/// The same, per (batch, head) pair: rows of per-pair buffers summed afterwards.
type PairExtraGrads<'a, T> = (Option<MatMut<T>>, Option<(Relative<'a, T>, MatMut<T>)>);

/// Query rows per block of the causal products.
const QUERY_BLOCK: usize = 64;

struct AttentionOp {
    n_head: usize,
    /// Key/value heads: query head h reads key/value head h / (n_head / n_kv_head).
    n_kv_head: usize,
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
    /// Query heads per key/value head (grouped-query attention; 1: multi-head).
    group: usize,
    head_dim: usize,
    /// Row strides of Q and of K/V, and the columns where K and V start: (D, D, 0, 0) for
    /// three (B, T, D) tensors, (P, P, D, D + D_kv) for one packed (B, T, P = D + 2 D_kv).
    q_row: usize,
    kv_row: usize,
    k_col: usize,
    v_col: usize,
}

/// Where head h of batch row b starts in Q, K, V and the (B, T_q, D) output.
struct PairOffsets {
    q: usize,
    k: usize,
    v: usize,
    out: usize,
}

impl Geometry {
    fn width(&self) -> usize {
        self.n_head * self.head_dim
    }
    /// Width of the keys (and of the values).
    fn kv_width(&self) -> usize {
        self.width() / self.group
    }
    /// Pair `at`'s queries and output rows for the relative-position products.
    fn view(&self, at: &PairOffsets) -> PairView {
        let (t_q, t_k, head_dim) = (self.t_q, self.t_k, self.head_dim);
        PairView { q: (at.q, self.q_row), out: (at.out, self.width()), t_q, t_k, head_dim }
    }
    fn offsets(&self, pair: usize) -> PairOffsets {
        let (b, h) = (pair / self.n_head, pair % self.n_head);
        let head = h * self.head_dim;
        let kv = b * self.t_k * self.kv_row + (h / self.group) * self.head_dim;
        PairOffsets {
            q: b * self.t_q * self.q_row + head,
            k: kv + self.k_col,
            v: kv + self.v_col,
            out: b * self.t_q * self.width() + head,
        }
    }
}

impl AttentionOp {
    fn check(&self, g: Geometry) -> Result<Geometry> {
        let Geometry { batch, t_q, t_k, .. } = g;
        if t_k == 0 && t_q > 0 {
            candle_core::bail!("attention: {t_q} queries over no keys");
        }
        if self.mask.alibi.as_ref().is_some_and(|slopes| slopes.len() != self.n_head) {
            candle_core::bail!("attention: ALiBi has slopes for other than {} heads", self.n_head);
        }
        if self.mask.alibi.is_some() && t_q > t_k {
            candle_core::bail!(
                "attention: ALiBi over {t_q} queries and {t_k} keys (queries are the last keys' positions)"
            );
        }
        if self.mask.key_bias.as_ref().is_some_and(|bias| bias.len() != batch * t_k) {
            candle_core::bail!("attention: the key mask does not have {batch} x {t_k} entries");
        }
        if self.dropout.as_ref().is_some_and(|d| d.len() != batch * self.n_head * t_q * t_k) {
            candle_core::bail!("attention: the dropout mask does not match the weights' shape");
        }
        Ok(g)
    }

    fn head_dim(&self, width: usize) -> Result<usize> {
        if self.n_head == 0 || !width.is_multiple_of(self.n_head) {
            candle_core::bail!("attention: width {width} is not a multiple of {} heads", self.n_head);
        }
        Ok(width / self.n_head)
    }

    /// Q (B, T_q, D), K and V (B, T_k, D).
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
        let head_dim = self.head_dim(width)?;
        let (q_row, kv_row, n_head) = (width, width, self.n_head);
        self.check(Geometry { batch, t_q, t_k, n_head, group: 1, head_dim, q_row, kv_row, k_col: 0, v_col: 0 })
    }

    /// Q, K and V side by side in one (B, T, D + 2 D_kv), D_kv = D n_kv_head / n_head.
    fn packed_geometry(&self, qkv: &Layout) -> Result<Geometry> {
        let (batch, t, packed) = qkv.shape().dims3()?;
        let (n_head, n_kv) = (self.n_head, self.n_kv_head);
        if n_kv == 0 || !n_head.is_multiple_of(n_kv) || !(packed * n_head).is_multiple_of(n_head + 2 * n_kv) {
            candle_core::bail!("attention: packed queries/keys/values of width {packed} do not fit {n_head} query and {n_kv} key/value heads");
        }
        let width = packed * n_head / (n_head + 2 * n_kv);
        let (head_dim, group) = (self.head_dim(width)?, n_head / n_kv);
        let (q_row, kv_row, k_col, v_col) = (packed, packed, width, width + width / group);
        self.check(Geometry { batch, t_q: t, t_k: t, n_head, group, head_dim, q_row, kv_row, k_col, v_col })
    }

    /// Softmax in place over each row of one (T_q, T_k) score matrix of (batch, head) `pair`,
    /// `learned`: a bias (H, T_q, T_k) added to the scaled scores (T5's relative positions).
    fn softmax<T: Real>(&self, g: &Geometry, pair: usize, scores: &mut [T], learned: Option<&[T]>) {
        let (b, h) = (pair / g.n_head, pair % g.n_head);
        let learned = learned.map(|bias| &bias[h * g.t_q * g.t_k..(h + 1) * g.t_q * g.t_k]);
        let scale = T::of(self.scale);
        let key_bias = self.mask.key_bias.as_ref().map(|bias| &bias[b * g.t_k..(b + 1) * g.t_k]);
        let slope = self.mask.alibi.as_ref().map(|slopes| slopes[h] as f64);
        for (i, row) in scores.chunks_exact_mut(g.t_k).enumerate() {
            let visible = self.visible(g, i);
            let (seen, hidden) = row.split_at_mut(visible);
            match key_bias {
                Some(bias) => seen.iter_mut().zip(bias).for_each(|(s, &b)| *s = *s * scale + T::of(b as f64)),
                None => seen.iter_mut().for_each(|s| *s *= scale),
            }
            if let Some(bias) = learned {
                seen.iter_mut().zip(&bias[i * g.t_k..]).for_each(|(s, &b)| *s += b);
            }
            if let Some(slope) = slope {
                let position = g.t_k - g.t_q + i;
                let penalty = |j: usize| T::of(-slope * position.abs_diff(j) as f64);
                seen.iter_mut().enumerate().for_each(|(j, s)| *s += penalty(j));
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

    /// Keys query `i` sees.
    fn visible(&self, g: &Geometry, i: usize) -> usize {
        self.mask.causal_offset.map_or(g.t_k, |offset| (offset + i + 1).min(g.t_k))
    }

    /// Blocks of query rows (first row, rows) with the keys the block's last row sees: under a
    /// causal mask, the products skip the keys no row of the block sees (about 3/8 of the work
    /// at 256 positions).
    fn query_blocks(&self, g: &Geometry) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        let block = if self.mask.causal_offset.is_some() { QUERY_BLOCK } else { g.t_q.max(1) };
        let g = *g;
        (0..g.t_q).step_by(block).map(move |first| {
            let rows = block.min(g.t_q - first);
            (first, rows, self.visible(&g, first + rows - 1))
        })
    }

    /// The attention output and the softmax weights, with `learned` (H, T_q, T_k) on the scores
    /// and Shaw's `relative` embeddings, if any.
    fn forward<T: Real>(
        &self,
        g: &Geometry,
        (q, k, v): (&[T], &[T], &[T]),
        (learned, relative): (Option<&[T]>, Option<Relative<T>>),
    ) -> (Vec<T>, Vec<T>) {
        let d = g.width();
        let per_pair = (g.t_q * g.t_k).max(1);
        let mut weights = Vec::new();
        let fill_out = |out: &mut [MaybeUninit<T>]| {
            let out_ptr = MatMut::uninit_rows(out, 0, d);
            let fill_weights = |all_weights: &mut [MaybeUninit<T>]| {
                all_weights.par_chunks_mut(per_pair).enumerate().for_each_init(Vec::new, |scratch, (pair, w)| {
                    let at = g.offsets(pair);
                    let k_t = MatRef::transposed(k, at.k, g.kv_row);
                    for (first, rows, keys) in self.query_blocks(g) {
                        // Scores never computed (keys hidden from the whole block) are set
                        // here; softmax writes 0 over them, as over every hidden key.
                        for row in w[first * g.t_k..(first + rows) * g.t_k].chunks_exact_mut(g.t_k) {
                            row[keys..].iter_mut().for_each(|s| _ = s.write(T::of(0.0)));
                        }
                        let scores = MatMut::uninit_rows(w, first * g.t_k, g.t_k);
                        let q_rows = MatRef::rows(q, at.q + first * g.q_row, g.q_row);
                        // SAFETY: Q and K are laid out as `g` says; the block's scores are its own.
                        unsafe { product((rows, keys, g.head_dim), scores, false, q_rows, k_t) };
                    }
                    // SAFETY: every block wrote its rows whole, by the product or above.
                    let w = unsafe { &mut *(w as *mut [MaybeUninit<T>] as *mut [T]) };
                    if let Some(relative) = &relative {
                        relative.add_scores(&g.view(&at), q, w);
                    }
                    self.softmax(g, pair, w, learned);
                    let w = self.dropped(pair, w, scratch);
                    let v_rows = MatRef::rows(v, at.v, g.kv_row);
                    for (first, rows, keys) in self.query_blocks(g) {
                        let w_rows = MatRef::rows(w, first * g.t_k, g.t_k);
                        // SAFETY: every (batch, head) pair writes its own columns h*head_dim.. of
                        // its own batch rows of `out`; V is laid out as `g` says.
                        unsafe {
                            product((rows, g.head_dim, keys), out_ptr.at(at.out + first * d), false, w_rows, v_rows)
                        };
                    }
                    if let Some(relative) = &relative {
                        // SAFETY: as above; the rows were written by the products just made.
                        unsafe { relative.add_context(&g.view(&at), w, out_ptr.at(at.out)) };
                    }
                });
            };
            // SAFETY: the pairs cover the weights, each pair's blocks cover its rows.
            weights = unsafe { written_by(g.batch * g.n_head * g.t_q * g.t_k, fill_weights) };
        };
        // SAFETY: the pairs' columns and query blocks cover `out`.
        let out = unsafe { written_by(g.batch * g.t_q * d, fill_out) };
        (out, weights)
    }

    /// The gradients with respect to Q, K and V, into `out` laid out as the inputs are: one
    /// packed (B, T, 3D), or [dQ | dK | dV] for separate inputs (`bases`: where each starts).
    /// `out` must be zeros: dK and dV are accumulated over query blocks. `d_learned`: the
    /// gradient of a learned score bias (H, T_q, T_k), if the forward had one; `relative`:
    /// Shaw's embeddings, and where their gradient goes ([keys | values]).
    #[allow(clippy::too_many_arguments)]
    fn backward<T: Real>(
        &self,
        g: &Geometry,
        (q, k, v): (&[T], &[T], &[T]),
        weights: &[T],
        grad: &[T],
        out: &mut [T],
        bases: [usize; 3],
        (d_learned, relative): ExtraGrads<'_, T>,
    ) {
        // Each pair's score gradient, (B, H, T_q, T_k), summed over the batch at the end (in
        // batch order, so the sum does not depend on the threads); each pair's gradient of
        // Shaw's tables likewise, summed over the pairs in order.
        let pairs = g.batch * g.n_head;
        let mut per_pair_bias = d_learned.as_ref().map(|_| vec![T::of(0.0); pairs * g.t_q * g.t_k]);
        let bias_rows = per_pair_bias.as_deref_mut().map(|all| MatMut::rows(all, 0, g.t_k));
        let (relative, d_tables) = relative.map_or((None, None), |(r, d)| (Some(r), Some(d)));
        let table_len = relative.as_ref().map_or(0, |r| 2 * r.buckets() * g.head_dim);
        let mut per_pair_tables = vec![T::of(0.0); pairs * table_len];
        let tables = relative.map(|r| (r, MatMut::rows(&mut per_pair_tables, 0, g.head_dim)));
        self.backward_pairs(g, (q, k, v), weights, grad, out, bases, (bias_rows, tables));
        if let Some(d_tables) = d_tables {
            d_tables.par_iter_mut().enumerate().for_each(|(e, d)| {
                *d = (0..pairs).fold(T::of(0.0), |sum, p| sum + per_pair_tables[p * table_len + e]);
            });
        }
        if let (Some(d_learned), Some(all)) = (d_learned, per_pair_bias) {
            let per_head = g.t_q * g.t_k;
            d_learned.par_iter_mut().enumerate().for_each(|(at, d)| {
                let (h, e) = (at / per_head, at % per_head);
                *d = (0..g.batch).fold(T::of(0.0), |sum, b| sum + all[(b * g.n_head + h) * per_head + e]);
            });
        }
    }

    /// `backward`'s work over the (batch, head) pairs; `bias_rows`: where each pair's score
    /// gradient goes (pair p's at p T_q T_k), when a learned bias needs it; `relative`: Shaw's
    /// embeddings and each pair's buffer for their gradient (pair p's at p 2 buckets head_dim:
    /// keys, then values).
    #[allow(clippy::too_many_arguments)]
    fn backward_pairs<T: Real>(
        &self,
        g: &Geometry,
        (q, k, v): (&[T], &[T], &[T]),
        weights: &[T],
        grad: &[T],
        out: &mut [T],
        bases: [usize; 3],
        (bias_rows, relative): PairExtraGrads<'_, T>,
    ) {
        let d = g.width();
        let dst = MatMut::rows(out, 0, 0);
        let per_pair = g.t_q * g.t_k;
        // In parallel over (batch, key/value head): the query heads of one group accumulate
        // into the same dK and dV columns, so they take turns.
        let pairs = |kv_pair: usize| kv_pair * g.group..(kv_pair + 1) * g.group;
        (0..g.batch * g.n_head / g.group).into_par_iter().flat_map_iter(pairs).for_each_init(
            || (Vec::new(), vec![T::of(0.0); per_pair]),
            |(scratch, dscores), pair| {
                let at = g.offsets(pair);
                let w = &weights[pair * per_pair..(pair + 1) * per_pair];
                let w_dropped = self.dropped(pair, w, scratch);
                // SAFETY: as in `forward`, each pair writes only its own head's columns of its
                // own batch rows of dQ, dK and dV; `dscores` is this task's own.
                unsafe {
                    let dv = MatMut { row_stride: g.kv_row, ..dst.at(bases[2] + at.v) };
                    let v_t = MatRef::transposed(v, at.v, g.kv_row);
                    for (first, rows, keys) in self.query_blocks(g) {
                        let grad_rows = MatRef::rows(grad, at.out + first * d, d);
                        let w_t = MatRef::transposed(w_dropped, first * g.t_k, g.t_k);
                        product((keys, g.head_dim, rows), dv, true, w_t, grad_rows);
                        let ds = MatMut::rows(dscores, first * g.t_k, g.t_k);
                        product((rows, keys, g.head_dim), ds, false, grad_rows, v_t);
                    }
                }
                if let Some((relative, tables)) = &relative {
                    let n = relative.buckets() * g.head_dim;
                    // SAFETY: pair `pair` alone writes its buffer (keys, then values).
                    unsafe {
                        relative.value_backward(&g.view(&at), w_dropped, grad, dscores, tables.at(pair * 2 * n + n))
                    };
                }
                self.softmax_backward(g, pair, w, dscores, bias_rows);
                // SAFETY: as above.
                unsafe {
                    let dq = MatMut { row_stride: g.q_row, ..dst.at(bases[0] + at.q) };
                    let dk = MatMut { row_stride: g.kv_row, ..dst.at(bases[1] + at.k) };
                    let k_rows = MatRef::rows(k, at.k, g.kv_row);
                    for (first, rows, keys) in self.query_blocks(g) {
                        let ds = MatRef::rows(dscores, first * g.t_k, g.t_k);
                        product((rows, g.head_dim, keys), dq.at(first * g.q_row), false, ds, k_rows);
                        let ds_t = MatRef::transposed(dscores, first * g.t_k, g.t_k);
                        let q_rows = MatRef::rows(q, at.q + first * g.q_row, g.q_row);
                        product((keys, g.head_dim, rows), dk, true, ds_t, q_rows);
                    }
                    if let Some((relative, tables)) = &relative {
                        let n = relative.buckets() * g.head_dim;
                        relative.key_backward(&g.view(&at), dscores, q, dq, tables.at(pair * 2 * n));
                    }
                }
            },
        );
    }

    /// One pair's weight gradient `dscores` (T_q, T_k) taken back through dropout and the
    /// softmax to the raw scores' (in place); with `bias_rows`, the learned bias's share too.
    fn softmax_backward<T: Real>(
        &self,
        g: &Geometry,
        pair: usize,
        w: &[T],
        dscores: &mut [T],
        bias_rows: Option<MatMut<T>>,
    ) {
        let (scale, per_pair) = (T::of(self.scale), g.t_q * g.t_k);
        // Through dropout, then softmax: dS = scale * P * (dP - sum_j dP P), over the
        // keys each query sees (the rest of `dscores` is stale and gets 0).
        for (i, (g_row, w_row)) in dscores.chunks_exact_mut(g.t_k).zip(w.chunks_exact(g.t_k)).enumerate() {
            let visible = self.visible(g, i);
            let (seen, hidden) = g_row.split_at_mut(visible);
            if let Some(mask) = &self.dropout {
                let mask = &mask[pair * per_pair + i * g.t_k..][..visible];
                seen.iter_mut().zip(mask).for_each(|(x, &m)| *x *= T::of(m as f64));
            }
            let dot = lane_dot(seen, &w_row[..visible]);
            match bias_rows {
                // The bias's gradient is the score gradient before the scale.
                Some(rows) => {
                    // SAFETY: pair `pair` alone writes its rows of the per-pair buffer.
                    let row = unsafe { rows.at((pair * g.t_q + i) * g.t_k).slice_mut(visible) };
                    for ((x, &p), ds) in seen.iter_mut().zip(w_row).zip(row) {
                        *ds = p * (*x - dot);
                        *x = scale * *ds;
                    }
                }
                None => seen.iter_mut().zip(w_row).for_each(|(x, &p)| *x = scale * p * (*x - dot)),
            }
            hidden.iter_mut().for_each(|x| *x = T::of(0.0));
        }
    }

    fn saved_weights(&self) -> Result<std::sync::MutexGuard<'_, Option<CpuStorage>>> {
        self.weights.lock().map_err(|_| candle_core::Error::Msg("attention weights lock poisoned".into()))
    }

    fn save_weights(&self, weights: CpuStorage) -> Result<()> {
        *self.saved_weights()? = Some(weights);
        Ok(())
    }

    /// The packed gradient for `inputs` (Q, K, V, or the one packed tensor three times).
    fn gradient(&self, inputs: [&Tensor; 3], packed: bool, grad: &Tensor) -> Result<Tensor> {
        let grad = grad.contiguous()?;
        let saved = self.saved_weights()?;
        let Some(weights) = saved.as_ref() else { candle_core::bail!("attention backward without a forward pass") };
        let (q_storage, q_layout) = inputs[0].storage_and_layout();
        let (k_storage, k_layout) = inputs[1].storage_and_layout();
        let (v_storage, v_layout) = inputs[2].storage_and_layout();
        let (grad_storage, grad_layout) = grad.storage_and_layout();
        let (Storage::Cpu(sq), Storage::Cpu(sk), Storage::Cpu(sv), Storage::Cpu(sg)) =
            (&*q_storage, &*k_storage, &*v_storage, &*grad_storage)
        else {
            candle_core::bail!("fused attention runs on the CPU only")
        };
        let g = if packed { self.packed_geometry(q_layout)? } else { self.geometry(q_layout, k_layout, v_layout)? };
        let (q_len, kv_len) = (inputs[0].elem_count(), inputs[1].elem_count());
        let (len, bases) = if packed { (q_len, [0; 3]) } else { (q_len + 2 * kv_len, [0, q_len, q_len + kv_len]) };
        Ok(dispatch!(sq, "taper-attention", |T| {
            let (q, k, v) =
                (contiguous::<T>(sq, q_layout)?, contiguous::<T>(sk, k_layout)?, contiguous::<T>(sv, v_layout)?);
            let mut out = vec![T::of(0.0); len];
            self.backward::<T>(
                &g,
                (q, k, v),
                weights.as_slice::<T>()?,
                contiguous::<T>(sg, grad_layout)?,
                &mut out,
                bases,
                (None, None),
            );
            Tensor::from_vec(out, len, &Device::Cpu)?
        }))
    }
}

impl CustomOp1 for AttentionOp {
    fn name(&self) -> &'static str {
        "taper-attention-packed"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.packed_geometry(l)?;
        dispatch!(s, "taper-attention-packed", |T| {
            let qkv = contiguous::<T>(s, l)?;
            let (out, weights) = self.forward::<T>(&g, (qkv, qkv, qkv), (None, None));
            self.save_weights(T::to_cpu_storage_owned(weights))?;
            Ok((T::to_cpu_storage_owned(out), Shape::from((g.batch, g.t_q, g.width()))))
        })
    }
    fn bwd(&self, qkv: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(self.gradient([qkv, qkv, qkv], true, grad)?.reshape(qkv.shape())?))
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
        dispatch!(s1, "taper-attention", |T| {
            let (out, weights) =
                self.forward::<T>(&g, (contiguous(s1, l1)?, contiguous(s2, l2)?, contiguous(s3, l3)?), (None, None));
            self.save_weights(T::to_cpu_storage_owned(weights))?;
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
        let packed = self.gradient([q, k, v], false, grad)?;
        let (q_len, kv_len) = (q.elem_count(), k.elem_count());
        let dq = packed.narrow(0, 0, q_len)?.reshape(q.shape())?;
        let dk = packed.narrow(0, q_len, kv_len)?.reshape(k.shape())?;
        let dv = packed.narrow(0, q_len + kv_len, kv_len)?.reshape(v.shape())?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

/// The op for `n_head` query heads over `n_kv_head` key/value heads, queries `width` wide.
fn op(
    (n_head, n_kv_head): (usize, usize),
    width: usize,
    mask: AttentionMask,
    dropout: Option<Vec<f32>>,
) -> AttentionOp {
    let head_dim = width / n_head.max(1);
    let scale = 1.0 / (head_dim as f64).sqrt();
    AttentionOp { n_head, n_kv_head, scale, mask, dropout, weights: Mutex::new(None) }
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
    let op = op((n_head, n_head), q.dim(2)?, mask, dropout);
    q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}

/// The same for self-attention with Q, K and V packed side by side in one (B, T, D + 2 D_kv)
/// tensor, as one projection with the three weight matrices stacked produces them: `n_head`
/// query heads over `n_kv_head` key/value heads (grouped-query attention when fewer).
pub fn attention_packed(
    qkv: &Tensor,
    (n_head, n_kv_head): (usize, usize),
    mask: AttentionMask,
    dropout: Option<Vec<f32>>,
) -> Result<Tensor> {
    let width = qkv.dim(2)? * n_head / (n_head + 2 * n_kv_head).max(1);
    let op = op((n_head, n_kv_head), width, mask, dropout);
    qkv.contiguous()?.apply_op1(op)
}

/// Rotary positions for the queries and keys of a self-attention node (GPT-NeoX layout: the
/// two halves of each head rotate together): cos and sin, (T, head_dim / 2) row-major, for the
/// input's positions.
pub struct Rotation {
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
}

impl Rotation {
    /// Rotates the queries and keys of packed (B, T, D + 2 D_kv) rows in place by each row's position;
    /// `inverse`: by the opposite angle (the transpose: the backward pass).
    fn rotate<T: Real>(&self, qkv: &mut [T], g: &Geometry, inverse: bool) -> Result<()> {
        let half = g.head_dim / 2;
        if self.cos.len() != g.t_q * half || self.sin.len() != g.t_q * half {
            candle_core::bail!("attention: the rotary tables do not fit {} positions of {half} pairs", g.t_q);
        }
        qkv.par_chunks_mut(g.q_row).enumerate().for_each(|(row, values)| {
            let at = (row % g.t_q) * half;
            let (cos, sin) = (&self.cos[at..at + half], &self.sin[at..at + half]);
            for head in values[..g.width() + g.kv_width()].chunks_exact_mut(g.head_dim) {
                let (x1, x2) = head.split_at_mut(half);
                for (((a, b), &c), &s) in x1.iter_mut().zip(x2.iter_mut()).zip(cos).zip(sin) {
                    let (c, s) = (T::of(c as f64), if inverse { -T::of(s as f64) } else { T::of(s as f64) });
                    let (x, y) = (*a, *b);
                    *a = x * c - y * s;
                    *b = y * c + x * s;
                }
            }
        });
        Ok(())
    }
}

/// QK-norm in the self-attention node: every query head and every key head normalised by a
/// norm over head_dim (RMSNorm, or LayerNorm when not `rms`; one gain, and bias, for the
/// queries and one for the keys), after the projection and before the rotation.
#[derive(Debug, Clone, Copy)]
pub struct QkNorm {
    pub rms: bool,
    pub eps: f64,
}

impl QkNorm {
    fn norm(&self) -> SublayerNorm {
        SublayerNorm { pre_norm: true, rms: self.rms, eps: self.eps, alpha: 1.0, sandwich: false, probe: None }
    }

    /// The query and key columns of packed rows: (first column, width).
    fn columns(g: &Geometry) -> [(usize, usize); 2] {
        [(0, g.width()), (g.width(), g.kv_width())]
    }

    /// Normalises the query and key heads of packed (B, T, D + 2 D_kv) rows in place, with
    /// `params` = [query norm | key norm]; returns both before the norm, for the backward.
    fn forward<T: Real>(&self, qkv: &mut [T], g: &Geometry, params: &[T]) -> [Vec<T>; 2] {
        let len = self.norm().len(g.head_dim);
        let [q, k] = Self::columns(g);
        [(0, q), (1, k)].map(|(i, (col, width))| {
            let before = gather(qkv, g.q_row, col, width);
            let after = self.norm().forward(&before, &params[i * len..(i + 1) * len], g.head_dim);
            scatter(qkv, g.q_row, col, width, &after);
            before
        })
    }

    /// The backward: `d_qkv`'s query and key columns taken back through the norms (inputs
    /// `before`), their parameters' gradients into `d_params`.
    fn backward<T: Real>(&self, d_qkv: &mut [T], g: &Geometry, before: [&[T]; 2], params: &[T], d_params: &mut [T]) {
        let len = self.norm().len(g.head_dim);
        for (i, ((col, width), before)) in Self::columns(g).into_iter().zip(before).enumerate() {
            let dy = gather(d_qkv, g.q_row, col, width);
            let mut dx = vec![T::of(0.0); dy.len()];
            let (p, dp) = (&params[i * len..(i + 1) * len], &mut d_params[i * len..(i + 1) * len]);
            self.norm().backward(before, p, &dy, None, &mut dx, dp);
            scatter(d_qkv, g.q_row, col, width, &dx);
        }
    }
}

/// Columns col..col + width of every row (rows of `row_len`), side by side.
fn gather<T: Copy>(rows: &[T], row_len: usize, col: usize, width: usize) -> Vec<T> {
    rows.chunks_exact(row_len).flat_map(|row| row[col..col + width].iter().copied()).collect()
}

/// Writes `values` (rows of `width`) into columns col..col + width of every row.
fn scatter<T: Copy>(rows: &mut [T], row_len: usize, col: usize, width: usize, values: &[T]) {
    for (row, values) in rows.chunks_exact_mut(row_len).zip(values.chunks_exact(width)) {
        row[col..col + width].copy_from_slice(values);
    }
}

/// The self-attention node's shape: (query heads, key/value heads), whether the Q/K/V and the
/// output products have biases, the rotation (rotary positions), QK-norm, and Shaw's clip
/// distance (relative key and value tables at the end of the second parameters), if any.
pub struct SelfAttentionShape {
    pub heads: (usize, usize),
    pub bias: (bool, bool),
    pub rotation: Option<Rotation>,
    pub qk_norm: Option<QkNorm>,
    pub shaw_clip: Option<usize>,
}

/// What the self-attention branch's forward keeps: the packed Q/K/V (as the attention saw
/// them), the attention output, and with QK-norm the queries and keys before it.
struct SavedActivations {
    qkv: CpuStorage,
    context: CpuStorage,
    before_qk_norm: Option<[CpuStorage; 2]>,
}

/// The self-attention branch of a fused sub-layer (`sublayer.rs`): the packed Q/K/V projection,
/// QK-norm and rotary positions (if any), attention, and the output projection, with the
/// parameters as [W_qkv | b_qkv | QK-norm's] and [W_o | b_o | learned score bias] (each without
/// its bias when that product has none; the score bias (H, T, T) when the scores take one,
/// e.g. T5's).
struct SelfAttentionBranch {
    core: AttentionOp,
    /// Whether the Q/K/V product and the output product have biases.
    bias: (bool, bool),
    /// Values of the learned score bias near the end of the second parameters (0: none).
    learned_len: usize,
    /// Shaw's clip distance: the relative key and value tables end the second parameters.
    shaw_clip: Option<usize>,
    qk_norm: Option<QkNorm>,
    rotation: Option<Rotation>,
    /// The softmax weights stay in `core`.
    saved: Mutex<Option<SavedActivations>>,
}

impl SelfAttentionBranch {
    fn saved(&self) -> Result<std::sync::MutexGuard<'_, Option<SavedActivations>>> {
        self.saved.lock().map_err(|_| candle_core::Error::Msg("self-attention lock poisoned".into()))
    }

    /// Width of the packed Q/K/V for model width `d`: D + 2 D_kv.
    fn packed_width(&self, d: usize) -> usize {
        d + 2 * d * self.core.n_kv_head / self.core.n_head.max(1)
    }

    /// The geometry of the packed Q/K/V for input of `shape` (B, T, D).
    fn geometry(&self, shape: &Shape) -> Result<Geometry> {
        let (batch, t, d) = shape.dims3()?;
        self.core.packed_geometry(&Layout::contiguous((batch, t, self.packed_width(d))))
    }

    /// Values of Shaw's two tables at the end of the second parameters (0: none).
    fn shaw_len(&self, d: usize) -> usize {
        self.shaw_clip.map_or(0, |clip| 2 * (2 * clip + 1) * (d / self.core.n_head.max(1)))
    }

    /// Shaw's tables (keys, then values) from the tail of the second parameters.
    fn relative<'a, T>(&self, tables: &'a [T]) -> Option<Relative<'a, T>> {
        let (keys, values) = tables.split_at(tables.len() / 2);
        self.shaw_clip.map(|clip| Relative { keys, values, clip })
    }

    /// Values of QK-norm's parameters at the end of the first parameters (0: none).
    fn qk_len(&self, d: usize) -> usize {
        self.qk_norm.map_or(0, |qk| 2 * qk.norm().len(d / self.core.n_head.max(1)))
    }
}

impl Branch for SelfAttentionBranch {
    const NAME: &'static str = "taper-self-attention";

    fn parameter_lens(&self, d: usize) -> (usize, usize) {
        let ((b1, b2), packed) = ((self.bias.0 as usize, self.bias.1 as usize), self.packed_width(d));
        (packed * d + b1 * packed + self.qk_len(d), d * d + b2 * d + self.learned_len + self.shaw_len(d))
    }

    fn forward<T: Real>(&self, input: &[T], shape: &Shape, (p1, p2): (&[T], &[T]), keep: bool) -> Result<Vec<T>> {
        let g = self.geometry(shape)?;
        let (d, packed) = (g.width(), g.q_row);
        let rows = input.len() / d.max(1);
        let ((w_qkv, rest1), (w_o, rest2)) = (p1.split_at(packed * d), p2.split_at(d * d));
        let (rest2, tables) = rest2.split_at(rest2.len() - self.shaw_len(d));
        let ((b_qkv, qk_params), (b_o, learned)) =
            (rest1.split_at(rest1.len() - self.qk_len(d)), rest2.split_at(rest2.len() - self.learned_len));
        let (b_qkv, b_o) = (self.bias.0.then_some(b_qkv), self.bias.1.then_some(b_o));
        let mut qkv = linear_forward(input, w_qkv, b_qkv, (rows, d, packed));
        let before_qk_norm = self.qk_norm.map(|qk| qk.forward(&mut qkv, &g, qk_params));
        if let Some(rotation) = &self.rotation {
            rotation.rotate(&mut qkv, &g, false)?;
        }
        let learned = (self.learned_len > 0).then_some(learned);
        let (context, weights) = self.core.forward::<T>(&g, (&qkv, &qkv, &qkv), (learned, self.relative(tables)));
        let out = linear_forward(&context, w_o, b_o, (rows, d, d));
        if keep {
            self.core.save_weights(T::to_cpu_storage_owned(weights))?;
            let (qkv, context) = (T::to_cpu_storage_owned(qkv), T::to_cpu_storage_owned(context));
            let before_qk_norm = before_qk_norm.map(|qk| qk.map(T::to_cpu_storage_owned));
            *self.saved()? = Some(SavedActivations { qkv, context, before_qk_norm });
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
        let g = self.geometry(shape)?;
        let (d, packed) = (g.width(), g.q_row);
        let rows = input.len() / d.max(1);
        let saved = self.saved()?;
        let weights = self.core.saved_weights()?;
        let (Some(saved), Some(weights)) = (saved.as_ref(), weights.as_ref()) else {
            candle_core::bail!("self-attention backward without a forward pass")
        };
        let (qkv, context) = (saved.qkv.as_slice::<T>()?, saved.context.as_slice::<T>()?);
        let weights = weights.as_slice::<T>()?;
        let (dw_qkv, rest) = d_p1.split_at_mut(packed * d);
        let at = rest.len() - self.qk_len(d);
        let (db_qkv, d_qk) = rest.split_at_mut(at);
        let (dw_o, rest) = d_p2.split_at_mut(d * d);
        let at = rest.len() - self.shaw_len(d);
        let (rest, d_tables) = rest.split_at_mut(at);
        let at = rest.len() - self.learned_len;
        let (db_o, d_learned) = rest.split_at_mut(at);
        let relative = self.relative(&p2[p2.len() - d_tables.len()..]).map(|r| (r, d_tables));
        let (db_qkv, db_o) = (self.bias.0.then(|| as_uninit(db_qkv)), self.bias.1.then(|| as_uninit(db_o)));
        let d_learned = (self.learned_len > 0).then_some(d_learned);
        let fill = |d_context: &mut _| {
            backward_into(context, &p2[..d * d], d_out, (rows, d, d), d_context, as_uninit(dw_o), db_o)
        };
        // SAFETY: backward_into writes every element of d(context).
        let d_context = unsafe { written_by(rows * d, fill) };
        // The attention backward accumulates over query blocks: it needs zeros.
        let mut d_qkv = vec![T::of(0.0); rows * packed];
        self.core.backward::<T>(&g, (qkv, qkv, qkv), weights, &d_context, &mut d_qkv, [0; 3], (d_learned, relative));
        if let Some(rotation) = &self.rotation {
            rotation.rotate(&mut d_qkv, &g, true)?;
        }
        if let (Some(qk), Some([q, k])) = (self.qk_norm, &saved.before_qk_norm) {
            let qk_params = &p1[p1.len() - d_qk.len()..];
            qk.backward(&mut d_qkv, &g, [q.as_slice::<T>()?, k.as_slice::<T>()?], qk_params, d_qk);
        }
        let fill = |d_input: &mut _| {
            let w_qkv = &p1[..packed * d];
            backward_into(input, w_qkv, &d_qkv, (rows, d, packed), d_input, as_uninit(dw_qkv), db_qkv)
        };
        // SAFETY: as above.
        Ok(unsafe { written_by(rows * d, fill) })
    }
}

/// The self-attention sub-layer: pre-LN x + Attn(LN(x)), post-LN LN(x + Attn(x)), with Attn the
/// packed Q/K/V projection, `rotation` of the queries and keys (rotary positions), `n_head`-head
/// attention over `n_kv_head` key/value heads under `mask` (and `dropout` multipliers on its
/// weights) and the output projection, as one node. `first` = [ln.weight | ln.bias | W_q | W_k
/// | W_v | b_q | b_k | b_v] and `second` = [W_o | b_o | score bias] (each without its biases
/// when `bias` says so, the score bias (H, T, T) only when `learned_bias`; `first` ending in
/// [q_norm | k_norm] with `qk_norm`; see `pack_parameters`); `residual_dropout`: multipliers on
/// Attn's output.
pub fn self_attention_sublayer(
    x: &Tensor,
    (first, second): (&Tensor, &Tensor),
    SelfAttentionShape { heads: (n_head, n_kv_head), bias, rotation, qk_norm, shaw_clip }: SelfAttentionShape,
    (mask, dropout, learned_bias): (AttentionMask, Option<Vec<f32>>, bool),
    norm: SublayerNorm,
    residual_dropout: Option<Vec<f32>>,
) -> Result<Tensor> {
    let core = op((n_head, n_kv_head), x.dim(D::Minus1)?, mask, dropout);
    let t = x.dim(1)?;
    let learned_len = if learned_bias { n_head * t * t } else { 0 };
    let saved = Mutex::new(None);
    let branch = SelfAttentionBranch { core, bias, learned_len, shaw_clip, qk_norm, rotation, saved };
    apply(x, (first, second), branch, norm, residual_dropout)
}
