//! What every trainer shares: AdamW, the learning-rate schedule, gradient clipping and
//! accumulation, token-budget batching, loss masking, checkpoints with `--resume`, metrics and
//! the progress bar, and the two objectives (language modelling, the ORM's outcome loss). The
//! supervised algorithms (`pretrain`, `sft`, `ei`, `orm`, `rcrl`) only say what the examples are
//! and what to evaluate; the policy-gradient ones (`ppo`, `grpo`) share `rl`.

pub mod checkpoint;
pub mod ei;
pub mod grpo;
pub mod optim;
pub mod orm;
pub mod ppo;
pub mod pretrain;
pub mod rcrl;
pub mod rl;
pub mod rounds;
pub mod sft;

use crate::error::{Error, Result};
use crate::model::CausalLm;
use crate::rng::Rng;
use crate::tokenizer::Tokenizer;
use checkpoint::{Checkpoints, TrainerState};
pub use optim::AdamW;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Kind, Reduction, Tensor};

/// Optimisation settings (`[train]` in configs).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Peak learning rate.
    pub lr: f64,
    /// "cosine" (decay to `min_lr_ratio * lr`) or "constant", after linear warm-up.
    pub schedule: String,
    pub warmup_steps: usize,
    pub min_lr_ratio: f64,
    /// Optimizer steps; 0 means `epochs` passes over the data.
    pub max_steps: usize,
    pub epochs: f64,
    /// AdamW, decoupled weight decay on matrices only (not norms, biases).
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Clip the global gradient norm to this (0 = off).
    pub grad_clip: f64,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Token budget of a micro-batch, padding included (rows x longest row).
    pub batch_tokens: usize,
    /// Longer examples are cut to this many tokens.
    pub max_seq_len: usize,
    /// Seed of the data order.
    pub seed: u64,
    pub log_every: usize,
    /// Evaluate every N steps (0 = only at the end).
    pub eval_every: usize,
    /// Checkpoint every N steps (0 = only at the end).
    pub save_every: usize,
    /// Checkpoints kept (the newest); `best/` is kept apart.
    pub keep_checkpoints: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            lr: 1e-3,
            schedule: "cosine".into(),
            warmup_steps: 50,
            min_lr_ratio: 0.1,
            max_steps: 0,
            epochs: 1.0,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            grad_clip: 1.0,
            grad_accum: 1,
            batch_tokens: 4096,
            max_seq_len: 512,
            seed: 0,
            log_every: 10,
            eval_every: 0,
            save_every: 0,
            keep_checkpoints: 2,
        }
    }
}

/// Where a run writes (`[run]` in configs): `OUT_DIR/NAME/`.
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
    pub fn dir(&self) -> PathBuf {
        self.out_dir.join(&self.name)
    }
}

/// A token sequence; the loss covers the tokens from `targets_from` on (the response), not the
/// prompt before it.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub tokens: Vec<u32>,
    pub targets_from: usize,
    /// What the ORM learns to predict at every response token: 1 when the final answer is right.
    /// None for language modelling.
    pub label: Option<f32>,
    /// Examples of one group (the ORM: solutions to one question) always share a micro-batch.
    pub group: Option<usize>,
}

impl Example {
    pub fn new(tokens: Vec<u32>, targets_from: usize) -> Self {
        Example { tokens, targets_from, label: None, group: None }
    }
}

/// What a trainer minimises. Both losses are sums over positions, normalised by the summed
/// [`Objective::weight`] of the step's examples, which is known on the host (no device sync).
#[derive(Debug, Clone, PartialEq)]
pub enum Objective {
    /// Next-token cross-entropy on the response tokens. Tokens in `context_only` (RCRL's
    /// control tokens) are read but never predicted.
    LanguageModel { context_only: Vec<u32> },
    /// Binary cross-entropy of the scalar head against the example's label at every response
    /// token (the ORM); positive examples weigh `positive_weight`, negative ones 1. With
    /// `lm_coef` > 0, plus that times the next-token loss on the right solutions (Cobbe et al.
    /// 2021's joint objective), so the body keeps what it knows about writing right solutions.
    /// With `pairwise_coef` > 0, plus that times a Bradley-Terry loss on the final-token logits
    /// of every (right, wrong) pair of one group (question), so the ORM learns to rank a
    /// question's solutions, which is what rerank@k asks of it, not only to tell easy questions
    /// from hard ones.
    Outcome { positive_weight: f64, lm_coef: f64, pairwise_coef: f64 },
}

impl Default for Objective {
    fn default() -> Self {
        Objective::LanguageModel { context_only: Vec::new() }
    }
}

