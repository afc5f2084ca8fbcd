//! Run folders: `metrics.jsonl`, `checkpoints/step-N/` (HF model folder + tokenizer +
//! `optimizer.safetensors` + `trainer_state.json`) and `best/`. Every checkpoint records the
//! size and CRC-32 of its files, so a truncated or corrupted one is refused on resume and the
//! previous good one is used instead.

use super::optim::AdamW;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::model::hf::write_safetensors;
use crate::model::CausalLm;
use crate::run::Metrics;
pub use crate::run::METRICS_FILE;
use crate::tokenizer::Tokenizer;
use crate::track::{LogConfig, Tracker};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub const STATE_FILE: &str = "trainer_state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// Where a run stands: enough to continue it exactly (the data order is a function of the seed
/// and the epoch, so the position in it is all that is needed).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainerState {
    pub step: usize,
    pub epoch: usize,
    pub batch_in_epoch: usize,
    pub samples_seen: u64,
    pub tokens_seen: u64,
    pub last_loss: f64,
    /// Best value so far of the trainer's `best_metric`.
    pub best: Option<f64>,
    /// Size and CRC-32 of every other file of the checkpoint.
    #[serde(default)]
    pub files: BTreeMap<String, FileSum>,
    /// A policy-gradient run's clocks (its `step` counts updates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_gradient: Option<PgState>,
}

/// What a policy-gradient run carries from one update to the next besides its models.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PgState {
    /// Minibatch steps so far: the learning-rate schedule's clock.
    pub lr_step: usize,
    /// The KL coefficient (it moves under PPO's adaptive controller).
    pub kl_coef: f64,
    /// Prompts drawn from the training stream (0 in checkpoints older than dynamic sampling).
    #[serde(default)]
    pub prompts_taken: u64,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FileSum {
    pub bytes: u64,
    pub crc32: u32,
}

fn file_sum(path: &Path) -> Result<FileSum> {
    let data = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    Ok(FileSum { bytes: data.len() as u64, crc32: crc32fast::hash(&data) })
}

/// The checkpoints and metrics of one run folder.
pub struct Checkpoints {
    run_dir: PathBuf,
    keep: usize,
    tracking: Mutex<Tracking>,
}

/// The run's trackers: opened at the first line logged, after a resume has cut the metrics log
/// back, so that they catch up with what it holds then.
enum Tracking {
    Off,
    Pending(LogConfig),
    On(Tracker),
}

impl Checkpoints {
    pub fn new(run_dir: &Path, keep: usize) -> Self {
        Checkpoints { run_dir: run_dir.to_path_buf(), keep: keep.max(1), tracking: Mutex::new(Tracking::Off) }
    }

    /// Sends the metrics to the trackers `log` names too.
    pub fn tracked(self, log: &LogConfig) -> Self {
        let tracking = if log.tracks() { Tracking::Pending(log.clone()) } else { Tracking::Off };
        Checkpoints { tracking: Mutex::new(tracking), ..self }
    }

    /// Runs `f` on the open trackers (opening them first), if there are any.
    fn with_tracker(&self, f: impl FnOnce(&mut Tracker) -> Result<()>) -> Result<()> {
        let mut tracking = self.tracking.lock().unwrap_or_else(|e| e.into_inner());
        if let Tracking::Pending(cfg) = &*tracking {
            *tracking = Tracking::On(Tracker::open(&self.run_dir, cfg)?);
        }
        match &mut *tracking {
            Tracking::On(tracker) => f(tracker),
            _ => Ok(()),
        }
    }

    /// The run is over: the trackers close (MLflow's run gets the metrics log and config).
    pub fn finish_tracking(&self) -> Result<()> {
        self.with_tracker(|t| {
            t.finish(&[]);
            Ok(())
        })
    }

    pub fn dir(&self) -> PathBuf {
        self.run_dir.join("checkpoints")
    }

