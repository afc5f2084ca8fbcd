//! A from-scratch "pretraining" corpus for the built-in task: text that teaches the domain of
//! [`synth`] (its stories, its step phrasing, its calculator notes, arithmetic at the level's
//! number ranges) WITHOUT the supervised "Question: ...\nAnswer:\n...\n#### N" format, so that
//! a model language-modelled on it is a stand-in for the paper's *pretrained* init: it solves
//! some problems only when shown a few solved examples (`crate::prompt::Prompter`).
//!
//! Documents come in three kinds, mixed evenly: every block of three consecutive documents
//! holds one of each, in a seeded random order (so a corpus of `n` documents has `n / 3` of
//! each kind, give or take one):
//!
//! 1. [`DocKind::Story`]: a Train problem of [`synth::generate`]`(level, Split::Train, _,
//!    seed)` told in prose: the question's statements (its final "How many ...?" sentence
//!    dropped), then the reference solution's step lines unchanged (calculator notes
//!    included, the "#### N" line dropped), then a concluding sentence made from the dropped
//!    question, e.g. "So in the end Tom has 31 pencils.":
//!    ```text
//!    Tom buys 3 boxes of pencils with 12 pencils in each box. Then he gives away 5 pencils.
//!    Tom buys 3 boxes of 12, so he has 3 * 12 = <<3*12=36>>36 pencils.
//!    After giving away 5 pencils, he has 36 - 5 = <<36-5=31>>31 pencils.
//!    So in the end Tom has 31 pencils.
//!    ```
//!    The stories are the first problems of that Train stream, so with the task's own seed
//!    they are the SFT training problems in prose; pass another seed for unseen ones. Test
//!    problems never appear: synth splits by a hash of the question text.
//! 2. [`DocKind::Facts`]: 8 to 16 arithmetic facts, one per line, "7 * 8 = 56" or in
//!    calculator-note form `7 * 8 = <<7*8=56>>56` (per document: all plain, all notes, or
//!    mixed), with +, -, *, / drawn from the level's ranges ([`synth::level_params`]): numbers
//!    up to `max_number` (sometimes running totals up to `max_result`), factors and divisors up
//!    to `max_factor`, results positive integers up to `max_result`, division exact.
//! 3. [`DocKind::Statements`]: 3 to 6 two-sentence word statements, one per line, each with one
//!    calculator note in the phrasing of synth's solution steps, e.g.
//!    `A box holds 12 pencils. 3 boxes hold 3 * 12 = <<3*12=36>>36 pencils.` or
//!    `Emma has 40 cookies. After selling 5 cookies, she has 40 - 5 = <<40-5=35>>35 cookies.`,
//!    same number ranges as the facts.
//!
//! No document contains "Question:", "Answer:", "####" or a question mark. Every calculator
//! note `<<a op b=c>>` is arithmetically correct and follows its visible "a op b = ".
//!
//! Sizes (average characters per document, kinds mixed evenly, seed 1234): level 1 about 280
//! (stories ~265, facts ~215, statements ~350), so ~5 MB of text is ~18,000 documents; level 2
//! about 300 (stories ~315, facts ~230, statements ~360), ~5 MB is ~16,500 documents; level 5
//! about 450 (~11,000 documents for 5 MB). Generating 25,000 documents takes well under a
//! second (release).

use super::{synth, Problem, Split};
use crate::rng::Rng;

/// What a pretraining document is (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DocKind {
    /// A synth Train problem told as prose with its worked steps and a concluding sentence.
    Story,
    /// Arithmetic facts, one per line.
    Facts,
    /// Short word statements with one calculator note each.
    Statements,
}

impl DocKind {
    /// All kinds, in a fixed order.
    pub const ALL: [DocKind; 3] = [DocKind::Story, DocKind::Facts, DocKind::Statements];

    /// Lower-case name ("story" / "facts" / "statements").
    pub fn name(self) -> &'static str {
        match self {
            DocKind::Story => "story",
            DocKind::Facts => "facts",
            DocKind::Statements => "statements",
        }
    }
}

