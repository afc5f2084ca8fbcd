//! GGUF, llama.cpp's one-file model format (versions 2 and 3): the reader, and llama.cpp's
//! names for each family's tensors ([`GgufArch`]). Conversion lives in `gguf_import` and
//! `gguf_export`, the tokenizer in `gguf_tokenizer`.
//!
//! A GGUF file is a header (magic, version, counts), typed metadata (architecture, shapes,
//! tokenizer, chat template), a tensor table (name, dims innermost first, type, offset) and the
//! tensor data, aligned to `general.alignment` (32 by default). Quantised tensors are stored in
//! blocks (32 values for the legacy types, 256 for the K-quants), each with its own scales;
//! [`dequantize`] turns them back into f32.

use super::ggml::{dequantize, GgmlType};
use crate::error::{Error, Result};
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
            // No tensor can hold more values than the file has bytes: this also keeps every
            // size computed from the dimensions from overflowing.
            let values = dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d));
            if values.is_none_or(|n| n > r.bytes.len() as u64 * 4) {
                return Err(Error::file(
                    path,
                    format!("tensor `{name}` has dimensions {dims:?}, more than the file holds"),
                ));
            }
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
        let start = (self.data_start as u64).saturating_add(t.offset);
        let end = start.saturating_add((t.len() / per_block * block_bytes) as u64);
        if end > self.bytes.len() as u64 {
            return Err(Error::file(&self.path, format!("tensor `{}` runs past the end of the file", t.name)));
        }
        Ok((kind, &self.bytes[start as usize..end as usize]))
    }

    /// A tensor's values as f32, in ggml order (innermost dimension fastest).
    pub fn tensor_f32(&self, t: &TensorInfo) -> Result<Vec<f32>> {
        let (kind, bytes) = self.tensor_bytes(t)?;
        Ok(dequantize(kind, bytes))
    }

    pub fn get(&self, key: &str) -> Result<&Value> {
        self.metadata.get(key).ok_or_else(|| Error::file(&self.path, format!("metadata `{key}` is missing")))
    }
    pub fn int(&self, key: &str) -> Result<i64> {
        self.get(key)?.as_int().ok_or_else(|| Error::file(&self.path, format!("metadata `{key}` is not an integer")))
    }
    pub fn float(&self, key: &str) -> Result<f64> {
        self.get(key)?.as_float().ok_or_else(|| Error::file(&self.path, format!("metadata `{key}` is not a number")))
    }
    pub fn string_array(&self, key: &str) -> Result<Vec<&str>> {
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

/// (llama.cpp, Hugging Face) names of a layer's tensors, after `blk.N.` / `model.layers.N.`,
/// besides the norms around attention and the MLP, which [`GgufArch::layer_norms`] name.
const LAYER_TENSORS: [(&str, &str); 13] = [
    ("attn_norm.weight", "input_layernorm.weight"),
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

/// Llama's one norm between attention and the MLP.
const LLAMA_NORMS: &[(&str, &str)] = &[("ffn_norm.weight", "post_attention_layernorm.weight")];
/// Gemma's norms after attention, before the MLP and after it.
const GEMMA_NORMS: &[(&str, &str)] = &[
    ("post_attention_norm.weight", "post_attention_layernorm.weight"),
    ("ffn_norm.weight", "pre_feedforward_layernorm.weight"),
    ("post_ffw_norm.weight", "post_feedforward_layernorm.weight"),
];

/// A model family as llama.cpp stores it.
#[derive(Debug)]
pub struct GgufArch {
    /// The Hugging Face architecture.
    pub hf: &'static str,
    /// llama.cpp's architecture (`general.architecture`).
    pub gguf: &'static str,
    /// Whether llama.cpp stores q and k rows in its own rotary order: Llama and Mistral rotate
    /// interleaved pairs there; Qwen and Gemma rotate halves, as transformers does.
    pub permute: bool,
    /// What llama.cpp adds to every norm weight: Gemma scales by (1 + w) and llama.cpp stores
    /// the sum.
    pub norm_shift: f32,
    pub layer_norms: &'static [(&'static str, &'static str)],
}

pub const GGUF_ARCHITECTURES: [GgufArch; 5] = [
    GgufArch { hf: "LlamaForCausalLM", gguf: "llama", permute: true, norm_shift: 0.0, layer_norms: LLAMA_NORMS },
    GgufArch { hf: "MistralForCausalLM", gguf: "llama", permute: true, norm_shift: 0.0, layer_norms: LLAMA_NORMS },
    GgufArch { hf: "Qwen2ForCausalLM", gguf: "qwen2", permute: false, norm_shift: 0.0, layer_norms: LLAMA_NORMS },
    GgufArch { hf: "Qwen3ForCausalLM", gguf: "qwen3", permute: false, norm_shift: 0.0, layer_norms: LLAMA_NORMS },
    GgufArch { hf: "Gemma3ForCausalLM", gguf: "gemma3", permute: false, norm_shift: 1.0, layer_norms: GEMMA_NORMS },
];

impl GgufArch {
    /// The family of a Hugging Face architecture, or an error naming those supported.
    pub fn of_hf(hf: &str) -> std::result::Result<&'static GgufArch, String> {
        GGUF_ARCHITECTURES.iter().find(|a| a.hf == hf).ok_or_else(|| {
            let known: Vec<&str> = GGUF_ARCHITECTURES.iter().map(|a| a.hf).collect();
            format!("GGUF supports {}, not `{hf}`", known.join(", "))
        })
    }

    /// llama.cpp's name of a Hugging Face tensor name.
    pub fn gguf_name(&self, name: &str) -> Option<String> {
        self.rename(name, false)
    }

    /// `name` looked up in the tables, llama.cpp -> Hugging Face (`to_hf`) or back.
    pub fn rename(&self, name: &str, to_hf: bool) -> Option<String> {
        let ordered = |&(gguf, hf): &(&'static str, &'static str)| if to_hf { (gguf, hf) } else { (hf, gguf) };
        if let Some((_, renamed)) = MODEL_TENSORS.iter().map(ordered).find(|(from, _)| *from == name) {
            return Some(renamed.to_string());
        }
        let (from, to) = ordered(&("blk.", "model.layers."));
        let (layer, part) = name.strip_prefix(from)?.split_once('.')?;
        let (_, part) = LAYER_TENSORS.iter().chain(self.layer_norms).map(ordered).find(|(f, _)| *f == part)?;
        Some(format!("{to}{layer}.{part}"))
    }

    /// Whether a Hugging Face tensor is a norm weight (which [`Self::norm_shift`] moves).
    pub fn is_norm(hf_name: &str) -> bool {
        hf_name.ends_with("norm.weight")
    }
}
