//! The training loop every supervised trainer shares: token-budget batching, gradient
//! accumulation and clipping, AdamW with the schedule, data-parallel gradient sums, logging,
//! evaluation, and checkpoints with `--resume`.

use super::checkpoint::{Checkpoints, TrainerState};
use super::objective::{Example, Objective};
use super::optim::{learning_rate, AdamW, TrainConfig};
use crate::error::{Error, Result};
use crate::model::CausalLm;
use crate::rng::Rng;
use crate::run::Metrics;
use crate::tokenizer::Tokenizer;
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

/// Evaluates the model during training; returns metrics such as `eval/maj@1`.
pub type EvalFn<'a> = dyn FnMut(&CausalLm, &TrainerState) -> Result<Metrics> + 'a;

/// The training loop shared by every trainer.
pub struct Trainer<'a> {
    pub model: &'a mut CausalLm,
    pub tokenizer: &'a Tokenizer,
    pub cfg: TrainConfig,
    pub checkpoints: Checkpoints,
    pub state: TrainerState,
    optimizer: AdamW,
    /// Metric that decides `best/` (higher is better), e.g. "eval/maj@1".
    pub best_metric: Option<String>,
    pub objective: Objective,
}

impl<'a> Trainer<'a> {
    /// A trainer writing into `run_dir`. With `resume`, model, optimizer and position come from
    /// the newest valid checkpoint there.
    pub fn new(
        model: &'a mut CausalLm,
        tokenizer: &'a Tokenizer,
        cfg: TrainConfig,
        run_dir: &Path,
        resume: bool,
    ) -> Result<Self> {
        if cfg.batch_tokens < 2 || cfg.grad_accum == 0 || cfg.max_seq_len < 2 {
            return Err(Error::Invalid(
                "train.batch_tokens, train.grad_accum and train.max_seq_len must be positive".into(),
            ));
        }
        let checkpoints = Checkpoints::new(run_dir, cfg.keep_checkpoints);
        let mut optimizer = AdamW::new(model);
        let mut state = TrainerState::default();
        if resume {
            let (dir, loaded) = checkpoints.load_latest(model, Some(&mut optimizer))?;
            eprintln!("resuming from {} (step {})", dir.display(), loaded.step);
            state = loaded;
        }
        crate::dist::world().broadcast_weights(&model.vs)?;
        Ok(Trainer {
            model,
            tokenizer,
            cfg,
            checkpoints,
            state,
            optimizer,
            best_metric: None,
            objective: Objective::default(),
        })
    }

