//! Checkpoints: `<run>/checkpoints/step-NNNNNNNN/` holds `model.safetensors` (names are the
//! module paths), `optimizer.safetensors` (AdamW moments) and `state.json`. Each is written into
//! a `.tmp` directory, fsynced, then renamed: a kill at any moment leaves the previous
//! checkpoints loadable. The newest `keep_last` are kept, and the best by `checkpoint.best_metric`.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::fsutil::{sync_dir, sync_file, write_atomic};
use crate::model::ParamStore;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainState {
    /// Optimizer steps completed.
    pub step: usize,
    pub seed: u64,
    /// Batches are drawn by Rng::derived(seed, [stream, step, micro]): the data position is `step`.
    pub tokens_seen: u64,
    pub best_val_loss: Option<f64>,
    /// The step whose evaluation scored best on `checkpoint.best_metric`, and that score.
    pub best_step: Option<usize>,
    #[serde(default)]
    pub best_score: Option<f64>,
    pub last_val_loss: Option<f64>,
    /// The first logged training loss (divergence is measured against it).
    #[serde(default)]
    pub initial_loss: Option<f64>,
    /// Hash of the resolved config (to spot a resume under different settings).
    pub config_hash: String,
    pub taper_version: String,
    /// `crc32:<hex>:<bytes>` of each tensor file of the checkpoint, written with it and
    /// checked before a resume uses it (absent from checkpoints written before checksums were).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub files: std::collections::BTreeMap<String, String>,
}

pub fn checkpoints_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

fn step_dir_name(step: usize) -> String {
    format!("step-{step:08}")
}

