//! What the policy-gradient trainers (PPO, GRPO, RLOO) share: the stream of training prompts,
//! per-token rewards from the rewards module, log-probs / values / entropies of sampled responses
//! under a model, GAE, the clipped surrogate and value losses, KL estimators, and the check that
//! the trainer's log-probs agree with the sampler's.

use super::checkpoint::{load_checkpoint, Checkpoints, PgState, TrainerState};
use super::rounds::{evaluate_policy, report, RoundEval};
use super::{prepare_run_dir, AdamW, Metrics, RunConfig};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::model::{CausalLm, Llama};
use crate::prompt::{PromptConfig, Prompter};
use crate::reward::{heuristic_step_rewards, orm_step_rewards, sparse, split_steps, token_rewards, Orm, OrmDense};
use crate::rng::Rng;
use crate::rollout::{rollout_with, Episode};
use crate::sample::SamplingConfig;
use crate::task::{Problem, Split, TaskSpec};
use crate::tokenizer::Tokenizer;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// What a policy-gradient run needs besides its algorithm: the run folder, the tokenizer, the
/// frozen reference policy, the rewarder, the training questions (as a shuffled stream), the
/// test problems, the prompter, the progress bar and the update schedule (sampling, evaluation,
/// checkpoints, logging). Shared by PPO and GRPO/RLOO.
pub struct PgRun<'a> {
    pub tokenizer: Tokenizer,
    /// The frozen reference policy; None with LoRA, where it is the policy without adapters.
    reference: Option<CausalLm>,
    pub device: Device,
    settings: PgSettings<'a>,
    dir: PathBuf,
    rewarder: Rewarder,
    questions: Vec<Problem>,
    test: Vec<Problem>,
    prompter: Prompter,
    samples_seen: usize,
    /// The policy's checkpoints, and a separate critic's (`critic/checkpoints`).
    checkpoints: Checkpoints,
    critic_checkpoints: Checkpoints,
    /// Whether the sampler's log-probs were checked against the trainer's (first update).
    checked: bool,
    /// The sampler, and the update whose policy it serves (None: not synced yet).
    engine: Engine,
    synced_at: Option<usize>,
    /// Mean and max |engine log-prob - trainer log-prob| of the last rollout (remote engines).
    logprob_gap: Option<(f64, f64)>,
    stream: PromptStream,
    progress: indicatif::ProgressBar,
}

/// The settings `PgRun` reads from an algorithm's config.
pub struct PgSettings<'a> {
    pub run: &'a RunConfig,
    pub model: &'a Path,
    pub task: &'a str,
    pub questions: usize,
    pub seed: u64,
    pub updates: usize,
    pub temperature: f64,
    pub max_new_tokens: usize,
    pub sample_batch_size: usize,
    pub reward: &'a RewardConfig,
    pub prompt: &'a PromptConfig,
    pub rollout: &'a crate::engine::RolloutConfig,
    pub eval_every: usize,
    pub eval: &'a RoundEval,
    pub save_every: usize,
    pub lora: Option<&'a crate::model::lora::LoraConfig>,
}

/// The models a policy-gradient update trained and where it stands: what a checkpoint holds.
pub struct Trained<'m> {
    pub policy: &'m CausalLm,
    pub optimizer: &'m AdamW,
    /// A separate critic and its optimiser.
    pub critic: Option<(&'m CausalLm, &'m AdamW)>,
    pub state: PgState,
}

