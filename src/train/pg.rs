//! The policy-gradient equations, each written to be read against its paper: log-probs,
//! entropies and values of sampled responses, GAE, whitening, PPO's clipped policy and value
//! losses, the GRPO family's surrogate (its aggregations, token or sequence ratios, asymmetric
//! and dual clipping), the engine-trainer correction, the k1/k2/k3 KL estimators and explained
//! variance. PPO and GRPO/RLOO build on
//! these.

use super::minibatch::by_length;
use crate::error::Result;
use crate::model::Llama;
use crate::rollout::Episode;
use tch::{Device, Kind, Tensor};

/// One value per response token, per episode.
pub type PerToken = Vec<Vec<f32>>;

/// Log-probs of the sampled tokens (and the head's values, if any) of every episode under
/// `model`, without gradients, in chunks of at most `batch_tokens` tokens.
pub fn score_episodes(
    model: &Llama,
    episodes: &[&Episode],
    temperature: f64,
    batch_tokens: usize,
) -> Result<(PerToken, Option<PerToken>)> {
    // Chunks of episodes of similar length, so that little of each forward is padding, each
    // within `batch_tokens` (rows x longest): a forward's logits are that many vocabulary rows.
    let parts = by_length((0..episodes.len()).collect(), |i| episodes[i].sequence_len(), batch_tokens);
    let (mut logprobs, mut values) =
        (vec![Vec::new(); episodes.len()], model.has_head().then(|| vec![Vec::new(); episodes.len()]));
    tch::no_grad(|| -> Result<()> {
        for part in parts {
            let rows: Vec<&Episode> = part.iter().map(|&i| episodes[i]).collect();
            let lens: Vec<usize> = rows.iter().map(|e| e.response_tokens.len()).collect();
            let scored = score_responses(model, &rows, temperature);
            for (&i, row) in part.iter().zip(unpad_rows(&scored.logprobs, &lens)?) {
                logprobs[i] = row;
            }
            if let (Some(all), Some(v)) = (values.as_mut(), &scored.values) {
                for (&i, row) in part.iter().zip(unpad_rows(v, &lens)?) {
                    all[i] = row;
                }
            }
        }
        Ok(())
    })?;
    Ok((logprobs, values))
}

/// Response tokens of a batch of episodes under a model, all `[B, R]` with R the longest
/// response: log-probs at the sampling temperature, entropies, the scalar head's values (the
/// value before each token), and the mask of real (not padding) tokens.
pub struct Scored {
    pub logprobs: Tensor,
    pub entropy: Tensor,
    pub values: Option<Tensor>,
    pub mask: Tensor,
}

/// Scores the responses of `episodes` (prompt and response run through the model in one pass).
pub fn score_responses(model: &Llama, episodes: &[&Episode], temperature: f64) -> Scored {
    let b = episodes.len();
    let t = episodes.iter().map(|e| e.sequence_len()).max().unwrap_or(1);
    let r = episodes.iter().map(|e| e.response_tokens.len()).max().unwrap_or(1).max(1);
    let mut ids = vec![0i64; b * t];
    let mut positions = vec![0i64; b * r];
    let mut targets = vec![0i64; b * r];
    let mut mask = vec![0f32; b * r];
    for (row, e) in episodes.iter().enumerate() {
        for (j, &tok) in e.prompt_tokens.iter().chain(&e.response_tokens).enumerate() {
            ids[row * t + j] = tok as i64;
        }
        let p = e.prompt_tokens.len().max(1);
        for i in 0..r {
            // Response token i is predicted from the hidden state at position p - 1 + i.
            positions[row * r + i] = (p - 1 + i.min(e.response_tokens.len().saturating_sub(1))) as i64;
            if let Some(&tok) = e.response_tokens.get(i) {
                targets[row * r + i] = tok as i64;
                mask[row * r + i] = 1.0;
            }
        }
    }
    let device = model.device();
    let (b, t, r) = (b as i64, t as i64, r as i64);
    let hidden = model.forward_hidden(&Tensor::from_slice(&ids).view([b, t]).to_device(device));
    let h = hidden.size()[2];
    let index = Tensor::from_slice(&positions).view([b, r, 1]).to_device(device).expand([b, r, h], false);
    let hidden = hidden.gather(1, &index, false);
    let logits = model.logits(&hidden).to_kind(Kind::Float);
    let logits = if temperature > 0.0 { logits / temperature } else { logits };
    let logp = logits.log_softmax(-1, Kind::Float);
    let targets = Tensor::from_slice(&targets).view([b, r, 1]).to_device(device);
    Scored {
        logprobs: logp.gather(-1, &targets, false).squeeze_dim(-1),
        entropy: -(logp.exp() * &logp).sum_dim_intlist(-1, false, Kind::Float),
        values: model.head_values(&hidden).map(|v| v.to_kind(Kind::Float)),
        mask: Tensor::from_slice(&mask).view([b, r]).to_device(device),
    }
}

