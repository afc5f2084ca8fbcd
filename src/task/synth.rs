//! The built-in, seeded generator of GSM8K-style word problems.
//!
//! A problem is a story about one tracked quantity (pencils, dollars, miles, ...) that changes
//! step by step; every step is one calculator line in GSM8K format, e.g.
//! "After selling 5 cookies, she has 36 - 5 = <<36-5=31>>31 cookies.", and the solution ends
//! with "#### N". All intermediate results are positive integers (division only when exact).
//! Phrasing is fixed per template and numbers are digits, so a tiny model can learn it, while
//! 14 story frames x 6 step kinds x names / objects / connectors give variety.
//!
//! Difficulty levels ("numbers" are those written in the question; a factor is a multiplier,
//! divisor or group count):
//!
//! | level | steps | numbers up to | factors up to | any result up to |
//! |-------|-------|---------------|---------------|------------------|
//! | 1     | 2     | 20            | 5             | 200              |
//! | 2     | 2-3   | 50            | 6             | 1,000            |
//! | 3     | 3-4   | 100           | 9             | 5,000            |
//! | 4     | 4-5   | 500           | 10            | 20,000           |
//! | 5     | 5-6   | 1,000         | 12            | 100,000          |
//!
//! Train and test are disjoint by construction: a question is Test iff FNV-1a(question) % 10
//! == 0, and both splits draw from the same seeded candidate stream.

use super::{fnv1a, Problem, Split};
use crate::rng::Rng;
use std::collections::HashSet;

/// The valid difficulty levels.
pub const LEVELS: std::ops::RangeInclusive<u32> = 1..=5;

/// The knobs of one difficulty level (see the table in the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LevelParams {
    /// Fewest reasoning steps (calculator notes) per problem.
    pub min_steps: usize,
    /// Most reasoning steps per problem.
    pub max_steps: usize,
    /// Largest number added, subtracted or per group.
    pub max_number: i64,
    /// Largest multiplier, divisor or group count.
    pub max_factor: i64,
    /// Largest intermediate or final result.
    pub max_result: i64,
}

/// The parameters of `level`, clamped to 1..=5.
pub fn level_params(level: u32) -> LevelParams {
    let (min_steps, max_steps, max_number, max_factor, max_result) = match level {
        0 | 1 => (2, 2, 20, 5, 200),
        2 => (2, 3, 50, 6, 1_000),
        3 => (3, 4, 100, 9, 5_000),
        4 => (4, 5, 500, 10, 20_000),
        _ => (5, 6, 1_000, 12, 100_000),
    };
    LevelParams { min_steps, max_steps, max_number, max_factor, max_result }
}

/// Generates `n` problems of `split` at `level` (clamped to 1..=5). Same (level, split, n,
/// seed) => identical output. Ids are "builtin-L{level}-{split}-{index}". Questions are unique.
/// (Should the story space ever run dry it returns fewer than `n` rather than loop forever;
/// at every level the space is vastly larger than any practical `n`.)
pub fn generate(level: u32, split: Split, n: usize, seed: u64) -> Vec<Problem> {
    let level = level.clamp(*LEVELS.start(), *LEVELS.end());
    let lv = level_params(level);
    let mut rng = Rng::new(seed ^ (level as u64).wrapping_mul(0xA24B_AED4_963E_E407));
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(n);
    let mut budget = n.saturating_mul(100).saturating_add(1_000);
    while out.len() < n && budget > 0 {
        budget -= 1;
        let Some((question, solution, answer, _)) = candidate(&mut rng, &lv) else { continue };
        let is_test = fnv1a(&question).is_multiple_of(10);
        if is_test != (split == Split::Test) || !seen.insert(question.clone()) {
            continue;
        }
        let id = format!("builtin-L{level}-{split}-{}", out.len());
        out.push(Problem { id, question, reference_solution: solution, answer: answer.to_string() });
    }
    out
}

/// One story world. Templates use `{x}` placeholders filled by [`Ctx::fill`]:
/// N name, p he/she, s his/her, I items, C/c containers/container, R recipients,
/// M "many items"/"much money", T "them"/"the money", a/b/k raw numbers, B/K b/k with unit,
/// X "k more items"/"another $k", E the calculation, S the state sentence, G/g gain phrase
/// (verb/gerund), L/l loss phrase (verb/gerund).
struct Frame {
    items: &'static [(&'static str, &'static str)],
    containers: &'static [(&'static str, &'static str)],
    recipients: &'static str,
    money: bool,
    gain: (&'static str, &'static str),
    loss: (&'static str, &'static str),
    /// Opening with a multiplication (question sentence, solution line).
    start: (&'static str, &'static str),
    /// Opening with a given amount (no calculation).
    plain: &'static str,
    state: &'static str,
    ask: &'static str,
    group_add: Option<&'static str>,
    group_sub: Option<&'static str>,
    mul: bool,
    div: bool,
}

