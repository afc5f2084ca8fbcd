//! The Hugging Face `config.json` of a Llama-family model.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Architectures this crate runs. They share one transformer; they differ in q/k/v biases (Qwen2)
/// and sliding-window attention (Mistral; we attend to the full context, which is exact for
/// sequences shorter than the window).
pub const SUPPORTED_ARCHITECTURES: [&str; 3] = ["LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM"];

/// The fields of `config.json` the model needs; unknown fields are kept in `extra` and written
/// back unchanged, so a folder we save keeps everything `transformers` put there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub architectures: Vec<String>,
    pub model_type: String,
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_key_value_heads: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<i64>,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: i64,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Llama's switch for biases on q/k/v/o; Qwen2 always has q/k/v biases (see `qkv_bias`).
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos_token_id: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pad_token_id: Option<serde_json::Value>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    10_000.0
}
fn default_max_pos() -> i64 {
    2048
}
fn default_act() -> String {
    "silu".into()
}

impl ModelConfig {
    /// A from-scratch Llama config (used by the presets).
    #[allow(clippy::too_many_arguments)]
    pub fn llama(
        vocab_size: i64,
        hidden_size: i64,
        intermediate_size: i64,
        num_hidden_layers: i64,
        num_attention_heads: i64,
        num_key_value_heads: i64,
        max_position_embeddings: i64,
        tie_word_embeddings: bool,
    ) -> Self {
        let mut extra = serde_json::Map::new();
        extra.insert("torch_dtype".into(), "float32".into());
        extra.insert("initializer_range".into(), 0.02.into());
        extra.insert("attention_dropout".into(), 0.0.into());
        ModelConfig {
            architectures: vec!["LlamaForCausalLM".into()],
            model_type: "llama".into(),
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads: Some(num_key_value_heads),
            head_dim: Some(hidden_size / num_attention_heads),
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            max_position_embeddings,
            tie_word_embeddings,
            attention_bias: false,
            mlp_bias: false,
            hidden_act: "silu".into(),
            rope_scaling: None,
            bos_token_id: None,
            eos_token_id: None,
            pad_token_id: None,
            extra,
        }
    }

    /// Reads and checks `config.json`; errors name the file and the field.
    pub fn load(path: &Path) -> Result<Self> {
        let text = crate::fsutil::read_to_string(path)?;
        let mut config: ModelConfig = serde_json::from_str(&text).map_err(|e| Error::file(path, e.to_string()))?;
        config.read_rope_parameters().map_err(|msg| Error::file(path, msg))?;
        config.validate().map_err(|msg| Error::file(path, msg))?;
        Ok(config)
    }

    /// Writes `config.json` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("config serialises");
        crate::fsutil::write_atomic(path, |w| w.write_all(text.as_bytes()))
    }

    /// transformers 5 writes RoPE settings as `rope_parameters: {rope_type, rope_theta}` instead
    /// of a top-level `rope_theta` / `rope_scaling`.
    fn read_rope_parameters(&mut self) -> std::result::Result<(), String> {
        let Some(params) = self.extra.get("rope_parameters").filter(|v| !v.is_null()) else {
            return Ok(());
        };
        let kind = params.get("rope_type").and_then(|t| t.as_str()).unwrap_or("default");
        if kind != "default" {
            return Err(format!("unsupported `rope_parameters.rope_type` {kind:?} (only plain RoPE)"));
        }
        if let Some(theta) = params.get("rope_theta").and_then(|t| t.as_f64()) {
            self.rope_theta = theta;
        }
        Ok(())
    }

    /// Checks that the architecture is supported and the shapes are consistent.
    pub fn validate(&self) -> std::result::Result<(), String> {
        match self.architectures.first() {
            Some(a) if SUPPORTED_ARCHITECTURES.contains(&a.as_str()) => {}
            other => {
                let named = other.map_or_else(|| "none".to_string(), |a| format!("`{a}`"));
                return Err(format!(
                    "unsupported architecture {named} in field `architectures` (supported: {})",
                    SUPPORTED_ARCHITECTURES.join(", ")
                ));
            }
        }
        if self.hidden_act != "silu" {
            return Err(format!("unsupported `hidden_act` {:?} (only \"silu\")", self.hidden_act));
        }
        if let Some(scaling) = self.rope_scaling.as_ref().filter(|v| !v.is_null()) {
            return Err(format!("unsupported `rope_scaling` {scaling} (only plain RoPE)"));
        }
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.kv_heads()),
            ("head_dim", self.head_dim()),
        ];
        for (field, value) in positive {
            if value <= 0 {
                return Err(format!("field `{field}` must be positive, got {value}"));
            }
        }
        if self.num_attention_heads % self.kv_heads() != 0 {
            return Err(format!(
                "`num_attention_heads` ({}) must be a multiple of `num_key_value_heads` ({})",
                self.num_attention_heads,
                self.kv_heads()
            ));
        }
        if self.head_dim.is_none() && self.hidden_size % self.num_attention_heads != 0 {
            return Err("`hidden_size` must be a multiple of `num_attention_heads`".into());
        }
        if self.head_dim() % 2 != 0 {
            return Err("the head dimension must be even for rotary embeddings".into());
        }
        Ok(())
    }

    pub fn kv_heads(&self) -> i64 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> i64 {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Whether q/k/v projections carry biases: Qwen2 always, Llama/Mistral when `attention_bias`.
    pub fn qkv_bias(&self) -> bool {
        self.architectures.first().map(String::as_str) == Some("Qwen2ForCausalLM") || self.attention_bias
    }

    /// Whether the output projection carries a bias (Llama's `attention_bias`; never in Qwen2).
    pub fn o_bias(&self) -> bool {
        self.attention_bias && self.architectures.first().map(String::as_str) != Some("Qwen2ForCausalLM")
    }
}
