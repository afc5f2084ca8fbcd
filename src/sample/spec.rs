//! The sampling spec: K, temperature, top_p, the token budget and the batch, with their one set
//! of defaults and range rules; and one call's settings (the spec, a seed, stop rules).

/// How to sample (`[sampling]` in configs, and the sampled pass of every evaluation): the one
/// place these settings and their defaults live. K is `samples_per_prompt` everywhere.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Sampling {
    /// K: solutions sampled per prompt (EI's K per question, GRPO's group size).
    pub samples_per_prompt: usize,
    /// 0 means greedy decoding.
    pub temperature: f64,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches `top_p`.
    pub top_p: f64,
    /// Stop after this many new tokens.
    pub max_new_tokens: usize,
    /// Rows decoded together.
    pub batch_size: usize,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling { samples_per_prompt: 4, temperature: 0.7, top_p: 1.0, max_new_tokens: 256, batch_size: 64 }
    }
}

impl Sampling {
    /// The range rules, with each bad value named by its key under `prefix` (e.g. `sampling.`):
    /// K at least `min_k` (0 where a sampled pass is optional), temperature finite and >= 0,
    /// top_p in (0, 1], max_new_tokens and batch_size at least 1.
    pub fn check(&self, prefix: &str, min_k: usize) -> std::result::Result<(), String> {
        let bad = |key: &str, value: String, rule: &str| Err(format!("`{prefix}{key}` = {value}: must be {rule}"));
        if self.samples_per_prompt < min_k {
            return bad("samples_per_prompt", self.samples_per_prompt.to_string(), &format!("at least {min_k}"));
        }
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad("temperature", self.temperature.to_string(), "a finite number >= 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", self.top_p.to_string(), "in (0, 1]");
        }
        if self.max_new_tokens == 0 {
            return bad("max_new_tokens", "0".into(), "at least 1");
        }
        if self.batch_size == 0 {
            return bad("batch_size", "0".into(), "at least 1");
        }
        Ok(())
    }

    /// The sampler's settings with this seed.
    pub fn with_seed(&self, seed: u64) -> SamplingConfig {
        SamplingConfig { spec: self.clone(), seed, ..SamplingConfig::default() }
    }

    /// The same settings, decoding greedily one sample per prompt.
    pub fn greedy(&self) -> Sampling {
        Sampling { samples_per_prompt: 1, temperature: 0.0, ..self.clone() }
    }
}

/// One call of the sampler: the spec, the seed, and the stop rules the prompt adds.
#[derive(Debug, Clone)]
pub struct SamplingConfig {
    pub spec: Sampling,
    pub seed: u64,
    /// Stop once the response contains any of these; the text ends with the stop string.
    pub stop_strings: Vec<String>,
    /// Stop once a `#### N` answer line is complete (followed by a newline).
    pub stop_after_answer_line: bool,
    /// A token fed after every token that ends a line, before sampling goes on: per-step RCRL
    /// conditions each step on `[GOOD]` this way. It is part of the response, with log-prob 0.
    pub step_prefix: Option<u32>,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            spec: Sampling::default(),
            seed: 0,
            stop_strings: Vec::new(),
            stop_after_answer_line: true,
            step_prefix: None,
        }
    }
}