    /// Trains on `examples` until `max_steps` (or `epochs`), logging, evaluating and
    /// checkpointing on the way. In a data-parallel run of N ranks a micro-batch holds
    /// `N * batch_tokens` tokens, planned alike on every rank; each rank computes the loss of its
    /// share (whole groups) and the gradients are summed, so N ranks step as one rank with N
    /// times the budget would.
    pub fn train(&mut self, examples: &[Example], eval: &mut EvalFn) -> Result<()> {
        if examples.is_empty() {
            return Err(Error::Invalid("no training examples".into()));
        }
        let examples: Vec<Example> = examples
            .iter()
            .map(|e| Example { tokens: e.tokens[..e.tokens.len().min(self.cfg.max_seq_len)].to_vec(), ..e.clone() })
            .collect();
        let lengths: Vec<usize> = examples.iter().map(|e| e.tokens.len()).collect();
        let groups: Vec<Option<usize>> = examples.iter().map(|e| e.group).collect();
        let world = crate::dist::world();
        let budget = self.cfg.batch_tokens * world.size;
        let per_epoch = make_batches(&lengths, &groups, budget, self.cfg.seed, 0).len();
        let total = if self.cfg.max_steps > 0 {
            self.cfg.max_steps
        } else {
            ((self.cfg.epochs * per_epoch as f64) / self.cfg.grad_accum as f64).ceil().max(1.0) as usize
        };
        let progress = crate::progress::bar(total as u64, self.state.step as u64, "steps");
        let pad = self.tokenizer.pad_id();
        let mut batches = make_batches(&lengths, &groups, budget, self.cfg.seed, self.state.epoch);
        let mut window = (Instant::now(), 0usize); // tokens since the last log line
        let mut loss_window = (0.0f64, 0usize);
        let mut sync_seconds = 0.0; // in gradient all-reduces since the last log line
        while self.state.step < total {
            // Gather this step's micro-batches, moving to the next epoch as needed.
            let mut micro = Vec::with_capacity(self.cfg.grad_accum);
            while micro.len() < self.cfg.grad_accum {
                if self.state.batch_in_epoch >= batches.len() {
                    self.state.epoch += 1;
                    self.state.batch_in_epoch = 0;
                    batches = make_batches(&lengths, &groups, budget, self.cfg.seed, self.state.epoch);
                }
                micro.push(batches[self.state.batch_in_epoch].clone());
                self.state.batch_in_epoch += 1;
            }
            let lr = learning_rate(&self.cfg, self.state.step, total);
            let weight: f64 = micro.iter().flatten().map(|&i| self.objective.weight(&examples[i])).sum();
            let weight = weight.max(1e-9);
            self.optimizer.zero_grad();
            let mut loss_sum = 0.0;
            if self.model.lora.as_ref().is_some_and(|l| l.config.dropout > 0.0) {
                // Dropout masks are a function of (seed, step): a resumed run draws what the
                // straight run drew.
                tch::manual_seed((self.cfg.seed ^ (self.state.step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)) as i64);
            }
            self.model.net.set_adapter_dropout(true);
            self.model.net.set_bf16_matmuls(self.cfg.bf16_matmuls());
            for batch in &micro {
                let mine = rank_share(batch, &groups);
                if mine.is_empty() {
                    continue;
                }
                let batch: Vec<&Example> = mine.iter().map(|&i| &examples[i]).collect();
                let loss = self.objective.loss(self.model, &batch, pad)?;
                loss_sum += loss.double_value(&[]);
                (loss / weight).backward();
            }
            self.model.net.set_adapter_dropout(false);
            self.model.net.set_bf16_matmuls(false);
            let sync = Instant::now();
            world.all_reduce_grads(&self.model.vs)?;
            let loss_sum = world.sum(&[loss_sum])?[0];
            sync_seconds += sync.elapsed().as_secs_f64();
            if !loss_sum.is_finite() {
                return Err(Error::Invalid(format!(
                    "loss is {loss_sum} at step {}: stopping (lower train.lr?)",
                    self.state.step + 1
                )));
            }
            let grad_norm = self.optimizer.clip_grad_norm(self.cfg.grad_clip);
            self.optimizer.step(&self.cfg, lr);
            let loss = loss_sum / weight;
            self.state.step += 1;
            self.state.samples_seen += micro.iter().map(Vec::len).sum::<usize>() as u64;
            let tokens: usize = micro.iter().flatten().map(|&i| lengths[i]).sum();
            self.state.tokens_seen += tokens as u64;
            self.state.last_loss = loss;
            window.1 += tokens;
            loss_window = (loss_window.0 + loss, loss_window.1 + 1);
            progress.set_position(self.state.step as u64);
            progress.set_message(format!("loss {loss:.4} lr {lr:.2e}"));

            let step = self.state.step;
            let at_end = step == total;
            let mut line = Metrics::new();
            if every(step, self.cfg.log_every) || at_end || step == 1 {
                let seconds = window.0.elapsed().as_secs_f64();
                line.insert("loss".into(), loss_window.0 / loss_window.1.max(1) as f64);
                line.insert("lr".into(), lr);
                line.insert("grad_norm".into(), grad_norm);
                line.insert("tokens_per_s".into(), window.1 as f64 / seconds.max(1e-9));
                if world.size > 1 {
                    line.insert("dist/allreduce_ms".into(), 1e3 * sync_seconds / loss_window.1.max(1) as f64);
                    sync_seconds = 0.0;
                }
                window = (Instant::now(), 0);
                loss_window = (0.0, 0);
            }
            if every(step, self.cfg.eval_every) || at_end {
                progress.set_message("evaluating".to_string());
                let metrics = eval(self.model, &self.state)?;
                if let Some(name) = &self.best_metric {
                    if let Some(&value) = metrics.get(name) {
                        if self.state.best.is_none_or(|b| value > b) {
                            self.state.best = Some(value);
                            self.checkpoints.save_best(self.model, self.tokenizer, &self.state)?;
                        }
                    }
                }
                if !metrics.is_empty() {
                    progress.suspend(|| eprintln!("step {step}: {}", format_metrics(&metrics)));
                }
                line.extend(metrics);
            }
            if !line.is_empty() {
                line.insert("step".into(), step as f64);
                line.insert("epoch".into(), self.state.epoch as f64);
                line.insert("epochs".into(), self.state.samples_seen as f64 / examples.len() as f64);
                line.insert("samples_seen".into(), self.state.samples_seen as f64);
                line.insert("tokens_seen".into(), self.state.tokens_seen as f64);
                self.checkpoints.log(&line)?;
            }
            let stop = world.any(crate::progress::stop_requested())?;
            if every(step, self.cfg.save_every) || at_end || stop {
                self.checkpoints.save(self.model, self.tokenizer, &self.optimizer, &self.state)?;
            }
            if stop && !at_end {
                progress.abandon_with_message(format!("stopped at step {step}; a checkpoint was written"));
                return Err(Error::Interrupted);
            }
        }
        progress.finish_and_clear();
        self.checkpoints.finish_tracking()
    }
}

