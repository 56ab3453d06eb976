//! Corpora through shard sets: the mapped ids are the in-memory path's, every format gives the
//! same ids, the shards do not depend on the thread count, a kill mid-way leaves no usable half
//! set, a damaged or foreign set is rebuilt, and bad input names its file and line.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use taper::config::Config;
use taper::data::{corpus_tokenizer, prepare, BatchBuffers, Corpus, Split, TextTokenizer, TokenDataset};

const TAPER: &str = env!("CARGO_BIN_EXE_taper");
const MODEL: &str =
    "[model]\nn_layer = 1\nn_head = 2\nd_model = 16\nblock_size = 16\n\n[train]\nsteps = 4\nbatch_size = 4\n\n";
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/corpus");

/// A config for `paths` (TOML value) with its own cache, small shards, and `extra` keys.
fn config(dir: &Path, paths: &str, extra: &str) -> Config {
    let text = format!(
        "[model]\nn_layer = 1\nn_head = 2\nd_model = 16\nblock_size = 16\n\n[data]\npath = {paths}\nval_fraction = 0.2\n\
         cache_dir = \"{}\"\nshard_tokens = 1024\n\n[train]\nsteps = 4\nbatch_size = 4\n\n[checkpoint]\ndir = \"{}\"\n",
        dir.join("cache").display(),
        dir.join("run").display()
    );
    let path = dir.join("taper.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(&path, &common::overrides(extra)).unwrap()
}

fn documents() -> Vec<String> {
    let text = std::fs::read_to_string(Path::new(FIXTURES).join("docs.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["text"].as_str().unwrap().to_string())
        .collect()
}

/// (train ids, val ids, documents) of the corpus `cfg` names, with `tokenizer`.
fn ids(cfg: &Config, tokenizer: &TextTokenizer) -> (Vec<u32>, Vec<u32>, usize) {
    let corpus = Corpus::resolve(&cfg.data).unwrap();
    let prepared = prepare(&cfg.data, &corpus, tokenizer).unwrap();
    (prepared.train.to_vec(), prepared.val.to_vec(), prepared.index.documents)
}

#[test]
fn a_one_file_corpus_maps_the_in_memory_ids_and_batches_across_shards() {
    let dir = tempfile::tempdir().unwrap();
    let text = common::pattern_corpus(300);
    let path = common::write_corpus(dir.path(), &text);
    let cfg = config(dir.path(), &format!("{:?}", path.display().to_string()), "");
    let corpus = Corpus::resolve(&cfg.data).unwrap();
    let tokenizer = corpus_tokenizer(&cfg.tokenizer, &cfg.data, &corpus).unwrap();
    let prepared = prepare(&cfg.data, &corpus, &tokenizer).unwrap();
    assert!(prepared.built.is_some() && prepared.index.shards.len() > 3, "{} shards", prepared.index.shards.len());
    let memory = TokenDataset::new(tokenizer.encode_corpus(&text).unwrap(), 0.2, 16, &path).unwrap();
    let mapped = TokenDataset::from_streams(prepared.train, prepared.val, 16, &"corpus").unwrap();
    for split in [Split::Train, Split::Val] {
        assert_eq!(mapped.tokens(split).to_vec(), memory.tokens(split).to_vec(), "{split:?}");
    }
    let (mut a, mut b) = (BatchBuffers::default(), BatchBuffers::default());
    for step in 0..50 {
        mapped.windows(Split::Train, 7, step, 0, 8, &mut a);
        memory.windows(Split::Train, 7, step, 0, 8, &mut b);
        assert_eq!(a.inputs(), b.inputs(), "step {step}");
    }
    // The second time the set is mapped, not rebuilt.
    let again = prepare(&cfg.data, &corpus, &tokenizer).unwrap();
    assert!(again.built.is_none() && again.dir == prepared.dir);
}

#[test]
fn text_jsonl_gzip_zstd_and_parquet_give_the_same_ids() {
    let dir = tempfile::tempdir().unwrap();
    let docs = documents();
    let write = |name: &str, bytes: Vec<u8>| {
        std::fs::write(dir.path().join(name), bytes).unwrap();
        format!("{:?}", dir.path().join(name).display().to_string())
    };
    let jsonl = std::fs::read(Path::new(FIXTURES).join("docs.jsonl")).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &jsonl).unwrap();
    let variants = [
        (write("docs.txt", docs.join("\n").into_bytes()), "data.documents=\"blank-line\""),
        (write("docs.jsonl", jsonl.clone()), ""),
        (write("docs.jsonl.gz", gz.finish().unwrap()), ""),
        (write("docs.jsonl.zst", zstd::encode_all(&jsonl[..], 3).unwrap()), ""),
        (format!("{:?}", format!("{FIXTURES}/docs.parquet")), ""),
    ];
    let tokenizer = TextTokenizer::char_level(&docs.concat()).unwrap();
    let mut first = None;
    for (path, extra) in variants {
        let got = ids(&config(dir.path(), &path, extra), &tokenizer);
        assert_eq!(got.2, 120, "{path}: documents");
        assert!(got.1.len() > 100, "{path}: some documents are val");
        match &first {
            None => first = Some(got),
            Some(want) => assert_eq!(&got, want, "{path}"),
        }
    }
    // Each document is followed by a blank line (the char vocabulary has no end-of-text token).
    let (train, val, _) = first.unwrap();
    let text = tokenizer.decode(&train).unwrap() + &tokenizer.decode(&val).unwrap();
    assert_eq!(text.matches("\n\n\n").count(), 120, "{text}");
}

/// The shards of a corpus with each thread count (a separate process each: the pool is global).
fn prepared_files(dir: &Path, threads: usize) -> Vec<(String, Vec<u8>)> {
    let cfg = dir.join(format!("t{threads}.toml"));
    let cache = dir.join(format!("cache{threads}"));
    std::fs::write(
        &cfg,
        format!(
            "{MODEL}[data]\npath = \"{}\"\ncache_dir = \"{}\"\nshard_tokens = 4096\n\n[tokenizer]\nkind = \"byte-level-bpe\"\nvocab_size = 300\n",
            Path::new(FIXTURES).join("docs.jsonl").display(),
            cache.display()
        ),
    )
    .unwrap();
    let out =
        Command::new(TAPER).arg("prepare").arg(&cfg).env("RAYON_NUM_THREADS", threads.to_string()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let set = std::fs::read_dir(cache.join("corpora")).unwrap().next().unwrap().unwrap().path();
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&set)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .filter(|(name, _)| name.ends_with(".bin"))
        .collect();
    files.sort();
    files
}

#[test]
fn shards_do_not_depend_on_the_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let one = prepared_files(dir.path(), 1);
    assert!(one.len() >= 2, "train and val shards");
    assert_eq!(prepared_files(dir.path(), 2), one);
    assert_eq!(prepared_files(dir.path(), 4), one);
}

#[test]
fn a_damaged_or_foreign_set_is_rebuilt_and_the_same_ids_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = format!("{:?}", format!("{FIXTURES}/docs.jsonl"));
    let cfg = config(dir.path(), &path, "");
    let corpus = Corpus::resolve(&cfg.data).unwrap();
    let tokenizer = TextTokenizer::char_level(&documents().concat()).unwrap();
    let first = prepare(&cfg.data, &corpus, &tokenizer).unwrap();
    let want = (first.train.to_vec(), first.val.to_vec());
    // A shard cut short (a disk that filled, a copy that stopped): detected and rebuilt.
    let shard = first.dir.join(&first.index.shards[0].file);
    drop(first);
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() - 6]).unwrap();
    let rebuilt = prepare(&cfg.data, &corpus, &tokenizer).unwrap();
    assert!(rebuilt.built.is_some());
    assert_eq!((rebuilt.train.to_vec(), rebuilt.val.to_vec()), want);
    // An index written for another tokenizer: rebuilt too.
    let index_path = rebuilt.dir.join("index.json");
    let text = std::fs::read_to_string(&index_path).unwrap();
    std::fs::write(&index_path, text.replace(&rebuilt.index.tokenizer, "0123456789abcdef")).unwrap();
    let again = prepare(&cfg.data, &corpus, &tokenizer).unwrap();
    assert!(again.built.is_some());
    assert_eq!((again.train.to_vec(), again.val.to_vec()), want);
}