impl<'a> PgRun<'a> {
    /// Prepares the run folder (writing `config_toml`), loads everything and, unless resuming
    /// (then call [`PgRun::resume`]), logs the starting policy's test metrics; returns the run and
    /// the policy to train (with a fresh value head when `value_head`).
    pub fn start(
        s: PgSettings<'a>,
        config_toml: &str,
        value_head: bool,
        resume: bool,
        force: bool,
    ) -> Result<(Self, CausalLm)> {
        let dir = s.run.dir();
        prepare_run_dir(&dir, config_toml, resume, force)?;
        let device = crate::parse_device(&s.run.device)?;
        // A fresh value head (here or a separate critic's) draws from torch's generator.
        tch::manual_seed(s.seed as i64);
        let (mut policy, tokenizer) = CausalLm::load_with_tokenizer(s.model, device, value_head)?;
        policy.maybe_add_lora(s.lora, s.model)?;
        let reference = match s.lora {
            Some(_) => None,
            None => Some(CausalLm::load(s.model, device, false)?),
        };
        let rewarder = Rewarder::new(s.reward, &tokenizer, device)?;
        let task = TaskSpec::parse(s.task)?;
        let questions = task.load(Split::Train, (s.questions > 0).then_some(s.questions))?;
        let test = task.load(Split::Test, (s.eval.problems > 0).then_some(s.eval.problems))?;
        let prompter = Prompter::new(s.prompt, &questions)?;
        let engine = Engine::new(s.rollout, &dir.join("engine"), true)?;
        let run = PgRun {
            // Two of each, so that a policy checkpoint always has its critic's beside it.
            checkpoints: Checkpoints::new(&dir, 2),
            critic_checkpoints: Checkpoints::new(&dir.join("critic"), 2),
            checked: false,
            engine,
            synced_at: None,
            logprob_gap: None,
            stream: PromptStream::new(questions.len(), s.seed),
            progress: indicatif::ProgressBar::hidden(),
            settings: s,
            dir,
            tokenizer,
            reference,
            rewarder,
            questions,
            test,
            prompter,
            device,
            samples_seen: 0,
        };
        if !resume {
            run.log(run.evaluate(&policy)?, 0)?;
        }
        let run = PgRun { progress: crate::progress::bar(run.settings.updates as u64, 0, "updates"), ..run };
        Ok((run, policy))
    }

    /// Continues from the newest valid checkpoint: loads the policy, the critic and their
    /// optimisers, and moves the prompt stream and the sample count to where they were. Returns
    /// the last update done and the run's clocks; the metrics log is cut back to that update.
    pub fn resume(
        &mut self,
        policy: &mut CausalLm,
        optimizer: &mut AdamW,
        critic: Option<(&mut CausalLm, &mut AdamW)>,
        prompts_per_update: usize,
    ) -> Result<(usize, PgState)> {
        let (dir, state) = self.checkpoints.load_latest(policy, Some(optimizer))?;
        let update = state.step;
        let clocks = state.policy_gradient.ok_or_else(|| {
            Error::file(dir.join(super::checkpoint::STATE_FILE), "is not a PPO/GRPO checkpoint (no policy_gradient)")
        })?;
        if let Some((critic, critic_optimizer)) = critic {
            let dir = self.critic_checkpoints.dir().join(format!("step-{update}"));
            load_checkpoint(&dir, critic, Some(critic_optimizer))?;
        }
        for _ in 0..update {
            self.stream.take(prompts_per_update);
        }
        self.samples_seen = state.samples_seen as usize;
        self.progress.set_position(update as u64);
        self.progress.suspend(|| eprintln!("resumed from {} (update {update})", dir.display()));
        Ok((update, clocks))
    }

    /// Samples `samples_per_prompt` solutions to each of the next `prompts` training questions
    /// (ordered by question, then sample) and counts them. Local samples are checked on the first
    /// update of this process: the policy's recomputed log-probs must equal the sampler's. A
    /// remote engine is synced first when due (every `rollout.sync_every` updates), and the gap
    /// between its log-probs and the trainer's is logged instead (`rollout/logprob_diff_*`).
    /// Returns the episodes and the trainer's log-probs (and the policy head's values, if any).
    pub fn sample(
        &mut self,
        policy: &CausalLm,
        update: usize,
        prompts: usize,
        samples_per_prompt: usize,
    ) -> Result<(Vec<Episode>, PerToken, Option<PerToken>)> {
        let s = &self.settings;
        let sampling = SamplingConfig {
            max_new_tokens: s.max_new_tokens,
            temperature: s.temperature,
            samples_per_prompt,
            batch_size: s.sample_batch_size,
            seed: s.seed.wrapping_mul(1_000_003).wrapping_add(update as u64),
            ..SamplingConfig::default()
        };
        let batch: Vec<Problem> = self.stream.take(prompts).into_iter().map(|i| self.questions[i].clone()).collect();
        if self.synced_at.is_none_or(|at| update - at >= s.rollout.sync_every) {
            self.engine.sync(policy, &self.tokenizer)?;
            self.synced_at = Some(update);
        }
        let episodes = rollout_with(&self.engine, policy, &self.tokenizer, &self.prompter, &batch, &sampling)?;
        self.samples_seen += episodes.len();
        let refs: Vec<&Episode> = episodes.iter().collect();
        let (logprobs, values) = self.score(policy, &refs)?;
        if self.engine.is_remote() {
            self.logprob_gap = Some(logprob_gap(&refs, &logprobs));
        } else if !self.checked {
            self.checked = true;
            let worst = check_behaviour_logprobs(&refs, &logprobs, 2e-3)?;
            self.progress
                .suspend(|| eprintln!("behaviour log-probs agree with the trainer's (max difference {worst:.1e})"));
        }
        Ok((episodes, logprobs, values))
    }

