//! `reasonrl bench`: training and sampling throughput of each preset (or a model folder) on this
//! machine, on fixed-length rows (`bench_model`) or on a realistic rollout (`bench_workload`).

use crate::engine::{Engine, SamplingDtype};
use crate::error::Result;
use crate::model::{presets, CausalLm};
use crate::prompt::Prompter;
use crate::rng::Rng;
use crate::rollout::rollout_with;
use crate::sample::{generate, Finish, Sampling, SamplingConfig};
use crate::task::Problem;
use crate::tokenizer::Tokenizer;
use std::time::Instant;
use tch::nn::OptimizerConfig;
use tch::{nn, Device, Kind, Tensor};

/// Throughput of one preset.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchResult {
    pub preset: String,
    pub parameters: i64,
    /// Forward + backward + AdamW step on a batch of `train_batch` x `train_seq` tokens (the
    /// median step).
    pub train_tokens_per_s: f64,
    pub train_step_ms: f64,
    /// (batch rows, new tokens per second) with the KV cache, temperature 1.
    pub sampling_tokens_per_s: Vec<(usize, f64)>,
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub device: Device,
    pub kind: Kind,
    pub train_batch: i64,
    pub train_seq: i64,
    pub train_steps: usize,
    pub sample_batches: Vec<usize>,
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    /// The sampling copy's dtype (`[rollout] dtype`).
    pub sampling_dtype: SamplingDtype,
}

/// Measures one preset with a tokenizer of the given vocabulary.
pub fn bench_preset(name: &str, tokenizer: &Tokenizer, cfg: &BenchConfig) -> Result<BenchResult> {
    let vocab = tokenizer.vocab_size() as i64;
    let config = presets::preset(name, vocab, (cfg.prompt_tokens + cfg.new_tokens).max(cfg.train_seq as usize) as i64)?;
    let model = CausalLm::new(&config, cfg.device, false)?;
    bench_model(name, model, tokenizer, cfg)
}

/// Measures a model (e.g. one loaded from a folder) in `cfg.kind` on `cfg.device`.
pub fn bench_model(name: &str, mut model: CausalLm, tokenizer: &Tokenizer, cfg: &BenchConfig) -> Result<BenchResult> {
    let vocab = model.config().vocab_size;
    model.vs.set_kind(cfg.kind);
    let mut rng = Rng::new(7);
    let mut random_ids = |n: usize| -> Vec<i64> { (0..n).map(|_| rng.range(3, vocab - 1)).collect() };

    let mut opt = nn::AdamW::default().build(&model.vs, 1e-4)?;
    let ids = Tensor::from_slice(&random_ids((cfg.train_batch * cfg.train_seq) as usize))
        .view([cfg.train_batch, cfg.train_seq])
        .to_device(cfg.device);
    let mut step = || {
        let logits = model.forward_logits(&ids.narrow(1, 0, cfg.train_seq - 1));
        let loss = logits
            .reshape([-1, vocab])
            .to_kind(Kind::Float)
            .cross_entropy_for_logits(&ids.narrow(1, 1, cfg.train_seq - 1).reshape([-1]));
        opt.backward_step(&loss);
        loss.double_value(&[]) // waits for the device
    };
    // A warm-up step (allocations, kernel selection), then the median step: one step slowed by
    // another process on a shared machine does not count.
    step();
    let mut times: Vec<f64> = (0..cfg.train_steps.max(1))
        .map(|_| {
            let start = Instant::now();
            step();
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    let per_step = times[times.len() / 2];

    let mut sampling = Vec::new();
    for &batch in &cfg.sample_batches {
        let prompts: Vec<Vec<u32>> =
            (0..batch).map(|_| random_ids(cfg.prompt_tokens).into_iter().map(|t| t as u32).collect()).collect();
        let spec = Sampling {
            samples_per_prompt: 1,
            temperature: 1.0,
            max_new_tokens: cfg.new_tokens,
            batch_size: batch,
            top_p: 1.0,
        };
        let sampling_cfg = SamplingConfig { stop_after_answer_line: false, ..spec.with_seed(0) };
        let copy = model.decoding_copy(Some(cfg.sampling_dtype.kind(&model)))?; // what rollouts sample with
        generate(&copy, tokenizer, &prompts[..1], &sampling_cfg)?; // warm-up
        let start = Instant::now();
        let generations = generate(&copy, tokenizer, &prompts, &sampling_cfg)?;
        let tokens: usize = generations.iter().map(|g| g.tokens.len()).sum();
        sampling.push((batch, tokens as f64 / start.elapsed().as_secs_f64()));
    }
    Ok(BenchResult {
        preset: name.to_string(),
        parameters: model.num_parameters(),
        train_tokens_per_s: (cfg.train_batch * cfg.train_seq) as f64 / per_step,
        train_step_ms: per_step * 1e3,
        sampling_tokens_per_s: sampling,
    })
}

/// A realistic rollout: `cfg.samples_per_prompt` samples of each problem through the one rollout
/// path (real prompts of mixed lengths, rows that stop at their answer).
#[derive(Debug, Clone, serde::Serialize)]
pub struct WorkloadResult {
    pub model: String,
    pub problems: usize,
    pub samples: usize,
    /// Response tokens generated (every one of them is part of an episode).
    pub new_tokens: usize,
    pub prompt_tokens: usize,
    pub seconds: f64,
    pub tokens_per_s: f64,
    pub samples_per_s: f64,
    pub problems_per_s: f64,
    /// Share of samples that stopped before `max_new_tokens`.
    pub stopped_early: f64,
    pub accuracy: f64,
}

/// Times `rollout` of `problems` with `cfg` on `engine` (`model` samples when it is local),
/// after a short warm-up.
pub fn bench_workload(
    name: &str,
    engine: &Engine,
    model: &CausalLm,
    tokenizer: &Tokenizer,
    prompter: &Prompter,
    problems: &[Problem],
    cfg: &SamplingConfig,
) -> Result<WorkloadResult> {
    let spec = Sampling { samples_per_prompt: 1, max_new_tokens: 8.min(cfg.spec.max_new_tokens), ..cfg.spec.clone() };
    let warm_up = SamplingConfig { spec, ..cfg.clone() };
    rollout_with(engine, model, tokenizer, prompter, &problems[..problems.len().min(4)], &warm_up)?;
    let start = Instant::now();
    let episodes = rollout_with(engine, model, tokenizer, prompter, problems, cfg)?;
    let seconds = start.elapsed().as_secs_f64();
    let new_tokens: usize = episodes.iter().map(|e| e.response_tokens.len()).sum();
    let count = |f: &dyn Fn(&crate::rollout::Episode) -> bool| episodes.iter().filter(|e| f(e)).count() as f64;
    let samples = episodes.len();
    Ok(WorkloadResult {
        model: name.to_string(),
        problems: problems.len(),
        samples,
        new_tokens,
        prompt_tokens: episodes.iter().map(|e| e.prompt_tokens.len()).sum(),
        seconds,
        tokens_per_s: new_tokens as f64 / seconds,
        samples_per_s: samples as f64 / seconds,
        problems_per_s: problems.len() as f64 / seconds,
        stopped_early: count(&|e| e.finish != Finish::Length) / samples as f64,
        accuracy: count(&|e| e.correct) / samples as f64,
    })
}
