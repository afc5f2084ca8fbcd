//! A model as a Hugging Face folder: `config.json`, `model.safetensors` (or shards listed in
//! `model.safetensors.index.json`), `generation_config.json`, and our scalar head in
//! `head.safetensors`. Tensor names are HF's, so `transformers` loads what we save and we load
//! what it saves.

use super::config::ModelConfig;
use super::llama::{Llama, HEAD_PREFIX};
use super::lora::{self, is_adapter, LoraState, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, PEFT_PREFIX};
use crate::error::{Error, Result};
use crate::fsutil;
use crate::tokenizer::Tokenizer;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use tch::{nn, Device, Kind, Tensor};

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";
pub const HEAD_FILE: &str = "head.safetensors";
pub const GENERATION_CONFIG_FILE: &str = "generation_config.json";

/// A causal language model: the transformer and the store that owns its parameters.
pub struct CausalLm {
    pub vs: nn::VarStore,
    pub net: Llama,
    /// Set when the model carries LoRA adapters: then only they (and a scalar head) train, and
    /// the model saves as a PEFT adapter folder over `base`.
    pub lora: Option<LoraState>,
}

impl std::ops::Deref for CausalLm {
    type Target = Llama;
    fn deref(&self) -> &Llama {
        &self.net
    }
}

impl CausalLm {
    /// A freshly initialised model (f32).
    pub fn new(config: &ModelConfig, device: Device, with_head: bool) -> Result<Self> {
        config.validate().map_err(Error::Invalid)?;
        let (needed, available) = (4.0 * config.approx_parameters(), available_memory().unwrap_or(f64::MAX));
        if device == Device::Cpu && needed > available {
            return Err(Error::Invalid(format!(
                "this model's {:.3e} parameters need about {:.1} GB in f32, and this machine has {:.1} GB available",
                needed / 4.0,
                needed / 1e9,
                available / 1e9
            )));
        }
        let vs = nn::VarStore::new(device);
        let net = Llama::new(&vs.root(), config, with_head);
        Ok(CausalLm { vs, net, lora: None })
    }

    /// Loads a HF model folder, or a PEFT adapter folder (`adapter_config.json`, no
    /// `config.json`) over the base model it names. With `with_head`, the scalar head comes from
    /// `head.safetensors` when present and is freshly initialised otherwise; a folder with a head
    /// file always loads its head.
    pub fn load(dir: &Path, device: Device, with_head: bool) -> Result<Self> {
        if dir.join(ADAPTER_CONFIG_FILE).exists() && !dir.join(CONFIG_FILE).exists() {
            let (_, base) = lora::read_peft_config(dir)?;
            return CausalLm::load_adapter(&base, dir, device, with_head);
        }
        let config = ModelConfig::load(&dir.join(CONFIG_FILE))?;
        check_sizes(&config, dir)?;
        let mut model = CausalLm::new(&config, device, with_head || dir.join(HEAD_FILE).exists())?;
        model.load_weights(dir)?;
        Ok(model)
    }

