//! JSON math datasets: GSM8K's JSONL (a question and a worked solution whose last line is
//! "#### N", calculator notes like `<<48/2=24>>` kept as-is) and any JSONL file or JSON array
//! of objects with a question (from one field or several joined, ASDiv's `body+question`) and an
//! answer: a JSON number (read from its source text, so 2.0107e-6 and 20-digit integers stay
//! exact), a number in a string ("1,000", ASDiv's "9 (apples)"), a "#### N" solution or a
//! `\boxed{}` solution (MATH), with an optional reference-solution field.

use super::answer::{marked_solution_answer, math_reference, whole_number_answer};
use super::latex::boxed_contents;
use super::number::normalize_number;
use super::Problem;
use crate::error::{Error, Result};
use crate::fsutil;
use serde_json::value::RawValue;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Which fields of a record hold what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fields {
    /// Joined with a space: `["body", "question"]` for ASDiv.
    pub question: Vec<String>,
    pub answer: String,
    /// A worked solution to train on; without it, the answer field's solution or "#### N".
    pub solution: Option<String>,
}

impl Fields {
    /// Fields from their names, the question's joined by "+": `("body+question", "answer")`.
    pub fn new(question: &str, answer: &str, solution: Option<&str>) -> Self {
        Fields {
            question: question.split('+').map(str::to_string).collect(),
            answer: answer.to_string(),
            solution: solution.map(str::to_string),
        }
    }
}

/// How strictly the answer field is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answers {
    /// GSM8K: a solution ending in a "#### N" line.
    Gsm8k,
    /// A number (JSON or text), a "#### N" solution or a `\boxed{}` number.
    Numeric,
    /// MATH: a solution whose last `\boxed{}` holds the answer, compared after LaTeX
    /// normalisation (see [`normalize_answer`]).
    Math,
}

/// Loads GSM8K JSONL (`question`, `answer` = solution ending in "#### N", optional `id`, else
/// id = "{file_stem}-{line}"). Empty lines are skipped; a malformed line, a missing field or an
/// answer without "#### N" is an error naming the file, line and field.
pub fn load_gsm8k(path: &Path) -> Result<Vec<Problem>> {
    load_records(path, &Fields::new("question", "answer", None), Answers::Gsm8k, false)
}

/// Loads any JSONL file (or JSON array) whose `question_field` holds the question and whose
/// `answer_field` holds a GSM8K-style solution or just a number. Ids as in [`load_gsm8k`].
pub fn load_jsonl(path: &Path, question_field: &str, answer_field: &str) -> Result<Vec<Problem>> {
    load_records(path, &Fields::new(question_field, answer_field, None), Answers::Numeric, false)
}

