//! Model FLOPs utilisation: the FLOPs a trained token costs by PaLM's count (appendix B, as
//! nanoGPT's `estimate_mfu`), and the peak the device could do them at: a table of data-sheet
//! peaks by GPU name, and on the CPU a GEMM probe's peak, measured once per CPU model, thread
//! count and dtype and kept in the cache.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};

use super::task::Task;
use crate::model::config::{Architecture, ModelConfig};
use crate::model::params::ParamStore;

/// What a run needs to turn tokens/s into MFU.
#[derive(Debug, Clone)]
pub struct Mfu {
    /// Model FLOPs per trained token (see [`flops_per_token`]).
    pub flops_per_token: f64,
    /// Peak FLOP/s of the device in the run's dtype.
    pub peak_flops: f64,
    /// Where the peak comes from ("H100 SXM data sheet, bf16 dense", "GEMM probe ...").
    pub peak_source: String,
}

impl Mfu {
    /// The fraction of the peak that `tokens_per_s` uses.
    pub fn of(&self, tokens_per_s: f64) -> f64 {
        tokens_per_s * self.flops_per_token / self.peak_flops
    }
}

/// The MFU terms of `task`'s run over `params` on `device` in each of `ranks` processes (the
/// throughput counts every rank's tokens, so the peak is every rank's device's); `Err(why)`
/// where the device has no known peak (the run then reports tokens/s alone).
pub fn for_run<T: Task>(task: &T, params: &ParamStore, device: &Device, ranks: usize) -> Result<Result<Mfu, String>> {
    let model = &task.config().model;
    let (weights, trained) = product_weights(task, params);
    let flops_per_token = flops_per_token(weights, trained, layers(model), task.context(), model.d_model);
    let cache = crate::data::prepare::cache_root(&task.config().data).with_file_name("cpu-peaks.json");
    Ok(match peak_flops(device, task.config().train.dtype.to_dtype(), &cache)? {
        Some((peak, source)) => Ok(Mfu {
            flops_per_token,
            peak_flops: peak * ranks as f64,
            peak_source: if ranks > 1 { format!("{source}, x {ranks} ranks") } else { source },
        }),
        None => Err(format!(
            "no peak FLOP/s known for {} (src/train/mfu.rs GPU_PEAKS): tokens/s is reported without mfu",
            crate::device::describe(device)
        )),
    })
}

/// The weights a token is multiplied by, all and trained: every parameter but the embedding
/// tables (looked up, not multiplied), the token table counted back where the output head is
/// tied to it (as nanoGPT counts GPT-2's `wte`).
fn product_weights<T: Task>(task: &T, params: &ParamStore) -> (usize, usize) {
    let trainable = params.trainable_vars();
    let ids: Vec<_> = trainable.iter().map(|(_, v)| v.as_tensor().id()).collect();
    let mut all = params.num_elements();
    let mut trained: usize = trainable.iter().map(|(_, v)| v.elem_count()).sum();
    for (i, table) in task.embedding_tables().iter().enumerate() {
        if i == 0 && task.tied_head() {
            continue;
        }
        all = all.saturating_sub(table.elem_count());
        if ids.contains(&table.id()) {
            trained = trained.saturating_sub(table.elem_count());
        }
    }
    (all, trained)
}

/// FLOPs one trained token costs: 2 per weight forward, 2 per weight for the activations'
/// gradients, 2 per *trained* weight for the weights' gradients (6N when every weight trains:
/// PaLM's count), plus 12·L·T·d for the attention scores and their mix over a T-token row,
/// forward and backward. `weights`: those a token is multiplied by (no embedding tables but a
/// tied head's); `layers` counts the encoder's and the decoder's blocks.
pub fn flops_per_token(weights: usize, trained: usize, layers: usize, context: usize, width: usize) -> f64 {
    4.0 * weights as f64 + 2.0 * trained as f64 + 12.0 * (layers * context * width) as f64
}

/// The blocks a token of `model` passes through (both stacks of an encoder-decoder).
pub fn layers(model: &ModelConfig) -> usize {
    match model.arch {
        Architecture::EncoderDecoder => model.n_layer + model.n_decoder_layer.unwrap_or(model.n_layer),
        _ => model.n_layer,
    }
}

