//! A trained encoder-decoder loaded back from its run directory: `taper generate` (greedy or
//! beam search on one input or a file of inputs) and `taper eval` (loss, token accuracy,
//! exact match and BLEU on a file of pairs).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;

use crate::config::{Config, TaskKind};
use crate::data::pairs::{encode_source, read_pairs};
use crate::decode::{beam_search, greedy, BeamOptions};
use crate::model::seq2seq::Seq2Seq;
use crate::model::Mode;
use crate::run_dir::RunDir;
use crate::train::seq2seq::{build_model, encode, max_len, score, Vocabularies};
use crate::train::task::Evaluation;

pub struct TrainedSeq2Seq {
    pub config: Config,
    pub vocab: Vocabularies,
    pub model: Seq2Seq,
    pub checkpoint: PathBuf,
    device: Device,
}

impl TrainedSeq2Seq {
    /// `which`: "latest", "best" or "step-N"; `device` as in `train.device`.
    pub fn load(run_dir: &Path, which: &str, device: &str) -> Result<Self> {
        let run = RunDir::new(run_dir);
        let config = run.load_config(&[])?;
        if config.task.kind() != TaskKind::Seq2seq {
            bail!("{} is not a seq2seq run (its task is {:?})", run_dir.display(), config.task.kind());
        }
        let vocab = Vocabularies::load(&run, config.model.share_embeddings)?;
        let device = crate::device::open_device(device)?;
        let checkpoint = crate::checkpoint::resolve_checkpoint(run_dir, which)?;
        let file = checkpoint.join("model.safetensors");
        let tensors = crate::checkpoint::load_tensors(&file, &device)?;
        let model = build_model(&config, &vocab, VarBuilder::from_tensors(tensors, candle_core::DType::F32, &device))
            .with_context(|| format!("checkpoint {} does not fit the run's config", file.display()))?;
        Ok(Self { config, vocab, model, checkpoint, device })
    }

    /// Outputs for `inputs`: greedy when `beam.beam_size` is 1 (batched), else beam search one
    /// input at a time. `max_output` caps the output tokens (default: the run's max_target_len).
    pub fn translate(&self, inputs: &[String], beam: BeamOptions, max_output: Option<usize>) -> Result<Vec<String>> {
        let mut limits = self.vocab.limits(&self.config)?;
        if let Some(n) = max_output {
            limits.max_len = n;
        }
        let (eos, max_len) = (self.vocab.source_specials.eos, max_len(&self.config)?);
        let sources: Vec<Vec<u32>> =
            inputs.iter().map(|text| encode_source(&self.vocab.source, text, eos, max_len)).collect::<Result<_>>()?;
        let mut outputs = Vec::with_capacity(inputs.len());
        if beam.beam_size <= 1 {
            for chunk in sources.chunks(64) {
                let longest = chunk.iter().map(Vec::len).max().unwrap_or(1);
                let pad = self.vocab.source_specials.pad;
                let ids: Vec<u32> = chunk
                    .iter()
                    .flat_map(|s| s.iter().copied().chain(std::iter::repeat_n(pad, longest - s.len())))
                    .collect();
                let keep: Vec<u32> = chunk.iter().flat_map(|s| (0..longest).map(|i| (i < s.len()) as u32)).collect();
                let ids = Tensor::from_vec(ids, (chunk.len(), longest), &self.device)?;
                let keep = Tensor::from_vec(keep, (chunk.len(), longest), &self.device)?;
                let memory = self.model.encode(&ids, Some(&keep), &mut Mode::eval())?;
                for output in greedy(&self.model, &memory, limits, true)? {
                    outputs.push(self.vocab.target_text(&output)?);
                }
            }
        } else {
            for source in &sources {
                let ids = Tensor::from_vec(source.clone(), (1, source.len()), &self.device)?;
                let memory = self.model.encode(&ids, None, &mut Mode::eval())?;
                outputs.push(self.vocab.target_text(&beam_search(&self.model, &memory, limits, beam)?)?);
            }
        }
        Ok(outputs)
    }

    /// Loss, token accuracy, exact match and BLEU (greedy decoding) on a file of pairs.
    pub fn evaluate(&self, file: &Path) -> Result<Evaluation> {
        let task = self.config.task.seq2seq()?;
        let pairs = read_pairs(file, &task.source_column, &task.target_column)?;
        let encoded = encode(&self.config, &self.vocab, &pairs, file)?;
        let references: Vec<String> = pairs.into_iter().map(|p| p.target).collect();
        score(&self.model, &self.vocab, &encoded, &references, self.vocab.limits(&self.config)?, &self.device)
    }
}
