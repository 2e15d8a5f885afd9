//! Module-level optimizer tests: the enum over a real `AutodiffModule`, and the config's
//! defaults and checks.

use burn::module::{Module, Param};
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use super::test_util::{AB, run_steps};
use super::*;

#[derive(Module, Debug)]
struct Toy<B: Backend> {
    w: Param<Tensor<B, 2>>,
    b: Param<Tensor<B, 1>>,
}

fn toy(device: &burn::backend::flex::FlexDevice) -> Toy<AB> {
    Toy {
        w: Param::from_tensor(
            Tensor::from_data(TensorData::from([[0.5f32, -1.0], [2.0, 0.25]]), device)
                .require_grad(),
        ),
        b: Param::from_tensor(
            Tensor::from_data(TensorData::from([0.1f32, -0.3]), device).require_grad(),
        ),
    }
}

/// loss = Σ (w ⊙ c_t) + Σ b² — gradients c_t and 2b, different at each step t.
fn step_grads(m: &Toy<AB>, t: usize) -> GradientsParams {
    let device = Default::default();
    let c = Tensor::<AB, 2>::from_data(TensorData::from([[1.0f32, -2.0], [0.5, 3.0]]), &device)
        .mul_scalar(1.0 + t as f64);
    let loss = (m.w.val() * c).sum() + m.b.val().powi_scalar(2).sum();
    GradientsParams::from_grads(loss.backward(), m)
}

fn flat(m: &Toy<AB>) -> Vec<f32> {
    let mut v = m.w.val().into_data().to_vec::<f32>().unwrap_or_default();
    v.extend(m.b.val().into_data().to_vec::<f32>().unwrap_or_default());
    v
}

fn configs() -> Vec<OptimizerConfig> {
    vec![
        OptimizerConfig {
            name: OptimizerName::DecoupledAdamw,
            lr: Some(1e-2),
            betas: None,
            eps: None,
            weight_decay: Some(1e-3),
        },
        OptimizerConfig {
            name: OptimizerName::DecoupledLionw,
            lr: Some(1e-2),
            betas: None,
            eps: None,
            weight_decay: Some(1e-3),
        },
        OptimizerConfig {
            name: OptimizerName::Adamw,
            lr: Some(1e-2),
            betas: Some([0.8, 0.9]),
            eps: None,
            weight_decay: None,
        },
    ]
}

#[test]
fn enum_over_a_module_matches_each_optimizer_on_its_own() {
    let device = Default::default();
    let lrs = [1e-2, 5e-3, 2e-3];
    for cfg in configs() {
        let mut m = toy(&device);
        let mut optim = cfg.init::<AB, Toy<AB>>();
        let mut gb = Vec::new();
        for (t, lr) in lrs.iter().enumerate() {
            let g = step_grads(&m, t);
            gb.push(
                g.get::<burn::backend::Flex, 1>(m.b.id)
                    .map(|x| x.into_data().to_vec::<f32>().unwrap_or_default())
                    .unwrap_or_default(),
            );
            m = optim.step(*lr, m, g);
        }
        // The bias alone, through the SimpleOptimizer directly, must land in the same place.
        let grads: Vec<Vec<f64>> = gb
            .iter()
            .map(|g| g.iter().map(|x| f64::from(*x)).collect())
            .collect();
        let alone = match cfg.build() {
            Optim::DecoupledAdamW(o) => run_steps(o, &[0.1, -0.3], &grads, &lrs),
            Optim::DecoupledLionW(o) => run_steps(o, &[0.1, -0.3], &grads, &lrs),
            Optim::AdamW(o) => run_steps(o, &[0.1, -0.3], &grads, &lrs),
        };
        let got = flat(&m);
        for (g, w) in got[4..].iter().zip(&alone) {
            assert!(
                (f64::from(*g) - w).abs() < 1e-6,
                "{:?}: {got:?} vs {alone:?}",
                cfg.name
            );
        }
    }
}

#[test]
fn defaults_follow_each_reference_implementation() {
    let c = |name| OptimizerConfig {
        name,
        lr: None,
        betas: None,
        eps: None,
        weight_decay: None,
    };
    assert_eq!(
        c(OptimizerName::DecoupledAdamw).build(),
        Optim::DecoupledAdamW(DecoupledAdamW {
            initial_lr: 1e-3,
            betas: (0.9, 0.95),
            eps: 1e-8,
            weight_decay: 1e-5
        })
    );
    assert_eq!(
        c(OptimizerName::DecoupledLionw).build(),
        Optim::DecoupledLionW(DecoupledLionW {
            initial_lr: 1e-4,
            betas: (0.9, 0.99),
            weight_decay: 0.0
        })
    );
    assert_eq!(
        c(OptimizerName::Adamw).build(),
        Optim::AdamW(AdamW {
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 1e-2
        })
    );
}

#[test]
fn validation_names_the_field() {
    let base = OptimizerConfig {
        name: OptimizerName::DecoupledLionw,
        lr: Some(1e-4),
        betas: None,
        eps: None,
        weight_decay: None,
    };
    assert!(base.validate().is_ok());
    for (cfg, key) in [
        (
            OptimizerConfig {
                lr: Some(0.0),
                ..base.clone()
            },
            "lr",
        ),
        (
            OptimizerConfig {
                betas: Some([0.9, 1.5]),
                ..base.clone()
            },
            "betas[1]",
        ),
        (
            OptimizerConfig {
                eps: Some(1e-8),
                ..base.clone()
            },
            "eps",
        ),
        (
            OptimizerConfig {
                weight_decay: Some(-1.0),
                ..base.clone()
            },
            "weight_decay",
        ),
    ] {
        assert_eq!(cfg.validate().unwrap_err().key(), key);
    }
}
