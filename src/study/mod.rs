//! The paper's comparison in one command: a grid of experiments (algorithm x reward x init x
//! model size x seed), each in its own run folder, and a report of what it found.
//!
//! For every model size the study pretrains a model from scratch (the "pretrained" init) and
//! fine-tunes it on the reference solutions (the "sft" init); for every init it evaluates the
//! starting model and, when reranking or an ORM reward needs one, trains an ORM on its samples;
//! then it runs each experiment from each init and seed and evaluates the result on the test
//! split. Each of these jobs writes `done.json` into its folder when it finishes, so rerunning
//! the study skips finished jobs, resumes the interrupted one from its checkpoint (EI and RCRL
//! from their last finished round), and records a failed job's error
//! (`failed.txt`) and goes on with the jobs that do not need it.

pub mod findings;
mod jobs;
pub mod report;
pub mod source;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::eval::policy::EvalSpec;
use crate::fsutil::write_atomic;
use crate::prompt::PromptConfig;
use crate::reward::RewardKind;
use crate::track::LogConfig;
use crate::train::{ei, grpo, orm, ppo, pretrain, rcrl, sft};
use source::ModelSource;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// `reasonrl study` settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StudyConfig {
    /// The study folder is `OUT_DIR/NAME`.
    pub name: String,
    pub out_dir: PathBuf,
    pub task: String,
    /// cpu, cuda or cuda:N.
    pub device: String,
    /// Model presets; each is pretrained and fine-tuned once.
    pub sizes: Vec<String>,
    /// Where the experiments start.
    pub inits: Vec<Init>,
    /// Seeds of each experiment (pretraining and SFT run once per size).
    pub seeds: Vec<u64>,
    pub experiments: Vec<Experiment>,
    pub rerank: Rerank,
    /// The final test evaluation of every model (the same settings as a run's evaluation).
    pub eval: EvalSpec,
    /// Other tasks every model is also evaluated on, greedily on their whole test split, to see
    /// whether gains transfer (e.g. `svamp:../shared/data/svamp/SVAMP.json`); each in folders
    /// named after its kind (`sft-eval-svamp`, `RUN/eval-svamp`).
    pub transfer: Vec<String>,
    /// The engine that samples in every stage that samples (ORM, the algorithms, the final
    /// evaluations); a stage's own `rollout.*` overrides win.
    pub rollout: crate::engine::RolloutConfig,
    /// Base config and overrides of each stage; the study sets model, task, seed, run folder,
    /// device, reward and prompt on top.
    pub pretrain: Stage,
    pub sft: Stage,
    pub orm: Stage,
    pub ei: Stage,
    pub ppo: Stage,
    pub grpo: Stage,
    pub rcrl: Stage,
    /// Trackers for every run (each in its own folder, so `tensorboard --logdir OUT_DIR/NAME`
    /// overlays them); the MLflow experiment defaults to the study's name, and the report and
    /// plots go to an MLflow run of the study folder's name.
    pub log: LogConfig,
}

impl Default for StudyConfig {
    fn default() -> Self {
        StudyConfig {
            name: "study".into(),
            out_dir: "runs".into(),
            task: "builtin:1".into(),
            device: "cpu".into(),
            sizes: vec!["small".into()],
            inits: vec![Init::Sft],
            seeds: vec![0],
            experiments: vec![Experiment::default()],
            rerank: Rerank::Orm,
            eval: EvalSpec::default(),
            transfer: Vec::new(),
            rollout: crate::engine::RolloutConfig::default(),
            pretrain: Stage::default(),
            sft: Stage::default(),
            orm: Stage::default(),
            ei: Stage::default(),
            ppo: Stage::default(),
            grpo: Stage::default(),
            rcrl: Stage::default(),
            log: LogConfig::default(),
        }
    }
}

impl Config for StudyConfig {
    fn check(&self) -> std::result::Result<(), String> {
        self.log.check().map_err(|e| e.to_string())?;
        self.eval.check("eval.")
    }
}

impl StudyConfig {
    /// `[log]` as every run of the study gets it: the MLflow experiment is the study's.
    pub fn run_log(&self) -> LogConfig {
        let experiment = if self.log.experiment.is_empty() { self.name.clone() } else { self.log.experiment.clone() };
        LogConfig { experiment, ..self.log.clone() }
    }
}

/// Where a study's experiments start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Init {
    /// The fine-tuned model, plain prompts.
    Sft,
    /// The pretrained model, few-shot prompts.
    Pretrained,
}

/// What ranks a study's samples for rerank@k.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rerank {
    /// An ORM trained on each init's own samples.
    Orm,
    /// The policy's mean log-prob (cheaper).
    MeanLogprob,
}

/// The algorithms a study runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    #[default]
    Ei,
    Ppo,
    Grpo,
    Rloo,
    Rcrl,
}

