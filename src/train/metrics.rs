//! `metrics.jsonl`: one JSON object per logged step or evaluation, appended and flushed as it
//! happens, so a crashed run keeps its curve; and the other places the same records go
//! ([`MetricsSink`]: TensorBoard's event files, ...), which a run's config turns on
//! (`logger::sinks`).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::Value;

/// Somewhere else every record of metrics.jsonl goes, as it is written.
pub trait MetricsSink {
    fn write(&mut self, record: &Value) -> Result<()>;
}

pub struct MetricsLog {
    path: PathBuf,
    file: File,
    sinks: Vec<Box<dyn MetricsSink>>,
}

impl MetricsLog {
    /// Opens `path` for appending. Lines for steps after `keep_through` (written by a run that
    /// died after its last checkpoint) are dropped, so a resumed run does not log them twice.
    pub fn open(path: &Path, keep_through: Option<usize>) -> Result<Self> {
        if let (Some(last), true) = (keep_through, path.exists()) {
            let kept: Vec<String> = BufReader::new(File::open(path)?)
                .lines()
                .map_while(|l| l.ok())
                .filter(|line| {
                    // A line that is not JSON (a write cut short by a kill) is dropped.
                    let Ok(record) = serde_json::from_str::<Value>(line) else { return false };
                    let step = record.get("step").and_then(Value::as_u64);
                    // Diagnostics at step N are taken during step N + 1, after checkpoint N.
                    let diagnostics = record.get("diagnostics").is_some();
                    step.is_none_or(|s| (s as usize) < last || (s as usize == last && !diagnostics))
                })
                .collect();
            let mut body = kept.join("\n");
            if !body.is_empty() {
                body.push('\n');
            }
            crate::fsutil::write_atomic(path, body.as_bytes())?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(Self { path: path.to_path_buf(), file, sinks: Vec::new() })
    }

    /// Also hands each record to `sinks`.
    pub fn with_sinks(self, sinks: Vec<Box<dyn MetricsSink>>) -> Self {
        Self { sinks, ..self }
    }

    pub fn write(&mut self, record: Value) -> Result<()> {
        writeln!(self.file, "{record}").with_context(|| format!("cannot write {}", self.path.display()))?;
        self.file.flush()?;
        for sink in &mut self.sinks {
            sink.write(&record)?;
        }
        Ok(())
    }
}

/// Reads every record of a metrics file as [`read_metrics`] does, but a last line cut short (a
/// full disk, a kill during the write; resume repairs it) is left out with a warning.
pub fn read_metrics_but_a_torn_end(path: &Path) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut lines: Vec<&str> = text.lines().collect();
    if lines.last().is_some_and(|l| serde_json::from_str::<Value>(l).is_err()) {
        crate::console::say(format!(
            "taper: {}: leaving out its last line, cut short: {:?}",
            path.display(),
            lines[lines.len() - 1]
        ));
        lines.pop();
    }
    lines
        .iter()
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_str(line)
                .with_context(|| format!("{}:{}: not a JSON record: {line:?}", path.display(), i + 1))
        })
        .collect()
}

/// Reads every record of a metrics file; a line that is not JSON is an error naming the file
/// and line.
pub fn read_metrics(path: &Path) -> Result<Vec<Value>> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let lines = BufReader::new(file).lines().enumerate();
    lines
        .map(|(i, line)| {
            let line = line.with_context(|| format!("cannot read {}", path.display()))?;
            serde_json::from_str(&line)
                .with_context(|| format!("{}:{}: not a JSON record: {line:?}", path.display(), i + 1))
        })
        .collect()
}
