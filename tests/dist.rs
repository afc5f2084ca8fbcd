//! Data-parallel runs on c10d (Gloo over loopback): N ranks must do what one rank does with N
//! times the batch, resume exactly, and fail cleanly when a rank dies.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_reasonrl");

fn ok(args: &[String]) -> String {
    let out = Command::new(BIN).args(args).output().expect("run reasonrl");
    assert!(out.status.success(), "reasonrl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// `args` on two local ranks through `reasonrl launch`.
fn ok2(args: &[String]) -> String {
    ok(&[&["launch".to_string(), "--nproc".into(), "2".into(), "--".into()], args].concat())
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// `command`, then `--set KEY=VALUE` for each setting.
fn with_sets(command: &str, sets: &[String]) -> Vec<String> {
    let mut args = vec![command.to_string()];
    for kv in sets {
        args.extend(["--set".to_string(), kv.clone()]);
    }
    args
}

fn tiny_model(dir: &Path) -> String {
    let model = dir.join("model");
    let args = ["model", "init", "--preset", "tiny", "--task", "builtin:1", "--vocab-size", "300", "--out"];
    ok(&[&args.map(String::from)[..], &[s(&model)]].concat());
    s(&model)
}

/// The largest absolute difference between two model folders' parameters (with the value heads
/// when both have one).
fn max_diff(a: &Path, b: &Path) -> f64 {
    let heads = a.join("head.safetensors").exists() && b.join("head.safetensors").exists();
    let load = |p: &Path| {
        let m = reasonrl::model::CausalLm::load(p, tch::Device::Cpu, heads).unwrap();
        let is_head = |name: &str| name.starts_with(reasonrl::model::llama::HEAD_PREFIX);
        let mut v: Vec<(String, tch::Tensor)> =
            m.vs.variables().into_iter().filter(|(name, _)| heads || !is_head(name)).collect();
        v.sort_by(|x, y| x.0.cmp(&y.0));
        v
    };
    let (a, b) = (load(a), load(b));
    assert_eq!(a.iter().map(|x| &x.0).collect::<Vec<_>>(), b.iter().map(|x| &x.0).collect::<Vec<_>>());
    a.iter().zip(&b).map(|((_, x), (_, y))| (x - y).abs().max().double_value(&[])).fold(0.0, f64::max)
}

fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Each metrics line's `key`, for the lines that have it.
fn column(path: &Path, key: &str) -> Vec<f64> {
    json_lines(path).iter().filter_map(|l| l[key].as_f64()).collect()
}

fn close(a: &[f64], b: &[f64], tolerance: f64) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tolerance)
}

#[test]
fn two_ranks_train_like_one_rank_with_twice_the_batch_and_resume_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let sets = |name: &str, batch_tokens: usize| {
        let model = tiny_model(&dir.path().join(name));
        with_sets(
            "sft",
            &[
                format!("model={model}"),
                format!("run.out_dir={}", s(dir.path())),
                format!("run.name={name}"),
                "task=builtin:1".into(),
                "train_problems=64".into(),
                "train.max_steps=20".into(),
                "train.warmup_steps=2".into(),
                "train.save_every=10".into(),
                format!("train.batch_tokens={batch_tokens}"),
                "eval.problems=6".into(),
                "eval.max_new_tokens=8".into(),
                "log.tensorboard=true".into(),
            ],
        )
    };
    ok(&sets("one", 1024));
    let two = sets("two", 512);
    ok2(&two);
    let run = |name: &str| dir.path().join(name);
    let diff = max_diff(&run("one").join("final"), &run("two").join("final"));
    assert!(diff <= 1e-5, "2 ranks x 512 tokens vs 1 rank x 1024 after 20 steps: max weight difference {diff}");
    let (loss1, loss2) =
        (column(&run("one").join("metrics.jsonl"), "loss"), column(&run("two").join("metrics.jsonl"), "loss"));
    assert!(close(&loss1, &loss2, 1e-5), "{loss1:?} vs {loss2:?}");
    assert_eq!(
        column(&run("two").join("metrics.jsonl"), "samples_seen"),
        column(&run("one").join("metrics.jsonl"), "samples_seen")
    );

    // Killed after step 10's checkpoint: a 2-rank resume ends where the straight run did.
    for gone in ["checkpoints/step-20", "final", "best"] {
        std::fs::remove_dir_all(run("two").join(gone)).unwrap();
    }
    let before = column(&run("two").join("metrics.jsonl"), "loss");
    ok2(&[&two[..], &["--resume".to_string()]].concat());
    assert_eq!(max_diff(&run("one").join("final"), &run("two").join("final")), diff, "the resumed run is the same run");
    assert_eq!(column(&run("two").join("metrics.jsonl"), "loss"), before, "the log is rewritten the same");
    // Rank 0 alone logs: each line once in TensorBoard.
    common::trackers::assert_tensorboard_holds_the_log(&run("two"));
}

