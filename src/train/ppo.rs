//! Proximal Policy Optimisation (Schulman et al. 2017) as Havrilla et al. 2024 use it: a policy
//! with a value head (on the shared trunk, or a separate critic), a frozen copy of the initial
//! policy as reference, the per-token KL penalty folded into the reward, GAE, whitened
//! advantages, clipped policy and value losses, an entropy bonus, several epochs of minibatches
//! per rollout batch with an early stop on a target KL. Rewards come from `reward.rs` (sparse by
//! default; heuristic or ORM dense).
//!
//! Each update:
//! 1. sample responses to a batch of training prompts from the policy;
//! 2. reward them per token, subtract kl_coef * (log pi - log pi_ref) at every token;
//! 3. GAE over the values -> advantages (whitened) and returns;
//! 4. for `epochs`, for each minibatch: loss = clipped policy loss + vf_coef * clipped value
//!    loss - ent_coef * entropy; stop early once the approximate KL passes `target_kl`.

use super::checkpoint::PgState;
use super::minibatch::{micro_batches, minibatch_rng};
use super::optim::{learning_rate, AdamW};
use super::pg::{
    clipped_value_loss, correction_stats, explained_variance, gae, masked_mean, pad_rows, policy_loss, score_responses,
    whiten, RatioLevel,
};
use super::pg_run::{PgRun, PgSpec, Trained};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::model::llama::HEAD_PREFIX;
use crate::model::CausalLm;
use crate::rollout::Episode;
use crate::run::Metrics;
use std::path::PathBuf;

/// Where the value function lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Critic {
    /// A value head on the policy's trunk.
    Shared,
    /// A critic model of its own (a copy of the initial policy with a value head).
    Separate,
}

/// `reasonrl ppo` settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct PpoConfig {
    #[serde(flatten)]
    pub pg: PgSpec,
    pub gamma: f64,
    pub lambda: f64,
    pub value_clip: f64,
    pub vf_coef: f64,
    pub ent_coef: f64,
    /// Adapt kl_coef towards `kl_target` per sequence (Ziegler et al. 2019's controller).
    pub adaptive_kl: bool,
    pub kl_target: f64,
    pub kl_horizon: f64,
    /// Stop an update's epochs once the approximate KL to the rollout policy passes this (0 = off).
    pub target_kl: f64,
    pub whiten_advantages: bool,
    pub critic: Critic,
    /// Learning rate of the value head (shared) or the critic (separate); 0 = `optim.lr`. A fresh
    /// head learns too slowly at a policy's learning rate: its explained variance stays negative.
    pub value_lr: f64,
    /// First updates that train only the value function (OpenRLHF's frozen-actor steps): the
    /// policy is not changed, but their samples count.
    pub critic_warmup_updates: usize,
}

impl Default for PpoConfig {
    fn default() -> Self {
        PpoConfig {
            pg: PgSpec { epochs: 4, minibatches: 4, ..PgSpec::named("ppo") },
            gamma: 1.0,
            lambda: 0.95,
            value_clip: 0.2,
            vf_coef: 0.1,
            ent_coef: 0.0,
            adaptive_kl: false,
            kl_target: 6.0,
            kl_horizon: 10000.0,
            target_kl: 0.1,
            whiten_advantages: true,
            critic: Critic::Shared,
            value_lr: 0.0,
            critic_warmup_updates: 0,
        }
    }
}

impl Config for PpoConfig {
    fn check(&self) -> std::result::Result<(), String> {
        if self.value_lr < 0.0 {
            return Err(format!("`value_lr` = {}: must not be negative", self.value_lr));
        }
        self.pg.check(1)
    }
}

/// One rollout batch with everything the update needs, per episode (host side).
struct Batch {
    episodes: Vec<Episode>,
    old_logprobs: Vec<Vec<f32>>,
    old_values: Vec<Vec<f32>>,
    advantages: Vec<Vec<f32>>,
    returns: Vec<Vec<f32>>,
    /// Each token's engine-trainer correction weight.
    correction: Vec<Vec<f32>>,
}

