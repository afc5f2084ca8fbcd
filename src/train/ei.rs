//! Expert Iteration (Havrilla et al. 2024, section 3; trlX's RFT trainer): for R rounds, sample K
//! solutions per training question from the current policy, keep the correct ones, deduplicate,
//! add them to the pool of all rounds so far, and fine-tune on the pool — from the base model by
//! default (the paper resets every round), or from the current policy.

use super::sft::solution_example;
use super::{prepare_run_dir, Metrics, RunConfig, TrainConfig, Trainer};
use crate::error::{Error, Result};
use crate::eval::run::{sample_episodes, SampleSpec};
use crate::eval::{evaluate, EvalOptions};
use crate::model::CausalLm;
use crate::prompt::{PromptConfig, Prompter};
use crate::rollout::rollout;
use crate::sample::SamplingConfig;
use crate::task::{intermediate_results, Split, TaskSpec};
use std::collections::HashSet;
use std::path::PathBuf;

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
    /// K: solutions sampled per question per round (the paper: 96).
    pub samples_per_question: usize,
    pub temperature: f64,
    pub top_p: f64,
    pub max_new_tokens: usize,
    pub batch_size: usize,
    pub seed: u64,
    /// Fine-tune each round from the base model (true, the paper) or from the current policy.
    pub reset_to_base: bool,
    /// Put the reference solutions in the pool too.
    pub include_references: bool,
    /// Duplicates: "text" (whitespace-normalised text) or "results" (the same sequence of
    /// intermediate results).
    pub dedup: String,
    pub prompt: PromptConfig,
    /// Fine-tuning on the pool each round.
    pub train: TrainConfig,
    pub eval: EiEval,
}

/// Test-split evaluation after every round (`[eval]`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EiEval {
    pub problems: usize,
    pub samples: usize,
    pub temperature: f64,
    pub ks: Vec<usize>,
    pub max_new_tokens: usize,
    pub batch_size: usize,
}

impl Default for EiEval {
    fn default() -> Self {
        EiEval {
            problems: 500,
            samples: 16,
            temperature: 0.7,
            ks: vec![1, 4, 16],
            max_new_tokens: 160,
            batch_size: 128,
        }
    }
}

impl Default for EiConfig {
    fn default() -> Self {
        EiConfig {
            run: RunConfig { name: "ei".into(), ..RunConfig::default() },
            model: PathBuf::new(),
            task: "builtin".into(),
            rounds: 3,
            questions: 0,
            samples_per_question: 8,
            temperature: 0.8,
            top_p: 1.0,
            max_new_tokens: 160,
            batch_size: 128,
            seed: 0,
            reset_to_base: true,
            include_references: false,
            dedup: "text".into(),
            prompt: PromptConfig::default(),
            train: TrainConfig::default(),
            eval: EiEval::default(),
        }
    }
}

