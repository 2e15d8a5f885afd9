#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod code;
pub mod gauntlet;
pub mod icl;
pub mod report;
pub mod run;
pub mod vibes;
