//! Reading numbers and final answers out of free text (reference solutions and model output).
//!
//! Everything here works on bytes and only slices at ASCII positions, so no input can make it
//! panic; anything that is not a number simply yields `None`.

/// Extract the final answer from model text. Explicit markers come first, each taking the
/// number right after it (on the same line, after optional ":", "$", a sign, and the markdown or
/// LaTeX a chat model wraps it in: `**`, `*`, `__`, `\(`, `\[`, `\$`), so text that
/// follows an answer ("A: 18 dollars for 2 days", a next question) never overrides it:
///
/// 1. `#### N`, the first `####` followed by a number (a markdown heading "#### Step 1" is not
///    an answer);
/// 2. "the answer is N" or "the final answer is N" (case-insensitive; the last one that holds
///    a number, so a model that corrects itself is read at its correction);
/// 3. "Answer: N" or "A: N" (the first, at a word start);
/// 4. `\boxed{N}` (the last).
///
/// Then the last number in the text. None if no number. After a marker, digits grouped in
/// threes by spaces ("57 500", narrow and no-break spaces too) are one number; scientific
/// notation ("2.0107e-06") is read everywhere. Returns the canonical number text (see
/// [`normalize_number`]).
pub fn extract_answer(text: &str) -> Option<String> {
    marked_answer(text).or_else(|| numbers(text).pop())
}

/// The number of the first `####` that a number follows: a GSM8K solution's final answer.
pub fn marked_solution_answer(text: &str) -> Option<String> {
    text.match_indices("####").find_map(|(i, m)| number_after_marker(&text[i + m.len()..]))
}

/// The answer an explicit marker gives, by the precedence of [`extract_answer`].
fn marked_answer(text: &str) -> Option<String> {
    let after = |i: usize| number_after_marker(&text[i..]);
    // to_ascii_lowercase keeps every byte offset, so positions found in `lower` index `text`.
    let lower = text.to_ascii_lowercase();
    let word_start = |i: usize| i == 0 || !lower.as_bytes()[i - 1].is_ascii_alphanumeric();
    let labelled = || {
        let at = ["answer:", "a:"]
            .iter()
            .flat_map(|label| lower.match_indices(label).filter(|(i, _)| word_start(*i)).map(|(i, m)| i + m.len()));
        at.collect::<std::collections::BTreeSet<_>>().into_iter().find_map(after)
    };
    // "the answer is" and Minerva's "the final answer is": the last one that holds a number.
    let stated = || {
        let at = ["the answer is", "final answer is"]
            .iter()
            .flat_map(|is| lower.match_indices(is).map(|(i, m)| i + m.len()));
        at.collect::<std::collections::BTreeSet<_>>().into_iter().rev().find_map(after)
    };
    marked_solution_answer(text)
        .or_else(stated)
        .or_else(labelled)
        .or_else(|| boxed_contents(text).into_iter().rev().find_map(|inner| normalize_answer(&inner)))
}

/// A final answer as compared: a number's canonical text (see [`normalize_number`]), or else
/// the LaTeX answer normalised as MATH's graders do: `\text{..}` unwrapped, `\left`/`\right`,
/// `^\circ`, `\%`, `$` and spaces dropped, `\dfrac`/`\tfrac` read as `\frac`, `\frac12` and
/// `\sqrt2` braced, and a `\frac{a}{b}` of two numbers computed. None for empty text.
pub fn normalize_answer(s: &str) -> Option<String> {
    let mut t = s.trim().to_string();
    // \text{..} is unwrapped, unless it ends an answer that has more before it: a unit, dropped.
    while let Some(i) = t.find("\\text{") {
        let inner = braced(&t[i + 5..])?;
        let end = i + 5 + inner.len() + 2;
        let unit = i > 0 && t[end..].trim().is_empty();
        t = format!("{}{}{}", &t[..i], if unit { "" } else { inner.as_str() }, &t[end..]);
    }
    for (from, to) in [
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
        ("\\left", ""),
        ("\\right", ""),
        ("^{\\circ}", ""),
        ("^\\circ", ""),
        ("\\%", ""),
        ("%", ""),
        ("\\$", ""),
        ("$", ""),
        ("\\!", ""),
        ("\\,", ""),
        ("\\;", ""),
        (" ", ""),
    ] {
        t = t.replace(from, to);
    }
    // \frac12 -> \frac{1}{2}, \sqrt2 -> \sqrt{2}
    for cmd in ["\\frac", "\\sqrt"] {
        let mut out = String::new();
        let mut rest = t.as_str();
        while let Some(i) = rest.find(cmd) {
            out.push_str(&rest[..i + cmd.len()]);
            rest = &rest[i + cmd.len()..];
            let args = if cmd == "\\frac" { 2 } else { 1 };
            for _ in 0..args {
                match rest.chars().next() {
                    Some(c) if c != '{' && c != '\\' => {
                        out.push_str(&format!("{{{c}}}"));
                        rest = &rest[c.len_utf8()..];
                    }
                    _ => break,
                }
            }
        }
        out.push_str(rest);
        t = out;
    }
    if let Some(v) = numeric_fraction(&t) {
        return Some(v);
    }
    let numeric = t.trim_start_matches(['-', '+']).chars().all(|c| c.is_ascii_digit() || ".,/".contains(c));
    match normalize_number(&t) {
        Some(n) if numeric => Some(n),
        _ if t.is_empty() => None,
        _ => Some(t),
    }
}