/// Runs Expert Iteration; the last round's policy ends in `RUN/final`. Per-round figures go to
/// `RUN/metrics.jsonl` (x axis: `samples_seen`, the paper's sample complexity).
pub fn run(cfg: &EiConfig, force: bool) -> Result<PathBuf> {
    if !["text", "results"].contains(&cfg.dedup.as_str()) {
        return Err(Error::Invalid(format!("dedup `{}`: use text or results", cfg.dedup)));
    }
    let dir = cfg.run.dir();
    prepare_run_dir(&dir, &crate::config::to_toml(cfg), false, force)?;
    let device = crate::parse_device(&cfg.run.device)?;
    let (mut policy, tokenizer) = CausalLm::load_with_tokenizer(&cfg.model, device, false)?;
    let task = TaskSpec::parse(&cfg.task)?;
    let questions = task.load(Split::Train, (cfg.questions > 0).then_some(cfg.questions))?;
    let test = task.load(Split::Test, (cfg.eval.problems > 0).then_some(cfg.eval.problems))?;
    let prompter = Prompter::new(&cfg.prompt, &questions)?;
    let checkpoints = super::checkpoint::Checkpoints::new(&dir, 1);

    let mut pool: Vec<(usize, String)> = Vec::new();
    let mut seen: HashSet<(usize, String)> = HashSet::new();
    if cfg.include_references {
        for (i, q) in questions.iter().enumerate() {
            seen.insert((i, dedup_key(&cfg.dedup, &q.reference_solution)));
            pool.push((i, q.reference_solution.clone()));
        }
    }
    let index: std::collections::HashMap<&str, usize> =
        questions.iter().enumerate().map(|(i, q)| (q.id.as_str(), i)).collect();
    let mut samples_seen = 0usize;
    let mut line = evaluate_policy(&policy, &tokenizer, &prompter, &test, cfg)?;
    line.extend([("round".into(), 0.0), ("samples_seen".into(), 0.0), ("step".into(), 0.0)]);
    report(&line);
    checkpoints.log(&line)?;
    for round in 1..=cfg.rounds {
        // 1. Sample K solutions per question from the current policy.
        let sampling = SamplingConfig {
            max_new_tokens: cfg.max_new_tokens,
            temperature: cfg.temperature,
            top_p: cfg.top_p,
            samples_per_prompt: cfg.samples_per_question,
            batch_size: cfg.batch_size,
            seed: cfg.seed + round as u64,
            ..SamplingConfig::default()
        };
        let episodes = rollout(&policy, &tokenizer, &prompter, &questions, &sampling)?;
        samples_seen += episodes.len();
        // 2. Keep the correct ones, deduplicated, in the pool of all rounds.
        let mut solved = HashSet::new();
        for e in episodes.iter().filter(|e| e.correct) {
            let i = index[e.problem_id.as_str()];
            solved.insert(i);
            if seen.insert((i, dedup_key(&cfg.dedup, &e.text))) {
                pool.push((i, e.text.clone()));
            }
        }
        eprintln!(
            "round {round}: {} samples, {} of {} questions solved, pool {}",
            episodes.len(),
            solved.len(),
            questions.len(),
            pool.len()
        );
        // 3. Fine-tune on the pool, from the base model or the current policy.
        let examples = pool
            .iter()
            .map(|(i, text)| solution_example(&tokenizer, &prompter, &questions[*i].question, text))
            .collect::<Result<Vec<_>>>()?;
        if examples.is_empty() {
            eprintln!("round {round}: nothing correct to learn from yet; the policy stays as it is");
        } else {
            if cfg.reset_to_base {
                policy = CausalLm::load(&cfg.model, device, false)?;
            }
            let round_dir = dir.join(format!("round-{round}"));
            let mut trainer = Trainer::new(&mut policy, &tokenizer, cfg.train.clone(), &round_dir, false)?;
            trainer.train(&examples, &mut |_, _| Ok(Metrics::new()))?;
        }
        // 4. Evaluate and log the round.
        let mut line = evaluate_policy(&policy, &tokenizer, &prompter, &test, cfg)?;
        let questions_with_pool = pool.iter().map(|(i, _)| *i).collect::<HashSet<_>>().len();
        line.extend([
            ("round".into(), round as f64),
            ("step".into(), round as f64),
            ("samples_seen".into(), samples_seen as f64),
            ("solved_fraction".into(), solved.len() as f64 / questions.len() as f64),
            ("pool_size".into(), pool.len() as f64),
            ("pool_solutions_per_question".into(), pool.len() as f64 / questions_with_pool.max(1) as f64),
        ]);
        report(&line);
        checkpoints.log(&line)?;
    }
    let last = dir.join("final");
    policy.save_with_tokenizer(&tokenizer, &last, true)?;
    Ok(last)
}

/// Two solutions are duplicates when their whitespace-normalised texts are equal, or (`results`)
/// when they compute the same intermediate results in the same order.
fn dedup_key(mode: &str, text: &str) -> String {
    match mode {
        "results" => format!("{:?}", intermediate_results(text)),
        _ => text.split_whitespace().collect::<Vec<_>>().join(" "),
    }
}

fn evaluate_policy(
    policy: &CausalLm,
    tokenizer: &crate::tokenizer::Tokenizer,
    prompter: &Prompter,
    test: &[crate::task::Problem],
    cfg: &EiConfig,
) -> Result<Metrics> {
    let spec = SampleSpec {
        samples: cfg.eval.samples,
        temperature: cfg.eval.temperature,
        top_p: 1.0,
        max_new_tokens: cfg.eval.max_new_tokens,
        batch_size: cfg.eval.batch_size,
        seed: cfg.seed,
    };
    let (greedy, samples) = sample_episodes(policy, tokenizer, prompter, test, &spec)?;
    let ks = if samples.is_empty() { vec![] } else { cfg.eval.ks.clone() };
    let opts = EvalOptions { ks, temperature: Some(cfg.eval.temperature), ..EvalOptions::default() };
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

fn report(line: &Metrics) {
    let shown: Vec<String> = line
        .iter()
        .filter(|(k, _)| !k.ends_with("_lo") && !k.ends_with("_hi"))
        .map(|(k, v)| format!("{k} {v:.4}"))
        .collect();
    eprintln!("{}", shown.join(", "));
}
