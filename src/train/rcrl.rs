//! Return-Conditioned RL (Havrilla et al. 2024, section 3; after Decision Transformer and Quark):
//! sample solutions from the policy, label them `[GOOD]` or `[BAD]` — the whole solution by its
//! final answer (sparse), or each step by the heuristic dense reward or the ORM (dense) — and
//! fine-tune on the labelled solutions with each label token in front of what it labels. Sampling
//! then conditions on `[GOOD]` (before every step in the dense variants). Rounds as in EI: each
//! round samples from the policy conditioned on `[GOOD]` (the first from the starting policy, which
//! has not learnt the labels yet), adds the labelled solutions to the pool and fine-tunes on it.

use super::ei::start_round;
use super::rounds::{
    check_dedup, dedup_key, evaluate_policy, fresh_round_dir, log_round, resume_round, save_round, RoundEval,
    RoundSampling,
};
use super::{prepare_run_dir, Example, Metrics, Objective, RunConfig, TrainConfig, Trainer};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::model::CausalLm;
use crate::prompt::{PromptConfig, Prompter};
use crate::reward::{heuristic_checks, heuristic_step_rewards, split_steps, Orm};
use crate::rollout::{rollout_with, Episode};
use crate::task::{Problem, Split, TaskSpec};
use crate::tokenizer::Tokenizer;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

pub const GOOD: &str = "[GOOD]";
pub const BAD: &str = "[BAD]";

/// `reasonrl rcrl` settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RcrlConfig {
    pub run: RunConfig,
    /// The starting policy (and the base that `reset_to_base` restarts from).
    pub model: PathBuf,
    pub task: String,
    pub rounds: usize,
    /// Training questions sampled each round (the first N of the train split; 0 = all).
    pub questions: usize,
    pub seed: u64,
    /// Fine-tune each round from the base model (true) or from the current policy.
    pub reset_to_base: bool,
    /// "outcome": one label per solution, by its final answer; "heuristic": one per step, by the
    /// heuristic dense reward; "orm": one per step, `[GOOD]` when the ORM's probability at the
    /// step's end is at least `orm_threshold`.
    pub labels: String,
    pub orm: PathBuf,
    pub orm_threshold: f64,
    /// Put the reference solutions in the pool too, labelled `[GOOD]` throughout.
    pub include_references: bool,
    /// Duplicates: "text" or "results" (as in EI).
    pub dedup: String,
    pub prompt: PromptConfig,
    pub sampling: RoundSampling,
    /// The engine that samples each round (`local`, or OpenAI-compatible servers synced with the
    /// policy before every round).
    pub rollout: crate::engine::RolloutConfig,
    pub train: TrainConfig,
    /// LoRA adapters instead of full fine-tuning, when `[lora]` is present.
    pub lora: Option<crate::model::lora::LoraConfig>,
    pub eval: RoundEval,
}

