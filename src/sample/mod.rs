//! Batched generation with a KV cache and continuous batching.
//!
//! A decoder holds `batch_size` rows. Each waiting (prompt, sample) takes the first free row:
//! the prompt is prefilled once for all of its samples and its keys and values are copied into
//! their rows, then every row decodes a token per step. A row that finishes hands its slot to the
//! next waiting sample (as soon as an eighth of the batch is free, so one prefill serves several),
//! so the batch stays nearly full until the queue is empty; after that, finished rows leave it.
//! Every row draws from its own generator seeded by (seed, the prompt's tokens, sample), not from
//! torch's global one, so a sample repeats exactly whatever else runs in the process, the batch
//! size, or the rank that draws it.

mod spec;

pub use spec::{Sampling, SamplingConfig};

use crate::error::{Error, Result};
use crate::model::{CacheWrite, KvCache, Llama};
use crate::rng::{sample_seed, Rng};
use crate::tokenizer::Tokenizer;
use std::collections::VecDeque;
use tch::{Device, Kind, Tensor};

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
    cfg.spec.check("", 1).map_err(Error::Invalid)?;
    if let Some(i) = prompts.iter().position(|p| p.is_empty()) {
        return Err(Error::Invalid(format!("prompt {i} is empty")));
    }
    let max_len = model.config.max_position_embeddings as usize;
    if let Some(i) = prompts.iter().position(|p| p.len() + cfg.spec.max_new_tokens > max_len) {
        return Err(Error::Invalid(format!(
            "prompt {i} ({} tokens) + max_new_tokens ({}) exceeds the model's {max_len} positions",
            prompts[i].len(),
            cfg.spec.max_new_tokens
        )));
    }
    let stops = Stops {
        ids: tokenizer.stop_ids(),
        ends_line: if cfg.step_prefix.is_some() { tokenizer.newline_counts()? } else { Vec::new() },
        cfg,
    };
    // Longest prompts first: the short ones that finish the queue leave the batch sooner.
    let mut order: Vec<usize> = (0..prompts.len()).collect();
    order.sort_by_key(|&p| std::cmp::Reverse(prompts[p].len()));
    let mut queue: VecDeque<(usize, usize)> =
        order.into_iter().flat_map(|p| (0..cfg.spec.samples_per_prompt).map(move |s| (p, s))).collect();
    let slots = cfg.spec.batch_size.min(queue.len());
    let capacity = prompts.iter().map(Vec::len).max().unwrap_or(0) + cfg.spec.max_new_tokens;
    let mut out = Vec::with_capacity(queue.len());
    tch::no_grad(|| -> Result<()> {
        let mut batch = Batch {
            decoder: Decoder::new(model, slots, capacity),
            rows: (0..slots).map(|_| None).collect(),
            feed: vec![0; slots],
        };
        batch.admit(prompts, &mut queue, tokenizer, cfg);
        while !batch.rows.is_empty() {
            crate::progress::check_stop()?;
            let logits = batch.decoder.step(&batch.feed);
            let uniforms: Vec<f32> =
                batch.rows.iter_mut().map(|r| r.as_mut().map_or(0.0, |r| r.rng.unit() as f32)).collect();
            let (next, logprob) = choose(&logits, &Tensor::from_slice(&uniforms).to_device(model.device()), cfg);
            let next = Vec::<i64>::try_from(&next.to_device(Device::Cpu))?;
            let logprob = Vec::<f32>::try_from(&logprob.to_device(Device::Cpu))?;
            for slot in 0..batch.rows.len() {
                let Some(row) = batch.rows[slot].as_mut() else { continue };
                let token = row.push(next[slot] as u32, logprob[slot], &stops)?;
                batch.feed[slot] = token as i64;
                if row.finish.is_some() {
                    out.push(batch.rows[slot].take().expect("checked above").finish()?);
                    batch.decoder.release(slot);
                }
            }
            batch.admit(prompts, &mut queue, tokenizer, cfg);
            batch.drop_free_slots(&queue);
        }
        Ok(())
    })?;
    out.sort_by_key(|g| (g.prompt_index, g.sample_index));
    Ok(out)
}

