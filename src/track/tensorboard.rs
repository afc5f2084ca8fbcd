//! TensorBoard event files: TFRecord framing (length, payload, masked CRC-32C of each) around
//! `Event` protocol buffers, encoded by `prost` from the message definitions below (the fields
//! reasonrl writes of tensorboard/compat/proto/{event,summary,tensor}.proto).
//!
//! One file per run, `RUN/tb/events.out.tfevents.reasonrl`. Each metrics line becomes two events:
//! its scalars at the line's `step`, and the same scalars under `by_samples/` at `samples_seen`.

use super::Metrics;
use crate::error::{Error, Result};
use prost::Message;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The event file of run folder `dir`.
pub fn events_file(dir: &Path) -> PathBuf {
    dir.join("tb").join("events.out.tfevents.reasonrl")
}

/// The tag prefix of the scalars drawn against `samples_seen`.
pub const BY_SAMPLES: &str = "by_samples/";
/// The tag of the resolved config (a text summary at step 0).
pub const CONFIG_TAG: &str = "config";

#[derive(Clone, PartialEq, Message)]
struct Event {
    #[prost(double, tag = "1")]
    wall_time: f64,
    #[prost(int64, tag = "2")]
    step: i64,
    #[prost(string, optional, tag = "3")]
    file_version: Option<String>,
    #[prost(message, optional, tag = "5")]
    summary: Option<Summary>,
}

#[derive(Clone, PartialEq, Message)]
struct Summary {
    #[prost(message, repeated, tag = "1")]
    value: Vec<Value>,
}

#[derive(Clone, PartialEq, Message)]
struct Value {
    #[prost(string, tag = "1")]
    tag: String,
    #[prost(float, optional, tag = "2")]
    simple_value: Option<f32>,
    #[prost(message, optional, tag = "8")]
    tensor: Option<TensorProto>,
    #[prost(message, optional, tag = "9")]
    metadata: Option<SummaryMetadata>,
}

#[derive(Clone, PartialEq, Message)]
struct SummaryMetadata {
    #[prost(message, optional, tag = "1")]
    plugin_data: Option<PluginData>,
}

#[derive(Clone, PartialEq, Message)]
struct PluginData {
    #[prost(string, tag = "1")]
    plugin_name: String,
}

#[derive(Clone, PartialEq, Message)]
struct TensorProto {
    /// DataType; 7 is DT_STRING.
    #[prost(int32, tag = "1")]
    dtype: i32,
    #[prost(message, optional, tag = "2")]
    tensor_shape: Option<TensorShape>,
    #[prost(bytes = "vec", repeated, tag = "8")]
    string_val: Vec<Vec<u8>>,
}

/// A scalar string has a shape with no dimensions.
#[derive(Clone, PartialEq, Message)]
struct TensorShape {}

const DT_STRING: i32 = 7;

fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One TFRecord: length, its masked CRC, the payload, its masked CRC.
fn record(payload: &[u8], out: &mut Vec<u8>) {
    let len = (payload.len() as u64).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&masked_crc(payload).to_le_bytes());
}

/// The records of `bytes` that are whole and intact, with the offset each one ends at; reading
/// stops at the first damaged or cut-off record.
fn records(bytes: &[u8]) -> Vec<(Event, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while bytes.len() >= at + 12 {
        let len_bytes = &bytes[at..at + 8];
        let len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes"));
        let len_crc = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().expect("4 bytes"));
        let Some(end) = usize::try_from(len).ok().and_then(|l| (at + 12).checked_add(l)?.checked_add(4)) else {
            break;
        };
        if masked_crc(len_bytes) != len_crc || end > bytes.len() {
            break;
        }
        let payload = &bytes[at + 12..end - 4];
        let crc = u32::from_le_bytes(bytes[end - 4..end].try_into().expect("4 bytes"));
        let Ok(event) = Event::decode(payload) else { break };
        if masked_crc(payload) != crc {
            break;
        }
        out.push((event, end));
        at = end;
    }
    out
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

fn scalars(line: &Metrics, prefix: &str, skip: &[&str]) -> Summary {
    let value = line
        .iter()
        .filter(|(k, _)| !skip.contains(&k.as_str()))
        .map(|(k, &v)| Value { tag: format!("{prefix}{k}"), simple_value: Some(v as f32), ..Value::default() })
        .collect();
    Summary { value }
}

/// Appends to a run's event file.
pub struct EventWriter {
    path: PathBuf,
    file: std::fs::File,
}

