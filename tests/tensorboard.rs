//! `train.tensorboard`: the event file holds valid TensorBoard records (length and data under
//! their masked CRC32C) whose Event protobufs carry the same step and scalars as metrics.jsonl.
//! (Checked once with the PyPI `tensorboard` package's EventAccumulator too: see the issue note.)

mod common;

use taper::train::tensorboard::masked_crc;
use taper::train::{train, TrainOptions};

fn varint(data: &[u8], at: &mut usize) -> u64 {
    let (mut value, mut shift) = (0u64, 0);
    loop {
        let byte = data[*at];
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return value;
        }
        shift += 7;
    }
}

/// The fields of a protobuf message: (field number, wire type, raw bytes of the value).
fn fields(data: &[u8]) -> Vec<(u64, u64, Vec<u8>)> {
    let (mut out, mut at) = (Vec::new(), 0);
    while at < data.len() {
        let key = varint(data, &mut at);
        let (field, wire) = (key >> 3, key & 7);
        let value = match wire {
            0 => varint(data, &mut at).to_le_bytes().to_vec(),
            1 => (data[at..at + 8].to_vec(), at += 8).0,
            5 => (data[at..at + 4].to_vec(), at += 4).0,
            2 => {
                let len = varint(data, &mut at) as usize;
                (data[at..at + len].to_vec(), at += len).0
            }
            other => panic!("wire type {other}"),
        };
        out.push((field, wire, value));
    }
    out
}

/// A summary event: its step and (tag, value) scalars.
type Scalars = (u64, Vec<(String, f32)>);

/// Every record of an event file, its checksums verified: the file version, and each summary
/// event's step and scalars.
fn read_events(bytes: &[u8]) -> (String, Vec<Scalars>) {
    let (mut at, mut version, mut events) = (0, String::new(), Vec::new());
    while at < bytes.len() {
        let len_bytes = &bytes[at..at + 8];
        let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
        assert_eq!(u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()), masked_crc(len_bytes));
        let data = &bytes[at + 12..at + 12 + len];
        assert_eq!(u32::from_le_bytes(bytes[at + 12 + len..at + 16 + len].try_into().unwrap()), masked_crc(data));
        at += 16 + len;
        let event = fields(data);
        let step = event.iter().find(|f| f.0 == 2).map_or(0, |f| u64::from_le_bytes(f.2[..8].try_into().unwrap()));
        if let Some(v) = event.iter().find(|f| f.0 == 3) {
            version = String::from_utf8(v.2.clone()).unwrap();
        }
        if let Some(summary) = event.iter().find(|f| f.0 == 5) {
            let values = fields(&summary.2)
                .into_iter()
                .map(|(_, _, value)| {
                    let v = fields(&value);
                    let tag = String::from_utf8(v[0].2.clone()).unwrap();
                    (tag, f32::from_le_bytes(v[1].2[..4].try_into().unwrap()))
                })
                .collect();
            events.push((step, values));
        }
    }
    (version, events)
}

#[test]
fn event_files_hold_the_metrics_scalars() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path(), &common::pattern_corpus(300));
    let cfg = common::tiny_config(
        dir.path(),
        &corpus,
        "train.steps=12 train.log_every=4 train.eval_every=6 train.tensorboard=true",
    );
    train(cfg, &TrainOptions { quiet: true, ..Default::default() }).unwrap();
    let run = dir.path().join("run");
    let files: Vec<_> = std::fs::read_dir(run.join("tensorboard")).unwrap().flatten().collect();
    assert_eq!(files.len(), 1);
    assert!(files[0].file_name().to_string_lossy().starts_with("events.out.tfevents."));
    let (version, events) = read_events(&std::fs::read(files[0].path()).unwrap());
    assert_eq!(version, "brain.Event:2");
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = metrics.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(events.len(), records.len(), "one event per metrics record");
    for ((step, values), record) in events.iter().zip(&records) {
        assert_eq!(*step, record["step"].as_u64().unwrap());
        for (tag, value) in values {
            let want = record[tag.as_str()].as_f64().unwrap() as f32;
            assert_eq!(*value, want, "step {step}: {tag}");
        }
        let numbers = record.as_object().unwrap().iter().filter(|(k, v)| *k != "step" && v.is_number()).count();
        assert_eq!(values.len(), numbers, "step {step}: every number of the record");
    }
    assert!(events.iter().any(|(_, v)| v.iter().any(|(t, _)| t == "val_loss")));
}
