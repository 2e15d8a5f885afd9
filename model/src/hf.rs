//! Hugging Face checkpoint directories: load and save what `MptForCausalLM.save_pretrained`
//! writes — `config.json` plus `model.safetensors`, or shards `model-0000i-of-0000n.safetensors`
//! with `model.safetensors.index.json` — in F32, F16 or BF16.
//!
//! Tensor names are the table in [`crate::spec`]. On load, composer's `model.` prefix is
//! stripped; a tied model may carry a redundant `lm_head.weight` (ignored, as transformers
//! ties it). Every missing, unexpected, mis-shaped or non-float tensor is collected and
//! reported in one [`HfError::Tensors`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use safetensors::{Dtype, SafeTensors};
use thiserror::Error;

use crate::config::{ConfigError, MptConfig};
use crate::mpt::Mpt;
use crate::spec::{hf_name, param_specs};

/// File names transformers uses.
pub const CONFIG_FILE: &str = "config.json";
/// Single-file weights.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Index of sharded weights.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

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
    fn safetensors(self) -> Dtype {
        match self {
            HfDtype::F32 => Dtype::F32,
            HfDtype::F16 => Dtype::F16,
            HfDtype::Bf16 => Dtype::BF16,
        }
    }

    fn torch_name(self) -> &'static str {
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
            TensorProblem::Shape { name, expected, found } => {
                write!(f, "{name}: shape {found:?}, expected {expected:?}")
            }
            TensorProblem::Dtype { name, dtype } => write!(f, "{name}: dtype {dtype}, expected F32, F16 or BF16"),
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
    #[error("{dir}: no {WEIGHTS_FILE} or {INDEX_FILE} (only safetensors checkpoints are supported)")]
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
    /// Tensors do not match the config; lists every problem.
    #[error("{dir}: {} tensor problem(s): {}", problems.len(), problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
    Tensors {
        /// The directory (or the model, on save).
        dir: PathBuf,
        /// All problems found.
        problems: Vec<TensorProblem>,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> HfError + '_ {
    move |source| HfError::Io { path: path.to_path_buf(), source }
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
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| HfError::Index { path: index.clone(), message: format!("not JSON: {e}") })?;
        let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| HfError::Index {
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
                return Err(HfError::Index { path: index.clone(), message: format!("shard name {file:?} leaves the directory") });
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
    Err(HfError::NoWeights { dir: dir.to_path_buf() })
}

fn map_file(path: &Path) -> Result<memmap2::Mmap, HfError> {
    let file = File::open(path).map_err(io(path))?;
    // SAFETY: the map is read-only and lives only during the load; like every safetensors
    // loader we rely on the checkpoint not being truncated or rewritten meanwhile.
    unsafe { memmap2::Mmap::map(&file) }.map_err(io(path))
}

/// Loads `config.json` and the weights of an HF MPT directory.
pub fn load<B: Backend>(dir: impl AsRef<Path>, device: &B::Device) -> Result<(MptConfig, Mpt<B>), HfError> {
    let dir = dir.as_ref();
    let config = MptConfig::from_json_file(dir.join(CONFIG_FILE))?;
    let model = load_weights(&config, dir, device)?;
    Ok((config, model))
}

