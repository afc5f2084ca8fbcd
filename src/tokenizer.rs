//! Tokenizers: load a Hugging Face `tokenizer.json` folder, or train a small byte-level BPE with
//! one token per digit, and find the special ids (BOS, EOS, PAD, stop tokens) the model needs.
//!
//! Text is always encoded without special tokens: callers add BOS themselves. Special-token
//! strings that appear literally in the text (e.g. `"</s>"`) are still matched as those tokens,
//! as the Hugging Face libraries do.

use crate::error::{Error, Result};
use crate::fsutil::write_atomic;
use serde_json::{json, Map, Value};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::AddedToken;

/// File name of the tokenizer itself inside a model folder.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// File name of the Hugging Face tokenizer settings (special tokens, chat template).
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";

/// Common names of the end-of-sequence token, tried in order when no config names it.
const EOS_NAMES: &[&str] = &["</s>", "<|endoftext|>", "<|im_end|>", "<eos>", "<|end_of_text|>"];
/// Common names of the beginning-of-sequence token.
const BOS_NAMES: &[&str] = &["<s>", "<|begin_of_text|>", "<bos>"];
/// Common names of the padding token.
const PAD_NAMES: &[&str] = &["<pad>", "<|pad|>"];
/// Tokens that end a generation when present in the vocabulary (besides EOS).
const STOP_NAMES: &[&str] = &["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<end_of_turn>"];

/// `model_max_length` written when none was loaded or set: "no known limit".
const DEFAULT_MODEL_MAX_LENGTH: u64 = 1_000_000_000_000_000_000;

/// The special tokens of a trained tokenizer, in id order (0, 1, 2).
const TRAIN_BOS: &str = "<s>";
const TRAIN_EOS: &str = "</s>";
const TRAIN_PAD: &str = "<pad>";

/// A tokenizer plus the special ids the model needs.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<u32>,
    eos: u32,
    pad: u32,
    /// Further stop ids named by config.json / generation_config.json (an `eos_token_id` list).
    extra_stops: Vec<u32>,
    chat_template: Option<String>,
    model_max_length: Option<u64>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("pad", &self.pad)
            .field("stop_ids", &self.stop_ids())
            .field("chat_template", &self.chat_template.is_some())
            .finish()
    }
}

/// One special-token setting found in a config file.
enum Setting {
    /// The key is absent (or unusable): try the next source.
    Missing,
    /// The key is explicitly `null`: the model has no such token.
    Null,
    /// The key names a token (by content or by id).
    Id(u32),
}

impl Tokenizer {
    /// Load from a model folder (tokenizer.json + optional tokenizer_config.json + optional
    /// config.json) or a tokenizer.json path (its folder's config files are then read too).
    ///
    /// Special tokens: bos/eos/pad from tokenizer_config.json (`"bos_token"`, `"eos_token"`,
    /// `"pad_token"`, each a string or an object `{"content": ...}`), else from config.json's
    /// `bos_token_id`/`eos_token_id`/`pad_token_id` (eos may be a list: the first is EOS, the
    /// rest become stop ids), else by common names (`"</s>"`, `"<|endoftext|>"`, `"<|im_end|>"`,
    /// `"<eos>"`; `"<s>"`, `"<|begin_of_text|>"`; `"<pad>"`, `"<|pad|>"`). An explicit
    /// `"bos_token": null` in tokenizer_config.json means no BOS (as in Qwen). PAD falls back to
    /// EOS. No EOS found is an error naming the folder. Any padding or truncation stored in
    /// tokenizer.json is dropped, so `encode` never pads or cuts.
    pub fn load(path: &Path) -> Result<Self> {
        let (dir, file) = if path.is_dir() {
            (path.to_path_buf(), path.join(TOKENIZER_FILE))
        } else if path.is_file() {
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("."),
            };
            (dir, path.to_path_buf())
        } else {
            return Err(Error::file(path, "no such tokenizer folder or tokenizer.json file"));
        };
        let text = std::fs::read_to_string(&file).map_err(|e| Error::io(&file, e))?;
        // tokenizers panics on some malformed JSON (an `expect` in its decoder reader), so the
        // syntax is checked here first.
        serde_json::from_str::<serde::de::IgnoredAny>(&text)
            .map_err(|e| Error::file(&file, format!("not a valid tokenizer.json: invalid JSON: {e}")))?;
        let mut inner = tokenizers::Tokenizer::from_bytes(text.as_bytes())
            .map_err(|e| Error::file(&file, format!("not a valid tokenizer.json: {e}")))?;
        inner.with_truncation(None).map_err(|e| Error::file(&file, e.to_string()))?;
        inner.with_padding(None);

