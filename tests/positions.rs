//! The relative position schemes give the published values: ALiBi's head slopes and distance
//! penalties (Press et al. 2022), T5's buckets (`_relative_position_bucket` of the T5 code),
//! Shaw et al.'s clipped distances, each at known positions computed by hand; and Shaw's
//! attention is its formula, written out as loops.

use candle_core::{Device, Tensor};
use taper::kernels::composed::{relative_indices, RelativeTables};
use taper::kernels::{alibi_bias, Backend, Composed, Mask, Mode};
use taper::model::positions::{alibi_slopes, Buckets};
use taper::rng::Rng;

#[test]
fn alibi_slopes_are_the_papers() {
    let eighths: Vec<f32> = (1..=8).map(|i| 0.5f32.powi(i)).collect();
    assert_eq!(alibi_slopes(8), eighths); // 1/2, 1/4, ..., 1/256
    assert_eq!(alibi_slopes(4), vec![0.25, 0.0625, 0.015625, 0.00390625]); // 2^-2, 2^-4, ...
                                                                           // Not a power of two: the 4-head slopes, then every other 8-head slope (2^-1, 2^-3).
    assert_eq!(alibi_slopes(6), vec![0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125]);
    assert_eq!(alibi_slopes(1), vec![2f32.powi(-8)]);
}

#[test]
fn alibi_penalises_distance_with_queries_at_the_last_key_positions() {
    // Two queries over three keys: the queries sit at positions 1 and 2.
    let bias = alibi_bias(&[0.5, 0.25], 2, 3, &Device::Cpu).unwrap();
    assert_eq!(bias.dims(), &[1, 2, 2, 3]);
    let values: Vec<f32> = bias.flatten_all().unwrap().to_vec1().unwrap();
    #[rustfmt::skip]
    let want = [
        -0.5, 0.0, -0.5,    -1.0, -0.5, 0.0,   // head 0, slope 1/2
        -0.25, 0.0, -0.25,  -0.5, -0.25, 0.0,  // head 1, slope 1/4
    ];
    assert_eq!(values, want);
}

#[test]
fn t5_buckets_are_the_reference_implementations() {
    // Encoder (bidirectional), 32 buckets, max distance 128: 16 per direction, 8 exact.
    let encoder = Buckets { count: 32, max_distance: 128, causal: false };
    // relative = key - query: 8 + floor(ln(20/8) / ln(128/8) * 8) = 8 + floor(2.64) = 10;
    // 200 is past max_distance: the direction's last bucket.
    let cases = [(0, 0), (-3, 3), (3, 19), (-7, 7), (-8, 8), (-20, 10), (20, 26), (-200, 15), (200, 31)];
    for (relative, bucket) in cases {
        assert_eq!(encoder.of(relative), bucket, "encoder, relative position {relative}");
    }
    // Decoder (causal): later keys share bucket 0; 32 buckets for the past, 16 exact.
    let decoder = Buckets { count: 32, max_distance: 128, causal: true };
    // 16 + floor(ln(20/16) / ln(8) * 16) = 16 + floor(1.72) = 17; ln(127/16) / ln 8 * 16 = 15.94.
    let cases = [(5, 0), (0, 0), (-5, 5), (-15, 15), (-16, 16), (-20, 17), (-127, 31), (-1000, 31)];
    for (relative, bucket) in cases {
        assert_eq!(decoder.of(relative), bucket, "decoder, relative position {relative}");
    }
}

#[test]
fn shaw_distances_are_clipped_at_k() {
    // Two queries (positions 2 and 3) over four keys, k = 1: rows 0, 1, 2 for -1, 0, +1.
    let rows: Vec<u32> = relative_indices(2, 4, 1, &Device::Cpu).unwrap().to_vec1().unwrap();
    assert_eq!(rows, [0, 0, 1, 2, 0, 0, 0, 1]);
}

fn random(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = Rng::new(seed);
    let n = shape.iter().product();
    Tensor::from_vec((0..n).map(|_| rng.normal()).collect::<Vec<f64>>(), shape, &Device::Cpu).unwrap()
}

#[test]
fn shaw_attention_is_its_formula() {
    let (b, t_q, t_k, n_head, head_dim, clip) = (2usize, 3usize, 5usize, 2usize, 3usize, 2usize);
    let d = n_head * head_dim;
    let (q, k, v) = (random(&[b, t_q, d], 1), random(&[b, t_k, d], 2), random(&[b, t_k, d], 3));
    let (a_k, a_v) = (random(&[2 * clip + 1, head_dim], 4), random(&[2 * clip + 1, head_dim], 5));
    let tables = RelativeTables { keys: &a_k, values: &a_v, clip };
    // Queries at key positions 2..5, causal: query i sees keys 0..=2+i.
    let mask = Mask::causal(t_k - t_q);
    let got = Composed.relative_attention(&q, &k, &v, n_head, &mask, &tables, 0.0, &mut Mode::eval()).unwrap();
    let got: Vec<f64> = got.flatten_all().unwrap().to_vec1().unwrap();

    let all = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let (q, k, v, a_k, a_v) = (all(&q), all(&k), all(&v), all(&a_k), all(&a_v));
    let mut want = vec![0f64; b * t_q * d];
    for (bi, h, i) in (0..b).flat_map(|bi| (0..n_head).flat_map(move |h| (0..t_q).map(move |i| (bi, h, i)))) {
        let position = t_k - t_q + i;
        let row = |j: usize| (j as i64 - position as i64).clamp(-(clip as i64), clip as i64) as usize + clip;
        let q_at = |c: usize| q[(bi * t_q + i) * d + h * head_dim + c];
        let kv_at = |x: &[f64], j: usize, c: usize| x[(bi * t_k + j) * d + h * head_dim + c];
        let scores: Vec<f64> = (0..=position)
            .map(|j| {
                let dot: f64 = (0..head_dim).map(|c| q_at(c) * (kv_at(&k, j, c) + a_k[row(j) * head_dim + c])).sum();
                dot / (head_dim as f64).sqrt()
            })
            .collect();
        let max = scores.iter().cloned().fold(f64::MIN, f64::max);
        let total: f64 = scores.iter().map(|s| (s - max).exp()).sum();
        for c in 0..head_dim {
            let value = |j: usize| kv_at(&v, j, c) + a_v[row(j) * head_dim + c];
            want[(bi * t_q + i) * d + h * head_dim + c] =
                scores.iter().enumerate().map(|(j, s)| (s - max).exp() / total * value(j)).sum();
        }
    }
    let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f64, f64::max);
    // The composed softmax runs in f32 whatever the input's dtype.
    assert!(diff < 1e-6, "Shaw attention differs from its formula by {diff}");
}