/// Loads the weights of `dir` into a model with the given config.
pub fn load_weights<B: Backend>(config: &MptConfig, dir: impl AsRef<Path>, device: &B::Device) -> Result<Mpt<B>, HfError> {
    let dir = dir.as_ref();
    let files = weight_files(dir)?;
    let maps = files.iter().map(|f| map_file(f)).collect::<Result<Vec<_>, _>>()?;
    let mut parsed = Vec::with_capacity(maps.len());
    for (path, map) in files.iter().zip(&maps) {
        let st = SafeTensors::deserialize(map)
            .map_err(|e| HfError::Safetensors { path: path.clone(), message: e.to_string() })?;
        parsed.push(st);
    }

    let specs = param_specs(config);
    let wanted: HashMap<&str, &[usize]> = specs.iter().map(|s| (s.name.as_str(), s.shape.as_slice())).collect();
    let mut problems = Vec::new();
    let mut entries: HashMap<String, Entry> = HashMap::new();
    for (fi, st) in parsed.iter().enumerate() {
        let mut names: Vec<&str> = st.names();
        names.sort_unstable();
        for stored in names {
            let view = st.tensor(stored).map_err(|e| HfError::Safetensors { path: files[fi].clone(), message: e.to_string() })?;
            let name = stored.strip_prefix("model.").unwrap_or(stored);
            let shape = view.shape().to_vec();
            if config.tie_word_embeddings && name == "lm_head.weight" && !wanted.contains_key(name) {
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
                problems.push(TensorProblem::Unexpected { name: stored.into(), file: file_name(&files[fi]) });
                continue;
            };
            if !matches!(view.dtype(), Dtype::F32 | Dtype::F16 | Dtype::BF16) {
                problems.push(TensorProblem::Dtype { name: name.into(), dtype: format!("{:?}", view.dtype()) });
            } else if shape.as_slice() != *expected {
                problems.push(TensorProblem::Shape { name: name.into(), expected: expected.to_vec(), found: shape.clone() });
            }
            let entry = Entry { file: fi, stored_name: stored.into(), dtype: view.dtype(), shape };
            if entries.insert(name.to_string(), entry).is_some() {
                problems.push(TensorProblem::Duplicate { name: name.into() });
            }
        }
    }
    for s in &specs {
        if !entries.contains_key(&s.name) {
            problems.push(TensorProblem::Missing { name: s.name.clone(), shape: s.shape.clone() });
        }
    }
    if !problems.is_empty() {
        return Err(HfError::Tensors { dir: dir.to_path_buf(), problems });
    }

    let mut source = |spec: &crate::spec::ParamSpec| -> TensorData {
        let e = &entries[&spec.name];
        let view = parsed[e.file].tensor(&e.stored_name).expect("validated above");
        TensorData::new(to_f32(view.data(), e.dtype), e.shape.clone())
    };
    Ok(Mpt::build(config, device, &mut source))
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Little-endian bytes of a float tensor to f32 values (exact for all three dtypes).
fn to_f32(bytes: &[u8], dtype: Dtype) -> Vec<f32> {
    match dtype {
        Dtype::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        Dtype::F16 => bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::BF16 => bytes.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        other => unreachable!("dtype {other:?} was rejected during validation"),
    }
}

fn from_f32(values: &[f32], dtype: HfDtype) -> Vec<u8> {
    match dtype {
        HfDtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        HfDtype::F16 => values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
        HfDtype::Bf16 => values.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect(),
    }
}

/// Collects float parameters by checkpoint name.
struct Collector<'a> {
    path: Vec<String>,
    wanted: &'a HashSet<String>,
    out: BTreeMap<String, TensorData>,
}

impl<B: Backend> ModuleVisitor<B> for Collector<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let name = hf_name(&self.path.join("."));
        if self.wanted.contains(&name) {
            self.out.insert(name, param.val().into_data());
        }
    }
}

/// Checkpoint name -> data of the model's parameters among `wanted`.
fn collect<B: Backend>(model: &Mpt<B>, wanted: &HashSet<String>) -> BTreeMap<String, TensorData> {
    let mut c = Collector { path: Vec::new(), wanted, out: BTreeMap::new() };
    model.visit(&mut c);
    c.out
}

/// Every parameter of the model by checkpoint name (for tests and tools).
pub fn named_parameters<B: Backend>(model: &Mpt<B>) -> BTreeMap<String, TensorData> {
    let wanted = param_specs(model.config()).into_iter().map(|s| s.name).collect();
    collect(model, &wanted)
}

/// Options for [`save_with`].
#[derive(Clone, Copy, Debug)]
pub struct SaveOptions {
    /// Storage dtype.
    pub dtype: HfDtype,
    /// Start a new shard when the current one would exceed this many bytes (transformers'
    /// `max_shard_size`; a single tensor larger than this gets a shard of its own).
    pub max_shard_bytes: u64,
}

impl Default for SaveOptions {
    fn default() -> Self {
        Self { dtype: HfDtype::F32, max_shard_bytes: 5_000_000_000 }
    }
}

/// Writes `config.json` and safetensors weights that transformers' `MptForCausalLM` (and
/// [`load`]) read back; sharded above 5 GB.
pub fn save<B: Backend>(model: &Mpt<B>, config: &MptConfig, dir: impl AsRef<Path>, dtype: HfDtype) -> Result<(), HfError> {
    save_with(model, config, dir, SaveOptions { dtype, ..SaveOptions::default() })
}

