//! The Outcome Reward Model (Havrilla et al. 2024, section 3; Cobbe et al. 2021's verifier):
//! sample K solutions per training question from a policy, label each by whether its final
//! answer is right, deduplicate, and train the policy's copy with a scalar head to predict, at
//! every response token, p(final answer right | question, prefix) with binary cross-entropy.
//! Held-out questions measure it: accuracy, AUROC and calibration of the final-token prediction.

use super::objective::{Example, Objective};
use super::rounds::Dedup;
use super::{TrainConfig, Trainer};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::eval::{auroc, expected_calibration_error, read_episodes};
use crate::model::CausalLm;
use crate::reward::{outcome_probabilities, RewardConfig, Rewarder};
use crate::rollout::{rollout_with, Episode};
use crate::run::{Metrics, Run, RunSpec};
use crate::sample::Sampling;
use crate::task::Split;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

/// The held-out metric that picks `best/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BestBy {
    /// AUROC over all pairs of a right and a wrong solution.
    Auroc,
    /// AUROC over pairs from one question: what reranking a question's samples needs.
    AurocWithin,
}

impl BestBy {
    fn metric(self) -> &'static str {
        match self {
            BestBy::Auroc => "orm/auroc",
            BestBy::AurocWithin => "orm/auroc_within",
        }
    }
}

/// `reasonrl orm` settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct OrmConfig {
    /// `model` is the policy whose solutions the ORM learns to judge; the ORM starts as a copy
    /// of it, with a fresh scalar head drawn from `seed`.
    #[serde(flatten)]
    pub common: RunSpec,
    /// Training questions sampled (the first N of the train split; 0 = all).
    pub questions: usize,
    /// Fraction of those questions held out to measure the ORM.
    pub holdout: f64,
    /// Weigh right and wrong solutions equally in the loss (true) or as they come.
    pub balance: bool,
    /// Drop a question's duplicate solutions.
    pub dedup: Dedup,
    /// Train only on questions with both a right and a wrong solution, so the ORM must tell
    /// solutions apart rather than easy questions from hard ones (held-out data stays whole).
    pub mixed_only: bool,
    /// Weight of a next-token loss on the right solutions beside the ORM loss (0 = none).
    pub lm_coef: f64,
    /// Weight of a pairwise ranking loss between a question's right and wrong solutions (0 =
    /// none): each question's solutions then share a batch. See [`Objective::Outcome`].
    pub pairwise_coef: f64,
    /// Learn from these episodes (e.g. an earlier run's `samples.jsonl`) instead of sampling.
    pub episodes: Option<PathBuf>,
    /// K solutions per question from the policy, on the `[rollout]` engine.
    pub sampling: Sampling,
    /// What labels a solution right: the built-in check, or a verifier's reward reaching
    /// `reward.threshold` (asked again for `episodes` read from a file).
    pub reward: RewardConfig,
    pub train: TrainConfig,
    /// Token budget of a batch when scoring held-out solutions.
    pub eval_batch_tokens: usize,
    pub best_by: BestBy,
}

impl Default for OrmConfig {
    fn default() -> Self {
        OrmConfig {
            common: RunSpec::named("orm"),
            questions: 0,
            holdout: 0.1,
            balance: true,
            dedup: Dedup::Text,
            mixed_only: false,
            lm_coef: 0.0,
            pairwise_coef: 0.0,
            episodes: None,
            sampling: Sampling::default(),
            reward: RewardConfig::default(),
            train: TrainConfig::default(),
            eval_batch_tokens: 16384,
            best_by: BestBy::Auroc,
        }
    }
}

impl Config for OrmConfig {
    fn check(&self) -> std::result::Result<(), String> {
        if !(0.0..1.0).contains(&self.holdout) {
            return Err(format!("`holdout` = {}: must be in [0, 1)", self.holdout));
        }
        self.reward.check_outcome("reward.")?;
        self.sampling.check("sampling.", 1)
    }
}

