//! The study's `report.md`: the paper-style table, the plots, and each of the paper's findings
//! checked against this study's numbers.

use super::findings::{count, findings, largest_pass_key, paired, pct, read_seconds, show_diff, RowResult};
use super::{Plan, Row, StudyConfig, DONE_FILE};
use crate::error::Result;
use crate::eval::Metric;
use crate::fsutil::write_atomic;
use crate::plot::{plot, read_metrics, PlotRequest};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

/// The paper-style table: one row per model, with 95% intervals, and each run's paired
/// difference from its starting model (same size and init) on the same problems. The sampled
/// columns (maj@k to distinct correct) only when the models were sampled: `k` is Some.
pub fn table(results: &[RowResult], k: Option<usize>) -> String {
    let mut head =
        ["size", "init", "algorithm", "reward", "seed", "maj@1", "Δ maj@1 vs start"].map(String::from).to_vec();
    if let Some(k) = k {
        let names = ["maj", "rerank", "wmaj", "pass"].map(|m| format!("{m}@{k}"));
        head.extend(names.into_iter().chain([format!("Δ pass@{k} vs start"), "distinct correct".into()]));
    }
    head.extend(["samples", "samples to 95%", "time"].map(String::from));
    let rule: Vec<&str> = head
        .iter()
        .map(|h| if ["distinct correct", "samples", "samples to 95%"].contains(&h.as_str()) { "---:" } else { "---" })
        .collect();
    let mut out = format!("| {} |\n|{}|\n", head.join(" | "), rule.join("|"));
    for r in results {
        let (row, s) = (&r.row, r.summary.as_ref());
        let delta = |metric: &str| delta_vs_start(results, r, metric);
        let mut cells = vec![
            row.size.clone(),
            row.init.to_string(),
            row.name.clone(),
            row.reward.clone(),
            row.seed.map_or("-".into(), |s| s.to_string()),
            pct(r.maj1()),
            delta("maj@1"),
        ];
        if let Some(k) = k {
            let at = |map: Option<&BTreeMap<usize, Metric>>| pct(map.and_then(|m| m.get(&k)));
            cells.extend([
                at(s.map(|s| &s.maj)),
                at(s.map(|s| &s.rerank)),
                at(s.map(|s| &s.wmaj)),
                at(s.map(|s| &s.pass)),
                delta(&format!("pass@{k}")),
                s.map_or("-".into(), |s| format!("{:.2}", s.mean_distinct_correct)),
            ]);
        }
        let status = match (&r.error, s) {
            (Some(_), _) => "failed (below)".into(),
            (None, Some(_)) => format!("{:.0} s", r.seconds),
            (None, None) => "not run".into(),
        };
        cells.extend([count(r.samples), count(r.samples_to_95), status]);
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    out
}

/// A run's paired difference in `metric` from its starting model (same size and init), or "-".
fn delta_vs_start(results: &[RowResult], r: &RowResult, metric: &str) -> String {
    let row = &r.row;
    let start = results.iter().find(|s| s.row.seed.is_none() && s.row.size == row.size && s.row.init == row.init);
    match start.filter(|_| row.seed.is_some()).and_then(|s| paired(r, s, metric)) {
        Some(d) => show_diff(&d),
        None => "-".into(),
    }
}

/// Greedy maj@1 on a transfer task, each run paired against its start.
pub fn transfer_table(results: &[RowResult]) -> String {
    let mut out =
        "| size | init | algorithm | reward | seed | maj@1 | Δ maj@1 vs start |\n|---|---|---|---|---|---|---|\n"
            .to_string();
    for r in results {
        let row = &r.row;
        let maj1 = if r.error.is_some() { "failed".into() } else { pct(r.maj1()) };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {maj1} | {} |",
            row.size,
            row.init,
            row.name,
            row.reward,
            row.seed.map_or("-".into(), |s| s.to_string()),
            delta_vs_start(results, r, "maj@1"),
        );
    }
    out
}

