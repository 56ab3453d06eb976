//! The conformance of the kernel seam's two backends: every CPU kernel (`taper::kernels::cpu`)
//! against candle's composed ops, in f64 on random inputs (forward values and the gradients of
//! a random projection of the output, masked rows included), and whole models trained both ways.

use candle_core::{DType, Device, Tensor, Var, D};
use taper::kernels::causal_mask;
use taper::kernels::cpu as fused;
use taper::model::positions::Rope;
use taper::rng::Rng;

fn random(shape: &[usize], seed: u64, scale: f64) -> Var {
    let mut rng = Rng::new(seed);
    let n: usize = shape.iter().product();
    let values: Vec<f64> = (0..n).map(|_| rng.normal() * scale).collect();
    Var::from_tensor(&Tensor::from_vec(values, shape, &Device::Cpu).unwrap()).unwrap()
}

/// Inverted-dropout multipliers as `Mode::dropout_mask` makes them: 0, or 1/keep with
/// probability `keep`.
fn dropout_multipliers(n: usize, keep: f64, rng: &mut Rng) -> Vec<f32> {
    (0..n).map(|_| if rng.uniform() < keep { (1.0 / keep) as f32 } else { 0.0 }).collect()
}

/// The Add & Norm around `branch` from composed ops: pre-LN x + drop(f(LN(x))), post-LN
/// LN(x + drop(f(x))), `drop` multiplying by `residual_mask` when there is one.
fn composed_sublayer(
    x: &Tensor,
    norm: impl Fn(&Tensor) -> Tensor,
    branch: impl Fn(&Tensor) -> Tensor,
    residual_mask: Option<&Tensor>,
    pre_norm: bool,
) -> Tensor {
    let dropped = |h: &Tensor| match residual_mask {
        Some(mask) => (branch(h) * mask).unwrap(),
        None => branch(h),
    };
    if pre_norm {
        (x + dropped(&norm(x))).unwrap()
    } else {
        norm(&(x + dropped(x)).unwrap())
    }
}

/// A sub-layer's inputs [x, ln.w, ln.b, W1, b1, W2, b2] with the branch's biases (true), and
/// without them (false: [x, ln.w, ln.b, W1, W2]).
fn bias_variants(inputs: &[Var; 7]) -> [(bool, Vec<Var>); 2] {
    [(true, inputs.to_vec()), (false, [0, 1, 2, 3, 5].map(|i| inputs[i].clone()).to_vec())]
}

/// The branch parameters (W1, b1, W2, b2) among tensors laid out as `bias_variants` makes them.
fn branch_params(t: &[Tensor], bias: bool) -> (Tensor, Option<Tensor>, Tensor, Option<Tensor>) {
    match bias {
        true => (t[3].clone(), Some(t[4].clone()), t[5].clone(), Some(t[6].clone())),
        false => (t[3].clone(), None, t[4].clone(), None),
    }
}

/// The packed sub-layer parameters for those tensors (see `pack_parameters`).
fn packed(t: &[Tensor], bias: bool) -> (Tensor, Tensor) {
    let (w1, b1, w2, b2) = branch_params(t, bias);
    let first: Vec<&Tensor> = [Some(&w1), b1.as_ref()].into_iter().flatten().collect();
    let second: Vec<&Tensor> = [Some(&w2), b2.as_ref()].into_iter().flatten().collect();
    fused::pack_parameters(&[&t[1], &t[2]], &first, &second).unwrap()
}

/// x W^T (+ b), composed.
fn composed_linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Tensor {
    let y = x.broadcast_matmul(&w.t().unwrap()).unwrap();
    b.map_or(y.clone(), |b| y.broadcast_add(b).unwrap())
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
}

