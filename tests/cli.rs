//! The command line end to end: outputs, refusals to overwrite, and error messages that name
//! the culprit.

use std::path::Path;
use std::process::{Command, Output};

fn reasonrl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_reasonrl")).args(args).output().expect("run reasonrl")
}

fn ok(args: &[&str]) -> String {
    let out = reasonrl(args);
    assert!(out.status.success(), "reasonrl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn fails(args: &[&str]) -> String {
    let out = reasonrl(args);
    assert!(!out.status.success(), "reasonrl {args:?} should fail");
    String::from_utf8(out.stderr).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn pipeline_runs_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let (task, model, samples) = (dir.path().join("task"), dir.path().join("model"), dir.path().join("s.jsonl"));
    ok(&["task", "make", "--task", "builtin:1", "--out", s(&task), "--train", "50", "--test", "10"]);
    assert_eq!(std::fs::read_to_string(task.join("test.jsonl")).unwrap().lines().count(), 10);
    let err = fails(&["task", "make", "--task", "builtin:1", "--out", s(&task)]);
    assert!(err.contains("train.jsonl") && err.contains("--force"), "{err}");
    ok(&["task", "make", "--task", "builtin:1", "--out", s(&task), "--train", "60", "--force"]);
    assert_eq!(std::fs::read_to_string(task.join("train.jsonl")).unwrap().lines().count(), 60);

    let gsm = format!("gsm8k:{}", s(&task));
    ok(&["model", "init", "--preset", "tiny", "--task", &gsm, "--vocab-size", "300", "--out", s(&model)]);
    let err = fails(&["model", "init", "--preset", "tiny", "--task", &gsm, "--out", s(&model)]);
    assert!(err.contains("already exists"), "{err}");
    let info = ok(&["model", "info", s(&model)]);
    assert!(info.contains("LlamaForCausalLM") && info.contains("bos <s> eos </s> pad <pad>"), "{info}");

    let args = ["sample", "--model", s(&model), "--task", &gsm, "--limit", "3", "-k", "2", "--temperature", "1"];
    ok(&[&args[..], &["--max-new-tokens", "8", "--out", s(&samples)]].concat());
    let lines = json_lines(&samples);
    assert_eq!(lines.len(), 6);
    assert!(lines.iter().all(|e| e["correct"].is_boolean() && e["response_tokens"].as_array().unwrap().len() <= 8));
    let err = fails(&[&args[..], &["--out", s(&samples)]].concat());
    assert!(err.contains("s.jsonl"), "{err}");

    // --sampling-dtype reaches the sampler: auto keeps the tiny preset in f32, bf16 does not.
    let logprobs = |dtype: &str| {
        let out = dir.path().join(format!("{dtype}.jsonl"));
        ok(&[&args[..], &["--max-new-tokens", "8", "--sampling-dtype", dtype, "--force", "--out", s(&out)]].concat());
        let lines = json_lines(&out);
        lines.iter().flat_map(|e| e["logprobs"].as_array().unwrap().clone()).collect::<Vec<_>>()
    };
    assert_eq!(logprobs("auto"), logprobs("f32"));
    assert_ne!(logprobs("bf16"), logprobs("f32"));
}

#[test]
fn bad_inputs_end_in_one_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    let task = dir.path().join("bad.jsonl");
    ok(&["task", "make", "--task", "builtin:1", "--out", s(&dir.path().join("t")), "--train", "40", "--test", "5"]);
    let corpus = format!("gsm8k:{}", s(&dir.path().join("t")));
    ok(&["model", "init", "--preset", "tiny", "--task", &corpus, "--vocab-size", "300", "--out", s(&model)]);

    // A malformed JSONL line names the file and the line.
    std::fs::write(&task, "{\"question\": \"1+1?\", \"answer\": \"#### 2\"}\n{\"question\": \"oops\"\n").unwrap();
    let err = fails(&["sample", "--model", s(&model), "--task", &format!("gsm8k:{}", s(&task))]);
    assert!(err.contains("bad.jsonl:2"), "{err}");

    // An unwritable output.
    let err = fails(&["task", "make", "--task", "builtin:1", "--out", "/proc/reasonrl-cannot-write"]);
    assert!(err.contains("/proc/reasonrl-cannot-write"), "{err}");

    // A tokenizer bigger than the embedding table.
    let big = dir.path().join("big");
    ok(&["model", "init", "--preset", "tiny", "--task", "builtin:1", "--vocab-size", "600", "--out", s(&big)]);
    let small_tokenizer = std::fs::read(model.join("tokenizer.json")).unwrap();
    std::fs::copy(big.join("tokenizer.json"), model.join("tokenizer.json")).unwrap();
    let err = fails(&["model", "info", s(&model)]);
    assert!(err.contains("tokenizer.json has") && err.contains("vocab_size"), "{err}");
    std::fs::write(model.join("tokenizer.json"), small_tokenizer).unwrap();

    // An unsupported architecture.
    let config_path = model.join("config.json");
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    json["architectures"] = serde_json::json!(["GPTNeoXForCausalLM"]);
    std::fs::write(&config_path, json.to_string()).unwrap();
    let err = fails(&["model", "info", s(&model)]);
    assert!(err.contains("config.json") && err.contains("`GPTNeoXForCausalLM`") && !err.contains("Some("), "{err}");

    // Unknown names.
    assert!(fails(&["model", "init", "--preset", "huge", "--out", s(&dir.path().join("x"))]).contains("huge"));
    assert!(fails(&["sample", "--model", s(&model), "--device", "tpu"]).contains("tpu"));

    // Sampling settings out of range, named by their flag or key, before any work.
    let sample = ["sample", "--model", s(&model), "--task", "builtin:1"];
    for (flag, value, range) in [
        ("--temperature", "-1", ">= 0"),
        ("--temperature", "nan", ">= 0"),
        ("--top-p", "0", "(0, 1]"),
        ("--top-p", "1.5", "(0, 1]"),
        ("--samples-per-prompt", "0", "at least 1"),
    ] {
        let err = fails(&[&sample[..], &[flag, value]].concat());
        assert!(err.contains(flag) && err.contains(range), "{flag} {value}: {err}");
    }
    let eval = ["eval", "--set", &format!("model={}", s(&model)), "--set", "task=builtin:1"];
    let err = fails(&[&eval[..], &["--set", "ks=[0]"]].concat());
    assert!(err.contains("`ks` holds 0"), "{err}");

    // An output under a file fails at once, naming the path, before the model is even loaded.
    let under_a_file = dir.path().join("bad.jsonl/eval");
    let err = fails(&[&eval[..], &["--set", &format!("out={}", s(&under_a_file))]].concat());
    assert!(err.contains("bad.jsonl is not a directory") && !err.contains("os error"), "{err}");
}

