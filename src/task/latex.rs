//! The LaTeX side of answers: `\boxed` answers, math spans (`$..$`, `\(..\)`, `\[..\]`,
//! `$$..$$`) and the normalisation under which two LaTeX answers compare as text. Numbers are
//! [`super::answer`]'s business; this module never reads one.
//!
//! Like the number reader, it only slices at ASCII positions, so no input can make it panic.

/// Commands whose braced argument is text, not math.
const TEXT_COMMANDS: [&str; 7] = ["\\textnormal", "\\textbf", "\\textit", "\\text", "\\mbox", "\\mathrm", "\\mathbf"];

/// The text inside the braces that open `s` ("{a{b}c}rest" gives "a{b}c"), if they close.
pub(crate) fn braced(s: &str) -> Option<&str> {
    let body = s.strip_prefix('{')?;
    let mut depth = 1usize;
    for (j, c) in body.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            _ => {}
        }
        if depth == 0 {
            return Some(&body[..j]);
        }
    }
    None
}

/// The contents of every `\boxed{...}` in `text` (braces balanced), or `\boxed N` without
/// braces (the token after the space, up to a space or `$`), in order.
pub fn boxed_contents(text: &str) -> Vec<String> {
    const OPEN: &str = "\\boxed";
    let boxed = |i: usize| {
        let rest = &text[i + OPEN.len()..];
        if let Some(inner) = braced(rest) {
            return Some(inner.to_string());
        }
        // `\boxed 2`: at least one space, then a token.
        let token = rest.strip_prefix([' ', '\t'])?.trim_start();
        let end = token.find(|c: char| c.is_whitespace() || c == '$').unwrap_or(token.len());
        let token = token[..end].trim_end_matches(['.', ',', ';', ':', '!', '?']);
        (!token.is_empty()).then(|| token.to_string())
    };
    text.match_indices(OPEN).filter_map(|(i, _)| boxed(i)).collect()
}

/// The math spans of `text` in order, as (start, end, content) byte ranges: `$$..$$` and `\[..\]`
/// (which may span lines), `$..$` and `\(..\)` (on one line). An escaped `\$` is a dollar sign,
/// not a delimiter.
pub(crate) fn math_spans(text: &str) -> Vec<(usize, usize, &str)> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let escaped = i > 0 && b[i - 1] == b'\\';
        let (open, close, inline) = match &b[i..] {
            [b'$', b'$', ..] if !escaped => ("$$", "$$", false),
            [b'$', ..] if !escaped => ("$", "$", true),
            [b'\\', b'(', ..] => ("\\(", "\\)", true),
            [b'\\', b'[', ..] => ("\\[", "\\]", false),
            _ => {
                i += 1;
                continue;
            }
        };
        let body = i + open.len();
        let found =
            text[body..].match_indices(close).map(|(j, _)| body + j).find(|&j| !(close == "$" && b[j - 1] == b'\\'));
        match found {
            Some(j) if !(inline && text[body..j].contains('\n')) => {
                out.push((i, j + close.len(), &text[body..j]));
                i = j + close.len();
            }
            _ => i = body,
        }
    }
    out
}

/// Is this math rather than prose? No run of three or more letters outside command names and
/// the arguments of text commands: `28 \%`, `\frac{1}{3}\text{ meters}` and `2\sin b` are
/// math; `18 and ` (between two dollar amounts) is prose.
pub(crate) fn math_like(s: &str) -> bool {
    let b = s.as_bytes();
    let (mut i, mut run) = (0, 0);
    while i < b.len() {
        if b[i] == b'\\' {
            let name = b[i + 1..].iter().take_while(|c| c.is_ascii_alphabetic()).count();
            let cmd = &s[i..i + 1 + name];
            i += 1 + name.max(1);
            if TEXT_COMMANDS.contains(&cmd) {
                i += braced(&s[i.min(s.len())..]).map_or(0, |arg| arg.len() + 2);
            }
            run = 0;
            continue;
        }
        run = if b[i].is_ascii_alphabetic() { run + 1 } else { 0 };
        if run >= 3 {
            return false;
        }
        i += 1;
    }
    true
}

