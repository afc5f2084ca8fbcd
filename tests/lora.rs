//! LoRA: adapters equal their merged weights, only adapters train, runs resume exactly, folders
//! are PEFT's (and a PEFT adapter made in Python loads here with PEFT's logits).

use reasonrl::model::lora::{BaseDtype, LoraConfig, Target, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};
mod common;

use reasonrl::model::{CausalLm, ModelConfig};
use reasonrl::run::Metrics;
use reasonrl::tokenizer::Tokenizer;
use reasonrl::train::checkpoint::TrainerState;
use reasonrl::train::{AdamW, Example, Objective, TrainConfig, Trainer};
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Held by each test: they draw from torch's one global generator (initialisation, dropout),
/// so they must not interleave.
static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn tiny(dir: &Path, vocab: i64) -> ModelConfig {
    tch::manual_seed(0);
    let config = ModelConfig::llama(vocab, 32, 64, 2, 4, 2, 256, true);
    CausalLm::new(&config, Device::Cpu, false).unwrap().save(dir).unwrap();
    config
}

fn lora(rank: i64) -> LoraConfig {
    LoraConfig { rank, alpha: 2.0 * rank as f64, ..LoraConfig::default() }
}

fn weights(model: &CausalLm) -> BTreeMap<String, Tensor> {
    model.vs.variables().into_iter().map(|(n, t)| (n, t.detach().copy())).collect()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Float) - b.to_kind(Kind::Float)).abs().max().double_value(&[])
}

fn ids() -> Tensor {
    Tensor::from_slice(&[1i64, 5, 9, 23, 42, 7, 3, 88, 13, 2]).view([2, 5])
}

/// Gives every adapter a non-zero B, as training would, so the adapters change the outputs.
fn perturb(model: &CausalLm) {
    tch::manual_seed(7);
    tch::no_grad(|| {
        for (name, mut t) in model.vs.variables() {
            if name.contains(".lora_B.") {
                t.copy_(&(Tensor::randn(t.size(), (Kind::Float, Device::Cpu)) * 0.1));
            }
        }
    });
}

#[test]
fn adapters_equal_their_merged_weights_and_folders_reload_with_the_same_logits() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    let config = tiny(&base, 100);
    let mut model = CausalLm::load(&base, Device::Cpu, false).unwrap();
    let plain = model.forward_logits(&ids());
    model.add_lora(&lora(4), &base).unwrap();
    assert!(max_diff(&model.forward_logits(&ids()), &plain) == 0.0, "fresh adapters (B = 0) change nothing");
    perturb(&model);
    let adapted = model.forward_logits(&ids());
    assert!(max_diff(&adapted, &plain) > 1e-3, "the adapters act");
    assert!(max_diff(&model.net.without_adapters(|| model.forward_logits(&ids())), &plain) == 0.0);

    let merged = model.merged().unwrap();
    assert!(merged.lora.is_none());
    let diff = max_diff(&merged.forward_logits(&ids()), &adapted);
    assert!(diff <= 1e-5, "adapter forward vs merged forward: {diff}");

    // The adapter folder is PEFT's: names, shapes, config; the base is named, not copied.
    let adapter = dir.path().join("adapter");
    model.save(&adapter).unwrap();
    assert!(!adapter.join("model.safetensors").exists() && !adapter.join("config.json").exists());
    let saved: BTreeMap<String, Tensor> =
        Tensor::read_safetensors(adapter.join(ADAPTER_WEIGHTS_FILE)).unwrap().into_iter().collect();
    assert_eq!(saved.len(), 2 * 7 * config.num_hidden_layers as usize);
    let a = &saved["base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"];
    let b = &saved["base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"];
    assert_eq!((a.size(), b.size()), (vec![4, config.intermediate_size], vec![config.hidden_size, 4]));
    let peft: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(adapter.join(ADAPTER_CONFIG_FILE)).unwrap()).unwrap();
    assert_eq!(
        (peft["peft_type"].as_str(), peft["r"].as_i64(), peft["lora_alpha"].as_f64()),
        (Some("LORA"), Some(4), Some(8.0))
    );
    assert_eq!(
        peft["base_model_name_or_path"].as_str().map(Path::new),
        Some(std::path::absolute(&base).unwrap().as_path())
    );

    // An adapter folder loads over its base; a merged folder loads as a plain model.
    let reloaded = CausalLm::load(&adapter, Device::Cpu, false).unwrap();
    assert!(reloaded.lora.is_some());
    assert!(max_diff(&reloaded.forward_logits(&ids()), &adapted) == 0.0);
    merged.save(&dir.path().join("merged")).unwrap();
    let diff = max_diff(
        &CausalLm::load(&dir.path().join("merged"), Device::Cpu, false).unwrap().forward_logits(&ids()),
        &adapted,
    );
    assert!(diff <= 1e-5, "merged folder vs adapter: {diff}");

    // A bf16 base keeps f32 adapters, and its logits stay near the f32 ones.
    let mut half = CausalLm::load(&base, Device::Cpu, false).unwrap();
    half.add_lora(&LoraConfig { base_dtype: BaseDtype::Bf16, ..lora(4) }, &base).unwrap();
    half.load_weights(&adapter).unwrap();
    for (name, t) in half.vs.variables() {
        let want = if name.contains(".lora_") { Kind::Float } else { Kind::BFloat16 };
        assert_eq!(t.kind(), want, "{name}");
    }
    let diff = max_diff(&half.forward_logits(&ids()), &adapted);
    assert!(diff < 0.05 * adapted.abs().max().double_value(&[]).max(1.0), "bf16 base: {diff}");
}

