//! `tessera train CONFIG`: pretrain or fine-tune from an llm-foundry-style YAML. When the YAML
//! has `icl_tasks` (and optionally `eval_gauntlet`), they run at every `eval_interval` through
//! tessera-eval, as llm-foundry's ICL evaluators do.

use std::path::{Path, PathBuf};

use anyhow::Context;
use burn::tensor::backend::{AutodiffBackend, Backend};
use serde_json::Value;
use tessera::data::tokenizer::Tokenizer;
use tessera::device::{DeviceSpec, Job};
use tessera::eval::gauntlet::GauntletConfig;
use tessera::eval::icl::{self, TaskDefaults};
use tessera::eval::run::{EvalSuite, evaluate_and_write};
use tessera::model::Mpt;
use tessera::train::config::{self, TrainConfig};
use tessera::train::finetune::tokenizer_file;
use tessera::train::metrics::Accelerator;
use tessera::train::trainer::{StallHook, TrainOptions, train};

#[derive(clap::Args)]
pub struct Args {
    /// The training YAML (llm-foundry keys).
    config: PathBuf,
    /// Override any key: --set optimizer.lr=3e-4 --set variables.max_seq_len=256.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Run folder (default: runs/<run_name>).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// The accelerator, so that MFU is reported against its datasheet peak at the config's
    /// precision: h100 (= h100-sxm), h100-pcie, h200 or a100.
    #[arg(long)]
    gpu: Option<String>,
    /// Record the global sample ids of every step in DIR/rank{r}.jsonl (for tests of exactly-once
    /// data across resumes).
    #[arg(long, value_name = "DIR", hide = true)]
    sample_log: Option<PathBuf>,
}

pub fn run(args: Args, device: DeviceSpec) -> anyhow::Result<()> {
    let gpu =
        match &args.gpu {
            None => None,
            Some(name) => Some(Accelerator::from_name(name).with_context(|| {
                format!("--gpu {name:?}: expected one of {}", Accelerator::NAMES)
            })?),
        };
    let loaded = config::load_file(&args.config, &args.overrides)?;
    let peak_flops = gpu.map(|g| g.peak_flops(loaded.config.precision));
    // composer's launch environment (RANK, WORLD_SIZE, MASTER_ADDR…), or Slurm's under srun;
    // none of it is one process.
    let ranks = tessera::dist::RankEnv::from_process_env()?;
    // One process per GPU: rank r of a node trains on cuda:LOCAL_RANK, as composer does.
    let device = match device {
        DeviceSpec::Cuda(_) if ranks.world_size > 1 => DeviceSpec::Cuda(ranks.local_rank),
        d => d,
    };
    device.run(TrainJob {
        args,
        loaded,
        peak_flops,
        ranks,
    })
}

struct TrainJob {
    args: Args,
    loaded: config::LoadedConfig,
    peak_flops: Option<f64>,
    ranks: tessera::dist::RankEnv,
}

impl Job for TrainJob {
    type Output = anyhow::Result<()>;

    fn run<B: AutodiffBackend>(self, device: B::Device, spec: DeviceSpec) -> anyhow::Result<()> {
        let opts = TrainOptions {
            config_path: Some(self.args.config.clone()),
            run_dir: self.args.run_dir.clone(),
            device_label: super::device_label(spec),
            peak_flops: self.peak_flops,
            ranks: Some(self.ranks),
            sample_log: self.args.sample_log.clone(),
            device_memory: spec.memory_bytes(),
            on_stall: Some(exit_if_stuck()),
        };
        let icl = IclEvals::build(&self.loaded.config, &self.args.config)
            .context("preparing icl_tasks")?;
        let eval_device = device.clone();
        let mut hook = icl.map(|evals| {
            move |model: &Mpt<B::InnerBackend>, step: u64, eval_dir: &Path| {
                evals.run::<B::InnerBackend>(model, step, eval_dir, &eval_device)
            }
        });
        let hook_ref = hook
            .as_mut()
            .map(|h| h as &mut dyn FnMut(&Mpt<B::InnerBackend>, u64, &Path) -> Vec<(String, f64)>);
        let summary = train::<B>(&self.loaded, &opts, hook_ref, &device)
            .with_context(|| format!("training with {}", self.args.config.display()))?;
        println!(
            "trained {} steps ({} tokens); loss {} → {}; report: {}",
            summary.steps,
            summary.tokens,
            summary.first_loss.map_or("-".into(), |l| format!("{l:.4}")),
            summary.last_loss.map_or("-".into(), |l| format!("{l:.4}")),
            summary.report.display()
        );
        Ok(())
    }
}

