//! Every tokenizer kind trains on a corpus, round-trips text, and reloads from tokenizer.json.

mod common;

use taper::config::{TokenizerConfig, TokenizerKind};
use taper::data::{Corpus, TextTokenizer};

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
        let cfg = TokenizerConfig { kind, vocab_size: vocab, ..Default::default() };
        let tokenizer = TextTokenizer::from_config(&cfg, &Corpus::text_file(&corpus).unwrap()).unwrap();
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
            &TokenizerConfig { kind: TokenizerKind::File, path: Some(path), ..Default::default() },
            &Corpus::text_file(&corpus).unwrap(),
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

/// Training is a pure function of the corpus: each kind trained five times on the same text
/// gives the same tokenizer.json (tokenizers' WordPiece trainer numbers its pieces in a randomly
/// seeded hash map's order, huggingface/tokenizers#1794; taper trains WordPiece itself). Not
/// yet Unigram: its trainer gives the pruned required characters their scores in a hash set's
/// order.
#[test]
fn training_twice_gives_the_same_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let text = common::pattern_corpus(400) + "zebra quartz jumps; vexing wolf knows hyphy glib.\n";
    let corpus = common::write_corpus(dir.path(), &text);
    for (kind, vocab) in [(TokenizerKind::Bpe, 60), (TokenizerKind::ByteLevelBpe, 300), (TokenizerKind::Wordpiece, 60)]
    {
        let cfg = TokenizerConfig { kind, vocab_size: Some(vocab), ..Default::default() };
        let corpus = Corpus::text_file(&corpus).unwrap();
        let json = || TextTokenizer::from_config(&cfg, &corpus).unwrap().inner().to_string(false).unwrap();
        let first = json();
        for _ in 0..4 {
            assert_eq!(json(), first, "{kind:?}");
        }
    }
}