    /// `step-N` folders, newest first.
    pub fn list(&self) -> Vec<(usize, PathBuf)> {
        let mut found: Vec<(usize, PathBuf)> = std::fs::read_dir(self.dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let step = e.file_name().to_str()?.strip_prefix("step-")?.parse().ok()?;
                Some((step, e.path()))
            })
            .collect();
        found.sort_by_key(|f| std::cmp::Reverse(f.0));
        found
    }

    /// Writes `checkpoints/step-N` (complete or absent) and drops the oldest beyond `keep`.
    pub fn save(&self, model: &CausalLm, tokenizer: &Tokenizer, optimizer: &AdamW, state: &TrainerState) -> Result<()> {
        self.save_with(model, tokenizer, state, |tmp| write_safetensors(&tmp.join(OPTIMIZER_FILE), &optimizer.state()))
    }

    /// [`Checkpoints::save`] with `extra` writing the files besides the model, tokenizer and
    /// state into the checkpoint's folder (their sums are recorded too).
    pub fn save_with(
        &self,
        model: &CausalLm,
        tokenizer: &Tokenizer,
        state: &TrainerState,
        extra: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<()> {
        let dir = self.dir().join(format!("step-{}", state.step));
        fsutil::replace_dir(&dir, |tmp| {
            model.save(tmp)?;
            tokenizer.save(tmp)?;
            extra(tmp)?;
            write_state(tmp, state)
        })?;
        for (_, old) in self.list().into_iter().skip(self.keep) {
            fsutil::remove_dir(&old)?;
        }
        Ok(())
    }

    /// Writes `best/`: the model and tokenizer (no optimizer).
    pub fn save_best(&self, model: &CausalLm, tokenizer: &Tokenizer, state: &TrainerState) -> Result<()> {
        fsutil::replace_dir(&self.run_dir.join("best"), |tmp| {
            model.save(tmp)?;
            tokenizer.save(tmp)?;
            write_state(tmp, state)
        })
    }

    /// Loads the newest checkpoint that passes its checks into `model` and `optimizer` (a
    /// checkpoint without one, like a round's, with `None`); a bad one is reported and skipped.
    /// The metrics log is cut back to that step.
    pub fn load_latest(
        &self,
        model: &mut CausalLm,
        mut optimizer: Option<&mut AdamW>,
    ) -> Result<(PathBuf, TrainerState)> {
        let candidates = self.list();
        if candidates.is_empty() {
            return Err(Error::file(self.dir(), "no checkpoint to resume from"));
        }
        for (_, dir) in candidates {
            match load_checkpoint(&dir, model, optimizer.as_deref_mut()) {
                Ok(state) => {
                    self.truncate_metrics(state.step)?;
                    return Ok((dir, state));
                }
                Err(err) => eprintln!("warning: refusing checkpoint: {err}"),
            }
        }
        Err(Error::file(self.dir(), "no usable checkpoint (all failed their checks; see the warnings above)"))
    }

    /// Appends one line to `metrics.jsonl`, then sends it to the trackers.
    pub fn log(&self, line: &Metrics) -> Result<()> {
        if !fsutil::writes_here() {
            return Ok(());
        }
        self.with_tracker(|_| Ok(()))?; // they catch up with the log before this line
        let path = self.run_dir.join(METRICS_FILE);
        std::fs::create_dir_all(&self.run_dir).map_err(|e| Error::io(&self.run_dir, e))?;
        let mut file =
            std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(|e| Error::io(&path, e))?;
        let text = serde_json::to_string(line).expect("metrics serialise");
        writeln!(file, "{text}").map_err(|e| Error::io(&path, e))?;
        self.with_tracker(|t| t.log(line))
    }

    /// Keeps only the metrics lines up to `step` (a resumed run rewrites what came after), and
    /// those that read as JSON.
    fn truncate_metrics(&self, step: usize) -> Result<()> {
        let path = self.run_dir.join(METRICS_FILE);
        if !path.exists() || !fsutil::writes_here() {
            return Ok(());
        }
        // A damaged log does not stop a resume: its unreadable lines go with the cut.
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let text = String::from_utf8_lossy(&bytes);
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v.get("step").and_then(|s| s.as_f64()))
                    .is_some_and(|s| s <= step as f64)
            })
            .collect();
        fsutil::write_atomic(&path, |w| kept.iter().try_for_each(|l| writeln!(w, "{l}")))
    }
}

fn write_state(dir: &Path, state: &TrainerState) -> Result<()> {
    let mut state = state.clone();
    state.files.clear();
    let mut names: Vec<PathBuf> =
        std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?.flatten().map(|e| e.path()).collect();
    names.sort();
    for path in names {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        state.files.insert(name, file_sum(&path)?);
    }
    let text = serde_json::to_string_pretty(&state).expect("state serialises");
    fsutil::write_atomic(&dir.join(STATE_FILE), |w| w.write_all(text.as_bytes()))
}

/// Checks a checkpoint's files against its recorded sums, then loads the model and, when given,
/// the optimiser (the checkpoint must have one then).
pub fn load_checkpoint(dir: &Path, model: &mut CausalLm, optimizer: Option<&mut AdamW>) -> Result<TrainerState> {
    let state_path = dir.join(STATE_FILE);
    let text = fsutil::read_to_string(&state_path)?;
    let state: TrainerState = serde_json::from_str(&text).map_err(|e| Error::file(&state_path, e.to_string()))?;
    if optimizer.is_some() && !state.files.contains_key(OPTIMIZER_FILE) {
        return Err(Error::file(&state_path, format!("lists no {OPTIMIZER_FILE}")));
    }
    for (name, sum) in &state.files {
        let path = dir.join(name);
        let actual = file_sum(&path)?;
        if &actual != sum {
            return Err(Error::file(
                &path,
                format!(
                    "is corrupted or truncated ({} bytes, crc {:08x}; expected {} bytes, crc {:08x})",
                    actual.bytes, actual.crc32, sum.bytes, sum.crc32
                ),
            ));
        }
    }
    model.load_weights(dir)?;
    if let Some(optimizer) = optimizer {
        let optimizer_path = dir.join(OPTIMIZER_FILE);
        let tensors =
            tch::Tensor::read_safetensors(&optimizer_path).map_err(|e| Error::file(&optimizer_path, e.to_string()))?;
        optimizer.load_state(tensors.into_iter().collect(), state.step as i64, &optimizer_path)?;
    }
    Ok(state)
}
