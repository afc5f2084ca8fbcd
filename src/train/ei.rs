//! Expert Iteration (Havrilla et al. 2024, section 3; trlX's RFT trainer): for R rounds, sample K
//! solutions per training question from the current policy, keep the correct ones, deduplicate,
//! add them to the pool of all rounds so far, and fine-tune on the pool — from the base model by
//! default (the paper resets every round), or from the current policy. "Correct" is the built-in
//! check of the final answer, or a verifier's reward reaching `reward.threshold`.

use super::objective::solution_example;
use super::rounds::{fresh_round_dir, log_round, resume_round, save_round, start_round, Dedup};
use super::{TrainConfig, Trainer};
use crate::config::Config;
use crate::error::Result;
use crate::eval::policy::{evaluate_policy, EvalSpec};
use crate::reward::{RewardConfig, Rewarder};
use crate::rollout::rollout_with;
use crate::run::{Metrics, Run, RunSpec};
use crate::sample::Sampling;
use crate::task::Split;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

/// `reasonrl ei` settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct EiConfig {
    /// `model` is the starting policy, and the base every round restarts from (`reset_to_base`).
    #[serde(flatten)]
    pub common: RunSpec,
    pub rounds: usize,
    /// Training questions sampled each round (the first N of the train split; 0 = all).
    pub questions: usize,
    /// Fine-tune each round from the base model (true, the paper) or from the current policy.
    pub reset_to_base: bool,
    /// Put the reference solutions in the pool too.
    pub include_references: bool,
    pub dedup: Dedup,
    /// K solutions per question each round (the paper: K = 96), from the current policy on the
    /// `[rollout]` engine, synced with the policy before every round.
    pub sampling: Sampling,
    /// What counts as correct: the built-in check (`sparse`), or a verifier's reward reaching
    /// `reward.threshold` (`command`, `http`).
    pub reward: RewardConfig,
    /// Fine-tuning on the pool each round.
    pub train: TrainConfig,
    /// The test split, after every round.
    pub eval: EvalSpec,
}

impl Default for EiConfig {
    fn default() -> Self {
        EiConfig {
            common: RunSpec::named("ei"),
            rounds: 3,
            questions: 0,
            reset_to_base: true,
            include_references: false,
            dedup: Dedup::Text,
            sampling: Sampling::default(),
            reward: RewardConfig::default(),
            train: TrainConfig::default(),
            eval: EvalSpec::default(),
        }
    }
}

impl Config for EiConfig {
    fn check(&self) -> std::result::Result<(), String> {
        self.sampling.check("sampling.", 1)?;
        self.reward.check_outcome("reward.")?;
        self.eval.check("eval.")
    }
}

/// The correct solutions of every round so far, one per duplicate class, as (question index,
/// text).
#[derive(Debug, Default)]
pub struct Pool {
    dedup: Dedup,
    seen: HashSet<(usize, String)>,
    pub solutions: Vec<(usize, String)>,
}

impl Pool {
    pub fn new(dedup: Dedup) -> Self {
        Pool { dedup, ..Pool::default() }
    }

    /// Adds a solution unless the question already has a duplicate of it; true when added.
    pub fn add(&mut self, question: usize, text: &str) -> bool {
        let fresh = self.dedup.key(text).is_none_or(|key| self.seen.insert((question, key)));
        if fresh {
            self.solutions.push((question, text.to_string()));
        }
        fresh
    }

    /// Questions with at least one solution.
    pub fn questions(&self) -> usize {
        self.solutions.iter().map(|(i, _)| *i).collect::<HashSet<_>>().len()
    }
}