impl EventWriter {
    /// Opens run folder `dir`'s event file and returns it with the last step it holds. The file
    /// is first cut back to what `metrics.jsonl` holds (its last step `upto`, `None` when
    /// empty): a resumed run logs again what came after, and a record cut off by a kill goes
    /// too. A new file starts with the version record and `config_toml` as text.
    pub fn open(dir: &Path, upto: Option<i64>, config_toml: &str) -> Result<(EventWriter, Option<i64>)> {
        let path = events_file(dir);
        let folder = path.parent().expect("the event file is in tb/");
        std::fs::create_dir_all(folder).map_err(|e| Error::io(folder, e))?;
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let (mut keep, mut last) = (0, None);
        for (event, end) in records(&bytes) {
            let tags: Vec<&str> = event.summary.iter().flat_map(|s| &s.value).map(|v| v.tag.as_str()).collect();
            let scalar_line = !tags.is_empty() && tags.iter().all(|t| *t != CONFIG_TAG && !t.starts_with(BY_SAMPLES));
            if scalar_line {
                if upto.is_none_or(|u| event.step > u) {
                    break;
                }
                last = Some(event.step);
            }
            keep = end;
        }
        let file =
            std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(|e| Error::io(&path, e))?;
        file.set_len(keep as u64).map_err(|e| Error::io(&path, e))?;
        let mut writer = EventWriter { path, file };
        if keep == 0 {
            let version = Event { wall_time: now(), file_version: Some("brain.Event:2".into()), ..Event::default() };
            let text = TensorProto {
                dtype: DT_STRING,
                tensor_shape: Some(TensorShape {}),
                string_val: vec![format!("```toml\n{config_toml}\n```").into_bytes()],
            };
            let config = Value {
                tag: CONFIG_TAG.into(),
                tensor: Some(text),
                metadata: Some(SummaryMetadata { plugin_data: Some(PluginData { plugin_name: "text".into() }) }),
                ..Value::default()
            };
            let config = Event { wall_time: now(), summary: Some(Summary { value: vec![config] }), ..Event::default() };
            writer.write(&[version, config])?;
        }
        Ok((writer, last))
    }

    /// Writes one metrics line: its scalars at its `step`, and under `by_samples/` at its
    /// `samples_seen` (when it has one).
    pub fn log(&mut self, line: &Metrics, step: i64) -> Result<()> {
        let wall_time = now();
        let mut events =
            vec![Event { wall_time, step, summary: Some(scalars(line, "", &["step"])), ..Event::default() }];
        if let Some(&samples) = line.get("samples_seen") {
            let summary = scalars(line, BY_SAMPLES, &["step", "samples_seen"]);
            events.push(Event { wall_time, step: samples as i64, summary: Some(summary), ..Event::default() });
        }
        self.write(&events)
    }

    /// Writes `events` in one write, so a kill leaves at most a cut-off record, which `open`
    /// drops.
    fn write(&mut self, events: &[Event]) -> Result<()> {
        let mut bytes = Vec::new();
        for event in events {
            record(&event.encode_to_vec(), &mut bytes);
        }
        self.file.write_all(&bytes).and_then(|_| self.file.flush()).map_err(|e| Error::io(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(step: f64, loss: f64) -> Metrics {
        Metrics::from([("step".into(), step), ("loss".into(), loss), ("samples_seen".into(), 8.0 * step)])
    }

    #[test]
    fn reopening_cuts_back_to_the_metrics_log_and_drops_a_torn_record() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, last) = EventWriter::open(dir.path(), None, "a = 1").unwrap();
        assert_eq!(last, None);
        for step in 1..=4 {
            w.log(&line(step as f64, 1.0 / step as f64), step).unwrap();
        }
        drop(w);
        let path = events_file(dir.path());
        let whole = std::fs::read(&path).unwrap();
        let events = records(&whole);
        assert_eq!(events.len(), 2 + 2 * 4, "version, config, then two events a line");
        assert_eq!((events[8].0.step, events[9].0.step), (4, 32), "by_samples at samples_seen");
        // A torn last record, then a resume from step 2.
        std::fs::write(&path, &whole[..whole.len() - 3]).unwrap();
        let (mut w, last) = EventWriter::open(dir.path(), Some(2), "a = 1").unwrap();
        assert_eq!(last, Some(2));
        w.log(&line(3.0, 0.5), 3).unwrap();
        let events = records(&std::fs::read(&path).unwrap());
        let steps: Vec<i64> = events.iter().map(|(e, _)| e.step).collect();
        assert_eq!(steps, [0, 0, 1, 8, 2, 16, 3, 24]);
        assert_eq!(events.last().unwrap().1, std::fs::metadata(&path).unwrap().len() as usize);
        // Nothing kept from a run whose metrics log is empty, but the header.
        let (_, last) = EventWriter::open(dir.path(), None, "a = 1").unwrap();
        assert_eq!(last, None);
        assert_eq!(records(&std::fs::read(&path).unwrap()).len(), 2);
    }
}
