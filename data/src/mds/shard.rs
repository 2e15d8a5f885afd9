//! One shard: its decompressed bytes, validated once, then random access to samples.
//!
//! Layout (`MDSWriter.encode_joint_shard`): `u32 N | u32 offsets[N+1] | config JSON | samples`,
//! offsets absolute. [`Shard::parse`] checks, in O(samples x variable columns) and without
//! allocating, that the table fits, that offsets never decrease, start after the table and end
//! exactly at the end of the data, and that each sample's u32 size header accounts for exactly its
//! bytes. So a truncated shard, a damaged offset or a damaged size header is caught at open even
//! without hashes, and no later access can go out of bounds. (Damage inside a payload or the
//! config is only caught by hashes, or when it breaks the payload's own structure.)

use std::ops::{Deref, Range};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::codec;
use super::columns::Columns;
use super::error::{MdsError, Result};
use super::hashing::HashAlgo;
use super::index::ShardInfo;
use super::value::Sample;

/// A shard's decompressed bytes: owned, or a read-only memory map of an uncompressed file.
pub enum ShardData {
    /// Bytes read (and decompressed) into memory.
    Owned(Vec<u8>),
    /// Safety note: a map is only sound while nobody truncates or rewrites the file; tessera
    /// writes shards by atomic rename (a new inode), never in place, and so does streaming.
    Mapped(memmap2::Mmap),
}

impl Deref for ShardData {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            ShardData::Owned(v) => v,
            ShardData::Mapped(m) => m,
        }
    }
}

impl std::fmt::Debug for ShardData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if matches!(self, ShardData::Owned(_)) {
            "Owned"
        } else {
            "Mapped"
        };
        write!(f, "ShardData::{kind}({} bytes)", self.len())
    }
}

/// A validated shard ready for random access.
#[derive(Debug)]
pub struct Shard {
    path: PathBuf,
    columns: Arc<Columns>,
    data: ShardData,
    samples: usize,
}

impl Shard {
    /// Opens shard `info` of the dataset in `dir`: memory-maps an uncompressed file (when
    /// `mmap`), otherwise reads it; decompresses a compressed one; verifies hashes if asked.
    pub fn open(
        dir: &Path,
        info: &ShardInfo,
        index_path: &Path,
        verify: bool,
        mmap: bool,
    ) -> Result<Shard> {
        let file = info.file_on_disk();
        let path = dir.join(&file.basename);
        if info.zip_data.is_none() && mmap {
            let f = std::fs::File::open(&path).map_err(|e| MdsError::io(&path, "opening", e))?;
            let len = f
                .metadata()
                .map_err(|e| MdsError::io(&path, "reading metadata of", e))?
                .len();
            check_size(&path, "file", len, file.bytes)?;
            // SAFETY: see `ShardData::Mapped`; the length was checked against the index, and
            // every access below is bounds-checked against the map's length.
            let map =
                unsafe { memmap2::Mmap::map(&f) }.map_err(|e| MdsError::io(&path, "mapping", e))?;
            let columns = Arc::new(info.columns(index_path)?);
            return Shard::from_raw(ShardData::Mapped(map), info, columns, &path, verify);
        }
        let bytes = std::fs::read(&path).map_err(|e| MdsError::io(&path, "reading", e))?;
        Shard::from_file_bytes(bytes, info, index_path, &path, verify)
    }

    /// Builds a shard from the bytes of its file as stored (compressed when the index has
    /// `zip_data`): checks size, decompresses, optionally verifies the index's hashes of both the
    /// file and the decompressed data, then validates the layout. `path` is named in errors.
    pub fn from_file_bytes(
        file_bytes: Vec<u8>,
        info: &ShardInfo,
        index_path: &Path,
        path: &Path,
        verify: bool,
    ) -> Result<Shard> {
        let columns = Arc::new(info.columns(index_path)?);
        let raw = match (&info.zip_data, info.compression) {
            (Some(zip), Some(c)) => {
                check_size(path, "file", file_bytes.len() as u64, zip.bytes)?;
                if verify {
                    verify_hashes(path, "file", &file_bytes, &zip.hashes)?;
                }
                c.decompress(&file_bytes, info.raw_data.bytes, path)?
            }
            _ => {
                check_size(path, "file", file_bytes.len() as u64, info.raw_data.bytes)?;
                file_bytes
            }
        };
        Shard::from_raw(ShardData::Owned(raw), info, columns, path, verify)
    }

