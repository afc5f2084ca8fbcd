//! Batched generation with a KV cache.
//!
//! Rows (each prompt repeated `samples_per_prompt` times) are sorted by prompt length and cut
//! into batches; each batch is left-padded, prefilled in one forward pass, then decoded a token
//! at a time. Rows that finish are dropped from the batch and the cache, so they stop costing
//! compute. Every row draws from its own generator seeded by (seed, prompt, sample), not from
//! torch's global one, so the same call repeats exactly, whatever else runs in the process.

use crate::error::{Error, Result};
use crate::model::{KvCache, Llama};
use crate::rng::Rng;
use crate::tokenizer::Tokenizer;
use tch::{Device, Kind, Tensor};

/// How to sample.
#[derive(Debug, Clone)]
pub struct SamplingConfig {
    /// Stop after this many new tokens.
    pub max_new_tokens: usize,
    /// 0 means greedy decoding.
    pub temperature: f64,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches `top_p`.
    pub top_p: f64,
    /// Samples drawn per prompt (K).
    pub samples_per_prompt: usize,
    /// Rows decoded together.
    pub batch_size: usize,
    pub seed: u64,
    /// Stop once the response contains any of these; the text ends with the stop string.
    pub stop_strings: Vec<String>,
    /// Stop once a `#### N` answer line is complete (followed by a newline).
    pub stop_after_answer_line: bool,
    /// A token fed after every token that ends a line, before sampling goes on: per-step RCRL
    /// conditions each step on `[GOOD]` this way. It is part of the response, with log-prob 0.
    pub step_prefix: Option<u32>,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            max_new_tokens: 256,
            temperature: 1.0,
            top_p: 1.0,
            samples_per_prompt: 1,
            batch_size: 64,
            seed: 0,
            stop_strings: Vec::new(),
            stop_after_answer_line: true,
            step_prefix: None,
        }
    }
}

/// Why a row stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    /// An end-of-sequence token (kept as the last token; not in the text).
    Eos,
    /// A stop string or a complete answer line.
    Stop,
    /// `max_new_tokens` reached.
    Length,
}

/// One sampled response.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub prompt_index: usize,
    pub sample_index: usize,
    /// The new tokens (including a final EOS when `finish` is `Eos`).
    pub tokens: Vec<u32>,
    /// The decoded response, special tokens skipped.
    pub text: String,
    /// log p(token) under the policy's softmax at the sampling temperature (temperature 1 for
    /// greedy), before top-p truncation: what a trainer recomputes from the same logits.
    pub logprobs: Vec<f32>,
    pub finish: Finish,
}

/// Generates `samples_per_prompt` responses for every prompt (token ids, BOS included if the
/// model wants one). Output is ordered by prompt, then sample.
pub fn generate(
    model: &Llama,
    tokenizer: &Tokenizer,
    prompts: &[Vec<u32>],
    cfg: &SamplingConfig,
) -> Result<Vec<Generation>> {
    if cfg.samples_per_prompt == 0 || cfg.batch_size == 0 || cfg.max_new_tokens == 0 {
        return Err(Error::Invalid("samples_per_prompt, batch_size and max_new_tokens must be at least 1".into()));
    }
    if let Some(i) = prompts.iter().position(|p| p.is_empty()) {
        return Err(Error::Invalid(format!("prompt {i} is empty")));
    }
    let max_len = model.config.max_position_embeddings as usize;
    if let Some(i) = prompts.iter().position(|p| p.len() + cfg.max_new_tokens > max_len) {
        return Err(Error::Invalid(format!(
            "prompt {i} ({} tokens) + max_new_tokens ({}) exceeds the model's {max_len} positions",
            prompts[i].len(),
            cfg.max_new_tokens
        )));
    }
    let mut rows: Vec<(usize, usize)> =
        (0..prompts.len()).flat_map(|p| (0..cfg.samples_per_prompt).map(move |s| (p, s))).collect();
    // Longest prompts first, so each batch holds similar lengths and little padding.
    rows.sort_by_key(|&(p, _)| std::cmp::Reverse(prompts[p].len()));
    let stops = Stops {
        ids: tokenizer.stop_ids(),
        ends_line: if cfg.step_prefix.is_some() { tokenizer.newline_counts()? } else { Vec::new() },
        cfg,
    };
    let mut out = Vec::with_capacity(rows.len());
    tch::no_grad(|| -> Result<()> {
        for chunk in rows.chunks(cfg.batch_size) {
            crate::progress::check_stop()?;
            out.extend(generate_batch(model, tokenizer, prompts, chunk, cfg, &stops)?);
        }
        Ok(())
    })?;
    out.sort_by_key(|g| (g.prompt_index, g.sample_index));
    Ok(out)
}

