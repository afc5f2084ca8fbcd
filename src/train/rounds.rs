//! What the sample-then-learn algorithms (Expert Iteration, RCRL) share: the sampling settings of
//! a round, the test evaluation after each round and its log line, deduplication, and the
//! checkpoint after each round that `--resume` continues from.

use super::checkpoint::{Checkpoints, TrainerState};
use super::Metrics;
use crate::error::{Error, Result};
use crate::eval::run::{sample_episodes, SampleSpec};
use crate::eval::{evaluate, EvalOptions};
use crate::fsutil;
use crate::model::CausalLm;
use crate::prompt::Prompter;
use crate::sample::SamplingConfig;
use crate::task::{intermediate_results, Problem};
use crate::tokenizer::Tokenizer;

/// How each round samples the training questions (`[sampling]`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoundSampling {
    /// K: solutions sampled per question per round (the paper: 96).
    pub samples_per_question: usize,
    pub temperature: f64,
    pub top_p: f64,
    pub max_new_tokens: usize,
    pub batch_size: usize,
}

impl Default for RoundSampling {
    fn default() -> Self {
        RoundSampling { samples_per_question: 8, temperature: 0.8, top_p: 1.0, max_new_tokens: 160, batch_size: 128 }
    }
}

impl RoundSampling {
    /// The sampler settings of round `round` (its own seed).
    pub fn config(&self, seed: u64, round: usize) -> SamplingConfig {
        SamplingConfig {
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            samples_per_prompt: self.samples_per_question,
            batch_size: self.batch_size,
            seed: seed + round as u64,
            ..SamplingConfig::default()
        }
    }
}

/// Test-split evaluation after every round (`[eval]`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoundEval {
    /// Test problems, each decoded greedily (maj@1).
    pub problems: usize,
    /// Samples per problem at `temperature` (maj@k, pass@k).
    pub samples: usize,
    /// Of `problems`, the first N are sampled (0 = all).
    pub sampled_problems: usize,
    pub temperature: f64,
    pub ks: Vec<usize>,
    pub max_new_tokens: usize,
    pub batch_size: usize,
}

impl Default for RoundEval {
    fn default() -> Self {
        RoundEval {
            problems: 500,
            samples: 16,
            sampled_problems: 0,
            temperature: 0.7,
            ks: vec![1, 4, 16],
            max_new_tokens: 160,
            batch_size: 128,
        }
    }
}

/// Greedy maj@1 and, from `eval.samples` samples per problem, maj@k and pass@k on the test
/// problems, each with its 95% interval (`_lo`, `_hi`), plus distinct correct solutions.
pub fn evaluate_policy(
    policy: &CausalLm,
    tokenizer: &Tokenizer,
    prompter: &Prompter,
    test: &[Problem],
    eval: &RoundEval,
    seed: u64,
) -> Result<Metrics> {
    let spec = SampleSpec {
        samples: eval.samples,
        sampled_problems: eval.sampled_problems,
        temperature: eval.temperature,
        top_p: 1.0,
        max_new_tokens: eval.max_new_tokens,
        batch_size: eval.batch_size,
        seed,
    };
    let (greedy, samples) = sample_episodes(&crate::engine::Engine::Local, policy, tokenizer, prompter, test, &spec)?;
    let ks = if samples.is_empty() { vec![] } else { eval.ks.clone() };
    let opts = EvalOptions { ks, temperature: Some(eval.temperature), ..EvalOptions::default() };
    let (_, summary) = evaluate(&greedy, &samples, None, &opts)?;
    let mut line = Metrics::new();
    let mut put = |name: String, m: &crate::eval::Metric| {
        line.insert(name.clone(), m.value);
        line.insert(format!("{name}_lo"), m.lo);
        line.insert(format!("{name}_hi"), m.hi);
    };
    if let Some(m) = &summary.maj1 {
        put("eval/maj@1".into(), m);
    }
    // maj@1 is the greedy figure; the sampled "maj@1" (one sample's answer) is pass@1's twin.
    for (k, m) in summary.maj.iter().filter(|(k, _)| **k > 1) {
        put(format!("eval/maj@{k}"), m);
    }
    for (k, m) in &summary.pass {
        put(format!("eval/pass@{k}"), m);
    }
    line.insert("eval/distinct_correct".into(), summary.mean_distinct_correct);
    Ok(line)
}

/// Logs a round's line with its round number and the samples seen so far, and prints it.
pub fn log_round(
    checkpoints: &super::checkpoint::Checkpoints,
    mut line: Metrics,
    round: usize,
    samples_seen: usize,
) -> Result<()> {
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
pub fn fresh_round_dir(run_dir: &std::path::Path, round: usize) -> Result<std::path::PathBuf> {
    let dir = run_dir.join(format!("round-{round}"));
    if dir.exists() {
        crate::fsutil::remove_dir(&dir)?;
    }
    Ok(dir)
}

/// Two solutions are duplicates when their keys are equal: the whitespace-normalised text
/// (`"text"`), or the sequence of intermediate results (`"results"`).
pub fn dedup_key(mode: &str, text: &str) -> String {
    match mode {
        "results" => format!("{:?}", intermediate_results(text)),
        _ => text.split_whitespace().collect::<Vec<_>>().join(" "),
    }
}

/// Checks a dedup mode name.
pub fn check_dedup(mode: &str) -> Result<()> {
    if ["text", "results"].contains(&mode) {
        Ok(())
    } else {
        Err(Error::Invalid(format!("dedup `{mode}`: use text or results")))
    }
}