#[test]
fn files_added_at_the_end_move_no_document_between_splits() {
    let dir = tempfile::tempdir().unwrap();
    let corpus_dir = dir.path().join("corpus");
    std::fs::create_dir_all(&corpus_dir).unwrap();
    let docs = documents();
    let jsonl =
        |docs: &[String]| docs.iter().map(|d| serde_json::json!({ "text": d }).to_string() + "\n").collect::<String>();
    std::fs::write(corpus_dir.join("a.jsonl"), jsonl(&docs[..80])).unwrap();
    let tokenizer = TextTokenizer::char_level(&docs.concat()).unwrap();
    let cfg = config(dir.path(), &format!("{:?}", corpus_dir.display().to_string()), "");
    let (train_a, val_a, n_a) = ids(&cfg, &tokenizer);
    std::fs::write(corpus_dir.join("b.jsonl"), jsonl(&docs[80..])).unwrap();
    let (train_b, val_b, n_b) = ids(&cfg, &tokenizer);
    assert_eq!((n_a, n_b), (80, 120));
    assert!(train_b.len() > train_a.len() && val_b.len() >= val_a.len());
    assert_eq!(&train_b[..train_a.len()], &train_a[..]);
    assert_eq!(&val_b[..val_a.len()], &val_a[..]);
}

