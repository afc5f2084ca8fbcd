//! Evaluation metrics of the paper: maj@1 (greedy accuracy), maj@k (majority vote), unbiased
//! pass@k, rerank@k (best-of-k under a scorer such as the ORM), wmaj@k (majority vote weighted by
//! that scorer) and the number of distinct correct solutions, each with a 95% bootstrap interval
//! over problems.
//!
//! Everything works on [`Episode`]s, so saved samples (see [`read_episodes`]) can be re-scored
//! without sampling again.

mod paired;
pub mod policy;
pub mod run;
mod stats;

pub use paired::paired_differences;
pub use stats::{auroc, bootstrap_ci, expected_calibration_error, majority_vote, pass_at_k};
use stats::{majority_index, weighted_majority_index};

use crate::error::{Error, Result};
use crate::fsutil;
use crate::rollout::Episode;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;

/// A mean over problems with its 95% bootstrap interval (all fractions in [0, 1] for rates).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Metric {
    pub value: f64,
    pub lo: f64,
    pub hi: f64,
}

impl Metric {
    fn bootstrap(values: &[f64], opts: &EvalOptions) -> Self {
        let (value, lo, hi) = bootstrap_ci(values, opts.bootstrap_resamples, opts.seed);
        Metric { value, lo, hi }
    }
}

/// One sample of one problem, as written to records.jsonl.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SampleRecord {
    pub text: String,
    pub extracted_answer: Option<String>,
    pub correct: bool,
    /// The scorer's score, when scores were given (a non-finite score is written as null).
    pub score: Option<f64>,
    /// Number of response tokens.
    pub tokens: usize,
}

/// Per-problem record written to records.jsonl.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct ProblemRecord {
    pub problem_id: String,
    pub reference_answer: String,
    /// The greedy sample (maj@1).
    pub greedy: Option<SampleRecord>,
    /// The n temperature samples, in `sample_index` order.
    pub samples: Vec<SampleRecord>,
    /// How many of `samples` are correct.
    pub correct_samples: usize,
    /// Distinct correct texts among `samples` (whitespace-normalised).
    pub distinct_correct: usize,
    /// k -> majority answer of the first k samples.
    pub majority: BTreeMap<usize, Option<String>>,
    /// k -> unbiased pass@k from all n samples.
    pub pass: BTreeMap<usize, f64>,
    /// k -> is the top-scored of the first k samples correct (empty without scores).
    pub rerank: BTreeMap<usize, bool>,
    /// k -> is the score-weighted majority answer of the first k samples correct (empty without
    /// scores).
    #[serde(default)]
    pub wmaj: BTreeMap<usize, bool>,
}

/// Aggregate metrics over all problems.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct EvalSummary {
    pub problems: usize,
    /// K: temperature samples per problem (0 for a greedy-only evaluation).
    #[serde(alias = "samples_per_problem")]
    pub samples_per_prompt: usize,
    /// Problems with samples: the metrics drawn from samples (maj@k, pass@k, rerank@k, wmaj@k,
    /// distinct correct) are over these; greedy maj@1 is over all `problems`.
    #[serde(default)]
    pub sampled_problems: usize,
    /// Sampling temperature of `samples`, as passed in [`EvalOptions`].
    pub temperature: Option<f64>,
    /// Greedy accuracy (None without greedy episodes).
    pub maj1: Option<Metric>,
    pub maj: BTreeMap<usize, Metric>,
    pub pass: BTreeMap<usize, Metric>,
    /// Empty without scores.
    pub rerank: BTreeMap<usize, Metric>,
    /// Empty without scores.
    #[serde(default)]
    pub wmaj: BTreeMap<usize, Metric>,
    /// What the scorer adds to a plain vote on the same samples, paired over problems:
    /// rerank@k - maj@k for each k > 1 (empty without scores).
    #[serde(default)]
    pub rerank_minus_maj: BTreeMap<usize, Metric>,
    /// wmaj@k - maj@k, likewise.
    #[serde(default)]
    pub wmaj_minus_maj: BTreeMap<usize, Metric>,
    pub mean_distinct_correct: f64,
    /// Mean response length of the temperature samples (of the greedy ones if there are none).
    pub mean_response_tokens: f64,
    /// A verifier's means (`[reward]` of `reasonrl eval`): `greedy/reward/mean`,
    /// `samples/reward/NAME`; empty with the built-in check.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub verifier: BTreeMap<String, f64>,
}

/// What to compute.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalOptions {
    /// The k of maj@k, pass@k and rerank@k; each must be in 1..=n.
    pub ks: Vec<usize>,
    /// Bootstrap resamples for the 95% intervals.
    pub bootstrap_resamples: usize,
    /// Bootstrap seed (the same resamples are used for every metric).
    pub seed: u64,
    /// Sampling temperature, only recorded in the summary.
    pub temperature: Option<f64>,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions { ks: vec![1], bootstrap_resamples: 1000, seed: 0, temperature: None }
    }
}

/// Texts compared after whitespace normalisation, so line-wrapping differences don't count as
/// distinct solutions.
fn normalize_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn sample_record(e: &Episode, score: Option<f64>) -> SampleRecord {
    SampleRecord {
        text: e.text.clone(),
        extracted_answer: e.extracted_answer.clone(),
        correct: e.correct,
        score,
        tokens: e.response_tokens.len(),
    }
}

