//! The sampler: reproducible, batch-independent, consistent with a full forward pass.

mod common;

use reasonrl::model::{CausalLm, ModelConfig};
use reasonrl::sample::{generate, Finish, Sampling, SamplingConfig};
use reasonrl::task::{synth, Split};
use reasonrl::tokenizer::Tokenizer;
use tch::{Device, Kind, Tensor};

fn setup() -> (CausalLm, Tokenizer) {
    let corpus = synth::generate(1, Split::Train, 300, 1)
        .into_iter()
        .map(|p| format!("{}\n{}", p.question, p.reference_solution));
    let tokenizer = Tokenizer::train_bpe(corpus, 320).unwrap();
    let config = ModelConfig::llama(tokenizer.vocab_size() as i64, 32, 64, 2, 4, 2, 128, true);
    (CausalLm::new(&config, Device::Cpu, false).unwrap(), tokenizer)
}

fn prompts(tokenizer: &Tokenizer) -> Vec<Vec<u32>> {
    ["Tom has 3 apples.", "Question: how many pencils does Mia buy in all, if she buys 4 boxes?", "5 + 7"]
        .iter()
        .map(|t| {
            let mut ids = vec![tokenizer.bos_id().unwrap()];
            ids.extend(tokenizer.encode(t).unwrap());
            ids
        })
        .collect()
}

fn sampling(temperature: f64, seed: u64) -> SamplingConfig {
    Sampling { max_new_tokens: 12, temperature, top_p: 0.95, samples_per_prompt: 3, batch_size: 4 }.with_seed(seed)
}

#[test]
fn same_seed_repeats_exactly_and_other_seeds_differ() {
    let (model, tokenizer) = setup();
    let prompts = prompts(&tokenizer);
    let a = generate(&model, &tokenizer, &prompts, &sampling(1.0, 7)).unwrap();
    // Torch's global generator being used meanwhile must not matter.
    let _ = Tensor::randn([100], (Kind::Float, Device::Cpu));
    let b = generate(&model, &tokenizer, &prompts, &sampling(1.0, 7)).unwrap();
    let c = generate(&model, &tokenizer, &prompts, &sampling(1.0, 8)).unwrap();
    assert_eq!(a, b);
    assert_ne!(a.iter().map(|g| &g.tokens).collect::<Vec<_>>(), c.iter().map(|g| &g.tokens).collect::<Vec<_>>());
    assert_eq!(a.len(), prompts.len() * 3);
    for (i, g) in a.iter().enumerate() {
        assert_eq!((g.prompt_index, g.sample_index), (i / 3, i % 3));
        assert_eq!(g.tokens.len(), g.logprobs.len());
        assert!(g.tokens.len() <= 12);
        assert!(g.logprobs.iter().all(|&lp| lp <= 0.0 && lp.is_finite()));
    }
    // A row's samples do not depend on the batch it was decoded in (log-probs up to float
    // rounding of different batch shapes).
    let mut small_batches = sampling(1.0, 7);
    small_batches.spec.batch_size = 1;
    for (x, y) in generate(&model, &tokenizer, &prompts, &small_batches).unwrap().iter().zip(&a) {
        assert_eq!(x.tokens, y.tokens);
        assert!(x.logprobs.iter().zip(&y.logprobs).all(|(p, q)| (p - q).abs() < 1e-5));
    }
}

#[test]
fn greedy_tokens_and_logprobs_match_a_full_forward_pass() {
    let (model, tokenizer) = setup();
    let prompts = prompts(&tokenizer);
    let mut cfg = sampling(0.0, 0);
    cfg.spec.samples_per_prompt = 1;
    cfg.spec.batch_size = 2; // the third prompt takes the first free row mid-decode
                             // Stop the first row early with a stop string taken from its own output, so rows leave the
                             // batch at different steps.
    let free = generate(&model, &tokenizer, &prompts, &cfg).unwrap();
    let stop = tokenizer.decode(&free[0].tokens[..3], true).unwrap();
    cfg.stop_strings = vec![stop.clone()];
    let generations = generate(&model, &tokenizer, &prompts, &cfg).unwrap();
    assert_eq!(generations[0].finish, Finish::Stop);
    for g in &generations {
        common::assert_matches_full_forward(&model, &prompts[g.prompt_index], g, 1e-4);
        match g.finish {
            Finish::Stop => assert!(g.text.ends_with(&stop), "{:?}", g.text),
            Finish::Length => assert_eq!(g.tokens.len(), 12),
            Finish::Eos => assert_eq!(*g.tokens.last().unwrap(), tokenizer.eos_id()),
        }
    }
    assert!(generations.iter().map(|g| g.tokens.len()).collect::<std::collections::HashSet<_>>().len() > 1);
}

