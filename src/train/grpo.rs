//! Critic-free policy gradients with a group baseline: GRPO (Shao et al. 2024, DeepSeekMath) and
//! RLOO (Ahmadian et al. 2024, after Kool et al. 2019). Each update samples G solutions per
//! prompt and scores each by its reward R (sparse by default):
//! - GRPO: A_i = (R_i - mean(R)) / std(R) within the group (`scale_by_std = false` skips the
//!   division, as Dr. GRPO does);
//! - RLOO: A_i = R_i - mean of the other G - 1 rewards.
//!
//! A group whose rewards are all equal teaches nothing (every advantage is 0). Every response
//! token gets its solution's advantage; the loss is the clipped surrogate of [`policy_loss`]
//! (token or sequence ratios, GSPO; asymmetric clipping, DAPO; dual-clip), aggregated per token,
//! per response (GRPO) or over a constant (Dr. GRPO), plus kl_coef * k3-KL to the frozen
//! reference, aggregated alike (`kl_in_reward = false`, GRPO's way), or with kl_coef * the summed
//! log-ratio subtracted from R (RLOO's way). No value model.

use super::checkpoint::PgState;
use super::minibatch::{micro_batches, minibatch_rng};
use super::optim::{learning_rate, AdamW};
use super::pg::{
    correction_stats, masked_mean, pad_rows, policy_loss, score_responses, Aggregation, KlEstimator, PerToken,
    RatioLevel,
};
use super::pg_run::{PgRun, PgSpec, Trained};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::model::CausalLm;
use crate::rollout::Episode;
use crate::run::Metrics;
use crate::sample::Finish;
use std::path::PathBuf;

/// The group baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Estimator {
    /// (R - mean) / std within the group (Shao et al. 2024).
    Grpo,
    /// R minus the mean of the other rewards (Ahmadian et al. 2024).
    Rloo,
}

/// `reasonrl grpo` settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct GrpoConfig {
    /// `sampling.samples_per_prompt` is the group size G.
    #[serde(flatten)]
    pub pg: PgSpec,
    pub estimator: Estimator,
    /// GRPO: divide by the group's standard deviation (false: Dr. GRPO's R - mean).
    pub scale_by_std: bool,
    /// Put the KL penalty in the reward (true, RLOO's way) instead of the loss (GRPO's).
    pub kl_in_reward: bool,
    /// The KL estimator, summed over a response in the reward, aggregated like the policy loss in
    /// the loss: `k1`, `k2` or `k3`; unset, k3 in the loss (GRPO's) and k1 in the reward (RLOO's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kl_estimator: Option<KlEstimator>,
    /// How per-token losses add up: `token-mean` (DAPO), `seq-mean-token-mean` (GRPO) or
    /// `seq-mean-token-sum-norm` (Dr. GRPO).
    pub aggregation: Aggregation,
    /// `token` ratios (PPO, GRPO) or the length-normalised `sequence` ratio (GSPO).
    pub ratio: RatioLevel,
    /// Leave responses cut at `max_new_tokens` out of the loss (DAPO's overlong filtering).
    pub mask_truncated: bool,
    /// DAPO's soft overlong punishment: over the last `overlong_buffer` tokens before
    /// `max_new_tokens`, the reward falls linearly to -1 (0 = off; DAPO: 4,096 of 20,480).
    pub overlong_buffer: usize,
    /// DAPO's dynamic sampling: drop groups whose rewards are all equal and sample further
    /// batches of prompts until `prompts_per_update` groups remain, at most `max_extra_batches`.
    pub dynamic_sampling: bool,
    pub max_extra_batches: usize,
}

impl Default for GrpoConfig {
    fn default() -> Self {
        GrpoConfig {
            pg: PgSpec { prompts_per_update: 16, kl_coef: 0.04, ..PgSpec::named("grpo") },
            estimator: Estimator::Grpo,
            scale_by_std: true,
            kl_in_reward: false,
            kl_estimator: None,
            aggregation: Aggregation::TokenMean,
            ratio: RatioLevel::Token,
            mask_truncated: false,
            overlong_buffer: 0,
            dynamic_sampling: false,
            max_extra_batches: 4,
        }
    }
}

