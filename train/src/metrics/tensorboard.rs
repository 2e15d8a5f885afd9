//! TensorBoard event files, written directly.
//!
//! Why not a crate: the Rust TensorBoard writers are unmaintained (`tensorboard-rs` last released
//! in 2022 on protobuf 2.x with image 0.23; `tboard` 0.1.1, 2023), and scalars need only a sliver
//! of the format, which is stable and small enough to write out here:
//!
//! - The file is a TFRecord stream: per record, `u64 length (LE)`, `u32 masked_crc32c(length)`,
//!   the bytes, `u32 masked_crc32c(bytes)`, with `masked(c) = ((c >> 15) | (c << 17)) + 0xa282ead8`
//!   and CRC-32C (Castagnoli, reflected polynomial 0x82F63B78).
//! - Each record is a protobuf `tensorflow.Event` (`event.proto`): `wall_time` (1, double),
//!   `step` (2, int64), `file_version` (3, string) or `summary` (5, message). A `Summary` holds
//!   `repeated Value value = 1`, and a scalar `Value` is `tag` (1, string) + `simple_value`
//!   (2, float).
//! - The first record carries `file_version: "brain.Event:2"`; the name is
//!   `events.out.tfevents.<unix seconds>.<host>.<pid>.<n>`, which TensorBoard globs for; `n`
//!   counts the writers this process opened (as TensorFlow's global uid does), so two runs in
//!   one process within a second get two files.
//!
//! Every record is flushed as soon as it is written.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::MetricsError;

