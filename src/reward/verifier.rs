//! Rewards from a verifier the user brings:
//! - a process (`reward.kind = "command"`) started once and kept alive, asked one JSON object per
//!   line on its stdin and answering one per line on its stdout, in order. Batches are pipelined
//!   (a writer thread feeds the process while replies are read), each with a timeout;
//! - an HTTP service (`reward.kind = "http"`) in OpenRLHF's remote reward format: POST
//!   `{"query": [prompt + response], "prompts": [...], "labels": [answer]}` (plus `responses`,
//!   `extracted` and `ids`, which such servers ignore), answered `{"rewards": [...]}` with
//!   optional `extra_logs` (numbers, or one number per sample), batches in parallel, retried.
//!
//! A verifier that dies, hangs or answers nonsense ends the call with one line naming it, the
//! sample and the reason: a sample is never scored 0 silently.

use crate::error::{Error, Result};
use serde_json::{json, Value as Json};
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

/// An HTTP reward service.
pub struct HttpVerifier {
    url: String,
    agent: ureq::Agent,
    batch_size: usize,
    concurrency: usize,
    retries: usize,
}

impl HttpVerifier {
    pub fn new(url: &str, timeout: Duration, batch_size: usize, concurrency: usize, retries: usize) -> Self {
        let agent = crate::http::agent(timeout.as_secs_f64(), concurrency);
        HttpVerifier {
            url: url.to_string(),
            agent,
            batch_size: batch_size.max(1),
            concurrency: concurrency.max(1),
            retries,
        }
    }

    /// The replies to `requests`, in order: `concurrency` batches in flight at once.
    pub fn score(&self, requests: &[Request]) -> Result<Vec<Reply>> {
        let batches: Vec<&[Request]> = requests.chunks(self.batch_size).collect();
        let mut replies = Vec::with_capacity(requests.len());
        for wave in batches.chunks(self.concurrency) {
            let answers: Vec<Result<Vec<Reply>>> = std::thread::scope(|scope| {
                let running: Vec<_> = wave.iter().map(|batch| scope.spawn(|| self.batch(batch))).collect();
                running.into_iter().map(|t| t.join().expect("a reward request panicked")).collect()
            });
            for answer in answers {
                replies.extend(answer?);
            }
        }
        Ok(replies)
    }

    fn batch(&self, batch: &[Request]) -> Result<Vec<Reply>> {
        let fail = |msg: String| Error::reward(format!("service {}", self.url), msg);
        let body = json!({
            "query": batch.iter().map(|r| format!("{}{}", r.prompt, r.response)).collect::<Vec<_>>(),
            "prompts": batch.iter().map(|r| &r.prompt).collect::<Vec<_>>(),
            "labels": batch.iter().map(|r| &r.answer).collect::<Vec<_>>(),
            "responses": batch.iter().map(|r| &r.response).collect::<Vec<_>>(),
            "extracted": batch.iter().map(|r| &r.extracted).collect::<Vec<_>>(),
            "ids": batch.iter().map(|r| &r.id).collect::<Vec<_>>(),
        });
        let first = &batch[0].id;
        let answer = crate::http::request(&self.agent, &self.url, Some(&body), None, self.retries)
            .map_err(|e| fail(format!("the batch from sample `{first}`: {e}")))?;
        let shown: String = answer.to_string().chars().take(200).collect();
        let rewards = answer["rewards"].as_array().filter(|r| r.len() == batch.len()).ok_or_else(|| {
            fail(format!(
                "the batch from sample `{first}`: the answer `{shown}` holds no `rewards` list of {}",
                batch.len()
            ))
        })?;
        let mut replies = Vec::with_capacity(batch.len());
        for (n, (reward, request)) in rewards.iter().zip(batch).enumerate() {
            let mut reply = Reply { reward: reward.as_f64().unwrap_or(f64::NAN), ..Reply::default() };
            if let Some(logs) = answer["extra_logs"].as_object() {
                for (name, value) in logs {
                    let value = match value {
                        Json::Array(values) => values.get(n).and_then(Json::as_f64),
                        other => other.as_f64(),
                    };
                    reply.metrics.insert(name.clone(), value.unwrap_or(f64::NAN));
                }
            }
            if !reply.reward.is_finite() || !reply.metrics.values().all(|v| v.is_finite()) {
                return Err(fail(format!(
                    "sample `{}`: the answer `{shown}` holds a reward or log that is not a finite number",
                    request.id
                )));
            }
            replies.push(reply);
        }
        Ok(replies)
    }
}

/// Where rewards come from when the user brings them.
pub enum Verifier {
    Command(std::sync::Mutex<CommandVerifier>),
    Http(HttpVerifier),
}

impl Verifier {
    /// The replies to `requests`, in order.
    pub fn score(&self, requests: &[Request]) -> Result<Vec<Reply>> {
        match self {
            Verifier::Command(process) => process.lock().expect("a verifier call panicked").score(requests),
            Verifier::Http(service) => service.score(requests),
        }
    }
}