/// `rows` as a zero-padded `[B, R]` tensor.
pub fn pad_rows(rows: &[&[f32]], r: usize, device: Device) -> Tensor {
    let mut data = vec![0f32; rows.len() * r];
    for (i, row) in rows.iter().enumerate() {
        data[i * r..i * r + row.len().min(r)].copy_from_slice(&row[..row.len().min(r)]);
    }
    Tensor::from_slice(&data).view([rows.len() as i64, r as i64]).to_device(device)
}

/// The real entries of each row of a `[B, R]` tensor, back on the host.
pub fn unpad_rows(x: &Tensor, lengths: &[usize]) -> Result<Vec<Vec<f32>>> {
    let r = x.size()[1] as usize;
    let flat = Vec::<f32>::try_from(x.to_kind(Kind::Float).to_device(Device::Cpu).reshape([-1]))?;
    Ok(lengths.iter().enumerate().map(|(i, &n)| flat[i * r..i * r + n].to_vec()).collect())
}

/// Mean of `x` over the entries where `mask` is 1.
pub fn masked_mean(x: &Tensor, mask: &Tensor) -> Tensor {
    (x * mask).sum(Kind::Float) / mask.sum(Kind::Float).clamp_min(1.0)
}

/// Generalised advantage estimation (Schulman et al. 2016) over one response. `rewards[t]` comes
/// after token t; `values[t]` is the value of the state before token t; the episode ends after
/// the last token (terminal value 0). Returns (advantages, returns = advantages + values).
pub fn gae(rewards: &[f32], values: &[f32], gamma: f64, lambda: f64) -> (Vec<f32>, Vec<f32>) {
    let n = rewards.len();
    let mut advantages = vec![0f32; n];
    let mut next_advantage = 0.0f64;
    for t in (0..n).rev() {
        let next_value = if t + 1 < n { values[t + 1] as f64 } else { 0.0 };
        let delta = rewards[t] as f64 + gamma * next_value - values[t] as f64;
        next_advantage = delta + gamma * lambda * next_advantage;
        advantages[t] = next_advantage as f32;
    }
    let returns = advantages.iter().zip(values).map(|(a, v)| a + v).collect();
    (advantages, returns)
}

/// Shifts and scales all advantages of a batch to mean 0 and standard deviation 1.
pub fn whiten(rows: &mut [Vec<f32>]) {
    let n = rows.iter().map(Vec::len).sum::<usize>().max(1) as f64;
    let mean = rows.iter().flatten().map(|&x| x as f64).sum::<f64>() / n;
    let var = rows.iter().flatten().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    let std = var.sqrt().max(1e-8);
    for x in rows.iter_mut().flatten() {
        *x = ((*x as f64 - mean) / std) as f32;
    }
}

/// How a minibatch's per-token losses become one number (TRL's `loss_type`, verl's
/// `loss_agg_mode`): each token's weight, from counts over the whole minibatch, so the sum over
/// ranks of each rank's weighted sum is the same update on any number of ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Aggregation {
    /// Mean over all tokens: a long response weighs in proportion to its length (DAPO, Yu et
    /// al. 2025).
    #[default]
    TokenMean,
    /// Mean over responses of each response's token mean (GRPO, Shao et al. 2024): a token of a
    /// long response weighs less.
    SeqMeanTokenMean,
    /// Each response's token sum, over responses x `max_new_tokens`, a constant: no length bias
    /// (Dr. GRPO, Liu et al. 2025).
    SeqMeanTokenSumNorm,
}