#[test]
fn two_ranks_sample_and_run_expert_iteration_like_one() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    // Sampling at temperature 1: 13 questions split 6/7, every sample the one rank's.
    let sample = |out: &str| {
        let args = [
            "sample",
            "--task",
            "builtin:1",
            "--limit",
            "13",
            "-k",
            "3",
            "--temperature",
            "1",
            "--max-new-tokens",
            "16",
        ];
        [&args.map(String::from)[..], &["--model".into(), model.clone(), "--out".into(), s(&dir.path().join(out))]]
            .concat()
    };
    ok(&sample("one.jsonl"));
    ok2(&sample("two.jsonl"));
    let (one, two) = (json_lines(&dir.path().join("one.jsonl")), json_lines(&dir.path().join("two.jsonl")));
    assert_eq!(one.len(), 39);
    // The same tokens, text and answers, in the same order; log-probs agree to float rounding
    // (a row's batch mates change with the split).
    let logprobs = |e: &serde_json::Value| -> Vec<f64> {
        e["logprobs"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
    };
    for (a, b) in one.iter().zip(&two) {
        let (mut a, mut b) = (a.clone(), b.clone());
        assert!(close(&logprobs(&a), &logprobs(&b), 1e-4), "{a} vs {b}");
        (a["logprobs"], b["logprobs"]) = (serde_json::Value::Null, serde_json::Value::Null);
        assert_eq!(a, b, "the gathered episodes are the one rank's, in the same order");
    }

    let ei = |name: &str, batch_tokens: usize| {
        with_sets(
            "ei",
            &[
                format!("model={model}"),
                format!("run.out_dir={}", s(dir.path())),
                format!("run.name={name}"),
                "task=builtin:1".into(),
                "rounds=2".into(),
                "questions=9".into(),
                "sampling.samples_per_prompt=3".into(),
                "sampling.max_new_tokens=12".into(),
                "include_references=true".into(),
                "train.max_steps=3".into(),
                format!("train.batch_tokens={batch_tokens}"),
                "eval.problems=5".into(),
                "eval.samples_per_prompt=2".into(),
                "eval.ks=[1,2]".into(),
                "eval.max_new_tokens=8".into(),
            ],
        )
    };
    ok(&ei("ei-one", 1024));
    ok2(&ei("ei-two", 512));
    let run = |name: &str| dir.path().join(name);
    for round in [1, 2] {
        let pool = |name: &str| {
            std::fs::read_to_string(run(name).join(format!("checkpoints/step-{round}/pool.json"))).unwrap()
        };
        assert_eq!(pool("ei-one"), pool("ei-two"), "round {round}'s pool");
    }
    assert_eq!(json_lines(&run("ei-one").join("metrics.jsonl")), json_lines(&run("ei-two").join("metrics.jsonl")));
    let diff = max_diff(&run("ei-one").join("final"), &run("ei-two").join("final"));
    assert!(diff <= 1e-5, "EI policies differ by {diff}");
}

