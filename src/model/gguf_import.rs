//! A llama.cpp GGUF file converted into a Hugging Face folder (config.json, model.safetensors,
//! tokenizer.json, tokenizer_config.json): weights dequantised to f32, llama.cpp's q/k row order
//! and Gemma's (1 + w) norms undone, the config rebuilt from the metadata.

use super::ggml::unpermute_rows;
use super::gguf::{Gguf, GgufArch, Value, GGUF_ARCHITECTURES};
use super::gguf_tokenizer::{tokenizer_config_json, tokenizer_json};
use crate::error::{Error, Result};
use crate::model::config::ModelConfig;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;

/// Gemma 3's chat format (`<start_of_turn>user ... <end_of_turn>`, the reply as `model`, a system
/// message folded into the first user turn), for GGUF files that leave the template out.
const GEMMA_CHAT_TEMPLATE: &str = concat!(
    r#"{{ bos_token }}{% set system = messages[0].content ~ "\n\n" if messages[0].role == "system" else "" %}"#,
    r#"{% for m in messages if m.role != "system" %}{{ "<start_of_turn>" ~ ("model" if m.role == "assistant" "#,
    r#"else m.role) ~ "\n" ~ (system if loop.first else "") ~ (m.content | trim) ~ "<end_of_turn>\n" }}"#,
    r#"{% endfor %}{% if add_generation_prompt %}{{ "<start_of_turn>model\n" }}{% endif %}"#,
);

/// The chat template a converted folder gets: the file's own, else Gemma 3's for a Gemma 3 file.
pub fn chat_template(g: &Gguf) -> Option<&str> {
    let own = g.metadata.get("tokenizer.chat_template").and_then(Value::as_str);
    let arch = g.metadata.get("general.architecture").and_then(Value::as_str);
    own.or((arch == Some("gemma3")).then_some(GEMMA_CHAT_TEMPLATE))
}

