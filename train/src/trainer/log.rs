//! The run's own record: `metrics.jsonl`, `incidents.jsonl`, TensorBoard events, `loss.png` and
//! the console (a progress bar, or one line per logged step).

use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

use crate::metrics::{
    EvalRecord, EventWriter, Incident, IncidentKind, JsonlWriter, MetricsRecord, Throughput,
    TrainRecord, plot_loss, read_jsonl,
};
use crate::run_dir::RunDir;

use super::TrainError;

/// Writers for one run, opened once. Only rank 0 writes; on the other ranks every call does
/// nothing (they take the same decisions from the same reduced numbers).
pub struct RunLog {
    files: Option<Files>,
    bar: Option<ProgressBar>,
    console_every: u64,
    throughput: Throughput,
    train_curve: Vec<(u64, f64)>,
    eval_curve: Vec<(u64, f64)>,
    started: Instant,
    /// FLOPs per token of a training step and the peak FLOP/s of all devices, for MFU.
    flops_per_token: f64,
    peak_flops: Option<f64>,
    title: String,
}

/// The files rank 0 writes.
struct Files {
    dir: RunDir,
    metrics: JsonlWriter,
    incidents: JsonlWriter,
    tensorboard: EventWriter,
}

impl RunLog {
    /// Opens the writers; `resumed_at` (a resume) drops metrics lines after that step so the
    /// file reads as one uninterrupted run.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        dir: &RunDir,
        lead: bool,
        resumed_at: Option<u64>,
        max_steps: u64,
        console_every: u64,
        progress_bar: bool,
        flops_per_token: f64,
        peak_flops: Option<f64>,
        title: String,
    ) -> Result<Self, TrainError> {
        if !lead {
            return Ok(Self::silent());
        }
        dir.create().map_err(|source| TrainError::Io {
            path: dir.root().to_path_buf(),
            source,
        })?;
        let metrics = match resumed_at {
            Some(step) => JsonlWriter::open_resumed(dir.metrics(), step)?,
            None => {
                // A fresh run starts a fresh file.
                let _ = std::fs::remove_file(dir.metrics());
                JsonlWriter::open(dir.metrics())?
            }
        };
        let (mut train_curve, mut eval_curve) = (Vec::new(), Vec::new());
        if resumed_at.is_some() {
            for r in read_jsonl::<MetricsRecord>(dir.metrics())? {
                match r {
                    MetricsRecord::Train(t) => train_curve.push((t.step, t.loss)),
                    MetricsRecord::Eval(e) => eval_curve.push((e.step, e.loss)),
                }
            }
        }
        let bar = progress_bar.then(|| {
            let bar = ProgressBar::new(max_steps);
            bar.set_style(
                ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  ETA {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_position(resumed_at.unwrap_or(0));
            bar
        });
        Ok(Self {
            files: Some(Files {
                dir: dir.clone(),
                metrics,
                incidents: JsonlWriter::open(dir.incidents())?,
                tensorboard: EventWriter::create(dir.tensorboard())?,
            }),
            bar,
            console_every: console_every.max(1),
            throughput: Throughput::new(20),
            train_curve,
            eval_curve,
            started: Instant::now(),
            flops_per_token,
            peak_flops,
            title,
        })
    }

    /// A log that records nothing: the other ranks', and a run without a run folder. It still
    /// keeps the loss curves.
    pub fn silent() -> Self {
        Self {
            files: None,
            bar: None,
            console_every: 1,
            throughput: Throughput::new(20),
            train_curve: Vec::new(),
            eval_curve: Vec::new(),
            started: Instant::now(),
            flops_per_token: 0.0,
            peak_flops: None,
            title: String::new(),
        }
    }

    /// Records a finished step.
    pub fn step(
        &mut self,
        step: u64,
        tokens: u64,
        loss: f64,
        lr: f64,
        grad_norm: f64,
        comm_s: f64,
    ) -> Result<(), TrainError> {
        let Some(files) = self.files.as_mut() else {
            return Ok(());
        };
        self.throughput.record(Instant::now(), tokens);
        let tokens_per_s = self.throughput.tokens_per_s();
        let mfu = self
            .peak_flops
            .zip(tokens_per_s)
            .map(|(p, tps)| tps * self.flops_per_token / p);
        let record = TrainRecord {
            step,
            tokens,
            loss,
            lr,
            grad_norm,
            tokens_per_s,
            mfu,
            comm_s: Some(comm_s),
            elapsed_s: self.started.elapsed().as_secs_f64(),
        };
        files
            .metrics
            .append(&MetricsRecord::Train(record.clone()))?;
        let mut scalars = vec![
            ("loss/train", loss),
            ("lr", lr),
            ("grad_norm", grad_norm),
            ("time/comm_s", comm_s),
        ];
        if let Some(tps) = tokens_per_s {
            scalars.push(("throughput/tokens_per_s", tps));
        }
        if let Some(m) = mfu {
            scalars.push(("throughput/mfu", m));
        }
        files.tensorboard.add_scalars(&scalars, step)?;
        if loss.is_finite() {
            self.train_curve.push((step, loss));
        }
        let rate = tokens_per_s.map_or("- tok/s".to_string(), |t| format!("{t:.0} tok/s"));
        let msg = format!("loss {loss:.4}  lr {lr:.2e}  {rate}");
        match &self.bar {
            Some(bar) => {
                bar.set_position(step);
                bar.set_message(msg);
            }
            None if step.is_multiple_of(self.console_every) => {
                println!("[step {step}] {msg}  grad_norm {grad_norm:.3}")
            }
            None => {}
        }
        Ok(())
    }

    /// Records an evaluation and redraws `loss.png`.
    pub fn eval(
        &mut self,
        step: u64,
        tokens: u64,
        label: &str,
        loss: f64,
    ) -> Result<(), TrainError> {
        let Some(files) = self.files.as_mut() else {
            return Ok(());
        };
        let perplexity = loss.exp();
        files.metrics.append(&MetricsRecord::Eval(EvalRecord {
            step,
            tokens,
            label: label.to_string(),
            loss,
            perplexity,
        }))?;
        files.tensorboard.add_scalars(
            &[
                (&format!("loss/eval/{label}"), loss),
                (&format!("perplexity/eval/{label}"), perplexity),
            ],
            step,
        )?;
        self.eval_curve.push((step, loss));
        self.say(&format!(
            "[eval {label} @ step {step}] loss {loss:.4}  perplexity {perplexity:.2}"
        ));
        self.plot()
    }

    /// Extra metrics from an eval hook (ICL accuracies…).
    pub fn scalars(&mut self, step: u64, values: &[(String, f64)]) -> Result<(), TrainError> {
        let Some(files) = self.files.as_mut() else {
            return Ok(());
        };
        let v: Vec<(&str, f64)> = values.iter().map(|(k, x)| (k.as_str(), *x)).collect();
        files.tensorboard.add_scalars(&v, step)?;
        for (k, x) in values {
            self.say(&format!("[eval @ step {step}] {k} = {x:.4}"));
        }
        Ok(())
    }

    /// Appends an incident and prints it.
    pub fn incident(&mut self, incident: Incident) -> Result<(), TrainError> {
        let Some(files) = self.files.as_mut() else {
            return Ok(());
        };
        let line = format!(
            "[incident @ step {}] {:?}: {}",
            incident.step, incident.kind, incident.detail
        );
        files.incidents.append(&incident)?;
        self.say(&line);
        Ok(())
    }

    /// Shorthand for an incident without lost work.
    pub fn note(
        &mut self,
        step: u64,
        kind: IncidentKind,
        detail: impl Into<String>,
    ) -> Result<(), TrainError> {
        self.incident(Incident::now(step, kind, detail))
    }

    /// Prints a line without breaking the progress bar (rank 0 only).
    pub fn say(&self, line: &str) {
        if self.files.is_none() {
            return;
        }
        match &self.bar {
            Some(bar) => bar.println(line),
            None => println!("{line}"),
        }
    }

    /// Redraws `loss.png` from the curves so far.
    pub fn plot(&self) -> Result<(), TrainError> {
        let Some(files) = &self.files else {
            return Ok(());
        };
        plot_loss(
            &files.dir.loss_plot(),
            &self.title,
            &self.train_curve,
            &self.eval_curve,
        )?;
        Ok(())
    }

    /// Resets the throughput window (after a pause such as an eval or a rollback).
    pub fn pause_throughput(&mut self) {
        self.throughput.reset();
    }

    /// The train loss curve so far.
    pub fn train_curve(&self) -> &[(u64, f64)] {
        &self.train_curve
    }

    /// Ends the progress bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
