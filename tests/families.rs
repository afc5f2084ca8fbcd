//! Each supported model family against Python `transformers`: tiny random models saved by
//! transformers with its own logits (tests/fixtures/hf, made by scripts/hf_fixtures.py). Our full
//! forward, our KV-cache decoding token by token, and a save-then-reload all give transformers'
//! logits within 1e-4.

mod common;

use reasonrl::model::CausalLm;
use reasonrl::sample::Decoder;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

const FAMILIES: [&str; 6] = ["llama3", "llama-linear", "qwen2", "mistral", "qwen3", "gemma3"];

fn fixture(family: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf").join(family)
}

/// The fixture's prompts and transformers' logits `[T, V]` for each.
fn expected(family: &str) -> Vec<(Vec<i64>, Tensor)> {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(family).join("logits.json")).unwrap()).unwrap();
    let prompts = json["prompts"].as_array().unwrap();
    let logits = json["logits"].as_array().unwrap();
    prompts
        .iter()
        .zip(logits)
        .map(|(ids, rows)| {
            let ids: Vec<i64> = ids.as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
            let rows = rows.as_array().unwrap();
            let flat: Vec<f32> =
                rows.iter().flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32)).collect();
            let t = Tensor::from_slice(&flat).view([rows.len() as i64, -1]);
            (ids, t)
        })
        .collect()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

fn full_logits(model: &CausalLm, ids: &[i64]) -> Tensor {
    tch::no_grad(|| model.forward_logits(&Tensor::from_slice(ids).unsqueeze(0)).squeeze_dim(0))
}

#[test]
fn full_forward_matches_transformers() {
    for family in FAMILIES {
        let model = CausalLm::load(&fixture(family), Device::Cpu, false).unwrap();
        for (ids, theirs) in expected(family) {
            let diff = max_diff(&full_logits(&model, &ids), &theirs);
            assert!(diff < 1e-4, "{family}, {} tokens: max abs logit difference {diff}", ids.len());
        }
    }
}

/// The decoding copy (q/k/v and gate/up fused, what sampling runs) through the KV cache, token
/// by token, against transformers: within 1e-4 in f32; as a bf16 copy (8 significant bits, a
/// rounding after every op), within 5% of the largest logit (Gemma 3's norms come to ~4%).
#[test]
fn kv_cache_decoding_matches_transformers() {
    for family in FAMILIES {
        let model = CausalLm::load(&fixture(family), Device::Cpu, false).unwrap();
        for (kind, relative) in [(Kind::Float, None), (Kind::BFloat16, Some(0.05))] {
            let copy = model.decoding_copy(Some(kind)).unwrap();
            for (ids, theirs) in expected(family) {
                let tolerance = relative.map_or(1e-4, |r| r * theirs.abs().max().double_value(&[]));
                // Prefill the first token, then feed the rest one at a time.
                tch::no_grad(|| {
                    let mut decoder = Decoder::new(&copy, 1, ids.len() + 1);
                    let first = [ids[0] as u32];
                    decoder.fill(&[(&first[..], vec![0])], 0);
                    for (t, &token) in ids.iter().enumerate() {
                        let logits = decoder.step(&[token]).to_kind(Kind::Float);
                        let diff = max_diff(&logits.get(0), &theirs.get(t as i64));
                        assert!(diff < tolerance, "{family} {kind:?}, position {t}: max abs logit difference {diff}");
                    }
                });
            }
        }
    }
}

#[test]
fn save_then_reload_keeps_transformers_logits_and_config() {
    let dir = tempfile::tempdir().unwrap();
    for family in FAMILIES {
        let model = CausalLm::load(&fixture(family), Device::Cpu, false).unwrap();
        let path = dir.path().join(family);
        model.save(&path).unwrap();
        let reloaded = CausalLm::load(&path, Device::Cpu, false).unwrap();
        for (ids, theirs) in expected(family) {
            let diff = max_diff(&full_logits(&reloaded, &ids), &theirs);
            assert!(diff < 1e-4, "{family} reloaded: {diff}");
        }
        let read = |p: &Path| -> serde_json::Value {
            serde_json::from_str(&std::fs::read_to_string(p.join("config.json")).unwrap()).unwrap()
        };
        let (before, after) = (read(&fixture(family)), read(&path));
        for key in ["architectures", "model_type", "head_dim", "rope_scaling", "rope_theta", "tie_word_embeddings"] {
            // A key transformers left at its default is written out by us.
            assert!(before[key].is_null() || before[key] == after[key], "{family}: {key}");
        }
    }
}

