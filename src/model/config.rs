//! The Hugging Face `config.json` of a Llama-family model.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Architectures this crate runs. They share one transformer; they differ in q/k/v biases (Qwen2),
/// RMSNorm on each head of q and k before RoPE (Qwen3, Gemma 3), sliding-window attention (Mistral:
/// we attend to the full context, which is exact for sequences shorter than the window; Gemma 3:
/// exact, see [`Gemma3`]) and Gemma 3's norms, activation and scales.
pub const SUPPORTED_ARCHITECTURES: [&str; 5] =
    ["LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "MistralForCausalLM", "Gemma3ForCausalLM"];

/// How RoPE's frequencies are scaled for a longer context than the model was trained on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    Default,
    /// Every frequency divided by `factor` (positions interpolated).
    Linear { factor: f64 },
    /// Llama 3.1's: low frequencies divided by `factor`, high ones kept, a smooth blend between.
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position_embeddings: f64 },
}

/// What Gemma 3 (text) does differently from Llama: embeddings scaled by sqrt(hidden); RMSNorm
/// weights stored as offsets from 1; norms before and after both attention and the MLP;
/// tanh-GELU; q/k norms; attention scaled by `query_pre_attn_scalar`^-1/2; and sliding layers that
/// attend to the last `sliding_window` positions only, with their own RoPE base (no scaling).
#[derive(Debug, Clone, PartialEq)]
pub struct Gemma3 {
    pub query_pre_attn_scalar: f64,
    pub sliding_window: i64,
    /// Per layer: whether it is a sliding (local) layer.
    pub sliding: Vec<bool>,
    pub local_rope_theta: f64,
}

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
        // Gemma 3's config.json leaves out its default: tied embeddings.
        if !text.contains("\"tie_word_embeddings\"") && config.architectures.iter().any(|a| a == "Gemma3ForCausalLM") {
            config.tie_word_embeddings = true;
        }
        config.read_rope_parameters().map_err(|msg| Error::file(path, msg))?;
        config.validate().map_err(|msg| Error::file(path, msg))?;
        Ok(config)
    }

    /// Writes `config.json` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("config serialises");
        crate::fsutil::write_atomic(path, |w| w.write_all(text.as_bytes()))
    }

    /// transformers 5 writes RoPE settings as `rope_parameters: {rope_type, rope_theta, ...}`
    /// instead of a top-level `rope_theta` / `rope_scaling`.
    fn read_rope_parameters(&mut self) -> std::result::Result<(), String> {
        let Some(params) = self.extra.get("rope_parameters").filter(|v| !v.is_null()) else {
            return Ok(());
        };
        if let Some(theta) = params.get("rope_theta").and_then(|t| t.as_f64()) {
            self.rope_theta = theta;
        }
        Ok(())
    }

    /// The RoPE variant: `rope_parameters` (transformers 5) or `rope_scaling`, by its
    /// `rope_type` (or the older `type`).
    pub fn rope_scaling(&self) -> std::result::Result<RopeScaling, String> {
        let spec = match self.extra.get("rope_parameters").filter(|v| !v.is_null()) {
            Some(params) => ("rope_parameters", params),
            None => match self.rope_scaling.as_ref().filter(|v| !v.is_null()) {
                Some(scaling) => ("rope_scaling", scaling),
                None => return Ok(RopeScaling::Default),
            },
        };
        let (field, v) = spec;
        let kind = v.get("rope_type").or_else(|| v.get("type")).and_then(|t| t.as_str()).unwrap_or("default");
        let number = |key: &str| {
            v.get(key)
                .and_then(|x| x.as_f64())
                .filter(|x| x.is_finite() && *x > 0.0)
                .ok_or_else(|| format!("`{field}` of type {kind:?} needs a positive number `{key}`"))
        };
        match kind {
            "default" => Ok(RopeScaling::Default),
            "linear" => Ok(RopeScaling::Linear { factor: number("factor")? }),
            "llama3" => {
                let (low, high) = (number("low_freq_factor")?, number("high_freq_factor")?);
                if high <= low {
                    return Err(format!("`{field}`: `high_freq_factor` must exceed `low_freq_factor`"));
                }
                Ok(RopeScaling::Llama3 {
                    factor: number("factor")?,
                    low_freq_factor: low,
                    high_freq_factor: high,
                    original_max_position_embeddings: number("original_max_position_embeddings")?,
                })
            }
            other => Err(format!(
                "unsupported `{field}` type {other:?} (supported: default, linear, llama3; not yet yarn, dynamic, \
                 longrope)"
            )),
        }
    }

    /// RoPE's inverse frequencies, one per pair of head dimensions, as transformers computes them
    /// (in f32), then scaled by the config's [`RopeScaling`].
    pub fn inv_freq(&self) -> Vec<f32> {
        let d = self.head_dim();
        let base: Vec<f32> =
            (0..d / 2).map(|i| 1.0 / (self.rope_theta as f32).powf(2.0 * i as f32 / d as f32)).collect();
        match self.rope_scaling().unwrap_or(RopeScaling::Default) {
            RopeScaling::Default => base,
            RopeScaling::Linear { factor } => base.iter().map(|f| f / factor as f32).collect(),
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                // Meta's Llama 3.1 rule: long wavelengths slowed by `factor`, short ones kept, the
                // band between blended smoothly.
                let (factor, low, high, old) = (
                    factor as f32,
                    low_freq_factor as f32,
                    high_freq_factor as f32,
                    original_max_position_embeddings as f32,
                );
                let (low_wavelen, high_wavelen) = (old / low, old / high);
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        if wavelen > low_wavelen {
                            f / factor
                        } else if wavelen < high_wavelen {
                            f
                        } else {
                            let smooth = (old / wavelen - low) / (high - low);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        }
    }

    /// What the scaling divides each RoPE frequency by: llama.cpp's `rope_freqs`.
    pub fn rope_divisors(&self) -> Vec<f32> {
        let plain = ModelConfig { rope_scaling: None, ..self.clone() }.inv_freq();
        plain.iter().zip(self.inv_freq()).map(|(f, scaled)| f / scaled).collect()
    }

    /// The Llama 3 `rope_scaling` that gives llama.cpp's per-frequency divisors (`rope_freqs`):
    /// `factor` is the largest divisor; the blended band is linear in the frequency, which fixes the
    /// rule up to a scale taken so that `low_freq_factor` = 1 (Meta's value). None when no such rule
    /// reproduces the divisors.
    pub fn llama3_scaling_of(&self, divisors: &[f32]) -> Option<serde_json::Value> {
        let base = ModelConfig { rope_scaling: None, ..self.clone() }.inv_freq();
        let factor = divisors.iter().cloned().fold(1.0f32, f32::max) as f64;
        let blend = |d: f32| ((1.0 / d as f64) - 1.0 / factor) / (1.0 - 1.0 / factor);
        let band: Vec<(f64, f64)> = base
            .iter()
            .zip(divisors)
            .filter(|(_, &d)| d as f64 > 1.0 + 1e-4 && (d as f64) < factor - 1e-4)
            .map(|(&f, &d)| (f as f64, blend(d)))
            .collect();
        // smooth = a * freq - b, with a = old / (2 pi (high - low)) and b = low / (high - low).
        let candidates: Vec<(f64, f64, f64)> = match (band.first(), band.last()) {
            (Some(&(f1, s1)), Some(&(f2, s2))) if band.len() >= 2 && f1 != f2 => {
                let a = (s1 - s2) / (f1 - f2);
                let b = a * f1 - s1;
                // The fit carries f32 rounding: Meta's factors are round numbers.
                let high = ((1.0 + 1.0 / b) * 1e4).round() / 1e4;
                (b > 0.0).then(|| (1.0, high, 2.0 * std::f64::consts::PI * a / b)).into_iter().collect()
            }
            // No blended frequency to fit: Meta's factors with the usual original contexts.
            _ => [8192.0, 131_072.0, 32_768.0, 16_384.0, 4096.0, 2048.0].map(|old| (1.0, 4.0, old)).to_vec(),
        };
        candidates.into_iter().find_map(|(low, high, old)| {
            let scaling = serde_json::json!({"rope_type": "llama3", "factor": factor, "low_freq_factor": low,
                                 "high_freq_factor": high, "original_max_position_embeddings": old.round()});
            let again = ModelConfig { rope_scaling: Some(scaling.clone()), ..self.clone() }.rope_divisors();
            again.iter().zip(divisors).all(|(x, y)| (x - y).abs() <= 1e-3 * y.abs()).then_some(scaling)
        })
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
        if self.gemma3()?.is_none() && self.hidden_act != "silu" {
            return Err(format!("unsupported `hidden_act` {:?} (only \"silu\")", self.hidden_act));
        }
        self.rope_scaling()?;
        if self.extra.get("use_sliding_window").and_then(|v| v.as_bool()) == Some(true) {
            return Err("unsupported `use_sliding_window` = true (sliding-window attention is not implemented for \
                        this architecture)"
                .into());
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

    /// About how many parameters the config implies (its matrices; norms and biases are a
    /// rounding error), in f64 so that no size overflows: checked before anything is allocated.
    pub fn approx_parameters(&self) -> f64 {
        let [v, h, i, l, heads, kv, d] = [
            self.vocab_size,
            self.hidden_size,
            self.intermediate_size,
            self.num_hidden_layers,
            self.num_attention_heads,
            self.kv_heads(),
            self.head_dim(),
        ]
        .map(|x| x.max(0) as f64);
        let embeddings = if self.tie_word_embeddings { v * h } else { 2.0 * v * h };
        embeddings + l * (2.0 * h * heads * d + 2.0 * h * kv * d + 3.0 * h * i)
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

    /// Whether q and k are RMS-normalised per head before RoPE (`q_norm` / `k_norm`: Qwen3, Gemma 3).
    pub fn qk_norm(&self) -> bool {
        matches!(self.architectures.first().map(String::as_str), Some("Qwen3ForCausalLM" | "Gemma3ForCausalLM"))
    }

    /// Gemma 3's settings, for a `Gemma3ForCausalLM`; what it cannot run is refused by name.
    pub fn gemma3(&self) -> std::result::Result<Option<Gemma3>, String> {
        if self.architectures.first().map(String::as_str) != Some("Gemma3ForCausalLM") {
            return Ok(None);
        }
        let get = |key: &str| self.extra.get(key).filter(|v| !v.is_null());
        let act = get("hidden_activation").and_then(|v| v.as_str()).unwrap_or("gelu_pytorch_tanh");
        if act != "gelu_pytorch_tanh" {
            return Err(format!("unsupported `hidden_activation` {act:?} (only \"gelu_pytorch_tanh\")"));
        }
        for key in ["final_logit_softcapping", "attn_logit_softcapping"] {
            if get(key).is_some() {
                return Err(format!("unsupported `{key}` (Gemma 3 has none; Gemma 2's is not implemented)"));
            }
        }
        let number = |key: &str, default: f64| get(key).map_or(Some(default), |v| v.as_f64()).filter(|x| *x > 0.0);
        let sliding_window = number("sliding_window", 4096.0).ok_or("field `sliding_window` must be positive")? as i64;
        let layers = self.num_hidden_layers.max(0) as usize;
        let sliding = match get("layer_types").and_then(|v| v.as_array()) {
            Some(types) => {
                let kinds: Vec<Option<&str>> = types.iter().map(|t| t.as_str()).collect();
                if kinds.len() != layers
                    || kinds.iter().any(|k| !matches!(k, Some("sliding_attention" | "full_attention")))
                {
                    return Err("field `layer_types` must name each layer sliding_attention or full_attention".into());
                }
                kinds.iter().map(|k| *k == Some("sliding_attention")).collect()
            }
            None => {
                let pattern =
                    number("sliding_window_pattern", 6.0).ok_or("field `sliding_window_pattern` must be positive")?;
                (0..layers).map(|i| (i + 1) % pattern as usize != 0).collect()
            }
        };
        Ok(Some(Gemma3 {
            query_pre_attn_scalar: number("query_pre_attn_scalar", 256.0)
                .ok_or("field `query_pre_attn_scalar` must be positive")?,
            sliding_window,
            sliding,
            local_rope_theta: number("rope_local_base_freq", 10_000.0)
                .ok_or("field `rope_local_base_freq` must be positive")?,
        }))
    }

    /// Whether the output projection carries a bias (Llama's `attention_bias`; never in Qwen2).
    pub fn o_bias(&self) -> bool {
        self.attention_bias && self.architectures.first().map(String::as_str) != Some("Qwen2ForCausalLM")
    }
}