/// The peak FLOP/s of `device` in `dtype` and where it comes from; `None` where taper knows no
/// peak (a GPU not in the table, Metal): the run then reports no MFU and says why once. A CPU's
/// peak is probed once per CPU model, thread count and dtype and kept in `cache` (JSON).
pub fn peak_flops(device: &Device, dtype: DType, cache: &Path) -> Result<Option<(f64, String)>> {
    if device.is_cpu() {
        // candle has no CPU bf16 product: taper's bf16 products run in f32 (kernels::composed).
        let product = if dtype == DType::F16 { DType::F16 } else { DType::F32 };
        let threads = candle_core::utils::get_num_threads();
        let key = format!("{} | {threads} threads | {}", cpu_model(), product.as_str());
        let peak = cached_cpu_peak(&key, product, cache)?;
        let source = format!(
            "GEMM probe on this CPU, {}, {threads} threads (kept in {}: delete it to probe again)",
            product.as_str(),
            cache.display()
        );
        return Ok(Some((peak, source)));
    }
    Ok(crate::device::gpu_name(device).and_then(|name| gpu_peak(&name, dtype)))
}

/// Dense data-sheet peaks, TFLOP/s: (name fragment, bf16/f16 tensor cores, f32 without TF32).
/// Earlier fragments win ("H100 PCIe" before "H100"). candle's f32 products do not use TF32.
const GPU_PEAKS: [(&str, f64, f64); 12] = [
    ("H100 PCIe", 756.0, 51.0),
    ("H100 NVL", 835.0, 60.0),
    ("H100", 989.0, 67.0),
    ("H200", 989.0, 67.0),
    ("B200", 2250.0, 80.0),
    ("A100", 312.0, 19.5),
    ("L40S", 362.0, 91.6),
    ("L4", 121.0, 30.3),
    ("A10", 125.0, 31.2),
    ("RTX 4090", 165.2, 82.6),
    ("V100", 125.0, 15.7),
    ("T4", 65.0, 8.1),
];

/// The data-sheet peak of the GPU called `name` in `dtype`.
pub fn gpu_peak(name: &str, dtype: DType) -> Option<(f64, String)> {
    let (fragment, half, single) = GPU_PEAKS.iter().find(|(fragment, _, _)| name.contains(fragment))?;
    let (tflops, kind) = match dtype {
        DType::BF16 | DType::F16 => (*half, "bf16/f16 dense"),
        _ => (*single, "f32"),
    };
    Some((tflops * 1e12, format!("{fragment} data sheet, {kind}, for {name}")))
}

/// The CPU's name as /proc/cpuinfo gives it ("unknown CPU" elsewhere).
fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info.lines().find_map(|l| l.strip_prefix("model name")?.split(':').nth(1).map(str::trim));
    model.unwrap_or("unknown CPU").to_string()
}

/// The peak stored under `key` in `cache`, else a probe's, stored there (one probe a machine:
/// the figure then stays put from run to run; a probe read 195-303 GFLOP/s here, run to run).
/// A cache that cannot be read or written costs only the probe.
fn cached_cpu_peak(key: &str, dtype: DType, cache: &Path) -> Result<f64> {
    let text = std::fs::read_to_string(cache).unwrap_or_default();
    let mut peaks: BTreeMap<String, f64> = serde_json::from_str(&text).unwrap_or_default();
    if let Some(peak) = peaks.get(key).filter(|p| p.is_finite() && **p > 0.0) {
        return Ok(*peak);
    }
    let peak = cpu_peak(dtype)?;
    peaks.insert(key.to_string(), peak);
    if let Ok(json) = serde_json::to_string_pretty(&peaks) {
        let _ = cache.parent().map(std::fs::create_dir_all);
        let _ = crate::fsutil::write_atomic(cache, json.as_bytes());
    }
    Ok(peak)
}