        let tok_config = read_json_opt(&dir.join(TOKENIZER_CONFIG_FILE))?;
        let model_config = read_json_opt(&dir.join("config.json"))?;
        let gen_config = read_json_opt(&dir.join("generation_config.json"))?;

        let from_tok_config = |key: &str| -> Setting {
            match tok_config.as_ref().and_then(|c| c.get(key)) {
                None => Setting::Missing,
                Some(Value::Null) => Setting::Null,
                Some(v) => token_content(v).and_then(|s| inner.token_to_id(s)).map_or(Setting::Missing, Setting::Id),
            }
        };
        let from_model_config = |key: &str| -> Option<u32> {
            let v = model_config.as_ref()?.get(key)?;
            ids_of(v).into_iter().find(|&id| inner.id_to_token(id).is_some())
        };
        let by_name = |names: &[&str]| names.iter().find_map(|n| inner.token_to_id(n));

        let eos = match from_tok_config("eos_token") {
            Setting::Id(id) => Some(id),
            _ => from_model_config("eos_token_id").or_else(|| by_name(EOS_NAMES)),
        };
        let Some(eos) = eos else {
            return Err(Error::file(
                &dir,
                "no end-of-sequence token: set \"eos_token\" in tokenizer_config.json or \
                 \"eos_token_id\" in config.json",
            ));
        };
        let bos = match from_tok_config("bos_token") {
            Setting::Id(id) => Some(id),
            Setting::Null => None,
            Setting::Missing => from_model_config("bos_token_id").or_else(|| by_name(BOS_NAMES)),
        };
        let pad = match from_tok_config("pad_token") {
            Setting::Id(id) => Some(id),
            _ => from_model_config("pad_token_id").or_else(|| by_name(PAD_NAMES)),
        }
        .unwrap_or(eos);

        let mut extra_stops = Vec::new();
        for config in [&model_config, &gen_config].into_iter().flatten() {
            if let Some(v) = config.get("eos_token_id") {
                for id in ids_of(v) {
                    if inner.id_to_token(id).is_some() && !extra_stops.contains(&id) {
                        extra_stops.push(id);
                    }
                }
            }
        }

        let chat_template = match tok_config.as_ref().and_then(|c| c.get("chat_template")) {
            Some(v) => template_of(v),
            None => {
                let jinja = dir.join("chat_template.jinja");
                if jinja.is_file() {
                    Some(std::fs::read_to_string(&jinja).map_err(|e| Error::io(&jinja, e))?)
                } else {
                    None
                }
            }
        };
        let model_max_length = tok_config.as_ref().and_then(|c| c.get("model_max_length")).and_then(Value::as_u64);