/// A LaTeX answer normalised as MATH's graders do, so that two ways of writing one answer
/// compare equal as text: the delimiters and `\boxed{}` around it dropped; text commands
/// unwrapped, or dropped when they end the answer as a unit (`15\mbox{ cm}^2`); plain trailing
/// words dropped as units (`125 miles`, `28 percent`); `\left`/`\right`, degrees, `\%`, `$`,
/// LaTeX spacing and spaces dropped (but for one after a comma, which makes a list); `{,}` and `,\!` read as commas; `\dfrac`/`\tfrac`/`\cfrac`
/// read as `\frac`; `\frac12`, `\sqrt2` and `x^{2}` written one way; and a leading `x=` of one
/// or two letters dropped. None for empty text.
pub fn normalize(s: &str) -> Option<String> {
    // Repeated until nothing changes (one removal can expose another: `(\left(x\right))`), so
    // a normalised answer normalises to itself.
    let mut t = normalize_once(s)?;
    for _ in 0..8 {
        match normalize_once(&t)? {
            next if next == t => break,
            next => t = next,
        }
    }
    Some(t)
}

fn normalize_once(s: &str) -> Option<String> {
    let mut t = strip_delimiters(s.trim()).to_string();
    for cmd in ["\\left", "\\right", "\\qquad", "\\quad"] {
        t = drop_command(&t, cmd);
    }
    for cmd in TEXT_COMMANDS {
        t = unwrap_text(&t, cmd);
    }
    // Thousands in LaTeX: `10,\!080` and `14{,}916` (spaces in math mode are not a list's).
    for sep in [",\\!", "{,}", "{, }"] {
        while let Some(i) = t.find(sep) {
            let rest = t[i + sep.len()..].trim_start().to_string();
            t = format!("{},{rest}", &t[..i]);
        }
    }
    for (from, to) in [
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
        ("\\cfrac", "\\frac"),
        ("\\displaystyle", ""),
        ("^{\\circ}", ""),
        ("^\\circ", ""),
        ("°", ""),
        ("\\%", ""),
        ("%", ""),
        ("\\$", ""),
        ("$", ""),
        ("\\!", ""),
        ("\\,", ""),
        ("\\;", ""),
        ("\\:", ""),
        ("\\ ", " "),
        ("~", " "),
    ] {
        t = t.replace(from, to);
    }
    // Spaces go, but a comma keeps the one after it: "32, 349" is a list, 32,349 a number.
    let mut spaced = String::new();
    for (i, part) in drop_trailing_words(t.trim()).split(',').enumerate() {
        let list = i > 0 && part.starts_with(char::is_whitespace);
        spaced.push_str(if i == 0 {
            ""
        } else if list {
            ", "
        } else {
            ","
        });
        spaced.extend(part.chars().filter(|c| !c.is_whitespace()));
    }
    let t = spaced;
    let t = brace_arguments(&t);
    let t = match t.split_once('=') {
        Some((lhs, rhs)) if (1..=2).contains(&lhs.len()) && lhs.bytes().all(|c| c.is_ascii_alphabetic()) => rhs,
        _ => &t,
    };
    let t = strip_parentheses(t.trim_end_matches('.'));
    (!t.is_empty()).then(|| t.to_string())
}

/// `t` without parentheses around the whole of it when they hold one value: `(\frac{1}{3})`
/// and `(C)`, but not the interval `(1,3)` or `(x+3)(x-3)`.
fn strip_parentheses(t: &str) -> &str {
    let Some(inner) = t.strip_prefix('(').and_then(|r| r.strip_suffix(')')) else {
        return t;
    };
    let mut depth = 0i32;
    for c in inner.chars() {
        depth += match c {
            '(' | '[' | '{' => 1,
            ')' | ']' | '}' => -1,
            ',' if depth == 0 => return t,
            _ => 0,
        };
        if depth < 0 {
            return t;
        }
    }
    if depth == 0 {
        inner
    } else {
        t
    }
}

