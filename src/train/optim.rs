//! AdamW with decoupled weight decay (Loshchilov & Hutter, 2019), written out so that its state
//! can be checkpointed and restored exactly.

use crate::error::{Error, Result};
use crate::model::CausalLm;
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Kind, Tensor};

/// Optimisation settings (`[train]` in configs).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Peak learning rate.
    pub lr: f64,
    /// The shape after linear warm-up.
    pub schedule: Schedule,
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
    /// The trained model's matmuls: in its own dtype, or bf16 with everything else in f32.
    pub precision: Precision,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            lr: 1e-3,
            schedule: Schedule::Cosine,
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
            precision: Precision::F32,
        }
    }
}

impl TrainConfig {
    /// Whether the trained model's matmuls run in bf16 (see [`Precision::Bf16`]).
    pub fn bf16_matmuls(&self) -> bool {
        self.precision == Precision::Bf16
    }
}

/// The dtype of a trained model's matmuls (`train.precision`, `optim.precision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// The weights' own dtype throughout.
    F32,
    /// Mixed precision, as torch's autocast: each matmul's inputs and weights cast to bf16, its
    /// result back to f32; weights, gradients, optimizer state, norms, attention, softmax and
    /// losses stay f32. On a CPU with AVX512-BF16 (or a GPU), where bf16 matmuls run 2-3x as
    /// fast: SmolLM2-135M's SFT 1.3-1.5x the tokens/s here, the tiny preset's 1.15x.
    Bf16,
}

/// The learning-rate schedule after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// Cosine decay to `min_lr_ratio * lr` at the last step.
    Cosine,
    Constant,
}

/// Learning rate at `step` (0-based): linear warm-up, then constant or cosine decay.
pub fn learning_rate(cfg: &TrainConfig, step: usize, total_steps: usize) -> f64 {
    if step < cfg.warmup_steps {
        return cfg.lr * (step + 1) as f64 / cfg.warmup_steps as f64;
    }
    match cfg.schedule {
        Schedule::Constant => cfg.lr,
        Schedule::Cosine => {
            let span = total_steps.saturating_sub(cfg.warmup_steps).max(1) as f64;
            let progress = ((step - cfg.warmup_steps) as f64 / span).min(1.0);
            let min = cfg.lr * cfg.min_lr_ratio;
            min + (cfg.lr - min) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
        }
    }
}

/// AdamW with decoupled weight decay, written out so its state can be checkpointed exactly.
pub struct AdamW {
    params: Vec<(String, Tensor)>,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    pub steps: i64,
}

impl AdamW {
    pub fn new(model: &CausalLm) -> Self {
        // Only what trains (with LoRA, the adapters and a head) has moments: the point of LoRA.
        let mut params: Vec<(String, Tensor)> =
            model.vs.variables().into_iter().filter(|(name, _)| model.trains(name)).collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let exp_avg = params.iter().map(|(_, p)| p.zeros_like()).collect();
        let exp_avg_sq = params.iter().map(|(_, p)| p.zeros_like()).collect();
        AdamW { params, exp_avg, exp_avg_sq, steps: 0 }
    }

    /// Global gradient norm, after scaling the gradients down to `max_norm` if it is above.
    pub fn clip_grad_norm(&self, max_norm: f64) -> f64 {
        tch::no_grad(|| {
            let squares: Vec<Tensor> = self
                .params
                .iter()
                .map(|(_, p)| p.grad())
                .filter(|g| g.defined())
                .map(|g| g.square().sum(Kind::Float))
                .collect();
            // No gradient at all: a first step whose every response had nothing to learn.
            if squares.is_empty() {
                return 0.0;
            }
            let norm = Tensor::stack(&squares, 0).sum(Kind::Float).sqrt().double_value(&[]);
            if max_norm > 0.0 && norm > max_norm {
                for (_, p) in &self.params {
                    let mut g = p.grad();
                    if g.defined() {
                        let _ = g.g_mul_scalar_(max_norm / (norm + 1e-6));
                    }
                }
            }
            norm
        })
    }

    pub fn step(&mut self, cfg: &TrainConfig, lr: f64) {
        self.step_by(cfg, |_| lr)
    }

    /// A step where each parameter's learning rate comes from its name (0 leaves it unchanged:
    /// PPO's critic warm-up trains the value head alone).
    pub fn step_by(&mut self, cfg: &TrainConfig, lr_of: impl Fn(&str) -> f64) {
        self.steps += 1;
        let (b1, b2) = (cfg.beta1, cfg.beta2);
        let bias1 = 1.0 - b1.powi(self.steps as i32);
        let bias2 = 1.0 - b2.powi(self.steps as i32);
        tch::no_grad(|| {
            for (i, (name, p)) in self.params.iter_mut().enumerate() {
                let g = p.grad();
                let lr = lr_of(name);
                if !g.defined() || lr == 0.0 {
                    continue;
                }
                let decays = p.dim() >= 2 && !name.contains("norm");
                if decays && cfg.weight_decay > 0.0 {
                    let _ = p.g_mul_scalar_(1.0 - lr * cfg.weight_decay);
                }
                let _ = self.exp_avg[i].g_mul_scalar_(b1).g_add_(&(&g * (1.0 - b1)));
                let _ = self.exp_avg_sq[i].g_mul_scalar_(b2).g_add_(&(g.square() * (1.0 - b2)));
                let denom = (&self.exp_avg_sq[i] / bias2).sqrt() + cfg.eps;
                let _ = p.g_sub_(&(&self.exp_avg[i] / &denom * (lr / bias1)));
            }
        });
    }

    pub fn zero_grad(&mut self) {
        for (_, p) in self.params.iter_mut() {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
    }

    /// Moment tensors by name and the step count (`steps`), for checkpoints.
    pub fn state(&self) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::from([("steps".to_string(), Tensor::from_slice(&[self.steps]))]);
        for (i, (name, _)) in self.params.iter().enumerate() {
            out.insert(format!("exp_avg.{name}"), self.exp_avg[i].to_device(tch::Device::Cpu));
            out.insert(format!("exp_avg_sq.{name}"), self.exp_avg_sq[i].to_device(tch::Device::Cpu));
        }
        out
    }

    /// Restores `state()`; `steps` counts the steps when the file does not (older checkpoints).
    pub fn load_state(&mut self, mut state: BTreeMap<String, Tensor>, steps: i64, file: &Path) -> Result<()> {
        for (i, (name, p)) in self.params.iter().enumerate() {
            for (prefix, slot) in [("exp_avg", &mut self.exp_avg[i]), ("exp_avg_sq", &mut self.exp_avg_sq[i])] {
                let key = format!("{prefix}.{name}");
                let t = state.remove(&key).ok_or_else(|| Error::file(file, format!("tensor `{key}` is missing")))?;
                if t.size() != p.size() {
                    return Err(Error::file(
                        file,
                        format!("tensor `{key}` has shape {:?}, expected {:?}", t.size(), p.size()),
                    ));
                }
                *slot = t.to_device(p.device()).to_kind(p.kind());
            }
        }
        self.steps = state.get("steps").map_or(steps, |t| t.int64_value(&[0]));
        Ok(())
    }
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
        let constant = TrainConfig { schedule: Schedule::Constant, ..cfg };
        assert_eq!(learning_rate(&constant, 10, 14), 1.0);
    }
}
