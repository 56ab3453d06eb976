//! The architecture options of `[model]` beyond GPT-2's (RMSNorm, gated and other FFN
//! activations, grouped-query attention, ALiBi, T5 and Shaw relative positions, none; sandwich and DeepNorm
//! placements; QK-norm): for each, every parameter learns, a tiny model's
//! loss falls, cached decoding equals uncached, the causal mask hides the future; and GQA is
//! multi-head attention with its key/value heads shared.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use taper::config::ModelConfig;
use taper::model::{Gpt, Mode, ParamStore};

/// The options, one model each, as `--set` overrides of the tiny config (4 heads, 32 wide).
const VARIANTS: [&str; 22] = [
    "model.norm_kind=rms",
    "model.activation=swiglu",
    "model.activation=geglu",
    "model.activation=reglu",
    "model.activation=gelu-tanh model.norm=post",
    "model.activation=silu",
    "model.n_kv_head=2 model.positions=rope",
    "model.n_kv_head=1",
    "model.positions=alibi",
    "model.positions=alibi model.n_head=8 model.d_model=48 model.norm=post model.bias=false",
    "model.positions=t5 model.relative_buckets=8 model.relative_max_distance=16",
    "model.positions=shaw model.shaw_clip=3",
    "model.positions=none",
    "model.norm=sandwich",
    "model.norm=deepnorm",
    "model.norm=sandwich model.norm_kind=rms model.activation=swiglu",
    "model.activation=gelu-tanh",
    "model.activation=geglu-tanh model.norm_kind=rms",
    "model.qk_norm=true",
    // Biases per linear group: Qwen2's (query/key/value alone), and the FFN's alone.
    "model.bias=false model.qkv_bias=true",
    "model.bias=false model.ffn_bias=true model.norm_kind=rms",
    "model.qk_norm=true model.norm_kind=rms model.positions=rope model.n_kv_head=2",
];

/// The Llama recipe in one model.
const LLAMA: &str =
    "model.norm_kind=rms model.activation=swiglu model.positions=rope model.n_kv_head=2 model.bias=false";

fn model_config(extra: &str) -> ModelConfig {
    let dir = std::path::Path::new("/tmp");
    common::tiny_config(dir, &dir.join("c.txt"), &format!("model.n_head=4 {extra}")).model
}

fn ids(values: &[u32]) -> Tensor {
    Tensor::from_slice(values, (1, values.len()), &Device::Cpu).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn every_parameter_of_every_variant_gets_a_gradient() {
    for extra in VARIANTS.iter().copied().chain([LLAMA]) {
        for kernels in ["fused", "composed"] {
            let cfg = model_config(&format!("{extra} model.kernels={kernels} model.dropout=0.1"));
            let params = ParamStore::new();
            let model = Gpt::new(&cfg, 20, DType::F32, params.var_builder(1, &Device::Cpu)).unwrap();
            let x = Tensor::from_vec((0..30u32).map(|i| i % 20).collect(), (3, 10), &Device::Cpu).unwrap();
            let y = Tensor::from_vec((0..30u32).map(|i| (i + 1) % 20).collect(), (3, 10), &Device::Cpu).unwrap();
            let loss = model.loss_sum(&x, &y, &mut Mode::train(taper::rng::Rng::new(5))).unwrap();
            let grads = loss.backward().unwrap();
            for (name, var) in params.named_vars() {
                let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{extra}: no gradient for {name}"));
                let n = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(n > 0.0 && n.is_finite(), "{extra} ({kernels}): gradient of {name} is {n}");
            }
        }
    }
}

#[test]
fn fused_and_composed_kernels_agree_for_every_variant() {
    for extra in VARIANTS.iter().copied().chain([LLAMA]) {
        let logits = |kernels: &str| {
            let cfg = model_config(&format!("{extra} model.kernels={kernels}"));
            let model = Gpt::new(&cfg, 20, DType::F32, ParamStore::new().var_builder(2, &Device::Cpu)).unwrap();
            model.forward(&ids(&[3, 1, 4, 1, 5, 9, 2, 6]), &mut Mode::eval()).unwrap()
        };
        let diff = max_diff(&logits("fused"), &logits("composed"));
        assert!(diff < 1e-5, "{extra}: fused and composed logits differ by {diff}");
    }
}

#[test]
fn fused_and_composed_kernels_give_the_same_gradients_for_every_variant() {
    for extra in VARIANTS.iter().copied().chain([LLAMA]) {
        let grads = |kernels: &str| {
            let cfg = model_config(&format!("{extra} model.kernels={kernels}"));
            let params = ParamStore::new();
            let model = Gpt::new(&cfg, 20, DType::F32, params.var_builder(8, &Device::Cpu)).unwrap();
            let x = Tensor::from_vec((0..30u32).map(|i| (i * 3) % 20).collect(), (3, 10), &Device::Cpu).unwrap();
            let y = Tensor::from_vec((0..30u32).map(|i| (i * 3 + 1) % 20).collect(), (3, 10), &Device::Cpu).unwrap();
            let loss = model.loss_sum(&x, &y, &mut Mode::train(taper::rng::Rng::new(5))).unwrap();
            let store = loss.backward().unwrap();
            params
                .named_vars()
                .into_iter()
                .map(|(n, v)| (n, store.get(v.as_tensor()).unwrap().clone()))
                .collect::<Vec<_>>()
        };
        for ((name, a), (_, b)) in grads("fused").iter().zip(grads("composed")) {
            let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1e-3);
            let diff = max_diff(a, &b) / scale;
            assert!(diff < 1e-3, "{extra}: the gradient of {name} differs by {diff} (relative) between kernels");
        }
    }
}

