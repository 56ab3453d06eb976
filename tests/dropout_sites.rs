//! `model.attn_dropout`, `resid_dropout`, `emb_dropout`: each overrides `model.dropout` at its
//! own site and nowhere else, on the fused and the composed kernels; BERT's config carries
//! them (hidden_dropout_prob, attention_probs_dropout_prob); out-of-range values are refused.

mod common;

use candle_core::{DType, Device, Tensor};
use taper::model::{Gpt, Mode, ParamStore};
use taper::rng::Rng;

/// Training-mode logits of the tiny GPT under `extra`, with the same weights and RNG each time.
fn logits(extra: &str) -> Tensor {
    let dir = std::path::Path::new("/tmp");
    let cfg = common::tiny_config(dir, &dir.join("c.txt"), extra).model;
    let model = Gpt::new(&cfg, 20, DType::F32, ParamStore::new().var_builder(9, &Device::Cpu)).unwrap();
    let ids = Tensor::from_vec((0..24u32).map(|i| (i * 7) % 20).collect(), (2, 12), &Device::Cpu).unwrap();
    model.forward(&ids, &mut Mode::train(Rng::new(4))).unwrap()
}

fn differ(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn each_site_drops_only_where_it_says() {
    for kernels in ["fused", "composed"] {
        let k = format!("model.kernels={kernels}");
        let none = logits(&k);
        let sites: Vec<Tensor> = ["attn_dropout", "resid_dropout", "emb_dropout"]
            .iter()
            .map(|site| logits(&format!("{k} model.{site}=0.3")))
            .collect();
        for (i, a) in sites.iter().enumerate() {
            assert!(differ(a, &none) > 1e-3, "{kernels}: site {i} drops nothing");
            for b in &sites[i + 1..] {
                assert!(differ(a, b) > 1e-3, "{kernels}: two sites drop the same");
            }
        }
        // `dropout` with one site turned off is the other two sites alone, mask for mask.
        let all_but_attn = logits(&format!("{k} model.dropout=0.3 model.attn_dropout=0"));
        let two_sites = logits(&format!("{k} model.resid_dropout=0.3 model.emb_dropout=0.3"));
        assert_eq!(differ(&all_but_attn, &two_sites), 0.0, "{kernels}");
    }
}

#[test]
fn bert_configs_carry_the_sites_and_bad_values_are_refused() {
    let dir = std::path::Path::new("/tmp");
    let cfg = common::tiny_config(dir, &dir.join("c.txt"), "model.dropout=0.1 model.attn_dropout=0.2").model;
    let bert = taper::hf::bert::BertConfig::from_model_config(&cfg, 30);
    assert_eq!((bert.hidden_dropout_prob, bert.attention_probs_dropout_prob), (0.1, 0.2));
    let err = taper::config::Config::from_toml_str(
        "[model]\nn_layer = 1\nn_head = 2\nd_model = 16\nblock_size = 8\nresid_dropout = 1.5\n[data]\npath = \"c.txt\"\n\
         [train]\nsteps = 1\nbatch_size = 1\n",
        &[],
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("`model.resid_dropout` must be in [0, 1), got 1.5"), "{err:#}");
}
