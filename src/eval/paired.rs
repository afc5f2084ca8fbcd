//! Paired differences between two evaluations of the same problems.

use super::{bootstrap_ci, Metric, ProblemRecord};
use crate::error::{Error, Result};
use std::collections::{BTreeMap, BTreeSet};

/// Paired differences (this run minus a baseline) on the same problems, each with a 95%
/// bootstrap interval over problems: maj@1 (greedy), and maj@k, rerank@k, wmaj@k (k > 1) and pass@k for
/// every k both runs have. Pairing removes the spread of problem difficulty, so it detects a
/// change that the two separate intervals would hide. Errors when the runs did not evaluate the same problems.
pub fn paired_differences(
    run: &[ProblemRecord],
    baseline: &[ProblemRecord],
    resamples: usize,
    seed: u64,
) -> Result<BTreeMap<String, Metric>> {
    let base: BTreeMap<&str, &ProblemRecord> = baseline.iter().map(|r| (r.problem_id.as_str(), r)).collect();
    if run.len() != base.len() || run.iter().any(|r| !base.contains_key(r.problem_id.as_str())) {
        return Err(Error::Invalid(format!(
            "the baseline evaluated other problems ({} vs {}): compare runs on the same split and problems",
            baseline.len(),
            run.len()
        )));
    }
    let pairs: Vec<(&ProblemRecord, &ProblemRecord)> = run.iter().map(|r| (r, base[r.problem_id.as_str()])).collect();
    let mut out = BTreeMap::new();
    let mut add = |name: String, diffs: Vec<f64>| {
        let (value, lo, hi) = bootstrap_ci(&diffs, resamples, seed);
        out.insert(name, Metric { value, lo, hi });
    };
    let greedy = |r: &ProblemRecord| r.greedy.as_ref().map(|g| g.correct as u8 as f64);
    if pairs.iter().all(|(a, b)| greedy(a).is_some() && greedy(b).is_some()) {
        add("maj@1".into(), pairs.iter().map(|(a, b)| greedy(a).unwrap() - greedy(b).unwrap()).collect());
    }
    for k in run.iter().flat_map(|r| r.pass.keys().copied()).collect::<BTreeSet<_>>() {
        for metric in ["maj", "rerank", "wmaj", "pass"] {
            if k == 1 && metric != "pass" {
                continue; // sampled maj@1, rerank@1, wmaj@1 are pass@1's first sample; maj@1 is greedy
            }
            // Over the problems both runs sampled (a greedy pass may cover more).
            let diffs: Vec<f64> = pairs
                .iter()
                .filter_map(|(a, b)| Some(record_value(metric, a, k)? - record_value(metric, b, k)?))
                .collect();
            if !diffs.is_empty() {
                add(format!("{metric}@{k}"), diffs);
            }
        }
    }
    Ok(out)
}

/// One problem's value of `metric` ("maj", "rerank", "wmaj" or "pass") at k, if recorded.
fn record_value(metric: &str, r: &ProblemRecord, k: usize) -> Option<f64> {
    match metric {
        // The majority answer is right when the first of the first k samples that gave it is.
        "maj" => {
            let answer = r.majority.get(&k)?.as_ref();
            let first = r.samples.iter().take(k).find(|s| answer.is_some() && s.extracted_answer.as_ref() == answer);
            Some(first.is_some_and(|s| s.correct) as u8 as f64)
        }
        "rerank" => r.rerank.get(&k).map(|&ok| ok as u8 as f64),
        "wmaj" => r.wmaj.get(&k).map(|&ok| ok as u8 as f64),
        _ => r.pass.get(&k).copied(),
    }
}
