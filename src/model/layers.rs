//! The small modules every stack is made of, written with differentiable ops only.
//!
//! candle-nn 0.11's `LayerNorm` (on contiguous input) and `ops::softmax_last_dim` run fused
//! kernels without a backward pass: layers before them silently never learn. Its `Linear`
//! computes a wrong forward on non-contiguous 3-D CPU input. So these are taper's own.

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{Init, VarBuilder};

use super::fused;
use crate::config::{Activation, InitScheme, Kernels};
use crate::rng::Rng;

/// How a model's weights are initialised, from `[model]` init settings.
#[derive(Debug, Clone, Copy)]
pub struct InitPolicy {
    pub scheme: InitScheme,
    pub std: f64,
    /// Multiplier for the output projection of each residual branch.
    pub residual_scale: f64,
}

impl InitPolicy {
    pub fn matrix(&self, fan_in: usize, fan_out: usize, residual_output: bool) -> Init {
        let scale = if residual_output { self.residual_scale } else { 1.0 };
        match self.scheme {
            InitScheme::Normal => Init::Randn { mean: 0.0, stdev: self.std * scale },
            InitScheme::Xavier => {
                let bound = scale * (6.0 / (fan_in + fan_out) as f64).sqrt();
                Init::Uniform { lo: -bound, up: bound }
            }
        }
    }

    pub fn embedding(&self, dim: usize) -> Init {
        match self.scheme {
            InitScheme::Normal => Init::Randn { mean: 0.0, stdev: self.std },
            InitScheme::Xavier => Init::Randn { mean: 0.0, stdev: (dim as f64).powf(-0.5) },
        }
    }
}

/// Per-forward state: training or not, and the dropout RNG.
pub struct Mode {
    pub train: bool,
    rng: Rng,
    /// When set, the RMS of every LayerNorm's input, in forward order (diagnostics).
    probe: Option<Vec<Tensor>>,
}

impl Mode {
    pub fn eval() -> Self {
        Self { train: false, rng: Rng::new(0), probe: None }
    }
    /// Training mode; dropout masks come from `rng`, so a step's masks are a function of it.
    pub fn train(rng: Rng) -> Self {
        Self { train: true, rng, probe: None }
    }
    /// Evaluation mode that records the RMS of each LayerNorm's input.
    pub fn probing() -> Self {
        Self { train: false, rng: Rng::new(0), probe: Some(Vec::new()) }
    }
    /// `len` inverted-dropout multipliers from the run's RNG: 0 with probability `p`, else 1/(1-p).
    pub fn dropout_mask(&mut self, len: usize, p: f64) -> Vec<f32> {
        let keep = 1.0 - p;
        let scale = (1.0 / keep) as f32;
        (0..len).map(|_| if self.rng.uniform() < keep { scale } else { 0.0 }).collect()
    }
    /// Whether LayerNorm inputs are being recorded.
    pub fn is_probing(&self) -> bool {
        self.probe.is_some()
    }
    /// Records `x` as a LayerNorm input, if probing (costs nothing otherwise).
    pub fn record_norm_input(&mut self, x: &Tensor) -> Result<()> {
        if let Some(probe) = &mut self.probe {
            probe.push(x.detach().to_dtype(DType::F32)?.sqr()?.mean_all()?.sqrt()?);
        }
        Ok(())
    }
    /// The recorded RMS values.
    pub fn take_probe(&mut self) -> Result<Vec<f64>> {
        let probe = self.probe.take().unwrap_or_default();
        probe.iter().map(|t| Ok(t.to_scalar::<f32>()? as f64)).collect()
    }
}

/// Inverted dropout. On the CPU the mask comes from taper's seeded RNG, so runs repeat exactly;
/// on accelerators it is drawn on the device (seeded once per run) to keep the step on-device.
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
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    kernels: Kernels,
}

impl Linear {
    pub fn new(
        fan_in: usize,
        fan_out: usize,
        bias: bool,
        init: Init,
        kernels: Kernels,
        vb: VarBuilder,
    ) -> Result<Self> {
        let weight = vb.get_with_hints((fan_out, fan_in), "weight", init)?;
        let bias = if bias { Some(vb.get_with_hints(fan_out, "bias", Init::Const(0.0))?) } else { None };
        Ok(Self { weight, bias, kernels })
    }

