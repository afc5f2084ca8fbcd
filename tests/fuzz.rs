//! Damaged input never panics: each reader gets valid files mutated (cut short, bits flipped,
//! huge numbers written over them, bytes spliced in, fields set to absurd values) and must
//! answer with a result, an error or not, never a panic. proptest reports any panic with the
//! smallest mutation that causes it.

mod common;

use proptest::prelude::*;
use reasonrl::model::gguf::Gguf;
use reasonrl::model::gguf_export::GgufDtype;
use reasonrl::model::CausalLm;
use reasonrl::task::TaskSpec;
use reasonrl::tokenizer::Tokenizer;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tch::Device;

/// One way to damage a file; positions are fractions of its length.
#[derive(Debug, Clone)]
enum Damage {
    Truncate(f64),
    Flip(f64, u8),
    /// Writes a large little-endian u64 (a count, a length, a dimension) at the position.
    Huge(f64, u64),
    Splice(f64, Vec<u8>),
}

fn damage() -> impl Strategy<Value = Damage> {
    // Half the damage lands in a file's first 1%, where headers, counts and lengths are.
    let at = prop_oneof![0.0..1.0f64, 0.0..0.01f64];
    prop_oneof![
        at.clone().prop_map(Damage::Truncate),
        (at.clone(), 0..8u8).prop_map(|(p, bit)| Damage::Flip(p, bit)),
        (at.clone(), prop_oneof![Just(u64::MAX), Just(1 << 40), Just(i64::MAX as u64), 1u64 << 20..1 << 36])
            .prop_map(|(p, n)| Damage::Huge(p, n)),
        (at, prop::collection::vec(any::<u8>(), 1..16)).prop_map(|(p, b)| Damage::Splice(p, b)),
    ]
}

/// Damage that keeps a text file ASCII, so that parsers get past UTF-8 checks: cuts, low-bit
/// flips, and JSON/TOML punctuation, huge or odd values spliced in.
fn text_damage() -> impl Strategy<Value = Damage> {
    let at = 0.0..1.0f64;
    let punctuation = prop::collection::vec(prop::sample::select(b"\"{}[],:=0123456789.e-\n x".to_vec()), 1..12);
    let values =
        prop::sample::select(vec!["99999999999999999999999", "-1", "1e309", "nan", "null", "\"\"", "[]", "{}", "0"]);
    prop_oneof![
        at.clone().prop_map(Damage::Truncate),
        (at.clone(), 0..7u8).prop_map(|(p, bit)| Damage::Flip(p, bit)),
        (at.clone(), punctuation).prop_map(|(p, b)| Damage::Splice(p, b)),
        (at, values).prop_map(|(p, v)| Damage::Splice(p, v.as_bytes().to_vec())),
    ]
}

/// Damage for a text file: byte-level or text-level.
fn any_damage() -> impl Strategy<Value = Damage> {
    prop_oneof![damage(), text_damage()]
}

fn apply(bytes: &[u8], damages: &[Damage]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for d in damages {
        let at = |p: f64, len: usize| ((p * len as f64) as usize).min(len.saturating_sub(1));
        match d {
            Damage::Truncate(p) => out.truncate(at(*p, out.len())),
            Damage::Flip(p, bit) if !out.is_empty() => {
                let i = at(*p, out.len());
                out[i] ^= 1 << bit;
            }
            Damage::Huge(p, n) if out.len() >= 8 => {
                let i = at(*p, out.len() - 7);
                out[i..i + 8].copy_from_slice(&n.to_le_bytes());
            }
            Damage::Splice(p, b) => {
                let i = at(*p, out.len() + 1);
                out.splice(i..i, b.iter().copied());
            }
            _ => {}
        }
    }
    out
}

/// A working folder under Cargo's target/tmp, reused by the next run (each test has its own).
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// Rewrites a JSON file through `edit`.
fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    edit(&mut json);
    std::fs::write(path, json.to_string()).unwrap();
}