impl Default for RcrlConfig {
    fn default() -> Self {
        RcrlConfig {
            run: RunConfig { name: "rcrl".into(), ..RunConfig::default() },
            model: PathBuf::new(),
            task: "builtin".into(),
            rounds: 2,
            questions: 0,
            seed: 0,
            reset_to_base: true,
            labels: "outcome".into(),
            orm: PathBuf::new(),
            orm_threshold: 0.5,
            include_references: false,
            dedup: "text".into(),
            prompt: PromptConfig::default(),
            sampling: RoundSampling::default(),
            rollout: crate::engine::RolloutConfig::default(),
            lora: None,
            train: TrainConfig::default(),
            eval: RoundEval::default(),
        }
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
    mode: &'a str,
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
                if self.mode == "outcome" {
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
    check_dedup(&cfg.dedup)?;
    let per_step = match cfg.labels.as_str() {
        "outcome" => false,
        "heuristic" | "orm" => true,
        other => return Err(Error::Invalid(format!("labels `{other}`: use outcome, heuristic or orm"))),
    };
    if per_step && cfg.rollout.engine != crate::engine::EngineKind::Local {
        // An engine cannot feed [GOOD] after every line it writes.
        return Err(Error::Invalid(format!(
            "labels `{}` condition every step: use rollout.engine = \"local\"",
            cfg.labels
        )));
    }
    let dir = cfg.run.dir();
    prepare_run_dir(&dir, &crate::config::to_toml(cfg), resume, force)?;
    let device = crate::parse_device(&cfg.run.device)?;
    let (mut policy, mut tokenizer) = CausalLm::load_with_tokenizer(&cfg.model, device, false)?;
    let controls = Controls::add(&mut policy, &mut tokenizer)?;
    let base = dir.join("base");
    policy.save_with_tokenizer(&tokenizer, &base, true)?;
    policy.maybe_add_lora(cfg.lora.as_ref(), &base)?;
    let orm = match cfg.labels.as_str() {
        "orm" => Some((Orm::load(&cfg.orm, device)?, cfg.orm_threshold)),
        _ => None,
    };
    let labeller =
        Labeller { mode: &cfg.labels, tokenizer: &tokenizer, newlines: tokenizer.newline_counts()?, controls, orm };

    let task = TaskSpec::parse(&cfg.task)?;
    let questions = task.load(Split::Train, (cfg.questions > 0).then_some(cfg.questions))?;
    let test = task.load(Split::Test, (cfg.eval.problems > 0).then_some(cfg.eval.problems))?;
    let prompter = Prompter::new(&cfg.prompt, &questions)?.unconditioned();
    let good_prompter = prompter.clone().conditioned(GOOD, per_step);
    let index: HashMap<&str, usize> = questions.iter().enumerate().map(|(i, q)| (q.id.as_str(), i)).collect();
    let checkpoints = super::checkpoint::Checkpoints::new(&dir, 2);

    let mut engine = Engine::new(&cfg.rollout, &dir.join("engine"), true)?;
    let mut pool = Pool::default();
    let (mut done, mut samples_seen) = (0, 0);
    if resume {
        (done, samples_seen, pool) = resume_round(&checkpoints, &mut policy)?;
    } else {
        if cfg.include_references {
            for (i, q) in questions.iter().enumerate() {
                let text = q.reference_solution.trim_end();
                pool.seen.insert((i, dedup_key(&cfg.dedup, text)));
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
        let line = evaluate_policy(&policy, &tokenizer, &prompter, &test, &cfg.eval, cfg.seed)?;
        log_round(&checkpoints, line, 0, 0)?;
    }
    for round in done + 1..=cfg.rounds {
        // 1. Sample, as a good solver once the policy knows what [GOOD] means.
        let sampler = if round == 1 { &prompter } else { &good_prompter };
        engine.sync(&policy, &tokenizer)?;
        let sampling = cfg.sampling.config(cfg.seed, round);
        let episodes = rollout_with(&engine, &policy, &tokenizer, sampler, &questions, &sampling)?;
        samples_seen += episodes.len();
        let (total, correct) = (episodes.len(), episodes.iter().filter(|e| e.correct).count());
        // 2. Label every new solution, right or wrong, and pool it.
        let fresh: Vec<Episode> = episodes
            .into_iter()
            .filter(|e| pool.seen.insert((index[e.problem_id.as_str()], dedup_key(&cfg.dedup, &e.text))))
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
        start_round(&mut policy, &base, cfg.reset_to_base, cfg.seed.wrapping_add(round as u64))?;
        let mut trainer =
            Trainer::new(&mut policy, &tokenizer, cfg.train.clone(), &fresh_round_dir(&dir, round)?, false)?;
        trainer.objective = Objective::LanguageModel { context_only: vec![controls.good, controls.bad] };
        trainer.train(&examples, &mut |_, _| Ok(Metrics::new()))?;
        // 4. Evaluate conditioned on [GOOD], and log.
        let mut line = evaluate_policy(&policy, &tokenizer, &good_prompter, &test, &cfg.eval, cfg.seed)?;
        line.extend([
            ("pool_size".into(), pool.solutions.len() as f64),
            ("pool_good_label_fraction".into(), good_fraction),
        ]);
        log_round(&checkpoints, line, round, samples_seen)?;
        save_round(&checkpoints, &policy, &tokenizer, round, samples_seen, &pool)?;
    }
    let last = dir.join("final");
    policy.save_with_tokenizer(&tokenizer, &last, true)?;
    Ok(last)
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
        let (_, targets) = super::super::collate(&[&e], 0, &[90, 91], tch::Device::Cpu);
        let targets = Vec::<i64>::try_from(targets.reshape([-1])).unwrap();
        assert_eq!(targets, vec![-100, -100, -100, 5, 6, 10, -100, 7, 10, 0]);
    }
}
