//! Rewards from a verifier process (`reward.kind = "command"`) or an HTTP reward service
//! (`reward.kind = "http"`): a real Python process speaking the JSON-lines protocol, and a real
//! Python HTTP server in OpenRLHF's format, give the built-in sparse run seed for seed; a
//! verifier that dies, hangs or answers nonsense, or a service that fails, ends the update with
//! one line that names it, the sample and the reason, after which `--resume` redoes the update
//! as if nothing had happened.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_reasonrl");

fn reasonrl(args: &[String]) -> Output {
    Command::new(BIN).args(args).output().expect("run reasonrl")
}

fn ok(args: &[String]) {
    let out = reasonrl(args);
    assert!(out.status.success(), "reasonrl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/verifiers/sparse.py")
}

/// The HTTP reward service on loopback, killed when dropped.
struct Service(std::process::Child, u16);

impl Service {
    fn start() -> Self {
        use std::io::BufRead;
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/verifiers/http_sparse.py");
        let mut child = Command::new("python3").arg(path).stdout(std::process::Stdio::piped()).spawn().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
        let port = line.trim().parse().expect("the service prints its port");
        Service(child, port)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http(url: &str) -> Vec<String> {
    vec!["reward.kind=\"http\"".into(), format!("reward.url=\"{url}\"")]
}

/// A tiny policy and a task of one-digit answers (an untrained policy's stray digits are
/// sometimes right, so rewards vary and updates move the policy).
fn setup(dir: &Path) -> (String, String) {
    let model = dir.join("model");
    let init = ["model", "init", "--preset", "tiny", "--task", "builtin:1", "--vocab-size", "300", "--out"];
    ok(&[&init.map(String::from)[..], &[model.display().to_string()]].concat());
    let task = dir.join("digits");
    std::fs::create_dir(&task).unwrap();
    let rows: String = (0..20)
        .map(|i| {
            let (more, answer) = (i % 3, (i + i % 3) % 10);
            format!(
                "{{\"question\": \"Tom has {i} pens and {more} more. How many?\", \"answer\": \"#### {answer}\"}}\n"
            )
        })
        .collect();
    for split in ["train", "test"] {
        std::fs::write(task.join(format!("{split}.jsonl")), &rows).unwrap();
    }
    (model.display().to_string(), task.display().to_string())
}

/// `command`, then `--set KEY=VALUE` for each setting.
fn with_sets(command: &str, sets: &[String]) -> Vec<String> {
    let mut args = vec![command.to_string()];
    for kv in sets {
        args.extend(["--set".to_string(), kv.clone()]);
    }
    args
}

/// `reasonrl grpo` with 3 updates of 8 prompts x 4 into DIR/NAME, then `extra` settings.
fn grpo(dir: &Path, setup: &(String, String), name: &str, extra: &[String]) -> Vec<String> {
    pg("grpo", dir, setup, name, extra)
}

/// `grpo`'s run as `command` (ppo or grpo).
fn pg(command: &str, dir: &Path, (model, task): &(String, String), name: &str, extra: &[String]) -> Vec<String> {
    let sets = [
        format!("model={model}"),
        format!("task=gsm8k:{task}"),
        format!("run.out_dir={}", dir.display()),
        format!("run.name={name}"),
        "updates=3".into(),
        "prompts_per_update=8".into(),
        "sampling.samples_per_prompt=4".into(),
        "sampling.max_new_tokens=24".into(),
        "sampling.temperature=1".into(),
        "optim.lr=1e-3".into(),
        "optim.warmup_steps=1".into(),
        "eval.problems=2".into(),
        "eval.samples_per_prompt=0".into(),
        "eval.max_new_tokens=8".into(),
    ];
    with_sets(command, &[&sets[..], extra].concat())
}

fn command(text: &str) -> Vec<String> {
    vec!["reward.kind=\"command\"".into(), format!("reward.command={}", toml::Value::String(text.into()))]
}

fn params(dir: &Path) -> Vec<(String, tch::Tensor)> {
    let m = reasonrl::model::CausalLm::load(dir, tch::Device::Cpu, false).unwrap();
    let mut v = m.vs.variables().into_iter().collect::<Vec<_>>();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn same_policy(a: &Path, b: &Path) -> bool {
    params(a).iter().zip(params(b)).all(|((n, x), (m, y))| n == &m && x.equal(&y))
}

fn column(run: &Path, key: &str) -> Vec<f64> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()[key].as_f64()).collect()
}

#[test]
fn a_verifier_process_gives_the_builtin_sparse_run_seed_for_seed() {
    let dir = tempfile::tempdir().unwrap();
    let setup = setup(dir.path());
    ok(&grpo(dir.path(), &setup, "builtin", &[]));
    ok(&grpo(dir.path(), &setup, "verifier", &command(&format!("python3 {}", script().display()))));
    let (builtin, verifier) = (dir.path().join("builtin"), dir.path().join("verifier"));
    let rewards = column(&builtin, "reward/mean");
    assert!(rewards.len() == 3 && rewards.iter().any(|&r| r > 0.0), "{rewards:?}");
    assert_eq!(rewards, column(&verifier, "reward/mean"));
    assert!(same_policy(&builtin.join("final"), &verifier.join("final")), "the policies differ");
    let answered = column(&verifier, "reward/answered");
    assert!(answered.len() == 3 && answered.iter().all(|a| (0.0..=1.0).contains(a)), "{answered:?}");
    assert!(verifier.join("reward-0.log").exists());
}

#[test]
fn a_verifier_that_dies_hangs_or_garbles_ends_the_update_and_resume_redoes_it() {
    let dir = tempfile::tempdir().unwrap();
    let setup = setup(dir.path());
    ok(&grpo(dir.path(), &setup, "builtin", &[]));
    let builtin = dir.path().join("builtin");
    // Reply 40 is the 9th of update 2's 32 samples: the verifier breaks mid-batch.
    for (fault, reason) in [
        ("die", "it ended (exit status: 3) before replying"),
        ("hang", "no reply within 2 s"),
        ("garbage", "the reply `not a reply` is not"),
    ] {
        let once = dir.path().join(format!("{fault}.once"));
        let text = format!("FAULT={fault} FAULT_AFTER=40 FAULT_ONCE={} python3 {}", once.display(), script().display());
        let extra = [command(&text), vec!["reward.timeout_s=2".into(), "reward.batch_size=16".into()]].concat();
        let args = grpo(dir.path(), &setup, fault, &extra);
        let out = reasonrl(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{fault}: {stderr}");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{fault}: {stderr}");
        let error = errors[0];
        for part in
            [&format!("reward command `{text}`"), "sample `", reason, "update 2 was not trained; `--resume` redoes it"]
        {
            assert!(error.contains(part), "{fault}: `{part}` not in: {error}");
        }
        assert!(error.contains("breaking on purpose"), "{fault}: the verifier's last stderr line: {error}");
        // Resumed (the verifier now goes through), the run is the uninterrupted one.
        ok(&[args, vec!["--resume".into()]].concat());
        let run = dir.path().join(fault);
        assert_eq!(column(&run, "reward/mean"), column(&builtin, "reward/mean"), "{fault}");
        assert_eq!(column(&run, "update"), column(&builtin, "update"), "{fault}");
        assert!(same_policy(&builtin.join("final"), &run.join("final")), "{fault}: the policies differ");
    }
}

#[test]
fn an_http_reward_service_gives_the_builtin_sparse_run_and_a_failing_one_names_its_url() {
    let dir = tempfile::tempdir().unwrap();
    let setup = setup(dir.path());
    let service = Service::start();
    ok(&grpo(dir.path(), &setup, "builtin", &[]));
    let url = format!("http://127.0.0.1:{}/reward", service.1);
    let extra = [http(&url), vec!["reward.batch_size=7".into(), "reward.concurrency=3".into()]].concat();
    ok(&grpo(dir.path(), &setup, "service", &extra));
    let (builtin, run) = (dir.path().join("builtin"), dir.path().join("service"));
    assert_eq!(column(&run, "reward/mean"), column(&builtin, "reward/mean"));
    assert!(same_policy(&builtin.join("final"), &run.join("final")), "the policies differ");
    assert_eq!(column(&run, "reward/answered").len(), 3);

    // A service that answers 500 is retried, then named; `--resume` at a working URL goes on.
    let failing = format!("http://127.0.0.1:{}/fail", service.1);
    let args = grpo(dir.path(), &setup, "failing", &[http(&failing), vec!["reward.retries=1".into()]].concat());
    let out = reasonrl(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let error = stderr.lines().find(|l| l.starts_with("error:")).unwrap_or_else(|| panic!("{stderr}"));
    for part in [&format!("reward service {failing}"), "sample `", "answered 500 (2 tries)", "`--resume` redoes it"] {
        assert!(error.contains(part), "`{part}` not in: {error}");
    }
    ok(&[args, vec!["--resume".into(), "--set".into(), format!("reward.url=\"{url}\"")]].concat());
    assert!(same_policy(&builtin.join("final"), &dir.path().join("failing").join("final")), "resumed policy differs");
}

#[test]
fn expert_iteration_keeps_what_the_verifier_passes_as_the_builtin_check_would() {
    let dir = tempfile::tempdir().unwrap();
    let (model, task) = setup(dir.path());
    let ei = |name: &str, extra: &[String]| {
        let sets = [
            format!("model={model}"),
            format!("task=gsm8k:{task}"),
            format!("run.out_dir={}", dir.path().display()),
            format!("run.name={name}"),
            "rounds=2".into(),
            "questions=8".into(),
            "sampling.samples_per_prompt=4".into(),
            "sampling.max_new_tokens=24".into(),
            "sampling.temperature=1".into(),
            "train.max_steps=2".into(),
            "eval.problems=2".into(),
            "eval.samples_per_prompt=0".into(),
            "eval.max_new_tokens=8".into(),
        ];
        ok(&with_sets("ei", &[&sets[..], extra].concat()));
        dir.path().join(name)
    };
    let builtin = ei("builtin", &[]);
    let verifier = ei("verifier", &command(&format!("python3 {}", script().display())));
    let solved = column(&builtin, "solved_fraction");
    assert!(solved.iter().any(|&s| s > 0.0), "nothing solved: the test shows nothing ({solved:?})");
    assert_eq!(solved, column(&verifier, "solved_fraction"));
    assert_eq!(column(&builtin, "pool_size"), column(&verifier, "pool_size"));
    assert_eq!(column(&verifier, "reward/answered").len(), 2, "the verifier's metric, each round");
    assert!(same_policy(&builtin.join("final"), &verifier.join("final")), "the policies differ");
    // A threshold above every reward keeps nothing.
    let strict = ei(
        "strict",
        &[command(&format!("python3 {}", script().display())), vec!["reward.threshold=2".into()]].concat(),
    );
    assert_eq!(column(&strict, "pool_size"), vec![0.0, 0.0]);
}

#[test]
fn weighted_terms_add_to_the_outcome_and_are_logged_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let setup = setup(dir.path());
    let term = format!(
        "reward.terms=[{{ name = \"answered\", weight = 0.5, kind = \"command\", command = {} }}]",
        toml::Value::String(format!("REWARD=answered python3 {}", script().display()))
    );
    ok(&grpo(dir.path(), &setup, "terms", &[term]));
    let run = dir.path().join("terms");
    let (mean, correct, answered) =
        (column(&run, "reward/mean"), column(&run, "reward/correct"), column(&run, "reward/term/answered"));
    assert!(mean.len() == 3 && correct.len() == 3 && answered.len() == 3, "{mean:?} {correct:?} {answered:?}");
    assert!(answered.iter().any(|&a| a > 0.0), "{answered:?}");
    for ((m, c), a) in mean.iter().zip(&correct).zip(&answered) {
        assert!((m - (c + 0.5 * a)).abs() < 1e-9, "reward {m} = correct {c} + 0.5 x answered {a}");
    }
    assert!(run.join("reward-answered-0.log").exists());
    // A term without a name, or one of a dense kind, is refused before any work.
    for (bad, says) in [
        ("reward.terms=[{ weight = 1.0 }]", "reward.terms[0].name"),
        ("reward.terms=[{ name = \"h\", kind = \"heuristic\" }]", "a term is an outcome reward"),
    ] {
        let out = reasonrl(&grpo(dir.path(), &setup, "bad", &[bad.to_string()]));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(says), "{bad}: {stderr}");
    }
}

