//! `taper compare`: reads any set of run directories, groups them by the settings in which they
//! differ (seeds pooled), and writes plots (SVG) and a table (console and Markdown).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::plot::{Chart, Series, PALETTE};
use crate::run_dir::RunDir;
use crate::train::metrics::read_metrics_but_a_torn_end;

/// One run as `compare` sees it.
#[derive(Debug, Clone)]
pub struct RunRecord {
    pub dir: PathBuf,
    pub settings: BTreeMap<String, String>,
    pub train_loss: Vec<(f64, f64)>,
    pub val_loss: Vec<(f64, f64)>,
    /// (step, per-name values) of each diagnostics record, for "grad_norm" / "residual_rms".
    pub diagnostics: Vec<(usize, Value)>,
    pub status: String,
    pub tokens_per_s: Option<f64>,
    /// summary.json's model FLOPs utilisation (absent in runs from before it, or without a peak).
    pub mfu: Option<f64>,
}

/// Every leaf of a TOML table as "section.key" -> value.
fn flatten(table: &toml::Table, prefix: &str, out: &mut BTreeMap<String, String>) {
    for (k, v) in table {
        let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        match v {
            toml::Value::Table(t) => flatten(t, &key, out),
            toml::Value::String(s) => {
                out.insert(key, s.clone());
            }
            other => {
                out.insert(key, other.to_string());
            }
        }
    }
}

pub fn load_run(dir: &Path) -> Result<RunRecord> {
    let run = RunDir::new(dir);
    let config = run.load_config(&[]).with_context(|| format!("cannot read run {}", dir.display()))?;
    let table: toml::Table = toml::from_str(&config.to_toml_string()?)?;
    let mut settings = BTreeMap::new();
    flatten(&table, "", &mut settings);
    let records = if run.metrics().exists() { read_metrics_but_a_torn_end(&run.metrics())? } else { Vec::new() };
    let mut record = RunRecord {
        dir: dir.to_path_buf(),
        settings,
        train_loss: Vec::new(),
        val_loss: Vec::new(),
        diagnostics: Vec::new(),
        status: "unfinished".into(),
        tokens_per_s: None,
        mfu: None,
    };
    for r in &records {
        let step = r.get("step").and_then(Value::as_f64).unwrap_or(0.0);
        if let Some(l) = r.get("loss").and_then(Value::as_f64) {
            if r.get("diverged").is_none() {
                record.train_loss.push((step, l));
            }
        }
        if let Some(l) = r.get("val_loss").and_then(Value::as_f64) {
            record.val_loss.push((step, l));
        }
        if let Some(d) = r.get("diagnostics") {
            record.diagnostics.push((step as usize, d.clone()));
        }
        if r.get("diverged").is_some() {
            record.status = "diverged".into();
        }
    }
    if let Ok(text) = std::fs::read_to_string(dir.join("summary.json")) {
        let summary: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if let Some(s) = summary.get("status").and_then(Value::as_str) {
            record.status = s.to_string();
        }
        record.tokens_per_s = summary.get("tokens_per_s").and_then(Value::as_f64);
        record.mfu = summary.get("mfu").and_then(Value::as_f64);
    }
    Ok(record)
}

/// Runs with the same settings (but for seed and directory), labelled by what sets them apart.
pub struct Group {
    pub label: String,
    pub runs: Vec<RunRecord>,
}

/// Groups runs by the settings that differ between them, ignoring seed and directory.
pub fn group(runs: Vec<RunRecord>) -> Vec<Group> {
    let ignored = ["train.seed", "checkpoint.dir"];
    let mut keys: Vec<String> = runs.iter().flat_map(|r| r.settings.keys().cloned()).collect();
    keys.sort();
    keys.dedup();
    let differing: Vec<String> = keys
        .into_iter()
        .filter(|k| !ignored.contains(&k.as_str()))
        .filter(|k| {
            let mut values: Vec<Option<&String>> = runs.iter().map(|r| r.settings.get(k)).collect();
            values.dedup();
            values.len() > 1
        })
        .collect();
    let mut groups: Vec<Group> = Vec::new();
    for run in runs {
        let label = if differing.is_empty() {
            "all runs".to_string()
        } else {
            differing
                .iter()
                .map(|k| format!("{}={}", k.rsplit('.').next().unwrap_or(k), run.settings.get(k).map_or("-", |v| v)))
                .collect::<Vec<_>>()
                .join(" ")
        };
        match groups.iter_mut().find(|g| g.label == label) {
            Some(g) => g.runs.push(run),
            None => groups.push(Group { label, runs: vec![run] }),
        }
    }
    groups
}

