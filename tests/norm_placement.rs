//! The sandwich and DeepNorm placements: DeepNorm's constants are the paper's, its residual is
//! scaled by alpha and its value, output and FFN weights start beta times the post-LN draws
//! (the query and key weights do not); the sandwich's extra norms sit on each branch's output,
//! probed in the order they run.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use taper::config::ModelConfig;
use taper::model::norm::{DeepNorm, StackRole};
use taper::model::{Gpt, ParamStore};

fn model_config(extra: &str) -> ModelConfig {
    let dir = std::path::Path::new("/tmp");
    common::tiny_config(dir, &dir.join("c.txt"), extra).model
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-3
}

#[test]
fn deepnorm_constants_are_the_papers() {
    // Wang et al. 2022, Table 1, worked out for 12 and 6 layers.
    let alone = DeepNorm::for_stack(StackRole::Alone { layers: 12 });
    assert!(close(alone.alpha, 2.2134) && close(alone.beta, 0.3195), "{alone:?}"); // 24^1/4, 96^-1/4
    let encoder = DeepNorm::for_stack(StackRole::Encoder { layers: 6, decoder_layers: 6 });
    assert!(close(encoder.alpha, 1.4180) && close(encoder.beta, 0.4970), "{encoder:?}"); // 0.81 / 0.87 x 7776^(+-1/16)
    let decoder = DeepNorm::for_stack(StackRole::Decoder { layers: 6 });
    assert!(close(decoder.alpha, 2.0598) && close(decoder.beta, 0.3433), "{decoder:?}");
    // 18^1/4, 72^-1/4
}

#[test]
fn deepnorm_scales_the_branch_init_by_beta_and_the_residual_by_alpha() {
    let (post, deep) = (ParamStore::new(), ParamStore::new());
    let post_cfg = model_config("model.norm=post");
    let deep_cfg = model_config("model.norm=deepnorm");
    Gpt::new(&post_cfg, 20, DType::F32, post.var_builder(3, &Device::Cpu)).unwrap();
    Gpt::new(&deep_cfg, 20, DType::F32, deep.var_builder(3, &Device::Cpu)).unwrap();
    let DeepNorm { alpha, beta } = DeepNorm::for_stack(StackRole::Alone { layers: 2 });
    let (post_w, deep_w) = (post.detached(), deep.detached());
    for (name, want) in [
        ("blocks.0.attn.q_proj.weight", 1.0),
        ("blocks.0.attn.k_proj.weight", 1.0),
        ("blocks.0.attn.v_proj.weight", beta),
        ("blocks.1.attn.out_proj.weight", beta),
        ("blocks.0.mlp.fc1.weight", beta),
        ("blocks.1.mlp.fc2.weight", beta),
        ("tok_emb.weight", 1.0),
    ] {
        let ratio = (&deep_w[name] / (want * &post_w[name]).unwrap()).unwrap();
        let ratio: Vec<f32> = ratio.flatten_all().unwrap().to_vec1().unwrap();
        assert!(ratio.iter().all(|r| (r - 1.0).abs() < 1e-5), "{name}: not {want} x the post-LN draw");
    }
    // With block 0's attention output zeroed, ln_1 normalises alpha x (DeepNorm) or x (post-LN).
    let zeroed: HashMap<String, Tensor> = post_w
        .into_iter()
        .map(|(name, t)| match name.starts_with("blocks.0.attn.out_proj") {
            true => (name, t.zeros_like().unwrap()),
            false => (name, t),
        })
        .collect();
    let probe = |cfg: &ModelConfig| {
        let vb = VarBuilder::from_tensors(zeroed.clone(), DType::F32, &Device::Cpu);
        let model = Gpt::new(cfg, 20, DType::F32, vb).unwrap();
        let ids = Tensor::from_slice(&[3u32, 1, 4, 1, 5, 9], (1, 6), &Device::Cpu).unwrap();
        model.norm_input_rms(&ids).unwrap()
    };
    let (post_rms, deep_rms) = (probe(&post_cfg), probe(&deep_cfg));
    assert_eq!(deep_rms[0].0, "blocks.0.ln_1");
    let ratio = deep_rms[0].1 / post_rms[0].1;
    assert!((ratio - alpha).abs() < 1e-4, "ln_1's input is {ratio} x post-LN's, not alpha = {alpha}");
}

#[test]
fn the_sandwich_norms_each_branch_output_and_keeps_the_final_norm() {
    let params = ParamStore::new();
    let cfg = model_config("model.norm=sandwich");
    let model = Gpt::new(&cfg, 20, DType::F32, params.var_builder(4, &Device::Cpu)).unwrap();
    let ids = Tensor::from_slice(&[3u32, 1, 4, 1, 5, 9], (1, 6), &Device::Cpu).unwrap();
    let names: Vec<String> = model.norm_input_rms(&ids).unwrap().into_iter().map(|(n, _)| n).collect();
    let want = ["blocks.0.ln_1", "blocks.0.ln_1_out", "blocks.0.ln_2", "blocks.0.ln_2_out", "blocks.1.ln_1"];
    assert_eq!(&names[..5], want);
    assert_eq!(names.last().map(String::as_str), Some("ln_f"));
    assert!(params.get("blocks.1.ln_2_out.weight").is_some() && params.get("ln_f.weight").is_some());
    // Zeroing an output norm's gain silences its branch: the FFN of block 1 then adds nothing.
    let logits = |zero_gain: bool| {
        let tensors: HashMap<String, Tensor> = params
            .detached()
            .into_iter()
            .map(|(name, t)| match zero_gain && name.starts_with("blocks.1.ln_2_out") {
                true => (name, t.zeros_like().unwrap()),
                false => (name, t),
            })
            .collect();
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        let m = Gpt::new(&cfg, 20, DType::F32, vb).unwrap();
        m.forward(&ids, &mut taper::model::Mode::eval()).unwrap()
    };
    let no_ffn = logits(true);
    let mut without: HashMap<String, Tensor> = params.detached();
    for name in ["blocks.1.mlp.fc2.weight", "blocks.1.mlp.fc2.bias"] {
        without.insert(name.into(), without[name].zeros_like().unwrap());
    }
    let vb = VarBuilder::from_tensors(without, DType::F32, &Device::Cpu);
    let zero_fc2 = Gpt::new(&cfg, 20, DType::F32, vb).unwrap().forward(&ids, &mut taper::model::Mode::eval()).unwrap();
    // LN_out(0) is its bias (0 here): both leave block 1's FFN out of the sum.
    let diff = (no_ffn - zero_fc2).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff < 1e-5, "{diff}");
    assert!(logits(false).dims() == [1, 6, 20]);
}
