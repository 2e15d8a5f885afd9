//! PEFT's adapter folder, both ways: `adapter_config.json` ([`LoraConfig`]) and
//! `adapter_model.safetensors`, what `PeftModel.save_pretrained` writes and
//! `PeftModel.from_pretrained` reads.
//!
//! Tensor names are PEFT's with the adapter name removed (`get_peft_model_state_dict`):
//! `base_model.model.transformer.blocks.{i}.attn.Wqkv.lora_A.weight` (`[r, d_in]`) and
//! `….lora_B.weight` (`[d_out, r]`), the module path being transformers' `MptForCausalLM`
//! one. Loading checks the file against the config and the model: every missing, unexpected or
//! mis-shaped tensor is named in one error.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::prelude::*;
use safetensors::{Dtype, SafeTensors};

use super::LoraError;
use super::adapter::{
    Adapter, BlockLora, Factor, LoraLayer, param, peft_name, present_targets, target_dims,
};
use super::attach::check_fits;
use super::config::LoraConfig;
use crate::config::MptConfig;
use crate::hf::save::{OwnedView, from_f32, sync_dir, write_atomic};
use crate::hf::{HfDtype, HfError, map_file, to_f32};

/// The settings file.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// The weights file.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

fn from_hf(e: HfError) -> LoraError {
    match e {
        HfError::Io { path, source } => LoraError::Io { path, source },
        other => LoraError::Model {
            message: other.to_string(),
        },
    }
}

/// Every adapter tensor by PEFT name, as f32 data (for the trainer's checkpoints, or any
/// other writer).
pub fn adapter_tensors<B: Backend>(adapter: &Adapter<B>) -> BTreeMap<String, TensorData> {
    let mut out = BTreeMap::new();
    for (i, t, layer) in adapter.layers() {
        let f32 = |p: &burn::module::Param<Tensor<B, 2>>| p.val().into_data().convert::<f32>();
        out.insert(peft_name(i, t, Factor::A), f32(&layer.lora_a));
        out.insert(peft_name(i, t, Factor::B), f32(&layer.lora_b));
    }
    out
}

/// PEFT's name of an adapter parameter given its checkpoint name in tessera's module tree
/// (`transformer.blocks.{i}.attn.Wqkv.lora.lora_a`, as [`crate::spec::hf_name`] names the
/// module path): `base_model.model.transformer.blocks.{i}.attn.Wqkv.lora_A.weight`. `None` for
/// a name that is not an adapter factor.
pub fn peft_name_of(checkpoint_name: &str) -> Option<String> {
    let (layer, factor) = checkpoint_name.rsplit_once(".lora.")?;
    let factor = match factor {
        "lora_a" => Factor::A,
        "lora_b" => Factor::B,
        _ => return None,
    };
    Some(format!("base_model.model.{layer}.{}.weight", factor.name()))
}

/// An adapter from tensors by PEFT name (as [`adapter_tensors`] gives them or a file holds
/// them) for a model with config `model`. `origin` names the source in errors. The tensors
/// must be exactly the ones `config` implies for this model, with its shapes.
pub fn adapter_from_tensors<B: Backend>(
    config: &LoraConfig,
    model: &MptConfig,
    tensors: &BTreeMap<String, TensorData>,
    origin: &Path,
    device: &B::Device,
) -> Result<Adapter<B>, LoraError> {
    let targets = present_targets(config, model)?;
    let r = config.r;
    let mut expected: BTreeMap<String, [usize; 2]> = BTreeMap::new();
    for i in 0..model.n_layers {
        for &t in &targets {
            let (d_out, d_in) = target_dims(model, t).expect("present target");
            expected.insert(peft_name(i, t, Factor::A), [r, d_in]);
            expected.insert(peft_name(i, t, Factor::B), [d_out, r]);
        }
    }
    let mut problems = Vec::new();
    for (name, shape) in &expected {
        match tensors.get(name) {
            None => problems.push(format!("missing {name} {shape:?}")),
            Some(d) if d.shape.as_slice() != shape.as_slice() => problems.push(format!(
                "{name}: shape {:?}, expected {shape:?} (r = {r})",
                d.shape.to_vec()
            )),
            Some(_) => {}
        }
    }
    for name in tensors.keys() {
        if !expected.contains_key(name) {
            problems.push(format!(
                "unexpected {name} (not a LoRA tensor of target_modules {:?} on this model)",
                config
                    .target_modules
                    .iter()
                    .map(|t| t.name())
                    .collect::<Vec<_>>()
            ));
        }
    }
    if !problems.is_empty() {
        return Err(LoraError::Tensors {
            path: origin.to_path_buf(),
            problems,
        });
    }
    let values = |name: &str| -> Result<Vec<f32>, LoraError> {
        tensors[name]
            .clone()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| LoraError::Tensors {
                path: origin.to_path_buf(),
                problems: vec![format!("{name}: cannot read the data: {e:?}")],
            })
    };
    let mut blocks = Vec::with_capacity(model.n_layers);
    for i in 0..model.n_layers {
        let mut block = BlockLora::empty();
        for &t in &targets {
            let (a, b) = (peft_name(i, t, Factor::A), peft_name(i, t, Factor::B));
            let (d_out, d_in) = target_dims(model, t).expect("present target");
            *block.slot(t) = Some(LoraLayer {
                lora_a: param(values(&a)?, [r, d_in], device),
                lora_b: param(values(&b)?, [d_out, r], device),
                scale: config.scale(),
                dropout: config.lora_dropout,
            });
        }
        blocks.push(block);
    }
    let adapter = Adapter {
        blocks,
        config: config.clone(),
    };
    check_fits(&adapter, model)?;
    Ok(adapter)
}