/// `s` without the math delimiters or `\boxed{}` that enclose the whole of it.
fn strip_delimiters(mut s: &str) -> &str {
    loop {
        let inner = [("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")]
            .iter()
            .find_map(|(open, close)| s.strip_prefix(open)?.strip_suffix(close))
            .or_else(|| braced(s.strip_prefix("\\boxed")?).filter(|inner| inner.len() + 8 == s.len()));
        match inner {
            Some(inner) => s = inner.trim(),
            None => return s,
        }
    }
}

/// Each `cmd{..}` unwrapped to its text, or dropped when it is a unit: two or more letters that
/// end an answer with something before them (only a power like `^2` may follow).
fn unwrap_text(t: &str, cmd: &str) -> String {
    let mut out = String::new();
    let mut rest = t;
    while let Some(i) = rest.find(cmd) {
        let after = &rest[i + cmd.len()..];
        let Some(inner) = braced(after).filter(|_| !after.starts_with(|c: char| c.is_ascii_alphabetic())) else {
            out.push_str(&rest[..i + cmd.len()]);
            rest = after;
            continue;
        };
        let tail = &after[inner.len() + 2..];
        let word = inner.trim();
        let unit = !(out.is_empty() && rest[..i].trim().is_empty())
            && word.bytes().filter(u8::is_ascii_alphabetic).count() >= 2
            && word.bytes().all(|c| c.is_ascii_alphabetic() || c == b' ')
            && ["", "^2", "^3", "^{2}", "^{3}"].contains(&tail.trim());
        out.push_str(&rest[..i]);
        if unit {
            return out;
        }
        out.push_str(inner);
        rest = tail;
    }
    out + rest
}

/// `t` without the command `cmd` (but not a longer command it starts: `\right` is not
/// `\rightarrow`).
fn drop_command(t: &str, cmd: &str) -> String {
    let mut out = String::new();
    let mut rest = t;
    while let Some(i) = rest.find(cmd) {
        let after = &rest[i + cmd.len()..];
        let longer = after.starts_with(|c: char| c.is_ascii_alphabetic());
        out.push_str(&rest[..if longer { i + cmd.len() } else { i }]);
        rest = after;
    }
    out + rest
}

/// `t` without plain words of two or more letters that end it after a number or a closing
/// brace or parenthesis: units such as "125 miles", "28 percent", "10 square feet".
fn drop_trailing_words(t: &str) -> &str {
    let body = t.trim_end_matches(|c: char| c.is_ascii_alphabetic() || c == ' ');
    let words = &t[body.len()..];
    let real_words = words.split_whitespace().all(|w| w.len() >= 2) && words.starts_with(' ');
    if real_words && body.ends_with(|c: char| c.is_ascii_digit() || c == '}' || c == ')') {
        body.trim_end()
    } else {
        t
    }
}

