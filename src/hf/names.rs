//! Checkpoint names as a table: every model is built with taper's module names (`tok_emb`,
//! `blocks.3.attn.q_proj`, `ln_f`, ...); a family whose parameters live under another layout
//! (Hugging Face's) has a table that maps a taper path to the checkpoint's and back, prefix by
//! prefix. Building a model through [`NameTable::renamed`] (candle's `VarBuilder::rename_f`)
//! makes its parameters, checkpoints and optimizer state carry the checkpoint's names, so a
//! Hugging Face file loads by name and exports as it is; [`NameTable::to_taper`] inverts it.

use candle_nn::VarBuilder;

/// One rule: a taper path prefix and the checkpoint path prefix it stands for, segment by
/// segment; a segment `{i}` matches a block number and carries it across.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    taper: Vec<String>,
    checkpoint: Vec<String>,
}

/// A family's name table: the longest matching rule applies; a path no rule covers keeps its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameTable {
    rules: Vec<Rule>,
}

fn segments(path: &str) -> Vec<String> {
    path.split('.').filter(|s| !s.is_empty()).map(str::to_string).collect()
}

/// The block number bound by `{i}` if `pattern` is a prefix of `name`, segment by segment.
fn match_prefix(pattern: &[String], name: &[&str]) -> Option<Option<String>> {
    if pattern.len() > name.len() {
        return None;
    }
    let mut index = None;
    for (p, n) in pattern.iter().zip(name) {
        if p == "{i}" && !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()) {
            index = Some(n.to_string());
        } else if p != n {
            return None;
        }
    }
    Some(index)
}

fn substitute(pattern: &[String], index: &Option<String>) -> Vec<String> {
    pattern.iter().map(|p| if p == "{i}" { index.clone().unwrap_or_default() } else { p.clone() }).collect()
}

impl NameTable {
    /// A table from `(taper, checkpoint)` path prefixes (`"blocks.{i}.ln_1"`, ...).
    pub fn new<T: AsRef<str>, C: AsRef<str>>(rules: impl IntoIterator<Item = (T, C)>) -> Self {
        let rules =
            rules.into_iter().map(|(t, c)| Rule { taper: segments(t.as_ref()), checkpoint: segments(c.as_ref()) });
        Self { rules: rules.collect() }
    }

    /// This table under a prefix on each side: `nested("encoder", "bert")` maps
    /// `encoder.tok_emb` to `bert.embeddings.word_embeddings`.
    pub fn nested(&self, taper: &str, checkpoint: &str) -> Vec<(String, String)> {
        let join = |prefix: &str, path: &[String]| {
            std::iter::once(prefix.to_string()).chain(path.iter().cloned()).collect::<Vec<_>>().join(".")
        };
        self.rules.iter().map(|r| (join(taper, &r.taper), join(checkpoint, &r.checkpoint))).collect()
    }

    /// The rules under a prefix on each side, the prefixes taken off: `under("encoder", "bert")`
    /// of a task model's table is its bare encoder's.
    pub fn under(&self, taper: &str, checkpoint: &str) -> Self {
        let (taper, checkpoint) = (segments(taper), segments(checkpoint));
        let strip = |path: &[String], prefix: &[String]| {
            (path.len() > prefix.len() && path.starts_with(prefix)).then(|| path[prefix.len()..].to_vec())
        };
        let rules = self.rules.iter().filter_map(|r| {
            Some(Rule { taper: strip(&r.taper, &taper)?, checkpoint: strip(&r.checkpoint, &checkpoint)? })
        });
        Self { rules: rules.collect() }
    }

    fn apply(&self, name: &str, from: fn(&Rule) -> &Vec<String>, to: fn(&Rule) -> &Vec<String>) -> Option<String> {
        let parts: Vec<&str> = name.split('.').collect();
        let matches = self.rules.iter().filter_map(|rule| Some((rule, match_prefix(from(rule), &parts)?)));
        let (rule, index) = matches.max_by_key(|(rule, _)| from(rule).len())?;
        let mut out = substitute(to(rule), &index);
        out.extend(parts[from(rule).len()..].iter().map(|s| s.to_string()));
        Some(out.join("."))
    }

    /// The checkpoint's name of taper's `name`, if a rule covers it.
    pub fn checkpoint_name(&self, name: &str) -> Option<String> {
        self.apply(name, |r| &r.taper, |r| &r.checkpoint)
    }

    /// taper's name of the checkpoint's `name`, if a rule covers it.
    pub fn taper_name(&self, name: &str) -> Option<String> {
        self.apply(name, |r| &r.checkpoint, |r| &r.taper)
    }

    /// The checkpoint's prefixes of the rules at or under taper's `prefix`: where a head's
    /// parameters are in the checkpoint (taper's head paths are unique; two heads' checkpoint
    /// names may nest, as RoBERTa's `classifier` and `classifier.dense`).
    pub fn checkpoint_prefixes(&self, prefix: &str) -> Vec<String> {
        let prefix = segments(prefix);
        self.rules.iter().filter(|r| r.taper.starts_with(&prefix)).map(|r| r.checkpoint.join(".")).collect()
    }

    /// Whether the checkpoint's `name` is at or under the checkpoint prefix of one of taper's
    /// `prefixes`.
    pub fn is_under(&self, name: &str, prefixes: &[&str]) -> bool {
        let within = |p: &String| name == p || name.strip_prefix(p.as_str()).is_some_and(|rest| rest.starts_with('.'));
        prefixes.iter().flat_map(|p| self.checkpoint_prefixes(p)).any(|p| within(&p))
    }

    /// taper's module path of `name` (a name no rule covers is taper's already).
    pub fn to_taper(&self, name: &str) -> String {
        self.taper_name(name).unwrap_or_else(|| name.to_string())
    }

    /// `vb` (at the root of a parameter store) seen through this table: a module asks for its
    /// taper path, the store holds the checkpoint's name.
    pub fn renamed<'a>(&self, vb: VarBuilder<'a>) -> VarBuilder<'a> {
        debug_assert!(vb.prefix().is_empty(), "rename at the root, not under `{}`", vb.prefix());
        let table = self.clone();
        vb.rename_f(move |name| table.checkpoint_name(name).unwrap_or_else(|| name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_map_both_ways_and_carry_the_block_number() {
        let t =
            NameTable::new([("blocks.{i}.ln_1", "encoder.layer.{i}.attention.output.LayerNorm"), ("tok_emb", "wte")]);
        assert_eq!(
            t.checkpoint_name("blocks.12.ln_1.weight").unwrap(),
            "encoder.layer.12.attention.output.LayerNorm.weight"
        );
        assert_eq!(t.taper_name("encoder.layer.3.attention.output.LayerNorm.bias").unwrap(), "blocks.3.ln_1.bias");
        assert_eq!(t.checkpoint_name("tok_emb.weight").unwrap(), "wte.weight");
        assert_eq!(t.checkpoint_name("blocks.x.ln_1.weight"), None, "{{i}} takes digits only");
        assert_eq!(t.to_taper("lm_head.weight"), "lm_head.weight");
        let nested = NameTable::new(t.nested("encoder", "bert"));
        assert_eq!(nested.checkpoint_name("encoder.tok_emb.weight").unwrap(), "bert.wte.weight");
    }
}
