#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod checkpoint;
pub mod run_dir;
pub mod run_lock;

pub mod batch;
pub mod config;
pub mod finetune;
pub mod guard;
pub mod metrics;
pub mod optim;
pub mod parallel;
pub mod plan;
pub mod preflight;
pub mod schedule;
pub mod step;
pub mod trainer;
