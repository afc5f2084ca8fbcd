//! Reading numbers and final answers out of free text (reference solutions and model output).
//!
//! Everything here works on bytes and only slices at ASCII positions, so no input can make it
//! panic; anything that is not a number simply yields `None`. LaTeX is [`latex`]'s business.

pub use super::latex::boxed_contents;
use super::latex::{self, braced};
use super::number::{digit_at, number_prefix, parse_number, scan_unsigned, whole_number};

/// Extract the final answer from model text. Explicit markers come first, each taking the
/// answer right after it, so text that follows an answer ("A: 18 dollars for 2 days", a next
/// question) never overrides it:
///
/// 1. `#### N`, the first `####` followed by an answer (a markdown heading "#### Step 1" is
///    not one);
/// 2. "the answer is N" or "the final answer is N" (case-insensitive; the last one that holds
///    an answer, so a model that corrects itself is read at its correction);
/// 3. "Answer: N" or "A: N" (the first, at a word start);
/// 4. `\boxed{N}` or `\boxed N` (the last).
///
/// After a marker come optional ":" and the markdown or LaTeX a chat model wraps an answer in
/// (`**`, `*`, `__`, `\$`); then a math span (`$..$`, `\(..\)`, `\[..\]`) is read whole, and
/// bare text is read as a number ("12 apples" is 12) unless the expression goes on ("6+9i",
/// "2\sqrt{5}", "52_8", "4,6,14,15" are LaTeX answers, never their first number). Digits
/// grouped in threes by spaces ("57 500") are one number there.
///
/// Without a marker: the last number or math span holding a digit (a span read whole,
/// `$\frac{1}{8}$` as 0.125, `$10,\!080$` as 10080, after its last "=" when it is a chain of
/// equalities); a number glued to a letter ("H2O", "x2") is not one. None if there is neither.
/// Returns the canonical answer (see [`normalize_answer`]).
///
/// A thinking model's answer follows its thought: only the text after the last `</think>` is
/// read, and a thought that never closed (`<think>` alone) has no answer yet.
pub fn extract_answer(text: &str) -> Option<String> {
    let text = match text.rfind("</think>") {
        Some(i) => &text[i + "</think>".len()..],
        None if text.contains("<think>") => return None,
        None => text,
    };
    marked_answer(text).or_else(|| last_answer(text))
}

/// The answer of the first `####` that an answer follows: a GSM8K solution's final answer.
pub fn marked_solution_answer(text: &str) -> Option<String> {
    text.match_indices("####").find_map(|(i, m)| answer_after_marker(&text[i + m.len()..]))
}

