//! Checks and data shared by the integration tests (each test file uses some of them).
#![allow(dead_code)]

use reasonrl::model::CausalLm;
use reasonrl::sample::Generation;
use reasonrl::task::{synth, Split};
use reasonrl::tokenizer::Tokenizer;
use reasonrl::train::Example;
use tch::{Kind, Tensor};

/// 120 built-in problems (level 1), a 300-token BPE tokenizer trained on them, and their
/// question -> reference-solution examples (the loss on the solution only).
pub fn synth_examples() -> (Tokenizer, Vec<Example>) {
    let problems = synth::generate(1, Split::Train, 120, 5);
    let tokenizer =
        Tokenizer::train_bpe(problems.iter().map(|p| format!("{}\n{}", p.question, p.reference_solution)), 300)
            .unwrap();
    let examples = problems
        .iter()
        .map(|p| {
            let mut tokens = vec![tokenizer.bos_id().unwrap()];
            tokens.extend(tokenizer.encode(&p.question).unwrap());
            let targets_from = tokens.len();
            tokens.extend(tokenizer.encode(&p.reference_solution).unwrap());
            Example::new(tokens, targets_from)
        })
        .collect();
    (tokenizer, examples)
}

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
