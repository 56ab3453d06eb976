//! Attention against a plain reference computation, and masks that really hide what they must.

mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use taper::config::Kernels;
use taper::config::{NormPlacement, Positions};
use taper::kernels::Mask;
use taper::model::attention::{Attention, AttentionConfig};
use taper::model::gpt::init_policy;
use taper::model::{Gpt, Mode, ParamStore};

const D: usize = 8;
const H: usize = 2;

fn attention(params: &ParamStore) -> Attention {
    let cfg = common::tiny_config(std::path::Path::new("/tmp"), std::path::Path::new("/tmp/c.txt"), "");
    // Bias on, so the reference must add it.
    let attn = AttentionConfig {
        d_model: D,
        n_head: H,
        n_kv_head: H,
        bias: (true, true),
        dropout: 0.0,
        shaw_clip: None,
        qk_norm: None,
    };
    Attention::new(&attn, &init_policy(&cfg.model), params.var_builder(7, &Device::Cpu).pp("attn")).unwrap()
}

/// An evaluation-mode forward context on the backend `kernels` chooses for CPU f32.
fn mode(kernels: Kernels) -> Mode {
    let mut mode = Mode::eval();
    mode.choose_backend(kernels, &Device::Cpu, DType::F32);
    mode
}

fn weights(params: &ParamStore, name: &str) -> Vec<f64> {
    let t = params.get(&format!("attn.{name}")).unwrap();
    t.as_tensor().flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1().unwrap()
}

/// y = x W^T + b for one row.
fn project(x: &[f64], w: &[f64], b: &[f64]) -> Vec<f64> {
    (0..D).map(|o| b[o] + (0..D).map(|i| x[i] * w[o * D + i]).sum::<f64>()).collect()
}

/// Plain multi-head attention for one sequence; `allowed(i, j)` says if query i may see key j.
fn reference(params: &ParamStore, x: &[Vec<f64>], allowed: impl Fn(usize, usize) -> bool) -> Vec<Vec<f64>> {
    let p = |n: &str| (weights(params, &format!("{n}.weight")), weights(params, &format!("{n}.bias")));
    let (wq, bq) = p("q_proj");
    let (wk, bk) = p("k_proj");
    let (wv, bv) = p("v_proj");
    let (wo, bo) = p("out_proj");
    let q: Vec<_> = x.iter().map(|r| project(r, &wq, &bq)).collect();
    let k: Vec<_> = x.iter().map(|r| project(r, &wk, &bk)).collect();
    let v: Vec<_> = x.iter().map(|r| project(r, &wv, &bv)).collect();
    let hd = D / H;
    let t = x.len();
    let mut context = vec![vec![0.0; D]; t];
    for h in 0..H {
        for i in 0..t {
            let scores: Vec<f64> = (0..t)
                .map(|j| {
                    if !allowed(i, j) {
                        return f64::NEG_INFINITY;
                    }
                    (0..hd).map(|c| q[i][h * hd + c] * k[j][h * hd + c]).sum::<f64>() / (hd as f64).sqrt()
                })
                .collect();
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f64 = exps.iter().sum();
            for j in 0..t {
                for c in 0..hd {
                    context[i][h * hd + c] += exps[j] / total * v[j][h * hd + c];
                }
            }
        }
    }
    context.iter().map(|r| project(r, &wo, &bo)).collect()
}

fn input(batch: usize, t: usize) -> Vec<Vec<Vec<f64>>> {
    (0..batch)
        .map(|b| (0..t).map(|i| (0..D).map(|c| ((b * 31 + i * 7 + c * 3) as f64 * 0.37).sin()).collect()).collect())
        .collect()
}

fn to_tensor(x: &[Vec<Vec<f64>>]) -> Tensor {
    let (b, t) = (x.len(), x[0].len());
    let flat: Vec<f32> = x.iter().flatten().flatten().map(|&v| v as f32).collect();
    Tensor::from_vec(flat, (b, t, D), &Device::Cpu).unwrap()
}

fn assert_close(got: &Tensor, want: &[Vec<Vec<f64>>], rows: impl Fn(usize, usize) -> bool) {
    let got: Vec<Vec<Vec<f32>>> = got.to_vec3().unwrap();
    for (b, seq) in want.iter().enumerate() {
        for (i, row) in seq.iter().enumerate() {
            if !rows(b, i) {
                continue;
            }
            for (c, w) in row.iter().enumerate() {
                let g = got[b][i][c] as f64;
                assert!((g - w).abs() < 1e-5, "batch {b} pos {i} dim {c}: got {g}, want {w}");
            }
        }
    }
}

#[test]
fn causal_attention_matches_reference() {
    for kernels in [Kernels::Fused, Kernels::Composed] {
        let params = ParamStore::new();
        let attn = attention(&params);
        let x = input(2, 5);
        let got = attn.forward(&to_tensor(&x), None, &Mask::causal(0), None, None, &mut mode(kernels)).unwrap();
        let want: Vec<_> = x.iter().map(|seq| reference(&params, seq, |i, j| j <= i)).collect();
        assert_close(&got, &want, |_, _| true);
    }
}

