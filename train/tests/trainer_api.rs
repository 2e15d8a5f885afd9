//! The `Trainer` builder from outside the crate: it runs the step `tessera train` runs (the same
//! bits as calling `unguarded_step` by hand), its callbacks see every step, evaluation and
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
use tessera_train::step::{StepSettings, dropout_seed, unguarded_step};
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
            dropout_seed: dropout_seed(9, t - 1),
        };
        want.push(
            unguarded_step(&mut s, &microbatches(batch(t), 2), settings, &device)
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

/// A packed token dataset of `samples` rows of 16 tokens below 64.
fn write_dataset(dir: &std::path::Path, samples: u32) {
    use tessera_data::mds::{MdsWriter, WriterOptions};
    let mut w = MdsWriter::create(
        dir,
        &[("tokens", "ndarray:int32")],
        WriterOptions::default(),
    )
    .unwrap();
    for s in 0..samples {
        let row: Vec<u32> = (0..16u32).map(|i| (s * 7 + i * 3) % 64).collect();
        w.write_tokens(&row).unwrap();
    }
    w.finish().unwrap();
}

fn yaml(data: &std::path::Path) -> String {
    format!(
        r#"
run_name: api
seed: 5
max_seq_len: 16
model:
  name: mpt_causal_lm
  d_model: 32
  n_heads: 2
  n_layers: 2
  max_seq_len: 16
  vocab_size: 64
tokenizer:
  name: unused-by-training
train_loader:
  name: text
  dataset:
    local: {data}
    shuffle: true
    max_seq_len: 16
optimizer:
  name: decoupled_adamw
  lr: 1.0e-3
scheduler:
  name: constant_with_warmup
  t_warmup: 0ba
max_duration: 6ba
eval_interval: 100ba
save_interval: 100ba
global_train_batch_size: 4
device_train_microbatch_size: 2
precision: fp32
autoresume: true
progress_bar: false
"#,
        data = data.display()
    )
}

/// `tessera train`'s run built as a `Trainer`: a step callback sees its steps and stops it
/// (the stop is checkpointed, and the report says who stopped it), the next launch resumes
/// from that checkpoint, and a setter that would override the YAML is refused by name.
#[test]
fn a_yaml_run_takes_callbacks_resumes_and_refuses_code_settings() {
    use tessera_train::trainer::TrainOptions;
    let tmp = tempfile::tempdir().unwrap();
    let device = Default::default();
    let data = tmp.path().join("data");
    write_dataset(&data, 40);
    let loaded = tessera_train::config::load_str(&yaml(&data), "api.yaml", &[]).unwrap();
    let opts = TrainOptions {
        run_dir: Some(tmp.path().join("run")),
        ..TrainOptions::default()
    };

    let mut seen = Vec::new();
    let first = Trainer::<B>::from_yaml(&loaded, &opts, &device)
        .unwrap()
        .on_step(|s| {
            seen.push(s.step);
            if s.step == 3 {
                Control::Stop
            } else {
                Control::Continue
            }
        })
        .run(&device)
        .unwrap();
    assert_eq!(seen, [1, 2, 3]);
    assert_eq!(first.steps, 3);
    let report = std::fs::read_to_string(&first.report).unwrap();
    assert!(
        report.contains("a callback asked to stop after step 3"),
        "{report}"
    );
    let checkpoint = first.final_checkpoint.expect("the stop is checkpointed");
    assert!(checkpoint.ends_with("ba3"), "{}", checkpoint.display());

    let mut resumed = Vec::new();
    let second = Trainer::<B>::from_yaml(&loaded, &opts, &device)
        .unwrap()
        .on_step(|s| {
            resumed.push(s.step);
            Control::Continue
        })
        .run(&device)
        .unwrap();
    assert_eq!(resumed, [4, 5, 6]);
    assert_eq!(second.steps, 6);

    let other = TrainOptions {
        run_dir: Some(tmp.path().join("other")),
        ..TrainOptions::default()
    };
    let err = Trainer::<B>::from_yaml(&loaded, &other, &device)
        .unwrap()
        .max_steps(2)
        .run(&device)
        .unwrap_err();
    assert!(err.to_string().starts_with("max_steps: "), "{err}");
    let err = Trainer::<B>::from_config(&config(), 1, &device)
        .run(&device)
        .unwrap_err();
    assert!(err.to_string().contains("call fit(batches)"), "{err}");
}
