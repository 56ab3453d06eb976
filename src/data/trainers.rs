//! A WordPiece trainer whose result is a pure function of the corpus. Written here because
//! tokenizers' `WordPieceTrainer` counts words into a randomly seeded hash map and numbers its
//! `##` pieces in that map's iteration order, so two trainings on one corpus give different
//! ids and, through the merge tie-break on ids, can pick different merges
//! (huggingface/tokenizers#1794). This trainer counts the same words in a sorted map and runs
//! the same training (tokenizers' `BpeTrainer::do_train` with the `##` prefix, read out as
//! WordPiece, which is what `WordPieceTrainer` does) on them in that order.

use std::collections::BTreeMap;

use ahash::{AHashMap, RandomState};
use compact_str::CompactString;
use tokenizers::models::bpe::{BpeTrainer, BPE};
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::models::ModelWrapper;
use tokenizers::{AddedToken, Result, Trainer};

pub struct WordPieceTrainer {
    /// Configured with `continuing_subword_prefix("##")`.
    bpe: BpeTrainer,
    words: BTreeMap<String, u64>,
}

impl WordPieceTrainer {
    /// Trains towards `vocab_size` tokens, `special` first.
    pub fn new(vocab_size: usize, special: Vec<AddedToken>) -> Self {
        let bpe = BpeTrainer::builder()
            .show_progress(false)
            .vocab_size(vocab_size)
            .special_tokens(special)
            .continuing_subword_prefix("##".into())
            .build();
        Self { bpe, words: BTreeMap::new() }
    }
}

impl Trainer for WordPieceTrainer {
    type Model = ModelWrapper;

    fn should_show_progress(&self) -> bool {
        false
    }

    fn train(&self, model: &mut ModelWrapper) -> Result<Vec<AddedToken>> {
        let ModelWrapper::WordPiece(wordpiece) = model else {
            return Err("the WordPiece trainer trains a WordPiece model".into());
        };
        // A fixed-seed hasher: the map's iteration order follows the (sorted) insertion order only.
        let mut counts = AHashMap::with_hasher(RandomState::with_seeds(1, 2, 3, 4));
        counts.extend(self.words.iter().map(|(w, c)| (CompactString::from(w.as_str()), *c)));
        let mut bpe = BPE::default();
        let special = self.bpe.do_train(&counts, &mut bpe)?;
        *wordpiece = WordPiece::from_bpe(&bpe);
        Ok(special)
    }

    fn feed<I, S, F>(&mut self, iterator: I, process: F) -> Result<()>
    where
        I: Iterator<Item = S> + Send,
        S: AsRef<str> + Send,
        F: Fn(&str) -> Result<Vec<String>> + Sync,
    {
        for sequence in iterator {
            for word in process(sequence.as_ref())? {
                *self.words.entry(word).or_default() += 1;
            }
        }
        Ok(())
    }
}
