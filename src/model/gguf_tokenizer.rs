//! The tokenizer inside a GGUF file and a Hugging Face tokenizer.json, each made from the other.
//!
//! Two kinds travel: byte-level BPE (llama.cpp's `gpt2`: GPT-2, SmolLM, Qwen, Llama 3), whose
//! merges are stored as they are, and SentencePiece BPE (llama.cpp's `llama`: Gemma, Llama 2),
//! stored as pieces with scores. llama.cpp merges the adjacent pair whose joined piece scores
//! highest; transformers turns the same pieces into BPE merges ranked by that score (every split
//! of a piece into two pieces, higher scores first), and so do we, both ways.

use super::gguf::{Gguf, Value};
use crate::error::{Error, Result};
use serde_json::{json, Value as Json};
use std::collections::HashMap;

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

/// llama.cpp's token types.
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;
const BYTE: i32 = 6;
/// The score llama.cpp's converters give control and user-defined pieces.
const SPECIAL_SCORE: f32 = -1000.0;

/// What the GGUF file stores of a tokenizer (the `tokenizer.ggml.*` keys).
pub struct GgufVocab {
    /// `gpt2` (byte-level BPE) or `llama` (SentencePiece).
    pub model: &'static str,
    pub pre: &'static str,
    pub tokens: Vec<String>,
    pub types: Vec<i32>,
    /// SentencePiece only: a higher score merges first.
    pub scores: Option<Vec<f32>>,
    /// Byte-level BPE only.
    pub merges: Option<Vec<String>>,
    /// SentencePiece only: a "▁" opens the text.
    pub add_space_prefix: bool,
    pub unknown: Option<u32>,
}

