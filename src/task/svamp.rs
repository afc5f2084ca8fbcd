//! SVAMP (Patel et al. 2021): a JSON array of one-step word problems with an equation and a
//! numeric answer. It has no worked solutions, so one is synthesised from the equation.

use super::number::{format_number, normalize_number};
use super::{fnv1a, Problem, Split};
use crate::error::{Error, Result};
use crate::fsutil;
use std::path::Path;

#[derive(serde::Deserialize)]
struct Raw {
    #[serde(rename = "ID")]
    id: String,
    #[serde(rename = "Body")]
    body: String,
    #[serde(rename = "Question")]
    question: String,
    #[serde(rename = "Equation")]
    equation: String,
    #[serde(rename = "Answer")]
    answer: f64,
}

/// Loads SVAMP.json: objects with "ID", "Body", "Question", "Equation", "Answer" (a number such
/// as 27.0) and "Type" (ignored). The question is Body + " " + Question with whitespace
/// collapsed; the reference solution is "<equation> = <answer>\n#### <answer>" with numbers
/// normalised, e.g. "(29 + 13) = 42\n#### 42".
pub fn load_svamp(path: &Path) -> Result<Vec<Problem>> {
    let text = fsutil::read_to_string(path)?;
    // serde_json reports the line of a malformed entry or missing field, so errors point there.
    let raw: Vec<Raw> =
        serde_json::from_str(&text).map_err(|e| Error::line(path, e.line(), format!("bad SVAMP data: {e}")))?;
    let mut out = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        let at = |what: &str| Error::file(path, format!("entry {} (ID {:?}): {what}", i + 1, r.id));
        if !r.answer.is_finite() {
            return Err(at("\"Answer\" is not a finite number"));
        }
        let question = squash(&format!("{} {}", r.body, r.question));
        if r.body.trim().is_empty() || r.question.trim().is_empty() {
            return Err(at("empty \"Body\" or \"Question\""));
        }
        let answer = format_number(r.answer);
        let equation = equation_text(&r.equation);
        if equation.is_empty() {
            return Err(at("empty \"Equation\""));
        }
        out.push(Problem {
            id: r.id,
            question,
            reference_solution: format!("{equation} = {answer}\n#### {answer}"),
            answer,
        });
    }
    Ok(out)
}

/// SVAMP's split: Test iff FNV-1a(ID) % 5 == 0 (about 20%). SVAMP ships no official split;
/// hashing the ID keeps the split fixed whatever the file order or subset.
pub fn split_of(id: &str) -> Split {
    if fnv1a(id).is_multiple_of(5) {
        Split::Test
    } else {
        Split::Train
    }
}

/// Collapses runs of whitespace to one space and trims.
fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// "( ( 3.0 + 4.0 ) * 2.0 )" -> "((3 + 4) * 2)": numbers normalised, spacing tidied.
fn equation_text(eq: &str) -> String {
    let mut out = String::new();
    let mut num = String::new();
    for c in eq.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        if !num.is_empty() {
            out.push_str(&normalize_number(&num).unwrap_or_else(|| num.clone()));
            num.clear();
        }
        out.push(c);
    }
    squash(&out).replace("( ", "(").replace(" )", ")")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(content: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(content.as_bytes()).unwrap();
        f
    }

    #[test]
    fn loads_and_synthesises_solutions() {
        let f = file(
            r#"[{"ID": "chal-1", "Body": "Each pack costs 76 dollars.  ", "Question": " How much?",
                 "Equation": "( ( 29.0 + 13.0 ) * 2.0 )", "Answer": 84.0, "Type": "x"},
                {"ID": "chal-2", "Body": "B", "Question": "Q", "Equation": "( 1.0 / 4.0 )", "Answer": 0.25}]"#,
        );
        let ps = load_svamp(f.path()).unwrap();
        assert_eq!(ps[0].question, "Each pack costs 76 dollars. How much?");
        assert_eq!(ps[0].reference_solution, "((29 + 13) * 2) = 84\n#### 84");
        assert_eq!(ps[0].answer, "84");
        assert_eq!(ps[1].reference_solution, "(1 / 4) = 0.25\n#### 0.25");
        assert_eq!(super::super::extract_answer(&ps[1].reference_solution).as_deref(), Some("0.25"));
    }

    #[test]
    fn errors_name_file_and_line() {
        let f = file("[\n{\"ID\": \"a\", \"Body\": \"B\",\n \"Equation\": \"1\", \"Answer\": 1.0}\n]");
        let msg = load_svamp(f.path()).unwrap_err().to_string();
        assert!(msg.starts_with(&format!("{}:3:", f.path().display())), "{msg}");
        assert!(msg.contains("Question"), "{msg}");
        let g = file("[{\"ID\": \"a\", \"Body\": \" \", \"Question\": \"Q\", \"Equation\": \"1\", \"Answer\": 1}]");
        assert!(load_svamp(g.path()).unwrap_err().to_string().contains("\"a\""));
    }

    #[test]
    fn split_is_about_eighty_twenty() {
        let test = (0..1000).filter(|i| split_of(&format!("chal-{i}")) == Split::Test).count();
        assert!((150..250).contains(&test), "{test}");
    }
}