    /// Builds a shard from decompressed bytes, checking size (and hashes when `verify`).
    pub fn from_raw(
        data: ShardData,
        info: &ShardInfo,
        columns: Arc<Columns>,
        path: &Path,
        verify: bool,
    ) -> Result<Shard> {
        check_size(
            path,
            "decompressed data",
            data.len() as u64,
            info.raw_data.bytes,
        )?;
        if verify {
            verify_hashes(path, "decompressed data", &data, &info.raw_data.hashes)?;
        }
        Shard::parse(data, columns, Some(info.samples), path)
    }

    /// Validates the header and offset table of decompressed shard bytes. `expected_samples`
    /// is the index's count, if known.
    pub fn parse(
        data: ShardData,
        columns: Arc<Columns>,
        expected_samples: Option<u64>,
        path: &Path,
    ) -> Result<Shard> {
        let bytes: &[u8] = &data;
        let len = bytes.len() as u64;
        if len > u32::MAX as u64 {
            return Err(MdsError::corrupt(
                path,
                format!("{len} bytes is over the 4 GiB MDS limit"),
            ));
        }
        let n = read_u32(bytes, 0).ok_or_else(|| {
            MdsError::corrupt(path, format!("{len} bytes cannot hold the sample count"))
        })? as u64;
        if let Some(want) = expected_samples
            && n != want
        {
            return Err(MdsError::corrupt(
                path,
                format!("header says {n} samples, the index says {want}"),
            ));
        }
        let table_end = 4 + 4 * (n + 1);
        if table_end > len {
            return Err(MdsError::corrupt(
                path,
                format!(
                    "{len} bytes cannot hold the offset table of {n} samples ({table_end} bytes)"
                ),
            ));
        }
        let nvar = columns.num_variable();
        let head = 4 * nvar as u64;
        let mut prev = off(bytes, 0) as u64;
        if prev < table_end {
            return Err(MdsError::corrupt(
                path,
                format!("first sample starts at {prev}, inside the {table_end}-byte header"),
            ));
        }
        for i in 0..n as usize {
            let next = off(bytes, i + 1) as u64;
            if next < prev || next > len {
                return Err(MdsError::corrupt(
                    path,
                    format!(
                        "offset {} is {next}, after {prev}, in a {len}-byte shard",
                        i + 1
                    ),
                ));
            }
            // The sample's own size header must account for exactly its bytes: this catches a
            // shifted offset or a damaged size even without hashes.
            let size = next - prev;
            let mut need = head + columns.fixed_total();
            if size >= head {
                for k in 0..nvar {
                    need += read_u32(bytes, (prev + 4 * k as u64) as usize).unwrap_or(0) as u64;
                }
            }
            if size != need {
                return Err(MdsError::corrupt(
                    path,
                    format!("sample {i} spans {size} bytes but its column sizes need {need}"),
                ));
            }
            prev = next;
        }
        if prev != len {
            return Err(MdsError::corrupt(
                path,
                format!("samples end at byte {prev} but the shard has {len} bytes"),
            ));
        }
        Ok(Shard {
            path: path.to_path_buf(),
            columns,
            data,
            samples: n as usize,
        })
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.samples
    }

    /// Whether the shard has no samples.
    pub fn is_empty(&self) -> bool {
        self.samples == 0
    }

    /// The file this shard came from (used in errors).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The shard's columns.
    pub fn columns(&self) -> &Arc<Columns> {
        &self.columns
    }

    /// The whole decompressed shard.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    fn check_index(&self, i: usize) -> Result<()> {
        if i >= self.samples {
            return Err(MdsError::SampleOutOfRange {
                origin: self.path.clone(),
                index: i as u64,
                len: self.samples as u64,
            });
        }
        Ok(())
    }

    /// The encoded bytes of sample `i` (size header plus payloads).
    pub fn sample_bytes(&self, i: usize) -> Result<&[u8]> {
        self.check_index(i)?;
        // In bounds and ordered: checked by `parse`.
        let (a, b) = (off(&self.data, i) as usize, off(&self.data, i + 1) as usize);
        Ok(&self.data[a..b])
    }

    /// The payload of column `col` in sample `i`.
    pub fn field(&self, i: usize, col: usize) -> Result<&[u8]> {
        let s = self.sample_bytes(i)?;
        let r = self.field_range_in(s, i, col)?;
        Ok(&s[r])
    }

    fn field_range_in(&self, sample: &[u8], i: usize, col: usize) -> Result<Range<usize>> {
        if col >= self.columns.len() {
            return Err(MdsError::MissingColumn {
                origin: self.path.display().to_string(),
                column: format!("#{col}"),
                available: self.columns.names_list(),
            });
        }
        self.columns
            .field_range(sample, col)
            .map_err(|reason| MdsError::CorruptSample {
                path: self.path.clone(),
                sample: i,
                column: None,
                reason,
            })
    }

    /// Decodes sample `i` into one [`super::Value`] per column.
    pub fn get(&self, i: usize) -> Result<Sample> {
        let s = self.sample_bytes(i)?;
        let mut values = Vec::with_capacity(self.columns.len());
        for (c, column) in self.columns.iter().enumerate() {
            let r = self.field_range_in(s, i, c)?;
            let v = codec::decode(&column.encoding, &s[r]).map_err(|reason| {
                MdsError::CorruptSample {
                    path: self.path.clone(),
                    sample: i,
                    column: Some(column.name.clone()),
                    reason,
                }
            })?;
            values.push(v);
        }
        Ok(Sample::new(self.columns.clone(), values))
    }
}

