//! The transformer: gradients, KV-cache decoding, HF folders.

mod common;

use reasonrl::model::{CausalLm, ModelConfig};
use reasonrl::sample::Decoder;
use std::collections::BTreeMap;
use tch::{Device, Kind, Tensor};

fn tiny_config(architecture: &str) -> ModelConfig {
    let mut c = ModelConfig::llama(61, 32, 48, 2, 4, 2, 64, false);
    c.architectures = vec![architecture.into()];
    c.rope_theta = 500.0;
    c
}

/// Seeded ids from our own generator: torch's global one is shared by tests running in parallel.
fn random_ids(b: i64, t: i64, vocab: i64, seed: u64) -> Tensor {
    let mut rng = reasonrl::rng::Rng::new(seed);
    let ids: Vec<i64> = (0..b * t).map(|_| rng.range(0, vocab - 1)).collect();
    Tensor::from_slice(&ids).view([b, t])
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn every_parameter_gets_a_finite_nonzero_gradient() {
    let configs = [
        tiny_config("LlamaForCausalLM"),
        tiny_config("Qwen2ForCausalLM"),
        tiny_config("Qwen3ForCausalLM"),
        gemma3_config(),
    ];
    for base in configs {
        let arch = base.architectures[0].clone();
        for tied in [false, true] {
            let mut config = base.clone();
            config.tie_word_embeddings = tied;
            let model = CausalLm::new(&config, Device::Cpu, true).unwrap();
            let ids = random_ids(3, 9, config.vocab_size, 1);
            let t = ids.size()[1];
            let positions = Tensor::arange(t, (Kind::Int64, Device::Cpu)).unsqueeze(0).expand([3, t], false);
            let hidden = model.forward(&ids, &positions, None, None);
            let logits = model.logits(&hidden);
            let lm_loss = logits
                .narrow(1, 0, t - 1)
                .reshape([-1, config.vocab_size])
                .cross_entropy_for_logits(&ids.narrow(1, 1, t - 1).reshape([-1]));
            let loss = lm_loss + model.head_values(&hidden).unwrap().square().mean(Kind::Float);
            loss.backward();
            let vars = model.vs.variables();
            assert!(!vars.is_empty());
            for (name, var) in vars {
                let grad = var.grad();
                assert!(grad.defined(), "{arch}: no gradient for {name}");
                let norm = grad.norm().double_value(&[]);
                assert!(norm.is_finite() && norm > 0.0, "{arch} tied={tied}: gradient of {name} has norm {norm}");
            }
        }
    }
}

/// Logits of `ids` at every position from one full forward pass.
fn full_logits(model: &CausalLm, ids: &[u32]) -> Tensor {
    let ids: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
    model.forward_logits(&Tensor::from_slice(&ids).unsqueeze(0)).squeeze_dim(0)
}

/// Gemma 3 with a window of 4 (shorter than the sequences below), every other layer sliding.
fn gemma3_config() -> ModelConfig {
    let mut c = tiny_config("Gemma3ForCausalLM");
    c.model_type = "gemma3_text".into();
    for (key, value) in [("query_pre_attn_scalar", 24), ("sliding_window", 4), ("sliding_window_pattern", 2)] {
        c.extra.insert(key.into(), value.into());
    }
    c
}

#[test]
fn kv_cache_decoding_matches_full_forward_on_mixed_length_batch() {
    for config in [tiny_config("LlamaForCausalLM"), gemma3_config()] {
        kv_cache_decoding_matches_full_forward(&config);
    }
}

fn kv_cache_decoding_matches_full_forward(config: &ModelConfig) {
    let model = CausalLm::new(config, Device::Cpu, false).unwrap();
    let prompts: Vec<Vec<u32>> = vec![vec![5, 9, 2], vec![7, 3, 3, 8, 1, 4, 6], vec![11]];
    let continuation: Vec<Vec<u32>> = vec![vec![20, 21, 22, 23], vec![30, 31, 32, 33], vec![40, 41, 42, 43]];
    tch::no_grad(|| {
        let mut decoder = Decoder::new(&model, 3, 16);
        let groups: Vec<(&[u32], Vec<i64>)> =
            prompts.iter().enumerate().map(|(r, p)| (p.as_slice(), vec![r as i64])).collect();
        decoder.fill(&groups, 0);
        // Each row is fed its prompt's last token, then its continuation.
        let mut fed: Vec<Vec<u32>> = prompts.clone();
        let mut per_step = vec![decoder.step(&prompts.iter().map(|p| *p.last().unwrap() as i64).collect::<Vec<_>>())];
        for step in 0..3 {
            let tokens: Vec<i64> = continuation.iter().map(|c| c[step] as i64).collect();
            per_step.push(decoder.step(&tokens));
            for (r, c) in continuation.iter().enumerate() {
                fed[r].push(c[step]);
            }
        }
        for (r, prompt) in prompts.iter().enumerate() {
            let reference = full_logits(&model, &fed[r]);
            for (step, logits) in per_step.iter().enumerate() {
                let expected = reference.get(prompt.len() as i64 - 1 + step as i64);
                let diff = max_diff(&logits.get(r as i64), &expected);
                assert!(diff < 1e-4, "row {r} step {step}: max abs logit difference {diff}");
            }
        }
        // Dropping a row keeps the others exact; a freed row takes a new prompt while the others
        // go on (continuous batching), and one prefill serves two rows.
        decoder.keep_rows(&[0, 2]);
        let logits = decoder.step(&[continuation[0][3] as i64, continuation[2][3] as i64]);
        for (slot, r) in [0usize, 2].into_iter().enumerate() {
            fed[r].push(continuation[r][3]);
            let diff = max_diff(&logits.get(slot as i64), &full_logits(&model, &fed[r]).get(-1));
            assert!(diff < 1e-4, "row {r} after compaction: {diff}");
        }
        let fresh: Vec<u32> = vec![3, 14, 15, 9, 26];
        let mut decoder = Decoder::new(&model, 3, 16);
        decoder.fill(&[(prompts[1].as_slice(), vec![0]), (fresh.as_slice(), vec![1, 2])], 0);
        let _ = decoder.step(&[*prompts[1].last().unwrap() as i64, 26, 26]);
        decoder.fill(&[(prompts[0].as_slice(), vec![1])], 0);
        let logits = decoder.step(&[50, *prompts[0].last().unwrap() as i64, 51]);
        let expect = [
            full_logits(&model, &[prompts[1].clone(), vec![50]].concat()).get(-1),
            full_logits(&model, &prompts[0]).get(-1),
            full_logits(&model, &[fresh.clone(), vec![51]].concat()).get(-1),
        ];
        for (r, expected) in expect.iter().enumerate() {
            let diff = max_diff(&logits.get(r as i64), expected);
            assert!(diff < 1e-4, "row {r} after a refill: {diff}");
        }
    });
}

fn logits_and_values(model: &CausalLm) -> (Tensor, Option<Tensor>) {
    let ids = random_ids(2, 7, model.config().vocab_size, 3);
    let positions = Tensor::arange(7, (Kind::Int64, Device::Cpu)).unsqueeze(0).expand([2, 7], false);
    tch::no_grad(|| {
        let hidden = model.forward(&ids, &positions, None, None);
        (model.logits(&hidden), model.head_values(&hidden))
    })
}

#[test]
fn save_then_load_gives_bit_identical_logits_and_head_values() {
    let dir = tempfile::tempdir().unwrap();
    for (arch, tied) in [("LlamaForCausalLM", true), ("Qwen2ForCausalLM", false), ("MistralForCausalLM", false)] {
        let mut config = tiny_config(arch);
        config.tie_word_embeddings = tied;
        let path = dir.path().join(arch);
        let model = CausalLm::new(&config, Device::Cpu, true).unwrap();
        model.save(&path).unwrap();
        let loaded = CausalLm::load(&path, Device::Cpu, false).unwrap();
        assert!(loaded.has_head(), "head.safetensors is loaded with the model");
        let (a, va) = logits_and_values(&model);
        let (b, vb) = logits_and_values(&loaded);
        assert!(a.equal(&b), "{arch}: logits differ after reload");
        assert!(va.unwrap().equal(&vb.unwrap()), "{arch}: head values differ after reload");
        let written: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path.join("config.json")).unwrap()).unwrap();
        assert_eq!(written["architectures"][0], arch);
        assert_eq!(written["torch_dtype"], "float32");
        let names: Vec<String> =
            Tensor::read_safetensors(path.join("model.safetensors")).unwrap().into_iter().map(|(n, _)| n).collect();
        assert!(names.contains(&"model.layers.1.mlp.down_proj.weight".to_string()));
        assert_eq!(names.contains(&"lm_head.weight".to_string()), !tied);
        assert_eq!(names.contains(&"model.layers.0.self_attn.q_proj.bias".to_string()), arch == "Qwen2ForCausalLM");
        assert!(!names.iter().any(|n| n.starts_with("score")), "the head has its own file");
    }
}

