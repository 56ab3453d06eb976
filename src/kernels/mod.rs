//! The kernel seam: the one module that decides which implementation runs each op of the
//! model. A forward's [`Mode`] carries the [`Backend`] chosen once when the forward starts
//! (taper's CPU kernels in `cpu/` for CPU f32/f64, candle's composed ops in `composed.rs` for
//! every other device and dtype); the layers hold only their tensors and call the functions
//! here. A new backend (a device's own kernels) is a variant of `Backend` and one arm in each
//! function below.
//!
//! A whole sub-layer (Add & Norm included) runs as one CPU node where it can: the
//! `*_sublayer` functions return None when the caller's composed recipe should run instead.

pub mod composed;
pub mod cpu;
mod fused_forward;
mod mask;
mod mode;

use candle_core::{DType, Device, Result, Tensor};
use serde::{Deserialize, Serialize};

/// Attention with Shaw et al.'s relative key/value embeddings, composed: what every backend
/// runs outside the CPU self-attention sub-layer node (which has them), e.g. cached decoding.
pub use composed::relative_attention;
pub use mask::{alibi_bias, causal_mask, padding_mask, Mask, ScoreBias, MASKED};
pub use mode::{Backend, Mode};

/// `model.kernels`: which implementations a run may use.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Kernels {
    /// taper's CPU kernels (fused sub-layers, linear, attention, LayerNorm, GELU, bias add,
    /// cross-entropy) where they apply (CPU, f32/f64); candle's composed ops elsewhere.
    Fused,
    /// candle's composed ops everywhere (what CUDA and Metal always use).
    Composed,
}

/// The FFN's activation (`model.activation`): elementwise, or gated (two input projections,
/// act(x W_gate) * (x W_1), Shazeer 2020).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Activation {
    Relu,
    /// The exact GELU, x * Phi(x) (BERT, the original GPT code in PyTorch's default).
    Gelu,
    /// GPT-2's tanh approximation of GELU.
    GeluTanh,
    /// x * sigmoid(x).
    Silu,
    /// Gated with SiLU (Llama).
    Swiglu,
    /// Gated with the exact GELU.
    Geglu,
    /// Gated with the tanh GELU (T5 v1.1's gated-gelu).
    GegluTanh,
    /// Gated with ReLU.
    Reglu,
}

impl Activation {
    /// The activation of the gate, for a gated FFN.
    pub fn gate(self) -> Option<Activation> {
        match self {
            Activation::Swiglu => Some(Activation::Silu),
            Activation::Geglu => Some(Activation::Gelu),
            Activation::GegluTanh => Some(Activation::GeluTanh),
            Activation::Reglu => Some(Activation::Relu),
            _ => None,
        }
    }
    /// The elementwise function applied: the gate's for a gated FFN.
    pub fn elementwise(self) -> Activation {
        self.gate().unwrap_or(self)
    }
    /// The CPU kernels' form, where they have one.
    fn cpu(self) -> Option<cpu::Act> {
        match self {
            Activation::Gelu => Some(cpu::Act::Gelu),
            Activation::GeluTanh => Some(cpu::Act::GeluTanh),
            Activation::Relu => Some(cpu::Act::Relu),
            Activation::Silu => Some(cpu::Act::Silu),
            _ => None,
        }
    }
}

/// Inverted dropout. On the CPU the mask comes from taper's seeded RNG, so runs repeat exactly;
/// on accelerators it is drawn on the device, to keep the step on-device, from the device RNG
/// that the stepper reseeds from (seed, step, micro-batch) before each micro-batch.
pub fn dropout(x: &Tensor, p: f64, mode: &mut Mode) -> Result<Tensor> {
    if !mode.train || p == 0.0 {
        return Ok(x.clone());
    }
    let mask = match x.device() {
        Device::Cpu => {
            Tensor::from_vec(mode.dropout_mask(x.elem_count(), p), x.shape(), x.device())?.to_dtype(x.dtype())?
        }
        device => {
            let uniform = Tensor::rand(0f32, 1f32, x.shape(), device)?;
            (uniform.ge(p)?.to_dtype(DType::F32)? / (1.0 - p))?.to_dtype(x.dtype())?
        }
    };
    x.mul(&mask)
}

/// y = x W^T + b over the last dimension, for input of any rank.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, mode: &Mode) -> Result<Tensor> {
    match mode.backend() {
        Backend::Cpu => cpu::linear(x, weight, bias),
        Backend::Composed => composed::linear(x, weight, bias),
    }
}

