//! Problems -> Episodes: prompt, sample, extract and check the answer. Every algorithm and the
//! evaluator consume Episodes, so this is the one path from a policy to scored samples.

use crate::engine::{Engine, SamplingDtype};
use crate::error::Result;
use crate::model::CausalLm;
use crate::prompt::Prompter;
use crate::sample::{Finish, SamplingConfig};
use crate::task::{answers_match, extract_answer, Problem};
use crate::tokenizer::Tokenizer;

/// One sampled solution of one problem, with everything training and evaluation need.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Episode {
    pub problem_id: String,
    pub sample_index: usize,
    pub prompt_tokens: Vec<u32>,
    pub response_tokens: Vec<u32>,
    pub text: String,
    /// Behaviour-policy log-probabilities of `response_tokens` (see `sample::Generation`).
    pub logprobs: Vec<f32>,
    pub finish: Finish,
    pub extracted_answer: Option<String>,
    pub reference_answer: String,
    pub correct: bool,
}

impl Episode {
    /// Prompt and response tokens: the length of the episode's sequence in a forward pass.
    pub fn sequence_len(&self) -> usize {
        self.prompt_tokens.len() + self.response_tokens.len()
    }

    /// Reads the answer out of `text` and checks it against `reference_answer` with this
    /// checker; returns whether the verdict changed (episodes saved by an older reasonrl).
    pub fn grade(&mut self) -> bool {
        let before = self.correct;
        self.extracted_answer = extract_answer(&self.text);
        self.correct = self.extracted_answer.as_deref().is_some_and(|a| answers_match(a, &self.reference_answer));
        self.correct != before
    }
}

/// Samples `cfg.samples_per_prompt` solutions per problem from `model`, in this process, and
/// checks each answer (see [`rollout_with`]).
pub fn rollout(
    model: &CausalLm,
    tokenizer: &Tokenizer,
    prompter: &Prompter,
    problems: &[Problem],
    cfg: &SamplingConfig,
) -> Result<Vec<Episode>> {
    rollout_with(&Engine::Local(SamplingDtype::Auto), model, tokenizer, prompter, problems, cfg)
}

/// Samples `cfg.samples_per_prompt` solutions per problem on `engine` (from `model` when it is
/// local) and checks each answer. The prompter's stop strings are added to `cfg`'s, and its
/// per-step control token (if any) becomes the step prefix. In a data-parallel run each rank
/// samples its block of the problems (all samples of a problem on one rank) and every rank gets
/// all the episodes back, in problem order.
pub fn rollout_with(
    engine: &Engine,
    model: &CausalLm,
    tokenizer: &Tokenizer,
    prompter: &Prompter,
    problems: &[Problem],
    cfg: &SamplingConfig,
) -> Result<Vec<Episode>> {
    let world = crate::dist::world();
    let problems = &problems[world.shard(problems.len())];
    let prompts = problems.iter().map(|p| prompter.encode(tokenizer, &p.question)).collect::<Result<Vec<_>>>()?;
    let mut cfg = cfg.clone();
    cfg.stop_strings.extend(prompter.stop_strings());
    cfg.step_prefix = cfg.step_prefix.or(prompter.step_condition(tokenizer)?);
    let generations =
        if prompts.is_empty() { Vec::new() } else { engine.generate(model, tokenizer, &prompts, &cfg)? };
    let episodes = generations
        .into_iter()
        .map(|g| {
            let problem = &problems[g.prompt_index];
            let mut episode = Episode {
                problem_id: problem.id.clone(),
                sample_index: g.sample_index,
                prompt_tokens: prompts[g.prompt_index].clone(),
                response_tokens: g.tokens,
                text: g.text,
                logprobs: g.logprobs,
                finish: g.finish,
                extracted_answer: None,
                reference_answer: problem.answer.clone(),
                correct: false,
            };
            episode.grade();
            episode
        })
        .collect();
    world.all_gather_items(episodes)
}

/// Scores samples for rerank@k and wmaj@k: a confidence in [0, 1] that the sample is right,
/// higher is better. wmaj@k adds the scores up as votes, so they must not be negative.
pub trait Scorer {
    /// One score per episode, in the same order.
    fn score(&self, episodes: &[Episode]) -> Result<Vec<f64>>;
}

/// A scorer for tests and baselines: the policy's own confidence, as the geometric mean of its
/// token probabilities (exp of the mean behaviour log-prob). An empty response scores 0 (ranked
/// last), since it has no confidence to speak of.
#[derive(Debug, Clone, Copy, Default)]
pub struct MeanLogprobScorer;

impl Scorer for MeanLogprobScorer {
    fn score(&self, episodes: &[Episode]) -> Result<Vec<f64>> {
        Ok(episodes
            .iter()
            .map(|e| {
                if e.logprobs.is_empty() {
                    0.0
                } else {
                    (e.logprobs.iter().map(|&x| x as f64).sum::<f64>() / e.logprobs.len() as f64).exp()
                }
            })
            .collect())
    }
}
