//! Critic-free policy gradients with a group baseline: GRPO (Shao et al. 2024, DeepSeekMath) and
//! RLOO (Ahmadian et al. 2024, after Kool et al. 2019). Each update samples G solutions per
//! prompt and scores each by its reward R (sparse by default):
//! - GRPO: A_i = (R_i - mean(R)) / std(R) within the group (`scale_by_std = false` skips the
//!   division, as Dr. GRPO does);
//! - RLOO: A_i = R_i - mean of the other G - 1 rewards.
//!
//! A group whose rewards are all equal teaches nothing (every advantage is 0). Every response
//! token gets its solution's advantage; the loss is PPO's token-level clipped surrogate, plus
//! kl_coef * k3-KL to the frozen reference as a loss term (`kl_in_reward = false`, GRPO's way) or
//! with kl_coef * the summed log-ratio subtracted from R (RLOO's way). No value model.

use super::checkpoint::PgState;
use super::rl::{
    check_minibatch_size, clipped_policy_loss, kl_k3, masked_mean, minibatch_rng, pad_rows, rank_part, score_responses,
    PgRun, PgSettings, RewardConfig, Trained,
};
use super::rounds::RoundEval;
use super::{learning_rate, AdamW, Metrics, RunConfig, TrainConfig};
use crate::error::{Error, Result};
use crate::prompt::PromptConfig;
use crate::rollout::Episode;
use std::path::PathBuf;

/// `reasonrl grpo` settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpoConfig {
    pub run: RunConfig,
    /// The initial policy, also the frozen reference.
    pub model: PathBuf,
    pub task: String,
    pub questions: usize,
    pub seed: u64,
    /// "grpo" or "rloo".
    pub estimator: String,
    /// GRPO: divide by the group's standard deviation.
    pub scale_by_std: bool,
    pub updates: usize,
    pub prompts_per_update: usize,
    /// G: solutions per prompt.
    pub group_size: usize,
    pub temperature: f64,
    pub max_new_tokens: usize,
    pub sample_batch_size: usize,
    pub epochs: usize,
    pub minibatches: usize,
    pub clip: f64,
    pub kl_coef: f64,
    /// Put the KL penalty in the reward (true) instead of the loss (k3 estimator).
    pub kl_in_reward: bool,
    pub reward: RewardConfig,
    pub prompt: PromptConfig,
    /// The engine that samples (`local`, or OpenAI-compatible servers synced every
    /// `rollout.sync_every` updates).
    pub rollout: crate::engine::RolloutConfig,
    /// Optimiser settings (see `PpoConfig::optim`).
    pub optim: TrainConfig,
    /// LoRA adapters instead of full fine-tuning, when `[lora]` is present.
    pub lora: Option<crate::model::lora::LoraConfig>,
    pub eval_every: usize,
    pub eval: RoundEval,
    pub save_every: usize,
}

impl Default for GrpoConfig {
    fn default() -> Self {
        GrpoConfig {
            run: RunConfig { name: "grpo".into(), ..RunConfig::default() },
            model: PathBuf::new(),
            task: "builtin".into(),
            questions: 0,
            seed: 0,
            estimator: "grpo".into(),
            scale_by_std: true,
            updates: 100,
            prompts_per_update: 16,
            group_size: 8,
            temperature: 1.0,
            max_new_tokens: 160,
            sample_batch_size: 128,
            epochs: 1,
            minibatches: 2,
            clip: 0.2,
            kl_coef: 0.04,
            kl_in_reward: false,
            reward: RewardConfig::default(),
            prompt: PromptConfig::default(),
            rollout: crate::engine::RolloutConfig::default(),
            lora: None,
            optim: TrainConfig {
                lr: 5e-5,
                warmup_steps: 10,
                schedule: "constant".into(),
                weight_decay: 0.0,
                ..TrainConfig::default()
            },
            eval_every: 10,
            eval: RoundEval::default(),
            save_every: 0,
        }
    }
}

/// GRPO advantages of one group: (R - mean) / std (population std; with `scale_by_std` false,
/// R - mean). All-equal rewards give zeros.
pub fn grpo_advantages(rewards: &[f64], scale_by_std: bool) -> Vec<f64> {
    let n = rewards.len() as f64;
    let mean = rewards.iter().sum::<f64>() / n;
    let std = (rewards.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n).sqrt();
    rewards
        .iter()
        .map(|r| {
            if !scale_by_std {
                r - mean
            } else if std > 1e-8 {
                (r - mean) / std
            } else {
                0.0
            }
        })
        .collect()
}

