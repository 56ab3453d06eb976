//! Paired sweeps: a grid of `--set` overrides (and seeds) expanded into runs, each in its own
//! directory named after its settings, trained one after another. Runs that differ only in
//! norm placement or warmup share their initial weights (parameters are seeded by run seed and
//! name) and their batches (a function of seed and step). A rerun skips finished runs,
//! resumes an interrupted one (Ctrl-C, a kill, even between its last checkpoint and its
//! summary), extends finished runs when only `train.steps` grew, and refuses a run directory
//! trained with other settings; a diverged run is recorded and the sweep goes on.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::checkpoint::list_checkpoints;
use crate::config::Config;
use crate::run_dir::RunDir;
use crate::train::{train_with, Diverged, TrainOptions};

/// One run of a sweep: its directory name and the overrides that make it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlannedRun {
    pub name: String,
    pub overrides: Vec<String>,
}

/// Parses `section.key=v1,v2,...`.
fn parse_axis(item: &str) -> Result<(String, Vec<String>)> {
    let (key, values) =
        item.split_once('=').with_context(|| format!("--grid `{item}`: expected section.key=value1,value2"))?;
    let key = key.trim().to_string();
    if key.split('.').count() != 2 {
        bail!("--grid `{item}`: the key must be `section.key`, for example `model.norm`");
    }
    let values: Vec<String> = values.split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect();
    if values.is_empty() {
        bail!("--grid `{item}`: no values");
    }
    Ok((key, values))
}

fn sanitize(value: &str) -> String {
    value.chars().map(|c| if c.is_ascii_alphanumeric() || ".-".contains(c) { c } else { '_' }).collect()
}

/// The cartesian product of the grid axes (first axis outermost) and the seeds (innermost).
/// Directory names use each key's last part (`norm-post_warmup_steps-0_seed-1`), or the whole
/// key where two axes share a last part.
pub fn expand(grid: &[String], seeds: &[u64]) -> Result<Vec<PlannedRun>> {
    let axes: Vec<(String, Vec<String>)> = grid.iter().map(|g| parse_axis(g)).collect::<Result<_>>()?;
    if let Some((key, _)) = axes.iter().enumerate().find_map(|(i, (k, _))| axes[..i].iter().find(|(o, _)| o == k)) {
        bail!("--grid names `{key}` twice: give it once with all its values (--grid {key}=a,b,c)");
    }
    let short = |key: &str| {
        let last = key.rsplit('.').next().unwrap_or(key);
        let clashes = axes.iter().filter(|(k, _)| k.rsplit('.').next() == Some(last)).count() > 1;
        if clashes {
            key.replace('.', "-")
        } else {
            last.to_string()
        }
    };
    let mut runs = vec![PlannedRun { name: String::new(), overrides: Vec::new() }];
    for (key, values) in &axes {
        runs = runs
            .into_iter()
            .flat_map(|run| {
                values.iter().map(move |v| {
                    let mut next = run.clone();
                    let part = format!("{}-{}", short(key), sanitize(v));
                    next.name = if next.name.is_empty() { part } else { format!("{}_{part}", next.name) };
                    next.overrides.push(format!("{key}={v}"));
                    next
                })
            })
            .collect();
    }
    if !seeds.is_empty() {
        runs = runs
            .into_iter()
            .flat_map(|run| {
                seeds.iter().map(move |s| {
                    let mut next = run.clone();
                    let part = format!("seed-{s}");
                    next.name = if next.name.is_empty() { part } else { format!("{}_{part}", next.name) };
                    next.overrides.push(format!("train.seed={s}"));
                    next
                })
            })
            .collect();
    }
    if runs.len() == 1 && runs[0].name.is_empty() {
        bail!("a sweep needs at least one --grid axis or --seeds");
    }
    Ok(runs)
}

#[derive(Debug, Clone, Serialize)]
pub struct SweepOutcome {
    pub name: String,
    pub run_dir: PathBuf,
    pub overrides: Vec<String>,
    /// "finished", "diverged", or "skipped (finished before)" / "skipped (diverged before)".
    pub status: String,
}

/// What a sweep does with one of its runs.
enum Plan {
    Skip(String),
    Train(TrainOptions),
}