/// Documents for pretraining at a difficulty level: deterministic for (level, n_docs, seed).
/// `level` is clamped to 1..=5 like [`synth::generate`].
pub fn pretraining_corpus(level: u32, n_docs: usize, seed: u64) -> Vec<String> {
    pretraining_documents(level, n_docs, seed).into_iter().map(|(_, d)| d).collect()
}

/// [`pretraining_corpus`] with each document's kind (same documents, same order).
pub fn pretraining_documents(level: u32, n_docs: usize, seed: u64) -> Vec<(DocKind, String)> {
    let level = level.clamp(*synth::LEVELS.start(), *synth::LEVELS.end());
    let lv = synth::level_params(level);
    let mut kinds = Vec::with_capacity(n_docs + 2);
    let mut rng = Rng::new(seed ^ 0x5EED_C0A7_u64.wrapping_mul(level as u64 + 17));
    while kinds.len() < n_docs {
        let mut block = DocKind::ALL;
        rng.shuffle(&mut block);
        kinds.extend(block);
    }
    kinds.truncate(n_docs);
    let n_stories = kinds.iter().filter(|k| **k == DocKind::Story).count();
    let problems = synth::generate(level, Split::Train, n_stories, seed);
    let mut next_story = 0;
    kinds
        .into_iter()
        .map(|kind| {
            let doc = match kind {
                // synth returns fewer problems only if its story space ran dry: then reuse them.
                DocKind::Story if !problems.is_empty() => {
                    next_story += 1;
                    story_document(&problems[(next_story - 1) % problems.len()], &mut rng)
                }
                DocKind::Story | DocKind::Facts => facts_document(&lv, &mut rng),
                DocKind::Statements => statements_document(&lv, &mut rng),
            };
            (kind, doc)
        })
        .collect()
}

/// Openers of a story's concluding sentence.
const CONCLUDERS: &[&str] = &["So in the end ", "In the end, ", "So at the end "];

/// A problem's question as statements, its steps, and a concluding sentence (module docs, kind 1).
pub fn story_document(p: &Problem, rng: &mut Rng) -> String {
    let q = p.question.trim();
    // The statements: everything before the final interrogative sentence.
    let (body, ask) = match q.strip_suffix('?') {
        Some(head) => match head.rfind(". ") {
            Some(i) => (&q[..=i], q[i + 2..].trim()),
            None => ("", q),
        },
        None => (q, ""),
    };
    let steps: Vec<&str> =
        p.reference_solution.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with("####")).collect();
    let mut lines = Vec::with_capacity(steps.len() + 2);
    if !body.is_empty() {
        lines.push(body.replace('?', "."));
    }
    lines.extend(steps.iter().map(|s| s.to_string()));
    let last = steps.iter().rev().find(|l| l.contains("<<"));
    let conclusion = conclusion(ask, last.copied(), &p.answer);
    lines.push(format!("{}{conclusion}.", rng.pick(CONCLUDERS)));
    lines.join("\n")
}