struct Stops<'a> {
    ids: Vec<u32>,
    /// Newlines in each token (only with a step prefix).
    ends_line: Vec<u8>,
    cfg: &'a SamplingConfig,
}

impl Stops<'_> {
    /// Where the text should end if a stop string or answer line has completed.
    fn text_end(&self, text: &str) -> Option<usize> {
        let by_string = self.cfg.stop_strings.iter().filter_map(|s| text.find(s.as_str()).map(|i| i + s.len())).min();
        let by_answer = self.cfg.stop_after_answer_line.then(|| answer_line_end(text)).flatten();
        by_string.into_iter().chain(by_answer).min()
    }
}

/// End (after the newline) of the first complete `#### N` line.
fn answer_line_end(text: &str) -> Option<usize> {
    let start = text.find("####")?;
    let newline = text[start..].find('\n')? + start;
    text[start + 4..newline].chars().any(|c| c.is_ascii_digit()).then_some(newline + 1)
}

struct Row {
    prompt_index: usize,
    sample_index: usize,
    tokens: Vec<u32>,
    logprobs: Vec<f32>,
    finish: Option<Finish>,
    text: String,
    rng: Rng,
    /// The last token ended a line: the step prefix comes next.
    at_line_start: bool,
}

/// A batch being decoded: the KV cache plus which key positions are real (not padding) and the
/// position id of each row's next token.
pub struct Decoder<'m> {
    model: &'m Llama,
    cache: KvCache,
    valid: Tensor,
    next_pos: Tensor,
}

impl<'m> Decoder<'m> {
    /// Left-pads the prompts into one batch, runs them through the model in one pass and returns
    /// the decoder with the next-token logits `[B, V]` of every row. `capacity` bounds prompt
    /// plus new tokens.
    pub fn prefill(model: &'m Llama, prompts: &[&[u32]], pad: u32, max_new_tokens: usize) -> (Self, Tensor) {
        let device = model.device();
        let b = prompts.len() as i64;
        let prompt_len = prompts.iter().map(|p| p.len()).max().unwrap_or(0) as i64;
        let capacity = prompt_len + max_new_tokens as i64;
        // Row r's prompt occupies the last len_r columns.
        let mut ids = vec![pad as i64; (b * prompt_len) as usize];
        let mut valid = vec![false; (b * capacity) as usize];
        for (r, prompt) in prompts.iter().enumerate() {
            let offset = prompt_len as usize - prompt.len();
            for (j, &t) in prompt.iter().enumerate() {
                ids[r * prompt_len as usize + offset + j] = t as i64;
                valid[r * capacity as usize + offset + j] = true;
            }
        }
        let ids = Tensor::from_slice(&ids).view([b, prompt_len]).to_device(device);
        let valid = Tensor::from_slice(&valid).view([b, capacity]).to_device(device);
        let prompt_valid = valid.narrow(1, 0, prompt_len);
        // Positions count real tokens only; padding sits at 0 and is never attended to.
        let positions = (prompt_valid.cumsum(1, Kind::Int64) - 1).clamp_min(0);
        let causal = Tensor::ones([prompt_len, prompt_len], (Kind::Bool, device)).tril(0);
        // Padding queries attend to themselves so no softmax row is empty (that gives NaN).
        let eye = Tensor::eye(prompt_len, (Kind::Bool, device));
        let mask = causal.logical_and(&prompt_valid.view([b, 1, 1, prompt_len])).logical_or(&eye);
        let mut cache = model.new_cache(b, capacity);
        let hidden = model.forward(&ids, &positions, Some(&mask), Some(&mut cache));
        let logits = model.logits(&hidden.select(1, prompt_len - 1));
        let next_pos = prompt_valid.sum_dim_intlist(1, false, Kind::Int64);
        (Decoder { model, cache, valid, next_pos }, logits)
    }

