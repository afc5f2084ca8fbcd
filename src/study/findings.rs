//! The paper's findings, each decided from this study's numbers: paired differences with their
//! intervals, checked against the claim.

use super::{Row, DONE_FILE, FAILED_FILE};
use crate::error::Result;
use crate::eval::{EvalSummary, Metric, ProblemRecord};
use crate::fsutil::read_to_string;
use crate::plot::read_metrics;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A row with what its folders hold.
pub struct RowResult {
    pub row: Row,
    pub summary: Option<EvalSummary>,
    /// The error of the run or of its evaluation.
    pub error: Option<String>,
    /// Samples the run generated, and how many it took to first reach 95% of its final
    /// in-run test maj@1.
    pub samples: Option<f64>,
    pub samples_to_95: Option<f64>,
    pub seconds: f64,
    /// Per-problem results of the evaluation, for paired differences.
    pub records: Option<Vec<ProblemRecord>>,
}

impl RowResult {
    pub fn read(row: &Row) -> Result<Self> {
        let summary_file = row.eval.join("summary.json");
        let summary =
            if row.eval.join(DONE_FILE).exists() {
                Some(serde_json::from_str(&read_to_string(&summary_file)?).map_err(|e| {
                    crate::error::Error::file(&summary_file, format!("malformed evaluation summary: {e}"))
                })?)
            } else {
                None
            };
        let dirs: Vec<&Path> = row.run.iter().map(PathBuf::as_path).chain([row.eval.as_path()]).collect();
        let error =
            dirs.iter().find_map(|d| std::fs::read_to_string(d.join(FAILED_FILE)).ok()).map(|e| e.trim().into());
        let seconds = dirs.iter().filter_map(|d| read_seconds(d)).sum();
        let (mut samples, mut samples_to_95) = (None, None);
        if let Some(run) = row.run.as_ref().filter(|r| r.join(DONE_FILE).exists()) {
            let rows = read_metrics(&run.join(crate::run::METRICS_FILE))?;
            samples = rows.iter().filter_map(|r| r.get("samples_seen").copied()).reduce(f64::max);
            let evals: Vec<(f64, f64)> =
                rows.iter().filter_map(|r| Some((*r.get("samples_seen")?, *r.get("eval/maj@1")?))).collect();
            // Only a run that ended above where it started has a sample count to reach its level.
            if let (Some(&(_, first)), Some(&(_, last))) = (evals.first(), evals.last()) {
                if last > first {
                    samples_to_95 = evals.iter().find(|(_, m)| *m >= 0.95 * last).map(|(s, _)| *s);
                }
            }
        }
        let records = match summary {
            Some(_) => Some(crate::eval::read_records(&row.eval.join("records.jsonl"))?),
            None => None,
        };
        Ok(RowResult { row: row.clone(), summary, error, samples, samples_to_95, seconds, records })
    }

    pub fn maj1(&self) -> Option<&Metric> {
        self.summary.as_ref()?.maj1.as_ref()
    }

    /// pass@k at the largest k evaluated.
    pub fn pass_k(&self) -> Option<(usize, &Metric)> {
        self.summary.as_ref()?.pass.iter().next_back().map(|(k, m)| (*k, m))
    }
}

/// The wall time a finished job's `done.json` records.
pub(super) fn read_seconds(dir: &Path) -> Option<f64> {
    let done: super::Done = serde_json::from_str(&std::fs::read_to_string(dir.join(DONE_FILE)).ok()?).ok()?;
    Some(done.seconds)
}

pub fn pct(m: Option<&Metric>) -> String {
    m.map_or_else(|| "-".into(), |m| format!("{:.1} [{:.1}, {:.1}]", 100.0 * m.value, 100.0 * m.lo, 100.0 * m.hi))
}

pub fn count(x: Option<f64>) -> String {
    x.map_or_else(|| "-".into(), |x| format!("{x:.0}"))
}

/// How far apart two models' rates may be and still count as close, or as a tie: 3 points.
pub const MARGIN: f64 = 0.03;

/// Bootstrap resamples of the paired differences the findings rest on.
const RESAMPLES: usize = 1000;

/// What this study's numbers say of one of the paper's findings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Reproduced,
    Contradicted,
    /// A deciding interval includes the value that would decide it.
    Inconclusive,
    NotMeasured,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Reproduced => "**reproduced**",
            Verdict::Contradicted => "**contradicted**",
            Verdict::Inconclusive => "inconclusive",
            Verdict::NotMeasured => "not measured",
        }
    }
}