/// Runs PPO; the policy ends in `RUN/final`.
pub fn run(cfg: &PpoConfig, resume: bool, force: bool) -> Result<PathBuf> {
    let pg = &cfg.pg;
    let separate = cfg.critic == Critic::Separate;
    let (mut run, mut policy) = PgRun::start(pg, cfg, !separate, resume, force)?;
    let mut critic = if separate {
        let mut critic = pg.load_scorer(&pg.common.model, run.device, true)?;
        critic.maybe_add_lora(pg.common.lora.as_ref(), &pg.common.model)?;
        Some(critic)
    } else {
        None
    };
    let mut optimizer = AdamW::new(&policy);
    let mut critic_optimizer = critic.as_ref().map(AdamW::new);
    let mut clocks = PgState { lr_step: 0, kl_coef: pg.kl_coef, prompts_taken: 0 };
    let mut done = 0;
    if resume {
        let critic = critic.as_mut().zip(critic_optimizer.as_mut());
        (done, clocks) = run.resume(&mut policy, &mut optimizer, critic)?;
    }
    // A fresh value head is initialised at random on each rank: rank 0's wins.
    let world = crate::dist::world();
    world.broadcast_weights(&policy.vs)?;
    if let Some(critic) = &critic {
        world.broadcast_weights(&critic.vs)?;
    }
    let total_steps = pg.updates * pg.epochs * pg.minibatches;

    for update in done + 1..=pg.updates {
        let kl_coef = clocks.kl_coef;
        // 1. Sample, and score the samples under the policy, its critic and the reference.
        let sampled = run.sample(&policy, update, 0).and_then(|s| Ok((run.rewards(&s.0)?, s)));
        let (rewards, (episodes, old_logprobs, shared_values)) = match sampled {
            Ok(sampled) => sampled,
            Err(e) => {
                let critic = critic.as_ref().zip(critic_optimizer.as_ref());
                let trained = Trained { policy: &policy, optimizer: &optimizer, critic, state: clocks.clone() };
                return Err(run.failed_update(trained, update, e));
            }
        };
        let refs: Vec<&Episode> = episodes.iter().collect();
        let old_values = match &critic {
            Some(c) => run.score(c, &refs)?.1,
            None => shared_values,
        }
        .expect("the critic has a value head");
        let ref_logprobs = run.reference_logprobs(&policy, &refs)?;
        // 2. The KL penalty to the reference at every token, on the rewards.
        let mut kl_sum = 0.0;
        let mut shaped = rewards.clone();
        for ((r, old), reference) in shaped.iter_mut().zip(&old_logprobs).zip(ref_logprobs.iter().flatten()) {
            for ((r, o), q) in r.iter_mut().zip(old).zip(reference) {
                *r -= (kl_coef * (o - q) as f64) as f32;
                kl_sum += (o - q) as f64;
            }
        }
        let mean_kl = kl_sum / episodes.len() as f64;
        // 3. Advantages and returns.
        let (mut advantages, returns): (Vec<Vec<f32>>, Vec<Vec<f32>>) =
            shaped.iter().zip(&old_values).map(|(r, v)| gae(r, v, cfg.gamma, cfg.lambda)).unzip();
        if cfg.whiten_advantages {
            whiten(&mut advantages);
        }
        let correction = pg.correction(&episodes, &old_logprobs);
        let batch = Batch { episodes, old_logprobs, old_values, advantages, returns, correction };
        // 4. Epochs of minibatches.
        let mut stats = UpdateStats::default();
        let mut rng = minibatch_rng(pg.common.seed, update);
        'epochs: for _ in 0..pg.epochs {
            let mut order: Vec<usize> = (0..batch.episodes.len()).collect();
            rng.shuffle(&mut order);
            for mb in order.chunks(order.len().div_ceil(pg.minibatches)) {
                let lr = learning_rate(&pg.optim, clocks.lr_step, total_steps);
                clocks.lr_step += 1;
                let critic = critic.as_mut().zip(critic_optimizer.as_mut());
                let value_lr = if cfg.value_lr > 0.0 { lr * cfg.value_lr / pg.optim.lr } else { lr };
                let policy_lr = if update > cfg.critic_warmup_updates { lr } else { 0.0 };
                let lrs = (policy_lr, value_lr);
                let approx_kl = minibatch_step(cfg, &batch, mb, &policy, &mut optimizer, critic, lrs, &mut stats)?;
                if cfg.target_kl > 0.0 && approx_kl > cfg.target_kl {
                    stats.early_stops += 1;
                    break 'epochs;
                }
            }
        }
        if cfg.adaptive_kl {
            let error = (mean_kl / cfg.kl_target - 1.0).clamp(-0.2, 0.2);
            clocks.kl_coef *= 1.0 + error * batch.episodes.len() as f64 / cfg.kl_horizon;
        }
        // 5. Log.
        let n = batch.episodes.len() as f64;
        let mut line = stats.finish();
        line.extend([
            ("reward/mean".into(), rewards.iter().map(|r| r.iter().sum::<f32>() as f64).sum::<f64>() / n),
            ("kl/coef".into(), clocks.kl_coef),
            ("value/explained_variance".into(), explained_variance(&batch.old_values, &batch.returns)),
        ]);
        line.extend(correction_stats(&batch.correction));
        if ref_logprobs.is_some() {
            line.insert("kl/reference".into(), mean_kl);
        }
        let message = format!("reward {:.3} kl {mean_kl:.3}", line["reward/mean"]);
        let critic = critic.as_ref().zip(critic_optimizer.as_ref());
        let trained = Trained { policy: &policy, optimizer: &optimizer, critic, state: clocks.clone() };
        run.end_update(trained, update, &batch.episodes, line, message)?;
    }
    run.finish(&policy)
}

