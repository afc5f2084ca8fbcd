//! Rewards of sampled solutions, whole or per step (a step is a line of the response):
//! - **sparse**: 1 when the final answer is right, else 0;
//! - **heuristic dense**: per step, 1 when the step's intermediate result is one the reference
//!   solution also computes (the rule is in [`heuristic_step_rewards`]);
//! - **ORM-dense**: per step, the Outcome Reward Model's probability that the final answer will be
//!   right, given the prefix up to the end of the step, or its change from the step before;
//! - **a verifier's** (a process or an HTTP service the user brings; see [`verifier`]), with
//!   weighted terms added to the outcome (see [`Rewarder`]).
//!
//! [`Orm`] is also the scorer behind rerank@k.

mod rewarder;
pub mod verifier;

pub use rewarder::{RewardConfig, RewardKind, RewardTerm, Rewarder, Rewards};

use crate::error::{Error, Result};
use crate::model::{CausalLm, Llama};
use crate::rollout::Episode;
use crate::rollout::Scorer;
use crate::task::{answers_match, extract_answer, intermediate_results, step_results};
use crate::tokenizer::Tokenizer;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// The sparse reward: 1 for a right final answer, 0 otherwise.
pub fn sparse(episode: &Episode) -> f64 {
    episode.correct as u8 as f64
}

/// One step of a response: the response-token index of its last token, and its text.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub end: usize,
    pub text: String,
}

/// Splits response tokens into steps: a step ends with a token that holds a newline, or with the
/// last token. `newlines` is [`Tokenizer::newline_counts`]. Control tokens and EOS decode to
/// nothing and stay inside the step they follow.
pub fn split_steps(tokenizer: &Tokenizer, newlines: &[u8], tokens: &[u32]) -> Result<Vec<Step>> {
    let mut steps = Vec::new();
    let mut start = 0;
    for (i, &t) in tokens.iter().enumerate() {
        let ends_line = newlines.get(t as usize).is_some_and(|&n| n > 0);
        if ends_line || i + 1 == tokens.len() {
            steps.push(Step { end: i, text: tokenizer.decode(&tokens[start..=i], true)? });
            start = i + 1;
        }
    }
    Ok(steps)
}

/// The heuristic dense reward of each step (text lines of one solution), by this rule:
/// - a step with an intermediate result (its last calculator note's `=N`, or, in a solution
///   without notes, its equation's `= N`) earns 1 when that number equals one of the reference
///   solution's intermediate results that no earlier step has matched (each reference result
///   pays once, so repeating a right step earns nothing), else 0;
/// - the answer line (`#### N`) earns 1 when N is the reference answer, else 0;
/// - any other step earns 0.
pub fn heuristic_step_rewards(steps: &[&str], reference_solution: &str, reference_answer: &str) -> Vec<f64> {
    let mut unmatched = intermediate_results(reference_solution);
    let same = |a: f64, b: f64| (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1.0);
    steps
        .iter()
        .map(|step| {
            if step.contains("####") {
                return extract_answer(step).is_some_and(|a| answers_match(&a, reference_answer)) as u8 as f64;
            }
            let result = step_results(step).into_iter().flatten().last();
            match result.and_then(|r| unmatched.iter().position(|&x| same(x, r))) {
                Some(i) => {
                    unmatched.remove(i);
                    1.0
                }
                None => 0.0,
            }
        })
        .collect()
}

/// Whether a step is checkable by the heuristic: it has an intermediate result or is the answer
/// line. (Steps that are not take their solution's outcome as their RCRL label.)
pub fn heuristic_checks(step: &str) -> bool {
    step.contains("####") || step_results(step).iter().any(Option::is_some)
}

/// What an ORM-dense reward pays per step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrmDense {
    /// p(right | prefix to the end of the step).
    Probability,
    /// That probability minus the one before the step (the first step: minus p(right | prompt)),
    /// so the rewards of a solution sum to its final probability minus the prompt's.
    Change,
}

/// ORM-dense rewards of the steps of one response from its per-position probabilities
/// (`probabilities[0]`: before the response; `probabilities[i + 1]`: after response token i).
pub fn orm_step_rewards(probabilities: &[f32], steps: &[Step], mode: OrmDense) -> Vec<f64> {
    let mut before = probabilities.first().copied().unwrap_or(0.5) as f64;
    steps
        .iter()
        .map(|s| {
            let p = probabilities.get(s.end + 1).copied().unwrap_or(before as f32) as f64;
            let reward = match mode {
                OrmDense::Probability => p,
                OrmDense::Change => p - before,
            };
            before = p;
            reward
        })
        .collect()
}

/// Per-token rewards of a response: each step's reward sits on the step's last token.
pub fn token_rewards(steps: &[Step], step_rewards: &[f64], response_len: usize) -> Vec<f32> {
    let mut out = vec![0f32; response_len];
    for (s, &r) in steps.iter().zip(step_rewards) {
        if let Some(slot) = out.get_mut(s.end) {
            *slot += r as f32;
        }
    }
    out
}

