//! An MLflow tracking server over its REST API (`/api/2.0/mlflow/...`): one MLflow run per
//! reasonrl run, its params the flattened resolved config, metrics in `log-batch` requests of
//! the lines of [`FLUSH_EVERY`] (a request costs the server ~20 ms, a whole training step of a
//! small model), files as artifacts through the server's artifact proxy. `RUN/mlflow.json`
//! remembers the MLflow run and the last step sent, so a resumed run continues the same MLflow
//! run, sends what a kill kept from it, and sends no step twice.

use super::Metrics;
use serde_json::{json, Value as Json};
use std::path::{Path, PathBuf};

const STATE_FILE: &str = "mlflow.json";
/// The server's limits per `log-batch` request and per param value.
const PARAMS_PER_BATCH: usize = 100;
const METRICS_PER_BATCH: usize = 1000;
const PARAM_VALUE_CHARS: usize = 6000;
/// How long metrics wait to be sent with the next lines.
pub const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct State {
    uri: String,
    run_id: String,
    artifact_uri: String,
    /// The last step sent (`None`: none yet).
    sent_through: Option<i64>,
}

/// A run on an MLflow server. Every call answers a sentence to warn with when the server fails.
pub struct MlflowRun {
    agent: ureq::Agent,
    state: State,
    state_path: PathBuf,
    /// Metrics not sent yet, the last step among them, and when the last request went.
    pending: Vec<Json>,
    pending_through: Option<i64>,
    flushed: std::time::Instant,
}

impl MlflowRun {
    /// The MLflow run of run folder `dir` (state in `dir/mlflow.json`): the one it logged to
    /// before when that was on the same server, else a new run named `run_name` in
    /// `experiment` (made if needed), with `config_toml` flattened into its params.
    pub fn open(uri: &str, experiment: &str, run_name: &str, dir: &Path, config_toml: &str) -> Result<Self, String> {
        let state_path = dir.join(STATE_FILE);
        let agent = crate::http::agent(30.0, 1);
        let uri = uri.trim_end_matches('/');
        let old: Option<State> =
            std::fs::read_to_string(&state_path).ok().and_then(|text| serde_json::from_str(&text).ok());
        let resumed = old.filter(|s| s.uri == uri);
        let fresh =
            || State { uri: uri.into(), run_id: String::new(), artifact_uri: String::new(), sent_through: None };
        let state = resumed.clone().unwrap_or_else(fresh);
        let flushed = std::time::Instant::now();
        let mut run = MlflowRun { agent, state, state_path, pending: Vec::new(), pending_through: None, flushed };
        if resumed.is_some() {
            run.post("runs/update", json!({"run_id": run.state.run_id, "status": "RUNNING"}))?;
            return Ok(run);
        }
        let experiment_id = run.experiment_id(experiment)?;
        let tags = [("mlflow.source.name", "reasonrl"), ("reasonrl.run_dir", &dir.display().to_string())];
        let created = run.post(
            "runs/create",
            json!({
                "experiment_id": experiment_id,
                "run_name": run_name,
                "start_time": now_ms(),
                "tags": tags.iter().map(|(k, v)| json!({"key": k, "value": v})).collect::<Vec<_>>(),
            }),
        )?;
        let info = &created["run"]["info"];
        run.state.run_id = info["run_id"].as_str().ok_or("runs/create answered no run_id")?.into();
        run.state.artifact_uri = info["artifact_uri"].as_str().unwrap_or_default().into();
        let params = params(config_toml);
        for chunk in params.chunks(PARAMS_PER_BATCH) {
            run.post("runs/log-batch", json!({"run_id": run.state.run_id, "params": chunk}))?;
        }
        run.save()?;
        Ok(run)
    }

    /// Queues a metrics line's values at `step` (non-finite ones are left out: JSON has no
    /// NaN), unless the run holds that step already (sent before a resume); sends the queue when
    /// [`FLUSH_EVERY`] has passed since the last request.
    pub fn log(&mut self, line: &Metrics, step: i64) -> Result<(), String> {
        if self.pending_through.or(self.state.sent_through).is_some_and(|sent| step <= sent) {
            return Ok(());
        }
        let timestamp = now_ms();
        let metrics = line.iter().filter(|(k, v)| *k != "step" && v.is_finite());
        self.pending.extend(
            metrics.map(|(k, v)| json!({"key": metric_key(k), "value": v, "timestamp": timestamp, "step": step})),
        );
        self.pending_through = Some(step);
        if self.flushed.elapsed() >= FLUSH_EVERY {
            self.flush()?;
        }
        Ok(())
    }