#[test]
fn a_kill_during_preparation_leaves_no_usable_half_set() {
    let dir = tempfile::tempdir().unwrap();
    let line = "the quick brown fox jumps over the lazy dog while anna helps fred.\n";
    let corpus = dir.path().join("big.txt");
    std::fs::write(&corpus, line.repeat(600_000)).unwrap(); // 40 MB
    let cache = dir.path().join("cache");
    let cfg = dir.path().join("big.toml");
    std::fs::write(
        &cfg,
        format!(
            "{MODEL}[data]\npath = \"{}\"\ncache_dir = \"{}\"\nshard_tokens = 65536\n",
            corpus.display(),
            cache.display()
        ),
    )
    .unwrap();
    let mut child = Command::new(TAPER).arg("prepare").arg(&cfg).stderr(std::process::Stdio::null()).spawn().unwrap();
    let corpora = cache.join("corpora");
    let half_written = || -> bool {
        let Ok(entries) = std::fs::read_dir(&corpora) else { return false };
        entries.flatten().any(|e| {
            e.file_name().to_string_lossy().contains(".tmp-")
                && std::fs::read_dir(e.path()).is_ok_and(|mut d| d.next().is_some())
        })
    };
    let started = std::time::Instant::now();
    while !half_written() && started.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(half_written(), "preparation never wrote a shard");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let published: Vec<PathBuf> = std::fs::read_dir(&corpora)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    assert!(published.is_empty(), "a half set was published: {published:?}");
    // The next preparation removes the dead one's folder and builds the whole set.
    let out = Command::new(TAPER).arg("prepare").arg(&cfg).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let names: Vec<String> =
        std::fs::read_dir(&corpora).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names.len(), 1, "{names:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let train = ((1.0 - 0.1) * (600_000 * line.len()) as f64) as usize;
    assert!(stdout.contains(&format!("{train} train /")), "{stdout}");
}

fn error_of(cfg: &Config) -> String {
    let corpus = match Corpus::resolve(&cfg.data) {
        Ok(corpus) => corpus,
        Err(err) => return format!("{err:#}"),
    };
    let tokenizer = TextTokenizer::char_level("abc\n").unwrap();
    match prepare(&cfg.data, &corpus, &tokenizer) {
        Ok(_) => panic!("prepared a bad corpus"),
        Err(err) => format!("{err:#}"),
    }
}

