//! Supervised fine-tuning: maximise log p(reference solution | prompt) on a task's training
//! problems, loss on the solution tokens only. Keeps the final model and the best one by
//! validation maj@1 (greedy accuracy on problems held out from the end of the train split).

use super::{prepare_run_dir, validation_metrics, EvalDuringTraining, Example, RunConfig, TrainConfig, Trainer};
use crate::error::{Error, Result};
use crate::model::CausalLm;
use crate::prompt::{PromptConfig, Prompter};
use crate::task::{Split, TaskSpec};
use std::path::PathBuf;

/// `reasonrl sft` settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SftConfig {
    pub run: RunConfig,
    /// The model folder to start from (pretrained or fresh).
    pub model: PathBuf,
    /// Task whose train split is learnt (see `TaskSpec`).
    pub task: String,
    /// Training problems (0 = all of the split, minus the validation problems).
    pub train_problems: usize,
    pub prompt: PromptConfig,
    pub train: TrainConfig,
    /// LoRA adapters instead of full fine-tuning, when `[lora]` is present.
    pub lora: Option<crate::model::lora::LoraConfig>,
    pub eval: EvalDuringTraining,
}

impl Default for SftConfig {
    fn default() -> Self {
        SftConfig {
            run: RunConfig { name: "sft".into(), ..RunConfig::default() },
            model: PathBuf::new(),
            task: "builtin".into(),
            train_problems: 0,
            prompt: PromptConfig::default(),
            lora: None,
            train: TrainConfig::default(),
            eval: EvalDuringTraining::default(),
        }
    }
}

/// Runs SFT; the model ends in `RUN/final` and `RUN/best`.
pub fn run(cfg: &SftConfig, resume: bool, force: bool) -> Result<PathBuf> {
    let dir = cfg.run.dir();
    prepare_run_dir(&dir, &crate::config::to_toml(cfg), resume, force)?;
    let device = crate::parse_device(&cfg.run.device)?;
    if cfg.model.as_os_str().is_empty() {
        return Err(Error::Invalid("no model to fine-tune: set `model` (a model folder)".into()));
    }
    let (mut model, tokenizer) = CausalLm::load_with_tokenizer(&cfg.model, device, false)?;
    model.maybe_add_lora(cfg.lora.as_ref(), &cfg.model)?;
    let mut problems = TaskSpec::parse(&cfg.task)?.load(Split::Train, None)?;
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
    let prompter = Prompter::new(&cfg.prompt, &problems)?;
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
    let mut trainer = Trainer::new(&mut model, &tokenizer, cfg.train.clone(), &dir, resume)?;
    trainer.best_metric = Some("eval/maj@1".into());
    let mut eval = |m: &CausalLm, _: &super::checkpoint::TrainerState| {
        validation_metrics(m, &tokenizer, &prompter, &validation, &cfg.eval)
    };
    trainer.train(&examples, &mut eval)?;
    let last = dir.join("final");
    model.save_with_tokenizer(&tokenizer, &last, true)?;
    Ok(last)
}

/// A prompt and a solution (then EOS) as a training example with the loss on the solution.
pub fn solution_example(
    tokenizer: &crate::tokenizer::Tokenizer,
    prompter: &Prompter,
    question: &str,
    solution: &str,
) -> Result<Example> {
    let mut tokens = prompter.encode(tokenizer, question)?;
    let targets_from = tokens.len();
    tokens.extend(tokenizer.encode(solution.trim_end())?);
    tokens.push(tokenizer.eos_id());
    Ok(Example::new(tokens, targets_from))
}
