//! Sharded training state on disk: every rank writes its shard of every unit (f32 master weights
//! and optimizer moments) as one safetensors file, and `shards.json` records the layout (each
//! unit's parameters, shapes and offsets, how many shards there are). Nothing here depends on
//! burn's record format, so an upgrade of burn cannot break a resume.
//!
//! A run can resume on another number of ranks: [`ShardReader`] serves any range of any unit
//! from whichever old files hold it. The same reader writes the consolidated, transformers-named
//! `model.safetensors` ([`write_consolidated`]) one tensor at a time, so neither a resume nor a
//! consolidation holds more than about one tensor beyond the training state in host memory.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::CheckpointError;
use crate::parallel::layout::FlatLayout;

/// The layout file.
pub const SHARDS_FILE: &str = "shards.json";

/// Rank `rank`'s file of a state split `world` ways.
pub fn shard_file(rank: usize, world: usize) -> String {
    format!("rank{rank:05}-of-{world:05}.safetensors")
}

/// The kinds of vectors a shard file holds per unit.
pub const MASTER: &str = "master";

/// `shards.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardsMeta {
    /// Format version.
    pub version: u32,
    /// How many shard files there are.
    pub world: usize,
    /// The optimizer-state vectors each unit has besides `master` (`exp_avg`, `exp_avg_sq` for
    /// Adam; `exp_avg` for Lion); empty before the first update.
    pub moments: Vec<String>,
    /// Per unit: the optimizer's step count.
    pub steps: Vec<u64>,
    /// Per unit: its parameters.
    pub units: Vec<UnitMeta>,
}

/// One unit's parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitMeta {
    /// Elements of real parameters (the shards cover `padded`, zeros beyond this).
    pub numel: usize,
    /// The padded length the shards split.
    pub padded: usize,
    /// The unit's parameters, in layout order.
    pub params: Vec<ParamMeta>,
}

/// One parameter within its unit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamMeta {
    /// Checkpoint (transformers) name.
    pub name: String,
    /// Its shape (transformers' layout).
    pub shape: Vec<usize>,
    /// Offset of its first element within the unit's flat vector.
    pub offset: usize,
}

impl ShardsMeta {
    /// The `version` this build writes and reads.
    pub const VERSION: u32 = 1;