/// One problem's episodes, gathered before computing.
struct Group<'a> {
    id: &'a str,
    reference: &'a str,
    greedy: Option<&'a Episode>,
    /// (episode, score), sorted by sample_index later.
    samples: Vec<(&'a Episode, Option<f64>)>,
}

/// Groups episodes by problem (order of first appearance in `greedy`, then `samples`) and
/// computes every metric.
///
/// - maj@k and rerank@k use the FIRST k samples by `sample_index`: deterministic, and equal to
///   the paper's maj@96 when n = k = 96. pass@k uses all n samples (unbiased estimator).
/// - A majority answer counts as correct when the episode that first gave it is `correct`, so
///   eval agrees with whatever checker produced the episodes.
/// - rerank@k picks the highest score among the first k samples (ties: lowest `sample_index`).
/// - wmaj@k is maj@k with each sample's vote weighted by its score (Uesato et al. 2022's
///   verifier-weighted voting): a weak verifier still breaks ties and near-ties between answers,
///   where picking its single best sample would throw the votes away.
/// - `scores`: one per sample episode, in the order of `samples` (e.g. from a [`crate::rollout::Scorer`]);
///   rerank is computed only when given.
/// - distinct_correct: distinct correct sample texts after whitespace normalisation.
///
/// Errors ([`Error::Invalid`]): a k of 0 or larger than n; problems with different numbers of
/// samples; a repeated `sample_index` or greedy episode for one problem; a problem without a
/// greedy episode when others have one; episodes of one problem disagreeing on the reference
/// answer; `scores` of the wrong length, negative or NaN; no episodes at all.
pub fn evaluate(
    greedy: &[Episode],
    samples: &[Episode],
    scores: Option<&[f64]>,
    opts: &EvalOptions,
) -> Result<(Vec<ProblemRecord>, EvalSummary)> {
    if let Some(s) = scores {
        if s.len() != samples.len() {
            return Err(Error::Invalid(format!("{} scores for {} sample episodes", s.len(), samples.len())));
        }
        if let Some(i) = s.iter().position(|x| x.is_nan() || *x < 0.0) {
            return Err(Error::Invalid(format!("score {i} is {}: scores must be confidences >= 0", s[i])));
        }
    }

    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut groups: Vec<Group> = Vec::new();
    for (i, e) in greedy.iter().chain(samples).enumerate() {
        let g = match index.get(e.problem_id.as_str()) {
            Some(&g) => g,
            None => {
                index.insert(&e.problem_id, groups.len());
                groups.push(Group { id: &e.problem_id, reference: &e.reference_answer, greedy: None, samples: vec![] });
                groups.len() - 1
            }
        };
        let group = &mut groups[g];
        if group.reference != e.reference_answer {
            return Err(Error::Invalid(format!(
                "problem {:?}: episodes disagree on the reference answer ({:?} vs {:?})",
                e.problem_id, group.reference, e.reference_answer
            )));
        }
        if i < greedy.len() {
            if group.greedy.is_some() {
                return Err(Error::Invalid(format!("problem {:?} has more than one greedy episode", e.problem_id)));
            }
            group.greedy = Some(e);
        } else {
            let j = i - greedy.len();
            group.samples.push((e, scores.map(|s| s[j])));
        }
    }
    if groups.is_empty() {
        return Err(Error::Invalid("no episodes to evaluate".into()));
    }

    // Sampled problems all have n samples; with greedy episodes, the others may have none (a
    // greedy pass over more problems than were sampled).
    let first = groups.iter().max_by_key(|g| g.samples.len()).expect("not empty");
    let (n, first_id) = (first.samples.len(), first.id);
    for g in &mut groups {
        if g.samples.len() != n && !(g.samples.is_empty() && g.greedy.is_some()) {
            return Err(Error::Invalid(format!(
                "problem {:?} has {} samples but problem {:?} has {n}; every sampled problem needs the same number",
                g.id,
                g.samples.len(),
                first_id
            )));
        }
        if !greedy.is_empty() && g.greedy.is_none() {
            return Err(Error::Invalid(format!("problem {:?} has no greedy episode", g.id)));
        }
        g.samples.sort_by_key(|(e, _)| e.sample_index);
        if let Some(w) = g.samples.windows(2).find(|w| w[0].0.sample_index == w[1].0.sample_index) {
            return Err(Error::Invalid(format!("problem {:?} has sample_index {} twice", g.id, w[0].0.sample_index)));
        }
    }
    for &k in &opts.ks {
        if k == 0 || k > n {
            return Err(Error::Invalid(format!("k = {k} is not in 1..=n, with n = {n} samples per problem")));
        }
    }
    let ks: BTreeSet<usize> = opts.ks.iter().copied().collect();

    // Per-problem values that the summary bootstraps, keyed like the summary maps.
    let mut maj1 = Vec::new();
    let mut maj: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    let mut pass: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    let mut rerank: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    let mut wmaj: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    let mut distinct = Vec::new();
    let mut records = Vec::with_capacity(groups.len());

    let mut sampled_problems = 0;
    for g in &groups {
        if let Some(e) = g.greedy {
            maj1.push(e.correct as u8 as f64);
        }
        if g.samples.is_empty() {
            // Greedy only: no sample metrics for this problem.
            records.push(ProblemRecord {
                problem_id: g.id.to_string(),
                reference_answer: g.reference.to_string(),
                greedy: g.greedy.map(|e| sample_record(e, None)),
                ..ProblemRecord::default()
            });
            continue;
        }
        sampled_problems += 1;
        let correct_samples = g.samples.iter().filter(|(e, _)| e.correct).count();
        let distinct_correct = g
            .samples
            .iter()
            .filter(|(e, _)| e.correct)
            .map(|(e, _)| normalize_whitespace(&e.text))
            .collect::<HashSet<_>>()
            .len();
        let answers: Vec<Option<String>> = g.samples.iter().map(|(e, _)| e.extracted_answer.clone()).collect();

        let mut rec_majority = BTreeMap::new();
        let mut rec_pass = BTreeMap::new();
        let mut rec_rerank = BTreeMap::new();
        let mut rec_wmaj = BTreeMap::new();
        for &k in &ks {
            let top = majority_index(&answers[..k]);
            rec_majority.insert(k, top.and_then(|i| answers[i].clone()));
            maj.entry(k).or_default().push(top.is_some_and(|i| g.samples[i].0.correct) as u8 as f64);

            let p = pass_at_k(n, correct_samples, k);
            rec_pass.insert(k, p);
            pass.entry(k).or_default().push(p);

            if scores.is_some() {
                let weights: Vec<f64> = g.samples[..k].iter().map(|(_, s)| s.unwrap_or(0.0)).collect();
                // Highest score wins; ties go to the earlier sample (hence the reversed index order).
                let best = (0..k).max_by(|&i, &j| weights[i].total_cmp(&weights[j]).then(j.cmp(&i))).expect("k >= 1");
                let ok = g.samples[best].0.correct;
                rec_rerank.insert(k, ok);
                rerank.entry(k).or_default().push(ok as u8 as f64);
                let ok = weighted_majority_index(&answers[..k], &weights).is_some_and(|i| g.samples[i].0.correct);
                rec_wmaj.insert(k, ok);
                wmaj.entry(k).or_default().push(ok as u8 as f64);
            }
        }
        distinct.push(distinct_correct as f64);

        records.push(ProblemRecord {
            problem_id: g.id.to_string(),
            reference_answer: g.reference.to_string(),
            greedy: g.greedy.map(|e| sample_record(e, None)),
            samples: g.samples.iter().map(|(e, s)| sample_record(e, *s)).collect(),
            correct_samples,
            distinct_correct,
            majority: rec_majority,
            pass: rec_pass,
            rerank: rec_rerank,
            wmaj: rec_wmaj,
        });
    }

    let lengths: Vec<f64> =
        if samples.is_empty() { greedy } else { samples }.iter().map(|e| e.response_tokens.len() as f64).collect();
    let boot = |m: BTreeMap<usize, Vec<f64>>| -> BTreeMap<usize, Metric> {
        m.into_iter().map(|(k, v)| (k, Metric::bootstrap(&v, opts))).collect()
    };
    // Per problem, the scorer's pick minus the vote's, on the same samples (k = 1 is one sample).
    let minus_maj = |m: &BTreeMap<usize, Vec<f64>>| -> BTreeMap<usize, Metric> {
        let diffs = m.iter().filter(|(k, _)| **k > 1).map(|(k, v)| (*k, v.iter().zip(&maj[k]).map(|(a, b)| a - b)));
        diffs.map(|(k, d)| (k, Metric::bootstrap(&d.collect::<Vec<_>>(), opts))).collect()
    };
    let (rerank_minus_maj, wmaj_minus_maj) = (minus_maj(&rerank), minus_maj(&wmaj));
    let summary = EvalSummary {
        problems: groups.len(),
        samples_per_prompt: n,
        sampled_problems,
        temperature: opts.temperature,
        maj1: (!maj1.is_empty()).then(|| Metric::bootstrap(&maj1, opts)),
        maj: boot(maj),
        pass: boot(pass),
        rerank_minus_maj,
        wmaj_minus_maj,
        rerank: boot(rerank),
        wmaj: boot(wmaj),
        mean_distinct_correct: mean_or_zero(&distinct),
        mean_response_tokens: mean_or_zero(&lengths),
        verifier: BTreeMap::new(),
    };
    Ok((records, summary))
}