/// Converts a GGUF of a supported architecture ([`GGUF_ARCHITECTURES`]) into a Hugging Face
/// folder at `out`, which must not exist unless `force`. Weights are dequantised to f32.
pub fn convert(path: &Path, out: &Path, force: bool) -> Result<ModelConfig> {
    crate::fsutil::check_overwrite(out, force)?;
    let g = Gguf::read(path)?;
    let arch = g.get("general.architecture")?.as_str().unwrap_or_default().to_string();
    let Some(family) = GGUF_ARCHITECTURES.iter().find(|a| a.gguf == arch) else {
        let mut known: Vec<&str> = GGUF_ARCHITECTURES.iter().map(|a| a.gguf).collect();
        known.dedup();
        return Err(Error::file(path, format!("architecture `{arch}` is not supported ({})", known.join(", "))));
    };
    let key = |k: &str| format!("{arch}.{k}");
    let int = |k: &str| g.metadata.get(&key(k)).and_then(Value::as_int);
    let heads = g.int(&key("attention.head_count"))?;
    let kv_heads = int("attention.head_count_kv").unwrap_or(heads);
    let tokens = g.string_array("tokenizer.ggml.tokens")?;
    let tied = !g.tensors.iter().any(|t| t.name == "output.weight");
    let mut config = ModelConfig::llama(
        tokens.len() as i64,
        g.int(&key("embedding_length"))?,
        g.int(&key("feed_forward_length"))?,
        g.int(&key("block_count"))?,
        heads,
        kv_heads,
        g.int(&key("context_length"))?,
        tied,
    );
    config.architectures = vec![family.hf.to_string()];
    config.model_type = arch.clone();
    config.head_dim = int("attention.key_length").or(config.head_dim);
    if arch == "gemma3" {
        gemma3_config(&g, &mut config);
    }
    config.rope_theta = g.metadata.get(&key("rope.freq_base")).and_then(Value::as_float).unwrap_or(10_000.0);
    config.rms_norm_eps = g.float(&key("attention.layer_norm_rms_epsilon"))?;
    match g.metadata.get(&key("rope.scaling.type")).and_then(Value::as_str) {
        None | Some("none") => {}
        Some("linear") => {
            let factor = g.float(&key("rope.scaling.factor"))?;
            config.rope_scaling = Some(json!({"rope_type": "linear", "factor": factor}));
        }
        Some(other) => return Err(Error::file(path, format!("RoPE scaling `{other}` is not supported (linear)"))),
    }
    if let Some(t) = g.tensors.iter().find(|t| t.name == "rope_freqs.weight") {
        let divisors = g.tensor_f32(t)?;
        config.rope_scaling = Some(config.llama3_scaling_of(&divisors).ok_or_else(|| {
            Error::file(path, "`rope_freqs` does not follow Llama 3's RoPE scaling rule; it cannot be converted")
        })?);
    }
    let special = |k: &str| g.metadata.get(&format!("tokenizer.ggml.{k}_token_id")).and_then(Value::as_int);
    config.bos_token_id = special("bos").map(Into::into);
    config.eos_token_id = special("eos").map(Into::into);
    config.extra.insert("torch_dtype".into(), "float32".into());
    config.validate().map_err(|e| Error::file(path, format!("the converted config is invalid: {e}")))?;

    let mut tensors = BTreeMap::new();
    for t in g.tensors.iter().filter(|t| t.name != "rope_freqs.weight") {
        let name = family
            .rename(&t.name, true)
            .ok_or_else(|| Error::file(path, format!("tensor `{}` has no Hugging Face counterpart", t.name)))?;
        let mut values = g.tensor_f32(t)?;
        let cols = t.dims[0] as usize;
        if family.permute && t.name.ends_with("attn_q.weight") {
            values = unpermute_rows(&values, heads as usize, cols);
        } else if family.permute && t.name.ends_with("attn_k.weight") {
            values = unpermute_rows(&values, kv_heads as usize, cols);
        } else if GgufArch::is_norm(&name) {
            values.iter_mut().for_each(|v| *v -= family.norm_shift);
        }
        tensors.insert(name, tch::Tensor::from_slice(&values).reshape(t.shape()));
    }
    let tokenizer = tokenizer_json(&g)?;
    let tokenizer_config = tokenizer_config_json(&g, chat_template(&g))?;
    crate::fsutil::replace_dir(out, |dir| {
        config.save(&dir.join("config.json"))?;
        crate::model::hf::write_safetensors(&dir.join("model.safetensors"), &tensors)?;
        for (file, value) in [("tokenizer.json", tokenizer), ("tokenizer_config.json", tokenizer_config)] {
            let text = serde_json::to_string_pretty(&value).expect("JSON");
            crate::fsutil::write_atomic(&dir.join(file), |w| w.write_all(text.as_bytes()))?;
        }
        Ok(())
    })?;
    Ok(config)
}

/// Gemma 3's settings, as llama.cpp reads them: tanh-GELU; one layer in six global (or the
/// file's pattern), the rest sliding with RoPE base 10,000; attention scaled by the head
/// dimension, except the 62-layer 27B model's, by hidden / heads.
fn gemma3_config(g: &Gguf, config: &mut ModelConfig) {
    let get = |k: &str| g.metadata.get(&format!("gemma3.{k}"));
    config.model_type = "gemma3_text".into();
    config.hidden_act = "gelu_pytorch_tanh".into();
    let scalar = match get("attention.scale").and_then(Value::as_float) {
        Some(scale) if scale > 0.0 => 1.0 / (scale * scale),
        _ if config.num_hidden_layers == 62 => (config.hidden_size / config.num_attention_heads) as f64,
        _ => config.head_dim() as f64,
    };
    let mut extra = vec![
        ("hidden_activation", json!("gelu_pytorch_tanh")),
        ("query_pre_attn_scalar", json!(scalar)),
        ("sliding_window", json!(get("attention.sliding_window").and_then(Value::as_int).unwrap_or(4096))),
        ("rope_local_base_freq", json!(get("rope.freq_base_swa").and_then(Value::as_float).unwrap_or(10_000.0))),
    ];
    match get("attention.sliding_window_pattern") {
        Some(Value::Array(layers)) => {
            let kind = |v: &Value| if v == &Value::Bool(true) { "sliding_attention" } else { "full_attention" };
            extra.push(("layer_types", json!(layers.iter().map(kind).collect::<Vec<_>>())));
        }
        pattern => extra.push(("sliding_window_pattern", json!(pattern.and_then(Value::as_int).unwrap_or(6)))),
    }
    config.extra.extend(extra.into_iter().map(|(k, v)| (k.to_string(), v)));
}
