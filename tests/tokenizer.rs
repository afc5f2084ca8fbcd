//! Tokenizer tests: BPE training on a synthetic arithmetic corpus, save/load, special tokens,
//! and loading a hand-built Hugging Face (GPT-2 style) tokenizer folder.

use proptest::prelude::*;
use reasonrl::tokenizer::Tokenizer;
use std::path::Path;
use std::sync::OnceLock;

/// A few hundred GSM8K-like lines from a fixed linear congruential generator.
fn corpus(n: usize) -> Vec<String> {
    let names = ["Tom", "Ann", "Raj", "Mia", "Lee"];
    let things = ["apples", "pens", "cookies", "marbles", "books"];
    let ops = ['+', '-', '*'];
    let mut state: u64 = 42;
    let mut next = |m: u64| {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) % m
    };
    (0..n)
        .map(|_| {
            let name = names[next(5) as usize];
            let thing = things[next(5) as usize];
            let (a, b) = (next(100) + 1, next(20) + 1);
            let op = ops[next(3) as usize];
            let r = match op {
                '+' => a as i64 + b as i64,
                '-' => a as i64 - b as i64,
                _ => (a * b) as i64,
            };
            format!("{name} has {a} {thing}. {b} {op} {a} = <<{b}{op}{a}={r}>>{r}\n#### {r}")
        })
        .collect()
}

fn trained() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| Tokenizer::train_bpe(corpus(400), 512).expect("train"))
}

#[test]
fn special_ids_and_vocab_size() {
    let tok = trained();
    assert_eq!(tok.bos_id(), Some(0));
    assert_eq!(tok.eos_id(), 1);
    assert_eq!(tok.pad_id(), 2);
    assert_eq!(tok.token_to_id("<s>"), Some(0));
    assert_eq!(tok.token_to_id("</s>"), Some(1));
    assert_eq!(tok.token_to_id("<pad>"), Some(2));
    assert_eq!(tok.stop_ids(), vec![1]);
    assert!(tok.chat_template().is_none());
    assert!(tok.vocab_size() <= 512, "vocab {}", tok.vocab_size());
    assert!(tok.vocab_size() > 259, "no merges learned: {}", tok.vocab_size());
}

#[test]
fn vocab_too_small_is_an_error() {
    assert!(Tokenizer::train_bpe(corpus(10), 100).is_err());
    let tok = Tokenizer::train_bpe(corpus(10), 259).unwrap();
    assert_eq!(tok.vocab_size(), 259);
}

#[test]
fn every_digit_is_its_own_token() {
    let tok = trained();
    let ids = tok.encode("12345").unwrap();
    assert_eq!(ids.len(), 5);
    for (id, d) in ids.iter().zip("12345".chars()) {
        assert_eq!(tok.decode(&[*id], false).unwrap(), d.to_string());
    }
    // Also inside text, where the corpus has many multi-digit numbers.
    let text = "Tom has 36 apples. 3 * 12 = <<3*12=36>>36\n#### 36";
    for id in tok.encode(text).unwrap() {
        let piece = tok.decode(&[id], false).unwrap();
        if piece.chars().any(|c| c.is_ascii_digit()) {
            assert_eq!(piece.chars().count(), 1, "token {piece:?} mixes a digit");
        }
    }
}

#[test]
fn corpus_text_compresses_and_round_trips() {
    let tok = trained();
    let text = &corpus(1)[0];
    let ids = tok.encode(text).unwrap();
    assert!(ids.len() < text.len(), "{} ids for {} bytes", ids.len(), text.len());
    assert_eq!(&tok.decode(&ids, false).unwrap(), text);
}

#[test]
fn round_trips_unicode_and_specials() {
    let tok = trained();
    for text in ["", " ", "  leading and trailing  ", "naïve café — 日本語 🙂 Ωmega\t\r\n\u{0}", "x = -3.5e10; y=[1,2]"]
    {
        let ids = tok.encode(text).unwrap();
        assert!(!ids.contains(&0) && !ids.contains(&1) && !ids.contains(&2));
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
    }
    let mut ids = vec![tok.bos_id().unwrap()];
    ids.extend(tok.encode("7 apples").unwrap());
    ids.push(tok.eos_id());
    assert_eq!(tok.decode(&ids, false).unwrap(), "<s>7 apples</s>");
    assert_eq!(tok.decode(&ids, true).unwrap(), "7 apples");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn encode_decode_round_trips(text in any::<String>()) {
        let tok = trained();
        let ids = tok.encode(&text).unwrap();
        prop_assert_eq!(tok.decode(&ids, false).unwrap(), text);
    }
}