    /// Copies the weights of a model folder into this model; every tensor must be there with
    /// this model's shape (a head missing from the folder keeps its values). A model with LoRA
    /// adapters reads an adapter folder instead: the adapters and the head, the base untouched.
    pub fn load_weights(&mut self, dir: &Path) -> Result<()> {
        let head_file = dir.join(HEAD_FILE);
        let mut tensors = HashMap::new();
        let mut files = match self.lora {
            Some(_) => vec![dir.join(ADAPTER_WEIGHTS_FILE)],
            None => weight_files(dir)?,
        };
        if head_file.exists() {
            files.push(head_file.clone());
        }
        for file in files {
            for (name, t) in Tensor::read_safetensors(&file).map_err(|e| Error::file(&file, e.to_string()))? {
                let name = name.strip_prefix(PEFT_PREFIX).map(String::from).unwrap_or(name);
                tensors.insert(name, (t, file.clone()));
            }
        }
        let mut vars: Vec<_> = self.vs.variables().into_iter().filter(|(name, _)| self.trains(name)).collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        if self.lora.is_some() {
            // An adapter tensor this model has no place for (another module, another layer
            // count) would otherwise be dropped without a word.
            let names: std::collections::HashSet<&str> = vars.iter().map(|(n, _)| n.as_str()).collect();
            if let Some((name, (_, file))) = tensors.iter().find(|(n, _)| !names.contains(n.as_str())) {
                return Err(Error::file(file, format!("tensor `{name}` matches nothing in this model")));
            }
        }
        tch::no_grad(|| {
            for (name, mut var) in vars {
                let is_head = name.starts_with(HEAD_PREFIX);
                match tensors.get(&name) {
                    Some((t, file)) => {
                        if t.size() != var.size() {
                            return Err(Error::file(
                                file,
                                format!(
                                    "tensor `{name}` has shape {:?}, config.json implies {:?}",
                                    t.size(),
                                    var.size()
                                ),
                            ));
                        }
                        if t.is_floating_point() && t.isfinite().all().int64_value(&[]) == 0 {
                            return Err(Error::file(file, format!("tensor `{name}` holds NaN or infinite values")));
                        }
                        var.copy_(t);
                    }
                    None if is_head && !head_file.exists() => {} // fresh head
                    None => {
                        let file = match self.lora {
                            _ if is_head => head_file.clone(),
                            Some(_) => dir.join(ADAPTER_WEIGHTS_FILE),
                            None => dir.to_path_buf(),
                        };
                        let name = if is_adapter(&name) { format!("{PEFT_PREFIX}{name}") } else { name };
                        return Err(Error::file(file, format!("tensor `{name}` is missing")));
                    }
                }
            }
            Ok(())
        })
    }