/// This rank's share of a micro-batch: its block of the batch's units (an example, or a whole
/// group, whose members `make_batches` keeps together).
fn rank_share(batch: &[usize], groups: &[Option<usize>]) -> Vec<usize> {
    let world = crate::dist::world();
    if world.size == 1 {
        return batch.to_vec();
    }
    let mut units: Vec<Vec<usize>> = Vec::new();
    for &i in batch {
        let group = groups.get(i).copied().flatten();
        match units.last_mut() {
            Some(unit) if group.is_some() && groups.get(unit[0]).copied().flatten() == group => unit.push(i),
            _ => units.push(vec![i]),
        }
    }
    units[world.shard(units.len())].concat()
}

/// Whether a periodic action (every `n` steps; 0 = never) falls on `step`.
pub fn every(step: usize, n: usize) -> bool {
    n > 0 && step.is_multiple_of(n)
}

fn format_metrics(metrics: &Metrics) -> String {
    metrics.iter().map(|(k, v)| format!("{k} {v:.4}")).collect::<Vec<_>>().join(", ")
}

/// Groups example indices into micro-batches of at most `budget` tokens (rows x longest row).
/// Examples (or whole groups, which are never split: `groups[i]` names example i's group) are
/// shuffled with (seed, epoch), then sorted by length within pools of ~64 batches so that rows
/// in a batch have similar lengths (little padding), and the batch order is shuffled again.
/// Deterministic, so a resumed run sees the same batches. A group over the budget is a batch.
pub fn make_batches(
    lengths: &[usize],
    groups: &[Option<usize>],
    budget: usize,
    seed: u64,
    epoch: usize,
) -> Vec<Vec<usize>> {
    let mut rng = Rng::new(seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut units: Vec<Vec<usize>> = Vec::new();
    let mut unit_of_group: HashMap<usize, usize> = HashMap::new();
    for i in 0..lengths.len() {
        match groups.get(i).copied().flatten() {
            Some(g) => {
                let u = *unit_of_group.entry(g).or_insert_with(|| {
                    units.push(Vec::new());
                    units.len() - 1
                });
                units[u].push(i);
            }
            None => units.push(vec![i]),
        }
    }
    rng.shuffle(&mut units);
    let longest = |unit: &[usize]| unit.iter().map(|&i| lengths[i]).max().unwrap_or(0);
    let mean = lengths.iter().sum::<usize>() / lengths.len().max(1);
    let pool = (64 * budget / mean.max(1) * units.len() / lengths.len().max(1)).max(1);
    let mut batches = Vec::new();
    for chunk in units.chunks_mut(pool) {
        chunk.sort_by_key(|u| std::cmp::Reverse(longest(u)));
        let mut batch: Vec<usize> = Vec::new();
        for unit in chunk.iter() {
            let longest = longest(&batch).max(longest(unit));
            if !batch.is_empty() && longest * (batch.len() + unit.len()) > budget {
                batches.push(std::mem::take(&mut batch));
            }
            batch.extend(unit);
        }
        if !batch.is_empty() {
            batches.push(batch);
        }
    }
    rng.shuffle(&mut batches);
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_respect_the_budget_and_cover_every_example_once() {
        let lengths: Vec<usize> = (0..500).map(|i| 10 + (i * 37) % 90).collect();
        let batches = make_batches(&lengths, &[], 400, 3, 0);
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..500).collect::<Vec<_>>());
        for b in &batches {
            let longest = b.iter().map(|&i| lengths[i]).max().unwrap();
            assert!(longest * b.len() <= 400 || b.len() == 1);
        }
        let padded: usize = batches.iter().map(|b| b.iter().map(|&i| lengths[i]).max().unwrap() * b.len()).sum();
        let real: usize = lengths.iter().sum();
        assert!((padded as f64) < 1.1 * real as f64, "bucketing keeps padding small: {padded} vs {real}");
        assert_eq!(make_batches(&lengths, &[], 400, 3, 0), batches, "deterministic");
        assert_ne!(make_batches(&lengths, &[], 400, 3, 1), batches, "a new order each epoch");
    }

    #[test]
    fn groups_share_a_batch_and_every_example_is_in_one() {
        let lengths: Vec<usize> = (0..300).map(|i| 10 + (i * 37) % 90).collect();
        let groups: Vec<Option<usize>> = (0..300).map(|i| (i % 3 != 0).then_some(i % 40)).collect();
        let batches = make_batches(&lengths, &groups, 800, 5, 0);
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..300).collect::<Vec<_>>());
        for g in 0..40 {
            let holding: Vec<usize> =
                (0..batches.len()).filter(|&b| batches[b].iter().any(|&i| groups[i] == Some(g))).collect();
            assert_eq!(holding.len(), 1, "group {g} is in batches {holding:?}");
        }
        assert_eq!(make_batches(&lengths, &groups, 800, 5, 0), batches, "deterministic");
    }
}
