//! Where samples come from: this process (`local`), or inference servers that speak the
//! OpenAI-compatible completions API (`openai`: vLLM, SGLang, llama.cpp's llama-server).
//!
//! An engine request is one (prompt, sample): the prompt goes as token ids, with the sample's own
//! seed and `logprobs`, and the answer's token ids and log-probs come back. Many requests are in
//! flight at once (`max_concurrency`), spread over the servers, so an engine with continuous
//! batching stays saturated. The tokens then go through the local sampler's stop rules
//! ([`crate::sample::replay`]), so an engine's episodes are the same as local ones. Stop strings
//! are applied that way, not sent: llama.cpp drops a stop string's tokens from its log-probs, and
//! the episode could not be rebuilt. The engine stops at EOS or `max_new_tokens`.
//!
//! Weight sync makes the servers serve the policy being trained: `restart` writes the policy
//! (a GGUF file and/or a Hugging Face folder) and restarts the servers from a command template;
//! `sglang` asks SGLang to reload the folder (`/update_weights_from_disk`); `none` leaves the
//! servers alone (evaluation).

mod completion;
mod remote;

use crate::error::{Error, Result};
use crate::model::gguf_export::GgufDtype;
use crate::model::{CausalLm, Llama};
use crate::sample::{generate, Generation, SamplingConfig};
use crate::tokenizer::Tokenizer;
use remote::Remote;
use serde::{Deserialize, Deserializer, Serialize};
use std::path::Path;
use tch::{Device, Kind};

/// Which engine samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineKind {
    /// This process, with the policy's own weights.
    #[default]
    Local,
    /// OpenAI-compatible servers (`/v1/completions`).
    Openai,
}

/// The dtype of the copy of the policy that the local engine samples with (logits and the
/// sampling itself are f32 either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum SamplingDtype {
    /// bf16 for a model of hidden size 512 or more (SmolLM2, Gemma 3, Qwen; the medium preset) on
    /// a CPU with AVX512-BF16 (and AMX), where it samples 2x as fast as f32; the model's own dtype
    /// otherwise.
    #[default]
    Auto,
    F32,
    Bf16,
}

/// Below this hidden size `auto` keeps f32: the gain is small (tiny preset 1.0-1.2x, small 1.5x
/// here), and in f32 a sample depends on (seed, prompt, sample) alone, whatever batch it is drawn
/// in (bf16 matmuls round differently with the batch's shape, so data-parallel ranks and batch
/// sizes would see slightly different log-probs).
const BF16_MIN_HIDDEN: i64 = 512;

impl SamplingDtype {
    /// The dtype to sample `model` with.
    pub fn kind(self, model: &Llama) -> Kind {
        let large = model.config.hidden_size >= BF16_MIN_HIDDEN;
        match self {
            SamplingDtype::Auto if large && model.device() == Device::Cpu && cpu_has_bf16() => Kind::BFloat16,
            SamplingDtype::Auto => model.kind(),
            SamplingDtype::F32 => Kind::Float,
            SamplingDtype::Bf16 => Kind::BFloat16,
        }
    }
}

/// Whether this CPU multiplies bf16 in hardware: AVX512-BF16, which every CPU with AMX also has
/// (libtorch's bf16 matmuls then run 2.5-3x its f32 ones).
pub fn cpu_has_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// How the servers come to serve the current policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// Write the policy and (re)start the servers from `command`.
    #[default]
    Restart,
    /// `POST /update_weights_from_disk` with the policy's folder (SGLang).
    Sglang,
    /// Never: the servers serve what they were started with (evaluation only).
    None,
}

