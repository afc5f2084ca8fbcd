//! The estimators behind every metric: unbiased pass@k, majority votes, the bootstrap interval,
//! AUROC and calibration error.

use crate::rng::Rng;
use crate::task::normalize_number;
use std::collections::HashMap;

/// Unbiased pass@k estimator (Chen et al. 2021) for `c` correct out of `n` samples:
/// `1 - C(n-c, k) / C(n, k)`, computed as the stable product `1 - prod_{i=n-c+1..=n} (1 - k/i)`
/// (no huge binomials); exactly 1.0 when `n - c < k`.
///
/// # Panics
/// If `k == 0`, `k > n` or `c > n`: these are caller bugs, not data errors.
pub fn pass_at_k(n: usize, c: usize, k: usize) -> f64 {
    assert!(k >= 1, "pass@k needs k >= 1");
    assert!(k <= n, "pass@{k} needs at least {k} samples, got n = {n}");
    assert!(c <= n, "c = {c} correct out of n = {n} samples");
    if n - c < k {
        return 1.0;
    }
    let miss: f64 = (n - c + 1..=n).map(|i| 1.0 - k as f64 / i as f64).product();
    1.0 - miss
}

/// Index of the majority answer's first occurrence, or None if every answer is None.
///
/// Answers are grouped by their normalised number text (they normally arrive normalised
/// already; normalising again makes "3.0" and "3" one vote). Ties go to the answer seen first,
/// so the result never depends on hash order.
pub(crate) fn majority_index(answers: &[Option<String>]) -> Option<usize> {
    weighted_majority_index(answers, &vec![1.0; answers.len()])
}

/// [`majority_index`] where each answer's vote counts `weights[i]` instead of 1: the answer
/// with the largest total weight wins (ties: the one seen first).
pub(crate) fn weighted_majority_index(answers: &[Option<String>], weights: &[f64]) -> Option<usize> {
    // key -> (total weight, first index)
    let mut groups: HashMap<String, (f64, usize)> = HashMap::new();
    for (i, a) in answers.iter().enumerate() {
        if let Some(a) = a {
            let key = normalize_number(a).unwrap_or_else(|| a.clone());
            groups.entry(key).or_insert((0.0, i)).0 += weights[i];
        }
    }
    groups.into_values().max_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1))).map(|(_, first)| first)
}

/// Majority vote over extracted answers (None ignored). Ties are broken deterministically: the
/// answer whose first occurrence is earliest wins. Returns the text of that first occurrence;
/// None if there are no answers.
pub fn majority_vote(answers: &[Option<String>]) -> Option<String> {
    majority_index(answers).and_then(|i| answers[i].clone())
}

/// 95% percentile bootstrap interval of the mean of per-problem `values`: resamples the
/// problems with replacement `resamples` times using `Rng::new(seed)`, and returns
/// `(mean, lo, hi)` with lo/hi the 2.5% / 97.5% quantiles (linear interpolation) of the
/// resampled means. With `resamples == 0` the interval collapses to the mean; with no values
/// all three are NaN.
pub fn bootstrap_ci(values: &[f64], resamples: usize, seed: u64) -> (f64, f64, f64) {
    let n = values.len();
    if n == 0 {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    if resamples == 0 {
        return (mean, mean, mean);
    }
    let mut rng = Rng::new(seed);
    let mut means: Vec<f64> = (0..resamples)
        .map(|_| (0..n).map(|_| values[rng.range(0, n as i64 - 1) as usize]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    (mean, quantile(&means, 0.025), quantile(&means, 0.975))
}

/// Linear-interpolation quantile of sorted, non-empty data.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (i, t) = (pos.floor() as usize, pos.fract());
    let j = (i + 1).min(sorted.len() - 1);
    // a + (b - a) * t is exactly a when a == b, so constant data gives a zero-width interval.
    sorted[i] + (sorted[j] - sorted[i]) * t
}

/// Area under the ROC curve of `scores` for binary `labels`: the probability that a random
/// positive scores above a random negative, ties counting one half (the Mann-Whitney U
/// statistic). NaN when either class is absent.
pub fn auroc(scores: &[f64], labels: &[bool]) -> f64 {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Mid-ranks (1-based) over groups of tied scores.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let mid_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += order[i..=j].iter().filter(|&&k| labels[k]).count() as f64 * mid_rank;
        i = j + 1;
    }
    let positives = labels.iter().filter(|&&l| l).count() as f64;
    let negatives = labels.len() as f64 - positives;
    (rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives)
}

/// Expected calibration error of probabilities against binary outcomes over `bins` equal-width
/// bins: the sample-weighted mean of |mean probability - fraction positive| per bin.
pub fn expected_calibration_error(probabilities: &[f64], labels: &[bool], bins: usize) -> f64 {
    let mut sums = vec![(0.0, 0.0, 0usize); bins];
    for (&p, &l) in probabilities.iter().zip(labels) {
        let b = ((p * bins as f64) as usize).min(bins - 1);
        sums[b] = (sums[b].0 + p, sums[b].1 + l as u8 as f64, sums[b].2 + 1);
    }
    let n = probabilities.len().max(1) as f64;
    // Per bin |sum p / c - sum l / c| * c / n = |sum p - sum l| / n.
    sums.iter().map(|&(p, l, _)| (p - l).abs() / n).sum()
}