/// Writes `dir/adapter_config.json` and `dir/adapter_model.safetensors` (f32), each atomically
/// (temp file, fsync, rename) and read back to check it. `base_model_name_or_path` is recorded
/// in the config, as PEFT does.
pub fn save<B: Backend>(
    adapter: &Adapter<B>,
    dir: impl AsRef<Path>,
    base_model_name_or_path: Option<&str>,
) -> Result<(), LoraError> {
    let dir = dir.as_ref();
    std::fs::create_dir_all(dir).map_err(|source| LoraError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let weights = dir.join(WEIGHTS_FILE);
    let mut views = Vec::new();
    for (name, data) in adapter_tensors(adapter) {
        let shape = data.shape.to_vec();
        let values = data
            .into_vec::<f32>()
            .expect("adapter_tensors returns f32 data");
        views.push((
            name,
            OwnedView {
                dtype: Dtype::F32,
                shape,
                data: from_f32(&values, HfDtype::F32),
            },
        ));
    }
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes =
        safetensors::serialize(views, Some(metadata)).map_err(|e| LoraError::Safetensors {
            path: weights.clone(),
            message: e.to_string(),
        })?;
    let config =
        serde_json::to_string_pretty(&adapter.config.to_adapter_config(base_model_name_or_path))
            .expect("JSON of plain values");
    for (path, bytes) in [
        (weights, bytes),
        (dir.join(CONFIG_FILE), config.into_bytes()),
    ] {
        write_atomic(&path, &bytes).map_err(from_hf)?;
        let back = std::fs::read(&path).map_err(|source| LoraError::Io {
            path: path.clone(),
            source,
        })?;
        if back != bytes {
            return Err(LoraError::Io {
                path,
                source: std::io::Error::other("the file read back differs from what was written"),
            });
        }
    }
    sync_dir(dir).map_err(from_hf)
}

/// Reads a PEFT adapter folder for a model with config `model` (F32, F16 or BF16 tensors).
pub fn load<B: Backend>(
    dir: impl AsRef<Path>,
    model: &MptConfig,
    device: &B::Device,
) -> Result<Adapter<B>, LoraError> {
    let dir = dir.as_ref();
    let config_path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&config_path).map_err(|source| LoraError::Io {
        path: config_path.clone(),
        source,
    })?;
    let config = LoraConfig::from_adapter_config(&text, &config_path.display().to_string())?;
    let weights = dir.join(WEIGHTS_FILE);
    if !weights.is_file() && dir.join("adapter_model.bin").is_file() {
        return Err(LoraError::Io {
            path: weights,
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "only adapter_model.bin (a pickle) is there; save the adapter with safe_serialization=True",
            ),
        });
    }
    let map = map_file(&weights).map_err(from_hf)?;
    let st = SafeTensors::deserialize(&map).map_err(|e| LoraError::Safetensors {
        path: weights.clone(),
        message: e.to_string(),
    })?;
    let mut tensors = BTreeMap::new();
    let mut problems = Vec::new();
    for (name, view) in st.tensors() {
        match view.dtype() {
            Dtype::F32 | Dtype::F16 | Dtype::BF16 => {
                let values = to_f32(view.data(), view.dtype());
                tensors.insert(name, TensorData::new(values, view.shape().to_vec()));
            }
            other => problems.push(format!(
                "{name}: dtype {other:?}, expected F32, F16 or BF16"
            )),
        }
    }
    if !problems.is_empty() {
        return Err(LoraError::Tensors {
            path: weights,
            problems,
        });
    }
    adapter_from_tensors(&config, model, &tensors, &weights, device)
}