    /// The metadata of `layout`'s shards.
    pub fn of(layout: &FlatLayout, moments: Vec<String>, steps: Vec<u64>) -> Self {
        ShardsMeta {
            version: Self::VERSION,
            world: layout.shards,
            moments,
            steps,
            units: layout
                .units
                .iter()
                .map(|u| UnitMeta {
                    numel: u.numel,
                    padded: u.padded,
                    params: u
                        .params
                        .iter()
                        .map(|p| ParamMeta {
                            name: p.name.clone(),
                            shape: p.shape.clone(),
                            offset: p.offset,
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// Checks that these shards hold the parameters of `layout` (same units, names, shapes,
    /// offsets), whatever the number of shards.
    pub fn check_matches(&self, layout: &FlatLayout, path: &Path) -> Result<(), CheckpointError> {
        let bad = |what: String| CheckpointError::Invalid {
            path: path.to_path_buf(),
            what,
        };
        if self.units.len() != layout.units.len() {
            return Err(bad(format!(
                "{} units, the model has {}",
                self.units.len(),
                layout.units.len()
            )));
        }
        for (u, (saved, now)) in self.units.iter().zip(&layout.units).enumerate() {
            if saved.params.len() != now.params.len() {
                return Err(bad(format!(
                    "unit {u} has {} parameters, the model {}",
                    saved.params.len(),
                    now.params.len()
                )));
            }
            for (s, n) in saved.params.iter().zip(&now.params) {
                if s.name != n.name || s.shape != n.shape || s.offset != n.offset {
                    return Err(bad(format!(
                        "{} {:?} at {} does not match the model's {} {:?} at {}",
                        s.name, s.shape, s.offset, n.name, n.shape, n.offset
                    )));
                }
            }
        }
        Ok(())
    }
}

/// The name of a vector inside a shard file.
pub fn tensor_name(unit: usize, kind: &str) -> String {
    format!("u{unit}.{kind}")
}

/// Writes one rank's shard file: `vectors` are `(name, little-endian f32 bytes)`, each a 1-D
/// tensor, streamed into `w` in order (the safetensors layout: header length, JSON header,
/// data).
pub fn write_shard_file(
    w: &mut dyn Write,
    vectors: &[(String, &[u8])],
    metadata: BTreeMap<String, String>,
) -> std::io::Result<()> {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, bytes) in vectors {
        header.insert(
            name.clone(),
            serde_json::json!({
                "dtype": "F32",
                "shape": [bytes.len() / 4],
                "data_offsets": [offset, offset + bytes.len()],
            }),
        );
        offset += bytes.len();
    }
    write_safetensors_header(w, header, metadata)?;
    for (_, bytes) in vectors {
        w.write_all(bytes)?;
    }
    Ok(())
}

fn write_safetensors_header(
    w: &mut dyn Write,
    mut header: serde_json::Map<String, serde_json::Value>,
    metadata: BTreeMap<String, String>,
) -> std::io::Result<()> {
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), serde_json::json!(metadata));
    }
    let mut text = serde_json::to_vec(&header).map_err(std::io::Error::other)?;
    // The data that follows starts 8-byte aligned.
    while !(8 + text.len()).is_multiple_of(8) {
        text.push(b' ');
    }
    w.write_all(&(text.len() as u64).to_le_bytes())?;
    w.write_all(&text)
}

/// Reads ranges of units from the shard files of one checkpoint, whatever number of shards
/// wrote them.
pub struct ShardReader {
    /// The checkpoint's `shards.json`.
    pub meta: ShardsMeta,
    dir: PathBuf,
    files: Vec<memmap2::Mmap>,
}

impl ShardReader {
    /// Opens `dir/shards.json` and every shard file it names.
    pub fn open(dir: &Path) -> Result<Self, CheckpointError> {
        let meta_path = dir.join(SHARDS_FILE);
        let text = std::fs::read(&meta_path).map_err(CheckpointError::io(&meta_path))?;
        let meta: ShardsMeta =
            serde_json::from_slice(&text).map_err(|source| CheckpointError::Json {
                path: meta_path.clone(),
                source,
            })?;
        if meta.version != ShardsMeta::VERSION {
            return Err(CheckpointError::Invalid {
                path: meta_path,
                what: format!(
                    "format version {} is not {}",
                    meta.version,
                    ShardsMeta::VERSION
                ),
            });
        }
        let mut files = Vec::with_capacity(meta.world);
        for r in 0..meta.world {
            let path = dir.join(shard_file(r, meta.world));
            let f = std::fs::File::open(&path).map_err(CheckpointError::io(&path))?;
            // SAFETY: checkpoint files are immutable once published (saves write new folders),
            // and the manifest was verified before reading.
            let map = unsafe { memmap2::Mmap::map(&f) }.map_err(CheckpointError::io(&path))?;
            files.push(map);
        }
        Ok(ShardReader {
            meta,
            dir: dir.to_path_buf(),
            files,
        })
    }

    /// Elements `range` of unit `unit`'s vector `kind` (`master` or a moment), as f32; zero
    /// where the range runs past the real parameters.
    pub fn read(
        &self,
        unit: usize,
        kind: &str,
        range: std::ops::Range<usize>,
    ) -> Result<Vec<f32>, CheckpointError> {
        let u = self
            .meta
            .units
            .get(unit)
            .ok_or_else(|| self.bad(format!("no unit {unit}")))?;
        let shard_len = u.padded / self.meta.world;
        let mut out = vec![0.0f32; range.len()];
        let real = range.start..range.end.min(u.numel);
        let mut at = real.start;
        while at < real.end {
            let rank = at / shard_len;
            let shard_start = rank * shard_len;
            let end = real.end.min(shard_start + shard_len);
            let values = self.vector(rank, &tensor_name(unit, kind))?;
            let want = at - shard_start..end - shard_start;
            let bytes = values.get(want.start * 4..want.end * 4).ok_or_else(|| {
                self.bad(format!(
                    "{kind} of unit {unit} in rank {rank}'s file is short"
                ))
            })?;
            for (o, b) in out[at - range.start..end - range.start]
                .iter_mut()
                .zip(bytes.chunks_exact(4))
            {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
            at = end;
        }
        Ok(out)
    }

    /// The bytes of one named vector in rank `rank`'s file.
    fn vector(&self, rank: usize, name: &str) -> Result<&[u8], CheckpointError> {
        let file = shard_file(rank, self.meta.world);
        let st = safetensors::SafeTensors::deserialize(&self.files[rank])
            .map_err(|e| self.bad(format!("{file}: {e}")))?;
        let view = st
            .tensor(name)
            .map_err(|e| self.bad(format!("{file}: {name}: {e}")))?;
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(self.bad(format!("{file}: {name} is {:?}, not F32", view.dtype())));
        }
        // The view borrows from the map, which lives as long as `self`.
        let start = view.data().as_ptr() as usize - self.files[rank].as_ptr() as usize;
        Ok(&self.files[rank][start..start + view.data().len()])
    }

    fn bad(&self, what: String) -> CheckpointError {
        CheckpointError::Invalid {
            path: self.dir.clone(),
            what,
        }
    }
}

/// Writes the consolidated weights, transformers-named and full-shaped, as `model.safetensors`
/// into `w`, reading one parameter at a time from the shards.
pub fn write_consolidated(reader: &ShardReader, w: &mut dyn Write) -> Result<(), CheckpointError> {
    write_consolidated_as(reader, w, "model.safetensors", &|name| {
        Some(name.to_string())
    })
}

/// [`write_consolidated`] under other names: `rename` gives each parameter's name in the file
/// (`file` names it in errors), or `None` for a parameter that has no place there (an error).
/// A LoRA run writes PEFT's `adapter_model.safetensors` this way.
pub fn write_consolidated_as(
    reader: &ShardReader,
    w: &mut dyn Write,
    file: &str,
    rename: &dyn Fn(&str) -> Option<String>,
) -> Result<(), CheckpointError> {
    let out = reader.dir.join(file);
    let mut params: Vec<(usize, &ParamMeta, String)> = Vec::new();
    for (u, unit) in reader.meta.units.iter().enumerate() {
        for p in &unit.params {
            let name = rename(&p.name).ok_or_else(|| CheckpointError::Invalid {
                path: out.clone(),
                what: format!("parameter {} has no name in {file}", p.name),
            })?;
            params.push((u, p, name));
        }
    }
    params.sort_by(|a, b| a.2.cmp(&b.2));
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (_, p, name) in &params {
        let bytes = 4 * p.shape.iter().product::<usize>();
        header.insert(
            name.clone(),
            serde_json::json!({
                "dtype": "F32",
                "shape": p.shape,
                "data_offsets": [offset, offset + bytes],
            }),
        );
        offset += bytes;
    }
    let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    write_safetensors_header(w, header, metadata).map_err(CheckpointError::io(&out))?;
    for (u, p, _) in params {
        let n: usize = p.shape.iter().product();
        let values = reader.read(u, MASTER, p.offset..p.offset + n)?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        w.write_all(&bytes).map_err(CheckpointError::io(&out))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(world: usize, numel: usize, padded: usize) -> ShardsMeta {
        ShardsMeta {
            version: ShardsMeta::VERSION,
            world,
            moments: vec!["exp_avg".into()],
            steps: vec![3],
            units: vec![UnitMeta {
                numel,
                padded,
                params: vec![
                    ParamMeta {
                        name: "b.weight".into(),
                        shape: vec![2, 3],
                        offset: 0,
                    },
                    ParamMeta {
                        name: "a.bias".into(),
                        shape: vec![4],
                        offset: 6,
                    },
                ],
            }],
        }
    }

    /// Writes unit 0 (values 0..numel, zeros to `padded`) split `world` ways into `dir`.
    fn write(dir: &Path, world: usize, padded: usize) {
        let numel = 10;
        let full: Vec<f32> = (0..padded)
            .map(|i| if i < numel { i as f32 } else { 0.0 })
            .collect();
        let len = padded / world;
        for r in 0..world {
            let master: Vec<u8> = full[r * len..(r + 1) * len]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            let moment: Vec<u8> = full[r * len..(r + 1) * len]
                .iter()
                .flat_map(|v| (v * 10.0).to_le_bytes())
                .collect();
            let mut f = std::fs::File::create(dir.join(shard_file(r, world))).unwrap();
            write_shard_file(
                &mut f,
                &[
                    (tensor_name(0, MASTER), &master),
                    (tensor_name(0, "exp_avg"), &moment),
                ],
                BTreeMap::new(),
            )
            .unwrap();
        }
        std::fs::write(
            dir.join(SHARDS_FILE),
            serde_json::to_vec(&meta(world, numel, padded)).unwrap(),
        )
        .unwrap();
    }

    #[test]
    fn any_range_reads_back_across_shard_boundaries_whatever_the_world_size() {
        for world in [1, 2, 4] {
            let dir = tempfile::tempdir().unwrap();
            write(dir.path(), world, 16);
            let r = ShardReader::open(dir.path()).unwrap();
            let want: Vec<f32> = (0..16)
                .map(|i| if i < 10 { i as f32 } else { 0.0 })
                .collect();
            assert_eq!(r.read(0, MASTER, 0..16).unwrap(), want);
            assert_eq!(r.read(0, MASTER, 3..9).unwrap(), want[3..9]);
            assert_eq!(
                r.read(0, "exp_avg", 7..12).unwrap(),
                vec![70.0, 80.0, 90.0, 0.0, 0.0]
            );
            let err = r.read(0, "exp_avg_sq", 0..4).unwrap_err().to_string();
            assert!(err.contains("exp_avg_sq"), "{err}");
        }
    }

    #[test]
    fn the_consolidated_file_is_safetensors_with_full_named_tensors() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 2, 16);
        let r = ShardReader::open(dir.path()).unwrap();
        let mut out = Vec::new();
        write_consolidated(&r, &mut out).unwrap();
        let st = safetensors::SafeTensors::deserialize(&out).unwrap();
        let w = st.tensor("b.weight").unwrap();
        assert_eq!(w.shape(), &[2, 3]);
        let vals: Vec<f32> = w
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(vals, vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        let b = st.tensor("a.bias").unwrap();
        assert_eq!(b.data().len(), 16);
        assert_eq!(
            safetensors::SafeTensors::read_metadata(&out)
                .unwrap()
                .1
                .metadata()
                .as_ref()
                .unwrap()["format"],
            "pt"
        );
    }

    #[test]
    fn a_missing_shard_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 2, 16);
        std::fs::remove_file(dir.path().join(shard_file(1, 2))).unwrap();
        let err = ShardReader::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("rank00001-of-00002"), "{err}");
    }
}
