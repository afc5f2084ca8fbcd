//! Checks the task module against the real GSM8K / SVAMP files (in `../shared/data` beside the
//! crate; missing data is a failure, not a skip) and the built-in generator's guarantees.

use reasonrl::task::synth::{generate, level_params, LEVELS};
use reasonrl::task::{
    extract_answer, intermediate_results, load_gsm8k, load_jsonl, load_svamp, parse_number, write_jsonl, Split,
    TaskSpec,
};
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

fn data_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data");
    assert!(dir.is_dir(), "test data missing: {} (expected shared/ beside the crate)", dir.display());
    dir
}

/// The results of `<<expr=N>>` notes, parsed independently of the crate's scanner.
fn note_results(solution: &str) -> Vec<f64> {
    let mut out = Vec::new();
    for chunk in solution.split("<<").skip(1) {
        let Some((note, _)) = chunk.split_once(">>") else { continue };
        let result = note.rsplit('=').next().unwrap();
        let value = match result.split_once('/') {
            Some((a, b)) => a.parse::<f64>().unwrap() / b.parse::<f64>().unwrap(),
            None => result.parse::<f64>().unwrap_or_else(|_| panic!("odd note {note:?}")),
        };
        out.push(value);
    }
    out
}

/// For note-free solutions: the plain number (or a/b) after the last "=" of each line (not
/// "2p/5").
fn equation_results(solution: &str) -> Vec<f64> {
    let mut out = Vec::new();
    for line in solution.lines() {
        let Some((_, rhs)) = line.rsplit_once('=') else { continue };
        let rhs = rhs.trim_start().trim_start_matches('$').trim_start();
        let (neg, rhs) = match rhs.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, rhs),
        };
        let len = rhs.find(|c: char| !(c.is_ascii_digit() || ".,/".contains(c))).unwrap_or(rhs.len());
        let (num, after) = rhs.split_at(len);
        let num = num.trim_end_matches(['.', ',', '/']).replace(',', "");
        if num.is_empty() || after.starts_with(|c: char| c.is_ascii_alphabetic()) {
            continue;
        }
        let v: f64 = match num.split_once('/') {
            Some((a, b)) => a.parse::<f64>().unwrap() / b.parse::<f64>().unwrap(),
            None => num.parse().unwrap(),
        };
        out.push(if neg { -v } else { v });
    }
    out
}

#[test]
fn every_gsm8k_solution_yields_its_answer_and_notes() {
    let dir = data_dir().join("gsm8k");
    for (split, expected) in [("train", 7473), ("test", 1319)] {
        let problems = load_gsm8k(&dir.join(format!("{split}.jsonl"))).unwrap();
        assert_eq!(problems.len(), expected, "{split}");
        let mut note_free = 0;
        for p in &problems {
            assert_eq!(extract_answer(&p.reference_solution).as_deref(), Some(p.answer.as_str()), "{}", p.id);
            let mut notes = note_results(&p.reference_solution);
            if notes.is_empty() {
                // 113 GSM8K solutions have no calculator notes: the "=" fallback applies.
                notes = equation_results(&p.reference_solution);
                note_free += 1;
            }
            let got = intermediate_results(&p.reference_solution);
            assert_eq!(got.len(), notes.len(), "{}: {got:?} vs {notes:?}", p.id);
            for (g, n) in got.iter().zip(&notes) {
                assert!((g - n).abs() <= 1e-9 * n.abs().max(1.0), "{}: {got:?} vs {notes:?}", p.id);
            }
        }
        assert!(note_free < problems.len() / 50, "{note_free}");
        let spec = TaskSpec::parse(&format!("gsm8k:{}", dir.display())).unwrap();
        let s = if split == "train" { Split::Train } else { Split::Test };
        assert_eq!(spec.load(s, Some(10)).unwrap(), problems[..10].to_vec());
    }
}

#[test]
fn every_svamp_answer_parses_and_split_is_disjoint() {
    let path = data_dir().join("svamp/SVAMP.json");
    let problems = load_svamp(&path).unwrap();
    assert_eq!(problems.len(), 1000);
    for p in &problems {
        let a = parse_number(&p.answer).unwrap_or_else(|| panic!("{}: {:?}", p.id, p.answer));
        assert_eq!(extract_answer(&p.reference_solution).and_then(|x| parse_number(&x)), Some(a));
        assert_eq!(intermediate_results(&p.reference_solution), vec![a], "{}", p.id);
    }
    let spec = TaskSpec::parse(&format!("svamp:{}", path.display())).unwrap();
    let train = spec.load(Split::Train, None).unwrap();
    let test = spec.load(Split::Test, None).unwrap();
    assert_eq!(train.len() + test.len(), 1000);
    assert!((150..=250).contains(&test.len()), "{}", test.len());
    let ids: HashSet<_> = train.iter().map(|p| &p.id).collect();
    assert!(test.iter().all(|p| !ids.contains(&p.id)));
}

#[test]
fn synth_is_deterministic_and_splits_are_disjoint() {
    let train = generate(3, Split::Train, 5000, 42);
    let test = generate(3, Split::Test, 1000, 42);
    assert_eq!((train.len(), test.len()), (5000, 1000));
    assert_eq!(train, generate(3, Split::Train, 5000, 42));
    let questions: HashSet<_> = train.iter().map(|p| p.question.as_str()).collect();
    assert_eq!(questions.len(), 5000, "duplicate questions");
    assert!(test.iter().all(|p| !questions.contains(p.question.as_str())));
    let spec = TaskSpec::parse("builtin:3:42").unwrap();
    assert_eq!(spec.load(Split::Test, Some(1000)).unwrap(), test);
    assert_eq!(TaskSpec::parse("builtin").unwrap().load(Split::Test, None).unwrap().len(), 500);
}

