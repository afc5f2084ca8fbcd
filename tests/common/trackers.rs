//! The trackers' own readers, from the venv `scripts/trackers.sh` makes: TensorBoard's
//! EventAccumulator, and a real MLflow server on loopback.

use serde_json::Value as Json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/trackers.sh")
}

/// The metrics log of a run folder, a JSON object per line.
pub fn metrics(run: &Path) -> Vec<serde_json::Map<String, Json>> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// `(step, value)` of metric `key` in each line that has it, stepped by field `x`.
fn series(lines: &[serde_json::Map<String, Json>], key: &str, x: &str) -> Vec<(i64, Json)> {
    lines.iter().filter_map(|l| Some((l[x].as_f64()? as i64, l.get(key)?.clone()))).collect()
}

/// Every scalar of the run's `metrics.jsonl` is in its TensorBoard event files (as TensorBoard
/// reads them) once, at its step and, under `by_samples/`, at its `samples_seen`, with the
/// value it has there (as f32); there is nothing else but the config, as text.
pub fn assert_tensorboard_holds_the_log(run: &Path) {
    let out = Command::new(script())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/tensorboard_read.py"))
        .arg(run.join("tb"))
        .output()
        .unwrap();
    assert!(out.status.success(), "tensorboard_read.py: {}", String::from_utf8_lossy(&out.stderr));
    let read: Json = serde_json::from_slice(&out.stdout).unwrap();
    let lines = metrics(run);
    let mut expected = std::collections::BTreeMap::new();
    for key in lines.iter().flat_map(|l| l.keys()).filter(|k| *k != "step") {
        expected.insert(key.clone(), series(&lines, key, "step"));
        if key != "samples_seen" {
            expected.insert(format!("by_samples/{key}"), series(&lines, key, "samples_seen"));
        }
    }
    let scalars = read["scalars"].as_object().unwrap();
    let tags: Vec<&String> = scalars.keys().collect();
    assert_eq!(tags, expected.keys().collect::<Vec<_>>(), "{}: the tags", run.display());
    for (tag, want) in expected {
        let got: Vec<(i64, Json)> =
            scalars[&tag].as_array().unwrap().iter().map(|p| (p[0].as_i64().unwrap(), p[1].clone())).collect();
        let steps = |s: &[(i64, Json)]| s.iter().map(|p| p.0).collect::<Vec<_>>();
        assert_eq!(steps(&got), steps(&want), "{}: the steps of {tag}", run.display());
        for ((step, g), (_, w)) in got.iter().zip(&want) {
            let same = match (g.as_f64(), w.as_f64()) {
                (Some(g), Some(w)) => g as f32 == w as f32,
                (g, w) => g.is_none() && w.is_none(),
            };
            assert!(same, "{}: {tag} at step {step} is {g} in TensorBoard, {w} in metrics.jsonl", run.display());
        }
    }
    let config = read["texts"]["config"][0].as_str().unwrap();
    let written = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(config.contains(written.trim()), "{}: the config text: {config}", run.display());
}

/// `mlflow server` on loopback, its store in a folder of its own; stopped when dropped.
pub struct MlflowServer {
    child: Child,
    pub url: String,
}

impl MlflowServer {
    pub fn start(dir: &Path) -> MlflowServer {
        // Make the venv first (minutes, once), so the wait below is only the server's.
        assert!(Command::new(script()).args(["-c", "import mlflow"]).status().unwrap().success());
        std::fs::create_dir_all(dir).unwrap();
        let port = super::free_port();
        let command = format!(
            "{} -m mlflow server --host 127.0.0.1 --port {port} --workers 1 \
             --backend-store-uri sqlite:///{}/mlflow.db --artifacts-destination {}/artifacts",
            script().display(),
            dir.display(),
            dir.display()
        );
        let log = std::fs::File::create(dir.join("server.log")).unwrap();
        let child =
            reasonrl::process::spawn(&command, Stdio::null(), Stdio::from(log.try_clone().unwrap()), Stdio::from(log))
                .unwrap();
        let server = MlflowServer { child, url: format!("http://127.0.0.1:{port}") };
        let start = Instant::now();
        while ureq::get(&format!("{}/health", server.url)).call().is_err() {
            let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
            assert!(start.elapsed() < Duration::from_secs(120), "mlflow server did not start: {log}");
            std::thread::sleep(Duration::from_millis(250));
        }
        server
    }

    /// GET `/api/2.0/mlflow/{endpoint}` with `query` (already encoded).
    pub fn get(&self, endpoint: &str, query: &str) -> Json {
        let url = format!("{}/api/2.0/mlflow/{endpoint}?{query}", self.url);
        let text = ureq::get(&url).call().unwrap_or_else(|e| panic!("{url}: {e}")).into_string().unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// The MLflow run a run folder logged to (from its `mlflow.json`).
    pub fn run_of(&self, run: &Path) -> Json {
        let state: Json = serde_json::from_str(&std::fs::read_to_string(run.join("mlflow.json")).unwrap()).unwrap();
        self.get("runs/get", &format!("run_id={}", state["run_id"].as_str().unwrap()))["run"].clone()
    }

    /// The run's metrics are each at the steps of `metrics.jsonl`, once, with its values but for
    /// those named in `clocks` (times, which a resumed run measures anew); it is finished and
    /// holds `config.toml` and `metrics.jsonl` as artifacts.
    pub fn assert_holds_the_log(&self, run: &Path, clocks: &[&str]) -> Json {
        let mlflow_run = self.run_of(run);
        let id = mlflow_run["info"]["run_id"].as_str().unwrap().to_string();
        assert_eq!(mlflow_run["info"]["status"], "FINISHED", "{}", run.display());
        let lines = metrics(run);
        let keys: std::collections::BTreeSet<&String> = lines.iter().flat_map(|l| l.keys()).collect();
        for key in keys.into_iter().filter(|k| *k != "step") {
            let name = reasonrl::track::mlflow::metric_key(key);
            let history =
                self.get("metrics/get-history", &format!("run_id={id}&metric_key={}", name.replace('/', "%2F")));
            let mut got: Vec<(i64, f64)> = history["metrics"]
                .as_array()
                .unwrap_or_else(|| panic!("{}: no history of {name}: {history}", run.display()))
                .iter()
                .map(|m| (m["step"].as_i64().unwrap_or(0), m["value"].as_f64().unwrap()))
                .collect();
            got.sort_by_key(|p| p.0);
            let want = series(&lines, key, "step");
            let steps: Vec<i64> = want.iter().map(|p| p.0).collect();
            assert_eq!(got.iter().map(|p| p.0).collect::<Vec<_>>(), steps, "{}: the steps of {name}", run.display());
            if !clocks.iter().any(|c| key.starts_with(c)) {
                for ((step, g), (_, w)) in got.iter().zip(&want) {
                    assert_eq!(Some(*g), w.as_f64(), "{}: {name} at step {step}", run.display());
                }
            }
        }
        let files = self.get("artifacts/list", &format!("run_id={id}"));
        let paths: Vec<&str> = files["files"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
        assert!(paths.contains(&"config.toml") && paths.contains(&"metrics.jsonl"), "{paths:?}");
        mlflow_run
    }
}

impl Drop for MlflowServer {
    fn drop(&mut self) {
        reasonrl::process::stop(&mut self.child, Duration::from_secs(5));
    }
}
