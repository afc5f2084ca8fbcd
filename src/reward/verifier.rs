//! Rewards from a verifier the user brings: a process (`reward.kind = "command"`) started once
//! and kept alive, asked one JSON object per line on its stdin and answering one per line on its
//! stdout, in order. Batches are pipelined (a writer thread feeds the process while replies are
//! read), each with a timeout. A verifier that dies, hangs or answers nonsense ends the call with
//! one line naming the command, the sample and the reason: a sample is never scored 0 silently.

use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

/// What a verifier is asked about one sample.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Request {
    /// `PROBLEM_ID/SAMPLE_INDEX`: unique within a call.
    pub id: String,
    pub question: String,
    /// The prompt the policy saw, as text.
    pub prompt: String,
    pub response: String,
    /// The final answer reasonrl reads from the response (null: none).
    pub extracted: Option<String>,
    /// The reference answer, and the reference solution (empty when the data has none).
    pub answer: String,
    pub solution: String,
}

/// A verifier's reply: `{"reward": 1.0}`, with optional `step_rewards` (one per step of the
/// response, for dense use) and `metrics` (numbers averaged into the log).
#[derive(Debug, Clone, PartialEq, Default, serde::Deserialize)]
pub struct Reply {
    pub reward: f64,
    #[serde(default)]
    pub step_rewards: Option<Vec<f64>>,
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    /// When present, it must be the request's.
    #[serde(default)]
    id: Option<String>,
}

/// Parses one reply line for `request`.
fn parse_reply(line: &str, request: &Request) -> std::result::Result<Reply, String> {
    let shown: String = line.chars().take(200).collect();
    let reply: Reply = serde_json::from_str(line)
        .map_err(|e| format!("the reply `{shown}` is not {{\"reward\": NUMBER, ...}} ({e})"))?;
    if reply.id.as_ref().is_some_and(|id| id != &request.id) {
        return Err(format!("the reply `{shown}` answers another sample (replies must come in order)"));
    }
    let finite = |x: &f64| x.is_finite();
    if !finite(&reply.reward) || !reply.step_rewards.iter().flatten().all(finite) || !reply.metrics.values().all(finite)
    {
        return Err(format!("the reply `{shown}` holds a number that is not finite"));
    }
    Ok(reply)
}

/// A verifier process.
pub struct CommandVerifier {
    command: String,
    child: Child,
    /// Batches for the writer thread; dropped to close the process's stdin.
    batches: Option<Sender<String>>,
    lines: Receiver<std::io::Result<String>>,
    log: PathBuf,
    timeout: Duration,
    batch_size: usize,
    /// Why it can no longer be used.
    dead: Option<String>,
}

impl CommandVerifier {
    /// Starts `command` (a shell command line), its stderr into `log`.
    pub fn start(command: &str, log: &Path, timeout: Duration, batch_size: usize) -> Result<Self> {
        let what = format!("command `{command}`");
        let err = std::fs::File::create(log).map_err(|e| Error::io(log, e))?;
        let mut child = crate::process::spawn(command, Stdio::piped(), Stdio::piped(), err.into())
            .map_err(|e| Error::reward(&what, format!("cannot start: {e}")))?;
        let (mut stdin, stdout) = (child.stdin.take().expect("piped"), child.stdout.take().expect("piped"));
        let (batches, inbox) = channel::<String>();
        std::thread::spawn(move || {
            for text in inbox {
                if stdin.write_all(text.as_bytes()).and_then(|_| stdin.flush()).is_err() {
                    break; // it died: the reader reports it
                }
            }
        });
        let (sender, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(CommandVerifier {
            command: command.to_string(),
            child,
            batches: Some(batches),
            lines,
            log: log.to_path_buf(),
            timeout,
            batch_size: batch_size.max(1),
            dead: None,
        })
    }

    /// The replies to `requests`, in order.
    pub fn score(&mut self, requests: &[Request]) -> Result<Vec<Reply>> {
        if let Some(why) = &self.dead {
            return Err(Error::reward(format!("command `{}`", self.command), why.clone()));
        }
        let chunks: Vec<&[Request]> = requests.chunks(self.batch_size).collect();
        // Every batch is queued at once: the verifier always has the next one waiting.
        for chunk in &chunks {
            let text: String = chunk.iter().map(|r| serde_json::to_string(r).expect("serialisable") + "\n").collect();
            let _ = self.batches.as_ref().expect("open until dropped").send(text);
        }
        let mut replies = Vec::with_capacity(requests.len());
        for chunk in chunks {
            let deadline = Instant::now() + self.timeout;
            for request in chunk {
                let wait = deadline.saturating_duration_since(Instant::now());
                let reply = match self.lines.recv_timeout(wait) {
                    Ok(Ok(line)) => parse_reply(&line, request),
                    Ok(Err(e)) => Err(format!("cannot read its reply: {e}")),
                    Err(RecvTimeoutError::Timeout) => Err(format!(
                        "no reply within {} s (`reward.timeout_s`) for a batch of {}",
                        self.timeout.as_secs_f64(),
                        chunk.len()
                    )),
                    Err(RecvTimeoutError::Disconnected) => {
                        let status = self.child.wait().map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                        Err(format!("it ended ({status}) before replying"))
                    }
                };
                match reply {
                    Ok(reply) => replies.push(reply),
                    Err(reason) => return Err(self.fail(&request.id, reason)),
                }
            }
        }
        Ok(replies)
    }

    /// Stops the process and says why, naming the sample and the stderr log.
    fn fail(&mut self, id: &str, reason: String) -> Error {
        crate::process::stop(&mut self.child, Duration::from_secs(2));
        let stderr = std::fs::read_to_string(&self.log).unwrap_or_default();
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|l| format!("; its last stderr line: `{}`", l.trim()));
        let why = format!("sample `{id}`: {reason}{} (stderr in {})", last.unwrap_or_default(), self.log.display());
        self.dead = Some(why.clone());
        Error::reward(format!("command `{}`", self.command), why)
    }
}

impl Drop for CommandVerifier {
    fn drop(&mut self) {
        self.batches = None; // EOF on its stdin: a well-behaved verifier exits
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        crate::process::stop(&mut self.child, Duration::from_secs(2));
    }
}