/// The lower-case name of a unit enum as its config spells it.
pub fn name_of<T: serde::Serialize>(value: &T) -> String {
    match toml::Value::try_from(value) {
        Ok(toml::Value::String(s)) => s,
        _ => unreachable!("unit enums serialise to strings"),
    }
}

/// One row of the grid before the inits, sizes and seeds multiply it. A row may carry its own
/// recipe: `{ algorithm = "grpo", name = "dapo", config = "configs/dapo.toml" }` runs DAPO's
/// preset under the `[grpo]` stage's overrides (the study's sample budget), then the row's `set`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Experiment {
    pub algorithm: Algorithm,
    /// EI learns from final answers only: sparse.
    pub reward: RewardKind,
    /// The row's name in the report and in its run folders (default: the algorithm's).
    pub name: Option<String>,
    /// The row's base config instead of its stage's.
    pub config: Option<PathBuf>,
    /// Overrides after the stage's.
    pub set: Vec<String>,
}

impl Default for Experiment {
    fn default() -> Self {
        Experiment { algorithm: Algorithm::Ei, reward: RewardKind::Sparse, name: None, config: None, set: Vec::new() }
    }
}

impl Experiment {
    /// The row's name: its own, or its algorithm's.
    pub fn name(&self) -> String {
        self.name.clone().unwrap_or_else(|| name_of(&self.algorithm))
    }
}

/// A stage's base config file (see configs/) and `--set`-style overrides.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Stage {
    pub config: Option<PathBuf>,
    pub set: Vec<String>,
}

/// Written into a job's folder when it finishes.
pub const DONE_FILE: &str = "done.json";
/// Written into a job's folder when it fails (removed when it is tried again).
pub const FAILED_FILE: &str = "failed.txt";

/// What a finished job left: the model (or evaluation) folder it produced and its wall time.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Done {
    pub output: PathBuf,
    pub seconds: f64,
}

/// One unit of work with its own folder.
#[derive(Debug, Clone)]
pub struct Job {
    pub dir: PathBuf,
    pub action: Action,
}

/// What a job does. `Pretrained` yields a size's pretrained model: a preset pretrained from
/// scratch, a model folder as it is, or a GGUF file converted into the job's folder.
#[derive(Debug, Clone)]
pub enum Action {
    Pretrained { source: ModelSource },
    Sft { pretrained: PathBuf, prompt: PromptConfig },
    Orm { policy: PathBuf, prompt: PromptConfig },
    Train { experiment: Experiment, seed: u64, init: PathBuf, orm: Option<PathBuf>, prompt: PromptConfig },
    Eval { model: PathBuf, scorer: Option<PathBuf>, prompt: PromptConfig, task: String, spec: EvalSpec },
}

/// A row of the report: where a model came from and the folders of its run and its evaluation.
#[derive(Debug, Clone)]
pub struct Row {
    pub size: String,
    pub init: String,
    /// "none" for the starting model itself.
    pub algorithm: String,
    /// The experiment's name (the algorithm's unless the row names itself).
    pub name: String,
    pub reward: String,
    pub seed: Option<u64>,
    /// The training run (None for the starting model).
    pub run: Option<PathBuf>,
    pub eval: PathBuf,
    /// The evaluation folder of each of the study's `transfer` tasks.
    pub transfer: Vec<PathBuf>,
}

/// The study laid out: its jobs in the order they run, and the rows of its table.
#[derive(Debug, Clone)]
pub struct Plan {
    pub dir: PathBuf,
    pub jobs: Vec<Job>,
    pub rows: Vec<Row>,
    /// The folder of each of `sizes` in the study's.
    pub sizes: Vec<String>,
}

