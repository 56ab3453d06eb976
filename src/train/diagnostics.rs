//! Per-layer training diagnostics, written to `metrics.jsonl` every `train.diagnostics_every`
//! steps: gradient norm per layer and sublayer (before clipping), update/weight ratio per
//! layer, and the RMS of the residual stream entering each LayerNorm. Nothing here runs on
//! steps without diagnostics.

use std::collections::BTreeMap;

use anyhow::Result;
use candle_core::{DType, Tensor, Var};
use serde_json::{json, Value};

/// The layer a parameter belongs to and its sublayer, for every stack: the path up to a
/// numbered block (`blocks.3`, `encoder.blocks.1`, `decoder.blocks.0`, `bert.encoder.layer.5`)
/// and one segment more (`blocks.3.attn`, `bert.encoder.layer.5.attention`); a parameter
/// outside the blocks is its own layer (`tok_emb`, `ln_f`, `bert.embeddings.word_embeddings`).
pub fn layer_of(name: &str) -> (String, String) {
    let parts: Vec<&str> = name.split('.').collect();
    let block = (1..parts.len())
        .find(|&i| matches!(parts[i - 1], "blocks" | "layer") && parts[i].bytes().all(|c| c.is_ascii_digit()));
    match block {
        Some(i) if i + 1 < parts.len() => (parts[..=i].join("."), parts[..=i + 1].join(".")),
        _ => {
            let module = parts.len().saturating_sub(1).max(1);
            let layer = parts[..module].join(".");
            (layer.clone(), layer)
        }
    }
}

fn sum_squares(t: &Tensor) -> Result<f64> {
    Ok(crate::host::scalar(&t.to_dtype(DType::F32)?.sqr()?.sum_all()?)?)
}

/// L2 norm of the gradient of each layer and each sublayer (of the loss, not the scaled loss
/// the gradients come from when `loss_scale` is given).
pub fn grad_norms(
    names: &[String],
    grads: &[Option<Tensor>],
    loss_scale: Option<&Tensor>,
) -> Result<BTreeMap<String, f64>> {
    let unscale = match loss_scale {
        Some(scale) => 1.0 / crate::host::scalar(scale)?,
        None => 1.0,
    };
    let mut squares: BTreeMap<String, f64> = BTreeMap::new();
    for (name, grad) in names.iter().zip(grads) {
        let Some(grad) = grad else { continue };
        let sq = sum_squares(grad)?;
        let (layer, sublayer) = layer_of(name);
        *squares.entry(layer.clone()).or_default() += sq;
        if sublayer != layer {
            *squares.entry(sublayer).or_default() += sq;
        }
    }
    Ok(squares.into_iter().map(|(k, v)| (k, v.sqrt() * unscale)).collect())
}

/// Copies of the weights, grouped by layer, taken before an update.
pub struct WeightSnapshot {
    layers: Vec<(String, Vec<(Var, Tensor)>)>,
}

impl WeightSnapshot {
    pub fn take(names: &[String], vars: &[Var]) -> Result<Self> {
        let mut layers: BTreeMap<String, Vec<(Var, Tensor)>> = BTreeMap::new();
        for (name, var) in names.iter().zip(vars) {
            layers.entry(layer_of(name).0).or_default().push((var.clone(), var.as_tensor().copy()?));
        }
        Ok(Self { layers: layers.into_iter().collect() })
    }

    /// ||w_after - w_before|| / ||w_before|| per layer.
    pub fn update_ratios(&self) -> Result<BTreeMap<String, f64>> {
        let mut out = BTreeMap::new();
        for (layer, pairs) in &self.layers {
            let (mut delta, mut weight) = (0.0, 0.0);
            for (var, before) in pairs {
                delta += sum_squares(&(var.as_tensor() - before)?)?;
                weight += sum_squares(before)?;
            }
            out.insert(layer.clone(), (delta / weight.max(1e-30)).sqrt());
        }
        Ok(out)
    }
}

/// The metrics record of one diagnostics step: gradient norms and residual RMS measured
/// before the step's update, update ratios after it.
pub fn record(
    step: usize,
    grad_norms: BTreeMap<String, f64>,
    update_ratios: BTreeMap<String, f64>,
    rms: BTreeMap<String, f64>,
) -> Result<Value> {
    Ok(json!({
        "step": step,
        "diagnostics": {"grad_norm": grad_norms, "update_ratio": update_ratios, "residual_rms": rms}
    }))
}
