//! Return-Conditioned RL (Havrilla et al. 2024, section 3; after Decision Transformer and Quark):
//! sample solutions from the policy, label them `[GOOD]` or `[BAD]` — the whole solution by its
//! final answer (sparse), or each step by the heuristic dense reward or the ORM (dense) — and
//! fine-tune on the labelled solutions with each label token in front of what it labels. Sampling
//! then conditions on `[GOOD]` (before every step in the dense variants). Rounds as in EI: each
//! round samples from the policy conditioned on `[GOOD]` (the first from the starting policy, which
//! has not learnt the labels yet), adds the labelled solutions to the pool and fine-tunes on it.

use super::objective::{Example, Objective};
use super::rounds::{fresh_round_dir, log_round, resume_round, save_round, start_round, Dedup};
use super::{TrainConfig, Trainer};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::eval::policy::{evaluate_policy, EvalSpec};
use crate::model::CausalLm;
use crate::reward::{heuristic_checks, heuristic_step_rewards, split_steps, Orm, RewardConfig, Rewarder};
use crate::rollout::{rollout_with, Episode};
use crate::run::{Metrics, RunSpec};
use crate::sample::Sampling;
use crate::task::{Problem, Split};
use crate::tokenizer::Tokenizer;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

pub const GOOD: &str = "[GOOD]";
pub const BAD: &str = "[BAD]";

/// How sampled solutions are labelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Labels {
    /// One label per solution, by its final answer (sparse).
    Outcome,
    /// One per step, by the heuristic dense reward.
    Heuristic,
    /// One per step, `[GOOD]` when the ORM's probability at the step's end is at least
    /// `orm_threshold`.
    Orm,
}

/// `reasonrl rcrl` settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct RcrlConfig {
    /// `model` is the starting policy (and the base that `reset_to_base` restarts from).
    #[serde(flatten)]
    pub common: RunSpec,
    pub rounds: usize,
    /// Training questions sampled each round (the first N of the train split; 0 = all).
    pub questions: usize,
    /// Fine-tune each round from the base model (true) or from the current policy.
    pub reset_to_base: bool,
    pub labels: Labels,
    /// The ORM folder, for `labels = "orm"`.
    pub orm: PathBuf,
    pub orm_threshold: f64,
    /// Put the reference solutions in the pool too, labelled `[GOOD]` throughout.
    pub include_references: bool,
    pub dedup: Dedup,
    /// K solutions per question each round, on the `[rollout]` engine (synced every round).
    pub sampling: Sampling,
    /// What counts as a right solution (its outcome label, and a heuristic step's fallback):
    /// the built-in check, or a verifier's reward reaching `reward.threshold`.
    pub reward: RewardConfig,
    pub train: TrainConfig,
    pub eval: EvalSpec,
}

impl Default for RcrlConfig {
    fn default() -> Self {
        RcrlConfig {
            common: RunSpec::named("rcrl"),
            rounds: 2,
            questions: 0,
            reset_to_base: true,
            labels: Labels::Outcome,
            orm: PathBuf::new(),
            orm_threshold: 0.5,
            include_references: false,
            dedup: Dedup::Text,
            sampling: Sampling::default(),
            reward: RewardConfig::default(),
            train: TrainConfig::default(),
            eval: EvalSpec::default(),
        }
    }
}

impl Config for RcrlConfig {
    fn check(&self) -> std::result::Result<(), String> {
        self.sampling.check("sampling.", 1)?;
        self.reward.check_outcome("reward.")?;
        self.eval.check("eval.")
    }
}

/// A solution cut into steps (response tokens, control tokens removed), each labelled good or
/// bad; the outcome variant has one step, the whole response.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Labelled {
    pub question: usize,
    pub steps: Vec<(Vec<u32>, bool)>,
}

/// The control tokens' ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Controls {
    pub good: u32,
    pub bad: u32,
}