#[test]
fn a_missing_base_or_adapter_tensor_is_named() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    tiny(&base, 100);
    let mut model = CausalLm::load(&base, Device::Cpu, false).unwrap();
    model.add_lora(&LoraConfig { target_modules: vec![Target::QProj], ..lora(2) }, &base).unwrap();
    let adapter = dir.path().join("adapter");
    model.save(&adapter).unwrap();

    // Adapters for more layers than the file has.
    let mut wider = CausalLm::load(&base, Device::Cpu, false).unwrap();
    wider.add_lora(&LoraConfig { target_modules: vec![Target::QProj, Target::VProj], ..lora(2) }, &base).unwrap();
    let err = wider.load_weights(&adapter).unwrap_err().to_string();
    assert!(err.contains("adapter_model.safetensors") && err.contains("v_proj.lora_A.weight"), "{err}");

    std::fs::rename(&base, dir.path().join("moved")).unwrap();
    let err = CausalLm::load(&adapter, Device::Cpu, false).err().unwrap().to_string();
    assert!(err.contains(ADAPTER_CONFIG_FILE) && err.contains("base model"), "{err}");
}

/// The loss per target token over all of `examples`.
fn mean_loss(model: &CausalLm, examples: &[Example], tokenizer: &Tokenizer) -> f64 {
    let objective = Objective::default();
    let weight: f64 = examples.iter().map(|e| objective.weight(e)).sum();
    let all: Vec<&Example> = examples.iter().collect();
    tch::no_grad(|| objective.loss(model, &all, tokenizer.pad_id()).unwrap().double_value(&[])) / weight
}

fn no_eval(_: &CausalLm, _: &TrainerState) -> reasonrl::Result<Metrics> {
    Ok(Metrics::new())
}

