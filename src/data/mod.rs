//! Text in, token-id batches out.

pub mod config;
pub mod dataset;
pub mod labelled;
pub mod masking;
pub mod padded;
pub mod pairs;
pub mod sampling;
pub mod tokenizer;
pub mod trainers;

pub use dataset::{read_corpus, tokenize_cached, BatchBuffers, Split, TokenDataset};
pub use tokenizer::TextTokenizer;
