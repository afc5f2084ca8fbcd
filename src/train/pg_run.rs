//! The harness of the policy-gradient trainers (PPO, GRPO, RLOO): the stream of training prompts,
//! sampling and scoring an update's episodes (checking the sampler's log-probs against the
//! trainer's, or logging their gap), rewards, the reference policy, evaluation, logging,
//! checkpoints and where the time went. The settings are in `pg_spec`, the equations in `pg`.

use super::checkpoint::{load_checkpoint, Checkpoints, PgState, TrainerState, STATE_FILE};
use super::minibatch::check_minibatch_size;
use super::optim::AdamW;
use super::pg::{score_episodes, PerToken};
pub use super::pg_spec::PgSpec;
use super::rounds::report;
use super::trainer::every;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::eval::policy::evaluate_policy;
use crate::model::{CausalLm, Llama};
use crate::prompt::Prompter;
use crate::reward::Rewarder;
use crate::rng::Rng;
use crate::rollout::{rollout_with, Episode};
use crate::run::{Metrics, Run};
use crate::task::{Problem, Split};
use crate::tokenizer::Tokenizer;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Instant;
use tch::Device;

/// What a policy-gradient run needs besides its algorithm: the run folder, the tokenizer, the
/// frozen reference policy, the rewarder, the training questions (as a shuffled stream), the
/// test problems, the prompter, the progress bar and the update schedule (sampling, evaluation,
/// checkpoints, logging). Shared by PPO and GRPO/RLOO.
pub struct PgRun<'a> {
    pub tokenizer: Tokenizer,
    /// The KL penalty's reference policy.
    reference: Reference,
    pub device: Device,
    settings: &'a PgSpec,
    dir: PathBuf,
    rewarder: Rewarder,
    questions: Vec<Problem>,
    test: Vec<Problem>,
    prompter: Prompter,
    samples_seen: usize,
    /// Prompts drawn from the stream so far (more than one batch per update with dynamic sampling).
    prompts_taken: usize,
    /// `samples_seen` and `prompts_taken` before this update sampled: where a failed update
    /// leaves the run.
    before_update: (usize, usize),
    /// The verifier's metrics of this update: sums and the samples they cover.
    reward_metrics: BTreeMap<String, (f64, usize)>,
    /// The policy's checkpoints, and a separate critic's (`critic/checkpoints`).
    checkpoints: Checkpoints,
    critic_checkpoints: Checkpoints,
    /// Whether the sampler's log-probs were checked against the trainer's (first update).
    checked: bool,
    /// The sampler, and the update whose policy it serves (None: not synced yet).
    engine: Engine,
    synced_at: Option<usize>,
    /// Mean and max |sampler log-prob - trainer log-prob| of the last rollout (when the sampler
    /// does not sample with the trainer's numerics).
    logprob_gap: Option<(f64, f64)>,
    /// When this update began, and the seconds it spent sampling.
    clock: (Instant, f64),
    stream: PromptStream,
    progress: indicatif::ProgressBar,
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
    pub fn start<C: serde::Serialize>(
        s: &'a PgSpec,
        config: &C,
        value_head: bool,
        resume: bool,
        force: bool,
    ) -> Result<(Self, CausalLm)> {
        check_minibatch_size(s.episodes_per_update(), s.minibatches)?;
        let common = &s.common;
        let Run { setup, policy, tokenizer } = common.open(config, resume, force, value_head)?;
        let device = setup.device;
        // Every pass that scores or trains (policy, reference, critic) in the one precision.
        policy.net.set_bf16_matmuls(s.optim.bf16_matmuls());
        let reference = match common.lora {
            _ if s.kl_coef == 0.0 => Reference::Off,
            Some(_) => Reference::WithoutAdapters,
            None => Reference::Frozen(Box::new(s.load_scorer(&common.model, device, false)?)),
        };
        let rewarder = Rewarder::new(&s.reward, &tokenizer, device, &setup.dir)?;
        let questions = setup.load(Split::Train, s.questions)?;
        let test = setup.load(Split::Test, s.eval.problems)?;
        let prompter = common.prompter(&questions)?;
        let dir = setup.dir;
        let engine = common.engine(&dir, true)?;
        let run = PgRun {
            // Two of each, so that a policy checkpoint always has its critic's beside it.
            checkpoints: Checkpoints::new(&dir, 2).tracked(&common.log),
            critic_checkpoints: Checkpoints::new(&dir.join("critic"), 2),
            checked: false,
            engine,
            synced_at: None,
            logprob_gap: None,
            clock: (Instant::now(), 0.0),
            stream: PromptStream::new(questions.len(), common.seed),
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
            prompts_taken: 0,
            before_update: (0, 0),
            reward_metrics: BTreeMap::new(),
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
    ) -> Result<(usize, PgState)> {
        let (dir, state) = self.checkpoints.load_latest(policy, Some(optimizer))?;
        let update = state.step;
        let clocks = state
            .policy_gradient
            .ok_or_else(|| Error::file(dir.join(STATE_FILE), "is not a PPO/GRPO checkpoint (no policy_gradient)"))?;
        if let Some((critic, critic_optimizer)) = critic {
            let dir = self.critic_checkpoints.dir().join(format!("step-{update}"));
            load_checkpoint(&dir, critic, Some(critic_optimizer))?;
        }
        // Checkpoints from before dynamic sampling count no prompts: one batch per update.
        let taken = match clocks.prompts_taken {
            0 => update * self.settings.prompts_per_update,
            n => n as usize,
        };
        self.stream.take(taken);
        self.prompts_taken = taken;
        self.samples_seen = state.samples_seen as usize;
        self.progress.set_position(update as u64);
        self.progress.suspend(|| eprintln!("resumed from {} (update {update})", dir.display()));
        Ok((update, clocks))
    }

    /// Samples `samples_per_prompt` solutions to each of the next `prompts` training questions
    /// (ordered by question, then sample) and counts them. Samples drawn with the trainer's
    /// numerics are checked on the first update of this process: the policy's recomputed
    /// log-probs must equal the sampler's. Otherwise (a remote engine, synced first when due,
    /// every `rollout.sync_every` updates, or a local bf16 copy of an f32 policy) the gap between
    /// the sampler's log-probs and the trainer's is logged instead (`rollout/logprob_diff_*`).
    /// Returns the episodes and the trainer's log-probs (and the policy head's values, if any).
    pub fn sample(
        &mut self,
        policy: &CausalLm,
        update: usize,
        round: usize,
    ) -> Result<(Vec<Episode>, PerToken, Option<PerToken>)> {
        let s = self.settings;
        let seed = s.common.seed.wrapping_mul(1_000_003).wrapping_add(update as u64).wrapping_add((round as u64) << 32);
        let sampling = s.sampling.with_seed(seed);
        if round == 0 {
            self.before_update = (self.samples_seen, self.prompts_taken);
            self.clock = (Instant::now(), 0.0);
        }
        let started = Instant::now();
        let batch: Vec<Problem> =
            self.stream.take(s.prompts_per_update).into_iter().map(|i| self.questions[i].clone()).collect();
        self.prompts_taken += batch.len();
        if self.synced_at.is_none_or(|at| update - at >= s.common.rollout.sync_every) {
            self.engine.sync(policy, &self.tokenizer)?;
            self.synced_at = Some(update);
        }
        let episodes = rollout_with(&self.engine, policy, &self.tokenizer, &self.prompter, &batch, &sampling)?;
        self.clock.1 += started.elapsed().as_secs_f64();
        self.samples_seen += episodes.len();
        let refs: Vec<&Episode> = episodes.iter().collect();
        // Sampled with the trainer's numerics, the sampler's log-probs are the old policy's: the
        // trainer's pass is then needed for a value head's values, and to check them once per
        // process. Either way the sampler's are used, so a resumed run trains as the
        // uninterrupted one did.
        let exact = self.engine.samples_exactly(policy);
        let sampler = |episodes: &[Episode]| episodes.iter().map(|e| e.logprobs.clone()).collect();
        if exact && self.checked && !policy.has_head() {
            let logprobs = sampler(&episodes);
            return Ok((episodes, logprobs, None));
        }
        let (trainer, values) = self.score(policy, &refs)?;
        if !exact {
            self.logprob_gap = Some(logprob_gap(&refs, &trainer));
            return Ok((episodes, trainer, values));
        }
        if !self.checked {
            self.checked = true;
            let worst = check_behaviour_logprobs(&refs, &trainer, 2e-3)?;
            self.progress
                .suspend(|| eprintln!("behaviour log-probs agree with the trainer's (max difference {worst:.1e})"));
        }
        let logprobs = sampler(&episodes);
        Ok((episodes, logprobs, values))
    }

    /// Log-probs (and values) of the episodes under `model` at the sampling temperature.
    pub fn score(&self, model: &Llama, episodes: &[&Episode]) -> Result<(PerToken, Option<PerToken>)> {
        score_episodes(model, episodes, self.settings.sampling.temperature, self.settings.optim.batch_tokens)
    }

    /// The reference policy's log-probs of the episodes' responses; None without a KL penalty.
    pub fn reference_logprobs(&self, policy: &CausalLm, episodes: &[&Episode]) -> Result<Option<PerToken>> {
        match &self.reference {
            Reference::Frozen(reference) => Ok(Some(self.score(reference, episodes)?.0)),
            Reference::WithoutAdapters => policy.net.without_adapters(|| Ok(Some(self.score(policy, episodes)?.0))),
            Reference::Off => Ok(None),
        }
    }

    /// Per-token rewards of the episodes (see [`Rewarder`]); a verifier's metrics are kept for
    /// the update's log line.
    pub fn rewards(&mut self, episodes: &[Episode]) -> Result<PerToken> {
        let by_id: HashMap<&str, &Problem> = self.questions.iter().map(|q| (q.id.as_str(), q)).collect();
        let rewards = self.rewarder.token_rewards(&self.tokenizer, episodes, &by_id)?;
        for (name, mean) in rewards.metrics {
            let (sum, n) = self.reward_metrics.entry(name).or_default();
            (*sum, *n) = (*sum + mean * episodes.len() as f64, *n + episodes.len());
        }
        Ok(rewards.per_token)
    }

    /// Turns an update's failure to sample or reward (an engine or a verifier that failed) into
    /// its error after writing a checkpoint of the run as it stood before the update (`trained`:
    /// nothing has changed it yet), so that `--resume` redoes the update with nothing lost.
    pub fn failed_update(&self, trained: Trained, update: usize, err: Error) -> Error {
        let (Error::Reward { .. } | Error::Engine { .. }) = &err else { return err };
        let saved = self.save(trained, update - 1, self.before_update);
        self.progress.abandon();
        let note = match saved {
            Ok(()) => format!("update {update} was not trained; `--resume` redoes it"),
            Err(e) => format!("and saving the run before update {update} failed too: {e}"),
        };
        match err {
            Error::Reward { what, msg } => Error::Reward { what, msg: format!("{msg}; {note}") },
            Error::Engine { url, msg } => Error::Engine { url, msg: format!("{msg}; {note}") },
            other => other,
        }
    }

    /// Ends an update: adds what every algorithm logs (fraction correct, response length, the
    /// test metrics when due), shows `message`, logs the line, and writes a checkpoint when due
    /// or when a stop was requested (then it returns `Interrupted`).
    pub fn end_update(
        &mut self,
        trained: Trained,
        update: usize,
        episodes: &[Episode],
        mut line: Metrics,
        message: String,
    ) -> Result<()> {
        let n = episodes.len().max(1) as f64;
        for (name, (sum, count)) in std::mem::take(&mut self.reward_metrics) {
            line.insert(name, sum / count.max(1) as f64);
        }
        if let Some((mean, max)) = self.logprob_gap {
            line.extend([("rollout/logprob_diff_mean".into(), mean), ("rollout/logprob_diff_max".into(), max)]);
        }
        line.extend([
            ("reward/correct".into(), episodes.iter().filter(|e| e.correct).count() as f64 / n),
            ("response_length".into(), episodes.iter().map(|e| e.response_tokens.len()).sum::<usize>() as f64 / n),
            ("response_length/max".into(), episodes.iter().map(|e| e.response_tokens.len()).max().unwrap_or(0) as f64),
            (
                "response_length/truncated".into(),
                episodes.iter().filter(|e| e.finish == crate::sample::Finish::Length).count() as f64 / n,
            ),
        ]);
        // Where the update's time went: sampling (and engine syncs), the rest of the update
        // (scoring, rewards, the reference, the optimiser steps), then evaluation.
        let (began, sampling) = self.clock;
        let update_s = began.elapsed().as_secs_f64();
        line.extend([("time/rollout_s".into(), sampling), ("time/train_s".into(), update_s - sampling)]);
        let s = self.settings;
        if every(update, s.eval_every) || update == s.updates {
            let started = Instant::now();
            line.extend(self.progress.suspend(|| self.evaluate(trained.policy))?);
            line.insert("time/eval_s".into(), started.elapsed().as_secs_f64());
        }
        self.progress.set_position(update as u64);
        self.progress.set_message(message);
        self.progress.suspend(|| self.log(line, update))?;
        let stopping = crate::progress::stop_requested() && update < s.updates;
        if every(update, s.save_every) || stopping {
            self.save(trained, update, (self.samples_seen, self.prompts_taken))?;
        }
        if stopping {
            self.progress.abandon_with_message(format!("stopped after update {update}; a checkpoint was written"));
            return Err(Error::Interrupted);
        }
        Ok(())
    }

    /// Writes the checkpoint of update `step`, at `(samples_seen, prompts_taken)`.
    fn save(&self, trained: Trained, step: usize, (samples, prompts): (usize, usize)) -> Result<()> {
        let state = TrainerState {
            step,
            samples_seen: samples as u64,
            policy_gradient: Some(PgState { prompts_taken: prompts as u64, ..trained.state }),
            ..TrainerState::default()
        };
        // The critic first: a policy checkpoint on disk implies its critic's.
        if let Some((critic, critic_optimizer)) = trained.critic {
            self.critic_checkpoints.save(critic, &self.tokenizer, critic_optimizer, &state)?;
        }
        self.checkpoints.save(trained.policy, &self.tokenizer, trained.optimizer, &state)
    }

    /// Saves the final policy into `RUN/final`.
    pub fn finish(self, policy: &CausalLm) -> Result<PathBuf> {
        self.progress.finish_and_clear();
        self.checkpoints.finish_tracking()?;
        crate::run::save_final(&self.dir, policy, &self.tokenizer)
    }

    fn evaluate(&self, policy: &CausalLm) -> Result<Metrics> {
        evaluate_policy(
            policy,
            &self.tokenizer,
            &self.prompter,
            &self.test,
            &self.settings.eval,
            self.settings.common.seed,
            self.settings.common.rollout.dtype,
        )
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

/// The policy the KL penalty measures against.
enum Reference {
    /// A frozen copy of the initial policy.
    Frozen(Box<CausalLm>),
    /// With LoRA: the policy with its adapters switched off, no copy.
    WithoutAdapters,
    /// `kl_coef = 0` (a multiplicative controller keeps it 0): no reference, no forward pass.
    Off,
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
    fn the_prompt_stream_covers_every_question_before_repeating() {
        let mut stream = PromptStream::new(5, 1);
        let mut first: Vec<usize> = stream.take(5);
        first.sort();
        assert_eq!(first, vec![0, 1, 2, 3, 4]);
        assert_eq!(stream.take(7).len(), 7);
    }
}