fn mean_or_zero(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// A markdown table of the summary: one row per metric (maj@1, maj@k, pass@k, rerank@k, wmaj@k) with
/// its value and 95% interval as percentages, e.g. `| pass@16 | 63.2% | [58.1, 68.0] |`, then a
/// line with the number of problems, samples per prompt (K), temperature and the means.
pub fn summary_markdown(summary: &EvalSummary, title: &str) -> String {
    let mut out = String::new();
    let row = |out: &mut String, name: String, m: &Metric| {
        let _ = writeln!(out, "| {name} | {:.1}% | [{:.1}, {:.1}] |", 100.0 * m.value, 100.0 * m.lo, 100.0 * m.hi);
    };
    let _ = writeln!(out, "## {title}\n");
    out.push_str("| metric | value | 95% CI |\n|---|---:|---|\n");
    if let Some(m) = &summary.maj1 {
        row(&mut out, "maj@1 (greedy)".into(), m);
    }
    let metrics =
        [("maj", &summary.maj), ("pass", &summary.pass), ("rerank", &summary.rerank), ("wmaj", &summary.wmaj)];
    for (prefix, map) in metrics {
        for (k, m) in map {
            row(&mut out, format!("{prefix}@{k}"), m);
        }
    }
    if !summary.rerank_minus_maj.is_empty() {
        out.push_str("\nThe scorer against a plain vote on the same samples (paired):\n\n");
        out.push_str("| difference | points | 95% CI |\n|---|---:|---|\n");
        for (k, m) in &summary.rerank_minus_maj {
            for (name, m) in [("rerank", Some(m)), ("wmaj", summary.wmaj_minus_maj.get(k))] {
                if let Some(m) = m {
                    let (value, lo, hi) = (100.0 * m.value, 100.0 * m.lo, 100.0 * m.hi);
                    let _ = writeln!(out, "| {name}@{k} - maj@{k} | {value:+.1} | [{lo:+.1}, {hi:+.1}] |");
                }
            }
        }
    }
    if !summary.verifier.is_empty() {
        out.push_str("\nThe verifier (its verdicts are the ones above):\n\n| mean | value |\n|---|---:|\n");
        for (name, value) in &summary.verifier {
            let _ = writeln!(out, "| {name} | {value:.4} |");
        }
    }
    let temperature = summary.temperature.map_or_else(|| "-".to_string(), |t| format!("{t}"));
    let _ = writeln!(
        out,
        "\nProblems: {} greedy, {} sampled; samples per prompt (K): {}, temperature: {temperature}, mean distinct \
         correct: {:.2}, mean response tokens: {:.1}",
        summary.problems,
        summary.sampled_problems,
        summary.samples_per_prompt,
        summary.mean_distinct_correct,
        summary.mean_response_tokens
    );
    out
}

/// Writes records.jsonl, summary.json and summary.md into `dir` (created if missing), each
/// atomically.
pub fn write_report(dir: &Path, records: &[ProblemRecord], summary: &EvalSummary, title: &str) -> Result<()> {
    fsutil::create_output_dir(dir)?;
    fsutil::write_jsonl(&dir.join("records.jsonl"), records)?;
    fsutil::write_atomic(&dir.join("summary.json"), |w| {
        serde_json::to_writer_pretty(&mut *w, summary)?;
        w.write_all(b"\n")
    })?;
    let md = summary_markdown(summary, title);
    fsutil::write_atomic(&dir.join("summary.md"), |w| w.write_all(md.as_bytes()))
}

/// Reads an episodes JSONL file (as written by `reasonrl sample --out`: one JSON [`Episode`]
/// per line; blank lines skipped), so saved samples can be evaluated without resampling. A
/// malformed line is an error naming the file and line.
pub fn read_episodes(path: &Path) -> Result<Vec<Episode>> {
    let text = fsutil::read_to_string(path)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let e = serde_json::from_str(line).map_err(|e| Error::line(path, i + 1, format!("bad episode: {e}")))?;
        out.push(e);
    }
    Ok(out)
}

