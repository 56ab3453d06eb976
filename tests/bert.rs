//! The BERT encoder on real pretrained weights (all-MiniLM-L6-v2, fetched by
//! scripts/fetch-minilm.sh, which scripts/test.sh runs): the same last hidden states as
//! candle-transformers' BertModel, padding that changes nothing for real tokens, and clear
//! errors for directories that are not BERT checkpoints.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use taper::config::{Kernels, NormPlacement};
use taper::model::Mode;
use taper::pretrained::load_encoder as load_bert;

fn minilm() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/models/all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").is_file(),
        "test weights missing: run scripts/fetch-minilm.sh (scripts/test.sh does)"
    );
    dir
}

/// Token ids of `texts`, padded with [PAD] = 0 to the longest, and the attention mask.
fn batch(dir: &Path, texts: &[&str]) -> (Tensor, Tensor, Vec<usize>) {
    let tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let ids: Vec<Vec<u32>> = texts.iter().map(|t| tokenizer.encode(*t, true).unwrap().get_ids().to_vec()).collect();
    let longest = ids.iter().map(Vec::len).max().unwrap();
    let mut flat = Vec::new();
    let mut mask = Vec::new();
    for row in &ids {
        flat.extend(row.iter().copied().chain(std::iter::repeat_n(0, longest - row.len())));
        mask.extend((0..longest).map(|i| (i < row.len()) as u32));
    }
    let n = texts.len();
    (
        Tensor::from_vec(flat, (n, longest), &Device::Cpu).unwrap(),
        Tensor::from_vec(mask, (n, longest), &Device::Cpu).unwrap(),
        ids.iter().map(Vec::len).collect(),
    )
}

fn max_diff_real(a: &Tensor, b: &Tensor, lengths: &[usize]) -> f32 {
    lengths
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            let (x, y) = (a.get(i).unwrap().narrow(0, 0, len).unwrap(), b.get(i).unwrap().narrow(0, 0, len).unwrap());
            (x - y).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
        })
        .fold(0.0, f32::max)
}

const TEXTS: [&str; 3] =
    ["The play is the thing.", "Wherein I'll catch the conscience of the king, and more besides.", "Hamlet"];

#[test]
fn last_hidden_states_match_candle_transformers_bert() {
    let dir = minilm();
    let (ids, mask, lengths) = batch(&dir, &TEXTS);
    let types = ids.zeros_like().unwrap();

    let config: candle_transformers::models::bert::Config =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    // SAFETY: the file is not modified while mapped.
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(&[dir.join("model.safetensors")], DType::F32, &Device::Cpu).unwrap()
    };
    let reference = candle_transformers::models::bert::BertModel::load(vb, &config).unwrap();
    let want = reference.forward(&ids, &types, Some(&mask)).unwrap();

    for kernels in [Kernels::Fused, Kernels::Composed] {
        let bert = load_bert(&dir, NormPlacement::Post, kernels, &Device::Cpu, 0).unwrap();
        assert!(bert.report.fresh.is_empty(), "{:?}", bert.report);
        assert!(bert.report.ignored.iter().all(|n| n.starts_with("pooler.") || n == "embeddings.position_ids"));
        let got = bert.encoder.forward(&ids, Some(&types), Some(&mask), &mut Mode::eval()).unwrap();
        let diff = max_diff_real(&got, &want, &lengths);
        eprintln!("{kernels:?}: max abs difference from candle-transformers: {diff:e}");
        assert!(diff <= 1e-4, "{kernels:?}: max abs difference {diff} from candle-transformers");
    }
}

#[test]
fn padding_does_not_change_real_tokens() {
    let dir = minilm();
    let bert = load_bert(&dir, NormPlacement::Post, Kernels::Fused, &Device::Cpu, 0).unwrap();
    let (ids, mask, lengths) = batch(&dir, &TEXTS);
    let padded = bert.encoder.forward(&ids, None, Some(&mask), &mut Mode::eval()).unwrap();
    for (i, text) in TEXTS.iter().enumerate() {
        let (alone, _, len) = batch(&dir, &[text]);
        let unpadded = bert.encoder.forward(&alone, None, None, &mut Mode::eval()).unwrap();
        let diff = max_diff_real(&padded.get(i).unwrap().unsqueeze(0).unwrap(), &unpadded, &len);
        assert!(
            diff <= 1e-4,
            "sentence {i} ({} of {} tokens real): padding moved it by {diff}",
            lengths[i],
            ids.dim(1).unwrap()
        );
    }
}