#[test]
fn grpo_family_and_ppo_minibatches_split_over_two_ranks_or_into_micro_batches_like_one() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    // One-digit answers: an untrained policy's stray digits are sometimes right, so the
    // advantages are not all zero and the updates move the policy.
    let task = dir.path().join("digits");
    std::fs::create_dir(&task).unwrap();
    let rows: String = (0..20)
        .map(|i| {
            format!(
                "{{\"question\": \"Tom has {i} pens and {} more. How many?\", \"answer\": \"#### {}\"}}\n",
                i % 3,
                (i + i % 3) % 10
            )
        })
        .collect();
    for split in ["train", "test"] {
        std::fs::write(task.join(format!("{split}.jsonl")), &rows).unwrap();
    }
    // Every aggregation of the GRPO family (token-mean; GSPO's sequence ratio per response;
    // Dr. GRPO's constant normaliser with clip-higher and dual-clip), and PPO with both clips.
    let variants: [(&str, &str, &[&str]); 4] = [
        ("grpo", "grpo", &[]),
        ("gspo", "grpo", &["aggregation=seq-mean-token-mean", "ratio=sequence"]),
        (
            "drgrpo",
            "grpo",
            &[
                "aggregation=seq-mean-token-sum-norm",
                "scale_by_std=false",
                "clip_high=0.28",
                "dual_clip=3",
                "overlong_buffer=16",
                "kl_estimator=\"k2\"",
            ],
        ),
        ("ppo", "ppo", &["clip_high=0.28", "dual_clip=3"]),
    ];
    for (label, algorithm, extra) in variants {
        let sets = |name: &str| {
            let mut sets = vec![
                format!("model={model}"),
                format!("run.out_dir={}", s(dir.path())),
                format!("run.name={name}"),
                format!("task=gsm8k:{}", s(&task)),
                "questions=20".into(),
                "updates=2".into(),
                "prompts_per_update=8".into(),
                "sampling.max_new_tokens=32".into(),
                "sampling.temperature=1".into(), // the settings this test was written for
                "sampling.batch_size=128".into(),
                "minibatches=2".into(),
                "optim.lr=1e-3".into(),
                "optim.warmup_steps=1".into(),
                "eval.problems=3".into(),
                "eval.samples_per_prompt=2".into(),
                "eval.ks=[1,2]".into(),
                "eval.max_new_tokens=8".into(),
            ];
            let k = if algorithm == "ppo" { 2 } else { 8 }; // GRPO's group: 8 solutions per prompt
            sets.push(format!("sampling.samples_per_prompt={k}"));
            sets.extend(extra.iter().map(|x| x.to_string()));
            with_sets(algorithm, &sets)
        };
        let (one, two, micro) = (format!("{label}-one"), format!("{label}-two"), format!("{label}-micro"));
        ok(&sets(&one));
        ok2(&sets(&two));
        // A budget of 100 tokens cuts each minibatch into one episode per micro-batch.
        ok(&[sets(&micro), vec!["--set".into(), "optim.batch_tokens=100".into()]].concat());
        for (other, parts) in [(&two, 1.0), (&micro, 4.0)] {
            let diff = max_diff(&dir.path().join(&one).join("final"), &dir.path().join(other).join("final"));
            assert!(diff <= 1e-5, "{label}: {other}'s policy differs by {diff}");
            let algorithm = if algorithm == "ppo" { "ppo" } else { "grpo" };
            let cuts = column(&dir.path().join(other).join("metrics.jsonl"), &format!("{algorithm}/micro_batches"));
            assert!(!cuts.is_empty() && cuts.iter().all(|&n| n >= parts), "{label}: {other} cut into {cuts:?}");
        }
        let moved = max_diff(Path::new(&model), &dir.path().join(&one).join("final"));
        assert!(moved > 1e-4, "{label}: the updates changed nothing ({moved})");
        let loss = if algorithm == "ppo" { "ppo/policy_loss" } else { "grpo/policy_loss" };
        let (a, b) = (
            column(&dir.path().join(&one).join("metrics.jsonl"), loss),
            column(&dir.path().join(&two).join("metrics.jsonl"), loss),
        );
        assert!(!a.is_empty() && close(&a, &b, 1e-5), "{label}: logged losses {a:?} vs {b:?}");
    }
}

#[test]
fn a_killed_rank_stops_the_other_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let port = reasonrl::launch::free_port().unwrap();
    let args = with_sets(
        "sft",
        &[
            format!("model={model}"),
            format!("run.out_dir={}", s(dir.path())),
            "task=builtin:1".into(),
            "train_problems=64".into(),
            "run.name=killed".into(),
            "train.max_steps=100000".into(),
            "train.log_every=1".into(),
            "eval.problems=0".into(),
        ],
    );
    let rank = |r: usize| {
        Command::new(BIN)
            .args(&args)
            .envs([("RANK", r.to_string()), ("WORLD_SIZE", "2".into()), ("MASTER_ADDR", "127.0.0.1".into())])
            .env("MASTER_PORT", port.to_string())
            .env("REASONRL_DIST_TIMEOUT", "30")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (mut survivor, mut victim) = (rank(0), rank(1));
    let metrics = dir.path().join("killed/metrics.jsonl");
    let started = Instant::now();
    let lines = || std::fs::read_to_string(&metrics).map_or(0, |text| text.matches('\n').count());
    while lines() < 3 {
        if started.elapsed() > Duration::from_secs(60) {
            let _ = (survivor.kill(), victim.kill());
            panic!("the 2-rank run never got going");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    victim.kill().unwrap();
    victim.wait().unwrap();
    let killed = Instant::now();
    let out = survivor.wait_with_output().unwrap();
    let waited = killed.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "rank 0 went on alone: {err}");
    assert!(waited < Duration::from_secs(40), "rank 0 took {waited:?} to notice");
    let last = err.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
    assert!(last.starts_with("error: distributed") && last.contains("rank 0 of 2"), "{err}");
    eprintln!("rank 0 stopped {waited:?} after rank 1 was killed: {last}");
}
