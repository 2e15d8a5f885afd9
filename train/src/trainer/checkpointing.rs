//! What goes into a training checkpoint and how it comes back: HF-named model weights (loadable
//! by `tessera generate` and transformers as they are), `config.json`, the optimizer state and
//! `state.json`.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::AutodiffModule;
use burn::optim::Optimizer;
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::TensorData;
use burn::tensor::backend::AutodiffBackend;
use tessera_model::{Mpt, MptConfig, hf};

use crate::checkpoint::{Payload, STATE_FILE};
use crate::optim::{
    Optim, TrainOptimizer, TrainOptimizerRecord, check_record, param_names, rekey_record,
};

use super::TrainError;
use super::state::TrainState;

pub const MODEL_FILE: &str = "model.safetensors";
pub const CONFIG_FILE: &str = "config.json";
pub const OPTIM_FILE: &str = "optim.burn";

/// Everything a checkpoint needs, copied to the host. Building it is the only part of a save
/// that waits for the device; [`HostSnapshot::into_payload`] (serialization) runs on the
/// checkpoint thread.
pub struct HostSnapshot {
    step: u64,
    params: BTreeMap<String, TensorData>,
    config_json: Vec<u8>,
    optim: Vec<u8>,
    state: Vec<u8>,
}

impl HostSnapshot {
    /// Copies the model, optimizer and state to the host.
    pub fn take<B: AutodiffBackend>(
        model: &Mpt<B>,
        optim: &TrainOptimizer<Mpt<B>, B>,
        state: &TrainState,
    ) -> Result<Self, TrainError> {
        // Host sync: every parameter and every optimizer moment is read back here.
        let params = hf::named_parameters(&model.valid());
        let optim = BinBytesRecorder::<FullPrecisionSettings>::default()
            .record(optim.to_record(), ())
            .map_err(|e| TrainError::Checkpoint(format!("encoding the optimizer state: {e}")))?;
        let config_json = serde_json::to_vec_pretty(&model.config().to_hf_json())
            .map_err(|e| TrainError::Checkpoint(format!("encoding config.json: {e}")))?;
        let state = serde_json::to_vec_pretty(state)
            .map_err(|e| TrainError::Checkpoint(format!("encoding state.json: {e}")))?;
        Ok(Self {
            step: state_step(state.as_slice()),
            params,
            config_json,
            optim,
            state,
        })
    }

    /// Serializes the snapshot into checkpoint files.
    pub fn into_payload(self) -> Result<Payload, String> {
        let model = safetensors_f32(&self.params)?;
        Ok(Payload {
            step: self.step,
            files: vec![
                (MODEL_FILE.into(), model),
                (CONFIG_FILE.into(), self.config_json),
                (OPTIM_FILE.into(), self.optim),
                (STATE_FILE.into(), self.state),
            ],
        })
    }
}

fn state_step(state_json: &[u8]) -> u64 {
    serde_json::from_slice::<serde_json::Value>(state_json)
        .ok()
        .and_then(|v| v["step"].as_u64())
        .unwrap_or(0)
}

/// Named f32 tensors as one safetensors file, with transformers' `format: pt` metadata.
fn safetensors_f32(params: &BTreeMap<String, TensorData>) -> Result<Vec<u8>, String> {
    struct View {
        shape: Vec<usize>,
        bytes: Vec<u8>,
    }
    impl safetensors::View for &View {
        fn dtype(&self) -> safetensors::Dtype {
            safetensors::Dtype::F32
        }
        fn shape(&self) -> &[usize] {
            &self.shape
        }
        fn data(&self) -> std::borrow::Cow<'_, [u8]> {
            std::borrow::Cow::Borrowed(&self.bytes)
        }
        fn data_len(&self) -> usize {
            self.bytes.len()
        }
    }
    let mut views = Vec::with_capacity(params.len());
    for (name, data) in params {
        let values = data
            .clone()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| format!("{name}: {e:?}"))?;
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        views.push((
            name.clone(),
            View {
                shape: data.shape.to_vec(),
                bytes,
            },
        ));
    }
    let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(views.iter().map(|(n, v)| (n.clone(), v)), Some(metadata))
        .map_err(|e| e.to_string())
}

/// A checkpoint read back: the model on the device, the optimizer state re-keyed to its
/// parameters, and the training state.
pub struct Restored<B: AutodiffBackend> {
    pub model: Mpt<B>,
    pub optim: TrainOptimizer<Mpt<B>, B>,
    pub state: TrainState,
}

/// Loads the checkpoint in `dir` (already verified against its manifest).
pub fn restore<B: AutodiffBackend>(
    dir: &Path,
    config: &MptConfig,
    optim: Optim,
    fresh_optim: TrainOptimizer<Mpt<B>, B>,
    device: &B::Device,
) -> Result<Restored<B>, TrainError> {
    let model: Mpt<B> =
        hf::load_weights(config, dir, device).map_err(|e| TrainError::Checkpoint(e.to_string()))?;
    let state_path = dir.join(STATE_FILE);
    let state: TrainState = serde_json::from_slice(
        &std::fs::read(&state_path)
            .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", state_path.display())))?,
    )
    .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", state_path.display())))?;
    if state.version != TrainState::VERSION {
        return Err(TrainError::Checkpoint(format!(
            "{}: state version {} is not {} (written by another tessera)",
            state_path.display(),
            state.version,
            TrainState::VERSION
        )));
    }
    let optim_path = dir.join(OPTIM_FILE);
    let bytes = std::fs::read(&optim_path)
        .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", optim_path.display())))?;
    let record: TrainOptimizerRecord<B> = BinBytesRecorder::<FullPrecisionSettings>::default()
        .load(bytes, device)
        .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", optim_path.display())))?;
    check_record::<B>(&optim, &record)
        .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", optim_path.display())))?;
    let saved: Vec<(String, burn::module::ParamId)> = state
        .param_ids
        .iter()
        .map(|(name, id)| {
            burn::module::ParamId::try_deserialize(id)
                .map(|id| (name.clone(), id))
                .ok_or_else(|| {
                    TrainError::Checkpoint(format!(
                        "{}: bad parameter id {id:?}",
                        state_path.display()
                    ))
                })
        })
        .collect::<Result<_, _>>()?;
    let record = rekey_record::<Optim, B>(record, &saved, &param_names(&model))
        .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", optim_path.display())))?;
    Ok(Restored {
        model,
        optim: fresh_optim.load_record(record),
        state,
    })
}

/// The `(name, id)` pairs `state.json` records for the optimizer state.
pub fn param_ids<B: AutodiffBackend>(model: &Mpt<B>) -> Vec<(String, String)> {
    param_names(model)
        .into_iter()
        .map(|(n, id)| (n, id.serialize()))
        .collect()
}
