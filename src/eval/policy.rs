//! Evaluating a policy on test problems, in a run or on its own: one greedy pass (maj@1) over
//! every problem, and one pass of K samples per problem (maj@k, pass@k) over the first ones.

use super::{evaluate, EvalOptions, Metric};
use crate::engine::{Engine, SamplingDtype};
use crate::error::Result;
use crate::model::CausalLm;
use crate::prompt::Prompter;
use crate::rollout::{rollout_with, Episode};
use crate::run::Metrics;
use crate::sample::Sampling;
use crate::task::Problem;
use crate::tokenizer::Tokenizer;

/// What an evaluation measures (`[eval]`): the problems, the greedy pass over all of them, and
/// the sampled pass (`samples_per_prompt` = K, 0 for greedy only) over the first
/// `sampled_problems`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct EvalSpec {
    /// Test problems (the first N of the split; 0 = all, or none where a run holds them out of
    /// its train split: SFT and pretraining).
    pub problems: usize,
    /// Of `problems`, the first N are sampled (0 = all); the greedy pass covers every problem,
    /// so maj@1 can be measured on thousands of problems and the k-sample metrics on hundreds.
    pub sampled_problems: usize,
    /// The k of maj@k and pass@k, each in 1..=K; empty: 1 and K.
    pub ks: Vec<usize>,
    #[serde(flatten)]
    pub sampling: Sampling,
}

impl Default for EvalSpec {
    fn default() -> Self {
        EvalSpec { problems: 500, sampled_problems: 0, ks: Vec::new(), sampling: Sampling::default() }
    }
}

impl EvalSpec {
    /// The range rules, keys named under `prefix` (e.g. `eval.`).
    pub fn check(&self, prefix: &str) -> std::result::Result<(), String> {
        self.sampling.check(prefix, 0)?;
        let k = self.sampling.samples_per_prompt;
        match self.ks.iter().find(|&&x| x == 0 || x > k) {
            Some(bad) if k > 0 => {
                Err(format!("`{prefix}ks` holds {bad}: each k must be in 1..={k} (`{prefix}samples_per_prompt`)"))
            }
            _ => Ok(()),
        }
    }

    /// The ks reported: `ks`, or 1 and K; none without samples.
    pub fn ks(&self) -> Vec<usize> {
        let k = self.sampling.samples_per_prompt;
        match (k, self.ks.is_empty()) {
            (0, _) => Vec::new(),
            (_, false) => self.ks.clone(),
            (1, true) => vec![1],
            (_, true) => vec![1, k],
        }
    }
}

/// The greedy episodes of every problem and the K sampled ones of the first `sampled_problems`,
/// from `engine` (or `model` when it is local).
pub fn sample_episodes(
    engine: &Engine,
    model: &CausalLm,
    tokenizer: &Tokenizer,
    prompter: &Prompter,
    problems: &[Problem],
    spec: &EvalSpec,
    seed: u64,
) -> Result<(Vec<Episode>, Vec<Episode>)> {
    let start = std::time::Instant::now();
    let greedy = rollout_with(engine, model, tokenizer, prompter, problems, &spec.sampling.greedy().with_seed(seed))?;
    let k = spec.sampling.samples_per_prompt;
    let samples = if k > 0 {
        let n = if spec.sampled_problems == 0 { problems.len() } else { spec.sampled_problems.min(problems.len()) };
        rollout_with(engine, model, tokenizer, prompter, &problems[..n], &spec.sampling.with_seed(seed))?
    } else {
        Vec::new()
    };
    let tokens: usize = greedy.iter().chain(&samples).map(|e| e.response_tokens.len()).sum();
    let seconds = start.elapsed().as_secs_f64();
    eprintln!(
        "sampled {} problems greedily and {} x {k} at temperature: {tokens} tokens in {seconds:.1}s ({:.0} tokens/s)",
        problems.len(),
        samples.len() / k.max(1),
        tokens as f64 / seconds
    );
    Ok((greedy, samples))
}

/// Greedy maj@1 and, from K samples per problem, maj@k and pass@k on `test`, each with its 95%
/// interval (`_lo`, `_hi`), plus distinct correct solutions: a run's `eval/` metrics.
pub fn evaluate_policy(
    policy: &CausalLm,
    tokenizer: &Tokenizer,
    prompter: &Prompter,
    test: &[Problem],
    spec: &EvalSpec,
    seed: u64,
    dtype: SamplingDtype,
) -> Result<Metrics> {
    if test.is_empty() {
        return Ok(Metrics::new());
    }
    let (greedy, samples) = sample_episodes(&Engine::Local(dtype), policy, tokenizer, prompter, test, spec, seed)?;
    let ks = if samples.is_empty() { vec![] } else { spec.ks() };
    let opts = EvalOptions { ks, temperature: Some(spec.sampling.temperature), ..EvalOptions::default() };
    let (_, summary) = evaluate(&greedy, &samples, None, &opts)?;
    let mut line = Metrics::new();
    let mut put = |name: String, m: &Metric| {
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