/// A copy of the PEFT fixture (adapter over its base) in `scratch(name)`, its adapter_config.json
/// pointing at the copied base and then changed by `edit`; returns the adapter folder.
fn peft_adapter(name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let root = scratch(name);
    copy_dir(&fixture("peft-lora/base"), &root.join("base"));
    let dir = root.join("adapter");
    copy_dir(&fixture("peft-lora/adapter"), &dir);
    edit_json(&dir.join("adapter_config.json"), |json| {
        json["base_model_name_or_path"] = "../base".into();
        edit(json);
    });
    dir
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// A saved tiny model with its tokenizer, and its GGUF exports (Q8_0 and F16).
fn tiny() -> &'static (PathBuf, Vec<PathBuf>) {
    static TINY: OnceLock<(PathBuf, Vec<PathBuf>)> = OnceLock::new();
    TINY.get_or_init(|| {
        let (tokenizer, _) = common::synth_examples();
        let config = reasonrl::model::presets::preset("tiny", tokenizer.vocab_size() as i64, 128).unwrap();
        let model = CausalLm::new(&config, Device::Cpu, false).unwrap();
        let dir = scratch("tiny");
        model.save_with_tokenizer(&tokenizer, &dir.join("model"), true).unwrap();
        let ggufs = [GgufDtype::Q8_0, GgufDtype::F16].map(|dtype| {
            let path = dir.join(format!("model-{dtype:?}.gguf"));
            reasonrl::model::gguf_export::export_model(&model, &tokenizer, &path, dtype).unwrap();
            path
        });
        (dir.join("model"), ggufs.to_vec())
    })
}