/// Loads JSON records: JSON lines, or one JSON array of objects (a file whose first character
/// is `[`). Errors name the file and the line (JSONL) or the element (array). Records whose
/// answer cannot be used (not a number, no final answer) are counted and refused together,
/// naming the first; with `skip`, they are left out instead, and how many, with the first
/// three, is said on standard error.
pub fn load_records(path: &Path, fields: &Fields, answers: Answers, skip: bool) -> Result<Vec<Problem>> {
    let text = fsutil::read_to_string(path)?;
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "data".into());
    let (array, records) = json_records(path, &text)?;
    let at = |n: usize, msg: String| {
        if array {
            Error::file(path, format!("element {n}: {msg}"))
        } else {
            Error::line(path, n, msg)
        }
    };
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    let mut unusable: Vec<(usize, &str, String)> = Vec::new();
    for (n, record) in records {
        let record = record.map_err(|msg| at(n, msg))?;
        let field = |name: &str| field(&record, name);
        let text_field = |name: &str| -> std::result::Result<String, String> {
            match field(name)? {
                Value::String(s) if !s.trim().is_empty() => Ok(s),
                Value::String(_) => Err(format!("field {name:?} is empty")),
                _ => Err(format!("field {name:?} must be a string")),
            }
        };
        let question = fields.question.iter().map(|f| text_field(f)).collect::<std::result::Result<Vec<_>, _>>();
        let question = question.map_err(|msg| at(n, msg))?.iter().map(|q| q.trim()).collect::<Vec<_>>().join(" ");
        let solution = match &fields.solution {
            Some(f) => Some(text_field(f).map_err(|msg| at(n, msg))?),
            None => None,
        };
        let raw = record.get(&fields.answer).ok_or_else(|| at(n, format!("missing field {:?}", fields.answer)))?;
        let (answer_solution, answer) = match read_answer(raw, &fields.answer, answers).map_err(|msg| at(n, msg))? {
            Read::Answer(solution, answer) => (solution, answer),
            Read::Unusable(why) => {
                unusable.push((n, why, raw.get().chars().take(80).collect()));
                continue;
            }
        };
        let reference_solution = match (solution, answers) {
            (Some(s), Answers::Math) => s,
            (Some(s), _) if marked_solution_answer(&s).is_some() || !boxed_contents(&s).is_empty() => s,
            (Some(s), _) => format!("{}\n#### {answer}", s.trim_end()),
            (None, _) => answer_solution,
        };
        let id = match record.get("id").map(|raw| serde_json::from_str::<Value>(raw.get())) {
            None | Some(Ok(Value::Null)) => format!("{stem}-{n}"),
            Some(Ok(Value::String(s))) => s,
            Some(Ok(Value::Number(_))) => record["id"].get().to_string(),
            Some(_) => return Err(at(n, "field \"id\" must be a string or a number".into())),
        };
        if let Some(first) = seen.insert(id.clone(), n) {
            return Err(at(n, format!("duplicate id {id:?} (first at {first})")));
        }
        out.push(Problem { id, question, reference_solution, answer });
    }
    let total = out.len() + unusable.len();
    let say =
        |(n, why, raw): &(usize, &str, String)| format!("{} {n}: {why}: {raw}", if array { "element" } else { "line" });
    if skip && !unusable.is_empty() {
        let first: Vec<String> = unusable.iter().take(3).map(say).collect();
        eprintln!(
            "{}: skipped {} of {total} records whose field {:?} cannot be used; the first: {}",
            path.display(),
            unusable.len(),
            fields.answer,
            first.join("; ")
        );
    } else if let Some((n, why, raw)) = unusable.first() {
        let (kind, hint) = match answers {
            Answers::Gsm8k => ("gsm8k", ""),
            Answers::Numeric => ("jsonl", "; for LaTeX answers use math:FILE"),
            Answers::Math => ("math", ""),
        };
        return Err(at(
            *n,
            format!(
                "{} of {total} records have a field {:?} that cannot be used, this one first: {why}: {raw}{hint}; \
                 to load the other {} without them, name the task {kind}+skip:...",
                unusable.len(),
                fields.answer,
                out.len()
            ),
        ));
    }
    Ok(out)
}

/// Field `name` of `record`, parsed; Err names a missing or malformed field.
pub(crate) fn field(record: &Record, name: &str) -> std::result::Result<Value, String> {
    let raw = record.get(name).ok_or_else(|| format!("missing field {name:?}"))?;
    serde_json::from_str(raw.get()).map_err(|e| format!("field {name:?}: {e}"))
}

/// One JSON object, its fields left unparsed (so a number keeps its digits).
pub(crate) type Record = BTreeMap<String, Box<RawValue>>;
/// A record with its line or element number, or why it is not an object.
pub(crate) type Numbered = (usize, std::result::Result<Record, String>);

/// The records of a file: whether it is one JSON array, and each record with its line (JSON
/// lines) or element (array) number, or why it is not an object.
pub(crate) fn json_records(path: &Path, text: &str) -> Result<(bool, Vec<Numbered>)> {
    let object = |json: &str| serde_json::from_str::<Record>(json);
    if text.trim_start().starts_with('[') {
        let items: Vec<Box<RawValue>> =
            serde_json::from_str(text).map_err(|e| Error::file(path, format!("malformed JSON array: {e}")))?;
        let records = items.iter().map(|raw| object(raw.get()).map_err(|_| "expected a JSON object".to_string()));
        return Ok((true, records.enumerate().map(|(i, r)| (i + 1, r)).collect()));
    }
    let lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let records = lines.map(|(i, line)| {
        let why = |e: serde_json::Error| match serde_json::from_str::<Value>(line) {
            Ok(_) => "expected a JSON object".to_string(),
            Err(_) => format!("malformed JSON: {e}"),
        };
        (i + 1, object(line).map_err(why))
    });
    Ok((false, records.collect()))
}

