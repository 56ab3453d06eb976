//! Weight decay is chosen by a parameter's role (matrix, embedding table, bias, norm gain),
//! not by its name: a seq2seq model's `shared.weight` table is an embedding too.

mod common;

use candle_core::{DType, Device};
use taper::config::{Config, OptimConfig};
use taper::model::seq2seq::Seq2Seq;
use taper::model::{Gpt, ParamStore};
use taper::optim::AdamW;

fn decayed(params: &ParamStore, embeddings: &[candle_core::Tensor], decay_embeddings: bool) -> Vec<String> {
    let optim = OptimConfig { weight_decay: 0.1, decay_embeddings, ..Default::default() };
    AdamW::new(params.named_vars(), &optim, embeddings).unwrap().decayed().map(String::from).collect()
}

#[test]
fn gpt_embeddings_are_exempt_unless_asked() {
    let cfg = common::tiny_config(std::path::Path::new("/tmp"), std::path::Path::new("/tmp/c.txt"), "").model;
    let params = ParamStore::new();
    let gpt = Gpt::new(&cfg, 20, DType::F32, params.var_builder(3, &Device::Cpu)).unwrap();
    for decay_embeddings in [false, true] {
        let names = decayed(&params, &gpt.embedding_tables(), decay_embeddings);
        let has = |n: &str| names.iter().any(|d| d == n);
        assert_eq!(has("tok_emb.weight"), decay_embeddings, "{names:?}");
        assert_eq!(has("pos_emb.weight"), decay_embeddings, "{names:?}");
        assert!(has("blocks.0.attn.q_proj.weight") && has("blocks.1.mlp.fc2.weight"), "{names:?}");
        assert!(!has("blocks.0.attn.q_proj.bias") && !has("blocks.0.ln_1.weight") && !has("ln_f.weight"));
    }
}

#[test]
fn a_shared_seq2seq_table_is_an_embedding() {
    let text = "[model]\narch = \"encoder-decoder\"\nn_layer = 1\nn_head = 2\nd_model = 16\nblock_size = 8\n\
                share_embeddings = true\n[task]\nkind = \"seq2seq\"\n[data]\npath = \"unused.tsv\"\n[train]\nsteps = 1\nbatch_size = 1\n";
    let cfg = Config::from_toml_str(text, &[]).unwrap();
    let params = ParamStore::new();
    let model = Seq2Seq::new(&cfg.model, 12, 12, DType::F32, params.var_builder(1, &Device::Cpu)).unwrap();
    let names = decayed(&params, &model.embedding_tables(), false);
    assert!(!names.iter().any(|n| n == "shared.weight"), "{names:?}");
    assert!(names.iter().any(|n| n == "decoder.blocks.0.cross_attn.q_proj.weight"), "{names:?}");
    let names = decayed(&params, &model.embedding_tables(), true);
    assert!(names.iter().any(|n| n == "shared.weight"), "{names:?}");
}