/// What is not supported is refused by name, before any work: other RoPE scalings, a Llama 3
/// scaling with a field missing, Qwen3's sliding window.
#[test]
fn unsupported_variants_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("llama3").join("config.json")).unwrap()).unwrap();
    let cases = [
        ("rope_scaling", serde_json::json!({"rope_type": "dynamic", "factor": 2.0}), "\"dynamic\""),
        ("rope_scaling", serde_json::json!({"type": "yarn", "factor": 4.0}), "\"yarn\""),
        ("rope_scaling", serde_json::json!({"rope_type": "llama3", "factor": 8.0}), "low_freq_factor"),
        ("use_sliding_window", serde_json::json!(true), "use_sliding_window"),
    ];
    for (key, value, needle) in cases {
        let mut bad = config.clone();
        bad[key] = value;
        let path = dir.path().join("config.json");
        std::fs::write(&path, bad.to_string()).unwrap();
        let err = reasonrl::model::ModelConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("config.json") && err.contains(needle), "{key}: {err}");
    }
}

/// The synthetic examples' tokenizer and examples, a tiny Llama over them (the base that
/// `common::family_model` turns into each family), and the first example's ids as a batch of one.
fn tiny_base() -> (reasonrl::tokenizer::Tokenizer, Vec<reasonrl::train::Example>, CausalLm, Tensor) {
    let (tokenizer, examples) = common::synth_examples();
    let preset = reasonrl::model::presets::preset("tiny", tokenizer.vocab_size() as i64, 256).unwrap();
    let base = CausalLm::new(&preset, Device::Cpu, false).unwrap();
    let ids = Tensor::from_slice(&examples[0].tokens.iter().map(|&t| t as i64).collect::<Vec<_>>()).unsqueeze(0);
    (tokenizer, examples, base, ids)
}

/// A scalar head (PPO's value head, the ORM's score) sits on every family: a loss on its values
/// sends gradients to every weight, and the head survives a save and a reload.
#[test]
fn every_family_carries_a_scalar_head() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _, base, ids) = tiny_base();
    for family in common::GGUF_FAMILIES {
        let config = common::family_model(&base, family).config().clone();
        let model = CausalLm::new(&config, Device::Cpu, true).unwrap();
        let values = model.head_values(&model.forward_hidden(&ids)).unwrap();
        values.square().sum(Kind::Float).backward();
        for (name, t) in model.vs.variables() {
            let reached = t.grad().defined() && t.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0;
            assert!(reached, "{family}: no gradient reaches {name}");
        }
        let folder = dir.path().join(family);
        model.save(&folder).unwrap();
        let reloaded = CausalLm::load(&folder, Device::Cpu, true).unwrap();
        let again = tch::no_grad(|| reloaded.head_values(&reloaded.forward_hidden(&ids)).unwrap());
        assert!(max_diff(&values.detach(), &again) < 1e-6, "{family}: the head changed on reload");
    }
}

/// llama.cpp fixes Gemma 3's layer pattern, local RoPE base and attention scale; a Gemma 3 that
/// sets them otherwise (the fixture: every other layer global) is refused by name, not exported.
#[test]
fn gemma3_settings_llama_cpp_fixes_are_refused_at_export() {
    use reasonrl::model::gguf_export::{export_model, GgufDtype};
    let dir = tempfile::tempdir().unwrap();
    let model = CausalLm::load(&fixture("gemma3"), Device::Cpu, false).unwrap();
    let (tokenizer, _) = common::synth_examples();
    let out = dir.path().join("gemma3.gguf");
    let err = export_model(&model, &tokenizer, &out, GgufDtype::F32).unwrap_err().to_string();
    assert!(err.contains("every sixth layer global"), "{err}");
    assert!(!out.exists());
}

fn no_eval(_: &CausalLm, _: &reasonrl::train::checkpoint::TrainerState) -> reasonrl::Result<reasonrl::run::Metrics> {
    Ok(reasonrl::run::Metrics::new())
}