// One frame per block, fields grouped by role; rustfmt would spread this over ~250 lines.
#[rustfmt::skip]
const FRAMES: &[Frame] = &[
    // Shopping.
    Frame {
        items: &[("pencil", "pencils"), ("sticker", "stickers"), ("eraser", "erasers"), ("marker", "markers")],
        containers: &[("box", "boxes"), ("pack", "packs")], recipients: "friends", money: false,
        gain: ("buys {X}", "buying {X}"), loss: ("gives away {K}", "giving away {K}"),
        start: ("{N} buys {a} {C} of {I} with {B} in each {c}.", "{N} buys {a} {C} of {b}, so {p} has {E}."),
        plain: "{N} has {K}.", state: "{p} has {E}", ask: "How many {I} does {N} have now?",
        group_add: Some("{p} buys {a} more {C} with {B} in each {c}."),
        group_sub: Some("{p} gives {a} {R} {B} each."), mul: true, div: true,
    },
    // Baking.
    Frame {
        items: &[("cookie", "cookies"), ("muffin", "muffins"), ("cupcake", "cupcakes"), ("bagel", "bagels")],
        containers: &[("tray", "trays"), ("batch", "batches")], recipients: "customers", money: false,
        gain: ("bakes {X}", "baking {X}"), loss: ("sells {K}", "selling {K}"),
        start: ("{N} bakes {a} {C} of {I} with {B} in each {c}.", "{N} bakes {a} {C} of {b}, so {p} has {E}."),
        plain: "{N} has {K} in {s} bakery.", state: "{p} has {E}", ask: "How many {I} does {N} have now?",
        group_add: Some("{p} bakes {a} more {C} with {B} in each {c}."),
        group_sub: Some("{p} sells {a} {R} {B} each."), mul: true, div: true,
    },
    // Farm.
    Frame {
        items: &[("egg", "eggs"), ("apple", "apples"), ("potato", "potatoes"), ("carrot", "carrots")],
        containers: &[("basket", "baskets"), ("crate", "crates")], recipients: "neighbors", money: false,
        gain: ("collects {X}", "collecting {X}"), loss: ("sells {K} at the market", "selling {K} at the market"),
        start: ("{N} fills {a} {C} with {B} each.", "{N} fills {a} {C} with {b} each, so {p} has {E}."),
        plain: "{N} has {K} on {s} farm.", state: "{p} has {E}", ask: "How many {I} does {N} have now?",
        group_add: Some("{p} fills {a} more {C} with {B} each."), group_sub: Some("{p} gives {a} {R} {B} each."),
        mul: true, div: true,
    },
    // Savings.
    Frame {
        items: &[("dollar", "dollars")], containers: &[("envelope", "envelopes"), ("jar", "jars")],
        recipients: "cousins", money: true, gain: ("saves {X}", "saving {X}"),
        loss: ("spends {K} on a gift", "spending {K} on a gift"),
        start: ("{N} saves {B} every week for {a} weeks.", "In {a} weeks {N} saves {E}."),
        plain: "{N} has {K} in {s} piggy bank.", state: "{p} has {E}", ask: "How much money does {N} have now?",
        group_add: Some("{p} saves {B} a week for {a} more weeks."), group_sub: Some("{p} gives {a} {R} {B} each."),
        mul: true, div: true,
    },
    // Wages.
    Frame {
        items: &[("dollar", "dollars")], containers: &[("account", "accounts"), ("pouch", "pouches")],
        recipients: "helpers", money: true, gain: ("earns {X}", "earning {X}"),
        loss: ("pays {K} for lunch", "paying {K} for lunch"),
        start: ("{N} works {a} hours and earns {B} per hour.", "{N} earns {E} for {a} hours of work."),
        plain: "{N} has {K} in {s} wallet.", state: "{p} has {E}", ask: "How much money does {N} have now?",
        group_add: Some("{p} works {a} more hours and earns {B} per hour."),
        group_sub: Some("{p} pays {a} {R} {B} each."), mul: true, div: true,
    },
    // Travel.
    Frame {
        items: &[("mile", "miles"), ("kilometer", "kilometers")], containers: &[("hour", "hours")], recipients: "",
        money: false, gain: ("drives {X}", "driving {X}"),
        loss: ("drives {K} back toward home", "driving {K} back toward home"),
        start: ("{N} drives for {a} {C} at {b} {I} per {c}.", "In {a} {C} {N} drives {E}."),
        plain: "{N} is {K} away from home.", state: "{p} is {E} from home", ask: "How many {I} is {N} from home now?",
        group_add: Some("{p} drives {a} more {C} at {b} {I} per {c}."), group_sub: None, mul: false, div: false,
    },
    // Classroom.
    Frame {
        items: &[("sticker", "stickers"), ("crayon", "crayons"), ("notebook", "notebooks"),
                 ("glue stick", "glue sticks")],
        containers: &[("box", "boxes"), ("pack", "packs")], recipients: "students", money: false,
        gain: ("orders {X}", "ordering {X}"), loss: ("hands out {K}", "handing out {K}"),
        start: ("{N} orders {a} {C} of {I} for {s} class with {B} in each {c}.",
                "{N} orders {a} {C} of {b}, so {p} has {E}."),
        plain: "{N} has {K} for {s} class.", state: "{p} has {E}", ask: "How many {I} does {N} have now?",
        group_add: Some("{p} orders {a} more {C} with {B} in each {c}."),
        group_sub: Some("{p} gives {a} {R} {B} each."), mul: false, div: true,
    },
    // Library.
    Frame {
        items: &[("book", "books"), ("magazine", "magazines"), ("comic book", "comic books")],
        containers: &[("shelf", "shelves"), ("cart", "carts")], recipients: "schools", money: false,
        gain: ("receives {X} as donations", "receiving {X} as donations"), loss: ("lends out {K}", "lending out {K}"),
        start: ("{N}'s library has {a} {C} with {B} on each {c}.", "The library has {E}."),
        plain: "{N}'s library has {K}.", state: "the library has {E}",
        ask: "How many {I} does {N}'s library have now?",
        group_add: Some("{p} adds {a} more {C} with {B} on each {c}."),
        group_sub: Some("{p} sends {a} {R} {B} each."), mul: false, div: false,
    },
    // Garden.
    Frame {
        items: &[("tulip", "tulips"), ("rose", "roses"), ("sunflower", "sunflowers"), ("daisy", "daisies")],
        containers: &[("row", "rows"), ("bed", "beds")], recipients: "neighbors", money: false,
        gain: ("plants {X}", "planting {X}"), loss: ("cuts {K} for a vase", "cutting {K} for a vase"),
        start: ("{N} plants {a} {C} of {I} with {B} in each {c}.", "{N} plants {a} {C} of {b}, so {p} has {E}."),
        plain: "{N} has {K} in {s} garden.", state: "{p} has {E}",
        ask: "How many {I} does {N} have in {s} garden now?",
        group_add: Some("{p} plants {a} more {C} with {B} in each {c}."),
        group_sub: Some("{p} gives {a} {R} {B} each."), mul: false, div: false,
    },
    // Pet shop.
    Frame {
        items: &[("goldfish", "goldfish"), ("guppy", "guppies"), ("turtle", "turtles")],
        containers: &[("tank", "tanks")], recipients: "customers", money: false,
        gain: ("buys {X} for the shop", "buying {X} for the shop"), loss: ("sells {K}", "selling {K}"),
        start: ("{N}'s pet shop has {a} {C} with {B} in each {c}.", "The shop has {E}."),
        plain: "{N}'s pet shop has {K}.", state: "the shop has {E}", ask: "How many {I} does the shop have now?",
        group_add: Some("{p} gets {a} more {C} with {B} in each {c}."),
        group_sub: Some("{p} sells {a} {R} {B} each."), mul: false, div: false,
    },
    // Game points.
    Frame {
        items: &[("point", "points")], containers: &[("round", "rounds")], recipients: "", money: false,
        gain: ("scores {X}", "scoring {X}"), loss: ("loses {K} for a penalty", "losing {K} for a penalty"),
        start: ("{N} plays {a} {C} of a game and scores {B} in each {c}.", "{N} scores {E} in {a} {C}."),
        plain: "{N} has {K} in a game.", state: "{p} has {E}", ask: "How many points does {N} have now?",
        group_add: Some("{p} plays {a} more {C} and scores {B} in each {c}."), group_sub: None, mul: true, div: false,
    },
    // Bus.
    Frame {
        items: &[("passenger", "passengers")], containers: &[("row", "rows")], recipients: "", money: false,
        gain: ("picks up {X}", "picking up {X}"), loss: ("drops off {K}", "dropping off {K}"),
        start: ("{N} drives a bus with {a} {C} of seats, and {B} sit in each {c}.", "The bus has {E}."),
        plain: "{N} drives a bus with {K} on board.", state: "the bus has {E}",
        ask: "How many passengers are on {N}'s bus now?",
        group_add: Some("{p} picks up {B} at each of the next {a} stops."),
        group_sub: Some("{B} get off at each of the next {a} stops."), mul: false, div: false,
    },
    // Toy workshop.
    Frame {
        items: &[("toy car", "toy cars"), ("teddy bear", "teddy bears"), ("robot", "robots"), ("kite", "kites")],
        containers: &[("crate", "crates"), ("box", "boxes")], recipients: "stores", money: false,
        gain: ("makes {X}", "making {X}"), loss: ("ships {K} to a store", "shipping {K} to a store"),
        start: ("{N} makes {a} {C} of {I} with {B} in each {c}.", "{N} makes {a} {C} of {b}, so {p} has {E}."),
        plain: "{N} has {K} in {s} workshop.", state: "{p} has {E}", ask: "How many {I} does {N} have now?",
        group_add: Some("{p} makes {a} more {C} with {B} in each {c}."),
        group_sub: Some("{p} ships {a} {R} {B} each."), mul: true, div: true,
    },
    // Party.
    Frame {
        items: &[("candy", "candies"), ("lollipop", "lollipops"), ("chocolate bar", "chocolate bars"),
                 ("gummy bear", "gummy bears")],
        containers: &[("bag", "bags"), ("jar", "jars")], recipients: "kids", money: false,
        gain: ("buys {X} for the party", "buying {X} for the party"), loss: ("eats {K}", "eating {K}"),
        start: ("{N} buys {a} {C} of {I} for a party with {B} in each {c}.",
                "{N} buys {a} {C} of {b}, so {p} has {E}."),
        plain: "{N} has {K} for a party.", state: "{p} has {E}", ask: "How many {I} does {N} have now?",
        group_add: Some("{p} buys {a} more {C} with {B} in each {c}."),
        group_sub: Some("{p} gives {a} {R} {B} each."), mul: false, div: true,
    },
];