/// The tokenizer of a model for GGUF, padded with unused tokens to `vocab_size` rows.
pub fn gguf_vocab(json: &Json, vocab_size: usize) -> Result<GgufVocab> {
    let unsupported =
        |what: &str| Error::Invalid(format!("GGUF export needs a byte-level or SentencePiece BPE tokenizer: {what}"));
    let model = &json["model"];
    if model["type"] != "BPE" {
        return Err(unsupported("tokenizer.json's model is not BPE"));
    }
    let sentencepiece = model["byte_fallback"] == true;
    if !sentencepiece && json["decoder"]["type"] != "ByteLevel" {
        return Err(unsupported("a BPE model with neither a ByteLevel decoder nor byte fallback"));
    }
    let mut tokens: Vec<Option<(String, i32)>> = vec![None; vocab_size];
    let mut place = |id: u64, text: &str, kind: i32| -> Result<()> {
        let slot = tokens.get_mut(id as usize).ok_or_else(|| {
            Error::Invalid(format!("token `{text}` has id {id}, beyond the model's {vocab_size} embeddings"))
        })?;
        *slot = Some((text.to_string(), kind));
        Ok(())
    };
    for (text, id) in model["vocab"].as_object().ok_or_else(|| unsupported("no vocab"))? {
        let byte = sentencepiece && text.len() == 6 && text.starts_with("<0x") && text.ends_with('>');
        place(
            id.as_u64().ok_or_else(|| unsupported("a vocab id is not a number"))?,
            text,
            if byte { BYTE } else { NORMAL },
        )?;
    }
    for added in json["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(text)) = (added["id"].as_u64(), added["content"].as_str()) else { continue };
        place(id, text, if added["special"] == true { CONTROL } else { USER_DEFINED })?;
    }
    let (tokens, types): (Vec<String>, Vec<i32>) =
        tokens.into_iter().enumerate().map(|(i, t)| t.unwrap_or_else(|| (format!("[PAD{i}]"), UNUSED))).unzip();
    let merges: Vec<(String, String)> = model["merges"]
        .as_array()
        .ok_or_else(|| unsupported("no merges"))?
        .iter()
        .map(|m| match m {
            Json::String(s) => s.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())),
            Json::Array(pair) if pair.len() == 2 => {
                Some((pair[0].as_str()?.to_string(), pair[1].as_str()?.to_string()))
            }
            _ => None,
        })
        .collect::<Option<_>>()
        .ok_or_else(|| unsupported("a merge is neither `a b` nor [a, b]"))?;
    let unknown = model["unk_token"].as_str().and_then(|t| tokens.iter().position(|p| p == t)).map(|i| i as u32);
    if sentencepiece {
        // A piece scores by its first merge: earlier merges score higher.
        let ids: HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
        let mut scores: Vec<f32> =
            types.iter().map(|&t| if t == CONTROL || t == USER_DEFINED { SPECIAL_SCORE } else { 0.0 }).collect();
        let mut scored = vec![false; tokens.len()];
        let mut rank = 0;
        for (a, b) in &merges {
            if let Some(&id) = ids.get(format!("{a}{b}").as_str()) {
                if types[id] == NORMAL && !scored[id] {
                    (scored[id], scores[id]) = (true, -(rank as f32) - 1.0);
                    rank += 1;
                }
            }
        }
        let prepends = |v: &Json| {
            v["type"] == "Prepend"
                || v["type"] == "Metaspace" && v["prepend_scheme"] != "never"
                || v["normalizers"].as_array().is_some_and(|n| n.iter().any(|n| n["type"] == "Prepend"))
        };
        return Ok(GgufVocab {
            model: "llama",
            pre: "default",
            tokens,
            types,
            scores: Some(scores),
            merges: None,
            add_space_prefix: prepends(&json["normalizer"]) || prepends(&json["pre_tokenizer"]),
            unknown,
        });
    }
    let pre = pre_tokenizer_name(&json["pre_tokenizer"]).ok_or_else(|| {
        unsupported(
            "the pre-tokenizer is not one llama.cpp names (ByteLevel, SmolLM's Digits + ByteLevel, or Qwen2's or Llama \
             3's Split regex + ByteLevel)",
        )
    })?;
    let merges = merges.into_iter().map(|(a, b)| format!("{a} {b}")).collect();
    Ok(GgufVocab {
        model: "gpt2",
        pre,
        tokens,
        types,
        scores: None,
        merges: Some(merges),
        add_space_prefix: false,
        unknown,
    })
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
            SPLIT_REGEXES.iter().find(|(_, r)| *r == regex).map(|(name, _)| *name)
        }
        _ => None,
    }
}