/// RLOO advantages of one group: R_i minus the mean of the other rewards (0 for a group of one).
pub fn rloo_advantages(rewards: &[f64]) -> Vec<f64> {
    let n = rewards.len();
    let total: f64 = rewards.iter().sum();
    rewards.iter().map(|r| if n > 1 { r - (total - r) / (n - 1) as f64 } else { 0.0 }).collect()
}

/// Runs GRPO or RLOO; the policy ends in `RUN/final`.
pub fn run(cfg: &GrpoConfig, resume: bool, force: bool) -> Result<PathBuf> {
    if !["grpo", "rloo"].contains(&cfg.estimator.as_str()) {
        return Err(Error::Invalid(format!("estimator `{}`: use grpo or rloo", cfg.estimator)));
    }
    if cfg.group_size < 2 || cfg.minibatches == 0 || cfg.epochs == 0 || cfg.prompts_per_update == 0 {
        return Err(Error::Invalid(
            "group_size must be at least 2; epochs, minibatches and prompts_per_update positive".into(),
        ));
    }
    let settings = PgSettings {
        run: &cfg.run,
        model: &cfg.model,
        task: &cfg.task,
        questions: cfg.questions,
        seed: cfg.seed,
        updates: cfg.updates,
        temperature: cfg.temperature,
        max_new_tokens: cfg.max_new_tokens,
        sample_batch_size: cfg.sample_batch_size,
        reward: &cfg.reward,
        prompt: &cfg.prompt,
        rollout: &cfg.rollout,
        eval_every: cfg.eval_every,
        eval: &cfg.eval,
        save_every: cfg.save_every,
        lora: cfg.lora.as_ref(),
    };
    let (mut run, mut policy) = PgRun::start(settings, &crate::config::to_toml(cfg), false, resume, force)?;
    check_minibatch_size(cfg.prompts_per_update * cfg.group_size, cfg.minibatches)?;
    let mut optimizer = AdamW::new(&policy);
    let (mut done, mut step) = (0, 0);
    if resume {
        (done, PgState { lr_step: step, .. }) =
            run.resume(&mut policy, &mut optimizer, None, cfg.prompts_per_update)?;
    }
    let world = crate::dist::world();
    world.broadcast_weights(&policy.vs)?;
    let total_steps = cfg.updates * cfg.epochs * cfg.minibatches;

    for update in done + 1..=cfg.updates {
        // 1. G solutions per prompt (ordered by prompt, then sample: groups are contiguous).
        let (episodes, old_logprobs, _) = run.sample(&policy, update, cfg.prompts_per_update, cfg.group_size)?;
        let refs: Vec<&Episode> = episodes.iter().collect();
        let ref_logprobs = run.reference_logprobs(&policy, &refs)?;
        // 2. Sequence rewards and group-relative advantages.
        let log_ratio: Vec<f64> = old_logprobs
            .iter()
            .zip(&ref_logprobs)
            .map(|(o, q)| o.iter().zip(q).map(|(a, b)| (a - b) as f64).sum())
            .collect();
        let rewards: Vec<f64> = run
            .rewards(&episodes)?
            .iter()
            .zip(&log_ratio)
            .map(|(r, kl)| {
                let penalty = if cfg.kl_in_reward { cfg.kl_coef * kl } else { 0.0 };
                r.iter().map(|&x| x as f64).sum::<f64>() - penalty
            })
            .collect();
        let mut advantages = Vec::with_capacity(rewards.len());
        let mut informative_groups = 0;
        for group in rewards.chunks(cfg.group_size) {
            let a = match cfg.estimator.as_str() {
                "rloo" => rloo_advantages(group),
                _ => grpo_advantages(group, cfg.scale_by_std),
            };
            informative_groups += a.iter().any(|&x| x != 0.0) as usize;
            advantages.extend(a);
        }
        // 3. Epochs of minibatches on the token-level clipped objective.
        let mut sums = Metrics::new();
        let mut steps = 0usize;
        let mut rng = minibatch_rng(cfg.seed, update);
        for _ in 0..cfg.epochs {
            let mut order: Vec<usize> = (0..episodes.len()).collect();
            rng.shuffle(&mut order);
            for mb in order.chunks(order.len().div_ceil(cfg.minibatches)) {
                let lr = learning_rate(&cfg.optim, step, total_steps);
                step += 1;
                let (mb, share) = rank_part(mb, &episodes);
                let batch: Vec<&Episode> = mb.iter().map(|&i| &episodes[i]).collect();
                let r = batch.iter().map(|e| e.response_tokens.len()).max().unwrap_or(1).max(1);
                let rows =
                    |x: &[Vec<f32>]| pad_rows(&mb.iter().map(|&i| x[i].as_slice()).collect::<Vec<_>>(), r, run.device);
                let adv: Vec<Vec<f32>> =
                    mb.iter().map(|&i| vec![advantages[i] as f32; episodes[i].response_tokens.len()]).collect();
                let adv = pad_rows(&adv.iter().map(Vec::as_slice).collect::<Vec<_>>(), r, run.device);
                let scored = score_responses(&policy, &batch, cfg.temperature);
                let (pg_loss, clip_fraction, approx_kl) =
                    clipped_policy_loss(&scored.logprobs, &rows(&old_logprobs), &adv, &scored.mask, cfg.clip);
                let kl = masked_mean(&kl_k3(&scored.logprobs, &rows(&ref_logprobs)), &scored.mask);
                let loss = if cfg.kl_in_reward { pg_loss.shallow_clone() } else { &pg_loss + &kl * cfg.kl_coef };
                optimizer.zero_grad();
                (&loss * share).backward();
                world.all_reduce_grads(&policy.vs)?;
                let means =
                    [&loss, &pg_loss, &kl, &clip_fraction, &approx_kl, &masked_mean(&scored.entropy, &scored.mask)]
                        .map(|t| t.double_value(&[]) * share);
                let [value, pg_loss, kl, clip_fraction, approx_kl, entropy] = world.sum_each(means)?;
                if !value.is_finite() {
                    return Err(Error::Invalid(format!("GRPO loss is {value}: stopping (lower optim.lr?)")));
                }
                let grad_norm = optimizer.clip_grad_norm(cfg.optim.grad_clip);
                optimizer.step(&cfg.optim, lr);
                steps += 1;
                for (name, v) in [
                    ("grpo/policy_loss", pg_loss),
                    ("grpo/kl_k3", kl),
                    ("grpo/clip_fraction", clip_fraction),
                    ("grpo/approx_kl", approx_kl),
                    ("grpo/entropy", entropy),
                    ("grpo/grad_norm", grad_norm),
                    ("lr", lr),
                ] {
                    *sums.entry(name.into()).or_default() += v;
                }
            }
        }
        // 4. Log.
        let n = episodes.len() as f64;
        let mut line: Metrics = sums.into_iter().map(|(k, v)| (k, v / steps.max(1) as f64)).collect();
        line.extend([
            ("reward/mean".into(), rewards.iter().sum::<f64>() / n),
            ("kl/reference".into(), log_ratio.iter().sum::<f64>() / n),
            ("grpo/informative_groups".into(), informative_groups as f64 / cfg.prompts_per_update as f64),
        ]);
        let message = format!("reward {:.3}", line["reward/mean"]);
        let trained = Trained {
            policy: &policy,
            optimizer: &optimizer,
            critic: None,
            state: PgState { lr_step: step, kl_coef: cfg.kl_coef },
        };
        run.end_update(trained, update, &episodes, line, message)?;
    }
    run.finish(&policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-9)
    }

    #[test]
    fn group_advantages_by_hand() {
        // Rewards 1, 0, 0, 1: mean 0.5, population std 0.5.
        assert!(close(&grpo_advantages(&[1.0, 0.0, 0.0, 1.0], true), &[1.0, -1.0, -1.0, 1.0]));
        assert!(close(&grpo_advantages(&[1.0, 0.0, 0.0, 1.0], false), &[0.5, -0.5, -0.5, 0.5]));
        // RLOO, rewards 1, 0, 0: 1 - 0, 0 - 1/2, 0 - 1/2.
        assert!(close(&rloo_advantages(&[1.0, 0.0, 0.0]), &[1.0, -0.5, -0.5]));
        // All equal: nothing to learn.
        assert!(close(&grpo_advantages(&[1.0; 4], true), &[0.0; 4]));
        assert!(close(&grpo_advantages(&[0.0; 4], false), &[0.0; 4]));
        assert!(close(&rloo_advantages(&[1.0; 3]), &[0.0; 3]));
    }
}