/// `[rollout]`: the engine that samples. Every config that samples has one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RolloutConfig {
    pub engine: EngineKind,
    /// `local`: the dtype to sample in.
    pub dtype: SamplingDtype,
    /// One server or several (a string or a list); requests are spread across them.
    #[serde(deserialize_with = "one_or_many")]
    pub base_url: Vec<String>,
    /// The model name sent with each request; empty: the first one the server lists.
    pub model: String,
    /// Environment variable holding the API key (sent as a bearer token); empty: none.
    pub api_key_env: String,
    /// Requests in flight at once, over all servers.
    pub max_concurrency: usize,
    /// Seconds a request may take.
    pub timeout_s: f64,
    /// Further tries of a request that failed to connect or got a 5xx answer.
    pub retries: usize,
    pub sync: SyncMode,
    /// PPO/GRPO: sync every N updates (EI and RCRL sync every round).
    pub sync_every: usize,
    /// `sync = "restart"`: the command that starts one server, with `{gguf}` (the policy as a
    /// GGUF file), `{hf_dir}` (as a Hugging Face folder), `{host}` and `{port}` (of its
    /// `base_url`) filled in, e.g. `llama-server -m {gguf} --port {port}` or
    /// `vllm serve {hf_dir} --port {port}`.
    pub command: String,
    /// How `{gguf}` stores the weights.
    pub gguf_dtype: GgufDtype,
    /// Seconds a (re)started server may take before `/v1/models` answers.
    pub startup_timeout_s: f64,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        RolloutConfig {
            engine: EngineKind::Local,
            dtype: SamplingDtype::Auto,
            base_url: vec!["http://127.0.0.1:8080".into()],
            model: String::new(),
            api_key_env: String::new(),
            max_concurrency: 64,
            timeout_s: 600.0,
            retries: 2,
            sync: SyncMode::Restart,
            sync_every: 1,
            command: String::new(),
            gguf_dtype: GgufDtype::F16,
            startup_timeout_s: 600.0,
        }
    }
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

impl RolloutConfig {
    /// Checks the settings of an `openai` engine (nothing for `local`); `trains`: the policy
    /// changes during the run, so the servers must be synced.
    pub fn check(&self, trains: bool) -> Result<()> {
        if self.engine == EngineKind::Local {
            return Ok(());
        }
        let bad = |msg: String| Err(Error::Invalid(format!("[rollout]: {msg}")));
        if self.base_url.is_empty() {
            return bad("`base_url` names no server".into());
        }
        if let Some(url) = self.base_url.iter().find(|u| host_port(u).is_none()) {
            return bad(format!("`base_url` `{url}` is not http(s)://HOST:PORT[/...]"));
        }
        if self.max_concurrency == 0 || self.sync_every == 0 {
            return bad("`max_concurrency` and `sync_every` must be at least 1".into());
        }
        if !(self.timeout_s > 0.0 && self.startup_timeout_s > 0.0) {
            return bad("`timeout_s` and `startup_timeout_s` must be positive".into());
        }
        if self.sync == SyncMode::Restart && self.command.trim().is_empty() {
            return bad("`sync = \"restart\"` needs `command`, e.g. \"llama-server -m {gguf} --port {port}\"".into());
        }
        if trains && self.sync == SyncMode::None {
            return bad("`sync = \"none\"` would keep serving the starting policy while it trains: use \"restart\" or \"sglang\"".into());
        }
        Ok(())
    }
}

/// (host, port) of `http(s)://host:port/...`.
fn host_port(url: &str) -> Option<(String, u16)> {
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"))?;
    let authority = rest.split('/').next()?;
    let (host, port) = authority.rsplit_once(':')?;
    Some((host.to_string(), port.parse().ok()?))
}

/// The sampler of a run: this process, or OpenAI-compatible servers.
pub enum Engine {
    Local(SamplingDtype),
    Remote(Box<Remote>),
}

impl Engine {
    /// The engine `cfg` asks for. Servers of `sync = "restart"` start at the first [`Engine::sync`];
    /// their files and logs go to `work_dir`.
    pub fn new(cfg: &RolloutConfig, work_dir: &Path, trains: bool) -> Result<Self> {
        cfg.check(trains)?;
        if cfg.engine == EngineKind::Openai && crate::dist::world().size > 1 {
            return Err(Error::Invalid(
                "rollout.engine = \"openai\" runs in one process: launch it without --nproc (the servers batch for you)"
                    .into(),
            ));
        }
        Ok(match cfg.engine {
            EngineKind::Local => Engine::Local(cfg.dtype),
            EngineKind::Openai => Engine::Remote(Box::new(Remote::new(cfg.clone(), work_dir)?)),
        })
    }