impl Objective {
    /// The example's share of the normaliser: its weighted number of loss terms.
    pub fn weight(&self, e: &Example) -> f64 {
        match self {
            Objective::LanguageModel { context_only } => {
                (e.targets_from.max(1)..e.tokens.len()).filter(|&j| !context_only.contains(&e.tokens[j])).count() as f64
            }
            Objective::Outcome { positive_weight, .. } => {
                let w = if e.label.unwrap_or(0.0) >= 0.5 { *positive_weight } else { 1.0 };
                e.tokens.len().saturating_sub(e.targets_from) as f64 * w
            }
        }
    }

    /// The summed loss of a micro-batch.
    pub fn loss(&self, model: &CausalLm, batch: &[&Example], pad: u32) -> Result<Tensor> {
        match self {
            Objective::LanguageModel { context_only } => {
                let (inputs, targets) = collate(batch, pad, context_only, model.device());
                Ok(masked_lm_loss(model, &inputs, &targets))
            }
            Objective::Outcome { positive_weight, lm_coef, pairwise_coef } => {
                outcome_loss(model, batch, pad, *positive_weight, *lm_coef, *pairwise_coef)
            }
        }
    }
}

/// Learning rate at `step` (0-based): linear warm-up, then constant or cosine decay.
pub fn learning_rate(cfg: &TrainConfig, step: usize, total_steps: usize) -> f64 {
    if step < cfg.warmup_steps {
        return cfg.lr * (step + 1) as f64 / cfg.warmup_steps as f64;
    }
    match cfg.schedule.as_str() {
        "constant" => cfg.lr,
        _ => {
            let span = total_steps.saturating_sub(cfg.warmup_steps).max(1) as f64;
            let progress = ((step - cfg.warmup_steps) as f64 / span).min(1.0);
            let min = cfg.lr * cfg.min_lr_ratio;
            min + (cfg.lr - min) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
        }
    }
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

/// Right-padded inputs `[B, T-1]` and targets `[B, T-1]` (-100 where no loss is taken: the
/// prompt, the padding and `context_only` tokens).
pub fn collate(examples: &[&Example], pad: u32, context_only: &[u32], device: tch::Device) -> (Tensor, Tensor) {
    let t = examples.iter().map(|e| e.tokens.len()).max().unwrap_or(2).max(2);
    let b = examples.len();
    let mut inputs = vec![pad as i64; b * (t - 1)];
    let mut targets = vec![-100i64; b * (t - 1)];
    for (r, e) in examples.iter().enumerate() {
        for j in 0..e.tokens.len().saturating_sub(1) {
            inputs[r * (t - 1) + j] = e.tokens[j] as i64;
            if j + 1 >= e.targets_from && !context_only.contains(&e.tokens[j + 1]) {
                targets[r * (t - 1) + j] = e.tokens[j + 1] as i64;
            }
        }
    }
    let shape = [b as i64, t as i64 - 1];
    (
        Tensor::from_slice(&inputs).view(shape).to_device(device),
        Tensor::from_slice(&targets).view(shape).to_device(device),
    )
}

/// Summed cross-entropy over the target positions (targets of -100 are skipped).
pub fn masked_lm_loss(model: &CausalLm, inputs: &Tensor, targets: &Tensor) -> Tensor {
    let logits = model.forward_logits(inputs);
    let vocab = logits.size()[2];
    logits.reshape([-1, vocab]).to_kind(Kind::Float).cross_entropy_loss::<Tensor>(
        &targets.reshape([-1]),
        None,
        Reduction::Sum,
        -100,
        0.0,
    )
}

/// Summed binary cross-entropy of the scalar head's logit at every response token (the hidden
/// state after reading it) against the example's label; see [`Objective::Outcome`].
pub fn outcome_loss(
    model: &CausalLm,
    batch: &[&Example],
    pad: u32,
    positive_weight: f64,
    lm_coef: f64,
    pairwise_coef: f64,
) -> Result<Tensor> {
    let t = batch.iter().map(|e| e.tokens.len()).max().unwrap_or(1);
    let b = batch.len();
    let mut ids = vec![pad as i64; b * t];
    let mut labels = vec![0f32; b * t];
    let mut weights = vec![0f32; b * t];
    for (r, e) in batch.iter().enumerate() {
        let label = e.label.ok_or_else(|| Error::Invalid("an ORM training example has no label".into()))?;
        let w = if label >= 0.5 { positive_weight as f32 } else { 1.0 };
        for (j, &token) in e.tokens.iter().enumerate() {
            ids[r * t + j] = token as i64;
            if j >= e.targets_from {
                (labels[r * t + j], weights[r * t + j]) = (label, w);
            }
        }
    }
    let device = model.device();
    let shape = [b as i64, t as i64];
    let hidden = model.forward_hidden(&Tensor::from_slice(&ids).view(shape).to_device(device));
    let logits = model
        .head_values(&hidden)
        .ok_or_else(|| Error::Invalid("the ORM objective needs a model with a scalar head".into()))?;
    let labels_t = Tensor::from_slice(&labels).view(shape).to_device(device);
    let weights = Tensor::from_slice(&weights).view(shape).to_device(device);
    let logits = logits.to_kind(Kind::Float);
    let mut loss = logits.binary_cross_entropy_with_logits(&labels_t, Some(&weights), None, Reduction::Sum);
    if pairwise_coef > 0.0 {
        loss += pairwise_loss(&logits, batch, positive_weight) * pairwise_coef;
    }
    if lm_coef <= 0.0 {
        return Ok(loss);
    }
    // Next-token targets on the responses of right solutions only.
    let mut targets = vec![-100i64; b * t];
    for (r, e) in batch.iter().enumerate() {
        if e.label.unwrap_or(0.0) >= 0.5 {
            for j in e.targets_from.max(1)..e.tokens.len() {
                targets[r * t + j - 1] = e.tokens[j] as i64;
            }
        }
    }
    let targets = Tensor::from_slice(&targets).to_device(device);
    let lm = model.logits(&hidden).to_kind(Kind::Float).reshape([(b * t) as i64, -1]).cross_entropy_loss::<Tensor>(
        &targets,
        None,
        Reduction::Sum,
        -100,
        0.0,
    );
    Ok(loss + lm * lm_coef)
}

/// For each group in the batch with right and wrong solutions: the mean over its (right, wrong)
/// pairs of -log sigmoid(s_right - s_wrong) on the final-token logits, times the group's share
/// of the loss normaliser (its weighted response tokens), so that the sum divided by the
/// normaliser is a per-solution average on the scale of the per-token cross-entropy.
fn pairwise_loss(logits: &Tensor, batch: &[&Example], positive_weight: f64) -> Tensor {
    let mut members: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (r, e) in batch.iter().enumerate() {
        if let Some(g) = e.group {
            members.entry(g).or_default().push(r);
        }
    }
    let last: Vec<i64> = batch.iter().map(|e| e.tokens.len() as i64 - 1).collect();
    let finals =
        logits.gather(1, &Tensor::from_slice(&last).to_device(logits.device()).unsqueeze(1), false).squeeze_dim(1);
    let objective = Objective::Outcome { positive_weight, lm_coef: 0.0, pairwise_coef: 0.0 };
    let (mut right, mut wrong, mut scale) = (Vec::new(), Vec::new(), Vec::new());
    for rows in members.values() {
        let is_right = |r: usize| batch[r].label.unwrap_or(0.0) >= 0.5;
        let pairs: Vec<(i64, i64)> = rows
            .iter()
            .filter(|&&a| is_right(a))
            .flat_map(|&a| rows.iter().filter(|&&b| !is_right(b)).map(move |&b| (a as i64, b as i64)))
            .collect();
        let weight: f64 = rows.iter().map(|&r| objective.weight(batch[r])).sum();
        for &(a, b) in &pairs {
            right.push(a);
            wrong.push(b);
            scale.push((weight / pairs.len() as f64) as f32);
        }
    }
    if right.is_empty() {
        return finals.sum(Kind::Float) * 0.0;
    }
    let device = logits.device();
    let pick = |rows: &[i64]| finals.index_select(0, &Tensor::from_slice(rows).to_device(device));
    let margin = pick(&right) - pick(&wrong);
    (margin.neg().softplus() * Tensor::from_slice(&scale).to_device(device)).sum(Kind::Float)
}

/// Metrics of one log line (`metrics.jsonl`).
pub type Metrics = BTreeMap<String, f64>;

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
        Ok(())
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
fn every(step: usize, n: usize) -> bool {
    n > 0 && step.is_multiple_of(n)
}

fn format_metrics(metrics: &Metrics) -> String {
    metrics.iter().map(|(k, v)| format!("{k} {v:.4}")).collect::<Vec<_>>().join(", ")
}

/// Evaluation during training (`[eval]` in configs): greedy accuracy (maj@1) on held-out
/// problems and, with `samples`, pass@k from that many samples each (how exploration changes
/// through training).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalDuringTraining {
    /// Problems held out for validation (0 = no evaluation).
    pub problems: usize,
    pub max_new_tokens: usize,
    pub batch_size: usize,
    /// Samples per problem for pass@k (0 = greedy only).
    pub samples: usize,
    pub temperature: f64,
}

