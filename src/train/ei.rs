//! Expert Iteration (Havrilla et al. 2024, section 3; trlX's RFT trainer): for R rounds, sample K
//! solutions per training question from the current policy, keep the correct ones, deduplicate,
//! add them to the pool of all rounds so far, and fine-tune on the pool — from the base model by
//! default (the paper resets every round), or from the current policy.

use super::rounds::{
    check_dedup, dedup_key, evaluate_policy, fresh_round_dir, log_round, resume_round, save_round, RoundEval,
    RoundSampling,
};
use super::sft::solution_example;
use super::{prepare_run_dir, Metrics, RunConfig, TrainConfig, Trainer};
use crate::engine::Engine;
use crate::error::Result;
use crate::model::CausalLm;
use crate::prompt::{PromptConfig, Prompter};
use crate::rollout::rollout_with;
use crate::task::{Split, TaskSpec};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// `reasonrl ei` settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EiConfig {
    pub run: RunConfig,
    /// The starting policy, and the base every round restarts from (`reset_to_base`).
    pub model: PathBuf,
    pub task: String,
    pub rounds: usize,
    /// Training questions sampled each round (the first N of the train split; 0 = all).
    pub questions: usize,
    pub seed: u64,
    /// Fine-tune each round from the base model (true, the paper) or from the current policy.
    pub reset_to_base: bool,
    /// Put the reference solutions in the pool too.
    pub include_references: bool,
    /// Duplicates: "text" (whitespace-normalised text) or "results" (the same sequence of
    /// intermediate results).
    pub dedup: String,
    pub prompt: PromptConfig,
    pub sampling: RoundSampling,
    /// The engine that samples each round (`local`, or OpenAI-compatible servers synced with the
    /// policy before every round).
    pub rollout: crate::engine::RolloutConfig,
    /// Fine-tuning on the pool each round.
    pub train: TrainConfig,
    /// LoRA adapters instead of full fine-tuning, when `[lora]` is present.
    pub lora: Option<crate::model::lora::LoraConfig>,
    pub eval: RoundEval,
}

impl Default for EiConfig {
    fn default() -> Self {
        EiConfig {
            run: RunConfig { name: "ei".into(), ..RunConfig::default() },
            model: PathBuf::new(),
            task: "builtin".into(),
            rounds: 3,
            questions: 0,
            seed: 0,
            reset_to_base: true,
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

/// The correct solutions of every round so far, one per duplicate class, as (question index,
/// text).
#[derive(Debug, Default)]
pub struct Pool {
    dedup: String,
    seen: HashSet<(usize, String)>,
    pub solutions: Vec<(usize, String)>,
}

impl Pool {
    pub fn new(dedup: &str) -> Self {
        Pool { dedup: dedup.into(), ..Pool::default() }
    }

    /// Adds a solution unless the question already has a duplicate of it; true when added.
    pub fn add(&mut self, question: usize, text: &str) -> bool {
        let fresh = self.seen.insert((question, dedup_key(&self.dedup, text)));
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

/// Runs Expert Iteration; the last round's policy ends in `RUN/final`. Per-round figures go to
/// `RUN/metrics.jsonl` (x axis: `samples_seen`, the paper's sample complexity). Each round ends
/// with a checkpoint (policy and pool); `resume` continues after the newest.
pub fn run(cfg: &EiConfig, resume: bool, force: bool) -> Result<PathBuf> {
    check_dedup(&cfg.dedup)?;
    let dir = cfg.run.dir();
    prepare_run_dir(&dir, &crate::config::to_toml(cfg), resume, force)?;
    let device = crate::parse_device(&cfg.run.device)?;
    let (mut policy, tokenizer) = CausalLm::load_with_tokenizer(&cfg.model, device, false)?;
    policy.maybe_add_lora(cfg.lora.as_ref(), &cfg.model)?;
    let task = TaskSpec::parse(&cfg.task)?;
    let questions = task.load(Split::Train, (cfg.questions > 0).then_some(cfg.questions))?;
    let test = task.load(Split::Test, (cfg.eval.problems > 0).then_some(cfg.eval.problems))?;
    let prompter = Prompter::new(&cfg.prompt, &questions)?;
    let checkpoints = super::checkpoint::Checkpoints::new(&dir, 2);
    let index: HashMap<&str, usize> = questions.iter().enumerate().map(|(i, q)| (q.id.as_str(), i)).collect();

    let mut engine = Engine::new(&cfg.rollout, &dir.join("engine"), true)?;
    let mut pool = Pool::new(&cfg.dedup);
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
        let line = evaluate_policy(&policy, &tokenizer, &prompter, &test, &cfg.eval, cfg.seed)?;
        log_round(&checkpoints, line, 0, 0)?;
    }
    for round in done + 1..=cfg.rounds {
        // 1. Sample K solutions per question from the current policy.
        engine.sync(&policy, &tokenizer)?;
        let sampling = cfg.sampling.config(cfg.seed, round);
        let episodes = rollout_with(&engine, &policy, &tokenizer, &prompter, &questions, &sampling)?;
        samples_seen += episodes.len();
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
            start_round(&mut policy, &cfg.model, cfg.reset_to_base, cfg.seed.wrapping_add(round as u64))?;
            let round_dir = fresh_round_dir(&dir, round)?;
            let mut trainer = Trainer::new(&mut policy, &tokenizer, cfg.train.clone(), &round_dir, false)?;
            trainer.train(&examples, &mut |_, _| Ok(Metrics::new()))?;
        }
        // 4. Evaluate and log the round.
        let mut line = evaluate_policy(&policy, &tokenizer, &prompter, &test, &cfg.eval, cfg.seed)?;
        line.extend([
            ("solved_fraction".into(), solved.len() as f64 / questions.len() as f64),
            ("pool_size".into(), pool.solutions.len() as f64),
            ("pool_solutions_per_question".into(), pool.solutions.len() as f64 / pool.questions().max(1) as f64),
        ]);
        log_round(&checkpoints, line, round, samples_seen)?;
        save_round(&checkpoints, &policy, &tokenizer, round, samples_seen, &pool.solutions)?;
    }
    let last = dir.join("final");
    policy.save_with_tokenizer(&tokenizer, &last, true)?;
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_keeps_one_solution_per_duplicate_class_across_rounds() {
        let mut pool = Pool::new("text");
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

        let mut by_results = Pool::new("results");
        assert!(by_results.add(0, "Tom has 1+1 = <<1+1=2>>2 pens.\n#### 2"));
        assert!(!by_results.add(0, "So 1 + 1 = <<1+1=2>>2.\n#### 2"), "same intermediate results");
        assert!(by_results.add(0, "2 * 1 = <<2*1=2>>2\n2 + 0 = <<2+0=2>>2\n#### 2"), "another sequence");
    }

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
