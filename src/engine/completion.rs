//! What a completion answer holds: token ids and log-probs in llama.cpp's or vLLM's layout, put
//! back on the right tokens, with the ones an engine left out scored locally.

use crate::model::Llama;
use crate::tokenizer::Tokenizer;
use serde_json::Value as Json;

/// Token ids, their log-probs (None: the engine gave none), and whether the engine stopped.
pub(super) type Completion = (Vec<u32>, Vec<Option<f32>>, bool);

/// Puts llama.cpp's log-probs back on the tokens they belong to. It scores a token only when
/// the response's text then ends in a whole UTF-8 character (its `validate_utf8`); matching by
/// id alone goes wrong when an unscored token equals the next scored one. Needs the tokens'
/// bytes (a byte-level BPE vocabulary); otherwise the id matching stands.
pub(super) fn realign_unscored(tokenizer: &Tokenizer, tokens: &[u32], logprobs: Vec<Option<f32>>) -> Vec<Option<f32>> {
    if logprobs.iter().all(Option::is_some) {
        return logprobs;
    }
    let mut text = Vec::new();
    let mut scored = Vec::with_capacity(tokens.len());
    for &t in tokens {
        let Some(bytes) = token_bytes(tokenizer, t) else { return logprobs };
        text.extend(bytes);
        scored.push(ends_in_whole_character(&text));
    }
    let given: Vec<f32> = logprobs.iter().flatten().copied().collect();
    if scored.iter().filter(|&&s| s).count() != given.len() {
        return logprobs;
    }
    let mut given = given.into_iter();
    scored.into_iter().map(|s| if s { given.next() } else { None }).collect()
}

/// llama.cpp's `validate_utf8(text) == text.len()`: no character starting in the last four
/// bytes is cut off.
fn ends_in_whole_character(text: &[u8]) -> bool {
    (1..=4.min(text.len())).all(|i| {
        let c = text[text.len() - i];
        let needs = match c {
            _ if c & 0xE0 == 0xC0 => 2,
            _ if c & 0xF0 == 0xE0 => 3,
            _ if c & 0xF8 == 0xF0 => 4,
            _ => 0,
        };
        i >= needs
    })
}

/// The bytes llama.cpp prints for a token of a byte-level BPE vocabulary (none for a special
/// token); None for a token that is not byte-level.
fn token_bytes(tokenizer: &Tokenizer, id: u32) -> Option<Vec<u8>> {
    if tokenizer.inner().get_added_tokens_decoder().get(&id).is_some_and(|t| t.special) {
        return Some(Vec::new());
    }
    tokenizer.id_to_token(id)?.chars().map(byte_of_char).collect()
}

