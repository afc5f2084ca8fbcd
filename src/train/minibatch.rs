//! An update's minibatches: their order, and each cut into this rank's micro-batches.

use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::rollout::Episode;

/// This rank's part of minibatch `mb`, shortest episode first, cut into micro-batches of at most
/// `budget` tokens (rows x longest prompt + response; a longer episode is a micro-batch alone),
/// each with its share of the whole minibatch's response tokens. Sorting keeps padding out of the
/// forward and backward passes. The losses are means over the minibatch's tokens, so a
/// micro-batch's loss times its share, summed over micro-batches and ranks, is the minibatch's
/// loss: the gradients that accumulate are the one update's, whatever the split and the world.
pub fn micro_batches(mb: &[usize], episodes: &[Episode], budget: usize) -> Vec<(Vec<usize>, f64)> {
    let len = |i: usize| episodes[i].sequence_len();
    let mine = mb[crate::dist::world().shard(mb.len())].to_vec();
    let tokens = |rows: &[usize]| rows.iter().map(|&i| episodes[i].response_tokens.len()).sum::<usize>();
    let whole = tokens(mb).max(1) as f64;
    by_length(mine, len, budget)
        .into_iter()
        .map(|part| {
            let share = tokens(&part) as f64 / whole;
            (part, share)
        })
        .collect()
}

/// `rows` shortest first (by `len`), cut into parts of at most `budget` tokens (rows x longest;
/// a longer row is a part alone).
pub fn by_length(mut rows: Vec<usize>, len: impl Fn(usize) -> usize, budget: usize) -> Vec<Vec<usize>> {
    rows.sort_by_key(|&i| len(i));
    let mut parts: Vec<Vec<usize>> = Vec::new();
    for i in rows {
        // Sorted, so this row is the longest of the part it joins.
        match parts.last_mut() {
            Some(part) if len(i) * (part.len() + 1) <= budget => part.push(i),
            _ => parts.push(vec![i]),
        }
    }
    parts
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
        // Lengths 10, 20, 30 (too long alone), 10, 10; budget 25 tokens (rows x longest). Sorted:
        // two of the 10s fit in 25, a third would make 30; 20 and 30 go alone.
        let episodes = [episode(5, 5), episode(5, 15), episode(5, 25), episode(5, 5), episode(5, 5)];
        let mb = [0, 1, 2, 3, 4];
        let parts = micro_batches(&mb, &episodes, 25);
        let rows: Vec<&[usize]> = parts.iter().map(|p| p.0.as_slice()).collect();
        assert_eq!(rows, [&[0, 3][..], &[4], &[1], &[2]]);
        // Response tokens 5 + 5, 5, 15, 25 of 55.
        let shares: Vec<f64> = parts.iter().map(|p| (p.1 * 55.0 * 1e9).round() / 1e9).collect();
        assert_eq!(shares, [10.0, 5.0, 15.0, 25.0]);
        assert_eq!(micro_batches(&mb, &episodes, usize::MAX).len(), 1);
    }
}