#[test]
fn eval_on_a_gsm8k_slice_then_rescore_the_saved_samples() {
    let dir = tempfile::tempdir().unwrap();
    let gsm8k = format!("gsm8k:{}/../shared/data/gsm8k", env!("CARGO_MANIFEST_DIR"));
    let (model, out) = (dir.path().join("model"), dir.path().join("eval"));
    ok(&["model", "init", "--preset", "tiny", "--task", &gsm8k, "--vocab-size", "400", "--out", s(&model)]);
    let set = |kv: String| ["--set".to_string(), kv];
    let mut args: Vec<String> = vec!["eval".into()];
    for kv in [
        format!("model={}", s(&model)),
        format!("task={gsm8k}"),
        "problems=5".into(),
        "samples_per_prompt=3".into(),
        "ks=[1,3]".into(),
        "max_new_tokens=12".into(),
        "scorer=mean-logprob".into(),
        "prompt.format=few-shot".into(),
        "prompt.shots=1".into(),
        format!("out={}", s(&out)),
    ] {
        args.extend(set(kv));
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let table = ok(&argv);
    assert!(
        table.contains("| pass@3 |") && table.contains("| rerank@3 |") && table.contains("| wmaj@3 - maj@3 |"),
        "{table}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["problems"], 5);
    assert_eq!(summary["samples_per_prompt"], 3);
    assert_eq!(std::fs::read_to_string(out.join("records.jsonl")).unwrap().lines().count(), 5);
    assert_eq!(std::fs::read_to_string(out.join("samples.jsonl")).unwrap().lines().count(), 15);
    assert!(fails(&argv).contains("--force"), "an existing report is not overwritten");

    // Re-scoring the saved episodes gives the same summary without sampling, even when their
    // stored verdicts say otherwise: they are graded afresh. Against the first run as a
    // baseline, every paired difference is zero.
    for name in ["greedy.jsonl", "samples.jsonl"] {
        let flipped: String = json_lines(&out.join(name))
            .into_iter()
            .map(|mut e| {
                e["correct"] = serde_json::Value::Bool(!e["correct"].as_bool().unwrap());
                format!("{e}\n")
            })
            .collect();
        std::fs::write(out.join(name), flipped).unwrap();
    }
    let rescored = dir.path().join("rescored");
    let reuse: Vec<String> = [
        &args[..],
        &set(format!("reuse={}", s(&out)))[..],
        &set(format!("out={}", s(&rescored)))[..],
        &set(format!("baseline={}", s(&out)))[..],
    ]
    .concat();
    let reused = reasonrl(&reuse.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(reused.status.success(), "{}", String::from_utf8_lossy(&reused.stderr));
    let (table, note) = (String::from_utf8(reused.stdout).unwrap(), String::from_utf8(reused.stderr).unwrap());
    assert!(note.contains("re-graded the 20 saved episodes") && note.contains("20 verdicts changed"), "{note}");
    for metric in ["maj@1 (greedy)", "maj@3", "pass@3"] {
        assert!(table.contains(&format!("| {metric} | +0.0 pts | [+0.0, +0.0] |")), "{table}");
    }
    assert!(rescored.join("comparison.md").exists());
    let again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(rescored.join("summary.json")).unwrap()).unwrap();
    assert_eq!(again, summary);
}

#[test]
fn expert_iteration_runs_its_rounds_and_counts_samples() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    ok(&["model", "init", "--preset", "tiny", "--task", "builtin:1", "--vocab-size", "300", "--out", s(&model)]);
    let mut args = vec!["ei".to_string()];
    for kv in [
        format!("model={}", s(&model)),
        "task=builtin:1".into(),
        format!("run.out_dir={}", s(dir.path())),
        "rounds=2".into(),
        "questions=6".into(),
        "sampling.samples_per_prompt=3".into(),
        "sampling.max_new_tokens=8".into(),
        "include_references=true".into(),
        "train.max_steps=2".into(),
        "eval.problems=4".into(),
        "eval.samples_per_prompt=2".into(),
        "eval.ks=[1,2]".into(),
        "eval.max_new_tokens=8".into(),
    ] {
        args.extend(["--set".to_string(), kv]);
    }
    ok(&strs(&args));
    let lines = json_lines(&dir.path().join("ei/metrics.jsonl"));
    let samples: Vec<f64> = lines.iter().map(|l| l["samples_seen"].as_f64().unwrap()).collect();
    assert_eq!(samples, vec![0.0, 18.0, 36.0], "cumulative samples per round");
    assert!(lines[1]["pool_size"].as_f64().unwrap() >= 6.0, "references are in the pool");
    assert!(lines.iter().all(|l| l["eval/maj@1"].is_number() && l["eval/pass@2"].is_number()));
    assert!(dir.path().join("ei/final/model.safetensors").exists());
    resumes_exactly(&args, dir.path(), "ei", &["checkpoints/step-2"]);
}

/// Runs a command that already ran (`args`, writing run `name` into `out_dir`) again as
/// `NAME-b`, deletes its newest checkpoints (`gone`) and final model as if killed there, and
/// resumes it: the policy and the log (but for its clocks, `time/*`) must equal the straight
/// run's.
fn resumes_exactly(args: &[String], out_dir: &Path, name: &str, gone: &[&str]) {
    let again = [args, &["--set".to_string(), format!("run.name={name}-b")]].concat();
    ok(&strs(&again));
    let resumed = out_dir.join(format!("{name}-b"));
    for gone in gone.iter().chain(&["final"]) {
        std::fs::remove_dir_all(resumed.join(gone)).unwrap();
    }
    let err = fails(&strs(&again));
    assert!(err.contains("--resume"), "{err}");
    ok(&strs(&[&again[..], &["--resume".to_string()]].concat()));
    let straight = out_dir.join(name);
    assert!(same(&weights(&straight.join("final"), false), &weights(&resumed.join("final"), false)), "{name}");
    let log = |run: &Path| -> Vec<serde_json::Value> {
        let mut lines = json_lines(&run.join("metrics.jsonl"));
        for line in &mut lines {
            line.as_object_mut().unwrap().retain(|key, _| !key.starts_with("time/"));
        }
        lines
    };
    assert_eq!(log(&straight), log(&resumed), "{name}");
}

#[test]
fn pretrain_then_sft_write_their_run_folders() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = format!("run.out_dir={}", s(dir.path()));
    let common =
        ["--set", &out_dir, "--set", "train.max_steps=3", "--set", "eval.problems=2", "--set", "eval.max_new_tokens=8"];
    let pretrain = [
        &["pretrain", "--set", "init.preset=tiny", "--set", "init.vocab_size=300", "--set", "corpus.documents=60"][..],
        &["--set", "task=builtin:1", "--set", "train.max_seq_len=64", "--set", "prompt.shots=1"],
        &common,
    ]
    .concat();
    ok(&pretrain);
    let pre = dir.path().join("pretrain");
    for file in
        ["config.toml", "metrics.jsonl", "final/model.safetensors", "final/tokenizer.json", "checkpoints/step-3"]
    {
        assert!(pre.join(file).exists(), "pretrain wrote no {file}");
    }
    let model = format!("model={}", s(&pre.join("final")));
    let sft =
        [&["sft", "--set", &model, "--set", "task=builtin:1", "--set", "train_problems=20"][..], &common].concat();
    ok(&sft);
    let run = dir.path().join("sft");
    assert!(run.join("best/model.safetensors").exists() && run.join("final/model.safetensors").exists());
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(config.contains("train_problems = 20") && config.contains("[train]"), "{config}");
    let last: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().last().unwrap())
            .unwrap();
    assert_eq!(last["step"], 3.0);
    assert!(last["eval/maj@1"].is_number() && last["loss"].is_number() && last["tokens_per_s"].is_number());
    // A finished run is neither silently overwritten nor resumed by accident.
    assert!(fails(&sft).contains("--resume"));
    ok(&[&sft[..], &["--resume"]].concat());
    ok(&[&sft[..], &["--force"]].concat());
}

