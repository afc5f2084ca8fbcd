//! Checks shared by the integration tests.

use reasonrl::model::CausalLm;
use reasonrl::sample::Generation;
use tch::{Kind, Tensor};

/// Every token of a greedy generation is the argmax of a full forward pass over prompt and
/// response, and its recorded log-prob equals that pass's within `tolerance`.
pub fn assert_matches_full_forward(model: &CausalLm, prompt: &[u32], g: &Generation, tolerance: f64) {
    let full: Vec<i64> = prompt.iter().chain(&g.tokens).map(|&t| t as i64).collect();
    let logits = tch::no_grad(|| model.forward_logits(&Tensor::from_slice(&full).unsqueeze(0))).squeeze_dim(0);
    let logp = logits.log_softmax(-1, Kind::Float);
    for (j, (&token, &lp)) in g.tokens.iter().zip(&g.logprobs).enumerate() {
        let row = logp.get((prompt.len() + j - 1) as i64);
        assert_eq!(row.argmax(0, false).int64_value(&[]), token as i64, "prompt {} token {j}", g.prompt_index);
        let expected = row.double_value(&[token as i64]);
        assert!((expected - lp as f64).abs() < tolerance, "token {j}: logprob {lp} vs full forward {expected}");
    }
}