/// A finding of the paper, the rule that decides it, and this study's verdict.
pub struct Finding {
    pub claim: &'static str,
    pub evidence: String,
    pub verdict: Verdict,
}

fn show(m: &Metric) -> String {
    format!("{:.1} [{:.1}, {:.1}]", 100.0 * m.value, 100.0 * m.lo, 100.0 * m.hi)
}

pub fn show_diff(m: &Metric) -> String {
    format!("{:+.1} [{:+.1}, {:+.1}]", 100.0 * m.value, 100.0 * m.lo, 100.0 * m.hi)
}

/// The paired difference `a - b` of `metric` ("maj@1", "pass@8", ...) over the problems both
/// evaluated, with its 95% bootstrap interval.
pub fn paired(a: &RowResult, b: &RowResult, metric: &str) -> Option<Metric> {
    let diffs = crate::eval::paired_differences(a.records.as_ref()?, b.records.as_ref()?, RESAMPLES, 0).ok()?;
    diffs.get(metric).cloned()
}

/// Whether two runs consumed the same samples, within 10%.
pub fn budgets_match(a: &RowResult, b: &RowResult) -> bool {
    matches!((a.samples, b.samples), (Some(x), Some(y)) if x.max(y) <= 1.1 * x.min(y))
}

/// Reproduced when every interval passes, contradicted when one clearly fails, inconclusive
/// otherwise (and when there is nothing to judge).
fn verdict_of(checks: &[(bool, bool)]) -> Verdict {
    if checks.is_empty() {
        Verdict::Inconclusive
    } else if checks.iter().any(|&(_, fails)| fails) {
        Verdict::Contradicted
    } else if checks.iter().all(|&(passes, _)| passes) {
        Verdict::Reproduced
    } else {
        Verdict::Inconclusive
    }
}

/// (passes, fails) of "the two are close": the paired interval lies within ±MARGIN, or outside it.
fn close(d: &Metric) -> (bool, bool) {
    (d.lo >= -MARGIN && d.hi <= MARGIN, d.lo > MARGIN || d.hi < -MARGIN)
}

fn name(r: &RowResult) -> String {
    format!("{}-{}", r.row.name, r.row.reward)
}