#[test]
fn training_is_deterministic() {
    let a = Tokenizer::train_bpe(corpus(300), 400).unwrap();
    let b = Tokenizer::train_bpe(corpus(300), 400).unwrap();
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    a.save(da.path()).unwrap();
    b.save(db.path()).unwrap();
    let read = |d: &Path| std::fs::read_to_string(d.join("tokenizer.json")).unwrap();
    assert_eq!(read(da.path()), read(db.path()));
}

#[test]
fn save_then_load_is_identical() {
    let tok = trained();
    let dir = tempfile::tempdir().unwrap();
    tok.save(dir.path()).unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("tokenizer_config.json")).unwrap()).unwrap();
    assert_eq!(config["bos_token"], "<s>");
    assert_eq!(config["eos_token"], "</s>");
    assert_eq!(config["pad_token"], "<pad>");
    assert_eq!(config["tokenizer_class"], "PreTrainedTokenizerFast");
    assert_eq!(config["clean_up_tokenization_spaces"], false);
    assert!(config["model_max_length"].is_u64());

    for loaded in [Tokenizer::load(dir.path()).unwrap(), Tokenizer::load(&dir.path().join("tokenizer.json")).unwrap()] {
        assert_eq!(loaded.bos_id(), tok.bos_id());
        assert_eq!(loaded.eos_id(), tok.eos_id());
        assert_eq!(loaded.pad_id(), tok.pad_id());
        assert_eq!(loaded.vocab_size(), tok.vocab_size());
        assert_eq!(loaded.stop_ids(), tok.stop_ids());
        for text in corpus(20).iter().map(String::as_str).chain(["héllo 🙂 </s> 123"]) {
            assert_eq!(loaded.encode(text).unwrap(), tok.encode(text).unwrap());
        }
    }
}

#[test]
fn load_errors_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-model");
    let err = Tokenizer::load(&missing).unwrap_err().to_string();
    assert!(err.contains("no-such-model"), "{err}");

    // A folder without tokenizer.json.
    let err = Tokenizer::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("tokenizer.json"), "{err}");

    let corrupt = dir.path().join("corrupt");
    std::fs::create_dir(&corrupt).unwrap();
    std::fs::write(corrupt.join("tokenizer.json"), "{\"model\": [1, 2").unwrap();
    let err = Tokenizer::load(&corrupt).unwrap_err().to_string();
    assert!(err.contains("corrupt/tokenizer.json"), "{err}");

    // A valid tokenizer.json but a broken tokenizer_config.json.
    trained().save(&corrupt).unwrap();
    std::fs::write(corrupt.join("tokenizer_config.json"), "{oops").unwrap();
    let err = Tokenizer::load(&corrupt).unwrap_err().to_string();
    assert!(err.contains("tokenizer_config.json"), "{err}");
}

#[test]
fn added_special_tokens_stay_whole() {
    let mut tok = trained().clone();
    let before = tok.vocab_size();
    let ids = tok.add_special_tokens(&["[GOOD]", "[BAD]"]);
    assert_eq!(ids, vec![before as u32, before as u32 + 1]);
    assert_eq!(tok.vocab_size(), before + 2);
    // Existing ones keep their id.
    assert_eq!(tok.add_special_tokens(&["[BAD]", "</s>"]), vec![ids[1], 1]);
    assert_eq!(tok.vocab_size(), before + 2);

    let enc = tok.encode("[GOOD] 1+1").unwrap();
    assert_eq!(enc[0], ids[0]);
    assert_eq!(tok.decode(&enc, false).unwrap(), "[GOOD] 1+1");
    assert_eq!(tok.decode(&enc, true).unwrap(), " 1+1");
    assert_eq!(enc[1..], tok.encode(" 1+1").unwrap()[..]);

    // They survive save/load, and are written as additional special tokens.
    let dir = tempfile::tempdir().unwrap();
    tok.save(dir.path()).unwrap();
    let loaded = Tokenizer::load(dir.path()).unwrap();
    assert_eq!(loaded.token_to_id("[GOOD]"), Some(ids[0]));
    assert_eq!(loaded.encode("[GOOD] 1+1").unwrap(), enc);
    let config = std::fs::read_to_string(dir.path().join("tokenizer_config.json")).unwrap();
    assert!(config.contains("\"[GOOD]\""), "{config}");
}