    /// Saves config.json, model.safetensors, generation_config.json and, with a head,
    /// head.safetensors; with LoRA, adapter_config.json and adapter_model.safetensors (PEFT's
    /// layout) instead of the first three. Each file is written to a temp file and renamed into
    /// place.
    pub fn save(&self, dir: &Path) -> Result<()> {
        if !fsutil::writes_here() {
            return Ok(());
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        if let Some(state) = &self.lora {
            let mut adapters = BTreeMap::new();
            let mut head = BTreeMap::new();
            for (name, t) in self.vs.variables() {
                let t = t.detach().to_device(Device::Cpu).contiguous();
                if is_adapter(&name) {
                    adapters.insert(format!("{PEFT_PREFIX}{name}"), t);
                } else if name.starts_with(HEAD_PREFIX) {
                    head.insert(name, t);
                }
            }
            let text = serde_json::to_string_pretty(&lora::peft_config(&state.config, &state.base)).expect("json");
            fsutil::write_atomic(&dir.join(ADAPTER_CONFIG_FILE), |w| w.write_all(text.as_bytes()))?;
            write_safetensors(&dir.join(ADAPTER_WEIGHTS_FILE), &adapters)?;
            if !head.is_empty() {
                write_safetensors(&dir.join(HEAD_FILE), &head)?;
            }
            return Ok(());
        }
        let mut config = self.net.config.clone();
        config.extra.insert("torch_dtype".into(), dtype_name(self.vs.kind()).into());
        config.save(&dir.join(CONFIG_FILE))?;
        let mut body = BTreeMap::new();
        let mut head = BTreeMap::new();
        for (name, t) in self.vs.variables() {
            let t = t.detach().to_device(Device::Cpu).contiguous();
            if name.starts_with(HEAD_PREFIX) {
                head.insert(name, t);
            } else {
                body.insert(name, t);
            }
        }
        write_safetensors(&dir.join(WEIGHTS_FILE), &body)?;
        if !head.is_empty() {
            write_safetensors(&dir.join(HEAD_FILE), &head)?;
        }
        let mut generation = serde_json::Map::new();
        for (key, value) in [("bos_token_id", &config.bos_token_id), ("eos_token_id", &config.eos_token_id)] {
            if let Some(v) = value {
                generation.insert(key.into(), v.clone());
            }
        }
        let text = serde_json::to_string_pretty(&generation).expect("json");
        fsutil::write_atomic(&dir.join(GENERATION_CONFIG_FILE), |w| w.write_all(text.as_bytes()))
    }

    /// Loads a model folder and its tokenizer, checking that every token id has an embedding.
    pub fn load_with_tokenizer(dir: &Path, device: Device, with_head: bool) -> Result<(Self, Tokenizer)> {
        let model = CausalLm::load(dir, device, with_head)?;
        let tokenizer = Tokenizer::load(dir)?;
        let (tokens, embeddings) = (tokenizer.vocab_size() as i64, model.config().vocab_size);
        if tokens > embeddings {
            return Err(Error::file(
                dir,
                format!("tokenizer.json has {tokens} tokens but config.json's vocab_size is {embeddings}"),
            ));
        }
        Ok((model, tokenizer))
    }

    /// Saves the model and its tokenizer into a folder that is complete or absent: written
    /// beside `dir`, then renamed into place (replacing an existing one only with `force`).
    pub fn save_with_tokenizer(&self, tokenizer: &Tokenizer, dir: &Path, force: bool) -> Result<()> {
        fsutil::check_overwrite(dir, force)?;
        fsutil::replace_dir(dir, |tmp| {
            self.save(tmp)?;
            tokenizer.save(tmp)
        })
    }

    /// Grows the vocabulary to `vocab_size` (for added tokens such as RCRL's control tokens);
    /// the new embedding and output rows start at the mean of the existing rows. No-op when the
    /// model already has that many rows.
    pub fn grow_vocab(&mut self, vocab_size: i64) -> Result<()> {
        let old = self.config().vocab_size;
        if vocab_size <= old {
            return Ok(());
        }
        if self.lora.is_some() {
            return Err(Error::Invalid("cannot grow the vocabulary of a model with LoRA adapters".into()));
        }
        let mut config = self.config().clone();
        config.vocab_size = vocab_size;
        let mut grown = CausalLm::new(&config, self.vs.device(), self.has_head())?;
        grown.vs.set_kind(self.vs.kind());
        let current = self.vs.variables();
        tch::no_grad(|| {
            for (name, mut var) in grown.vs.variables() {
                let src = &current[&name];
                if src.size() == var.size() {
                    var.copy_(src);
                } else {
                    var.narrow(0, 0, old).copy_(src);
                    var.narrow(0, old, vocab_size - old).copy_(&src.mean_dim(0, true, src.kind()));
                }
            }
        });
        *self = grown;
        Ok(())
    }

    /// Sets token `id`'s embedding (and output) row to the mean of the rows of `like`.
    pub fn set_token_like(&mut self, id: u32, like: &[u32]) {
        if like.is_empty() {
            return;
        }
        let rows = Tensor::from_slice(&like.iter().map(|&t| t as i64).collect::<Vec<_>>()).to_device(self.vs.device());
        let vars = self.vs.variables();
        tch::no_grad(|| {
            for name in ["model.embed_tokens.weight", "lm_head.weight"] {
                if let Some(w) = vars.get(name) {
                    let mean = w.index_select(0, &rows).mean_dim(0, false, w.kind());
                    w.get(id as i64).copy_(&mean);
                }
            }
        });
    }

    pub fn config(&self) -> &ModelConfig {
        &self.net.config
    }

    /// Parameters of the language model (the scalar head excluded).
    pub fn num_parameters(&self) -> i64 {
        self.vs.variables().iter().filter(|(n, _)| !n.starts_with(HEAD_PREFIX)).map(|(_, t)| t.numel() as i64).sum()
    }
}

/// Refuses a config.json whose sizes imply far more parameters than the weight files hold (a
/// typo or a corrupted download), from the files' headers, before anything is allocated. The
/// exact shapes are compared tensor by tensor when the weights are copied in.
fn check_sizes(config: &ModelConfig, dir: &Path) -> Result<()> {
    let files = weight_files(dir)?;
    let mut stored = 0.0;
    for file in &files {
        stored += safetensors_elements(file)?;
    }
    let implied = config.approx_parameters();
    if implied > 2.0 * stored + 1e6 {
        let c = config;
        return Err(Error::file(
            dir.join(CONFIG_FILE),
            format!(
                "its sizes (vocab_size {}, hidden_size {}, intermediate_size {}, num_hidden_layers {}) imply about \
                 {implied:.3e} parameters, but the weight files hold {stored:.3e}",
                c.vocab_size, c.hidden_size, c.intermediate_size, c.num_hidden_layers
            ),
        ));
    }
    Ok(())
}

/// Bytes of memory the machine has free (Linux's MemAvailable); None where it cannot be read.
fn available_memory() -> Option<f64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024.0)
}