/// `command` then `--set KEY=VALUE` for each setting, then `extra`.
fn with_sets(command: &[&str], sets: &[String], extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = command.iter().map(|a| a.to_string()).collect();
    for kv in sets {
        args.extend(["--set".to_string(), kv.clone()]);
    }
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

/// A tiny from-scratch policy in `dir/model`, and the settings of a two-update PPO or GRPO run
/// from it into `dir`.
fn two_tiny_updates(dir: &Path) -> Vec<String> {
    let model = dir.join("model");
    ok(&["model", "init", "--preset", "tiny", "--task", "builtin:1", "--vocab-size", "300", "--out", s(&model)]);
    vec![
        format!("model={}", s(&model)),
        format!("run.out_dir={}", s(dir)),
        "task=builtin:1".into(),
        "questions=20".into(),
        "updates=2".into(),
        "prompts_per_update=4".into(),
        "sampling.max_new_tokens=10".into(),
        "sampling.temperature=1".into(),
    ]
}

/// A model folder's parameters by name, with or without its value head.
fn weights(path: &Path, head: bool) -> Vec<(String, tch::Tensor)> {
    let m = reasonrl::model::CausalLm::load(path, tch::Device::Cpu, head).unwrap();
    let is_head = |name: &str| name.starts_with(reasonrl::model::llama::HEAD_PREFIX);
    let mut v: Vec<(String, tch::Tensor)> =
        m.vs.variables().into_iter().filter(|(name, _)| head || !is_head(name)).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn same(a: &[(String, tch::Tensor)], b: &[(String, tch::Tensor)]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|((n, x), (m, y))| n == m && x.equal(y))
}

/// The parsed lines of a JSON-lines file (metrics.jsonl, samples.jsonl).
fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

#[test]
fn orm_reranks_and_rcrl_learns_from_labels() {
    let dir = tempfile::tempdir().unwrap();
    let (model, samples) = (dir.path().join("model"), dir.path().join("samples.jsonl"));
    ok(&["model", "init", "--preset", "tiny", "--task", "builtin:1", "--vocab-size", "300", "--out", s(&model)]);
    // A from-scratch model is never right; mark every other solution right so the ORM has both
    // classes (this test is about the plumbing; tests/train.rs checks that an ORM learns).
    let sample = ["sample", "--model", s(&model), "--task", "builtin:1", "--limit", "8", "-k", "2"];
    ok(&[&sample[..], &["--temperature", "1", "--max-new-tokens", "10", "--out", s(&samples)]].concat());
    let marked: Vec<String> = std::fs::read_to_string(&samples)
        .unwrap()
        .lines()
        .enumerate()
        .map(|(i, l)| {
            let mut e: serde_json::Value = serde_json::from_str(l).unwrap();
            e["correct"] = i.is_multiple_of(2).into();
            e.to_string()
        })
        .collect();
    std::fs::write(&samples, marked.join("\n")).unwrap();
    let out_dir = format!("run.out_dir={}", s(dir.path()));
    let orm_sets = [
        format!("model={}", s(&model)),
        format!("episodes={}", s(&samples)),
        out_dir.clone(),
        "holdout=0.25".into(),
        "train.max_steps=3".into(),
        "train.eval_every=1".into(),
        "best_by=auroc_within".into(),
    ];
    ok(&strs(&with_sets(&["orm"], &orm_sets, &[])));
    let orm = dir.path().join("orm/final");
    assert!(orm.join("head.safetensors").exists() && orm.join("tokenizer.json").exists());
    assert!(dir.path().join("orm/best/head.safetensors").exists(), "best/ is kept by the within-question AUROC");
    let metrics = std::fs::read_to_string(dir.path().join("orm/metrics.jsonl")).unwrap();
    assert!(metrics.contains("orm/auroc") && metrics.contains("orm/ece"), "{metrics}");

    // Reranking with it.
    let eval_sets = [
        format!("model={}", s(&model)),
        "task=builtin:1".into(),
        "problems=3".into(),
        "samples_per_prompt=2".into(),
        "ks=[1,2]".into(),
        "max_new_tokens=8".into(),
        format!("out={}", s(&dir.path().join("eval"))),
    ];
    assert!(ok(&strs(&with_sets(&["eval", "--orm", s(&orm)], &eval_sets, &[]))).contains("rerank@2"));
    // An ORM of LoRA adapters and a trained head over the frozen policy scores as well.
    let lora_orm = [&orm_sets[..], &["run.name=orm-lora".into(), "lora.rank=4".into()]].concat();
    ok(&strs(&with_sets(&["orm"], &lora_orm, &[])));
    let orm_lora = dir.path().join("orm-lora/final");
    assert!(orm_lora.join("adapter_model.safetensors").exists() && orm_lora.join("head.safetensors").exists());
    let scored = ok(&strs(&with_sets(&["eval", "--orm", s(&orm_lora)], &eval_sets, &["--force"])));
    assert!(scored.contains("rerank@2"), "{scored}");
    let err = fails(&strs(&with_sets(&["eval", "--orm", s(&model)], &eval_sets, &["--force"])));
    assert!(err.contains("head.safetensors"), "the policy itself is not an ORM: {err}");

    // RCRL with per-step labels from the ORM, the references in the pool.
    let rcrl_sets = [
        format!("model={}", s(&model)),
        "task=builtin:1".into(),
        out_dir,
        "labels=orm".into(),
        format!("orm={}", s(&orm)),
        "rounds=2".into(),
        "questions=4".into(),
        "include_references=true".into(),
        "sampling.samples_per_prompt=2".into(),
        "sampling.max_new_tokens=8".into(),
        "train.max_steps=2".into(),
        "eval.problems=3".into(),
        "eval.samples_per_prompt=2".into(),
        "eval.ks=[1,2]".into(),
        "eval.max_new_tokens=8".into(),
    ];
    let rcrl = with_sets(&["rcrl"], &rcrl_sets, &[]);
    ok(&strs(&rcrl));
    resumes_exactly(&rcrl, dir.path(), "rcrl", &["checkpoints/step-2"]);
    let lines = json_lines(&dir.path().join("rcrl/metrics.jsonl"));
    let seen: Vec<f64> = lines.iter().map(|l| l["samples_seen"].as_f64().unwrap()).collect();
    assert_eq!(seen, vec![0.0, 8.0, 16.0]);
    assert!(lines[1]["pool_size"].as_f64().unwrap() >= 4.0 && lines[2]["pool_good_label_fraction"].is_number());

    // The policy keeps its control tokens and samples conditioned on [GOOD] before every step;
    // the base model has no such token.
    let mut conditioned = eval_sets.to_vec();
    conditioned[0] = format!("model={}", s(&dir.path().join("rcrl/final")));
    conditioned.extend(["prompt.condition=[GOOD]".into(), "prompt.condition_every_step=true".into()]);
    ok(&strs(&with_sets(&["eval"], &conditioned, &["--force"])));
    let mut unknown = eval_sets.to_vec();
    unknown.push("prompt.condition=[GOOD]".into());
    let err = fails(&strs(&with_sets(&["eval"], &unknown, &["--force"])));
    assert!(err.contains("[GOOD]"), "{err}");
}

#[test]
fn ppo_and_grpo_run_their_updates() {
    let dir = tempfile::tempdir().unwrap();
    let mut common = two_tiny_updates(dir.path());
    common.extend([
        "minibatches=2".into(),
        "eval_every=1".into(),
        "eval.problems=3".into(),
        "eval.samples_per_prompt=2".into(),
        "eval.ks=[1,2]".into(),
        "eval.max_new_tokens=8".into(),
    ]);
    let mut ppo = common.to_vec();
    ppo.extend([
        "epochs=2".into(),
        "reward.kind=heuristic".into(),
        "critic=separate".into(),
        "sampling.samples_per_prompt=1".into(),
        // Mixed precision: the policy, critic and reference score and train with bf16 matmuls,
        // so the f32 sampler's log-probs are not the trainer's and their gap is logged.
        "optim.precision=bf16".into(),
    ]);
    ok(&strs(&with_sets(&["ppo"], &ppo, &[])));
    let mut grpo = common.to_vec();
    // Without a KL penalty no reference policy is loaded or run, and none is logged.
    grpo.extend(
        [
            "sampling.samples_per_prompt=3",
            "kl_coef=0",
            "clip_high=0.28",
            "aggregation=seq-mean-token-mean",
            "mask_truncated=true",
        ]
        .map(String::from),
    );
    ok(&strs(&with_sets(&["grpo", "--estimator", "rloo"], &grpo, &[])));
    for (run, keys) in [
        (
            "ppo",
            &[
                "ppo/clip_low_fraction",
                "ppo/micro_batches",
                "ppo/value_loss",
                "kl/reference",
                "value/explained_variance",
                "rollout/logprob_diff_mean",
            ][..],
        ),
        (
            "grpo",
            &["grpo/clip_high_fraction", "grpo/informative_groups", "reward/std", "response_length/truncated"][..],
        ),
    ] {
        let lines = json_lines(&dir.path().join(run).join("metrics.jsonl"));
        assert_eq!(lines.len(), 3, "{run}: the start and two updates");
        let last = &lines[2];
        assert!(keys.iter().all(|k| last.get(*k).is_some()), "{run}: {last}");
        assert!(last["reward/mean"].is_number() && last["eval/maj@1"].is_number(), "{run}: {last}");
        assert_eq!(last.get("kl/reference").is_some(), run == "ppo", "{run}: {last}");
        assert_eq!(last.get("rollout/logprob_diff_mean").is_some(), run == "ppo", "f32 samples exactly: {last}");
        let per_update = if run == "ppo" { 4.0 } else { 12.0 };
        assert_eq!(last["samples_seen"].as_f64(), Some(2.0 * per_update), "{run}");
        assert!(dir.path().join(run).join("final/model.safetensors").exists());
    }
}

#[test]
fn ppo_critic_warmup_trains_the_value_head_alone() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    let mut sets = two_tiny_updates(dir.path());
    sets.extend([
        "sampling.samples_per_prompt=2".into(),
        "eval_every=0".into(),
        "eval.problems=2".into(),
        "eval.samples_per_prompt=0".into(),
        "eval.max_new_tokens=4".into(),
        "optim.lr=1e-2".into(),
        "optim.warmup_steps=0".into(),
        "value_lr=1e-2".into(),
        "critic_warmup_updates=1".into(),
        "save_every=1".into(),
        "target_kl=0".into(),
    ]);
    ok(&strs(&with_sets(&["ppo"], &sets, &[])));
    let policy = |path: &Path| weights(path, false);
    let (start, warm, last) =
        (policy(&model), policy(&dir.path().join("ppo/checkpoints/step-1")), policy(&dir.path().join("ppo/final")));
    assert!(same(&start, &warm), "the policy is untouched while only the critic trains");
    assert!(!same(&start, &last), "the policy trains after the warm-up");
    let lines = json_lines(&dir.path().join("ppo/metrics.jsonl"));
    assert_eq!((lines[1]["lr"].as_f64(), lines[1]["lr/value"].as_f64()), (Some(0.0), Some(1e-2)));
    assert!(lines[2]["lr"].as_f64().unwrap() > 0.0);
}

