//! Hugging Face checkpoint directories: load and save what `MptForCausalLM.save_pretrained`
//! writes — `config.json` plus `model.safetensors`, or shards `model-0000i-of-0000n.safetensors`
//! with `model.safetensors.index.json` — in F32, F16 or BF16.
//!
//! Tensor names are the table in [`crate::spec`]. On load, composer's `model.` prefix is
//! stripped; a tied model may carry a redundant `lm_head.weight` (ignored, as transformers
//! ties it). Every missing, unexpected, mis-shaped or non-float tensor is collected and
//! reported in one [`HfError::Tensors`].

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use safetensors::{Dtype, SafeTensors};
use thiserror::Error;

use crate::config::{ConfigError, MptConfig};
use crate::mpt::Mpt;
use crate::spec::param_specs;

/// File names transformers uses.
pub const CONFIG_FILE: &str = "config.json";
/// Single-file weights.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Index of sharded weights.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

pub(crate) mod save;

pub use save::{SaveOptions, named_gradients, named_parameters, save, save_with};

/// Storage dtype for [`save`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HfDtype {
    /// 32-bit float (bit-exact round trip).
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    Bf16,
}

impl HfDtype {
    pub(crate) fn safetensors(self) -> Dtype {
        match self {
            HfDtype::F32 => Dtype::F32,
            HfDtype::F16 => Dtype::F16,
            HfDtype::Bf16 => Dtype::BF16,
        }
    }

    pub(crate) fn torch_name(self) -> &'static str {
        match self {
            HfDtype::F32 => "float32",
            HfDtype::F16 => "float16",
            HfDtype::Bf16 => "bfloat16",
        }
    }
}

/// One problem with one tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TensorProblem {
    /// The model needs it; no file has it.
    Missing {
        /// Checkpoint name.
        name: String,
        /// Expected shape.
        shape: Vec<usize>,
    },
    /// A file has it; the config's model does not use it.
    Unexpected {
        /// Name as stored.
        name: String,
        /// The file.
        file: String,
    },
    /// Present with the wrong shape.
    Shape {
        /// Checkpoint name.
        name: String,
        /// From the config.
        expected: Vec<usize>,
        /// In the file.
        found: Vec<usize>,
    },
    /// Present with a dtype other than F32/F16/BF16.
    Dtype {
        /// Checkpoint name.
        name: String,
        /// As stored.
        dtype: String,
    },
    /// Two files (or two spellings) hold it.
    Duplicate {
        /// Checkpoint name.
        name: String,
    },
}

impl fmt::Display for TensorProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TensorProblem::Missing { name, shape } => write!(f, "missing {name} {shape:?}"),
            TensorProblem::Unexpected { name, file } => write!(f, "unexpected {name} (in {file})"),
            TensorProblem::Shape {
                name,
                expected,
                found,
            } => {
                write!(f, "{name}: shape {found:?}, expected {expected:?}")
            }
            TensorProblem::Dtype { name, dtype } => {
                write!(f, "{name}: dtype {dtype}, expected F32, F16 or BF16")
            }
            TensorProblem::Duplicate { name } => write!(f, "{name} appears more than once"),
        }
    }
}

/// Errors from [`load`] and [`save`].
#[derive(Debug, Error)]
pub enum HfError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `config.json` is missing or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Neither `model.safetensors` nor `model.safetensors.index.json` exists.
    #[error(
        "{dir}: no {WEIGHTS_FILE} or {INDEX_FILE} (only safetensors checkpoints are supported)"
    )]
    NoWeights {
        /// The directory.
        dir: PathBuf,
    },
    /// A safetensors file is malformed (bad header, offsets, sizes).
    #[error("{path}: not a valid safetensors file: {message}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// The shard index is malformed.
    #[error("{path}: {message}")]
    Index {
        /// The index file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The model carries a LoRA adapter, which an HF checkpoint has no place for.
    #[error(
        "{dir}: the model carries a LoRA adapter; merge it first (tessera_model::lora::merge, Mpt::merge_adapter) or save it on its own (lora::peft::save)"
    )]
    HasAdapter {
        /// The directory that was not written.
        dir: PathBuf,
    },
    /// Tensors do not match the config; lists every problem.
    #[error("{dir}: {} tensor problem(s): {}", problems.len(), problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
    Tensors {
        /// The directory (or the model, on save).
        dir: PathBuf,
        /// All problems found.
        problems: Vec<TensorProblem>,
    },
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> HfError + '_ {
    move |source| HfError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where each stored tensor lives.
struct Entry {
    file: usize,
    stored_name: String,
    dtype: Dtype,
    shape: Vec<usize>,
}

