//! Math word problems: loading GSM8K / SVAMP / generic JSONL, the built-in generator, and
//! reading answers out of solutions.
//!
//! A data source is named by a [`TaskSpec`] string (see [`TaskSpec::parse`]); every loader
//! yields [`Problem`]s whose `reference_solution` is GSM8K-format text ending in "#### N".

pub mod answer;
pub mod corpus;
pub mod grade;
pub mod gsm8k;
pub mod latex;
pub mod number;
pub mod svamp;
pub mod synth;

pub use answer::{answers_match, extract_answer, intermediate_results, is_correct, normalize_answer, step_results};
pub use gsm8k::{load_gsm8k, load_jsonl, load_records, Answers, Fields};
pub use number::{normalize_number, parse_number};
pub use svamp::load_svamp;

use crate::error::{Error, Result};
use crate::fsutil;
use std::fmt;
use std::path::{Path, PathBuf};

/// One math word problem with its worked solution.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Problem {
    /// Stable identifier (from the data, or "{file_stem}-{line}", or "builtin-L2-train-7").
    pub id: String,
    /// The word problem as shown to the model.
    pub question: String,
    /// Full GSM8K-format worked solution, including the final "#### N" line (what SFT trains on).
    pub reference_solution: String,
    /// The canonical final answer as text ("72", "0.5", "-3").
    pub answer: String,
}

/// Which half of a data source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Problems to train on.
    Train,
    /// Held-out problems to evaluate on.
    Test,
}

impl Split {
    /// Lower-case name, as used in ids and file names ("train" / "test").
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Default number of generated problems per split for `builtin` when no limit is given.
pub const BUILTIN_DEFAULT_TRAIN: usize = 20_000;
/// See [`BUILTIN_DEFAULT_TRAIN`].
pub const BUILTIN_DEFAULT_TEST: usize = 500;
/// Level of plain "builtin".
pub const BUILTIN_DEFAULT_LEVEL: u32 = 2;
/// Seed of "builtin" / "builtin:LEVEL".
pub const BUILTIN_DEFAULT_SEED: u64 = 1234;

/// Where problems come from. Parsed from a CLI/config string by [`TaskSpec::parse`]:
///
/// * `builtin` | `builtin:LEVEL` | `builtin:LEVEL:SEED` -> [`TaskSpec::Builtin`] (level 2 and
///   seed 1234 by default; level in 1..=5, see [`synth`] for the level table)
/// * `gsm8k:DIR_OR_FILE` -> [`TaskSpec::Gsm8k`]: a DIR holds `train.jsonl` / `test.jsonl`; a
///   FILE holds one split (see below)
/// * `svamp:FILE` -> [`TaskSpec::Svamp`] (SVAMP.json, or a JSON-lines copy of it). SVAMP has
///   no official split, so a problem is Test iff FNV-1a(ID) % 5 == 0 (a fixed ~80/20 split that
///   never changes with file order)
/// * `jsonl:FILE[:QUESTION_FIELDS:ANSWER_FIELD[:SOLUTION_FIELD]]` and the same with `json:` ->
///   [`TaskSpec::Jsonl`]: JSON lines or a JSON array of objects (either prefix reads both).
///   Fields default to "question" / "answer"; several question fields join with "+"
///   (ASDiv's `body+question`); the answer may be a number, a number with a unit in
///   parentheses ("9 (apples)"), a solution ending in "#### N" or a `\boxed{}` one; a solution
///   field, if named, is what SFT trains on. With fields given, the path is everything before
///   them (the last two, or three, ":"-separated parts).
/// * `math:FILE[:PROBLEM_FIELD:SOLUTION_FIELD]` -> [`TaskSpec::Math`]: MATH-style records
///   (default fields "problem" / "solution"), the answer the solution's last `\boxed{}` (see
///   [`answer::math_reference`]), kept whole and compared after LaTeX normalisation
///   ([`answer::normalize_answer`]).
///
/// A file with records whose answer cannot be used (ASDiv's names and ratios, a MATH solution
/// without its answer) is refused whole, naming the first; `gsm8k+skip:`, `jsonl+skip:`,
/// `json+skip:` and `math+skip:` leave those records out instead and say how many.
///
/// A single file holds one split: the train split when its file name says "train", else the
/// test split. Asking a single-file task for its other split is an error, so one file never
/// silently serves as both training and test data. A folder in place of the file (gsm8k, jsonl,
/// json, math) holds both: `train.jsonl` and `test.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskSpec {
    /// The built-in seeded generator ([`synth::generate`]).
    Builtin {
        /// Difficulty 1..=5.
        level: u32,
        /// Generator seed.
        seed: u64,
    },
    /// GSM8K JSONL: a directory with train.jsonl/test.jsonl, or one file.
    Gsm8k {
        /// Directory or file.
        path: PathBuf,
        /// Leave out the records whose answer cannot be used (the `+skip` form).
        skip: bool,
    },
    /// SVAMP.json.
    Svamp {
        /// The JSON file.
        path: PathBuf,
    },
    /// A JSONL file or JSON array of records with a question and an answer.
    Jsonl {
        /// The JSONL or JSON file.
        path: PathBuf,
        /// Name of the question field; several joined by "+".
        question_field: String,
        /// Name of the answer field.
        answer_field: String,
        /// Name of a worked-solution field.
        solution_field: Option<String>,
        /// Leave out the records whose answer is not a number (the `+skip` form).
        skip: bool,
    },
    /// MATH-style records: a problem and a solution with a `\boxed{}` answer.
    Math { path: PathBuf, problem_field: String, solution_field: String, skip: bool },
}

