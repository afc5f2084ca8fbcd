//! Reading numbers and final answers out of free text (reference solutions and model output).
//!
//! Everything here works on bytes and only slices at ASCII positions, so no input can make it
//! panic; anything that is not a number simply yields `None`.

/// Extract the final answer from model text: "#### N" first (the first #### line), then "the
/// answer is N" (case-insensitive, last occurrence), then the last number in the text. None if
/// no number. Returns the normalised number text (see [`normalize_number`]).
///
/// If the first "####" line or the last "the answer is" carries no number, the next rule is
/// tried rather than giving up, so "#### (see above)" still finds a number elsewhere.
pub fn extract_answer(text: &str) -> Option<String> {
    if let Some(line) = text.lines().find(|l| l.contains("####")) {
        let pos = line.find("####").unwrap_or(0) + 4;
        if let Some(n) = first_number(&line[pos..]) {
            return Some(n);
        }
    }
    // to_ascii_lowercase keeps every byte offset, so positions found in `lower` index `text`.
    let lower = text.to_ascii_lowercase();
    const KEY: &str = "the answer is";
    let mut end = lower.len();
    while let Some(pos) = lower[..end].rfind(KEY) {
        let rest = &text[pos + KEY.len()..];
        let rest = rest.lines().next().unwrap_or("");
        if let Some(n) = first_number(rest) {
            return Some(n);
        }
        end = pos;
    }
    numbers(text, false).pop()
}

/// Normalise a number string: strip thousands separators ("1,000"), "$", "%", trailing
/// units/words, trailing ".", "+"; handle negatives, decimals, trailing ".0"/".00" -> integer,
/// simple fractions "3/4" -> "0.75". Returns canonical text (integers without decimal point;
/// other values via shortest f64 display) or None.
///
/// The text must start with the number (after optional sign, "$" and spaces); what follows it
/// is ignored, so "12 apples" is "12" but "apples 12" is None.
pub fn normalize_number(s: &str) -> Option<String> {
    let mut rest = s.trim();
    let mut neg = false;
    let mut signed = false;
    loop {
        if let Some(r) = rest.strip_prefix('$') {
            rest = r.trim_start();
        } else if let Some(r) = rest.strip_prefix(['-', '\u{2212}']).filter(|_| !signed) {
            (rest, neg, signed) = (r.trim_start(), true, true);
        } else if let Some(r) = rest.strip_prefix('+').filter(|_| !signed) {
            (rest, signed) = (r.trim_start(), true);
        } else {
            break;
        }
    }
    let (parts, _) = scan_unsigned(rest.as_bytes(), 0)?;
    parts.canonical(neg)
}

/// Parse a number string as [`normalize_number`] does, to a finite f64.
pub fn parse_number(s: &str) -> Option<f64> {
    normalize_number(s)?.parse::<f64>().ok().filter(|x| x.is_finite())
}

/// Numeric comparison with tolerance (abs diff <= 1e-6 * max(1,|b|)); false if either fails to
/// parse.
pub fn answers_match(predicted: &str, reference: &str) -> bool {
    match (parse_number(predicted), parse_number(reference)) {
        (Some(a), Some(b)) => (a - b).abs() <= 1e-6 * b.abs().max(1.0),
        _ => false,
    }
}

/// Extract + compare: is the model's text a correct solution for this reference answer?
pub fn is_correct(text: &str, reference_answer: &str) -> bool {
    extract_answer(text).is_some_and(|p| answers_match(&p, reference_answer))
}

/// The ordered intermediate results of a solution: the result of each calculator note
/// <<expr=N>> in order; for lines without notes, the number after the last "=" of an equation
/// ("3 * 4 = 12"). Used for heuristic dense rewards later.
///
/// If the solution has any calculator note at all, only notes count: GSM8K's own solutions
/// have ~2,600 note-less lines with "=" that are mostly algebra ("S + 2S = 3S"), so the notes
/// are the reliable record there. The "=" rule applies to note-free text (e.g. SVAMP-style
/// solutions or a model that never learnt the notes).
pub fn intermediate_results(solution: &str) -> Vec<f64> {
    if has_notes(solution) {
        solution.lines().flat_map(note_results).collect()
    } else {
        solution.lines().filter_map(equation_result).collect()
    }
}

/// Per line (step) variant: for each line of the solution, Option<f64> its result (same rule),
/// so rewards can be given per step.
///
/// A line with several notes gives its last note's result; every line (including empty ones
/// and the "#### N" line) gets an entry, so index i is line i of `solution.lines()`.
pub fn step_results(solution: &str) -> Vec<Option<f64>> {
    let notes = has_notes(solution);
    solution.lines().map(|l| if notes { note_results(l).last().copied() } else { equation_result(l) }).collect()
}