impl Controls {
    /// Adds `[GOOD]` and `[BAD]` to the tokenizer (special tokens: never split, skipped in
    /// decoded text) and grows the model's embedding to match. Each starts as the mean
    /// embedding of its word (" good", " bad"), so the two differ from the first step: with
    /// LoRA, where embeddings stay frozen, they must.
    pub fn add(model: &mut CausalLm, tokenizer: &mut Tokenizer) -> Result<Self> {
        let ids = tokenizer.add_special_tokens(&[GOOD, BAD]);
        let needed = ids.iter().max().map_or(0, |&m| m as i64 + 1).max(tokenizer.vocab_size() as i64);
        model.grow_vocab(needed)?;
        for (&id, word) in ids.iter().zip([" good", " bad"]) {
            model.set_token_like(id, &tokenizer.encode(word)?);
        }
        Ok(Controls { good: ids[0], bad: ids[1] })
    }

    fn label(&self, good: bool) -> u32 {
        if good {
            self.good
        } else {
            self.bad
        }
    }
}

/// The training sequence of a labelled solution: prompt, then each step after its label token,
/// then EOS. The loss covers the response but never the label tokens (they are given, not
/// predicted).
pub fn labelled_example(prompt: &[u32], solution: &Labelled, controls: Controls, eos: u32) -> Example {
    let mut tokens = prompt.to_vec();
    for (step, good) in &solution.steps {
        tokens.push(controls.label(*good));
        tokens.extend(step.iter().filter(|&&t| t != eos));
    }
    tokens.push(eos);
    Example::new(tokens, prompt.len())
}

/// The labelled solutions of every round so far, and the duplicate keys (question, text key) of
/// every solution ever pooled: what a round checkpoint keeps.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Pool {
    solutions: Vec<Labelled>,
    seen: HashSet<(usize, String)>,
}

/// Labels sampled solutions.
struct Labeller<'a> {
    mode: Labels,
    tokenizer: &'a Tokenizer,
    newlines: Vec<u8>,
    controls: Controls,
    orm: Option<(Orm, f64)>,
}

impl Labeller<'_> {
    fn label(
        &self,
        episodes: &[Episode],
        questions: &[Problem],
        index: &HashMap<&str, usize>,
    ) -> Result<Vec<Labelled>> {
        // The episodes as the unconditioned policy would have written them.
        let strip = |tokens: &[u32]| -> Vec<u32> {
            tokens.iter().copied().filter(|&t| t != self.controls.good && t != self.controls.bad).collect()
        };
        let plain: Vec<Episode> = episodes
            .iter()
            .map(|e| Episode {
                prompt_tokens: strip(&e.prompt_tokens),
                response_tokens: strip(&e.response_tokens),
                ..e.clone()
            })
            .collect();
        let probabilities = match &self.orm {
            Some((orm, _)) => Some(orm.probabilities(&plain)?),
            None => None,
        };
        plain
            .iter()
            .enumerate()
            .map(|(n, e)| {
                let question = index[e.problem_id.as_str()];
                if self.mode == Labels::Outcome {
                    return Ok(Labelled { question, steps: vec![(e.response_tokens.clone(), e.correct)] });
                }
                let steps = split_steps(self.tokenizer, &self.newlines, &e.response_tokens)?;
                let good: Vec<bool> = match (&probabilities, &self.orm) {
                    (Some(p), Some((_, threshold))) => {
                        steps.iter().map(|s| p[n].get(s.end + 1).is_some_and(|&p| p as f64 >= *threshold)).collect()
                    }
                    _ => {
                        let problem = &questions[question];
                        let texts: Vec<&str> = steps.iter().map(|s| s.text.as_str()).collect();
                        let rewards = heuristic_step_rewards(&texts, &problem.reference_solution, &problem.answer);
                        texts
                            .iter()
                            .zip(rewards)
                            .map(|(t, r)| if heuristic_checks(t) { r > 0.0 } else { e.correct })
                            .collect()
                    }
                };
                let mut start = 0;
                let steps = steps
                    .iter()
                    .zip(good)
                    .map(|(s, g)| {
                        let tokens = e.response_tokens[start..=s.end].to_vec();
                        start = s.end + 1;
                        (tokens, g)
                    })
                    .collect();
                Ok(Labelled { question, steps })
            })
            .collect()
    }
}