/// `\\frac{a}{b}` of two numbers, and nothing else, as the number a / b.
fn numeric_fraction(t: &str) -> Option<String> {
    let args = t.strip_prefix("\\frac")?;
    let num = braced(args)?;
    let rest = &args[num.len() + 2..];
    let den = braced(rest)?;
    if rest.len() != den.len() + 2 {
        return None;
    }
    let (a, b) = (parse_number(&num)?, parse_number(&den)?);
    (b != 0.0).then(|| format_number(a / b))
}

/// The text inside the braces that open `s` ("{a{b}c}rest" gives "a{b}c"), if they close.
fn braced(s: &str) -> Option<String> {
    let body = s.strip_prefix('{')?;
    let mut depth = 1usize;
    for (j, c) in body.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            _ => {}
        }
        if depth == 0 {
            return Some(body[..j].to_string());
        }
    }
    None
}

/// The number at the start of `rest` (the text right after a marker), on its line: spaces, an
/// optional ":", "$", sign or `\boxed{` may come first.
fn number_after_marker(rest: &str) -> Option<String> {
    let mut line = rest.lines().next().unwrap_or("").trim_start();
    // What chat models wrap a marker or its answer in: `**Answer:** N`, `Answer: **N**`,
    // `\(N\)`, `\$N`, Minerva's `$N$`.
    while let Some(inner) = [":", "**", "*", "__", "\\(", "\\[", "\\$"].iter().find_map(|d| line.strip_prefix(d)) {
        line = inner.trim_start();
    }
    if line.starts_with("\\boxed{") {
        return boxed_contents(line).first().and_then(|inner| normalize_answer(inner));
    }
    normalize_number(line)
}

/// The contents of every `\boxed{...}` in `text`, braces balanced, in order.
pub fn boxed_contents(text: &str) -> Vec<String> {
    const OPEN: &str = "\\boxed";
    text.match_indices(OPEN).filter_map(|(i, _)| braced(&text[i + OPEN.len()..])).collect()
}

/// Normalise a number string: strip "$", "%", trailing units/words, trailing ".", "+"; handle
/// negatives, decimals, scientific notation ("2.0107e-06", "1E16"), thousands separators
/// (commas, or spaces, narrow or no-break spaces, between groups of exactly three digits:
/// "1,000", "57 500"), trailing ".0"/".00" -> integer, simple fractions "3/4" -> "0.75", a
/// `\boxed{}` around it. Returns canonical text (integers as exact digits without a decimal
/// point, decimals as exact decimal digits, fractions via the shortest f64 display) or None.
///
/// Decimal commas are not read: a comma is a thousands separator only when exactly three digits
/// follow it (and the integer part has at most three digits before the first one); otherwise
/// the number ends at the comma, so "3,5" is 3 and "1,00" is 1.
///
/// The text must start with the number (after optional sign, "$" and spaces); what follows it
/// is ignored, so "12 apples" is "12" but "apples 12" is None.
pub fn normalize_number(s: &str) -> Option<String> {
    let mut rest = s.trim();
    if let Some(inner) = rest.strip_prefix("\\boxed{").and_then(|_| boxed_contents(rest).into_iter().next()) {
        return normalize_number(&inner);
    }
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
    let (parts, _) = scan_unsigned(rest.as_bytes(), 0, true)?;
    parts.canonical(neg)
}

