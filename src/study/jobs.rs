//! Running one job of a study: each stage's config (its base file, its overrides, then the
//! study's own settings) and the trainer or evaluation it calls.

use super::source::ModelSource;
use super::{name_of, Action, Algorithm, Done, Experiment, Job, Stage, StudyConfig, DONE_FILE, FAILED_FILE};
use crate::config::{load, Config};
use crate::error::{Error, Result};
use crate::eval::run::{EvalConfig, ScorerKind};
use crate::prompt::PromptConfig;
use crate::reward::RewardKind;
use crate::train::{ei, grpo, orm, ppo, pretrain, rcrl, sft};
use std::path::{Path, PathBuf};

/// The folder a finished job produced (its model, or its evaluation).
pub(super) fn output_of(job_dir: &Path) -> Result<PathBuf> {
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

/// A stage's config: its base file (or the experiment's), `defaults`, the stage's overrides, the
/// experiment's, then the study's own settings.
pub(super) fn stage_config<T: Config>(
    stage: &Stage,
    row: Option<&Experiment>,
    defaults: &[String],
    study: Vec<String>,
) -> Result<T> {
    let base = row.and_then(|e| e.config.as_deref()).or(stage.config.as_deref());
    let row_set = row.map_or(&[][..], |e| &e.set[..]);
    load(base, &[defaults, &stage.set[..], row_set, &study[..]].concat())
}

/// The study's `[rollout]` as `rollout.KEY=VALUE` overrides (none for the local engine).
fn rollout_sets(rollout: &crate::engine::RolloutConfig) -> Vec<String> {
    if rollout.engine == crate::engine::EngineKind::Local {
        return Vec::new();
    }
    let table = toml::Table::try_from(rollout).expect("the rollout settings serialise to a TOML table");
    table.iter().map(|(key, value)| format!("rollout.{key}={value}")).collect()
}

pub(super) fn run_job(cfg: &StudyConfig, job: &Job) -> Result<PathBuf> {
    let (out_dir, name) = (job.dir.parent().expect("jobs live in the study folder"), job.dir.file_name());
    let name = name.expect("jobs have names").to_string_lossy();
    let mut run = vec![
        format!("run.out_dir={}", quoted(out_dir.display())),
        format!("run.name={}", quoted(&name)),
        format!("run.device={}", quoted(&cfg.device)),
    ];
    let log = toml::Table::try_from(cfg.run_log()).expect("the log settings serialise to a TOML table");
    run.extend(log.iter().map(|(key, value)| format!("log.{key}={value}")));
    let prompt_set = |p: &PromptConfig| {
        vec![format!("prompt.format={}", quoted(name_of(&p.format))), format!("prompt.shots={}", p.shots)]
    };
    let resume = job.dir.join("checkpoints").exists();
    let task = format!("task={}", quoted(&cfg.task));
    let engine = rollout_sets(&cfg.rollout);
    match &job.action {
        Action::Pretrained { source: ModelSource::Preset(size) } => {
            let c: pretrain::PretrainConfig = stage_config(
                &cfg.pretrain,
                None,
                &[],
                [run, vec![task, format!("init.preset={}", quoted(size))]].concat(),
            )?;
            pretrain::run(&c, resume, !resume)
        }
        Action::Pretrained { source: ModelSource::Folder(folder) } => Ok(folder.clone()),
        Action::Pretrained { source: ModelSource::Gguf(file) } => {
            let out = job.dir.join("model");
            std::fs::create_dir_all(&job.dir).map_err(|e| Error::io(&job.dir, e))?;
            crate::model::gguf_import::convert(file, &out, true)?;
            Ok(out)
        }
        Action::Sft { pretrained, prompt } => {
            let model = format!("model={}", quoted(output_of(pretrained)?.display()));
            let set = [run, vec![task, model], prompt_set(prompt)].concat();
            let c: sft::SftConfig = stage_config(&cfg.sft, None, &[], set)?;
            sft::run(&c, resume, !resume)?;
            Ok(job.dir.join("best"))
        }
        Action::Orm { policy, prompt } => {
            let policy = format!("model={}", quoted(output_of(policy)?.display()));
            let c: orm::OrmConfig =
                stage_config(&cfg.orm, None, &engine, [run, vec![task, policy], prompt_set(prompt)].concat())?;
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
                Algorithm::Ei => ei::run(&stage_config(&cfg.ei, Some(experiment), &engine, set)?, resume, !resume),
                Algorithm::Rcrl => {
                    let labels = if experiment.reward == RewardKind::Sparse { quoted("outcome") } else { reward };
                    set.push(format!("labels={labels}"));
                    set.extend(orm_path.map(|p| format!("orm={p}")));
                    rcrl::run(&stage_config(&cfg.rcrl, Some(experiment), &engine, set)?, resume, !resume)
                }
                algorithm => {
                    set.push(format!("reward.kind={reward}"));
                    set.extend(orm_path.map(|p| format!("reward.orm={p}")));
                    if algorithm == Algorithm::Ppo {
                        ppo::run(&stage_config(&cfg.ppo, Some(experiment), &engine, set)?, resume, !resume)
                    } else {
                        set.push(format!("estimator={}", quoted(name_of(&algorithm))));
                        grpo::run(&stage_config(&cfg.grpo, Some(experiment), &engine, set)?, resume, !resume)
                    }
                }
            }
        }
        Action::Eval { model, scorer, prompt, task, spec } => {
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
                task: task.clone(),
                eval: spec.clone(),
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
        let ei: ei::EiConfig = stage_config(&stage, None, &rollout_sets(&rollout), vec![]).unwrap();
        assert_eq!(ei.common.rollout, RolloutConfig { sync: SyncMode::Sglang, ..rollout.clone() });
        let ppo: ppo::PpoConfig = stage_config(&Stage::default(), None, &rollout_sets(&rollout), vec![]).unwrap();
        assert_eq!(ppo.pg.common.rollout, rollout);
    }

    #[test]
    fn a_row_with_its_own_recipe_runs_it_under_the_stage_budget_in_its_own_folder() {
        let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
        let dapo = Experiment {
            algorithm: Algorithm::Grpo,
            name: Some("dapo".into()),
            config: Some(configs.join("dapo.toml")),
            set: vec!["updates=8".into()],
            ..Experiment::default()
        };
        let grpo = Experiment { algorithm: Algorithm::Grpo, ..Experiment::default() };
        let cfg = StudyConfig {
            experiments: vec![grpo.clone(), dapo.clone()],
            grpo: Stage {
                config: Some(configs.join("grpo.toml")),
                set: vec!["updates=16".into(), "prompts_per_update=32".into()],
            },
            ..StudyConfig::default()
        };
        let plan = super::super::plan(&cfg).unwrap();
        let names: Vec<&str> = plan.rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["none", "grpo", "dapo"]);
        assert!(plan.rows[2].run.as_ref().unwrap().ends_with("sft-dapo-sparse-s0"));
        assert_eq!(plan.rows[2].algorithm, "grpo");
        super::super::check_stages(&cfg).unwrap();

        // The row's file replaces the stage's; the stage's overrides, then the row's, apply.
        let plain: grpo::GrpoConfig = stage_config(&cfg.grpo, Some(&grpo), &[], vec![]).unwrap();
        let recipe: grpo::GrpoConfig = stage_config(&cfg.grpo, Some(&dapo), &[], vec![]).unwrap();
        assert_eq!((plain.pg.clip_high, plain.dynamic_sampling, plain.pg.updates), (None, false, 16));
        assert_eq!((recipe.pg.clip_high, recipe.dynamic_sampling, recipe.pg.updates), (Some(0.28), true, 8));
        assert_eq!(recipe.pg.prompts_per_update, 32);

        // Rows that would share a folder, odd names and a typo in a row's overrides are refused.
        let twice = StudyConfig { experiments: vec![grpo.clone(), grpo.clone()], ..cfg.clone() };
        let err = super::super::plan(&twice).unwrap_err().to_string();
        assert!(err.contains("two experiments are `grpo` with reward `sparse`"), "{err}");
        let odd = Experiment { name: Some("da po".into()), ..dapo.clone() };
        let err = super::super::plan(&StudyConfig { experiments: vec![odd], ..cfg.clone() }).unwrap_err().to_string();
        assert!(err.contains("experiment name `da po`"), "{err}");
        let svamp = |file: &str| format!("svamp:{file}");
        let twice = StudyConfig { transfer: vec![svamp("a.json"), svamp("b.json")], ..cfg.clone() };
        let err = super::super::plan(&twice).unwrap_err().to_string();
        assert!(err.contains("two transfer tasks are `svamp` tasks"), "{err}");
        let odd = StudyConfig { transfer: vec!["svam:a.json".into()], ..cfg.clone() };
        let err = super::super::plan(&odd).unwrap_err().to_string();
        assert!(err.contains("transfer task") && err.contains("svam"), "{err}");
        let typo = Experiment { set: vec!["clip_hihg=0.3".into()], ..dapo };
        let err = super::super::check_stages(&StudyConfig { experiments: vec![typo], ..cfg }).unwrap_err().to_string();
        assert!(err.contains("[grpo, experiment dapo]") && err.contains("clip_hihg"), "{err}");
    }
}