    /// Log-probs (and values) of the episodes under `model` at the sampling temperature.
    pub fn score(&self, model: &Llama, episodes: &[&Episode]) -> Result<(PerToken, Option<PerToken>)> {
        score_episodes(model, episodes, self.settings.temperature, self.settings.sample_batch_size)
    }

    /// The reference policy's log-probs of the episodes' responses.
    pub fn reference_logprobs(&self, policy: &CausalLm, episodes: &[&Episode]) -> Result<PerToken> {
        match &self.reference {
            Some(reference) => Ok(self.score(reference, episodes)?.0),
            None => policy.net.without_adapters(|| Ok(self.score(policy, episodes)?.0)),
        }
    }

    /// Per-token rewards of the episodes (see [`Rewarder`]).
    pub fn rewards(&self, episodes: &[Episode]) -> Result<Vec<Vec<f32>>> {
        let by_id: HashMap<&str, &Problem> = self.questions.iter().map(|q| (q.id.as_str(), q)).collect();
        self.rewarder.token_rewards(&self.tokenizer, episodes, &by_id)
    }

    /// Ends an update: adds what every algorithm logs (fraction correct, response length, the
    /// test metrics when due), shows `message`, logs the line, and writes a checkpoint when due
    /// or when a stop was requested (then it returns `Interrupted`).
    pub fn end_update(
        &self,
        trained: Trained,
        update: usize,
        episodes: &[Episode],
        mut line: Metrics,
        message: String,
    ) -> Result<()> {
        let n = episodes.len().max(1) as f64;
        if let Some((mean, max)) = self.logprob_gap {
            line.extend([("rollout/logprob_diff_mean".into(), mean), ("rollout/logprob_diff_max".into(), max)]);
        }
        line.extend([
            ("reward/correct".into(), episodes.iter().filter(|e| e.correct).count() as f64 / n),
            ("response_length".into(), episodes.iter().map(|e| e.response_tokens.len()).sum::<usize>() as f64 / n),
        ]);
        let s = &self.settings;
        if super::every(update, s.eval_every) || update == s.updates {
            line.extend(self.progress.suspend(|| self.evaluate(trained.policy))?);
        }
        self.progress.set_position(update as u64);
        self.progress.set_message(message);
        self.progress.suspend(|| self.log(line, update))?;
        let stopping = crate::progress::stop_requested() && update < s.updates;
        if super::every(update, s.save_every) || stopping {
            let state = TrainerState {
                step: update,
                samples_seen: self.samples_seen as u64,
                policy_gradient: Some(trained.state),
                ..TrainerState::default()
            };
            // The critic first: a policy checkpoint on disk implies its critic's.
            if let Some((critic, critic_optimizer)) = trained.critic {
                self.critic_checkpoints.save(critic, &self.tokenizer, critic_optimizer, &state)?;
            }
            self.checkpoints.save(trained.policy, &self.tokenizer, trained.optimizer, &state)?;
        }
        if stopping {
            self.progress.abandon_with_message(format!("stopped after update {update}; a checkpoint was written"));
            return Err(Error::Interrupted);
        }
        Ok(())
    }

    /// Saves the final policy into `RUN/final`.
    pub fn finish(self, policy: &CausalLm) -> Result<PathBuf> {
        self.progress.finish_and_clear();
        let dir = self.dir.join("final");
        policy.save_with_tokenizer(&self.tokenizer, &dir, true)?;
        Ok(dir)
    }

    fn evaluate(&self, policy: &CausalLm) -> Result<Metrics> {
        evaluate_policy(policy, &self.tokenizer, &self.prompter, &self.test, self.settings.eval, self.settings.seed)
    }