/// After a stall the trainer returns an error at its next check; if its thread is stuck for
/// good (a hung device kernel) and has not returned within this grace period, the process ends
/// itself with the stall exit code so that a launcher restarts it.
const STALL_GRACE: std::time::Duration = std::time::Duration::from_secs(120);

fn exit_if_stuck() -> StallHook {
    StallHook(std::sync::Arc::new(|report| {
        std::thread::spawn(move || {
            std::thread::sleep(STALL_GRACE);
            eprintln!(
                "error: stalled (no step for {:.0} s) and the trainer did not stop within {} s; exiting with code {}",
                report.stalled_for.as_secs_f64(),
                STALL_GRACE.as_secs(),
                tessera::train::guard::WATCHDOG_EXIT_CODE
            );
            std::process::exit(tessera::train::guard::WATCHDOG_EXIT_CODE);
        });
    }))
}

/// ICL tasks (and the gauntlet) prepared once, run at every eval.
struct IclEvals {
    suite: EvalSuite,
    tokenizer: Tokenizer,
}

impl IclEvals {
    fn build(cfg: &TrainConfig, config_path: &Path) -> anyhow::Result<Option<Self>> {
        let Some(tasks) = &cfg.icl_tasks else {
            return Ok(None);
        };
        let tokenizer = Tokenizer::from_file(tokenizer_file(&cfg.tokenizer.name)?)?;
        let base = config_path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &str| -> PathBuf {
            let p = PathBuf::from(p);
            if p.is_absolute() || p.exists() {
                p
            } else {
                base.join(p)
            }
        };
        let tasks = match tasks {
            Value::String(path) => icl::load_task_file(&resolve(path))?,
            list => icl::parse_task_list(list, config_path)?,
        };
        let gauntlet = match &cfg.eval_gauntlet {
            None => None,
            Some(Value::String(path)) => Some(GauntletConfig::from_file(&resolve(path))?),
            Some(block) => Some(GauntletConfig::from_value(block, config_path)?),
        };
        let defaults = TaskDefaults {
            max_seq_len: cfg.icl_seq_len.unwrap_or(cfg.max_seq_len),
            batch_size: cfg.eval_batch_size(),
        };
        let dirs = vec![
            std::env::current_dir().unwrap_or_default(),
            base.to_path_buf(),
        ];
        let suite = EvalSuite::prepare(
            &tasks,
            gauntlet,
            &tokenizer,
            &defaults,
            &dirs,
            cfg.icl_subset_num_batches,
        )?;
        Ok(Some(Self { suite, tokenizer }))
    }

    /// Evaluates `model` and returns the metrics to log; an evaluation error is reported and
    /// logged as no metrics rather than ending the training run.
    fn run<B: Backend>(
        &self,
        model: &Mpt<B>,
        step: u64,
        eval_dir: &Path,
        device: &B::Device,
    ) -> Vec<(String, f64)> {
        let out = eval_dir.join(format!("ba{step}"));
        match evaluate_and_write(
            model,
            &self.tokenizer,
            &self.suite,
            "train",
            Some(step),
            &out,
            device,
        ) {
            Ok((report, _)) => {
                let mut m: Vec<(String, f64)> = report
                    .accuracies()
                    .into_iter()
                    .map(|(k, v)| (format!("icl/{k}"), v))
                    .collect();
                if let Some(g) = &report.gauntlet {
                    m.extend(g.metrics());
                }
                m
            }
            Err(e) => {
                eprintln!("warning: ICL evaluation at step {step} failed: {e}");
                Vec::new()
            }
        }
    }
}