fn config() -> ProptestConfig {
    ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn gguf_files_read_dequantise_and_convert_without_panics(
        which in 0..2usize,
        damages in prop::collection::vec(damage(), 1..4),
    ) {
        let source = &tiny().1[which];
        let path = scratch("gguf").join("damaged.gguf");
        std::fs::write(&path, apply(&std::fs::read(source).unwrap(), &damages)).unwrap();
        if let Ok(g) = Gguf::read(&path) {
            for t in &g.tensors {
                let _ = g.tensor_f32(t);
            }
        }
        let _ = reasonrl::model::gguf_import::convert(&path, &scratch("gguf").join("converted"), true);
    }

    #[test]
    fn model_folders_with_damaged_files_load_without_panics(
        family in prop::sample::select(vec!["llama3", "qwen2", "qwen3", "gemma3", "mistral", "llama-linear"]),
        file in prop::sample::select(vec!["config.json", "generation_config.json", "model.safetensors"]),
        damages in prop::collection::vec(any_damage(), 1..4),
    ) {
        let dir = scratch("hf").join(family);
        copy_dir(&fixture("hf").join(family), &dir);
        let bytes = std::fs::read(dir.join(file)).unwrap();
        std::fs::write(dir.join(file), apply(&bytes, &damages)).unwrap();
        let _ = CausalLm::load(&dir, Device::Cpu, false);
    }

    #[test]
    fn absurd_config_sizes_are_refused_before_allocating(
        field in prop::sample::select(vec![
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "max_position_embeddings", "rope_theta", "rms_norm_eps",
        ]),
        value in prop_oneof![Just(0i64), Just(-1), Just(1 << 40), Just(i64::MAX), Just(1_000_000_000_000), 1i64..100_000],
    ) {
        let dir = scratch("sizes").join("llama3");
        copy_dir(&fixture("hf").join("llama3"), &dir);
        let path = dir.join("config.json");
        edit_json(&path, |json| json[field] = value.into());
        let _ = CausalLm::load(&dir, Device::Cpu, false);
        let _ = reasonrl::model::config::ModelConfig::load(&path);
    }

    #[test]
    fn peft_adapters_with_damaged_files_load_without_panics(
        file in prop::sample::select(vec!["adapter_config.json", "adapter_model.safetensors"]),
        damages in prop::collection::vec(any_damage(), 1..4),
    ) {
        let dir = peft_adapter("peft", |_| {});
        let bytes = std::fs::read(dir.join(file)).unwrap();
        std::fs::write(dir.join(file), apply(&bytes, &damages)).unwrap();
        let _ = CausalLm::load(&dir, Device::Cpu, false);
    }

    #[test]
    fn absurd_lora_ranks_are_refused_before_allocating(rank in prop_oneof![Just(0i64), Just(-3), Just(1 << 40), Just(i64::MAX)]) {
        let dir = peft_adapter("rank", |json| json["r"] = rank.into());
        prop_assert!(CausalLm::load(&dir, Device::Cpu, false).is_err());
    }

    #[test]
    fn tokenizers_load_without_panics(damages in prop::collection::vec(any_damage(), 1..4)) {
        let source = tiny().0.join("tokenizer.json");
        let dir = scratch("tokenizer");
        std::fs::write(dir.join("tokenizer.json"), apply(&std::fs::read(source).unwrap(), &damages)).unwrap();
        if let Ok(t) = Tokenizer::load(&dir) {
            let _ = t.encode("Natalia sold 48 clips in April.");
            let _ = t.decode(&[0, 1, 2, 3, u32::MAX], false);
        }
    }

    #[test]
    fn task_files_load_without_panics(
        form in prop::sample::select(vec!["gsm8k", "svamp", "jsonl", "math", "gsm8k+skip"]),
        damages in prop::collection::vec(any_damage(), 1..4),
    ) {
        let (file, text) = task_file(form);
        let path = scratch("tasks").join(file);
        std::fs::write(&path, apply(text.as_bytes(), &damages)).unwrap();
        let spec = match form {
            "jsonl" => format!("jsonl:{}:question:answer", path.display()),
            "math" => format!("math:{}", path.display()),
            _ => format!("{form}:{}", path.display()),
        };
        if let Ok(task) = TaskSpec::parse(&spec) {
            for split in task.splits() {
                let _ = task.load(split, Some(50));
            }
        }
    }

    #[test]
    fn configs_and_overrides_load_without_panics(
        file in prop::sample::select(vec![
            "sft", "pretrain", "ei", "rcrl", "orm", "ppo", "grpo", "dapo", "eval", "study", "study-recipes",
        ]),
        damages in prop::collection::vec(any_damage(), 0..3),
        key in prop::sample::select(vec!["train.lr", "optim.lr", "updates", "eval.ks", "prompt.format", "sampling", "x.y.z", ""]),
        value in prop::sample::select(vec!["3e-4", "-1", "[1, 2", "\"text\"", "{a = 1}", "1e400", "nan", "", "=", "[[]]"]),
    ) {
        use reasonrl::config::load;
        use reasonrl::train::*;
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("configs/{file}.toml"));
        let path = scratch("configs").join(format!("{file}.toml"));
        std::fs::write(&path, apply(&std::fs::read(source).unwrap(), &damages)).unwrap();
        let (path, sets) = (Some(path.as_path()), &[format!("{key}={value}")]);
        let _ = match file {
            "sft" => load::<sft::SftConfig>(path, sets).map(drop),
            "pretrain" => load::<pretrain::PretrainConfig>(path, sets).map(drop),
            "ei" => load::<ei::EiConfig>(path, sets).map(drop),
            "rcrl" => load::<rcrl::RcrlConfig>(path, sets).map(drop),
            "orm" => load::<orm::OrmConfig>(path, sets).map(drop),
            "ppo" => load::<ppo::PpoConfig>(path, sets).map(drop),
            "grpo" | "dapo" => load::<grpo::GrpoConfig>(path, sets).map(drop),
            "eval" => load::<reasonrl::eval::run::EvalConfig>(path, sets).map(drop),
            _ => load::<reasonrl::study::StudyConfig>(path, sets).map(drop),
        };
    }

    #[test]
    fn damaged_checkpoints_are_refused_without_panics(
        lora in any::<bool>(),
        pick in any::<prop::sample::Index>(),
        damages in prop::collection::vec(any_damage(), 1..4),
    ) {
        let valid = checkpoint(lora);
        let mut files: Vec<String> =
            std::fs::read_dir(valid).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        files.sort();
        let file = pick.get(&files);
        let damaged = scratch("checkpoint").join("damaged");
        copy_dir(valid, &damaged);
        let bytes = std::fs::read(damaged.join(file)).unwrap();
        let changed = apply(&bytes, &damages);
        std::fs::write(damaged.join(file), &changed).unwrap();
        let mut model = tiny_model(lora);
        let mut optimizer = reasonrl::train::optim::AdamW::new(&model);
        let loaded = reasonrl::train::checkpoint::load_checkpoint(&damaged, &mut model, Some(&mut optimizer));
        // Every file but the state (and the marker that says reasonrl wrote the folder) is listed
        // in the state with its CRC: any change is refused.
        if !["trainer_state.json", ".reasonrl"].contains(&file.as_str()) && changed != bytes {
            prop_assert!(loaded.is_err(), "a damaged {file} was loaded");
        }
    }

    #[test]
    fn damaged_metrics_logs_read_and_resume_without_panics(damages in prop::collection::vec(any_damage(), 1..4)) {
        let text = (1..=20).map(|s| format!("{{\"step\":{s}.0,\"loss\":{:.3},\"eval/maj@1\":0.25}}\n", 3.0 / s as f64)).collect::<String>();
        let run = scratch("metrics");
        copy_dir(checkpoint(false), &run.join("checkpoints/step-0"));
        let path = run.join("metrics.jsonl");
        std::fs::write(&path, apply(text.as_bytes(), &damages)).unwrap();
        let _ = reasonrl::plot::read_metrics(&path);
        // Resuming cuts the log back to the checkpoint's step, whatever the log holds.
        let mut model = tiny_model(false);
        let mut optimizer = reasonrl::train::optim::AdamW::new(&model);
        let checkpoints = reasonrl::train::checkpoint::Checkpoints::new(&run, 1);
        prop_assert!(checkpoints.load_latest(&mut model, Some(&mut optimizer)).is_ok());
    }
}

