//! `reasonrl eval`: one greedy pass (maj@1) and one pass of n samples at temperature T per
//! problem, from which every metric is computed; or the same metrics from the episodes of an
//! earlier run (`reuse`), without sampling again.

use super::{
    evaluate, paired_differences, read_episodes, read_records, summary_markdown, write_report, EvalOptions,
    EvalSummary, MeanLogprobScorer, Scorer,
};
use crate::engine::{Engine, RolloutConfig};
use crate::error::{Error, Result};
use crate::fsutil;
use crate::model::CausalLm;
use crate::prompt::{PromptConfig, Prompter};
use crate::reward::Orm;
use crate::rollout::{rollout_with, Episode};
use crate::sample::SamplingConfig;
use crate::task::{Split, TaskSpec};
use std::path::{Path, PathBuf};

/// `reasonrl eval` settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalConfig {
    /// Model folder.
    pub model: PathBuf,
    pub task: String,
    /// "test" or "train".
    pub split: String,
    /// Problems evaluated (the first N of the split; 0 = all).
    pub problems: usize,
    /// Samples per problem for maj@k / pass@k / rerank@k / wmaj@k (0 = greedy only).
    pub samples: usize,
    /// Sample only the first N problems (0 = all); the greedy pass covers every problem, so
    /// maj@1 can be measured on thousands of problems and the k-sample metrics on hundreds.
    pub sampled_problems: usize,
    pub temperature: f64,
    pub top_p: f64,
    /// The k of maj@k, pass@k and rerank@k (each at most `samples`).
    pub ks: Vec<usize>,
    pub max_new_tokens: usize,
    pub batch_size: usize,
    pub seed: u64,
    pub bootstrap_resamples: usize,
    /// Scorer for rerank@k and wmaj@k: "" (none), "mean-logprob" (the policy's own confidence)
    /// or the folder of an ORM trained with `reasonrl orm`.
    pub scorer: String,
    pub prompt: PromptConfig,
    /// The engine that samples (`local`, or OpenAI-compatible servers).
    pub rollout: RolloutConfig,
    /// Output folder: greedy.jsonl, samples.jsonl, records.jsonl, summary.json, summary.md.
    pub out: PathBuf,
    /// Score the episodes saved in this earlier output folder instead of sampling.
    pub reuse: Option<PathBuf>,
    /// An earlier output folder (same problems) to compare with: paired differences with 95%
    /// intervals, written to comparison.md.
    pub baseline: Option<PathBuf>,
    pub device: String,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            model: PathBuf::new(),
            task: "builtin".into(),
            split: "test".into(),
            problems: 0,
            samples: 16,
            sampled_problems: 0,
            temperature: 0.7,
            top_p: 1.0,
            ks: vec![1, 4, 16],
            max_new_tokens: 256,
            batch_size: 64,
            seed: 0,
            bootstrap_resamples: 1000,
            scorer: String::new(),
            prompt: PromptConfig::default(),
            rollout: RolloutConfig::default(),
            out: "runs/eval".into(),
            reuse: None,
            baseline: None,
            device: "cpu".into(),
        }
    }
}

/// Samples (or reloads) and evaluates; writes everything into `cfg.out`.
pub fn run(cfg: &EvalConfig, force: bool) -> Result<EvalSummary> {
    fsutil::check_overwrite(&cfg.out.join("summary.json"), force)?;
    let (greedy, samples) = match &cfg.reuse {
        Some(dir) => (read_optional(&dir.join("greedy.jsonl"))?, read_optional(&dir.join("samples.jsonl"))?),
        None => sample(cfg)?,
    };
    let scores = match cfg.scorer.as_str() {
        "" => None,
        "mean-logprob" => Some(MeanLogprobScorer.score(&samples)?),
        path => Some(Orm::load(Path::new(path), crate::parse_device(&cfg.device)?)?.score(&samples)?),
    };
    let opts = EvalOptions {
        ks: if samples.is_empty() { vec![] } else { cfg.ks.clone() },
        bootstrap_resamples: cfg.bootstrap_resamples,
        seed: cfg.seed,
        temperature: (!samples.is_empty()).then_some(cfg.temperature),
    };
    let (records, summary) = evaluate(&greedy, &samples, scores.as_deref(), &opts)?;
    if cfg.reuse.as_deref() != Some(cfg.out.as_path()) {
        fsutil::write_jsonl(&cfg.out.join("greedy.jsonl"), &greedy)?;
        fsutil::write_jsonl(&cfg.out.join("samples.jsonl"), &samples)?;
    }
    let title = format!("{} on {} ({})", cfg.model.display(), cfg.task, cfg.split);
    fsutil::write_atomic(&cfg.out.join("config.toml"), |w| w.write_all(crate::config::to_toml(cfg).as_bytes()))?;
    write_report(&cfg.out, &records, &summary, &title)?;
    print!("{}", summary_markdown(&summary, &title));
    if let Some(baseline) = &cfg.baseline {
        let base = read_records(&baseline.join("records.jsonl"))?;
        let diffs = paired_differences(&records, &base, cfg.bootstrap_resamples, cfg.seed)?;
        let mut md = format!("\nPaired difference vs {} (same problems):\n\n", baseline.display());
        md.push_str("| metric | difference | 95% CI |\n|---|---:|---|\n");
        for (name, m) in &diffs {
            let name = if name == "maj@1" { "maj@1 (greedy)" } else { name };
            md.push_str(&format!(
                "| {name} | {:+.1} pts | [{:+.1}, {:+.1}] |\n",
                100.0 * m.value,
                100.0 * m.lo,
                100.0 * m.hi
            ));
        }
        fsutil::write_atomic(&cfg.out.join("comparison.md"), |w| w.write_all(md.as_bytes()))?;
        print!("{md}");
    }
    Ok(summary)
}

