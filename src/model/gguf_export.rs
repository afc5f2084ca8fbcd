//! A model folder (or a live model) as a llama.cpp GGUF file: the inverse of [`super::gguf`]'s
//! conversion, so a llama.cpp server can sample from the policy being trained.
//!
//! The file holds the hyper-parameters under llama.cpp's architecture (`llama` for Llama and
//! Mistral, `qwen2`, `qwen3`, `gemma3`), RoPE scaling, the tokenizer (see [`super::gguf_tokenizer`])
//! and chat template, and the weights under llama.cpp's names, with Llama's q/k rows in its rotary
//! order and Gemma's norms as (1 + w). Matrices are stored as F32, F16 or Q8_0; norms stay F32,
//! as llama.cpp's own converter keeps them.

use super::config::{Gemma3, ModelConfig, RopeScaling};
use super::ggml::{permute_rows, GgmlType};
use super::gguf::GgufArch;
use super::gguf_tokenizer::gguf_vocab;
use super::hf::CausalLm;
use super::llama::HEAD_PREFIX;
use crate::error::{Error, Result};
use crate::tokenizer::{Tokenizer, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE};
use serde_json::Value as Json;
use std::io::Write;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// How the matrices of an export are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum GgufDtype {
    F32,
    F16,
    #[value(name = "q8_0")]
    Q8_0,
}

impl GgufDtype {
    fn tensor_type(self) -> GgmlType {
        match self {
            GgufDtype::F32 => GgmlType::F32,
            GgufDtype::F16 => GgmlType::F16,
            GgufDtype::Q8_0 => GgmlType::Q8_0,
        }
    }
    /// llama.cpp's `general.file_type` (LLAMA_FTYPE_ALL_F32, MOSTLY_F16, MOSTLY_Q8_0).
    fn file_type(self) -> u32 {
        match self {
            GgufDtype::F32 => 0,
            GgufDtype::F16 => 1,
            GgufDtype::Q8_0 => 7,
        }
    }
}

/// Alignment of the tensor data (GGUF's default, so no `general.alignment` key is needed).
const ALIGNMENT: usize = 32;

/// Exports the model folder `dir` (config.json, safetensors, tokenizer.json) to `out`.
pub fn export_dir(dir: &Path, out: &Path, dtype: GgufDtype, force: bool) -> Result<()> {
    crate::fsutil::check_overwrite(out, force)?;
    let (model, tokenizer) = CausalLm::load_with_tokenizer(dir, Device::Cpu, false)?;
    let tokenizer_json = read_json(&dir.join(TOKENIZER_FILE))?
        .ok_or_else(|| Error::file(dir.join(TOKENIZER_FILE), "is missing (the GGUF file embeds the tokenizer)"))?;
    let chat_template = read_json(&dir.join(TOKENIZER_CONFIG_FILE))?
        .and_then(|c| c.get("chat_template").and_then(Json::as_str).map(String::from));
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    export(&model, &tokenizer, &tokenizer_json, chat_template.as_deref(), &name, out, dtype)
}

/// Exports a live model: what weight sync writes for a llama.cpp engine.
pub fn export_model(model: &CausalLm, tokenizer: &Tokenizer, out: &Path, dtype: GgufDtype) -> Result<()> {
    let tokenizer_json: Json = serde_json::from_str(
        &tokenizer
            .inner()
            .to_string(false)
            .map_err(|e| Error::Invalid(format!("cannot serialise the tokenizer for GGUF export: {e}")))?,
    )
    .expect("the tokenizers library writes JSON");
    export(model, tokenizer, &tokenizer_json, tokenizer.chat_template(), "reasonrl-policy", out, dtype)
}

fn read_json(path: &Path) -> Result<Option<Json>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = crate::fsutil::read_to_string(path)?;
    serde_json::from_str(&text).map(Some).map_err(|e| Error::file(path, e.to_string()))
}