/// The paper's findings, checked on one group (same size and init) of finished runs. Each is
/// decided from paired differences on the same test problems, never from overlapping marginal
/// intervals, and the rule is written in its sentence.
pub fn findings(start: Option<&RowResult>, runs: &[&RowResult], sft_log: Option<&Path>) -> Vec<Finding> {
    let scored: Vec<&RowResult> = runs.iter().copied().filter(|r| r.maj1().is_some() && r.records.is_some()).collect();
    let by_maj1 = |a: &&&RowResult, b: &&&RowResult| a.maj1().unwrap().value.total_cmp(&b.maj1().unwrap().value);
    let mut out = Vec::new();

    let claim_ei = "Expert Iteration does best or ties the best other algorithm: EI minus the best other's greedy \
                    maj@1, paired, has its 95% interval above -3 points (contradicted: below -3).";
    let ei = scored.iter().filter(|r| r.row.algorithm == "ei").max_by(by_maj1);
    let best = scored.iter().filter(|r| r.row.algorithm != "ei").max_by(by_maj1);
    out.push(match (ei, best) {
        (Some(e), Some(b)) => match paired(e, b, "maj@1") {
            Some(d) => Finding {
                claim: claim_ei,
                evidence: format!(
                    "EI {} vs {} {}: {}",
                    show(e.maj1().unwrap()),
                    name(b),
                    show(b.maj1().unwrap()),
                    show_diff(&d)
                ),
                verdict: verdict_of(&[(d.lo >= -MARGIN, d.hi < -MARGIN)]),
            },
            None => Finding {
                claim: claim_ei,
                evidence: "EI and the other were not evaluated on the same problems".into(),
                verdict: Verdict::NotMeasured,
            },
        },
        _ => Finding { claim: claim_ei, evidence: "needs an EI run and another".into(), verdict: Verdict::NotMeasured },
    });

    let claim = "All algorithms land close: every pair's paired greedy maj@1 difference has its 95% interval \
                 within ±3 points (contradicted: one pair's interval lies outside).";
    out.push(if scored.len() >= 2 {
        let (mut checks, mut lines) = (Vec::new(), Vec::new());
        for (i, a) in scored.iter().enumerate() {
            for b in &scored[i + 1..] {
                if let Some(d) = paired(a, b, "maj@1") {
                    checks.push(close(&d));
                    lines.push(format!("{} - {} {}", name(a), name(b), show_diff(&d)));
                }
            }
        }
        Finding { claim, evidence: lines.join("; "), verdict: verdict_of(&checks) }
    } else {
        Finding { claim, evidence: "needs two finished runs".into(), verdict: Verdict::NotMeasured }
    });

    let claim = "EI's sample complexity is close to PPO's: at matched samples (within 10%), EI minus PPO's greedy \
                 maj@1, paired, has its 95% interval within ±3 points (contradicted: outside).";
    let first = |alg: &str| scored.iter().find(|r| r.row.algorithm == alg && r.row.reward == "sparse");
    out.push(match (first("ei"), first("ppo")) {
        (Some(e), Some(p)) if !budgets_match(e, p) => Finding {
            claim,
            evidence: format!("budgets differ: EI {} samples, PPO {}", count(e.samples), count(p.samples)),
            verdict: Verdict::NotMeasured,
        },
        (Some(e), Some(p)) => match paired(e, p, "maj@1") {
            Some(d) => Finding {
                claim,
                evidence: format!("EI {} and PPO {} samples: {}", count(e.samples), count(p.samples), show_diff(&d)),
                verdict: verdict_of(&[close(&d)]),
            },
            None => {
                Finding { claim, evidence: "not evaluated on the same problems".into(), verdict: Verdict::NotMeasured }
            }
        },
        _ => Finding {
            claim,
            evidence: "needs EI and PPO runs with the sparse reward".into(),
            verdict: Verdict::NotMeasured,
        },
    });

    let pass_k = start.and_then(|s| s.pass_k()).map(|(k, _)| format!("pass@{k}"));
    let vs_start = |r: &RowResult, metric: &str| paired(r, start?, metric);

    let claim = "RL improves maj@1 and pass@k together: every run whose greedy maj@1 rose (paired vs the start, \
                 interval above 0) also raised pass@k (interval above 0; contradicted: a run's pass@k fell, \
                 interval below 0).";
    out.push(match &pass_k {
        Some(pk) => {
            let (mut checks, mut lines) = (Vec::new(), Vec::new());
            for r in &scored {
                if let (Some(dm), Some(dp)) = (vs_start(r, "maj@1"), vs_start(r, pk)) {
                    if dm.lo > 0.0 {
                        checks.push((dp.lo > 0.0, dp.hi < 0.0));
                    }
                    lines.push(format!("{}: maj@1 {}, {pk} {}", name(r), show_diff(&dm), show_diff(&dp)));
                }
            }
            if checks.is_empty() {
                lines.push("no run raised maj@1".into());
            }
            Finding { claim, evidence: lines.join("; "), verdict: verdict_of(&checks) }
        }
        None => Finding {
            claim,
            evidence: "needs the starting model's sampled evaluation".into(),
            verdict: Verdict::NotMeasured,
        },
    });

    let claim = "RL explores little beyond the starting model: no run raises pass@k by 3 points or more (paired vs \
                 the start, every interval below +3; contradicted: one above +3).";
    out.push(match &pass_k {
        Some(pk) if !scored.is_empty() => {
            let (mut checks, mut lines) = (Vec::new(), Vec::new());
            for r in &scored {
                if let Some(d) = vs_start(r, pk) {
                    checks.push((d.hi < MARGIN, d.lo > MARGIN));
                    let distinct = r.summary.as_ref().map_or(0.0, |s| s.mean_distinct_correct);
                    lines.push(format!("{} {pk} {} (distinct correct {distinct:.2})", name(r), show_diff(&d)));
                }
            }
            Finding { claim, evidence: lines.join("; "), verdict: verdict_of(&checks) }
        }
        _ => Finding {
            claim,
            evidence: "needs the starting model's and a run's sampled evaluation".into(),
            verdict: Verdict::NotMeasured,
        },
    });

    let claim = "Dense rewards do not beat the sparse reward for the same algorithm: dense minus sparse greedy \
                 maj@1, paired, has every 95% interval below +3 points (contradicted: one above +3).";
    let (mut checks, mut lines) = (Vec::new(), Vec::new());
    for dense in scored.iter().filter(|r| r.row.reward != "sparse") {
        let sparse = scored.iter().find(|r| r.row.name == dense.row.name && r.row.reward == "sparse");
        if let Some(d) = sparse.and_then(|s| paired(dense, s, "maj@1")) {
            // One margin on both sides, so that no interval both reproduces and contradicts.
            checks.push((d.hi < MARGIN, d.lo > MARGIN));
            lines.push(format!("{} - sparse {}", name(dense), show_diff(&d)));
        }
    }
    out.push(if lines.is_empty() {
        Finding {
            claim,
            evidence: "needs a dense and a sparse run of one algorithm".into(),
            verdict: Verdict::NotMeasured,
        }
    } else {
        Finding { claim, evidence: lines.join("; "), verdict: verdict_of(&checks) }
    });

    let claim = "Longer SFT trades pass@k for maj@1 (in-run evaluations on held-out train problems, not paired: \
                 reproduced when the last pass@k's 95% interval lies below the peak pass@k's and the last maj@1's \
                 above the maj@1 at that peak; otherwise inconclusive).";
    out.push(match sft_log.map(sft_tradeoff) {
        Some(Some((evidence, ok))) => {
            Finding { claim, evidence, verdict: if ok { Verdict::Reproduced } else { Verdict::Inconclusive } }
        }
        _ => Finding {
            claim,
            evidence: "needs an SFT run logging pass@k (sft stage: eval.samples > 0)".into(),
            verdict: Verdict::NotMeasured,
        },
    });
    out
}