const FEMALE: &[&str] = &[
    "Maria", "Emma", "Olivia", "Sofia", "Aisha", "Mei", "Priya", "Hannah", "Lucy", "Grace", "Nora", "Zoe", "Chloe",
    "Fatima", "Rosa", "Julia",
];
const MALE: &[&str] = &[
    "Tom", "James", "Liam", "Noah", "Omar", "Raj", "Ben", "Carlos", "David", "Ethan", "Hiro", "Jack", "Leo", "Marco",
    "Sam", "Victor",
];
/// Openers for question sentences after the first: a few fixed forms, so they are easy to
/// learn to ignore.
const CONNECTORS: &[&str] = &["", "Then ", "After that, ", "Later, ", "Next, "];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Add,
    Sub,
    Mul,
    Div,
    GroupAdd,
    GroupSub,
}

/// Everything a template can refer to.
struct Ctx<'a> {
    f: &'a Frame,
    name: &'a str,
    female: bool,
    item: (&'a str, &'a str),
    cont: (&'a str, &'a str),
    a: i64,
    b: i64,
    k: i64,
    e: String,
}

impl Ctx<'_> {
    fn unit(&self, n: i64) -> &str {
        if n == 1 {
            self.item.0
        } else {
            self.item.1
        }
    }
    fn qty(&self, n: i64) -> String {
        if self.f.money {
            format!("${n}")
        } else {
            format!("{n} {}", self.unit(n))
        }
    }
    /// "x op y = <<x op y=r>>r unit": one GSM8K calculator step.
    fn calc(&mut self, x: i64, op: char, y: i64, r: i64) {
        let dollar = if self.f.money { "$" } else { "" };
        let unit = if self.f.money { String::new() } else { format!(" {}", self.unit(r)) };
        self.e = format!("{x} {op} {y} = {dollar}<<{x}{op}{y}={r}>>{r}{unit}");
    }
    fn fill(&self, t: &str) -> String {
        let mut out = String::with_capacity(t.len() + 40);
        let mut chars = t.chars();
        while let Some(c) = chars.next() {
            if c != '{' {
                out.push(c);
                continue;
            }
            let key = chars.next().unwrap_or(' ');
            chars.next(); // the closing brace
            let (he, his) = if self.female { ("she", "her") } else { ("he", "his") };
            let s: String = match key {
                'N' => self.name.into(),
                'p' => he.into(),
                's' => his.into(),
                'I' => self.item.1.into(),
                'C' => self.cont.1.into(),
                'c' => self.cont.0.into(),
                'R' => self.f.recipients.into(),
                'M' if self.f.money => "much money".into(),
                'M' => format!("many {}", self.item.1),
                'T' if self.f.money => "the money".into(),
                'T' => "them".into(),
                'a' => self.a.to_string(),
                'b' => self.b.to_string(),
                'k' => self.k.to_string(),
                'B' => self.qty(self.b),
                'K' => self.qty(self.k),
                'X' if self.f.money => format!("another ${}", self.k),
                'X' => format!("{} more {}", self.k, self.unit(self.k)),
                'E' => self.e.clone(),
                'S' => self.fill(self.f.state),
                'G' => self.fill(self.f.gain.0),
                'g' => self.fill(self.f.gain.1),
                'L' => self.fill(self.f.loss.0),
                'l' => self.fill(self.f.loss.1),
                _ => format!("{{{key}}}"),
            };
            out.push_str(&s);
        }
        out
    }
}

