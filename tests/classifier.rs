//! The sequence-classification head: a tiny encoder fine-tunes to high accuracy on a separable
//! set (with padding), for both poolings; and the head loads from a BERT checkpoint with only
//! the classifier starting fresh.

mod common;

use candle_core::{DType, Device, Tensor};
use taper::config::{Kernels, ModelConfig, NormPlacement, OptimConfig};
use taper::model::encoder::{EncoderVocab, Pooling, SequenceClassifier};
use taper::model::{Mode, ParamStore};
use taper::optim::AdamW;
use taper::rng::Rng;

fn tiny_config(kernels: Kernels) -> (ModelConfig, EncoderVocab) {
    let json = r#"{"vocab_size": 40, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
            "intermediate_size": 64, "hidden_act": "gelu", "max_position_embeddings": 16,
            "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}"#;
    common::bert_model(json, NormPlacement::Post, kernels)
}

/// `n` sequences of 3-10 tokens after [CLS] = 1, padded with 0: label 0 draws its tokens from
/// 3..20, label 1 from 21..40.
fn batch(rng: &mut Rng, n: usize) -> (Tensor, Tensor, Tensor) {
    let (mut ids, mut mask, mut labels) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        let label = rng.below(2) as u32;
        let len = 3 + rng.below(8);
        ids.push(1u32);
        for i in 0..11 {
            let real = i < len;
            let token = if label == 0 { 3 + rng.below(17) } else { 21 + rng.below(19) };
            ids.push(if real { token as u32 } else { 0 });
            mask.push(real as u32);
        }
        labels.push(label);
    }
    let mask: Vec<u32> = mask.chunks(11).flat_map(|m| std::iter::once(1).chain(m.iter().copied())).collect();
    let d = &Device::Cpu;
    (
        Tensor::from_vec(ids, (n, 12), d).unwrap(),
        Tensor::from_vec(mask, (n, 12), d).unwrap(),
        Tensor::from_vec(labels, n, d).unwrap(),
    )
}

/// Fine-tunes a fresh tiny classifier for `steps` steps on padded batches (dropout 0.1);
/// returns it and its training losses.
fn fine_tune(pooling: Pooling, kernels: Kernels, steps: u64) -> (SequenceClassifier, Vec<f32>) {
    let params = ParamStore::new();
    let vb = params.var_builder(3, &Device::Cpu);
    let (cfg, vocab) = tiny_config(kernels);
    let model = SequenceClassifier::new(&cfg, vocab, 2, pooling, common::bert_names(&cfg, vb)).unwrap();
    let optim = OptimConfig { lr: 3e-3, ..Default::default() };
    let mut opt = AdamW::new(params.named_vars(), &optim, &model.encoder.embedding_tables()).unwrap();
    let vars: Vec<_> = params.named_vars().into_iter().map(|(_, v)| v).collect();
    let mut rng = Rng::new(11);
    let mut losses = Vec::new();
    for step in 0..steps {
        let (ids, mask, labels) = batch(&mut rng, 16);
        let mut mode = Mode::train(Rng::new(step));
        let logits = model.forward(&ids, None, Some(&mask), &mut mode).unwrap();
        let loss = (mode.backend().cross_entropy_sum(&logits, &labels).unwrap() / 16.0).unwrap();
        losses.push(loss.to_scalar::<f32>().unwrap());
        let grads = loss.backward().unwrap();
        let grads: Vec<_> = vars.iter().map(|v| grads.get(v.as_tensor()).cloned()).collect();
        opt.step(&grads, 3e-3, None, None).unwrap();
    }
    (model, losses)
}

#[test]
fn a_tiny_encoder_fine_tunes_to_high_accuracy() {
    for pooling in [Pooling::Cls, Pooling::Mean] {
        let (model, _) = fine_tune(pooling, Kernels::Fused, 120);
        let (ids, mask, labels) = batch(&mut Rng::new(999), 200);
        let logits = model.forward(&ids, None, Some(&mask), &mut Mode::eval()).unwrap();
        let predicted: Vec<u32> = logits.argmax(1).unwrap().to_vec1().unwrap();
        let labels: Vec<u32> = labels.to_vec1().unwrap();
        let scores = taper::classification_metrics::classification_scores(&predicted, &labels, 2).unwrap();
        eprintln!("{pooling:?} pooling: held-out accuracy {}, macro-F1 {:.4}", scores.accuracy, scores.macro_f1);
        assert!(scores.accuracy >= 0.95, "{pooling:?}: held-out accuracy {}", scores.accuracy);
    }
}

#[test]
fn fused_and_composed_encoders_train_alike_with_padding() {
    // The CPU kernels and candle's ops: same losses step by step, dropout masks included.
    for pooling in [Pooling::Cls, Pooling::Mean] {
        let (_, fused) = fine_tune(pooling, Kernels::Fused, 20);
        let (_, composed) = fine_tune(pooling, Kernels::Composed, 20);
        for (step, (a, b)) in fused.iter().zip(&composed).enumerate() {
            assert!((a - b).abs() < 1e-4, "{pooling:?} step {step}: fused {a} vs composed {b}");
        }
    }
}

#[test]
fn the_head_loads_from_a_bert_checkpoint_with_a_fresh_classifier() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/models/all-MiniLM-L6-v2");
    assert!(dir.join("model.safetensors").is_file(), "run scripts/fetch-minilm.sh (scripts/test.sh does)");
    let arch = taper::config::Architecture::EncoderOnly;
    let mut cfg = ModelConfig { arch, norm: NormPlacement::Post, ..ModelConfig::defaults() };
    let pretrained = taper::pretrained::Pretrained::open(dir.to_str().unwrap(), &mut cfg).unwrap();
    let params = ParamStore::new();
    let vb = common::bert_names(&cfg, params.var_builder(0, &Device::Cpu));
    let model = SequenceClassifier::new(&cfg, pretrained.encoder_vocab(), 3, Pooling::Cls, vb).unwrap();
    let report = pretrained.load_task_model(&params, &cfg, &Device::Cpu, &["classifier"]).unwrap();
    assert_eq!(report.fresh, vec!["classifier.bias", "classifier.weight"]);
    let ids = Tensor::new(&[[101u32, 7592, 102]], &Device::Cpu).unwrap();
    let logits = model.forward(&ids, None, None, &mut Mode::eval()).unwrap();
    assert_eq!(logits.dims(), &[1, 3]);
    assert_eq!(logits.dtype(), DType::F32);
}