fn mean_std(values: &[f64]) -> Option<(f64, f64)> {
    if values.is_empty() {
        return None;
    }
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64;
    Some((mean, var.sqrt()))
}

fn fmt_mean_std(v: Option<(f64, f64)>, n: usize) -> String {
    match v {
        None => "-".into(),
        Some((m, _)) if n == 1 => format!("{m:.4}"),
        Some((m, s)) => format!("{m:.4} ± {s:.4}"),
    }
}

/// One row of the comparison table.
#[derive(Debug, Clone)]
pub struct Row {
    pub label: String,
    pub runs: usize,
    pub final_val: Option<(f64, f64)>,
    pub best_val: Option<(f64, f64)>,
    /// Mean over the runs that got there, and how many did.
    pub steps_to_target: Option<(f64, usize)>,
    pub diverged: usize,
    pub stuck: usize,
    pub tokens_per_s: Option<f64>,
    pub mfu: Option<f64>,
}

/// A run is stuck when its last val loss is within 3 % of its first (or, with fewer than two
/// evaluations, its last train loss within 10 % of its first): it trained without learning.
fn is_stuck(run: &RunRecord) -> bool {
    if run.status == "diverged" {
        return false;
    }
    let (curve, tolerance) = if run.val_loss.len() >= 2 { (&run.val_loss, 0.97) } else { (&run.train_loss, 0.9) };
    match (curve.first(), curve.last()) {
        (Some(first), Some(last)) => last.1 > tolerance * first.1,
        _ => false,
    }
}

pub fn table(groups: &[Group], target: f64) -> Vec<Row> {
    groups
        .iter()
        .map(|g| {
            let healthy: Vec<&RunRecord> = g.runs.iter().filter(|r| r.status != "diverged").collect();
            let finals: Vec<f64> = healthy.iter().filter_map(|r| r.val_loss.last().map(|v| v.1)).collect();
            let bests: Vec<f64> =
                healthy.iter().filter_map(|r| r.val_loss.iter().map(|v| v.1).reduce(f64::min)).collect();
            let reached: Vec<f64> =
                healthy.iter().filter_map(|r| r.val_loss.iter().find(|v| v.1 <= target).map(|v| v.0)).collect();
            let speeds: Vec<f64> = healthy.iter().filter_map(|r| r.tokens_per_s).collect();
            let mfus: Vec<f64> = healthy.iter().filter_map(|r| r.mfu).collect();
            Row {
                label: g.label.clone(),
                runs: g.runs.len(),
                final_val: mean_std(&finals),
                best_val: mean_std(&bests),
                steps_to_target: mean_std(&reached).map(|(m, _)| (m, reached.len())),
                diverged: g.runs.len() - healthy.len(),
                stuck: healthy.iter().filter(|r| is_stuck(r)).count(),
                tokens_per_s: mean_std(&speeds).map(|(m, _)| m),
                mfu: mean_std(&mfus).map(|(m, _)| m),
            }
        })
        .collect()
}

pub fn markdown_table(rows: &[Row], target: f64) -> String {
    let mut out = format!(
        "| setting | runs | final val loss | best val loss | steps to val loss {target:.3} | diverged | stuck | tokens/s | mfu |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
    );
    for r in rows {
        let n = r.runs - r.diverged;
        let reach = match r.steps_to_target {
            Some((m, k)) => format!("{m:.0} ({k}/{})", r.runs),
            None => format!("never (0/{})", r.runs),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.label,
            r.runs,
            fmt_mean_std(r.final_val, n),
            fmt_mean_std(r.best_val, n),
            reach,
            r.diverged,
            r.stuck,
            r.tokens_per_s.map_or("-".into(), |t| format!("{t:.0}")),
            r.mfu.map_or("-".into(), |m| format!("{:.1}%", 100.0 * m)),
        ));
    }
    out
}