/// Runs RCRL; the last round's policy (with the control tokens) ends in `RUN/final`. Sample it
/// as a good solver with `prompt.condition = "[GOOD]"` (and `prompt.condition_every_step = true`
/// for the per-step variants). Each round ends with a checkpoint (policy and pool); `resume`
/// continues after the newest.
pub fn run(cfg: &RcrlConfig, resume: bool, force: bool) -> Result<PathBuf> {
    let common = &cfg.common;
    let per_step = cfg.labels != Labels::Outcome;
    if per_step && common.rollout.engine != crate::engine::EngineKind::Local {
        // An engine cannot feed [GOOD] after every line it writes.
        return Err(Error::Invalid(
            "per-step labels (heuristic, orm) condition every step: use rollout.engine = \"local\"".into(),
        ));
    }
    let model = common.model()?;
    let setup = common.prepare(cfg, resume, force)?;
    let dir = &setup.dir;
    // The control tokens join the vocabulary before the adapters go on: the base they restart
    // from is the model with them.
    let (mut policy, mut tokenizer) = CausalLm::load_with_tokenizer(model, setup.device, false)?;
    let controls = Controls::add(&mut policy, &mut tokenizer)?;
    let base = dir.join("base");
    policy.save_with_tokenizer(&tokenizer, &base, true)?;
    tch::manual_seed(common.seed as i64);
    policy.maybe_add_lora(common.lora.as_ref(), &base)?;
    let orm = match cfg.labels {
        Labels::Orm => Some((Orm::load(&cfg.orm, setup.device)?, cfg.orm_threshold)),
        _ => None,
    };
    let labeller =
        Labeller { mode: cfg.labels, tokenizer: &tokenizer, newlines: tokenizer.newline_counts()?, controls, orm };

    let questions = setup.load(Split::Train, cfg.questions)?;
    let test = setup.load(Split::Test, cfg.eval.problems)?;
    let by_id = questions.iter().map(|q| (q.id.as_str(), q)).collect();
    let rewarder = Rewarder::new(&cfg.reward, &tokenizer, setup.device, dir)?;
    let prompter = common.prompter(&questions)?.unconditioned();
    let good_prompter = prompter.clone().conditioned(GOOD, per_step);
    let index: HashMap<&str, usize> = questions.iter().enumerate().map(|(i, q)| (q.id.as_str(), i)).collect();
    let checkpoints = super::checkpoint::Checkpoints::new(dir, 2).tracked(&common.log);

    let mut engine = common.engine(dir, true)?;
    let mut pool = Pool::default();
    let (mut done, mut samples_seen) = (0, 0);
    if resume {
        (done, samples_seen, pool) = resume_round(&checkpoints, &mut policy)?;
    } else {
        if cfg.include_references {
            for (i, q) in questions.iter().enumerate() {
                let text = q.reference_solution.trim_end();
                if let Some(key) = cfg.dedup.key(text) {
                    pool.seen.insert((i, key));
                }
                let steps = text
                    .split_inclusive('\n')
                    .map(|line| Ok((tokenizer.encode(line)?, true)))
                    .collect::<Result<Vec<_>>>()?;
                pool.solutions.push(Labelled {
                    question: i,
                    steps: if per_step { steps } else { vec![(tokenizer.encode(text)?, true)] },
                });
            }
        }
        let line =
            evaluate_policy(&policy, &tokenizer, &prompter, &test, &cfg.eval, common.seed, common.rollout.dtype)?;
        log_round(&checkpoints, line, 0, 0)?;
    }
    for round in done + 1..=cfg.rounds {
        // 1. Sample, as a good solver once the policy knows what [GOOD] means.
        let sampler = if round == 1 { &prompter } else { &good_prompter };
        engine.sync(&policy, &tokenizer)?;
        let sampling = cfg.sampling.with_seed(common.seed + round as u64);
        let mut episodes = rollout_with(&engine, &policy, &tokenizer, sampler, &questions, &sampling)?;
        samples_seen += episodes.len();
        let judged = rewarder.judge(&tokenizer, &mut episodes, &by_id)?;
        let (total, correct) = (episodes.len(), episodes.iter().filter(|e| e.correct).count());
        // 2. Label every new solution, right or wrong, and pool it.
        let fresh: Vec<Episode> = episodes
            .into_iter()
            .filter(|e| cfg.dedup.key(&e.text).is_none_or(|key| pool.seen.insert((index[e.problem_id.as_str()], key))))
            .collect();
        pool.solutions.extend(labeller.label(&fresh, &questions, &index)?);
        let labels: Vec<bool> = pool.solutions.iter().flat_map(|s| s.steps.iter().map(|(_, g)| *g)).collect();
        let good_fraction = labels.iter().filter(|&&g| g).count() as f64 / labels.len().max(1) as f64;
        eprintln!(
            "round {round}: {correct} of {total} samples right; pool {} solutions, {:.1}% of labels good",
            pool.solutions.len(),
            100.0 * good_fraction
        );
        // 3. Fine-tune on the labelled pool.
        let examples: Vec<Example> = pool
            .solutions
            .iter()
            .map(|s| {
                let prompt = prompter.encode(&tokenizer, &questions[s.question].question)?;
                Ok(labelled_example(&prompt, s, controls, tokenizer.eos_id()))
            })
            .collect::<Result<_>>()?;
        start_round(&mut policy, &base, cfg.reset_to_base, common.seed.wrapping_add(round as u64))?;
        let mut trainer =
            Trainer::new(&mut policy, &tokenizer, cfg.train.clone(), &fresh_round_dir(dir, round)?, false)?;
        trainer.objective = Objective::LanguageModel { context_only: vec![controls.good, controls.bad] };
        trainer.train(&examples, &mut |_, _| Ok(Metrics::new()))?;
        // 4. Evaluate conditioned on [GOOD], and log.
        let mut line =
            evaluate_policy(&policy, &tokenizer, &good_prompter, &test, &cfg.eval, common.seed, common.rollout.dtype)?;
        line.extend([
            ("pool_size".into(), pool.solutions.len() as f64),
            ("pool_good_label_fraction".into(), good_fraction),
        ]);
        line.extend(judged);
        log_round(&checkpoints, line, round, samples_seen)?;
        save_round(&checkpoints, &policy, &tokenizer, round, samples_seen, &pool)?;
    }
    checkpoints.finish_tracking()?;
    crate::run::save_final(dir, &policy, &tokenizer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_precede_their_steps_and_are_never_targets() {
        let controls = Controls { good: 90, bad: 91 };
        let solution = Labelled { question: 0, steps: vec![(vec![5, 6, 10], true), (vec![7, 10], false)] };
        let e = labelled_example(&[1, 2, 3], &solution, controls, 0);
        assert_eq!(e.tokens, vec![1, 2, 3, 90, 5, 6, 10, 91, 7, 10, 0]);
        assert_eq!(e.targets_from, 3);
        let objective = Objective::LanguageModel { context_only: vec![90, 91] };
        assert_eq!(objective.weight(&e), 6.0, "5 6 10 7 10 EOS; not the labels");
        let (_, targets) = super::super::objective::collate(&[&e], 0, &[90, 91], tch::Device::Cpu);
        assert_eq!(targets, vec![-100, -100, -100, 5, 6, 10, -100, 7, 10, 0]);
    }
}