    pub fn is_remote(&self) -> bool {
        matches!(self, Engine::Remote(_))
    }

    /// Makes the engine serve `policy` (a no-op locally and with `sync = "none"`).
    pub fn sync(&mut self, policy: &CausalLm, tokenizer: &Tokenizer) -> Result<()> {
        match self {
            Engine::Local(_) => Ok(()),
            Engine::Remote(r) => r.sync(policy, tokenizer),
        }
    }

    /// Whether the engine samples with the trainer's numerics: the same weights in the same
    /// dtype, matmuls included, so its log-probs are the trainer's (otherwise their gap is worth
    /// logging).
    pub fn samples_exactly(&self, model: &Llama) -> bool {
        matches!(self, Engine::Local(dtype) if dtype.kind(model) == model.kind()) && !model.bf16_matmuls()
    }

    /// `samples_per_prompt` responses to every prompt, ordered by prompt, then sample. Locally,
    /// `model`'s decoding copy samples (its adapters merged, in the configured dtype).
    pub fn generate(
        &self,
        model: &CausalLm,
        tokenizer: &Tokenizer,
        prompts: &[Vec<u32>],
        cfg: &SamplingConfig,
    ) -> Result<Vec<Generation>> {
        match self {
            Engine::Local(dtype) => generate(&model.decoding_copy(Some(dtype.kind(model)))?, tokenizer, prompts, cfg),
            Engine::Remote(r) => r.generate(model, tokenizer, prompts, cfg),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_samples_in_bf16_only_models_of_hidden_512_up_on_bf16_cpus() {
        let model = |preset| {
            let config = crate::model::presets::preset(preset, 256, 64).unwrap();
            CausalLm::new(&config, Device::Cpu, false).unwrap()
        };
        let (small, medium) = (model("small"), model("medium"));
        assert_eq!(SamplingDtype::Auto.kind(&small), Kind::Float);
        let large = if cpu_has_bf16() { Kind::BFloat16 } else { Kind::Float };
        assert_eq!(SamplingDtype::Auto.kind(&medium), large);
        assert_eq!(SamplingDtype::Bf16.kind(&small), Kind::BFloat16);
        assert!(Engine::Local(SamplingDtype::F32).samples_exactly(&small));
        assert!(!Engine::Local(SamplingDtype::Bf16).samples_exactly(&small));
    }

    #[test]
    fn rollout_settings_are_checked() {
        let remote = RolloutConfig { engine: EngineKind::Openai, command: "serve {gguf}".into(), ..Default::default() };
        remote.check(true).unwrap();
        let err = |c: RolloutConfig, trains| c.check(trains).unwrap_err().to_string();
        assert!(err(RolloutConfig { command: String::new(), ..remote.clone() }, false).contains("needs `command`"));
        assert!(err(RolloutConfig { sync: SyncMode::None, ..remote.clone() }, true).contains("starting policy"));
        RolloutConfig { sync: SyncMode::None, ..remote.clone() }.check(false).unwrap();
        assert!(
            err(RolloutConfig { base_url: vec!["localhost".into()], ..remote.clone() }, false).contains("HOST:PORT")
        );
        assert_eq!(host_port("http://127.0.0.1:8080/v1"), Some(("127.0.0.1".into(), 8080)));
        let one: RolloutConfig = toml::from_str("base_url = \"http://a:1\"").unwrap();
        let many: RolloutConfig = toml::from_str("base_url = [\"http://a:1\", \"http://b:2\"]").unwrap();
        assert_eq!((one.base_url.len(), many.base_url.len()), (1, 2));
    }
}
