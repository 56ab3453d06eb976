//! A trained classifier loaded back from its run directory: `taper eval` (loss, accuracy,
//! macro-F1 on a labelled file) and `taper predict` (label and probabilities per input line).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use candle_nn::VarBuilder;
use serde_json::json;

use crate::config::{Config, TaskKind};
use crate::data::labelled::{read_labelled, LabelSet};
use crate::data::padded::encode_examples;
use crate::data::TextTokenizer;
use crate::model::bert::{BertConfig, SequenceClassifier};
use crate::run_dir::RunDir;
use crate::train::classification::{
    build_model, columns, encode_labelled, logits, max_len, probabilities, read_labels, score,
};
use crate::train::task::Evaluation;

pub struct TrainedClassifier {
    pub config: Config,
    pub bert: BertConfig,
    pub tokenizer: TextTokenizer,
    pub labels: LabelSet,
    pub model: SequenceClassifier,
    pub checkpoint: PathBuf,
    pad_id: u32,
    device: Device,
}

/// Reads a run's BERT config.json.
pub fn read_bert_config(run: &RunDir) -> Result<BertConfig> {
    let path = run.bert_config();
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("invalid {}", path.display()))
}

impl TrainedClassifier {
    /// `which`: "latest", "best" or "step-N"; `device` as in `train.device`.
    pub fn load(run_dir: &Path, which: &str, device: &str) -> Result<Self> {
        let run = RunDir::new(run_dir);
        let config = run.load_config(&[])?;
        if config.task.kind() != TaskKind::SequenceClassification {
            bail!("{} is not a sequence-classification run (its task is {:?})", run_dir.display(), config.task.kind());
        }
        let bert = read_bert_config(&run)?;
        let tokenizer = TextTokenizer::load(&run.tokenizer())?;
        let labels = read_labels(&run.labels())?;
        let device = crate::device::open_device(device)?;
        let checkpoint = crate::checkpoint::resolve_checkpoint(run_dir, which)?;
        let file = checkpoint.join("model.safetensors");
        let vb = VarBuilder::from_tensors(
            crate::checkpoint::load_tensors(&file, &device)?,
            candle_core::DType::F32,
            &device,
        );
        let model = build_model(&config, &bert, labels.names.len(), vb)
            .with_context(|| format!("checkpoint {} does not fit the run's config", file.display()))?;
        let pad_id = tokenizer.special_id("[PAD]", "padding batches")?;
        Ok(Self { config, bert, tokenizer, labels, model, checkpoint, pad_id, device })
    }

    /// Loss, accuracy and macro-F1 on a labelled file (columns as in training).
    pub fn evaluate(&self, file: &Path) -> Result<Evaluation> {
        let examples = read_labelled(file, &columns(&self.config)?, true)?;
        let rows = encode_labelled(&self.tokenizer, &examples, &self.labels, max_len(&self.config, &self.bert)?, file)?;
        score(&self.model, &rows, self.labels.names.len(), self.pad_id, &self.device)
    }

    /// One JSON object per input example: its line, text, predicted label and the probability
    /// of every label. A label present in the input must be one the model knows.
    pub fn predict(&self, input: &Path) -> Result<Vec<serde_json::Value>> {
        let examples = read_labelled(input, &columns(&self.config)?, false)?;
        for example in &examples {
            if let Some(label) = &example.label {
                self.labels.id(label, input, example.line)?;
            }
        }
        let encoded = encode_examples(&self.tokenizer, &examples, max_len(&self.config, &self.bert)?, input)?;
        let rows: Vec<_> = encoded.iter().collect();
        let all = logits(&self.model, &rows, self.pad_id, &self.device)?;
        Ok(examples
            .iter()
            .zip(all)
            .map(|(example, logits)| {
                let p = probabilities(&logits);
                let best = (0..p.len()).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap_or(0);
                let by_label: serde_json::Map<String, serde_json::Value> =
                    self.labels.names.iter().zip(&p).map(|(n, v)| (n.clone(), json!(v))).collect();
                let mut record = json!({"line": example.line, "text": example.text, "label": self.labels.names[best], "probabilities": by_label});
                if let Some(pair) = &example.text_pair {
                    record["text_pair"] = json!(pair);
                }
                record
            })
            .collect())
    }
}