/// Compares f(inputs) computed fused and composed: outputs, and the gradients of
/// sum(output * probe) with respect to every input.
fn check(
    name: &str,
    inputs: &[Var],
    fused_fn: impl Fn(&[Tensor]) -> Tensor,
    composed_fn: impl Fn(&[Tensor]) -> Tensor,
    tol: f64,
) {
    let xs: Vec<Tensor> = inputs.iter().map(|v| v.as_tensor().clone()).collect();
    let (a, b) = (fused_fn(&xs), composed_fn(&xs));
    assert_eq!(a.dims(), b.dims(), "{name}: shapes");
    let d = max_diff(&a, &b);
    assert!(d < tol, "{name}: forward differs by {d}");
    let probe = random(a.dims(), 99, 1.0);
    let ga = (a * probe.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
    let gb = (b * probe.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
    for (i, v) in inputs.iter().enumerate() {
        let (x, y) = (ga.get(v.as_tensor()).unwrap(), gb.get(v.as_tensor()).unwrap());
        let d = max_diff(x, y);
        assert!(d < tol, "{name}: gradient of input {i} differs by {d}");
    }
}

#[test]
fn layer_norm() {
    // Rows of 48 and 2 * 7 * 48 > the parallel threshold, to cover both code paths.
    for rows in [3usize, 400] {
        let x = random(&[rows, 48], 1, 3.0);
        let w = random(&[48], 2, 1.0);
        let b = random(&[48], 3, 1.0);
        check(
            "layer_norm",
            &[x, w, b],
            |t| fused::layer_norm(&t[0], &t[1], &t[2], 1e-5).unwrap(),
            |t| {
                let mean = t[0].mean_keepdim(D::Minus1).unwrap();
                let c = t[0].broadcast_sub(&mean).unwrap();
                let var = c.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
                let n = c.broadcast_div(&(var + 1e-5).unwrap().sqrt().unwrap()).unwrap();
                n.broadcast_mul(&t[1]).unwrap().broadcast_add(&t[2]).unwrap()
            },
            1e-10,
        );
    }
}

#[test]
fn rms_norm() {
    // 3 rows (one task) and 400 (several parallel tasks), 3-D input too.
    for shape in [vec![3usize, 48], vec![400, 48], vec![2, 5, 48]] {
        let x = random(&shape, 4, 3.0);
        let w = random(&[48], 5, 1.0);
        check(
            "rms_norm",
            &[x, w],
            |t| fused::rms_norm(&t[0], &t[1], 1e-5).unwrap(),
            |t| {
                let ms = t[0].sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
                let n = t[0].broadcast_div(&(ms + 1e-5).unwrap().sqrt().unwrap()).unwrap();
                n.broadcast_mul(&t[1]).unwrap()
            },
            1e-10,
        );
    }
}

#[test]
fn gelu() {
    // A&S erf is accurate to 1.5e-7 absolute.
    let x = random(&[50, 400], 4, 3.0);
    check("gelu", &[x], |t| fused::gelu(&t[0]).unwrap(), |t| t[0].gelu_erf().unwrap(), 1e-6);
}

#[test]
fn add_row_vector() {
    let x = random(&[4, 6, 8], 5, 1.0);
    let bias = random(&[8], 6, 1.0);
    check(
        "bias",
        &[x.clone(), bias],
        |t| fused::add_row_vector(&t[0], &t[1]).unwrap(),
        |t| t[0].broadcast_add(&t[1]).unwrap(),
        1e-12,
    );
    let pos = random(&[6, 8], 7, 1.0);
    check(
        "positions",
        &[x, pos],
        |t| fused::add_row_vector(&t[0], &t[1]).unwrap(),
        |t| t[0].broadcast_add(&t[1]).unwrap(),
        1e-12,
    );
}

#[test]
fn causal_softmax_with_offset_and_masked_entries() {
    let scale = 0.35;
    for (t_q, offset) in [(6usize, 0usize), (3, 4), (1, 7)] {
        let x = random(&[2, 3, t_q, offset + t_q], 8, 2.0);
        let bias = causal_mask(t_q, offset, &Device::Cpu).unwrap().to_dtype(DType::F64).unwrap();
        check(
            "causal softmax",
            &[x],
            |t| fused::scaled_softmax(&t[0], scale, Some(offset)).unwrap(),
            |t| {
                let s = (&t[0] * scale).unwrap().broadcast_add(&bias).unwrap();
                let e = s.broadcast_sub(&s.max_keepdim(D::Minus1).unwrap()).unwrap().exp().unwrap();
                e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap()
            },
            1e-4, // the composed form leaves e^-1e4-sized weights where the fused one has 0
        );
    }
    // Big enough for the parallel path, and unmasked.
    let x = random(&[4, 4, 32, 32], 9, 2.0);
    check(
        "softmax",
        &[x],
        |t| fused::scaled_softmax(&t[0], scale, None).unwrap(),
        |t| {
            let s = (&t[0] * scale).unwrap();
            let e = s.broadcast_sub(&s.max_keepdim(D::Minus1).unwrap()).unwrap().exp().unwrap();
            e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap()
        },
        1e-12,
    );
}

#[test]
fn masked_entries_get_exactly_zero_weight_and_gradient() {
    let x = random(&[1, 1, 4, 4], 10, 1.0);
    let y = fused::scaled_softmax(x.as_tensor(), 1.0, Some(0)).unwrap();
    let rows: Vec<Vec<f64>> = y.squeeze(0).unwrap().squeeze(0).unwrap().to_vec2().unwrap();
    for (i, row) in rows.iter().enumerate() {
        assert!(row[i + 1..].iter().all(|&p| p == 0.0), "row {i}: {row:?}");
        assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }
    let g = (y * random(&[1, 1, 4, 4], 11, 1.0).as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
    let g: Vec<Vec<f64>> = g.get(x.as_tensor()).unwrap().squeeze(0).unwrap().squeeze(0).unwrap().to_vec2().unwrap();
    for (i, row) in g.iter().enumerate() {
        assert!(row[i + 1..].iter().all(|&v| v == 0.0), "the future gets no gradient: row {i}: {row:?}");
    }
}

#[test]
fn linear_with_and_without_bias() {
    // 3 x 5 rows stay on one thread; 400 x 64 x 48 takes the row-block parallel path.
    for (shape, out) in [(vec![3usize, 5, 7], 6usize), (vec![400, 64], 48)] {
        let fan_in = *shape.last().unwrap();
        let x = random(&shape, 20, 1.0);
        let w = random(&[out, fan_in], 21, 0.5);
        let b = random(&[out], 22, 1.0);
        let composed = |x: &Tensor, w: &Tensor| x.broadcast_matmul(&w.t().unwrap()).unwrap();
        check(
            "linear",
            &[x.clone(), w.clone(), b],
            |t| fused::linear(&t[0], &t[1], Some(&t[2])).unwrap(),
            |t| composed(&t[0], &t[1]).broadcast_add(&t[2]).unwrap(),
            1e-10,
        );
        check(
            "linear without bias",
            &[x, w],
            |t| fused::linear(&t[0], &t[1], None).unwrap(),
            |t| composed(&t[0], &t[1]),
            1e-10,
        );
    }
}

#[test]
fn linear_then_gelu_in_one_node() {
    // A&S erf is accurate to 1.5e-7 absolute, as in `gelu`; dW sums that error over 400 rows.
    for (shape, out) in [(vec![3usize, 5, 7], 6usize), (vec![400, 64], 48)] {
        let fan_in = *shape.last().unwrap();
        let inputs = [random(&shape, 23, 1.0), random(&[out, fan_in], 24, 0.5), random(&[out], 25, 1.0)];
        check(
            "linear + gelu",
            &inputs,
            |t| fused::linear_gelu(&t[0], &t[1], &t[2]).unwrap(),
            |t| t[0].broadcast_matmul(&t[1].t().unwrap()).unwrap().broadcast_add(&t[2]).unwrap().gelu_erf().unwrap(),
            1e-5,
        );
        // Inputs that record no graph take the forward-only path (GELU' not kept): same values.
        let tracked: Vec<Tensor> = inputs.iter().map(|v| v.as_tensor().clone()).collect();
        let detached: Vec<Tensor> = tracked.iter().map(Tensor::detach).collect();
        let with_graph = fused::linear_gelu(&tracked[0], &tracked[1], &tracked[2]).unwrap();
        let without = fused::linear_gelu(&detached[0], &detached[1], &detached[2]).unwrap();
        assert!(!without.track_op());
        assert_eq!(max_diff(&with_graph, &without), 0.0, "linear + gelu without a graph");
    }
}

/// Attention from composed candle ops: heads split out, (B, H, T, hd) products, additive mask,
/// softmax, dropout multipliers, heads merged.
fn composed_attention(t: &[Tensor], n_head: usize, bias: Option<&Tensor>, dropout: Option<&Tensor>) -> Tensor {
    let split = |x: &Tensor| {
        let (b, s, d) = x.dims3().unwrap();
        x.reshape((b, s, n_head, d / n_head)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap()
    };
    let (q, k, v) = (split(&t[0]), split(&t[1]), split(&t[2]));
    let scale = 1.0 / (q.dim(3).unwrap() as f64).sqrt();
    let mut s = (q.matmul(&k.t().unwrap()).unwrap() * scale).unwrap();
    if let Some(bias) = bias {
        s = s.broadcast_add(bias).unwrap();
    }
    let e = s.broadcast_sub(&s.max_keepdim(D::Minus1).unwrap()).unwrap().exp().unwrap();
    let mut p = e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap();
    if let Some(mask) = dropout {
        p = (p * mask).unwrap();
    }
    let (b, t_q, d) = t[0].dims3().unwrap();
    p.matmul(&v).unwrap().transpose(1, 2).unwrap().reshape((b, t_q, d)).unwrap()
}

#[test]
fn attention_causal_with_offset_cross_and_parallel() {
    // (batch, query length, key length, width, heads, causal offset)
    let cases = [
        (2usize, 6usize, 6usize, 8usize, 2usize, Some(0usize)),
        (2, 3, 7, 8, 2, Some(4)),
        (3, 5, 7, 12, 3, None),
        (4, 32, 32, 32, 4, Some(0)),
        // Several 64-row query blocks, each skipping the keys none of its rows sees.
        (1, 150, 150, 8, 2, Some(0)),
        (2, 70, 90, 8, 2, Some(20)),
    ];
    for (case, &(b, t_q, t_k, d, n_head, offset)) in cases.iter().enumerate() {
        let seed = 30 + 3 * case as u64;
        let inputs =
            [random(&[b, t_q, d], seed, 1.0), random(&[b, t_k, d], seed + 1, 1.0), random(&[b, t_k, d], seed + 2, 1.0)];
        let bias = offset.map(|o| causal_mask(t_q, o, &Device::Cpu).unwrap().to_dtype(DType::F64).unwrap());
        let mask = fused::AttentionMask { causal_offset: offset, key_bias: None, alibi: None };
        check(
            &format!("attention case {case}"),
            &inputs,
            |t| fused::attention(&t[0], &t[1], &t[2], n_head, mask.clone(), None).unwrap(),
            |t| composed_attention(t, n_head, bias.as_ref(), None),
            1e-10,
        );
    }
}

#[test]
fn alibi_inside_the_attention_kernel_is_the_additive_bias() {
    // (batch, query length, key length, causal offset, key padding): decoding with a cache puts
    // the queries at the last key positions; an encoder's ALiBi is symmetric.
    let cases = [(2usize, 6usize, 6usize, Some(0usize), false), (2, 3, 7, Some(4), false), (3, 5, 5, None, true)];
    let (d, n_head) = (12usize, 3usize);
    let slopes = taper::model::positions::alibi_slopes(n_head);
    for (case, &(b, t_q, t_k, offset, padded)) in cases.iter().enumerate() {
        let seed = 80 + 3 * case as u64;
        let inputs =
            [random(&[b, t_q, d], seed, 1.0), random(&[b, t_k, d], seed + 1, 1.0), random(&[b, t_k, d], seed + 2, 1.0)];
        let keep: Vec<f32> =
            (0..b * t_k).map(|i| if padded && i % t_k == t_k - 1 && i > t_k { 0.0 } else { 1.0 }).collect();
        let keep = Tensor::from_vec(keep, (b, t_k), &Device::Cpu).unwrap();
        let padding = taper::kernels::padding_mask(&keep).unwrap();
        let mut additive =
            taper::kernels::alibi_bias(&slopes, t_q, t_k, &Device::Cpu).unwrap().broadcast_add(&padding).unwrap();
        if let Some(o) = offset {
            additive = additive.broadcast_add(&causal_mask(t_q, o, &Device::Cpu).unwrap()).unwrap();
        }
        let additive = additive.to_dtype(DType::F64).unwrap();
        let key_bias = padded.then(|| padding.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let mask = fused::AttentionMask { causal_offset: offset, key_bias, alibi: Some(slopes.clone()) };
        check(
            &format!("ALiBi attention case {case}"),
            &inputs,
            |t| fused::attention(&t[0], &t[1], &t[2], n_head, mask.clone(), None).unwrap(),
            |t| composed_attention(t, n_head, Some(&additive), None),
            1e-10,
        );
    }
}

#[test]
fn packed_self_attention() {
    // Q, K and V side by side in one (B, T, 3D), as the stacked projection makes them.
    for (t, offset, dropout) in
        [(6usize, Some(0usize), false), (5, None, true), (32, Some(0), true), (130, Some(0), true)]
    {
        let (b, d, n_head) = (3usize, 12usize, 3usize);
        let qkv = random(&[b, t, 3 * d], 50 + t as u64, 1.0);
        let bias = offset.map(|o| causal_mask(t, o, &Device::Cpu).unwrap().to_dtype(DType::F64).unwrap());
        let mut rng = Rng::new(51);
        let multipliers: Vec<f32> = dropout_multipliers(b * n_head * t * t, 0.8, &mut rng);
        let dropout_tensor = Tensor::from_vec(multipliers.clone(), (b, n_head, t, t), &Device::Cpu).unwrap();
        let dropout_tensor = dropout_tensor.to_dtype(DType::F64).unwrap();
        let mask = fused::AttentionMask { causal_offset: offset, key_bias: None, alibi: None };
        check(
            &format!("packed attention, length {t}"),
            &[qkv],
            |t| {
                fused::attention_packed(&t[0], (n_head, n_head), mask.clone(), dropout.then(|| multipliers.clone()))
                    .unwrap()
            },
            |t| {
                let part = |i: usize| t[0].narrow(2, i * d, d).unwrap();
                let dropout = dropout.then_some(&dropout_tensor);
                composed_attention(&[part(0), part(1), part(2)], n_head, bias.as_ref(), dropout)
            },
            1e-10,
        );
    }
}

#[test]
fn packed_grouped_query_attention() {
    // Q (D wide) then K and V (D_kv = D / group wide each) in one row: the same as multi-head
    // attention with each key/value head repeated for its group, gradients summed over it.
    for (n_head, n_kv, offset, dropout) in
        [(4usize, 2usize, Some(0usize), true), (6, 1, None, false), (4, 4, Some(0), false)]
    {
        let (b, t, head_dim) = (2usize, 70usize, 3usize);
        let (d, d_kv) = (n_head * head_dim, n_kv * head_dim);
        let qkv = random(&[b, t, d + 2 * d_kv], 90 + n_head as u64, 1.0);
        let bias = offset.map(|o| causal_mask(t, o, &Device::Cpu).unwrap().to_dtype(DType::F64).unwrap());
        let mut rng = Rng::new(91);
        let multipliers: Vec<f32> = dropout_multipliers(b * n_head * t * t, 0.8, &mut rng);
        let dropout_tensor = Tensor::from_vec(multipliers.clone(), (b, n_head, t, t), &Device::Cpu).unwrap();
        let dropout_tensor = dropout_tensor.to_dtype(DType::F64).unwrap();
        let mask = fused::AttentionMask { causal_offset: offset, key_bias: None, alibi: None };
        let widen = |x: Tensor| {
            let heads: Vec<Tensor> =
                (0..n_head).map(|h| x.narrow(2, (h / (n_head / n_kv)) * head_dim, head_dim).unwrap()).collect();
            Tensor::cat(&heads, 2).unwrap()
        };
        check(
            &format!("packed GQA, {n_head} heads over {n_kv}"),
            &[qkv],
            |t| {
                fused::attention_packed(&t[0], (n_head, n_kv), mask.clone(), dropout.then(|| multipliers.clone()))
                    .unwrap()
            },
            |t| {
                let (q, k, v) = (
                    t[0].narrow(2, 0, d).unwrap(),
                    t[0].narrow(2, d, d_kv).unwrap(),
                    t[0].narrow(2, d + d_kv, d_kv).unwrap(),
                );
                let dropout = dropout.then_some(&dropout_tensor);
                composed_attention(&[q, widen(k), widen(v)], n_head, bias.as_ref(), dropout)
            },
            1e-10,
        );
    }
}

#[test]
fn attention_key_padding_and_dropout() {
    let (b, t_q, t_k, d, n_head) = (3usize, 4usize, 5usize, 8usize, 2usize);
    let inputs = [random(&[b, t_q, d], 40, 1.0), random(&[b, t_k, d], 41, 1.0), random(&[b, t_k, d], 42, 1.0)];
    // Row 0 keeps every key, row 1 its first two, row 2 none (it then attends uniformly).
    let keep: Vec<f32> = (0..b * t_k).map(|i| if i < t_k || i % t_k < 2 && i < 2 * t_k { 1.0 } else { 0.0 }).collect();
    let keep = Tensor::from_vec(keep, (b, t_k), &Device::Cpu).unwrap();
    let bias = taper::kernels::padding_mask(&keep).unwrap();
    let key_bias = bias.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mut rng = Rng::new(43);
    let multipliers: Vec<f32> = dropout_multipliers(b * n_head * t_q * t_k, 0.7, &mut rng);
    let dropout = Tensor::from_vec(multipliers.clone(), (b, n_head, t_q, t_k), &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    let mask = fused::AttentionMask { causal_offset: None, key_bias: Some(key_bias), alibi: None };
    let bias = bias.to_dtype(DType::F64).unwrap();
    check(
        "attention with key padding and dropout",
        &inputs,
        |t| fused::attention(&t[0], &t[1], &t[2], n_head, mask.clone(), Some(multipliers.clone())).unwrap(),
        |t| composed_attention(t, n_head, Some(&bias), Some(&dropout)),
        1e-10,
    );
    // The hidden keys really are hidden: changing their values moves nothing in row 1.
    let out = |v: &Tensor| {
        fused::attention(inputs[0].as_tensor(), inputs[1].as_tensor(), v, n_head, mask.clone(), None).unwrap()
    };
    let noise = random(&[1, t_k - 2, d], 44, 5.0);
    let v2 = inputs[2].as_tensor().slice_assign(&[1..2, 2..t_k, 0..d], noise.as_tensor()).unwrap();
    let moved = max_diff(&out(inputs[2].as_tensor()).get(1).unwrap(), &out(&v2).get(1).unwrap());
    assert!(moved < 1e-12, "padding keys leaked into attention: {moved}");
}

#[test]
fn cross_entropy() {
    let logits = random(&[30, 11], 12, 3.0);
    let targets = Tensor::from_vec((0..30u32).map(|i| (i * 7) % 11).collect::<Vec<_>>(), 30, &Device::Cpu).unwrap();
    let composed = |t: &[Tensor]| {
        let l = &t[0];
        let m = l.max_keepdim(D::Minus1).unwrap();
        let s = l.broadcast_sub(&m).unwrap();
        let lsm = s.broadcast_sub(&s.exp().unwrap().sum_keepdim(D::Minus1).unwrap().log().unwrap()).unwrap();
        lsm.gather(&targets.unsqueeze(1).unwrap(), 1).unwrap().sum_all().unwrap().neg().unwrap()
    };
    check("cross_entropy", &[logits], |t| fused::cross_entropy_sum(&t[0], &targets).unwrap(), composed, 1e-10);
    let bad = Tensor::from_vec(vec![11u32; 30], 30, &Device::Cpu).unwrap();
    let err = fused::cross_entropy_sum(&random(&[30, 11], 1, 1.0).as_tensor().clone(), &bad).unwrap_err().to_string();
    assert!(err.contains("outside the vocabulary"), "{err}");
}

#[test]
fn fast_exp_is_accurate() {
    let mut worst = 0f64;
    let mut x = -80f32;
    while x < 80.0 {
        let rel = ((fused::fast_exp(x) as f64 - (x as f64).exp()) / (x as f64).exp()).abs();
        worst = worst.max(rel);
        x += 0.0137;
    }
    assert!(worst < 5e-7, "worst relative error {worst}");
    assert_eq!(fused::fast_exp(-200.0), fused::fast_exp(-87.0));
}

#[test]
fn fused_and_composed_models_train_alike() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("c.txt");
    std::fs::write(&corpus, "the quick brown fox jumps over the lazy dog.\n".repeat(60)).unwrap();
    // With dropout too: both paths draw the same masks from the run's RNG, in the same order.
    // The others take the sub-layer nodes with rotary positions, no biases and post-LN, or RMSNorm.
    let run = |kernels: &str, dropout: f64, model: &str| {
        let text = format!(
            "[model]\nn_layer = 2\nn_head = 2\nd_model = 32\nblock_size = 16\nkernels = \"{kernels}\"\ndropout = {dropout}\n{model}\
             [data]\npath = \"{}\"\n[train]\nsteps = 15\nbatch_size = 4\nlog_every = 1\neval_every = 0\ndevice = \"cpu\"\n\
             [checkpoint]\ndir = \"{}\"\nevery = 0\n",
            corpus.display(),
            dir.path().join(format!("{kernels}-{dropout}-{}", model.len())).display()
        );
        let cfg = taper::config::Config::from_toml_str(&text, &[]).unwrap();
        taper::train::train(cfg, &taper::train::TrainOptions { quiet: true, ..Default::default() }).unwrap().losses
    };
    let rms = "positions = \"rope\"\nbias = false\nnorm_kind = \"rms\"\n";
    for model in ["", "positions = \"rope\"\nbias = false\nnorm = \"post\"\n", rms] {
        for dropout in [0.0, 0.2] {
            let (fused, composed) = (run("fused", dropout, model), run("composed", dropout, model));
            for ((step, a), (_, b)) in fused.iter().zip(&composed) {
                assert!((a - b).abs() < 1e-4, "{model:?} dropout {dropout}, step {step}: fused {a} vs composed {b}");
            }
        }
    }
}

#[test]
fn probing_through_the_sublayer_nodes_records_what_the_composed_residual_does() {
    for norm in ["pre", "post", "sandwich", "deepnorm"] {
        let rms = |kernels: &str| {
            let text = format!(
                "[model]\nn_layer = 2\nn_head = 2\nd_model = 16\nblock_size = 8\npositions = \"rope\"\n\
                 norm = \"{norm}\"\nkernels = \"{kernels}\"\n[data]\npath = \"unused.txt\"\n[train]\nsteps = 1\nbatch_size = 1\n"
            );
            let cfg = taper::config::Config::from_toml_str(&text, &[]).unwrap().model;
            let params = taper::model::ParamStore::new();
            let model = taper::model::Gpt::new(&cfg, 20, DType::F32, params.var_builder(5, &Device::Cpu)).unwrap();
            let ids = Tensor::from_slice(&[1u32, 5, 7, 2, 9, 3], (2, 3), &Device::Cpu).unwrap();
            model.norm_input_rms(&ids).unwrap()
        };
        let (fused, composed) = (rms("fused"), rms("composed"));
        // Two blocks' norms, and a pre-LN stack's final one.
        let expected = match norm {
            "pre" => 5,
            "sandwich" => 9,
            _ => 4,
        };
        assert_eq!(fused.len(), expected, "{norm}: {fused:?}");
        for ((name, a), (other, b)) in fused.iter().zip(&composed) {
            assert_eq!(name, other);
            assert!((a - b).abs() < 1e-5 * b.abs().max(1.0), "{norm} {name}: fused {a} vs composed {b}");
        }
    }
}

#[test]
fn ffn_sublayer_pre_and_post_norm() {
    // (rows, d, hidden): a small case, and one above the kernels' parallel thresholds.
    for (shape, hidden) in [(vec![2usize, 3, 8], 12usize), (vec![4, 50, 32], 128)] {
        let d = *shape.last().unwrap();
        let inputs = [
            random(&shape, 31, 1.0),
            random(&[d], 32, 1.0),
            random(&[d], 33, 0.5),
            random(&[hidden, d], 34, 0.5),
            random(&[hidden], 35, 0.5),
            random(&[d, hidden], 36, 0.5),
            random(&[d], 37, 0.5),
        ];
        // Residual dropout on the branch's output in the larger case.
        let with_dropout = shape[0] > 2;
        let mut rng = Rng::new(38);
        let n: usize = shape.iter().product();
        let multipliers: Vec<f32> = dropout_multipliers(n, 0.8, &mut rng);
        let dropout = with_dropout.then(|| multipliers.clone());
        let dropout_tensor = with_dropout.then(|| {
            Tensor::from_vec(multipliers.clone(), shape.as_slice(), &Device::Cpu).unwrap().to_dtype(DType::F64).unwrap()
        });
        // With biases: [x, ln.w, ln.b, W1, b1, W2, b2]; without: [x, ln.w, ln.b, W1, W2].
        for (bias, used) in bias_variants(&inputs) {
            for pre_norm in [true, false] {
                for act in [fused::Act::Gelu, fused::Act::GeluTanh, fused::Act::Relu, fused::Act::Silu] {
                    let norm = fused::SublayerNorm {
                        pre_norm,
                        rms: false,
                        eps: 1e-5,
                        alpha: 1.0,
                        sandwich: false,
                        probe: None,
                    };
                    let fused_fn = |t: &[Tensor]| {
                        let (first, second) = packed(t, bias);
                        let shape = fused::FfnShape { hidden, act, bias, gated: false };
                        fused::ffn_sublayer(&t[0], (&first, &second), shape, norm.clone(), dropout.clone()).unwrap()
                    };
                    let composed_fn = |t: &[Tensor]| {
                        let (w1, b1, w2, b2) = branch_params(t, bias);
                        let norm = |x: &Tensor| fused::layer_norm(x, &t[1], &t[2], 1e-5).unwrap();
                        let branch = |h: &Tensor| {
                            let z = composed_linear(h, &w1, b1.as_ref());
                            let a = match act {
                                fused::Act::Gelu => z.gelu_erf().unwrap(),
                                fused::Act::GeluTanh => gelu_tanh(&z),
                                fused::Act::Relu => z.relu().unwrap(),
                                fused::Act::Silu => z.silu().unwrap(),
                            };
                            composed_linear(&a, &w2, b2.as_ref())
                        };
                        composed_sublayer(&t[0], norm, branch, dropout_tensor.as_ref(), pre_norm)
                    };
                    // ReLU is exact; GELU's erf is accurate to 1.5e-7 (as in `gelu`), and the
                    // gradients sum that error over 128 hidden units and 200 rows.
                    let tol = if act == fused::Act::Relu { 1e-10 } else { 1e-4 };
                    let name = format!("ffn bias={bias} pre_norm={pre_norm} {act:?}");
                    check(&name, &used, fused_fn, composed_fn, tol);
                }
            }
        }
    }
}

/// GPT-2's tanh GELU from candle's exact ops (candle's `gelu` backward rounds its constants to
/// six digits, 1e-6 relative: too coarse for an f64 reference).
fn gelu_tanh(z: &Tensor) -> Tensor {
    let u = ((z + (z.powf(3.0).unwrap() * 0.044715).unwrap()).unwrap() * (2.0 / std::f64::consts::PI).sqrt()).unwrap();
    ((z * 0.5).unwrap() * (u.tanh().unwrap() + 1.0).unwrap()).unwrap()
}

#[test]
fn gated_ffn_sublayer() {
    // Llama's FFN, fc2(act(gate(h)) * fc1(h)) after RMSNorm, without biases: [x, rms.w, Wg, W1,
    // W2]; and with LayerNorm and biases: [x, ln.w, ln.b, Wg, W1, bg, b1, W2, b2].
    let (shape, hidden) = (vec![4usize, 50, 32], 96usize);
    let d = shape[2];
    let x = random(&shape, 71, 1.0);
    let (g, w1, w2) = (random(&[hidden, d], 72, 0.5), random(&[hidden, d], 73, 0.5), random(&[d, hidden], 74, 0.5));
    let (ln_w, ln_b) = (random(&[d], 75, 1.0), random(&[d], 76, 0.5));
    let (bg, b1, b2) = (random(&[hidden], 77, 0.5), random(&[hidden], 78, 0.5), random(&[d], 79, 0.5));
    let mut rng = Rng::new(80);
    let multipliers: Vec<f32> = dropout_multipliers(shape.iter().product(), 0.8, &mut rng);
    let dropout_tensor =
        Tensor::from_vec(multipliers.clone(), shape.as_slice(), &Device::Cpu).unwrap().to_dtype(DType::F64).unwrap();
    let activate = |z: &Tensor, act: fused::Act| match act {
        fused::Act::Gelu => z.gelu_erf().unwrap(),
        fused::Act::GeluTanh => gelu_tanh(z),
        fused::Act::Relu => z.relu().unwrap(),
        fused::Act::Silu => z.silu().unwrap(),
    };
    for (bias, pre_norm, act) in [
        (false, true, fused::Act::Silu),
        (false, false, fused::Act::Gelu),
        (false, true, fused::Act::Relu),
        (false, true, fused::Act::GeluTanh),
        (true, true, fused::Act::Silu),
        (true, false, fused::Act::Silu),
    ] {
        let used: Vec<Var> = match bias {
            false => vec![x.clone(), ln_w.clone(), g.clone(), w1.clone(), w2.clone()],
            true => vec![
                x.clone(),
                ln_w.clone(),
                ln_b.clone(),
                g.clone(),
                w1.clone(),
                bg.clone(),
                b1.clone(),
                w2.clone(),
                b2.clone(),
            ],
        };
        let norm = fused::SublayerNorm { pre_norm, rms: !bias, eps: 1e-5, alpha: 1.0, sandwich: false, probe: None };
        let fused_fn = |t: &[Tensor]| {
            let (first, second) = match bias {
                false => fused::pack_parameters(&[&t[1]], &[&t[2], &t[3]], &[&t[4]]).unwrap(),
                true => {
                    fused::pack_parameters(&[&t[1], &t[2]], &[&t[3], &t[4], &t[5], &t[6]], &[&t[7], &t[8]]).unwrap()
                }
            };
            let shape = fused::FfnShape { hidden, act, bias, gated: true };
            fused::ffn_sublayer(&t[0], (&first, &second), shape, norm.clone(), Some(multipliers.clone())).unwrap()
        };
        let composed_fn = |t: &[Tensor]| {
            let norm = |x: &Tensor| match bias {
                false => fused::rms_norm(x, &t[1], 1e-5).unwrap(),
                true => fused::layer_norm(x, &t[1], &t[2], 1e-5).unwrap(),
            };
            let branch = |h: &Tensor| match bias {
                false => {
                    let a =
                        (activate(&composed_linear(h, &t[2], None), act) * composed_linear(h, &t[3], None)).unwrap();
                    composed_linear(&a, &t[4], None)
                }
                true => {
                    let gate = activate(&composed_linear(h, &t[3], Some(&t[5])), act);
                    let a = (gate * composed_linear(h, &t[4], Some(&t[6]))).unwrap();
                    composed_linear(&a, &t[7], Some(&t[8]))
                }
            };
            composed_sublayer(&t[0], norm, branch, Some(&dropout_tensor), pre_norm)
        };
        // GELU's erf is accurate to 1.5e-7 (see `ffn_sublayer_pre_and_post_norm`); ReLU and SiLU are exact.
        let tol = if act == fused::Act::Gelu { 1e-4 } else { 1e-10 };
        check(&format!("gated ffn bias={bias} pre_norm={pre_norm} {act:?}"), &used, fused_fn, composed_fn, tol);
    }
}

#[test]
fn ffn_sublayer_with_rms_norm() {
    // [x, rms.w, W1, b1, W2, b2]: the node's norm packs its gain only.
    let (shape, hidden) = (vec![4usize, 50, 32], 128usize);
    let d = shape[2];
    let inputs = [
        random(&shape, 41, 1.0),
        random(&[d], 42, 1.0),
        random(&[hidden, d], 43, 0.5),
        random(&[hidden], 44, 0.5),
        random(&[d, hidden], 45, 0.5),
        random(&[d], 46, 0.5),
    ];
    for pre_norm in [true, false] {
        let norm = fused::SublayerNorm { pre_norm, rms: true, eps: 1e-5, alpha: 1.0, sandwich: false, probe: None };
        let fused_fn = |t: &[Tensor]| {
            let (first, second) = fused::pack_parameters(&[&t[1]], &[&t[2], &t[3]], &[&t[4], &t[5]]).unwrap();
            let shape = fused::FfnShape { hidden, act: fused::Act::Relu, bias: true, gated: false };
            fused::ffn_sublayer(&t[0], (&first, &second), shape, norm.clone(), None).unwrap()
        };
        let composed_fn = |t: &[Tensor]| {
            let rms = |x: &Tensor| fused::rms_norm(x, &t[1], 1e-5).unwrap();
            let branch = |h: &Tensor| {
                let a = composed_linear(h, &t[2], Some(&t[3])).relu().unwrap();
                composed_linear(&a, &t[4], Some(&t[5]))
            };
            composed_sublayer(&t[0], rms, branch, None, pre_norm)
        };
        check(&format!("ffn rms pre_norm={pre_norm}"), &inputs, fused_fn, composed_fn, 1e-9);
    }
}

#[test]
fn self_attention_sublayer_pre_and_post_norm() {
    // (batch, length, width, heads, causal, key padding, dropout, rotary positions)
    let cases = [
        (2usize, 6usize, 8usize, 2usize, true, false, false, false),
        (3, 5, 12, 3, false, true, false, false),
        (2, 70, 16, 2, true, false, true, false),
        (2, 6, 8, 2, true, false, false, true),
        (3, 70, 12, 3, true, true, true, true),
    ];
    for (case, &(b, t, d, n_head, causal, padded, with_dropout, rotary)) in cases.iter().enumerate() {
        // Positions 3.. (an offset), theta 100 so that every pair turns visibly over the positions.
        let rope = rotary.then(|| Rope::new(t + 3, d / n_head, 100.0, &Device::Cpu).unwrap());
        let rotation = |rope: &Rope| {
            let tables = rope.at(3, t).unwrap();
            let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            fused::Rotation { cos: values(&tables.cos), sin: values(&tables.sin) }
        };
        let seed = 60 + 10 * case as u64;
        let inputs = [
            random(&[b, t, d], seed, 1.0),
            random(&[d], seed + 1, 1.0),
            random(&[d], seed + 2, 0.5),
            random(&[3 * d, d], seed + 3, 0.5),
            random(&[3 * d], seed + 4, 0.5),
            random(&[d, d], seed + 5, 0.5),
            random(&[d], seed + 6, 0.5),
        ];
        // The last key of batch row 0 is padding.
        let mut key_bias = vec![0f32; b * t];
        if padded {
            key_bias[t - 1] = -1e9;
        }
        let additive = (causal || padded).then(|| {
            let padding = Tensor::from_vec(key_bias.clone(), (b, 1, 1, t), &Device::Cpu).unwrap();
            let padding = padding.to_dtype(DType::F64).unwrap();
            match causal {
                true => padding
                    .broadcast_add(&causal_mask(t, 0, &Device::Cpu).unwrap().to_dtype(DType::F64).unwrap())
                    .unwrap(),
                false => padding,
            }
        });
        let key_bias = padded.then(|| key_bias.clone());
        let mask = fused::AttentionMask { causal_offset: causal.then_some(0), key_bias, alibi: None };
        let mut rng = Rng::new(seed);
        let multipliers: Vec<f32> = dropout_multipliers(b * n_head * t * t, 0.8, &mut rng);
        let dropout = with_dropout.then(|| multipliers.clone());
        let dropout_tensor = with_dropout.then(|| {
            Tensor::from_vec(multipliers.clone(), (b, n_head, t, t), &Device::Cpu)
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
        });
        // Residual dropout on the branch's output, with the weights' dropout.
        let residual_multipliers: Vec<f32> = dropout_multipliers(b * t * d, 0.9, &mut rng);
        let residual = with_dropout.then(|| residual_multipliers.clone());
        let residual_tensor = with_dropout.then(|| {
            let mask = Tensor::from_vec(residual_multipliers.clone(), (b, t, d), &Device::Cpu).unwrap();
            mask.to_dtype(DType::F64).unwrap()
        });
        // With biases: [x, ln.w, ln.b, W_qkv, b_qkv, W_o, b_o]; without: [x, ln.w, ln.b, W_qkv, W_o].
        let variants = bias_variants(&inputs);
        for ((bias, used), pre_norm) in variants.iter().flat_map(|v| [(v, true), (v, false)]) {
            let bias = *bias;
            let norm =
                fused::SublayerNorm { pre_norm, rms: false, eps: 1e-5, alpha: 1.0, sandwich: false, probe: None };
            let fused_fn = |t: &[Tensor]| {
                let (first, second) = packed(t, bias);
                let attention = (mask.clone(), dropout.clone(), false);
                let rotation = rope.as_ref().map(rotation);
                let heads = fused::SelfAttentionShape {
                    heads: (n_head, n_head),
                    bias: (bias, bias),
                    rotation,
                    qk_norm: None,
                    shaw_clip: None,
                };
                let norm = norm.clone();
                fused::self_attention_sublayer(&t[0], (&first, &second), heads, attention, norm, residual.clone())
                    .unwrap()
            };
            let composed_fn = |t: &[Tensor]| {
                let (w_qkv, b_qkv, w_o, b_o) = branch_params(t, bias);
                let ln = |x: &Tensor| fused::layer_norm(x, &t[1], &t[2], 1e-5).unwrap();
                let branch = |h: &Tensor| {
                    let qkv = composed_linear(h, &w_qkv, b_qkv.as_ref());
                    let [q, k, v] = [0, 1, 2].map(|i| qkv.narrow(2, i * d, d).unwrap());
                    let rotate = |x: Tensor| match &rope {
                        Some(rope) => rope.apply(&x, n_head, 3, &taper::kernels::Composed).unwrap(),
                        None => x,
                    };
                    let (q, k) = (rotate(q), rotate(k));
                    let context = composed_attention(&[q, k, v], n_head, additive.as_ref(), dropout_tensor.as_ref());
                    composed_linear(&context, &w_o, b_o.as_ref())
                };
                composed_sublayer(&t[0], ln, branch, residual_tensor.as_ref(), pre_norm)
            };
            let name = format!("self-attention sub-layer case {case} bias={bias} pre_norm={pre_norm}");
            check(&name, used, fused_fn, composed_fn, 1e-9);
        }
    }
}

#[test]
fn deepnorm_scales_the_skip_connection_inside_the_sublayer_node() {
    // Post-LN with DeepNorm's alpha: LN(alpha x + FFN(x)), [x, ln.w, ln.b, W1, b1, W2, b2].
    let (shape, hidden) = (vec![4usize, 50, 32], 128usize);
    let d = shape[2];
    let inputs = [
        random(&shape, 91, 1.0),
        random(&[d], 92, 1.0),
        random(&[d], 93, 0.5),
        random(&[hidden, d], 94, 0.5),
        random(&[hidden], 95, 0.5),
        random(&[d, hidden], 96, 0.5),
        random(&[d], 97, 0.5),
    ];
    let mut rng = Rng::new(98);
    let multipliers: Vec<f32> = dropout_multipliers(shape.iter().product(), 0.8, &mut rng);
    let mask =
        Tensor::from_vec(multipliers.clone(), shape.as_slice(), &Device::Cpu).unwrap().to_dtype(DType::F64).unwrap();
    // alpha (2 x 12 layers)^(1/4), a 12-layer decoder-only stack's.
    let alpha = 24f64.powf(0.25);
    let norm = fused::SublayerNorm { pre_norm: false, rms: false, eps: 1e-5, alpha, sandwich: false, probe: None };
    let fused_fn = |t: &[Tensor]| {
        let (first, second) = packed(t, true);
        let shape = fused::FfnShape { hidden, act: fused::Act::Relu, bias: true, gated: false };
        fused::ffn_sublayer(&t[0], (&first, &second), shape, norm.clone(), Some(multipliers.clone())).unwrap()
    };
    let composed_fn = |t: &[Tensor]| {
        let (w1, b1, w2, b2) = branch_params(t, true);
        let branch = composed_linear(&composed_linear(&t[0], &w1, b1.as_ref()).relu().unwrap(), &w2, b2.as_ref());
        let sum = ((&t[0] * alpha).unwrap() + (branch * &mask).unwrap()).unwrap();
        fused::layer_norm(&sum, &t[1], &t[2], 1e-5).unwrap()
    };
    check("deepnorm ffn sub-layer", &inputs, fused_fn, composed_fn, 1e-10);
    // A scaled skip is post-LN only: a pre-LN node with alpha is refused.
    let pre = fused::SublayerNorm { pre_norm: true, ..norm.clone() };
    let xs: Vec<Tensor> = inputs.iter().map(|v| v.as_tensor().clone()).collect();
    let (first, second) = packed(&xs, true);
    let shape = fused::FfnShape { hidden, act: fused::Act::Relu, bias: true, gated: false };
    let err = fused::ffn_sublayer(&xs[0], (&first, &second), shape, pre, None).unwrap_err().to_string();
    assert!(err.contains("post-LN only"), "{err}");
}

#[test]
fn self_attention_sublayer_with_a_learned_score_bias() {
    // T5's relative positions: a learned (1, H, T, T) bias on the scores, whose gradient the
    // node returns (summed over the batch). [x, ln.w, ln.b, W_qkv, b_qkv, W_o, b_o, bias];
    // causal, the last key of batch row 0 padded, dropout on the weights and the output.
    let (b, t, d, n_head) = (3usize, 7usize, 16usize, 2usize);
    let inputs = [
        random(&[b, t, d], 101, 1.0),
        random(&[d], 102, 1.0),
        random(&[d], 103, 0.5),
        random(&[3 * d, d], 104, 0.5),
        random(&[3 * d], 105, 0.5),
        random(&[d, d], 106, 0.5),
        random(&[d], 107, 0.5),
        random(&[1, n_head, t, t], 108, 1.0),
    ];
    let mut key_bias = vec![0f32; b * t];
    key_bias[t - 1] = -1e9;
    let padding = Tensor::from_vec(key_bias.clone(), (b, 1, 1, t), &Device::Cpu).unwrap().to_dtype(DType::F64).unwrap();
    let causal = causal_mask(t, 0, &Device::Cpu).unwrap().to_dtype(DType::F64).unwrap();
    let additive = padding.broadcast_add(&causal).unwrap();
    let mask = fused::AttentionMask { causal_offset: Some(0), key_bias: Some(key_bias), alibi: None };
    let mut rng = Rng::new(109);
    let weights_dropout: Vec<f32> = dropout_multipliers(b * n_head * t * t, 0.8, &mut rng);
    let output_dropout: Vec<f32> = dropout_multipliers(b * t * d, 0.9, &mut rng);
    let as_tensor = |m: &[f32], shape: &[usize]| {
        Tensor::from_vec(m.to_vec(), shape, &Device::Cpu).unwrap().to_dtype(DType::F64).unwrap()
    };
    let weights_mask = as_tensor(&weights_dropout, &[b, n_head, t, t]);
    let output_mask = as_tensor(&output_dropout, &[b, t, d]);
    for pre_norm in [true, false] {
        let norm = fused::SublayerNorm { pre_norm, rms: false, eps: 1e-5, alpha: 1.0, sandwich: false, probe: None };
        let fused_fn = |p: &[Tensor]| {
            let (first, second) =
                fused::pack_parameters(&[&p[1], &p[2]], &[&p[3], &p[4]], &[&p[5], &p[6], &p[7]]).unwrap();
            let attention = (mask.clone(), Some(weights_dropout.clone()), true);
            let heads = fused::SelfAttentionShape {
                heads: (n_head, n_head),
                bias: (true, true),
                rotation: None,
                qk_norm: None,
                shaw_clip: None,
            };
            let out = Some(output_dropout.clone());
            fused::self_attention_sublayer(&p[0], (&first, &second), heads, attention, norm.clone(), out).unwrap()
        };
        let composed_fn = |p: &[Tensor]| {
            let ln = |x: &Tensor| fused::layer_norm(x, &p[1], &p[2], 1e-5).unwrap();
            let branch = |h: &Tensor| {
                let qkv = composed_linear(h, &p[3], Some(&p[4]));
                let [q, k, v] = [0, 1, 2].map(|i| qkv.narrow(2, i * d, d).unwrap());
                let bias = additive.broadcast_add(&p[7]).unwrap();
                let context = composed_attention(&[q, k, v], n_head, Some(&bias), Some(&weights_mask));
                composed_linear(&context, &p[5], Some(&p[6]))
            };
            composed_sublayer(&p[0], ln, branch, Some(&output_mask), pre_norm)
        };
        check(
            &format!("self-attention with a learned score bias, pre_norm={pre_norm}"),
            &inputs,
            fused_fn,
            composed_fn,
            1e-9,
        );
    }
}

#[test]
fn sandwich_norms_the_branch_inside_the_sublayer_node() {
    // x + LN'(FFN(LN(x))) with dropout after LN': [x, ln.w, ln.b, W1, b1, W2, b2, ln'.w, ln'.b]
    // (LayerNorm), and with RMSNorm [x, rms.w, W1, b1, W2, b2, rms'.w].
    let (shape, hidden) = (vec![4usize, 50, 32], 128usize);
    let d = shape[2];
    let all = [
        random(&shape, 111, 1.0),
        random(&[d], 112, 1.0),
        random(&[d], 113, 0.5),
        random(&[hidden, d], 114, 0.5),
        random(&[hidden], 115, 0.5),
        random(&[d, hidden], 116, 0.5),
        random(&[d], 117, 0.5),
        random(&[d], 118, 1.0),
        random(&[d], 119, 0.5),
    ];
    let mut rng = Rng::new(120);
    let multipliers: Vec<f32> = dropout_multipliers(shape.iter().product(), 0.8, &mut rng);
    let mask =
        Tensor::from_vec(multipliers.clone(), shape.as_slice(), &Device::Cpu).unwrap().to_dtype(DType::F64).unwrap();
    for rms in [false, true] {
        let used: Vec<Var> = match rms {
            false => all.to_vec(),
            true => [0, 1, 3, 4, 5, 6, 7].map(|i| all[i].clone()).to_vec(),
        };
        let norm = fused::SublayerNorm { pre_norm: true, rms, eps: 1e-5, alpha: 1.0, sandwich: true, probe: None };
        let fused_fn = |t: &[Tensor]| {
            let (first, second) = match rms {
                false => fused::pack_parameters(&[&t[1], &t[2]], &[&t[3], &t[4]], &[&t[5], &t[6], &t[7], &t[8]]),
                true => fused::pack_parameters(&[&t[1]], &[&t[2], &t[3]], &[&t[4], &t[5], &t[6]]),
            }
            .unwrap();
            let shape = fused::FfnShape { hidden, act: fused::Act::Relu, bias: true, gated: false };
            fused::ffn_sublayer(&t[0], (&first, &second), shape, norm.clone(), Some(multipliers.clone())).unwrap()
        };
        let composed_fn = |t: &[Tensor]| {
            let (w1, b1, w2, b2, first, second) = match rms {
                false => (&t[3], &t[4], &t[5], &t[6], [&t[1], &t[2]], [&t[7], &t[8]]),
                true => (&t[2], &t[3], &t[4], &t[5], [&t[1], &t[1]], [&t[6], &t[6]]),
            };
            let norm = |x: &Tensor, [w, b]: [&Tensor; 2]| match rms {
                false => fused::layer_norm(x, w, b, 1e-5).unwrap(),
                true => fused::rms_norm(x, w, 1e-5).unwrap(),
            };
            let branch =
                composed_linear(&composed_linear(&norm(&t[0], first), w1, Some(b1)).relu().unwrap(), w2, Some(b2));
            (&t[0] + (norm(&branch, second) * &mask).unwrap()).unwrap()
        };
        check(&format!("sandwich ffn sub-layer rms={rms}"), &used, fused_fn, composed_fn, 1e-10);
    }
}

#[test]
fn self_attention_sublayer_with_qk_norm() {
    // QK-norm: each query and key head normalised (shared gains over head_dim) after the
    // projection, before the rotation. [x, ln.w, ln.b, W_qkv, b_qkv, W_o, b_o, q.w, q.b, k.w,
    // k.b] with LayerNorm; RMSNorm's norms have gains only. Causal, rotary, both dropouts.
    let (b, t, d, n_head) = (2usize, 9usize, 16usize, 2usize);
    let hd = d / n_head;
    let all = [
        random(&[b, t, d], 131, 1.0),
        random(&[d], 132, 1.0),
        random(&[d], 133, 0.5),
        random(&[3 * d, d], 134, 0.5),
        random(&[3 * d], 135, 0.5),
        random(&[d, d], 136, 0.5),
        random(&[d], 137, 0.5),
        random(&[hd], 138, 1.0),
        random(&[hd], 139, 0.5),
        random(&[hd], 140, 1.0),
        random(&[hd], 141, 0.5),
    ];
    let rope = Rope::new(t + 3, hd, 100.0, &Device::Cpu).unwrap();
    let tables = rope.at(3, t).unwrap();
    let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let rotation = || fused::Rotation { cos: values(&tables.cos), sin: values(&tables.sin) };
    let mask = fused::AttentionMask { causal_offset: Some(0), key_bias: None, alibi: None };
    let causal = causal_mask(t, 0, &Device::Cpu).unwrap().to_dtype(DType::F64).unwrap();
    let mut rng = Rng::new(142);
    let weights_dropout: Vec<f32> = dropout_multipliers(b * n_head * t * t, 0.8, &mut rng);
    let output_dropout: Vec<f32> = dropout_multipliers(b * t * d, 0.9, &mut rng);
    let as_tensor = |m: &[f32], shape: &[usize]| {
        Tensor::from_vec(m.to_vec(), shape, &Device::Cpu).unwrap().to_dtype(DType::F64).unwrap()
    };
    let (weights_mask, output_mask) =
        (as_tensor(&weights_dropout, &[b, n_head, t, t]), as_tensor(&output_dropout, &[b, t, d]));
    for rms in [false, true] {
        let used: Vec<Var> = match rms {
            false => all.to_vec(),
            true => [0, 1, 2, 3, 4, 5, 6, 7, 9].map(|i| all[i].clone()).to_vec(),
        };
        let norm =
            fused::SublayerNorm { pre_norm: true, rms: false, eps: 1e-5, alpha: 1.0, sandwich: false, probe: None };
        let fused_fn = |p: &[Tensor]| {
            let qk: Vec<&Tensor> = p[7..].iter().collect();
            let first: Vec<&Tensor> = [&p[3], &p[4]].into_iter().chain(qk).collect();
            let (first, second) = fused::pack_parameters(&[&p[1], &p[2]], &first, &[&p[5], &p[6]]).unwrap();
            let attention = (mask.clone(), Some(weights_dropout.clone()), false);
            let qk_norm = Some(fused::QkNorm { rms, eps: 1e-6 });
            let heads = fused::SelfAttentionShape {
                heads: (n_head, n_head),
                bias: (true, true),
                rotation: Some(rotation()),
                qk_norm,
                shaw_clip: None,
            };
            let out = Some(output_dropout.clone());
            fused::self_attention_sublayer(&p[0], (&first, &second), heads, attention, norm.clone(), out).unwrap()
        };
        let composed_fn = |p: &[Tensor]| {
            let ln = |x: &Tensor| fused::layer_norm(x, &p[1], &p[2], 1e-5).unwrap();
            let per_head = |x: &Tensor, i: usize| {
                let heads = x.reshape((b, t, n_head, hd)).unwrap();
                let normed = match rms {
                    false => fused::layer_norm(&heads, &p[7 + 2 * i], &p[8 + 2 * i], 1e-6).unwrap(),
                    true => fused::rms_norm(&heads, &p[7 + i], 1e-6).unwrap(),
                };
                normed.reshape((b, t, d)).unwrap()
            };
            let branch = |h: &Tensor| {
                let qkv = composed_linear(h, &p[3], Some(&p[4]));
                let [q, k, v] = [0, 1, 2].map(|i| qkv.narrow(2, i * d, d).unwrap());
                let (q, k) = (
                    rope.apply(&per_head(&q, 0), n_head, 3, &taper::kernels::Composed).unwrap(),
                    rope.apply(&per_head(&k, 1), n_head, 3, &taper::kernels::Composed).unwrap(),
                );
                let context = composed_attention(&[q, k, v], n_head, Some(&causal), Some(&weights_mask));
                composed_linear(&context, &p[5], Some(&p[6]))
            };
            composed_sublayer(&p[0], ln, branch, Some(&output_mask), true)
        };
        check(&format!("self-attention with QK-norm rms={rms}"), &used, fused_fn, composed_fn, 1e-9);
    }
}

#[test]
fn self_attention_sublayer_with_shaw_relative_positions() {
    // Shaw et al.: scores q_i . (k_j + a^K_r) / sqrt(hd), outputs sum_j w_ij (v_j + a^V_r), r the
    // key's distance from the query clipped at 3. [x, ln.w, ln.b, W_qkv, b_qkv, W_o, b_o,
    // a^K, a^V]; causal, the last key of batch row 0 padded, both dropouts, pre and post; and
    // with 4 query heads over 2 key/value heads.
    let (b, t, d, clip) = (2usize, 9usize, 16usize, 3usize);
    for (n_head, n_kv) in [(2usize, 2usize), (4, 2)] {
        let (hd, d_kv) = (d / n_head, d / n_head * n_kv);
        let inputs = [
            random(&[b, t, d], 151, 1.0),
            random(&[d], 152, 1.0),
            random(&[d], 153, 0.5),
            random(&[d + 2 * d_kv, d], 154, 0.5),
            random(&[d + 2 * d_kv], 155, 0.5),
            random(&[d, d], 156, 0.5),
            random(&[d], 157, 0.5),
            random(&[2 * clip + 1, hd], 158, 1.0),
            random(&[2 * clip + 1, hd], 159, 1.0),
        ];
        let mut key_bias = vec![0f32; b * t];
        key_bias[t - 1] = -1e9;
        let padding =
            Tensor::from_vec(key_bias.clone(), (b, 1, 1, t), &Device::Cpu).unwrap().to_dtype(DType::F64).unwrap();
        let causal = causal_mask(t, 0, &Device::Cpu).unwrap().to_dtype(DType::F64).unwrap();
        let additive = padding.broadcast_add(&causal).unwrap();
        let mask = fused::AttentionMask { causal_offset: Some(0), key_bias: Some(key_bias), alibi: None };
        let mut rng = Rng::new(160);
        let weights_dropout: Vec<f32> = dropout_multipliers(b * n_head * t * t, 0.8, &mut rng);
        let output_dropout: Vec<f32> = dropout_multipliers(b * t * d, 0.9, &mut rng);
        let as_tensor = |m: &[f32], shape: &[usize]| {
            Tensor::from_vec(m.to_vec(), shape, &Device::Cpu).unwrap().to_dtype(DType::F64).unwrap()
        };
        let weights_mask = as_tensor(&weights_dropout, &[b, n_head, t, t]);
        let output_mask = as_tensor(&output_dropout, &[b, t, d]);
        // The embedding row of each (query, key): clamp(j - i, -clip, clip) + clip.
        let rows: Vec<u32> = (0..t as i64)
            .flat_map(|i| (0..t as i64).map(move |j| ((j - i).clamp(-(clip as i64), clip as i64) + clip as i64) as u32))
            .collect();
        let rows = Tensor::from_vec(rows, t * t, &Device::Cpu).unwrap();
        for pre_norm in [true, false] {
            let norm =
                fused::SublayerNorm { pre_norm, rms: false, eps: 1e-5, alpha: 1.0, sandwich: false, probe: None };
            let fused_fn = |p: &[Tensor]| {
                let second = [&p[5], &p[6], &p[7], &p[8]];
                let (first, second) = fused::pack_parameters(&[&p[1], &p[2]], &[&p[3], &p[4]], &second).unwrap();
                let attention = (mask.clone(), Some(weights_dropout.clone()), false);
                let heads = fused::SelfAttentionShape {
                    heads: (n_head, n_kv),
                    bias: (true, true),
                    rotation: None,
                    qk_norm: None,
                    shaw_clip: Some(clip),
                };
                let out = Some(output_dropout.clone());
                fused::self_attention_sublayer(&p[0], (&first, &second), heads, attention, norm.clone(), out).unwrap()
            };
            let composed_fn = |p: &[Tensor]| {
                let ln = |x: &Tensor| fused::layer_norm(x, &p[1], &p[2], 1e-5).unwrap();
                let branch = |h: &Tensor| {
                    let qkv = composed_linear(h, &p[3], Some(&p[4]));
                    let heads = |x: Tensor, n: usize| {
                        x.reshape((b, t, n, hd)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap()
                        // (B, T, n, hd) -> (B, n, T, hd)
                    };
                    let repeat = |x: Tensor| {
                        let x = x.unsqueeze(2).unwrap().repeat((1, 1, n_head / n_kv, 1, 1)).unwrap();
                        x.reshape((b, n_head, t, hd)).unwrap() // (B, kv, g, T, hd) -> (B, H, T, hd)
                    };
                    let q = heads(qkv.narrow(2, 0, d).unwrap(), n_head);
                    let k = repeat(heads(qkv.narrow(2, d, d_kv).unwrap(), n_kv));
                    let v = repeat(heads(qkv.narrow(2, d + d_kv, d_kv).unwrap(), n_kv));
                    let a_k = p[7].index_select(&rows, 0).unwrap().reshape((t, t, hd)).unwrap();
                    let a_v = p[8].index_select(&rows, 0).unwrap().reshape((t, t, hd)).unwrap();
                    // One product per query position: (T, B*H, X) against its embeddings.
                    let by_query = |x: &Tensor| {
                        let x_dim = x.dim(3).unwrap();
                        x.permute((2, 0, 1, 3)).unwrap().contiguous().unwrap().reshape((t, b * n_head, x_dim)).unwrap()
                        // (B, H, T, X) -> (T, B*H, X)
                    };
                    let from_query = |x: Tensor| {
                        let x_dim = x.dim(2).unwrap();
                        x.reshape((t, b, n_head, x_dim)).unwrap().permute((1, 2, 0, 3)).unwrap()
                        // (T, B*H, X) -> (B, H, T, X)
                    };
                    let a_k_t = a_k.transpose(1, 2).unwrap().contiguous().unwrap(); // (T, hd, T)
                    let rel = from_query(by_query(&q).matmul(&a_k_t).unwrap()); // (B, H, T, T)
                    let scale = 1.0 / (hd as f64).sqrt();
                    let scores = ((q.matmul(&k.t().unwrap()).unwrap() + rel).unwrap() * scale).unwrap();
                    let scores = scores.broadcast_add(&additive).unwrap();
                    let e = scores.broadcast_sub(&scores.max_keepdim(D::Minus1).unwrap()).unwrap().exp().unwrap();
                    let w = e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap();
                    let w = (w * &weights_mask).unwrap();
                    let rel_out = from_query(by_query(&w).matmul(&a_v).unwrap()); // (B, H, T, hd)
                    let context = (w.matmul(&v).unwrap() + rel_out).unwrap(); // (B, H, T, hd)
                    let context = context.transpose(1, 2).unwrap().reshape((b, t, d)).unwrap(); // -> (B, T, D)
                    composed_linear(&context, &p[5], Some(&p[6]))
                };
                composed_sublayer(&p[0], ln, branch, Some(&output_mask), pre_norm)
            };
            let name = format!("self-attention with Shaw positions, {n_head} over {n_kv} heads, pre_norm={pre_norm}");
            check(&name, &inputs, fused_fn, composed_fn, 1e-9);
        }
    }
}