        Ok(Tokenizer { inner, bos, eos, pad, extra_stops, chat_template, model_max_length })
    }

    /// Train a byte-level BPE on a corpus.
    ///
    /// Digits are split one by one (pre-tokenizer `Sequence[Digits(individual=true),
    /// ByteLevel(add_prefix_space=false, use_regex=true)]`), the decoder is ByteLevel, and there
    /// is no post-processor (callers add BOS themselves). `vocab_size` counts everything: the
    /// special tokens `"<s>"` (BOS, id 0), `"</s>"` (EOS, id 1), `"<pad>"` (PAD, id 2), all 256
    /// ByteLevel characters (so any text encodes), then merges; it must be at least 259. The
    /// result may be smaller when the corpus runs out of pairs to merge. The same corpus always
    /// gives the same tokenizer.
    pub fn train_bpe<I: IntoIterator<Item = String>>(corpus: I, vocab_size: usize) -> Result<Self> {
        let alphabet = ByteLevel::alphabet();
        let min = 3 + alphabet.len();
        if vocab_size < min {
            return Err(Error::Invalid(format!(
                "BPE vocab_size {vocab_size} is too small: it must be at least {min} \
                 (3 special tokens + 256 byte tokens)"
            )));
        }
        let specials: Vec<AddedToken> =
            [TRAIN_BOS, TRAIN_EOS, TRAIN_PAD].iter().map(|s| AddedToken::from(*s, true)).collect();
        let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(0)
            .show_progress(false)
            .special_tokens(specials)
            .initial_alphabet(alphabet.into_iter().collect())
            .build()
            .into();

        let byte_level = ByteLevel::new(false, true, true);
        let mut inner = tokenizers::Tokenizer::new(BPE::default());
        inner.with_pre_tokenizer(Some(Sequence::new(vec![Digits::new(true).into(), byte_level.into()])));
        inner.with_decoder(Some(byte_level));
        // The trainer needs a `Send` iterator and reads its input in one pass.
        let corpus: Vec<String> = corpus.into_iter().collect();
        inner.train(&mut trainer, corpus.iter()).map_err(|e| Error::Invalid(format!("BPE training failed: {e}")))?;

        let id = |t: &str| {
            inner.token_to_id(t).ok_or_else(|| Error::Invalid(format!("BPE training lost the special token {t:?}")))
        };
        let (bos, eos, pad) = (id(TRAIN_BOS)?, id(TRAIN_EOS)?, id(TRAIN_PAD)?);
        Ok(Tokenizer {
            inner,
            bos: Some(bos),
            eos,
            pad,
            extra_stops: Vec::new(),
            chat_template: None,
            model_max_length: None,
        })
    }

    /// Save tokenizer.json + tokenizer_config.json into a folder (created if needed), each file
    /// written atomically. tokenizer_config.json holds `bos_token`, `eos_token`, `pad_token`,
    /// `model_max_length`, `tokenizer_class` `"PreTrainedTokenizerFast"`,
    /// `clean_up_tokenization_spaces` false, the other special tokens as
    /// `additional_special_tokens`, and `chat_template` if one was loaded, so that
    /// `transformers.AutoTokenizer.from_pretrained(dir)` loads the same tokenizer.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let file = dir.join(TOKENIZER_FILE);
        let json = self
            .inner
            .to_string(true)
            .map_err(|e| Error::file(&file, format!("cannot serialize the tokenizer: {e}")))?;
        write_atomic(&file, |w| w.write_all(json.as_bytes()))?;

        let name = |id: u32| self.inner.id_to_token(id).map_or(Value::Null, Value::String);
        let mut config = Map::new();
        config.insert("bos_token".into(), self.bos.map_or(Value::Null, name));
        config.insert("eos_token".into(), name(self.eos));
        config.insert("pad_token".into(), name(self.pad));
        let named: HashSet<u32> = self.bos.into_iter().chain([self.eos, self.pad]).collect();
        let mut extra: Vec<(u32, String)> = self
            .inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(id, t)| t.special && !named.contains(id))
            .map(|(id, t)| (id, t.content))
            .collect();
        extra.sort();
        if !extra.is_empty() {
            let list = extra.into_iter().map(|(_, t)| Value::String(t)).collect();
            config.insert("additional_special_tokens".into(), Value::Array(list));
        }
        let max_len = self.model_max_length.unwrap_or(DEFAULT_MODEL_MAX_LENGTH);
        config.insert("model_max_length".into(), json!(max_len));
        config.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
        config.insert("clean_up_tokenization_spaces".into(), json!(false));
        if let Some(t) = &self.chat_template {
            config.insert("chat_template".into(), json!(t));
        }
        let file = dir.join(TOKENIZER_CONFIG_FILE);
        let text =
            serde_json::to_string_pretty(&Value::Object(config)).map_err(|e| Error::file(&file, e.to_string()))?;
        write_atomic(&file, |w| w.write_all(text.as_bytes()))
    }

    /// Encode text without adding any special token (no BOS, no post-processing).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc =
            self.inner.encode_fast(text, false).map_err(|e| Error::Invalid(format!("cannot encode text: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decode, skipping special tokens when asked. Ids outside the vocabulary are skipped.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(|e| Error::Invalid(format!("cannot decode ids: {e}")))
    }

    /// Number of tokens, added and special ones included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The beginning-of-sequence id, if the model has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// The end-of-sequence id.
    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    /// The padding id (EOS when the model has no padding token).
    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    /// Ids that end a generation: EOS first, then `"<|im_end|>"`, `"<|endoftext|>"`,
    /// `"<|eot_id|>"`, `"<|end_of_text|>"`, `"<end_of_turn>"` where present, then any further
    /// `eos_token_id` of config.json / generation_config.json. No duplicates.
    pub fn stop_ids(&self) -> Vec<u32> {
        let mut ids = vec![self.eos];
        let named = STOP_NAMES.iter().filter_map(|n| self.inner.token_to_id(n));
        for id in named.chain(self.extra_stops.iter().copied()) {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        ids
    }

    /// The chat template string from tokenizer_config.json (or chat_template.jinja), if any.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Add tokens as special tokens (e.g. `"[GOOD]"`, `"[BAD]"` control tokens); returns their
    /// ids in order. Tokens already in the vocabulary keep their id (and become special).
    pub fn add_special_tokens(&mut self, tokens: &[&str]) -> Vec<u32> {
        let added: Vec<AddedToken> = tokens.iter().map(|t| AddedToken::from(*t, true)).collect();
        self.inner.add_special_tokens(&added);
        tokens.iter().map(|t| self.inner.token_to_id(t).expect("a token just added is in the vocabulary")).collect()
    }

    /// For every id, the number of newlines in its text (special tokens count none): a token
    /// with a newline ends a step of a solution.
    pub fn newline_counts(&self) -> Result<Vec<u8>> {
        (0..self.vocab_size() as u32).map(|id| Ok(self.decode(&[id], true)?.matches('\n').count() as u8)).collect()
    }

    /// The id of a token (model or added vocabulary), if present.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token of an id, if present.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Set the `model_max_length` written by [`Tokenizer::save`] (the model's context length).
    pub fn set_model_max_length(&mut self, len: usize) {
        self.model_max_length = Some(len as u64);
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// Reads a JSON file if it exists; a malformed one is an error naming it.
fn read_json_opt(path: &Path) -> Result<Option<Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map(Some).map_err(|e| Error::file(path, format!("invalid JSON: {e}")))
}

/// The token text of a tokenizer_config.json special-token entry: a string or `{"content": ...}`.
fn token_content(v: &Value) -> Option<&str> {
    match v {
        Value::String(s) => Some(s),
        Value::Object(o) => o.get("content").and_then(Value::as_str),
        _ => None,
    }
}

/// The ids of a config.json `*_token_id` entry: a number or a list of numbers.
fn ids_of(v: &Value) -> Vec<u32> {
    let one = |v: &Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
    match v {
        Value::Array(a) => a.iter().filter_map(one).collect(),
        v => one(v).into_iter().collect(),
    }
}

/// A chat template entry: a string, or the older list of `{"name", "template"}` (the one
/// named "default", else the first).
fn template_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Array(list) => {
            let get = |e: &Value| e.get("template").and_then(Value::as_str).map(str::to_string);
            list.iter()
                .find(|e| e.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(get)
                .or_else(|| list.first().and_then(get))
        }
        _ => None,
    }
}