/// A GPT-2 style tokenizer.json with a tiny byte-level BPE vocabulary and a truncation setting.
fn gpt2_tokenizer_json() -> String {
    serde_json::json!({
        "version": "1.0",
        "truncation": {"direction": "Right", "max_length": 2, "strategy": "LongestFirst", "stride": 0},
        "padding": null,
        "added_tokens": [{
            "id": 14, "content": "<|endoftext|>", "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": true, "special": true
        }],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
            "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": {
                "h": 0, "e": 1, "l": 2, "o": 3, "Ġ": 4, "w": 5, "r": 6, "d": 7, "he": 8, "ll": 9,
                "hell": 10, "hello": 11, "Ġw": 12, "or": 13, "<|endoftext|>": 14
            },
            "merges": ["h e", "l l", "he ll", "hell o", "Ġ w", "o r"]
        }
    })
    .to_string()
}

#[test]
fn loads_a_gpt2_style_folder() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), gpt2_tokenizer_json()).unwrap();
    let eos = serde_json::json!({
        "__type": "AddedToken", "content": "<|endoftext|>", "lstrip": false,
        "normalized": true, "rstrip": false, "single_word": false
    });
    let config = serde_json::json!({
        "bos_token": eos, "eos_token": eos, "unk_token": eos,
        "model_max_length": 1024, "tokenizer_class": "GPT2Tokenizer",
        "chat_template": "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    });
    std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();

    let tok = Tokenizer::load(dir.path()).unwrap();
    assert_eq!(tok.eos_id(), 14);
    assert_eq!(tok.bos_id(), Some(14));
    assert_eq!(tok.pad_id(), 14, "pad falls back to eos");
    assert_eq!(tok.stop_ids(), vec![14]);
    assert_eq!(tok.vocab_size(), 15);
    assert!(tok.chat_template().unwrap().starts_with("{% for m"));
    // No truncation to 2 tokens, no special tokens added.
    assert_eq!(tok.encode("hello world").unwrap(), vec![11, 12, 13, 2, 7]);
    assert_eq!(tok.decode(&[11, 12, 13, 2, 7, 14], true).unwrap(), "hello world");
    assert_eq!(tok.decode(&[11, 14], false).unwrap(), "hello<|endoftext|>");

    // Saving keeps the chat template and model_max_length.
    let out = tempfile::tempdir().unwrap();
    tok.save(out.path()).unwrap();
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("tokenizer_config.json")).unwrap()).unwrap();
    assert_eq!(saved["eos_token"], "<|endoftext|>");
    assert_eq!(saved["model_max_length"], 1024);
    assert_eq!(saved["chat_template"], config["chat_template"]);
    let again = Tokenizer::load(out.path()).unwrap();
    assert_eq!(again.chat_template(), tok.chat_template());
    assert_eq!(again.encode("hello world").unwrap(), vec![11, 12, 13, 2, 7]);
}

#[test]
fn special_ids_from_config_json_and_names() {
    // Qwen style: bos_token null, eos by name in tokenizer_config, further stops in config.json.
    let dir = tempfile::tempdir().unwrap();
    let mut tok = trained().clone();
    let ids = tok.add_special_tokens(&["<|endoftext|>", "<|im_end|>"]);
    tok.save(dir.path()).unwrap();
    let config = serde_json::json!({"bos_token": null, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"});
    std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        serde_json::json!({"bos_token_id": ids[0], "eos_token_id": ids[1]}).to_string(),
    )
    .unwrap();
    let t = Tokenizer::load(dir.path()).unwrap();
    assert_eq!((t.bos_id(), t.eos_id(), t.pad_id()), (None, ids[1], ids[0]));
    assert_eq!(t.stop_ids(), vec![ids[1], ids[0]]);

    // No tokenizer_config.json: config.json ids (eos a list), pad by name.
    std::fs::remove_file(dir.path().join("tokenizer_config.json")).unwrap();
    std::fs::write(dir.path().join("config.json"), serde_json::json!({"eos_token_id": [ids[0], ids[1]]}).to_string())
        .unwrap();
    let t = Tokenizer::load(dir.path()).unwrap();
    assert_eq!((t.bos_id(), t.eos_id(), t.pad_id()), (Some(0), ids[0], 2));
    assert!(t.stop_ids().contains(&ids[1]));

    // No configs at all: common names.
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    let t = Tokenizer::load(dir.path()).unwrap();
    assert_eq!((t.bos_id(), t.eos_id(), t.pad_id()), (Some(0), 1, 2));
}

#[test]
fn no_eos_is_an_error_naming_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    let json = gpt2_tokenizer_json().replace("<|endoftext|>", "<|unknown|>");
    std::fs::write(dir.path().join("tokenizer.json"), json).unwrap();
    let err = Tokenizer::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains(&dir.path().display().to_string()), "{err}");
    assert!(err.contains("end-of-sequence"), "{err}");
}
