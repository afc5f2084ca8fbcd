//! What a trainer minimises: token sequences with a response to learn (`Example`), and the two
//! objectives, language modelling and the ORM's outcome loss.

use crate::error::{Error, Result};
use crate::model::CausalLm;
use crate::prompt::Prompter;
use crate::tokenizer::Tokenizer;
use std::collections::BTreeMap;
use tch::{Kind, Reduction, Tensor};

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
                Ok(next_token_loss(model, &model.forward_hidden(&inputs), &targets))
            }
            Objective::Outcome { positive_weight, lm_coef, pairwise_coef } => {
                outcome_loss(model, batch, pad, *positive_weight, *lm_coef, *pairwise_coef)
            }
        }
    }
}

/// A position whose next token is not learned.
pub const NO_TARGET: i64 = -100;

/// Right-padded inputs `[B, T-1]` and, on the host, their flattened next-token targets
/// ([`NO_TARGET`] where no loss is taken: the prompt, the padding and `context_only` tokens).
pub fn collate(examples: &[&Example], pad: u32, context_only: &[u32], device: tch::Device) -> (Tensor, Vec<i64>) {
    let t = examples.iter().map(|e| e.tokens.len()).max().unwrap_or(2).max(2);
    let b = examples.len();
    let mut inputs = vec![pad as i64; b * (t - 1)];
    let mut targets = vec![NO_TARGET; b * (t - 1)];
    for (r, e) in examples.iter().enumerate() {
        for j in 0..e.tokens.len().saturating_sub(1) {
            inputs[r * (t - 1) + j] = e.tokens[j] as i64;
            if j + 1 >= e.targets_from && !context_only.contains(&e.tokens[j + 1]) {
                targets[r * (t - 1) + j] = e.tokens[j + 1] as i64;
            }
        }
    }
    (Tensor::from_slice(&inputs).view([b as i64, t as i64 - 1]).to_device(device), targets)
}

