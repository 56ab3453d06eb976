//! Sampling text from a trained GPT: temperature, top-k, top-p, with or without a KV-cache.

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};

use crate::model::{Gpt, Mode};
use crate::rng::Rng;

#[derive(Debug, Clone)]
pub struct SamplingOptions {
    pub max_new_tokens: usize,
    /// 0 picks the most likely token (greedy).
    pub temperature: f64,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    pub seed: u64,
    pub use_cache: bool,
}

impl Default for SamplingOptions {
    fn default() -> Self {
        Self { max_new_tokens: 200, temperature: 0.8, top_k: Some(200), top_p: None, seed: 1337, use_cache: true }
    }
}

impl SamplingOptions {
    /// Refuses what cannot sample: top-p outside (0, 1], a temperature that is negative, NaN
    /// or infinite.
    pub fn validate(&self) -> Result<()> {
        if let Some(p) = self.top_p.filter(|p| !(*p > 0.0 && *p <= 1.0)) {
            bail!("--top-p must be in (0, 1], got {p}");
        }
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            bail!("--temperature must be a finite number >= 0 (0: greedy), got {}", self.temperature);
        }
        Ok(())
    }
}

/// Continues `prompt` by up to `max_new_tokens` tokens and returns the new ones. The model sees
/// the last `block_size` tokens. With the cache, each new token costs one position; once the
/// window slides past `block_size`, positions shift and every step re-reads the window, so the
/// cached and uncached paths give the same tokens.
pub fn generate(model: &Gpt, prompt: &[u32], opts: &SamplingOptions) -> Result<Vec<u32>> {
    generate_streaming(model, prompt, opts, |_| Ok(()))
}

/// [`generate`], handing each new token to `on_token` as it comes (`taper generate` prints it).
pub fn generate_streaming(
    model: &Gpt,
    prompt: &[u32],
    opts: &SamplingOptions,
    mut on_token: impl FnMut(u32) -> Result<()>,
) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        bail!("the prompt is empty: give at least one token");
    }
    opts.validate()?;
    let device = model.device().clone();
    let window = model.block_size();
    let mut rng = Rng::new(opts.seed);
    let mut tokens = prompt.to_vec();
    let mut caches = model.new_caches();
    let mut cached = 0usize; // tokens of `tokens` the caches hold
    for _ in 0..opts.max_new_tokens {
        let logits = if opts.use_cache && tokens.len() <= window {
            let fresh = &tokens[cached..];
            cached = tokens.len();
            model.forward_cached(&ids_tensor(fresh, &device)?, &mut caches)?
        } else {
            let context = &tokens[tokens.len().saturating_sub(window)..];
            let logits = model.forward(&ids_tensor(context, &device)?, &mut Mode::eval())?;
            let last = logits.dim(1)? - 1;
            logits.narrow(1, last, 1)?.squeeze(1)?.to_dtype(candle_core::DType::F32)?
        };
        let logits: Vec<f32> = crate::host::vec1(&logits)?;
        let token = sample(&logits, opts, &mut rng)?;
        tokens.push(token);
        on_token(token)?;
    }
    Ok(tokens[prompt.len()..].to_vec())
}

fn ids_tensor(ids: &[u32], device: &Device) -> Result<Tensor> {
    Ok(Tensor::from_slice(ids, (1, ids.len()), device)?)
}

/// Picks a token id from `logits` (one row).
pub fn sample(logits: &[f32], opts: &SamplingOptions, rng: &mut Rng) -> Result<u32> {
    if logits.is_empty() {
        bail!("the model has an empty vocabulary: nothing to sample");
    }
    let argmax = || logits.iter().enumerate().fold(0, |best, (i, &v)| if v > logits[best] { i } else { best }) as u32;
    if opts.temperature == 0.0 {
        return Ok(argmax());
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if let Some(k) = opts.top_k {
        order.truncate(k.max(1));
    }
    let max = logits[order[0]] as f64;
    let mut probs: Vec<f64> = order.iter().map(|&i| ((logits[i] as f64 - max) / opts.temperature).exp()).collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if let Some(top_p) = opts.top_p {
        // Keep the smallest prefix (by probability) whose mass reaches top_p.
        let mut mass = 0.0;
        let keep = probs.iter().position(|p| {
            mass += p;
            mass >= top_p
        });
        let keep = keep.map_or(probs.len(), |i| i + 1);
        order.truncate(keep);
        probs.truncate(keep);
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
    }
    let mut u = rng.uniform();
    for (i, p) in order.iter().zip(&probs) {
        if u < *p {
            return Ok(*i as u32);
        }
        u -= p;
    }
    // Rounding left u above the total: the last candidate (top-k keeps at least one).
    Ok(order.last().map_or_else(argmax, |&i| i as u32))
}
