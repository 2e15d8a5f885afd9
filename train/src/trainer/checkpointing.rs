//! What goes into a training checkpoint and how it comes back, at any world size:
//!
//! ```text
//! ba{N}/
//!   rank00000-of-00004.safetensors …  each rank's shard of every unit: master weights, moments
//!   shards.json                        units, parameter names, shapes and offsets; step counts
//!   state.json                         step, tokens, data cursor, seed, guard state
//!   model.safetensors  config.json     the consolidated weights, transformers-named (see below)
//!   manifest.json                      sha256 of every file, written last
//! ```
//!
//! Every rank writes its own shard file (under NO_SHARD each rank writes 1/N of the replicated
//! state, so the work is spread the same way); rank 0 writes the rest, waits until every rank's
//! part is on disk and verified, consolidates `model.safetensors` from the shard files one
//! tensor at a time, and publishes the folder. `model.safetensors` is in every checkpoint when
//! `fsdp_config.state_dict_type` is `full` (the default), and always in the run's last one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};
use tessera_model::MptConfig;
use tessera_model::lora::peft;

use crate::checkpoint::sharded::{
    MASTER, SHARDS_FILE, ShardReader, ShardsMeta, shard_file, tensor_name, write_consolidated,
    write_consolidated_as, write_shard_file,
};
use crate::checkpoint::{CheckpointError, CheckpointStore, STATE_FILE};
use crate::optim::{AdamState, LionState, Optim, OptimState};
use crate::parallel::Sharded;
use crate::parallel::layout::FlatLayout;
use crate::parallel::shard::ShardState;

use super::TrainError;
use super::state::TrainState;

/// The consolidated, transformers-loadable weights inside a checkpoint.
pub const MODEL_FILE: &str = "model.safetensors";
/// The model's transformers `config.json` inside a checkpoint.
pub const CONFIG_FILE: &str = "config.json";

/// One rank's part of a checkpoint, copied to the host. Taking it is the only part of a save
/// that waits for the device; writing runs on the checkpoint thread. It holds this rank's shard
/// of the state once (the file is streamed from it, not copied again).
pub struct RankSnapshot {
    step: u64,
    rank: usize,
    /// Which of the `world` shard files this rank writes ([`Sharded::checkpoint_part`]).
    part: usize,
    world: usize,
    vectors: Vec<(String, Vec<u8>)>,
    lead: Option<LeadFiles>,
}

/// What rank 0 writes besides its shard.
struct LeadFiles {
    meta: ShardsMeta,
    state: Vec<u8>,
    config_json: Vec<u8>,
    consolidate: bool,
    /// A LoRA run's `adapter_config.json`: its checkpoints consolidate the adapter (always, as
    /// it is small) into PEFT's folder layout instead of a model.
    adapter_config: Option<Vec<u8>>,
}