/// Lays out the grid and checks it (unknown algorithms, rewards or inits fail here, before any
/// work).
pub fn plan(cfg: &StudyConfig) -> Result<Plan> {
    let dir = cfg.out_dir.join(&cfg.name);
    if let Some(e) = cfg.experiments.iter().find(|e| e.algorithm == Algorithm::Ei && e.reward != RewardKind::Sparse) {
        return Err(Error::Invalid(format!(
            "study: reward `{}` for ei (EI learns from the sparse reward)",
            name_of(&e.reward)
        )));
    }
    let mut names = std::collections::BTreeSet::new();
    for e in &cfg.experiments {
        let name = e.name();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(Error::Invalid(format!(
                "study: experiment name `{name}`: use letters, digits, `-`, `_` and `.` (it names run folders)"
            )));
        }
        if !names.insert((name.clone(), name_of(&e.reward))) {
            return Err(Error::Invalid(format!(
                "study: two experiments are `{name}` with reward `{}`: give one a `name`",
                name_of(&e.reward)
            )));
        }
    }
    let transfer = transfer_tasks(cfg)?;
    let greedy = EvalSpec {
        problems: 0,
        sampled_problems: 0,
        ks: Vec::new(),
        sampling: crate::sample::Sampling { samples_per_prompt: 0, ..cfg.eval.sampling.clone() },
    };
    let needs_orm = cfg.rerank == Rerank::Orm || cfg.experiments.iter().any(|e| e.reward == RewardKind::Orm);
    let (mut jobs, mut rows, mut sizes) = (Vec::new(), Vec::new(), Vec::new());
    for size in &cfg.sizes {
        let source = ModelSource::parse(size)?;
        let size = &source.name();
        sizes.push(size.clone());
        let at = |name: &str| dir.join(size).join(name);
        let (sft_prompt, pretrained_prompt) = source.prompts()?;
        jobs.push(Job { dir: at("pretrain"), action: Action::Pretrained { source } });
        if cfg.inits.contains(&Init::Sft) {
            let action = Action::Sft { pretrained: at("pretrain"), prompt: sft_prompt.clone() };
            jobs.push(Job { dir: at("sft"), action });
        }
        for init in &cfg.inits {
            let (model, prompt) = match init {
                Init::Sft => (at("sft"), sft_prompt.clone()),
                Init::Pretrained => (at("pretrain"), pretrained_prompt.clone()),
            };
            let init = name_of(init);
            let orm = needs_orm.then(|| at(&format!("{init}-orm")));
            if let Some(orm) = &orm {
                jobs.push(Job {
                    dir: orm.clone(),
                    action: Action::Orm { policy: model.clone(), prompt: prompt.clone() },
                });
            }
            let scorer = orm.clone().filter(|_| cfg.rerank == Rerank::Orm);
            // The test evaluation, then a greedy pass over each transfer task; their folders.
            let eval = |jobs: &mut Vec<Job>, model: &Path, out: PathBuf, prompt: &PromptConfig, scorer| {
                let mut job = |dir: PathBuf, task: &str, spec: EvalSpec, scorer: Option<PathBuf>| {
                    let (model, prompt, task) = (model.to_path_buf(), prompt.clone(), task.to_string());
                    jobs.push(Job { dir: dir.clone(), action: Action::Eval { model, scorer, prompt, task, spec } });
                    dir
                };
                job(out.clone(), &cfg.task, cfg.eval.clone(), scorer);
                let name = out.file_name().expect("evaluations have names").to_string_lossy();
                let transfer = transfer
                    .iter()
                    .map(|(tag, task)| job(out.with_file_name(format!("{name}-{tag}")), task, greedy.clone(), None));
                transfer.collect::<Vec<_>>()
            };
            let start = Row {
                size: size.clone(),
                init: init.clone(),
                algorithm: "none".into(),
                name: "none".into(),
                reward: "-".into(),
                seed: None,
                run: None,
                eval: at(&format!("{init}-eval")),
                transfer: Vec::new(),
            };
            let transfer = eval(&mut jobs, &model, start.eval.clone(), &prompt, scorer.clone());
            rows.push(Row { transfer, ..start.clone() });
            for experiment in &cfg.experiments {
                for &seed in &cfg.seeds {
                    let (name, reward) = (experiment.name(), name_of(&experiment.reward));
                    let run = at(&format!("{init}-{name}-{reward}-s{seed}"));
                    let action = Action::Train {
                        experiment: experiment.clone(),
                        seed,
                        init: model.clone(),
                        orm: orm.clone(),
                        prompt: prompt.clone(),
                    };
                    jobs.push(Job { dir: run.clone(), action });
                    // An RCRL model is asked as a good solver, before every step in the dense variants.
                    // Its samples hold control tokens the init's ORM never saw: rerank by mean log-prob.
                    let (mut eval_prompt, mut eval_scorer) = (prompt.clone(), scorer.clone());
                    if experiment.algorithm == Algorithm::Rcrl {
                        eval_prompt.condition = rcrl::GOOD.into();
                        eval_prompt.condition_every_step = experiment.reward != RewardKind::Sparse;
                        eval_scorer = None;
                    }
                    let transfer = eval(&mut jobs, &run, run.join("eval"), &eval_prompt, eval_scorer);
                    rows.push(Row {
                        algorithm: name_of(&experiment.algorithm),
                        name,
                        reward,
                        seed: Some(seed),
                        run: Some(run.clone()),
                        eval: run.join("eval"),
                        transfer,
                        ..start.clone()
                    });
                }
            }
        }
    }
    Ok(Plan { dir, jobs, rows, sizes })
}