#[test]
fn ppo_and_grpo_resume_exactly() {
    // Each runs three updates straight through, and again with its newest checkpoint (and final
    // model) deleted, as if killed after update 2, then resumed: the same policy, critic and log.
    let dir = tempfile::tempdir().unwrap();
    let mut common = two_tiny_updates(dir.path());
    common.extend(
        [
            "updates=3",
            "save_every=1",
            "eval_every=0",
            "eval.problems=2",
            "eval.samples_per_prompt=0",
            "eval.max_new_tokens=4",
        ]
        .map(String::from),
    );
    let ppo = ["critic=separate", "adaptive_kl=true", "sampling.samples_per_prompt=2", "optim.lr=1e-3", "target_kl=0"];
    let grpo = ["sampling.samples_per_prompt=2", "optim.lr=1e-3"];
    // Dynamic sampling draws a varying number of prompts per update; the checkpoint records them.
    let dapo = ["sampling.samples_per_prompt=4", "optim.lr=1e-3", "dynamic_sampling=true", "max_extra_batches=2"];
    for (name, extra) in [("ppo", &ppo[..]), ("grpo", &grpo[..]), ("dapo", &dapo[..])] {
        let algorithm = if name == "ppo" { "ppo" } else { "grpo" };
        let mut sets = [&common[..], &[format!("run.name={name}")]].concat();
        sets.extend(extra.iter().map(|s| s.to_string()));
        let args = with_sets(&[algorithm], &sets, &[]);
        ok(&strs(&args));
        if algorithm == "ppo" {
            resumes_exactly(&args, dir.path(), "ppo", &["checkpoints/step-3", "critic/checkpoints/step-3"]);
            let critic = |run: &str| weights(&dir.path().join(run).join("critic/checkpoints/step-3"), true);
            assert!(same(&critic("ppo"), &critic("ppo-b")), "ppo: critic");
        } else {
            resumes_exactly(&args, dir.path(), name, &["checkpoints/step-3"]);
        }
    }
}