#[test]
fn only_adapters_train_and_a_killed_lora_run_resumes_exactly() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (tokenizer, examples) = common::synth_examples();
    // A base that has learnt something: a random one's frozen embeddings and norms keep its
    // logits too flat for an adapter to sharpen.
    let base = dir.path().join("base");
    tiny(&base, tokenizer.vocab_size() as i64);
    let mut pretrained = CausalLm::load(&base, Device::Cpu, false).unwrap();
    let full = TrainConfig { lr: 1e-2, warmup_steps: 2, max_steps: 12, batch_tokens: 600, ..TrainConfig::default() };
    Trainer::new(&mut pretrained, &tokenizer, full, &dir.path().join("full"), false)
        .unwrap()
        .train(&examples, &mut no_eval)
        .unwrap();
    pretrained.save(&base).unwrap();
    let cfg = TrainConfig {
        lr: 2e-2,
        warmup_steps: 2,
        max_steps: 10,
        batch_tokens: 2400,
        save_every: 4,
        log_every: 1,
        ..TrainConfig::default()
    };
    let adapted = |seed: i64| {
        tch::manual_seed(seed);
        let mut m = CausalLm::load(&base, Device::Cpu, false).unwrap();
        m.add_lora(&LoraConfig { dropout: 0.1, ..lora(4) }, &base).unwrap();
        m
    };

    let mut a = adapted(1);
    let before = weights(&a);
    assert_eq!(AdamW::new(&a).state().len(), 1 + 2 * 2 * 7 * 2, "moments for the adapters alone");
    let mut trainer = Trainer::new(&mut a, &tokenizer, cfg.clone(), &dir.path().join("a"), false).unwrap();
    trainer.train(&examples, &mut no_eval).unwrap();
    let (start, end) = (mean_loss(&pretrained, &examples, &tokenizer), mean_loss(&a, &examples, &tokenizer));
    assert!(end < start - 0.02, "LoRA lowers the loss: {start} -> {end}");
    for (name, t) in weights(&a) {
        let moved = max_diff(&t, &before[&name]);
        if name.contains(".lora_") {
            assert!(moved > 0.0, "adapter {name} did not train");
        } else {
            assert!(moved == 0.0, "base weight {name} moved by {moved}");
        }
    }
    let step = dir.path().join("a/checkpoints/step-8");
    assert!(step.join(ADAPTER_WEIGHTS_FILE).exists() && !step.join("model.safetensors").exists());

    // Killed after step 6 (last checkpoint: step 4), resumed over a freshly drawn adapter.
    let mut b = adapted(1);
    let mut kill = |_: &CausalLm, s: &TrainerState| match s.step {
        6 => Err(reasonrl::Error::Invalid("killed".into())),
        _ => Ok(Metrics::new()),
    };
    let cfg_eval = TrainConfig { eval_every: 1, ..cfg.clone() };
    assert!(Trainer::new(&mut b, &tokenizer, cfg_eval, &dir.path().join("b"), false)
        .unwrap()
        .train(&examples, &mut kill)
        .is_err());
    let mut b = adapted(99);
    let mut trainer = Trainer::new(&mut b, &tokenizer, cfg, &dir.path().join("b"), true).unwrap();
    assert_eq!(trainer.state.step, 4);
    trainer.train(&examples, &mut no_eval).unwrap();
    for ((name, x), (_, y)) in weights(&a).iter().zip(weights(&b).iter()) {
        assert!(max_diff(x, y) < 1e-6, "{name} differs after resume");
    }
}

/// tests/fixtures/peft-lora: a tiny Llama saved by `transformers`, a LoRA adapter over it saved
/// by PEFT, and PEFT's logits of the two (scripts/peft_compat.py make).
#[test]
fn a_peft_adapter_loads_with_peft_s_logits() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/peft-lora");
    let model = CausalLm::load_adapter(&fixture.join("base"), &fixture.join("adapter"), Device::Cpu, false).unwrap();
    let cfg = &model.lora.as_ref().unwrap().config;
    assert_eq!((cfg.rank, cfg.alpha, cfg.target_modules.len()), (4, 8.0, 7));
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("logits.json")).unwrap()).unwrap();
    let ids: Vec<i64> = expected["ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    let rows: Vec<f32> = expected["logits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32))
        .collect();
    let theirs = Tensor::from_slice(&rows).view([ids.len() as i64, -1]);
    let ours = model.forward_logits(&Tensor::from_slice(&ids).unsqueeze(0)).squeeze_dim(0);
    let diff = max_diff(&ours, &theirs);
    assert!(diff < 1e-4, "PEFT's logits vs ours: {diff}");
    let without = model.net.without_adapters(|| model.forward_logits(&Tensor::from_slice(&ids).unsqueeze(0)));
    assert!(max_diff(&without.squeeze_dim(0), &theirs) > 1e-3, "the adapter matters in the fixture");
    let merged = model.merged().unwrap().forward_logits(&Tensor::from_slice(&ids).unsqueeze(0)).squeeze_dim(0);
    assert!(max_diff(&merged, &theirs) < 1e-4);
}