const SPEC_FORMS: &str = "expected builtin[:LEVEL[:SEED]], gsm8k:DIR_OR_FILE, svamp:FILE, \
                          jsonl:FILE[:QUESTION_FIELDS:ANSWER_FIELD[:SOLUTION_FIELD]] (or json:...) or \
                          math:FILE[:PROBLEM_FIELD:SOLUTION_FIELD]; gsm8k+skip:, jsonl+skip: and math+skip: \
                          leave out records whose answer cannot be used";

impl TaskSpec {
    /// Parses a task string (forms listed on [`TaskSpec`]).
    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim();
        let bad = |why: &str| Error::Invalid(format!("task {s:?}: {why} ({SPEC_FORMS})"));
        let (kind, rest) = match s.split_once(':') {
            Some((k, r)) => (k, Some(r)),
            None => (s, None),
        };
        let (kind, skip) = kind.strip_suffix("+skip").map_or((kind, false), |k| (k, true));
        if skip && !["gsm8k", "jsonl", "json", "math"].contains(&kind) {
            return Err(bad("+skip is for gsm8k, jsonl, json and math files"));
        }
        let path = |r: Option<&str>| match r {
            Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
            _ => Err(bad("missing path")),
        };
        match kind {
            "builtin" => {
                let mut parts = rest.map(|r| r.split(':').collect::<Vec<_>>()).unwrap_or_default();
                if parts.len() > 2 {
                    return Err(bad("too many parts"));
                }
                parts.resize(2, "");
                let level = match parts[0] {
                    "" => BUILTIN_DEFAULT_LEVEL,
                    l => l.parse().ok().filter(|l| synth::LEVELS.contains(l)).ok_or_else(|| {
                        bad(&format!("level must be {}..={}", synth::LEVELS.start(), synth::LEVELS.end()))
                    })?,
                };
                let seed = match parts[1] {
                    "" => BUILTIN_DEFAULT_SEED,
                    x => x.parse().map_err(|_| bad("seed must be a non-negative integer"))?,
                };
                Ok(TaskSpec::Builtin { level, seed })
            }
            "gsm8k" => Ok(TaskSpec::Gsm8k { path: path(rest)?, skip }),
            "svamp" => Ok(TaskSpec::Svamp { path: path(rest)? }),
            "jsonl" | "json" | "math" => {
                let parts: Vec<&str> = rest.unwrap_or("").split(':').collect();
                let fields = match (kind, parts.len()) {
                    (_, 1) => 0,
                    (_, 2) => return Err(bad("give the question and the answer field, or neither")),
                    ("math", _) | (_, 3) => 2,
                    _ => 3,
                };
                let file = parts[..parts.len() - fields].join(":");
                let names = &parts[parts.len() - fields..];
                if names.iter().any(|f| f.is_empty() || f.split('+').any(str::is_empty)) {
                    return Err(bad("empty field name"));
                }
                let path = path(Some(&file))?;
                if kind == "math" {
                    let (p, sol) = if fields == 0 { ("problem", "solution") } else { (names[0], names[1]) };
                    return Ok(TaskSpec::Math { path, problem_field: p.into(), solution_field: sol.into(), skip });
                }
                let (q, a) = if fields == 0 { ("question", "answer") } else { (names[0], names[1]) };
                Ok(TaskSpec::Jsonl {
                    path,
                    question_field: q.to_string(),
                    answer_field: a.to_string(),
                    solution_field: names.get(2).map(|s| s.to_string()),
                    skip,
                })
            }
            _ => Err(bad("unknown kind")),
        }
    }

    /// The file of a one-file source, which holds one split ([`split_of_file`]).
    fn single_file(&self) -> Option<&Path> {
        match self {
            TaskSpec::Gsm8k { path, .. } | TaskSpec::Jsonl { path, .. } | TaskSpec::Math { path, .. } => {
                (!path.is_dir()).then_some(path.as_path())
            }
            _ => None,
        }
    }

    /// The splits this source holds: both, or the one of a single file.
    pub fn splits(&self) -> Vec<Split> {
        match self.single_file() {
            Some(file) => vec![split_of_file(file)],
            None => vec![Split::Train, Split::Test],
        }
    }

    /// Loads the problems of `split`, at most `limit` of them (the first ones in file order;
    /// for `builtin`, `limit` is how many to generate: default 20,000 train / 500 test).
    ///
    /// A file source that yields no problems is an error (unless `limit` is 0).
    pub fn load(&self, split: Split, limit: Option<usize>) -> Result<Vec<Problem>> {
        if let Some(file) = self.single_file().filter(|f| !f.exists()) {
            return Err(Error::file(
                file,
                "does not exist (a task names a file, or a folder of train.jsonl and test.jsonl)",
            ));
        }
        if let Some(file) = self.single_file().filter(|f| split_of_file(f) != split) {
            return Err(Error::file(
                file,
                format!(
                    "one file holds one split, and this one holds the {} split (a file name with \"train\" holds \
                     train problems, any other test problems), not the {split} split: name a {split} file for it",
                    split_of_file(file)
                ),
            ));
        }
        // A folder holds both splits, as train.jsonl and test.jsonl.
        let file = |path: &Path| if path.is_dir() { path.join(format!("{split}.jsonl")) } else { path.to_path_buf() };
        let (mut problems, path) = match self {
            TaskSpec::Builtin { level, seed } => {
                let n = limit.unwrap_or(match split {
                    Split::Train => BUILTIN_DEFAULT_TRAIN,
                    Split::Test => BUILTIN_DEFAULT_TEST,
                });
                return Ok(synth::generate(*level, split, n, *seed));
            }
            TaskSpec::Gsm8k { path, skip } => {
                let file = file(path);
                (load_records(&file, &Fields::new("question", "answer", None), Answers::Gsm8k, *skip)?, file)
            }
            TaskSpec::Svamp { path } => {
                let mut all = load_svamp(path)?;
                all.retain(|p| svamp::split_of(&p.id) == split);
                (all, path.clone())
            }
            TaskSpec::Jsonl { path, question_field, answer_field, solution_field, skip } => {
                let (fields, file) = (Fields::new(question_field, answer_field, solution_field.as_deref()), file(path));
                (load_records(&file, &fields, Answers::Numeric, *skip)?, file)
            }
            TaskSpec::Math { path, problem_field, solution_field, skip } => {
                let (fields, file) = (Fields::new(problem_field, solution_field, Some(solution_field)), file(path));
                (load_records(&file, &fields, Answers::Math, *skip)?, file)
            }
        };
        if let Some(n) = limit {
            problems.truncate(n);
        }
        if problems.is_empty() && limit != Some(0) {
            return Err(Error::file(path, format!("no {split} problems")));
        }
        Ok(problems)
    }
}

