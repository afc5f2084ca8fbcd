//! `reasonrl grade`: the answer checker on anyone's outputs. Reads JSON lines with a `response`
//! and its reference `answer` (optional `kind`: `number` or `math`), adds the `extracted` answer
//! and whether it is `correct`, and counts; with a boolean field of expected verdicts, it
//! measures the checker's agreement with them, group by group (how the README's table against
//! Math-Verify's test cases is made).

use super::answer::{extract_answer, math_reference, normalize_answer};
use super::gsm8k::{json_records, read_answer, Answers, Read, Record};
use super::number::normalize_number;
use crate::error::{Error, Result};
use serde_json::value::RawValue;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// How a reference answer is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReferenceKind {
    /// A number, as `jsonl:` files hold them: a JSON number, "1,000", "9 (apples)", a "#### N" or
    /// `\boxed{N}` solution.
    Number,
    /// A MATH answer: a solution's last `\boxed{}`, or one line of LaTeX, kept whole.
    Math,
}

/// The verdicts of one group of graded lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub lines: usize,
    pub correct: usize,
    /// With expected verdicts: lines graded as expected; graded correct where the expected
    /// verdict is wrong (false accepts); graded wrong where it is right (false rejects).
    pub agree: usize,
    pub false_accepts: usize,
    pub false_rejects: usize,
}

/// What [`grade`] found: every line, and each group (by the `by` field) apart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grades {
    pub total: Tally,
    pub groups: BTreeMap<String, Tally>,
}

/// Grades the JSON lines (or JSON array) in `path`; returns each record with `extracted` and
/// `correct` added, as one JSON line each, and the tallies. `by` names a field to group the
/// tallies by; `expect`, a boolean field of expected verdicts. Errors name the file, the line
/// and the field.
pub fn grade(path: &Path, by: Option<&str>, expect: Option<&str>) -> Result<(String, Grades)> {
    let text = crate::fsutil::read_to_string(path)?;
    let (array, records) = json_records(path, &text)?;
    let mut out = String::new();
    let mut grades = Grades::default();
    for (n, record) in records {
        let at = |msg: String| {
            if array {
                Error::file(path, format!("element {n}: {msg}"))
            } else {
                Error::line(path, n, msg)
            }
        };
        let mut record = record.map_err(&at)?;
        let (extracted, correct, group, expected) = grade_record(&record, by, expect).map_err(&at)?;
        for tally in [&mut grades.total, grades.groups.entry(group).or_default()] {
            tally.lines += 1;
            tally.correct += correct as usize;
            if let Some(expected) = expected {
                tally.agree += (correct == expected) as usize;
                tally.false_accepts += (correct && !expected) as usize;
                tally.false_rejects += (!correct && expected) as usize;
            }
        }
        record.insert("extracted".into(), raw(&Value::from(extracted)));
        record.insert("correct".into(), raw(&Value::from(correct)));
        out.push_str(&serde_json::to_string(&record).map_err(|e| at(e.to_string()))?);
        out.push('\n');
    }
    Ok((out, grades))
}

/// One record's extracted answer, verdict, group and expected verdict.
fn grade_record(
    record: &Record,
    by: Option<&str>,
    expect: Option<&str>,
) -> std::result::Result<(Option<String>, bool, String, Option<bool>), String> {
    let field = |name: &str| super::gsm8k::field(record, name);
    let Value::String(response) = field("response")? else {
        return Err("field \"response\" must be a string".into());
    };
    let kind = match record.get("kind") {
        None => None,
        Some(raw) => Some(
            serde_json::from_str::<ReferenceKind>(raw.get())
                .map_err(|_| format!("field \"kind\" must be \"number\" or \"math\", not {}", raw.get()))?,
        ),
    };
    let raw_answer = record.get("answer").ok_or("missing field \"answer\"")?;
    let number = || match read_answer(raw_answer, "answer", Answers::Numeric)? {
        Read::Answer(_, a) => Ok(Some(a)),
        Read::Unusable(_) => Ok::<_, String>(None),
    };
    let math = || match field("answer")? {
        // A reference answer may be any one line (`$125$ miles`), not only math.
        Value::String(s) => math_reference(&s)
            .or_else(|| (!s.trim().contains('\n')).then(|| normalize_answer(&s)).flatten())
            .ok_or_else(|| "field \"answer\" has no \\boxed{} answer or answer marker and is not one line".to_string()),
        Value::Number(_) => normalize_number(raw_answer.get()).ok_or_else(|| "field \"answer\": no number".into()),
        _ => Err("field \"answer\" must be a string or a number".into()),
    };
    let reference = match kind {
        Some(ReferenceKind::Number) => number()?
            .ok_or("field \"answer\" is not a number; give \"kind\": \"math\" to compare it as a LaTeX answer")?,
        Some(ReferenceKind::Math) => math()?,
        None => match number() {
            Ok(Some(a)) => a,
            _ => math()?,
        },
    };
    let extracted = extract_answer(&response);
    let correct = extracted.as_deref().is_some_and(|a| super::answers_match(a, &reference));
    let group = match by {
        Some(name) => match field(name)? {
            Value::String(s) => s,
            other => other.to_string(),
        },
        None => String::new(),
    };
    let expected = match expect {
        Some(name) => match field(name)? {
            Value::Bool(b) => Some(b),
            Value::Number(n) if n.as_u64().is_some_and(|n| n <= 1) => Some(n.as_u64() == Some(1)),
            _ => return Err(format!("field {name:?} must be true or false (or 1 or 0)")),
        },
        None => None,
    };
    Ok((extracted, correct, group, expected))
}

fn raw(v: &Value) -> Box<RawValue> {
    RawValue::from_string(v.to_string()).expect("a serialised Value is valid JSON")
}

/// The tallies as a markdown table: one row per group, then all; agreement columns when there
/// were expected verdicts.
pub fn table(grades: &Grades, expected: bool) -> String {
    let pct = |a: usize, b: usize| if b == 0 { 0.0 } else { 100.0 * a as f64 / b as f64 };
    let mut md = if expected {
        "| group | lines | agree | false accepts | false rejects |\n|---|---:|---:|---:|---:|\n".to_string()
    } else {
        "| group | lines | correct |\n|---|---:|---:|\n".to_string()
    };
    let rows = grades.groups.iter().filter(|_| grades.groups.len() > 1).map(|(g, t)| (g.as_str(), t));
    for (name, t) in rows.chain([("all", &grades.total)]) {
        md.push_str(&if expected {
            let agree = format!("{} ({:.1}%)", t.agree, pct(t.agree, t.lines));
            format!("| {name} | {} | {agree} | {} | {} |\n", t.lines, t.false_accepts, t.false_rejects)
        } else {
            format!("| {name} | {} | {} ({:.1}%) |\n", t.lines, t.correct, pct(t.correct, t.lines))
        });
    }
    md
}