    pub fn from_weight(weight: Tensor, bias: Option<Tensor>, kernels: Kernels) -> Self {
        Self { weight, bias, kernels }
    }

    /// Whether this layer's fused CPU kernels take input `x` (else candle's composed ops do).
    pub fn runs_fused(&self, x: &Tensor) -> bool {
        self.kernels == Kernels::Fused && fused::applies(x) && self.weight.dtype() == x.dtype()
    }
}

/// `x + b`, with `b`'s shape a suffix of `x`'s (bias over rows, positions over the batch).
/// The fused form's backward sums `b`'s gradient in one pass instead of candle's generic
/// strided reduction.
pub fn add_broadcast(x: &Tensor, b: &Tensor, kernels: Kernels) -> Result<Tensor> {
    if kernels == Kernels::Fused && fused::applies(x) && b.dtype() == x.dtype() {
        fused::add_row_vector(x, b)
    } else {
        x.broadcast_add(b)
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.runs_fused(x) {
            return fused::linear(x, &self.weight, self.bias.as_ref());
        }
        let dims = x.dims();
        let Some(&fan_in) = dims.last() else { candle_core::bail!("linear layer on a scalar input") };
        let rows = x.elem_count() / fan_in;
        // Flatten to 2-D (contiguous) so the product is one plain GEMM.
        let x2 = x.contiguous()?.reshape((rows, fan_in))?;
        let w = self.weight.to_dtype(x.dtype())?;
        let mut y = matmul(&x2, &w.t()?)?;
        if let Some(b) = &self.bias {
            y = add_broadcast(&y, &b.to_dtype(x.dtype())?, self.kernels)?;
        }
        let mut out_dims = dims.to_vec();
        out_dims.pop();
        out_dims.push(y.dim(1)?);
        y.reshape(out_dims)
    }
}

/// LayerNorm over the last dimension, computed in f32 whatever the activations' dtype.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
    kernels: Kernels,
}

impl LayerNorm {
    pub fn new(dim: usize, eps: f64, kernels: Kernels, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(dim, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(dim, "bias", Init::Const(0.0))?;
        Ok(Self { weight, bias, eps, kernels })
    }
}

impl LayerNorm {
    /// Whether the fused CPU kernel takes input `x` (else candle's composed ops do).
    pub fn runs_fused(&self, x: &Tensor) -> bool {
        self.kernels == Kernels::Fused && fused::applies(x) && self.weight.dtype() == x.dtype()
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.runs_fused(x) {
            return fused::layer_norm(x, &self.weight, &self.bias, self.eps);
        }
        let dtype = x.dtype();
        let x = x.to_dtype(DType::F32)?;
        let mean = x.mean_keepdim(D::Minus1)?;
        let centered = x.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centered.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        normed
            .broadcast_mul(&self.weight.to_dtype(DType::F32)?)?
            .broadcast_add(&self.bias.to_dtype(DType::F32)?)?
            .to_dtype(dtype)
    }
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
pub fn cross_entropy_sum(logits: &Tensor, targets: &Tensor, kernels: Kernels) -> Result<Tensor> {
    if kernels == Kernels::Fused && fused::applies(logits) {
        return fused::cross_entropy_sum(logits, targets);
    }
    let log_probs = log_softmax_last_dim(logits)?;
    log_probs.gather(&targets.unsqueeze(1)?, 1)?.sum_all()?.neg()
}

pub fn activate(x: &Tensor, activation: Activation, kernels: Kernels) -> Result<Tensor> {
    match activation {
        Activation::Relu => x.relu(),
        Activation::Gelu if kernels == Kernels::Fused && fused::applies(x) => fused::gelu(x),
        Activation::Gelu => x.gelu_erf(),
    }
}

/// Token embedding table; also the output head when weights are tied.
#[derive(Debug, Clone)]
pub struct Embedding {
    pub weight: Tensor,
}

impl Embedding {
    pub fn new(count: usize, dim: usize, init: Init, vb: VarBuilder) -> Result<Self> {
        Ok(Self { weight: vb.get_with_hints((count, dim), "weight", init)? })
    }

    /// ids (B, T) u32 -> (B, T, dim) in `dtype`.
    pub fn forward(&self, ids: &Tensor, dtype: DType) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let dim = self.weight.dim(1)?;
        self.weight.to_dtype(dtype)?.index_select(&ids.flatten_all()?, 0)?.reshape((b, t, dim))
    }
}