#[test]
fn sharded_safetensors_load() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config("LlamaForCausalLM");
    let model = CausalLm::new(&config, Device::Cpu, false).unwrap();
    model.save(dir.path()).unwrap();
    let tensors = Tensor::read_safetensors(dir.path().join("model.safetensors")).unwrap();
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let mut weight_map = serde_json::Map::new();
    let mut shards = [BTreeMap::new(), BTreeMap::new()];
    for (i, (name, t)) in tensors.into_iter().enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i % 2 + 1);
        weight_map.insert(name.clone(), file.into());
        shards[i % 2].insert(name, t);
    }
    for (i, shard) in shards.iter().enumerate() {
        let path = dir.path().join(format!("model-0000{}-of-00002.safetensors", i + 1));
        reasonrl::model::hf::write_safetensors(&path, shard).unwrap();
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string()).unwrap();
    let loaded = CausalLm::load(dir.path(), Device::Cpu, false).unwrap();
    assert!(logits_and_values(&model).0.equal(&logits_and_values(&loaded).0));
}

#[test]
fn qwen2_config_with_qkv_biases_loads_from_hf_json() {
    // A config.json as transformers writes it for Qwen2 (no `attention_bias` field: biases are
    // implied by the architecture), with extra fields we must keep.
    let json = r#"{
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 61,
        "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0, "max_position_embeddings": 64, "tie_word_embeddings": true,
        "hidden_act": "silu", "sliding_window": 32768, "use_sliding_window": false,
        "bos_token_id": 1, "eos_token_id": [2, 3], "torch_dtype": "bfloat16"
    }"#;
    let dir = tempfile::tempdir().unwrap();
    let config: ModelConfig = serde_json::from_str(json).unwrap();
    assert!(config.qkv_bias() && !config.o_bias());
    let model = CausalLm::new(&config, Device::Cpu, false).unwrap();
    let vars = model.vs.variables();
    assert!(vars.contains_key("model.layers.0.self_attn.k_proj.bias"));
    assert!(!vars.contains_key("model.layers.0.self_attn.o_proj.bias"));
    model.save(dir.path()).unwrap();
    let loaded = CausalLm::load(dir.path(), Device::Cpu, false).unwrap();
    assert_eq!(loaded.config().extra["use_sliding_window"], false);
    assert_eq!(loaded.config().eos_token_id, Some(serde_json::json!([2, 3])));
    assert!(logits_and_values(&model).0.equal(&logits_and_values(&loaded).0));
}

