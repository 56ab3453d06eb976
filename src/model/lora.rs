//! LoRA (Hu et al. 2021): a frozen linear layer W adapted by a low-rank product,
//! `y = x W^T + (alpha / rank) * dropout(x) A^T B^T`, A (rank, in) drawn as PyTorch's Linear
//! default (as PEFT), B (out, rank) zero, so training starts from the pretrained model. The
//! `[lora]` section with its documented defaults, the adapter of one layer, and the merge that
//! folds adapters into their weights (`taper export`).

use std::collections::HashMap;

use anyhow::{bail, Result};
use candle_core::Tensor;
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

/// The linear layers of a block an adapter may target, by taper's names.
pub const TARGETS: [&str; 7] = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "gate", "fc2"];

/// `[lora]`: adapt a pretrained model (`model.init_from`) by training low-rank adapters alone
/// (and a classifier's fresh head); every other parameter stays frozen.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    /// The adapters' rank r.
    #[serde(default = "default_rank")]
    pub rank: usize,
    /// The update is scaled by alpha / rank (PEFT's `lora_alpha`).
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Dropout on the adapters' input while training (the adapted layers then run composed).
    #[serde(default)]
    pub dropout: f64,
    /// Which layers of every block (self- and cross-attention alike) get an adapter: names of
    /// `TARGETS`, or "attention" (q, k, v, out) and "ffn" (fc1, gate, fc2). The paper's W_q, W_v
    /// by default.
    #[serde(default = "default_targets")]
    pub targets: Vec<String>,
}

fn default_rank() -> usize {
    8
}
fn default_alpha() -> f64 {
    16.0
}
fn default_targets() -> Vec<String> {
    vec!["q_proj".into(), "v_proj".into()]
}

impl LoraConfig {
    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            bail!("`lora.rank` must be at least 1");
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("`lora.dropout` must be in [0, 1), got {}", self.dropout);
        }
        if self.alpha.is_nan() || self.alpha <= 0.0 {
            bail!("`lora.alpha` must be positive, got {}", self.alpha);
        }
        if self.targets.is_empty() {
            bail!(
                "`lora.targets` is empty: name the layers to adapt ({}, or \"attention\", \"ffn\")",
                TARGETS.join(", ")
            );
        }
        self.spec().map(|_| ())
    }

    /// What the layers need to know, resolved (targets as a set).
    pub fn spec(&self) -> Result<LoraSpec> {
        let mut targets = 0u8;
        for name in &self.targets {
            let bits = match name.as_str() {
                "attention" => 0b000_1111,
                "ffn" => 0b111_0000,
                other => match TARGETS.iter().position(|t| *t == other) {
                    Some(i) => 1 << i,
                    None => bail!(
                        "`lora.targets` names `{other}`, not a layer of a block: {}, or \"attention\", \"ffn\"",
                        TARGETS.join(", ")
                    ),
                },
            };
            targets |= bits;
        }
        Ok(LoraSpec { rank: self.rank, scale: self.alpha / self.rank as f64, dropout: self.dropout, targets })
    }
}

/// The adapters a model's layers get: rank, scale alpha / rank, dropout, and the targeted
/// layers (a bit per name of `TARGETS`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoraSpec {
    pub rank: usize,
    pub scale: f64,
    pub dropout: f64,
    targets: u8,
}

impl LoraSpec {
    /// Whether the layer called `name` (one of `TARGETS`) is adapted.
    pub fn targets(&self, name: &str) -> bool {
        TARGETS.iter().position(|t| *t == name).is_some_and(|i| self.targets & (1 << i) != 0)
    }
}

/// Whether a parameter is an adapter's.
pub fn is_adapter(name: &str) -> bool {
    name.ends_with(".lora_a") || name.ends_with(".lora_b")
}

/// What a LoRA run trains: the adapters, and a classifier's fresh head (Hugging Face's
/// `classifier`, as PEFT's `modules_to_save` for sequence and token classification).
pub fn is_trainable(name: &str) -> bool {
    is_adapter(name) || name.starts_with("classifier.")
}

/// One layer's adapter: A (rank, in) and B (out, rank), and how to apply them.
#[derive(Debug, Clone)]
pub struct Adapter {
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
    pub dropout: f64,
}

impl Adapter {
    /// `lora_a` and `lora_b` under `vb` (the adapted layer's own prefix).
    pub fn new(spec: &LoraSpec, fan_in: usize, fan_out: usize, vb: &VarBuilder) -> candle_core::Result<Self> {
        let a = vb.get_with_hints(
            (spec.rank, fan_in),
            "lora_a",
            Init::Kaiming {
                dist: candle_nn::init::NormalOrUniform::Uniform,
                fan: candle_nn::init::FanInOut::FanIn,
                non_linearity: candle_nn::init::NonLinearity::Linear,
            },
        )?;
        let b = vb.get_with_hints((fan_out, spec.rank), "lora_b", Init::Const(0.0))?;
        Ok(Self { a, b, scale: spec.scale, dropout: spec.dropout })
    }

    /// The update scale * B A (out, in) that the adapter adds to its weight.
    pub fn delta(&self) -> candle_core::Result<Tensor> {
        self.b.matmul(&self.a)? * self.scale
    }
}

/// Folds every adapter of a checkpoint's tensors into its weight (`X.weight += scale * X.lora_b
/// X.lora_a`) and removes the adapters: the plain model that computes what the adapted one did.
pub fn merge_adapters(tensors: &mut HashMap<String, Tensor>, spec: &LoraSpec) -> Result<()> {
    let adapted: Vec<String> = tensors.keys().filter_map(|k| k.strip_suffix(".lora_a")).map(String::from).collect();
    for layer in adapted {
        let take = |tensors: &mut HashMap<String, Tensor>, suffix: &str| {
            tensors.remove(&format!("{layer}.{suffix}")).ok_or_else(|| anyhow::anyhow!("`{layer}.{suffix}` is missing"))
        };
        let (a, b) = (take(tensors, "lora_a")?, take(tensors, "lora_b")?);
        let weight = tensors
            .get(&format!("{layer}.weight"))
            .ok_or_else(|| anyhow::anyhow!("an adapter `{layer}.lora_a` without its weight `{layer}.weight`"))?;
        let adapter = Adapter { a, b, scale: spec.scale, dropout: 0.0 };
        let merged = (weight + adapter.delta()?.to_dtype(weight.dtype())?)?;
        tensors.insert(format!("{layer}.weight"), merged);
    }
    Ok(())
}