impl Default for EvalDuringTraining {
    fn default() -> Self {
        EvalDuringTraining { problems: 200, max_new_tokens: 200, batch_size: 64, samples: 0, temperature: 0.7 }
    }
}

/// Greedy accuracy of `model` on `problems`, as `eval/maj@1`, and with `cfg.samples` also
/// pass@1 and pass@samples (see [`rounds::evaluate_policy`]).
pub fn validation_metrics(
    model: &CausalLm,
    tokenizer: &Tokenizer,
    prompter: &crate::prompt::Prompter,
    problems: &[crate::task::Problem],
    cfg: &EvalDuringTraining,
) -> Result<Metrics> {
    if problems.is_empty() {
        return Ok(Metrics::new());
    }
    if cfg.samples > 0 {
        let eval = rounds::RoundEval {
            problems: problems.len(),
            samples: cfg.samples,
            sampled_problems: 0,
            temperature: cfg.temperature,
            ks: vec![1, cfg.samples],
            max_new_tokens: cfg.max_new_tokens,
            batch_size: cfg.batch_size,
        };
        return rounds::evaluate_policy(model, tokenizer, prompter, problems, &eval, 0);
    }
    let sampling = crate::sample::SamplingConfig {
        max_new_tokens: cfg.max_new_tokens,
        temperature: 0.0,
        batch_size: cfg.batch_size,
        ..Default::default()
    };
    let episodes = crate::rollout::rollout(model, tokenizer, prompter, problems, &sampling)?;
    let correct = episodes.iter().filter(|e| e.correct).count();
    Ok(Metrics::from([("eval/maj@1".to_string(), correct as f64 / episodes.len() as f64)]))
}