/// Writes `report.md` and the plots into the study folder; returns the table.
pub fn write(cfg: &StudyConfig, plan: &Plan) -> Result<String> {
    let results = plan.rows.iter().map(RowResult::read).collect::<Result<Vec<_>>>()?;
    let sampled = cfg.eval.sampling.samples_per_prompt > 0;
    let table = table(&results, sampled.then(|| cfg.eval.ks().iter().copied().max().unwrap_or(1)));
    let mut md = format!("# Study `{}` on {}\n\n", cfg.name, cfg.task);
    let problems = if cfg.eval.problems == 0 { "all".into() } else { cfg.eval.problems.to_string() };
    let _ = write!(md, "Every model is evaluated on {problems} test problems: maj@1 is greedy on all of them");
    if sampled {
        let _ = write!(
            md,
            "; maj@k, rerank@k and wmaj@k (by {}) and pass@k (unbiased) come from {} samples at temperature {} on {}",
            if cfg.rerank == super::Rerank::Orm {
                "an ORM trained on the starting model's samples; RCRL's samples, which hold control tokens the ORM \
                 never saw, by mean log-prob"
            } else {
                "mean log-prob"
            },
            cfg.eval.sampling.samples_per_prompt,
            cfg.eval.sampling.temperature,
            match cfg.eval.sampled_problems {
                0 => "every problem".to_string(),
                n => format!("the first {n}"),
            }
        );
    }
    let _ = writeln!(
        md,
        ". Intervals are 95% bootstrap intervals over problems; a Δ column is the paired difference from the \
         starting model on the same problems. `samples` counts the solutions a run generated; `samples to 95%` is \
         the first in-run evaluation that reached 95% of the run's final in-run maj@1 (for runs that ended above \
         their start).\n"
    );
    md.push_str(&table);
    let seconds: f64 = plan.jobs.iter().filter_map(|j| read_seconds(&j.dir)).sum();
    let _ = writeln!(
        md,
        "\nThe finished jobs took {seconds:.0} s ({:.1} h) in all, each timed by itself.",
        seconds / 3600.0
    );
    let failed: Vec<&RowResult> = results.iter().filter(|r| r.error.is_some()).collect();
    if !failed.is_empty() {
        md.push_str("\nFailed (rerunning the study retries them):\n\n");
        for r in failed {
            let row = &r.row;
            let what = format!("{}/{} {}-{}", row.size, row.init, row.name, row.reward);
            let _ = writeln!(md, "- {what}: {}", r.error.as_deref().unwrap_or_default());
        }
    }

    for (i, task) in cfg.transfer.iter().enumerate() {
        let rows =
            plan.rows.iter().map(|r| Row { run: None, eval: r.transfer[i].clone(), transfer: Vec::new(), ..r.clone() });
        let results = rows.map(|r| RowResult::read(&r)).collect::<Result<Vec<_>>>()?;
        let _ =
            writeln!(md, "\n## Transfer to {task}\n\nGreedy maj@1 on its whole test split, with the same prompts.\n");
        md.push_str(&transfer_table(&results));
    }

    md.push_str("\n## The paper's findings, checked\n");
    for size in &plan.sizes {
        for init in cfg.inits.iter().map(super::name_of) {
            let group: Vec<&RowResult> = results.iter().filter(|r| &r.row.size == size && r.row.init == init).collect();
            let start = group.iter().find(|r| r.row.seed.is_none()).copied();
            let runs: Vec<&RowResult> = group.iter().filter(|r| r.row.seed.is_some()).copied().collect();
            let sft_log = plan.dir.join(size).join("sft").join(crate::run::METRICS_FILE);
            let _ = writeln!(md, "\n### {size}, {init} init\n");
            for f in findings(start, &runs, sft_log.exists().then_some(sft_log.as_path())) {
                let _ = writeln!(md, "- {} {}. {}", f.claim, f.verdict.label(), f.evidence);
            }
        }
    }

    md.push_str("\n## Plots\n\n");
    let runs: Vec<PathBuf> =
        results.iter().filter_map(|r| r.row.run.clone()).filter(|r| r.join(DONE_FILE).exists()).collect();
    let sft: Vec<PathBuf> =
        plan.sizes.iter().map(|s| plan.dir.join(s).join("sft")).filter(|d| d.join(DONE_FILE).exists()).collect();
    let pass_key = |dirs: &[PathBuf]| {
        let rows: Vec<_> =
            dirs.iter().filter_map(|d| read_metrics(&d.join(crate::run::METRICS_FILE)).ok()).flatten().collect();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::SampleRecord;
    use crate::eval::{EvalSummary, ProblemRecord};
    use crate::study::findings::*;
    use crate::study::Row;

    /// A finished row evaluated on `n` problems: greedy right where `greedy(i)`, pass@8 = `pass(i)`.
    fn row(
        algorithm: &str,
        reward: &str,
        samples: Option<f64>,
        n: usize,
        greedy: impl Fn(usize) -> bool,
        pass: impl Fn(usize) -> f64,
    ) -> RowResult {
        let records: Vec<ProblemRecord> = (0..n)
            .map(|i| ProblemRecord {
                problem_id: i.to_string(),
                reference_answer: "1".into(),
                greedy: Some(SampleRecord {
                    text: String::new(),
                    extracted_answer: None,
                    correct: greedy(i),
                    score: None,
                    tokens: 1,
                }),
                samples: Vec::new(),
                correct_samples: 0,
                distinct_correct: 0,
                majority: BTreeMap::new(),
                pass: BTreeMap::from([(8, pass(i))]),
                rerank: BTreeMap::new(),
                wmaj: BTreeMap::new(),
            })
            .collect();
        let mean = |f: &dyn Fn(&ProblemRecord) -> f64| records.iter().map(f).sum::<f64>() / n as f64;
        let metric = |value: f64| Metric { value, lo: value - 0.05, hi: value + 0.05 };
        let summary = EvalSummary {
            problems: n,
            samples_per_prompt: 8,
            sampled_problems: 0,
            temperature: Some(0.7),
            maj1: Some(metric(mean(&|r| r.greedy.as_ref().unwrap().correct as u8 as f64))).filter(|_| n > 0),
            maj: BTreeMap::new(),
            pass: BTreeMap::from([(8, metric(mean(&|r| r.pass[&8])))]),
            rerank: BTreeMap::new(),
            wmaj: BTreeMap::new(),
            rerank_minus_maj: BTreeMap::new(),
            wmaj_minus_maj: BTreeMap::new(),
            mean_distinct_correct: 1.0,
            mean_response_tokens: 50.0,
            verifier: BTreeMap::new(),
        };
        let start = algorithm == "none";
        RowResult {
            row: Row {
                size: "small".into(),
                init: "sft".into(),
                algorithm: algorithm.into(),
                name: algorithm.into(),
                reward: reward.into(),
                seed: (!start).then_some(0),
                run: None,
                eval: PathBuf::from(format!("{algorithm}-{reward}")),
                transfer: Vec::new(),
            },
            summary: Some(summary),
            error: None,
            samples,
            samples_to_95: None,
            seconds: 1.0,
            records: Some(records),
        }
    }

    fn verdicts(start: &RowResult, runs: &[&RowResult]) -> Vec<Verdict> {
        findings(Some(start), runs, None).iter().map(|f| f.verdict).collect()
    }

    const N: usize = 2000;

    /// Right on the first `n` of every ten problems.
    fn tenths(n: usize) -> impl Fn(usize) -> bool {
        move |i| i % 10 < n
    }

    /// pass@8 of 1 on the first `n` of every ten problems, else 0.
    fn pass_tenths(n: usize) -> impl Fn(usize) -> f64 {
        move |i| (i % 10 < n) as u8 as f64
    }

    #[test]
    fn a_clear_gain_reproduces_and_a_clear_loss_contradicts() {
        let start = row("none", "sparse", None, N, tenths(3), pass_tenths(6));
        // EI +20 points greedy and +10 pass@8 over the start; PPO as the start.
        let ei = row("ei", "sparse", Some(20_000.0), N, tenths(5), pass_tenths(7));
        let ppo = row("ppo", "sparse", Some(20_500.0), N, tenths(3), pass_tenths(6));
        let v = verdicts(&start, &[&ei, &ppo]);
        assert_eq!(v[0], Verdict::Reproduced, "EI is clearly best");
        assert_eq!(v[1], Verdict::Contradicted, "20 points apart is not close");
        assert_eq!(v[2], Verdict::Contradicted, "at matched samples EI is far ahead of PPO");
        assert_eq!(v[3], Verdict::Reproduced, "EI raised maj@1 and pass@8 together");
        assert_eq!(v[4], Verdict::Contradicted, "EI's pass@8 rose 10 points");

        // EI clearly below PPO; a run whose maj@1 rose while its pass@8 fell.
        let ei = row("ei", "sparse", Some(20_000.0), N, tenths(2), pass_tenths(6));
        let ppo = row("ppo", "sparse", Some(20_000.0), N, tenths(4), pass_tenths(4));
        let v = verdicts(&start, &[&ei, &ppo]);
        assert_eq!(v[0], Verdict::Contradicted, "EI is 20 points below PPO");
        assert_eq!(v[3], Verdict::Contradicted, "PPO's pass@8 fell as its maj@1 rose");
        assert_eq!(v[4], Verdict::Reproduced, "no run's pass@8 rose");

        // A dense reward clearly beating sparse contradicts; one equal to it reproduces.
        let sparse = row("ppo", "sparse", Some(1.0), N, tenths(3), |_| 0.5);
        let dense = row("ppo", "heuristic", Some(1.0), N, tenths(5), |_| 0.5);
        assert_eq!(verdicts(&start, &[&sparse, &dense])[5], Verdict::Contradicted);
        let dense = row("ppo", "heuristic", Some(1.0), N, tenths(3), |_| 0.5);
        assert_eq!(verdicts(&start, &[&sparse, &dense])[5], Verdict::Reproduced);
        // One point better on the same problems: a tight interval above 0 but below +3 is a
        // gain too small to count, never both verdicts at once (the old rule said contradicted).
        let dense = row("ppo", "heuristic", Some(1.0), N, |i| i % 10 < 3 || i % 100 == 55, |_| 0.5);
        let d = paired(&dense, &sparse, "maj@1").unwrap();
        assert!(d.lo > 0.0 && d.hi < MARGIN, "{d:?}");
        assert_eq!(verdicts(&start, &[&sparse, &dense])[5], Verdict::Reproduced);
    }

    #[test]
    fn a_null_difference_is_inconclusive_unless_its_interval_is_tight() {
        // 40 problems: EI and PPO score alike but on different problems, so the paired interval
        // is about ±20 points and includes both "3 points worse" and "3 points apart".
        let n = 40;
        let start = row("none", "sparse", None, n, |i| i % 4 == 2, |_| 0.5);
        let ei = row("ei", "sparse", Some(1e4), n, |i| i % 4 == 0, |_| 0.5);
        let ppo = row("ppo", "sparse", Some(1e4), n, |i| i % 4 == 1, |_| 0.5);
        let v = verdicts(&start, &[&ei, &ppo]);
        assert_eq!(&v[..3], &[Verdict::Inconclusive; 3], "overlapping wide intervals decide nothing");
        assert_eq!(v[3], Verdict::Inconclusive, "no run raised maj@1");
        // The same null difference on the same problems, with a tight interval, is a tie.
        let ppo = row("ppo", "sparse", Some(1e4), n, |i| i % 4 == 0, |_| 0.5);
        let v = verdicts(&start, &[&ei, &ppo]);
        assert_eq!(&v[..3], &[Verdict::Reproduced; 3]);
    }

    #[test]
    fn sample_budgets_must_match_to_compare_sample_complexity() {
        let start = row("none", "sparse", None, N, tenths(3), |_| 0.5);
        let ei = row("ei", "sparse", Some(20_000.0), N, tenths(3), |_| 0.5);
        let within = row("ppo", "sparse", Some(21_900.0), N, tenths(3), |_| 0.5);
        let beyond = row("ppo", "sparse", Some(22_100.0), N, tenths(3), |_| 0.5);
        assert!(budgets_match(&ei, &within) && !budgets_match(&ei, &beyond));
        assert_eq!(verdicts(&start, &[&ei, &within])[2], Verdict::Reproduced);
        let f = &findings(Some(&start), &[&ei, &beyond], None)[2];
        assert_eq!(f.verdict, Verdict::NotMeasured);
        assert!(f.evidence.contains("budgets differ"), "{}", f.evidence);
        let unknown = row("ppo", "sparse", None, N, tenths(3), |_| 0.5);
        assert!(!budgets_match(&ei, &unknown));
    }

    #[test]
    fn the_sft_trade_off_needs_intervals_that_part() {
        let dir = tempfile::tempdir().unwrap();
        // (epochs, maj@1, its half-width, pass@8, its half-width)
        let verdict = |points: &[(f64, f64, f64, f64, f64)], with_intervals: bool| {
            let lines: Vec<String> = points
                .iter()
                .map(|&(e, m, mw, p, pw)| {
                    let bounds = format!(
                        ",\"eval/maj@1_lo\":{},\"eval/maj@1_hi\":{},\"eval/pass@8_lo\":{},\"eval/pass@8_hi\":{}",
                        m - mw,
                        m + mw,
                        p - pw,
                        p + pw
                    );
                    let bounds = if with_intervals { bounds } else { String::new() };
                    format!("{{\"epochs\":{e},\"eval/maj@1\":{m},\"eval/pass@8\":{p}{bounds}}}\n")
                })
                .collect();
            let log = dir.path().join("metrics.jsonl");
            std::fs::write(&log, lines.concat()).unwrap();
            findings(None, &[], Some(&log)).last().unwrap().verdict
        };
        let clear = [(1.0, 0.30, 0.03, 0.80, 0.03), (2.0, 0.50, 0.03, 0.70, 0.03)];
        assert_eq!(verdict(&clear, true), Verdict::Reproduced);
        // The study's own case: pass@8 67 -> 65 and maj@1 41 -> 47 on 100 problems.
        let noise = [(2.08, 0.41, 0.10, 0.67, 0.07), (2.2, 0.47, 0.10, 0.65, 0.07)];
        assert_eq!(verdict(&noise, true), Verdict::Inconclusive);
        assert_eq!(verdict(&clear, false), Verdict::Inconclusive, "no intervals, no verdict");
    }

    #[test]
    fn the_table_shows_paired_differences_from_the_start() {
        let start = row("none", "sparse", None, N, tenths(3), |_| 0.5);
        let ei = row("ei", "sparse", Some(20_000.0), N, tenths(5), |_| 0.5);
        let rows = [start, ei];
        let greedy = table(&rows, None);
        assert!(!greedy.contains("pass@") && !greedy.contains("distinct"), "no sampled columns: {greedy}");
        let cells = |line: &str| line.matches('|').count();
        assert!(greedy.lines().all(|l| cells(l) == 11), "every line has the 10 greedy columns: {greedy}");
        let table = table(&rows, Some(8));
        assert!(table.contains("Δ maj@1 vs start") && table.contains("| pass@8 |"));
        assert!(table.lines().all(|l| cells(l) == 17), "{table}");
        let ei_line = table.lines().find(|l| l.contains("| ei |")).unwrap();
        assert!(ei_line.contains("| +20.0 [+1"), "{ei_line}");
        let start_line = table.lines().find(|l| l.contains("| none |")).unwrap();
        assert!(start_line.contains("| - |"), "the start has no difference from itself: {start_line}");
    }
}
