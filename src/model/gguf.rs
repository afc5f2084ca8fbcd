//! GGUF, llama.cpp's one-file model format (versions 2 and 3), and its conversion into a Hugging
//! Face folder (config.json, model.safetensors, tokenizer.json, tokenizer_config.json).
//!
//! A GGUF file is a header (magic, version, counts), typed metadata (architecture, shapes,
//! tokenizer, chat template), a tensor table (name, dims innermost first, type, offset) and the
//! tensor data, aligned to `general.alignment` (32 by default). Quantised tensors are stored in
//! blocks (32 values for the legacy types, 256 for the K-quants), each with its own scales;
//! [`dequantize`] turns them back into f32. llama.cpp's converter reorders the rows of the q and k
//! projections (rotary pairs interleaved instead of split in halves); [`unpermute_rows`] undoes it.

use super::ggml::{dequantize, unpermute_rows, GgmlType};
use crate::error::{Error, Result};
use crate::model::config::ModelConfig;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(v) => Some(*v),
            _ => None,
        }
    }
    pub fn as_float(&self) -> Option<f64> {
        match self {
            Value::Float(v) => Some(*v),
            Value::Int(v) => Some(*v as f64),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One entry of the tensor table.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: innermost (contiguous) dimension first, the reverse of PyTorch's.
    pub dims: Vec<u64>,
    /// ggml's type number.
    pub type_id: u32,
    /// Offset from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    pub fn len(&self) -> usize {
        self.dims.iter().product::<u64>() as usize
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The PyTorch shape (outermost first).
    pub fn shape(&self) -> Vec<i64> {
        self.dims.iter().rev().map(|&d| d as i64).collect()
    }
}

/// A GGUF file read into memory.
pub struct Gguf {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    bytes: Vec<u8>,
    data_start: usize,
}

/// A cursor over the file that names the file and offset in its errors.
struct Reader<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        if self.bytes.len() - self.at < n {
            return Err(Error::file(self.path, format!("truncated: needs {n} bytes at offset {}", self.at)));
        }
        self.at += n;
        Ok(&self.bytes[self.at - n..self.at])
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn count(&mut self, what: &str) -> Result<usize> {
        let at = self.at;
        let n = self.u64()?;
        // Every counted item takes at least one byte, so a count beyond the file is corrupt.
        if n > (self.bytes.len() - self.at) as u64 {
            return Err(Error::file(self.path, format!("{what} count {n} at offset {at} exceeds the file")));
        }
        Ok(n as usize)
    }
    fn string(&mut self) -> Result<String> {
        let n = self.count("string length")?;
        let at = self.at;
        String::from_utf8(self.take(n)?.to_vec())
            .map_err(|_| Error::file(self.path, format!("string at offset {at} is not UTF-8")))
    }
    fn value(&mut self, type_id: u32) -> Result<Value> {
        let b = |r: &mut Self, n| r.take(n).map(|s| s.to_vec());
        Ok(match type_id {
            0 => Value::Int(b(self, 1)?[0] as i64),
            1 => Value::Int(b(self, 1)?[0] as i8 as i64),
            2 => Value::Int(u16::from_le_bytes(b(self, 2)?.try_into().expect("2")) as i64),
            3 => Value::Int(i16::from_le_bytes(b(self, 2)?.try_into().expect("2")) as i64),
            4 => Value::Int(self.u32()? as i64),
            5 => Value::Int(self.u32()? as i32 as i64),
            6 => Value::Float(f32::from_bits(self.u32()?) as f64),
            7 => Value::Bool(b(self, 1)?[0] != 0),
            8 => Value::Str(self.string()?),
            9 => {
                let item_type = self.u32()?;
                let n = self.count("array")?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(item_type)?);
                }
                Value::Array(items)
            }
            10 => Value::Int(self.u64()? as i64),
            11 => Value::Int(self.u64()? as i64),
            12 => Value::Float(f64::from_bits(self.u64()?)),
            t => return Err(Error::file(self.path, format!("unknown metadata value type {t} at offset {}", self.at))),
        })
    }
}

