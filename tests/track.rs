//! `[log]` end to end: TensorBoard's own reader and a real MLflow server find every scalar of a
//! run's `metrics.jsonl`, once, through a resume; a server that is not there costs one warning.

mod common;

use common::trackers::{assert_tensorboard_holds_the_log, MlflowServer};
use std::path::Path;
use std::process::{Command, Output};

fn reasonrl(args: &[String]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_reasonrl")).args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// A tiny model in `dir/model` and the arguments of a six-step SFT from it into `dir/sft`,
/// logging every step, with `sets` on top.
fn sft(dir: &Path, sets: &[String]) -> Vec<String> {
    let model = dir.join("model");
    if !model.exists() {
        let init = ["model", "init", "--preset", "tiny", "--task", "builtin:1", "--vocab-size", "300", "--out"];
        reasonrl(&[&init.map(String::from)[..], &[model.display().to_string()]].concat());
    }
    let mut args = vec!["sft".to_string()];
    let base = [
        format!("model={}", model.display()),
        format!("run.out_dir={}", dir.display()),
        "task=builtin:1".into(),
        "train_problems=20".into(),
        "train.max_steps=6".into(),
        "train.save_every=2".into(),
        "train.log_every=1".into(),
        "train.eval_every=3".into(),
        "eval.problems=2".into(),
        "eval.max_new_tokens=8".into(),
    ];
    for kv in base.iter().chain(sets) {
        args.extend(["--set".to_string(), kv.clone()]);
    }
    args
}

#[test]
fn a_resumed_run_logs_every_scalar_once_to_tensorboard_and_mlflow() {
    let dir = tempfile::tempdir().unwrap();
    let server = MlflowServer::start(&dir.path().join("mlflow"));
    let args = sft(dir.path(), &["log.tensorboard=true".into(), format!("log.mlflow_uri={:?}", server.url)]);
    reasonrl(&args);
    // Killed after step 6 before its checkpoint (the newest left is step 4), then resumed:
    // steps 5 and 6 run again.
    let run = dir.path().join("sft");
    for gone in ["checkpoints/step-6", "final"] {
        std::fs::remove_dir_all(run.join(gone)).unwrap();
    }
    reasonrl(&[&args[..], &["--resume".to_string()]].concat());
    assert_eq!(common::trackers::metrics(&run).len(), 6);
    assert_tensorboard_holds_the_log(&run);
    let logged = server.assert_holds_the_log(&run, &["tokens_per_s"]);
    let params = logged["data"]["params"].as_array().unwrap();
    for (key, value) in [("train.max_steps", "6"), ("task", "builtin:1"), ("log.tensorboard", "true")] {
        assert!(params.iter().any(|p| p["key"] == key && p["value"] == value), "{key} = {value}: {params:?}");
    }
    let experiment = server.get("experiments/get-by-name", "experiment_name=sft");
    assert_eq!(experiment["experiment"]["experiment_id"], logged["info"]["experiment_id"], "named after the run");
}

#[test]
fn a_missing_server_is_one_warning_and_a_bad_setting_is_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let out = reasonrl(&sft(dir.path(), &[format!("log.mlflow_uri=\"http://127.0.0.1:{port}\"")]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("warning: MLflow")).collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(warnings[0].contains(&port.to_string()) && warnings[0].contains("metrics.jsonl"), "{}", warnings[0]);
    assert_eq!(common::trackers::metrics(&dir.path().join("sft")).len(), 6, "the run went on");

    for (set, named) in [("log.mlflow_uri=\"localhost:5000\"", "log.mlflow_uri"), ("log.tensorbord=true", "tensorbord")]
    {
        let args = sft(dir.path(), &[set.to_string(), "run.name=\"bad\"".into()]);
        let out = Command::new(env!("CARGO_BIN_EXE_reasonrl")).args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(named), "{set}: {stderr}");
        assert!(!dir.path().join("bad").join("metrics.jsonl").exists(), "{set}: no work was done");
    }
}