/// tokenizer.json for the `tokenizers` library, rebuilt from the GGUF vocabulary. Control and
/// user-defined tokens become added tokens (special and not).
pub fn tokenizer_json(g: &Gguf) -> Result<Json> {
    let tokens = g.string_array("tokenizer.ggml.tokens")?;
    let types: Vec<i32> = match g.metadata.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
        Some(a) => a.iter().map(|v| v.as_int().unwrap_or(1) as i32).collect(),
        None => vec![NORMAL; tokens.len()],
    };
    let vocab: serde_json::Map<String, Json> =
        tokens.iter().enumerate().map(|(i, t)| (t.to_string(), json!(i))).collect();
    let added: Vec<Json> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| matches!(types.get(*i), Some(&CONTROL) | Some(&USER_DEFINED)))
        .map(|(i, t)| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": types[i] == CONTROL})
        })
        .collect();
    let special = |k: &str| g.metadata.get(&format!("tokenizer.ggml.{k}_token_id")).and_then(Value::as_int);
    let add_bos = g.metadata.get("tokenizer.ggml.add_bos_token") == Some(&Value::Bool(true));
    let bos = special("bos").filter(|_| add_bos).and_then(|id| Some((id, *tokens.get(id as usize)?)));
    let model = g.get("tokenizer.ggml.model")?.as_str().unwrap_or_default();
    let (normalizer, pre_tokenizer, decoder, bpe) = match model {
        "gpt2" => {
            let (pre, decoder) = byte_level_pre_tokenizer(g)?;
            let merges = g.string_array("tokenizer.ggml.merges")?;
            (Json::Null, pre, decoder, json!({"byte_fallback": false, "unk_token": null, "merges": merges}))
        }
        "llama" => {
            let scores: Vec<f32> = match g.get("tokenizer.ggml.scores")?.as_array() {
                Some(a) => a.iter().map(|v| v.as_float().unwrap_or(0.0) as f32).collect(),
                None => return Err(Error::file(&g.path, "metadata `tokenizer.ggml.scores` is not an array")),
            };
            let merges = sentencepiece_merges(&tokens, &types, &scores);
            let space = json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"});
            let mut decoder = vec![
                json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "}),
                json!({"type": "ByteFallback"}),
                json!({"type": "Fuse"}),
            ];
            // llama.cpp's default for SentencePiece: a space opens the text (Llama 2; not Gemma).
            let normalizer = if g.metadata.get("tokenizer.ggml.add_space_prefix") != Some(&Value::Bool(false)) {
                decoder.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
                json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"}, space]})
            } else {
                space
            };
            let unk = special("unknown").and_then(|id| tokens.get(id as usize));
            let bpe = json!({"byte_fallback": true, "unk_token": unk, "merges": merges});
            (normalizer, Json::Null, json!({"type": "Sequence", "decoders": decoder}), bpe)
        }
        other => {
            return Err(Error::file(
                &g.path,
                format!("tokenizer model `{other}` is not supported (gpt2 byte-level BPE, llama SentencePiece)"),
            ))
        }
    };
    let post_processor = match (model, bos) {
        ("gpt2", _) => json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true}),
        (_, Some((id, bos))) => json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [id], "tokens": [bos]}},
        }),
        _ => Json::Null,
    };
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": decoder,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": bpe["unk_token"], "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": bpe["byte_fallback"], "byte_fallback": bpe["byte_fallback"],
            "ignore_merges": false, "vocab": vocab, "merges": bpe["merges"],
        },
    }))
}

/// The pre-tokenizer and decoder of a byte-level BPE vocabulary, from `tokenizer.ggml.pre`.
fn byte_level_pre_tokenizer(g: &Gguf) -> Result<(Json, Json)> {
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let decoder = json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true});
    let pre = match g.metadata.get("tokenizer.ggml.pre").and_then(Value::as_str).unwrap_or("default") {
        // SmolLM splits every digit on its own before the GPT-2 split.
        "smollm" => {
            json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level]})
        }
        "default" | "gpt-2" | "gpt2" => byte_level,
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
    Ok((pre, decoder))
}

/// BPE merges from SentencePiece pieces, as transformers' converter makes them: every split of a
/// normal piece into two normal pieces, the joined piece's score highest first, then the longer
/// left part, then the longer right part; ties in piece order.
fn sentencepiece_merges(tokens: &[&str], types: &[i32], scores: &[f32]) -> Vec<[String; 2]> {
    let normal = |i: usize| types.get(i).is_none_or(|&t| t == NORMAL);
    let ids: HashMap<&str, usize> =
        tokens.iter().enumerate().filter(|(i, _)| normal(*i)).map(|(i, t)| (*t, i)).collect();
    let mut merges = Vec::new();
    for (id, piece) in tokens.iter().enumerate().filter(|(i, _)| normal(*i)) {
        let mut local: Vec<(usize, usize, usize)> = piece
            .char_indices()
            .skip(1)
            .filter_map(|(at, _)| Some((ids.get(&piece[..at])?.to_owned(), ids.get(&piece[at..])?.to_owned(), at)))
            .collect();
        local.sort_by_key(|&(l, r, _)| (l, r));
        let score = scores.get(id).copied().unwrap_or(0.0);
        merges.extend(local.into_iter().map(|(_, _, at)| (score, &piece[..at], &piece[at..])));
    }
    let chars = |s: &str| s.chars().count();
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(chars(b.1).cmp(&chars(a.1))).then(chars(b.2).cmp(&chars(a.2))));
    merges.into_iter().map(|(_, l, r)| [l.to_string(), r.to_string()]).collect()
}

