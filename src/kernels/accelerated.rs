//! The backend of CUDA and Metal: candle-nn's fused forward kernels (softmax, LayerNorm, RMSNorm,
//! rotary embedding: one kernel each) behind nodes with taper's written backward
//! (`fused_forward.rs`); every other op keeps its composed default. The norms and the softmax
//! compute in f32 whatever the activations' dtype, as their composed forms do.

use candle_core::{DType, Result, Tensor};

use super::{fused_forward, Backend};

/// candle-nn's fused forwards on CUDA and Metal ([`super::backend_for`] picks it there).
pub struct Accelerated;

impl Backend for Accelerated {
    fn name(&self) -> &'static str {
        "accelerated"
    }

    fn layer_norm(&self, x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
        let dtype = x.dtype();
        let (w, b) = (weight.to_dtype(DType::F32)?, bias.to_dtype(DType::F32)?);
        fused_forward::layer_norm(&x.to_dtype(DType::F32)?, &w, &b, eps)?.to_dtype(dtype)
    }

    fn rms_norm(&self, x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
        let dtype = x.dtype();
        fused_forward::rms_norm(&x.to_dtype(DType::F32)?, &weight.to_dtype(DType::F32)?, eps)?.to_dtype(dtype)
    }

    fn softmax_last_dim(&self, x: &Tensor) -> Result<Tensor> {
        fused_forward::softmax_last_dim(&x.to_dtype(DType::F32)?)?.to_dtype(x.dtype())
    }

    fn rotate_halves(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        if !fused_forward::applies(x.dtype()) {
            // candle's rotary kernel has no f64.
            return super::composed::rotate_halves(x, cos, sin);
        }
        fused_forward::rope(x, &cos.to_dtype(x.dtype())?, &sin.to_dtype(x.dtype())?)
    }
}