/// What an answer field holds.
pub(crate) enum Read {
    /// The reference solution and the canonical answer.
    Answer(String, String),
    /// A well-formed answer that this loader cannot use, and why (a name where a number should
    /// be, a solution without its final answer).
    Unusable(&'static str),
}

/// What an answer field holds; Err when it is malformed (not a string or a number, empty).
pub(crate) fn read_answer(raw: &RawValue, field: &str, answers: Answers) -> std::result::Result<Read, String> {
    let value: Value = serde_json::from_str(raw.get()).map_err(|e| format!("field {field:?}: {e}"))?;
    let found = |solution: String, answer: Option<String>, why| {
        Ok(answer.map_or(Read::Unusable(why), |a| Read::Answer(solution, a)))
    };
    let text = match value {
        // The number's own digits, not an f64's: 2.0107e-6 stays 2.0107e-6.
        Value::Number(_) if answers != Answers::Gsm8k => {
            let a = normalize_number(raw.get());
            return found(format!("#### {}", a.clone().unwrap_or_default()), a, "not a number");
        }
        Value::String(s) if !s.trim().is_empty() => s,
        Value::String(_) => return Err(format!("field {field:?} is empty")),
        _ => return Err(format!("field {field:?} must be a string")),
    };
    if answers == Answers::Math {
        let a = math_reference(&text);
        return found(text, a, "no \\boxed{} answer or answer marker, and not one line of math");
    }
    if text.contains("####") {
        let a = marked_solution_answer(&text).and_then(|a| whole_number_answer(&a));
        return found(text, a, "no number after \"####\"");
    }
    if answers == Answers::Gsm8k {
        return Ok(Read::Unusable("no final \"#### N\" line"));
    }
    if let Some(inner) = boxed_contents(&text).pop() {
        let a = whole_number_answer(&inner);
        return found(text, a, "not a number");
    }
    // A bare answer: a number, optionally with a unit in parentheses ("9 (apples)"); prose that
    // starts with a number, or several numbers ("3 (boys); 4 (girls)"), is not one.
    let bare = text.trim();
    let (number, unit) = match bare.find('(') {
        Some(i) if bare.ends_with(')') => (&bare[..i], &bare[i + 1..bare.len() - 1]),
        _ => (bare, ""),
    };
    let plain = number.trim().chars().all(|c| c.is_ascii_digit() || " ,.$%-+/eE".contains(c));
    let a = (plain && !unit.contains(|c: char| c.is_ascii_digit() || "()".contains(c)))
        .then(|| whole_number_answer(number))
        .flatten();
    found(format!("#### {}", a.clone().unwrap_or_default()), a, "not a number")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(content: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(".jsonl").tempfile().unwrap();
        f.write_all(content.as_bytes()).unwrap();
        f
    }

    fn err_of(r: Result<Vec<Problem>>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn loads_gsm8k_lines() {
        let f = file(
            "{\"question\": \" Q1? \", \"answer\": \"a 2*3 = <<2*3=6>>6\\n#### 6\"}\n\n\
             {\"id\": \"x\", \"question\": \"Q2?\", \"answer\": \"#### 1,080\"}\n",
        );
        let ps = load_gsm8k(f.path()).unwrap();
        let stem = f.path().file_stem().unwrap().to_string_lossy().into_owned();
        assert_eq!(ps.len(), 2);
        assert_eq!(ps[0].id, format!("{stem}-1"));
        assert_eq!(ps[0].question, "Q1?");
        assert_eq!(ps[0].reference_solution, "a 2*3 = <<2*3=6>>6\n#### 6");
        assert_eq!(ps[0].answer, "6");
        assert_eq!((ps[1].id.as_str(), ps[1].answer.as_str()), ("x", "1080"));
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let ok = "{\"question\": \"Q\", \"answer\": \"#### 1\"}\n";
        let cases = [
            (format!("{ok}{{\"question\": \"Q\"\n"), 2, "malformed JSON"),
            (format!("{ok}\n{{\"answer\": \"#### 2\"}}\n"), 3, "missing field \"question\""),
            (format!("{ok}{{\"question\": \"Q\"}}\n"), 2, "missing field \"answer\""),
            ("{\"question\": \"Q\", \"answer\": \"no final line\"}\n".to_string(), 1, "\"answer\""),
            ("{\"question\": \"Q\", \"answer\": \"#### x\"}\n".to_string(), 1, "no number"),
            ("{\"question\": 3, \"answer\": \"#### 1\"}\n".to_string(), 1, "must be a string"),
            ("1\n".to_string(), 1, "JSON object"),
            (format!("{ok}{ok}").replace("\"Q\"", "\"Q\", \"id\": 4"), 2, "duplicate id"),
        ];
        for (content, line, needle) in cases {
            let f = file(&content);
            let msg = err_of(load_gsm8k(f.path()));
            let at = format!("{}:{line}:", f.path().display());
            assert!(msg.starts_with(&at) && msg.contains(needle), "{msg:?} lacks {at:?} / {needle:?}");
        }
        let missing = err_of(load_gsm8k(Path::new("/nonexistent/x.jsonl")));
        assert!(missing.contains("/nonexistent/x.jsonl"));
    }

    fn records(content: &str, fields: &Fields, answers: Answers) -> Result<Vec<Problem>> {
        load_records(file(content).path(), fields, answers, false)
    }

    #[test]
    fn json_numbers_keep_their_digits() {
        let content = "{\"q\": \"A\", \"a\": 0.0000020107}\n{\"q\": \"B\", \"a\": 12345678901234567890}\n\
                       {\"q\": \"C\", \"a\": 1e16}\n{\"q\": \"D\", \"a\": 2.5e21}\n{\"q\": \"E\", \"a\": -1.5e-7}\n";
        let ps = records(content, &Fields::new("q", "a", None), Answers::Numeric).unwrap();
        let answers: Vec<&str> = ps.iter().map(|p| p.answer.as_str()).collect();
        assert_eq!(
            answers,
            ["0.0000020107", "12345678901234567890", "10000000000000000", "2500000000000000000000", "-0.00000015"]
        );
        assert!(crate::task::is_correct("#### 2.0107e-6", &ps[0].answer));
        assert!(!crate::task::is_correct("#### 2.0107", &ps[0].answer));
        assert!(!crate::task::is_correct("#### 12345678901234567891", &ps[1].answer));
    }

    /// ASDiv's layout: the question split over `body` and `question`, answers with units.
    #[test]
    fn asdiv_style_records_load() {
        let content = r#"[
          {"id": "nluds-0001", "body": "Seven red apples and two green apples are in the basket.",
           "question": "How many apples are in the basket?", "answer": "9 (apples)", "formula": "7+2=9"},
          {"id": "nluds-0002", "body": "Ellen has six more balls than Marin. Marin has nine balls.",
           "question": "How many balls does Ellen have?", "answer": "15 (balls)", "formula": "6+9=15"}
        ]"#;
        let fields = Fields::new("body+question", "answer", Some("formula"));
        let ps = records(content, &fields, Answers::Numeric).unwrap();
        assert_eq!(
            ps[0].question,
            "Seven red apples and two green apples are in the basket. How many apples are in the basket?"
        );
        assert_eq!((ps[0].answer.as_str(), ps[1].answer.as_str()), ("9", "15"));
        assert_eq!(ps[0].reference_solution, "7+2=9\n#### 9");
        assert_eq!(ps[1].id, "nluds-0002");

        // Answers that are not numbers are refused together, counted, naming the first.
        let bad = content.replace("\"9 (apples)\"", "\"2:3\"").replace("\"15 (balls)\"", "\"3 (boys); 4 (girls)\"");
        let err = records(&bad, &fields, Answers::Numeric).unwrap_err().to_string();
        assert!(err.contains("element 1") && err.contains("2 of 2 records") && err.contains("2:3"), "{err}");
        assert!(err.contains("+skip"), "the way out is named: {err}");
    }

    /// With skip, a mixed file loads: the unusable records are left out, the rest kept as they
    /// would load alone; without it, the whole file is refused, naming the first.
    #[test]
    fn skip_leaves_out_only_the_unusable_records() {
        let lines = [
            r#"{"q": "A", "a": "12"}"#,
            r#"{"q": "B", "a": "Mary"}"#,
            r#"{"q": "C", "a": "3 (apples)"}"#,
            r#"{"q": "D", "a": "2:3"}"#,
            r#"{"q": "E", "a": 7}"#,
        ];
        let f = file(&lines.join("\n"));
        let fields = Fields::new("q", "a", None);
        let err = load_records(f.path(), &fields, Answers::Numeric, false).unwrap_err().to_string();
        assert!(err.contains(":2:") && err.contains("2 of 5 records") && err.contains("Mary"), "{err}");
        let kept = load_records(f.path(), &fields, Answers::Numeric, true).unwrap();
        let got: Vec<(&str, &str)> = kept.iter().map(|p| (p.question.as_str(), p.answer.as_str())).collect();
        assert_eq!(got, [("A", "12"), ("C", "3"), ("E", "7")]);
        assert!(kept[1].id.ends_with("-3"), "ids keep their line numbers: {}", kept[1].id);
        // A malformed record is never skipped: skip is for answers, not broken files.
        let broken = file(&format!("{}\n{{\"q\": \"B\"", lines[0]));
        assert!(load_records(broken.path(), &fields, Answers::Numeric, true).is_err());
        // A MATH solution without its answer is unusable too.
        let math = file("{\"problem\": \"P\", \"solution\": \"no box here, sorry\"}\n{\"problem\": \"Q\", \"solution\": \"\\\\boxed{2}\"}");
        let fields = Fields::new("problem", "solution", None);
        assert!(load_records(math.path(), &fields, Answers::Math, false).is_err());
        assert_eq!(load_records(math.path(), &fields, Answers::Math, true).unwrap().len(), 1);
    }

    /// MATH's layout: the answer is the solution's last \boxed{}, compared after LaTeX
    /// normalisation.
    #[test]
    fn math_style_records_load_and_compare() {
        let lines = [
            r#"{"problem": "What is $\\frac{1}{4}+\\frac{1}{4}$?", "solution": "We add: $\\frac{2}{4} = \\boxed{\\dfrac{1}{2}}$."}"#,
            r#"{"problem": "Simplify $\\sqrt{8}$.", "solution": "$\\sqrt{8} = \\boxed{2\\sqrt{2}}$"}"#,
            r#"{"problem": "An angle?", "solution": "It is $\\boxed{90^\\circ}$."}"#,
            r#"{"problem": "A share?", "solution": "So $\\boxed{25\\%}$ of them."}"#,
            r#"{"problem": "Which interval?", "solution": "$x \\in \\boxed{\\left( -\\infty, 3 \\right)}$"}"#,
            r#"{"problem": "How long?", "solution": "$\\boxed{12\\text{ cm}}$"}"#,
        ];
        let ps =
            records(&lines.join("\n"), &Fields::new("problem", "solution", Some("solution")), Answers::Math).unwrap();
        let answers: Vec<&str> = ps.iter().map(|p| p.answer.as_str()).collect();
        assert_eq!(answers, ["0.5", "2\\sqrt{2}", "90", "25", "(-\\infty, 3)", "12"]);
        let right =
            ["\\boxed{\\frac12}", "\\boxed{2 \\sqrt2}", "\\boxed{90}", "#### 25", "\\boxed{(-\\infty, 3)}", "#### 12"];
        let wrong = [
            "\\boxed{\\frac13}",
            "\\boxed{\\sqrt{2}}",
            "\\boxed{45}",
            "#### 2.5",
            "\\boxed{(-\\infty, 3]}",
            "#### 1.2",
        ];
        for ((p, r), w) in ps.iter().zip(right).zip(wrong) {
            assert!(crate::task::is_correct(r, &p.answer), "{r} for {}", p.answer);
            assert!(!crate::task::is_correct(w, &p.answer), "{w} for {}", p.answer);
        }
        assert!(ps[0].reference_solution.ends_with("$."), "the solution is kept as written");
        let none = records(
            r#"{"problem": "P", "solution": "no box"}"#,
            &Fields::new("problem", "solution", None),
            Answers::Math,
        );
        assert!(none.unwrap_err().to_string().contains("boxed"));
    }

    #[test]
    fn json_arrays_and_their_errors() {
        let err = err_of(records(
            "{\"q\": \"A\", \"a\": 1}\n[{\"q\": \"A\"}]\n",
            &Fields::new("q", "a", None),
            Answers::Numeric,
        ));
        assert!(err.contains(":2:") && err.contains("expected a JSON object"), "{err}");
        let err = err_of(records("[{\"q\": \"A\", \"a\": 1}, 3]", &Fields::new("q", "a", None), Answers::Numeric));
        assert!(err.contains("element 2: expected a JSON object"), "{err}");
        let err = err_of(records("[{\"q\": \"A\"", &Fields::new("q", "a", None), Answers::Numeric));
        assert!(err.contains("malformed JSON array"), "{err}");
    }

    #[test]
    fn generic_jsonl_accepts_bare_numbers() {
        let f = file("{\"problem\": \"P\", \"sol\": 42}\n{\"problem\": \"P2\", \"sol\": \"$1,000\"}\n");
        let ps = load_jsonl(f.path(), "problem", "sol").unwrap();
        assert_eq!(ps[0].answer, "42");
        assert_eq!(ps[0].reference_solution, "#### 42");
        assert_eq!(ps[1].answer, "1000");
        let prose = file("{\"problem\": \"P\", \"sol\": \"12 apples\"}\n");
        assert!(err_of(load_jsonl(prose.path(), "problem", "sol")).contains(":1:"));
        // GSM8K itself insists on the "#### N" line.
        let bare = file("{\"question\": \"P\", \"answer\": \"42\"}\n");
        assert!(load_gsm8k(bare.path()).is_err());
        assert_eq!(load_jsonl(bare.path(), "question", "answer").unwrap()[0].answer, "42");
    }

    /// MATH's whole-answer cases: a `\boxed 2` without braces, `-\frac{1}{8}`, `10,\!080`, a
    /// list; none is cut to the number it starts with.
    #[test]
    fn math_references_are_kept_whole() {
        let lines = [
            r#"{"problem": "P", "solution": "So it is $\\boxed 2$."}"#,
            r#"{"problem": "P", "solution": "$\\boxed{-\\frac{1}{8}}$"}"#,
            r#"{"problem": "P", "solution": "$\\boxed{10,\\!080}$"}"#,
            r#"{"problem": "P", "solution": "$\\boxed{4,6,14,15}$"}"#,
            r#"{"problem": "P", "solution": "$\\boxed{6+9i}$"}"#,
        ];
        let ps = records(&lines.join("\n"), &Fields::new("problem", "solution", None), Answers::Math).unwrap();
        let answers: Vec<&str> = ps.iter().map(|p| p.answer.as_str()).collect();
        assert_eq!(answers, ["2", "-0.125", "10080", "4,6,14,15", "6+9i"]);
        let is_correct = crate::task::is_correct;
        assert!(is_correct("The answer is $-0.125$.", &ps[1].answer));
        assert!(is_correct("so we get $\\frac{-1}{8}$", &ps[1].answer));
        assert!(is_correct("In all, $10,\\!080$ ways", &ps[2].answer));
        assert!(!is_correct("The answer is 4.", &ps[3].answer));
        assert!(!is_correct("The answer is 6.", &ps[4].answer));
    }

    proptest::proptest! {
        /// A reference that is not a pure number (radicals, complex numbers, multiples of pi,
        /// polynomials, numbers in a base, lists) loads whole: its own text is graded right,
        /// the number it starts with and the reference with one digit changed are graded wrong.
        #[test]
        fn latex_references_load_whole(
            a in 2u32..100,
            b in 2u32..100,
            c in 2u32..10,
            form in 0usize..8,
            digit in 0usize..8,
        ) {
            let reference = match form {
                0 => format!("{a}\\sqrt{{{b}}}"),
                1 => format!("{a}+{b}i"),
                2 => format!("{a}\\pi"),
                3 => format!("{a}(x+{b})(x-{c})"),
                4 => format!("{a}{c}_{{{}}}", c + 1),
                5 => format!("{a},{b},{c}"),
                6 => format!("-\\frac{{{a}}}{{{b}}}\\sqrt{{{c}}}"),
                _ => format!("\\frac{{{a}\\pi}}{{{b}}}"),
            };
            let line = serde_json::json!({"problem": "P", "solution": format!("So $\\boxed{{{reference}}}$.")});
            let ps = records(&line.to_string(), &Fields::new("problem", "solution", None), Answers::Math).unwrap();
            let answer = &ps[0].answer;
            proptest::prop_assert!(crate::task::is_correct(&format!("\\boxed{{{reference}}}"), answer), "{answer}");
            proptest::prop_assert!(!crate::task::is_correct(&format!("The answer is {a}."), answer), "{answer}");
            // One digit changed, wherever it is.
            let digits: Vec<usize> = reference.char_indices().filter(|(_, c)| c.is_ascii_digit()).map(|(i, _)| i).collect();
            let i = digits[digit % digits.len()];
            let changed = (reference.as_bytes()[i] - b'0' + 1) % 10;
            let wrong = format!("{}{changed}{}", &reference[..i], &reference[i + 1..]);
            proptest::prop_assert!(!crate::task::is_correct(&format!("\\boxed{{{wrong}}}"), answer), "{wrong} vs {answer}");
        }
    }
}
