//! Corpus BLEU as sacreBLEU computes it by default (13a tokenisation, n-grams up to 4, "exp"
//! smoothing, one reference per hypothesis), so taper's numbers compare with published ones.
//! Written here: there is no BLEU crate among the project's dependencies, and the definition is
//! short; `tests/bleu.rs` pins it to values computed by sacreBLEU 2.6.

use std::collections::HashMap;

use anyhow::{bail, Result};

const MAX_ORDER: usize = 4;

/// True for the characters of mteval-v13a's punctuation class
/// `[\{-\~\[-\` -\&\(-\+\:-\@\/]`, which get spaces around them: `{`-`~`, `[`-`` ` ``,
/// ` `-`&`, `(`-`+`, `:`-`@` and `/`, as code points (brace literals confuse brace-counting tools).
fn is_13a_punctuation(c: char) -> bool {
    matches!(c as u32, 0x7b..=0x7e | 0x5b..=0x60 | 0x20..=0x26 | 0x28..=0x2b | 0x3a..=0x40 | 0x2f)
}

/// One regex substitution pass of the form `(A)(B) -> …`, applied left to right without
/// overlaps, as Python's `re.sub` does.
fn pairs(chars: &[char], matches: impl Fn(char, char) -> bool, emit: impl Fn(char, char, &mut Vec<char>)) -> Vec<char> {
    let mut out = Vec::with_capacity(chars.len() + 8);
    let mut i = 0;
    while i < chars.len() {
        if i + 1 < chars.len() && matches(chars[i], chars[i + 1]) {
            emit(chars[i], chars[i + 1], &mut out);
            i += 2;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

/// sacreBLEU's `13a` tokenizer (the mteval-v13a tokenisation used by WMT).
pub fn tokenize_13a(line: &str) -> String {
    let mut line = line.replace("<skipped>", "").replace("-\n", "").replace('\n', " ");
    if line.contains('&') {
        line = line.replace("&quot;", "\"").replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">");
    }
    let line = format!(" {line} ");
    let mut chars: Vec<char> = Vec::with_capacity(line.len() * 2);
    for c in line.chars() {
        if is_13a_punctuation(c) {
            chars.extend([' ', c, ' ']);
        } else {
            chars.push(c);
        }
    }
    let digit = |c: char| c.is_ascii_digit();
    let period_or_comma = |c: char| c == '.' || c == ',';
    // Period and comma unless preceded by a digit: `([^0-9])([\.,])` -> `\1 \2 `.
    let chars = pairs(&chars, |a, b| !digit(a) && period_or_comma(b), |a, b, out| out.extend([a, ' ', b, ' ']));
    // Period and comma unless followed by a digit: `([\.,])([^0-9])` -> ` \1 \2`.
    let chars = pairs(&chars, |a, b| period_or_comma(a) && !digit(b), |a, b, out| out.extend([' ', a, ' ', b]));
    // Dash after a digit: `([0-9])(-)` -> `\1 \2 `.
    let chars = pairs(&chars, |a, b| digit(a) && b == '-', |a, b, out| out.extend([a, ' ', b, ' ']));
    chars.into_iter().collect::<String>().split_whitespace().collect::<Vec<_>>().join(" ")
}

#[derive(Debug, Clone, PartialEq)]
pub struct Bleu {
    /// 0-100.
    pub score: f64,
    /// n-gram precisions (0-100) for n = 1..4, smoothed as sacreBLEU does.
    pub precisions: [f64; MAX_ORDER],
    pub brevity_penalty: f64,
    pub sys_len: usize,
    pub ref_len: usize,
}

fn ngram_counts<'a>(tokens: &'a [&'a str], n: usize) -> HashMap<&'a [&'a str], usize> {
    let mut counts = HashMap::new();
    for gram in tokens.windows(n) {
        *counts.entry(gram).or_insert(0) += 1;
    }
    counts
}

/// What corpus BLEU is computed from, as sums over sentences (so shares of a corpus add up):
/// clipped n-gram matches and hypothesis n-grams for n = 1..4, and both lengths in tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BleuStats {
    pub correct: [usize; MAX_ORDER],
    pub total: [usize; MAX_ORDER],
    pub sys_len: usize,
    pub ref_len: usize,
}

/// The values of [`BleuStats::to_values`].
pub const BLEU_VALUES: usize = 2 * MAX_ORDER + 2;

impl BleuStats {
    /// The statistics of `hypotheses` against one reference each.
    pub fn of(hypotheses: &[String], references: &[String]) -> Result<Self> {
        if hypotheses.len() != references.len() {
            bail!("{} hypotheses but {} references", hypotheses.len(), references.len());
        }
        let mut stats = Self::default();
        for (hyp, reference) in hypotheses.iter().zip(references) {
            let (hyp, reference) = (tokenize_13a(hyp), tokenize_13a(reference));
            let hyp: Vec<&str> = hyp.split_whitespace().collect();
            let reference: Vec<&str> = reference.split_whitespace().collect();
            stats.sys_len += hyp.len();
            stats.ref_len += reference.len();
            for n in 1..=MAX_ORDER {
                let ref_counts = ngram_counts(&reference, n);
                for (gram, count) in ngram_counts(&hyp, n) {
                    stats.correct[n - 1] += count.min(ref_counts.get(gram).copied().unwrap_or(0));
                }
                stats.total[n - 1] += hyp.len().saturating_sub(n - 1);
            }
        }
        Ok(stats)
    }

    /// The counts as numbers, to be summed (over ranks) and read back with `from_values`.
    pub fn to_values(&self) -> [f64; BLEU_VALUES] {
        let mut values = [0.0; BLEU_VALUES];
        for n in 0..MAX_ORDER {
            values[n] = self.correct[n] as f64;
            values[MAX_ORDER + n] = self.total[n] as f64;
        }
        values[2 * MAX_ORDER] = self.sys_len as f64;
        values[2 * MAX_ORDER + 1] = self.ref_len as f64;
        values
    }

    pub fn from_values(values: &[f64]) -> Self {
        let count = |i: usize| values.get(i).copied().unwrap_or(0.0) as usize;
        Self {
            correct: std::array::from_fn(count),
            total: std::array::from_fn(|n| count(MAX_ORDER + n)),
            sys_len: count(2 * MAX_ORDER),
            ref_len: count(2 * MAX_ORDER + 1),
        }
    }

    /// Corpus BLEU of these statistics, as sacreBLEU computes it (exp smoothing).
    pub fn bleu(&self) -> Bleu {
        let Self { correct, total, sys_len, ref_len } = *self;
        let brevity_penalty = match (sys_len, ref_len) {
            (s, r) if s >= r => 1.0,
            (0, _) => 0.0,
            (s, r) => (1.0 - r as f64 / s as f64).exp(),
        };
        let mut precisions = [0.0; MAX_ORDER];
        if correct.iter().all(|&c| c == 0) {
            return Bleu { score: 0.0, precisions, brevity_penalty, sys_len, ref_len };
        }
        let mut smooth = 1.0;
        for n in 0..MAX_ORDER {
            if total[n] == 0 {
                break;
            }
            precisions[n] = if correct[n] == 0 {
                smooth *= 2.0;
                100.0 / (smooth * total[n] as f64)
            } else {
                100.0 * correct[n] as f64 / total[n] as f64
            };
        }
        // sacreBLEU's log(0) is -9999999999, which makes the score 0.
        let log = |p: f64| if p == 0.0 { -9_999_999_999.0 } else { p.ln() };
        let score = brevity_penalty * (precisions.iter().map(|&p| log(p)).sum::<f64>() / MAX_ORDER as f64).exp();
        Bleu { score, precisions, brevity_penalty, sys_len, ref_len }
    }
}

/// Corpus BLEU of `hypotheses` against one reference each.
pub fn corpus_bleu(hypotheses: &[String], references: &[String]) -> Result<Bleu> {
    Ok(BleuStats::of(hypotheses, references)?.bleu())
}
