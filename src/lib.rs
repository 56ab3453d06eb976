//! taper: train Transformers from one TOML file, on candle.
//!
//! Layers, top to bottom: `cli` -> `train` / `generate` -> `model` / `data` / `optim` /
//! `checkpoint` -> candle.

pub mod bleu;
pub mod checkpoint;
pub mod classification_metrics;
pub mod cli;
pub mod compare;
pub mod config;
pub mod console;
pub mod data;
pub mod decode;
pub mod device;
pub mod distributed;
pub mod entity_metrics;
pub mod export;
pub mod fsutil;
pub mod generate;
pub mod hf;
pub mod host;
pub mod inspect;
pub mod interrupt;
pub mod kernels;
pub mod memory;
pub mod model;
pub mod optim;
pub mod plot;
pub mod pretrained;
pub mod rng;
pub mod run_dir;
pub mod runtime;
pub mod sweep;
pub mod train;
pub mod trained;