    /// Sends the queued metrics, then records the last step sent.
    pub fn flush(&mut self) -> Result<(), String> {
        self.flushed = std::time::Instant::now();
        let Some(through) = self.pending_through.take() else { return Ok(()) };
        let pending = std::mem::take(&mut self.pending);
        for chunk in pending.chunks(METRICS_PER_BATCH) {
            self.post("runs/log-batch", json!({"run_id": self.state.run_id, "metrics": chunk}))?;
        }
        self.state.sent_through = Some(through);
        self.save()
    }

    /// Uploads `files` as artifacts, at their paths relative to `dir`.
    pub fn upload(&self, dir: &Path, files: &[PathBuf]) -> Result<(), String> {
        let Some(root) = self.state.artifact_uri.strip_prefix("mlflow-artifacts:") else {
            return Err(format!(
                "the server keeps artifacts at {} (start it with --serve-artifacts to take them over HTTP)",
                self.state.artifact_uri
            ));
        };
        for file in files {
            let name = file.strip_prefix(dir).unwrap_or(file).to_string_lossy();
            let url =
                format!("{}/api/2.0/mlflow-artifacts/artifacts/{}/{name}", self.state.uri, root.trim_matches('/'));
            let data = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
            self.agent.put(&url).send_bytes(&data).map_err(|e| format!("{url}: {e}"))?;
        }
        Ok(())
    }

    /// Sends what is queued and marks the run finished.
    pub fn finish(&mut self) -> Result<(), String> {
        self.flush()?;
        let body = json!({"run_id": self.state.run_id, "status": "FINISHED", "end_time": now_ms()});
        self.post("runs/update", body).map(|_| ())
    }

    fn experiment_id(&self, name: &str) -> Result<String, String> {
        let url = format!("{}/api/2.0/mlflow/experiments/get-by-name?experiment_name={}", self.state.uri, encode(name));
        match crate::http::request(&self.agent, &url, None, None, 1) {
            Ok(found) => Ok(found["experiment"]["experiment_id"].as_str().unwrap_or_default().into()),
            Err(e) if e.contains("RESOURCE_DOES_NOT_EXIST") => {
                let made = self.post("experiments/create", json!({"name": name}))?;
                Ok(made["experiment_id"].as_str().unwrap_or_default().into())
            }
            Err(e) => Err(format!("{url}: {e}")),
        }
    }

    fn post(&self, endpoint: &str, body: Json) -> Result<Json, String> {
        let url = format!("{}/api/2.0/mlflow/{endpoint}", self.state.uri);
        crate::http::request(&self.agent, &url, Some(&body), None, 1).map_err(|e| format!("{url}: {e}"))
    }

    fn save(&self) -> Result<(), String> {
        let text = serde_json::to_string_pretty(&self.state).expect("the state serialises");
        crate::fsutil::write_atomic(&self.state_path, |w| w.write_all(text.as_bytes())).map_err(|e| e.to_string())
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Percent-encodes a query value.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A metric name as MLflow accepts it: letters, digits, `_ - . / :` and spaces; anything else
/// (`@` in `eval/pass@8`) becomes `_`.
pub fn metric_key(name: &str) -> String {
    name.chars().map(|c| if c.is_alphanumeric() || "_-./: ".contains(c) { c } else { '_' }).collect()
}

/// The config as MLflow params: dotted keys (`train.lr`), values as TOML writes them (strings
/// bare), cut to the server's limit.
fn params(config_toml: &str) -> Vec<Json> {
    fn walk(prefix: &str, table: &toml::Table, out: &mut Vec<Json>) {
        for (key, value) in table {
            let key = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
            match value {
                toml::Value::Table(t) => walk(&key, t, out),
                toml::Value::String(s) => out.push(json!({"key": key, "value": cut(s)})),
                other => out.push(json!({"key": key, "value": cut(&other.to_string())})),
            }
        }
    }
    fn cut(s: &str) -> String {
        s.chars().take(PARAM_VALUE_CHARS).collect()
    }
    let mut out = Vec::new();
    if let Ok(table) = config_toml.parse::<toml::Table>() {
        walk("", &table, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_the_flattened_config() {
        let p = params("task = \"builtin\"\nseed = 3\n[train]\nlr = 0.001\n[run]\nname = \"x\"\n");
        let pairs: Vec<(String, String)> =
            p.iter().map(|v| (v["key"].as_str().unwrap().into(), v["value"].as_str().unwrap().into())).collect();
        let want = [("seed", "3"), ("task", "builtin"), ("train.lr", "0.001"), ("run.name", "x")];
        for (k, v) in want {
            assert!(pairs.contains(&(k.into(), v.into())), "{k} = {v} in {pairs:?}");
        }
        assert_eq!(metric_key("eval/pass@8"), "eval/pass_8");
        assert_eq!(encode("a b/ü"), "a%20b%2F%C3%BC");
    }
}
