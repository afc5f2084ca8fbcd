//! `reasonrl study` end to end on a tiny grid: stopped with Ctrl-C midway, then rerun, it skips
//! what was finished and its report holds every row, a preset's row (DAPO) among them; every
//! run's metrics reach TensorBoard and an MLflow server once, and the report MLflow too.

mod common;

use common::trackers::{assert_tensorboard_holds_the_log, MlflowServer};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn config(dir: &Path, mlflow: &str) -> PathBuf {
    let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let stage = |name: &str, set: &str| {
        format!("[{name}]\nconfig = {:?}\nset = [{set}]\n", configs.join(format!("{name}.toml")).display().to_string())
    };
    let tiny = r#""eval.problems=10", "eval.max_new_tokens=48", "sampling.max_new_tokens=48", "run.device=\"cpu\"""#;
    let text = [
        format!(
            "name = \"grid\"\nout_dir = {:?}\ntask = \"builtin:1\"\nsizes = [\"tiny\"]\ninits = [\"sft\"]\n\
             seeds = [0]\nrerank = \"mean-logprob\"\n\
             experiments = [{{ algorithm = \"ei\" }}, {{ algorithm = \"grpo\" }}, \
             {{ algorithm = \"grpo\", name = \"dapo\", config = {:?}, set = [\"updates=2\"] }}]\n\
             [eval]\nproblems = 8\nsamples_per_prompt = 4\nks = [1, 4]\nmax_new_tokens = 48\n\
             [log]\ntensorboard = true\nmlflow_uri = {mlflow:?}\n",
            dir.display().to_string(),
            configs.join("dapo.toml").display().to_string()
        ),
        stage("pretrain", r#""corpus.documents=100", "eval.problems=0", "train.max_steps=3""#),
        stage("sft", r#""train.max_steps=4", "train.eval_every=2", "eval.problems=8", "eval.samples_per_prompt=4", "eval.max_new_tokens=48""#),
        stage(
            "ei",
            r#""questions=8", "rounds=1", "train.max_steps=2", "eval.problems=8", "sampling.max_new_tokens=48", "eval.max_new_tokens=48""#,
        ),
        stage("grpo", &format!(r#""updates=40", "prompts_per_update=2", "sampling.samples_per_prompt=4", "eval_every=20", {tiny}"#)),
    ]
    .join("\n");
    let path = dir.join("study.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn study(config: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_reasonrl"));
    c.args(["study", "--config", config.to_str().unwrap()]).env("OMP_NUM_THREADS", "1");
    c
}

#[test]
fn a_stopped_study_continues_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let server = MlflowServer::start(&dir.path().join("mlflow"));
    let cfg = config(dir.path(), &server.url);
    let grid = dir.path().join("grid").join("tiny");
    let ei_done = grid.join("sft-ei-sparse-s0").join("done.json");

    // Stop it (Ctrl-C) while GRPO, the second run, is training.
    let mut child = study(&cfg).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let start = Instant::now();
    while !ei_done.exists() || !grid.join("sft-grpo-sparse-s0").join("metrics.jsonl").exists() {
        assert!(start.elapsed() < Duration::from_secs(240), "the first run never finished");
        assert!(child.try_wait().unwrap().is_none(), "the study ended before it could be stopped");
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("interrupted"), "{stderr}");
    assert!(!grid.join("sft-grpo-sparse-s0").join("done.json").exists(), "GRPO finished before the stop");
    let report = std::fs::read_to_string(dir.path().join("grid").join("report.md")).unwrap();
    assert!(report.contains("| ei | sparse | 0 |") && report.contains("not run"), "{report}");

    // Rerun: finished jobs keep their markers untouched; the rest completes.
    let finished: Vec<(PathBuf, String)> = ["pretrain", "sft", "sft-eval", "sft-ei-sparse-s0", "sft-ei-sparse-s0/eval"]
        .iter()
        .map(|j| grid.join(j).join("done.json"))
        .map(|p| (p.clone(), std::fs::read_to_string(&p).unwrap()))
        .collect();
    let out = study(&cfg).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for (path, text) in finished {
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text, "{} was redone", path.display());
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("5 already done"), "{stdout}");
    let report = std::fs::read_to_string(dir.path().join("grid").join("report.md")).unwrap();
    for row in ["| none | - | - |", "| ei | sparse | 0 |", "| grpo | sparse | 0 |", "| dapo | sparse | 0 |"] {
        let line = report.lines().find(|l| l.contains(row)).unwrap_or_else(|| panic!("no row {row}: {report}"));
        assert!(!line.contains("not run") && !line.contains("failed") && line.contains('['), "{line}");
    }
    assert!(grid.parent().unwrap().join("plots").join("maj1-vs-samples.png").exists());
    // The named row ran its preset's recipe under the stage's settings and its own.
    let dapo = std::fs::read_to_string(grid.join("sft-dapo-sparse-s0").join("config.toml")).unwrap();
    for line in ["clip_high = 0.28", "dynamic_sampling = true", "updates = 2", "prompts_per_update = 2"] {
        assert!(dapo.lines().any(|l| l == line), "{line}: {dapo}");
    }
    // Every run, the stopped one included, logged each of its lines once to both trackers, in
    // the study's MLflow experiment; the report and its plots are the study's MLflow run's.
    for run in ["pretrain", "sft", "sft-ei-sparse-s0", "sft-grpo-sparse-s0", "sft-dapo-sparse-s0"] {
        assert_tensorboard_holds_the_log(&grid.join(run));
        let logged = server.assert_holds_the_log(&grid.join(run), &["time/", "tokens_per_s"]);
        let experiment = server.get("experiments/get-by-name", "experiment_name=grid");
        assert_eq!(logged["info"]["experiment_id"], experiment["experiment"]["experiment_id"], "{run}");
    }
    let study_run = server.run_of(grid.parent().unwrap());
    let id = study_run["info"]["run_id"].as_str().unwrap();
    let files = server.get("artifacts/list", &format!("run_id={id}&path=plots"));
    assert!(files.to_string().contains("plots/maj1-vs-samples.png"), "{files}");
    assert!(server.get("artifacts/list", &format!("run_id={id}")).to_string().contains("report.md"));
}

#[test]
fn a_study_starts_from_model_folders_and_gguf_files() {
    let dir = tempfile::tempdir().unwrap();
    let reasonrl = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_reasonrl")).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let model = dir.path().join("chatty");
    let gguf = dir.path().join("plain.Q8_0.gguf");
    let s = |p: &Path| p.display().to_string();
    // Room for four solved examples in the pretrained init's prompts.
    let init =
        ["model", "init", "--preset", "tiny", "--task", "builtin:1", "--vocab-size", "300", "--max-positions", "2048"];
    reasonrl(&[&init[..], &["--out", &s(&model)]].concat());
    reasonrl(&["model", "export-gguf", &s(&model), &s(&gguf), "--dtype", "q8_0"]);
    // The folder gets a chat template, as instruct models have; the GGUF file has none.
    let config = model.join("tokenizer_config.json");
    let mut tokenizer: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    tokenizer["chat_template"] = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}".into();
    std::fs::write(&config, tokenizer.to_string()).unwrap();

    // A transfer set in SVAMP's format: its test split is the problems whose ID hashes to 0 mod 5.
    let svamp = dir.path().join("svamp.jsonl");
    let problem = |i: usize| {
        let (body, question) = (format!("Tom has {i} apples."), "He gets 2 more. How many apples does he have?");
        serde_json::json!({"ID": format!("chal-{i}"), "Body": body, "Question": question, "Equation": format!("( {i} + 2 )"), "Answer": i + 2})
    };
    std::fs::write(&svamp, (0..30).map(|i| format!("{}\n", problem(i))).collect::<String>()).unwrap();

    let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let short = r#""eval.problems=4", "eval.max_new_tokens=16""#;
    let text = format!(
        "name = \"real\"\nout_dir = {:?}\ntask = \"builtin:1\"\nsizes = [{:?}, {:?}]\ninits = [\"sft\", \"pretrained\"]\n\
         rerank = \"mean-logprob\"\nexperiments = [{{ algorithm = \"ei\" }}]\ntransfer = [\"svamp:{}\"]\n\
         [eval]\nproblems = 4\nsamples_per_prompt = 2\nks = [1, 2]\nmax_new_tokens = 16\n\
         [sft]\nconfig = {:?}\nset = [\"train.max_steps=2\", {short}]\n\
         [ei]\nconfig = {:?}\nset = [\"questions=4\", \"rounds=1\", \"train.max_steps=1\", \"sampling.max_new_tokens=16\", {short}]\n",
        s(dir.path()),
        s(&model),
        s(&gguf),
        s(&svamp),
        s(&configs.join("sft.toml")),
        s(&configs.join("ei.toml")),
    );
    let path = dir.path().join("real.toml");
    std::fs::write(&path, text).unwrap();
    let out = study(&path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let real = dir.path().join("real");
    // The folder is used as it is; the GGUF file is converted once, into the study folder.
    let done = std::fs::read_to_string(real.join("chatty/pretrain/done.json")).unwrap();
    assert!(done.contains(&s(&model)), "{done}");
    assert!(real.join("plain.Q8_0/pretrain/model/config.json").exists());
    // A model with a chat template is fine-tuned and asked in it, few-shot as earlier turns.
    let prompt = |run: &str| {
        let config: toml::Table = std::fs::read_to_string(real.join(run).join("config.toml")).unwrap().parse().unwrap();
        let p = &config["prompt"];
        (p["format"].as_str().unwrap().to_string(), p["shots"].as_integer().unwrap())
    };
    assert_eq!(prompt("chatty/sft"), ("chat".into(), 0));
    assert_eq!(prompt("chatty/pretrained-ei-sparse-s0"), ("chat".into(), 4));
    assert_eq!(prompt("plain.Q8_0/sft").0, "plain");
    assert_eq!(prompt("plain.Q8_0/pretrained-ei-sparse-s0"), ("few-shot".into(), 4));
    let report = std::fs::read_to_string(real.join("report.md")).unwrap();
    for row in ["| chatty | sft | ei |", "| chatty | pretrained | ei |", "| plain.Q8_0 | sft | ei |"] {
        let line = report.lines().find(|l| l.contains(row)).unwrap_or_else(|| panic!("no row {row}: {report}"));
        assert!(!line.contains("not run") && !line.contains("failed"), "{line}");
    }
    let took = report.split("The finished jobs took ").nth(1).and_then(|t| t.split(' ').next()?.parse::<f64>().ok());
    assert!(took.is_some_and(|s| s > 0.0), "the jobs' time in all: {report}");
    // Every model is also evaluated greedily on the whole test split of the transfer task, in its
    // prompts, and each run is paired against its start there.
    let task = reasonrl::task::TaskSpec::parse(&format!("svamp:{}", s(&svamp))).unwrap();
    let test_split = task.load(reasonrl::task::Split::Test, None).unwrap().len();
    assert!(test_split > 0);
    for eval in ["chatty/sft-eval-svamp", "chatty/pretrained-ei-sparse-s0/eval-svamp", "plain.Q8_0/sft-eval-svamp"] {
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(real.join(eval).join("summary.json")).unwrap()).unwrap();
        assert_eq!(
            (summary["problems"].as_u64(), summary["samples_per_prompt"].as_u64()),
            (Some(test_split as u64), Some(0))
        );
    }
    assert_eq!(prompt("chatty/pretrained-ei-sparse-s0/eval-svamp"), ("chat".into(), 4), "the run's own prompts");
    let transfer =
        report.split("## Transfer to svamp:").nth(1).unwrap_or_else(|| panic!("no transfer table: {report}"));
    let line = transfer.lines().find(|l| l.starts_with("| chatty | sft | ei |")).unwrap();
    let delta = line.split('|').nth(7).unwrap().trim();
    assert!(delta.starts_with('+') || delta.starts_with('-') && delta.len() > 1, "a paired difference: {line}");
}
