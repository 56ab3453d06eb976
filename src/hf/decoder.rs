//! What the decoder families (GPT-2, Llama, Qwen2) share: the options none of them has, the
//! special tokens of their tokenizers, a tied head's copy in their files.

use super::{show, Tensors, Tokens};
use crate::config::{ModelConfig, NormPlacement};

/// What keeps `model` from being any of taper's decoder families, besides each one's own.
pub fn mismatches(model: &ModelConfig) -> Vec<String> {
    let mut out = Vec::new();
    if model.norm != NormPlacement::Pre {
        out.push(format!("`model.norm = {}` (it is pre-LN)", show(&model.norm)));
    }
    if model.qk_norm {
        out.push("`model.qk_norm = true` (it has no QK-norm)".into());
    }
    out
}

/// The tokens a decoder's start and end are, in the tokenizers taper meets (GPT-2's one token
/// for both, SentencePiece's, a taper-trained one's).
pub fn tokens() -> Tokens {
    Tokens {
        bos: &["<|endoftext|>", "<s>", "[BOS]"],
        eos: &["<|endoftext|>", "</s>", "[EOS]"],
        pad: &[],
        cls: &[],
        sep: &[],
        mask: &[],
    }
}

/// A file's tensors under taper's names with a tied head's copy (`lm_head.weight`, the token
/// table again) moved to `unused`, which comes back sorted.
pub fn drop_tied_head(mut tensors: Tensors, mut unused: Vec<String>, model: &ModelConfig) -> (Tensors, Vec<String>) {
    if model.tie_embeddings && tensors.remove("lm_head.weight").is_some() {
        unused.push("lm_head.weight".into());
    }
    unused.sort();
    (tensors, unused)
}
