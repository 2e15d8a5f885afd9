//! Saving and restoring optimizer state across processes.
//!
//! burn keys optimizer state by `ParamId`, and a fresh process (or a model loaded from
//! safetensors) has fresh random ids. A checkpoint therefore stores the record *and* the
//! parameter names it was keyed by ([`param_names`]: `blocks.0.attn.wqkv.weight` → id); on
//! resume, [`rekey_record`] moves each state to the id the same name has now.

use std::collections::HashMap;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::SimpleOptimizer;
use burn::optim::record::{AdaptorRecord, AdaptorRecordV1};
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};

use super::{Optim, OptimError, OptimRecord, OptimState};

/// Checks that a loaded record holds state for `optim`'s kind, so a checkpoint written with Lion
/// is refused with a clear error when the config now says AdamW (burn would panic mid-step).
pub fn check_record<B: AutodiffBackend>(
    optim: &Optim,
    record: &OptimRecord<Optim, B>,
) -> Result<(), OptimError> {
    let wants_lion = matches!(optim, Optim::DecoupledLionW(_));
    for r in record.values() {
        let AdaptorRecord::V1(v1) = r;
        let is_lion = match v1 {
            AdaptorRecordV1::Rank0(s) => matches!(s, OptimState::Lion(_)),
            AdaptorRecordV1::Rank1(s) => matches!(s, OptimState::Lion(_)),
            AdaptorRecordV1::Rank2(s) => matches!(s, OptimState::Lion(_)),
            AdaptorRecordV1::Rank3(s) => matches!(s, OptimState::Lion(_)),
            AdaptorRecordV1::Rank4(s) => matches!(s, OptimState::Lion(_)),
            AdaptorRecordV1::Rank5(s) => matches!(s, OptimState::Lion(_)),
            AdaptorRecordV1::Rank6(s) => matches!(s, OptimState::Lion(_)),
            AdaptorRecordV1::Rank7(s) => matches!(s, OptimState::Lion(_)),
            AdaptorRecordV1::Rank8(s) => matches!(s, OptimState::Lion(_)),
        };
        if is_lion != wants_lion {
            let found = if is_lion {
                "decoupled_lionw"
            } else {
                "an Adam-family optimizer"
            };
            return Err(OptimError::StateMismatch {
                found,
                expected: optim.name(),
            });
        }
    }
    Ok(())
}

/// Every float parameter's dotted path (module field names, `Vec` indices) and its id, in
/// visiting order.
pub fn param_names<B: Backend, M: Module<B>>(module: &M) -> Vec<(String, ParamId)> {
    struct Names {
        path: Vec<String>,
        out: Vec<(String, ParamId)>,
    }
    impl<B: Backend> ModuleVisitor<B> for Names {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.out.push((self.path.join("."), param.id));
        }
    }
    let mut v = Names {
        path: Vec::new(),
        out: Vec::new(),
    };
    module.visit(&mut v);
    v.out
}

/// Moves each state from the id a parameter had when saved (`saved_names`) to the id the same
/// name has now (`current_names`). A saved name missing now, or a duplicate name, is an error;
/// parameters that had no state (never stepped) simply stay without.
pub fn rekey_record<O: SimpleOptimizer<B::InnerBackend>, B: AutodiffBackend>(
    record: OptimRecord<O, B>,
    saved_names: &[(String, ParamId)],
    current_names: &[(String, ParamId)],
) -> Result<OptimRecord<O, B>, OptimError> {
    let mut now: HashMap<&str, ParamId> = HashMap::new();
    for (name, id) in current_names {
        if now.insert(name.as_str(), *id).is_some() {
            return Err(OptimError::Invalid {
                key: name.clone(),
                message: "two parameters share this name".into(),
            });
        }
    }
    let old: HashMap<ParamId, &str> = saved_names
        .iter()
        .map(|(n, id)| (*id, n.as_str()))
        .collect();
    let mut out = OptimRecord::<O, B>::default();
    for (id, state) in record {
        let name = old.get(&id).ok_or_else(|| OptimError::Invalid {
            key: format!("param {}", id.serialize()),
            message: "optimizer state for a parameter the saved name list does not mention".into(),
        })?;
        let new_id = now.get(name).ok_or_else(|| OptimError::Invalid {
            key: name.to_string(),
            message: "the checkpoint has optimizer state for this parameter, but the model has no such parameter".into(),
        })?;
        out.insert(*new_id, state);
    }
    Ok(out)
}