/// Reads a records.jsonl written by [`write_report`].
pub fn read_records(path: &Path) -> Result<Vec<ProblemRecord>> {
    let text = fsutil::read_to_string(path)?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| Error::line(path, i + 1, format!("bad record: {e}"))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::{MeanLogprobScorer, Scorer};
    use crate::sample::Finish;
    use proptest::prelude::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    /// C(n, k) as f64 from exact u128 arithmetic (fine for n <= 20).
    fn binom(n: usize, k: usize) -> f64 {
        if k > n {
            return 0.0;
        }
        let mut r: u128 = 1;
        for i in 0..k {
            r = r * (n - i) as u128 / (i + 1) as u128;
        }
        r as f64
    }

    #[test]
    fn pass_at_k_hand_values() {
        assert_eq!(pass_at_k(5, 0, 1), 0.0);
        assert_eq!(pass_at_k(5, 0, 5), 0.0);
        assert_eq!(pass_at_k(5, 5, 1), 1.0);
        assert_eq!(pass_at_k(4, 1, 4), 1.0);
        assert!(close(pass_at_k(4, 1, 2), 0.5));
        assert!(close(pass_at_k(10, 3, 1), 0.3));
        assert!(close(pass_at_k(5, 2, 3), 0.9));
    }

    #[test]
    fn pass_at_k_matches_binomials() {
        for n in 1..=20 {
            for c in 0..=n {
                for k in 1..=n {
                    let direct = 1.0 - binom(n - c, k) / binom(n, k);
                    let got = pass_at_k(n, c, k);
                    assert!((got - direct).abs() < 1e-9, "n={n} c={c} k={k}: {got} vs {direct}");
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "pass@6 needs at least 6 samples")]
    fn pass_at_k_rejects_k_above_n() {
        pass_at_k(5, 1, 6);
    }

    #[test]
    #[should_panic(expected = "k >= 1")]
    fn pass_at_k_rejects_k_zero() {
        pass_at_k(5, 1, 0);
    }

    proptest! {
        #[test]
        fn pass_at_k_is_monotone(n in 1usize..200, c_frac in 0.0f64..=1.0, k_frac in 0.0f64..=1.0) {
            let c = ((n as f64 * c_frac) as usize).min(n);
            let k = ((n as f64 * k_frac) as usize).clamp(1, n);
            let p = pass_at_k(n, c, k);
            prop_assert!((0.0..=1.0).contains(&p));
            if k < n {
                prop_assert!(pass_at_k(n, c, k + 1) >= p - 1e-12);
            }
            if c < n {
                prop_assert!(pass_at_k(n, c + 1, k) >= p - 1e-12);
            }
        }
    }

    fn answers(xs: &[Option<&str>]) -> Vec<Option<String>> {
        xs.iter().map(|x| x.map(String::from)).collect()
    }

    #[test]
    fn majority_vote_cases() {
        let s = |x| Some(x);
        assert_eq!(majority_vote(&answers(&[s("1"), s("2"), s("2"), None, s("2"), s("1")])), Some("2".into()));
        assert_eq!(majority_vote(&answers(&[s("3"), s("5"), s("5"), s("3")])), Some("3".into()));
        assert_eq!(majority_vote(&answers(&[s("5"), s("3"), s("3"), s("5")])), Some("5".into()));
        // None never votes, even when it is the most common.
        assert_eq!(majority_vote(&answers(&[None, None, s("4")])), Some("4".into()));
        assert_eq!(majority_vote(&answers(&[None, None])), None);
        assert_eq!(majority_vote(&[]), None);
        // "3.0" and "3" are one answer.
        assert_eq!(majority_vote(&answers(&[s("7"), s("3"), s("3.0")])), Some("3".into()));
        // Weighted: two votes of 0.5 beat one of 0.9 (rerank would take the 0.9); one of 0.9
        // beats two of 0.4; equal totals go to the answer seen first.
        let a = answers(&[s("7"), s("3"), s("3")]);
        assert_eq!(weighted_majority_index(&a, &[0.9, 0.5, 0.5]), Some(1));
        assert_eq!(weighted_majority_index(&a, &[0.9, 0.4, 0.4]), Some(0));
        assert_eq!(weighted_majority_index(&a, &[1.0, 0.5, 0.5]), Some(0));
        assert_eq!(weighted_majority_index(&answers(&[None, s("2")]), &[5.0, 0.0]), Some(1));
    }

    #[test]
    fn bootstrap_constant_values() {
        assert_eq!(bootstrap_ci(&[0.5; 10], 200, 1), (0.5, 0.5, 0.5));
        assert_eq!(bootstrap_ci(&[0.0, 1.0], 0, 1), (0.5, 0.5, 0.5));
    }

    #[test]
    fn bootstrap_interval_contains_mean_and_is_deterministic() {
        let values: Vec<f64> = (0..40).map(|i| (i % 3 == 0) as u8 as f64).collect(); // 14 of 40
        let (mean, lo, hi) = bootstrap_ci(&values, 1000, 7);
        assert!(close(mean, 14.0 / 40.0));
        assert!(lo < mean && mean < hi, "{lo} {mean} {hi}");
        assert!(lo >= 0.0 && hi <= 1.0);
        assert_eq!(bootstrap_ci(&values, 1000, 7), (mean, lo, hi));
        assert_ne!(bootstrap_ci(&values, 1000, 8), (mean, lo, hi));
    }

    #[test]
    fn bootstrap_wider_for_fewer_problems() {
        let few: Vec<f64> = (0..10).map(|i| (i % 2) as f64).collect();
        let many: Vec<f64> = (0..400).map(|i| (i % 2) as f64).collect();
        let (_, lo_f, hi_f) = bootstrap_ci(&few, 1000, 3);
        let (_, lo_m, hi_m) = bootstrap_ci(&many, 1000, 3);
        // Standard errors are 0.158 and 0.025: the widths differ by far more than noise.
        assert!(hi_f - lo_f > 3.0 * (hi_m - lo_m), "{} vs {}", hi_f - lo_f, hi_m - lo_m);
    }

    fn ep(pid: &str, reference: &str, idx: usize, text: &str, answer: Option<&str>, logprobs: &[f32]) -> Episode {
        Episode {
            problem_id: pid.into(),
            sample_index: idx,
            prompt_tokens: vec![1, 2],
            response_tokens: vec![7; logprobs.len()],
            text: text.into(),
            logprobs: logprobs.to_vec(),
            finish: Finish::Stop,
            extracted_answer: answer.map(String::from),
            correct: answer == Some(reference),
            reference_answer: reference.into(),
        }
    }

    /// Three problems, greedy + 4 samples each; samples deliberately out of order.
    ///
    /// Scores below are MeanLogprobScorer's, exp(mean log-prob).
    /// A (ref 10): answers 10, 7, 10, 10; two texts equal up to whitespace; s0 (right) and s1
    /// (wrong) tie on the top score -> s0; weighted, 10 and 7 tie at k = 2 -> 10 (seen first).
    /// B (ref 5):  answers 6, 5, 5, 6 (tie -> "6", wrong); s1 and s2 tie on score -> s1 (right);
    /// weighted, 5 outweighs 6 (e^-0.25 vs e^-0.5 at k = 2, 2e^-0.25 vs e^-0.5 + e^-1 at k = 4).
    /// C (ref 1):  answers -, -, -, 2; nothing correct.
    fn fixture() -> (Vec<Episode>, Vec<Episode>) {
        let greedy = vec![
            ep("A", "10", 0, "g", Some("10"), &[-0.5; 3]),
            ep("B", "5", 0, "g", Some("6"), &[-0.5; 3]),
            ep("C", "1", 0, "g", Some("1"), &[-0.5; 3]),
        ];
        let samples = vec![
            ep("B", "5", 3, "w2", Some("6"), &[-1.0]),
            ep("A", "10", 3, "other", Some("10"), &[-3.0]),
            ep("A", "10", 1, "wrong", Some("7"), &[-0.125]),
            ep("B", "5", 0, "w1", Some("6"), &[-0.5]),
            ep("B", "5", 1, "x", Some("5"), &[-0.25]),
            ep("B", "5", 2, "y", Some("5"), &[-0.5, 0.0]),
            ep("A", "10", 0, "a  b\n", Some("10"), &[-0.25, 0.0]),
            ep("A", "10", 2, "a b", Some("10"), &[-2.0]),
            ep("C", "1", 0, "?", None, &[-1.0]),
            ep("C", "1", 1, "?", None, &[-1.0]),
            ep("C", "1", 2, "?", None, &[-1.0]),
            ep("C", "1", 3, "2", Some("2"), &[-1.0]),
        ];
        (greedy, samples)
    }

    #[test]
    fn greedy_may_cover_more_problems_than_were_sampled() {
        let (mut greedy, samples) = fixture();
        greedy.push(ep("D", "3", 0, "g", Some("3"), &[-0.5; 2]));
        greedy.push(ep("E", "4", 0, "g", Some("9"), &[-0.5; 2]));
        let (records, s) = evaluate(&greedy, &samples, None, &opts(&[4])).unwrap();
        assert_eq!((s.problems, s.sampled_problems, s.samples_per_prompt), (5, 3, 4));
        assert!(close(s.maj1.as_ref().unwrap().value, 3.0 / 5.0), "greedy over all five");
        assert!(close(s.pass[&4].value, 2.0 / 3.0), "pass@4 over the three sampled");
        assert!(close(s.mean_distinct_correct, 4.0 / 3.0));
        assert!(records[3].samples.is_empty() && records[3].pass.is_empty());

        // Paired against a baseline: maj@1 over all five problems, pass@4 over the sampled three.
        let mut base = records.clone();
        base[4].greedy.as_mut().unwrap().correct = true; // E: the baseline was right
        base[0].pass.insert(4, 0.0); // A: the baseline never solved it
        let d = paired_differences(&records, &base, 200, 1).unwrap();
        assert!(close(d["maj@1"].value, -1.0 / 5.0));
        assert!(close(d["pass@4"].value, 1.0 / 3.0));

        // A sampled problem with fewer samples than the others is still an error.
        let short: Vec<Episode> =
            samples.into_iter().filter(|e| !(e.problem_id == "C" && e.sample_index == 3)).collect();
        assert!(evaluate(&greedy, &short, None, &opts(&[4])).is_err());
    }

    fn opts(ks: &[usize]) -> EvalOptions {
        EvalOptions { ks: ks.to_vec(), bootstrap_resamples: 200, seed: 5, temperature: Some(0.7) }
    }

    #[test]
    fn evaluate_hand_made_set() {
        let (greedy, samples) = fixture();
        let scores = MeanLogprobScorer.score(&samples).unwrap();
        let (records, s) = evaluate(&greedy, &samples, Some(&scores), &opts(&[4, 2])).unwrap();

        let ids: Vec<&str> = records.iter().map(|r| r.problem_id.as_str()).collect();
        assert_eq!(ids, ["A", "B", "C"]);
        let a = &records[0];
        let idx_texts: Vec<&str> = a.samples.iter().map(|r| r.text.as_str()).collect();
        assert_eq!(idx_texts, ["a  b\n", "wrong", "a b", "other"]);
        assert_eq!(a.samples[1].score, Some((-0.125f64).exp()));
        assert_eq!((a.correct_samples, a.distinct_correct), (3, 2));
        assert_eq!(a.majority[&4], Some("10".into()));
        assert_eq!(a.majority[&2], Some("10".into())); // 10 vs 7: earliest wins
        assert_eq!(a.pass[&2], 1.0);
        assert_eq!((a.rerank[&2], a.rerank[&4]), (true, true));
        assert_eq!((a.wmaj[&2], a.wmaj[&4]), (true, true));
        assert!(a.greedy.as_ref().unwrap().correct);

        let b = &records[1];
        assert_eq!((b.correct_samples, b.distinct_correct), (2, 2));
        assert_eq!(b.majority[&4], Some("6".into()));
        assert!(close(b.pass[&2], 5.0 / 6.0));
        assert_eq!((b.rerank[&2], b.rerank[&4]), (true, true));
        assert_eq!((b.wmaj[&2], b.wmaj[&4]), (true, true), "the weights overturn the 2-2 vote");

        let c = &records[2];
        assert_eq!((c.correct_samples, c.distinct_correct), (0, 0));
        assert_eq!(c.majority[&2], None);
        assert_eq!(c.majority[&4], Some("2".into()));
        assert_eq!(c.pass[&2], 0.0);

        assert_eq!((s.problems, s.samples_per_prompt, s.temperature), (3, 4, Some(0.7)));
        assert!(close(s.maj1.as_ref().unwrap().value, 2.0 / 3.0));
        assert!(close(s.maj[&4].value, 1.0 / 3.0));
        assert!(close(s.maj[&2].value, 1.0 / 3.0));
        assert!(close(s.pass[&2].value, 11.0 / 18.0));
        assert_eq!(s.pass[&4].value, 2.0 / 3.0);
        assert!(close(s.rerank[&4].value, 2.0 / 3.0));
        assert!(close(s.rerank[&2].value, 2.0 / 3.0));
        assert!(close(s.wmaj[&4].value, 2.0 / 3.0) && close(s.wmaj[&2].value, 2.0 / 3.0));
        // Both scorer picks are right on B, where the vote is wrong.
        for gains in [&s.rerank_minus_maj, &s.wmaj_minus_maj] {
            assert_eq!(gains.keys().copied().collect::<Vec<_>>(), [2, 4]);
            assert!(gains.values().all(|m| close(m.value, 1.0 / 3.0)), "{gains:?}");
        }
        assert!(close(s.mean_distinct_correct, 4.0 / 3.0));
        assert!(close(s.mean_response_tokens, 14.0 / 12.0));
        let m = &s.pass[&2];
        assert!(m.lo <= m.value && m.value <= m.hi);
    }

    #[test]
    fn evaluate_without_greedy_or_scores() {
        let (_, samples) = fixture();
        let (records, s) = evaluate(&[], &samples, None, &opts(&[4])).unwrap();
        // First appearance in `samples`: B, then A, then C.
        let ids: Vec<&str> = records.iter().map(|r| r.problem_id.as_str()).collect();
        assert_eq!(ids, ["B", "A", "C"]);
        assert!(s.maj1.is_none() && s.rerank.is_empty() && s.rerank_minus_maj.is_empty());
        assert!(records.iter().all(|r| r.rerank.is_empty() && r.wmaj.is_empty()));
        assert!(records.iter().all(|r| r.greedy.is_none() && r.samples.iter().all(|x| x.score.is_none())));
        assert!(close(s.maj[&4].value, 1.0 / 3.0));
    }

    #[test]
    fn evaluate_greedy_only() {
        let (greedy, _) = fixture();
        let (_, s) = evaluate(&greedy, &[], None, &opts(&[])).unwrap();
        assert_eq!(s.samples_per_prompt, 0);
        assert!(close(s.maj1.unwrap().value, 2.0 / 3.0));
        assert_eq!(s.mean_response_tokens, 3.0);
        let err = evaluate(&greedy, &[], None, &opts(&[1])).unwrap_err().to_string();
        assert!(err.contains("k = 1") && err.contains("n = 0"), "{err}");
    }

    #[test]
    fn evaluate_errors() {
        let (greedy, samples) = fixture();
        let err = evaluate(&greedy, &samples, None, &opts(&[2, 5])).unwrap_err();
        assert!(matches!(err, Error::Invalid(_)));
        let msg = err.to_string();
        assert!(msg.contains("k = 5") && msg.contains("n = 4"), "{msg}");
        assert!(evaluate(&greedy, &samples, None, &opts(&[0])).is_err());
        // Wrong number of scores, NaN or negative scores (they could not be votes).
        assert!(evaluate(&greedy, &samples, Some(&[0.0; 3]), &opts(&[2])).is_err());
        for bad in [f64::NAN, -0.5] {
            let mut scores = vec![0.0; samples.len()];
            scores[4] = bad;
            let msg = evaluate(&greedy, &samples, Some(&scores), &opts(&[2])).unwrap_err().to_string();
            assert!(msg.contains("score 4"), "{msg}");
        }
        // Uneven sample counts.
        let msg = evaluate(&greedy, &samples[1..], None, &opts(&[2])).unwrap_err().to_string();
        assert!(msg.contains("\"B\" has 3 samples"), "{msg}");
        // A repeated sample index.
        let mut dup = samples.clone();
        dup[1].sample_index = 1;
        assert!(evaluate(&greedy, &dup, None, &opts(&[2])).unwrap_err().to_string().contains("sample_index 1 twice"));
        // A problem without its greedy episode.
        assert!(evaluate(&greedy[..2], &samples, None, &opts(&[2])).unwrap_err().to_string().contains("\"C\""));
        assert!(evaluate(&[], &[], None, &opts(&[])).is_err());
    }

    #[test]
    fn markdown_rows() {
        let m = |value, lo, hi| Metric { value, lo, hi };
        let summary = EvalSummary {
            problems: 500,
            samples_per_prompt: 16,
            sampled_problems: 500,
            temperature: Some(0.7),
            maj1: Some(m(0.41, 0.38, 0.44)),
            maj: BTreeMap::from([(16, m(0.5, 0.45, 0.55))]),
            pass: BTreeMap::from([(16, m(0.632, 0.581, 0.68))]),
            rerank: BTreeMap::new(),
            wmaj: BTreeMap::from([(16, m(0.52, 0.47, 0.57))]),
            rerank_minus_maj: BTreeMap::from([(16, m(-0.05, -0.09, -0.01))]),
            wmaj_minus_maj: BTreeMap::from([(16, m(0.02, -0.01, 0.05))]),
            mean_distinct_correct: 3.214,
            mean_response_tokens: 120.0,
            verifier: BTreeMap::new(),
        };
        let md = summary_markdown(&summary, "SFT");
        assert!(md.starts_with("## SFT\n"));
        assert!(md.contains("| maj@1 (greedy) | 41.0% | [38.0, 44.0] |\n| maj@16 | 50.0% | [45.0, 55.0] |\n"), "{md}");
        assert!(md.contains("| pass@16 | 63.2% | [58.1, 68.0] |"), "{md}");
        assert!(!md.contains("| rerank@16 |"), "no rerank@k scores, no row");
        assert!(md.contains("| wmaj@16 | 52.0% | [47.0, 57.0] |"), "{md}");
        assert!(
            md.contains("| rerank@16 - maj@16 | -5.0 | [-9.0, -1.0] |\n| wmaj@16 - maj@16 | +2.0 | [-1.0, +5.0] |"),
            "{md}"
        );
        assert!(md.contains("Problems: 500 greedy, 500 sampled; samples per prompt (K): 16, temperature: 0.7, mean distinct correct: 3.21"), "{md}");
    }

    #[test]
    fn report_files_round_trip() {
        let (greedy, samples) = fixture();
        let (records, summary) = evaluate(&greedy, &samples, None, &opts(&[2])).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("eval/run1");
        write_report(&out, &records, &summary, "test").unwrap();
        let json = std::fs::read_to_string(out.join("summary.json")).unwrap();
        assert_eq!(serde_json::from_str::<EvalSummary>(&json).unwrap(), summary);
        let lines = std::fs::read_to_string(out.join("records.jsonl")).unwrap();
        let back: Vec<ProblemRecord> = lines.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(back, records);
        assert_eq!(std::fs::read_to_string(out.join("summary.md")).unwrap(), summary_markdown(&summary, "test"));
    }

    #[test]
    fn read_episodes_round_trip_and_errors() {
        let (_, samples) = fixture();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("episodes.jsonl");
        fsutil::write_jsonl(&path, &samples).unwrap();
        assert_eq!(read_episodes(&path).unwrap(), samples);

        let good = serde_json::to_string(&samples[0]).unwrap();
        std::fs::write(&path, format!("{good}\n\n{{\"problem_id\": 3}}\n")).unwrap();
        let err = read_episodes(&path).unwrap_err();
        assert!(matches!(err, Error::Line { line: 3, .. }), "{err}");
        assert!(err.to_string().contains("episodes.jsonl:3:"), "{err}");

        let missing = dir.path().join("nope.jsonl");
        assert!(read_episodes(&missing).unwrap_err().to_string().contains("nope.jsonl"));
    }

    #[test]
    fn auroc_and_calibration_by_hand() {
        // Positives 0.9, 0.4; negatives 0.4, 0.1: pairs (0.9>0.4, 0.9>0.1, 0.4=0.4, 0.4>0.1) = 3.5/4.
        assert!(close(auroc(&[0.9, 0.4, 0.4, 0.1], &[true, true, false, false]), 0.875));
        assert!(close(auroc(&[0.1, 0.2, 0.8, 0.9], &[false, false, true, true]), 1.0));
        assert!(close(auroc(&[0.1, 0.2, 0.8, 0.9], &[true, true, false, false]), 0.0));
        assert!(auroc(&[0.5, 0.6], &[true, true]).is_nan(), "one class only");
        // Bin [0.2, 0.3): p 0.25, 0.25, outcomes 1, 0 -> |0.25 - 0.5| = 0.25 on half the data;
        // bin [0.9, 1.0]: p 0.95, 1.0, outcomes 1, 1 -> |0.975 - 1| = 0.025 on the other half.
        let ece = expected_calibration_error(&[0.25, 0.25, 0.95, 1.0], &[true, false, true, true], 10);
        assert!(close(ece, 0.5 * 0.25 + 0.5 * 0.025), "{ece}");
    }

    #[test]
    fn paired_differences_by_hand() {
        let (greedy, samples) = fixture();
        let (base, _) = evaluate(&greedy, &samples, None, &opts(&[2])).unwrap();
        // The same samples, but problem B's greedy answer is now right.
        let mut better = greedy.clone();
        better[1] = ep("B", "5", 0, "g", Some("5"), &[-0.5; 3]);
        let (run, _) = evaluate(&better, &samples, None, &opts(&[2])).unwrap();
        let d = paired_differences(&run, &base, 200, 1).unwrap();
        assert!(close(d["maj@1"].value, 1.0 / 3.0));
        assert!(close(d["pass@2"].value, 0.0) && close(d["pass@2"].lo, 0.0));
        assert!(!d.contains_key("rerank@2"), "no scores, no rerank");
        // B's first sample turns right: its first two samples both say 5 -> maj@2 right, pass@2
        // up by 1/C(4,2) = 1/6 over three problems; rerank@2 picks sample 1 (higher mean
        // log-prob), right either way.
        let mut samples_b = samples.clone();
        samples_b[3] = ep("B", "5", 0, "w1", Some("5"), &[-0.5]);
        let with_scores = |s: &[Episode]| Some(MeanLogprobScorer.score(s).unwrap());
        let (base, _) = evaluate(&greedy, &samples, with_scores(&samples).as_deref(), &opts(&[2])).unwrap();
        let (run, _) = evaluate(&greedy, &samples_b, with_scores(&samples_b).as_deref(), &opts(&[2])).unwrap();
        let d = paired_differences(&run, &base, 200, 1).unwrap();
        assert!(close(d["maj@2"].value, 1.0 / 3.0), "{:?}", d["maj@2"]);
        assert!(close(d["rerank@2"].value, 0.0) && close(d["wmaj@2"].value, 0.0));
        assert!(close(d["pass@2"].value, 1.0 / 18.0), "{:?}", d["pass@2"]);
        assert!(paired_differences(&run[..2], &base, 200, 1).is_err(), "other problems");
    }
}