/// CRC-32C lookup table, built at compile time.
const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0x82F6_3B78 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// CRC-32C (Castagnoli) of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for b in data {
        c = CRC32C_TABLE[((c ^ u32::from(*b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

/// TFRecord's masked CRC.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let c = crc32c(data);
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn len_delimited(field: u32, bytes: &[u8], out: &mut Vec<u8>) {
    varint(u64::from(field << 3 | 2), out);
    varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// Encodes an `Event` with `wall_time`, `step` and either a file version or scalar values.
fn encode_event(
    wall_time: f64,
    step: i64,
    file_version: Option<&str>,
    scalars: &[(&str, f32)],
) -> Vec<u8> {
    let mut e = Vec::new();
    e.push(1 << 3 | 1); // wall_time, fixed64
    e.extend_from_slice(&wall_time.to_le_bytes());
    if step != 0 {
        e.push(2 << 3); // step, varint (int64: two's complement)
        varint(step as u64, &mut e);
    }
    if let Some(v) = file_version {
        len_delimited(3, v.as_bytes(), &mut e);
    }
    if !scalars.is_empty() {
        let mut summary = Vec::new();
        for (tag, value) in scalars {
            let mut val = Vec::new();
            len_delimited(1, tag.as_bytes(), &mut val);
            val.push(2 << 3 | 5); // simple_value, fixed32
            val.extend_from_slice(&value.to_le_bytes());
            len_delimited(1, &val, &mut summary);
        }
        len_delimited(5, &summary, &mut e);
    }
    e
}

/// Frames one record.
fn tfrecord(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Writes scalar summaries to one event file in a log directory.
#[derive(Debug)]
pub struct EventWriter {
    path: PathBuf,
    file: File,
}

impl EventWriter {
    /// Creates `dir` if needed and a new event file in it.
    pub fn create(dir: impl AsRef<Path>) -> Result<Self, MetricsError> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|source| MetricsError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let host = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| {
                !h.is_empty()
                    && h.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            })
            .unwrap_or_else(|| "localhost".into());
        static OPENED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = OPENED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let t = now();
        let path = dir.join(format!(
            "events.out.tfevents.{}.{host}.{}.{n}",
            t as u64,
            std::process::id()
        ));
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(|source| MetricsError::Io {
                path: path.clone(),
                source,
            })?;
        let mut w = EventWriter { path, file };
        w.write_record(&encode_event(t, 0, Some("brain.Event:2"), &[]))?;
        Ok(w)
    }

    /// Writes scalar `value` under `tag` (`train/loss`, `eval/perplexity`) at `step`.
    pub fn add_scalar(&mut self, tag: &str, value: f64, step: u64) -> Result<(), MetricsError> {
        self.add_scalars(&[(tag, value)], step)
    }

    /// Writes several scalars for one step as one event.
    pub fn add_scalars(&mut self, values: &[(&str, f64)], step: u64) -> Result<(), MetricsError> {
        let scalars: Vec<(&str, f32)> = values.iter().map(|(t, v)| (*t, *v as f32)).collect();
        self.write_record(&encode_event(now(), step as i64, None, &scalars))
    }

    fn write_record(&mut self, event: &[u8]) -> Result<(), MetricsError> {
        let io = |source| MetricsError::Io {
            path: self.path.clone(),
            source,
        };
        self.file.write_all(&tfrecord(event)).map_err(io)?;
        self.file.flush().map_err(|source| MetricsError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// The event file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_values() {
        // The CRC catalogue's check value for CRC-32C, and RFC 3720's 32 zero bytes.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62A8_AB43);
    }

    #[test]
    fn scalar_event_bytes_match_hand_encoding() {
        let e = encode_event(1.5, 300, None, &[("loss", 2.0)]);
        let mut want = vec![0x09];
        want.extend_from_slice(&1.5f64.to_le_bytes());
        want.extend_from_slice(&[0x10, 0xAC, 0x02]); // step 300 = 0b10_0101100
        // summary (field 5) { value (1) { tag (1) "loss", simple_value (2) 2.0f } }
        let mut val = vec![0x0A, 4];
        val.extend_from_slice(b"loss");
        val.push(0x15);
        val.extend_from_slice(&2.0f32.to_le_bytes());
        let mut summary = vec![0x0A, val.len() as u8];
        summary.extend_from_slice(&val);
        want.push(0x2A);
        want.push(summary.len() as u8);
        want.extend_from_slice(&summary);
        assert_eq!(e, want);
    }

    /// Reads records back, checking both CRCs, as TensorBoard's reader does.
    fn read_records(bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            let len_bytes = &bytes[i..i + 8];
            let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
            let crc_len = u32::from_le_bytes(bytes[i + 8..i + 12].try_into().unwrap());
            assert_eq!(crc_len, masked_crc32c(len_bytes), "length crc");
            let data = &bytes[i + 12..i + 12 + len];
            let crc_data =
                u32::from_le_bytes(bytes[i + 12 + len..i + 16 + len].try_into().unwrap());
            assert_eq!(crc_data, masked_crc32c(data), "data crc");
            out.push(data.to_vec());
            i += 16 + len;
        }
        out
    }

    #[test]
    fn event_file_starts_with_the_version_and_holds_framed_scalars() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path().join("tb")).unwrap();
        w.add_scalar("train/loss", 3.25, 1).unwrap();
        w.add_scalars(&[("train/lr", 1e-3), ("train/mfu", 0.4)], 2)
            .unwrap();
        let name = w.path().file_name().unwrap().to_string_lossy().to_string();
        assert!(name.starts_with("events.out.tfevents."), "{name}");
        // A second writer in the same second and process gets its own file.
        let other = EventWriter::create(dir.path().join("tb")).unwrap();
        assert_ne!(other.path(), w.path());
        let records = read_records(&std::fs::read(w.path()).unwrap());
        assert_eq!(records.len(), 3);
        assert!(records[0].windows(13).any(|x| x == b"brain.Event:2"));
        assert!(records[1].windows(10).any(|x| x == b"train/loss"));
        assert!(records[1].windows(4).any(|x| x == 3.25f32.to_le_bytes()));
        assert!(records[2].windows(9).any(|x| x == b"train/mfu"));
    }
}