    fn log(&self, mut line: Metrics, update: usize) -> Result<()> {
        line.extend([
            ("update".into(), update as f64),
            ("step".into(), update as f64),
            ("samples_seen".into(), self.samples_seen as f64),
        ]);
        if line.contains_key("eval/maj@1") {
            report(&line);
        }
        self.checkpoints.log(&line)
    }
}

/// One value per response token, per episode.
pub type PerToken = Vec<Vec<f32>>;

/// Log-probs of the sampled tokens (and the head's values, if any) of every episode under
/// `model`, without gradients, in chunks of `chunk` episodes.
pub fn score_episodes(
    model: &Llama,
    episodes: &[&Episode],
    temperature: f64,
    chunk: usize,
) -> Result<(PerToken, Option<PerToken>)> {
    tch::no_grad(|| {
        let (mut logprobs, mut values) = (Vec::new(), model.has_head().then(Vec::new));
        for part in episodes.chunks(chunk.max(1)) {
            let lens: Vec<usize> = part.iter().map(|e| e.response_tokens.len()).collect();
            let scored = score_responses(model, part, temperature);
            logprobs.extend(unpad_rows(&scored.logprobs, &lens)?);
            if let (Some(all), Some(v)) = (values.as_mut(), &scored.values) {
                all.extend(unpad_rows(v, &lens)?);
            }
        }
        Ok((logprobs, values))
    })
}

/// Which reward the policy is trained on (`[reward]`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RewardConfig {
    /// "sparse" (1 for a right final answer, on the last token), "heuristic" (sparse plus
    /// `dense_coef` per step whose intermediate result the reference also computes) or "orm"
    /// (sparse plus `dense_coef` times the ORM's per-step reward).
    pub kind: String,
    pub dense_coef: f64,
    /// The ORM folder, for kind = "orm".
    pub orm: PathBuf,
    /// The ORM's per-step reward: its probability, or its change from the step before.
    pub orm_dense: OrmDense,
}

impl Default for RewardConfig {
    fn default() -> Self {
        RewardConfig { kind: "sparse".into(), dense_coef: 0.1, orm: PathBuf::new(), orm_dense: OrmDense::Change }
    }
}

/// Turns episodes into per-token rewards.
pub struct Rewarder {
    cfg: RewardConfig,
    orm: Option<Orm>,
    newlines: Vec<u8>,
}

impl Rewarder {
    pub fn new(cfg: &RewardConfig, tokenizer: &Tokenizer, device: Device) -> Result<Self> {
        let orm = match cfg.kind.as_str() {
            "sparse" | "heuristic" => None,
            "orm" => Some(Orm::load(&cfg.orm, device)?),
            other => return Err(Error::Invalid(format!("reward.kind `{other}`: use sparse, heuristic or orm"))),
        };
        Ok(Rewarder { cfg: cfg.clone(), orm, newlines: tokenizer.newline_counts()? })
    }

    /// One reward per response token: the sparse reward on the last token, plus the dense
    /// rewards on the last token of each step.
    pub fn token_rewards(
        &self,
        tokenizer: &Tokenizer,
        episodes: &[Episode],
        problems: &HashMap<&str, &Problem>,
    ) -> Result<Vec<Vec<f32>>> {
        let orm_probabilities = match &self.orm {
            Some(orm) => Some(orm.probabilities(episodes)?),
            None => None,
        };
        episodes
            .iter()
            .enumerate()
            .map(|(n, e)| {
                let len = e.response_tokens.len();
                let mut rewards = vec![0f32; len];
                if self.cfg.kind != "sparse" {
                    let steps = split_steps(tokenizer, &self.newlines, &e.response_tokens)?;
                    let dense: Vec<f64> = match &orm_probabilities {
                        Some(p) => orm_step_rewards(&p[n], &steps, self.cfg.orm_dense),
                        None => {
                            let problem = problems[e.problem_id.as_str()];
                            let texts: Vec<&str> = steps.iter().map(|s| s.text.as_str()).collect();
                            let mut r = heuristic_step_rewards(&texts, &problem.reference_solution, &problem.answer);
                            // The answer line's reward is the sparse one, paid below.
                            for (r, t) in r.iter_mut().zip(&texts) {
                                if t.contains("####") {
                                    *r = 0.0;
                                }
                            }
                            r
                        }
                    };
                    let scaled: Vec<f64> = dense.iter().map(|r| r * self.cfg.dense_coef).collect();
                    rewards = token_rewards(&steps, &scaled, len);
                }
                if let Some(last) = rewards.last_mut() {
                    *last += sparse(e) as f32;
                }
                Ok(rewards)
            })
            .collect()
    }
}

