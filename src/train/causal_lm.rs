//! Next-token prediction with the GPT on a plain corpus: random contiguous blocks.

use std::cell::RefCell;
use std::collections::BTreeMap;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::task::{Evaluation, Task};
use crate::config::Config;
use crate::data::{read_corpus, tokenize_cached, BatchBuffers, Split, TextTokenizer, TokenDataset};
use crate::model::{Gpt, Mode, ParamStore};
use crate::run_dir::RunDir;

pub struct CausalLm {
    cfg: Config,
    data: TokenDataset,
    vocab_size: usize,
    model: Gpt,
    device: Device,
    buffers: RefCell<BatchBuffers>,
}

impl CausalLm {
    /// Reads and tokenizes the corpus (training the tokenizer on a fresh run, reading the
    /// run's own on resume) and builds the GPT over `params`.
    pub fn new(cfg: &Config, run: &RunDir, resuming: bool, params: &ParamStore, device: &Device) -> Result<Self> {
        let text = read_corpus(&cfg.data.path)?;
        let tokenizer = if resuming {
            TextTokenizer::load(&run.tokenizer())?
        } else {
            let tokenizer = TextTokenizer::from_config(&cfg.tokenizer, &cfg.data.path, &text)?;
            tokenizer.save(&run.tokenizer())?;
            tokenizer
        };
        let ids = tokenize_cached(&tokenizer, &text, &run.path().join("tokens.bin"))?;
        let data = TokenDataset::new(ids, cfg.data.val_fraction, cfg.model.block_size, &cfg.data.path)?;
        let vocab_size = tokenizer.vocab_size();
        let dtype = cfg.train.dtype.to_dtype();
        let model = Gpt::new(&cfg.model, vocab_size, dtype, params.var_builder(cfg.train.seed, device))?;
        Ok(Self { cfg: cfg.clone(), data, vocab_size, model, device: device.clone(), buffers: Default::default() })
    }
}

impl Task for CausalLm {
    /// (inputs, targets), each (B, T) u32.
    type Batch = (Tensor, Tensor);

    fn config(&self) -> &Config {
        &self.cfg
    }

    fn describe(&self) -> String {
        format!("{} train / {} val tokens", self.data.len(Split::Train), self.data.len(Split::Val))
    }

    fn train_batch(&self, step: usize, micro: usize) -> Result<Self::Batch> {
        let buffers = &mut self.buffers.borrow_mut();
        self.data.train_batch(self.cfg.train.seed, step, micro, self.cfg.train.batch_size, &self.device, buffers)
    }

    fn targets(&self, batch: &Self::Batch) -> usize {
        batch.1.elem_count()
    }

    fn tokens(&self, batch: &Self::Batch) -> usize {
        batch.0.elem_count()
    }

    fn loss_sum(&self, (inputs, targets): &Self::Batch, mode: &mut Mode) -> Result<Tensor> {
        Ok(self.model.loss_sum(inputs, targets, mode)?)
    }

    /// Mean next-token loss over the fixed val batches.
    fn evaluate(&self, params: &ParamStore) -> Result<Evaluation> {
        let cfg = &self.cfg;
        let vb = VarBuilder::from_tensors(params.detached(), DType::F32, &self.device);
        let model = Gpt::new(&cfg.model, self.vocab_size, cfg.train.dtype.to_dtype(), vb)?;
        let batch = cfg.train.batch_size;
        let buffers = &mut self.buffers.borrow_mut();
        let mut total = 0f64;
        for index in 0..cfg.train.eval_batches {
            let (inputs, targets) = self.data.eval_batch(cfg.train.seed, index, batch, &self.device, buffers)?;
            total += model.loss_sum(&inputs, &targets, &mut Mode::eval())?.to_scalar::<f32>()? as f64;
        }
        let val_loss = total / (cfg.train.eval_batches.max(1) * batch * cfg.model.block_size) as f64;
        Ok(BTreeMap::from([("val_loss".to_string(), val_loss)]))
    }

    fn residual_rms(&self, (inputs, _): &Self::Batch) -> Result<BTreeMap<String, f64>> {
        Ok(self.model.norm_input_rms(inputs)?.into_iter().collect())
    }
}