/// Makes the run folder and writes its resolved `config.toml`. A folder that already holds a
/// run is only reused with `resume`, or wiped with `force`.
pub fn prepare_run_dir(dir: &Path, config_toml: &str, resume: bool, force: bool) -> Result<()> {
    let used = dir.join("checkpoints").exists() || dir.join(checkpoint::METRICS_FILE).exists();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_to_the_floor() {
        let cfg = TrainConfig { lr: 1.0, warmup_steps: 4, min_lr_ratio: 0.1, ..TrainConfig::default() };
        assert_eq!(learning_rate(&cfg, 0, 14), 0.25);
        assert_eq!(learning_rate(&cfg, 3, 14), 1.0);
        assert!((learning_rate(&cfg, 9, 14) - 0.55).abs() < 1e-12, "half way: mid between 1 and 0.1");
        assert!((learning_rate(&cfg, 14, 14) - 0.1).abs() < 1e-12);
        let constant = TrainConfig { schedule: "constant".into(), ..cfg };
        assert_eq!(learning_rate(&constant, 10, 14), 1.0);
    }

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

    #[test]
    fn pairwise_loss_by_hand() {
        // Group 0: right a (final logit 2), right b (0), wrong c (1); group 1 has only a wrong
        // solution and no pair. Every example has 2 response tokens (weight 2; right ones x3).
        let example = |label: f32, group: usize| Example {
            label: Some(label),
            group: Some(group),
            ..Example::new(vec![7, 8, 9, 10], 2)
        };
        let batch = [example(1.0, 0), example(1.0, 0), example(0.0, 0), example(0.0, 1)];
        let refs: Vec<&Example> = batch.iter().collect();
        let logits =
            Tensor::from_slice(&[0f32, 0., 0., 2., 0., 0., 0., 0., 0., 0., 0., 1., 0., 0., 0., 5.]).view([4, 4]);
        let loss = pairwise_loss(&logits, &refs, 3.0).double_value(&[]);
        // Pairs (a, c): softplus(1 - 2), (b, c): softplus(1 - 0); the group weighs 6 + 6 + 2.
        let softplus = |x: f64| (1.0 + x.exp()).ln();
        let expected = 14.0 * (softplus(-1.0) + softplus(1.0)) / 2.0;
        assert!((loss - expected).abs() < 1e-5, "{loss} vs {expected}");
    }

    #[test]
    fn collate_masks_the_prompt_and_the_padding() {
        let a = Example::new(vec![1, 2, 3, 4, 5], 3);
        let b = Example::new(vec![1, 6, 7], 1);
        let (inputs, targets) = collate(&[&a, &b], 0, &[], tch::Device::Cpu);
        let objective = Objective::default();
        assert_eq!((objective.weight(&a), objective.weight(&b)), (2.0, 2.0));
        assert_eq!(targets.ne(-100).sum(Kind::Int64).int64_value(&[]), 4);
        assert_eq!(Vec::<i64>::try_from(inputs.reshape([-1])).unwrap(), vec![1, 2, 3, 4, 1, 6, 0, 0]);
        // Row a predicts tokens 4 and 5 only (positions 2 and 3); row b predicts 6 and 7.
        assert_eq!(Vec::<i64>::try_from(targets.reshape([-1])).unwrap(), vec![-100, -100, 4, 5, 6, 7, -100, -100]);
    }
}