#[test]
fn every_trainer_trains_lora_adapters_over_a_frozen_base() {
    let dir = tempfile::tempdir().unwrap();
    let mut common = two_tiny_updates(dir.path());
    let model = dir.path().join("model");
    let lora = ["lora.rank=4".to_string(), "lora.alpha=8".into(), "lora.dropout=0.05".into()];
    let is_adapter = |run: &str| {
        let f = dir.path().join(run).join("final");
        f.join("adapter_config.json").exists()
            && f.join("adapter_model.safetensors").exists()
            && !f.join("model.safetensors").exists()
    };
    let base_of = |run: &str| {
        let w = weights(&dir.path().join(run).join("final"), false);
        w.into_iter().filter(|(n, _)| !n.contains(".lora_")).collect::<Vec<_>>()
    };
    let base = weights(&model, false);

    // SFT: an adapter folder over the untouched base, which eval reads and merge-lora folds in.
    let out_dir = format!("run.out_dir={}", s(dir.path()));
    let sft = [
        format!("model={}", s(&model)),
        out_dir.clone(),
        "task=builtin:1".into(),
        "train.max_steps=3".into(),
        "eval.problems=2".into(),
        "eval.max_new_tokens=4".into(),
    ];
    ok(&strs(&with_sets(&["sft"], &[&sft[..], &lora[..]].concat(), &[])));
    assert!(is_adapter("sft") && same(&base_of("sft"), &base), "sft");
    let merged = dir.path().join("merged");
    ok(&["model", "merge-lora", s(&model), s(&dir.path().join("sft/final")), s(&merged)]);
    let ids = tch::Tensor::from_slice(&[1i64, 5, 9, 23, 42]).unsqueeze(0);
    let logits = |p: &Path| reasonrl::model::CausalLm::load(p, tch::Device::Cpu, false).unwrap().forward_logits(&ids);
    let diff = (logits(&merged) - logits(&dir.path().join("sft/final"))).abs().max().double_value(&[]);
    assert!(diff < 1e-5, "merged vs adapter: {diff}");
    let eval = ["eval", "--set", &format!("model={}", s(&dir.path().join("sft/final"))), "--set", "problems=2"];
    ok(&[
        &eval[..],
        &["--set", "samples_per_prompt=0", "--set", "max_new_tokens=4", "--set"],
        &[&format!("out={}", s(&dir.path().join("ev")))[..]],
    ]
    .concat());

    // PPO (a separate critic with its own adapters and value head) and GRPO, which resumes exactly.
    common.extend(lora.iter().cloned());
    common.extend(["eval.problems=2".into(), "eval.samples_per_prompt=0".into(), "eval.max_new_tokens=4".into()]);
    let ppo = [&common[..], &["critic=separate".into(), "sampling.samples_per_prompt=2".into(), "save_every=2".into()]]
        .concat();
    ok(&strs(&with_sets(&["ppo"], &ppo, &[])));
    assert!(is_adapter("ppo") && same(&base_of("ppo"), &base), "ppo");
    let critic = dir.path().join("ppo/critic/checkpoints/step-2");
    assert!(critic.join("adapter_model.safetensors").exists() && critic.join("head.safetensors").exists());
    let grpo = with_sets(
        &["grpo"],
        &[&common[..], &["sampling.samples_per_prompt=2".into(), "save_every=1".into()]].concat(),
        &[],
    );
    ok(&strs(&grpo));
    assert!(is_adapter("grpo"), "grpo");
    resumes_exactly(&grpo, dir.path(), "grpo", &["checkpoints/step-2"]);

    // EI, each round from fresh adapters; RCRL over the base with its control tokens.
    let rounds = [
        format!("model={}", s(&model)),
        out_dir,
        "task=builtin:1".into(),
        "rounds=2".into(),
        "questions=4".into(),
        "include_references=true".into(),
        "sampling.samples_per_prompt=2".into(),
        "sampling.max_new_tokens=6".into(),
        "train.max_steps=2".into(),
        "eval.problems=2".into(),
        "eval.samples_per_prompt=0".into(),
        "eval.max_new_tokens=4".into(),
    ];
    let ei = with_sets(&["ei"], &[&rounds[..], &lora[..], &["reset_to_base=true".into()]].concat(), &[]);
    ok(&strs(&ei));
    assert!(is_adapter("ei") && same(&base_of("ei"), &base), "ei");
    resumes_exactly(&ei, dir.path(), "ei", &["checkpoints/step-2"]);
    ok(&strs(&with_sets(&["rcrl"], &[&rounds[..], &lora[..]].concat(), &[])));
    assert!(is_adapter("rcrl"), "rcrl");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("rcrl/final/adapter_config.json")).unwrap())
            .unwrap();
    assert!(config["base_model_name_or_path"].as_str().unwrap().ends_with("rcrl/base"), "{config}");

    // Pretraining keeps its initialised model as the adapters' base.
    let pretrain = [
        "init.preset=tiny".to_string(),
        "init.vocab_size=300".into(),
        "corpus.documents=30".into(),
        "task=builtin:1".into(),
        "prompt.shots=1".into(),
        "train.max_steps=2".into(),
        "train.max_seq_len=64".into(),
        "eval.problems=2".into(),
        "eval.max_new_tokens=4".into(),
        format!("run.out_dir={}", s(dir.path())),
    ];
    ok(&strs(&with_sets(&["pretrain"], &[&pretrain[..], &lora[..]].concat(), &[])));
    assert!(is_adapter("pretrain") && dir.path().join("pretrain/base/model.safetensors").exists());
}

