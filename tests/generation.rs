//! Decoding with the KV-cache gives the same logits and tokens as recomputing every position.

mod common;

use candle_core::{Device, Tensor};
use taper::generate::{generate, SamplingOptions};
use taper::model::Mode;
use taper::train::{train, TrainOptions};
use taper::trained::TrainedGpt;

fn trained(dir: &std::path::Path, extra: &str) -> TrainedGpt {
    let corpus = common::write_corpus(dir, &common::pattern_corpus(300));
    let cfg = common::tiny_config(dir, &corpus, &format!("train.steps=30 {extra}"));
    train(cfg, &TrainOptions { quiet: true, ..Default::default() }).unwrap();
    TrainedGpt::load(&dir.join("run"), "latest", "cpu").unwrap()
}

#[test]
fn cached_logits_equal_uncached_logits() {
    for positions in ["learned", "sinusoidal", "rope"] {
        let dir = tempfile::tempdir().unwrap();
        let gpt = trained(dir.path(), &format!("model.positions={positions}"));
        let mut ids: Vec<u32> = gpt.tokenizer.encode("anna sees bert.\ncleo").unwrap();
        ids.truncate(16); // block_size
        let full = gpt
            .model
            .forward(&Tensor::from_slice(&ids, (1, ids.len()), &Device::Cpu).unwrap(), &mut Mode::eval())
            .unwrap()
            .squeeze(0)
            .unwrap();
        let mut caches = gpt.model.new_caches();
        // A 4-token prefill, then one token at a time.
        let mut fed = 0;
        for chunk in [4usize, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1] {
            if fed + chunk > ids.len() {
                break;
            }
            let step = Tensor::from_slice(&ids[fed..fed + chunk], (1, chunk), &Device::Cpu).unwrap();
            let cached = gpt.model.forward_cached(&step, &mut caches).unwrap().squeeze(0).unwrap();
            fed += chunk;
            let want = full.get(fed - 1).unwrap();
            let diff = (cached - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-4, "{positions}: position {}: cached and uncached logits differ by {diff}", fed - 1);
        }
    }
}

#[test]
fn cached_and_uncached_generation_give_the_same_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let gpt = trained(dir.path(), "");
    let prompt = gpt.tokenizer.encode("anna ").unwrap();
    // 40 new tokens with a 16-token context: the window slides past block_size.
    for (temperature, top_k, top_p) in [(0.0, None, None), (1.0, Some(10), None), (0.9, None, Some(0.9))] {
        let opts = SamplingOptions { max_new_tokens: 40, temperature, top_k, top_p, seed: 4, use_cache: true };
        let cached = generate(&gpt.model, &prompt, &opts).unwrap();
        let uncached = generate(&gpt.model, &prompt, &SamplingOptions { use_cache: false, ..opts.clone() }).unwrap();
        assert_eq!(cached.len(), 40);
        assert_eq!(cached, uncached, "temperature {temperature}");
    }
    let text = gpt
        .tokenizer
        .decode(
            &generate(
                &gpt.model,
                &prompt,
                &SamplingOptions { temperature: 0.0, max_new_tokens: 12, ..Default::default() },
            )
            .unwrap(),
        )
        .unwrap();
    assert!(text.contains(' '), "a trained model continues with words: {text:?}");
}
