//! Entity-level precision, recall and F1 of tag sequences, as seqeval 1.2 computes them:
//! `mode="strict"` with a scheme (an entity counts only when its tags form a well-made span
//! of that scheme: `Tokens.entities` in seqeval/scheme.py), or seqeval's default matching
//! (conlleval's: `get_entities`, which also reads broken spans such as a lone `I-PER`).
//! Micro-averaged over the entity types; a metric with a zero denominator is 0, as seqeval's
//! `zero_division` default. Hand-written: no Rust crate implements seqeval's rules.

use std::collections::HashSet;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// How tags mark entities (`task.scheme`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// `I-X` inside and at the start; `B-X` only to start an entity right after another `X`.
    Iob1,
    /// `B-X` starts every entity, `I-X` continues it (CoNLL-2003 as usually distributed).
    Iob2,
    /// `B-X` begin, `I-X` inside, `E-X` end, `S-X` a one-word entity.
    Iobes,
}

impl Scheme {
    fn prefixes(self) -> &'static [char] {
        match self {
            Scheme::Iob1 | Scheme::Iob2 => &['B', 'I'],
            Scheme::Iobes => &['B', 'I', 'E', 'S'],
        }
    }

    /// Why `tag` is not a tag of this scheme (`O`, or a prefix, `-`, and a type), if it is not.
    pub fn check(self, tag: &str) -> Result<()> {
        if tag == "O" {
            return Ok(());
        }
        let mut chars = tag.chars();
        let (prefix, dash) = (chars.next(), chars.next());
        match (prefix, dash) {
            (Some(p), Some('-')) if self.prefixes().contains(&p) && tag.len() > 2 => Ok(()),
            _ => bail!(
                "tag `{tag}` is not one of {self:?}'s: `O`, or {}- and an entity type (`B-PER`); set `task.scheme` \
                 to the file's scheme (iob1, iob2, iobes)",
                self.prefixes().iter().map(char::to_string).collect::<Vec<_>>().join("-, ")
            ),
        }
    }
}

/// An entity: its type and the half-open word range it covers.
pub type Span = (String, usize, usize);

/// A tag split into its prefix (`B`, `I`, `E`, `S`, `O`) and type (`_` for `O`, as seqeval).
fn split(tag: &str) -> (char, &str) {
    let prefix = tag.chars().next().unwrap_or('O');
    let rest = tag.get(prefix.len_utf8()..).unwrap_or("");
    let kind = rest.trim_matches('-');
    (prefix, if kind.is_empty() { "_" } else { kind })
}

/// seqeval's strict patterns: (previous prefix, this prefix, same type?) for start, inside, end.
fn is_start(scheme: Scheme, (pp, pt): (char, &str), (p, t): (char, &str)) -> bool {
    match scheme {
        Scheme::Iob2 => p == 'B',
        Scheme::Iobes => p == 'B' || p == 'S',
        Scheme::Iob1 => {
            matches!((pp, p), ('O', 'I') | ('B', 'I'))
                || (pp == 'I' && p == 'I' && pt != t)
                || (matches!(pp, 'I' | 'B') && p == 'B' && pt == t)
        }
    }
}

fn is_inside(scheme: Scheme, (pp, pt): (char, &str), (p, t): (char, &str)) -> bool {
    let same = pt == t;
    match scheme {
        Scheme::Iob1 | Scheme::Iob2 => same && matches!(pp, 'B' | 'I') && p == 'I',
        Scheme::Iobes => same && matches!(pp, 'B' | 'I') && matches!(p, 'I' | 'E'),
    }
}

fn is_end(scheme: Scheme, (pp, pt): (char, &str), (p, t): (char, &str)) -> bool {
    let same = pt == t;
    match scheme {
        Scheme::Iob2 => matches!(pp, 'B' | 'I') && (p == 'O' || p == 'B' || (p == 'I' && !same)),
        Scheme::Iob1 => {
            matches!(pp, 'B' | 'I') && (p == 'O' || (p == 'I' && !same) || (p == 'B' && (pp == 'I' || same)))
        }
        Scheme::Iobes => matches!(pp, 'S' | 'E'),
    }
}

/// The entities of one sentence's tags under seqeval's strict mode (`Tokens.entities`).
pub fn strict_entities(tags: &[&str], scheme: Scheme) -> Vec<Span> {
    let mut extended: Vec<(char, &str)> = tags.iter().map(|t| split(t)).collect();
    extended.push(('O', "_"));
    let (mut entities, mut i, mut prev) = (Vec::new(), 0, ('O', "_"));
    while i < extended.len() {
        let token = extended[i];
        if is_start(scheme, prev, token) {
            // Forward over the inside tokens; the end is the first token that is not.
            let (mut end, mut last) = (i + 1, token);
            while end < extended.len() && is_inside(scheme, last, extended[end]) {
                last = extended[end];
                end += 1;
            }
            if end == extended.len() {
                end = tags.len().saturating_sub(1); // seqeval's fall-through (never reached: `O` ends all)
            }
            if is_end(scheme, extended[end - 1], extended[end]) {
                entities.push((token.1.to_string(), i, end));
            }
            i = end;
        } else {
            i += 1;
        }
        prev = extended[i - 1];
    }
    entities
}

