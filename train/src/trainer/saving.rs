//! Where a run's checkpoints go: nowhere, model folders a library user can load
//! ([`super::Trainer::checkpoint_every`]), or the YAML path's resumable sharded checkpoints,
//! written on a background thread (see [`super::checkpointing`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use tessera_model::hf::{self, HfDtype};
use tessera_model::{Mpt, MptConfig, lora};

use crate::checkpoint::{AsyncCheckpointer, CheckpointStore, Resumable};
use crate::parallel::Sharded;

use super::TrainError;
use super::checkpointing::RankSnapshot;
use super::state::TrainState;

/// How long rank 0 waits for the other ranks' parts of a checkpoint before it gives up on the
/// save (the write of one shard of a very large model to slow storage fits in it).
const COMMIT_WAIT: Duration = Duration::from_secs(1800);

/// A run's checkpoint writer.
pub(crate) enum Saver {
    /// No checkpoints.
    None,
    /// `dir/ba{step}`: a transformers folder, or a PEFT adapter folder when an adapter trains,
    /// written by rank 0 before the next step.
    Folders { dir: PathBuf, adapter_only: bool },
    /// Resumable checkpoints: every rank's shard of the training state and `state.json`.
    Resumable(ResumableSaver),
}

/// The YAML path's checkpoints.
pub(crate) struct ResumableSaver {
    pub writer: AsyncCheckpointer,
    /// This launch of the job, shared by its ranks: names its checkpoint staging folders.
    pub attempt: String,
    /// Whether every checkpoint holds the consolidated `model.safetensors` (else only the last).
    pub consolidate_every_save: bool,
    /// A LoRA run's `adapter_config.json` (PEFT's), written into every checkpoint beside the
    /// adapter's weights.
    pub adapter_config: Option<serde_json::Value>,
}

impl Saver {
    /// Saves the state after a step (`last`: the run's final save); returns the checkpoint's
    /// folder (a resumable one is still being written when this returns).
    pub fn save<B: AutodiffBackend>(
        &mut self,
        sharded: &mut Sharded<B>,
        model_config: &MptConfig,
        state: &TrainState,
        last: bool,
    ) -> Result<Option<PathBuf>, TrainError> {
        match self {
            Saver::None => Ok(None),
            Saver::Folders { dir, adapter_only } => {
                // Under FULL_SHARD every rank takes part in gathering the model.
                let model = sharded.full_model().map_err(TrainError::Dist)?;
                let path = dir.join(CheckpointStore::name(state.step));
                if sharded.comm.rank() == 0 {
                    write_model(&model, model_config, *adapter_only, &path)?;
                }
                Ok(Some(path))
            }
            Saver::Resumable(r) => {
                let snapshot = RankSnapshot::take(
                    sharded,
                    model_config,
                    state,
                    r.consolidate_every_save || last,
                    r.adapter_config.as_ref(),
                )?;
                let attempt = r.attempt.clone();
                let path = r
                    .writer
                    .store()
                    .root()
                    .join(CheckpointStore::name(state.step));
                r.writer.spawn(state.step, move |store| {
                    snapshot.write(store, &attempt, COMMIT_WAIT)
                })?;
                Ok(Some(path))
            }
        }
    }

    /// The newest checkpoint that verifies from before step `step`, to roll back to; only
    /// resumable checkpoints qualify. Waits for a save in flight first.
    pub fn newest_before(&mut self, step: u64) -> Result<Option<Resumable>, TrainError> {
        match self {
            Saver::Resumable(r) => {
                r.writer.wait()?;
                Ok(r.writer.store().newest_verified_before(step)?.0)
            }
            _ => Ok(None),
        }
    }

    /// Waits for the save in flight, if any.
    pub fn wait(&mut self) -> Result<(), TrainError> {
        if let Saver::Resumable(r) = self {
            r.writer.wait()?;
        }
        Ok(())
    }

    /// The newest checkpoint on disk (after [`Saver::wait`]).
    pub fn newest(&self) -> Result<Option<PathBuf>, TrainError> {
        Ok(match self {
            Saver::Resumable(r) => r.writer.store().list()?.last().map(|(_, p)| p.clone()),
            _ => None,
        })
    }
}

/// The model as a transformers folder, or its adapter as a PEFT folder.
fn write_model<B: AutodiffBackend>(
    model: &Mpt<B>,
    config: &MptConfig,
    adapter_only: bool,
    path: &Path,
) -> Result<(), TrainError> {
    let inner = model.valid();
    if adapter_only {
        let Some(adapter) = inner.adapter() else {
            return Err(TrainError::Config {
                key: "checkpoint_every".into(),
                message: "the model has no adapter to save".into(),
            });
        };
        lora::peft::save(&adapter, path, None).map_err(|e| TrainError::Adapter {
            key: "checkpoint",
            source: Box::new(e),
        })
    } else {
        hf::save(&inner, config, path, HfDtype::F32).map_err(|source| TrainError::Model {
            key: "checkpoint",
            source: Box::new(source),
        })
    }
}
