//! Beam search over one source, step for step as transformers' `generate` does it (5.x,
//! `GenerationMixin._beam_search`), so that a model brought in from Hugging Face decodes to the
//! sequences it decodes to there:
//! - each step ranks the 2 * beams best continuations of all beams by summed log p; the best
//!   `beams` of them that did not end (EOS, or the length limit) run on;
//! - a continuation that ends joins the finished set only when it ranks among the first `beams`,
//!   scored by summed log p / (generated tokens, EOS included) ^ length_penalty; the set keeps the
//!   `beams` best;
//! - the search stops (`EarlyStopping`) when the best running beam can no longer beat the worst
//!   finished one, or once `beams` hypotheses have finished, or at the length limit.

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};

use super::{rules, DecodeLimits};
use crate::model::block::BlockCache;
use crate::model::seq2seq::{Memory, Seq2Seq};

/// When beam search stops, as transformers' `early_stopping`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EarlyStopping {
    /// `false` (transformers' default): once `beams` hypotheses have finished, stop when the best
    /// running beam, scored at its current length, falls below the worst finished one.
    #[default]
    Heuristic,
    /// `true`: stop as soon as `beams` hypotheses have finished.
    WhenFull,
    /// `"never"`: as `Heuristic`, but a positive length penalty scores the running beam at the
    /// longest length it could reach (the canonical beam search with length_penalty 0).
    Never,
}

impl std::fmt::Display for EarlyStopping {
    /// transformers' spelling.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Heuristic => "false",
            Self::WhenFull => "true",
            Self::Never => "never",
        })
    }
}

impl std::str::FromStr for EarlyStopping {
    type Err = anyhow::Error;
    fn from_str(text: &str) -> Result<Self> {
        match text {
            "false" => Ok(Self::Heuristic),
            "true" => Ok(Self::WhenFull),
            "never" => Ok(Self::Never),
            other => bail!("early stopping is false, true or never (as in transformers), got {other:?}"),
        }
    }
}

/// Beam-search settings (transformers' names and defaults).
#[derive(Debug, Clone, Copy)]
pub struct BeamOptions {
    pub beam_size: usize,
    /// Finished hypotheses are ranked by log p / length^length_penalty: above 0 favours longer
    /// outputs, below 0 shorter ones, 0 ranks by log p alone. Default 1.
    pub length_penalty: f64,
    pub early_stopping: EarlyStopping,
    /// How many of the finished hypotheses to return, best first (at most `beam_size`). Default 1.
    pub num_return_sequences: usize,
}

impl Default for BeamOptions {
    fn default() -> Self {
        Self { beam_size: 1, length_penalty: 1.0, early_stopping: EarlyStopping::default(), num_return_sequences: 1 }
    }
}

impl BeamOptions {
    pub fn validate(&self) -> Result<()> {
        if self.beam_size == 0 {
            bail!("the beam size must be at least 1");
        }
        if !self.length_penalty.is_finite() {
            bail!("the length penalty must be a finite number, got {}", self.length_penalty);
        }
        if self.num_return_sequences == 0 || self.num_return_sequences > self.beam_size {
            bail!(
                "num_return_sequences must be between 1 and the beam size ({}), got {}",
                self.beam_size,
                self.num_return_sequences
            );
        }
        Ok(())
    }
}

/// One output of beam search.
#[derive(Debug, Clone, PartialEq)]
pub struct Hypothesis {
    /// The tokens after BOS, without the EOS.
    pub tokens: Vec<u32>,
    /// Whether it ended with EOS (else at the length limit).
    pub ended: bool,
    /// Summed log p (EOS included) / (tokens, EOS included) ^ length_penalty: transformers'
    /// `sequences_scores`.
    pub score: f64,
}

/// A running beam: the tokens after BOS and their summed log p.
struct Beam {
    tokens: Vec<u32>,
    log_p: f64,
}

/// One continuation: the summed log p, the beam it extends, the token.
type Candidate = (f64, usize, u32);

fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let total: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    let log_total = total.ln() + max;
    row.iter().map(|&x| x as f64 - log_total).collect()
}

/// The 2 * k best continuations of all beams, best first (ties: the lower beam, then token).
fn top_candidates(
    beams: &[Beam],
    logits: &Tensor,
    limits: &DecodeLimits,
    k: usize,
    max_len: usize,
) -> Result<Vec<Candidate>> {
    let mut candidates: Vec<Candidate> = Vec::new();
    for (b, row) in crate::host::vec2::<f32>(logits)?.iter().enumerate() {
        let mut lp = log_softmax(row);
        let prefix: Vec<u32> = std::iter::once(limits.bos).chain(beams[b].tokens.iter().copied()).collect();
        rules::apply(&mut lp, &prefix, limits, max_len);
        let mut order: Vec<u32> = (0..lp.len() as u32).collect();
        let keep = (2 * k).min(order.len());
        order.select_nth_unstable_by(keep - 1, |&x, &y| lp[y as usize].total_cmp(&lp[x as usize]).then(x.cmp(&y)));
        candidates.extend(order[..keep].iter().map(|&t| (beams[b].log_p + lp[t as usize], b, t)));
    }
    candidates.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    candidates.truncate(2 * k);
    Ok(candidates)
}

