//! candle-nn's fused forward kernels (softmax, LayerNorm, RMSNorm, rotary embedding: one kernel
//! each on CUDA and Metal) given the backward they lack. candle-nn 0.11's ops have no `bwd`, so
//! a layer behind them would never learn; here the fused result passes through a node
//! (`WithBackward`) whose backward is the op's derivative written with tensor ops, checked
//! against the composed form on the CPU (`tests` below). No CUDA or Metal code of taper's own:
//! the node's forward is a copy of candle's output on whatever device it lives.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, D};

/// Which op's derivative a `WithBackward` node applies.
#[derive(Clone)]
enum Derivative {
    /// dx = y (dy - sum(dy y)).
    Softmax,
    /// LayerNorm's normalisation x̂ (weight and bias are applied after the node, as ops).
    LayerNorm { eps: f64 },
    /// RMSNorm's normalisation x r (the weight is applied after the node).
    RmsNorm { eps: f64 },
    /// Rotary embedding by the angles of (cos, sin): its transpose rotates back, by -angle.
    Rope { cos: Tensor, sin: Tensor },
}

/// A node over (x, y = op(x) from a fused kernel): its value is y, its gradient with respect
/// to x the op's.
struct WithBackward(Derivative);

impl CustomOp2 for WithBackward {
    fn name(&self) -> &'static str {
        "taper-fused-forward"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, y: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((y.try_clone(l)?, l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        y: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        Ok((y.try_clone(l)?, l.shape().clone()))
    }

    #[cfg(feature = "metal")]
    fn metal_fwd(
        &self,
        _: &candle_core::MetalStorage,
        _: &Layout,
        y: &candle_core::MetalStorage,
        l: &Layout,
    ) -> Result<(candle_core::MetalStorage, Shape)> {
        Ok((y.try_clone(l)?, l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _: &Tensor, y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = match &self.0 {
            Derivative::Softmax => {
                let sum = (dy * y)?.sum_keepdim(D::Minus1)?;
                y.broadcast_mul(&dy.broadcast_sub(&sum)?)?
            }
            Derivative::LayerNorm { eps } => {
                // x̂ = (x - mean) r, r = 1 / sqrt(var + eps): dx = r (dy - mean(dy) - x̂ mean(dy x̂)).
                let centered = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
                let r = (centered.sqr()?.mean_keepdim(D::Minus1)? + *eps)?.sqrt()?.recip()?;
                let normed = centered.broadcast_mul(&r)?;
                let projection = normed.broadcast_mul(&(dy * &normed)?.mean_keepdim(D::Minus1)?)?;
                dy.broadcast_sub(&dy.mean_keepdim(D::Minus1)?)?.sub(&projection)?.broadcast_mul(&r)?
            }
            Derivative::RmsNorm { eps } => {
                // r = 1 / sqrt(mean(x^2) + eps): dx = r dy - x r^3 mean(dy x).
                let r = (x.sqr()?.mean_keepdim(D::Minus1)? + *eps)?.sqrt()?.recip()?;
                let correction = x.broadcast_mul(&r.powf(3.0)?)?.broadcast_mul(&(dy * x)?.mean_keepdim(D::Minus1)?)?;
                dy.broadcast_mul(&r)?.sub(&correction)?
            }
            Derivative::Rope { cos, sin } => candle_nn::rotary_emb::rope_thd(&dy.contiguous()?, cos, &sin.neg()?)?,
        };
        Ok((Some(dx), None))
    }
}

/// Softmax over the last dimension: candle's fused kernel forward, the written backward.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let x = x.contiguous()?;
    let y = candle_nn::ops::softmax_last_dim(&x.detach())?;
    x.apply_op2_arc(&y, std::sync::Arc::new(Box::new(WithBackward(Derivative::Softmax))))
}

/// LayerNorm over the last dimension (f32 or below: candle's kernels have no f64).
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let x = x.contiguous()?;
    // The fused kernel normalises; the weight and the bias are applied as ops, so that they learn.
    let (ones, zeros) = (weight.ones_like()?.detach(), weight.zeros_like()?.detach());
    let normed = candle_nn::ops::layer_norm(&x.detach(), &ones, &zeros, eps as f32)?;
    let normed =
        x.apply_op2_arc(&normed, std::sync::Arc::new(Box::new(WithBackward(Derivative::LayerNorm { eps }))))?;
    normed.broadcast_mul(weight)?.broadcast_add(bias)
}

/// RMSNorm over the last dimension (f32 or below).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let x = x.contiguous()?;
    let normed = candle_nn::ops::rms_norm(&x.detach(), &weight.ones_like()?.detach(), eps as f32)?;
    let normed = x.apply_op2_arc(&normed, std::sync::Arc::new(Box::new(WithBackward(Derivative::RmsNorm { eps }))))?;
    normed.broadcast_mul(weight)
}

