//! The `Trainer` builder from outside the crate: it runs the step `tessera train` runs (the same
//! bits as calling `train_step` by hand), its callbacks see every step, evaluation and
//! checkpoint and can stop the run, and its checkpoints load back (a transformers folder, or a
//! PEFT folder when an adapter trains).

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use tessera_dist::Communicator;
use tessera_model::lora::{self, Adapter, LoraConfig, TargetModule};
use tessera_model::{Mpt, MptConfig, hf};
use tessera_train::batch::Example;
use tessera_train::optim::{OptimizerConfig, OptimizerName};
use tessera_train::parallel::{Sharded, Strategy};
use tessera_train::step::{StepSettings, mix, train_step};
use tessera_train::trainer::{Control, Trainer, microbatches};

type B = Autodiff<Flex>;

fn config() -> MptConfig {
    MptConfig::from_json_str(
        r#"{"d_model": 32, "n_heads": 2, "n_layers": 2, "vocab_size": 64, "max_seq_len": 16,
            "attn_config": {"alibi": true}}"#,
        "test",
    )
    .unwrap()
}

fn batch(t: u64) -> Vec<Example> {
    (0..4u32)
        .map(|r| {
            Example::packed(
                (0..12u32)
                    .map(|i| (i * 5 + r * 11 + t as u32 * 3) % 64)
                    .collect(),
                None,
            )
        })
        .collect()
}

fn flat(model: &Mpt<B>) -> Vec<(String, Vec<f32>)> {
    hf::named_parameters(&model.valid())
        .into_iter()
        .map(|(k, v)| (k, v.to_vec::<f32>().unwrap()))
        .collect()
}

#[test]
fn the_builder_runs_the_trainers_step_bit_for_bit() {
    let device = Default::default();
    let optim = OptimizerConfig::new(OptimizerName::DecoupledAdamw, 3e-3);
    let mut losses = Vec::new();
    let summary = Trainer::<B>::from_config(&config(), 9, &device)
        .optimizer(optim.clone())
        .max_steps(5)
        .microbatch_size(2)
        .clip_norm(Some(0.5))
        .on_step(|s| {
            losses.push(s.outcome.loss);
            Control::Continue
        })
        .fit((1..).map(|t| Ok(batch(t))), &device)
        .unwrap();
    assert_eq!(summary.steps, 5);
    assert!(!summary.stopped_by_callback);

    // The same steps by hand, through the function `tessera train`'s loop calls.
    let mut s = Sharded::new(
        config().init::<B>(&device, 9),
        optim.build(),
        Strategy::SINGLE,
        Communicator::single(),
        &device,
    )
    .unwrap();
    let mut want = Vec::new();
    for t in 1..=5u64 {
        let settings = StepSettings {
            lr: 3e-3,
            clip_norm: Some(0.5),
            dropout_seed: mix(17, t),
        };
        want.push(
            train_step(&mut s, &microbatches(batch(t), 2), settings, &device)
                .unwrap()
                .loss,
        );
    }
    assert_eq!(losses, want);
    assert_eq!(flat(&summary.model), flat(&s.full_model().unwrap()));
}

#[test]
fn callbacks_stop_the_run_and_checkpoints_load_back() {
    let tmp = tempfile::tempdir().unwrap();
    let device = Default::default();
    let mut evals = Vec::new();
    let mut saved = Vec::new();
    let summary = Trainer::<B>::from_config(&config(), 9, &device)
        .max_steps(100)
        .eval_every(2, batch(99))
        .checkpoint_every(3, tmp.path())
        .on_eval(|e| {
            evals.push((e.step, e.loss));
            Control::Continue
        })
        .on_checkpoint(|c| {
            saved.push(c.path.clone());
            Control::Continue
        })
        .on_step(|s| {
            if s.step == 4 {
                Control::Stop
            } else {
                Control::Continue
            }
        })
        .fit((1..).map(|t| Ok(batch(t))), &device)
        .unwrap();
    assert_eq!(summary.steps, 4);
    assert!(summary.stopped_by_callback);
    // Evaluations at 2 and at the stop; checkpoints at 3 and at the stop.
    assert_eq!(evals.iter().map(|e| e.0).collect::<Vec<_>>(), [2, 4]);
    assert!(evals[1].1 < evals[0].1, "{evals:?}");
    assert_eq!(saved, [tmp.path().join("ba3"), tmp.path().join("ba4")]);
    let (_, loaded) = hf::load::<B>(tmp.path().join("ba4"), &device).unwrap();
    assert_eq!(flat(&loaded), flat(&summary.model));

    // An iterator that ends stops the run; an error from it is the run's error.
    let short = Trainer::<B>::from_config(&config(), 9, &device)
        .max_steps(10)
        .fit((1..=2).map(|t| Ok(batch(t))), &device)
        .unwrap();
    assert_eq!(short.steps, 2);
    let failing = Trainer::<B>::from_config(&config(), 9, &device)
        .fit([Ok(batch(1)), Ok(Vec::new())], &device)
        .err()
        .expect("an empty batch is an error");
    assert!(
        failing.to_string().contains("batch 2 is empty"),
        "{failing}"
    );
}

#[test]
fn an_adapter_trains_alone_and_is_saved_as_a_peft_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let device = Default::default();
    let cfg = config();
    let lora_cfg = LoraConfig {
        r: 2,
        target_modules: vec![TargetModule::Wqkv, TargetModule::DownProj],
        ..LoraConfig::default()
    };
    let base = cfg.init::<B>(&device, 9);
    let before = flat(&base);
    let model = base
        .with_adapter(Adapter::init(&lora_cfg, &cfg, 1, &device).unwrap())
        .unwrap();
    let summary = Trainer::new(model)
        .optimizer(OptimizerConfig::new(OptimizerName::DecoupledAdamw, 1e-2))
        .max_steps(3)
        .checkpoint_every(3, tmp.path())
        .fit((1..).map(|t| Ok(batch(t))), &device)
        .unwrap();
    let (trained_base, adapter) = summary.model.valid().without_adapter();
    let adapter = adapter.unwrap();
    // The base did not move.
    let base_after: Vec<(String, Vec<f32>)> = hf::named_parameters(&trained_base)
        .into_iter()
        .map(|(k, v)| (k, v.to_vec::<f32>().unwrap()))
        .collect();
    assert_eq!(base_after, before);
    // The adapter did, and its folder reads back as the same adapter.
    let saved = lora::peft::load::<Flex>(tmp.path().join("ba3"), &cfg, &device).unwrap();
    assert_eq!(
        lora::peft::adapter_tensors(&saved),
        lora::peft::adapter_tensors(&adapter)
    );
    let b = lora::peft::adapter_tensors(&adapter);
    assert!(
        b.iter()
            .filter(|(k, _)| k.contains("lora_B"))
            .any(|(_, v)| v.iter::<f32>().any(|x| x != 0.0)),
        "B starts at zero and must have trained"
    );
}