#[test]
fn pre_ln_switch_loads_the_same_weights_and_adds_a_fresh_final_norm() {
    let bert = load_bert(&minilm(), NormPlacement::Pre, Kernels::Fused, &Device::Cpu, 0).unwrap();
    assert_eq!(bert.report.fresh, vec!["encoder.final_layer_norm.bias", "encoder.final_layer_norm.weight"]);
    let (ids, mask, _) = batch(&minilm(), &TEXTS[..1]);
    let out = bert.encoder.forward(&ids, None, Some(&mask), &mut Mode::eval()).unwrap();
    assert_eq!(out.dims(), &[1, ids.dim(1).unwrap(), 384]);
}

#[test]
fn bad_model_directories_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = load_bert(dir.path(), NormPlacement::Post, Kernels::Fused, &Device::Cpu, 0).err().unwrap().to_string();
    assert!(err.contains("config.json"), "{err}");

    let src = minilm();
    let config = std::fs::read_to_string(src.join("config.json")).unwrap();
    std::fs::write(dir.path().join("config.json"), config.replace("\"bert\"", "\"gpt2\"")).unwrap();
    let err =
        format!("{:#}", load_bert(dir.path(), NormPlacement::Post, Kernels::Fused, &Device::Cpu, 0).err().unwrap());
    assert!(err.contains("gpt2") && err.contains("config.json"), "{err}");

    // One layer more than the file has: the missing tensors are named.
    std::fs::write(
        dir.path().join("config.json"),
        config.replace("\"num_hidden_layers\": 6", "\"num_hidden_layers\": 7"),
    )
    .unwrap();
    std::os::unix::fs::symlink(src.join("model.safetensors"), dir.path().join("model.safetensors")).unwrap();
    let err =
        format!("{:#}", load_bert(dir.path(), NormPlacement::Post, Kernels::Fused, &Device::Cpu, 0).err().unwrap());
    assert!(err.contains("encoder.layer.6.attention.self.query.weight"), "{err}");

    // Another width: the tensor and both shapes are named.
    std::fs::write(
        dir.path().join("config.json"),
        config.replace("\"intermediate_size\": 1536", "\"intermediate_size\": 1024"),
    )
    .unwrap();
    let err =
        format!("{:#}", load_bert(dir.path(), NormPlacement::Post, Kernels::Fused, &Device::Cpu, 0).err().unwrap());
    assert!(err.contains("intermediate.dense") && err.contains("1536") && err.contains("1024"), "{err}");
}

#[test]
fn a_hub_id_resolves_through_the_offline_cache() {
    // The layout hf-hub writes: <HF_HOME>/hub/models--org--name/{refs/main, snapshots/<rev>/...}.
    let home = tempfile::tempdir().unwrap();
    let repo = home.path().join("hub/models--sentence-transformers--all-MiniLM-L6-v2");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "abc123").unwrap();
    let snapshot = repo.join("snapshots/abc123");
    std::fs::create_dir_all(&snapshot).unwrap();
    for file in taper::pretrained::MODEL_FILES {
        std::os::unix::fs::symlink(minilm().join(file), snapshot.join(file)).unwrap();
    }
    std::env::set_var("HF_HOME", home.path());
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let dir = taper::pretrained::resolve_model_dir("sentence-transformers/all-MiniLM-L6-v2").unwrap();
    assert_eq!(dir, snapshot);
    load_bert(&dir, NormPlacement::Post, Kernels::Fused, &Device::Cpu, 0).unwrap();
    let err = format!("{:#}", taper::pretrained::resolve_model_dir("nobody/nothing").unwrap_err());
    assert!(err.contains("HF_HUB_OFFLINE") && err.contains("config.json"), "{err}");
    let err = format!("{:#}", taper::pretrained::resolve_model_dir("./no/such/dir").unwrap_err());
    assert!(err.contains("does not exist"), "{err}");
}