/// Running means of what one update's minibatch steps measure.
#[derive(Default)]
struct UpdateStats {
    sums: Metrics,
    steps: usize,
    early_stops: usize,
}

impl UpdateStats {
    fn add(&mut self, name: &str, value: f64) {
        *self.sums.entry(name.into()).or_default() += value;
    }
    fn finish(self) -> Metrics {
        let mut out: Metrics = self.sums.into_iter().map(|(k, v)| (k, v / self.steps.max(1) as f64)).collect();
        out.insert("ppo/minibatch_steps".into(), self.steps as f64);
        out.insert("ppo/early_stopped".into(), self.early_stops as f64);
        out
    }
}

/// One optimiser step on minibatch `mb` of the rollout batch at learning rates (policy, value; a
/// policy rate of 0 trains the value function alone), its gradients accumulated over this rank's
/// micro-batches; returns the approximate KL.
#[allow(clippy::too_many_arguments)]
fn minibatch_step(
    cfg: &PpoConfig,
    batch: &Batch,
    mb: &[usize],
    policy: &CausalLm,
    optimizer: &mut AdamW,
    mut critic: Option<(&mut CausalLm, &mut AdamW)>,
    (policy_lr, value_lr): (f64, f64),
    stats: &mut UpdateStats,
) -> Result<f64> {
    let world = crate::dist::world();
    let device = policy.device();
    // The policy loss is the mean over the minibatch's tokens, each weighed by its engine correction.
    let tokens = mb.iter().map(|&i| batch.episodes[i].response_tokens.len()).sum::<usize>().max(1);
    let parts = micro_batches(mb, &batch.episodes, cfg.pg.optim.batch_tokens);
    optimizer.zero_grad();
    if let Some((_, critic_optimizer)) = critic.as_mut() {
        critic_optimizer.zero_grad();
    }
    let mut logged = [0.0; 7];
    for (mb, share) in &parts {
        let share = *share;
        let episodes: Vec<&Episode> = mb.iter().map(|&i| &batch.episodes[i]).collect();
        let r = episodes.iter().map(|e| e.response_tokens.len()).max().unwrap_or(1).max(1);
        let rows = |x: &[Vec<f32>]| pad_rows(&mb.iter().map(|&i| x[i].as_slice()).collect::<Vec<_>>(), r, device);
        let (old_logprobs, old_values) = (rows(&batch.old_logprobs), rows(&batch.old_values));
        let (advantages, returns) = (rows(&batch.advantages), rows(&batch.returns));

        let scored = score_responses(policy, &episodes, cfg.pg.sampling.temperature);
        let weights = &scored.mask * rows(&batch.correction) / tokens as f64;
        let (policy_loss, [clip_low, clip_high, approx_kl]) = policy_loss(
            &scored.logprobs,
            &old_logprobs,
            &advantages,
            &scored.mask,
            &weights,
            RatioLevel::Token,
            cfg.pg.clip_range(),
        );
        let entropy = masked_mean(&scored.entropy, &scored.mask);
        let mut loss =
            if policy_lr > 0.0 { &policy_loss - &entropy * (cfg.ent_coef * share) } else { policy_loss.zeros_like() };
        let value_loss = match critic.as_mut() {
            None => {
                let values = scored.values.as_ref().expect("a shared critic is the policy's head");
                let value_loss = clipped_value_loss(values, &old_values, &returns, &scored.mask, cfg.value_clip);
                loss += &value_loss * (cfg.vf_coef * share);
                value_loss
            }
            Some((critic, _)) => {
                let values =
                    score_responses(critic, &episodes, cfg.pg.sampling.temperature).values.expect("critic head");
                let value_loss = clipped_value_loss(&values, &old_values, &returns, &scored.mask, cfg.value_clip);
                (&value_loss * share).backward();
                value_loss
            }
        };
        if loss.requires_grad() {
            loss.backward();
        }
        // The policy loss and `loss` are parts of a sum; the rest, means over this part's tokens.
        let sums = [&loss, &policy_loss].map(|t| t.double_value(&[]));
        let means = [&value_loss, &entropy, &approx_kl, &clip_low, &clip_high].map(|t| t.double_value(&[]) * share);
        for (total, v) in logged.iter_mut().zip(sums.into_iter().chain(means)) {
            *total += v;
        }
    }
    let [loss_value, policy_loss, value_loss, entropy, approx_kl, clip_low, clip_high] = world.sum_each(logged)?;
    if !loss_value.is_finite() {
        return Err(Error::Invalid(format!("PPO loss is {loss_value}: stopping (lower optim.lr?)")));
    }
    if let Some((critic, critic_optimizer)) = critic {
        world.all_reduce_grads(&critic.vs)?;
        critic_optimizer.clip_grad_norm(cfg.pg.optim.grad_clip);
        critic_optimizer.step(&cfg.pg.optim, value_lr);
    }
    let trains_policy = policy_lr > 0.0 || cfg.critic == Critic::Shared;
    let grad_norm = if trains_policy {
        world.all_reduce_grads(&policy.vs)?;
        let grad_norm = optimizer.clip_grad_norm(cfg.pg.optim.grad_clip);
        optimizer.step_by(&cfg.pg.optim, |name| if name.starts_with(HEAD_PREFIX) { value_lr } else { policy_lr });
        grad_norm
    } else {
        0.0
    };
    stats.steps += 1;
    stats.add("ppo/policy_loss", policy_loss);
    stats.add("ppo/value_loss", value_loss);
    stats.add("ppo/entropy", entropy);
    stats.add("ppo/approx_kl", approx_kl);
    stats.add("ppo/clip_low_fraction", clip_low);
    stats.add("ppo/clip_high_fraction", clip_high);
    stats.add("ppo/micro_batches", parts.len() as f64);
    stats.add("ppo/grad_norm", grad_norm);
    stats.add("lr", policy_lr);
    stats.add("lr/value", value_lr);
    Ok(approx_kl)
}