/// act(x W^T + b).
pub fn linear_act(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, act: Activation, mode: &Mode) -> Result<Tensor> {
    match (mode.backend(), bias, act.elementwise()) {
        // One node for the product, the bias and GELU.
        (Backend::Cpu, Some(bias), Activation::Gelu) => cpu::linear_gelu(x, weight, bias),
        _ => activate(&linear(x, weight, bias, mode)?, act, mode),
    }
}

/// act(x), elementwise.
pub fn activate(x: &Tensor, act: Activation, mode: &Mode) -> Result<Tensor> {
    match (mode.backend(), act.elementwise()) {
        (Backend::Cpu, Activation::Gelu) => cpu::gelu(x),
        (Backend::Cpu, Activation::Relu) => x.relu(),
        // candle's SiLU and tanh-GELU have their backward; on the CPU they are one node each.
        (Backend::Cpu | Backend::Composed, act) => composed::activate(x, act),
    }
}

/// LayerNorm over the last dimension.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64, mode: &Mode) -> Result<Tensor> {
    match mode.backend() {
        Backend::Cpu => cpu::layer_norm(x, weight, bias, eps),
        Backend::Composed => composed::layer_norm(x, weight, bias, eps),
    }
}

/// RMSNorm over the last dimension (gain only).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64, mode: &Mode) -> Result<Tensor> {
    match mode.backend() {
        Backend::Cpu => cpu::rms_norm(x, weight, eps),
        Backend::Composed => composed::rms_norm(x, weight, eps),
    }
}

/// `x + b`, with `b`'s shape a suffix of `x`'s (positions over the batch). The CPU form's
/// backward sums `b`'s gradient in one pass instead of candle's generic strided reduction.
pub fn add_broadcast(x: &Tensor, b: &Tensor, mode: &Mode) -> Result<Tensor> {
    match mode.backend() {
        Backend::Cpu => cpu::add_row_vector(x, b),
        Backend::Composed => x.broadcast_add(b),
    }
}

/// Sum over rows of -log p(target). `logits` (N, V), `targets` (N,) u32.
pub fn cross_entropy_sum(logits: &Tensor, targets: &Tensor, mode: &Mode) -> Result<Tensor> {
    match mode.backend() {
        Backend::Cpu => cpu::cross_entropy_sum(logits, targets),
        Backend::Composed => composed::cross_entropy_sum(logits, targets),
    }
}

/// softmax(Q K^T / sqrt(head_dim) + mask) V over `n_head` heads with dropout `p` on the
/// weights: q (B, T_q, D), k and v (B, T_k, D), heads side by side in D; out (B, T_q, D).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    n_head: usize,
    mask: &Mask,
    p: f64,
    mode: &mut Mode,
) -> Result<Tensor> {
    match mode.backend() {
        // A learned position bias needs its gradient, which the CPU node does not compute.
        Backend::Cpu if !mask.has_learned_bias() => {
            let (b, t_q, _) = q.dims3()?;
            let dropout = mode.dropout_multipliers(b * n_head * t_q * k.dim(1)?, p);
            cpu::attention(q, k, v, n_head, mask.cpu_form()?.clone(), dropout)
        }
        Backend::Cpu | Backend::Composed => composed::attention(q, k, v, n_head, mask, p, mode),
    }
}

/// The projections of one attention layer: query, key, value, output (weight, optional bias).
pub struct Projections<'a> {
    pub weights: [&'a Tensor; 4],
    pub biases: [Option<&'a Tensor>; 4],
}

/// Self-attention of x (B, T, D) before the output projection: on the CPU one product for the
/// three projections (weights stacked: a 3x wider GEMM and one gradient for x instead of three).
pub fn self_attention(
    x: &Tensor,
    proj: &Projections,
    n_head: usize,
    mask: &Mask,
    p: f64,
    mode: &mut Mode,
) -> Result<Tensor> {
    let [wq, wk, wv, _] = proj.weights;
    let [bq, bk, bv, _] = proj.biases;
    match mode.backend() {
        Backend::Cpu if !mask.has_learned_bias() => {
            let weight = Tensor::cat(&[wq, wk, wv], 0)?;
            let bias = match (bq, bk, bv) {
                (Some(q), Some(k), Some(v)) => Some(Tensor::cat(&[q, k, v], 0)?),
                _ => None,
            };
            let qkv = cpu::linear(x, &weight, bias.as_ref())?; // (B, T, 3D)
            let (b, t, _) = x.dims3()?;
            let dropout = mode.dropout_multipliers(b * n_head * t * t, p);
            cpu::attention_packed(&qkv, (n_head, n_head), mask.cpu_form()?.clone(), dropout)
        }
        Backend::Cpu | Backend::Composed => {
            let (q, k, v) = (linear(x, wq, bq, mode)?, linear(x, wk, bk, mode)?, linear(x, wv, bv, mode)?);
            composed::attention(&q, &k, &v, n_head, mask, p, mode)
        }
    }
}

/// A sub-layer's norm: its parameters, and whether it runs before the branch (pre-LN).
#[derive(Clone, Copy)]
pub struct SublayerNorm<'a> {
    pub weight: &'a Tensor,
    /// LayerNorm's bias (None for RMSNorm).
    pub bias: Option<&'a Tensor>,
    /// RMSNorm (true) or LayerNorm.
    pub rms: bool,
    pub eps: f64,
    pub pre: bool,
    /// The skip connection's multiplier: DeepNorm's alpha (post-LN), else 1.
    pub alpha: f64,
    /// The sandwich's second norm, on the branch's output (weight, bias): same kind and eps.
    pub branch_out: Option<(&'a Tensor, Option<&'a Tensor>)>,
}