impl Gguf {
    /// Reads and checks the whole file: header, metadata, tensor table, and that every tensor's
    /// data lies inside the file.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let mut r = Reader { path, bytes: &bytes, at: 0 };
        if r.take(4).ok() != Some(b"GGUF".as_slice()) {
            return Err(Error::file(path, "not a GGUF file (no GGUF magic)"));
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            return Err(Error::file(path, format!("GGUF version {version} is not supported (2 or 3)")));
        }
        let n_tensors = r.count("tensor")?;
        let n_metadata = r.count("metadata")?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_metadata {
            let key = r.string()?;
            let type_id = r.u32()?;
            metadata.insert(key, r.value(type_id)?);
        }
        let mut tensors = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = r.string()?;
            let n_dims = r.u32()? as usize;
            if n_dims > 4 {
                return Err(Error::file(path, format!("tensor `{name}` has {n_dims} dimensions")));
            }
            let dims = (0..n_dims).map(|_| r.u64()).collect::<Result<Vec<_>>>()?;
            let type_id = r.u32()?;
            let offset = r.u64()?;
            tensors.push(TensorInfo { name, dims, type_id, offset });
        }
        let alignment = metadata.get("general.alignment").and_then(Value::as_int).unwrap_or(32) as usize;
        if alignment == 0 {
            return Err(Error::file(path, "general.alignment is 0"));
        }
        let data_start = r.at.div_ceil(alignment) * alignment;
        let gguf = Gguf { path: path.to_path_buf(), version, metadata, tensors, bytes, data_start };
        for t in &gguf.tensors {
            gguf.tensor_bytes(t)?;
        }
        Ok(gguf)
    }

    fn tensor_bytes(&self, t: &TensorInfo) -> Result<(GgmlType, &[u8])> {
        let kind = GgmlType::from_id(t.type_id).ok_or_else(|| {
            Error::file(&self.path, format!("tensor `{}` has ggml type {}, which is not supported", t.name, t.type_id))
        })?;
        let (per_block, block_bytes) = kind.block();
        if !t.len().is_multiple_of(per_block) {
            return Err(Error::file(
                &self.path,
                format!("tensor `{}`: {} values are not whole blocks", t.name, t.len()),
            ));
        }
        let start = self.data_start + t.offset as usize;
        let end = start + t.len() / per_block * block_bytes;
        if end > self.bytes.len() {
            return Err(Error::file(&self.path, format!("tensor `{}` runs past the end of the file", t.name)));
        }
        Ok((kind, &self.bytes[start..end]))
    }

    /// A tensor's values as f32, in ggml order (innermost dimension fastest).
    pub fn tensor_f32(&self, t: &TensorInfo) -> Result<Vec<f32>> {
        let (kind, bytes) = self.tensor_bytes(t)?;
        Ok(dequantize(kind, bytes))
    }

    pub fn get(&self, key: &str) -> Result<&Value> {
        self.metadata.get(key).ok_or_else(|| Error::file(&self.path, format!("metadata `{key}` is missing")))
    }
    fn int(&self, key: &str) -> Result<i64> {
        self.get(key)?.as_int().ok_or_else(|| Error::file(&self.path, format!("metadata `{key}` is not an integer")))
    }
    fn float(&self, key: &str) -> Result<f64> {
        self.get(key)?.as_float().ok_or_else(|| Error::file(&self.path, format!("metadata `{key}` is not a number")))
    }
    fn string_array(&self, key: &str) -> Result<Vec<&str>> {
        let bad = || Error::file(&self.path, format!("metadata `{key}` is not an array of strings"));
        self.get(key)?.as_array().ok_or_else(bad)?.iter().map(|v| v.as_str().ok_or_else(bad)).collect()
    }
}