impl Aggregation {
    /// The weight of each token of a response of `len` tokens, in a minibatch of `responses`
    /// responses and `tokens` tokens in all.
    pub fn token_weight(self, len: usize, responses: usize, tokens: usize, max_new_tokens: usize) -> f64 {
        match self {
            Aggregation::TokenMean => 1.0 / tokens.max(1) as f64,
            Aggregation::SeqMeanTokenMean => 1.0 / (responses.max(1) * len.max(1)) as f64,
            Aggregation::SeqMeanTokenSumNorm => 1.0 / (responses.max(1) * max_new_tokens.max(1)) as f64,
        }
    }
}

/// Whose probability ratio is clipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum RatioLevel {
    /// Each token's r_t = p(y_t) / p_old(y_t) (PPO, GRPO).
    #[default]
    Token,
    /// The response's length-normalised s = exp(mean_t log r_t), given to every token (GSPO,
    /// Zheng et al. 2025, who clip it at 1 - 3e-4 and 1 + 4e-4).
    Sequence,
}

/// The clip range of the ratio: [1 - low, 1 + high] (DAPO's clip-higher: 0.2 and 0.28), and
/// dual-clip's bound c on the loss of a negative advantage (Ye et al. 2020: c = 3).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Clip {
    pub low: f64,
    pub high: f64,
    pub dual: Option<f64>,
}

/// The clipped surrogate of the GRPO family (to minimise): sum over tokens of weight x
/// max(-A r, -A clip(r, 1 - low, 1 + high)), that term capped at -A c where A < 0 with dual-clip.
/// Returns the loss and, as means over this rank's tokens: the fractions of tokens whose ratio
/// lies below 1 - low and above 1 + high, and the approximate KL mean((r - 1) - log r).
pub fn policy_loss(
    logprobs: &Tensor,
    old_logprobs: &Tensor,
    advantages: &Tensor,
    mask: &Tensor,
    weights: &Tensor,
    level: RatioLevel,
    clip: Clip,
) -> (Tensor, [Tensor; 3]) {
    let token_log_ratio = (logprobs - old_logprobs) * mask;
    let log_ratio = match level {
        RatioLevel::Token => token_log_ratio.shallow_clone(),
        RatioLevel::Sequence => {
            let mean = token_log_ratio.sum_dim_intlist(-1, true, Kind::Float)
                / mask.sum_dim_intlist(-1, true, Kind::Float).clamp_min(1.0);
            mean.expand_as(logprobs)
        }
    };
    let ratio = log_ratio.exp();
    let unclipped = -advantages * &ratio;
    let clipped = -advantages * ratio.clamp(1.0 - clip.low, 1.0 + clip.high);
    let mut per_token = unclipped.maximum(&clipped);
    if let Some(c) = clip.dual {
        per_token = per_token.minimum(&(-advantages * c)).where_self(&advantages.lt(0.0), &per_token);
    }
    let loss = (per_token * weights).sum(Kind::Float);
    let below = masked_mean(&ratio.lt(1.0 - clip.low).to_kind(Kind::Float), mask);
    let above = masked_mean(&ratio.gt(1.0 + clip.high).to_kind(Kind::Float), mask);
    let approx_kl = masked_mean(&((&ratio - 1.0) - &log_ratio), mask);
    (loss, [below.detach(), above.detach(), approx_kl.detach()])
}

/// What to do about the gap between the engine that sampled and the trainer (Yao et al. 2025,
/// "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training"; verl's TIS and MIS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Correction {
    /// Train as if the trainer had sampled.
    #[default]
    None,
    /// Truncated importance sampling: weigh each token's loss by min(rho, cap).
    Truncate,
    /// Masked importance sampling: drop the tokens whose rho lies outside [1 / cap, cap].
    Mask,
}

/// The correction's weight for each token of one response, from the ratio rho = p_train /
/// p_engine of its sampled tokens: per token, or one for the whole response (the product of its
/// tokens' ratios, `RatioLevel::Sequence`).
pub fn correction_weights(train: &[f32], engine: &[f32], how: Correction, level: RatioLevel, cap: f64) -> Vec<f32> {
    let log_rho: Vec<f64> = train.iter().zip(engine).map(|(t, e)| (t - e) as f64).collect();
    let rho: Vec<f64> = match level {
        RatioLevel::Token => log_rho.iter().map(|x| x.exp()).collect(),
        RatioLevel::Sequence => vec![log_rho.iter().sum::<f64>().exp(); log_rho.len()],
    };
    let weight = |r: f64| match how {
        Correction::None => 1.0,
        Correction::Truncate => r.min(cap),
        Correction::Mask if (1.0 / cap..=cap).contains(&r) => 1.0,
        Correction::Mask => 0.0,
    };
    rho.into_iter().map(|r| weight(r) as f32).collect()
}