/// Runs ORM training; the ORM ends in `RUN/final` and, by the held-out `best_by` metric, `RUN/best`.
pub fn run(cfg: &OrmConfig, resume: bool, force: bool) -> Result<PathBuf> {
    let common = &cfg.common;
    let Run { setup, policy: mut model, tokenizer } = common.open(cfg, resume, force, true)?;
    let dir = &setup.dir;
    let questions = setup.load(Split::Train, cfg.questions)?;

    // 1. Solutions from the policy, labelled by their final answers (sampled once; a resumed
    //    run reads them back).
    let samples_file = dir.join("samples.jsonl");
    let mut episodes = match &cfg.episodes {
        Some(path) => read_episodes(path)?,
        None if resume && samples_file.exists() => read_episodes(&samples_file)?,
        None => {
            let prompter = common.prompter(&questions)?;
            let mut engine = common.engine(dir, false)?;
            engine.sync(&model, &tokenizer)?;
            rollout_with(&engine, &model, &tokenizer, &prompter, &questions, &cfg.sampling.with_seed(common.seed))?
        }
    };
    let by_id = questions.iter().map(|q| (q.id.as_str(), q)).collect();
    Rewarder::new(&cfg.reward, &tokenizer, setup.device, dir)?.judge(&tokenizer, &mut episodes, &by_id)?;
    crate::fsutil::write_jsonl(&samples_file, &episodes)?;
    let mut seen = HashSet::new();
    episodes.retain(|e| cfg.dedup.key(&e.text).is_none_or(|key| seen.insert((e.problem_id.clone(), key))));
    // 2. Hold out the last questions (by first appearance) to measure the ORM.
    let mut ids: Vec<&str> = Vec::new();
    let mut seen_ids = HashSet::new();
    for e in &episodes {
        if seen_ids.insert(e.problem_id.as_str()) {
            ids.push(e.problem_id.as_str());
        }
    }
    let held: HashSet<String> =
        ids[ids.len() - (ids.len() as f64 * cfg.holdout).round() as usize..].iter().map(|s| s.to_string()).collect();
    let (heldout, mut train): (Vec<Episode>, Vec<Episode>) =
        episodes.into_iter().partition(|e| held.contains(&e.problem_id));
    if cfg.mixed_only {
        keep_mixed_questions(&mut train);
    }
    let mut question_index: HashMap<&str, usize> = HashMap::new();
    let examples: Vec<Example> = train
        .iter()
        .map(|e| {
            let next = question_index.len();
            let group = *question_index.entry(e.problem_id.as_str()).or_insert(next);
            Example { group: (cfg.pairwise_coef > 0.0).then_some(group), ..outcome_example(e) }
        })
        .collect();
    let positives = examples.iter().filter(|e| e.label == Some(1.0)).count();
    let negatives = examples.len() - positives;
    if positives == 0 || negatives == 0 {
        return Err(Error::Invalid(format!(
            "the ORM needs right and wrong solutions to learn from; the policy's {} training solutions \
             are {positives} right and {negatives} wrong",
            examples.len()
        )));
    }
    eprintln!(
        "orm: {} training solutions ({positives} right, {negatives} wrong), {} held out from {} questions",
        examples.len(),
        heldout.len(),
        held.len()
    );

    // 3. Train the scalar head (and the body) with binary cross-entropy at every response token.
    let mut trainer = Trainer::new(&mut model, &tokenizer, cfg.train.clone(), dir, resume)?;
    trainer.checkpoints = trainer.checkpoints.tracked(&cfg.common.log);
    let positive_weight = if cfg.balance { negatives as f64 / positives as f64 } else { 1.0 };
    trainer.objective = Objective::Outcome { positive_weight, lm_coef: cfg.lm_coef, pairwise_coef: cfg.pairwise_coef };
    trainer.best_metric = Some(cfg.best_by.metric().into());
    let mut eval = |m: &CausalLm, _: &super::checkpoint::TrainerState| {
        let p = outcome_probabilities(m, &heldout, cfg.eval_batch_tokens)?;
        Ok(classifier_metrics(&heldout, &p))
    };
    trainer.train(&examples, &mut eval)?;
    crate::run::save_final(dir, &model, &tokenizer)
}

/// Keeps the solutions of questions that have both a right and a wrong one.
pub fn keep_mixed_questions(episodes: &mut Vec<Episode>) {
    let mut outcomes: HashMap<String, [bool; 2]> = HashMap::new();
    for e in episodes.iter() {
        outcomes.entry(e.problem_id.clone()).or_default()[e.correct as usize] = true;
    }
    episodes.retain(|e| outcomes[&e.problem_id] == [true, true]);
}