#[test]
fn synth_solutions_are_consistent() {
    for level in LEVELS {
        let lv = level_params(level);
        for p in generate(level, Split::Train, 1000, 7).into_iter().chain(generate(level, Split::Test, 200, 7)) {
            let sol = &p.reference_solution;
            assert_eq!(extract_answer(sol).as_deref(), Some(p.answer.as_str()), "{sol}");
            let got = intermediate_results(sol);
            assert_eq!(got, note_results(sol), "{sol}");
            assert!(got.iter().all(|x| *x >= 1.0 && x.fract() == 0.0), "{sol}");
            assert!((lv.min_steps..=lv.max_steps).contains(&got.len()), "level {level}: {sol}");
            assert!(sol.ends_with(&format!("\n#### {}", p.answer)));
        }
    }
}

#[test]
fn task_spec_parse_cases() {
    let ok = [
        ("builtin", TaskSpec::Builtin { level: 2, seed: 1234 }),
        ("builtin:4", TaskSpec::Builtin { level: 4, seed: 1234 }),
        ("gsm8k:/d/gsm8k", TaskSpec::Gsm8k { path: "/d/gsm8k".into(), skip: false }),
        ("svamp:/d/SVAMP.json", TaskSpec::Svamp { path: "/d/SVAMP.json".into() }),
        (
            "jsonl:x.jsonl",
            TaskSpec::Jsonl {
                path: "x.jsonl".into(),
                question_field: "question".into(),
                answer_field: "answer".into(),
                solution_field: None,
                skip: false,
            },
        ),
        (
            "jsonl:x.jsonl:problem:solution",
            TaskSpec::Jsonl {
                path: "x.jsonl".into(),
                question_field: "problem".into(),
                answer_field: "solution".into(),
                solution_field: None,
                skip: false,
            },
        ),
    ];
    for (s, want) in ok {
        assert_eq!(TaskSpec::parse(s).unwrap(), want, "{s}");
    }
    for s in ["", "nope", "builtin:0", "builtin:9", "builtin:two", "gsm8k:", "svamp", "jsonl:x.jsonl:q", "jsonl:x::a"] {
        let err = TaskSpec::parse(s).unwrap_err().to_string();
        assert!(err.contains("builtin"), "{s:?}: {err}");
    }
    let missing = TaskSpec::parse("gsm8k:/nonexistent/dir.jsonl").unwrap().load(Split::Train, None);
    assert!(missing.unwrap_err().to_string().contains("/nonexistent/dir.jsonl"));
}

#[test]
fn gsm8k_errors_name_file_and_line() {
    let good = r#"{"question": "Q?", "answer": "2+2 = <<2+2=4>>4\n#### 4"}"#;
    let cases = [
        (format!("{good}\n{good}\n{{\"question\": \"Q\", \"answer\n"), 3, "malformed"),
        (format!("{good}\n\n{{\"question\": \"Q\"}}\n"), 3, "\"answer\""),
        ("{\"answer\": \"#### 1\"}\n".to_string(), 1, "\"question\""),
        (format!("{good}\n{{\"question\": \"Q\", \"answer\": \"no final line\"}}\n"), 2, "####"),
    ];
    for (content, line, needle) in cases {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(content.as_bytes()).unwrap();
        let err = load_gsm8k(f.path()).unwrap_err().to_string();
        let at = format!("{}:{line}:", f.path().display());
        assert!(err.contains(&at) && err.contains(needle), "{err:?} should name {at:?} and {needle:?}");
    }
}

#[test]
fn write_then_load_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/out.jsonl");
    let problems = generate(2, Split::Test, 50, 3);
    write_jsonl(&path, &problems, false).unwrap();
    assert!(write_jsonl(&path, &problems, false).unwrap_err().to_string().contains("out.jsonl"));
    assert_eq!(load_gsm8k(&path).unwrap(), problems);
    assert_eq!(load_jsonl(&path, "question", "answer").unwrap(), problems);
    // One file holds one split: test, as its name does not say train.
    let spec = TaskSpec::parse(&format!("jsonl:{}", path.display())).unwrap();
    assert_eq!(spec.load(Split::Test, Some(5)).unwrap(), problems[..5].to_vec());
    let err = spec.load(Split::Train, None).unwrap_err().to_string();
    assert!(err.contains("out.jsonl") && err.contains("holds the test split"), "{err}");
}

/// The checker against Math-Verify's own test cases (tests/fixtures/math-verify): it never
/// accepts what Math-Verify rejects among sets, intervals, matrices, equations and symbolic
/// expressions (those are a verifier's job), and it agrees on the numbers math problems need.
/// Prints the table per scope; `scripts/math-verify-agreement.sh` prints it per category.
#[test]
fn agrees_with_math_verify_on_numbers_and_never_accepts_a_wrong_set_or_equation() {
    let cases = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/math-verify/cases.jsonl");
    let (_, grades) = reasonrl::task::grade::grade(&cases, Some("scope"), Some("expected")).unwrap();
    println!("{}", reasonrl::task::grade::table(&grades, true));
    assert!(grades.total.lines > 250, "{} cases", grades.total.lines);
    for scope in ["verifier", "expression"] {
        assert_eq!(grades.groups[scope].false_accepts, 0, "{scope}");
    }
    let numbers = grades.groups["number"];
    // The two false accepts left: an answer inside `$ .. $` split over three lines, which
    // Math-Verify's latex-only mode refuses and our plain-number reading reads (see the README).
    assert!(numbers.false_accepts <= 2, "{numbers:?}");
    assert!(numbers.agree as f64 >= 0.9 * numbers.lines as f64, "{numbers:?}");
}