/// Parse a number string as [`normalize_number`] does, to a finite f64.
pub fn parse_number(s: &str) -> Option<f64> {
    normalize_number(s)?.parse::<f64>().ok().filter(|x| x.is_finite())
}

/// Do two numbers agree? Integers must be equal digit for digit (so 20-digit answers compare
/// exactly); anything else within a relative 1e-9 of the reference's magnitude, which absorbs
/// the rounding of a fraction's decimal form ("1/3") but tells 2.0107e-6 from 2.0108e-6. False
/// if either is not a number.
pub fn answers_match(predicted: &str, reference: &str) -> bool {
    let (Some(p), Some(r)) = (normalize_number(predicted), normalize_number(reference)) else {
        // Not both numbers: LaTeX answers ("\\sqrt{2}") compare as normalised text.
        return normalize_answer(predicted).is_some_and(|p| Some(p) == normalize_answer(reference));
    };
    let integer = |s: &str| s.trim_start_matches('-').bytes().all(|c| c.is_ascii_digit());
    if integer(&p) && integer(&r) {
        return p == r;
    }
    match (p.parse::<f64>(), r.parse::<f64>()) {
        (Ok(a), Ok(b)) if a.is_finite() && b.is_finite() => (a - b).abs() <= 1e-9 * b.abs().max(1e-300),
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

/// The pieces of one number as written: integer digits (separators dropped), fraction digits,
/// a power-of-ten exponent and an optional "/denominator".
struct Parts {
    int: String,
    frac: String,
    exp: i32,
    denom: Option<String>,
}

/// Exponents beyond this make no answer anyone writes; such text is not a number.
const MAX_EXPONENT: i32 = 400;

impl Parts {
    fn canonical(&self, neg: bool) -> Option<String> {
        let sign = if neg { -1.0 } else { 1.0 };
        if let Some(d) = &self.denom {
            let v = sign * self.int.parse::<f64>().ok()? / d.parse::<f64>().ok()?;
            return v.is_finite().then(|| format_number(v));
        }
        // Exact decimal digits: all the digits, with the point moved by the exponent.
        let digits = format!("{}{}", self.int, self.frac);
        let point = self.int.len() as i64 + self.exp as i64;
        let (int, frac) = if point <= 0 {
            (String::new(), format!("{}{digits}", "0".repeat(point.unsigned_abs() as usize)))
        } else if point as usize >= digits.len() {
            (format!("{digits}{}", "0".repeat(point as usize - digits.len())), String::new())
        } else {
            (digits[..point as usize].to_string(), digits[point as usize..].to_string())
        };
        let body = match (int.trim_start_matches('0'), frac.trim_end_matches('0')) {
            ("", "") => return Some("0".into()),
            (int, "") => int.to_string(),
            ("", frac) => format!("0.{frac}"),
            (int, frac) => format!("{int}.{frac}"),
        };
        Some(if neg { format!("-{body}") } else { body })
    }
}

fn digit_at(b: &[u8], i: usize) -> bool {
    b.get(i).is_some_and(u8::is_ascii_digit)
}

/// The length of a thousands separator at `j` (a comma; with `spaced`, also a space, a no-break
/// space U+00A0, a thin space U+2009 or a narrow no-break space U+202F), if it is one: exactly
/// three digits must follow it.
fn separator_at(b: &[u8], j: usize, spaced: bool) -> Option<usize> {
    let len = match b.get(j..)? {
        [b',', ..] => 1,
        [b' ', ..] if spaced => 1,
        [0xC2, 0xA0, ..] if spaced => 2,
        [0xE2, 0x80, 0x89, ..] | [0xE2, 0x80, 0xAF, ..] if spaced => 3,
        _ => return None,
    };
    ((0..3).all(|k| digit_at(b, j + len + k)) && !digit_at(b, j + len + 3)).then_some(len)
}

/// Scans an unsigned number starting exactly at `i`; returns its parts and the end offset.
/// Thousands separators are taken only after a group of one to three digits and between groups
/// of three (see [`separator_at`]; spaces only with `spaced`).
fn scan_unsigned(b: &[u8], i: usize, spaced: bool) -> Option<(Parts, usize)> {
    let mut j = i;
    let mut int = String::new();
    let mut group = 0;
    let mut grouped = false;
    while digit_at(b, j) {
        int.push(b[j] as char);
        j += 1;
        group += 1;
        if let Some(len) = separator_at(b, j, spaced).filter(|_| group == 3 || (!grouped && group <= 3)) {
            j += len;
            (group, grouped) = (0, true);
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
    // Scientific notation: e or E, an optional sign, digits, and no letter right after.
    let mut exp = 0;
    if matches!(b.get(j), Some(b'e' | b'E')) {
        let k = j + 1 + matches!(b.get(j + 1), Some(b'+' | b'-')) as usize;
        let mut end = k;
        while digit_at(b, end) {
            end += 1;
        }
        if end > k && !b.get(end).is_some_and(u8::is_ascii_alphabetic) {
            let text = std::str::from_utf8(&b[j + 1..end]).ok()?;
            exp = text.parse::<i32>().ok().filter(|e| e.abs() <= MAX_EXPONENT)?;
            j = end;
        }
    }
    let mut denom = None;
    if frac.is_empty() && exp == 0 && b.get(j) == Some(&b'/') && digit_at(b, j + 1) {
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
    Some((Parts { int, frac, exp, denom }, j))
}

/// Every number in `text` as canonical text, left to right.
/// A "-" directly before a number (or before "$N") is its sign unless it
/// follows a letter or digit ("5-3" is a minus).
fn numbers(text: &str) -> Vec<String> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let starts = digit_at(b, i) || (b[i] == b'.' && digit_at(b, i + 1));
        if !starts {
            i += 1;
            continue;
        }
        let Some((parts, end)) = scan_unsigned(b, i, false) else {
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
        }
        i = end.max(i + 1);
    }
    out
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
    let (parts, end) = scan_unsigned(body.as_bytes(), 0, false)?;
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

    /// "1234567.5" with `sep` between groups of three integer digits: "1 234 567.5".
    fn grouped(number: &str, sep: &str) -> String {
        let (whole, frac) = number.split_once('.').map_or((number, None), |(w, f)| (w, Some(f)));
        let digits: Vec<char> = whole.chars().collect();
        let groups: Vec<String> = digits.rchunks(3).rev().map(|g| g.iter().collect()).collect();
        groups.join(sep) + &frac.map(|f| format!(".{f}")).unwrap_or_default()
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
        assert_eq!(e("é#### ü 3\n"), Some("3".into()), "no number right after ####: the last number");
    }

    #[test]
    fn a_marker_is_never_overridden_by_later_text() {
        let e = |s: &str| extract_answer(s);
        assert_eq!(e("A: 18\nQuestion: Tom has 5 apples and buys 7.").as_deref(), Some("18"));
        assert_eq!(e("Answer: 18 eggs (about 2 dozen).").as_deref(), Some("18"));
        assert_eq!(e("A: 18 dollars for 2 days").as_deref(), Some("18"));
        assert_eq!(e("#### Step 1: add 3 and 4\n3 + 4 = 7\n#### 7\nThen 9 more").as_deref(), Some("7"));
        assert_eq!(e("#### Step 1: add\n3 + 4 = 7").as_deref(), Some("7"), "a heading is no answer");
        assert_eq!(e("#### 57 500").as_deref(), Some("57500"));
        assert_eq!(e("#### 57\u{202f}500 people").as_deref(), Some("57500"));
        assert_eq!(e("The answer is 2.0107e-06.").as_deref(), Some("0.0000020107"));
        assert_eq!(e("so x = 2.5E21").as_deref(), Some("2500000000000000000000"));
        assert_eq!(e("We get \\boxed{\\frac{1}{2}} and then \\boxed{42}, done 7").as_deref(), Some("42"));
        assert_eq!(e("the answer is \\boxed{12} (not 13)").as_deref(), Some("12"));
        assert_eq!(e("DATA: 5 rows, 9 cols").as_deref(), Some("9"), "A: inside a word is no label");
        assert_eq!(e("I have 2 100 dollar bills").as_deref(), Some("100"), "spaces join digits only after a marker");
    }

    #[test]
    fn exact_comparison() {
        assert!(answers_match("12345678901234567890", "12345678901234567890"));
        assert!(!answers_match("12345678901234567891", "12345678901234567890"));
        assert!(answers_match("0.0000020107", "2.0107e-6"));
        assert!(!answers_match("0.0000025", "2.0107e-6"), "tolerance is relative to the reference");
        assert!(!answers_match("2.0107", "2.0107e-6"));
        assert!(answers_match("1e16", "10000000000000000"));
        assert!(!answers_match("1", "1e16"));
        assert!(answers_match("0.3333333333", "1/3"));
        assert!(!answers_match("0.33", "1/3"));
        assert!(answers_match("0", "-0"));
        // Decimal commas are not read: "3,5" is 3 (a comma needs three digits after it).
        assert_eq!(n("3,5").as_deref(), Some("3"));
        assert_eq!(n("1 234 567").as_deref(), Some("1234567"));
        assert_eq!(n("1234,567").as_deref(), Some("1234"), "a first group has at most three digits");
        assert_eq!(n("\\boxed{1,080}").as_deref(), Some("1080"));
        assert_eq!(n("1e999"), None);
    }

    #[test]
    fn matches_and_correctness() {
        assert!(answers_match("1000", "1,000"));
        assert!(answers_match("0.75", "3/4"));
        assert!(answers_match("5.00", "5"));
        assert!(!answers_match("5", "6"));
        assert!(!answers_match("x", "5"));
        assert!(answers_match("\\sqrt{2}", "\\sqrt2"), "LaTeX answers compare as normalised text");
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
            let _ = normalize_answer(&s);
            let _ = intermediate_results(&s);
            let _ = step_results(&s);
            let _ = is_correct(&s, &s);
        }

        #[test]
        fn never_panics_on_latex_like_text(s in "(\\\\(boxed|frac|dfrac|sqrt|text|left|right)|[{}0-9a-z ^$%.,:\\-]){0,16}") {
            let _ = extract_answer(&s);
            let _ = normalize_answer(&s);
            let _ = answers_match(&s, &s);
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

        /// However the answer is written and whatever follows it, the reference is read back
        /// exactly, and a different number never is.
        #[test]
        fn every_answer_format_is_read_back(
            int in 0u64..10_000_000_000,
            cents in proptest::option::of(1u32..100),
            small in 0u64..1_000_000,
            format in 0usize..7,
            tail in "[ a-zA-Z0-9.,?()\n]{0,30}",
            other in 1u64..1000,
        ) {
            // Integers of up to ten digits; decimals of up to eight significant digits (a
            // different integer part is then a relative change above the 1e-9 tolerance).
            let int = if cents.is_some() { small } else { int };
            let reference = match cents {
                Some(c) => format!("{int}.{c:02}"),
                None => int.to_string(),
            };
            let write = |r: &str| match format {
                0 => format!("#### {r}"),
                1 => format!("So the answer is {r}"),
                2 => format!("Answer: {r}"),
                3 => format!("A: {r}"),
                4 => format!("\\boxed{{{r}}}"),
                5 => format!("#### {}", grouped(r, " ")),
                _ => format!("The answer is ${}", grouped(r, ",")),
            };
            // The tail starts on a new line, as text after an answer does.
            let text = format!("{}\n{tail}", write(&reference));
            prop_assert!(is_correct(&text, &reference), "{:?} vs {}", text, reference);
            let wrong = reference.replacen(&int.to_string(), &(int + other).to_string(), 1);
            let text = format!("{}\n{tail}", write(&wrong));
            prop_assert!(!is_correct(&text, &reference), "{:?} vs {}", text, reference);
        }

        /// The marker forms chat models write, with more text and other numbers after them on
        /// the same line, are read as their marker, never as the last number.
        #[test]
        fn chat_model_markers_win_over_the_numbers_after_them(
            answer in -100_000i64..100_000,
            form in 0usize..7,
            tail in "[ a-zA-Z.,?()]{0,20}",
            other in 1i64..1000,
        ) {
            let r = answer.to_string();
            let text = match form {
                0 => format!("**Answer:** {r}{tail} {other}"),
                1 => format!("Answer: **{r}**{tail} {other}"),
                2 => format!("The answer is **{r}**.{tail} {other}"),
                3 => format!("The answer is \\({r}\\).{tail} {other}"),
                4 => format!("The answer is \\${r}.{tail} {other}"),
                5 => format!("Final Answer: The final answer is ${r}$. I hope it is correct.{tail} {other}"),
                _ => format!("We get {other}.\n\n**Final answer:** \\[{r}\\]{tail} {other}"),
            };
            prop_assert_eq!(extract_answer(&text), Some(r.clone()), "{:?}", text);
            prop_assert!(!is_correct(&text, &(answer + other).to_string()), "{:?}", text);
        }

        #[test]
        fn answers_match_is_reflexive(x in -1e12f64..1e12) {
            let s = format!("{x}");
            prop_assert!(answers_match(&s, &s));
            prop_assert!(answers_match(&format_number(x), &s));
        }
    }
}