/// A task a from-scratch tiny model can learn in seconds (copy a digit: the built-in task's
/// arithmetic takes it ~2 epochs, minutes), so that LoRA's learning shows in greedy maj@1.
#[test]
fn lora_sft_raises_maj_at_1() {
    let dir = tempfile::tempdir().unwrap();
    let task = dir.path().join("copy");
    std::fs::create_dir(&task).unwrap();
    let verbs = ["Copy", "Repeat", "Say", "Write"];
    for (split, n) in [("train", 300), ("test", 50)] {
        let rows: String = (0..n)
            .map(|i: usize| {
                let (verb, digit) = (verbs[(i * 7 + n) % 4], (i * 3 + i / 10 + n) % 10);
                format!("{{\"question\": \"{verb} the digit {digit}.\", \"answer\": \"#### {digit}\"}}\n")
            })
            .collect();
        std::fs::write(task.join(format!("{split}.jsonl")), rows).unwrap();
    }
    let gsm = format!("gsm8k:{}", s(&task));
    let model = dir.path().join("model");
    ok(&["model", "init", "--preset", "tiny", "--task", &gsm, "--vocab-size", "300", "--out", s(&model)]);
    let maj1 = |m: &Path, name: &str| {
        let out = dir.path().join(name);
        let sets = [
            format!("model={}", s(m)),
            format!("task={gsm}"),
            "problems=50".into(),
            "samples_per_prompt=0".into(),
            "max_new_tokens=8".into(),
            "prompt.shots=0".into(),
            format!("out={}", s(&out)),
        ];
        ok(&strs(&with_sets(&["eval"], &sets, &[])));
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
        summary["maj1"]["value"].as_f64().unwrap()
    };
    let before = maj1(&model, "before");
    let sft = [
        format!("model={}", s(&model)),
        format!("task={gsm}"),
        format!("run.out_dir={}", s(dir.path())),
        "lora.rank=16".into(),
        "lora.alpha=32".into(),
        "train.max_steps=150".into(),
        "train.warmup_steps=4".into(),
        "train.lr=5e-3".into(),
        "train.batch_tokens=1024".into(),
        "eval.problems=20".into(),
        "eval.max_new_tokens=8".into(),
        "prompt.shots=0".into(),
    ];
    ok(&strs(&with_sets(&["sft"], &sft, &[])));
    let after = maj1(&dir.path().join("sft/final"), "after");
    assert!(after >= before + 0.4, "LoRA SFT: greedy maj@1 {before} -> {after}");
}

