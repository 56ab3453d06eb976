//! `taper prepare`: tokenize a language-model corpus into its shard set and stop (prepare once,
//! then train many runs, or many ranks, on it).

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use crate::config::Config;
use crate::data::{corpus_tokenizer, prepare, Corpus, TextTokenizer};

#[derive(Args)]
pub struct PrepareArgs {
    config: PathBuf,
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    overrides: Vec<String>,
}

pub fn run(args: PrepareArgs) -> Result<()> {
    let cfg = Config::load(&args.config, &args.overrides)?;
    if !cfg.task.kind().spec().prepares_corpus() {
        bail!("taper prepare tokenizes language-model corpora (causal-lm, masked-lm); this task reads its labelled file as it trains");
    }
    let corpus = Corpus::resolve(&cfg.data)?;
    let tokenizer = match &cfg.model.init_from {
        Some(spec) => TextTokenizer::load(&crate::pretrained::resolve_model_dir(spec)?.join("tokenizer.json"))?,
        None => corpus_tokenizer(&cfg.tokenizer, &cfg.data, &corpus)?,
    };
    let prepared = prepare(&cfg.data, &corpus, &tokenizer)?;
    let index = &prepared.index;
    if prepared.built.is_none() {
        println!("already tokenized: {}", prepared.dir.display());
    }
    println!(
        "{}: {} documents ({} train), {} train / {} val tokens, split by {}, {} shard files of u{} ids",
        corpus.describe(),
        index.documents,
        index.train_documents,
        prepared.train.len(),
        prepared.val.len(),
        index.split,
        index.shards.len(),
        8 * index.width
    );
    Ok(())
}