/// `scripts/verifiers/math-verify.sh` (Math-Verify from PyPI, in its venv) judges the GSM8K test
/// set's reference solutions as the built-in checker does: each right against its own answer,
/// wrong against the next problem's. Runs when the venv can be made (pip reaches PyPI).
#[test]
fn math_verify_agrees_with_the_builtin_checker_on_gsm8k_references() {
    use reasonrl::reward::verifier::{CommandVerifier, Request};
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let setup = Command::new("sh")
        .arg("-c")
        .arg(format!("{} < /dev/null", root.join("scripts/verifiers/math-verify.sh").display()))
        .output()
        .unwrap();
    if !setup.status.success() {
        eprintln!("SKIPPED: the Math-Verify venv could not be made: {}", String::from_utf8_lossy(&setup.stderr));
        return;
    }
    let file = root.join("../shared/data/gsm8k/test.jsonl");
    let mut problems = reasonrl::task::load_gsm8k(&file).unwrap();
    problems.truncate(300);
    let mut requests = Vec::new();
    for (i, p) in problems.iter().enumerate() {
        let other = &problems[(i + 1) % problems.len()];
        for (n, solution) in [&p.reference_solution, &other.reference_solution].into_iter().enumerate() {
            requests.push(Request {
                id: format!("{}/{n}", p.id),
                question: p.question.clone(),
                prompt: p.question.clone(),
                response: solution.clone(),
                extracted: reasonrl::task::extract_answer(solution),
                answer: p.answer.clone(),
                solution: p.reference_solution.clone(),
            });
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let command = root.join("scripts/verifiers/math-verify.sh").display().to_string();
    let log = dir.path().join("reward.log");
    let mut verifier = CommandVerifier::start(&command, &log, std::time::Duration::from_secs(120), 64).unwrap();
    let start = std::time::Instant::now();
    let replies = verifier.score(&requests).unwrap();
    let seconds = start.elapsed().as_secs_f64();
    let mut disagree = Vec::new();
    for (request, reply) in requests.iter().zip(&replies) {
        let builtin = reasonrl::task::is_correct(&request.response, &request.answer);
        if builtin != (reply.reward >= 1.0) {
            disagree.push(format!("{} (built-in {builtin}, Math-Verify {})", request.id, reply.reward));
        }
    }
    eprintln!("Math-Verify: {} samples in {seconds:.1} s ({:.0}/s)", requests.len(), requests.len() as f64 / seconds);
    let right = requests.iter().filter(|r| r.id.ends_with("/0")).count();
    assert_eq!(right, 300);
    assert!(disagree.is_empty(), "{} of {} disagree: {disagree:?}", disagree.len(), requests.len());
}

#[test]
fn eval_takes_the_verifiers_verdicts_and_reports_its_means_also_on_saved_episodes() {
    let dir = tempfile::tempdir().unwrap();
    let (model, task) = setup(dir.path());
    let eval = |name: &str, extra: &[String]| {
        let sets = [
            format!("model={model}"),
            format!("task=gsm8k:{task}"),
            format!("out={}", dir.path().join(name).display()),
            "problems=10".into(),
            "samples_per_prompt=4".into(),
            "temperature=1".into(),
            "ks=[1,4]".into(),
            "max_new_tokens=16".into(),
        ];
        ok(&with_sets("eval", &[&sets[..], extra].concat()));
        let text = std::fs::read_to_string(dir.path().join(name).join("summary.json")).unwrap();
        serde_json::from_str::<serde_json::Value>(&text).unwrap()
    };
    let builtin = eval("builtin", &[]);
    let judged = eval("verifier", &command(&format!("python3 {}", script().display())));
    assert_eq!(builtin["maj1"], judged["maj1"]);
    assert_eq!(builtin["pass"], judged["pass"]);
    assert!(builtin.get("verifier").is_none());
    let means = &judged["verifier"];
    assert_eq!(means["greedy/reward/mean"].as_f64(), judged["maj1"]["value"].as_f64());
    assert!(means["samples/reward/answered"].is_number(), "{means}");
    // The saved episodes judged again by another verifier: whether an answer was found at all.
    let reuse = format!("reuse={}", dir.path().join("verifier").display());
    let answered =
        eval("answered", &[command(&format!("REWARD=answered python3 {}", script().display())), vec![reuse]].concat());
    assert_eq!(answered["maj1"]["value"].as_f64(), judged["verifier"]["greedy/reward/answered"].as_f64());
    assert!(std::fs::read_to_string(dir.path().join("answered").join("summary.md")).unwrap().contains("The verifier"));
}

#[test]
fn rcrl_labels_and_orm_labels_follow_the_verifier() {
    let dir = tempfile::tempdir().unwrap();
    let (model, task) = setup(dir.path());
    let run = |command_name: &str, name: &str, extra: &[String]| {
        let mut sets = vec![
            format!("model={model}"),
            format!("task=gsm8k:{task}"),
            format!("run.out_dir={}", dir.path().display()),
            format!("run.name={name}"),
            "questions=8".into(),
            "sampling.samples_per_prompt=4".into(),
            "sampling.max_new_tokens=24".into(),
            "sampling.temperature=1".into(),
            "train.max_steps=2".into(),
        ];
        if command_name == "rcrl" {
            sets.extend(["rounds=1".into(), "eval.problems=2".into(), "eval.samples_per_prompt=0".into()]);
        } else {
            sets.push("holdout=0.25".into());
        }
        ok(&with_sets(command_name, &[&sets[..], extra].concat()));
        dir.path().join(name)
    };
    // RCRL's outcome labels from the sparse verifier are the built-in ones.
    let builtin = run("rcrl", "rcrl-builtin", &[]);
    let judged = run("rcrl", "rcrl-verifier", &command(&format!("python3 {}", script().display())));
    let good = column(&builtin, "pool_good_label_fraction");
    assert!(good.iter().any(|&g| g > 0.0), "no good label: the test shows nothing ({good:?})");
    assert_eq!(good, column(&judged, "pool_good_label_fraction"));
    assert!(same_policy(&builtin.join("final"), &judged.join("final")), "the policies differ");
    // The ORM learns the verifier's labels: here, whether an answer was found at all.
    let orm = run("orm", "orm", &command(&format!("REWARD=answered python3 {}", script().display())));
    let text = std::fs::read_to_string(orm.join("samples.jsonl")).unwrap();
    let episodes: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(episodes.iter().any(|e| e["correct"] == true), "nothing answered: the test shows nothing");
    for e in &episodes {
        assert_eq!(e["correct"].as_bool().unwrap(), !e["extracted_answer"].is_null(), "{e}");
    }
}

/// PPO with a separate critic: a verifier that dies in update 2 leaves the policy's and the
/// critic's checkpoints of update 1, and `--resume` ends where the built-in run does.
#[test]
fn ppo_with_a_separate_critic_resumes_after_a_verifier_failure() {
    let dir = tempfile::tempdir().unwrap();
    let setup = setup(dir.path());
    let ppo = |name: &str, extra: &[String]| {
        pg("ppo", dir.path(), &setup, name, &[vec!["critic=\"separate\"".to_string()], extra.to_vec()].concat())
    };
    ok(&ppo("builtin", &[]));
    let once = dir.path().join("die.once");
    let text = format!("FAULT=die FAULT_AFTER=40 FAULT_ONCE={} python3 {}", once.display(), script().display());
    let args = ppo("die", &command(&text));
    let out = reasonrl(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("update 2 was not trained"), "{stderr}");
    assert!(dir.path().join("die/critic/checkpoints/step-1").exists(), "the critic's checkpoint");
    ok(&[args, vec!["--resume".into()]].concat());
    let (builtin, run) = (dir.path().join("builtin"), dir.path().join("die"));
    assert_eq!(column(&run, "reward/mean"), column(&builtin, "reward/mean"));
    assert!(same_policy(&builtin.join("final"), &run.join("final")), "the policies differ");
}
