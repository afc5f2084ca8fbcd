//! OpenAI-compatible servers: concurrent completion requests with retries, and the servers this
//! process starts, restarts (weight sync) and stops.

use super::completion::{fill_logprobs, parse_choice, realign_unscored, Completion};
use super::{host_port, RolloutConfig, SyncMode};
use crate::error::{Error, Result};
use crate::model::gguf_export::export_model;
use crate::model::{CausalLm, Llama};
use crate::sample::{replay, Generation, SamplingConfig};
use crate::tokenizer::Tokenizer;
use serde_json::{json, Value as Json};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// OpenAI-compatible servers, and the ones this process started.
pub struct Remote {
    cfg: RolloutConfig,
    agent: ureq::Agent,
    api_key: Option<String>,
    /// The model name sent with requests (resolved from `/v1/models` when not configured).
    model: Mutex<Option<String>>,
    work_dir: PathBuf,
    servers: Vec<Server>,
    /// Policies written so far (names the files of each sync).
    syncs: usize,
}

/// A server this process started, in its own process group.
struct Server {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Remote {
    pub(super) fn new(cfg: RolloutConfig, work_dir: &Path) -> Result<Self> {
        let api_key = match cfg.api_key_env.as_str() {
            "" => None,
            var => Some(std::env::var(var).map_err(|_| {
                Error::Invalid(format!("[rollout] api_key_env: environment variable `{var}` is not set"))
            })?),
        };
        let agent = crate::http::agent(cfg.timeout_s, cfg.max_concurrency);
        let model = Mutex::new((!cfg.model.is_empty()).then(|| cfg.model.clone()));
        Ok(Remote { cfg, agent, api_key, model, work_dir: work_dir.to_path_buf(), servers: Vec::new(), syncs: 0 })
    }

    pub(super) fn sync(&mut self, policy: &CausalLm, tokenizer: &Tokenizer) -> Result<()> {
        if self.cfg.sync == SyncMode::None {
            return Ok(());
        }
        // Servers get plain weights: a LoRA policy's adapters are folded in.
        policy.with_merged(|policy| match self.cfg.sync {
            SyncMode::Sglang => self.sglang_update(policy, tokenizer),
            _ => self.restart(policy, tokenizer),
        })?;
        self.syncs += 1;
        Ok(())
    }

    /// Writes the policy in the forms the command names, stops the servers it started before and
    /// starts one per `base_url`; returns once every one answers `/v1/models`.
    fn restart(&mut self, policy: &CausalLm, tokenizer: &Tokenizer) -> Result<()> {
        crate::fsutil::create_output_dir(&self.work_dir)?;
        let gguf = self.work_dir.join(format!("policy-{}.gguf", self.syncs % 2));
        let hf_dir = self.work_dir.join(format!("policy-{}", self.syncs % 2));
        if self.cfg.command.contains("{gguf}") {
            export_model(policy, tokenizer, &gguf, self.cfg.gguf_dtype)?;
        }
        if self.cfg.command.contains("{hf_dir}") {
            policy.save_with_tokenizer(tokenizer, &hf_dir, true)?;
        }
        self.stop_servers();
        for (i, url) in self.cfg.base_url.clone().into_iter().enumerate() {
            let (host, port) = host_port(&url).expect("checked by RolloutConfig::check");
            let command = self
                .cfg
                .command
                .replace("{gguf}", &gguf.display().to_string())
                .replace("{hf_dir}", &hf_dir.display().to_string())
                .replace("{host}", &host)
                .replace("{port}", &port.to_string());
            let log = self.work_dir.join(format!("server-{i}.log"));
            let server = spawn_server(&command, &url, &log)?;
            self.servers.push(server);
        }
        let deadline = Instant::now() + Duration::from_secs_f64(self.cfg.startup_timeout_s);
        for i in 0..self.servers.len() {
            self.wait_ready(i, deadline)?;
        }
        Ok(())
    }