/// The CPU's FLOP/s on a square product in `dtype` (f32 or f16): the best of repeated
/// products over about a quarter of a second after three warm-ups, once per process and dtype:
/// what candle's matmul reaches here, the ceiling taper's steps work to.
fn cpu_peak(dtype: DType) -> Result<f64> {
    static F32: OnceLock<f64> = OnceLock::new();
    static F16: OnceLock<f64> = OnceLock::new();
    let (cell, n) = match dtype {
        DType::F16 => (&F16, 256),
        _ => (&F32, 1024),
    };
    if let Some(peak) = cell.get() {
        return Ok(*peak);
    }
    // (n, n) both: ones, so no subnormals or NaNs slow a pass.
    let a = Tensor::ones((n, n), dtype, &Device::Cpu)?;
    for _ in 0..3 {
        a.matmul(&a)?;
    }
    let (started, mut best) = (Instant::now(), f64::INFINITY);
    for _ in 0..200 {
        let product = Instant::now();
        a.matmul(&a)?;
        best = best.min(product.elapsed().as_secs_f64());
        if started.elapsed().as_secs_f64() > 0.25 {
            break;
        }
    }
    let peak = 2.0 * (n as f64).powi(3) / best.max(1e-9);
    Ok(*cell.get_or_init(|| peak))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_training_is_six_n_plus_attention() {
        // GPT-2 small at context 1024: 6 x 124M + 12 x 12 x 1024 x 768 (nanoGPT's figure).
        let f = flops_per_token(124_439_808, 124_439_808, 12, 1024, 768);
        assert_eq!(f, 6.0 * 124_439_808.0 + 12.0 * 12.0 * 1024.0 * 768.0);
        // Frozen weights skip their gradients' 2 FLOPs each.
        assert_eq!(flops_per_token(100, 10, 1, 4, 2), 400.0 + 20.0 + 96.0);
    }

    #[test]
    fn gpu_names_take_the_most_specific_row() {
        let (pcie, _) = gpu_peak("NVIDIA H100 PCIe", DType::BF16).unwrap();
        let (sxm, source) = gpu_peak("NVIDIA H100 80GB HBM3", DType::BF16).unwrap();
        assert_eq!((pcie, sxm), (756e12, 989e12));
        assert!(source.contains("H100 data sheet"), "{source}");
        assert_eq!(gpu_peak("NVIDIA H200", DType::F32).unwrap().0, 67e12);
        assert_eq!(gpu_peak("NVIDIA L40S", DType::BF16).unwrap().0, 362e12);
        assert!(gpu_peak("Radeon", DType::F32).is_none());
    }

    #[test]
    fn the_cpu_probe_measures_a_positive_finite_peak_once() {
        let first = cpu_peak(DType::F32).unwrap();
        assert!(first.is_finite() && first > 1e8, "{first}");
        assert_eq!(cpu_peak(DType::F32).unwrap(), first);
        // bf16 runs its products in f32 on the CPU: the same probe, stored once; f16 has its own.
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cpu-peaks.json");
        let cpu = peak_flops(&Device::Cpu, DType::BF16, &cache).unwrap().unwrap();
        assert_eq!(cpu.0, first);
        assert!(cpu.1.contains("f32"), "{}", cpu.1);
        let stored: BTreeMap<String, f64> = serde_json::from_str(&std::fs::read_to_string(&cache).unwrap()).unwrap();
        assert_eq!(stored.values().copied().collect::<Vec<_>>(), vec![first]);
        assert!(peak_flops(&Device::Cpu, DType::F16, &cache).unwrap().unwrap().1.contains("f16"));
    }

    #[test]
    fn a_stored_cpu_peak_is_used_as_it_is_and_a_broken_store_costs_only_the_probe() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cpu-peaks.json");
        std::fs::write(&cache, r#"{"a CPU | 2 threads | f32": 123.0e9}"#).unwrap();
        assert_eq!(cached_cpu_peak("a CPU | 2 threads | f32", DType::F32, &cache).unwrap(), 123.0e9);
        std::fs::write(&cache, "not json").unwrap();
        let probed = cached_cpu_peak("a CPU | 2 threads | f32", DType::F32, &cache).unwrap();
        assert_eq!(probed, cpu_peak(DType::F32).unwrap());
        assert!(std::fs::read_to_string(&cache).unwrap().contains("a CPU | 2 threads | f32"));
    }
}