/// Completed checkpoints, oldest first.
pub fn list_checkpoints(run_dir: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let dir = checkpoints_dir(run_dir);
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut found = Vec::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        if let Some(step) = name.strip_prefix("step-").and_then(|s| s.parse::<usize>().ok()) {
            if path.join("state.json").is_file() {
                found.push((step, path));
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Which checkpoint of a run: "latest", "best", or "step-N" / "N".
pub fn resolve_checkpoint(run_dir: &Path, which: &str) -> Result<PathBuf> {
    let all = list_checkpoints(run_dir)?;
    let Some((_, latest_dir)) = all.last() else {
        bail!("{} has no checkpoints (expected {}/step-*/)", run_dir.display(), checkpoints_dir(run_dir).display());
    };
    match which {
        "latest" => Ok(latest_dir.clone()),
        "best" => {
            let latest = read_state(latest_dir)?;
            let step = latest.best_step.context("this run has no evaluated checkpoint yet; use --checkpoint latest")?;
            all.iter()
                .find(|(s, _)| *s == step)
                .map(|(_, p)| p.clone())
                .with_context(|| format!("the best checkpoint (step {step}) is missing from {}", run_dir.display()))
        }
        other => {
            let step: usize = other
                .trim_start_matches("step-")
                .parse()
                .with_context(|| format!("--checkpoint `{other}`: expected latest, best or step-N"))?;
            all.iter()
                .find(|(s, _)| *s == step)
                .map(|(_, p)| p.clone())
                .with_context(|| format!("no checkpoint for step {step} in {}", run_dir.display()))
        }
    }
}

pub fn read_state(checkpoint: &Path) -> Result<TrainState> {
    let path = checkpoint.join("state.json");
    let text = fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a valid checkpoint state", path.display()))
}

/// Writes one checkpoint and prunes old ones.
pub fn save(
    run_dir: &Path,
    params: &HashMap<String, Tensor>,
    optimizer: &HashMap<String, Tensor>,
    state: &TrainState,
    keep_last: usize,
) -> Result<PathBuf> {
    let root = checkpoints_dir(run_dir);
    fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    let final_dir = root.join(step_dir_name(state.step));
    let tmp_dir = root.join(format!("{}.tmp", step_dir_name(state.step)));
    if tmp_dir.exists() {
        fs::remove_dir_all(&tmp_dir)?;
    }
    if let Err(err) = write_step(&tmp_dir, params, optimizer, state) {
        let _ = fs::remove_dir_all(&tmp_dir); // a full disk: nothing half-written stays behind
        return Err(err);
    }
    if final_dir.exists() {
        fs::remove_dir_all(&final_dir)?;
    }
    fs::rename(&tmp_dir, &final_dir).with_context(|| format!("cannot move checkpoint into {}", final_dir.display()))?;
    sync_dir(Some(&root))?;
    prune(run_dir, keep_last, state.best_step)?;
    Ok(final_dir)
}

fn write_step(
    dir: &Path,
    params: &HashMap<String, Tensor>,
    optimizer: &HashMap<String, Tensor>,
    state: &TrainState,
) -> Result<()> {
    fs::create_dir_all(dir)?;
    let mut state = state.clone();
    for (file, tensors) in [(MODEL_FILE, params), (OPTIMIZER_FILE, optimizer)] {
        let path = dir.join(file);
        candle_core::safetensors::save(tensors, &path).with_context(|| format!("cannot write {}", path.display()))?;
        sync_file(&path)?;
        state.files.insert(file.to_string(), digest(&path)?);
    }
    write_atomic(&dir.join("state.json"), serde_json::to_string_pretty(&state)?.as_bytes())
}

const MODEL_FILE: &str = "model.safetensors";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// `crc32:<hex>:<bytes>` of a file, read in 1 MiB pieces (a checkpoint's weights are not held
/// twice in memory to check them).
fn digest(path: &Path) -> Result<String> {
    use std::io::Read;
    let cannot = || format!("cannot read {}", path.display());
    let mut file = fs::File::open(path).with_context(cannot)?;
    let (mut hasher, mut len) = (crc32fast::Hasher::new(), 0u64);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).with_context(cannot)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    Ok(format!("crc32:{:08x}:{len}", hasher.finalize()))
}

/// Checks that a checkpoint is whole: its state.json reads and names the checkpoint's own step,
/// and each tensor file matches the checksum state.json recorded (a checkpoint without
/// checksums, from an older taper: each file parses as safetensors). The error says what is
/// wrong.
pub fn verify(checkpoint: &Path) -> Result<()> {
    verify_files(checkpoint, &[MODEL_FILE, OPTIMIZER_FILE])
}

/// [`verify`] for the weights alone: what inference reads (`OpenedCheckpoint`, export).
pub fn verify_weights(checkpoint: &Path) -> Result<()> {
    verify_files(checkpoint, &[MODEL_FILE])
}

fn verify_files(checkpoint: &Path, files: &[&str]) -> Result<()> {
    let state = read_state(checkpoint)?;
    let named = checkpoint.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix("step-")?.parse().ok());
    if let Some(step) = named.filter(|&s: &usize| s != state.step) {
        bail!(
            "{}: state.json says step {}, but the checkpoint is step {step}: it was edited or mixed up with another; \
             resume from another with --checkpoint step-N",
            checkpoint.display(),
            state.step
        );
    }
    for &file in files {
        let path = checkpoint.join(file);
        match state.files.get(file) {
            Some(want) => {
                let got = digest(&path)?;
                if &got != want {
                    bail!("{} is damaged: its checksum is {got}, state.json recorded {want}", path.display());
                }
            }
            None => {
                let bytes = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
                safetensors::SafeTensors::deserialize(&bytes)
                    .map_err(|e| anyhow::anyhow!("{} is damaged: {e}", path.display()))?;
            }
        }
    }
    Ok(())
}

/// The name a pruned checkpoint takes before it is deleted: a kill during the deletion leaves
/// `step-N.trash`, which the next start removes, never a half-deleted `step-N`.
const TRASH: &str = ".trash";

/// Deletes checkpoint `path` (of `step`) by renaming it to `step-N.trash` first.
fn remove_checkpoint(path: &Path, step: usize) -> Result<()> {
    let trash = path.with_file_name(format!("{}{TRASH}", step_dir_name(step)));
    fs::rename(path, &trash).with_context(|| format!("cannot remove checkpoint {}", path.display()))?;
    fs::remove_dir_all(&trash).with_context(|| format!("cannot remove {}", trash.display()))
}

/// What a resume did with a checkpoint after the one it continues from.
pub enum Discarded {
    /// An intact checkpoint of the future that no longer happens, removed.
    Removed(PathBuf),
    /// A damaged one, moved aside (never deleted: what is left of it may still be wanted).
    SetAside(PathBuf, PathBuf),
}

/// Clears the checkpoints after `step` (a resume from an earlier one: that future no longer
/// happens, and the save schedule's pruning must not keep them over the new ones): an intact
/// one is removed, a damaged one ([`verify`]) moved aside as `step-N.damaged`.
pub fn discard_after(run_dir: &Path, step: usize) -> Result<Vec<Discarded>> {
    let mut discarded = Vec::new();
    for (s, path) in list_checkpoints(run_dir)? {
        if s <= step {
            continue;
        }
        match verify(&path) {
            Ok(()) => {
                remove_checkpoint(&path, s)?;
                discarded.push(Discarded::Removed(path));
            }
            Err(_) => discarded.push(Discarded::SetAside(path.clone(), set_aside(&path, s)?)),
        }
    }
    Ok(discarded)
}

/// Renames damaged checkpoint `path` (of `step`) to `step-N.damaged` (`.damaged-2`, ... when
/// that is taken), where no listing of checkpoints sees it.
fn set_aside(path: &Path, step: usize) -> Result<PathBuf> {
    let name = |i: usize| match i {
        1 => format!("{}.damaged", step_dir_name(step)),
        i => format!("{}.damaged-{i}", step_dir_name(step)),
    };
    let aside = (1..).map(|i| path.with_file_name(name(i))).find(|p| !p.exists()).unwrap_or_default();
    fs::rename(path, &aside).with_context(|| format!("cannot move {} aside", path.display()))?;
    Ok(aside)
}

/// Removes what a kill or a full disk can leave in `checkpoints/`: `step-N.tmp` (a write cut
/// short) and `step-N.trash` (a pruning cut short). Returns what it removed.
pub fn clean_leftovers(run_dir: &Path) -> Result<Vec<PathBuf>> {
    let dir = checkpoints_dir(run_dir);
    let mut removed = Vec::new();
    let Ok(entries) = fs::read_dir(&dir) else { return Ok(removed) };
    for entry in entries {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.starts_with("step-") && (name.ends_with(".tmp") || name.ends_with(TRASH)) {
            fs::remove_dir_all(&path).with_context(|| format!("cannot remove {}", path.display()))?;
            removed.push(path);
        }
    }
    Ok(removed)
}

fn prune(run_dir: &Path, keep_last: usize, best_step: Option<usize>) -> Result<()> {
    let all = list_checkpoints(run_dir)?;
    let cut = all.len().saturating_sub(keep_last);
    for (step, path) in &all[..cut] {
        if Some(*step) != best_step {
            remove_checkpoint(path, *step)?;
        }
    }
    Ok(())
}

/// Loads a checkpoint's tensors from `file` onto `device`.
pub fn load_tensors(file: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    if !file.is_file() {
        bail!("checkpoint file {} does not exist", file.display());
    }
    candle_core::safetensors::load(file, device).with_context(|| format!("cannot read {}", file.display()))
}

/// Copies `tensors` into the model's parameters. Every parameter must be present with its
/// shape, and nothing else may be in the file: a mismatch names the tensor and both shapes.
pub fn load_into(params: &ParamStore, tensors: HashMap<String, Tensor>, source: &Path) -> Result<()> {
    load_matching(params, tensors, source, &|_| false, &|_| false).map(|_| ())
}

/// What [`load_matching`] did besides loading.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadReport {
    /// Parameters the file lacks that were allowed to keep their fresh initialisation.
    pub fresh: Vec<String>,
    /// Tensors of the file that the model does not use, and was allowed to ignore.
    pub ignored: Vec<String>,
}

