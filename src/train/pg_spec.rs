//! The settings PPO and GRPO/RLOO share, flattened into each config: the run, the sampling, the
//! optimiser, evaluation, checkpoints, the reward, the clip range and the engine correction.

use super::optim::{Schedule, TrainConfig};
use super::pg::{correction_weights, Clip, Correction, PerToken, RatioLevel};
use crate::eval::policy::EvalSpec;
use crate::model::CausalLm;
use crate::reward::RewardConfig;
use crate::rollout::Episode;
use crate::run::RunSpec;
use crate::sample::Sampling;
use std::path::Path;
use tch::Device;

/// What PPO and GRPO/RLOO configs share (flattened into each).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct PgSpec {
    /// `model` is the initial policy, and the frozen reference of the KL penalty.
    #[serde(flatten)]
    pub common: RunSpec,
    /// Training questions drawn from (the first N of the train split; 0 = all), in a shuffled
    /// stream.
    pub questions: usize,
    /// Policy updates, each on a fresh rollout batch.
    pub updates: usize,
    pub prompts_per_update: usize,
    /// K samples per prompt (GRPO's group size G), on the `[rollout]` engine, synced every
    /// `rollout.sync_every` updates; the ratios' base is the policy at this temperature.
    pub sampling: Sampling,
    /// Passes over each rollout batch, and minibatches per pass.
    pub epochs: usize,
    pub minibatches: usize,
    /// The ratio's clip range, [1 - clip, 1 + clip] (PPO, GRPO: 0.2).
    pub clip: f64,
    /// The ratio's upper clip, 1 + clip_high (DAPO's clip-higher: 0.28); unset, `clip`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clip_high: Option<f64>,
    /// Dual-clip's c: a negative advantage's loss is capped at -A c (Ye et al. 2020, "Mastering
    /// Complex Control in MOBA Games with Deep RL": 3); unset, none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dual_clip: Option<f64>,
    /// The engine-trainer gap: `none`, `truncate` (TIS: weigh by min(rho, cap)) or `mask` (MIS:
    /// drop outside [1 / cap, cap]), with rho = p_trainer / p_engine of each sampled `token` or
    /// of the whole response (`sequence`) (Yao et al. 2025; verl's cap: 2).
    pub engine_correction: Correction,
    pub engine_correction_level: RatioLevel,
    pub engine_correction_cap: f64,
    /// KL penalty coefficient (PPO, the paper: 0.05; GRPO: 0.04).
    pub kl_coef: f64,
    pub reward: RewardConfig,
    /// Optimiser: lr, schedule, warm-up, AdamW betas, weight decay, gradient clipping, and
    /// `batch_tokens`, the micro-batch budget (the schedule spans `updates * epochs *
    /// minibatches`; the epoch and step fields are unused).
    pub optim: TrainConfig,
    /// Test evaluation every N updates (and at the start and end).
    pub eval_every: usize,
    pub eval: EvalSpec,
    /// Checkpoint every N updates (0 = only at the end), for `--resume`.
    pub save_every: usize,
}

impl Default for PgSpec {
    fn default() -> Self {
        PgSpec::named("run")
    }
}

impl PgSpec {
    /// The shared defaults, under the run name `name`.
    pub fn named(name: &str) -> Self {
        PgSpec {
            common: RunSpec::named(name),
            questions: 0,
            updates: 100,
            prompts_per_update: 64,
            sampling: Sampling::default(),
            epochs: 1,
            minibatches: 2,
            clip: 0.2,
            clip_high: None,
            dual_clip: None,
            engine_correction: Correction::None,
            engine_correction_level: RatioLevel::Token,
            engine_correction_cap: 2.0,
            kl_coef: 0.05,
            reward: RewardConfig::default(),
            optim: TrainConfig {
                lr: 5e-5,
                warmup_steps: 10,
                schedule: Schedule::Constant,
                weight_decay: 0.0,
                ..TrainConfig::default()
            },
            eval_every: 10,
            eval: EvalSpec::default(),
            save_every: 0,
        }
    }

    /// The range rules shared by PPO and GRPO.
    pub fn check(&self, min_k: usize) -> std::result::Result<(), String> {
        self.sampling.check("sampling.", min_k)?;
        self.eval.check("eval.")?;
        self.reward.check("reward.")?;
        if self.minibatches == 0 || self.epochs == 0 || self.prompts_per_update == 0 {
            return Err("`epochs`, `minibatches` and `prompts_per_update` must be at least 1".into());
        }
        if self.clip.is_nan() || self.clip <= 0.0 || self.clip_high.is_some_and(|c| c.is_nan() || c <= 0.0) {
            return Err("`clip` and `clip_high` must be positive".into());
        }
        if self.dual_clip.is_some_and(|c| c.is_nan() || c <= 1.0) {
            return Err("`dual_clip` must be above 1 (Ye et al. use 3)".into());
        }
        if self.engine_correction_cap.is_nan() || self.engine_correction_cap <= 1.0 {
            return Err("`engine_correction_cap` must be above 1 (verl uses 2)".into());
        }
        if self.optim.grad_accum != 1 {
            let why = "minibatches accumulate over micro-batches of `optim.batch_tokens`: set that instead";
            return Err(format!("`optim.grad_accum` = {}: {why}", self.optim.grad_accum));
        }
        if self.optim.batch_tokens == 0 {
            return Err("`optim.batch_tokens` must be at least 1".into());
        }
        if self.optim.lr <= 0.0 {
            return Err(format!("`optim.lr` = {}: must be positive", self.optim.lr));
        }
        Ok(())
    }

    /// The ratio's clip range and dual-clip bound.
    pub fn clip_range(&self) -> Clip {
        Clip { low: self.clip, high: self.clip_high.unwrap_or(self.clip), dual: self.dual_clip }
    }

    /// Each sampled token's correction weight: the engine that sampled is the behaviour policy,
    /// `old_logprobs` the trainer's.
    pub fn correction(&self, episodes: &[Episode], old_logprobs: &[Vec<f32>]) -> PerToken {
        let (how, level, cap) = (self.engine_correction, self.engine_correction_level, self.engine_correction_cap);
        episodes
            .iter()
            .zip(old_logprobs)
            .map(|(e, old)| correction_weights(old, &e.logprobs, how, level, cap))
            .collect()
    }

    /// A model that scores or trains beside the policy (the frozen reference, PPO's critic), its
    /// matmuls in the run's precision.
    pub fn load_scorer(&self, folder: &Path, device: Device, value_head: bool) -> crate::error::Result<CausalLm> {
        let model = CausalLm::load(folder, device, value_head)?;
        model.net.set_bf16_matmuls(self.optim.bf16_matmuls());
        Ok(model)
    }

    /// Episodes per update.
    pub fn episodes_per_update(&self) -> usize {
        self.prompts_per_update * self.sampling.samples_per_prompt
    }
}