/// GPT-2's byte-level alphabet, backwards: printable bytes stand for themselves, the other 68
/// bytes for U+0100 onwards in order.
fn byte_of_char(c: char) -> Option<u8> {
    let printable = |b: u32| (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    let code = c as u32;
    if code < 0x100 {
        return printable(code).then_some(code as u8);
    }
    (0u32..256).filter(|&b| !printable(b)).nth((code - 0x100) as usize).map(|b| b as u8)
}

/// The log-probs an engine left out, from `model` (untempered, as engines report them).
pub(super) fn fill_logprobs(model: &Llama, prompt: &[u32], tokens: &[u32], logprobs: Vec<Option<f32>>) -> Vec<f32> {
    if logprobs.iter().all(Option::is_some) {
        return logprobs.into_iter().flatten().collect();
    }
    let ids: Vec<i64> = prompt.iter().chain(tokens).map(|&t| t as i64).collect();
    let local: Vec<f32> = tch::no_grad(|| {
        let input = tch::Tensor::from_slice(&ids[..ids.len() - 1]).unsqueeze(0).to_device(model.device());
        let logp = model.forward_logits(&input).squeeze_dim(0).log_softmax(-1, tch::Kind::Float);
        let next = tch::Tensor::from_slice(&ids[prompt.len()..]).to_device(model.device()).unsqueeze(-1);
        let picked = logp.narrow(0, prompt.len() as i64 - 1, tokens.len() as i64).gather(-1, &next, false);
        Vec::<f32>::try_from(picked.flatten(0, -1).to_device(tch::Device::Cpu)).expect("f32 log-probs")
    });
    logprobs.into_iter().zip(local).map(|(engine, local)| engine.unwrap_or(local)).collect()
}

/// The one choice of a completion: its token ids and log-probs, from llama.cpp's
/// `logprobs.content[] {id, logprob}` (with every token id in `__verbose.tokens`: the tokens its
/// log-probs leave out get None) or vLLM's `logprobs.tokens` (`token_id:N`) with
/// `token_logprobs`, and whether it ended at a stop (`finish_reason` "stop").
pub(super) fn parse_choice(answer: &Json) -> std::result::Result<Completion, String> {
    let choice = &answer["choices"][0];
    if choice.is_null() {
        return Err(format!(
            "the completion has no choices: {}",
            answer.to_string().chars().take(300).collect::<String>()
        ));
    }
    let stopped = choice["finish_reason"] == "stop";
    let logprobs = &choice["logprobs"];
    let (tokens, lps): (Vec<Option<u32>>, Vec<Option<f32>>) = if let Some(content) = logprobs["content"].as_array() {
        content.iter().map(|c| (c["id"].as_u64().map(|i| i as u32), c["logprob"].as_f64().map(|l| l as f32))).unzip()
    } else if let Some(tokens) = logprobs["tokens"].as_array() {
        let ids =
            tokens.iter().map(|t| t.as_str().and_then(|t| t.strip_prefix("token_id:")).and_then(|i| i.parse().ok()));
        let lps =
            logprobs["token_logprobs"].as_array().map(|l| l.iter().map(|x| x.as_f64().map(|l| l as f32)).collect());
        (ids.collect(), lps.unwrap_or_default())
    } else if answer["__verbose"]["tokens"].is_array() {
        (Vec::new(), Vec::new()) // llama.cpp scored none of the tokens (each ends inside a character)
    } else {
        return Err("the completion has no per-token log-probs (the engine ignored `logprobs`)".into());
    };
    let tokens: Option<Vec<u32>> = tokens.into_iter().collect();
    let lps: Option<Vec<f32>> = lps.into_iter().collect();
    let (tokens, lps) = match (tokens, lps) {
        (Some(t), Some(l)) if t.len() == l.len() => (t, l),
        _ => {
            return Err(
                "the completion's log-probs do not name every token id (vLLM needs `return_tokens_as_token_ids`)"
                    .into(),
            )
        }
    };
    let Some(all) = answer["__verbose"]["tokens"].as_array().filter(|a| a.len() > tokens.len()) else {
        return Ok((tokens, lps.into_iter().map(Some).collect(), stopped));
    };
    // Walk every token, taking the log-probs of the ones the engine scored, in order.
    let (mut scored, mut out) = (tokens.iter().zip(&lps).peekable(), (Vec::new(), Vec::new()));
    for id in all {
        let id = id.as_u64().ok_or("`__verbose.tokens` holds a non-id")? as u32;
        out.0.push(id);
        out.1.push(scored.next_if(|(t, _)| **t == id).map(|(_, l)| *l));
    }
    if scored.next().is_some() {
        return Err("the completion's log-probs name tokens missing from `__verbose.tokens`".into());
    }
    Ok((out.0, out.1, stopped))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn choices_parse_in_llama_cpp_and_vllm_layouts() {
        let llama = json!({"choices": [{"finish_reason": "stop", "logprobs": {"content": [
            {"id": 7, "token": "a", "logprob": -0.5}, {"id": 2, "token": "</s>", "logprob": -0.25}]}}]});
        assert_eq!(parse_choice(&llama), Ok((vec![7, 2], vec![Some(-0.5), Some(-0.25)], true)));
        // llama.cpp leaves token 9 (the first byte of a character) out of its log-probs.
        let verbose = json!({"__verbose": {"tokens": [7, 9, 2]}, "choices": llama["choices"]});
        assert_eq!(parse_choice(&verbose), Ok((vec![7, 9, 2], vec![Some(-0.5), None, Some(-0.25)], true)));
        let vllm = json!({"choices": [{"finish_reason": "length", "logprobs": {
            "tokens": ["token_id:5", "token_id:9"], "token_logprobs": [-1.0, -2.0]}}]});
        assert_eq!(parse_choice(&vllm), Ok((vec![5, 9], vec![Some(-1.0), Some(-2.0)], false)));
        let strings = json!({"choices": [{"logprobs": {"tokens": ["a"], "token_logprobs": [-1.0]}}]});
        assert!(parse_choice(&strings).unwrap_err().contains("every token id"));
        assert!(parse_choice(&json!({"choices": [{"text": "x"}]})).unwrap_err().contains("log-probs"));
        assert!(parse_choice(&json!({"error": "x"})).unwrap_err().contains("no choices"));
    }

    #[test]
    fn utf8_ends_and_byte_level_tokens() {
        assert!(ends_in_whole_character(b"ab") && ends_in_whole_character("é".as_bytes()));
        assert!(!ends_in_whole_character(&[b'a', 0xC3]), "a 2-byte character cut after its first byte");
        assert!(!ends_in_whole_character(&[0xE9, b'd']), "a 3-byte lead two bytes from the end");
        assert!(ends_in_whole_character(&[0xE9, b'd', b'd']), "as llama.cpp: only the length is checked");
        assert_eq!((byte_of_char('d'), byte_of_char('Ġ'), byte_of_char('é')), (Some(b'd'), Some(b' '), Some(0xE9)));
        assert_eq!((byte_of_char('Ā'), byte_of_char('ł'), byte_of_char('Ń')), (Some(0), Some(0xA0), Some(0xAD)));
        assert_eq!(byte_of_char('中'), None);
    }
}
