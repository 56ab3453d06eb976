//! `taper export --format hf`: a run's checkpoint as a Hugging Face model directory
//! (config.json, model.safetensors, tokenizer.json) that transformers' Auto classes and
//! candle-transformers' `BertModel` load. A BERT-family run stores its parameters under
//! Hugging Face's names (its models are built through `model::names::bert`), so the weights
//! are written as they are.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::config::{NormPlacement, PoolingName, TaskKind};
use crate::run_dir::RunDir;

/// The files an export writes into its directory.
const EXPORT_FILES: [&str; 3] = ["config.json", "model.safetensors", "tokenizer.json"];

/// Writes the export into `out` (created if needed); every file goes to a temporary name
/// first, so an interrupted export never leaves a half-written file under its final name.
/// Files already in `out` under those names are replaced only with `overwrite`.
pub fn export_hf(run_dir: &Path, which: &str, out: &Path, overwrite: bool) -> Result<()> {
    let present: Vec<&str> = EXPORT_FILES.into_iter().filter(|f| out.join(f).exists()).collect();
    if !present.is_empty() && !overwrite {
        bail!(
            "{} already holds {}; taper does not overwrite them: choose another --out, or pass --overwrite",
            out.display(),
            present.join(", ")
        );
    }
    let run = RunDir::new(run_dir);
    let config = run.load_config(&[])?;
    if !matches!(config.task.kind(), TaskKind::SequenceClassification | TaskKind::MaskedLm) {
        bail!(
            "{}: `export --format hf` writes BERT-family encoders (classification and masked-lm runs)",
            run_dir.display()
        );
    }
    if config.model.norm != NormPlacement::Post {
        bail!("{}: Hugging Face's BERT is post-LN; a pre-LN encoder has no equivalent there", run_dir.display());
    }
    let bert = run.read_bert_config()?;
    let mut hf = serde_json::to_value(&bert)?;
    let architecture = match config.task.kind() {
        TaskKind::SequenceClassification => {
            if config.task.classification()?.pooling != PoolingName::Cls {
                bail!(
                    "{}: mean pooling has no Hugging Face BertForSequenceClassification equivalent",
                    run_dir.display()
                );
            }
            let labels = run.read_labels()?;
            let id2label: serde_json::Map<String, Value> =
                labels.names.iter().enumerate().map(|(i, n)| (i.to_string(), json!(n))).collect();
            let label2id: serde_json::Map<String, Value> =
                labels.names.iter().enumerate().map(|(i, n)| (n.clone(), json!(i))).collect();
            hf["id2label"] = Value::Object(id2label);
            hf["label2id"] = Value::Object(label2id);
            "BertForSequenceClassification"
        }
        TaskKind::MaskedLm => "BertForMaskedLM",
        TaskKind::CausalLm | TaskKind::Seq2seq => bail!("{}: not an encoder run", run_dir.display()),
    };
    hf["architectures"] = json!([architecture]);
    hf["model_type"] = json!("bert");
    hf["torch_dtype"] = json!("float32");
    let tokenizer = crate::data::TextTokenizer::load(&run.tokenizer())?;
    if let Some(pad) = tokenizer.inner().token_to_id("[PAD]") {
        hf["pad_token_id"] = json!(pad);
    }

    let checkpoint = crate::checkpoint::resolve_checkpoint(run_dir, which)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let weights = checkpoint.join("model.safetensors");
    let tmp = out.join("model.safetensors.tmp");
    std::fs::copy(&weights, &tmp).with_context(|| format!("cannot copy {}", weights.display()))?;
    std::fs::rename(&tmp, out.join("model.safetensors"))?;
    crate::fsutil::write_atomic(&out.join("config.json"), serde_json::to_string_pretty(&hf)?.as_bytes())?;
    tokenizer.save(&out.join("tokenizer.json"))?;
    Ok(())
}