impl Config for GrpoConfig {
    fn check(&self) -> std::result::Result<(), String> {
        if self.overlong_buffer > self.pg.sampling.max_new_tokens {
            return Err("`overlong_buffer` must not exceed `sampling.max_new_tokens`".into());
        }
        self.pg.check(2)
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

/// DAPO's soft overlong punishment of a response of `len` tokens: 0 up to max - buffer, then
/// falling linearly to -1 at `max` tokens.
pub fn overlong_penalty(len: usize, max: usize, buffer: usize) -> f64 {
    let free = max.saturating_sub(buffer);
    if buffer == 0 || len <= free {
        0.0
    } else {
        -((len.min(max) - free) as f64) / buffer as f64
    }
}

/// RLOO advantages of one group: R_i minus the mean of the other rewards (0 for a group of one).
pub fn rloo_advantages(rewards: &[f64]) -> Vec<f64> {
    let n = rewards.len();
    let total: f64 = rewards.iter().sum();
    rewards.iter().map(|r| if n > 1 { r - (total - r) / (n - 1) as f64 } else { 0.0 }).collect()
}

/// One update's groups, G solutions per prompt (ordered by prompt, then sample), with their
/// behaviour log-probs and rewards (task reward plus overlong punishment). With dynamic sampling,
/// groups whose rewards are all equal are dropped and further batches drawn until
/// `prompts_per_update` groups remain or `max_extra_batches` are spent; every sample drawn counts
/// in `samples_seen`. Also returns the fraction of the drawn groups kept.
fn sample_groups(
    run: &mut PgRun,
    policy: &CausalLm,
    cfg: &GrpoConfig,
    update: usize,
) -> Result<(Vec<Episode>, PerToken, Vec<f64>, f64)> {
    let (pg, g) = (&cfg.pg, cfg.pg.sampling.samples_per_prompt);
    let (mut episodes, mut logprobs, mut rewards, mut drawn) = (Vec::new(), Vec::new(), Vec::new(), 0);
    for round in 0..=cfg.max_extra_batches {
        let (e, l, _) = run.sample(policy, update, round)?;
        let r: Vec<f64> = run
            .rewards(&e)?
            .iter()
            .zip(&e)
            .map(|(r, e)| {
                let overlong =
                    overlong_penalty(e.response_tokens.len(), pg.sampling.max_new_tokens, cfg.overlong_buffer);
                r.iter().map(|&x| x as f64).sum::<f64>() + overlong
            })
            .collect();
        drawn += e.len() / g;
        for ((eg, lg), rg) in e.chunks(g).zip(l.chunks(g)).zip(r.chunks(g)) {
            if cfg.dynamic_sampling && rg.iter().all(|&x| x == rg[0]) {
                continue;
            }
            episodes.extend_from_slice(eg);
            logprobs.extend_from_slice(lg);
            rewards.extend_from_slice(rg);
        }
        if !cfg.dynamic_sampling || episodes.len() >= pg.prompts_per_update * g {
            break;
        }
    }
    let keep = episodes.len().min(pg.prompts_per_update * g);
    let kept = (keep / g) as f64 / drawn.max(1) as f64;
    episodes.truncate(keep);
    logprobs.truncate(keep);
    rewards.truncate(keep);
    Ok((episodes, logprobs, rewards, kept))
}

/// Runs GRPO or RLOO; the policy ends in `RUN/final`.
pub fn run(cfg: &GrpoConfig, resume: bool, force: bool) -> Result<PathBuf> {
    let pg = &cfg.pg;
    let group_size = pg.sampling.samples_per_prompt;
    let (mut run, mut policy) = PgRun::start(pg, cfg, false, resume, force)?;
    let mut optimizer = AdamW::new(&policy);
    let (mut done, mut step) = (0, 0);
    if resume {
        (done, PgState { lr_step: step, .. }) = run.resume(&mut policy, &mut optimizer, None)?;
    }
    let world = crate::dist::world();
    world.broadcast_weights(&policy.vs)?;
    let total_steps = pg.updates * pg.epochs * pg.minibatches;

    for update in done + 1..=pg.updates {
        // 1. G solutions per prompt (groups are contiguous), the uninformative ones dropped with
        // dynamic sampling.
        let state = PgState { lr_step: step, kl_coef: pg.kl_coef, prompts_taken: 0 };
        let (episodes, old_logprobs, task_rewards, kept_groups) = match sample_groups(&mut run, &policy, cfg, update) {
            Ok(sampled) => sampled,
            Err(e) => {
                let trained = Trained { policy: &policy, optimizer: &optimizer, critic: None, state };
                return Err(run.failed_update(trained, update, e));
            }
        };
        let refs: Vec<&Episode> = episodes.iter().collect();
        let ref_logprobs = run.reference_logprobs(&policy, &refs)?;
        let correction = pg.correction(&episodes, &old_logprobs);
        // 2. Sequence rewards and group-relative advantages.
        // Each response's KL to the reference, summed over its tokens: by the chosen estimator
        // (the reward's penalty) and by k1 (the log-ratio that `kl/reference` logs, as PPO does).
        let kl_sum = |k: KlEstimator| -> Vec<f64> {
            let Some(ref_logprobs) = &ref_logprobs else { return vec![0.0; episodes.len()] };
            let sum = |(o, q): (&Vec<f32>, &Vec<f32>)| o.iter().zip(q).map(|(&a, &b)| k.of(a as f64, b as f64)).sum();
            old_logprobs.iter().zip(ref_logprobs).map(sum).collect()
        };
        let log_ratio = kl_sum(KlEstimator::K1);
        let penalties = match cfg.kl_estimator {
            Some(k) if k != KlEstimator::K1 => kl_sum(k),
            _ => log_ratio.clone(),
        };
        let rewards: Vec<f64> = task_rewards
            .iter()
            .zip(&penalties)
            .map(|(r, kl)| if cfg.kl_in_reward { r - pg.kl_coef * kl } else { *r })
            .collect();
        let mut advantages = Vec::with_capacity(rewards.len());
        let mut informative_groups = 0;
        for group in rewards.chunks(group_size) {
            let a = match cfg.estimator {
                Estimator::Rloo => rloo_advantages(group),
                Estimator::Grpo => grpo_advantages(group, cfg.scale_by_std),
            };
            informative_groups += a.iter().any(|&x| x != 0.0) as usize;
            advantages.extend(a);
        }
        let adv: PerToken =
            episodes.iter().zip(&advantages).map(|(e, &a)| vec![a as f32; e.response_tokens.len()]).collect();
        // 3. Epochs of minibatches on the token-level clipped objective.
        let mut sums = Metrics::new();
        let mut steps = 0usize;
        let mut rng = minibatch_rng(pg.common.seed, update);
        let batch =
            Batch { episodes: &episodes, old_logprobs: &old_logprobs, advantages: &adv, correction: &correction };
        // Dynamic sampling may keep no group at all: then there is nothing to train on.
        let epochs = if episodes.is_empty() { 0 } else { pg.epochs };
        for _ in 0..epochs {
            let mut order: Vec<usize> = (0..episodes.len()).collect();
            rng.shuffle(&mut order);
            for mb in order.chunks(order.len().div_ceil(pg.minibatches)) {
                let lr = learning_rate(&pg.optim, step, total_steps);
                step += 1;
                steps += 1;
                let logged = minibatch_step(cfg, &batch, ref_logprobs.as_ref(), mb, &policy, &mut optimizer, lr)?;
                for (name, v) in logged.into_iter().chain([("lr", lr)]) {
                    *sums.entry(name.into()).or_default() += v;
                }
            }
        }
        // 4. Log.
        let n = episodes.len().max(1) as f64;
        let mut line: Metrics = sums.into_iter().map(|(k, v)| (k, v / steps.max(1) as f64)).collect();
        let mean = rewards.iter().sum::<f64>() / n;
        let std = (rewards.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n).sqrt();
        line.extend([
            ("reward/mean".into(), mean),
            ("reward/std".into(), std),
            ("grpo/informative_groups".into(), informative_groups as f64 / pg.prompts_per_update as f64),
            ("grpo/kept_groups".into(), kept_groups),
        ]);
        line.extend(correction_stats(&correction));
        if ref_logprobs.is_some() {
            line.insert("kl/reference".into(), log_ratio.iter().sum::<f64>() / n);
        }
        let message = format!("reward {:.3}", line["reward/mean"]);
        let state = PgState { lr_step: step, ..state };
        let trained = Trained { policy: &policy, optimizer: &optimizer, critic: None, state };
        run.end_update(trained, update, &episodes, line, message)?;
    }
    run.finish(&policy)
}

/// What an update's minibatches are cut from: the episodes and, per token, the trainer's
/// log-probs at sampling, the advantages and the engine-trainer correction weights.
struct Batch<'a> {
    episodes: &'a [Episode],
    old_logprobs: &'a PerToken,
    advantages: &'a PerToken,
    correction: &'a PerToken,
}

/// One optimiser step on minibatch `mb`, its gradients accumulated over this rank's
/// micro-batches; returns what it measured.
fn minibatch_step(
    cfg: &GrpoConfig,
    batch: &Batch,
    ref_logprobs: Option<&PerToken>,
    mb: &[usize],
    policy: &CausalLm,
    optimizer: &mut AdamW,
    lr: f64,
) -> Result<[(&'static str, f64); 8]> {
    let (pg, episodes) = (&cfg.pg, batch.episodes);
    // Token weights from the whole minibatch: the weighted sums of its parts add up to it.
    let counted = |i: usize| !(cfg.mask_truncated && episodes[i].finish == Finish::Length);
    let tokens = mb.iter().filter(|&&i| counted(i)).map(|&i| episodes[i].response_tokens.len()).sum();
    let responses = mb.iter().filter(|&&i| counted(i)).count();
    let mut weights = vec![Vec::new(); episodes.len()];
    for &i in mb {
        let (len, max) = (episodes[i].response_tokens.len(), pg.sampling.max_new_tokens);
        let weight = if counted(i) { cfg.aggregation.token_weight(len, responses, tokens, max) as f32 } else { 0.0 };
        weights[i] = batch.correction[i].iter().map(|c| c * weight).collect();
    }
    let kl_estimator = cfg.kl_estimator.unwrap_or(KlEstimator::K3);
    let world = crate::dist::world();
    optimizer.zero_grad();
    // Without a KL term, a response whose advantage is zero adds nothing to the gradient (its
    // loss is 0 x ratio): it skips the forward and backward passes, which at a low solve rate
    // are most of an update's. Its tokens still count in the weights above.
    let trains = |i: &&usize| ref_logprobs.is_some() || batch.advantages[**i].iter().any(|&a| a != 0.0);
    let informative: Vec<usize> = mb.iter().filter(trains).copied().collect();
    let parts = micro_batches(&informative, episodes, pg.optim.batch_tokens);
    let mut logged = [0.0; 7];
    for (mb, share) in &parts {
        let share = *share;
        let part: Vec<&Episode> = mb.iter().map(|&i| &episodes[i]).collect();
        let r = part.iter().map(|e| e.response_tokens.len()).max().unwrap_or(1).max(1);
        let rows =
            |x: &[Vec<f32>]| pad_rows(&mb.iter().map(|&i| x[i].as_slice()).collect::<Vec<_>>(), r, policy.device());
        let weights = rows(&weights);
        let scored = score_responses(policy, &part, pg.sampling.temperature);
        let (old, adv) = (rows(batch.old_logprobs), rows(batch.advantages));
        let (pg_loss, [clip_low, clip_high, approx_kl]) =
            policy_loss(&scored.logprobs, &old, &adv, &scored.mask, &weights, cfg.ratio, pg.clip_range());
        let kl = match ref_logprobs {
            Some(q) => (kl_estimator.per_token(&scored.logprobs, &rows(q)) * &weights).sum(tch::Kind::Float),
            None => tch::Tensor::zeros([], (tch::Kind::Float, policy.device())),
        };
        let loss = if cfg.kl_in_reward { pg_loss.shallow_clone() } else { &pg_loss + &kl * pg.kl_coef };
        loss.backward();
        // The losses are parts of a sum; the diagnostics, means over this part's tokens.
        let sums = [&loss, &pg_loss, &kl].map(|t| t.double_value(&[]));
        let means = [&clip_low, &clip_high, &approx_kl, &masked_mean(&scored.entropy, &scored.mask)]
            .map(|t| t.double_value(&[]) * share);
        for (total, v) in logged.iter_mut().zip(sums.into_iter().chain(means)) {
            *total += v;
        }
    }
    world.all_reduce_grads(&policy.vs)?;
    let [value, pg_loss, kl, clip_low, clip_high, approx_kl, entropy] = world.sum_each(logged)?;
    if !value.is_finite() {
        return Err(Error::Invalid(format!("GRPO loss is {value}: stopping (lower optim.lr?)")));
    }
    let grad_norm = optimizer.clip_grad_norm(pg.optim.grad_clip);
    optimizer.step(&pg.optim, lr);
    Ok([
        ("grpo/policy_loss", pg_loss),
        ("grpo/kl", kl),
        ("grpo/clip_low_fraction", clip_low),
        ("grpo/clip_high_fraction", clip_high),
        ("grpo/approx_kl", approx_kl),
        ("grpo/entropy", entropy),
        ("grpo/grad_norm", grad_norm),
        ("grpo/micro_batches", parts.len() as f64),
    ])
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

    #[test]
    fn without_kl_a_zero_advantage_response_skips_the_passes_and_the_step_is_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::model::ModelConfig::llama(40, 16, 32, 1, 2, 1, 32, true);
        tch::manual_seed(0);
        CausalLm::new(&config, tch::Device::Cpu, false).unwrap().save(dir.path()).unwrap();
        let episode = |response: Vec<u32>| Episode {
            problem_id: "p".into(),
            sample_index: 0,
            prompt_tokens: vec![1, 2, 3],
            logprobs: vec![-1.0; response.len()],
            response_tokens: response,
            text: String::new(),
            finish: Finish::Stop,
            extracted_answer: None,
            reference_answer: "1".into(),
            correct: false,
        };
        // Two groups of two: rewards 1, 0 (advantages +1, -1) and 0, 0 (nothing to learn).
        let episodes = [episode(vec![4, 5]), episode(vec![6, 7, 8]), episode(vec![9]), episode(vec![10, 11])];
        let per_token = |values: [f32; 4]| -> PerToken {
            episodes.iter().zip(values).map(|(e, v)| vec![v; e.response_tokens.len()]).collect()
        };
        let (old, advantages, correction) =
            (per_token([-1.0; 4]), per_token([1.0, -1.0, 0.0, 0.0]), per_token([1.0; 4]));
        let batch = Batch { episodes: &episodes, old_logprobs: &old, advantages: &advantages, correction: &correction };
        let mut cfg = GrpoConfig::default();
        cfg.pg.kl_coef = 0.0;
        // One response per micro-batch.
        cfg.pg.optim.batch_tokens = 6;
        // The same step with the KL term present at weight 0, which keeps every response.
        let step = |reference: Option<&PerToken>| {
            let policy = CausalLm::load(dir.path(), tch::Device::Cpu, false).unwrap();
            let mut optimizer = AdamW::new(&policy);
            let logged = minibatch_step(&cfg, &batch, reference, &[0, 1, 2, 3], &policy, &mut optimizer, 1e-2).unwrap();
            (policy.vs.variables(), logged[7].1)
        };
        let ((skipped, skipped_parts), (kept, kept_parts)) = (step(None), step(Some(&old)));
        assert_eq!((skipped_parts, kept_parts), (2.0, 4.0), "the zero-advantage group ran no passes");
        let before = CausalLm::load(dir.path(), tch::Device::Cpu, false).unwrap().vs.variables();
        for (name, w) in &skipped {
            let gap = (w - &kept[name]).abs().max().double_value(&[]);
            assert!(gap < 1e-7, "{name} differs by {gap}");
        }
        let moved = skipped.iter().any(|(name, w)| !w.equal(&before[name]));
        assert!(moved, "the step trained");
        // A first step with nothing to learn runs no pass at all and changes nothing.
        let policy = CausalLm::load(dir.path(), tch::Device::Cpu, false).unwrap();
        let logged = minibatch_step(&cfg, &batch, None, &[2, 3], &policy, &mut AdamW::new(&policy), 1e-2).unwrap();
        assert_eq!((logged[6].1, logged[7].1), (0.0, 0.0), "no gradient, no micro-batch");
        assert!(policy.vs.variables().iter().all(|(name, w)| w.equal(&before[name])));
    }

    #[test]
    fn overlong_penalty_by_hand() {
        // max 100, buffer 20: free up to 80; 90 tokens -> -10/20; 100 -> -1; off with buffer 0.
        let p = |len| overlong_penalty(len, 100, 20);
        assert_eq!((p(50), p(80), p(90), p(100)), (0.0, 0.0, -0.5, -1.0));
        assert_eq!(overlong_penalty(100, 100, 0), 0.0);
    }
}