#[test]
fn bad_folders_fail_with_messages_that_name_the_culprit() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config("LlamaForCausalLM");
    CausalLm::new(&config, Device::Cpu, false).unwrap().save(dir.path()).unwrap();

    // A tensor of the wrong shape.
    let mut tensors: BTreeMap<String, Tensor> =
        Tensor::read_safetensors(dir.path().join("model.safetensors")).unwrap().into_iter().collect();
    tensors.insert("model.norm.weight".into(), Tensor::ones([7], (Kind::Float, Device::Cpu)));
    reasonrl::model::hf::write_safetensors(&dir.path().join("model.safetensors"), &tensors).unwrap();
    let err = CausalLm::load(dir.path(), Device::Cpu, false).err().unwrap().to_string();
    assert!(err.contains("model.norm.weight") && err.contains("[7]"), "{err}");

    // A missing tensor.
    tensors.remove("model.norm.weight");
    reasonrl::model::hf::write_safetensors(&dir.path().join("model.safetensors"), &tensors).unwrap();
    let err = CausalLm::load(dir.path(), Device::Cpu, false).err().unwrap().to_string();
    assert!(err.contains("`model.norm.weight` is missing"), "{err}");

    // An unsupported architecture and a missing field.
    let config_path = dir.path().join("config.json");
    let text = std::fs::read_to_string(&config_path).unwrap();
    std::fs::write(&config_path, text.replace("LlamaForCausalLM", "GPT2LMHeadModel")).unwrap();
    let err = CausalLm::load(dir.path(), Device::Cpu, false).err().unwrap().to_string();
    assert!(err.contains("config.json") && err.contains("GPT2LMHeadModel"), "{err}");
    std::fs::write(&config_path, text.replace("\"hidden_size\"", "\"hidden\"")).unwrap();
    let err = CausalLm::load(dir.path(), Device::Cpu, false).err().unwrap().to_string();
    assert!(err.contains("config.json") && err.contains("hidden_size"), "{err}");

    // No weights at all.
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    std::fs::write(&config_path, &text).unwrap();
    let err = CausalLm::load(dir.path(), Device::Cpu, false).err().unwrap().to_string();
    assert!(err.contains("model.safetensors"), "{err}");
}