impl RankSnapshot {
    /// Copies this rank's shard (and, on rank 0, the metadata) to the host.
    pub fn take<B: AutodiffBackend>(
        sharded: &Sharded<B>,
        model_config: &MptConfig,
        state: &TrainState,
        consolidate: bool,
        adapter_config: Option<&serde_json::Value>,
    ) -> Result<Self, TrainError> {
        let rank = sharded.comm.rank();
        let world = sharded.comm.world_size();
        // The files always split the state `world` ways: a replicated state (or, under
        // HYBRID_SHARD, a node's shard) is written 1/N by each rank that holds it.
        let layout = sharded.layout.reshard(world);
        let own = sharded.shard_rank();
        let part = sharded.checkpoint_part();
        let mut vectors = Vec::new();
        let mut steps = Vec::new();
        let mut moments: Vec<String> = Vec::new();
        for u in 0..layout.units.len() {
            // The slice of what this rank holds that is its part of the files.
            let held = sharded.layout.shard(u, own);
            let want = layout.shard(u, part);
            let local = want.start - held.start..want.end - held.start;
            let bytes = |t: &Tensor<B::InnerBackend, 1>| -> Result<Vec<u8>, TrainError> {
                // Host sync: this rank's shard of one vector.
                let data = t.clone().slice([local.clone()]).into_data();
                let values = data.convert::<f32>().into_vec::<f32>().map_err(|e| {
                    TrainError::DeviceRead {
                        what: format!("unit {u} of the training state"),
                        detail: format!("{e:?}"),
                    }
                })?;
                Ok(values.iter().flat_map(|v| v.to_le_bytes()).collect())
            };
            vectors.push((tensor_name(u, MASTER), bytes(&sharded.state.master[u])?));
            let (step, named) = match &sharded.state.optim[u] {
                None => (0, Vec::new()),
                Some(OptimState::Adam(a)) => (
                    a.step,
                    vec![("exp_avg", &a.exp_avg), ("exp_avg_sq", &a.exp_avg_sq)],
                ),
                Some(OptimState::Lion(l)) => (0, vec![("exp_avg", &l.exp_avg)]),
            };
            for (name, t) in named {
                vectors.push((tensor_name(u, name), bytes(t)?));
                if u == 0 {
                    moments.push(name.to_string());
                }
            }
            steps.push(step);
        }
        let lead = (rank == 0)
            .then(|| -> Result<LeadFiles, TrainError> {
                Ok(LeadFiles {
                    meta: ShardsMeta::of(&layout, moments, steps),
                    state: serde_json::to_vec_pretty(state).map_err(|source| {
                        TrainError::Encode {
                            file: STATE_FILE,
                            source,
                        }
                    })?,
                    config_json: serde_json::to_vec_pretty(&model_config.to_hf_json()).map_err(
                        |source| TrainError::Encode {
                            file: CONFIG_FILE,
                            source,
                        },
                    )?,
                    consolidate,
                    adapter_config: adapter_config
                        .map(|c| {
                            serde_json::to_vec_pretty(c).map_err(|source| TrainError::Encode {
                                file: "adapter_config.json",
                                source,
                            })
                        })
                        .transpose()?,
                })
            })
            .transpose()?;
        Ok(RankSnapshot {
            step: state.step,
            rank,
            part,
            world,
            vectors,
            lead,
        })
    }

    /// Writes this rank's part of the save into the shared staging folder. Rank 0 then waits
    /// (up to `wait`) for every other rank's part, consolidates, and publishes; it returns the
    /// published folder.
    pub fn write(
        self,
        store: &CheckpointStore,
        attempt: &str,
        wait: Duration,
    ) -> Result<Option<PathBuf>, CheckpointError> {
        let staging = store.staging(self.step, attempt)?;
        let mut part = Vec::new();
        let views: Vec<(String, &[u8])> = self
            .vectors
            .iter()
            .map(|(n, b)| (n.clone(), b.as_slice()))
            .collect();
        let meta = BTreeMap::from([
            ("rank".to_string(), self.part.to_string()),
            ("world".to_string(), self.world.to_string()),
        ]);
        part.push(
            staging.write_file_with(&shard_file(self.part, self.world), |w| {
                write_shard_file(w, &views, meta)
            })?,
        );
        drop(views);
        let Some(lead) = self.lead else {
            staging.finish_part(self.rank, part)?;
            return Ok(None);
        };
        let meta_json =
            serde_json::to_vec_pretty(&lead.meta).map_err(|source| CheckpointError::Json {
                path: staging.dir().join(SHARDS_FILE),
                source,
            })?;
        part.push(staging.write_file(SHARDS_FILE, &meta_json)?);
        part.push(staging.write_file(STATE_FILE, &lead.state)?);
        part.push(staging.write_file(CONFIG_FILE, &lead.config_json)?);
        // A LoRA run always consolidates (the adapter is small): into PEFT's folder layout
        // (`peft` and `tessera serve --adapter` read it as it is, the base's config.json beside
        // it); any other run into `model.safetensors`, when asked to.
        if lead.adapter_config.is_some() || lead.consolidate {
            // Every shard file must be complete before it is read.
            staging.wait_for_others(self.world, 0, wait)?;
            let reader = ShardReader::open(staging.dir())?;
            match &lead.adapter_config {
                Some(adapter_config) => {
                    part.push(staging.write_file_with(peft::WEIGHTS_FILE, |w| {
                        write_consolidated_as(&reader, w, peft::WEIGHTS_FILE, &peft::peft_name_of)
                            .map_err(std::io::Error::other)
                    })?);
                    part.push(staging.write_file(peft::CONFIG_FILE, adapter_config)?);
                }
                None => part.push(staging.write_file_with(MODEL_FILE, |w| {
                    write_consolidated(&reader, w).map_err(std::io::Error::other)
                })?),
            }
        }
        staging.finish_part(0, part)?;
        store.commit(&staging, self.world, wait).map(Some)
    }
}