/// A response sampled elsewhere (by an inference engine) put through the same stop rules as
/// local decoding: it is cut where a stop token, stop string or answer line ends it, so its
/// tokens, text and finish are what local sampling would have kept. `engine_stopped`: the engine
/// ended it at a stop of its own (a stop string it trimmed, or an end-of-sequence it left out).
pub fn replay(
    prompt_index: usize,
    sample_index: usize,
    tokens: &[u32],
    logprobs: &[f32],
    tokenizer: &Tokenizer,
    cfg: &SamplingConfig,
    engine_stopped: bool,
) -> Result<Generation> {
    if cfg.step_prefix.is_some() {
        return Err(Error::Invalid("per-step conditioning (a step prefix) needs local sampling".into()));
    }
    let stops = Stops { ids: tokenizer.stop_ids(), ends_line: Vec::new(), cfg };
    let mut row = Row::new(prompt_index, &[], sample_index, tokenizer, cfg); // draws nothing
    for (&token, &logprob) in tokens.iter().zip(logprobs) {
        row.push(token, logprob, &stops)?;
        if row.finish.is_some() {
            return row.finish();
        }
    }
    row.text = tokenizer.decode(&row.tokens, true)?;
    row.finish = Some(if engine_stopped { Finish::Stop } else { Finish::Length });
    row.finish()
}

/// The rows being decoded, one per decoder slot, and the token each slot is fed next.
struct Batch<'m, 't> {
    decoder: Decoder<'m>,
    rows: Vec<Option<Row<'t>>>,
    feed: Vec<i64>,
}

impl<'t> Batch<'_, 't> {
    /// Continuous batching: free slots take the next waiting rows. They wait until an eighth of
    /// the batch is free, so one prefill pass serves several rows (a pass per finished row costs
    /// more than the idle slots do). The waiting samples of one prompt share one prefill.
    fn admit(
        &mut self,
        prompts: &[Vec<u32>],
        queue: &mut VecDeque<(usize, usize)>,
        tokenizer: &'t Tokenizer,
        cfg: &SamplingConfig,
    ) {
        let free = self.rows.iter().filter(|r| r.is_none()).count();
        if free == 0 || free < self.rows.len().div_ceil(8) && free < self.rows.len() && free < queue.len() {
            return;
        }
        let mut groups: Vec<(&[u32], Vec<i64>)> = Vec::new();
        for slot in 0..self.rows.len() {
            if self.rows[slot].is_some() {
                continue;
            }
            let Some((p, s)) = queue.pop_front() else { break };
            match groups.last_mut() {
                Some((prompt, slots)) if std::ptr::eq(*prompt, prompts[p].as_slice()) => slots.push(slot as i64),
                _ => groups.push((&prompts[p], vec![slot as i64])),
            }
            self.rows[slot] = Some(Row::new(p, &prompts[p], s, tokenizer, cfg));
            self.feed[slot] = *prompts[p].last().expect("prompts are not empty") as i64;
        }
        if !groups.is_empty() {
            self.decoder.fill(&groups, tokenizer.pad_id());
        }
    }

    /// Once nothing waits, finished rows leave the batch so they stop costing compute.
    fn drop_free_slots(&mut self, queue: &VecDeque<(usize, usize)>) {
        if !queue.is_empty() || self.rows.iter().all(Option::is_some) {
            return;
        }
        let keep: Vec<i64> = (0..self.rows.len() as i64).filter(|&s| self.rows[s as usize].is_some()).collect();
        self.decoder.keep_rows(&keep);
        self.feed = keep.iter().map(|&s| self.feed[s as usize]).collect();
        self.rows.retain(Option::is_some);
    }
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

type Stream<'t> = tokenizers::DecodeStream<
    't,
    tokenizers::ModelWrapper,
    tokenizers::NormalizerWrapper,
    tokenizers::PreTokenizerWrapper,
    tokenizers::PostProcessorWrapper,
    tokenizers::DecoderWrapper,
>;

struct Row<'t> {
    prompt_index: usize,
    sample_index: usize,
    tokens: Vec<u32>,
    logprobs: Vec<f32>,
    finish: Option<Finish>,
    /// Decodes a chunk per token, so a step costs O(1) and not a decode of the whole response;
    /// `None` once it failed (a full decode each step then does its job).
    stream: Option<Stream<'t>>,
    /// The response decoded so far; once stopped, the text up to the stop.
    text: String,
    tokenizer: &'t Tokenizer,
    rng: Rng,
    /// The last token ended a line: the step prefix comes next.
    at_line_start: bool,
}

impl<'t> Row<'t> {
    fn new(
        prompt_index: usize,
        prompt: &[u32],
        sample_index: usize,
        tokenizer: &'t Tokenizer,
        cfg: &SamplingConfig,
    ) -> Self {
        Row {
            prompt_index,
            sample_index,
            tokens: Vec::new(),
            logprobs: Vec::new(),
            finish: None,
            stream: Some(tokenizer.inner().decode_stream(true)),
            text: String::new(),
            tokenizer,
            rng: Rng::new(sample_seed(cfg.seed, prompt, sample_index)),
            at_line_start: false,
        }
    }