#[test]
fn transformers_5_rope_parameters_set_theta() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tiny_config("LlamaForCausalLM");
    config.extra.insert("rope_parameters".into(), serde_json::json!({"rope_type": "default", "rope_theta": 123.0}));
    let path = dir.path().join("config.json");
    config.save(&path).unwrap();
    assert_eq!(ModelConfig::load(&path).unwrap().rope_theta, 123.0);
    config.extra.insert("rope_parameters".into(), serde_json::json!({"rope_type": "yarn", "factor": 4.0}));
    config.save(&path).unwrap();
    let err = ModelConfig::load(&path).unwrap_err().to_string();
    assert!(err.contains("config.json") && err.contains("yarn"), "{err}");
}

#[test]
fn control_tokens_survive_save_and_load() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = (0..50).map(|i| format!("Tom has {i} apples.\n#### {i}"));
    let mut tokenizer = reasonrl::tokenizer::Tokenizer::train_bpe(corpus, 300).unwrap();
    let config = ModelConfig::llama(tokenizer.vocab_size() as i64, 32, 64, 2, 4, 2, 64, true);
    let mut model = CausalLm::new(&config, Device::Cpu, false).unwrap();
    let old_vocab = model.config().vocab_size;
    let controls = reasonrl::train::rcrl::Controls::add(&mut model, &mut tokenizer).unwrap();
    assert_eq!(model.config().vocab_size, old_vocab + 2);
    let embed = |m: &CausalLm| m.vs.variables()["model.embed_tokens.weight"].copy();
    let grown = embed(&model);
    // Each starts as its word's mean embedding, so the two differ (LoRA keeps them frozen).
    for (id, word) in [(controls.good, " good"), (controls.bad, " bad")] {
        let rows: Vec<i64> = tokenizer.encode(word).unwrap().iter().map(|&t| t as i64).collect();
        let mean = grown.index_select(0, &tch::Tensor::from_slice(&rows)).mean_dim(0, false, Kind::Float);
        assert!(max_diff(&grown.get(id as i64), &mean) < 1e-6, "{word}");
    }
    assert!(max_diff(&grown.get(controls.good as i64), &grown.get(controls.bad as i64)) > 1e-4);
    model.save_with_tokenizer(&tokenizer, &dir.path().join("m"), false).unwrap();
    let (loaded, loaded_tokenizer) = CausalLm::load_with_tokenizer(&dir.path().join("m"), Device::Cpu, false).unwrap();
    assert_eq!(loaded_tokenizer.token_to_id("[GOOD]"), Some(controls.good));
    assert_eq!(loaded_tokenizer.token_to_id("[BAD]"), Some(controls.bad));
    assert!(embed(&loaded).equal(&grown));
    // Special: one token each, and gone from decoded text.
    let ids = loaded_tokenizer.encode("[GOOD]Tom has 3 apples.").unwrap();
    assert_eq!(ids[0], controls.good);
    assert_eq!(loaded_tokenizer.decode(&ids, true).unwrap(), "Tom has 3 apples.");
}