/// Upper-cases the first letter (templates start lower-case so connectors can precede them).
fn cap(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
}

/// One random story: (question, solution, answer, frame index), or None if the draw painted itself into a
/// corner (the caller just draws again).
fn candidate(rng: &mut Rng, lv: &LevelParams) -> Option<(String, String, i64, usize)> {
    let frame = rng.range(0, FRAMES.len() as i64 - 1) as usize;
    let f = &FRAMES[frame];
    let female = rng.unit() < 0.5;
    let name = *rng.pick(if female { FEMALE } else { MALE });
    let (item, cont) = (*rng.pick(f.items), *rng.pick(f.containers));
    let mut cx = Ctx { f, name, female, item, cont, a: 0, b: 0, k: 0, e: String::new() };
    let target = rng.range(lv.min_steps as i64, lv.max_steps as i64) as usize;
    let (maxn, maxf, cap_r) = (lv.max_number, lv.max_factor, lv.max_result);
    let mut sentences = Vec::new();
    let mut lines = Vec::new();
    let mut steps = 0;
    let mut v;
    if rng.unit() < 0.5 {
        cx.a = rng.range(2, maxf);
        cx.b = rng.range(2, maxn.min(cap_r / cx.a));
        v = cx.a * cx.b;
        cx.calc(cx.a, '*', cx.b, v);
        sentences.push(cx.fill(f.start.0));
        lines.push(cx.fill(f.start.1));
        steps = 1;
    } else {
        v = rng.range(2, maxn);
        cx.k = v;
        sentences.push(cx.fill(f.plain));
    }
    let mut last = None;
    let mut tries = 0;
    while steps < target {
        let mut kinds = vec![Kind::Add, Kind::Sub];
        kinds.extend(f.mul.then_some(Kind::Mul));
        kinds.extend(f.div.then_some(Kind::Div));
        if target - steps >= 2 {
            kinds.extend(f.group_add.map(|_| Kind::GroupAdd));
            kinds.extend(f.group_sub.map(|_| Kind::GroupSub));
        }
        kinds.retain(|k| Some(*k) != last);
        let kind = *rng.pick(&kinds);
        // Each kind checks it can keep every result a positive integer within the cap.
        let (q, new_lines, nv, n) = match kind {
            Kind::Add if v < cap_r => {
                cx.k = rng.range(1, maxn.min(cap_r - v));
                cx.calc(v, '+', cx.k, v + cx.k);
                ("{p} {G}.", vec![cx.fill("After {g}, {S}.")], v + cx.k, 1)
            }
            Kind::Sub if v >= 2 => {
                cx.k = rng.range(1, maxn.min(v - 1));
                cx.calc(v, '-', cx.k, v - cx.k);
                ("{p} {L}.", vec![cx.fill("After {l}, {S}.")], v - cx.k, 1)
            }
            Kind::Mul if v * 2 <= cap_r => {
                cx.k = rng.range(2, maxf.min(cap_r / v));
                cx.calc(v, '*', cx.k, v * cx.k);
                (
                    "{p} ends up with {k} times as {M} as before.",
                    vec![cx.fill("With {k} times as {M}, {S}.")],
                    v * cx.k,
                    1,
                )
            }
            Kind::Div if (2..=maxf).any(|d| v % d == 0 && v / d >= 2) => {
                let divisors: Vec<i64> = (2..=maxf).filter(|d| v % d == 0 && v / d >= 2).collect();
                cx.k = *rng.pick(&divisors);
                cx.calc(v, '/', cx.k, v / cx.k);
                (
                    "{p} splits {T} equally into {k} {C} and keeps one {c}.",
                    vec![cx.fill("One {c} holds {E}.")],
                    v / cx.k,
                    1,
                )
            }
            Kind::GroupAdd if cap_r - v >= 4 => {
                cx.a = rng.range(2, maxf.min((cap_r - v) / 2));
                cx.b = rng.range(2, maxn.min((cap_r - v) / cx.a));
                let g = cx.a * cx.b;
                cx.calc(cx.a, '*', cx.b, g);
                let first = cx.fill("That makes {E} in all.");
                cx.calc(v, '+', g, v + g);
                (f.group_add?, vec![first, cx.fill("Now {S}.")], v + g, 2)
            }
            Kind::GroupSub if v > 4 => {
                cx.a = rng.range(2, maxf.min((v - 1) / 2));
                cx.b = rng.range(2, maxn.min((v - 1) / cx.a));
                let g = cx.a * cx.b;
                cx.calc(cx.a, '*', cx.b, g);
                let first = cx.fill("That makes {E} in all.");
                cx.calc(v, '-', g, v - g);
                (f.group_sub?, vec![first, cx.fill("Now {S}.")], v - g, 2)
            }
            _ => {
                // This kind cannot apply to the current value: draw another, a few times.
                tries += 1;
                if tries > 8 {
                    return None;
                }
                continue;
            }
        };
        let q = cx.fill(q);
        sentences.push(cap(&format!("{}{q}", rng.pick(CONNECTORS))));
        lines.extend(new_lines.iter().map(|l| cap(l)));
        v = nv;
        steps += n;
        last = Some(kind);
    }
    sentences.push(cx.fill(f.ask));
    lines.push(format!("#### {v}"));
    Some((sentences.join(" "), lines.join("\n"), v, frame))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::answer::{extract_answer, intermediate_results};

    #[test]
    fn deterministic_and_split_by_hash() {
        let a = generate(3, Split::Train, 300, 9);
        assert_eq!(a, generate(3, Split::Train, 300, 9));
        assert_ne!(a, generate(3, Split::Train, 300, 10));
        assert_eq!(a.len(), 300);
        assert_eq!(a[7].id, "builtin-L3-train-7");
        let t = generate(3, Split::Test, 50, 9);
        assert!(t.iter().all(|p| fnv1a(&p.question).is_multiple_of(10)));
        assert!(a.iter().all(|p| !fnv1a(&p.question).is_multiple_of(10)));
    }

    #[test]
    fn solutions_are_consistent_at_every_level() {
        for level in LEVELS {
            let lv = level_params(level);
            for p in generate(level, Split::Train, 400, 3) {
                assert_eq!(extract_answer(&p.reference_solution).as_deref(), Some(p.answer.as_str()));
                let r = intermediate_results(&p.reference_solution);
                assert!((lv.min_steps..=lv.max_steps).contains(&r.len()), "{}", p.reference_solution);
                assert!(r.iter().all(|x| *x >= 1.0 && x.fract() == 0.0 && *x <= lv.max_result as f64));
                assert_eq!(r.last().copied(), p.answer.parse().ok());
                assert!(!p.question.contains('{') && !p.reference_solution.contains('{'), "{p:?}");
            }
        }
    }

    #[test]
    fn covers_all_frames_and_is_fast() {
        let t = std::time::Instant::now();
        assert_eq!(generate(5, Split::Train, 20_000, 1).len(), 20_000);
        // Generous: debug builds are slow; release is far under a second.
        assert!(t.elapsed().as_secs_f64() < 10.0);
        let mut used = vec![false; FRAMES.len()];
        let mut rng = Rng::new(5);
        for level in LEVELS {
            for _ in 0..2000 {
                if let Some((q, s, _, frame)) = candidate(&mut rng, &level_params(level)) {
                    used[frame] = true;
                    assert!(!q.contains(['{', '}']) && !s.contains(['{', '}']), "{q}\n{s}");
                }
            }
        }
        assert!(used.iter().all(|u| *u), "{used:?}");
    }
}
