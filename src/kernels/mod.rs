//! The kernel seam: one interface, [`Backend`], with a method per op the model and the
//! optimizer run (linear, activations, norms, softmax, attention, the residual sub-layer, the
//! loss, the gradient norm, the AdamW update). Each method's default is candle's composed ops
//! (`composed.rs`, the residual recipe in `residual.rs`, `adamw.rs`): what runs on any device in
//! any dtype, and the reference every faster form is tested against. A backend overrides only
//! what it makes faster:
//!
//! - [`CpuBackend`] (`cpu_backend.rs`, over the kernels in `cpu/`): CPU f32/f64; a whole
//!   residual sub-layer as one node with a written backward, the attention, linear, norms,
//!   GELU, the loss, the optimizer's in-place passes;
//! - [`Accelerated`] (`accelerated.rs`, over `fused_forward.rs`): CUDA and Metal; candle-nn's
//!   fused softmax, LayerNorm, RMSNorm and rotary kernels with a written backward;
//! - [`Composed`]: the defaults, nothing overridden.
//!
//! [`backend_for`] is the one place that picks a backend. A forward's [`Mode`] carries the one
//! it picked and every layer calls `mode.backend().op(...)`; a new backend is a type that
//! implements [`Backend`] and one arm in [`backend_for`].

mod accelerated;
pub mod adamw;
pub mod composed;
pub mod cpu;
mod cpu_backend;
mod fused_forward;
mod mask;
mod mode;
pub mod residual;

use candle_core::{DType, Device, Result, Tensor};
use serde::{Deserialize, Serialize};

pub use accelerated::Accelerated;
pub use adamw::{AdamParam, AdamStep};
pub use composed::RelativeTables;
pub use cpu_backend::CpuBackend;
pub use mask::{alibi_bias, causal_mask, padding_mask, Mask, ScoreBias, MASKED};
pub use mode::Mode;
pub use residual::{AttentionSpec, Branch, BranchSpec, FfnSpec, NormForward, NormRef, Product, Residual, Rotary};

/// `model.kernels`: which implementations a run may use.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Kernels {
    /// The fastest backend for the device: taper's CPU kernels (CPU, f32/f64), candle-nn's
    /// fused forwards (CUDA, Metal); candle's composed ops elsewhere (bf16 and f16 on the CPU).
    Fused,
    /// candle's composed ops everywhere: the reference.
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
}

/// The ops a backend runs. Every method has the composed form as its default; a backend
/// overrides what it makes faster and inherits the rest (burn's `ModuleOps`). Methods that are
/// built from others (attention from softmax, the residual from norms and the branch) call
/// them through `self`, so an override of the smaller op reaches the larger one.
pub trait Backend: Sync {
    /// The backend's name, for messages and tests.
    fn name(&self) -> &'static str;

    /// y = x W^T + b over the last dimension, for input of any rank.
    fn linear(&self, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        composed::linear(x, weight, bias)
    }

    /// act(x W^T + b).
    fn linear_act(&self, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, act: Activation) -> Result<Tensor> {
        self.activate(&self.linear(x, weight, bias)?, act)
    }

    /// act(x), elementwise (a gated activation's gate function).
    fn activate(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        composed::activate(x, act)
    }

    /// LayerNorm over the last dimension.
    fn layer_norm(&self, x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
        composed::layer_norm(x, weight, bias, eps)
    }

    /// RMSNorm over the last dimension (gain only).
    fn rms_norm(&self, x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
        composed::rms_norm(x, weight, eps)
    }

    /// `x + b`, with `b`'s shape a suffix of `x`'s (positions over the batch).
    fn add_broadcast(&self, x: &Tensor, b: &Tensor) -> Result<Tensor> {
        x.broadcast_add(b)
    }

    /// Softmax over the last dimension, computed in f32.
    fn softmax_last_dim(&self, x: &Tensor) -> Result<Tensor> {
        composed::softmax_last_dim(x)
    }

    /// log-softmax over the last dimension, in f32.
    fn log_softmax_last_dim(&self, x: &Tensor) -> Result<Tensor> {
        composed::log_softmax_last_dim(x)
    }

    /// Sum over rows of -log p(target). `logits` (N, V), `targets` (N,) u32.
    fn cross_entropy_sum(&self, logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
        composed::cross_entropy_sum(self, logits, targets)
    }

    /// Rotary embedding of x (B, T, H, head_dim), the two halves of each head rotating
    /// together, by cos and sin (T, head_dim / 2).
    fn rotate_halves(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        composed::rotate_halves(x, cos, sin)
    }

    /// softmax(Q K^T / sqrt(head_dim) + mask) V over `n_head` heads with dropout `p` on the
    /// weights: q (B, T_q, D), k and v (B, T_k, D), heads side by side in D; out (B, T_q, D).
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        n_head: usize,
        mask: &Mask,
        p: f64,
        mode: &mut Mode,
    ) -> Result<Tensor> {
        composed::attention(self, q, k, v, n_head, mask, p, mode)
    }

    /// Attention with Shaw et al.'s relative key and value embeddings; shapes as `attention`.
    #[allow(clippy::too_many_arguments)]
    fn relative_attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        n_head: usize,
        mask: &Mask,
        tables: &RelativeTables,
        p: f64,
        mode: &mut Mode,
    ) -> Result<Tensor> {
        composed::relative_attention(self, q, k, v, n_head, mask, tables, p, mode)
    }

    /// One residual sub-layer around `branch`: y = post(alpha x + dropout(out(f(pre(x))))),
    /// the norms where `residual` places them ([`Residual`]).
    fn residual(&self, x: &Tensor, residual: &Residual, branch: &mut dyn Branch, mode: &mut Mode) -> Result<Tensor> {
        residual::compose(self, x, residual, branch, mode)
    }

    /// The global L2 norm of all gradients, as a scalar tensor on their device.
    fn global_norm(&self, grads: &[Option<Tensor>]) -> Result<Tensor> {
        composed::global_norm(grads)
    }

    /// One AdamW step over `params` ([`adamw`]).
    fn adamw_step(&self, step: &AdamStep, params: &mut [AdamParam]) -> Result<()> {
        adamw::step(step, params)
    }
}

/// candle's composed ops, every default kept: any device, any dtype; the reference.
pub struct Composed;

impl Backend for Composed {
    fn name(&self) -> &'static str {
        "composed"
    }
}

/// The backend that runs `kernels` on `device` computing in `dtype`: the one place a backend is
/// picked. With `fused`: taper's CPU kernels on the CPU in f32/f64, candle-nn's fused forwards
/// on CUDA and Metal, the composed ops otherwise (the CPU in bf16/f16); with `composed`, the
/// composed ops everywhere.
pub fn backend_for(kernels: Kernels, device: &Device, dtype: DType) -> &'static dyn Backend {
    match kernels {
        Kernels::Fused if device.is_cpu() && matches!(dtype, DType::F32 | DType::F64) => &CpuBackend,
        Kernels::Fused if !device.is_cpu() => &Accelerated,
        Kernels::Fused | Kernels::Composed => &Composed,
    }
}

/// The backend of a step's work on the parameters (gradient norm, optimizer update): the
/// parameters are f32 master weights whatever the activations' dtype.
pub fn parameter_backend(kernels: Kernels, device: &Device) -> &'static dyn Backend {
    backend_for(kernels, device, DType::F32)
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
