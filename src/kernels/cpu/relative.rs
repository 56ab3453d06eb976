//! Shaw et al.'s relative positions inside the CPU attention node (Shaw, Uszkoreit and Vaswani
//! 2018): scores q_i . (k_j + a^K_r) and outputs sum_j w_ij (v_j + a^V_r), r the clipped
//! distance of key j from query i. Each (batch, head) pair does one product against the
//! (2 clip + 1) embeddings and gathers per key, rather than a product per query.

use super::gemm::{product, MatMut, MatRef};
use super::Real;

/// The tables of one layer: (2 clip + 1, head_dim) each, row r for a key r - clip positions
/// from its query (clipped to +-clip).
#[derive(Clone, Copy)]
pub(super) struct Relative<'a, T> {
    pub keys: &'a [T],
    pub values: &'a [T],
    pub clip: usize,
}

/// Where one (batch, head) pair's operands live: its queries (offset, row stride), its output
/// or output gradient rows (offset, row stride), and the numbers of queries, keys and
/// head_dim.
#[derive(Clone, Copy)]
pub(super) struct PairView {
    pub q: (usize, usize),
    pub out: (usize, usize),
    pub t_q: usize,
    pub t_k: usize,
    pub head_dim: usize,
}

impl<T: Real> Relative<'_, T> {
    pub fn buckets(&self) -> usize {
        2 * self.clip + 1
    }

    /// The embedding row of key j for query i (the queries are the last t_q keys).
    fn bucket(&self, p: &PairView, i: usize, j: usize) -> usize {
        let (position, clip) = ((p.t_k - p.t_q + i) as i64, self.clip as i64);
        ((j as i64 - position).clamp(-clip, clip) + clip) as usize
    }

    /// Sums of each query's row of `m` (T_q, T_k) by bucket: (T_q, buckets).
    fn by_bucket(&self, p: &PairView, m: &[T]) -> Vec<T> {
        let n = self.buckets();
        let mut out = vec![T::of(0.0); p.t_q * n];
        for (i, row) in m.chunks_exact(p.t_k).enumerate() {
            row.iter().enumerate().for_each(|(j, &x)| out[i * n + self.bucket(p, i, j)] += x);
        }
        out
    }

    /// Adds `per_bucket` (T_q, buckets) to each (query, key) entry of `m` (T_q, T_k).
    fn spread(&self, p: &PairView, per_bucket: &[T], m: &mut [T]) {
        let n = self.buckets();
        for (i, row) in m.chunks_exact_mut(p.t_k).enumerate() {
            row.iter_mut().enumerate().for_each(|(j, x)| *x += per_bucket[i * n + self.bucket(p, i, j)]);
        }
    }

    /// scores (T_q, T_k, before the scale) += q_i . a^K_r.
    pub fn add_scores(&self, p: &PairView, q: &[T], scores: &mut [T]) {
        let n = self.buckets();
        let mut per_bucket = vec![T::of(0.0); p.t_q * n];
        let (q_rows, keys_t) = (MatRef::rows(q, p.q.0, p.q.1), MatRef::transposed(self.keys, 0, p.head_dim));
        // SAFETY: the pair's queries are (t_q, head_dim) at p.q; the buffer is this call's.
        unsafe { product((p.t_q, n, p.head_dim), MatMut::rows(&mut per_bucket, 0, n), false, q_rows, keys_t) };
        self.spread(p, &per_bucket, scores);
    }

    /// out rows (T_q, head_dim) += sum_j w_ij a^V_r, for the weights after dropout.
    ///
    /// # Safety
    /// `out` must address the pair's output rows (p.out's stride), written by nobody else meanwhile.
    pub unsafe fn add_context(&self, p: &PairView, weights: &[T], out: MatMut<T>) {
        let n = self.buckets();
        let per_bucket = self.by_bucket(p, weights);
        let values = MatRef::rows(self.values, 0, p.head_dim);
        product((p.t_q, p.head_dim, n), out, true, MatRef::rows(&per_bucket, 0, n), values);
    }

    /// The value embeddings' part of the backward: d a^V (buckets, head_dim) = the bucketed
    /// weights' transpose times d(out), and d(weights) += d(out) . a^V_r.
    ///
    /// # Safety
    /// `d_values` must address this pair's own (buckets, head_dim) buffer.
    pub unsafe fn value_backward(
        &self,
        p: &PairView,
        weights: &[T],
        d_out: &[T],
        d_weights: &mut [T],
        d_values: MatMut<T>,
    ) {
        let n = self.buckets();
        let per_bucket = self.by_bucket(p, weights);
        let d_out_rows = MatRef::rows(d_out, p.out.0, p.out.1);
        product((n, p.head_dim, p.t_q), d_values, false, MatRef::transposed(&per_bucket, 0, n), d_out_rows);
        let mut d_bucket = vec![T::of(0.0); p.t_q * n];
        let values_t = MatRef::transposed(self.values, 0, p.head_dim);
        product((p.t_q, n, p.head_dim), MatMut::rows(&mut d_bucket, 0, n), false, d_out_rows, values_t);
        self.spread(p, &d_bucket, d_weights);
    }

    /// The key embeddings' part: from d(scores), the gradient of q . (k + a^K) (the scale
    /// included), dQ += bucketed d(scores) . a^K and d a^K (buckets, head_dim) = its transpose
    /// times Q.
    ///
    /// # Safety
    /// `dq` must address the pair's query gradient rows, `d_keys` this pair's own buffer.
    pub unsafe fn key_backward(&self, p: &PairView, d_scores: &[T], q: &[T], dq: MatMut<T>, d_keys: MatMut<T>) {
        let n = self.buckets();
        let per_bucket = self.by_bucket(p, d_scores);
        product(
            (p.t_q, p.head_dim, n),
            dq,
            true,
            MatRef::rows(&per_bucket, 0, n),
            MatRef::rows(self.keys, 0, p.head_dim),
        );
        let q_rows = MatRef::rows(q, p.q.0, p.q.1);
        product((n, p.head_dim, p.t_q), d_keys, false, MatRef::transposed(&per_bucket, 0, n), q_rows);
    }
}