/// The answer an explicit marker gives, by the precedence of [`extract_answer`].
fn marked_answer(text: &str) -> Option<String> {
    let after = |i: usize| answer_after_marker(&text[i..]);
    // to_ascii_lowercase keeps every byte offset, so positions found in `lower` index `text`.
    let lower = text.to_ascii_lowercase();
    let word_start = |i: usize| i == 0 || !lower.as_bytes()[i - 1].is_ascii_alphanumeric();
    let labelled = || {
        let at = ["answer:", "a:"]
            .iter()
            .flat_map(|label| lower.match_indices(label).filter(|(i, _)| word_start(*i)).map(|(i, m)| i + m.len()));
        at.collect::<std::collections::BTreeSet<_>>().into_iter().find_map(after)
    };
    // "the answer is" and Minerva's "the final answer is": the last one that holds an answer.
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

/// The answer at the start of `rest`, the text right after a marker (see [`extract_answer`]).
fn answer_after_marker(rest: &str) -> Option<String> {
    let mut s = rest.trim_start_matches([' ', '\t']);
    // What chat models wrap a marker or its answer in: `**Answer:** N`, `Answer: **N**`, `\$N`.
    while let Some(inner) = [":", "**", "*", "__", "\\$"].iter().find_map(|d| s.strip_prefix(d)) {
        s = inner.trim_start_matches([' ', '\t']);
    }
    if let Some(&(0, _, content)) = latex::math_spans(s).first() {
        if latex::math_like(content) {
            return span_answer(content);
        }
    }
    if s.starts_with("\\boxed") {
        return boxed_contents(s).first().and_then(|inner| normalize_answer(inner));
    }
    let line = s.lines().next().unwrap_or("");
    bare_answer(line.strip_prefix('$').unwrap_or(line))
}

/// A bare answer at the start of `line`: a LaTeX expression when one starts there or a number
/// goes on into one (`6+9i`, `2\sqrt{5}`, `52_8`, `7(x+3)`, `4,6,14`), else the number.
fn bare_answer(line: &str) -> Option<String> {
    let token = &line[..line.find(char::is_whitespace).unwrap_or(line.len())];
    let token = token.trim_end_matches(['.', ',', ';', ':', '!', '?', '*']);
    let command = |t: &str| t.strip_prefix('\\').is_some_and(|c| c.starts_with(|c: char| c.is_ascii_alphabetic()));
    if command(token) || token.strip_prefix('-').is_some_and(command) {
        return latex::math_like(token).then(|| normalize_answer(token)).flatten();
    }
    let (number, end) = number_prefix(line)?;
    let after = line.as_bytes().get(end..).unwrap_or_default();
    let goes_on = match after {
        [b'\\' | b'^' | b'_' | b'{', ..] => true,
        [b'(', c, ..] => c.is_ascii_alphanumeric() || *c == b'\\' || *c == b'-',
        [b'+' | b'-' | b',', c, ..] => c.is_ascii_digit() || *c == b'\\',
        [b'i', rest @ ..] => !rest.first().is_some_and(u8::is_ascii_alphabetic),
        _ => false,
    };
    let balanced = |open: char, close: char| token.matches(open).count() == token.matches(close).count();
    let more = token.get(end..).is_some_and(|t| t.bytes().any(|c| c.is_ascii_alphanumeric()));
    if goes_on && more && balanced('(', ')') && balanced('{', '}') && latex::math_like(token) {
        normalize_answer(token)
    } else {
        Some(number)
    }
}

/// The answer a math span gives: its last `\boxed{}`, else the whole of it, or what follows
/// its last "=" in a chain of equalities (`3 \times 4 = 12`); never a side of a relation.
fn span_answer(content: &str) -> Option<String> {
    if let Some(inner) = boxed_contents(content).pop() {
        return normalize_answer(&inner);
    }
    let relation =
        ["<", ">", "!", "\\le", "\\ge", "\\ne", "\\lt", "\\gt", "\\approx"].iter().any(|r| content.contains(r));
    let (Some(first), Some(last)) = (content.find('='), content.rfind('=')) else {
        return normalize_answer(content);
    };
    // `x = 5` and `3 \times 4 = 12` give what follows; an equation (`x - 2y = 0`) stays whole.
    let lhs = content[..first].trim();
    let variable = (1..=2).contains(&lhs.len()) && lhs.bytes().all(|c| c.is_ascii_alphabetic());
    if !relation && (variable || latex::math_like(lhs) && !letters_outside_commands(lhs)) {
        normalize_answer(&content[last + 1..])
    } else {
        normalize_answer(content)
    }
}

/// Does `s` hold a letter that is not part of a `\command` name?
fn letters_outside_commands(s: &str) -> bool {
    let mut command = false;
    s.chars().any(|c| {
        command = c == '\\' || command && c.is_ascii_alphabetic();
        c.is_ascii_alphabetic() && !command
    })
}

/// Without a marker: the last number outside math spans, or the last math span holding a digit,
/// whichever comes later.
fn last_answer(text: &str) -> Option<String> {
    let spans: Vec<_> = latex::math_spans(text).into_iter().filter(|(_, _, c)| latex::math_like(c)).collect();
    let outside = |pos: usize| !spans.iter().any(|(a, b, _)| (*a..*b).contains(&pos));
    let number = numbers(text).into_iter().rev().find(|(pos, _)| outside(*pos));
    let span = spans.iter().rev().find_map(|(a, _, c)| {
        span_answer(c).filter(|ans| ans.bytes().any(|b| b.is_ascii_digit())).map(|ans| (*a, ans))
    });
    match (number, span) {
        (Some((n, x)), Some((s, y))) => Some(if n > s { x } else { y }),
        (n, s) => n.or(s).map(|(_, a)| a),
    }
}

/// A final answer as compared: a number's canonical text when the whole answer is a number
/// (`\frac{a}{b}` of two numbers, with its sign, is one; see [`super::number`]), else the LaTeX
/// answer normalised as MATH's graders do (see [`latex::normalize`]): `2\sqrt{5}`, `6+9i` and
/// `4,6,14,15` stay whole, so no answer is ever cut to the number it starts with. None for
/// empty text.
pub fn normalize_answer(s: &str) -> Option<String> {
    let t = latex::normalize(s)?;
    Some(whole_number(&t).unwrap_or(t))
}

/// The canonical number that is the whole of answer `s` once normalised (`$1{,}080$`,
/// `-\frac{1}{8}`, `25\%`), or None: `6+9i` is not a number.
pub fn whole_number_answer(s: &str) -> Option<String> {
    normalize_answer(s).filter(|a| whole_number(a).is_some())
}

/// A MATH reference answer: the last `\boxed{}` of a solution; else what a marker gives ("The
/// final answer is $N$"); else the whole text when it is one line of math (a bare answer such
/// as `\frac{14}{3}`; not prose), normalised (see [`normalize_answer`]). Never a last number.
pub fn math_reference(text: &str) -> Option<String> {
    let boxed = boxed_contents(text).into_iter().rev().find_map(|b| normalize_answer(&b));
    let whole = || (!text.trim().contains('\n') && latex::math_like(text)).then(|| normalize_answer(text)).flatten();
    boxed.or_else(|| marked_answer(text)).or_else(whole)
}

/// Do two answers agree? Both are read whole (see [`normalize_answer`]). Two numbers: integers
/// must be equal digit for digit (so 20-digit answers compare exactly); anything else within a
/// relative 1e-9 of the reference's magnitude, which absorbs the rounding of a fraction's
/// decimal form ("1/3") but tells 2.0107e-6 from 2.0108e-6. Anything else (a LaTeX answer, or a
/// number against one) compares as normalised text, so `3\sqrt{14}` never matches `3\sqrt{13}`
/// and 2 never matches `2\sqrt{5}`.
pub fn answers_match(predicted: &str, reference: &str) -> bool {
    let (Some(p), Some(r)) = (normalize_answer(predicted), normalize_answer(reference)) else {
        return false;
    };
    if whole_number(&p).is_none() || whole_number(&r).is_none() {
        // A list is the same list with or without spaces after its commas.
        return p.replace(", ", ",") == r.replace(", ", ",");
    }
    let integer = |s: &str| !s.contains('.');
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

/// Every number in `text` with its byte offset, left to right: plain numbers and `\frac{a}{b}`
/// of two numbers. A "-" directly before a number (or before "$N") is its sign unless it
/// follows a letter or digit ("5-3" is a minus); a number glued to a letter, `_` or `^` before
/// it ("H2O", "x2", "a_3", "x^2") is not one.
fn numbers(text: &str) -> Vec<(usize, String)> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if let Some((value, end)) = latex_fraction(text, i) {
                let neg = i > 0 && b[i - 1] == b'-' && (i < 2 || !b[i - 2].is_ascii_alphanumeric());
                out.push(if neg { (i - 1, format!("-{value}").replace("--", "")) } else { (i, value) });
                i = end;
                continue;
            }
        }
        let starts = digit_at(b, i) || (b[i] == b'.' && digit_at(b, i + 1));
        let glued = starts && i > 0 && (b[i - 1].is_ascii_alphabetic() || b[i - 1] == b'_' || b[i - 1] == b'^');
        if !starts || glued {
            i += 1;
            while glued && (digit_at(b, i) || b.get(i) == Some(&b'.')) {
                i += 1;
            }
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
            out.push((if neg { m - 1 } else { i }, c));
        }
        i = end.max(i + 1);
    }
    out
}