/// Continuous batching (rows refilled mid-decode, one prefill shared by a prompt's samples) gives
/// what decoding each row alone gives, with mixed prompt lengths and rows stopping early.
#[test]
fn continuous_batching_matches_one_row_at_a_time() {
    let (model, tokenizer) = setup();
    let mut prompts = prompts(&tokenizer);
    prompts.push(vec![tokenizer.bos_id().unwrap()]); // a prompt of one token has nothing to prefill
    let mut cfg = sampling(1.0, 3);
    (cfg.spec.samples_per_prompt, cfg.spec.max_new_tokens, cfg.spec.batch_size) = (4, 16, 1);
    let alone = generate(&model, &tokenizer, &prompts, &cfg).unwrap();
    // Stop strings taken from the output, so rows finish at different steps and slots free up.
    cfg.stop_strings =
        alone.iter().step_by(3).map(|g| tokenizer.decode(&g.tokens[..g.tokens.len().min(2)], true).unwrap()).collect();
    cfg.stop_strings.retain(|s| !s.trim().is_empty());
    let alone = generate(&model, &tokenizer, &prompts, &cfg).unwrap();
    let lengths: std::collections::HashSet<usize> = alone.iter().map(|g| g.tokens.len()).collect();
    assert!(lengths.len() > 2, "rows should stop at different steps: {lengths:?}");
    assert!(alone.iter().any(|g| g.finish == Finish::Stop));
    for batch_size in [3, 5, 16, 64] {
        cfg.spec.batch_size = batch_size;
        let batched = generate(&model, &tokenizer, &prompts, &cfg).unwrap();
        assert_eq!(batched.len(), alone.len());
        for (x, y) in batched.iter().zip(&alone) {
            assert_eq!((x.prompt_index, x.sample_index), (y.prompt_index, y.sample_index));
            assert_eq!(x.tokens, y.tokens, "batch {batch_size}, prompt {} sample {}", x.prompt_index, x.sample_index);
            assert_eq!((&x.text, x.finish), (&y.text, y.finish));
            let worst = x.logprobs.iter().zip(&y.logprobs).map(|(p, q)| (p - q).abs()).fold(0.0, f32::max);
            assert!(worst < 1e-5, "batch {batch_size}: log-probs differ by {worst}");
        }
    }
}

#[test]
fn bad_requests_are_refused() {
    let (model, tokenizer) = setup();
    let mut cfg = sampling(1.0, 0);
    assert!(generate(&model, &tokenizer, &[vec![]], &cfg).is_err());
    cfg.spec.max_new_tokens = 1000;
    let err = generate(&model, &tokenizer, &prompts(&tokenizer), &cfg).unwrap_err().to_string();
    assert!(err.contains("128 positions"), "{err}");
}

#[test]
fn a_step_prefix_follows_every_line_end() {
    let (model, tokenizer) = setup();
    let prompts = prompts(&tokenizer);
    let newlines = tokenizer.newline_counts().unwrap();
    let prefix = 7; // any token will do for the sampler
    let mut cfg = sampling(3.0, 1);
    (cfg.spec.max_new_tokens, cfg.spec.samples_per_prompt, cfg.spec.top_p, cfg.stop_after_answer_line) =
        (60, 8, 1.0, false);
    cfg.step_prefix = Some(prefix);
    let mut line_ends = 0;
    for g in generate(&model, &tokenizer, &prompts, &cfg).unwrap() {
        for (i, pair) in g.tokens.windows(2).enumerate() {
            if newlines[pair[0] as usize] > 0 && pair[0] != prefix {
                line_ends += 1;
                assert_eq!(pair[1], prefix, "after a line end comes the prefix");
                assert_eq!(g.logprobs[i + 1], 0.0, "a forced token has log-prob 0");
            }
        }
    }
    assert!(line_ends > 0, "the random model wrote no line end: the test checked nothing");
}