/// The weight files of a checkpoint directory, in order.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, HfError> {
    let index = dir.join(INDEX_FILE);
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(io(&index))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| HfError::Index {
            path: index.clone(),
            message: format!("not JSON: {e}"),
        })?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| HfError::Index {
                path: index.clone(),
                message: "no \"weight_map\" object".into(),
            })?;
        let mut files = Vec::new();
        for (name, file) in map {
            let file = file.as_str().ok_or_else(|| HfError::Index {
                path: index.clone(),
                message: format!("weight_map[{name:?}] is not a file name"),
            })?;
            if file.contains('/') || file.contains('\\') || file == ".." {
                return Err(HfError::Index {
                    path: index.clone(),
                    message: format!("shard name {file:?} leaves the directory"),
                });
            }
            let p = dir.join(file);
            if !files.contains(&p) {
                files.push(p);
            }
        }
        files.sort();
        return Ok(files);
    }
    let single = dir.join(WEIGHTS_FILE);
    if single.is_file() {
        return Ok(vec![single]);
    }
    Err(HfError::NoWeights {
        dir: dir.to_path_buf(),
    })
}

pub(crate) fn map_file(path: &Path) -> Result<memmap2::Mmap, HfError> {
    let file = File::open(path).map_err(io(path))?;
    // SAFETY: the map is read-only and lives only during the load; like every safetensors
    // loader we rely on the checkpoint not being truncated or rewritten meanwhile.
    unsafe { memmap2::Mmap::map(&file) }.map_err(io(path))
}

/// Loads `config.json` and the weights of an HF MPT directory.
pub fn load<B: Backend>(
    dir: impl AsRef<Path>,
    device: &B::Device,
) -> Result<(MptConfig, Mpt<B>), HfError> {
    let dir = dir.as_ref();
    let config = MptConfig::from_json_file(dir.join(CONFIG_FILE))?;
    let model = load_weights(&config, dir, device)?;
    Ok((config, model))
}

/// Loads the weights of `dir` into a model with the given config.
pub fn load_weights<B: Backend>(
    config: &MptConfig,
    dir: impl AsRef<Path>,
    device: &B::Device,
) -> Result<Mpt<B>, HfError> {
    let dir = dir.as_ref();
    config.validate()?;
    let files = weight_files(dir)?;
    let maps = files
        .iter()
        .map(|f| map_file(f))
        .collect::<Result<Vec<_>, _>>()?;
    let mut parsed = Vec::with_capacity(maps.len());
    for (path, map) in files.iter().zip(&maps) {
        let st = SafeTensors::deserialize(map).map_err(|e| HfError::Safetensors {
            path: path.clone(),
            message: e.to_string(),
        })?;
        parsed.push(st);
    }

    let specs = param_specs(config);
    let wanted: HashMap<&str, &[usize]> = specs
        .iter()
        .map(|s| (s.name.as_str(), s.shape.as_slice()))
        .collect();
    let mut problems = Vec::new();
    let mut entries: HashMap<String, Entry> = HashMap::new();
    for (fi, st) in parsed.iter().enumerate() {
        let mut names: Vec<&str> = st.names();
        names.sort_unstable();
        for stored in names {
            let view = st.tensor(stored).map_err(|e| HfError::Safetensors {
                path: files[fi].clone(),
                message: e.to_string(),
            })?;
            let name = stored.strip_prefix("model.").unwrap_or(stored);
            let shape = view.shape().to_vec();
            if config.tie_word_embeddings && name == "lm_head.weight" && !wanted.contains_key(name)
            {
                // Redundant copy of the tied embedding: transformers ties it, so do we.
                if shape != [config.vocab_size, config.d_model] {
                    problems.push(TensorProblem::Shape {
                        name: name.into(),
                        expected: vec![config.vocab_size, config.d_model],
                        found: shape,
                    });
                }
                continue;
            }
            let Some(expected) = wanted.get(name) else {
                problems.push(TensorProblem::Unexpected {
                    name: stored.into(),
                    file: file_name(&files[fi]),
                });
                continue;
            };
            if !matches!(view.dtype(), Dtype::F32 | Dtype::F16 | Dtype::BF16) {
                problems.push(TensorProblem::Dtype {
                    name: name.into(),
                    dtype: format!("{:?}", view.dtype()),
                });
            } else if shape.as_slice() != *expected {
                problems.push(TensorProblem::Shape {
                    name: name.into(),
                    expected: expected.to_vec(),
                    found: shape.clone(),
                });
            }
            let entry = Entry {
                file: fi,
                stored_name: stored.into(),
                dtype: view.dtype(),
                shape,
            };
            if entries.insert(name.to_string(), entry).is_some() {
                problems.push(TensorProblem::Duplicate { name: name.into() });
            }
        }
    }
    for s in &specs {
        if !entries.contains_key(&s.name) {
            problems.push(TensorProblem::Missing {
                name: s.name.clone(),
                shape: s.shape.clone(),
            });
        }
    }
    if !problems.is_empty() {
        return Err(HfError::Tensors {
            dir: dir.to_path_buf(),
            problems,
        });
    }

    let mut source = |spec: &crate::spec::ParamSpec| -> TensorData {
        let e = &entries[&spec.name];
        let view = parsed[e.file]
            .tensor(&e.stored_name)
            .expect("validated above");
        TensorData::new(to_f32(view.data(), e.dtype), e.shape.clone())
    };
    Ok(Mpt::build(config, device, &mut source))
}

pub(crate) fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Little-endian bytes of a float tensor to f32 values (exact for all three dtypes).
pub(crate) fn to_f32(bytes: &[u8], dtype: Dtype) -> Vec<f32> {
    match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => unreachable!("dtype {other:?} was rejected during validation"),
    }
}