impl SublayerNorm<'_> {
    /// [weight, bias] (LayerNorm) or [weight] (RMSNorm).
    fn parameters(&self) -> Vec<&Tensor> {
        std::iter::once(self.weight).chain(self.bias).collect()
    }

    /// The node's packed parameters: [norm | `first`] and [`second` | the sandwich's norm].
    fn pack(&self, first: &[&Tensor], second: &[&Tensor]) -> Result<(Tensor, Tensor)> {
        let mut second = second.to_vec();
        if let Some((weight, bias)) = self.branch_out {
            second.extend(std::iter::once(weight).chain(bias));
        }
        cpu::pack_parameters(&self.parameters(), first, &second)
    }

    /// Runs a sub-layer `node` with LayerNorm probing as the composed residual does it: a
    /// pre-LN norm's input (x) is recorded before the node, a post-LN one's (the sum the node
    /// leaves in its probe) or the sandwich's second one's (the branch's output) after.
    fn probed(
        &self,
        x: &Tensor,
        mode: &mut Mode,
        node: impl FnOnce(cpu::SublayerNorm) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let sandwich = self.branch_out.is_some();
        let probe = (mode.is_probing() && (!self.pre || sandwich)).then(cpu::SumProbe::default);
        if self.pre {
            mode.record_norm_input(x)?;
        }
        let (pre_norm, rms, eps, alpha) = (self.pre, self.rms, self.eps, self.alpha);
        let out = node(cpu::SublayerNorm { pre_norm, rms, eps, alpha, sandwich, probe: probe.clone() })?;
        if let Some(sum) = probe.and_then(|p| p.lock().ok()?.take()) {
            mode.record_norm_input(&sum)?;
        }
        Ok(out)
    }
}

/// Whether a whole sub-layer may run as one CPU node in this forward.
fn sublayer_node(mode: &Mode) -> bool {
    mode.backend() == Backend::Cpu
}

/// The flat parameter list [weights..., biases...] of a fused branch (biases only if all are there).
fn branch_parameters<'a>(weights: &[&'a Tensor], biases: &[Option<&'a Tensor>]) -> Result<(Vec<&'a Tensor>, bool)> {
    let present: Vec<&Tensor> = biases.iter().flatten().copied().collect();
    let with_bias = match present.len() {
        0 => false,
        n if n == biases.len() => true,
        _ => candle_core::bail!("a fused sub-layer needs every bias or none"),
    };
    Ok((weights.iter().copied().chain(present).collect(), with_bias))
}

/// The FFN sub-layer, pre-LN x + FFN(LN(x)) or post-LN LN(x + FFN(x)) with FFN(h) =
/// act(h W1^T + b1) W2^T + b2, or gated (`gate` given: act(h Wg^T + bg) * (h W1^T + b1)),
/// and dropout `p` on FFN's output, as one CPU node; None: the caller composes it.
#[allow(clippy::too_many_arguments)]
pub fn ffn_sublayer(
    x: &Tensor,
    norm: SublayerNorm,
    gate: Option<(&Tensor, Option<&Tensor>)>,
    (w1, b1): (&Tensor, Option<&Tensor>),
    (w2, b2): (&Tensor, Option<&Tensor>),
    act: Activation,
    p: f64,
    mode: &mut Mode,
) -> Result<Option<Tensor>> {
    if !sublayer_node(mode) || gate.is_some() != act.gate().is_some() {
        return Ok(None);
    }
    // Gated: [Wg; W1] stacked, one product for both input projections.
    let (first, bias1) = match gate {
        Some((wg, bg)) => branch_parameters(&[wg, w1], &[bg, b1])?,
        None => branch_parameters(&[w1], &[b1])?,
    };
    let (second, bias2) = branch_parameters(&[w2], &[b2])?;
    let Some(cpu_act) = act.elementwise().cpu() else { return Ok(None) };
    if bias1 != bias2 {
        return Ok(None);
    }
    let (first, second) = norm.pack(&first, &second)?;
    let dropout = mode.dropout_multipliers(x.elem_count(), p);
    let branch = cpu::FfnShape { hidden: w1.dim(0)?, act: cpu_act, bias: bias1, gated: gate.is_some() };
    Ok(Some(norm.probed(x, mode, |norm| cpu::ffn_sublayer(x, (&first, &second), branch, norm, dropout))?))
}