/// Rotary embedding of x (B, T, H, head_dim), GPT-NeoX's halves, by cos and sin (T, head_dim / 2).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (x, cos, sin) = (x.contiguous()?, cos.contiguous()?, sin.contiguous()?);
    let y = candle_nn::rotary_emb::rope_thd(&x.detach(), &cos, &sin)?;
    let derivative = Derivative::Rope { cos, sin };
    x.apply_op2_arc(&y, std::sync::Arc::new(Box::new(WithBackward(derivative))))
}

/// Whether candle has these fused kernels for `dtype` on every device (no f64 norms).
pub fn applies(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F16 | DType::BF16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The value and the input gradient (of a fixed random projection of the output) of `f`.
    fn value_and_gradient(f: impl Fn(&Tensor) -> Result<Tensor>, x: &Tensor, w: &Tensor) -> (Tensor, Tensor) {
        let x = Var::from_tensor(x).unwrap();
        let y = f(x.as_tensor()).unwrap();
        let loss = (&y * w).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        (y, grads.get(x.as_tensor()).unwrap().clone())
    }

    /// (3, 5, 16) as (B, T, H = 2, head_dim = 8), rotated by fixed angles, fused or composed.
    fn rope_of(x: &Tensor, fused: bool) -> Result<Tensor> {
        let angles = Tensor::arange(0f32, 20.0, &Device::Cpu)?.reshape((5, 4))?.affine(0.37, 0.1)?;
        let (cos, sin) = (angles.cos()?, angles.sin()?);
        let x4 = x.reshape((3, 5, 2, 8))?;
        let y = match fused {
            true => rope(&x4, &cos, &sin)?,
            false => super::super::composed::rotate_halves(&x4, &cos, &sin)?,
        };
        y.reshape((3, 5, 16))
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    /// Each fused-forward op against the composed form (`kernels::composed`), in f32 on the
    /// CPU: values and input gradients within 1e-5, and the norms' weight and bias gradients.
    #[test]
    fn fused_forwards_with_written_backwards_equal_the_composed_ops() {
        let d = &Device::Cpu;
        let x = (Tensor::randn(0f32, 1.0, (3, 5, 16), d).unwrap() * 3.0).unwrap();
        let w = Tensor::randn(0f32, 1.0, (3, 5, 16), d).unwrap();
        let weight = Var::from_tensor(&(Tensor::randn(0f32, 0.2, 16, d).unwrap() + 1.0).unwrap()).unwrap();
        let bias = Var::from_tensor(&Tensor::randn(0f32, 0.2, 16, d).unwrap()).unwrap();
        type Op<'a> =
            (&'a str, Box<dyn Fn(&Tensor) -> Result<Tensor> + 'a>, Box<dyn Fn(&Tensor) -> Result<Tensor> + 'a>);
        let (wt, bt) = (weight.as_tensor(), bias.as_tensor());
        let ops: [Op; 4] = [
            ("softmax", Box::new(softmax_last_dim), Box::new(super::super::composed::softmax_last_dim)),
            (
                "layer_norm",
                Box::new(|x| layer_norm(x, wt, bt, 1e-5)),
                Box::new(|x| super::super::composed::layer_norm(x, wt, bt, 1e-5)),
            ),
            (
                "rms_norm",
                Box::new(|x| rms_norm(x, wt, 1e-6)),
                Box::new(|x| super::super::composed::rms_norm(x, wt, 1e-6)),
            ),
            ("rope", Box::new(|x| rope_of(x, true)), Box::new(|x| rope_of(x, false))),
        ];
        for (name, fused, composed) in ops {
            let (y1, g1) = value_and_gradient(&fused, &x, &w);
            let (y2, g2) = value_and_gradient(&composed, &x, &w);
            assert!(max_diff(&y1, &y2) < 1e-5, "{name}: values differ by {}", max_diff(&y1, &y2));
            assert!(max_diff(&g1, &g2) < 1e-5, "{name}: input gradients differ by {}", max_diff(&g1, &g2));
            assert!(max_diff(&g1, &g1.zeros_like().unwrap()) > 1e-3, "{name}: a zero gradient");
        }
        // The norms' weight and bias learn through the ops applied after the node.
        let grads = |f: &dyn Fn(&Tensor) -> Result<Tensor>| {
            let store = (f(&x).unwrap() * &w).unwrap().sum_all().unwrap().backward().unwrap();
            (store.get(wt).unwrap().clone(), store.get(bt).unwrap().clone())
        };
        let (fw, fb) = grads(&|x| layer_norm(x, wt, bt, 1e-5));
        let (cw, cb) = grads(&|x| super::super::composed::layer_norm(x, wt, bt, 1e-5));
        assert!(max_diff(&fw, &cw) < 1e-4 && max_diff(&fb, &cb) < 1e-4, "LayerNorm's weight and bias gradients");
    }
}
