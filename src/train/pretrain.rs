//! Pretraining from scratch: language modelling on a domain corpus (stories worked out in prose,
//! arithmetic facts) that never shows the `Question: ... Answer:` format, so the result is a
//! "pretrained" init in the paper's sense: it solves some problems only when prompted few-shot.

use super::{prepare_run_dir, validation_metrics, EvalDuringTraining, Example, RunConfig, TrainConfig, Trainer};
use crate::error::Result;
use crate::model::presets;
use crate::prompt::{PromptConfig, Prompter};
use crate::task::{corpus, Split, TaskSpec};
use std::path::PathBuf;

/// The from-scratch model (`[init]`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InitConfig {
    pub preset: String,
    pub vocab_size: usize,
    pub max_positions: i64,
    pub seed: u64,
}

impl Default for InitConfig {
    fn default() -> Self {
        InitConfig { preset: "small".into(), vocab_size: 1024, max_positions: 512, seed: 0 }
    }
}

/// The corpus (`[corpus]`): `documents` generated at a task level.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorpusConfig {
    pub level: u32,
    pub documents: usize,
    pub seed: u64,
}

impl Default for CorpusConfig {
    fn default() -> Self {
        CorpusConfig { level: 2, documents: 20_000, seed: 0 }
    }
}

/// `reasonrl pretrain` settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PretrainConfig {
    pub run: RunConfig,
    pub init: InitConfig,
    pub corpus: CorpusConfig,
    /// Task for the few-shot evaluation during training (validation: the end of its train split).
    pub task: String,
    /// How the evaluation prompts (few-shot by default).
    pub prompt: PromptConfig,
    pub train: TrainConfig,
    /// LoRA adapters instead of full fine-tuning, when `[lora]` is present.
    pub lora: Option<crate::model::lora::LoraConfig>,
    pub eval: EvalDuringTraining,
}

impl Default for PretrainConfig {
    fn default() -> Self {
        PretrainConfig {
            run: RunConfig { name: "pretrain".into(), ..RunConfig::default() },
            init: InitConfig::default(),
            corpus: CorpusConfig::default(),
            task: "builtin".into(),
            prompt: PromptConfig { format: "few-shot".into(), shots: 4, ..PromptConfig::default() },
            lora: None,
            train: TrainConfig::default(),
            eval: EvalDuringTraining::default(),
        }
    }
}

/// Runs pretraining; the model ends in `RUN/final`.
pub fn run(cfg: &PretrainConfig, resume: bool, force: bool) -> Result<PathBuf> {
    let dir = cfg.run.dir();
    prepare_run_dir(&dir, &crate::config::to_toml(cfg), resume, force)?;
    let device = crate::parse_device(&cfg.run.device)?;
    let documents = corpus::pretraining_corpus(cfg.corpus.level, cfg.corpus.documents, cfg.corpus.seed);
    // The tokenizer also learns the words of the prompt format, which the corpus never shows.
    let tokenizer_text = documents.iter().cloned().chain(std::iter::once(crate::prompt::plain("How many?")));
    let (mut model, tokenizer) = presets::init_from_scratch(
        &cfg.init.preset,
        tokenizer_text,
        cfg.init.vocab_size,
        cfg.init.max_positions,
        cfg.init.seed,
        device,
    )?;
    if let Some(lora) = &cfg.lora {
        // Adapters are saved over a base folder: keep the initialised model in the run.
        let base = dir.join("base");
        if resume && base.exists() {
            model = crate::model::CausalLm::load(&base, device, false)?;
        } else {
            model.save_with_tokenizer(&tokenizer, &base, true)?;
        }
        model.add_lora(lora, &base)?;
    }

    // Pack the documents, separated by EOS, into rows of max_seq_len tokens that start with BOS.
    let mut stream = Vec::new();
    for doc in &documents {
        stream.extend(tokenizer.encode(doc)?);
        stream.push(tokenizer.eos_id());
    }
    let row = cfg.train.max_seq_len.min(cfg.init.max_positions as usize) - 1;
    let bos: Vec<u32> = tokenizer.bos_id().into_iter().collect();
    let examples: Vec<Example> = stream
        .chunks(row)
        .filter(|c| c.len() == row)
        .map(|c| Example::new(bos.iter().chain(c).copied().collect(), 1))
        .collect();

    let mut problems = TaskSpec::parse(&cfg.task)?.load(Split::Train, None)?;
    let validation = problems.split_off(problems.len().saturating_sub(cfg.eval.problems));
    let prompter = Prompter::new(&cfg.prompt, &problems)?;
    eprintln!(
        "pretrain: {} documents, {} tokens in {} rows of {}, run folder {}",
        documents.len(),
        stream.len(),
        examples.len(),
        row + 1,
        dir.display()
    );
    let mut trainer = Trainer::new(&mut model, &tokenizer, cfg.train.clone(), &dir, resume)?;
    let mut eval = |m: &crate::model::CausalLm, _: &super::checkpoint::TrainerState| {
        validation_metrics(m, &tokenizer, &prompter, &validation, &cfg.eval)
    };
    trainer.train(&examples, &mut eval)?;
    let last = dir.join("final");
    model.save_with_tokenizer(&tokenizer, &last, true)?;
    Ok(last)
}
