//! Optimizers as llm-foundry and composer define them, as burn optimizers.
//!
//! Each is a burn `SimpleOptimizer` ([`DecoupledAdamW`], [`DecoupledLionW`], [`AdamW`]): the
//! trainer steps them on the flat shards of its state ([`crate::parallel`]), and `init` wraps
//! them in burn's `OptimizerAdaptor` for a program that trains a module the usual burn way. The
//! trainer uses [`Optim`], one enum over the three chosen by the YAML's `optimizer.name`, so the
//! loop has a single optimizer type. Global-norm clipping is the trainer's (burn's own clipping
//! is per tensor); [`clip`] holds its config.

pub mod adamw;
pub mod clip;
pub mod decoupled_adamw;
pub mod decoupled_lionw;

use burn::module::AutodiffModule;
use burn::optim::SimpleOptimizer;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::record::Record;
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use serde::{Deserialize, Serialize};

pub use adamw::{AdamState, AdamW};
pub use decoupled_adamw::DecoupledAdamW;
pub use decoupled_lionw::{DecoupledLionW, LionState};

/// A bad optimizer setting or a checkpointed state that does not fit.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OptimError {
    /// A hyperparameter out of range, or one the chosen optimizer does not take.
    #[error("{key}: {message}")]
    Invalid {
        /// The key inside `optimizer:`.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A saved state made by a different optimizer.
    #[error("optimizer state was saved by {found}, but the config asks for {expected}")]
    StateMismatch {
        /// The kind found in the record.
        found: &'static str,
        /// The configured optimizer.
        expected: &'static str,
    },
}

impl OptimError {
    /// The key inside `optimizer:` (empty for state errors).
    pub fn key(&self) -> &str {
        match self {
            OptimError::Invalid { key, .. } => key,
            OptimError::StateMismatch { .. } => "",
        }
    }
    /// The message without the key.
    pub fn message(&self) -> String {
        match self {
            OptimError::Invalid { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }
}

/// `optimizer.name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerName {
    /// composer's DecoupledAdamW.
    DecoupledAdamw,
    /// llm-foundry's DecoupledLionW.
    DecoupledLionw,
    /// PyTorch's AdamW.
    Adamw,
}

impl OptimizerName {
    /// The YAML spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            OptimizerName::DecoupledAdamw => "decoupled_adamw",
            OptimizerName::DecoupledLionw => "decoupled_lionw",
            OptimizerName::Adamw => "adamw",
        }
    }
}

/// The `optimizer:` block. Unset fields take the named optimizer's own defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerConfig {
    /// Which optimizer.
    pub name: OptimizerName,
    /// Peak learning rate (the schedule multiplies it). Defaults: 1e-3 (AdamW variants), 1e-4 (Lion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// (β1, β2). Defaults: (0.9, 0.95) decoupled_adamw, (0.9, 0.99) lion, (0.9, 0.999) adamw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub betas: Option<[f64; 2]>,
    /// Adam's ε (1e-8); Lion has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eps: Option<f64>,
    /// Weight decay. Defaults: 1e-5 decoupled_adamw, 0 lion, 1e-2 adamw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f64>,
}

impl OptimizerConfig {
    /// Peak lr with the optimizer's default.
    pub fn lr(&self) -> f64 {
        self.lr.unwrap_or(match self.name {
            OptimizerName::DecoupledLionw => 1e-4,
            _ => 1e-3,
        })
    }

    /// The optimizer this block describes.
    pub fn build(&self) -> Optim {
        let lr = self.lr();
        let betas = |d: (f64, f64)| self.betas.map(|[a, b]| (a, b)).unwrap_or(d);
        match self.name {
            OptimizerName::DecoupledAdamw => Optim::DecoupledAdamW(DecoupledAdamW {
                initial_lr: lr,
                betas: betas((0.9, 0.95)),
                eps: self.eps.unwrap_or(1e-8),
                weight_decay: self.weight_decay.unwrap_or(1e-5),
            }),
            OptimizerName::DecoupledLionw => Optim::DecoupledLionW(DecoupledLionW {
                initial_lr: lr,
                betas: betas((0.9, 0.99)),
                weight_decay: self.weight_decay.unwrap_or(0.0),
            }),
            OptimizerName::Adamw => Optim::AdamW(AdamW {
                betas: betas((0.9, 0.999)),
                eps: self.eps.unwrap_or(1e-8),
                weight_decay: self.weight_decay.unwrap_or(1e-2),
            }),
        }
    }