/// `\frac12` -> `\frac{1}{2}`, `\sqrt2` -> `\sqrt{2}`, `x^{2}` -> `x^2`.
fn brace_arguments(t: &str) -> String {
    let mut t = t.to_string();
    for (cmd, args) in [("\\frac", 2), ("\\sqrt", 1)] {
        let mut out = String::new();
        let mut rest = t.as_str();
        while let Some(i) = rest.find(cmd) {
            out.push_str(&rest[..i + cmd.len()]);
            rest = &rest[i + cmd.len()..];
            for _ in 0..args {
                match rest.chars().next() {
                    Some(c) if c.is_ascii_alphanumeric() => {
                        out.push_str(&format!("{{{c}}}"));
                        rest = &rest[c.len_utf8()..];
                    }
                    Some('{') => match braced(rest) {
                        Some(arg) => {
                            out.push_str(&rest[..arg.len() + 2]);
                            rest = &rest[arg.len() + 2..];
                        }
                        None => break,
                    },
                    _ => break,
                }
            }
        }
        out.push_str(rest);
        t = out;
    }
    // A one-character power or subscript in braces: x^{2} -> x^2.
    let mut out = String::new();
    let mut rest = t.as_str();
    while let Some(i) = rest.find(['^', '_']) {
        out.push_str(&rest[..=i]);
        rest = &rest[i + 1..];
        let mut chars = rest.chars();
        if let (Some('{'), Some(c), Some('}')) = (chars.next(), chars.next(), chars.next()) {
            if c != '\\' {
                out.push(c);
                rest = &rest[c.len_utf8() + 2..];
            }
        }
    }
    out + rest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxed_with_and_without_braces() {
        assert_eq!(boxed_contents("so \\boxed{\\frac{1}{2}} or \\boxed 2. And \\boxed{}"), ["\\frac{1}{2}", "2", ""]);
        assert_eq!(boxed_contents("$\\boxed 7$"), ["7"]);
        assert!(boxed_contents("\\boxed").is_empty());
        assert!(boxed_contents("\\boxed{unclosed").is_empty());
    }

    #[test]
    fn spans() {
        fn contents(t: &str) -> Vec<&str> {
            math_spans(t).into_iter().map(|(_, _, c)| c).collect()
        }
        assert_eq!(contents("a $x$ b \\(y\\) c \\[z\\] d $$w$$"), ["x", "y", "z", "w"]);
        assert_eq!(contents("costs \\$5 and $6$"), ["6"]);
        assert_eq!(contents("$ \n 9 \n $"), Vec::<&str>::new(), "inline math stays on its line");
        assert_eq!(contents("\\[ \n 9 \n \\]"), [" \n 9 \n "]);
        assert_eq!(contents("$unclosed"), Vec::<&str>::new());
    }

    #[test]
    fn prose_is_not_math() {
        assert!(math_like("28 \\%"));
        assert!(math_like("\\frac{1}{3} \\text{meters}"));
        assert!(math_like("2 \\sin b \\cos a"));
        assert!(!math_like("18 and "));
        assert!(!math_like("the value"));
    }

    #[test]
    fn normalizes_latex() {
        let n = |s: &str| normalize(s);
        assert_eq!(n("$\\dfrac{1}{2}$").as_deref(), Some("\\frac{1}{2}"));
        assert_eq!(n("\\boxed{\\frac12}").as_deref(), Some("\\frac{1}{2}"));
        assert_eq!(n("\\left( 3, \\frac{\\pi}{2} \\right)").as_deref(), Some("(3, \\frac{\\pi}{2})"));
        assert_eq!(n("x \\rightarrow y").as_deref(), Some("x\\rightarrowy"));
        assert_eq!(n("15\\mbox{ cm}^2").as_deref(), Some("15"));
        assert_eq!(n("$125$ miles").as_deref(), Some("125"));
        assert_eq!(n("28 percent").as_deref(), Some("28"));
        assert_eq!(n("12\\text{ and }13").as_deref(), Some("12and13"));
        assert_eq!(n("\\text{Evelyn}").as_deref(), Some("Evelyn"));
        assert_eq!(n("1-\\frac{1}{\\mathrm{e}}").as_deref(), Some("1-\\frac{1}{e}"));
        assert_eq!(n("10,\\!080").as_deref(), Some("10,080"));
        assert_eq!(n("14{,}916").as_deref(), Some("14,916"));
        assert_eq!(n("90^\\circ").as_deref(), Some("90"));
        assert_eq!(n("k = \\sqrt 3").as_deref(), Some("\\sqrt{3}"));
        assert_eq!(n("x^{2}+1").as_deref(), Some("x^2+1"));
        assert_eq!(n("7 = 11a+c").as_deref(), Some("7=11a+c"), "only a variable on the left is dropped");
        assert_eq!(n("2x").as_deref(), Some("2x"), "a one-letter variable is no unit");
        assert_eq!(n("  "), None);
    }
}
