//! TensorBoard event files (`train.tensorboard`): the scalars of metrics.jsonl, written as
//! TensorBoard's `events.out.tfevents.*` records in `<run>/tensorboard/`, so `tensorboard
//! --logdir runs/` plots them. A record is its length (u64 LE), the length's masked CRC32C, the
//! data, and the data's masked CRC32C; the data is an `Event` protobuf. The two messages used
//! (Event with a wall time, a step and a Summary of tagged floats) are encoded by hand below:
//! six fields do not warrant a protobuf toolchain.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// An open event file.
pub struct EventWriter {
    path: PathBuf,
    file: File,
}

/// TensorBoard's checksum: CRC32C rotated and offset, so a CRC of data holding CRCs is unlikely
/// to be zero.
pub fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    (crc.rotate_right(15)).wrapping_add(0xa282_ead8)
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field (wire type 2).
fn bytes_field(field: u32, bytes: &[u8], out: &mut Vec<u8>) {
    varint(u64::from(field << 3 | 2), out);
    varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// `Event { wall_time = 1 (double), step = 2 (int64), file_version = 3 | summary = 5 }`.
fn event(wall_time: f64, step: u64, body: (u32, &[u8])) -> Vec<u8> {
    let mut out = vec![0x09]; // field 1, fixed64
    out.extend_from_slice(&wall_time.to_le_bytes());
    out.push(0x10); // field 2, varint
    varint(step, &mut out);
    bytes_field(body.0, body.1, &mut out);
    out
}

/// `Summary { repeated Value value = 1 }`, `Value { tag = 1, simple_value = 2 (float) }`.
fn summary(scalars: &[(&str, f64)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (tag, value) in scalars {
        let mut v = Vec::new();
        bytes_field(1, tag.as_bytes(), &mut v);
        v.push(0x15); // field 2, fixed32
        v.extend_from_slice(&(*value as f32).to_le_bytes());
        bytes_field(1, &v, &mut out);
    }
    out
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

impl EventWriter {
    /// A new event file in `dir` (created if needed), starting with the file-version event.
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default().trim().to_string();
        let name = format!(
            "events.out.tfevents.{}.{}.{}",
            now() as u64,
            if host.is_empty() { "taper" } else { &host },
            std::process::id()
        );
        let path = dir.join(name);
        let file = File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        let mut writer = Self { path, file };
        writer.record(&event(now(), 0, (3, b"brain.Event:2")))?;
        Ok(writer)
    }

    fn record(&mut self, data: &[u8]) -> Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        let mut buf = Vec::with_capacity(data.len() + 16);
        buf.extend_from_slice(&len);
        buf.extend_from_slice(&masked_crc(&len).to_le_bytes());
        buf.extend_from_slice(data);
        buf.extend_from_slice(&masked_crc(data).to_le_bytes());
        self.file.write_all(&buf).with_context(|| format!("cannot write {}", self.path.display()))?;
        self.file.flush()?;
        Ok(())
    }

    /// The scalars of one step, one Summary value each (tagged by name).
    pub fn scalars(&mut self, step: u64, scalars: &[(&str, f64)]) -> Result<()> {
        if scalars.is_empty() {
            return Ok(());
        }
        self.record(&event(now(), step, (5, &summary(scalars))))
    }
}

/// Each record's numbers as scalars at its step (records without a step, none).
impl super::metrics::MetricsSink for EventWriter {
    fn write(&mut self, record: &serde_json::Value) -> Result<()> {
        let Some(step) = record.get("step").and_then(serde_json::Value::as_u64) else { return Ok(()) };
        let fields = record.as_object().into_iter().flatten();
        let scalars: Vec<(&str, f64)> =
            fields.filter(|(k, _)| *k != "step").filter_map(|(k, v)| Some((k.as_str(), v.as_f64()?))).collect();
        self.scalars(step, &scalars)
    }
}