/// The entities of one sentence's tags under seqeval's default matching (`get_entities`).
pub fn lenient_entities(tags: &[&str]) -> Vec<Span> {
    let (mut prev, mut begin, mut chunks) = (('O', ""), 0, Vec::new());
    for (i, tag) in tags.iter().copied().chain(["O"]).enumerate() {
        // `chunk[1:].split('-', maxsplit=1)[-1] or '_'`
        let p = tag.chars().next().unwrap_or('O');
        let rest = tag.get(p.len_utf8()..).unwrap_or("");
        let t = rest.split_once('-').map_or(rest, |(_, kind)| kind);
        let t = if t.is_empty() { "_" } else { t };
        let (pp, pt) = prev;
        let ended = matches!(pp, 'E' | 'S')
            || (matches!(pp, 'B' | 'I') && matches!(p, 'B' | 'S' | 'O'))
            || (pp != 'O' && pp != '.' && pt != t);
        if ended {
            chunks.push((pt.to_string(), begin, i));
        }
        let started = matches!(p, 'B' | 'S')
            || (matches!(pp, 'E' | 'S' | 'O') && matches!(p, 'E' | 'I'))
            || (p != 'O' && p != '.' && pt != t);
        if started {
            begin = i;
        }
        prev = (p, t);
    }
    chunks
}

/// What entity metrics are computed from, as sums over sentences (so ranks' shares add up).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EntityCounts {
    /// Predicted entities that are true entities (same type and span).
    pub correct: usize,
    pub predicted: usize,
    pub true_entities: usize,
}

impl EntityCounts {
    /// Counts of one sentence: `truth` and `predicted` tag the same words.
    pub fn of(truth: &[&str], predicted: &[&str], scheme: Scheme, strict: bool) -> Self {
        let entities = |tags: &[&str]| if strict { strict_entities(tags, scheme) } else { lenient_entities(tags) };
        let (truth, predicted) = (entities(truth), entities(predicted));
        let true_set: HashSet<&Span> = truth.iter().collect();
        let correct = predicted.iter().collect::<HashSet<_>>().intersection(&true_set).count();
        Self { correct, predicted: predicted.len(), true_entities: truth.len() }
    }

    pub fn add(&mut self, other: Self) {
        self.correct += other.correct;
        self.predicted += other.predicted;
        self.true_entities += other.true_entities;
    }

    /// (precision, recall, F1), micro-averaged.
    pub fn scores(&self) -> (f64, f64, f64) {
        let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let (p, r) = (ratio(self.correct, self.predicted), ratio(self.correct, self.true_entities));
        let f1 = if p + r == 0.0 { 0.0 } else { 2.0 * p * r / (p + r) };
        (p, r, f1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(list: &[(&str, usize, usize)]) -> Vec<Span> {
        list.iter().map(|&(t, a, b)| (t.to_string(), a, b)).collect()
    }

    #[test]
    fn the_docstring_examples() {
        assert_eq!(
            strict_entities(&["B-PER", "I-PER", "O", "B-LOC"], Scheme::Iob2),
            spans(&[("PER", 0, 2), ("LOC", 3, 4)])
        );
        // get_entities' inclusive ends, as half-open ranges.
        assert_eq!(lenient_entities(&["B-PER", "I-PER", "O", "B-LOC"]), spans(&[("PER", 0, 2), ("LOC", 3, 4)]));
    }

    #[test]
    fn a_lone_inside_tag_counts_only_when_lenient() {
        assert_eq!(strict_entities(&["O", "I-PER", "I-PER"], Scheme::Iob2), Vec::<Span>::new());
        assert_eq!(lenient_entities(&["O", "I-PER", "I-PER"]), spans(&[("PER", 1, 3)]));
        assert_eq!(strict_entities(&["O", "I-PER", "I-PER"], Scheme::Iob1), spans(&[("PER", 1, 3)]));
    }

    #[test]
    fn tags_outside_the_scheme_are_refused() {
        assert!(Scheme::Iob2.check("S-PER").is_err());
        assert!(Scheme::Iobes.check("S-PER").is_ok());
        assert!(Scheme::Iob2.check("PER").is_err());
        assert!(Scheme::Iob2.check("B-").is_err());
        assert!(Scheme::Iob2.check("O").is_ok());
    }
}
