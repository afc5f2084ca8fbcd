//! A model folder (or a live model) as a llama.cpp GGUF file: the inverse of [`super::gguf`]'s
//! conversion, so a llama.cpp server can sample from the policy being trained.
//!
//! The file holds the hyper-parameters under llama.cpp's architecture (`llama` for Llama and
//! Mistral, `qwen2`, `qwen3`), RoPE scaling, the byte-level BPE tokenizer (tokens, types, merges,
//! special ids, pre-tokenizer) and chat template, and the weights under llama.cpp's names, with
//! Llama's q/k rows in its rotary order. Matrices are stored as F32, F16 or Q8_0; norms stay F32,
//! as llama.cpp's own converter keeps them.

use super::config::RopeScaling;
use super::ggml::{permute_rows, GgmlType};
use super::gguf::{gguf_name, GGUF_ARCHITECTURES};
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
    let Some(&(_, arch, permute)) = GGUF_ARCHITECTURES.iter().find(|(hf, _, _)| *hf == hf_arch) else {
        let known: Vec<&str> = GGUF_ARCHITECTURES.iter().map(|(hf, _, _)| *hf).collect();
        return Err(Error::Invalid(format!("GGUF export supports {}, not `{hf_arch}`", known.join(", "))));
    };
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
        let gguf = gguf_name(&hf).ok_or_else(|| Error::Invalid(format!("tensor `{hf}` has no llama.cpp name")))?;
        let shape = t.size();
        let mut values = Vec::<f32>::try_from(t.detach().to_device(Device::Cpu).to_kind(Kind::Float).flatten(0, -1))
            .map_err(|e| Error::Invalid(format!("tensor `{hf}`: {e}")))?;
        let cols = *shape.last().expect("weights have a dimension") as usize;
        if permute && hf.ends_with("q_proj.weight") {
            values = permute_rows(&values, heads as usize, cols);
        } else if permute && hf.ends_with("k_proj.weight") {
            values = permute_rows(&values, kv_heads as usize, cols);
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

/// The tokenizer as llama.cpp's `gpt2` (byte-level BPE) vocabulary, padded with unused tokens to
/// the model's `vocab_size` rows.
fn tokenizer_metadata(meta: &mut Metadata, tokenizer: &Tokenizer, json: &Json, vocab_size: usize) -> Result<()> {
    let unsupported = |what: &str| Error::Invalid(format!("GGUF export needs a byte-level BPE tokenizer: {what}"));
    let model = &json["model"];
    if model["type"] != "BPE" || json["decoder"]["type"] != "ByteLevel" {
        return Err(unsupported("tokenizer.json's model is not BPE with a ByteLevel decoder"));
    }
    let pre_name = pre_tokenizer_name(&json["pre_tokenizer"]).ok_or_else(|| {
        unsupported(
            "the pre-tokenizer is not one llama.cpp names (ByteLevel, SmolLM's Digits + ByteLevel, or Qwen2's or Llama \
             3's Split regex + ByteLevel)",
        )
    })?;
    let mut tokens: Vec<Option<(String, i32)>> = vec![None; vocab_size];
    let mut place = |id: u64, text: &str, kind: i32| -> Result<()> {
        let slot = tokens.get_mut(id as usize).ok_or_else(|| {
            Error::Invalid(format!("token `{text}` has id {id}, beyond the model's {vocab_size} embeddings"))
        })?;
        *slot = Some((text.to_string(), kind));
        Ok(())
    };
    for (text, id) in model["vocab"].as_object().ok_or_else(|| unsupported("no vocab"))? {
        place(id.as_u64().ok_or_else(|| unsupported("a vocab id is not a number"))?, text, 1)?;
    }
    for added in json["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(text)) = (added["id"].as_u64(), added["content"].as_str()) else { continue };
        // llama.cpp's token types: 3 control (special), 4 user-defined.
        place(id, text, if added["special"] == true { 3 } else { 4 })?;
    }
    let (texts, types): (Vec<String>, Vec<i32>) = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.unwrap_or_else(|| (format!("[PAD{i}]"), 5))) // 5: unused
        .unzip();
    let merges: Vec<String> = model["merges"]
        .as_array()
        .ok_or_else(|| unsupported("no merges"))?
        .iter()
        .map(|m| match m {
            Json::String(s) => Ok(s.clone()),
            Json::Array(pair) if pair.len() == 2 => {
                Ok(format!("{} {}", pair[0].as_str().unwrap_or(""), pair[1].as_str().unwrap_or("")))
            }
            _ => Err(unsupported("a merge is neither `a b` nor [a, b]")),
        })
        .collect::<Result<_>>()?;
    meta.str("tokenizer.ggml.model", "gpt2");
    meta.str("tokenizer.ggml.pre", pre_name);
    meta.strs("tokenizer.ggml.tokens", &texts);
    meta.i32s("tokenizer.ggml.token_type", &types);
    meta.strs("tokenizer.ggml.merges", &merges);
    if let Some(bos) = tokenizer.bos_id() {
        meta.u32("tokenizer.ggml.bos_token_id", bos);
    }
    meta.u32("tokenizer.ggml.eos_token_id", tokenizer.eos_id());
    meta.u32("tokenizer.ggml.padding_token_id", tokenizer.pad_id());
    meta.bool("tokenizer.ggml.add_bos_token", tokenizer.bos_id().is_some());
    meta.bool("tokenizer.ggml.add_eos_token", false);
    Ok(())
}

/// llama.cpp's name (`tokenizer.ggml.pre`) for a tokenizer.json pre-tokenizer: `gpt-2` (plain
/// ByteLevel), `smollm` (each digit split off first), `qwen2` or `llama-bpe` (their split
/// regex, then ByteLevel without its own regex).
fn pre_tokenizer_name(pre: &Json) -> Option<&'static str> {
    if pre["type"] == "ByteLevel" {
        return Some("gpt-2");
    }
    let parts = pre["pretokenizers"].as_array().filter(|_| pre["type"] == "Sequence")?;
    let byte_level = parts.last().is_some_and(|p| p["type"] == "ByteLevel");
    match parts.first()? {
        d if d["type"] == "Digits" && d["individual_digits"] == true && byte_level => Some("smollm"),
        s if s["type"] == "Split" && byte_level && parts.len() == 2 => {
            let regex = s["pattern"]["Regex"].as_str()?;
            super::gguf::SPLIT_REGEXES.iter().find(|(_, r)| *r == regex).map(|(name, _)| *name)
        }
        _ => None,
    }
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
