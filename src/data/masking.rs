//! BERT's masked-language-model corruption: each maskable token is selected with probability
//! `mask_prob`; a selected token becomes [MASK] 80 % of the time, a uniformly random token
//! 10 %, and stays itself 10 %. The loss is taken on selected tokens only.

use crate::rng::Rng;

/// The corruption of one batch: which flat positions were selected and their original ids.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Masked {
    pub positions: Vec<u32>,
    pub labels: Vec<u32>,
}

pub struct MaskingRule {
    pub mask_prob: f64,
    pub mask_id: u32,
    pub vocab_size: usize,
    /// Ids never selected ([CLS], [SEP], [PAD]).
    pub special_ids: Vec<u32>,
}

impl MaskingRule {
    /// Corrupts `ids` in place and returns what was selected. At least one token is selected
    /// when any is maskable, so every batch has a target.
    pub fn apply(&self, ids: &mut [u32], rng: &mut Rng) -> Masked {
        let mut masked = Masked::default();
        let maskable = |id: u32| !self.special_ids.contains(&id);
        for (position, id) in ids.iter_mut().enumerate() {
            if maskable(*id) && rng.uniform() < self.mask_prob {
                self.corrupt(position, id, rng, &mut masked);
            }
        }
        if masked.positions.is_empty() {
            let candidates: Vec<usize> = (0..ids.len()).filter(|&i| maskable(ids[i])).collect();
            if !candidates.is_empty() {
                let position = candidates[rng.below(candidates.len())];
                self.corrupt(position, &mut ids[position], rng, &mut masked);
            }
        }
        masked
    }

    fn corrupt(&self, position: usize, id: &mut u32, rng: &mut Rng, masked: &mut Masked) {
        masked.positions.push(position as u32);
        masked.labels.push(*id);
        let roll = rng.uniform();
        if roll < 0.8 {
            *id = self.mask_id;
        } else if roll < 0.9 {
            *id = rng.below(self.vocab_size) as u32;
        }
    }
}