impl fmt::Display for TaskSpec {
    /// The spec string [`TaskSpec::parse`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskSpec::Builtin { level, seed } => write!(f, "builtin:{level}:{seed}"),
            TaskSpec::Gsm8k { path, skip } => write!(f, "gsm8k{}:{}", plus(*skip), path.display()),
            TaskSpec::Svamp { path } => write!(f, "svamp:{}", path.display()),
            TaskSpec::Jsonl { path, question_field, answer_field, solution_field, skip } => {
                write!(f, "jsonl{}:{}:{question_field}:{answer_field}", plus(*skip), path.display())?;
                match solution_field {
                    Some(s) => write!(f, ":{s}"),
                    None => Ok(()),
                }
            }
            TaskSpec::Math { path, problem_field, solution_field, skip } => {
                write!(f, "math{}:{}:{problem_field}:{solution_field}", plus(*skip), path.display())
            }
        }
    }
}

/// The `+skip` of a spec string that has it.
fn plus(skip: bool) -> &'static str {
    if skip {
        "+skip"
    } else {
        ""
    }
}

/// The split a single data file holds: train when its file name says "train", else test.
pub fn split_of_file(path: &Path) -> Split {
    let stem = path.file_stem().map(|s| s.to_string_lossy().to_lowercase()).unwrap_or_default();
    if stem.contains("train") {
        Split::Train
    } else {
        Split::Test
    }
}

/// Write problems as JSONL in GSM8K's format plus an id:
/// `{"id":..,"question":..,"answer": reference_solution}`, atomically, refusing to overwrite
/// an existing file unless `force`.
pub fn write_jsonl(path: &Path, problems: &[Problem], force: bool) -> Result<()> {
    #[derive(serde::Serialize)]
    struct Row<'a> {
        id: &'a str,
        question: &'a str,
        answer: &'a str,
    }
    fsutil::check_overwrite(path, force)?;
    fsutil::write_jsonl(
        path,
        problems.iter().map(|p| Row { id: &p.id, question: &p.question, answer: &p.reference_solution }),
    )
}

