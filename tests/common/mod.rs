//! Checks and data shared by the integration tests (each test file uses some of them).
#![allow(dead_code)]

pub mod trackers;

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

/// The families GGUF export covers beyond plain Llama, each a variant of `base`'s config (same
/// vocabulary) with fresh weights: biases and q/k norms random too, so every tensor matters.
pub const GGUF_FAMILIES: [&str; 5] = ["qwen2", "qwen3", "llama3-rope", "linear-rope", "gemma3"];

/// `base`'s config turned into `family` (see [`GGUF_FAMILIES`]; `gemma3`: six layers, the last
/// one global and linearly scaled, the rest sliding over 8 positions, as llama.cpp runs Gemma 3),
/// with seeded random weights.
pub fn family_model(base: &CausalLm, family: &str) -> CausalLm {
    let mut c = base.config().clone();
    match family {
        "qwen2" => (c.architectures, c.model_type) = (vec!["Qwen2ForCausalLM".into()], "qwen2".into()),
        "qwen3" => {
            (c.architectures, c.model_type) = (vec!["Qwen3ForCausalLM".into()], "qwen3".into());
            c.head_dim = Some(c.head_dim() * 3 / 2);
        }
        "llama3-rope" => {
            c.rope_theta = 500_000.0;
            c.rope_scaling = Some(serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 16}));
        }
        "linear-rope" => c.rope_scaling = Some(serde_json::json!({"rope_type": "linear", "factor": 4.0})),
        "gemma3" => {
            (c.architectures, c.model_type) = (vec!["Gemma3ForCausalLM".into()], "gemma3_text".into());
            c.num_hidden_layers = 6;
            c.rope_scaling = Some(serde_json::json!({"rope_type": "linear", "factor": 2.0}));
            for (key, value) in [
                ("query_pre_attn_scalar", serde_json::json!(c.head_dim())),
                ("sliding_window", serde_json::json!(8)),
                ("sliding_window_pattern", serde_json::json!(6)),
                ("rope_local_base_freq", serde_json::json!(10000.0)),
            ] {
                c.extra.insert(key.into(), value);
            }
        }
        other => panic!("no family {other}"),
    }
    tch::manual_seed(7);
    let model = CausalLm::new(&c, tch::Device::Cpu, false).unwrap();
    tch::no_grad(|| {
        for (name, mut var) in model.vs.variables() {
            if name.ends_with("bias") || name.contains("norm") {
                let noise = Tensor::randn(var.size(), (Kind::Float, var.device())) * 0.1;
                let _ = var.g_add_(&noise);
            }
        }
    });
    model
}

/// The llama-server binary, built once per test process if the cache lacks it
/// (scripts/setup-llama-server.sh; `REASONRL_LLAMA_SERVER` names a binary to use instead).
pub fn llama_server() -> &'static std::path::Path {
    use std::path::{Path, PathBuf};
    static SERVER: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    SERVER.get_or_init(|| {
        if let Some(path) = std::env::var_os("REASONRL_LLAMA_SERVER") {
            return PathBuf::from(path);
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/setup-llama-server.sh");
        let out = std::process::Command::new(&script).output().expect("run setup-llama-server.sh");
        assert!(out.status.success(), "setup-llama-server.sh failed: {}", String::from_utf8_lossy(&out.stderr));
        PathBuf::from(String::from_utf8(out.stdout).unwrap().lines().last().expect("the binary's path").trim())
    })
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
