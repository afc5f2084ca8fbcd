//! `reasonrl eval`: one greedy pass (maj@1) and one pass of n samples at temperature T per
//! problem, from which every metric is computed; or the same metrics from the episodes of an
//! earlier run (`reuse`), without sampling again.

use super::policy::{sample_episodes, EvalSpec};
use super::{
    evaluate, paired_differences, read_episodes, read_records, summary_markdown, write_report, EvalOptions, EvalSummary,
};
use crate::engine::{Engine, RolloutConfig};
use crate::error::Result;
use crate::fsutil;
use crate::model::CausalLm;
use crate::prompt::{PromptConfig, Prompter};
use crate::reward::{Orm, RewardConfig, RewardKind, Rewarder};
use crate::rollout::{Episode, MeanLogprobScorer, Scorer};
use crate::task::{Split, TaskSpec};
use crate::tokenizer::Tokenizer;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What ranks samples for rerank@k and wmaj@k.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ScorerKind {
    /// No scorer: no rerank@k or wmaj@k.
    None,
    /// The policy's own confidence (the geometric mean of its token probabilities).
    MeanLogprob,
    /// The ORM in `orm`, trained with `reasonrl orm`.
    Orm,
}

/// `reasonrl eval` settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct EvalConfig {
    /// Model folder.
    pub model: PathBuf,
    pub task: String,
    pub split: Split,
    /// The problems (0 = all of the split) and the passes over them.
    #[serde(flatten)]
    pub eval: EvalSpec,
    pub seed: u64,
    pub bootstrap_resamples: usize,
    pub scorer: ScorerKind,
    /// The ORM folder, for `scorer = "orm"`.
    pub orm: PathBuf,
    pub prompt: PromptConfig,
    /// The engine that samples (`local`, or OpenAI-compatible servers).
    pub rollout: RolloutConfig,
    /// Output folder: greedy.jsonl, samples.jsonl, records.jsonl, summary.json, summary.md.
    pub out: PathBuf,
    /// Score the episodes saved in this earlier output folder instead of sampling (graded afresh
    /// with this checker, their stored verdicts ignored).
    pub reuse: Option<PathBuf>,
    /// An earlier output folder (same problems) to compare with: paired differences with 95%
    /// intervals, written to comparison.md.
    pub baseline: Option<PathBuf>,
    pub device: String,
    /// A verifier (`kind = "command"` or `"http"`, or weighted terms) judges the episodes in
    /// place of the built-in check: correct when the reward reaches `threshold`; its means are
    /// reported beside maj@k (also on `reuse`).
    pub reward: RewardConfig,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            model: PathBuf::new(),
            task: "builtin".into(),
            split: Split::Test,
            eval: EvalSpec { problems: 0, ..EvalSpec::default() },
            seed: 0,
            bootstrap_resamples: 1000,
            scorer: ScorerKind::None,
            orm: PathBuf::new(),
            prompt: PromptConfig::default(),
            rollout: RolloutConfig::default(),
            out: "runs/eval".into(),
            reuse: None,
            baseline: None,
            device: "cpu".into(),
            reward: RewardConfig::default(),
        }
    }
}

impl crate::config::Config for EvalConfig {
    fn check(&self) -> std::result::Result<(), String> {
        if self.scorer == ScorerKind::Orm && self.orm.as_os_str().is_empty() {
            return Err("`scorer` = \"orm\" needs `orm`, an ORM folder".into());
        }
        self.reward.check_outcome("reward.")?;
        self.eval.check("")
    }
}

/// Samples (or reloads) and evaluates; writes everything into `cfg.out`.
pub fn run(cfg: &EvalConfig, force: bool) -> Result<EvalSummary> {
    fsutil::check_overwrite(&cfg.out.join("summary.json"), force)?;
    let (mut greedy, mut samples) = match &cfg.reuse {
        Some(dir) => {
            let (mut greedy, mut samples) =
                (read_optional(&dir.join("greedy.jsonl"))?, read_optional(&dir.join("samples.jsonl"))?);
            // Graded afresh, never trusted: the checker may have changed since they were saved.
            let changed = greedy.iter_mut().chain(&mut samples).map(Episode::grade).filter(|&c| c).count();
            eprintln!(
                "re-graded the {} saved episodes of {} with this checker: {changed} verdicts changed",
                greedy.len() + samples.len(),
                dir.display()
            );
            (greedy, samples)
        }
        None => sample(cfg)?,
    };
    let verifier = judge(cfg, &mut greedy, &mut samples)?;
    let scores = match cfg.scorer {
        ScorerKind::None => None,
        ScorerKind::MeanLogprob => Some(MeanLogprobScorer.score(&samples)?),
        ScorerKind::Orm => Some(Orm::load(&cfg.orm, crate::parse_device(&cfg.device)?)?.score(&samples)?),
    };
    let opts = EvalOptions {
        ks: if samples.is_empty() { vec![] } else { cfg.eval.ks() },
        bootstrap_resamples: cfg.bootstrap_resamples,
        seed: cfg.seed,
        temperature: (!samples.is_empty()).then_some(cfg.eval.sampling.temperature),
    };
    let (records, mut summary) = evaluate(&greedy, &samples, scores.as_deref(), &opts)?;
    summary.verifier = verifier;
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
    let device = crate::parse_device(&cfg.device)?;
    let (model, tokenizer) = CausalLm::load_with_tokenizer(&cfg.model, device, false)?;
    let task = TaskSpec::parse(&cfg.task)?;
    let problems = task.load(cfg.split, (cfg.eval.problems > 0).then_some(cfg.eval.problems))?;
    let prompter = Prompter::for_task(&cfg.prompt, &task)?;
    let mut engine = Engine::new(&cfg.rollout, &cfg.out.join("engine"), false)?;
    engine.sync(&model, &tokenizer)?;
    sample_episodes(&engine, &model, &tokenizer, &prompter, &problems, &cfg.eval, cfg.seed)
}

/// With a verifier in `[reward]`, its verdicts replace the built-in check's; returns its means
/// over the greedy episodes and over the samples (`greedy/reward/mean`, `samples/reward/NAME`).
fn judge(cfg: &EvalConfig, greedy: &mut [Episode], samples: &mut [Episode]) -> Result<BTreeMap<String, f64>> {
    let mut means = BTreeMap::new();
    if cfg.reward.kind == RewardKind::Sparse && cfg.reward.terms.is_empty() {
        return Ok(means);
    }
    let tokenizer = Tokenizer::load(&cfg.model)?;
    let problems = TaskSpec::parse(&cfg.task)?.load(cfg.split, None)?;
    let by_id = problems.iter().map(|p| (p.id.as_str(), p)).collect();
    fsutil::create_output_dir(&cfg.out)?;
    let rewarder = Rewarder::new(&cfg.reward, &tokenizer, tch::Device::Cpu, &cfg.out)?;
    for (name, episodes) in [("greedy", greedy), ("samples", samples)] {
        if !episodes.is_empty() {
            means.extend(
                rewarder.judge(&tokenizer, episodes, &by_id)?.into_iter().map(|(k, v)| (format!("{name}/{k}"), v)),
            );
        }
    }
    Ok(means)
}

fn read_optional(path: &Path) -> Result<Vec<Episode>> {
    if path.exists() {
        read_episodes(path)
    } else {
        Ok(Vec::new())
    }
}