/// A run directory the sweep made before is the same run only if its saved config equals
/// `cfg` (or differs in a larger `train.steps`, which extends a finished run); anything else
/// is refused, naming the keys. The same run is skipped when it finished or diverged, resumed
/// from its checkpoint, or restarted when it was killed before its first checkpoint.
fn plan(run_dir: &Path, cfg: &Config) -> Result<Plan> {
    let dir = RunDir::new(run_dir);
    let checkpoints = !list_checkpoints(run_dir)?.is_empty();
    if !dir.config().is_file() {
        return Ok(Plan::Train(TrainOptions { resume: checkpoints, ..Default::default() }));
    }
    let saved = dir.load_config(&[])?;
    let differences = saved.differences(cfg)?;
    let only_steps_grew = differences.len() == 1 && differences[0].starts_with("train.steps:");
    let extends = only_steps_grew && cfg.train.steps > saved.train.steps && checkpoints;
    if !(differences.is_empty() || extends) {
        bail!(
            "{} was trained with other settings ({}); give the sweep another --out, or remove that directory",
            dir.config().display(),
            differences.join("; ")
        );
    }
    match dir.status().as_deref() {
        Some(s @ "diverged") => Ok(Plan::Skip(format!("skipped ({s} before)"))),
        Some(s @ "finished") if differences.is_empty() => Ok(Plan::Skip(format!("skipped ({s} before)"))),
        _ => Ok(Plan::Train(TrainOptions { resume: checkpoints, overwrite: !checkpoints, ..Default::default() })),
    }
}

/// Runs every planned run of the sweep of `config` into `out_dir/<name>`. Under mpirun every
/// rank trains every run with the others; rank 0 alone writes sweep.json and returns the
/// outcomes (the other ranks return none).
pub fn run_sweep(
    config: &Path,
    base_overrides: &[String],
    runs: &[PlannedRun],
    out_dir: &Path,
    quiet: bool,
) -> Result<Vec<SweepOutcome>> {
    // Check every run's config before training any of them.
    let mut configs = Vec::new();
    for run in runs {
        let run_dir = out_dir.join(&run.name);
        let mut overrides = base_overrides.to_vec();
        overrides.extend(run.overrides.iter().cloned());
        overrides.push(format!("checkpoint.dir={}", toml::Value::String(run_dir.display().to_string())));
        let cfg = Config::load(config, &overrides).with_context(|| format!("sweep run {}", run.name))?;
        configs.push((run, run_dir, cfg));
    }
    // Each run may be data-parallel: the ranks train the runs in turn, in one MPI world.
    let world = crate::distributed::world()?;
    let (root, quiet) = (world.rank() == 0, quiet || world.rank() > 0);
    if root {
        std::fs::create_dir_all(out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    }
    let mut outcomes = Vec::new();
    let total = configs.len();
    for (i, (run, run_dir, cfg)) in configs.into_iter().enumerate() {
        let status = match plan(&run_dir, &cfg).with_context(|| format!("sweep run {}", run.name))? {
            Plan::Skip(status) => status,
            Plan::Train(options) => {
                if !quiet {
                    let how = if options.resume { " (resuming)" } else { "" };
                    crate::console::say(format!("sweep: run {}/{total}: {}{how}", i + 1, run.name));
                }
                match train_with(cfg, &TrainOptions { quiet, ..options }, world.as_ref()) {
                    Ok(summary) => summary.status,
                    Err(err) if err.downcast_ref::<Diverged>().is_some() => {
                        if !quiet {
                            crate::console::say(format!("sweep: {}: {err}", run.name));
                        }
                        "diverged".into()
                    }
                    Err(err) => return Err(err.context(format!("sweep run {} failed", run.name))),
                }
            }
        };
        outcomes.push(SweepOutcome { name: run.name.clone(), run_dir, overrides: run.overrides.clone(), status });
        if root {
            let json = serde_json::to_string_pretty(&outcomes)?;
            crate::fsutil::write_atomic(&out_dir.join("sweep.json"), json.as_bytes())?;
        }
    }
    Ok(if root { outcomes } else { Vec::new() })
}
