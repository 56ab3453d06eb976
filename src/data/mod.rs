//! Text in, token-id batches out.

pub mod config;
pub mod corpus;
pub mod dataset;
pub mod documents;
pub mod labelled;
pub mod masking;
pub mod padded;
pub mod pairs;
#[cfg(feature = "parquet")]
pub mod parquet_columns;
pub mod prepare;
pub mod sampling;
pub mod shards;
pub mod sources;
pub mod tagged;
pub mod tokenizer;
pub mod trainers;

pub use corpus::Corpus;
pub use dataset::{read_corpus, BatchBuffers, Split, TokenDataset};
pub use prepare::{corpus_dataset, corpus_tokenizer, prepare, Prepared};
pub use tokenizer::TextTokenizer;