/// A checkpoint read back for this rank.
pub struct Restored<B: AutodiffBackend> {
    /// This rank's master weights and optimizer state.
    pub state: ShardState<B::InnerBackend>,
    /// The training state saved with it (`state.json`).
    pub train: TrainState,
}

/// Reads this rank's shard of the checkpoint in `dir` (already verified) for `layout` (which
/// may split the state another number of ways than the checkpoint did).
pub fn restore<B: AutodiffBackend>(
    dir: &Path,
    layout: &FlatLayout,
    rank: usize,
    optim: Optim,
    device: &B::Device,
) -> Result<Restored<B>, TrainError> {
    let state_path = dir.join(STATE_FILE);
    let bytes = std::fs::read(&state_path).map_err(|source| TrainError::Io {
        path: state_path.clone(),
        source,
    })?;
    let train: TrainState =
        serde_json::from_slice(&bytes).map_err(|source| TrainError::StateFile {
            path: state_path.clone(),
            source,
        })?;
    if train.version != TrainState::VERSION {
        return Err(TrainError::StateVersion {
            path: state_path,
            found: train.version,
        });
    }
    let reader = ShardReader::open(dir)?;
    reader.meta.check_matches(layout, &dir.join(SHARDS_FILE))?;
    let want: &[&str] = match optim {
        Optim::DecoupledLionW(_) => &["exp_avg"],
        _ => &["exp_avg", "exp_avg_sq"],
    };
    let has_state = !reader.meta.moments.is_empty();
    if has_state && reader.meta.moments != want {
        return Err(TrainError::OptimizerMismatch {
            path: dir.join(SHARDS_FILE),
            saved: reader.meta.moments.clone(),
            optimizer: optim.name(),
            keeps: want.iter().map(|m| m.to_string()).collect(),
        });
    }
    let vector = |u: usize, kind: &str| -> Result<Tensor<B::InnerBackend, 1>, TrainError> {
        let range = layout.shard(u, rank);
        let n = range.len();
        let values = reader.read(u, kind, range)?;
        Ok(Tensor::from_data(TensorData::new(values, [n]), device))
    };
    let mut master = Vec::with_capacity(layout.units.len());
    let mut states = Vec::with_capacity(layout.units.len());
    for u in 0..layout.units.len() {
        master.push(vector(u, MASTER)?);
        states.push(match (has_state, optim) {
            (false, _) => None,
            (true, Optim::DecoupledLionW(_)) => Some(OptimState::Lion(LionState {
                exp_avg: vector(u, "exp_avg")?,
            })),
            (true, _) => Some(OptimState::Adam(AdamState {
                step: reader.meta.steps[u],
                exp_avg: vector(u, "exp_avg")?,
                exp_avg_sq: vector(u, "exp_avg_sq")?,
            })),
        });
    }
    Ok(Restored {
        state: ShardState {
            master,
            optim: states,
        },
        train,
    })
}
