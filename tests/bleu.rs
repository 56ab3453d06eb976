//! BLEU against sacreBLEU 2.6 (`sacrebleu.corpus_bleu(hyps, [refs])`, its defaults: 13a
//! tokenisation, exp smoothing). The expected values below were computed with it.

use taper::bleu::{corpus_bleu, tokenize_13a};

#[test]
fn tokenisation_matches_13a() {
    let cases = [
        ("Hello, world.", "Hello , world ."),
        ("It costs $3.50 (or 1,000 yen)!", "It costs $ 3.50 ( or 1,000 yen ) !"),
        ("pages 9-10 &amp; 12-14; \"quoted\" text/slash", "pages 9 - 10 & 12 - 14 ; \" quoted \" text / slash"),
        ("a.b,c end.", "a . b , c end ."),
        ("Don't stop-me now...", "Don't stop-me now . . ."),
        ("x.5 7.y 3,a", "x . 5 7 . y 3 , a"),
        ("<skipped>line-\nbreak", "linebreak"),
    ];
    for (input, want) in cases {
        assert_eq!(tokenize_13a(input), want, "{input:?}");
    }
}

/// (hypotheses, references, score, precisions, brevity penalty, sys_len, ref_len)
type Case<'a> = (&'a [&'a str], &'a [&'a str], f64, [f64; 4], f64, usize, usize);

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn corpus_scores_match_sacrebleu() {
    let cases: [Case; 6] = [
        (
            &["the cat is on the mat", "there is a cat on the mat"],
            &["the cat is on the mat", "there is a cat on the mat"],
            100.00000000000004,
            [100.0, 100.0, 100.0, 100.0],
            1.0,
            13,
            13,
        ),
        (
            &["the the the cat sat", "a cat is on a mat."],
            &["the cat sat on the mat", "the cat is on the mat."],
            27.353084099892616,
            [75.0, 50.0, 25.0, 8.3333333333],
            0.9200444146293233,
            12,
            13,
        ),
        (&["the cat"], &["the cat is on the mat"], 0.0, [100.0, 100.0, 0.0, 0.0], 0.1353352832366127, 2, 6),
        (&["foo bar baz"], &["the cat is on the mat"], 0.0, [0.0, 0.0, 0.0, 0.0], 0.36787944117144233, 3, 6),
        (
            &["the cat sat", "on mat"],
            &["the cat sat on the mat", "on the mat"],
            0.0,
            [100.0, 66.6666666667, 100.0, 0.0],
            0.44932896411722156,
            5,
            9,
        ),
        (
            &["It costs $3.50, or 1,000 yen.", "Pages 9-10."],
            &["It costs $3.50 or 1,000 yen.", "Pages 9-11."],
            51.697315395717055,
            [85.7142857143, 66.6666666667, 50.0, 25.0],
            1.0,
            14,
            13,
        ),
    ];
    for (hyps, refs, score, precisions, bp, sys_len, ref_len) in cases {
        let got = corpus_bleu(&strings(hyps), &strings(refs)).unwrap();
        assert!((got.score - score).abs() < 1e-9, "{hyps:?}: score {} vs {score}", got.score);
        for (g, w) in got.precisions.iter().zip(precisions) {
            assert!((g - w).abs() < 1e-8, "{hyps:?}: precisions {:?} vs {precisions:?}", got.precisions);
        }
        assert!((got.brevity_penalty - bp).abs() < 1e-12, "{hyps:?}: bp");
        assert_eq!((got.sys_len, got.ref_len), (sys_len, ref_len), "{hyps:?}");
    }
    assert!(corpus_bleu(&strings(&["a"]), &[]).is_err());
}

/// A corpus split in shares (as ranks score it): the shares' summed statistics give the whole
/// corpus's BLEU.
#[test]
fn summed_statistics_of_shares_give_the_corpus_score() {
    use taper::bleu::BleuStats;
    let hyps = strings(&["the the the cat sat", "a cat is on a mat.", "the cat sat", "on mat", "there is a cat"]);
    let refs =
        strings(&["the cat sat on the mat", "the cat is on the mat.", "the cat sat on the mat", "on the mat", "a cat"]);
    let whole = corpus_bleu(&hyps, &refs).unwrap();
    let mut sums = vec![0.0; taper::bleu::BLEU_VALUES];
    for rank in 0..2 {
        let (h, r): (Vec<String>, Vec<String>) =
            hyps.iter().zip(&refs).skip(rank).step_by(2).map(|(h, r)| (h.clone(), r.clone())).unzip();
        for (sum, value) in sums.iter_mut().zip(BleuStats::of(&h, &r).unwrap().to_values()) {
            *sum += value;
        }
    }
    let summed = BleuStats::from_values(&sums).bleu();
    assert_eq!(summed, whole);
    assert!(whole.score > 0.0 && whole.score < 100.0, "{whole:?}");
}