/// Mean of several curves at the steps they share.
fn mean_curve(curves: &[&Vec<(f64, f64)>]) -> Vec<(f64, f64)> {
    let Some(first) = curves.first() else { return Vec::new() };
    first
        .iter()
        .filter_map(|&(step, _)| {
            let values: Vec<f64> = curves.iter().filter_map(|c| c.iter().find(|p| p.0 == step).map(|p| p.1)).collect();
            (values.len() == curves.len()).then(|| (step, values.iter().sum::<f64>() / values.len() as f64))
        })
        .collect()
}

fn loss_chart(groups: &[Group], title: &str, pick: impl Fn(&RunRecord) -> &Vec<(f64, f64)>) -> Chart {
    let mut chart = Chart { title: title.into(), x_label: "step".into(), y_label: "loss".into(), ..Default::default() };
    for (i, g) in groups.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let curves: Vec<&Vec<(f64, f64)>> = g.runs.iter().map(&pick).collect();
        if g.runs.len() > 1 {
            for c in &curves {
                chart.series.push(Series::new(None, color, (*c).clone()).thin());
            }
            let healthy: Vec<&Vec<(f64, f64)>> = g.runs.iter().filter(|r| r.status != "diverged").map(&pick).collect();
            chart.series.push(Series::new(Some(format!("{} (mean)", g.label)), color, mean_curve(&healthy)));
        } else {
            chart.series.push(Series::new(Some(g.label.clone()), color, curves[0].clone()));
        }
    }
    chart
}

/// Per-layer profile (x = block index) of a diagnostics quantity for each group, averaged
/// over seeds, from the first (`last = false`) or last diagnostics record.
fn layer_chart(groups: &[Group], kind: &str, last: bool, title: &str, y_label: &str) -> Option<Chart> {
    let mut chart = Chart {
        title: title.into(),
        x_label: "block".into(),
        y_label: y_label.into(),
        log_y: true,
        ..Default::default()
    };
    for (i, g) in groups.iter().enumerate() {
        let mut by_layer: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
        for run in &g.runs {
            let record = if last { run.diagnostics.last() } else { run.diagnostics.first() };
            let Some((_, d)) = record else { continue };
            let Some(map) = d.get(kind).and_then(Value::as_object) else { continue };
            for (name, v) in map {
                // Whole blocks only ("blocks.3"), or a block's first LayerNorm for the residual.
                let parts: Vec<&str> = name.split('.').collect();
                let wanted = match kind {
                    "residual_rms" => parts.len() == 3 && parts[0] == "blocks" && parts[2] == "ln_1",
                    _ => parts.len() == 2 && parts[0] == "blocks",
                };
                if let (true, Ok(layer), Some(v)) = (wanted, parts.get(1).unwrap_or(&"").parse::<usize>(), v.as_f64()) {
                    by_layer.entry(layer).or_default().push(v);
                }
            }
        }
        if by_layer.is_empty() {
            continue;
        }
        let points = by_layer.into_iter().map(|(l, v)| (l as f64, v.iter().sum::<f64>() / v.len() as f64)).collect();
        chart.series.push(Series::new(Some(g.label.clone()), PALETTE[i % PALETTE.len()], points));
    }
    (!chart.series.is_empty()).then_some(chart)
}