/// (llama.cpp, Hugging Face) names of the tensors outside the layers.
const MODEL_TENSORS: [(&str, &str); 3] = [
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// (llama.cpp, Hugging Face) names of a layer's tensors, after `blk.N.` / `model.layers.N.`.
const LAYER_TENSORS: [(&str, &str); 14] = [
    ("attn_norm.weight", "input_layernorm.weight"),
    ("ffn_norm.weight", "post_attention_layernorm.weight"),
    ("attn_q.weight", "self_attn.q_proj.weight"),
    ("attn_k.weight", "self_attn.k_proj.weight"),
    ("attn_v.weight", "self_attn.v_proj.weight"),
    ("attn_output.weight", "self_attn.o_proj.weight"),
    ("ffn_gate.weight", "mlp.gate_proj.weight"),
    ("ffn_up.weight", "mlp.up_proj.weight"),
    ("ffn_down.weight", "mlp.down_proj.weight"),
    ("attn_q.bias", "self_attn.q_proj.bias"),
    ("attn_k.bias", "self_attn.k_proj.bias"),
    ("attn_v.bias", "self_attn.v_proj.bias"),
    ("attn_q_norm.weight", "self_attn.q_norm.weight"),
    ("attn_k_norm.weight", "self_attn.k_norm.weight"),
];

/// llama.cpp's pre-tokenizers that split by a regex before byte-level BPE, with the regex their
/// tokenizer.json gives: Qwen2/2.5/3 (digits one by one) and Llama 3 (digits in threes).
pub const SPLIT_REGEXES: [(&str, &str); 2] = [
    (
        "qwen2",
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
    (
        "llama-bpe",
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
];

/// (Hugging Face architecture, llama.cpp architecture, whether llama.cpp stores q and k rows in
/// its own rotary order): Llama and Mistral rotate interleaved pairs and are permuted; Qwen's
/// rotate halves, as transformers does, and are stored as they are.
pub const GGUF_ARCHITECTURES: [(&str, &str, bool); 4] = [
    ("LlamaForCausalLM", "llama", true),
    ("MistralForCausalLM", "llama", true),
    ("Qwen2ForCausalLM", "qwen2", false),
    ("Qwen3ForCausalLM", "qwen3", false),
];

/// The Hugging Face name of a llama.cpp tensor name.
fn hf_name(name: &str) -> Option<String> {
    rename(name, true)
}

/// llama.cpp's name of a Hugging Face tensor name.
pub fn gguf_name(name: &str) -> Option<String> {
    rename(name, false)
}

/// `name` looked up in the tables, llama.cpp -> Hugging Face (`to_hf`) or back.
fn rename(name: &str, to_hf: bool) -> Option<String> {
    let ordered = |(gguf, hf): (&'static str, &'static str)| if to_hf { (gguf, hf) } else { (hf, gguf) };
    if let Some((_, renamed)) = MODEL_TENSORS.into_iter().map(ordered).find(|(from, _)| *from == name) {
        return Some(renamed.to_string());
    }
    let (from, to) = ordered(("blk.", "model.layers."));
    let (layer, part) = name.strip_prefix(from)?.split_once('.')?;
    let (_, part) = LAYER_TENSORS.into_iter().map(ordered).find(|(f, _)| *f == part)?;
    Some(format!("{to}{layer}.{part}"))
}

/// Converts a GGUF of a supported architecture ([`GGUF_ARCHITECTURES`]) into a Hugging Face
/// folder at `out`, which must not exist unless `force`. Weights are dequantised to f32.
pub fn convert(path: &Path, out: &Path, force: bool) -> Result<ModelConfig> {
    crate::fsutil::check_overwrite(out, force)?;
    let g = Gguf::read(path)?;
    let arch = g.get("general.architecture")?.as_str().unwrap_or_default().to_string();
    let Some(&(hf_arch, _, permute)) = GGUF_ARCHITECTURES.iter().find(|(_, gguf, _)| *gguf == arch) else {
        let known: Vec<&str> = GGUF_ARCHITECTURES.iter().map(|(_, gguf, _)| *gguf).collect();
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
    config.architectures = vec![hf_arch.to_string()];
    config.model_type = arch.clone();
    config.head_dim = int("attention.key_length").or(config.head_dim);
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
        let name = hf_name(&t.name)
            .ok_or_else(|| Error::file(path, format!("tensor `{}` has no Hugging Face counterpart", t.name)))?;
        let mut values = g.tensor_f32(t)?;
        let cols = t.dims[0] as usize;
        if permute && t.name.ends_with("attn_q.weight") {
            values = unpermute_rows(&values, heads as usize, cols);
        } else if permute && t.name.ends_with("attn_k.weight") {
            values = unpermute_rows(&values, kv_heads as usize, cols);
        }
        tensors.insert(name, tch::Tensor::from_slice(&values).reshape(t.shape()));
    }
    let tokenizer = tokenizer_json(&g)?;
    let tokenizer_config = tokenizer_config_json(&g)?;
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

/// tokenizer.json for the `tokenizers` library, rebuilt from the embedded byte-level BPE
/// vocabulary and merges. Control and user-defined tokens become added (special) tokens.
fn tokenizer_json(g: &Gguf) -> Result<serde_json::Value> {
    let model = g.get("tokenizer.ggml.model")?.as_str().unwrap_or_default();
    if model != "gpt2" {
        return Err(Error::file(&g.path, format!("tokenizer model `{model}` is not supported (gpt2 byte-level BPE)")));
    }
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let pre_tokenizer = match g.metadata.get("tokenizer.ggml.pre").and_then(Value::as_str).unwrap_or("default") {
        // SmolLM splits every digit on its own before the GPT-2 split.
        "smollm" => {
            json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level]})
        }
        "default" | "gpt-2" | "gpt2" => byte_level.clone(),
        other => match SPLIT_REGEXES.iter().find(|(name, _)| *name == other) {
            // Qwen2's and Llama 3's: their split regex, then bytes without GPT-2's regex.
            Some((_, regex)) => json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
            ]}),
            None => {
                let known = ["smollm", "gpt-2"].into_iter().chain(SPLIT_REGEXES.iter().map(|(name, _)| *name));
                let known = known.collect::<Vec<_>>().join(", ");
                return Err(Error::file(&g.path, format!("pre-tokenizer `{other}` is not supported ({known})")));
            }
        },
    };
    let tokens = g.string_array("tokenizer.ggml.tokens")?;
    let types: Vec<i64> = match g.metadata.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
        Some(a) => a.iter().map(|v| v.as_int().unwrap_or(1)).collect(),
        None => vec![1; tokens.len()],
    };
    let vocab: serde_json::Map<String, serde_json::Value> =
        tokens.iter().enumerate().map(|(i, t)| (t.to_string(), json!(i))).collect();
    let added: Vec<serde_json::Value> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| matches!(types.get(*i), Some(3) | Some(4)))
        .map(|(i, t)| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": types[i] == 3})
        })
        .collect();
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": g.string_array("tokenizer.ggml.merges")?,
        },
    }))
}