#[test]
fn bad_corpora_name_the_file_the_line_or_the_columns() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        std::fs::write(dir.path().join(name), text).unwrap();
        format!("{:?}", dir.path().join(name).display().to_string())
    };
    let no_key = file("a.jsonl", "{\"text\": \"abc\"}\n{\"body\": \"abc\"}\n");
    let err = error_of(&config(dir.path(), &no_key, ""));
    assert!(err.contains("a.jsonl") && err.contains("line 2 has no key `text`") && err.contains("[\"body\"]"), "{err}");
    let parquet = format!("{:?}", format!("{FIXTURES}/docs.parquet"));
    let err = error_of(&config(dir.path(), &parquet, "data.text_column=\"body\""));
    assert!(err.contains("docs.parquet has no column `body` (its columns: id, text)"), "{err}");
    let err = error_of(&config(dir.path(), &file("b.txt", "ab\u{e9}\n"), ""));
    assert!(err.contains("b.txt"), "{err}");
    let err = error_of(&config(dir.path(), "\"nowhere/*.jsonl\"", ""));
    assert!(err.contains("`data.path` = \"nowhere/*.jsonl\" matches no file"), "{err}");
    // An unreadable file among many: named; skipped only when asked.
    let folder = dir.path().join("many");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("1.txt"), "abc\nabc\n").unwrap();
    std::os::unix::fs::symlink(dir.path().join("gone.txt"), folder.join("2.txt")).unwrap();
    std::fs::write(folder.join("3.txt"), "cab\n").unwrap();
    let many = format!("{:?}", folder.display().to_string());
    let err = error_of(&config(dir.path(), &many, ""));
    assert!(err.contains("2.txt") && err.contains("data.skip_unreadable"), "{err}");
    let cfg = config(dir.path(), &many, "data.skip_unreadable=true data.val_fraction=0.5");
    let corpus = Corpus::resolve(&cfg.data).unwrap();
    assert_eq!(corpus.sources.len(), 2, "the unreadable file is skipped");
}

#[test]
fn taper_prepare_then_train_maps_the_set_without_tokenizing_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = format!("{:?}", format!("{FIXTURES}/docs.jsonl"));
    config(dir.path(), &path, ""); // writes taper.toml
    let toml = dir.path().join("taper.toml");
    let run = |args: &[&str]| Command::new(TAPER).args(args).output().unwrap();
    let toml_s = toml.to_str().unwrap();
    let prepared = run(&["prepare", toml_s, "--set", "tokenizer.kind=\"bpe\"", "--set", "tokenizer.vocab_size=80"]);
    assert!(prepared.status.success(), "{}", String::from_utf8_lossy(&prepared.stderr));
    let stderr = String::from_utf8_lossy(&prepared.stderr);
    assert!(stderr.contains("tokenized 120 documents"), "{stderr}");
    let trained = run(&["train", toml_s, "--set", "tokenizer.kind=\"bpe\"", "--set", "tokenizer.vocab_size=80"]);
    assert!(trained.status.success(), "{}", String::from_utf8_lossy(&trained.stderr));
    let stderr = String::from_utf8_lossy(&trained.stderr);
    assert!(!stderr.contains("tokenized"), "train tokenized again: {stderr}");
    let again = run(&["prepare", toml_s, "--set", "tokenizer.kind=\"bpe\"", "--set", "tokenizer.vocab_size=80"]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("already tokenized"));
}

#[test]
fn a_val_path_corpus_is_the_val_split() {
    let dir = tempfile::tempdir().unwrap();
    let docs = documents();
    let train_file = dir.path().join("train.txt");
    let val_file = dir.path().join("val.txt");
    std::fs::write(&train_file, docs[..100].join("\n")).unwrap();
    std::fs::write(&val_file, docs[100..].join("\n")).unwrap();
    let cfg = config(
        dir.path(),
        &format!("{:?}", train_file.display().to_string()),
        &format!("data.val_path={:?} data.documents=\"blank-line\"", val_file.display().to_string()),
    );
    let tokenizer = TextTokenizer::char_level(&docs.concat()).unwrap();
    let corpus = Corpus::resolve(&cfg.data).unwrap();
    let prepared = prepare(&cfg.data, &corpus, &tokenizer).unwrap();
    assert_eq!(
        (prepared.index.split.as_str(), prepared.index.documents, prepared.index.train_documents),
        ("val-path", 120, 100)
    );
    let sep = tokenizer.encode("\n\n").unwrap();
    let want: Vec<u32> =
        docs[100..].iter().flat_map(|d| [tokenizer.encode(d).unwrap(), sep.clone()].concat()).collect();
    assert_eq!(prepared.val.to_vec(), want);
}