#[test]
fn a_gguf_export_reads_back_as_the_same_model_and_tokenizer() {
    use reasonrl::model::gguf_export::{export_dir, GgufDtype};
    let dir = tempfile::tempdir().unwrap();
    let problems = reasonrl::task::synth::generate(1, reasonrl::task::Split::Train, 200, 3);
    let corpus = problems.iter().map(|p| format!("{}\n{}", p.question, p.reference_solution));
    let (model, tokenizer) =
        reasonrl::model::presets::init_from_scratch("tiny", corpus, 300, 128, 1, Device::Cpu).unwrap();
    let src = dir.path().join("model");
    model.save_with_tokenizer(&tokenizer, &src, false).unwrap();
    let weights = |m: &CausalLm| -> BTreeMap<String, Tensor> { m.vs.variables().into_iter().collect() };
    // F32 is exact; F16 keeps ~11 bits; Q8_0 rounds each block of 32 to steps of max|w|/127,
    // the step itself stored as f16.
    for (dtype, tolerance) in
        [(GgufDtype::F32, 0.0), (GgufDtype::F16, 1e-3), (GgufDtype::Q8_0, 1.0 / 254.0 + 1.0 / 2048.0)]
    {
        let file = dir.path().join(format!("{dtype:?}.gguf"));
        export_dir(&src, &file, dtype, false).unwrap();
        let back = dir.path().join(format!("{dtype:?}"));
        reasonrl::model::gguf_import::convert(&file, &back, false).unwrap();
        let (again, tokenizer_again) = CausalLm::load_with_tokenizer(&back, Device::Cpu, false).unwrap();
        for (name, w) in weights(&model) {
            let scale = w.abs().max().double_value(&[]).max(1e-12);
            let diff = max_diff(&w, &weights(&again)[&name]) / scale;
            assert!(diff <= tolerance + 1e-7, "{dtype:?} {name}: relative difference {diff}");
        }
        let text = &problems[0].reference_solution;
        assert_eq!(tokenizer_again.encode(text).unwrap(), tokenizer.encode(text).unwrap(), "{dtype:?}");
        assert_eq!((tokenizer_again.bos_id(), tokenizer_again.eos_id()), (tokenizer.bos_id(), tokenizer.eos_id()));
    }
    let err = export_dir(&src, &dir.path().join("F32.gguf"), GgufDtype::F32, false).unwrap_err().to_string();
    assert!(err.contains("F32.gguf"), "{err}");
}

/// Every family GGUF export covers (Qwen2's biases, Qwen3's q/k norms and head_dim, Llama 3's and
/// linear RoPE scaling) reads back from its GGUF as the same model: same config, same logits.
#[test]
fn every_family_reads_back_from_its_gguf() {
    use reasonrl::model::gguf_export::{export_model, GgufDtype};
    let dir = tempfile::tempdir().unwrap();
    let problems = reasonrl::task::synth::generate(1, reasonrl::task::Split::Train, 200, 3);
    let corpus = problems.iter().map(|p| format!("{}\n{}", p.question, p.reference_solution));
    let (base, tokenizer) =
        reasonrl::model::presets::init_from_scratch("tiny", corpus, 300, 128, 1, Device::Cpu).unwrap();
    let ids = random_ids(1, 40, base.config().vocab_size, 9);
    for family in common::GGUF_FAMILIES {
        let model = common::family_model(&base, family);
        let file = dir.path().join(format!("{family}.gguf"));
        export_model(&model, &tokenizer, &file, GgufDtype::F32).unwrap();
        let back = dir.path().join(family);
        reasonrl::model::gguf_import::convert(&file, &back, false).unwrap();
        let again = CausalLm::load(&back, Device::Cpu, false).unwrap();
        let (a, b) = (model.config(), again.config());
        assert_eq!(
            (&a.architectures, a.head_dim(), a.rope_scaling()),
            (&b.architectures, b.head_dim(), b.rope_scaling())
        );
        let diff = tch::no_grad(|| max_diff(&model.forward_logits(&ids), &again.forward_logits(&ids)));
        assert!(diff < 1e-5, "{family}: logits differ by {diff} after the GGUF round trip");
    }
}