/// tokenizer_config.json: the special tokens by name, the tokenizer class and the chat template.
fn tokenizer_config_json(g: &Gguf) -> Result<serde_json::Value> {
    let tokens = g.string_array("tokenizer.ggml.tokens")?;
    let name = |k: &str| {
        g.metadata
            .get(&format!("tokenizer.ggml.{k}_token_id"))
            .and_then(Value::as_int)
            .and_then(|i| tokens.get(i as usize))
            .map(|t| json!(t))
            .unwrap_or(serde_json::Value::Null)
    };
    let add_bos = g.metadata.get("tokenizer.ggml.add_bos_token").is_some_and(|v| v == &Value::Bool(true));
    let mut config = json!({
        "bos_token": if add_bos { name("bos") } else { serde_json::Value::Null },
        "eos_token": name("eos"),
        "pad_token": name("padding"),
        "unk_token": name("unknown"),
        "model_max_length": g.metadata.get(&format!("{}.context_length", g.get("general.architecture")?.as_str().unwrap_or_default())).and_then(Value::as_int),
        // As `Tokenizer::save` writes it: left to guess, transformers picks its Llama tokenizer,
        // which refuses a null BOS.
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": false,
    });
    if let Some(template) = g.metadata.get("tokenizer.chat_template").and_then(Value::as_str) {
        config["chat_template"] = json!(template);
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ggml::{f16_to_f32, permute_rows};

    fn f16(x: f32) -> [u8; 2] {
        // Exact for the small powers of two and halves used here.
        let bits: u16 = match x {
            0.0 => 0,
            0.5 => 0x3800,
            1.0 => 0x3c00,
            2.0 => 0x4000,
            -1.0 => 0xbc00,
            0.25 => 0x3400,
            _ => panic!("no f16 literal for {x}"),
        };
        bits.to_le_bytes()
    }

    #[test]
    fn half_precision_values() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24)); // the smallest subnormal
        assert!(f16_to_f32(0x7c00).is_infinite() && f16_to_f32(0x7e00).is_nan());
        assert_eq!(dequantize(GgmlType::Bf16, &0x3fc0u16.to_le_bytes()), [1.5]);
    }

    #[test]
    fn q4_0_and_q4_1_blocks() {
        // Byte j holds value j (low nibble) and value j + 16 (high nibble).
        let qs: Vec<u8> = (0..16u8).map(|j| j | ((15 - j) << 4)).collect();
        let q4_0 = [f16(0.5).as_slice(), &qs].concat();
        let x = dequantize(GgmlType::Q4_0, &q4_0);
        assert_eq!(x.len(), 32);
        assert_eq!((x[0], x[8], x[15]), (-4.0, 0.0, 3.5)); // (q - 8) * 0.5
        assert_eq!((x[16], x[31]), (3.5, -4.0));
        let q4_1 = [f16(2.0).as_slice(), &f16(-1.0), &qs].concat();
        let x = dequantize(GgmlType::Q4_1, &q4_1);
        assert_eq!((x[0], x[15], x[16], x[31]), (-1.0, 29.0, 29.0, -1.0)); // q * 2 - 1
    }

    #[test]
    fn q5_0_and_q5_1_blocks() {
        // Byte j holds the low 4 bits of values j and j + 16; bit j of qh is value j's fifth bit.
        let qs: Vec<u8> = (0..16u8).map(|j| j | ((15 - j) << 4)).collect();
        let qh: u32 = (1 << 0) | (1 << 15) | (1 << 16); // values 0, 15 and 16 get +16
        let q5_0 = [f16(0.5).as_slice(), &qh.to_le_bytes(), &qs].concat();
        let x = dequantize(GgmlType::Q5_0, &q5_0);
        assert_eq!(x.len(), 32);
        assert_eq!((x[0], x[1], x[15]), (0.0, -7.5, 7.5)); // (q - 16) * 0.5: q = 16, 1, 31
        assert_eq!((x[16], x[17], x[31]), (7.5, -1.0, -8.0)); // q = 31, 14, 0
        let q5_1 = [f16(2.0).as_slice(), &f16(-1.0), &qh.to_le_bytes(), &qs].concat();
        let x = dequantize(GgmlType::Q5_1, &q5_1);
        assert_eq!((x[0], x[1], x[16], x[31]), (31.0, 1.0, 61.0, -1.0)); // q * 2 - 1
    }

    #[test]
    fn q8_0_block() {
        let qs: Vec<u8> = (0..32i8).map(|i| (i - 16) as u8).collect();
        let x = dequantize(GgmlType::Q8_0, &[f16(0.25).as_slice(), &qs].concat());
        assert_eq!((x[0], x[16], x[31]), (-4.0, 0.0, 3.75));
    }

    #[test]
    fn q4_k_and_q5_k_blocks() {
        // Scales: sub-blocks 0..4 take the low 6 bits of bytes 0..4 (scale) and 4..8 (min);
        // sub-blocks 4..8 take nibbles of bytes 8..12 plus the top 2 bits of bytes 0..8.
        let mut scales = [0u8; 12];
        scales[0] = 3; // sub-block 0: scale 3
        scales[4] = 5; // sub-block 0: min 5
        scales[8] = 0x21; // sub-block 4: scale 1 | (scales[0] >> 6) << 4 = 1, min 2
        scales[1] = 2 | (1 << 6); // sub-block 1: scale 2; sub-block 5 gets 1 << 4 in its scale
        scales[9] = 0x07; // sub-block 5: scale 7 | 16 = 23, min 0
        let mut qs = [0u8; 128];
        qs[0] = 0x9a; // value 0 (sub-block 0): 10; value 32 (sub-block 1): 9
        qs[64] = 0x04; // value 128 (sub-block 4): 4; value 160 (sub-block 5): 0
        qs[65] = 0x30; // value 161 (sub-block 5): 3
        let head = [f16(1.0).as_slice(), &f16(0.5)].concat();
        let x = dequantize(GgmlType::Q4K, &[head.as_slice(), &scales, &qs].concat());
        assert_eq!(x.len(), 256);
        assert_eq!(x[0], 3.0 * 10.0 - 0.5 * 5.0);
        assert_eq!(x[1], -2.5); // q 0
        assert_eq!(x[32], 2.0 * 9.0);
        assert_eq!(x[128], 1.0 * 4.0 - 0.5 * 2.0);
        assert_eq!((x[160], x[161]), (0.0, 23.0 * 3.0));
        // Q5_K: bit (2 * chunk + half) of qh[l] is the fifth bit of value l of that sub-block.
        let mut qh = [0u8; 32];
        qh[0] = 0b1; // value 0 gets +16
        qh[1] = 0b10_0000; // sub-block 5 (chunk 2, high half), value 161: +16
        let x = dequantize(GgmlType::Q5K, &[head.as_slice(), &scales, &qh, &qs].concat());
        assert_eq!(x[0], 3.0 * 26.0 - 2.5);
        assert_eq!(x[32], 18.0);
        assert_eq!(x[161], 23.0 * 19.0);
    }

    #[test]
    fn q6_k_block() {
        let (mut ql, mut qh, mut sc) = ([0u8; 128], [0u8; 64], [0u8; 16]);
        for (i, s) in sc.iter_mut().enumerate() {
            *s = (i as i8 - 4) as u8; // scales -4..12
        }
        ql[0] = 0x21; // value 0: low 1, value 64: low 2
        qh[0] = 0b11_00_00_10; // value 0: high 2 -> 33; value 32: 0; value 64: 0; value 96: 3
        ql[32] = 0xf0; // value 32: low 0, value 96: low 15
        ql[64] = 0x05; // second half, value 128: low 5, high 0
        let d = f16(0.5);
        let x = dequantize(GgmlType::Q6K, &[ql.as_slice(), &qh, &sc, &d].concat());
        assert_eq!(x.len(), 256);
        assert_eq!(x[0], 0.5 * -4.0 * (33 - 32) as f32); // sc[0] = -4
        assert_eq!(x[32], 0.5 * -2.0 * -32.0); // sc[2] = -2, q = 0 - 32
        assert_eq!(x[64], 0.5 * 0.0 * (2 - 32) as f32); // sc[4] = 0
        assert_eq!(x[96], 0.5 * 2.0 * (63 - 32) as f32); // sc[6] = 2, q = 15 | 3 << 4
        assert_eq!(x[128], 0.5 * 4.0 * (5 - 32) as f32); // sc[8] = 4
    }

    #[test]
    fn unpermute_restores_split_halves() {
        // One head of dim 4 with 1 column: llama.cpp stores rows (0, 2, 1, 3).
        assert_eq!(unpermute_rows(&[0.0, 2.0, 1.0, 3.0], 1, 1), [0.0, 1.0, 2.0, 3.0]);
        // Two heads, 2 columns each.
        let stored = [0., 0., 2., 2., 1., 1., 3., 3., 4., 4., 6., 6., 5., 5., 7., 7.];
        let hf: Vec<f32> = (0..8).flat_map(|i| [i as f32; 2]).collect();
        assert_eq!(unpermute_rows(&stored, 2, 2), hf);
        assert_eq!(permute_rows(&hf, 2, 2), stored);
    }
}