    /// The optimizer for a whole module.
    pub fn init<B: AutodiffBackend, M: AutodiffModule<B>>(&self) -> TrainOptimizer<M, B> {
        OptimizerAdaptor::from(self.build())
    }

    /// Range checks (llm-foundry's Lion raises on lr ≤ 0 and betas outside [0, 1]).
    pub fn validate(&self) -> Result<(), OptimError> {
        let bad = |key: &str, message: String| {
            Err(OptimError::Invalid {
                key: key.into(),
                message,
            })
        };
        let lr = self.lr();
        if !(lr.is_finite() && lr > 0.0) {
            return bad("lr", format!("{lr} must be a positive number"));
        }
        if let Some(b) = self.betas {
            for (i, beta) in b.iter().enumerate() {
                if !(0.0..1.0).contains(beta) {
                    return bad(&format!("betas[{i}]"), format!("{beta} must be in [0, 1)"));
                }
            }
        }
        match (self.name, self.eps) {
            (OptimizerName::DecoupledLionw, Some(_)) => {
                return bad(
                    "eps",
                    "decoupled_lionw takes no eps (it uses only the sign of its update)".into(),
                );
            }
            (_, Some(e)) if !(e.is_finite() && e > 0.0) => {
                return bad("eps", format!("{e} must be positive"));
            }
            _ => {}
        }
        if let Some(wd) = self.weight_decay
            && !(wd.is_finite() && (0.0..1.0).contains(&wd))
        {
            return bad("weight_decay", format!("{wd} must be in [0, 1)"));
        }
        Ok(())
    }
}

/// The trainer's optimizer: whichever of the three the config names.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Optim {
    /// composer's DecoupledAdamW.
    DecoupledAdamW(DecoupledAdamW),
    /// llm-foundry's DecoupledLionW.
    DecoupledLionW(DecoupledLionW),
    /// PyTorch's AdamW.
    AdamW(AdamW),
}

impl Optim {
    /// The YAML name of the variant.
    pub fn name(&self) -> &'static str {
        match self {
            Optim::DecoupledAdamW(_) => OptimizerName::DecoupledAdamw.as_str(),
            Optim::DecoupledLionW(_) => OptimizerName::DecoupledLionw.as_str(),
            Optim::AdamW(_) => OptimizerName::Adamw.as_str(),
        }
    }
}

/// Per-parameter state of [`Optim`].
#[derive(Record, Clone)]
pub enum OptimState<B: Backend, const D: usize> {
    /// Both AdamW variants.
    Adam(AdamState<B, D>),
    /// Lion.
    Lion(LionState<B, D>),
}

impl<B: Backend, const D: usize> OptimState<B, D> {
    fn kind(&self) -> &'static str {
        match self {
            OptimState::Adam(_) => "an Adam-family optimizer (decoupled_adamw or adamw)",
            OptimState::Lion(_) => "decoupled_lionw",
        }
    }
}

/// [`Optim`] over a whole module.
pub type TrainOptimizer<M, B> = OptimizerAdaptor<Optim, M, B>;

impl<B: Backend> SimpleOptimizer<B> for Optim {
    type State<const D: usize> = OptimState<B, D>;