/// A solution as an ORM example: prompt and response, labelled by the final answer.
pub fn outcome_example(e: &Episode) -> Example {
    let tokens = e.prompt_tokens.iter().chain(&e.response_tokens).copied().collect();
    Example { label: Some(e.correct as u8 as f32), ..Example::new(tokens, e.prompt_tokens.len()) }
}

/// How well final-token probabilities predict correctness: `orm/accuracy` (at 0.5),
/// `orm/auroc`, `orm/ece` (10 bins), `orm/brier`, the base rate `orm/positive_rate`, and
/// `orm/auroc_within`: the AUROC over pairs of a right and a wrong solution to the same question
/// — what reranking needs, since telling easy questions from hard ones does not help it.
pub fn classifier_metrics(episodes: &[Episode], probabilities: &[Vec<f32>]) -> Metrics {
    if episodes.is_empty() {
        return Metrics::new();
    }
    let p: Vec<f64> = probabilities.iter().map(|p| p.last().copied().unwrap_or(0.5) as f64).collect();
    let y: Vec<bool> = episodes.iter().map(|e| e.correct).collect();
    let n = p.len() as f64;
    let accuracy = p.iter().zip(&y).filter(|(p, y)| (**p >= 0.5) == **y).count() as f64 / n;
    let brier = p.iter().zip(&y).map(|(p, &y)| (p - y as u8 as f64).powi(2)).sum::<f64>() / n;
    let mut by_question: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, e) in episodes.iter().enumerate() {
        by_question.entry(e.problem_id.as_str()).or_default().push(i);
    }
    let (mut pairs, mut ordered) = (0.0, 0.0);
    for members in by_question.values() {
        for &a in members.iter().filter(|&&i| y[i]) {
            for &b in members.iter().filter(|&&i| !y[i]) {
                pairs += 1.0;
                ordered += if p[a] > p[b] {
                    1.0
                } else if p[a] == p[b] {
                    0.5
                } else {
                    0.0
                };
            }
        }
    }
    Metrics::from([
        ("orm/auroc_within".into(), if pairs > 0.0 { ordered / pairs } else { f64::NAN }),
        ("orm/accuracy".into(), accuracy),
        ("orm/auroc".into(), auroc(&p, &y)),
        ("orm/ece".into(), expected_calibration_error(&p, &y, 10)),
        ("orm/brier".into(), brier),
        ("orm/positive_rate".into(), y.iter().filter(|&&y| y).count() as f64 / n),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn episode(problem: &str, correct: bool) -> Episode {
        Episode {
            problem_id: problem.into(),
            sample_index: 0,
            prompt_tokens: vec![1],
            response_tokens: vec![2],
            text: String::new(),
            logprobs: vec![],
            finish: crate::sample::Finish::Stop,
            extracted_answer: None,
            reference_answer: String::new(),
            correct,
        }
    }

    #[test]
    fn mixed_questions_keep_both_outcomes_and_drop_the_rest() {
        let mut episodes =
            vec![episode("a", true), episode("a", false), episode("b", true), episode("b", true), episode("c", false)];
        keep_mixed_questions(&mut episodes);
        let kept: Vec<_> = episodes.iter().map(|e| (e.problem_id.as_str(), e.correct)).collect();
        assert_eq!(kept, [("a", true), ("a", false)]);
    }

    #[test]
    fn ranking_within_a_question_is_measured_apart_from_difficulty() {
        // Question a is scored high, b low, and inside each question the wrong solution
        // outranks the right one.
        let episodes = [episode("a", true), episode("a", false), episode("b", true), episode("b", false)];
        let p = [vec![0.5, 0.8], vec![0.5, 0.9], vec![0.5, 0.2], vec![0.5, 0.3]];
        let m = classifier_metrics(&episodes, &p);
        assert_eq!(m["orm/auroc_within"], 0.0);
        // All pairs: 0.8 > 0.9 no, 0.8 > 0.3 yes, 0.2 > 0.9 no, 0.2 > 0.3 no.
        assert_eq!(m["orm/auroc"], 0.25);
    }
}
