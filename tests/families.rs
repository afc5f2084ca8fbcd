//! Each supported model family against Python `transformers`: tiny random models saved by
//! transformers with its own logits (tests/fixtures/hf, made by scripts/hf_fixtures.py). Our full
//! forward, our KV-cache decoding token by token, and a save-then-reload all give transformers'
//! logits within 1e-4.

use reasonrl::model::CausalLm;
use reasonrl::sample::Decoder;
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

const FAMILIES: [&str; 5] = ["llama3", "llama-linear", "qwen2", "mistral", "qwen3"];

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

#[test]
fn kv_cache_decoding_matches_transformers() {
    for family in FAMILIES {
        let model = CausalLm::load(&fixture(family), Device::Cpu, false).unwrap();
        for (ids, theirs) in expected(family) {
            // Prefill the first token, then feed the rest one at a time.
            tch::no_grad(|| {
                let mut decoder = Decoder::new(&model, 1, ids.len() + 1);
                let first = [ids[0] as u32];
                decoder.fill(&[(&first[..], vec![0])], 0);
                for (t, &token) in ids.iter().enumerate() {
                    let logits = decoder.step(&[token]);
                    let diff = max_diff(&logits.get(0), &theirs.get(t as i64));
                    assert!(diff < 1e-4, "{family}, position {t}: max abs logit difference {diff}");
                }
            });
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
            assert_eq!(before[key], after[key], "{family}: {key}");
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