/// p(final answer right | question, prefix) from a model's scalar head, for every prefix of each
/// episode's response: entry 0 is before the response (after the prompt), entry i + 1 after
/// response token i. Batched by `batch_tokens` (rows x longest row).
pub fn outcome_probabilities(model: &Llama, episodes: &[Episode], batch_tokens: usize) -> Result<Vec<Vec<f32>>> {
    if !model.has_head() {
        return Err(Error::Invalid("the ORM has no scalar head (head.safetensors)".into()));
    }
    let vocab = model.config.vocab_size;
    if let Some(e) =
        episodes.iter().find(|e| e.prompt_tokens.iter().chain(&e.response_tokens).any(|&t| t as i64 >= vocab))
    {
        return Err(Error::Invalid(format!(
            "episode of problem `{}` has token ids beyond the ORM's vocabulary ({vocab}): \
             was it sampled with another tokenizer?",
            e.problem_id
        )));
    }
    let lengths: Vec<usize> = episodes.iter().map(|e| e.sequence_len()).collect();
    let mut order: Vec<usize> = (0..episodes.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    let mut out = vec![Vec::new(); episodes.len()];
    let mut start = 0;
    tch::no_grad(|| -> Result<()> {
        while start < order.len() {
            let t = lengths[order[start]].max(1);
            let rows = (batch_tokens / t).max(1).min(order.len() - start);
            let batch = &order[start..start + rows];
            let mut ids = vec![0i64; rows * t];
            for (r, &i) in batch.iter().enumerate() {
                let e = &episodes[i];
                for (j, &tok) in e.prompt_tokens.iter().chain(&e.response_tokens).enumerate() {
                    ids[r * t + j] = tok as i64;
                }
            }
            let ids = Tensor::from_slice(&ids).view([rows as i64, t as i64]).to_device(model.device());
            let values = model.head_values(&model.forward_hidden(&ids)).expect("checked above");
            let probs = values.to_kind(Kind::Float).sigmoid().to_device(Device::Cpu);
            let probs = Vec::<f32>::try_from(probs.reshape([-1]))?;
            for (r, &i) in batch.iter().enumerate() {
                let e = &episodes[i];
                let from = r * t + e.prompt_tokens.len().max(1) - 1;
                out[i] = probs[from..=from + e.response_tokens.len()].to_vec();
            }
            start += rows;
        }
        Ok(())
    })?;
    Ok(out)
}

/// A trained Outcome Reward Model: a causal LM with a scalar head, read from a model folder.
pub struct Orm {
    pub model: CausalLm,
    pub batch_tokens: usize,
}

impl Orm {
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        if !dir.join(crate::model::hf::HEAD_FILE).exists() {
            return Err(Error::file(dir, "is not an ORM: it has no head.safetensors (train one with `reasonrl orm`)"));
        }
        Ok(Orm { model: CausalLm::load(dir, device, true)?, batch_tokens: 16384 })
    }

    /// Per-prefix probabilities; see [`outcome_probabilities`].
    pub fn probabilities(&self, episodes: &[Episode]) -> Result<Vec<Vec<f32>>> {
        outcome_probabilities(&self.model, episodes, self.batch_tokens)
    }
}

impl Scorer for Orm {
    /// The probability after the whole response: what rerank@k ranks by.
    fn score(&self, episodes: &[Episode]) -> Result<Vec<f64>> {
        Ok(self.probabilities(episodes)?.iter().map(|p| p.last().copied().unwrap_or(0.0) as f64).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REFERENCE: &str = "Olivia makes 5 boxes of 2, so she has 5 * 2 = <<5*2=10>>10 toy cars.\n\
                             One box holds 10 / 2 = <<10/2=5>>5 toy cars.\n#### 5";

    #[test]
    fn heuristic_rewards_right_steps_once_and_the_right_answer() {
        let right = ["She has 5 * 2 = <<5*2=10>>10 cars.\n", "One box holds 10 / 2 = <<10/2=5>>5.\n", "#### 5\n"];
        assert_eq!(heuristic_step_rewards(&right, REFERENCE, "5"), vec![1.0, 1.0, 1.0]);
        let wrong = ["She has 5 * 2 = <<5*2=12>>12 cars.\n", "One box holds 12 / 2 = <<12/2=6>>6.\n", "#### 6\n"];
        assert_eq!(heuristic_step_rewards(&wrong, REFERENCE, "5"), vec![0.0, 0.0, 0.0]);
        // An extra step repeating a right result earns nothing the second time; a step with no
        // result earns nothing.
        let extra = ["5 * 2 = <<5*2=10>>10.\n", "Again 5 * 2 = <<5*2=10>>10.\n", "So that is it.\n", "#### 5"];
        assert_eq!(heuristic_step_rewards(&extra, REFERENCE, "5"), vec![1.0, 0.0, 0.0, 1.0]);
        assert!(heuristic_checks(extra[0]) && !heuristic_checks(extra[2]) && heuristic_checks(extra[3]));
        // Without notes the equation's result counts.
        assert_eq!(heuristic_step_rewards(&["5 * 2 = 10 cars\n"], REFERENCE, "5"), vec![1.0]);
    }

    #[test]
    fn orm_dense_rewards_and_token_placement() {
        let steps = [Step { end: 1, text: "a\n".into() }, Step { end: 3, text: "b".into() }];
        let p = [0.5, 0.6, 0.7, 0.8, 0.9];
        let close = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6);
        assert!(close(&orm_step_rewards(&p, &steps, OrmDense::Probability), &[0.7, 0.9]));
        let change = orm_step_rewards(&p, &steps, OrmDense::Change);
        assert!(close(&change, &[0.2, 0.2]), "{change:?}");
        assert!((change.iter().sum::<f64>() - (0.9 - 0.5)).abs() < 1e-6, "changes telescope");
        assert_eq!(token_rewards(&steps, &[0.25, 1.0], 4), vec![0.0, 0.25, 0.0, 1.0]);
    }
}