/// How many elements the tensors of a safetensors file hold, from its header alone.
fn safetensors_elements(path: &Path) -> Result<f64> {
    use std::io::Read;
    let bad = |msg: String| Error::file(path, msg);
    let mut file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let len = file.metadata().map_err(|e| bad(e.to_string()))?.len();
    let mut n = [0u8; 8];
    file.read_exact(&mut n).map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let n = u64::from_le_bytes(n);
    if n > len.saturating_sub(8) {
        return Err(bad(format!("not a safetensors file: its header of {n} bytes runs past the end ({len} bytes)")));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header).map_err(|e| bad(e.to_string()))?;
    let header: HashMap<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| bad(format!("not a safetensors header: {e}")))?;
    let shape = |v: &serde_json::Value| -> Option<f64> {
        v.get("shape")?.as_array()?.iter().map(|d| d.as_u64().map(|d| d as f64)).product()
    };
    let mut total = 0.0;
    for (name, info) in header.iter().filter(|(name, _)| *name != "__metadata__") {
        total += shape(info).ok_or_else(|| bad(format!("tensor `{name}` has no shape of whole numbers")))?;
    }
    Ok(total)
}

/// The safetensors files of a folder: the shards named by the index, or model.safetensors.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join(INDEX_FILE);
    if index.exists() {
        let text = fsutil::read_to_string(&index)?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::file(&index, e.to_string()))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::file(&index, "missing object field `weight_map`"))?;
        let mut files: Vec<String> = map.values().filter_map(|v| v.as_str().map(String::from)).collect();
        files.sort();
        files.dedup();
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let single = dir.join(WEIGHTS_FILE);
    if single.exists() {
        Ok(vec![single])
    } else {
        Err(Error::file(dir, format!("no {WEIGHTS_FILE} or {INDEX_FILE}")))
    }
}

fn dtype_name(kind: Kind) -> &'static str {
    match kind {
        Kind::BFloat16 => "bfloat16",
        Kind::Half => "float16",
        _ => "float32",
    }
}

/// A CPU tensor seen as raw bytes for the safetensors writer.
struct View {
    bytes: Vec<u8>,
    shape: Vec<usize>,
    dtype: safetensors::Dtype,
}

impl safetensors::View for &View {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        (&self.bytes[..]).into()
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Writes named tensors with the `{"format": "pt"}` metadata `transformers` looks for, through a
/// temp file and a rename.
pub fn write_safetensors(path: &Path, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
    let views = tensors
        .iter()
        .map(|(name, t)| {
            let dtype = match t.kind() {
                Kind::Float => safetensors::Dtype::F32,
                Kind::BFloat16 => safetensors::Dtype::BF16,
                Kind::Half => safetensors::Dtype::F16,
                Kind::Int64 => safetensors::Dtype::I64,
                k => return Err(Error::Invalid(format!("tensor `{name}`: cannot save dtype {k:?}"))),
            };
            let numel = t.numel();
            let mut bytes = vec![0u8; numel * t.kind().elt_size_in_bytes()];
            t.f_copy_data_u8(&mut bytes, numel)?;
            let shape = t.size().iter().map(|&d| d as usize).collect();
            Ok((name.clone(), View { bytes, shape, dtype }))
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
    let data = safetensors::serialize(views.iter().map(|(n, v)| (n.as_str(), v)), &metadata)
        .map_err(|e| Error::file(path, e.to_string()))?;
    fsutil::write_atomic(path, |w| w.write_all(&data))
}