/// Little-endian u32 at byte `at`, if in bounds.
fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// Offset `i` of the table; only called for indices `parse` has bounds-checked.
fn off(b: &[u8], i: usize) -> u32 {
    read_u32(b, 4 + 4 * i).unwrap_or(0)
}

fn check_size(path: &Path, what: &'static str, found: u64, expected: u64) -> Result<()> {
    if found != expected {
        return Err(MdsError::ShardSize {
            path: path.to_path_buf(),
            what,
            found,
            expected,
        });
    }
    Ok(())
}

/// Checks every `algo -> hex` in `hashes` against `data`.
pub(crate) fn verify_hashes(
    path: &Path,
    what: &'static str,
    data: &[u8],
    hashes: &std::collections::BTreeMap<String, String>,
) -> Result<()> {
    for (name, want) in hashes {
        let algo = HashAlgo::parse(name, &path.display().to_string())?;
        let got = algo.hex(data);
        if !got.eq_ignore_ascii_case(want) {
            return Err(MdsError::HashMismatch {
                path: path.to_path_buf(),
                algo: name.clone(),
                what,
                found: got,
                expected: want.clone(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mds::value::Value;

    /// A two-sample shard with columns `a: str`, `b: int`, built by hand.
    fn tiny() -> Vec<u8> {
        let config = br#"{"x": 1}"#;
        let samples: Vec<Vec<u8>> = [("hi", 1i64), ("", -2)]
            .iter()
            .map(|(s, v)| {
                let mut b = (s.len() as u32).to_le_bytes().to_vec();
                b.extend_from_slice(s.as_bytes());
                b.extend_from_slice(&v.to_le_bytes());
                b
            })
            .collect();
        let mut out = 2u32.to_le_bytes().to_vec();
        let mut at = (4 + 4 * 3 + config.len()) as u32;
        out.extend_from_slice(&at.to_le_bytes());
        for s in &samples {
            at += s.len() as u32;
            out.extend_from_slice(&at.to_le_bytes());
        }
        out.extend_from_slice(config);
        samples.iter().for_each(|s| out.extend_from_slice(s));
        out
    }

    fn cols() -> Arc<Columns> {
        Arc::new(Columns::new([("a", "str"), ("b", "int")], Path::new("i")).unwrap())
    }

    #[test]
    fn samples_decode_from_a_hand_built_shard() {
        let s = Shard::parse(ShardData::Owned(tiny()), cols(), Some(2), Path::new("s")).unwrap();
        assert_eq!(s.len(), 2);
        let x = s.get(0).unwrap();
        assert_eq!(x.get("a"), Some(&Value::Str("hi".into())));
        assert_eq!(x.get("b"), Some(&Value::Int(1)));
        assert_eq!(s.get(1).unwrap().get("b"), Some(&Value::Int(-2)));
        assert_eq!(s.field(1, 1).unwrap(), &(-2i64).to_le_bytes());
        assert!(matches!(s.get(2), Err(MdsError::SampleOutOfRange { .. })));
    }

    #[test]
    fn truncated_or_padded_shards_are_rejected_by_the_offset_table() {
        let full = tiny();
        for cut in 0..full.len() {
            let r = Shard::parse(
                ShardData::Owned(full[..cut].to_vec()),
                cols(),
                None,
                Path::new("s/x.mds"),
            );
            let e = r.unwrap_err().to_string();
            assert!(e.contains("s/x.mds"), "{e}");
        }
        let mut padded = full.clone();
        padded.push(0);
        assert!(Shard::parse(ShardData::Owned(padded), cols(), None, Path::new("s")).is_err());
        assert!(Shard::parse(ShardData::Owned(full), cols(), Some(3), Path::new("s")).is_err());
    }
}
