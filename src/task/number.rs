//! Reading one number: signs, thousands separators ("1,000", "57 500"), decimals, scientific
//! notation, fractions ("3/4", `\frac{1}{8}`), each to one canonical text so that two ways of
//! writing a number compare equal, and 20-digit integers stay exact. [`super::answer`] finds the
//! numbers in text; this module reads them.
//!
//! It works on bytes and only slices at ASCII positions, so no input can make it panic.

use super::latex::{boxed_contents, braced};

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
pub(crate) struct Parts {
    int: String,
    frac: String,
    exp: i32,
    denom: Option<String>,
}

/// Exponents beyond this make no answer anyone writes; such text is not a number.
const MAX_EXPONENT: i32 = 400;

impl Parts {
    pub(crate) fn canonical(&self, neg: bool) -> Option<String> {
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

pub(crate) fn digit_at(b: &[u8], i: usize) -> bool {
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
pub(crate) fn scan_unsigned(b: &[u8], i: usize, spaced: bool) -> Option<(Parts, usize)> {
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

/// The canonical number that is the whole of `t` (normalised LaTeX without spaces): a sign,
/// then a number or a `\frac{a}{b}` of two numbers.
pub(crate) fn whole_number(t: &str) -> Option<String> {
    let (neg, body) = match t.strip_prefix(['-', '\u{2212}']) {
        Some(body) => (true, body),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    if let Some(args) = body.strip_prefix("\\frac") {
        let num = braced(args)?;
        let den = braced(&args[num.len() + 2..]).filter(|den| args.len() == num.len() + den.len() + 4)?;
        let (a, b) = (whole_number(num)?.parse::<f64>().ok()?, whole_number(den)?.parse::<f64>().ok()?);
        let v = if neg { -a / b } else { a / b };
        return (b != 0.0 && v.is_finite()).then(|| format_number(v));
    }
    let (parts, end) = scan_unsigned(body.as_bytes(), 0, true)?;
    (end == body.len()).then(|| parts.canonical(neg))?
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
/// is ignored, so "12 apples" is "12" but "apples 12" is None. To read a whole answer, use
/// [`normalize_answer`].
pub fn normalize_number(s: &str) -> Option<String> {
    let rest = s.trim();
    if let Some(inner) = rest.strip_prefix("\\boxed{").and_then(|_| boxed_contents(rest).into_iter().next()) {
        return normalize_number(&inner);
    }
    number_prefix(rest).map(|(number, _)| number)
}

/// The number `s` starts with (after optional "$", sign and spaces) and where it ends.
pub(crate) fn number_prefix(s: &str) -> Option<(String, usize)> {
    let mut rest = s;
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
    let (parts, end) = scan_unsigned(rest.as_bytes(), 0, true)?;
    Some((parts.canonical(neg)?, s.len() - rest.len() + end))
}

/// Parse a number string as [`normalize_number`] does, to a finite f64.
pub fn parse_number(s: &str) -> Option<f64> {
    normalize_number(s)?.parse::<f64>().ok().filter(|x| x.is_finite())
}