fn export(
    model: &CausalLm,
    tokenizer: &Tokenizer,
    tokenizer_json: &Json,
    chat_template: Option<&str>,
    name: &str,
    out: &Path,
    dtype: GgufDtype,
) -> Result<()> {
    if model.lora.is_some() {
        // llama.cpp gets plain weights: the adapters folded in.
        return export(&model.merged()?, tokenizer, tokenizer_json, chat_template, name, out, dtype);
    }
    let c = model.config();
    let hf_arch = c.architectures.first().map(String::as_str).unwrap_or_default();
    let family = GgufArch::of_hf(hf_arch).map_err(|e| Error::Invalid(format!("GGUF export: {e}")))?;
    let (arch, permute) = (family.gguf, family.permute);
    if c.mlp_bias || permute && c.attention_bias {
        return Err(Error::Invalid(format!("GGUF export does not support `{hf_arch}` with biases")));
    }
    let scaling = c.rope_scaling().map_err(Error::Invalid)?;
    let heads = c.num_attention_heads;
    let kv_heads = c.kv_heads();
    let head_dim = c.head_dim();
    let mut meta = Metadata::default();
    let key = |k: &str| format!("{arch}.{k}");
    meta.str("general.architecture", arch);
    meta.str("general.name", name);
    meta.u32("general.file_type", dtype.file_type());
    meta.u32(&key("vocab_size"), c.vocab_size as u32);
    meta.u32(&key("context_length"), c.max_position_embeddings as u32);
    meta.u32(&key("embedding_length"), c.hidden_size as u32);
    meta.u32(&key("block_count"), c.num_hidden_layers as u32);
    meta.u32(&key("feed_forward_length"), c.intermediate_size as u32);
    meta.u32(&key("attention.head_count"), heads as u32);
    meta.u32(&key("attention.head_count_kv"), kv_heads as u32);
    meta.u32(&key("attention.key_length"), head_dim as u32);
    meta.u32(&key("attention.value_length"), head_dim as u32);
    meta.u32(&key("rope.dimension_count"), head_dim as u32);
    meta.f32(&key("rope.freq_base"), c.rope_theta as f32);
    meta.f32(&key("attention.layer_norm_rms_epsilon"), c.rms_norm_eps as f32);
    if let Some(gemma) = c.gemma3().map_err(Error::Invalid)? {
        check_gemma3(c, &gemma)?;
        meta.u32(&key("attention.sliding_window"), gemma.sliding_window as u32);
    }
    // Llama 3's scaling travels as llama.cpp's per-frequency divisors (`rope_freqs`), linear as
    // a type and factor, as llama.cpp's own converter writes them.
    let mut extra_tensors = Vec::new();
    match scaling {
        RopeScaling::Default => {}
        RopeScaling::Linear { factor } => {
            meta.str(&key("rope.scaling.type"), "linear");
            meta.f32(&key("rope.scaling.factor"), factor as f32);
        }
        RopeScaling::Llama3 { .. } if arch != "llama" => {
            return Err(Error::Invalid(format!(
                "GGUF export of Llama 3 RoPE scaling needs a Llama model, not `{hf_arch}`"
            )));
        }
        RopeScaling::Llama3 { .. } => {
            let divisors = c.rope_divisors();
            let shape = vec![divisors.len() as i64];
            extra_tensors.push((
                "rope_freqs.weight".to_string(),
                shape,
                GgmlType::F32,
                encode(GgmlType::F32, &divisors),
            ));
        }
    }
    tokenizer_metadata(&mut meta, tokenizer, tokenizer_json, c.vocab_size as usize)?;
    if let Some(template) = chat_template {
        meta.str("tokenizer.chat_template", template);
    }

    let mut vars: Vec<(String, Tensor)> =
        model.vs.variables().into_iter().filter(|(n, _)| !n.starts_with(HEAD_PREFIX)).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let mut tensors = Vec::with_capacity(vars.len());
    for (hf, t) in vars {
        let gguf =
            family.gguf_name(&hf).ok_or_else(|| Error::Invalid(format!("tensor `{hf}` has no llama.cpp name")))?;
        let shape = t.size();
        let mut values = Vec::<f32>::try_from(t.detach().to_device(Device::Cpu).to_kind(Kind::Float).flatten(0, -1))
            .map_err(|e| Error::Invalid(format!("tensor `{hf}`: {e}")))?;
        let cols = *shape.last().expect("weights have a dimension") as usize;
        if permute && hf.ends_with("q_proj.weight") {
            values = permute_rows(&values, heads as usize, cols);
        } else if permute && hf.ends_with("k_proj.weight") {
            values = permute_rows(&values, kv_heads as usize, cols);
        } else if GgufArch::is_norm(&hf) {
            values.iter_mut().for_each(|v| *v += family.norm_shift);
        }
        // 1-D tensors (norms) stay f32; so does a matrix whose rows are not whole Q8_0 blocks.
        let kind = match dtype.tensor_type() {
            _ if shape.len() < 2 => GgmlType::F32,
            GgmlType::Q8_0 if !cols.is_multiple_of(32) => GgmlType::F16,
            kind => kind,
        };
        tensors.push((gguf, shape, kind, encode(kind, &values)));
    }
    tensors.extend(extra_tensors);
    crate::fsutil::write_atomic(out, |w| write_file(w, &meta, &tensors))
}