/// The finished set: at most k hypotheses, best first; a newcomer displaces the worst.
struct Finished {
    k: usize,
    hypotheses: Vec<Hypothesis>,
}

impl Finished {
    fn full(&self) -> bool {
        self.hypotheses.len() >= self.k
    }

    fn offer(&mut self, hypothesis: Hypothesis) {
        // After every equal or better one already there (transformers' merge keeps the older first).
        let at = self.hypotheses.partition_point(|h| h.score >= hypothesis.score);
        if at < self.k {
            self.hypotheses.insert(at, hypothesis);
            self.hypotheses.truncate(self.k);
        }
    }

    /// Whether the best running beam (summed log p `best`, scored at `length`) can still beat
    /// the worst finished hypothesis; always while fewer than k have finished.
    fn can_improve(&self, best: f64, length: usize, length_penalty: f64) -> bool {
        match self.hypotheses.last() {
            Some(worst) if self.full() => best / (length as f64).powf(length_penalty) > worst.score,
            _ => true,
        }
    }
}

/// Beam search over one source (`memory` with one row, no padding). Returns the
/// `num_return_sequences` best hypotheses, best first. With `early_stopping` as in
/// transformers, the sequences and scores are transformers' `generate(num_beams=...)`'s.
pub fn beam_search(
    model: &Seq2Seq,
    memory: &Memory,
    limits: DecodeLimits,
    options: BeamOptions,
) -> Result<Vec<Hypothesis>> {
    options.validate()?;
    let k = options.beam_size;
    let device: Device = memory.hidden.device().clone();
    let max_len = limits.max_len.min(model.block_size() - 1);
    let penalty = options.length_penalty;
    let mut beams = vec![Beam { tokens: Vec::new(), log_p: 0.0 }];
    let mut finished = Finished { k, hypotheses: Vec::new() };
    let mut improvable = true;
    let mut caches = model.new_caches();
    let mut last: Vec<u32> = vec![limits.bos];
    for step in 1..=max_len {
        let input = Tensor::from_vec(last.clone(), (beams.len(), 1), &device)?;
        let logits = model.decode_step(&input, memory, &mut caches)?;
        let candidates = top_candidates(&beams, &logits, &limits, k, max_len)?;
        let (mut next, mut parents, mut tokens_in) = (Vec::new(), Vec::new(), Vec::new());
        for (rank, &(log_p, b, token)) in candidates.iter().enumerate() {
            let ended = token == limits.eos;
            if ended || step == max_len {
                let closed = options.early_stopping == EarlyStopping::WhenFull && finished.full();
                if rank < k && improvable && !closed {
                    let mut tokens = beams[b].tokens.clone();
                    tokens.extend((!ended).then_some(token));
                    finished.offer(Hypothesis { tokens, ended, score: log_p / (step as f64).powf(penalty) });
                }
            } else if next.len() < k {
                let tokens: Vec<u32> = beams[b].tokens.iter().copied().chain([token]).collect();
                next.push(Beam { tokens, log_p });
                parents.push(b as u32);
                tokens_in.push(token);
            }
        }
        if next.is_empty() {
            break;
        }
        let reach = match options.early_stopping {
            EarlyStopping::Never if penalty > 0.0 => max_len,
            _ => step,
        };
        improvable &= finished.can_improve(next[0].log_p, reach, penalty);
        if !improvable || (options.early_stopping == EarlyStopping::WhenFull && finished.full()) {
            break;
        }
        follow(&mut caches, &parents, &device)?;
        last = tokens_in;
        beams = next;
    }
    finished.hypotheses.truncate(options.num_return_sequences);
    Ok(finished.hypotheses)
}

/// Every cache row follows its beam to the next step: row i becomes the old row `parents[i]`.
fn follow(caches: &mut [BlockCache], parents: &[u32], device: &Device) -> Result<()> {
    let index = Tensor::from_vec(parents.to_vec(), parents.len(), device)?;
    for cache in caches.iter_mut() {
        for kv in [&mut cache.self_attn, &mut cache.cross_attn] {
            kv.keys = kv.keys.as_ref().map(|t| t.index_select(&index, 0)).transpose()?;
            kv.values = kv.values.as_ref().map(|t| t.index_select(&index, 0)).transpose()?;
        }
    }
    Ok(())
}
