//! GSM8K-format JSONL: one object per line with a question and a worked solution whose last
//! line is "#### N" (calculator notes like `<<48/2=24>>` inside are kept as-is).

use super::answer::normalize_number;
use super::Problem;
use crate::error::{Error, Result};
use crate::fsutil;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::Path;

/// Loads GSM8K JSONL (`question`, `answer` = solution ending in "#### N", optional `id`, else
/// id = "{file_stem}-{line_number}"). Empty lines are skipped; a malformed line, a missing
/// field or an answer without "#### N" is an error naming the file, line and field.
pub fn load_gsm8k(path: &Path) -> Result<Vec<Problem>> {
    load(path, "question", "answer", false)
}

/// Loads any JSONL file whose `question_field` holds the question and whose `answer_field`
/// holds either a GSM8K-style solution ending in "#### N" or just a number (a JSON number or a
/// string like "1,000"; its reference solution is then "#### N"). Ids as in [`load_gsm8k`].
pub fn load_jsonl(path: &Path, question_field: &str, answer_field: &str) -> Result<Vec<Problem>> {
    load(path, question_field, answer_field, true)
}

fn load(path: &Path, qf: &str, af: &str, allow_bare: bool) -> Result<Vec<Problem>> {
    let text = fsutil::read_to_string(path)?;
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "data".into());
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let ln = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let err = |msg: String| Error::line(path, ln, msg);
        let value: Value = serde_json::from_str(line).map_err(|e| err(format!("malformed JSON: {e}")))?;
        let obj = value.as_object().ok_or_else(|| err("expected a JSON object".into()))?;
        let question = text_field(obj, qf).map_err(err)?;
        let (reference_solution, answer) = solution_field(obj, af, allow_bare).map_err(err)?;
        let id = match obj.get("id") {
            None | Some(Value::Null) => format!("{stem}-{ln}"),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            Some(_) => return Err(err("field \"id\" must be a string or a number".into())),
        };
        if let Some(first) = seen.insert(id.clone(), ln) {
            return Err(err(format!("duplicate id {id:?} (first on line {first})")));
        }
        out.push(Problem { id, question: question.trim().to_string(), reference_solution, answer });
    }
    Ok(out)
}

/// A required non-empty string field.
fn text_field<'a>(obj: &'a Map<String, Value>, field: &str) -> std::result::Result<&'a str, String> {
    match obj.get(field) {
        None => Err(format!("missing field {field:?}")),
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s),
        Some(Value::String(_)) => Err(format!("field {field:?} is empty")),
        Some(_) => Err(format!("field {field:?} must be a string")),
    }
}

/// The (reference solution, canonical answer) held in the answer field.
fn solution_field(
    obj: &Map<String, Value>,
    field: &str,
    allow_bare: bool,
) -> std::result::Result<(String, String), String> {
    if let (true, Some(Value::Number(n))) = (allow_bare, obj.get(field)) {
        let a = normalize_number(&n.to_string()).ok_or_else(|| format!("field {field:?}: bad number {n}"))?;
        return Ok((format!("#### {a}"), a));
    }
    let text = text_field(obj, field)?;
    if let Some(line) = text.lines().find(|l| l.contains("####")) {
        let pos = line.find("####").unwrap_or(0) + 4;
        return match normalize_number(&line[pos..]) {
            Some(a) => Ok((text.to_string(), a)),
            None => Err(format!("field {field:?}: no number after \"####\"")),
        };
    }
    // A bare answer must look like a number through and through, not prose that happens to
    // start with one.
    let bare = text.trim().chars().all(|c| c.is_ascii_digit() || " ,.$%-+/".contains(c));
    match (allow_bare && bare, normalize_number(text)) {
        (true, Some(a)) => Ok((format!("#### {a}"), a)),
        _ => Err(format!("field {field:?} has no final \"#### N\" line")),
    }
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
            ("[1]\n".to_string(), 1, "JSON object"),
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
}