/// The study's `transfer` tasks, each with the tag that names its folders (its kind: `svamp`);
/// a malformed task or two of one kind are refused.
fn transfer_tasks(cfg: &StudyConfig) -> Result<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = Vec::new();
    for task in &cfg.transfer {
        crate::task::TaskSpec::parse(task).map_err(|e| Error::Invalid(format!("study: transfer task: {e}")))?;
        let tag = task.split(':').next().unwrap_or_default().to_string();
        if out.iter().any(|(t, _)| *t == tag) {
            return Err(Error::Invalid(format!("study: two transfer tasks are `{tag}` tasks: keep one")));
        }
        out.push((tag, task.clone()));
    }
    Ok(out)
}

/// How a study ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub report: PathBuf,
    pub done: usize,
    pub skipped: usize,
    pub failed: usize,
    /// Ctrl-C stopped it; rerunning continues.
    pub interrupted: bool,
    /// The report's table (markdown).
    pub table: String,
}

/// Loads every stage's config, and every experiment's, with its overrides, so a typo fails now
/// rather than hours in.
pub fn check_stages(cfg: &StudyConfig) -> Result<()> {
    fn check<T: Config>(name: &str, stage: &Stage, row: Option<&Experiment>) -> Result<()> {
        jobs::stage_config::<T>(stage, row, &[], Vec::new())
            .map(drop)
            .map_err(|e| Error::Invalid(format!("study stage [{name}]: {e}")))
    }
    check::<pretrain::PretrainConfig>("pretrain", &cfg.pretrain, None)?;
    check::<sft::SftConfig>("sft", &cfg.sft, None)?;
    check::<orm::OrmConfig>("orm", &cfg.orm, None)?;
    for e in &cfg.experiments {
        let name = format!("{}, experiment {}", name_of(&e.algorithm), e.name());
        match e.algorithm {
            Algorithm::Ei => check::<ei::EiConfig>(&name, &cfg.ei, Some(e))?,
            Algorithm::Ppo => check::<ppo::PpoConfig>(&name, &cfg.ppo, Some(e))?,
            Algorithm::Grpo | Algorithm::Rloo => check::<grpo::GrpoConfig>(&name, &cfg.grpo, Some(e))?,
            Algorithm::Rcrl => check::<rcrl::RcrlConfig>(&name, &cfg.rcrl, Some(e))?,
        }
    }
    Ok(())
}

/// Runs every job not yet done, then writes `report.md` and the plots (also after a Ctrl-C).
pub fn run(cfg: &StudyConfig, config_toml: &str) -> Result<Outcome> {
    let plan = plan(cfg)?;
    check_stages(cfg)?;
    crate::fsutil::create_output_dir(&plan.dir)?;
    write_atomic(&plan.dir.join("config.toml"), |w| w.write_all(config_toml.as_bytes()))?;
    let bar = crate::progress::bar(plan.jobs.len() as u64, 0, "jobs");
    let mut outcome = Outcome {
        report: plan.dir.join("report.md"),
        done: 0,
        skipped: 0,
        failed: 0,
        interrupted: false,
        table: String::new(),
    };
    for (i, job) in plan.jobs.iter().enumerate() {
        let name = job.dir.strip_prefix(&plan.dir).unwrap_or(&job.dir).display().to_string();
        bar.set_position(i as u64);
        bar.set_message(name.clone());
        if job.dir.join(DONE_FILE).exists() {
            outcome.skipped += 1;
            continue;
        }
        crate::progress::println(&format!("[{}/{}] {name}", i + 1, plan.jobs.len()));
        let start = Instant::now();
        let _ = std::fs::remove_file(job.dir.join(FAILED_FILE));
        match jobs::run_job(cfg, job) {
            Ok(output) => {
                let done = Done { output, seconds: start.elapsed().as_secs_f64() };
                let text = serde_json::to_string_pretty(&done).expect("serialisable");
                write_atomic(&job.dir.join(DONE_FILE), |w| w.write_all(text.as_bytes()))?;
                outcome.done += 1;
            }
            Err(Error::Interrupted) => {
                outcome.interrupted = true;
                break;
            }
            Err(err) => {
                crate::progress::println(&format!("{name} failed: {err}"));
                std::fs::create_dir_all(&job.dir).map_err(|e| Error::io(&job.dir, e))?;
                write_atomic(&job.dir.join(FAILED_FILE), |w| writeln!(w, "{err}"))?;
                outcome.failed += 1;
            }
        }
    }
    bar.finish_and_clear();
    outcome.table = report::write(cfg, &plan)?;
    if cfg.log.mlflow_uri.is_some() {
        let log = LogConfig { tensorboard: false, ..cfg.run_log() };
        let plots = std::fs::read_dir(plan.dir.join("plots")).map(|d| d.flatten().map(|e| e.path()).collect());
        let files: Vec<PathBuf> = [vec![outcome.report.clone()], plots.unwrap_or_default()].concat();
        crate::track::Tracker::open(&plan.dir, &log)?.finish(&files);
    }
    Ok(outcome)
}