/// This rank's block of minibatch `mb` and its share of the minibatch's response tokens. The
/// losses are means over tokens, so a rank's loss times its share, summed over ranks, is the
/// loss of the whole minibatch: ranks scale their loss by it before backward and their logged
/// means before summing them.
pub fn rank_part<'a>(mb: &'a [usize], episodes: &[Episode]) -> (&'a [usize], f64) {
    let mine = &mb[crate::dist::world().shard(mb.len())];
    let tokens = |rows: &[usize]| rows.iter().map(|&i| episodes[i].response_tokens.len()).sum::<usize>();
    (mine, tokens(mine) as f64 / tokens(mb).max(1) as f64)
}

/// Refuses minibatches smaller than the world: every rank needs an episode of each.
pub fn check_minibatch_size(episodes_per_update: usize, minibatches: usize) -> Result<()> {
    let ranks = crate::dist::world().size;
    if episodes_per_update / minibatches.max(1) < ranks {
        return Err(Error::Invalid(format!(
            "{episodes_per_update} episodes per update in {minibatches} minibatches leave some of the {ranks} ranks \
             without an episode: use fewer minibatches or more prompts_per_update"
        )));
    }
    Ok(())
}

/// The generator of one update's minibatch order: a function of (seed, update) alone, so that a
/// resumed run shuffles as the uninterrupted one did.
pub fn minibatch_rng(seed: u64, update: usize) -> Rng {
    Rng::new((seed ^ 0x5eed).wrapping_mul(1_000_003).wrapping_add(update as u64))
}

/// Training questions in a shuffled order that starts over (reshuffled) when used up.
pub struct PromptStream {
    order: Vec<usize>,
    next: usize,
    rng: Rng,
}

impl PromptStream {
    pub fn new(n: usize, seed: u64) -> Self {
        PromptStream { order: (0..n).collect(), next: n, rng: Rng::new(seed) }
    }

