//! From-scratch model sizes for CPU work. Parameter counts are with a 1,024-token vocabulary
//! and tied embeddings.

use super::config::ModelConfig;
use crate::error::{Error, Result};

/// (name, hidden, intermediate, layers, heads, kv heads, approximate parameters)
pub const PRESETS: [(&str, i64, i64, i64, i64, i64, &str); 3] = [
    ("tiny", 128, 384, 4, 4, 2, "~0.9M"),
    ("small", 256, 704, 6, 8, 4, "~4.7M"),
    ("medium", 512, 1408, 8, 8, 4, "~24M"),
];

/// The config of preset `name` for a tokenizer of `vocab_size` tokens.
pub fn preset(name: &str, vocab_size: i64, max_positions: i64) -> Result<ModelConfig> {
    let (_, hidden, inter, layers, heads, kv, _) = PRESETS.iter().find(|p| p.0 == name).ok_or_else(|| {
        let names: Vec<_> = PRESETS.iter().map(|p| p.0).collect();
        Error::Invalid(format!("unknown preset `{name}` (choose one of: {})", names.join(", ")))
    })?;
    Ok(ModelConfig::llama(vocab_size, *hidden, *inter, *layers, *heads, *kv, max_positions, true))
}

/// A fresh model of preset `name` with a byte-level BPE tokenizer of `vocab_size` tokens trained
/// on `corpus` (the task's text). The config records the tokenizer's special ids.
pub fn init_from_scratch(
    name: &str,
    corpus: impl IntoIterator<Item = String>,
    vocab_size: usize,
    max_positions: i64,
    seed: u64,
    device: tch::Device,
) -> Result<(super::CausalLm, crate::tokenizer::Tokenizer)> {
    let mut tokenizer = crate::tokenizer::Tokenizer::train_bpe(corpus, vocab_size)?;
    tokenizer.set_model_max_length(max_positions as usize);
    let mut config = preset(name, tokenizer.vocab_size() as i64, max_positions)?;
    config.bos_token_id = tokenizer.bos_id().map(Into::into);
    config.eos_token_id = Some(tokenizer.eos_id().into());
    config.pad_token_id = Some(tokenizer.pad_id().into());
    tch::manual_seed(seed as i64);
    let model = super::CausalLm::new(&config, device, false)?;
    Ok((model, tokenizer))
}