/// The logged mean correction weight and fraction of tokens masked, over every token.
pub fn correction_stats(weights: &PerToken) -> [(String, f64); 2] {
    let n = weights.iter().map(Vec::len).sum::<usize>().max(1) as f64;
    let (sum, masked) =
        weights.iter().flatten().fold((0.0, 0.0), |(s, m), &w| (s + w as f64, m + (w == 0.0) as u8 as f64));
    [("rollout/correction_weight".into(), sum / n), ("rollout/correction_masked".into(), masked / n)]
}

/// PPO's clipped value loss: 0.5 mean(max((v - R)^2, (v_old + clip(v - v_old, -eps, eps) - R)^2)).
pub fn clipped_value_loss(values: &Tensor, old_values: &Tensor, returns: &Tensor, mask: &Tensor, clip: f64) -> Tensor {
    let clipped = old_values + (values - old_values).clamp(-clip, clip);
    let loss = (values - returns).square().maximum(&(clipped - returns).square());
    masked_mean(&loss, mask) * 0.5
}

/// Schulman's (2020) estimators of KL(policy || reference) from one sampled token, with
/// d = q - p (the reference's log-prob minus the policy's): k1 = -d (unbiased, can be negative),
/// k2 = d^2 / 2 (biased, low variance), k3 = e^d - d - 1 (unbiased, never negative; GRPO's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum KlEstimator {
    K1,
    K2,
    #[default]
    K3,
}

impl KlEstimator {
    /// Per token, from the policy's and the reference's log-probs.
    pub fn per_token(self, logprobs: &Tensor, ref_logprobs: &Tensor) -> Tensor {
        let d = ref_logprobs - logprobs;
        match self {
            KlEstimator::K1 => -d,
            KlEstimator::K2 => d.square() * 0.5,
            KlEstimator::K3 => d.exp() - &d - 1.0,
        }
    }

    /// One token's estimate, from log-probs p (policy) and q (reference).
    pub fn of(self, p: f64, q: f64) -> f64 {
        let d = q - p;
        match self {
            KlEstimator::K1 => -d,
            KlEstimator::K2 => d * d / 2.0,
            KlEstimator::K3 => d.exp() - d - 1.0,
        }
    }
}

