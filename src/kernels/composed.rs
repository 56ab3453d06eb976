//! candle's composed tensor ops: the defaults of [`Backend`]'s methods, the form every op
//! takes on any device and dtype, and the reference the faster backends are checked against.
//! An op built from smaller ones (attention from softmax) takes the backend it runs for, so
//! that backend's overrides of the smaller ops apply.
//!
//! candle-nn 0.11's `LayerNorm` (on contiguous input) and `ops::softmax_last_dim` run fused
//! kernels without a backward pass: layers before them silently never learn. Its `Linear`
//! computes a wrong forward on non-contiguous 3-D CPU input. So these are written with
//! differentiable ops; the accelerators' backend takes candle's fused forwards with taper's
//! written backward instead (`fused_forward.rs`), the same values and gradients.

use candle_core::{DType, Result, Tensor, D};

use super::mask::Mask;
use super::{dropout, Activation, Backend, Mode};

/// Matrix product. candle's CPU backend has no bf16 GEMM, so there bf16 operands are multiplied
/// in f32 and the result rounded back (as bf16 tensor cores accumulate in f32); accelerators
/// use their native kernel.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.dtype() == DType::BF16 && a.device().is_cpu() {
        return a.to_dtype(DType::F32)?.matmul(&b.to_dtype(DType::F32)?)?.to_dtype(DType::BF16);
    }
    a.matmul(b)
}

/// y = x W^T + b over the last dimension, for input of any rank.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims();
    let Some(&fan_in) = dims.last() else { candle_core::bail!("linear layer on a scalar input") };
    let rows = x.elem_count() / fan_in;
    // Flatten to 2-D (contiguous) so the product is one plain GEMM: (.., F_in) -> (rows, F_in).
    let x2 = x.contiguous()?.reshape((rows, fan_in))?;
    let w = weight.to_dtype(x.dtype())?;
    let mut y = matmul(&x2, &w.t()?)?; // (rows, F_out)
    if let Some(b) = bias {
        y = y.broadcast_add(&b.to_dtype(x.dtype())?)?;
    }
    let mut out_dims = dims.to_vec();
    out_dims.pop();
    out_dims.push(y.dim(1)?);
    y.reshape(out_dims) // (rows, F_out) -> (.., F_out)
}

/// LayerNorm over the last dimension, computed in f32 whatever the activations' dtype.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let mean = x.mean_keepdim(D::Minus1)?;
    let centered = x.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centered.broadcast_div(&(var + eps)?.sqrt()?)?;
    normed.broadcast_mul(&weight.to_dtype(DType::F32)?)?.broadcast_add(&bias.to_dtype(DType::F32)?)?.to_dtype(dtype)
}

/// RMSNorm over the last dimension, computed in f32: x / sqrt(mean(x^2) + eps) * w.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let inverse_rms = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    x.broadcast_mul(&inverse_rms)?.broadcast_mul(&weight.to_dtype(DType::F32)?)?.to_dtype(dtype)
}

/// Rotary embedding of x (B, T, H, head_dim), GPT-NeoX's layout (the two halves of each head
/// rotate together), by cos and sin (T, head_dim / 2): (x1 cos - x2 sin, x2 cos + x1 sin).
pub fn rotate_halves(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (cos, sin) = (cos.to_dtype(x.dtype())?, sin.to_dtype(x.dtype())?);
    let half = x.dim(D::Minus1)? / 2;
    // (T, half) -> (T, 1, half): one rotation per position, shared by the heads.
    let (cos, sin) = (cos.unsqueeze(1)?, sin.unsqueeze(1)?);
    let (x1, x2) = (x.narrow(D::Minus1, 0, half)?, x.narrow(D::Minus1, half, half)?);
    let rotated_1 = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
    let rotated_2 = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
    Tensor::cat(&[&rotated_1, &rotated_2], D::Minus1)
}

/// Softmax over the last dimension, in f32. The max is detached: softmax is invariant to it,
/// so its gradient would be zero anyway.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let max = x.max_keepdim(D::Minus1)?.detach();
    let exp = x.broadcast_sub(&max)?.exp()?;
    exp.broadcast_div(&exp.sum_keepdim(D::Minus1)?)?.to_dtype(dtype)
}

/// log-softmax over the last dimension, in f32.
pub fn log_softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let x = x.to_dtype(DType::F32)?;
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    shifted.broadcast_sub(&shifted.exp()?.sum_keepdim(D::Minus1)?.log()?)
}

/// Sum over rows of -log p(target). `logits` is (N, V), `targets` (N,) u32.
pub fn cross_entropy_sum<B: Backend + ?Sized>(ops: &B, logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let log_probs = ops.log_softmax_last_dim(logits)?;
    log_probs.gather(&targets.unsqueeze(1)?, 1)?.sum_all()?.neg()
}

pub fn activate(x: &Tensor, activation: Activation) -> Result<Tensor> {
    match activation.elementwise() {
        Activation::Relu => x.relu(),
        Activation::Gelu => x.gelu_erf(),
        Activation::GeluTanh => x.gelu(),
        Activation::Silu => x.silu(),
        gated => candle_core::bail!("{gated:?} is a gated FFN, not an elementwise activation"),
    }
}

/// (B, T, H * head_dim) -> (B, H, T, head_dim), contiguous.
fn split_heads(x: &Tensor, n_head: usize) -> Result<Tensor> {
    let (b, t, d) = x.dims3()?;
    x.reshape((b, t, n_head, d / n_head))?.transpose(1, 2)?.contiguous()
}