/// Runs Expert Iteration; the last round's policy ends in `RUN/final`. Per-round figures go to
/// `RUN/metrics.jsonl` (x axis: `samples_seen`, the paper's sample complexity). Each round ends
/// with a checkpoint (policy and pool); `resume` continues after the newest.
pub fn run(cfg: &EiConfig, resume: bool, force: bool) -> Result<PathBuf> {
    let common = &cfg.common;
    let Run { setup, mut policy, tokenizer } = common.open(cfg, resume, force, false)?;
    let dir = &setup.dir;
    let questions = setup.load(Split::Train, cfg.questions)?;
    let test = setup.load(Split::Test, cfg.eval.problems)?;
    let prompter = common.prompter(&questions)?;
    let checkpoints = super::checkpoint::Checkpoints::new(dir, 2).tracked(&common.log);
    let index: HashMap<&str, usize> = questions.iter().enumerate().map(|(i, q)| (q.id.as_str(), i)).collect();
    let by_id = questions.iter().map(|q| (q.id.as_str(), q)).collect();
    let rewarder = Rewarder::new(&cfg.reward, &tokenizer, setup.device, dir)?;

    let mut engine = common.engine(dir, true)?;
    let mut pool = Pool::new(cfg.dedup);
    let (mut done, mut samples_seen) = (0, 0);
    if resume {
        let solutions: Vec<(usize, String)>;
        (done, samples_seen, solutions) = resume_round(&checkpoints, &mut policy)?;
        for (i, text) in &solutions {
            pool.add(*i, text);
        }
    } else {
        if cfg.include_references {
            for (i, q) in questions.iter().enumerate() {
                pool.add(i, &q.reference_solution);
            }
        }
        let line =
            evaluate_policy(&policy, &tokenizer, &prompter, &test, &cfg.eval, common.seed, common.rollout.dtype)?;
        log_round(&checkpoints, line, 0, 0)?;
    }
    for round in done + 1..=cfg.rounds {
        // 1. Sample K solutions per question from the current policy.
        engine.sync(&policy, &tokenizer)?;
        let sampling = cfg.sampling.with_seed(common.seed + round as u64);
        let mut episodes = rollout_with(&engine, &policy, &tokenizer, &prompter, &questions, &sampling)?;
        samples_seen += episodes.len();
        let judged = rewarder.judge(&tokenizer, &mut episodes, &by_id)?;
        // 2. Keep the correct ones, deduplicated, in the pool of all rounds.
        let mut solved = HashSet::new();
        for e in episodes.iter().filter(|e| e.correct) {
            let i = index[e.problem_id.as_str()];
            solved.insert(i);
            pool.add(i, &e.text);
        }
        eprintln!(
            "round {round}: {} samples, {} of {} questions solved, pool {}",
            episodes.len(),
            solved.len(),
            questions.len(),
            pool.solutions.len()
        );
        // 3. Fine-tune on the pool, from the base model or the current policy.
        let examples = pool
            .solutions
            .iter()
            .map(|(i, text)| solution_example(&tokenizer, &prompter, &questions[*i].question, text))
            .collect::<Result<Vec<_>>>()?;
        if examples.is_empty() {
            eprintln!("round {round}: nothing correct to learn from yet; the policy stays as it is");
        } else {
            start_round(&mut policy, &common.model, cfg.reset_to_base, common.seed.wrapping_add(round as u64))?;
            let round_dir = fresh_round_dir(dir, round)?;
            let mut trainer = Trainer::new(&mut policy, &tokenizer, cfg.train.clone(), &round_dir, false)?;
            trainer.train(&examples, &mut |_, _| Ok(Metrics::new()))?;
        }
        // 4. Evaluate and log the round.
        let mut line =
            evaluate_policy(&policy, &tokenizer, &prompter, &test, &cfg.eval, common.seed, common.rollout.dtype)?;
        line.extend([
            ("solved_fraction".into(), solved.len() as f64 / questions.len() as f64),
            ("pool_size".into(), pool.solutions.len() as f64),
            ("pool_solutions_per_question".into(), pool.solutions.len() as f64 / pool.questions().max(1) as f64),
        ]);
        line.extend(judged);
        log_round(&checkpoints, line, round, samples_seen)?;
        save_round(&checkpoints, &policy, &tokenizer, round, samples_seen, &pool.solutions)?;
    }
    checkpoints.finish_tracking()?;
    crate::run::save_final(dir, &policy, &tokenizer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_keeps_one_solution_per_duplicate_class_across_rounds() {
        let mut pool = Pool::new(Dedup::Text);
        // Round 1.
        assert!(pool.add(0, "a = <<1+1=2>>2\n#### 2"));
        assert!(!pool.add(0, "a  =  <<1+1=2>>2\n#### 2\n"), "same text up to whitespace");
        assert!(pool.add(1, "a = <<1+1=2>>2\n#### 2"), "the same text for another question counts");
        // Round 2: new solutions join, old ones stay.
        assert!(!pool.add(0, "a = <<1+1=2>>2 #### 2"));
        assert!(pool.add(0, "b = <<2*1=2>>2\n#### 2"));
        assert_eq!(pool.solutions.len(), 3);
        assert_eq!(pool.questions(), 2);
        assert_eq!(pool.solutions[0], (0, "a = <<1+1=2>>2\n#### 2".to_string()));

        let mut by_results = Pool::new(Dedup::Results);
        assert!(by_results.add(0, "Tom has 1+1 = <<1+1=2>>2 pens.\n#### 2"));
        assert!(!by_results.add(0, "So 1 + 1 = <<1+1=2>>2.\n#### 2"), "same intermediate results");
        assert!(by_results.add(0, "2 * 1 = <<2*1=2>>2\n2 + 0 = <<2+0=2>>2\n#### 2"), "another sequence");
    }
}