    /// Feeds one token per row (`[B]`) and returns the next-token logits `[B, V]`.
    pub fn step(&mut self, tokens: &Tensor) -> Tensor {
        let n = tokens.size()[0];
        let key_len = self.cache.len() + 1;
        let _ = self.valid.narrow(1, key_len - 1, 1).fill_(1);
        let mask = self.valid.narrow(1, 0, key_len).view([n, 1, 1, key_len]);
        let positions = self.next_pos.view([n, 1]);
        let hidden = self.model.forward(&tokens.view([n, 1]), &positions, Some(&mask), Some(&mut self.cache));
        self.next_pos += 1;
        self.model.logits(&hidden.select(1, 0))
    }

    /// Keeps only the rows in `index` (int64): finished rows stop costing compute.
    pub fn select_rows(&mut self, index: &Tensor) {
        self.cache.select_rows(index);
        self.valid = self.valid.index_select(0, index);
        self.next_pos = self.next_pos.index_select(0, index);
    }
}

fn generate_batch(
    model: &Llama,
    tokenizer: &Tokenizer,
    prompts: &[Vec<u32>],
    chunk: &[(usize, usize)],
    cfg: &SamplingConfig,
    stops: &Stops,
) -> Result<Vec<Generation>> {
    let batch_prompts: Vec<&[u32]> = chunk.iter().map(|&(p, _)| prompts[p].as_slice()).collect();
    let (mut decoder, mut logits) = Decoder::prefill(model, &batch_prompts, tokenizer.pad_id(), cfg.max_new_tokens);
    let mut rows: Vec<Row> = chunk
        .iter()
        .map(|&(p, s)| Row {
            prompt_index: p,
            sample_index: s,
            tokens: Vec::new(),
            logprobs: Vec::new(),
            finish: None,
            text: String::new(),
            rng: Rng::new(Rng::new(cfg.seed).next_u64() ^ ((p as u64) << 24) ^ s as u64),
            at_line_start: false,
        })
        .collect();
    let mut active: Vec<usize> = (0..rows.len()).collect(); // batch slot -> row
    loop {
        let uniforms: Vec<f32> = active.iter().map(|&r| rows[r].rng.unit() as f32).collect();
        let (mut next, logprob) = choose(&logits, &Tensor::from_slice(&uniforms).to_device(model.device()), cfg);
        let next_host = Vec::<i64>::try_from(&next.to_device(Device::Cpu))?;
        let logprob_host = Vec::<f32>::try_from(&logprob.to_device(Device::Cpu))?;
        let mut keep = Vec::with_capacity(active.len());
        let mut forced = false;
        for (slot, &r) in active.iter().enumerate() {
            let row = &mut rows[r];
            let (token, logprob) = match cfg.step_prefix {
                Some(prefix) if row.at_line_start => (prefix, 0.0),
                _ => (next_host[slot] as u32, logprob_host[slot]),
            };
            forced |= token as i64 != next_host[slot];
            row.at_line_start = cfg.step_prefix.is_some_and(|p| p != token)
                && stops.ends_line.get(token as usize).is_some_and(|&n| n > 0);
            row.tokens.push(token);
            row.logprobs.push(logprob);
            if stops.ids.contains(&token) {
                row.finish = Some(Finish::Eos);
            } else {
                let text = tokenizer.decode(&row.tokens, true)?;
                if let Some(end) = stops.text_end(&text) {
                    row.finish = Some(Finish::Stop);
                    row.text = text[..end].to_string();
                } else if row.tokens.len() >= cfg.max_new_tokens {
                    row.finish = Some(Finish::Length);
                }
            }
            if row.finish.is_none() {
                keep.push(slot as i64);
            }
        }
        if keep.is_empty() {
            break;
        }
        if forced {
            // Feed what the rows hold, step prefixes included, not what was sampled.
            let fed: Vec<i64> =
                active.iter().map(|&r| *rows[r].tokens.last().expect("a token per step") as i64).collect();
            next = Tensor::from_slice(&fed).to_device(model.device());
        }
        if keep.len() < active.len() {
            let index = Tensor::from_slice(&keep).to_device(model.device());
            decoder.select_rows(&index);
            next = next.index_select(0, &index);
            active = keep.iter().map(|&s| active[s as usize]).collect();
        }
        logits = decoder.step(&next);
    }
    rows.into_iter()
        .map(|row| {
            let text = match row.finish {
                Some(Finish::Stop) => row.text,
                _ => tokenizer.decode(&row.tokens, true)?,
            };
            Ok(Generation {
                prompt_index: row.prompt_index,
                sample_index: row.sample_index,
                tokens: row.tokens,
                text,
                logprobs: row.logprobs,
                finish: row.finish.unwrap_or(Finish::Length),
            })
        })
        .collect()
}