fn mean_loss(model: &CausalLm, examples: &[reasonrl::train::Example], pad: u32) -> f64 {
    let objective = reasonrl::train::Objective::default();
    let weight: f64 = examples.iter().map(|e| objective.weight(e)).sum();
    let all: Vec<&reasonrl::train::Example> = examples.iter().collect();
    tch::no_grad(|| objective.loss(model, &all, pad).unwrap().double_value(&[])) / weight
}

/// Every family trains, full and with LoRA: the loss falls, LoRA moves its adapters alone, and
/// the trained folder reloads with the same logits. Then two GRPO updates of each, full and LoRA,
/// run end to end from the command line.
#[test]
fn every_family_trains_full_and_with_lora() {
    use reasonrl::model::lora::LoraConfig;
    use reasonrl::train::{TrainConfig, Trainer};
    let dir = tempfile::tempdir().unwrap();
    let (tokenizer, examples, base, ids) = tiny_base();
    for family in common::GGUF_FAMILIES {
        let mut model = common::family_model(&base, family);
        let start = mean_loss(&model, &examples, tokenizer.pad_id());
        let cfg = TrainConfig { lr: 1e-2, warmup_steps: 2, max_steps: 20, batch_tokens: 600, ..TrainConfig::default() };
        Trainer::new(&mut model, &tokenizer, cfg.clone(), &dir.path().join(format!("{family}-full")), false)
            .unwrap()
            .train(&examples, &mut no_eval)
            .unwrap();
        let trained = mean_loss(&model, &examples, tokenizer.pad_id());
        assert!(trained < start - 0.1, "{family}: full fine-tuning {start} -> {trained}");
        let folder = dir.path().join(family);
        model.save_with_tokenizer(&tokenizer, &folder, false).unwrap();
        let before: Vec<(String, Tensor)> =
            model.vs.variables().into_iter().map(|(n, t)| (n, t.detach().copy())).collect();
        model.add_lora(&LoraConfig { rank: 8, alpha: 16.0, dropout: 0.0, ..LoraConfig::default() }, &folder).unwrap();
        let cfg = TrainConfig { max_steps: 10, batch_tokens: 2400, ..cfg };
        Trainer::new(&mut model, &tokenizer, cfg, &dir.path().join(format!("{family}-lora")), false)
            .unwrap()
            .train(&examples, &mut no_eval)
            .unwrap();
        let adapted = mean_loss(&model, &examples, tokenizer.pad_id());
        assert!(adapted < trained, "{family}: LoRA {trained} -> {adapted}");
        let now: std::collections::BTreeMap<String, Tensor> = model.vs.variables().into_iter().collect();
        for (name, t) in &before {
            assert!(max_diff(t, &now[name]) == 0.0, "{family}: base weight {name} moved under LoRA");
        }
        let adapter = dir.path().join(format!("{family}-adapter"));
        model.save(&adapter).unwrap();
        let reloaded = CausalLm::load_adapter(&folder, &adapter, Device::Cpu, false).unwrap();
        let diff = tch::no_grad(|| max_diff(&model.forward_logits(&ids), &reloaded.forward_logits(&ids)));
        assert!(diff < 1e-5, "{family}: the adapter folder reloads with logits {diff} apart");

        let run = |extra: &[&str]| {
            let mut args: Vec<String> =
                ["grpo", "--set", &format!("model={}", folder.display())].iter().map(|s| s.to_string()).collect();
            for kv in [
                format!("run.out_dir={}", dir.path().display()),
                format!("run.name={family}-grpo{}", extra.len()),
                "task=builtin:1".into(),
                "questions=8".into(),
                "updates=2".into(),
                "prompts_per_update=2".into(),
                "sampling.samples_per_prompt=2".into(),
                "sampling.max_new_tokens=8".into(),
                "eval.problems=2".into(),
                "eval.samples_per_prompt=0".into(),
                "eval.max_new_tokens=4".into(),
            ]
            .iter()
            .map(String::as_str)
            .chain(extra.iter().copied())
            {
                args.extend(["--set".to_string(), kv.to_string()]);
            }
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_reasonrl")).args(&args).output().unwrap();
            assert!(out.status.success(), "{family} grpo {extra:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        run(&[]);
        run(&["lora.rank=4"]);
    }
}