/// `\frac{a}{b}` (or `\dfrac`, `\tfrac`, `\cfrac`) of two numbers at byte `i`: its value and end.
fn latex_fraction(text: &str, i: usize) -> Option<(String, usize)> {
    let rest = &text[i..];
    let name = ["\\frac", "\\dfrac", "\\tfrac", "\\cfrac"].into_iter().find(|n| rest.starts_with(n))?;
    let num = braced(&rest[name.len()..])?;
    let den = braced(&rest[name.len() + num.len() + 2..])?;
    let len = name.len() + num.len() + den.len() + 4;
    Some((normalize_answer(&rest[..len]).filter(|v| whole_number(v).is_some())?, i + len))
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
    use crate::task::number::{format_number, normalize_number};
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
    fn a_thought_is_never_the_answer() {
        let e = |s: &str| extract_answer(s);
        assert_eq!(e("<think>\nThe answer is 5? No, 6.\n</think>\n\nThe answer is 7.").as_deref(), Some("7"));
        assert_eq!(e("<think>\n\n</think>\n\n#### 12").as_deref(), Some("12"));
        assert_eq!(e("<think>\nso 3 + 4 = 7, and the answer is 7"), None, "an unfinished thought has no answer");
        assert_eq!(e("<think>\nwe get 9\n</think>\n\nI could not decide."), None);
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
                0 => format!("**Answer:** {r} {tail} {other}"),
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

        /// A canonical answer reads back as itself, so comparing canonical answers (as every
        /// rollout does) is the same as comparing what was written.
        #[test]
        fn canonical_answers_are_fixed_points(s in "(\\\\(frac|dfrac|sqrt|text|left|right|pi|boxed)|[{}()0-9a-z ^$%.,:=+\\-]){0,16}") {
            if let Some(a) = normalize_answer(&s) {
                prop_assert_eq!(normalize_answer(&a), Some(a.clone()), "{:?}", s);
                prop_assert!(answers_match(&a, &s), "{:?} vs {:?}", a, s);
            }
        }

        #[test]
        fn answers_match_is_reflexive(x in -1e12f64..1e12) {
            let s = format!("{x}");
            prop_assert!(answers_match(&s, &s));
            prop_assert!(answers_match(&format_number(x), &s));
        }
    }
}