    /// The next `count` question indices.
    pub fn take(&mut self, count: usize) -> Vec<usize> {
        (0..count)
            .map(|_| {
                if self.next == self.order.len() {
                    self.rng.shuffle(&mut self.order);
                    self.next = 0;
                }
                self.next += 1;
                self.order[self.next - 1]
            })
            .collect()
    }
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
    let t = episodes.iter().map(|e| e.prompt_tokens.len() + e.response_tokens.len()).max().unwrap_or(1);
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

/// PPO's clipped surrogate (to minimise): mean over tokens of
/// max(-A r, -A clip(r, 1 - eps, 1 + eps)) with r = exp(logp - old_logp). Also returns the
/// fraction of tokens where the clip was active and the approximate KL (CleanRL's
/// mean((r - 1) - log r)).
pub fn clipped_policy_loss(
    logprobs: &Tensor,
    old_logprobs: &Tensor,
    advantages: &Tensor,
    mask: &Tensor,
    clip: f64,
) -> (Tensor, Tensor, Tensor) {
    let log_ratio = logprobs - old_logprobs;
    let ratio = log_ratio.exp();
    let unclipped = -advantages * &ratio;
    let clipped = -advantages * ratio.clamp(1.0 - clip, 1.0 + clip);
    let loss = masked_mean(&unclipped.maximum(&clipped), mask);
    let clip_fraction = masked_mean(&(&ratio - 1.0).abs().gt(clip).to_kind(Kind::Float), mask);
    let approx_kl = masked_mean(&((&ratio - 1.0) - &log_ratio), mask);
    (loss, clip_fraction.detach(), approx_kl.detach())
}

/// PPO's clipped value loss: 0.5 mean(max((v - R)^2, (v_old + clip(v - v_old, -eps, eps) - R)^2)).
pub fn clipped_value_loss(values: &Tensor, old_values: &Tensor, returns: &Tensor, mask: &Tensor, clip: f64) -> Tensor {
    let clipped = old_values + (values - old_values).clamp(-clip, clip);
    let loss = (values - returns).square().maximum(&(clipped - returns).square());
    masked_mean(&loss, mask) * 0.5
}

/// The k3 estimator of KL(policy || reference) per token (Schulman 2020): exp(q - p) - (q - p) - 1
/// with p, q the policy's and the reference's log-probs of the sampled token; unbiased, never
/// negative, zero when they agree.
pub fn kl_k3(logprobs: &Tensor, ref_logprobs: &Tensor) -> Tensor {
    let d = ref_logprobs - logprobs;
    d.exp() - &d - 1.0
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

/// Mean and max |sampler's - trainer's log-prob| over every token: how far an engine's log-probs
/// (or a stale engine policy) are from the trainer's.
pub fn logprob_gap(episodes: &[&Episode], recomputed: &[Vec<f32>]) -> (f64, f64) {
    let diffs = episodes.iter().zip(recomputed).flat_map(|(e, r)| e.logprobs.iter().zip(r).map(|(a, b)| (a - b).abs()));
    let (n, sum, max) = diffs.fold((0usize, 0f64, 0f64), |(n, s, m), d| (n + 1, s + d as f64, m.max(d as f64)));
    (sum / n.max(1) as f64, max)
}

/// The trainer's log-probs of the sampled tokens must equal the sampler's (same model, same
/// temperature): a mismatch means the update would use wrong ratios, so it stops the run.
pub fn check_behaviour_logprobs(episodes: &[&Episode], recomputed: &[Vec<f32>], tolerance: f32) -> Result<f32> {
    let mut worst = (0f32, 0usize);
    for (n, (e, r)) in episodes.iter().zip(recomputed).enumerate() {
        for (a, b) in e.logprobs.iter().zip(r) {
            let d = (a - b).abs();
            if d > worst.0 || d.is_nan() {
                worst = (d, n);
            }
        }
    }
    if worst.0 > tolerance || worst.0.is_nan() {
        let e = episodes[worst.1];
        return Err(Error::Invalid(format!(
            "BUG: the trainer's log-probs disagree with the sampler's by {} (episode of problem `{}`, sample {}); \
             the policy-gradient ratios would be wrong",
            worst.0, e.problem_id, e.sample_index
        )));
    }
    Ok(worst.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5)
    }

    #[test]
    fn the_logprob_gap_is_the_mean_and_max_absolute_difference() {
        let episode = |logprobs: Vec<f32>| Episode {
            problem_id: "p".into(),
            sample_index: 0,
            prompt_tokens: vec![1],
            response_tokens: vec![2; logprobs.len()],
            text: String::new(),
            logprobs,
            finish: crate::sample::Finish::Length,
            extracted_answer: None,
            reference_answer: "1".into(),
            correct: false,
        };
        let (a, b) = (episode(vec![-1.0, -2.0]), episode(vec![-0.5]));
        let (mean, max) = logprob_gap(&[&a, &b], &[vec![-1.25, -2.0], vec![-1.5]]);
        assert!((mean - 1.25 / 3.0).abs() < 1e-9 && (max - 1.0).abs() < 1e-9, "{mean} {max}");
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

    #[test]
    fn clipped_loss_and_its_gradient_inside_and_outside_the_clip() {
        let grad_at = |ratio: f64, advantage: f32| {
            let logp = Tensor::from_slice(&[ratio.ln() as f32]).set_requires_grad(true);
            let old = Tensor::from_slice(&[0f32]);
            let adv = Tensor::from_slice(&[advantage]);
            let (loss, clipped, _) = clipped_policy_loss(&logp, &old, &adv, &Tensor::from_slice(&[1f32]), 0.2);
            loss.backward();
            (loss.double_value(&[]), logp.grad().double_value(&[0]), clipped.double_value(&[]))
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
    fn kl_of_a_policy_to_itself_is_zero_and_positive_otherwise() {
        let p = Tensor::from_slice(&[-0.1f32, -2.0, -5.0]);
        assert_eq!(kl_k3(&p, &p).abs().max().double_value(&[]), 0.0);
        let q = Tensor::from_slice(&[-0.3f32, -1.0, -5.5]);
        assert!(kl_k3(&p, &q).min().double_value(&[]) > 0.0);
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

    #[test]
    fn the_prompt_stream_covers_every_question_before_repeating() {
        let mut stream = PromptStream::new(5, 1);
        let mut first: Vec<usize> = stream.take(5);
        first.sort();
        assert_eq!(first, vec![0, 1, 2, 3, 4]);
        assert_eq!(stream.take(7).len(), 7);
    }
}