/// Summed next-token cross-entropy of the hidden states `[B, T, H]` against the flattened
/// `targets` ([`NO_TARGET`]: no loss). Only the positions with a target go through the head: prompts and
/// padding are about half of SFT's tokens, and a real model's head is a large share of its step.
pub fn next_token_loss(model: &CausalLm, hidden: &Tensor, targets: &[i64]) -> Tensor {
    let (positions, tokens): (Vec<i64>, Vec<i64>) =
        targets.iter().enumerate().filter(|(_, &t)| t != NO_TARGET).map(|(i, &t)| (i as i64, t)).unzip();
    let device = hidden.device();
    let hidden =
        hidden.reshape([-1, hidden.size()[2]]).index_select(0, &Tensor::from_slice(&positions).to_device(device));
    model.logits(&hidden).to_kind(Kind::Float).cross_entropy_loss::<Tensor>(
        &Tensor::from_slice(&tokens).to_device(device),
        None,
        Reduction::Sum,
        NO_TARGET,
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
    let mut targets = vec![NO_TARGET; b * t];
    for (r, e) in batch.iter().enumerate() {
        if e.label.unwrap_or(0.0) >= 0.5 {
            for j in e.targets_from.max(1)..e.tokens.len() {
                targets[r * t + j - 1] = e.tokens[j] as i64;
            }
        }
    }
    Ok(loss + next_token_loss(model, &hidden, &targets) * lm_coef)
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

/// A prompt and a solution (then EOS) as a training example with the loss on the solution.
pub fn solution_example(tokenizer: &Tokenizer, prompter: &Prompter, question: &str, solution: &str) -> Result<Example> {
    let mut tokens = prompter.encode(tokenizer, question)?;
    let targets_from = tokens.len();
    tokens.extend(tokenizer.encode(solution.trim_end())?);
    tokens.push(tokenizer.eos_id());
    Ok(Example::new(tokens, targets_from))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn the_loss_on_target_positions_alone_equals_the_full_logits_loss_and_its_gradients() {
        let config = crate::model::ModelConfig::llama(40, 16, 32, 1, 2, 1, 32, true);
        tch::manual_seed(0);
        let model = CausalLm::new(&config, tch::Device::Cpu, false).unwrap();
        let (a, b) = (Example::new(vec![1, 2, 3, 4, 5, 6], 3), Example::new(vec![7, 8, 9], 1));
        let (inputs, targets) = collate(&[&a, &b], 0, &[], tch::Device::Cpu);
        let grads = |loss: Tensor| {
            let params = model.vs.trainable_variables();
            let grads = Tensor::run_backward(&[&loss], &params, false, false);
            (loss.double_value(&[]), grads)
        };
        let full = model.forward_logits(&inputs).reshape([-1, 40]).cross_entropy_loss::<Tensor>(
            &Tensor::from_slice(&targets),
            None,
            Reduction::Sum,
            -100,
            0.0,
        );
        let (want, want_grads) = grads(full);
        let (got, got_grads) = grads(next_token_loss(&model, &model.forward_hidden(&inputs), &targets));
        assert!((got - want).abs() < 1e-5 * want.abs(), "{got} vs {want}");
        for (g, w) in got_grads.iter().zip(&want_grads) {
            assert!(w.abs().sum(Kind::Float).double_value(&[]) > 0.0, "every parameter gets a gradient");
            assert!((g - w).abs().max().double_value(&[]) < 1e-5, "gradients match");
        }
    }

    #[test]
    fn bf16_matmuls_keep_the_f32_loss_and_gradients_within_bf16_rounding() {
        for tied in [true, false] {
            let config = crate::model::ModelConfig::llama(40, 64, 96, 2, 4, 2, 32, tied);
            tch::manual_seed(0);
            let model = CausalLm::new(&config, tch::Device::Cpu, true).unwrap();
            let a = Example::new(vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 3);
            let (inputs, targets) = collate(&[&a], 0, &[], tch::Device::Cpu);
            let params = model.vs.trainable_variables();
            let run = |bf16: bool| {
                model.net.set_bf16_matmuls(bf16);
                let hidden = model.forward_hidden(&inputs);
                let values = model.head_values(&hidden).unwrap().sum(Kind::Float);
                let loss = next_token_loss(&model, &hidden, &targets) + values;
                model.net.set_bf16_matmuls(false);
                (loss.double_value(&[]), Tensor::run_backward(&[&loss], &params, false, false))
            };
            let ((want, want_grads), (got, got_grads)) = (run(false), run(true));
            assert!(got != want && (got - want).abs() < 1e-2 * want.abs(), "tied {tied}: {got} vs {want}");
            for (g, w) in got_grads.iter().zip(&want_grads) {
                assert_eq!(g.kind(), Kind::Float, "f32 gradients for the f32 weights");
                let cosine = (g * w).sum(Kind::Float) / (g.norm() * w.norm());
                assert!(cosine.double_value(&[]) > 0.999, "tied {tied}: a gradient's direction moved: {cosine}");
            }
        }
    }

    #[test]
    fn collate_masks_the_prompt_and_the_padding() {
        let a = Example::new(vec![1, 2, 3, 4, 5], 3);
        let b = Example::new(vec![1, 6, 7], 1);
        let (inputs, targets) = collate(&[&a, &b], 0, &[], tch::Device::Cpu);
        let objective = Objective::default();
        assert_eq!((objective.weight(&a), objective.weight(&b)), (2.0, 2.0));
        assert_eq!(Vec::<i64>::try_from(inputs.reshape([-1])).unwrap(), vec![1, 2, 3, 4, 1, 6, 0, 0]);
        // Row a predicts tokens 4 and 5 only (positions 2 and 3); row b predicts 6 and 7.
        assert_eq!(targets, vec![-100, -100, 4, 5, 6, 7, -100, -100]);
    }
}