    /// Appends the sampled token (or the step prefix it gives way to), decides whether the row is
    /// finished and returns the token it holds.
    fn push(&mut self, sampled: u32, logprob: f32, stops: &Stops) -> Result<u32> {
        let (token, logprob) = match stops.cfg.step_prefix {
            Some(prefix) if self.at_line_start => (prefix, 0.0),
            _ => (sampled, logprob),
        };
        self.at_line_start = stops.cfg.step_prefix.is_some_and(|p| p != token)
            && stops.ends_line.get(token as usize).is_some_and(|&n| n > 0);
        self.tokens.push(token);
        self.logprobs.push(logprob);
        if stops.ids.contains(&token) {
            self.finish = Some(Finish::Eos);
            return Ok(token);
        }
        // Only new text can complete a stop, and a full decode confirms it (the stream is a
        // shortcut, never the judge).
        let chunk = self.stream.as_mut().map(|s| s.step(token));
        let maybe_stopped = match chunk {
            Some(Ok(Some(chunk))) => {
                self.text.push_str(&chunk);
                stops.text_end(&self.text).is_some()
            }
            Some(Ok(None)) => false,
            Some(Err(_)) | None => {
                self.stream = None;
                true
            }
        };
        if maybe_stopped {
            let text = self.tokenizer.decode(&self.tokens, true)?;
            if let Some(end) = stops.text_end(&text) {
                self.finish = Some(Finish::Stop);
                self.text = text[..end].to_string();
                return Ok(token);
            }
        }
        if self.tokens.len() >= stops.cfg.spec.max_new_tokens {
            self.finish = Some(Finish::Length);
        }
        Ok(token)
    }

    fn finish(self) -> Result<Generation> {
        let text = match self.finish {
            Some(Finish::Stop) => self.text,
            _ => self.tokenizer.decode(&self.tokens, true)?,
        };
        Ok(Generation {
            prompt_index: self.prompt_index,
            sample_index: self.sample_index,
            tokens: self.tokens,
            text,
            logprobs: self.logprobs,
            finish: self.finish.unwrap_or(Finish::Length),
        })
    }
}

/// A batch of sequences being decoded with a KV cache: a fixed number of rows, each of which can
/// take a new prompt whenever it is free. `lens` counts the tokens each row's cache holds.
pub struct Decoder<'m> {
    model: &'m Llama,
    /// Grown in steps of [`Decoder::GROWTH`] columns up to `capacity`.
    cache: KvCache,
    capacity: i64,
    lens: Vec<i64>,
    /// Rows that hold no sequence: a step feeds them whatever and they do not advance.
    idle: Vec<bool>,
}

impl<'m> Decoder<'m> {
    const GROWTH: i64 = 64;

    /// `rows` empty rows of up to `capacity` tokens each.
    pub fn new(model: &'m Llama, rows: usize, capacity: usize) -> Self {
        Decoder {
            model,
            cache: model.new_cache(rows as i64, 0),
            capacity: capacity as i64,
            lens: vec![0; rows],
            idle: vec![false; rows],
        }
    }

    /// Makes room in the cache for `columns` columns, rounded up to the next growth step.
    fn reserve(&mut self, columns: i64) {
        if columns > self.cache.capacity() {
            let rounded = (columns as u64).div_ceil(Self::GROWTH as u64) as i64 * Self::GROWTH;
            self.cache.reserve(rounded.min(self.capacity.max(columns)));
        }
    }

    /// Starts the given rows on new prompts: all but each prompt's last token go through the
    /// model in one pass (right-padded, causal) and into the rows that sample from that prompt,
    /// a copy per row. The next `step` must feed each row its prompt's last token.
    pub fn fill(&mut self, groups: &[(&[u32], Vec<i64>)], pad: u32) {
        for (prompt, rows) in groups {
            for &r in rows {
                self.lens[r as usize] = prompt.len() as i64 - 1;
                self.idle[r as usize] = false;
            }
        }
        let groups: Vec<_> = groups.iter().filter(|(p, _)| p.len() > 1).collect();
        let Some(width) = groups.iter().map(|(p, _)| p.len() as i64 - 1).max() else { return };
        let device = self.model.device();
        let n = groups.len() as i64;
        let mut ids = vec![pad as i64; (n * width) as usize];
        for (g, (prompt, _)) in groups.iter().enumerate() {
            for (j, &t) in prompt[..prompt.len() - 1].iter().enumerate() {
                ids[g * width as usize + j] = t as i64;
            }
        }
        let ids = Tensor::from_slice(&ids).view([n, width]).to_device(device);
        let positions = Tensor::arange(width, (Kind::Int64, device)).unsqueeze(0).expand([n, width], false);
        let mut prefill = self.model.new_cache(n, width);
        self.reserve(width);
        // Padding sits after each prompt, so causal attention keeps it out of the real tokens.
        let _ = self.model.forward(&ids, &positions, None, Some(CacheWrite { cache: &mut prefill, span: width }));
        let (to, from): (Vec<i64>, Vec<i64>) =
            groups.iter().enumerate().flat_map(|(g, (_, rows))| rows.iter().map(move |&r| (r, g as i64))).unzip();
        let index = |v: Vec<i64>| Tensor::from_slice(&v).to_device(device);
        self.cache.copy_rows(&index(to), &prefill, &index(from), width);
    }

