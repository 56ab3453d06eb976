//! The Transformer: parameters, layers, attention, the shared block, and the models built from it.

pub mod attention;
pub mod bert;
pub mod block;
pub mod fused;
pub mod gpt;
pub mod layers;
pub mod params;
pub mod positions;
pub mod seq2seq;

pub use gpt::Gpt;
pub use layers::Mode;
pub use params::ParamStore;