fn sample(cfg: &EvalConfig) -> Result<(Vec<Episode>, Vec<Episode>)> {
    let split = match cfg.split.as_str() {
        "test" => Split::Test,
        "train" => Split::Train,
        other => return Err(Error::Invalid(format!("unknown split `{other}` (use test or train)"))),
    };
    let device = crate::parse_device(&cfg.device)?;
    let (model, tokenizer) = CausalLm::load_with_tokenizer(&cfg.model, device, false)?;
    let task = TaskSpec::parse(&cfg.task)?;
    let problems = task.load(split, (cfg.problems > 0).then_some(cfg.problems))?;
    let prompter = Prompter::for_task(&cfg.prompt, &task)?;
    let mut engine = Engine::new(&cfg.rollout, &cfg.out.join("engine"), false)?;
    engine.sync(&model, &tokenizer)?;
    let spec = SampleSpec {
        samples: cfg.samples,
        sampled_problems: cfg.sampled_problems,
        temperature: cfg.temperature,
        top_p: cfg.top_p,
        max_new_tokens: cfg.max_new_tokens,
        batch_size: cfg.batch_size,
        seed: cfg.seed,
    };
    sample_episodes(&engine, &model, &tokenizer, &prompter, &problems, &spec)
}

/// What an evaluation samples per problem: one greedy solution and `samples` at `temperature`.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleSpec {
    pub samples: usize,
    /// Samples are drawn for the first N problems only (0 = all); greedy covers all.
    pub sampled_problems: usize,
    pub temperature: f64,
    pub top_p: f64,
    pub max_new_tokens: usize,
    pub batch_size: usize,
    pub seed: u64,
}

/// The greedy episodes and the sampled ones, for [`evaluate`], from `engine` (or `model` when it
/// is local).
pub fn sample_episodes(
    engine: &Engine,
    model: &CausalLm,
    tokenizer: &crate::tokenizer::Tokenizer,
    prompter: &Prompter,
    problems: &[crate::task::Problem],
    spec: &SampleSpec,
) -> Result<(Vec<Episode>, Vec<Episode>)> {
    let base = SamplingConfig {
        max_new_tokens: spec.max_new_tokens,
        batch_size: spec.batch_size,
        seed: spec.seed,
        top_p: spec.top_p,
        ..SamplingConfig::default()
    };
    let start = std::time::Instant::now();
    let greedy = rollout_with(
        engine,
        model,
        tokenizer,
        prompter,
        problems,
        &SamplingConfig { temperature: 0.0, ..base.clone() },
    )?;
    let samples = if spec.samples > 0 {
        let sampled = SamplingConfig { temperature: spec.temperature, samples_per_prompt: spec.samples, ..base };
        let n = if spec.sampled_problems == 0 { problems.len() } else { spec.sampled_problems.min(problems.len()) };
        rollout_with(engine, model, tokenizer, prompter, &problems[..n], &sampled)?
    } else {
        Vec::new()
    };
    let tokens: usize = greedy.iter().chain(&samples).map(|e| e.response_tokens.len()).sum();
    let seconds = start.elapsed().as_secs_f64();
    eprintln!(
        "sampled {} problems greedily and {} x {} at temperature: {tokens} tokens in {seconds:.1}s ({:.0} tokens/s)",
        problems.len(),
        samples.len() / spec.samples.max(1),
        spec.samples,
        tokens as f64 / seconds
    );
    Ok((greedy, samples))
}

fn read_optional(path: &Path) -> Result<Vec<Episode>> {
    if path.exists() {
        read_episodes(path)
    } else {
        Ok(Vec::new())
    }
}
