//! tessera-eval: llm-foundry's ICL tasks and gauntlet, and HumanEval behind a sandbox.

pub mod icl;
pub mod gauntlet;
pub mod report;
pub mod run;
pub mod vibes;
pub mod code;