    /// # Panics
    /// If `state` was made by another kind of optimizer. Checkpoint loading checks the kind
    /// of the saved state first, so this only fires on a programming error.
    fn step<const D: usize>(
        &self,
        lr: f64,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        let mismatch = |s: &OptimState<B, D>| -> ! {
            panic!(
                "optimizer {} was given state from {} (restoring a checkpoint checks this)",
                self.name(),
                s.kind()
            )
        };
        match (self, state) {
            (Optim::DecoupledAdamW(o), None) => wrap(
                SimpleOptimizer::<B>::step(o, lr, tensor, grad, None),
                OptimState::Adam,
            ),
            (Optim::DecoupledAdamW(o), Some(OptimState::Adam(s))) => wrap(
                SimpleOptimizer::<B>::step(o, lr, tensor, grad, Some(s)),
                OptimState::Adam,
            ),
            (Optim::AdamW(o), None) => wrap(
                SimpleOptimizer::<B>::step(o, lr, tensor, grad, None),
                OptimState::Adam,
            ),
            (Optim::AdamW(o), Some(OptimState::Adam(s))) => wrap(
                SimpleOptimizer::<B>::step(o, lr, tensor, grad, Some(s)),
                OptimState::Adam,
            ),
            (Optim::DecoupledLionW(o), None) => wrap(
                SimpleOptimizer::<B>::step(o, lr, tensor, grad, None),
                OptimState::Lion,
            ),
            (Optim::DecoupledLionW(o), Some(OptimState::Lion(s))) => wrap(
                SimpleOptimizer::<B>::step(o, lr, tensor, grad, Some(s)),
                OptimState::Lion,
            ),
            (_, Some(s)) => mismatch(&s),
        }
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        match state {
            OptimState::Adam(s) => OptimState::Adam(s.to_device(device)),
            OptimState::Lion(s) => OptimState::Lion(LionState {
                exp_avg: s.exp_avg.to_device(device),
            }),
        }
    }
}

fn wrap<B: Backend, const D: usize, S>(
    (tensor, state): (Tensor<B, D>, Option<S>),
    f: impl FnOnce(S) -> OptimState<B, D>,
) -> (Tensor<B, D>, Option<OptimState<B, D>>) {
    (tensor, state.map(f))
}

#[cfg(test)]
pub(crate) mod test_util {
    //! Tiny helpers: run an optimizer on a 1-D tensor and read it back as f64.
    use burn::optim::SimpleOptimizer;
    use burn::tensor::{Tensor, TensorData};

    /// The plain backend the optimizer math runs on.
    pub type TB = burn::backend::Flex;
    /// The autodiff backend for module-level tests.
    pub type AB = burn::backend::Autodiff<TB>;

    /// `(param, grad)` tensors from slices.
    pub fn params<B: burn::tensor::backend::Backend>(
        p: &[f64],
        g: &[f64],
        device: &B::Device,
    ) -> (Tensor<B, 1>, Tensor<B, 1>) {
        let f = |v: &[f64]| {
            Tensor::<B, 1>::from_data(
                TensorData::new(v.iter().map(|x| *x as f32).collect::<Vec<_>>(), [v.len()]),
                device,
            )
        };
        (f(p), f(g))
    }

    /// Applies `grads[t]` with `lrs[t]` for each step and returns the parameters.
    pub fn run_steps<O: SimpleOptimizer<TB>>(
        o: O,
        p0: &[f64],
        grads: &[Vec<f64>],
        lrs: &[f64],
    ) -> Vec<f64> {
        run_steps_on::<TB, O>(o, p0, grads, lrs)
    }

    /// [`run_steps`] on backend `B` (plain Flex takes the optimizers' fused CPU update; any
    /// other backend their tensor-op formulation).
    pub fn run_steps_on<B: burn::tensor::backend::Backend, O: SimpleOptimizer<B>>(
        o: O,
        p0: &[f64],
        grads: &[Vec<f64>],
        lrs: &[f64],
    ) -> Vec<f64> {
        let device = Default::default();
        let (mut p, _) = params::<B>(p0, p0, &device);
        let mut state = None;
        for (g, lr) in grads.iter().zip(lrs) {
            let (_, gt) = params::<B>(g, g, &device);
            let (np, ns) = o.step(*lr, p, gt, state);
            p = np;
            state = ns;
        }
        p.into_data()
            .to_vec::<f32>()
            .unwrap_or_default()
            .into_iter()
            .map(f64::from)
            .collect()
    }
}

#[cfg(test)]
mod tests;