/// Copies `tensors` into `params` by name. Parameters missing from the file are an error unless
/// `may_start_fresh` allows them; tensors the model lacks are an error unless `may_ignore`
/// allows them; every error lists the names (and, for a shape mismatch, both shapes).
pub fn load_matching(
    params: &ParamStore,
    mut tensors: HashMap<String, Tensor>,
    source: &Path,
    may_start_fresh: &dyn Fn(&str) -> bool,
    may_ignore: &dyn Fn(&str) -> bool,
) -> Result<LoadReport> {
    let mut report = LoadReport::default();
    let mut missing = Vec::new();
    for (name, var) in params.named_vars() {
        match tensors.remove(&name) {
            None if may_start_fresh(&name) => report.fresh.push(name),
            None => missing.push(name),
            Some(t) => {
                if t.dims() != var.dims() {
                    bail!(
                        "{}: tensor `{name}` has shape {:?}, but the model built from the config needs {:?}",
                        source.display(),
                        t.dims(),
                        var.dims()
                    );
                }
                var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
            }
        }
    }
    if !missing.is_empty() {
        bail!("{} lacks tensors the model needs: {}", source.display(), missing.join(", "));
    }
    let mut extra: Vec<String> = tensors.into_keys().collect();
    extra.sort();
    let (ignored, unexpected): (Vec<String>, Vec<String>) = extra.into_iter().partition(|n| may_ignore(n));
    if !unexpected.is_empty() {
        bail!("{} has tensors the model does not: {}", source.display(), unexpected.join(", "));
    }
    report.ignored = ignored;
    Ok(report)
}
