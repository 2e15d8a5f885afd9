#![doc = include_str!("../README.md")]

pub mod icl;
pub mod gauntlet;
pub mod report;
pub mod run;
pub mod vibes;
pub mod code;