    /// Feeds one token per row and returns the next-token logits `[rows, V]`.
    pub fn step(&mut self, tokens: &[i64]) -> Tensor {
        let device = self.model.device();
        let n = tokens.len() as i64;
        let mut span = self.lens.iter().max().map_or(0, |&l| l + 1);
        self.reserve(span);
        if device == tch::Device::Cpu && self.model.kind() != Kind::Float {
            // Attention over the whole cache: on CPU a bf16 matmul copies a narrowed (strided)
            // one first, which cost more than the masked columns do (SmolLM2 eval: 24% of the
            // time in that copy).
            span = self.cache.capacity();
        }
        let positions = Tensor::from_slice(&self.lens).to_device(device).view([n, 1]);
        // Rows that reach the span see every column; otherwise each sees its own.
        let mask = (self.lens.iter().any(|&l| l + 1 != span)).then(|| {
            Tensor::arange(span, (Kind::Int64, device)).view([1, span]).le_tensor(&positions).view([n, 1, 1, span])
        });
        let ids = Tensor::from_slice(tokens).to_device(device).view([n, 1]);
        let hidden =
            self.model.forward(&ids, &positions, mask.as_ref(), Some(CacheWrite { cache: &mut self.cache, span }));
        for (l, idle) in self.lens.iter_mut().zip(&self.idle) {
            *l += i64::from(!idle);
        }
        self.model.logits(&hidden.select(1, 0))
    }

    /// Marks a row as holding no sequence until the next `fill` gives it one.
    pub fn release(&mut self, row: usize) {
        (self.lens[row], self.idle[row]) = (0, true);
    }

    /// Keeps only the rows in `rows`, in that order.
    pub fn keep_rows(&mut self, rows: &[i64]) {
        self.cache.select_rows(&Tensor::from_slice(rows).to_device(self.model.device()));
        self.lens = rows.iter().map(|&r| self.lens[r as usize]).collect();
        self.idle = rows.iter().map(|&r| self.idle[r as usize]).collect();
    }
}

/// Picks the next token of every row and its log-probability (see `Generation::logprobs`),
/// sampling by inverting each row's CDF at its uniform draw in `[0, 1)`.
fn choose(logits: &Tensor, uniforms: &Tensor, cfg: &SamplingConfig) -> (Tensor, Tensor) {
    // Few passes over the [B, V] logits and no [B, V] temporaries beyond the CDF: with a large
    // vocabulary these dominate a small model's decoding step.
    let logits = logits.to_kind(Kind::Float);
    let greedy = cfg.spec.temperature <= 0.0;
    let scaled = if greedy { logits } else { &logits / cfg.spec.temperature };
    let next = if greedy {
        scaled.argmax(-1, false)
    } else {
        let filtered =
            if cfg.spec.top_p < 1.0 { top_p_filter(&scaled, cfg.spec.top_p) } else { scaled.shallow_clone() };
        let mut cdf = filtered.softmax(-1, Kind::Float);
        let _ = cdf.cumsum_(-1, Kind::Float);
        // Scaling by the total keeps rounding from ever landing past the last likely token; the
        // first index whose cumulative mass reaches the draw is the token.
        let target = uniforms.unsqueeze(-1) * cdf.narrow(1, cdf.size()[1] - 1, 1);
        target.searchsorted(&cdf, false, false, "left", None::<Tensor>).squeeze_dim(-1)
    };
    let lp = scaled.gather(-1, &next.unsqueeze(-1), false).squeeze_dim(-1) - scaled.logsumexp([-1], false);
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
        let cfg = Sampling { temperature: 1.0, ..Default::default() }.with_seed(0);
        let (next, logp) = choose(&logits, &Tensor::from_slice(&[0.05f32, 0.2, 0.69, 0.95]), &cfg);
        assert_eq!(Vec::<i64>::try_from(next).unwrap(), vec![0, 1, 1, 2]);
        let logp = Vec::<f32>::try_from(logp).unwrap();
        assert!((logp[0] - 0.1f32.ln()).abs() < 1e-6 && (logp[3] - 0.3f32.ln()).abs() < 1e-6);
    }
}