/// Canonical text of a finite number: integers without a decimal point, others in shortest
/// round-trip form.
pub(crate) fn format_number(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

/// The pieces of one number as written: integer digits (commas dropped), fraction digits and an
/// optional "/denominator".
struct Parts {
    int: String,
    frac: String,
    denom: Option<String>,
}

impl Parts {
    fn canonical(&self, neg: bool) -> Option<String> {
        let sign = if neg { -1.0 } else { 1.0 };
        if let Some(d) = &self.denom {
            let v = sign * self.int.parse::<f64>().ok()? / d.parse::<f64>().ok()?;
            return v.is_finite().then(|| format_number(v));
        }
        if self.frac.bytes().all(|c| c == b'0') {
            // Integer: keep the exact digits, so huge integers round-trip too.
            let digits = self.int.trim_start_matches('0');
            return Some(match (digits.is_empty(), neg) {
                (true, _) => "0".to_string(),
                (false, true) => format!("-{digits}"),
                (false, false) => digits.to_string(),
            });
        }
        let int = if self.int.is_empty() { "0" } else { &self.int };
        let v = sign * format!("{int}.{}", self.frac).parse::<f64>().ok()?;
        v.is_finite().then(|| format_number(v))
    }
}

fn digit_at(b: &[u8], i: usize) -> bool {
    b.get(i).is_some_and(u8::is_ascii_digit)
}

/// Scans an unsigned number starting exactly at `i`; returns its parts and the end offset.
fn scan_unsigned(b: &[u8], i: usize) -> Option<(Parts, usize)> {
    let mut j = i;
    let mut int = String::new();
    while digit_at(b, j) {
        int.push(b[j] as char);
        j += 1;
        // A comma is a thousands separator only when exactly three digits follow it.
        if b.get(j) == Some(&b',') && (1..=3).all(|k| digit_at(b, j + k)) && !digit_at(b, j + 4) && !int.is_empty() {
            j += 1;
        }
    }
    let mut frac = String::new();
    if b.get(j) == Some(&b'.') && digit_at(b, j + 1) {
        j += 1;
        while digit_at(b, j) {
            frac.push(b[j] as char);
            j += 1;
        }
    }
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let mut denom = None;
    if frac.is_empty() && b.get(j) == Some(&b'/') && digit_at(b, j + 1) {
        let mut k = j + 1;
        let mut d = String::new();
        while digit_at(b, k) {
            d.push(b[k] as char);
            k += 1;
        }
        // "1/0" is not a fraction; keep just the numerator.
        if d.bytes().any(|c| c != b'0') {
            denom = Some(d);
            j = k;
        }
    }
    Some((Parts { int, frac, denom }, j))
}

/// Every number in `text` as canonical text, left to right (only the first if `first_only`).
/// A "-" directly before a number (or before "$N") is its sign unless it
/// follows a letter or digit ("5-3" is a minus).
fn numbers(text: &str, first_only: bool) -> Vec<String> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let starts = digit_at(b, i) || (b[i] == b'.' && digit_at(b, i + 1));
        if !starts {
            i += 1;
            continue;
        }
        let Some((parts, end)) = scan_unsigned(b, i) else {
            i += 1;
            continue;
        };
        let mut m = i;
        if m > 0 && b[m - 1] == b'$' {
            m -= 1;
        }
        let neg = m > 0 && b[m - 1] == b'-' && (m < 2 || !b[m - 2].is_ascii_alphanumeric() && b[m - 2] != b')');
        if let Some(c) = parts.canonical(neg) {
            out.push(c);
            if first_only {
                break;
            }
        }
        i = end.max(i + 1);
    }
    out
}

/// The first number in `text`, canonical.
fn first_number(text: &str) -> Option<String> {
    numbers(text, true).pop()
}

/// The results of the calculator notes `<<expr=N>>` on one line, in order.
fn note_results(line: &str) -> Vec<f64> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(open) = rest.find("<<") {
        let body = &rest[open + 2..];
        let Some(close) = body.find(">>") else { break };
        let note = &body[..close];
        if let Some(eq) = note.rfind('=') {
            if let Some(v) = parse_number(&note[eq + 1..]) {
                out.push(v);
            }
        }
        rest = &body[close + 2..];
    }
    out
}

/// Does the text hold at least one calculator note with a readable result?
fn has_notes(solution: &str) -> bool {
    solution.lines().any(|l| !note_results(l).is_empty())
}