/// The statement answering `ask` ("How many pencils does Tom have now?" -> "Tom has 31
/// pencils"), the quantity taken from the last calculator line (its unit, "$", singular).
fn conclusion(ask: &str, last_step: Option<&str>, answer: &str) -> String {
    let ask = ask.trim_end_matches('?').trim();
    let ask = ask.strip_suffix(" now").unwrap_or(ask);
    // The result with its unit as the solution wrote it: "31 pencils", "$31", "35 miles from home".
    let written = last_step.and_then(|l| {
        let open = l.rfind("<<")?;
        let close = open + l[open..].find(">>")?;
        let tail = l[close + 2..].trim().trim_end_matches('.').trim();
        let dollar = if l[..open].ends_with('$') { "$" } else { "" };
        tail.starts_with(answer).then(|| format!("{dollar}{tail}"))
    });
    let qty = |rest: &str| {
        let w = written.clone().unwrap_or_else(|| answer.to_string());
        match w.strip_suffix(rest) {
            Some(s) if !rest.is_empty() => s.trim_end().to_string(),
            _ => w,
        }
    };
    if let Some(r) = ask.strip_prefix("How many ").or_else(|| ask.strip_prefix("How much ")) {
        if let Some((_, rest)) = r.split_once(" does ") {
            // "{S} have{R}" -> "{S} has {qty}{R}"
            if let Some((subject, tail)) = rest.split_once(" have") {
                return format!("{subject} has {}{tail}", qty(tail.trim()));
            }
        } else if let Some((_, rest)) = r.split_once(" is ") {
            // "{S} {R}" -> "{S} is {qty} {R}"
            let (subject, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            let q = qty(tail);
            return if tail.is_empty() { format!("{subject} is {q}") } else { format!("{subject} is {q} {tail}") };
        } else if let Some((_, rest)) = r.split_once(" are ") {
            // "{R}" -> "there are {qty} {R}"
            let verb = if answer == "1" { "is" } else { "are" };
            return format!("there {verb} {} {rest}", qty(""));
        }
    }
    format!("the result is {}", qty(""))
}

/// Draws a "running total": up to `max_number` half the time, else up to `max_result`.
fn amount(lv: &synth::LevelParams, rng: &mut Rng, lo: i64, hi: i64) -> i64 {
    let hi = if rng.unit() < 0.5 { hi.min(lv.max_number) } else { hi };
    rng.range(lo, hi.max(lo))
}

/// One arithmetic fact (a, op, b, result) within the level's ranges.
fn fact(lv: &synth::LevelParams, rng: &mut Rng) -> (i64, char, i64, i64) {
    let (maxn, maxf, maxr) = (lv.max_number, lv.max_factor, lv.max_result);
    match rng.range(0, 3) {
        0 => {
            let x = amount(lv, rng, 1, maxr - 1);
            let y = rng.range(1, maxn.min(maxr - x));
            (x, '+', y, x + y)
        }
        1 => {
            let x = amount(lv, rng, 2, maxr);
            let y = rng.range(1, maxn.min(x - 1));
            (x, '-', y, x - y)
        }
        2 => {
            let a = rng.range(2, maxf);
            let b = amount(lv, rng, 2, maxr / a);
            if rng.unit() < 0.5 {
                (a, '*', b, a * b)
            } else {
                (b, '*', a, a * b)
            }
        }
        _ => {
            let d = rng.range(2, maxf);
            let q = amount(lv, rng, 2, maxr / d);
            (q * d, '/', d, q)
        }
    }
}

/// `a op b = <<aopb=r>>r` (the visible expression, then the note).
fn note(a: i64, op: char, b: i64, r: i64) -> String {
    format!("{a} {op} {b} = <<{a}{op}{b}={r}>>{r}")
}

/// 8 to 16 arithmetic facts, one per line (module docs, kind 2).
fn facts_document(lv: &synth::LevelParams, rng: &mut Rng) -> String {
    let style = rng.range(0, 2); // 0 plain, 1 notes, 2 mixed
    let n = rng.range(8, 16);
    let lines: Vec<String> = (0..n)
        .map(|_| {
            let (a, op, b, r) = fact(lv, rng);
            let as_note = match style {
                0 => false,
                1 => true,
                _ => rng.unit() < 0.5,
            };
            if as_note {
                note(a, op, b, r)
            } else {
                format!("{a} {op} {b} = {r}")
            }
        })
        .collect();
    lines.join("\n")
}

const ITEMS: &[(&str, &str)] = &[
    ("pencil", "pencils"),
    ("sticker", "stickers"),
    ("cookie", "cookies"),
    ("muffin", "muffins"),
    ("apple", "apples"),
    ("egg", "eggs"),
    ("book", "books"),
    ("tulip", "tulips"),
    ("marble", "marbles"),
    ("shell", "shells"),
    ("card", "cards"),
    ("toy car", "toy cars"),
    ("candy", "candies"),
    ("crayon", "crayons"),
];
const CONTAINERS: &[(&str, &str)] = &[
    ("box", "boxes"),
    ("bag", "bags"),
    ("basket", "baskets"),
    ("jar", "jars"),
    ("pack", "packs"),
    ("tray", "trays"),
    ("crate", "crates"),
    ("shelf", "shelves"),
];
const GAINS: &[&str] = &["buying", "finding", "getting", "collecting", "making"];
const LOSSES: &[&str] = &["giving away", "selling", "losing", "using", "sharing"];
const NAMES: &[(&str, bool)] = &[
    ("Anna", true),
    ("Bella", true),
    ("Kim", true),
    ("Lily", true),
    ("Mia", true),
    ("Sara", true),
    ("Ava", true),
    ("Ruth", true),
    ("Adam", false),
    ("Eli", false),
    ("Finn", false),
    ("Ivan", false),
    ("Kai", false),
    ("Max", false),
    ("Paul", false),
    ("Yusuf", false),
];

/// 3 to 6 word statements, one per line (module docs, kind 3).
fn statements_document(lv: &synth::LevelParams, rng: &mut Rng) -> String {
    let n = rng.range(3, 6);
    (0..n).map(|_| statement(lv, rng)).collect::<Vec<_>>().join("\n")
}

fn statement(lv: &synth::LevelParams, rng: &mut Rng) -> String {
    let (maxn, maxf, maxr) = (lv.max_number, lv.max_factor, lv.max_result);
    let &(name, female) = rng.pick(NAMES);
    let he = if female { "she" } else { "he" };
    let (one, many) = *rng.pick(ITEMS);
    let (c1, cs) = *rng.pick(CONTAINERS);
    let u = |n: i64| if n == 1 { one } else { many };
    match rng.range(0, 7) {
        0 => {
            let a = rng.range(2, maxf);
            let b = rng.range(2, maxn.min(maxr / a));
            format!("A {c1} holds {b} {many}. {a} {cs} hold {} {many}.", note(a, '*', b, a * b))
        }
        1 => {
            let x = amount(lv, rng, 2, maxr - 1);
            let y = rng.range(1, maxn.min(maxr - x));
            let verb = rng.pick(GAINS);
            format!("{name} has {x} {}. After {verb} {y} {}, {he} has {} {many}.", u(x), u(y), note(x, '+', y, x + y))
        }
        2 => {
            let x = amount(lv, rng, 2, maxr);
            let y = rng.range(1, maxn.min(x - 1));
            let (r, verb) = (x - y, rng.pick(LOSSES));
            format!("{name} has {x} {many}. After {verb} {y} {}, {he} has {} {}.", u(y), note(x, '-', y, r), u(r))
        }
        3 => {
            let x = amount(lv, rng, 1, maxr / 2);
            let k = rng.range(2, maxf.min(maxr / x));
            format!(
                "{name} has {x} {}. With {k} times as many {many}, {he} has {} {many}.",
                u(x),
                note(x, '*', k, x * k)
            )
        }
        4 => {
            let d = rng.range(2, maxf);
            let q = amount(lv, rng, 2, maxr / d);
            let x = q * d;
            format!("{name} splits {x} {many} equally into {d} {cs}. One {c1} holds {} {many}.", note(x, '/', d, q))
        }
        5 => {
            let b = rng.range(1, maxn);
            let a = rng.range(2, maxf.min(maxr / b));
            let r = a * b;
            format!("One {one} costs ${b}. {a} {many} cost {a} * {b} = $<<{a}*{b}={r}>>{r}.")
        }
        6 => {
            let b = rng.range(2, maxn);
            let a = rng.range(2, maxf.min(maxr / b));
            let (verb, unit, per) =
                *rng.pick(&[("walks", "miles", "day"), ("reads", "pages", "day"), ("runs", "laps", "week")]);
            format!("{name} {verb} {b} {unit} each {per}. In {a} {per}s {he} {verb} {} {unit}.", note(a, '*', b, a * b))
        }
        _ => {
            let x = amount(lv, rng, 2, maxr - 1);
            if rng.unit() < 0.5 {
                let y = rng.range(1, maxn.min(maxr - x));
                let r = x + y;
                format!("{name} has ${x}. After earning another ${y}, {he} has {x} + {y} = $<<{x}+{y}={r}>>{r}.")
            } else {
                let y = rng.range(1, maxn.min(x - 1));
                let r = x - y;
                format!("{name} has ${x}. After spending ${y}, {he} has {x} - {y} = $<<{x}-{y}={r}>>{r}.")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// Checks every "<<a op b=c>>" in `doc`: correct arithmetic, preceded by "a op b = " (and
    /// maybe "$"), followed by c. Returns how many notes it checked.
    fn check_notes(doc: &str) -> usize {
        let mut n = 0;
        let mut rest = doc;
        while let Some(open) = rest.find("<<") {
            let close = open + rest[open..].find(">>").unwrap_or_else(|| panic!("unclosed note in {doc:?}"));
            let inner = &rest[open + 2..close];
            let (expr, c) = inner.split_once('=').unwrap_or_else(|| panic!("{inner:?} in {doc:?}"));
            let op_at = expr.find(['+', '-', '*', '/']).unwrap_or_else(|| panic!("{inner:?} in {doc:?}"));
            let op = expr.as_bytes()[op_at] as char;
            let (a, b, c): (i64, i64, i64) =
                (expr[..op_at].parse().unwrap(), expr[op_at + 1..].parse().unwrap(), c.parse().unwrap());
            let want = match op {
                '+' => a + b,
                '-' => a - b,
                '*' => a * b,
                _ => {
                    assert_eq!(a % b, 0, "inexact division in {doc:?}");
                    a / b
                }
            };
            assert_eq!(c, want, "wrong note {inner:?} in {doc:?}");
            assert!(c >= 1, "non-positive result {inner:?} in {doc:?}");
            let before = rest[..open].strip_suffix('$').unwrap_or(&rest[..open]);
            assert!(before.ends_with(&format!("{a} {op} {b} = ")), "note {inner:?} without its expression in {doc:?}");
            assert!(rest[close + 2..].starts_with(&c.to_string()), "note {inner:?} not followed by {c} in {doc:?}");
            n += 1;
            rest = &rest[close + 2..];
        }
        n
    }

    fn assert_clean(doc: &str) {
        for bad in ["####", "Question:", "Answer:", "?", "{", "}", "  "] {
            assert!(!doc.contains(bad), "{bad:?} in {doc:?}");
        }
        assert!(!doc.is_empty() && doc.trim() == doc, "{doc:?}");
    }

    #[test]
    fn deterministic_and_seed_dependent() {
        let a = pretraining_corpus(2, 300, 7);
        assert_eq!(a.len(), 300);
        assert_eq!(a, pretraining_corpus(2, 300, 7));
        assert_ne!(a, pretraining_corpus(2, 300, 8));
        assert_ne!(a, pretraining_corpus(3, 300, 7));
        assert!(pretraining_corpus(1, 0, 7).is_empty());
        assert_eq!(pretraining_corpus(1, 1, 7).len(), 1);
        // Same documents as the kinded form; a prefix of a longer corpus only in its kinds.
        let docs = pretraining_documents(2, 300, 7);
        assert_eq!(docs.iter().map(|(_, d)| d.clone()).collect::<Vec<_>>(), a);
    }

    #[test]
    fn kinds_are_balanced_and_clean_at_every_level() {
        for level in synth::LEVELS {
            let docs = pretraining_documents(level, 600, 3);
            for kind in DocKind::ALL {
                assert_eq!(docs.iter().filter(|(k, _)| *k == kind).count(), 200, "{level} {kind:?}");
            }
            for (kind, doc) in &docs {
                assert_clean(doc);
                let notes = check_notes(doc);
                match kind {
                    DocKind::Story => assert!(notes >= 2, "{doc}"),
                    DocKind::Statements => assert_eq!(notes, doc.lines().count(), "{doc}"),
                    DocKind::Facts => {
                        for line in doc.lines() {
                            let (expr, r) = line.split_once(" = ").unwrap();
                            let r: i64 = r.rsplit(">>").next().unwrap().parse().unwrap();
                            let parts: Vec<&str> = expr.split(' ').collect();
                            let (a, b): (i64, i64) = (parts[0].parse().unwrap(), parts[2].parse().unwrap());
                            let want = match parts[1] {
                                "+" => a + b,
                                "-" => a - b,
                                "*" => a * b,
                                "/" => a / b,
                                op => panic!("{op}"),
                            };
                            assert_eq!(r, want, "{line}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn numbers_stay_in_level_ranges() {
        for level in synth::LEVELS {
            let lv = synth::level_params(level);
            for (kind, doc) in pretraining_documents(level, 300, 5) {
                if kind == DocKind::Story {
                    continue; // synth's own numbers, checked by synth's tests
                }
                let nums = doc.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty());
                for x in nums.map(|s| s.parse::<i64>().unwrap()) {
                    assert!((0..=lv.max_result).contains(&x), "{x} at level {level} in {doc}");
                }
            }
        }
    }

    #[test]
    fn stories_cover_every_template_robustly() {
        let mut rng = Rng::new(1);
        for level in synth::LEVELS {
            for p in synth::generate(level, Split::Train, 3000, 11) {
                let doc = story_document(&p, &mut rng);
                assert_clean(&doc);
                check_notes(&doc);
                let lines: Vec<&str> = doc.lines().collect();
                let (first, last) = (lines[0], *lines.last().unwrap());
                // The statements are the question without its last sentence.
                assert!(p.question.starts_with(first) && first.ends_with('.'), "{first:?} / {:?}", p.question);
                // Steps are the solution's lines, minus "#### N".
                let steps: Vec<&str> = p.reference_solution.lines().filter(|l| !l.starts_with("####")).collect();
                assert_eq!(&lines[1..lines.len() - 1], &steps[..]);
                // The conclusion states the answer with a unit, never the fallback.
                assert!(CONCLUDERS.iter().any(|c| last.starts_with(c)) && last.ends_with('.'), "{last}");
                assert!(!last.contains("the result is") && !last.contains("now."), "{last} / {}", p.question);
                let num = |s: &str| {
                    format!(" {s} ").contains(&format!(" {} ", p.answer))
                        || s.contains(&format!("${} ", p.answer))
                        || s.ends_with(&format!("${}.", p.answer))
                };
                assert!(num(last), "{last} / {}", p.answer);
            }
        }
    }

    #[test]
    fn conclusions_read_well() {
        let c = |ask, step: &str, ans| conclusion(ask, Some(step), ans);
        let step = "Now he has 30 + 6 = <<30+6=36>>36 pencils.";
        assert_eq!(c("How many pencils does Tom have now?", step, "36"), "Tom has 36 pencils");
        let step = "After spending $4 on a gift, she has 9 - 4 = $<<9-4=5>>5.";
        assert_eq!(c("How much money does Emma have now?", step, "5"), "Emma has $5");
        let step = "Now he is 30 + 5 = <<30+5=35>>35 miles from home.";
        assert_eq!(c("How many miles is Tom from home now?", step, "35"), "Tom is 35 miles from home");
        let step = "After dropping off 4 passengers, the bus has 5 - 4 = <<5-4=1>>1 passenger.";
        assert_eq!(c("How many passengers are on Ben's bus now?", step, "1"), "there is 1 passenger on Ben's bus");
        let step = "Now she has 3 + 4 = <<3+4=7>>7 roses.";
        assert_eq!(c("How many roses does Zoe have in her garden now?", step, "7"), "Zoe has 7 roses in her garden");
        assert_eq!(conclusion("Something else?", None, "7"), "the result is 7");
    }

    #[test]
    fn test_problems_never_appear() {
        for level in [1, 2, 3] {
            let seed = 42;
            let docs = pretraining_documents(level, 6000, seed);
            let stories: HashSet<&str> =
                docs.iter().filter(|(k, _)| *k == DocKind::Story).map(|(_, d)| d.lines().next().unwrap()).collect();
            let all = docs.iter().map(|(_, d)| d.as_str()).collect::<Vec<_>>().join("\n");
            let train = synth::generate(level, Split::Train, 2000, seed);
            let body = |q: &str| q[..=q.rfind(". ").unwrap()].to_string();
            // Sanity: the check would fire on train problems that are in the corpus.
            assert!(train.iter().filter(|p| stories.contains(body(&p.question).as_str())).count() >= 1900);
            for p in synth::generate(level, Split::Test, 500, seed) {
                let b = body(&p.question);
                assert!(!stories.contains(b.as_str()), "test problem {} in the corpus", p.question);
                assert!(!all.contains(&format!("{b}\n")), "test problem {} in the corpus", p.question);
                assert!(!all.contains(&p.question));
            }
        }
    }
}