/// From an SFT log with pass@k and its intervals: did pass@k fall from its peak, and maj@1 rise
/// past its value there, each by more than their 95% intervals allow? Separate intervals that do
/// not overlap are a conservative test (a paired one would be tighter, but the log has no
/// per-problem records); without intervals nothing is decided.
fn sft_tradeoff(log: &Path) -> Option<(String, bool)> {
    let rows = read_metrics(log).ok()?;
    let key = largest_pass_key(&rows)?;
    let m = "eval/maj@1";
    let points: Vec<&BTreeMap<String, f64>> =
        rows.iter().filter(|r| r.contains_key("epochs") && r.contains_key(m) && r.contains_key(&key)).collect();
    if points.len() < 2 {
        return None;
    }
    let peak = *points.iter().max_by(|a, b| a[&key].total_cmp(&b[&key]))?;
    let last = *points.last()?;
    let bound = |r: &BTreeMap<String, f64>, metric: &str, end: &str| r.get(&format!("{metric}_{end}")).copied();
    let fell = matches!((bound(last, &key, "hi"), bound(peak, &key, "lo")), (Some(hi), Some(lo)) if hi < lo);
    let rose = matches!((bound(last, m, "lo"), bound(peak, m, "hi")), (Some(lo), Some(hi)) if lo > hi);
    let k = key.trim_start_matches("eval/");
    let show = |r: &BTreeMap<String, f64>, metric: &str| {
        let (lo, hi) = (bound(r, metric, "lo"), bound(r, metric, "hi"));
        match (lo, hi) {
            (Some(lo), Some(hi)) => format!("{:.1} [{:.1}, {:.1}]", 100.0 * r[metric], 100.0 * lo, 100.0 * hi),
            _ => format!("{:.1}", 100.0 * r[metric]),
        }
    };
    let evidence = format!(
        "{k} peaked at {} (epoch {:.2}, maj@1 {}); at the end (epoch {:.2}) {k} {}, maj@1 {}",
        show(peak, &key),
        peak["epochs"],
        show(peak, m),
        last["epochs"],
        show(last, &key),
        show(last, m)
    );
    Some((evidence, fell && rose))
}

/// The logged `eval/pass@k` with the largest k above 1.
pub fn largest_pass_key(rows: &[BTreeMap<String, f64>]) -> Option<String> {
    rows.iter()
        .flat_map(|r| r.keys())
        .filter_map(|key| Some((key.strip_prefix("eval/pass@")?.parse::<usize>().ok()?, key)))
        .filter(|(k, _)| *k > 1)
        .max()
        .map(|(_, key)| key.clone())
}