/// Picks the next token of every row and its log-probability (see `Generation::logprobs`),
/// sampling by inverting each row's CDF at its uniform draw in `[0, 1)`.
fn choose(logits: &Tensor, uniforms: &Tensor, cfg: &SamplingConfig) -> (Tensor, Tensor) {
    let logits = logits.to_kind(Kind::Float);
    let greedy = cfg.temperature <= 0.0;
    let scaled = if greedy { logits.shallow_clone() } else { &logits / cfg.temperature };
    let logp = scaled.log_softmax(-1, Kind::Float);
    let next = if greedy {
        logits.argmax(-1, false)
    } else {
        let filtered = if cfg.top_p < 1.0 { top_p_filter(&scaled, cfg.top_p) } else { scaled };
        let cdf = filtered.softmax(-1, Kind::Float).cumsum(-1, Kind::Float);
        // Scaling by the total keeps rounding from ever landing past the last likely token.
        let target = uniforms.unsqueeze(-1) * cdf.narrow(1, cdf.size()[1] - 1, 1);
        cdf.lt_tensor(&target).sum_dim_intlist(-1, false, Kind::Int64)
    };
    let lp = logp.gather(-1, &next.unsqueeze(-1), false).squeeze_dim(-1);
    (next, lp)
}

/// Sets to -inf every logit outside the nucleus of mass `p` (the top token always stays).
fn top_p_filter(logits: &Tensor, p: f64) -> Tensor {
    let (sorted, index) = logits.sort(-1, true);
    let probs = sorted.softmax(-1, Kind::Float);
    let mass_before = probs.cumsum(-1, Kind::Float) - &probs;
    let outside = mass_before.ge(p);
    let _ = outside.narrow(-1, 0, 1).fill_(0); // the top token always stays
    let sorted = sorted.masked_fill(&outside, f64::NEG_INFINITY);
    logits.full_like(f64::NEG_INFINITY).scatter(-1, &index, &sorted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_line_ends_after_its_newline() {
        assert_eq!(answer_line_end("a\n#### 12\nmore"), Some(10));
        assert_eq!(answer_line_end("a\n#### 12"), None, "the line is not complete yet");
        assert_eq!(answer_line_end("#### \n"), None, "no number yet");
    }

    #[test]
    fn stop_strings_cut_at_the_earliest_match() {
        let cfg = SamplingConfig { stop_strings: vec!["Question:".into(), "\n\n".into()], ..Default::default() };
        let stops = Stops { ids: vec![], ends_line: vec![], cfg: &cfg };
        assert_eq!(stops.text_end("x = 3\n\nQuestion: y"), Some(7));
        assert_eq!(stops.text_end("#### 4\nQuestion:"), Some(7));
        assert_eq!(stops.text_end("nothing yet"), None);
    }

    #[test]
    fn top_p_keeps_the_smallest_nucleus() {
        let logits = Tensor::from_slice(&[0.2f32, 0.5, 0.3]).log().unsqueeze(0);
        let kept = |p: f64| Vec::<bool>::try_from(top_p_filter(&logits, p).isfinite().squeeze_dim(0)).unwrap();
        assert_eq!(kept(0.45), vec![false, true, false]);
        assert_eq!(kept(0.55), vec![false, true, true]);
        assert_eq!(kept(0.95), vec![true, true, true]);
        assert_eq!(kept(0.0), vec![false, true, false], "the top token always stays");
    }

    #[test]
    fn inverse_cdf_sampling_follows_the_distribution() {
        let logits = Tensor::from_slice(&[0.1f32, 0.6, 0.3]).log().unsqueeze(0).repeat([4, 1]);
        let cfg = SamplingConfig { temperature: 1.0, ..Default::default() };
        let (next, logp) = choose(&logits, &Tensor::from_slice(&[0.05f32, 0.2, 0.69, 0.95]), &cfg);
        assert_eq!(Vec::<i64>::try_from(next).unwrap(), vec![0, 1, 1, 2]);
        let logp = Vec::<f32>::try_from(logp).unwrap();
        assert!((logp[0] - 0.1f32.ln()).abs() < 1e-6 && (logp[3] - 0.3f32.ln()).abs() < 1e-6);
    }
}
