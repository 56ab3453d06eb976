//! The Transformer as parts on one stack: layers (linear, embedding), norm, attention,
//! positions, block (the residual recipe), stack (embed -> positions -> blocks -> final norm),
//! and the models composed from them (GPT, BERT with its heads, encoder-decoder). Every op
//! runs through the kernel seam, `crate::kernels`.

pub mod attention;
pub mod block;
pub mod config;
pub mod encoder;
pub mod gpt;
pub mod layers;
pub mod lora;
pub mod norm;
pub mod params;
pub mod positions;
pub mod seq2seq;
pub mod stack;

pub use crate::kernels::Mode;
pub use gpt::Gpt;
pub use params::ParamStore;
