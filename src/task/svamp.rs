//! SVAMP (Patel et al. 2021): a JSON array of one-step word problems with an equation and a
//! numeric answer. It has no worked solutions, so one is synthesised from the equation.

use super::number::{format_number, normalize_number};
use super::{fnv1a, Problem, Split};
use crate::error::{Error, Result};
use crate::fsutil;
use std::path::Path;

#[derive(serde::Deserialize)]
struct Raw {
    #[serde(rename = "ID", alias = "id")]
    id: String,
    #[serde(rename = "Body", alias = "body")]
    body: String,
    #[serde(rename = "Question", alias = "question")]
    question: String,
    #[serde(rename = "Equation", alias = "equation")]
    equation: String,
    #[serde(rename = "Answer", alias = "answer")]
    answer: f64,
}

/// Loads SVAMP: the JSON array of SVAMP.json, or the JSON lines of its copies, of objects with
/// "ID", "Body", "Question", "Equation", "Answer" (a number such as 27.0) and "Type" (ignored);
/// lower-case names are read too. The question is Body + " " + Question with whitespace
/// collapsed; the reference solution is "<equation> = <answer>\n#### <answer>" with numbers
/// normalised, e.g. "(29 + 13) = 42\n#### 42". Errors name the line (or the array's entry).
pub fn load_svamp(path: &Path) -> Result<Vec<Problem>> {
    let text = fsutil::read_to_string(path)?;
    let array = text.trim_start().starts_with('[');
    let raw: Vec<(usize, Raw)> = if array {
        // serde_json reports the line of a malformed entry or missing field, so errors point there.
        let raw: Vec<Raw> =
            serde_json::from_str(&text).map_err(|e| Error::line(path, e.line(), format!("bad SVAMP data: {e}")))?;
        raw.into_iter().enumerate().map(|(i, r)| (i + 1, r)).collect()
    } else {
        let lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
        let read = |(i, line): (usize, &str)| {
            serde_json::from_str(line)
                .map(|r| (i + 1, r))
                .map_err(|e| Error::line(path, i + 1, format!("bad SVAMP data: {e}")))
        };
        lines.map(read).collect::<Result<_>>()?
    };
    let mut out = Vec::with_capacity(raw.len());
    for (n, r) in raw {
        let at = |what: &str| {
            let msg = format!("ID {:?}: {what}", r.id);
            if array {
                Error::file(path, format!("entry {n} ({msg})"))
            } else {
                Error::line(path, n, msg)
            }
        };
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

    /// The JSON-lines copies of SVAMP (one object a line, names in either case) load as the
    /// array does; an error names the line.
    #[test]
    fn reads_json_lines_copies() {
        let array = file(
            r#"[{"ID": "chal-1", "Body": "B1.", "Question": "Q1?", "Equation": "( 1.0 + 2.0 )", "Answer": 3.0},
                {"ID": "chal-2", "Body": "B2.", "Question": "Q2?", "Equation": "( 6.0 / 4.0 )", "Answer": 1.5}]"#,
        );
        let lines = file(
            "{\"ID\": \"chal-1\", \"Body\": \"B1.\", \"Question\": \"Q1?\", \"Equation\": \"( 1.0 + 2.0 )\", \"Answer\": 3.0, \"Type\": \"Addition\"}\n\n\
             {\"id\": \"chal-2\", \"body\": \"B2.\", \"question\": \"Q2?\", \"equation\": \"( 6.0 / 4.0 )\", \"answer\": 1.5}\n",
        );
        assert_eq!(load_svamp(lines.path()).unwrap(), load_svamp(array.path()).unwrap());
        let bad = file("{\"ID\": \"a\", \"Body\": \"B\", \"Question\": \"Q\", \"Equation\": \"1\", \"Answer\": 1}\n{\"ID\": \"b\"}\n");
        let msg = load_svamp(bad.path()).unwrap_err().to_string();
        assert!(msg.starts_with(&format!("{}:2:", bad.path().display())) && msg.contains("Body"), "{msg}");
    }

    #[test]
    fn split_is_about_eighty_twenty() {
        let test = (0..1000).filter(|i| split_of(&format!("chal-{i}")) == Split::Test).count();
        assert!((150..250).contains(&test), "{test}");
    }
}
