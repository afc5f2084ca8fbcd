//! What the sample-then-learn algorithms (Expert Iteration, RCRL) share: where a round's
//! fine-tuning starts, the log line after each round, deduplication, and the checkpoint after
//! each round that `--resume` continues from.

use super::checkpoint::{Checkpoints, TrainerState};
use crate::error::{Error, Result};
use crate::fsutil;
use crate::model::CausalLm;
use crate::run::Metrics;
use crate::task::intermediate_results;
use crate::tokenizer::Tokenizer;
use std::path::Path;

/// Logs a round's line with its round number and the samples seen so far, and prints it.
pub fn log_round(checkpoints: &Checkpoints, mut line: Metrics, round: usize, samples_seen: usize) -> Result<()> {
    line.extend([
        ("round".into(), round as f64),
        ("step".into(), round as f64),
        ("samples_seen".into(), samples_seen as f64),
    ]);
    report(&line);
    checkpoints.log(&line)
}

/// Prints a log line (without the interval bounds).
pub fn report(line: &Metrics) {
    let shown: Vec<String> = line
        .iter()
        .filter(|(k, _)| !k.ends_with("_lo") && !k.ends_with("_hi"))
        .map(|(k, v)| format!("{k} {v:.4}"))
        .collect();
    eprintln!("{}", shown.join(", "));
}

/// What a round checkpoint holds besides the policy: the pool the next rounds build on.
const POOL_FILE: &str = "pool.json";

/// After round `round`: `checkpoints/step-ROUND` holds the policy, `pool.json` and the samples
/// seen. That is all the next round needs: its sampling seed is a function of the round, and its
/// fine-tuning starts a fresh optimiser.
pub fn save_round<T: serde::Serialize>(
    checkpoints: &Checkpoints,
    policy: &CausalLm,
    tokenizer: &Tokenizer,
    round: usize,
    samples_seen: usize,
    pool: &T,
) -> Result<()> {
    let state = TrainerState { step: round, samples_seen: samples_seen as u64, ..TrainerState::default() };
    checkpoints.save_with(policy, tokenizer, &state, |dir| {
        fsutil::write_atomic(&dir.join(POOL_FILE), |w| serde_json::to_writer(w, pool).map_err(std::io::Error::other))
    })
}

/// Loads the newest valid round checkpoint into `policy`; returns the round, the samples seen
/// and the pool. The metrics log is cut back to that round.
pub fn resume_round<T: serde::de::DeserializeOwned>(
    checkpoints: &Checkpoints,
    policy: &mut CausalLm,
) -> Result<(usize, usize, T)> {
    let (dir, state) = checkpoints.load_latest(policy, None)?;
    let path = dir.join(POOL_FILE);
    let pool = serde_json::from_str(&fsutil::read_to_string(&path)?).map_err(|e| Error::file(&path, e.to_string()))?;
    eprintln!("resumed from {} (round {})", dir.display(), state.step);
    Ok((state.step, state.samples_seen as usize, pool))
}

/// `RUN/round-N`, where round N fine-tunes, emptied of what an interrupted earlier attempt at
/// the round left there.
pub fn fresh_round_dir(run_dir: &Path, round: usize) -> Result<std::path::PathBuf> {
    let dir = run_dir.join(format!("round-{round}"));
    if dir.exists() {
        crate::fsutil::remove_dir(&dir)?;
    }
    Ok(dir)
}

/// When two solutions of a question are duplicates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dedup {
    /// The same text, up to whitespace.
    #[default]
    Text,
    /// The same sequence of intermediate results.
    Results,
    /// Never: every solution is kept.
    Off,
}

impl Dedup {
    /// The key that duplicates share (None: `Off`, nothing is a duplicate).
    pub fn key(self, text: &str) -> Option<String> {
        match self {
            Dedup::Text => Some(text.split_whitespace().collect::<Vec<_>>().join(" ")),
            Dedup::Results => Some(format!("{:?}", intermediate_results(text))),
            Dedup::Off => None,
        }
    }
}

/// Where a round's fine-tuning starts: the base model again (`reset`: with LoRA, fresh
/// adapters drawn from `seed`, so a resumed run draws the same) or the policy as it is.
pub fn start_round(policy: &mut CausalLm, base: &Path, reset: bool, seed: u64) -> Result<()> {
    match (reset, &policy.lora) {
        (false, _) => Ok(()),
        (true, Some(_)) => {
            tch::manual_seed(seed as i64);
            policy.reset_adapters()
        }
        (true, None) => policy.load_weights(base),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_restarts_from_the_base_or_continues() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::model::ModelConfig::llama(40, 16, 32, 1, 2, 1, 32, true);
        let base = CausalLm::new(&config, tch::Device::Cpu, false).unwrap();
        base.save(dir.path()).unwrap();
        let embed = |m: &CausalLm| m.vs.variables()["model.embed_tokens.weight"].copy();
        let mut policy = CausalLm::load(dir.path(), tch::Device::Cpu, false).unwrap();
        tch::no_grad(|| {
            let mut embed = policy.vs.variables().remove("model.embed_tokens.weight").unwrap();
            let _ = embed.g_add_scalar_(1.0);
        });
        let trained = embed(&policy);
        start_round(&mut policy, dir.path(), false, 0).unwrap();
        assert!(embed(&policy).equal(&trained), "continuing keeps the trained weights");
        start_round(&mut policy, dir.path(), true, 0).unwrap();
        assert!(embed(&policy).equal(&embed(&base)), "reset brings back the base weights");
    }
}
