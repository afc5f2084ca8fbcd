//! Experiment trackers beside `metrics.jsonl`: TensorBoard event files and an MLflow server
//! (`[log]`). `metrics.jsonl` stays the source of truth: each tracker, when it opens, catches up
//! with it (a resumed run, or tracking switched on halfway), then gets every line as it is
//! logged. Only the process that writes the run folder (rank 0) tracks.

pub mod mlflow;
pub mod tensorboard;

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// One line of the metrics log: metric name to value.
pub type Metrics = std::collections::BTreeMap<String, f64>;

/// The metrics log of a run folder, one JSON object per line.
pub const METRICS_FILE: &str = "metrics.jsonl";

/// `[log]`: where a run's metrics go besides `RUN/metrics.jsonl`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// TensorBoard event files in `RUN/tb/` (`tensorboard --logdir runs`).
    pub tensorboard: bool,
    /// An MLflow tracking server, `http://HOST:PORT`.
    pub mlflow_uri: Option<String>,
    /// The MLflow experiment (empty: the run's name; a study sets its own name).
    pub experiment: String,
}

impl LogConfig {
    /// Refuses a tracking URI that is not an http(s) URL.
    pub fn check(&self) -> Result<()> {
        match &self.mlflow_uri {
            Some(uri) if !(uri.starts_with("http://") || uri.starts_with("https://")) => Err(Error::Invalid(format!(
                "log.mlflow_uri `{uri}` is not an http:// or https:// URL of an MLflow tracking server"
            ))),
            _ => Ok(()),
        }
    }

    pub fn tracks(&self) -> bool {
        self.tensorboard || self.mlflow_uri.is_some()
    }
}

/// The trackers of one run folder.
pub struct Tracker {
    dir: PathBuf,
    tensorboard: Option<tensorboard::EventWriter>,
    mlflow: Option<mlflow::MlflowRun>,
}

impl Tracker {
    /// Opens the trackers `cfg` names for run folder `dir` and sends each the lines of
    /// `metrics.jsonl` it lacks. An MLflow server that fails is one warning, and the run goes on
    /// without it.
    pub fn open(dir: &Path, cfg: &LogConfig) -> Result<Tracker> {
        let mut tracker = Tracker { dir: dir.to_path_buf(), tensorboard: None, mlflow: None };
        if !crate::fsutil::writes_here() || !cfg.tracks() {
            return Ok(tracker);
        }
        let logged = logged_lines(dir)?;
        let config = std::fs::read_to_string(dir.join("config.toml")).unwrap_or_default();
        if cfg.tensorboard {
            let upto = logged.last().map(|(step, _)| *step);
            let (mut writer, last) = tensorboard::EventWriter::open(dir, upto, &config)?;
            for (step, line) in logged.iter().filter(|(s, _)| last.is_none_or(|l| *s > l)) {
                writer.log(line, *step)?;
            }
            tracker.tensorboard = Some(writer);
        }
        if let Some(uri) = &cfg.mlflow_uri {
            // The run's name (its folder's) unless a study names the experiment; the MLflow run
            // is named by the folder's path, which tells a study's runs apart.
            let own = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let experiment = if cfg.experiment.is_empty() { &own } else { &cfg.experiment };
            let name = dir.display().to_string();
            let opened = mlflow::MlflowRun::open(uri, experiment, &name, dir, &config).and_then(|mut run| {
                for (step, line) in &logged {
                    run.log(line, *step)?;
                }
                run.flush()?;
                Ok(run)
            });
            tracker.mlflow = tracker.warn_if_failed(opened);
        }
        Ok(tracker)
    }

    /// Sends one metrics line (already in `metrics.jsonl`) to every tracker.
    pub fn log(&mut self, line: &Metrics) -> Result<()> {
        let step = step_of(line);
        if let Some(writer) = &mut self.tensorboard {
            writer.log(line, step)?;
        }
        if let Some(run) = &mut self.mlflow {
            let sent = run.log(line, step);
            if self.warn_if_failed(sent).is_none() {
                self.mlflow = None;
            }
        }
        Ok(())
    }

    /// The run is over: its `config.toml`, `metrics.jsonl` and `files` (in the run folder) go to
    /// MLflow as artifacts, and its MLflow run is marked finished.
    pub fn finish(&mut self, files: &[PathBuf]) {
        let Some(mut run) = self.mlflow.take() else { return };
        let mut all: Vec<PathBuf> = [self.dir.join("config.toml"), self.dir.join(METRICS_FILE)].into();
        all.retain(|p| p.exists());
        all.extend_from_slice(files);
        let done = run.upload(&self.dir, &all).and_then(|_| run.finish());
        self.warn_if_failed(done);
    }

    fn warn_if_failed<T>(&self, result: std::result::Result<T, String>) -> Option<T> {
        result
            .map_err(|e| {
                crate::progress::println(&format!(
                    "warning: MLflow: {e}; no more MLflow logging in this process ({} keeps every line)",
                    self.dir.join(METRICS_FILE).display()
                ))
            })
            .ok()
    }
}

/// A run that stops early (Ctrl-C, an error) still sends what MLflow has queued.
impl Drop for Tracker {
    fn drop(&mut self) {
        if let Some(mut run) = self.mlflow.take() {
            let flushed = run.flush();
            self.warn_if_failed(flushed);
        }
    }
}

fn step_of(line: &Metrics) -> i64 {
    line.get("step").copied().unwrap_or_default() as i64
}

/// `(step, line)` of each line of the run's `metrics.jsonl` (none when it is missing).
fn logged_lines(dir: &Path) -> Result<Vec<(i64, Metrics)>> {
    let path = dir.join(METRICS_FILE);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let rows = crate::plot::read_metrics(&path)?;
    Ok(rows.into_iter().map(|line| (step_of(&line), line)).collect())
}