/// `reasonrl grade`: every field kept, `extracted` and `correct` added, the count on standard
/// error; a bad line or kind named; an existing --out file kept without --force.
#[test]
fn grade_regrades_any_file_of_responses() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("outputs.jsonl");
    let lines = [
        r#"{"id": 1, "response": "So **Answer:** 18 apples, then 20", "answer": "18"}"#,
        r#"{"id": 2, "response": "The final answer is $3\\sqrt{13}$.", "answer": "3\\sqrt{14}", "kind": "math"}"#,
        r#"{"id": 3, "response": "We get $\\frac{1}{8}$", "answer": "\\boxed{-\\frac{1}{8}}", "kind": "math"}"#,
        r#"{"id": 4, "response": "It is \\boxed{6+9i}.", "answer": "$6+9i$"}"#,
        r#####"{"id": 5, "response": "#### 1,000", "answer": 1000, "kind": "number"}"#####,
    ];
    std::fs::write(&file, lines.join("\n")).unwrap();
    let out = reasonrl(&["grade", s(&file)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let graded: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let verdicts: Vec<bool> = graded.iter().map(|g| g["correct"].as_bool().unwrap()).collect();
    assert_eq!(verdicts, [true, false, false, true, true]);
    let extracted: Vec<&str> = graded.iter().map(|g| g["extracted"].as_str().unwrap()).collect();
    assert_eq!(extracted, ["18", "3\\sqrt{13}", "0.125", "6+9i", "1000"]);
    assert_eq!((graded[1]["id"].as_i64(), graded[1]["kind"].as_str()), (Some(2), Some("math")), "fields kept");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("| all | 5 | 3 (60.0%) |"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let saved = dir.path().join("graded.jsonl");
    ok(&["grade", s(&file), "--out", s(&saved)]);
    assert_eq!(json_lines(&saved), graded);
    assert!(fails(&["grade", s(&file), "--out", s(&saved)]).contains("--force"));
    ok(&["grade", s(&file), "--out", s(&saved), "--force"]);

    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, format!("{}\n{{\"response\": \"4\", \"answer\": \"4\", \"kind\": \"numbr\"}}\n", lines[0]))
        .unwrap();
    let err = fails(&["grade", s(&bad)]);
    assert!(err.contains(&format!("{}:2:", s(&bad))) && err.contains("\"number\" or \"math\""), "{err}");
    std::fs::write(&bad, r#"{"response": "4", "answer": "x + 2 apples", "kind": "number"}"#).unwrap();
    let err = fails(&["grade", s(&bad)]);
    assert!(err.contains(":1:") && err.contains("not a number"), "{err}");
    std::fs::write(&bad, r#"{"answer": "4"}"#).unwrap();
    assert!(fails(&["grade", s(&bad)]).contains("missing field \"response\""));
}

/// DAPO's dynamic sampling: a group whose rewards are all equal never reaches the loss (every
/// kept group is informative), further batches are drawn in its place up to the cap, and
/// `samples_seen` counts every sample drawn.
#[test]
fn dynamic_sampling_trains_on_informative_groups_and_counts_every_sample() {
    let dir = tempfile::tempdir().unwrap();
    // One-digit answers: an untrained policy's stray digits are sometimes right, so some groups
    // are informative and some are not.
    let task = dir.path().join("digits");
    std::fs::create_dir(&task).unwrap();
    let rows: String = (0..20)
        .map(|i| format!("{{\"question\": \"Tom has {i} pens. How many?\", \"answer\": \"#### {}\"}}\n", i % 10))
        .collect();
    for split in ["train", "test"] {
        std::fs::write(task.join(format!("{split}.jsonl")), &rows).unwrap();
    }
    let (ppu, g, extra) = (4.0, 8.0, 2.0);
    let mut sets = two_tiny_updates(dir.path());
    sets.extend([
        format!("task=gsm8k:{}", s(&task)),
        "updates=3".into(),
        "sampling.samples_per_prompt=8".into(),
        "dynamic_sampling=true".into(),
        "max_extra_batches=2".into(),
        "eval_every=0".into(),
        "eval.problems=2".into(),
        "eval.samples_per_prompt=0".into(),
        "eval.max_new_tokens=4".into(),
    ]);
    ok(&strs(&with_sets(&["grpo"], &sets, &[])));
    let lines = json_lines(&dir.path().join("grpo/metrics.jsonl"));
    let mut seen = 0.0;
    for line in &lines[1..] {
        let drawn = (line["samples_seen"].as_f64().unwrap() - seen) / g;
        seen = line["samples_seen"].as_f64().unwrap();
        assert!(drawn >= ppu && drawn <= ppu * (1.0 + extra) && drawn % ppu == 0.0, "{line}");
        let kept = (line["grpo/kept_groups"].as_f64().unwrap() * drawn).round();
        assert_eq!(
            line["grpo/informative_groups"].as_f64().unwrap() * ppu,
            kept,
            "every kept group is informative: {line}"
        );
        if kept < ppu {
            assert_eq!(drawn, ppu * (1.0 + extra), "short of groups, every extra batch is drawn: {line}");
        }
    }
}