/// Rotary positions for the queries and keys of one input: cos and sin, (T, head_dim / 2), at
/// the input's positions.
pub struct Rotary {
    pub cos: Tensor,
    pub sin: Tensor,
}

impl Rotary {
    fn cpu(&self) -> Result<cpu::Rotation> {
        let values = crate::host::cpu_vec1;
        Ok(cpu::Rotation { cos: values(&self.cos)?, sin: values(&self.sin)? })
    }
}

/// What a self-attention layer brings to its sub-layer node besides its projections:
/// (query heads, key/value heads), rotary positions, QK-norm's two norms, Shaw's tables.
pub struct SelfAttentionHeads<'a> {
    pub heads: (usize, usize),
    pub rotary: Option<&'a Rotary>,
    pub qk_norm: Option<[SublayerNorm<'a>; 2]>,
    pub relative: Option<composed::RelativeTables<'a>>,
}

/// The self-attention sub-layer (pre- or post-LN, `n_head` query heads over `n_kv_head`
/// key/value heads (`proj`'s K and V weights are that much narrower), rotary positions,
/// QK-norm and Shaw's relative positions if given, dropout `p_attn` on the weights and `p_out`
/// on the output) as one CPU node; None: the caller composes it.
pub fn self_attention_sublayer(
    x: &Tensor,
    norm: SublayerNorm,
    proj: &Projections,
    SelfAttentionHeads { heads: (n_head, n_kv_head), rotary, qk_norm, relative }: SelfAttentionHeads,
    mask: &Mask,
    (p_attn, p_out): (f64, f64),
    mode: &mut Mode,
) -> Result<Option<Tensor>> {
    if !sublayer_node(mode) {
        return Ok(None);
    }
    let [wq, wk, wv, wo] = proj.weights;
    let [bq, bk, bv, bo] = proj.biases;
    let (mut first, bias1) = branch_parameters(&[wq, wk, wv], &[bq, bk, bv])?;
    // QK-norm's gains (and biases) end the first parameters: [query norm | key norm].
    let qk_norm = match &qk_norm {
        Some([q, k]) if q.rms == k.rms && q.eps == k.eps => {
            first.extend(q.parameters().into_iter().chain(k.parameters()));
            Some(cpu::QkNorm { rms: q.rms, eps: q.eps })
        }
        Some(_) => candle_core::bail!("QK-norm's query and key norms differ in kind or epsilon"),
        None => None,
    };
    let (mut second, bias2) = branch_parameters(&[wo], &[bo])?;
    let (b, t, _) = x.dims3()?;
    // A learned score bias (T5's) rides at the end of the second parameters: the node returns
    // its gradient with theirs.
    let learned = mask.learned_bias().map(|bias| bias.to_dtype(x.dtype())).transpose()?;
    if let Some(bias) = &learned {
        if bias.dims() != [1, n_head, t, t] {
            candle_core::bail!(
                "self-attention: a score bias of shape {:?} for {n_head} heads over {t} positions",
                bias.dims()
            );
        }
        second.push(bias);
    }
    // Shaw's tables end them: [keys | values], (2 clip + 1, head_dim) each.
    let tables = relative
        .as_ref()
        .map(|r| Ok::<_, candle_core::Error>([r.keys.to_dtype(x.dtype())?, r.values.to_dtype(x.dtype())?]));
    let tables = tables.transpose()?;
    second.extend(tables.iter().flatten());
    // Drawn in the composed path's order: the weights' mask, then the output's.
    let dropout = mode.dropout_multipliers(b * n_head * t * t, p_attn);
    let residual_dropout = mode.dropout_multipliers(x.elem_count(), p_out);
    let (first, second) = norm.pack(&first, &second)?;
    let attention = (mask.cpu_form()?.clone(), dropout, learned.is_some());
    let rotation = rotary.map(Rotary::cpu).transpose()?;
    let shaw_clip = relative.as_ref().map(|r| r.clip);
    let heads =
        cpu::SelfAttentionShape { heads: (n_head, n_kv_head), bias: (bias1, bias2), rotation, qk_norm, shaw_clip };
    let node = |norm| cpu::self_attention_sublayer(x, (&first, &second), heads, attention, norm, residual_dropout);
    Ok(Some(norm.probed(x, mode, node)?))
}