#[test]
fn weights_holding_nan_or_inf_are_refused_by_name() {
    for bad in [f32::NAN, f32::INFINITY] {
        let dir = scratch("nan").join("llama3");
        copy_dir(&fixture("hf").join("llama3"), &dir);
        let path = dir.join("model.safetensors");
        let tensors: std::collections::BTreeMap<String, tch::Tensor> =
            tch::Tensor::read_safetensors(&path).unwrap().into_iter().collect();
        let name = "model.layers.1.mlp.up_proj.weight";
        let _ = tensors[name].view([-1]).get(5).fill_(bad as f64);
        reasonrl::model::hf::write_safetensors(&path, &tensors).unwrap();
        let err = CausalLm::load(&dir, Device::Cpu, false).err().expect("weights with NaN or inf load").to_string();
        assert!(err.contains("model.safetensors") && err.contains(name) && err.contains("NaN or infinite"), "{err}");
    }
}

/// A small valid file of each task form.
fn task_file(form: &str) -> (&'static str, String) {
    let line = |q: &str, a: &str| serde_json::json!({"question": q, "answer": a}).to_string();
    match form {
        "svamp" => (
            "svamp.json",
            serde_json::json!([{"Body": "Jack had 8 pens.", "Question": "How many pens does he have after buying 3?",
                                "Equation": "( 8.0 + 3.0 )", "Answer": 11.0, "ID": "chal-1"}])
            .to_string(),
        ),
        "math" => (
            "math.jsonl",
            serde_json::json!({"problem": "What is $1+1$?", "solution": "It is $\\boxed{2}$."}).to_string() + "\n",
        ),
        "jsonl" => ("records.jsonl", format!("{}\n{}\n", line("2 + 2?", "4"), line("3 * 3?", "9"))),
        _ => (
            "test.jsonl",
            format!(
                "{}\n{}\n",
                line("Tom has 3 apples and buys 2. How many?", "3 + 2 = <<3+2=5>>5\n#### 5"),
                line("1+1?", "#### 2")
            ),
        ),
    }
}

/// The tiny model, fresh, with LoRA adapters over its saved folder or without.
fn tiny_model(lora: bool) -> CausalLm {
    let config = reasonrl::model::config::ModelConfig::load(&tiny().0.join("config.json")).unwrap();
    let mut model = CausalLm::new(&config, Device::Cpu, false).unwrap();
    if lora {
        model.add_lora(&Default::default(), &tiny().0).unwrap();
    }
    model
}

/// A checkpoint of the tiny model (full, or LoRA adapters) with its optimizer state, written by
/// the trainer's own code.
fn checkpoint(lora: bool) -> &'static Path {
    static CHECKPOINTS: [OnceLock<PathBuf>; 2] = [OnceLock::new(), OnceLock::new()];
    CHECKPOINTS[lora as usize].get_or_init(|| {
        let run = scratch("checkpoint").join(format!("run-{lora}"));
        let model = tiny_model(lora);
        let optimizer = reasonrl::train::optim::AdamW::new(&model);
        let tokenizer = Tokenizer::load(&tiny().0).unwrap();
        let checkpoints = reasonrl::train::checkpoint::Checkpoints::new(&run, 1);
        checkpoints.save(&model, &tokenizer, &optimizer, &Default::default()).unwrap();
        checkpoints.list()[0].1.clone()
    })
}