/// The number right after the last "=" of a line, if the line is an equation ending in a plain
/// number ("2p/5" after the "=" is algebra, not a result).
fn equation_result(line: &str) -> Option<f64> {
    let eq = line.rfind('=')?;
    let rest = line[eq + 1..].trim_start();
    let rest = rest.strip_prefix('$').unwrap_or(rest).trim_start();
    let (neg, body) = match rest.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    let (parts, end) = scan_unsigned(body.as_bytes(), 0)?;
    if body.as_bytes().get(end).is_some_and(u8::is_ascii_alphabetic) {
        return None;
    }
    parts.canonical(neg)?.parse::<f64>().ok().filter(|x| x.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn n(s: &str) -> Option<String> {
        normalize_number(s)
    }

    #[test]
    fn normalizes_hand_examples() {
        assert_eq!(n("1,000").as_deref(), Some("1000"));
        assert_eq!(n("1,234,567.50").as_deref(), Some("1234567.5"));
        assert_eq!(n("$12").as_deref(), Some("12"));
        assert_eq!(n("-$12").as_deref(), Some("-12"));
        assert_eq!(n("$ -3").as_deref(), Some("-3"));
        assert_eq!(n("45%").as_deref(), Some("45"));
        assert_eq!(n("12 apples").as_deref(), Some("12"));
        assert_eq!(n("5.00").as_deref(), Some("5"));
        assert_eq!(n("7.0").as_deref(), Some("7"));
        assert_eq!(n("12.").as_deref(), Some("12"));
        assert_eq!(n("+8").as_deref(), Some("8"));
        assert_eq!(n("-0").as_deref(), Some("0"));
        assert_eq!(n("007").as_deref(), Some("7"));
        assert_eq!(n("0.50").as_deref(), Some("0.5"));
        assert_eq!(n(".5").as_deref(), Some("0.5"));
        assert_eq!(n("3/4").as_deref(), Some("0.75"));
        assert_eq!(n("-1/2").as_deref(), Some("-0.5"));
        assert_eq!(n("1/0").as_deref(), Some("1"));
        assert_eq!(n("\u{2212}4").as_deref(), Some("-4"));
        assert_eq!(n("1,00").as_deref(), Some("1"));
        assert_eq!(n("apples"), None);
        assert_eq!(n(""), None);
        assert_eq!(n("--3"), None);
        assert_eq!(n("$"), None);
    }

    #[test]
    fn extracts_hand_examples() {
        let e = |s: &str| extract_answer(s);
        assert_eq!(e("so 3 * 4 = 12\n#### 1,000").as_deref(), Some("1000"));
        assert_eq!(e("#### 5\n#### 6").as_deref(), Some("5"));
        assert_eq!(e("The answer is 12.").as_deref(), Some("12"));
        assert_eq!(e("the answer is 3. Wait, THE ANSWER IS: $4.50").as_deref(), Some("4.5"));
        assert_eq!(e("He has 3 cats and 12 apples").as_deref(), Some("12"));
        assert_eq!(e("10 - 3 = 7").as_deref(), Some("7"));
        assert_eq!(e("it drops to -3 degrees").as_deref(), Some("-3"));
        assert_eq!(e("5-3").as_deref(), Some("3"));
        assert_eq!(e("#### none\nso 9 in all").as_deref(), Some("9"));
        assert_eq!(e("no numbers here"), None);
        assert_eq!(e("é#### ü 3"), Some("3".into()));
    }

    #[test]
    fn matches_and_correctness() {
        assert!(answers_match("1000", "1,000"));
        assert!(answers_match("0.75", "3/4"));
        assert!(answers_match("5.00", "5"));
        assert!(!answers_match("5", "6"));
        assert!(!answers_match("x", "x"));
        assert!(is_correct("so she has <<2*3=6>>6 left.\n#### 6", "6"));
        assert!(!is_correct("#### 7", "6"));
        assert!(!is_correct("", "6"));
    }

    #[test]
    fn intermediate_results_follow_notes_then_equations() {
        let s = "Natalia sold 48/2 = <<48/2=24>>24 clips.\nShe sold 48+24 = <<48+24=72>>72.\n\
                 So 5 = 5.\n#### 72";
        assert_eq!(intermediate_results(s), vec![24.0, 72.0]);
        assert_eq!(step_results(s), vec![Some(24.0), Some(72.0), None, None]);
        let plain = "(29 + 13) = 42\nThen 42 * 2 = $84.\nS = 2p/5\n#### 84";
        assert_eq!(intermediate_results(plain), vec![42.0, 84.0]);
        assert_eq!(step_results(plain), vec![Some(42.0), Some(84.0), None, None]);
        assert_eq!(intermediate_results("<<1/2=.5>> and <<3=3/4>>"), vec![0.5, 0.75]);
        assert_eq!(intermediate_results("<<unclosed=3"), vec![3.0]);
    }

    proptest! {
        #[test]
        fn never_panics_on_any_text(s in ".*") {
            let _ = extract_answer(&s);
            let _ = normalize_number(&s);
            let _ = intermediate_results(&s);
            let _ = step_results(&s);
            let _ = is_correct(&s, &s);
        }

        #[test]
        fn never_panics_on_number_like_text(s in "[0-9.,$%/#<>= \\-+a\n]{0,40}") {
            let _ = extract_answer(&s);
            let _ = normalize_number(&s);
            let _ = intermediate_results(&s);
            prop_assert_eq!(step_results(&s).len(), s.lines().count());
        }

        #[test]
        fn integers_round_trip(n in any::<i64>()) {
            let s = n.to_string();
            prop_assert_eq!(normalize_number(&s), Some(s.clone()));
            prop_assert_eq!(extract_answer(&format!("#### {s}")), Some(s));
        }

        #[test]
        fn answers_match_is_reflexive(x in -1e12f64..1e12) {
            let s = format!("{x}");
            prop_assert!(answers_match(&s, &s));
            prop_assert!(answers_match(&format_number(x), &s));
        }
    }
}
