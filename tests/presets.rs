//! Each shipped preset builds the published model's parameter count with its intended
//! vocabulary (the tokenizer's `vocab_size`): counted over a VarBuilder that hands out
//! zero-strided tensors, so even the 7B preset costs no memory.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use taper::config::{Architecture, Config};
use taper::model::encoder::{EncoderVocab, MaskedLm};
use taper::model::seq2seq::Seq2Seq;
use taper::model::Gpt;

/// Records each parameter's size by name; every tensor is one broadcast zero.
#[derive(Default)]
struct Counter(Mutex<HashMap<String, usize>>);

impl SimpleBackend for &'static Counter {
    fn get(&self, shape: Shape, name: &str, _: Init, dtype: DType, device: &Device) -> Result<Tensor> {
        self.0.lock().unwrap().insert(name.to_string(), shape.elem_count());
        Tensor::zeros((), dtype, device)?.broadcast_as(shape)
    }
    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> Result<Tensor> {
        candle_core::bail!("{name} not created")
    }
    fn contains_tensor(&self, name: &str) -> bool {
        self.0.lock().unwrap().contains_key(name)
    }
}

/// The parameters the preset's model has with the vocabulary its tokenizer section asks for.
fn parameters(preset: &str) -> usize {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs").join(preset);
    let cfg = Config::load(&path, &[]).unwrap();
    let vocab = cfg.tokenizer.vocab_size.unwrap_or_else(|| panic!("{preset}: no tokenizer.vocab_size"));
    let counter: &'static Counter = Box::leak(Box::default());
    let vb = VarBuilder::from_backend(Box::new(counter), DType::F32, Device::Cpu);
    match cfg.model.arch {
        Architecture::DecoderOnly => drop(Gpt::new(&cfg.model, vocab, DType::F32, vb).unwrap()),
        Architecture::EncoderOnly => {
            let vocab = EncoderVocab { tokens: vocab, token_types: 2 };
            drop(MaskedLm::new(&cfg.model, vocab, vb).unwrap())
        }
        Architecture::EncoderDecoder => drop(Seq2Seq::new(&cfg.model, vocab, vocab, DType::F32, vb).unwrap()),
    }
    let sizes = counter.0.lock().unwrap();
    sizes.values().sum()
}

#[test]
fn presets_have_the_published_parameter_counts() {
    // Hugging Face's counts for the checkpoints each preset reproduces (tied embeddings counted once).
    let published = [
        ("gpt2-small.toml", 124_439_808),      // gpt2
        ("gpt2-medium.toml", 354_823_168),     // gpt2-medium
        ("gpt2-large.toml", 774_030_080),      // gpt2-large
        ("gpt2-xl.toml", 1_557_611_200),       // gpt2-xl
        ("bert-base.toml", 109_514_298),       // BertForMaskedLM, bert-base-uncased
        ("bert-large.toml", 335_174_458),      // BertForMaskedLM, bert-large-uncased
        ("t5-small.toml", 60_506_624),         // t5-small
        ("llama-1.1b.toml", 1_100_048_384),    // TinyLlama-1.1B
        ("llama-7b.toml", 6_738_415_616),      // Llama-2-7b
        ("transformer-base.toml", 63_082_496), // Vaswani et al.'s base with a 37k vocabulary (the paper rounds to 65M)
    ];
    let mut wrong = Vec::new();
    for (preset, want) in published {
        let got = parameters(preset);
        if got != want {
            wrong.push(format!("{preset}: {got} parameters, published {want}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}