/// softmax(Q K^T / sqrt(head_dim) + mask) V over `n_head` heads, with dropout `p` on the
/// weights; q (B, T_q, D), k and v (B, T_k, D), heads side by side in D; out (B, T_q, D).
#[allow(clippy::too_many_arguments)]
pub fn attention<B: Backend + ?Sized>(
    ops: &B,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    n_head: usize,
    mask: &Mask,
    p: f64,
    mode: &mut Mode,
) -> Result<Tensor> {
    let (b, t_q, d) = q.dims3()?;
    let (q, k, v) = (split_heads(q, n_head)?, split_heads(k, n_head)?, split_heads(v, n_head)?);
    let scale = 1.0 / ((d / n_head) as f64).sqrt();
    let scores = (matmul(&q, &k.t()?)? * scale)?; // (B, H, T_q, T_k)
    let scores = match mask.additive(t_q, k.dim(2)?, q.device())? {
        Some(bias) => scores.broadcast_add(&bias.to_dtype(q.dtype())?)?,
        None => scores,
    };
    let weights = dropout(&ops.softmax_last_dim(&scores)?, p, mode)?;
    let context = matmul(&weights, &v)?; // (B, H, T_q, head_dim)
    context.transpose(1, 2)?.contiguous()?.reshape((b, t_q, d)) // -> (B, T_q, H, head_dim) -> (B, T_q, D)
}

/// Shaw et al.'s relative position representations for one attention layer: key and value
/// embeddings (2 * clip + 1, head_dim) by clipped distance (key position - query position),
/// shared by the heads.
pub struct RelativeTables<'a> {
    pub keys: &'a Tensor,
    pub values: &'a Tensor,
    pub clip: usize,
}

/// Row of each (query, key) pair's embedding in Shaw's tables, (T_q * T_k) u32: the clipped
/// distance j - i' + clip for query i at position i' = T_k - T_q + i.
pub fn relative_indices(t_q: usize, t_k: usize, clip: usize, device: &candle_core::Device) -> Result<Tensor> {
    let (first, clip) = ((t_k - t_q) as i64, clip as i64);
    let rows: Vec<u32> = (0..t_q as i64)
        .flat_map(|i| (0..t_k as i64).map(move |j| ((j - first - i).clamp(-clip, clip) + clip) as u32))
        .collect();
    Tensor::from_vec(rows, t_q * t_k, device)
}

/// Attention with Shaw's relative positions: scores q_i . (k_j + a^K_ij) / sqrt(head_dim) +
/// mask, output sum_j w_ij (v_j + a^V_ij); shapes as `attention`.
#[allow(clippy::too_many_arguments)]
pub fn relative_attention<B: Backend + ?Sized>(
    ops: &B,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    n_head: usize,
    mask: &Mask,
    tables: &RelativeTables,
    p: f64,
    mode: &mut Mode,
) -> Result<Tensor> {
    let ((b, t_q, d), t_k) = (q.dims3()?, k.dim(1)?);
    let head_dim = d / n_head;
    if t_q > t_k {
        candle_core::bail!("relative attention over {t_q} queries and {t_k} keys: the queries are the last keys");
    }
    let rows = relative_indices(t_q, t_k, tables.clip, q.device())?;
    let embeddings = |table: &Tensor| -> Result<Tensor> {
        table.to_dtype(q.dtype())?.index_select(&rows, 0)?.reshape((t_q, t_k, head_dim))
        // (T_q*T_k, hd) -> (T_q, T_k, hd)
    };
    let (a_k, a_v) = (embeddings(tables.keys)?, embeddings(tables.values)?);
    let (q, k, v) = (split_heads(q, n_head)?, split_heads(k, n_head)?, split_heads(v, n_head)?);
    // (B, H, T_q, X) <-> (T_q, B*H, X): one product per query position against its embeddings.
    let by_query = |x: &Tensor| -> Result<Tensor> {
        let x_dim = x.dim(3)?;
        x.permute((2, 0, 1, 3))?.contiguous()?.reshape((t_q, b * n_head, x_dim))
        // -> (T_q, B*H, X)
    };
    let from_query = |x: Tensor| -> Result<Tensor> {
        let x_dim = x.dim(2)?;
        x.reshape((t_q, b, n_head, x_dim))?.permute((1, 2, 0, 3)) // (T_q, B*H, X) -> (B, H, T_q, X)
    };
    let relative_scores = from_query(matmul(&by_query(&q)?, &a_k.t()?.contiguous()?)?)?; // (B, H, T_q, T_k)
    let scale = 1.0 / (head_dim as f64).sqrt();
    let scores = ((matmul(&q, &k.t()?)? + relative_scores)? * scale)?; // (B, H, T_q, T_k)
    let scores = match mask.additive(t_q, t_k, q.device())? {
        Some(bias) => scores.broadcast_add(&bias.to_dtype(q.dtype())?)?,
        None => scores,
    };
    let weights = dropout(&ops.softmax_last_dim(&scores)?, p, mode)?;
    let relative_context = from_query(matmul(&by_query(&weights)?, &a_v)?)?; // (B, H, T_q, hd)
    let context = (matmul(&weights, &v)? + relative_context)?; // (B, H, T_q, head_dim)
    context.transpose(1, 2)?.contiguous()?.reshape((b, t_q, d)) // -> (B, T_q, H, head_dim) -> (B, T_q, D)
}

/// Global L2 norm of all gradients, as a scalar tensor on their device: each one's sum of
/// squares in f32, added in order.
pub fn global_norm(grads: &[Option<Tensor>]) -> Result<Tensor> {
    let mut total: Option<Tensor> = None;
    for g in grads.iter().flatten() {
        let sq = g.to_dtype(DType::F32)?.sqr()?.sum_all()?;
        total = Some(match total {
            Some(t) => (t + sq)?,
            None => sq,
        });
    }
    match total {
        Some(t) => t.sqrt(),
        None => candle_core::bail!("no gradients to measure"),
    }
}