/// tokenizer_config.json: the special tokens by name, the tokenizer class and the chat template
/// (`template` when the file has none).
pub fn tokenizer_config_json(g: &Gguf, template: Option<&str>) -> Result<Json> {
    let tokens = g.string_array("tokenizer.ggml.tokens")?;
    let name = |k: &str| {
        g.metadata
            .get(&format!("tokenizer.ggml.{k}_token_id"))
            .and_then(Value::as_int)
            .and_then(|i| tokens.get(i as usize))
            .map(|t| json!(t))
            .unwrap_or(Json::Null)
    };
    let add_bos = g.metadata.get("tokenizer.ggml.add_bos_token") == Some(&Value::Bool(true));
    let arch = g.get("general.architecture")?.as_str().unwrap_or_default();
    let mut config = json!({
        "bos_token": if add_bos { name("bos") } else { Json::Null },
        "eos_token": name("eos"),
        "pad_token": name("padding"),
        "unk_token": name("unknown"),
        "model_max_length": g.metadata.get(&format!("{arch}.context_length")).and_then(Value::as_int),
        // As `Tokenizer::save` writes it: left to guess, transformers picks its Llama tokenizer,
        // which refuses a null BOS.
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": false,
    });
    if let Some(template) = g.metadata.get("tokenizer.chat_template").and_then(Value::as_str).or(template) {
        config["chat_template"] = json!(template);
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pieces a, b, c, ab (score -1), bc (-2), abc (-3) and a control token.
    fn pieces() -> (Vec<&'static str>, Vec<i32>, Vec<f32>) {
        let tokens = vec!["<unk>", "a", "b", "c", "ab", "bc", "abc"];
        let types = vec![CONTROL, NORMAL, NORMAL, NORMAL, NORMAL, NORMAL, NORMAL];
        (tokens, types, vec![SPECIAL_SCORE, 0.0, 0.0, 0.0, -1.0, -2.0, -3.0])
    }

    #[test]
    fn merges_rank_by_the_joined_piece_score_then_the_longer_left_part() {
        let (tokens, types, scores) = pieces();
        let merges: Vec<String> = sentencepiece_merges(&tokens, &types, &scores).iter().map(|m| m.join(" ")).collect();
        // "abc" splits two ways at the same score: the longer left part ranks first.
        assert_eq!(merges, ["a b", "b c", "ab c", "a bc"]);
    }

    #[test]
    fn sentencepiece_merges_travel_as_scores_and_come_back() {
        let (tokens, types, scores) = pieces();
        let merges = sentencepiece_merges(&tokens, &types, &scores);
        let vocab: serde_json::Map<String, Json> =
            tokens.iter().enumerate().filter(|(i, _)| *i > 0).map(|(i, t)| (t.to_string(), json!(i))).collect();
        let json = json!({
            "model": {"type": "BPE", "byte_fallback": true, "unk_token": "<unk>", "vocab": vocab, "merges": merges},
            "added_tokens": [{"id": 0, "content": "<unk>", "special": true}],
            "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
        });
        let vocab = gguf_vocab(&json, 8).unwrap();
        assert_eq!((vocab.model, vocab.unknown, vocab.add_space_prefix), ("llama", Some(0), false));
        assert_eq!(vocab.types, [CONTROL, NORMAL, NORMAL, NORMAL, NORMAL, NORMAL, NORMAL, UNUSED]);
        let stored = vocab.scores.unwrap();
        assert_eq!(stored, [SPECIAL_SCORE, 0.0, 0.0, 0.0, -1.0, -2.0, -3.0, 0.0]);
        let tokens: Vec<&str> = vocab.tokens.iter().map(String::as_str).collect();
        assert_eq!(sentencepiece_merges(&tokens, &vocab.types, &stored), merges);
    }
}