#[test]
fn cached_decoding_equals_uncached_and_the_future_stays_hidden() {
    for extra in VARIANTS.iter().copied().chain([LLAMA]) {
        let cfg = model_config(extra);
        let model = Gpt::new(&cfg, 20, DType::F32, ParamStore::new().var_builder(3, &Device::Cpu)).unwrap();
        let sequence = [7u32, 2, 9, 4, 4, 1, 8, 3];
        let full = model.forward(&ids(&sequence), &mut Mode::eval()).unwrap().squeeze(0).unwrap(); // (T, V)
        let mut caches = model.new_caches();
        for (i, &token) in sequence.iter().enumerate() {
            let cached = model.forward_cached(&ids(&[token]), &mut caches).unwrap().squeeze(0).unwrap();
            let diff = max_diff(&cached, &full.get(i).unwrap());
            assert!(diff < 1e-4, "{extra}: position {i}: cached and uncached logits differ by {diff}");
        }
        // Changing the last token changes nothing before it.
        let mut changed = sequence;
        changed[7] = 11;
        let other = model.forward(&ids(&changed), &mut Mode::eval()).unwrap().squeeze(0).unwrap();
        let before = max_diff(&full.narrow(0, 0, 7).unwrap(), &other.narrow(0, 0, 7).unwrap());
        assert_eq!(before, 0.0, "{extra}: the last token leaked into earlier positions");
        assert!(
            max_diff(&full.get(7).unwrap(), &other.get(7).unwrap()) > 0.0,
            "{extra}: the last position ignores its token"
        );
    }
}

/// Rows of `w` (n_kv heads of `head_dim` rows) repeated so that query head h reads kv head h / group.
fn repeat_heads(w: &Tensor, n_kv: usize, group: usize, head_dim: usize) -> Tensor {
    let parts: Vec<Tensor> =
        (0..n_kv * group).map(|h| w.narrow(0, (h / group) * head_dim, head_dim).unwrap()).collect();
    Tensor::cat(&parts, 0).unwrap()
}

#[test]
fn grouped_query_attention_is_multi_head_attention_with_shared_key_value_heads() {
    for extra in ["model.n_kv_head=2", "model.n_kv_head=1", "model.n_kv_head=2 model.positions=rope"] {
        let cfg = model_config(extra);
        let params = ParamStore::new();
        let gqa = Gpt::new(&cfg, 20, DType::F32, params.var_builder(4, &Device::Cpu)).unwrap();
        let (n_kv, head_dim) = (cfg.n_kv_head(), cfg.head_dim());
        let group = cfg.n_head / n_kv;
        let widened: HashMap<String, Tensor> = params
            .detached()
            .into_iter()
            .map(|(name, t)| match name.contains("k_proj") || name.contains("v_proj") {
                true => {
                    let t = repeat_heads(&t, n_kv, group, head_dim);
                    (name, t)
                }
                false => (name, t),
            })
            .collect();
        let mha_cfg = ModelConfig { n_kv_head: None, ..cfg.clone() };
        let mha =
            Gpt::new(&mha_cfg, 20, DType::F32, VarBuilder::from_tensors(widened, DType::F32, &Device::Cpu)).unwrap();
        let x = ids(&[5, 3, 8, 1, 0, 2, 7]);
        let diff = max_diff(&gqa.forward(&x, &mut Mode::eval()).unwrap(), &mha.forward(&x, &mut Mode::eval()).unwrap());
        assert!(diff < 1e-5, "{extra}: GQA and the widened multi-head model differ by {diff}");
    }
}

