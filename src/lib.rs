//! reasonrl: teach language models to reason with reinforcement learning, after Havrilla et al.
//! (2024), "Teaching Large Language Models to Reason with Reinforcement Learning".
//!
//! Data flows one way: `task` (problems, answer checking) -> `rollout` (prompts, `sample` with a
//! KV cache, scored `Episode`s) -> algorithms -> checkpoints (`model`, HF folders).

pub mod bench;
pub mod config;
pub mod dist;
pub mod engine;
pub mod error;
pub mod eval;
pub mod fsutil;
pub mod http;
pub mod launch;
pub mod model;
pub mod plot;
pub mod process;
pub mod progress;
pub mod prompt;
pub mod reward;
pub mod rng;
pub mod rollout;
pub mod run;
pub mod sample;
pub mod study;
pub mod task;
pub mod tokenizer;
pub mod track;
pub mod train;

pub use error::{Error, Result};

/// Parses `cpu`, `cuda` or `cuda:N`, checking that a requested GPU is there. Plain `cuda` is
/// this rank's GPU in a data-parallel run (`LOCAL_RANK`), else the first.
pub fn parse_device(s: &str) -> Result<tch::Device> {
    let device = match s {
        "cpu" => return Ok(tch::Device::Cpu),
        "cuda" => tch::Device::Cuda(dist::world().local_rank),
        _ => match s.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(n) => tch::Device::Cuda(n),
            None => return Err(Error::Invalid(format!("unknown device `{s}` (use cpu, cuda or cuda:N)"))),
        },
    };
    let available = tch::Cuda::device_count() as usize;
    match device {
        tch::Device::Cuda(n) if n >= available => Err(Error::Invalid(format!(
            "device `{s}` is not available ({available} CUDA devices; a GPU needs a build with `--features cuda`)"
        ))),
        _ => Ok(device),
    }
}