/// llama.cpp fixes what Gemma 3's config.json sets: one layer in six global, the local RoPE base
/// 10,000, attention scaled by the head dimension (hidden / heads for the 62-layer 27B). A model
/// that differs would run differently there, so it is refused by name.
fn check_gemma3(c: &ModelConfig, gemma: &Gemma3) -> Result<()> {
    let scalar = if c.num_hidden_layers == 62 { c.hidden_size / c.num_attention_heads } else { c.head_dim() };
    let pattern: Vec<bool> = (0..gemma.sliding.len()).map(|i| (i + 1) % 6 != 0).collect();
    let refuse = |what: String| Err(Error::Invalid(format!("GGUF export: llama.cpp runs Gemma 3 with {what}")));
    if gemma.sliding != pattern {
        return refuse("every sixth layer global and the rest sliding; this config's layers differ".into());
    }
    if gemma.local_rope_theta != 10_000.0 {
        return refuse(format!("`rope_local_base_freq` 10000, not {}", gemma.local_rope_theta));
    }
    if gemma.query_pre_attn_scalar != scalar as f64 {
        return refuse(format!("`query_pre_attn_scalar` {scalar}, not {}", gemma.query_pre_attn_scalar));
    }
    Ok(())
}

/// The tokenizer's `tokenizer.ggml.*` keys.
fn tokenizer_metadata(meta: &mut Metadata, tokenizer: &Tokenizer, json: &Json, vocab_size: usize) -> Result<()> {
    let vocab = gguf_vocab(json, vocab_size)?;
    meta.str("tokenizer.ggml.model", vocab.model);
    meta.str("tokenizer.ggml.pre", vocab.pre);
    meta.strs("tokenizer.ggml.tokens", &vocab.tokens);
    meta.i32s("tokenizer.ggml.token_type", &vocab.types);
    if let Some(scores) = &vocab.scores {
        meta.f32s("tokenizer.ggml.scores", scores);
        meta.bool("tokenizer.ggml.add_space_prefix", vocab.add_space_prefix);
    }
    if let Some(merges) = &vocab.merges {
        meta.strs("tokenizer.ggml.merges", merges);
    }
    if let Some(bos) = tokenizer.bos_id() {
        meta.u32("tokenizer.ggml.bos_token_id", bos);
    }
    meta.u32("tokenizer.ggml.eos_token_id", tokenizer.eos_id());
    meta.u32("tokenizer.ggml.padding_token_id", tokenizer.pad_id());
    if let Some(unknown) = vocab.unknown {
        meta.u32("tokenizer.ggml.unknown_token_id", unknown);
    }
    meta.bool("tokenizer.ggml.add_bos_token", tokenizer.bos_id().is_some());
    meta.bool("tokenizer.ggml.add_eos_token", false);
    Ok(())
}