#[test]
fn non_contiguous_input_gives_the_same_result() {
    // candle-nn's Linear computes a wrong forward on non-contiguous 3-D CPU input; ours must not.
    let params = ParamStore::new();
    let attn = attention(&params);
    let x = input(2, 5);
    let contiguous = to_tensor(&x);
    let strided = contiguous.transpose(0, 1).unwrap().contiguous().unwrap().transpose(0, 1).unwrap();
    assert!(!strided.is_contiguous());
    for kernels in [Kernels::Fused, Kernels::Composed] {
        let a = attn.forward(&contiguous, None, &Mask::none(), None, None, &mut mode(kernels)).unwrap();
        let b = attn.forward(&strided, None, &Mask::none(), None, None, &mut mode(kernels)).unwrap();
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-6, "{kernels:?}: {diff}");
    }
}

#[test]
fn padding_mask_hides_padded_keys() {
    let params = ParamStore::new();
    let attn = attention(&params);
    let lengths = [5usize, 3];
    let keep: Vec<u32> = lengths.iter().flat_map(|&l| (0..5).map(move |j| (j < l) as u32)).collect();
    let keep = Tensor::from_vec(keep, (2, 5), &Device::Cpu).unwrap();
    let x = input(2, 5);
    for kernels in [Kernels::Fused, Kernels::Composed] {
        let mask = Mask::padding(&keep);
        let got = attn.forward(&to_tensor(&x), None, &mask, None, None, &mut mode(kernels)).unwrap();
        let want: Vec<_> = x.iter().zip(lengths).map(|(seq, l)| reference(&params, seq, |_, j| j < l)).collect();
        assert_close(&got, &want, |b, i| i < lengths[b]);

        // Changing what sits in the padding changes nothing for real tokens.
        let mut changed = x.clone();
        for row in &mut changed[1][3..] {
            row.iter_mut().for_each(|v| *v = 100.0);
        }
        let again = attn.forward(&to_tensor(&changed), None, &mask, None, None, &mut mode(kernels)).unwrap();
        assert_close(&again, &want, |b, i| i < lengths[b]);
    }
}

fn tiny_gpt(norm: NormPlacement, positions: Positions) -> Gpt {
    let mut cfg = common::tiny_config(std::path::Path::new("/tmp"), std::path::Path::new("/tmp/c.txt"), "").model;
    cfg.norm = norm;
    cfg.positions = positions;
    let params = ParamStore::new();
    Gpt::new(&cfg, 20, DType::F32, params.var_builder(3, &Device::Cpu)).unwrap()
}

#[test]
fn causal_model_ignores_the_future() {
    for norm in [NormPlacement::Pre, NormPlacement::Post] {
        for positions in [Positions::Learned, Positions::Sinusoidal, Positions::Rope] {
            let model = tiny_gpt(norm, positions);
            let ids: Vec<u32> = (0..12).map(|i| (i * 7 % 20) as u32).collect();
            let mut changed = ids.clone();
            for id in &mut changed[6..] {
                *id = (*id + 5) % 20;
            }
            let run = |ids: &[u32]| {
                let t = Tensor::from_slice(ids, (1, ids.len()), &Device::Cpu).unwrap();
                model.forward(&t, &mut Mode::eval()).unwrap().squeeze(0).unwrap()
            };
            let (a, b) = (run(&ids), run(&changed));
            let past = (a.narrow(0, 0, 6).unwrap() - b.narrow(0, 0, 6).unwrap()).unwrap();
            let past_diff = past.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(past_diff < 1e-5, "{norm:?}/{positions:?}: positions before the change moved by {past_diff}");
            let future = (a.narrow(0, 6, 6).unwrap() - b.narrow(0, 6, 6).unwrap()).unwrap();
            let future_diff = future.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(future_diff > 1e-3, "{norm:?}/{positions:?}: the changed positions must differ");
        }
    }
}

#[test]
fn detached_weights_give_the_same_logits() {
    let cfg = common::tiny_config(std::path::Path::new("/tmp"), std::path::Path::new("/tmp/c.txt"), "").model;
    let params = ParamStore::new();
    let model = Gpt::new(&cfg, 20, DType::F32, params.var_builder(3, &Device::Cpu)).unwrap();
    let frozen =
        Gpt::new(&cfg, 20, DType::F32, VarBuilder::from_tensors(params.detached(), DType::F32, &Device::Cpu)).unwrap();
    let ids = Tensor::from_slice(&[1u32, 2, 3, 4], (1, 4), &Device::Cpu).unwrap();
    let a = model.forward(&ids, &mut Mode::eval()).unwrap();
    let b = frozen.forward(&ids, &mut Mode::eval()).unwrap();
    assert_eq!(a.to_vec3::<f32>().unwrap(), b.to_vec3::<f32>().unwrap());
}