/// 64-bit FNV-1a: a tiny stable hash for deterministic splits (never changes across versions,
/// unlike std's hasher).
pub(crate) fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_source_is_named_as_missing() {
        for spec in ["gsm8k:/nonexistent/gsm8k", "jsonl:/nonexistent/train.jsonl"] {
            let err = TaskSpec::parse(spec).unwrap().load(Split::Train, None).unwrap_err().to_string();
            assert!(err.contains("/nonexistent") && err.contains("does not exist"), "{spec}: {err}");
        }
    }

    #[test]
    fn parses_specs() {
        assert_eq!(TaskSpec::parse("builtin").unwrap(), TaskSpec::Builtin { level: 2, seed: 1234 });
        assert_eq!(TaskSpec::parse("builtin:5").unwrap(), TaskSpec::Builtin { level: 5, seed: 1234 });
        assert_eq!(TaskSpec::parse("builtin:1:7").unwrap(), TaskSpec::Builtin { level: 1, seed: 7 });
        assert_eq!(
            TaskSpec::parse("gsm8k:data/gsm8k").unwrap(),
            TaskSpec::Gsm8k { path: "data/gsm8k".into(), skip: false }
        );
        assert_eq!(
            TaskSpec::parse("jsonl:a/b.jsonl:q:sol").unwrap(),
            TaskSpec::Jsonl {
                path: "a/b.jsonl".into(),
                question_field: "q".into(),
                answer_field: "sol".into(),
                solution_field: None,
                skip: false
            }
        );
        assert_eq!(
            TaskSpec::parse("json+skip:c:/d.json:body+question:answer:equation").unwrap(),
            TaskSpec::Jsonl {
                path: "c:/d.json".into(),
                question_field: "body+question".into(),
                answer_field: "answer".into(),
                solution_field: Some("equation".into()),
                skip: true
            }
        );
        assert_eq!(
            TaskSpec::parse("math:m.jsonl").unwrap(),
            TaskSpec::Math {
                path: "m.jsonl".into(),
                problem_field: "problem".into(),
                solution_field: "solution".into(),
                skip: false
            }
        );
        for bad in [
            "",
            "builtin:0",
            "builtin:6",
            "builtin:x",
            "builtin:2:-1",
            "gsm8k",
            "gsm8k:",
            "svamp:",
            "jsonl:f:q",
            "jsonl:f:q+:a",
            "math:f:p",
            "foo:bar",
            "builtin+skip",
            "svamp+skip:y.json",
        ] {
            assert!(TaskSpec::parse(bad).is_err(), "{bad:?} should fail");
        }
        for s in [
            "builtin:3:9",
            "gsm8k:x",
            "svamp:y.json",
            "jsonl:z:q:a",
            "jsonl:z:b+q:a:s",
            "math:m:p:s",
            "jsonl+skip:z:q:a",
            "math+skip:m:p:s",
            "gsm8k+skip:x",
        ] {
            assert_eq!(TaskSpec::parse(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn fnv1a_known_values() {
        assert_eq!(fnv1a(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a("a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn write_jsonl_round_trips_and_refuses_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let problems = synth::generate(2, Split::Train, 5, 1);
        write_jsonl(&path, &problems, false).unwrap();
        assert!(write_jsonl(&path, &problems, false).is_err());
        write_jsonl(&path, &problems, true).unwrap();
        assert_eq!(load_gsm8k(&path).unwrap(), problems);
    }

    #[test]
    fn a_folder_holds_both_splits_for_every_file_kind() {
        let dir = tempfile::tempdir().unwrap();
        let record =
            |i: usize| format!("{{\"problem\": \"What is {i} + 1?\", \"solution\": \"$\\\\boxed{{{}}}$\"}}\n", i + 1);
        std::fs::write(dir.path().join("train.jsonl"), record(1) + &record(2)).unwrap();
        std::fs::write(dir.path().join("test.jsonl"), record(7)).unwrap();
        let spec = TaskSpec::parse(&format!("math:{}", dir.path().display())).unwrap();
        assert_eq!(spec.splits(), [Split::Train, Split::Test]);
        let (train, test) = (spec.load(Split::Train, None).unwrap(), spec.load(Split::Test, None).unwrap());
        assert_eq!((train.len(), train[1].answer.as_str(), test[0].answer.as_str()), (2, "3", "8"));
        std::fs::remove_file(dir.path().join("test.jsonl")).unwrap();
        let err = spec.load(Split::Test, None).unwrap_err().to_string();
        assert!(err.contains("test.jsonl"), "{err}");
    }
}
