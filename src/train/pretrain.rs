//! Pretraining from scratch: language modelling on a domain corpus (stories worked out in prose,
//! arithmetic facts) that never shows the `Question: ... Answer:` format, so the result is a
//! "pretrained" init in the paper's sense: it solves some problems only when prompted few-shot.

use super::objective::Example;
use super::{TrainConfig, Trainer};
use crate::config::Config;
use crate::error::Result;
use crate::eval::policy::{evaluate_policy, EvalSpec};
use crate::model::presets;
use crate::prompt::{PromptConfig, PromptFormat};
use crate::run::RunSpec;
use crate::task::{corpus, Split};
use std::path::PathBuf;

/// The from-scratch model (`[init]`); its weights are drawn from the run's `seed`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InitConfig {
    pub preset: String,
    pub vocab_size: usize,
    pub max_positions: i64,
}

impl Default for InitConfig {
    fn default() -> Self {
        InitConfig { preset: "small".into(), vocab_size: 1024, max_positions: 512 }
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
#[serde(default)]
pub struct PretrainConfig {
    /// `task` gives the few-shot evaluation (validation: the end of its train split), `prompt`
    /// how it asks (few-shot by default); `model` stays empty: the model is `[init]`.
    #[serde(flatten)]
    pub common: RunSpec,
    pub init: InitConfig,
    pub corpus: CorpusConfig,
    pub train: TrainConfig,
    pub eval: EvalSpec,
}

impl Default for PretrainConfig {
    fn default() -> Self {
        let prompt = PromptConfig { format: PromptFormat::FewShot, shots: 4, ..PromptConfig::default() };
        PretrainConfig {
            common: RunSpec { prompt, ..RunSpec::named("pretrain") },
            init: InitConfig::default(),
            corpus: CorpusConfig::default(),
            train: TrainConfig::default(),
            eval: EvalSpec { problems: 200, ..EvalSpec::default() },
        }
    }
}

impl Config for PretrainConfig {
    fn check(&self) -> std::result::Result<(), String> {
        if !self.common.model.as_os_str().is_empty() {
            return Err("`model` is not read by pretraining, which starts from `[init]`".into());
        }
        self.eval.check("eval.")
    }
}

/// Runs pretraining; the model ends in `RUN/final`.
pub fn run(cfg: &PretrainConfig, resume: bool, force: bool) -> Result<PathBuf> {
    let common = &cfg.common;
    let setup = common.prepare(cfg, resume, force)?;
    let (dir, device) = (&setup.dir, setup.device);
    let documents = corpus::pretraining_corpus(cfg.corpus.level, cfg.corpus.documents, cfg.corpus.seed);
    // The tokenizer also learns the words of the prompt format, which the corpus never shows.
    let tokenizer_text = documents.iter().cloned().chain(std::iter::once(crate::prompt::plain("How many?")));
    let (mut model, tokenizer) = presets::init_from_scratch(
        &cfg.init.preset,
        tokenizer_text,
        cfg.init.vocab_size,
        cfg.init.max_positions,
        common.seed,
        device,
    )?;
    if let Some(lora) = &common.lora {
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

    let mut problems = setup.load(Split::Train, 0)?;
    let validation = problems.split_off(problems.len().saturating_sub(cfg.eval.problems));
    let prompter = common.prompter(&problems)?;
    eprintln!(
        "pretrain: {} documents, {} tokens in {} rows of {}, run folder {}",
        documents.len(),
        stream.len(),
        examples.len(),
        row + 1,
        dir.display()
    );
    let mut trainer = Trainer::new(&mut model, &tokenizer, cfg.train.clone(), dir, resume)?;
    trainer.checkpoints = trainer.checkpoints.tracked(&cfg.common.log);
    let mut eval = |m: &crate::model::CausalLm, _: &super::checkpoint::TrainerState| {
        evaluate_policy(m, &tokenizer, &prompter, &validation, &cfg.eval, 0, cfg.common.rollout.dtype)
    };
    trainer.train(&examples, &mut eval)?;
    crate::run::save_final(dir, &model, &tokenizer)
}
