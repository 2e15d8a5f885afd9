//! Export: the model's tensors under checkpoint names, written as transformers writes them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use safetensors::Dtype;

use super::{
    CONFIG_FILE, HfDtype, HfError, INDEX_FILE, TensorProblem, WEIGHTS_FILE, file_name, io,
};
use crate::config::MptConfig;
use crate::mpt::Mpt;
use crate::spec::{ParamSpec, hf_name, param_specs};

pub(crate) fn from_f32(values: &[f32], dtype: HfDtype) -> Vec<u8> {
    match dtype {
        HfDtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        HfDtype::F16 => values
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect(),
        HfDtype::Bf16 => values
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect(),
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
    let mut c = Collector {
        path: Vec::new(),
        wanted,
        out: BTreeMap::new(),
    };
    model.visit(&mut c);
    c.out
}

/// Every parameter of the model by checkpoint name (for tests and tools).
pub fn named_parameters<B: Backend>(model: &Mpt<B>) -> BTreeMap<String, TensorData> {
    let wanted = param_specs(model.config())
        .into_iter()
        .map(|s| s.name)
        .collect();
    collect(model, &wanted)
}

/// The gradient of every float parameter that has one, by checkpoint name (for parity checks
/// against transformers' `grads.safetensors`: `tessera parity` and the model tests).
pub fn named_gradients<B: AutodiffBackend>(
    model: &Mpt<B>,
    grads: &B::Gradients,
) -> BTreeMap<String, TensorData> {
    struct Grads<'a, B: AutodiffBackend> {
        path: Vec<String>,
        grads: &'a B::Gradients,
        out: BTreeMap<String, TensorData>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Grads<'_, B> {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = param.val().grad(self.grads) {
                self.out
                    .insert(hf_name(&self.path.join(".")), g.into_data());
            }
        }
    }
    let mut v = Grads::<B> {
        path: Vec::new(),
        grads,
        out: BTreeMap::new(),
    };
    model.visit(&mut v);
    v.out
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
        Self {
            dtype: HfDtype::F32,
            max_shard_bytes: 5_000_000_000,
        }
    }
}

/// Writes `config.json` and safetensors weights that transformers' `MptForCausalLM` (and
/// [`super::load`]) read back; sharded above 5 GB.
pub fn save<B: Backend>(
    model: &Mpt<B>,
    config: &MptConfig,
    dir: impl AsRef<Path>,
    dtype: HfDtype,
) -> Result<(), HfError> {
    save_with(
        model,
        config,
        dir,
        SaveOptions {
            dtype,
            ..SaveOptions::default()
        },
    )
}

/// [`save`] with explicit options. Every file is written atomically (temp name, fsync,
/// rename); stale weight files of the other layout are removed afterwards.
pub fn save_with<B: Backend>(
    model: &Mpt<B>,
    config: &MptConfig,
    dir: impl AsRef<Path>,
    opts: SaveOptions,
) -> Result<(), HfError> {
    let dir = dir.as_ref();
    if model.has_adapter() {
        return Err(HfError::HasAdapter {
            dir: dir.to_path_buf(),
        });
    }
    let specs = param_specs(config);
    std::fs::create_dir_all(dir).map_err(io(dir))?;

    // Check the model against the config before writing anything.
    let actual: HashMap<String, Vec<usize>> = {
        let mut shapes = HashMap::new();
        let mut c = ShapeCollector {
            path: Vec::new(),
            out: &mut shapes,
        };
        model.visit(&mut c);
        shapes
    };
    let mut problems = Vec::new();
    for s in &specs {
        match actual.get(&s.name) {
            None => problems.push(TensorProblem::Missing {
                name: s.name.clone(),
                shape: s.shape.clone(),
            }),
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
            problems.push(TensorProblem::Unexpected {
                name: name.clone(),
                file: "<model>".into(),
            });
        }
    }
    if !problems.is_empty() {
        return Err(HfError::Tensors {
            dir: dir.to_path_buf(),
            problems,
        });
    }

    // Group tensors into shards in checkpoint order.
    let elem = match opts.dtype {
        HfDtype::F32 => 4u64,
        _ => 2,
    };
    let mut shards: Vec<Vec<&ParamSpec>> = vec![Vec::new()];
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
        let file = if n == 1 {
            WEIGHTS_FILE.to_string()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", i + 1, n)
        };
        let wanted: HashSet<String> = shard.iter().map(|s| s.name.clone()).collect();
        let data = collect(model, &wanted);
        let mut views = Vec::with_capacity(data.len());
        for (name, d) in &data {
            let values =
                d.clone()
                    .convert::<f32>()
                    .into_vec::<f32>()
                    .map_err(|e| HfError::Safetensors {
                        path: dir.join(&file),
                        message: format!("{name}: cannot read tensor data: {e:?}"),
                    })?;
            let bytes = from_f32(&values, opts.dtype);
            total += bytes.len() as u64;
            views.push((
                name.clone(),
                OwnedView {
                    dtype: opts.dtype.safetensors(),
                    shape: d.shape.to_vec(),
                    data: bytes,
                },
            ));
            weight_map.insert(name.clone(), file.clone());
        }
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        let bytes =
            safetensors::serialize(views, Some(metadata)).map_err(|e| HfError::Safetensors {
                path: dir.join(&file),
                message: e.to_string(),
            })?;
        write_atomic(&dir.join(&file), &bytes)?;
    }
    if n > 1 {
        let index =
            serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
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
        v.extend(
            shard_files(dir)?
                .into_iter()
                .filter(|p| !keep.contains(&file_name(p))),
        );
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

/// A tensor's bytes for `safetensors::serialize`.
pub(crate) struct OwnedView {
    pub(crate) dtype: Dtype,
    pub(crate) shape: Vec<usize>,
    pub(crate) data: Vec<u8>,
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

/// Writes `bytes` to `path` atomically and durably.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), HfError> {
    tessera_fs::atomic_write(path, bytes).map_err(|source| HfError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// fsyncs `dir`, making the renames and removals in it durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), HfError> {
    tessera_fs::sync_dir(dir).map_err(|source| HfError::Io {
        path: dir.to_path_buf(),
        source,
    })
}
