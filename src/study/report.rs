//! The study's `report.md`: the paper-style table, the plots, and each of the paper's findings
//! checked against this study's numbers.

use super::{Plan, Row, StudyConfig, DONE_FILE, FAILED_FILE};
use crate::error::Result;
use crate::eval::{EvalSummary, Metric};
use crate::fsutil::{read_to_string, write_atomic};
use crate::plot::{plot, read_metrics, PlotRequest};
use std::collections::BTreeMap;
use std::fmt::Write as _;
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
}

impl RowResult {
    fn read(row: &Row) -> Result<Self> {
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
            let rows = read_metrics(&run.join(crate::train::checkpoint::METRICS_FILE))?;
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
        Ok(RowResult { row: row.clone(), summary, error, samples, samples_to_95, seconds })
    }

    fn maj1(&self) -> Option<&Metric> {
        self.summary.as_ref()?.maj1.as_ref()
    }

    /// pass@k at the largest k evaluated.
    fn pass_k(&self) -> Option<(usize, &Metric)> {
        self.summary.as_ref()?.pass.iter().next_back().map(|(k, m)| (*k, m))
    }
}

fn read_seconds(dir: &Path) -> Option<f64> {
    let done: super::Done = serde_json::from_str(&std::fs::read_to_string(dir.join(DONE_FILE)).ok()?).ok()?;
    Some(done.seconds)
}

fn pct(m: Option<&Metric>) -> String {
    m.map_or_else(|| "-".into(), |m| format!("{:.1} [{:.1}, {:.1}]", 100.0 * m.value, 100.0 * m.lo, 100.0 * m.hi))
}

fn count(x: Option<f64>) -> String {
    x.map_or_else(|| "-".into(), |x| format!("{x:.0}"))
}

/// The paper-style table: one row per model, with 95% intervals.
pub fn table(results: &[RowResult], k: usize) -> String {
    let mut out = format!(
        "| size | init | algorithm | reward | seed | maj@1 | maj@{k} | rerank@{k} | wmaj@{k} | pass@{k} | \
         distinct correct | samples | samples to 95% | time |\n|---|---|---|---|---|---|---|---|---|---|---:|---:|---:|---|\n"
    );
    for r in results {
        let s = r.summary.as_ref();
        let at = |map: Option<&BTreeMap<usize, Metric>>| pct(map.and_then(|m| m.get(&k)));
        let status = match (&r.error, s) {
            (Some(_), _) => "failed (below)".into(),
            (None, Some(_)) => format!("{:.0} s", r.seconds),
            (None, None) => "not run".into(),
        };
        let row = &r.row;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {status} |",
            row.size,
            row.init,
            row.algorithm,
            row.reward,
            row.seed.map_or("-".into(), |s| s.to_string()),
            pct(r.maj1()),
            at(s.map(|s| &s.maj)),
            at(s.map(|s| &s.rerank)),
            at(s.map(|s| &s.wmaj)),
            at(s.map(|s| &s.pass)),
            s.map_or("-".into(), |s| format!("{:.2}", s.mean_distinct_correct)),
            count(r.samples),
            count(r.samples_to_95),
        );
    }
    out
}

/// A finding of the paper and whether this study reproduces it.
pub struct Finding {
    pub claim: &'static str,
    pub evidence: String,
    /// Some(true) reproduced, Some(false) not, None not measured here.
    pub reproduced: Option<bool>,
}

fn overlap(a: &Metric, b: &Metric) -> bool {
    a.lo <= b.hi && b.lo <= a.hi
}

fn show(m: &Metric) -> String {
    format!("{:.1} [{:.1}, {:.1}]", 100.0 * m.value, 100.0 * m.lo, 100.0 * m.hi)
}

