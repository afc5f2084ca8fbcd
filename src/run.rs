//! What every training run shares: the common block of its config (flattened into each
//! algorithm's config, so `model`, `task`, `seed`, `[run]`, `[prompt]`, `[rollout]` and `[lora]`
//! read the same everywhere) and the prelude that turns it into a run folder, a device, the
//! policy with its tokenizer and adapters, and the task.

use crate::engine::{Engine, RolloutConfig};
use crate::error::{Error, Result};
use crate::model::lora::LoraConfig;
use crate::model::CausalLm;
use crate::prompt::{PromptConfig, Prompter};
use crate::task::{Problem, Split, TaskSpec};
use crate::tokenizer::Tokenizer;
use crate::track::LogConfig;
pub use crate::track::{Metrics, METRICS_FILE};
use std::path::{Path, PathBuf};
use tch::Device;

/// Where a run writes (`[run]` in configs): `OUT_DIR/NAME/`, and on which device.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    pub name: String,
    pub out_dir: PathBuf,
    /// cpu, cuda or cuda:N.
    pub device: String,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig { name: "run".into(), out_dir: "runs".into(), device: "cpu".into() }
    }
}

impl RunConfig {
    pub fn named(name: &str) -> Self {
        RunConfig { name: name.into(), ..RunConfig::default() }
    }

    pub fn dir(&self) -> PathBuf {
        self.out_dir.join(&self.name)
    }
}

/// The settings every algorithm has, flattened into its config.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct RunSpec {
    pub run: RunConfig,
    /// The starting model folder (the policy; the ORM's policy whose solutions it judges).
    pub model: PathBuf,
    /// The task (see `TaskSpec`): builtin[:LEVEL[:SEED]], gsm8k:PATH, ...
    pub task: String,
    /// Seeds torch's generator (fresh heads, adapters) and the run's samplers.
    pub seed: u64,
    pub prompt: PromptConfig,
    /// The engine that samples (`local`, or OpenAI-compatible servers).
    pub rollout: RolloutConfig,
    /// LoRA adapters instead of full fine-tuning, when `[lora]` is present.
    pub lora: Option<LoraConfig>,
    /// Trackers besides `metrics.jsonl` (TensorBoard, MLflow).
    pub log: LogConfig,
}

impl Default for RunSpec {
    fn default() -> Self {
        RunSpec {
            run: RunConfig::default(),
            model: PathBuf::new(),
            task: "builtin".into(),
            seed: 0,
            prompt: PromptConfig::default(),
            rollout: RolloutConfig::default(),
            lora: None,
            log: LogConfig::default(),
        }
    }
}

impl RunSpec {
    /// The defaults of the algorithm `name` (its run folder's name).
    pub fn named(name: &str) -> Self {
        RunSpec { run: RunConfig::named(name), ..RunSpec::default() }
    }

    /// The prelude without a model: the run folder (with the resolved `config`), the device and
    /// the task.
    pub fn prepare<C: serde::Serialize>(&self, config: &C, resume: bool, force: bool) -> Result<Setup> {
        self.log.check()?;
        let dir = self.run.dir();
        prepare_run_dir(&dir, &crate::config::to_toml(config), resume, force)?;
        let device = crate::parse_device(&self.run.device)?;
        let task = TaskSpec::parse(&self.task)?;
        Ok(Setup { dir, device, task })
    }

    /// The whole prelude: [`RunSpec::prepare`], then the policy (with a fresh scalar head when
    /// `value_head`; torch's generator seeded first, so the head and adapters are drawn from
    /// `seed`) and its tokenizer, with `[lora]` adapters over it.
    pub fn open<C: serde::Serialize>(&self, config: &C, resume: bool, force: bool, value_head: bool) -> Result<Run> {
        let model = self.model()?;
        let setup = self.prepare(config, resume, force)?;
        tch::manual_seed(self.seed as i64);
        let (mut policy, tokenizer) = CausalLm::load_with_tokenizer(model, setup.device, value_head)?;
        policy.maybe_add_lora(self.lora.as_ref(), &self.model)?;
        Ok(Run { setup, policy, tokenizer })
    }

    /// The starting model folder; refused when unset, before any work.
    pub fn model(&self) -> Result<&Path> {
        if self.model.as_os_str().is_empty() {
            return Err(Error::Invalid("no model to start from: set `model` (a model folder)".into()));
        }
        Ok(&self.model)
    }

    /// The engine that samples for this run, its work folder in the run's; `trains`: the policy
    /// changes during the run, so the engine must follow it.
    pub fn engine(&self, dir: &Path, trains: bool) -> Result<Engine> {
        Engine::new(&self.rollout, &dir.join("engine"), trains)
    }

    /// The prompter, its few-shot examples (if any) drawn from `train`.
    pub fn prompter(&self, train: &[Problem]) -> Result<Prompter> {
        Prompter::new(&self.prompt, train)
    }
}

/// A run folder, a device and a task: what [`RunSpec::prepare`] gives.
pub struct Setup {
    pub dir: PathBuf,
    pub device: Device,
    pub task: TaskSpec,
}

/// What [`RunSpec::open`] gives: the prepared run and the policy with its tokenizer.
pub struct Run {
    pub setup: Setup,
    pub policy: CausalLm,
    pub tokenizer: Tokenizer,
}

impl Setup {
    /// The first `limit` problems of `split` (0 = all).
    pub fn load(&self, split: Split, limit: usize) -> Result<Vec<Problem>> {
        self.task.load(split, (limit > 0).then_some(limit))
    }
}

/// Saves the run's last model into `RUN/final` and returns that folder.
pub fn save_final(dir: &Path, model: &CausalLm, tokenizer: &Tokenizer) -> Result<PathBuf> {
    let last = dir.join("final");
    model.save_with_tokenizer(tokenizer, &last, true)?;
    Ok(last)
}

/// Makes the run folder and writes its resolved `config.toml`. A folder that already holds a
/// run is only reused with `resume`, or wiped with `force`.
pub fn prepare_run_dir(dir: &Path, config_toml: &str, resume: bool, force: bool) -> Result<()> {
    let used = dir.join("checkpoints").exists() || dir.join(METRICS_FILE).exists();
    if resume && !used {
        return Err(Error::file(dir, "nothing to resume: the run folder has no checkpoints"));
    }
    if used && !resume {
        if !force {
            return Err(Error::file(
                dir,
                "already holds a run (pass --resume to continue it or --force to start over)",
            ));
        }
        crate::fsutil::check_overwrite(dir, force)?; // only a folder reasonrl wrote is wiped
        crate::fsutil::remove_dir(dir)?;
    }
    crate::fsutil::create_output_dir(dir)?;
    crate::fsutil::write_atomic(&dir.join("config.toml"), |w| w.write_all(config_toml.as_bytes()))
}