/// 1 - Var(returns - values) / Var(returns) over all tokens: how much of the return the value
/// head explains (1 perfect, 0 no better than a constant, negative worse).
pub fn explained_variance(values: &[Vec<f32>], returns: &[Vec<f32>]) -> f64 {
    let v: Vec<f64> = values.iter().flatten().map(|&x| x as f64).collect();
    let r: Vec<f64> = returns.iter().flatten().map(|&x| x as f64).collect();
    let var = |x: &[f64]| {
        let m = x.iter().sum::<f64>() / x.len().max(1) as f64;
        x.iter().map(|a| (a - m).powi(2)).sum::<f64>() / x.len().max(1) as f64
    };
    let diff: Vec<f64> = r.iter().zip(&v).map(|(a, b)| a - b).collect();
    let var_r = var(&r);
    if var_r == 0.0 {
        f64::NAN
    } else {
        1.0 - var(&diff) / var_r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5)
    }

    #[test]
    fn scoring_in_chunks_of_a_token_budget_gives_every_episode_its_own_log_probs() {
        let config = crate::model::ModelConfig::llama(40, 16, 32, 1, 2, 1, 32, true);
        tch::manual_seed(0);
        let model = crate::model::CausalLm::new(&config, Device::Cpu, false).unwrap();
        let episode = |prompt: Vec<u32>, response: Vec<u32>| Episode {
            problem_id: "p".into(),
            sample_index: 0,
            prompt_tokens: prompt,
            logprobs: vec![0.0; response.len()],
            response_tokens: response,
            text: String::new(),
            finish: crate::sample::Finish::Stop,
            extracted_answer: None,
            reference_answer: "1".into(),
            correct: false,
        };
        let episodes =
            [episode(vec![1, 2, 3], vec![4, 5, 6, 7]), episode(vec![8], vec![9]), episode(vec![10, 11], vec![12, 13])];
        let refs: Vec<&Episode> = episodes.iter().collect();
        let (whole, _) = score_episodes(&model, &refs, 1.0, usize::MAX).unwrap();
        // A budget of 4 tokens puts 2 + 4 in one chunk and each longer episode alone.
        let (chunked, _) = score_episodes(&model, &refs, 1.0, 4).unwrap();
        for (i, (a, b)) in whole.iter().zip(&chunked).enumerate() {
            assert_eq!(a.len(), episodes[i].response_tokens.len());
            assert!(close(a, b), "episode {i}: {a:?} vs {b:?}");
        }
    }

    #[test]
    fn gae_by_hand_with_a_terminal_step() {
        // gamma 1, lambda 0.95; rewards only at the end; values 0.5, 0.6, 0.7.
        // deltas: 0 + 0.6 - 0.5 = 0.1, 0 + 0.7 - 0.6 = 0.1, 1 + 0 - 0.7 = 0.3 (terminal: no next value).
        // A2 = 0.3; A1 = 0.1 + 0.95 * 0.3 = 0.385; A0 = 0.1 + 0.95 * 0.385 = 0.46575.
        let (adv, ret) = gae(&[0.0, 0.0, 1.0], &[0.5, 0.6, 0.7], 1.0, 0.95);
        assert!(close(&adv, &[0.46575, 0.385, 0.3]), "{adv:?}");
        assert!(close(&ret, &[0.96575, 0.985, 1.0]), "{ret:?}");
        // lambda 1: every advantage is the return-to-go minus the value.
        let (adv, _) = gae(&[0.0, 0.0, 1.0], &[0.5, 0.6, 0.7], 1.0, 1.0);
        assert!(close(&adv, &[0.5, 0.4, 0.3]));
        // gamma discounts: one step, reward 2 -> A = 2 - v.
        assert!(close(&gae(&[2.0], &[0.5], 0.9, 0.95).0, &[1.5]));
    }

    /// Two responses (two groups of one, for brevity): 2 tokens with advantage +1 and 1 token
    /// with advantage -1; the loss and the gradient on each log-prob, from the given log-ratios.
    fn surrogate(log_ratios: [f64; 3], agg: Aggregation, level: RatioLevel, clip: Clip) -> (f64, Vec<f32>) {
        let logp = Tensor::from_slice(&[log_ratios[0] as f32, log_ratios[1] as f32, log_ratios[2] as f32, 0.0])
            .reshape([2, 2])
            .set_requires_grad(true);
        let zeros = Tensor::zeros([2, 2], (Kind::Float, Device::Cpu));
        let adv = Tensor::from_slice(&[1f32, 1.0, -1.0, 0.0]).reshape([2, 2]);
        let mask = Tensor::from_slice(&[1f32, 1.0, 1.0, 0.0]).reshape([2, 2]);
        let w = |len| agg.token_weight(len, 2, 3, 4) as f32;
        let weights = Tensor::from_slice(&[w(2), w(2), w(1), 0.0]).reshape([2, 2]);
        let (loss, _) = policy_loss(&logp, &zeros, &adv, &mask, &weights, level, clip);
        loss.backward();
        let grad = Vec::<f32>::try_from(logp.grad().flatten(0, -1)).unwrap();
        (loss.double_value(&[]), grad[..3].to_vec())
    }

    const DAPO: Clip = Clip { low: 0.2, high: 0.28, dual: None };

    #[test]
    fn aggregations_by_hand() {
        // Ratios 1 and 2 (A = +1), 0.5 (A = -1). Per token: -1 (inside the clip: gradient -A r = -1);
        // max(-2, -1.28) = -1.28 (clipped high: no gradient); max(0.5, 0.8) = 0.8 (clipped low).
        let ratios = [0.0, 2f64.ln(), 0.5f64.ln()];
        let cases = [
            (Aggregation::TokenMean, (-1.0 - 1.28 + 0.8) / 3.0, -1.0 / 3.0), // weights 1/3
            (Aggregation::SeqMeanTokenMean, (-1.0 - 1.28) / 4.0 + 0.8 / 2.0, -1.0 / 4.0), // 1/(2*2), 1/(2*1)
            (Aggregation::SeqMeanTokenSumNorm, (-1.0 - 1.28 + 0.8) / 8.0, -1.0 / 8.0), // 1/(2*4)
        ];
        for (agg, loss, grad0) in cases {
            let (l, g) = surrogate(ratios, agg, RatioLevel::Token, DAPO);
            assert!((l - loss).abs() < 1e-5, "{agg:?}: loss {l} vs {loss}");
            assert!(close(&g, &[grad0 as f32, 0.0, 0.0]), "{agg:?}: gradient {g:?}");
        }
    }

    #[test]
    fn clip_higher_and_dual_clip_by_hand() {
        // Ratio 1.25 with A = +1: inside DAPO's 1.28 (gradient -1.25 / 3), clipped by PPO's 1.2.
        let ratios = [1.25f64.ln(), 0.0, 0.0];
        let (_, g) = surrogate(ratios, Aggregation::TokenMean, RatioLevel::Token, DAPO);
        assert!(close(&g, &[-1.25 / 3.0, -1.0 / 3.0, 1.0 / 3.0]), "{g:?}");
        let ppo = Clip { low: 0.2, high: 0.2, dual: None };
        let (_, g) = surrogate(ratios, Aggregation::TokenMean, RatioLevel::Token, ppo);
        assert!(close(&g, &[0.0, -1.0 / 3.0, 1.0 / 3.0]), "{g:?}");
        // Ratio 4 with A = -1: max(4, 1.28) = 4 with gradient 4; dual-clip caps it at -A c = 3, flat.
        let ratios = [0.0, 0.0, 4f64.ln()];
        let (l, g) = surrogate(ratios, Aggregation::TokenMean, RatioLevel::Token, DAPO);
        assert!((l - (-2.0 + 4.0) / 3.0).abs() < 1e-5 && close(&g[2..], &[4.0 / 3.0]), "{l} {g:?}");
        let dual = Clip { dual: Some(3.0), ..DAPO };
        let (l, g) = surrogate(ratios, Aggregation::TokenMean, RatioLevel::Token, dual);
        assert!((l - (-2.0 + 3.0) / 3.0).abs() < 1e-5 && close(&g[2..], &[0.0]), "{l} {g:?}");
    }

    #[test]
    fn sequence_ratio_by_hand() {
        // Log-ratios 0 and 0.2 -> s = e^0.1 = 1.10517 for both tokens; -0.1 -> s = e^-0.1 = 0.904837.
        // seq-mean-token-mean: loss = -s0 / 2 + s1 / 2; d/dlogp_t of row 0 = -(1/2) s0 / 2 (s0's
        // gradient spread over its 2 tokens), of row 1 = (1/2) s1.
        let (s0, s1) = (0.1f64.exp(), (-0.1f64).exp());
        let ratios = [0.0, 0.2, -0.1];
        let (l, g) = surrogate(ratios, Aggregation::SeqMeanTokenMean, RatioLevel::Sequence, DAPO);
        assert!((l - (-s0 / 2.0 + s1 / 2.0)).abs() < 1e-5, "{l}");
        let (g0, g1) = ((-s0 / 4.0) as f32, (s1 / 2.0) as f32);
        assert!(close(&g, &[g0, g0, g1]), "{g:?}");
        // GSPO's own range [1 - 3e-4, 1 + 4e-4] clips both: no gradient.
        let gspo = Clip { low: 3e-4, high: 4e-4, dual: None };
        let (_, g) = surrogate(ratios, Aggregation::SeqMeanTokenMean, RatioLevel::Sequence, gspo);
        assert!(close(&g, &[0.0; 3]), "{g:?}");
    }

    #[test]
    fn engine_correction_weights_by_hand() {
        // rho = 1, 2 and 0.5 / 0.9 = 0.5556; cap 1.5, so the mask keeps [0.6667, 1.5].
        let train = [0.5f32.ln(), 0.5f32.ln(), 0.5f32.ln()];
        let engine = [0.5f32.ln(), 0.25f32.ln(), 0.9f32.ln()];
        let w = |how, level| correction_weights(&train, &engine, how, level, 1.5);
        assert!(close(&w(Correction::Truncate, RatioLevel::Token), &[1.0, 1.5, 0.5 / 0.9]));
        assert!(close(&w(Correction::Mask, RatioLevel::Token), &[1.0, 0.0, 0.0]));
        // The response's ratio: 1 * 2 * 0.5556 = 1.1111, inside the cap and the mask.
        assert!(close(&w(Correction::Truncate, RatioLevel::Sequence), &[1.0 / 0.9; 3]));
        assert!(close(&w(Correction::Mask, RatioLevel::Sequence), &[1.0; 3]));
        assert!(close(&w(Correction::None, RatioLevel::Token), &[1.0; 3]));
    }

    #[test]
    fn clipped_loss_and_its_gradient_inside_and_outside_the_clip() {
        let grad_at = |ratio: f64, advantage: f32| {
            let logp = Tensor::from_slice(&[ratio.ln() as f32]).set_requires_grad(true);
            let old = Tensor::from_slice(&[0f32]);
            let adv = Tensor::from_slice(&[advantage]);
            let one = Tensor::from_slice(&[1f32]);
            let clip = Clip { low: 0.2, high: 0.2, dual: None };
            let (loss, [low, high, _]) = policy_loss(&logp, &old, &adv, &one, &one, RatioLevel::Token, clip);
            loss.backward();
            let clipped = low.double_value(&[]) + high.double_value(&[]);
            (loss.double_value(&[]), logp.grad().double_value(&[0]), clipped)
        };
        // Inside the range: loss -A r, gradient d/dlogp = -A r (pushes logp up for A > 0).
        let (loss, grad, clipped) = grad_at(1.1, 2.0);
        assert!((loss + 2.2).abs() < 1e-5 && (grad + 2.2).abs() < 1e-5 && clipped == 0.0);
        let (_, grad, _) = grad_at(0.9, -1.0);
        assert!((grad - 0.9).abs() < 1e-5, "A < 0 pushes logp down");
        // Past 1 + eps with A > 0: the clipped branch wins, no gradient.
        let (loss, grad, clipped) = grad_at(1.5, 2.0);
        assert!((loss + 2.4).abs() < 1e-5 && grad == 0.0 && clipped == 1.0);
        // Below 1 - eps with A < 0: clipped, no gradient.
        assert_eq!(grad_at(0.5, -1.0).1, 0.0);
        // Below 1 - eps with A > 0: not clipped (the unclipped term is larger), gradient flows.
        let (_, grad, _) = grad_at(0.5, 1.0);
        assert!((grad + 0.5).abs() < 1e-5);
    }

    #[test]
    fn kl_estimators_by_hand() {
        // p = -0.5, q = -1.5: d = -1; k1 = 1, k2 = 0.5, k3 = e^-1 + 1 - 1 = 0.367879.
        let (p, q) = (Tensor::from_slice(&[-0.5f32]), Tensor::from_slice(&[-1.5f32]));
        for (k, want) in [(KlEstimator::K1, 1.0), (KlEstimator::K2, 0.5), (KlEstimator::K3, (-1f64).exp())] {
            assert!((k.per_token(&p, &q).double_value(&[0]) - want).abs() < 1e-6, "{k:?}");
            assert!((k.of(-0.5, -1.5) - want).abs() < 1e-12, "{k:?}");
            assert_eq!(k.per_token(&p, &p).double_value(&[0]), 0.0, "{k:?}: a policy is its own reference");
        }
    }

    #[test]
    fn whitening_and_explained_variance() {
        let mut rows = vec![vec![1.0, 2.0], vec![3.0]];
        whiten(&mut rows);
        let flat: Vec<f32> = rows.concat();
        assert!(close(&flat, &[-1.2247449, 0.0, 1.2247449]), "{flat:?}");
        let returns = vec![vec![1.0, 2.0, 3.0]];
        assert!((explained_variance(&returns, &returns) - 1.0).abs() < 1e-9);
        assert!(explained_variance(&[vec![2.0, 2.0, 2.0]], &returns).abs() < 1e-9, "a constant explains nothing");
    }
}