/// The paper's findings, checked on one group (same size and init) of finished runs.
pub fn findings(start: Option<&RowResult>, runs: &[&RowResult], sft_log: Option<&Path>) -> Vec<Finding> {
    let scored: Vec<(&RowResult, &Metric)> = runs.iter().filter_map(|r| Some((*r, r.maj1()?))).collect();
    let name = |r: &RowResult| format!("{}-{}", r.row.algorithm, r.row.reward);
    let mut out = Vec::new();

    let by_maj1 = |a: &&(&RowResult, &Metric), b: &&(&RowResult, &Metric)| a.1.value.total_cmp(&b.1.value);
    let best = scored.iter().filter(|(r, _)| r.row.algorithm != "ei").max_by(by_maj1);
    let ei = scored.iter().filter(|(r, _)| r.row.algorithm == "ei").max_by(by_maj1);
    out.push(match (ei, best) {
        (Some((_, e)), Some((b, bm))) => Finding {
            claim: "Expert Iteration does best or ties the best algorithm (maj@1).",
            evidence: format!("EI {}; best other {} {}", show(e), name(b), show(bm)),
            reproduced: Some(e.hi >= bm.value),
        },
        _ => Finding {
            claim: "Expert Iteration does best or ties the best algorithm (maj@1).",
            evidence: "needs an EI run and another".into(),
            reproduced: None,
        },
    });

    let claim = "All algorithms land close to each other (every pair of maj@1 intervals overlaps).";
    out.push(if scored.len() >= 2 {
        let apart: Vec<String> = scored
            .iter()
            .enumerate()
            .flat_map(|(i, a)| scored[i + 1..].iter().map(move |b| (a, b)))
            .filter(|(a, b)| !overlap(a.1, b.1))
            .map(|(a, b)| format!("{} vs {}", name(a.0), name(b.0)))
            .collect();
        let range = scored.iter().map(|s| s.1.value).fold((1.0f64, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
        Finding {
            claim,
            evidence: format!(
                "maj@1 from {:.1} to {:.1}{}",
                100.0 * range.0,
                100.0 * range.1,
                if apart.is_empty() { String::new() } else { format!("; apart: {}", apart.join(", ")) }
            ),
            reproduced: Some(apart.is_empty()),
        }
    } else {
        Finding { claim, evidence: "needs two finished runs".into(), reproduced: None }
    });

    let claim = "EI's sample complexity is close to PPO's (samples to 95% of the final maj@1, within 2x; only \
                 runs that ended above their start count).";
    let samples = |alg: &str| runs.iter().filter(|r| r.row.algorithm == alg).find_map(|r| r.samples_to_95);
    out.push(match (samples("ei"), samples("ppo")) {
        (Some(e), Some(p)) => Finding {
            claim,
            evidence: format!("EI {e:.0} samples, PPO {p:.0}"),
            reproduced: Some(e.max(p) <= 2.0 * e.min(p).max(1.0)),
        },
        _ => Finding { claim, evidence: "needs EI and PPO runs that ended above their start".into(), reproduced: None },
    });

    let claim = "RL improves maj@1 and pass@k together: no run that raised maj@1 above the starting model's \
                 interval lost pass@k beyond it.";
    out.push(match start.and_then(|s| Some((s.maj1()?, s.pass_k()?))) {
        Some((m0, (k, p0))) => {
            let mut lines = Vec::new();
            let mut ok = true;
            let mut raised = 0;
            for r in runs {
                if let (Some(m), Some((_, p))) = (r.maj1(), r.pass_k()) {
                    if m.value > m0.hi {
                        raised += 1;
                        ok &= p.value >= p0.lo;
                    }
                    lines.push(format!(
                        "{}: maj@1 {:+.1}, pass@{k} {:+.1}",
                        name(r),
                        100.0 * (m.value - m0.value),
                        100.0 * (p.value - p0.value)
                    ));
                }
            }
            Finding { claim, evidence: lines.join("; "), reproduced: (raised > 0).then_some(ok) }
        }
        None => Finding { claim, evidence: "needs the starting model's evaluation".into(), reproduced: None },
    });

    let claim = "RL explores little beyond the starting model: no run's pass@k clearly exceeds the starting \
                 model's (above its interval).";
    out.push(match start.and_then(|s| Some((s, s.pass_k()?))) {
        Some((s0, (k, p0))) if !runs.is_empty() => {
            let d0 = s0.summary.as_ref().map_or(0.0, |s| s.mean_distinct_correct);
            let mut lines = vec![format!("start pass@{k} {}, distinct correct {d0:.2}", show(p0))];
            let mut ok = true;
            for r in runs {
                if let (Some((_, p)), Some(s)) = (r.pass_k(), &r.summary) {
                    ok &= p.value <= p0.hi;
                    lines.push(format!("{} {} ({:.2})", name(r), show(p), s.mean_distinct_correct));
                }
            }
            Finding { claim, evidence: lines.join("; "), reproduced: Some(ok) }
        }
        _ => Finding { claim, evidence: "needs the starting model's and a run's evaluation".into(), reproduced: None },
    });

    let claim = "Dense rewards (heuristic, ORM) do not beat the sparse reward for the same algorithm.";
    let mut lines = Vec::new();
    let mut ok = true;
    for (dense, dm) in scored.iter().filter(|(r, _)| r.row.reward != "sparse") {
        let sparse = scored.iter().find(|(r, _)| r.row.algorithm == dense.row.algorithm && r.row.reward == "sparse");
        if let Some((_, sm)) = sparse {
            ok &= dm.lo <= sm.hi;
            lines.push(format!("{} {} vs sparse {}", name(dense), show(dm), show(sm)));
        }
    }
    out.push(Finding {
        claim,
        reproduced: (!lines.is_empty()).then_some(ok),
        evidence: if lines.is_empty() {
            "needs a dense and a sparse run of one algorithm".into()
        } else {
            lines.join("; ")
        },
    });

    let claim = "Longer SFT trades pass@k for maj@1 (on held-out train problems, through the SFT run).";
    out.push(match sft_log.map(sft_tradeoff) {
        Some(Some((evidence, ok))) => Finding { claim, evidence, reproduced: Some(ok) },
        _ => Finding {
            claim,
            evidence: "needs an SFT run logging pass@k (sft stage: eval.samples > 0)".into(),
            reproduced: None,
        },
    });
    out
}

/// From an SFT log with pass@k: did maj@1 keep rising after pass@k peaked and fell?
fn sft_tradeoff(log: &Path) -> Option<(String, bool)> {
    let rows = read_metrics(log).ok()?;
    let key = largest_pass_key(&rows)?;
    let points: Vec<(f64, f64, f64)> =
        rows.iter().filter_map(|r| Some((*r.get("epochs")?, *r.get("eval/maj@1")?, *r.get(&key)?))).collect();
    if points.len() < 2 {
        return None;
    }
    let peak = points.iter().max_by(|a, b| a.2.total_cmp(&b.2))?;
    let last = points.last()?;
    let k = key.trim_start_matches("eval/");
    let evidence = format!(
        "{k} peaked at {:.1} (epoch {:.2}, maj@1 {:.1}); at the end (epoch {:.2}) {k} {:.1}, maj@1 {:.1}",
        100.0 * peak.2,
        peak.0,
        100.0 * peak.1,
        last.0,
        100.0 * last.2,
        100.0 * last.1
    );
    Some((evidence, last.2 < peak.2 - 0.01 && last.1 > peak.1))
}

/// The logged `eval/pass@k` with the largest k above 1.
fn largest_pass_key(rows: &[BTreeMap<String, f64>]) -> Option<String> {
    rows.iter()
        .flat_map(|r| r.keys())
        .filter_map(|key| Some((key.strip_prefix("eval/pass@")?.parse::<usize>().ok()?, key)))
        .filter(|(k, _)| *k > 1)
        .max()
        .map(|(_, key)| key.clone())
}

/// Writes `report.md` and the plots into the study folder; returns the table.
pub fn write(cfg: &StudyConfig, plan: &Plan) -> Result<String> {
    let results = plan.rows.iter().map(RowResult::read).collect::<Result<Vec<_>>>()?;
    let table = table(&results, cfg.eval.ks.iter().copied().max().unwrap_or(1));
    let mut md = format!("# Study `{}` on {}\n\n", cfg.name, cfg.task);
    let _ = writeln!(
        md,
        "Every model is evaluated on {} test problems: maj@1 is greedy; maj@k, rerank@k and wmaj@k (by {}) and \
         pass@k (unbiased) come from {} samples at temperature {}. Intervals are 95% bootstrap intervals over problems. \
         `samples` counts the solutions a run generated; `samples to 95%` is the first in-run evaluation that \
         reached 95% of the run's final in-run maj@1 (for runs that ended above their start).\n",
        if cfg.eval.problems == 0 { "all".into() } else { cfg.eval.problems.to_string() },
        if cfg.rerank == "orm" {
            "an ORM trained on the starting model's samples; RCRL's samples, which hold control tokens the ORM \
             never saw, by mean log-prob"
        } else {
            "mean log-prob"
        },
        cfg.eval.samples,
        cfg.eval.temperature
    );
    md.push_str(&table);
    let failed: Vec<&RowResult> = results.iter().filter(|r| r.error.is_some()).collect();
    if !failed.is_empty() {
        md.push_str("\nFailed (rerunning the study retries them):\n\n");
        for r in failed {
            let row = &r.row;
            let what = format!("{}/{} {}-{}", row.size, row.init, row.algorithm, row.reward);
            let _ = writeln!(md, "- {what}: {}", r.error.as_deref().unwrap_or_default());
        }
    }

    md.push_str("\n## The paper's findings, checked\n");
    for size in &cfg.sizes {
        for init in &cfg.inits {
            let group: Vec<&RowResult> =
                results.iter().filter(|r| &r.row.size == size && &r.row.init == init).collect();
            let start = group.iter().find(|r| r.row.seed.is_none()).copied();
            let runs: Vec<&RowResult> = group.iter().filter(|r| r.row.seed.is_some()).copied().collect();
            let sft_log = plan.dir.join(size).join("sft").join(crate::train::checkpoint::METRICS_FILE);
            let _ = writeln!(md, "\n### {size}, {init} init\n");
            for f in findings(start, &runs, sft_log.exists().then_some(sft_log.as_path())) {
                let verdict = match f.reproduced {
                    Some(true) => "**reproduced**",
                    Some(false) => "**not reproduced**",
                    None => "not measured",
                };
                let _ = writeln!(md, "- {} {verdict}. {}", f.claim, f.evidence);
            }
        }
    }

    md.push_str("\n## Plots\n\n");
    let runs: Vec<PathBuf> =
        results.iter().filter_map(|r| r.row.run.clone()).filter(|r| r.join(DONE_FILE).exists()).collect();
    let sft: Vec<PathBuf> =
        cfg.sizes.iter().map(|s| plan.dir.join(s).join("sft")).filter(|d| d.join(DONE_FILE).exists()).collect();
    let pass_key = |dirs: &[PathBuf]| {
        let rows: Vec<_> = dirs
            .iter()
            .filter_map(|d| read_metrics(&d.join(crate::train::checkpoint::METRICS_FILE)).ok())
            .flatten()
            .collect();
        largest_pass_key(&rows)
    };
    let mut charts = vec![
        (
            "maj1-vs-samples",
            runs.clone(),
            vec!["eval/maj@1".to_string()],
            "samples_seen",
            "test maj@1 against samples generated",
        ),
        (
            "exploration",
            runs.clone(),
            vec!["eval/distinct_correct".to_string()],
            "samples_seen",
            "distinct correct solutions per test question through RL",
        ),
    ];
    if let Some(k) = pass_key(&runs) {
        charts.push((
            "passk-vs-samples",
            runs.clone(),
            vec![k],
            "samples_seen",
            "test pass@k against samples generated",
        ));
    }
    let mut sft_metrics = vec!["eval/maj@1".to_string()];
    sft_metrics.extend(pass_key(&sft));
    charts.push(("sft-epochs", sft, sft_metrics, "epochs", "maj@1 and pass@k through SFT (held-out train problems)"));
    let plots = plan.dir.join("plots");
    for (file, dirs, metrics, x, title) in charts {
        if dirs.is_empty() {
            let _ = writeln!(md, "- {title}: no finished runs yet");
            continue;
        }
        let request = PlotRequest {
            runs: dirs,
            metrics,
            x: x.into(),
            out: plots.join(file),
            title: Some(title.into()),
            log_y: false,
        };
        match plot(&request) {
            Ok(_) => {
                let _ = writeln!(md, "![{title}](plots/{file}.png)\n");
            }
            Err(e) => {
                let _ = writeln!(md, "- {title}: not drawn ({e})");
            }
        }
    }
    write_atomic(&plan.dir.join("report.md"), |w| w.write_all(md.as_bytes()))?;
    Ok(table)
}