/// [`save`] with explicit options. Every file is written atomically (temp name, fsync,
/// rename); stale weight files of the other layout are removed afterwards.
pub fn save_with<B: Backend>(model: &Mpt<B>, config: &MptConfig, dir: impl AsRef<Path>, opts: SaveOptions) -> Result<(), HfError> {
    let dir = dir.as_ref();
    let specs = param_specs(config);
    std::fs::create_dir_all(dir).map_err(io(dir))?;

    // Check the model against the config before writing anything.
    let actual: HashMap<String, Vec<usize>> = {
        let mut shapes = HashMap::new();
        let mut c = ShapeCollector { path: Vec::new(), out: &mut shapes };
        model.visit(&mut c);
        shapes
    };
    let mut problems = Vec::new();
    for s in &specs {
        match actual.get(&s.name) {
            None => problems.push(TensorProblem::Missing { name: s.name.clone(), shape: s.shape.clone() }),
            Some(found) if *found != s.shape => problems.push(TensorProblem::Shape {
                name: s.name.clone(),
                expected: s.shape.clone(),
                found: found.clone(),
            }),
            _ => {}
        }
    }
    let spec_names: HashSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    for name in actual.keys() {
        if !spec_names.contains(name.as_str()) {
            problems.push(TensorProblem::Unexpected { name: name.clone(), file: "<model>".into() });
        }
    }
    if !problems.is_empty() {
        return Err(HfError::Tensors { dir: dir.to_path_buf(), problems });
    }

    // Group tensors into shards in checkpoint order.
    let elem = match opts.dtype {
        HfDtype::F32 => 4u64,
        _ => 2,
    };
    let mut shards: Vec<Vec<&crate::spec::ParamSpec>> = vec![Vec::new()];
    let mut size = 0u64;
    for s in &specs {
        let bytes = s.numel() as u64 * elem;
        if size > 0 && size + bytes > opts.max_shard_bytes {
            shards.push(Vec::new());
            size = 0;
        }
        shards.last_mut().expect("non-empty").push(s);
        size += bytes;
    }
    let n = shards.len();
    let mut weight_map = BTreeMap::new();
    let mut total = 0u64;
    for (i, shard) in shards.iter().enumerate() {
        let file = if n == 1 { WEIGHTS_FILE.to_string() } else { format!("model-{:05}-of-{:05}.safetensors", i + 1, n) };
        let wanted: HashSet<String> = shard.iter().map(|s| s.name.clone()).collect();
        let data = collect(model, &wanted);
        let mut views = Vec::with_capacity(data.len());
        for (name, d) in &data {
            let values = d.clone().convert::<f32>().into_vec::<f32>().map_err(|e| HfError::Safetensors {
                path: dir.join(&file),
                message: format!("{name}: cannot read tensor data: {e:?}"),
            })?;
            let bytes = from_f32(&values, opts.dtype);
            total += bytes.len() as u64;
            views.push((name.clone(), OwnedView { dtype: opts.dtype.safetensors(), shape: d.shape.to_vec(), data: bytes }));
            weight_map.insert(name.clone(), file.clone());
        }
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        let bytes = safetensors::serialize(views, Some(metadata))
            .map_err(|e| HfError::Safetensors { path: dir.join(&file), message: e.to_string() })?;
        write_atomic(&dir.join(&file), &bytes)?;
    }
    if n > 1 {
        let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        let text = serde_json::to_string_pretty(&index).expect("JSON of strings and numbers");
        write_atomic(&dir.join(INDEX_FILE), text.as_bytes())?;
    }
    let mut cfg = config.to_hf_json();
    cfg["torch_dtype"] = serde_json::json!(opts.dtype.torch_name());
    let text = serde_json::to_string_pretty(&cfg).expect("JSON config");
    write_atomic(&dir.join(CONFIG_FILE), text.as_bytes())?;

    // Remove the other layout's files so that a later load cannot pick up stale weights.
    let stale: Vec<PathBuf> = if n == 1 {
        let mut v = vec![dir.join(INDEX_FILE)];
        v.extend(shard_files(dir)?);
        v
    } else {
        let keep: HashSet<&String> = weight_map.values().collect();
        let mut v = vec![dir.join(WEIGHTS_FILE)];
        v.extend(shard_files(dir)?.into_iter().filter(|p| !keep.contains(&file_name(p))));
        v
    };
    for p in stale {
        if p.exists() {
            std::fs::remove_file(&p).map_err(io(&p))?;
        }
    }
    sync_dir(dir)
}

fn shard_files(dir: &Path) -> Result<Vec<PathBuf>, HfError> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io(dir))? {
        let p = e.map_err(io(dir))?.path();
        let name = file_name(&p);
        if name.starts_with("model-") && name.ends_with(".safetensors") && name.contains("-of-") {
            out.push(p);
        }
    }
    Ok(out)
}

struct ShapeCollector<'a> {
    path: Vec<String>,
    out: &'a mut HashMap<String, Vec<usize>>,
}

impl<B: Backend> ModuleVisitor<B> for ShapeCollector<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let name = hf_name(&self.path.join("."));
        self.out.insert(name, param.val().dims().to_vec());
    }
}

struct OwnedView {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl safetensors::View for OwnedView {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Writes `bytes` to `path` via a temp file in the same directory, fsynced, then renamed.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), HfError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{}.tmp-{}", file_name(path), std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(source) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(HfError::Io { path: path.to_path_buf(), source });
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), HfError> {
    // Directory fsync makes the renames durable; not all platforms allow opening a directory.
    if let Ok(f) = File::open(dir) {
        let _ = f.sync_all();
    }
    Ok(())
}