/// The bytes of `values` stored as `kind` (F32, F16 or Q8_0).
fn encode(kind: GgmlType, values: &[f32]) -> Vec<u8> {
    match kind {
        GgmlType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        GgmlType::F16 => values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
        GgmlType::Q8_0 => values.chunks(32).flat_map(quantize_q8_0).collect(),
        other => unreachable!("no encoder for {other:?}"),
    }
}

/// One Q8_0 block, as ggml's reference quantiser makes it: scale amax/127 (as f16), then 32
/// values rounded to the nearest step.
fn quantize_q8_0(block: &[f32]) -> Vec<u8> {
    let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut out = half::f16::from_f32(d).to_le_bytes().to_vec();
    out.extend(block.iter().map(|&v| (v * inv).round() as i8 as u8));
    out
}

/// Typed GGUF key-value pairs, already encoded, in insertion order.
#[derive(Default)]
struct Metadata {
    count: u64,
    bytes: Vec<u8>,
}

impl Metadata {
    fn key(&mut self, key: &str, type_id: u32) {
        self.count += 1;
        put_str(&mut self.bytes, key);
        self.bytes.extend(type_id.to_le_bytes());
    }
    fn u32(&mut self, key: &str, v: u32) {
        self.key(key, 4);
        self.bytes.extend(v.to_le_bytes());
    }
    fn f32(&mut self, key: &str, v: f32) {
        self.key(key, 6);
        self.bytes.extend(v.to_le_bytes());
    }
    fn bool(&mut self, key: &str, v: bool) {
        self.key(key, 7);
        self.bytes.push(v as u8);
    }
    fn str(&mut self, key: &str, v: &str) {
        self.key(key, 8);
        put_str(&mut self.bytes, v);
    }
    fn strs(&mut self, key: &str, v: &[String]) {
        self.key(key, 9);
        self.bytes.extend(8u32.to_le_bytes());
        self.bytes.extend((v.len() as u64).to_le_bytes());
        v.iter().for_each(|s| put_str(&mut self.bytes, s));
    }
    fn f32s(&mut self, key: &str, v: &[f32]) {
        self.key(key, 9);
        self.bytes.extend(6u32.to_le_bytes());
        self.bytes.extend((v.len() as u64).to_le_bytes());
        v.iter().for_each(|x| self.bytes.extend(x.to_le_bytes()));
    }
    /// An array of i32 (llama.cpp reads token types only as i32).
    fn i32s(&mut self, key: &str, v: &[i32]) {
        self.key(key, 9);
        self.bytes.extend(5u32.to_le_bytes());
        self.bytes.extend((v.len() as u64).to_le_bytes());
        v.iter().for_each(|x| self.bytes.extend(x.to_le_bytes()));
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

/// Header, metadata, tensor table, then each tensor's data at an aligned offset.
fn write_file(
    w: &mut dyn Write,
    meta: &Metadata,
    tensors: &[(String, Vec<i64>, GgmlType, Vec<u8>)],
) -> std::io::Result<()> {
    let mut head = b"GGUF".to_vec();
    head.extend(3u32.to_le_bytes());
    head.extend((tensors.len() as u64).to_le_bytes());
    head.extend(meta.count.to_le_bytes());
    head.extend(&meta.bytes);
    let mut offset = 0usize;
    for (name, shape, kind, data) in tensors {
        put_str(&mut head, name);
        head.extend((shape.len() as u32).to_le_bytes());
        shape.iter().rev().for_each(|&d| head.extend((d as u64).to_le_bytes())); // innermost first
        head.extend(kind.id().to_le_bytes());
        head.extend((offset as u64).to_le_bytes());
        offset = (offset + data.len()).div_ceil(ALIGNMENT) * ALIGNMENT;
    }
    head.resize(head.len().div_ceil(ALIGNMENT) * ALIGNMENT, 0);
    w.write_all(&head)?;
    for (_, _, _, data) in tensors {
        w.write_all(data)?;
        w.write_all(&vec![0; data.len().div_ceil(ALIGNMENT) * ALIGNMENT - data.len()])?;
    }
    Ok(())
}