#[test]
fn gated_ffns_default_to_llamas_hidden_width_and_bad_head_counts_are_refused() {
    assert_eq!(model_config("model.activation=swiglu").d_ff(), 96); // 8/3 * 32 = 85.3 -> 96
    assert_eq!(model_config("model.activation=gelu").d_ff(), 128);
    assert_eq!(model_config("model.activation=swiglu model.d_ff=50").d_ff(), 50);
    let err = taper::config::Config::from_toml_str(
        "[model]\nn_layer = 1\nn_head = 4\nn_kv_head = 3\nd_model = 32\nblock_size = 8\n[data]\npath = \"c.txt\"\n\
         [train]\nsteps = 1\nbatch_size = 1\n",
        &[],
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("`model.n_kv_head` (3) must divide `model.n_head` (4)"), "{err:#}");
    let err = taper::config::Config::from_toml_str(
        "[model]\narch = \"encoder-only\"\nn_layer = 1\nn_head = 4\nd_model = 32\nblock_size = 8\nnorm_kind = \"rms\"\n\
         [task]\nkind = \"masked-lm\"\n[data]\npath = \"c.txt\"\n[train]\nsteps = 1\nbatch_size = 1\n",
        &[],
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("an encoder-only model is a BERT"), "{err:#}");
}

#[test]
fn a_tiny_model_of_each_variant_learns() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path(), &common::pattern_corpus(600));
    for (i, extra) in VARIANTS.iter().copied().chain([LLAMA]).enumerate() {
        let run_dir = dir.path().join(format!("v{i}"));
        std::fs::create_dir_all(&run_dir).unwrap();
        let cfg = common::tiny_config(&run_dir, &corpus, &format!("model.n_head=4 train.steps=150 {extra}"));
        let report =
            taper::train::train(cfg, &taper::train::TrainOptions { quiet: true, ..Default::default() }).unwrap();
        let (first, last) = (report.losses[0].1, report.losses.last().unwrap().1);
        // Uniform over the ~20 characters is ln 20 = 3.0; the pattern is mostly predictable (the
        // bound of tests/training.rs for the GPT-2 shape).
        assert!(first > 2.5 && last < 1.2, "{extra}: loss {first} -> {last}");
    }
}

#[test]
fn qk_norm_makes_the_scores_blind_to_the_scale_of_queries_and_keys() {
    // RMSNorm of each head's q and k: multiplying W_q and W_k by 10 changes nothing with
    // QK-norm, and changes the logits without it.
    for (extra, invariant) in [("model.qk_norm=true model.norm_kind=rms model.bias=false", true), ("", false)] {
        let cfg = model_config(extra);
        let params = ParamStore::new();
        let model = Gpt::new(&cfg, 20, DType::F32, params.var_builder(6, &Device::Cpu)).unwrap();
        let scaled: HashMap<String, Tensor> = params
            .detached()
            .into_iter()
            .map(|(name, t)| match name.contains("q_proj") || name.contains("k_proj") {
                true => (name, (t * 10.0).unwrap()),
                false => (name, t),
            })
            .collect();
        let other = Gpt::new(&cfg, 20, DType::F32, VarBuilder::from_tensors(scaled, DType::F32, &Device::Cpu)).unwrap();
        let x = ids(&[5, 3, 8, 1, 0, 2, 7]);
        let diff =
            max_diff(&model.forward(&x, &mut Mode::eval()).unwrap(), &other.forward(&x, &mut Mode::eval()).unwrap());
        match invariant {
            true => assert!(diff < 1e-4, "QK-norm: scaled W_q, W_k changed the logits by {diff}"),
            false => assert!(diff > 1e-3, "without QK-norm the scale of W_q, W_k must matter ({diff})"),
        }
    }
}
