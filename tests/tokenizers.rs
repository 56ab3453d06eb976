//! Every tokenizer kind trains on a corpus, round-trips text, and reloads from tokenizer.json.

mod common;

use taper::config::{TokenizerConfig, TokenizerKind};
use taper::data::TextTokenizer;

#[test]
fn every_kind_trains_encodes_decodes_and_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let text = common::pattern_corpus(400);
    let corpus = common::write_corpus(dir.path(), &text);
    let sample = "anna helps fred.\nemma calls dirk.\n";
    for (kind, vocab) in [
        (TokenizerKind::Char, None),
        (TokenizerKind::Bpe, Some(60)),
        (TokenizerKind::ByteLevelBpe, Some(300)),
        (TokenizerKind::Wordpiece, Some(60)),
        (TokenizerKind::Unigram, Some(60)),
    ] {
        let cfg = TokenizerConfig { kind, vocab_size: vocab, path: None };
        let tokenizer = TextTokenizer::from_config(&cfg, &corpus, &text).unwrap();
        if let Some(v) = vocab {
            assert!(
                tokenizer.vocab_size() <= v && tokenizer.vocab_size() > 20,
                "{kind:?}: vocab {}",
                tokenizer.vocab_size()
            );
        }
        let ids = tokenizer.encode(sample).unwrap();
        assert!(ids.len() < sample.len() || kind == TokenizerKind::Char, "{kind:?} merges characters");
        let decoded = tokenizer.decode(&ids).unwrap();
        if kind == TokenizerKind::Wordpiece {
            // WordPiece drops whitespace layout: the words survive.
            assert_eq!(decoded.split_whitespace().collect::<String>(), "annahelpsfred.emmacallsdirk.");
        } else {
            assert_eq!(decoded, sample, "{kind:?} round trip");
        }
        let path = dir.path().join(format!("{kind:?}.json"));
        tokenizer.save(&path).unwrap();
        let loaded = TextTokenizer::from_config(
            &TokenizerConfig { kind: TokenizerKind::File, vocab_size: None, path: Some(path) },
            &corpus,
            &text,
        )
        .unwrap();
        assert_eq!(loaded.encode(sample).unwrap(), ids, "{kind:?} reload");
        assert_eq!(
            tokenizer.encode_corpus(&text).unwrap(),
            tokenizer.encode(&text).unwrap(),
            "{kind:?}: chunked corpus encoding"
        );
    }
}

#[test]
fn char_tokenizer_refuses_unseen_characters() {
    let tokenizer = TextTokenizer::char_level("abc").unwrap();
    assert_eq!(tokenizer.encode("cab").unwrap(), vec![2, 0, 1]);
    assert!(tokenizer.encode("abz").is_err());
}