/// Gradient norm of the first and the last block against step, for each group (mean over
/// seeds): how the per-layer gradients evolve.
fn grad_norm_over_time(groups: &[Group]) -> Option<Chart> {
    let mut chart = Chart {
        title: "gradient norm of the first (solid) and last (dashed) block".into(),
        x_label: "step".into(),
        y_label: "grad norm".into(),
        log_y: true,
        ..Default::default()
    };
    let block_norm = |d: &Value, i: usize| d.get("grad_norm")?.get(format!("blocks.{i}"))?.as_f64();
    for (gi, g) in groups.iter().enumerate() {
        let color = PALETTE[gi % PALETTE.len()];
        let last_block = g
            .runs
            .iter()
            .flat_map(|r| r.diagnostics.iter())
            .flat_map(|(_, d)| d.get("grad_norm").and_then(Value::as_object).into_iter().flat_map(|m| m.keys()))
            .filter_map(|k| k.strip_prefix("blocks.").and_then(|rest| rest.parse::<usize>().ok()))
            .max();
        let Some(last_block) = last_block else { continue };
        for (block, dashed) in [(0, false), (last_block, true)] {
            let mut by_step: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
            for run in &g.runs {
                for (step, d) in &run.diagnostics {
                    if let Some(v) = block_norm(d, block) {
                        by_step.entry(*step).or_default().push(v);
                    }
                }
            }
            let points = by_step.into_iter().map(|(s, v)| (s as f64, v.iter().sum::<f64>() / v.len() as f64)).collect();
            let label = format!("{}, block {block}", g.label);
            let series = Series::new(Some(label), color, points);
            chart.series.push(if dashed { series.dashed() } else { series });
        }
    }
    (!chart.series.is_empty()).then_some(chart)
}

/// Writes the report for `dirs` into `out`: plots and `report.md`; returns the Markdown table.
pub fn compare(dirs: &[PathBuf], out: &Path, target_loss: Option<f64>) -> Result<String> {
    if dirs.is_empty() {
        bail!("give at least one run directory");
    }
    let runs: Vec<RunRecord> = dirs.iter().map(|d| load_run(d)).collect::<Result<_>>()?;
    let groups = group(runs);
    // Default target: the level every group that learned reached (the worst best val loss
    // among groups where at least one run neither diverged nor got stuck).
    let target = target_loss.unwrap_or_else(|| {
        let rows = table(&groups, f64::NEG_INFINITY);
        let worst_best = |rows: &mut dyn Iterator<Item = &Row>| {
            rows.filter_map(|r| r.best_val.map(|b| b.0)).fold(f64::NAN, f64::max)
        };
        let learned = worst_best(&mut rows.iter().filter(|r| r.diverged + r.stuck < r.runs));
        if learned.is_nan() {
            worst_best(&mut rows.iter())
        } else {
            learned
        }
    });
    let rows = table(&groups, target);
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut images = Vec::new();
    let mut save = |chart: Chart, name: &str| -> Result<()> {
        chart.save(&out.join(name))?;
        images.push(name.to_string());
        Ok(())
    };
    save(loss_chart(&groups, "train loss", |r| &r.train_loss), "train_loss.svg")?;
    save(loss_chart(&groups, "val loss", |r| &r.val_loss), "val_loss.svg")?;
    let layer_charts = [
        ("grad_norm", false, "gradient norm by block at the first diagnostics step", "grad norm", "grad_norm_init.svg"),
        ("grad_norm", true, "gradient norm by block at the last diagnostics step", "grad norm", "grad_norm_last.svg"),
        ("update_ratio", true, "update / weight by block, last diagnostics step", "ratio", "update_ratio_last.svg"),
        ("residual_rms", true, "RMS of the residual stream entering each block", "RMS", "residual_rms_last.svg"),
    ];
    if let Some(chart) = grad_norm_over_time(&groups) {
        save(chart, "grad_norm_over_time.svg")?;
    }
    for (kind, last, title, y, file) in layer_charts {
        if let Some(chart) = layer_chart(&groups, kind, last, title, y) {
            save(chart, file)?;
        }
    }
    let md_table = markdown_table(&rows, target);
    let mut report = String::from("# Run comparison\n\nRuns:\n\n");
    for g in &groups {
        for r in &g.runs {
            report.push_str(&format!("- `{}`: {} ({})\n", r.dir.display(), g.label, r.status));
        }
    }
    report.push_str(&format!("\n{md_table}\n"));
    for image in &images {
        report.push_str(&format!("![{image}]({image})\n\n"));
    }
    crate::fsutil::write_atomic(&out.join("report.md"), report.as_bytes())?;
    Ok(md_table)
}