    fn wait_ready(&mut self, i: usize, deadline: Instant) -> Result<()> {
        let url = self.servers[i].url.clone();
        loop {
            crate::progress::check_stop()?;
            if let Some(status) = self.servers[i].child.try_wait().map_err(|e| Error::engine(&url, e.to_string()))? {
                let log = &self.servers[i].log;
                return Err(Error::engine(
                    &url,
                    format!("the server exited ({status}) before answering; {}:\n{}", log.display(), log_tail(log)),
                ));
            }
            let ready = self.agent.get(&format!("{url}/v1/models")).timeout(Duration::from_secs(5)).call();
            if ready.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::engine(
                    &url,
                    format!("no answer from /v1/models within {} s (startup_timeout_s)", self.cfg.startup_timeout_s),
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SGLang reloads the weights from a folder in place.
    fn sglang_update(&mut self, policy: &CausalLm, tokenizer: &Tokenizer) -> Result<()> {
        let dir = self.work_dir.join(format!("policy-{}", self.syncs % 2));
        crate::fsutil::create_output_dir(&self.work_dir)?;
        policy.save_with_tokenizer(tokenizer, &dir, true)?;
        let dir = std::fs::canonicalize(&dir).map_err(|e| Error::io(&dir, e))?;
        for url in &self.cfg.base_url {
            let answer = self.post(url, "/update_weights_from_disk", &json!({"model_path": dir}))?;
            if answer.get("success") == Some(&Json::Bool(false)) {
                return Err(Error::engine(url, format!("update_weights_from_disk failed: {answer}")));
            }
        }
        Ok(())
    }

    fn stop_servers(&mut self) {
        for server in self.servers.drain(..) {
            stop_server(server);
        }
    }

    /// `model` scores the tokens an engine returned without a log-prob (see [`parse_choice`]).
    pub(super) fn generate(
        &self,
        model: &Llama,
        tokenizer: &Tokenizer,
        prompts: &[Vec<u32>],
        cfg: &SamplingConfig,
    ) -> Result<Vec<Generation>> {
        let jobs: Vec<(usize, usize)> =
            (0..prompts.len()).flat_map(|p| (0..cfg.spec.samples_per_prompt).map(move |s| (p, s))).collect();
        let results: Vec<Mutex<Option<Completion>>> = jobs.iter().map(|_| Mutex::new(None)).collect();
        let (next, failed, error) = (AtomicUsize::new(0), AtomicBool::new(false), Mutex::new(None));
        let workers = self.cfg.max_concurrency.min(jobs.len());
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= jobs.len() || failed.load(Ordering::SeqCst) {
                        return;
                    }
                    let (p, s) = jobs[i];
                    let url = &self.cfg.base_url[i % self.cfg.base_url.len()];
                    match crate::progress::check_stop().and_then(|_| self.complete(url, &prompts[p], s, cfg)) {
                        Ok(c) => *results[i].lock().expect("no panics hold it") = Some(c),
                        Err(e) => {
                            failed.store(true, Ordering::SeqCst);
                            error.lock().expect("no panics hold it").get_or_insert(e);
                            return;
                        }
                    }
                });
            }
        });
        if let Some(e) = error.into_inner().expect("no panics hold it") {
            return Err(e);
        }
        // Then, on this thread (tensors stay on one), the stop rules and any missing log-probs.
        let completions =
            results.into_iter().map(|r| r.into_inner().expect("no panics hold it").expect("every job ran"));
        completions
            .zip(jobs)
            .map(|((tokens, logprobs, stopped), (p, s))| {
                let logprobs = realign_unscored(tokenizer, &tokens, logprobs);
                let logprobs = fill_logprobs(model, &prompts[p], &tokens, logprobs);
                replay(p, s, &tokens, &logprobs, tokenizer, cfg, stopped)
            })
            .collect()
    }

    /// One completion: (token ids, their log-probs where the engine gave them, whether the
    /// engine stopped it itself).
    fn complete(&self, url: &str, prompt: &[u32], sample: usize, cfg: &SamplingConfig) -> Result<Completion> {
        let seed = crate::rng::sample_seed(cfg.seed, prompt, sample) >> 33;
        let body = json!({
            "model": self.model_name(url)?,
            "prompt": prompt,
            "max_tokens": cfg.spec.max_new_tokens,
            "temperature": cfg.spec.temperature,
            "top_p": cfg.spec.top_p,
            "n": 1,
            "seed": seed,
            "logprobs": 1,
            // vLLM: token ids instead of token strings.
            "return_tokens_as_token_ids": true,
            // llama.cpp: every token id (its log-probs leave out tokens that end inside a UTF-8
            // character), in the verbose part of the answer.
            "return_tokens": true,
            "verbose": true,
            "skip_special_tokens": false,
            // No truncation beyond top_p, as locally (llama.cpp defaults to top_k 40, min_p 0.05).
            "top_k": -1,
            "min_p": 0.0,
        });
        let answer = self.post(url, "/v1/completions", &body)?;
        parse_choice(&answer).map_err(|msg| Error::engine(url, msg))
    }

    fn model_name(&self, url: &str) -> Result<String> {
        let mut name = self.model.lock().expect("no panics hold it");
        if let Some(n) = name.as_ref() {
            return Ok(n.clone());
        }
        let listed = self.request(url, "/v1/models", None)?;
        let first = listed["data"][0]["id"]
            .as_str()
            .ok_or_else(|| Error::engine(url, format!("/v1/models lists no model: {listed}")))?;
        *name = Some(first.to_string());
        Ok(first.to_string())
    }

    fn post(&self, url: &str, path: &str, body: &Json) -> Result<Json> {
        self.request(url, path, Some(body))
    }

    /// A GET (no body) or POST, tried again after a failure to connect or a 5xx answer.
    fn request(&self, url: &str, path: &str, body: Option<&Json>) -> Result<Json> {
        crate::http::request(&self.agent, &format!("{url}{path}"), body, self.api_key.as_deref(), self.cfg.retries)
            .map_err(|e| Error::engine(url, format!("{path}: {e}")))
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        self.stop_servers();
    }
}

/// Starts the server's `command`, its output in `log`.
fn spawn_server(command: &str, url: &str, log: &Path) -> Result<Server> {
    let out = std::fs::File::create(log).map_err(|e| Error::io(log, e))?;
    let err = out.try_clone().map_err(|e| Error::io(log, e))?;
    let child = crate::process::spawn(command, Stdio::null(), out.into(), err.into())
        .map_err(|e| Error::engine(url, format!("cannot start `{command}`: {e}")))?;
    Ok(Server { child, url: url.to_string(), log: log.to_path_buf() })
}

/// SIGTERM to the server's process group, SIGKILL after 10 s.
fn stop_server(mut server: Server) {
    crate::process::stop(&mut server.child, Duration::from_secs(10));
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
