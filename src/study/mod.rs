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
pub mod report;

use crate::config::{load, Config};
use crate::error::{Error, Result};
use crate::eval::policy::EvalSpec;
use crate::eval::run::{EvalConfig, ScorerKind};
use crate::fsutil::write_atomic;
use crate::prompt::{PromptConfig, PromptFormat};
use crate::reward::RewardKind;
use crate::train::{ei, grpo, orm, ppo, pretrain, rcrl, sft};
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
            rollout: crate::engine::RolloutConfig::default(),
            pretrain: Stage::default(),
            sft: Stage::default(),
            orm: Stage::default(),
            ei: Stage::default(),
            ppo: Stage::default(),
            grpo: Stage::default(),
            rcrl: Stage::default(),
        }
    }
}

impl Config for StudyConfig {
    fn check(&self) -> std::result::Result<(), String> {
        self.eval.check("eval.")
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

/// One row of the grid before the inits, sizes and seeds multiply it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Experiment {
    pub algorithm: Algorithm,
    /// EI learns from final answers only: sparse.
    pub reward: RewardKind,
}

impl Default for Experiment {
    fn default() -> Self {
        Experiment { algorithm: Algorithm::Ei, reward: RewardKind::Sparse }
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

#[derive(Debug, Clone)]
pub enum Action {
    Pretrain { size: String },
    Sft { pretrained: PathBuf },
    Orm { policy: PathBuf, prompt: PromptConfig },
    Train { experiment: Experiment, seed: u64, init: PathBuf, orm: Option<PathBuf>, prompt: PromptConfig },
    Eval { model: PathBuf, scorer: Option<PathBuf>, prompt: PromptConfig },
}

/// A row of the report: where a model came from and the folders of its run and its evaluation.
#[derive(Debug, Clone)]
pub struct Row {
    pub size: String,
    pub init: String,
    /// "none" for the starting model itself.
    pub algorithm: String,
    pub reward: String,
    pub seed: Option<u64>,
    /// The training run (None for the starting model).
    pub run: Option<PathBuf>,
    pub eval: PathBuf,
}

/// The study laid out: its jobs in the order they run, and the rows of its table.
#[derive(Debug, Clone)]
pub struct Plan {
    pub dir: PathBuf,
    pub jobs: Vec<Job>,
    pub rows: Vec<Row>,
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
    let needs_orm = cfg.rerank == Rerank::Orm || cfg.experiments.iter().any(|e| e.reward == RewardKind::Orm);
    let (mut jobs, mut rows) = (Vec::new(), Vec::new());
    for size in &cfg.sizes {
        let at = |name: &str| dir.join(size).join(name);
        jobs.push(Job { dir: at("pretrain"), action: Action::Pretrain { size: size.clone() } });
        if cfg.inits.contains(&Init::Sft) {
            jobs.push(Job { dir: at("sft"), action: Action::Sft { pretrained: at("pretrain") } });
        }
        for init in &cfg.inits {
            let (model, prompt) = match init {
                Init::Sft => (at("sft"), PromptConfig::default()),
                Init::Pretrained => {
                    (at("pretrain"), PromptConfig { format: PromptFormat::FewShot, ..PromptConfig::default() })
                }
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
            let eval = |model: &Path, out: PathBuf, prompt: PromptConfig, scorer: Option<PathBuf>| Job {
                dir: out,
                action: Action::Eval { model: model.to_path_buf(), scorer, prompt },
            };
            let start = Row {
                size: size.clone(),
                init: init.clone(),
                algorithm: "none".into(),
                reward: "-".into(),
                seed: None,
                run: None,
                eval: at(&format!("{init}-eval")),
            };
            jobs.push(eval(&model, start.eval.clone(), prompt.clone(), scorer.clone()));
            rows.push(start.clone());
            for experiment in &cfg.experiments {
                for &seed in &cfg.seeds {
                    let (algorithm, reward) = (name_of(&experiment.algorithm), name_of(&experiment.reward));
                    let run = at(&format!("{init}-{algorithm}-{reward}-s{seed}"));
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
                    jobs.push(eval(&run, run.join("eval"), eval_prompt, eval_scorer));
                    rows.push(Row {
                        algorithm,
                        reward,
                        seed: Some(seed),
                        run: Some(run.clone()),
                        eval: run.join("eval"),
                        ..start.clone()
                    });
                }
            }
        }
    }
    Ok(Plan { dir, jobs, rows })
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

/// Loads every stage's config with its overrides, so a typo fails now rather than hours in.
pub fn check_stages(cfg: &StudyConfig) -> Result<()> {
    fn check<T: Config>(name: &str, stage: &Stage) -> Result<()> {
        load::<T>(stage.config.as_deref(), &stage.set)
            .map(drop)
            .map_err(|e| Error::Invalid(format!("study stage [{name}]: {e}")))
    }
    let used = |a: Algorithm| cfg.experiments.iter().any(|e| e.algorithm == a);
    check::<pretrain::PretrainConfig>("pretrain", &cfg.pretrain)?;
    check::<sft::SftConfig>("sft", &cfg.sft)?;
    check::<orm::OrmConfig>("orm", &cfg.orm)?;
    if used(Algorithm::Ei) {
        check::<ei::EiConfig>("ei", &cfg.ei)?;
    }
    if used(Algorithm::Ppo) {
        check::<ppo::PpoConfig>("ppo", &cfg.ppo)?;
    }
    if used(Algorithm::Grpo) || used(Algorithm::Rloo) {
        check::<grpo::GrpoConfig>("grpo", &cfg.grpo)?;
    }
    if used(Algorithm::Rcrl) {
        check::<rcrl::RcrlConfig>("rcrl", &cfg.rcrl)?;
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
        match run_job(cfg, job) {
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
    Ok(outcome)
}

/// The folder a finished job produced (its model, or its evaluation).
fn output_of(job_dir: &Path) -> Result<PathBuf> {
    let marker = job_dir.join(DONE_FILE);
    if !marker.exists() {
        let why = std::fs::read_to_string(job_dir.join(FAILED_FILE)).map(|e| format!(", which failed: {}", e.trim()));
        return Err(Error::file(job_dir, format!("needed but not done{}", why.unwrap_or_default())));
    }
    let done: Done = serde_json::from_str(&crate::fsutil::read_to_string(&marker)?)
        .map_err(|e| Error::file(&marker, format!("malformed: {e}")))?;
    Ok(done.output)
}

/// A TOML string literal, for an override's value.
fn quoted(text: impl std::fmt::Display) -> String {
    toml::Value::String(text.to_string()).to_string()
}

/// A stage's config: its base file, `defaults`, its overrides, then the study's own settings.
fn stage_config<T: Config>(stage: &Stage, defaults: &[String], study: Vec<String>) -> Result<T> {
    load(stage.config.as_deref(), &[defaults.to_vec(), stage.set.clone(), study].concat())
}

/// The study's `[rollout]` as `rollout.KEY=VALUE` overrides (none for the local engine).
fn rollout_sets(rollout: &crate::engine::RolloutConfig) -> Vec<String> {
    if rollout.engine == crate::engine::EngineKind::Local {
        return Vec::new();
    }
    let table = toml::Table::try_from(rollout).expect("the rollout settings serialise to a TOML table");
    table.iter().map(|(key, value)| format!("rollout.{key}={value}")).collect()
}

fn run_job(cfg: &StudyConfig, job: &Job) -> Result<PathBuf> {
    let (out_dir, name) = (job.dir.parent().expect("jobs live in the study folder"), job.dir.file_name());
    let name = name.expect("jobs have names").to_string_lossy();
    let run = vec![
        format!("run.out_dir={}", quoted(out_dir.display())),
        format!("run.name={}", quoted(&name)),
        format!("run.device={}", quoted(&cfg.device)),
    ];
    let prompt_set = |p: &PromptConfig| {
        vec![format!("prompt.format={}", quoted(name_of(&p.format))), format!("prompt.shots={}", p.shots)]
    };
    let resume = job.dir.join("checkpoints").exists();
    let task = format!("task={}", quoted(&cfg.task));
    let engine = rollout_sets(&cfg.rollout);
    match &job.action {
        Action::Pretrain { size } => {
            let c: pretrain::PretrainConfig =
                stage_config(&cfg.pretrain, &[], [run, vec![task, format!("init.preset={}", quoted(size))]].concat())?;
            pretrain::run(&c, resume, !resume)
        }
        Action::Sft { pretrained } => {
            let model = format!("model={}", quoted(output_of(pretrained)?.display()));
            let c: sft::SftConfig = stage_config(&cfg.sft, &[], [run, vec![task, model]].concat())?;
            sft::run(&c, resume, !resume)?;
            Ok(job.dir.join("best"))
        }
        Action::Orm { policy, prompt } => {
            let policy = format!("model={}", quoted(output_of(policy)?.display()));
            let c: orm::OrmConfig =
                stage_config(&cfg.orm, &engine, [run, vec![task, policy], prompt_set(prompt)].concat())?;
            orm::run(&c, resume, !resume)?;
            Ok(job.dir.join("best"))
        }
        Action::Train { experiment, seed, init, orm, prompt } => {
            let mut set =
                [run, vec![task, format!("model={}", quoted(output_of(init)?.display())), format!("seed={seed}")]]
                    .concat();
            set.extend(prompt_set(prompt));
            let orm_path = match (experiment.reward, orm) {
                (RewardKind::Orm, Some(orm)) => Some(quoted(output_of(orm)?.display())),
                _ => None,
            };
            let reward = quoted(name_of(&experiment.reward));
            match experiment.algorithm {
                Algorithm::Ei => ei::run(&stage_config(&cfg.ei, &engine, set)?, resume, !resume),
                Algorithm::Rcrl => {
                    let labels = if experiment.reward == RewardKind::Sparse { quoted("outcome") } else { reward };
                    set.push(format!("labels={labels}"));
                    set.extend(orm_path.map(|p| format!("orm={p}")));
                    rcrl::run(&stage_config(&cfg.rcrl, &engine, set)?, resume, !resume)
                }
                algorithm => {
                    set.push(format!("reward.kind={reward}"));
                    set.extend(orm_path.map(|p| format!("reward.orm={p}")));
                    if algorithm == Algorithm::Ppo {
                        ppo::run(&stage_config(&cfg.ppo, &engine, set)?, resume, !resume)
                    } else {
                        set.push(format!("estimator={}", quoted(name_of(&algorithm))));
                        grpo::run(&stage_config(&cfg.grpo, &engine, set)?, resume, !resume)
                    }
                }
            }
        }
        Action::Eval { model, scorer, prompt } => {
            // Without its ORM (failed) the evaluation still runs; rerank@k is left out.
            let (scorer, orm) = match scorer.as_deref().map(output_of) {
                Some(Ok(orm)) => (ScorerKind::Orm, orm),
                Some(Err(e)) => {
                    crate::progress::println(&format!("no rerank@k: {e}"));
                    (ScorerKind::None, PathBuf::new())
                }
                None => (ScorerKind::MeanLogprob, PathBuf::new()),
            };
            let eval = EvalConfig {
                model: output_of(model)?,
                task: cfg.task.clone(),
                eval: cfg.eval.clone(),
                scorer,
                orm,
                prompt: prompt.clone(),
                rollout: cfg.rollout.clone(),
                out: job.dir.clone(),
                device: cfg.device.clone(),
                ..Default::default()
            };
            crate::eval::run::run(&eval, true)?;
            Ok(job.dir.clone())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{EngineKind, RolloutConfig, SyncMode};

    #[test]
    fn the_study_rollout_reaches_every_sampling_stage_and_a_stage_may_override_it() {
        assert!(rollout_sets(&RolloutConfig::default()).is_empty(), "local adds nothing");
        let rollout = RolloutConfig {
            engine: EngineKind::Openai,
            base_url: vec!["http://a:1".into(), "http://b:2".into()],
            command: "llama-server -m {gguf} --port {port}".into(),
            sync_every: 3,
            ..RolloutConfig::default()
        };
        let stage = Stage { config: None, set: vec!["rollout.sync=\"sglang\"".into()] };
        let ei: ei::EiConfig = stage_config(&stage, &rollout_sets(&rollout), vec![]).unwrap();
        assert_eq!(ei.common.rollout, RolloutConfig { sync: SyncMode::Sglang, ..rollout.clone() });
        let ppo: ppo::PpoConfig = stage_config(&Stage::default(), &rollout_sets(&rollout), vec![]).unwrap();
        assert_eq!(ppo.pg.common.rollout, rollout);
    }
}
