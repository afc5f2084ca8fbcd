//! Supervised fine-tuning: maximise log p(reference solution | prompt) on a task's training
//! problems, loss on the solution tokens only. Keeps the final model and the best one by
//! validation maj@1 (greedy accuracy on problems held out from the end of the train split).

use super::objective::solution_example;
use super::{TrainConfig, Trainer};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::eval::policy::{evaluate_policy, EvalSpec};
use crate::model::CausalLm;
use crate::run::{Run, RunSpec};
use crate::task::Split;
use std::path::PathBuf;

/// `reasonrl sft` settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SftConfig {
    /// `model` is the folder to start from (pretrained or fresh); `task`'s train split is learnt.
    #[serde(flatten)]
    pub common: RunSpec,
    /// Training problems (0 = all of the split, minus the validation problems).
    pub train_problems: usize,
    pub train: TrainConfig,
    /// Validation: `eval.problems` held out from the end of the train split, evaluated every
    /// `train.eval_every` steps; `best/` is kept by their greedy maj@1.
    pub eval: EvalSpec,
}

impl Default for SftConfig {
    fn default() -> Self {
        SftConfig {
            common: RunSpec::named("sft"),
            train_problems: 0,
            train: TrainConfig::default(),
            eval: EvalSpec { problems: 200, ..EvalSpec::default() },
        }
    }
}

impl Config for SftConfig {
    fn check(&self) -> std::result::Result<(), String> {
        self.eval.check("eval.")
    }
}

/// Runs SFT; the model ends in `RUN/final` and `RUN/best`.
pub fn run(cfg: &SftConfig, resume: bool, force: bool) -> Result<PathBuf> {
    let common = &cfg.common;
    let Run { setup, policy: mut model, tokenizer } = common.open(cfg, resume, force, false)?;
    let dir = &setup.dir;
    let mut problems = setup.load(Split::Train, 0)?;
    if problems.len() <= cfg.eval.problems {
        return Err(Error::Invalid(format!(
            "the train split has {} problems, fewer than eval.problems",
            problems.len()
        )));
    }
    let validation = problems.split_off(problems.len() - cfg.eval.problems);
    if cfg.train_problems > 0 {
        problems.truncate(cfg.train_problems);
    }
    let prompter = common.prompter(&problems)?;
    let examples = problems
        .iter()
        .map(|p| solution_example(&tokenizer, &prompter, &p.question, &p.reference_solution))
        .collect::<Result<Vec<_>>>()?;
    eprintln!(
        "sft: {} examples, {} validation problems, run folder {}",
        examples.len(),
        validation.len(),
        dir.display()
    );
    let mut trainer = Trainer::new(&mut model, &tokenizer, cfg.train.clone(), dir, resume)?;
    trainer.checkpoints = trainer.checkpoints.tracked(&cfg.common.log);
    trainer.best_metric = Some("eval/maj@1".into());
    let mut eval = |m: &CausalLm, _: &super::checkpoint::TrainerState| {
        evaluate_policy(m, &tokenizer, &prompter, &validation, &cfg.eval, 0, cfg.common.rollout.dtype)
    };
    trainer.train(&examples, &mut eval)?;
    crate::run::save_final(dir, &model, &tokenizer)
}
