//! Evaluation during training: the mean loss over every eval set, each rank taking its part
//! and the sums added over ranks, then the caller's own evaluation of the model (ICL tasks,
//! for instance) on rank 0.

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use tessera_model::Mpt;

use crate::batch::Example;
use crate::parallel::Sharded;
use crate::step::eval_loss;

use super::data::Loader;
use super::log::RunLog;
use super::{EvalInfo, TrainError, check_vocab};

/// One eval set.
pub(crate) struct EvalSet {
    /// Its name in the logs (`eval`, or the loader's `label`).
    pub label: String,
    pub source: EvalSource,
}

/// Where an eval set's sequences come from.
pub(crate) enum EvalSource {
    /// An `eval_loader`: this rank's partition, rewound before every evaluation.
    Loader(Box<Loader>),
    /// This rank's sequences, given by the caller, in batches of `batch`.
    Examples {
        examples: Vec<Example>,
        batch: usize,
    },
}

/// The caller's evaluation of the inference model after step `u64`: named scalars to log.
pub type ModelEval<'a, B> =
    Box<dyn FnMut(&Mpt<<B as AutodiffBackend>::InnerBackend>, u64) -> Vec<(String, f64)> + 'a>;

/// Evaluates every set after `step` (and runs `extra`), logging each mean loss; returns them
/// for the callbacks. Under FULL_SHARD every rank gathers the whole model for it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn evaluate<B: AutodiffBackend>(
    sharded: &mut Sharded<B>,
    evals: &mut [EvalSet],
    max_batches: Option<usize>,
    extra: Option<&mut ModelEval<'_, B>>,
    step: u64,
    tokens_so_far: u64,
    log: &mut RunLog,
    device: &B::Device,
) -> Result<Vec<EvalInfo>, TrainError> {
    let model = sharded.full_model().map_err(TrainError::Dist)?.valid();
    let vocab = model.config().vocab_size;
    let mut infos = Vec::new();
    for set in evals.iter_mut() {
        // [Σ CE, loss tokens] over this rank's part, then over every rank.
        let mut totals = [0.0f64, 0.0];
        let mut add = |examples: &[Example]| -> Result<(), TrainError> {
            check_vocab(examples, vocab, &set.label)?;
            let (sum, tokens) = eval_loss(&model, examples, device);
            totals[0] += sum;
            totals[1] += tokens as f64;
            Ok(())
        };
        let mut batches = 0usize;
        match &mut set.source {
            EvalSource::Loader(data) => {
                data.rewind()?;
                while data.remaining_in_epoch() > 0 && max_batches.is_none_or(|m| batches < m) {
                    add(&data.next_eval_batch()?)?;
                    batches += 1;
                }
            }
            EvalSource::Examples { examples, batch } => {
                for chunk in examples.chunks((*batch).max(1)) {
                    if max_batches.is_some_and(|m| batches >= m) {
                        break;
                    }
                    add(chunk)?;
                    batches += 1;
                }
            }
        }
        sharded
            .comm
            .all_reduce(&mut totals)
            .map_err(TrainError::Dist)?;
        if totals[1] > 0.0 {
            let loss = totals[0] / totals[1];
            log.eval(step, tokens_so_far, &set.label, loss)?;
            infos.push(EvalInfo {
                label: set.label.clone(),
                step,
                loss,
                loss_tokens: totals[1] as usize,
            });
        }
    }
    if let Some(extra) = extra {
        // Extra evaluations run on rank 0; the others wait for it.
        if sharded.comm.rank() == 0 {
            let scalars = extra(&model, step);
            log.scalars(step, &scalars)?;
        }
        sharded.comm.barrier().map_err(TrainError::Dist)?;
    }
    log.pause_throughput();
    Ok(infos)
}
