//! An update's minibatches: their order, and each cut into this rank's micro-batches.

use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::rollout::Episode;

/// This rank's part of minibatch `mb`, cut into micro-batches of at most `budget` tokens (rows x
/// longest prompt + response; a longer episode is a micro-batch alone), each with its share of
/// the whole minibatch's response tokens. The losses are means over the minibatch's tokens, so a
/// micro-batch's loss times its share, summed over micro-batches and ranks, is the minibatch's
/// loss: the gradients that accumulate are the one update's, whatever the split and the world.
pub fn micro_batches<'a>(mb: &'a [usize], episodes: &[Episode], budget: usize) -> Vec<(&'a [usize], f64)> {
    let mine = &mb[crate::dist::world().shard(mb.len())];
    let tokens = |rows: &[usize]| rows.iter().map(|&i| episodes[i].response_tokens.len()).sum::<usize>();
    let whole = tokens(mb).max(1) as f64;
    let (mut parts, mut start, mut longest) = (Vec::new(), 0, 0);
    for (n, &i) in mine.iter().enumerate() {
        let len = episodes[i].prompt_tokens.len() + episodes[i].response_tokens.len();
        if n > start && longest.max(len) * (n + 1 - start) > budget {
            parts.push(&mine[start..n]);
            (start, longest) = (n, 0);
        }
        longest = longest.max(len);
    }
    if start < mine.len() {
        parts.push(&mine[start..]);
    }
    parts.into_iter().map(|part| (part, tokens(part) as f64 / whole)).collect()
}

/// Refuses minibatches smaller than the world: every rank needs an episode of each.
pub fn check_minibatch_size(episodes_per_update: usize, minibatches: usize) -> Result<()> {
    let ranks = crate::dist::world().size;
    if episodes_per_update / minibatches.max(1) < ranks {
        return Err(Error::Invalid(format!(
            "{episodes_per_update} episodes per update in {minibatches} minibatches leave some of the {ranks} ranks \
             without an episode: use fewer minibatches or more prompts_per_update"
        )));
    }
    Ok(())
}

/// The generator of one update's minibatch order: a function of (seed, update) alone, so that a
/// resumed run shuffles as the uninterrupted one did.
pub fn minibatch_rng(seed: u64, update: usize) -> Rng {
    Rng::new((seed ^ 0x5eed).wrapping_mul(1_000_003).wrapping_add(update as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micro_batches_keep_the_budget_and_their_shares_add_up_to_one() {
        let episode = |prompt: usize, response: usize| Episode {
            problem_id: "p".into(),
            sample_index: 0,
            prompt_tokens: vec![1; prompt],
            response_tokens: vec![2; response],
            text: String::new(),
            logprobs: vec![0.0; response],
            finish: crate::sample::Finish::Stop,
            extracted_answer: None,
            reference_answer: "1".into(),
            correct: false,
        };
        // Lengths 10, 20, 30 (too long alone), 10, 10; budget 25 tokens (rows x longest).
        let episodes = [episode(5, 5), episode(5, 15), episode(5, 25), episode(5, 5), episode(5, 5)];
        let mb = [0, 1, 2, 3, 4];
        let parts = micro_batches(&mb, &episodes, 25);
        let rows: Vec<&[usize]> = parts.iter().map(|p| p.0).collect();
        assert_eq!(rows, [&[0][..], &[1], &[2], &[3, 4]]);
        // Response tokens 5, 15, 25, 5 + 5 of 55.
        let shares: Vec<f64> = parts.iter().map(|p| (p.1 * 55.0 * 1e9).round() / 1e9).collect();
        assert_eq!(shares, [5.0, 15.0, 25.0, 10.0]);
        assert_eq!(micro_batches(&mb, &episodes, usize::MAX).len(), 1);
    }
}
