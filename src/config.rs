//! Experiment configs: a TOML file (optional) plus `--set a.b=c` overrides, resolved into a typed
//! struct. The resolved TOML is what a run folder keeps as `config.toml`.

use crate::error::{Error, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::Path;

/// Starts from `T::default()`, merges `path` into it, applies each `key.path=value` override
/// (the value is read as TOML — `3`, `0.5`, `true`, `"text"`, `[1, 2]` — and as a plain string
/// when that fails), and deserialises. Unknown keys are errors, so typos do not pass silently.
pub fn load<T: DeserializeOwned + Serialize + Default>(path: Option<&Path>, overrides: &[String]) -> Result<T> {
    let mut table = toml::Table::try_from(T::default()).expect("defaults serialise to a TOML table");
    if let Some(p) = path {
        let file = crate::fsutil::read_to_string(p)?
            .parse::<toml::Table>()
            .map_err(|e| Error::file(p, format!("invalid TOML: {e}")))?;
        merge(&mut table, file);
    }
    for item in overrides {
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| Error::Invalid(format!("--set `{item}`: expected KEY=VALUE (e.g. train.lr=3e-4)")))?;
        set(&mut table, key.trim(), parse_value(value.trim()))
            .map_err(|msg| Error::Invalid(format!("--set `{item}`: {msg}")))?;
    }
    let origin = path.map(|p| p.display().to_string()).unwrap_or_else(|| "the defaults".into());
    check_sampling(&table, "")
        .map_err(|msg| Error::Invalid(format!("config ({origin} with --set overrides): {msg}")))?;
    T::deserialize(toml::Value::Table(table))
        .map_err(|e| Error::Invalid(format!("config ({origin} with --set overrides): {}", e.to_string().trim())))
}

/// Range checks of the sampling settings wherever they sit in a config, so a bad value fails
/// when the config is read, named by its key: `temperature` is finite and >= 0, `top_p` in
/// (0, 1], a K (`samples_per_question`, `samples_per_prompt`, `group_size`) at least 1, and each
/// of `ks` in 1..=`samples` beside it (when `samples` > 0).
fn check_sampling(table: &toml::Table, prefix: &str) -> std::result::Result<(), String> {
    let number = |v: &toml::Value| v.as_float().or_else(|| v.as_integer().map(|i| i as f64));
    for (key, value) in table {
        let name = format!("{prefix}{key}");
        if let toml::Value::Table(inner) = value {
            check_sampling(inner, &format!("{name}."))?;
            continue;
        }
        let x = number(value);
        let bad = match key.as_str() {
            "temperature" => x.filter(|t| !(t.is_finite() && *t >= 0.0)).map(|_| "a finite number >= 0"),
            "top_p" => x.filter(|p| !(*p > 0.0 && *p <= 1.0)).map(|_| "in (0, 1]"),
            "samples_per_question" | "samples_per_prompt" | "group_size" => {
                x.filter(|k| *k < 1.0).map(|_| "at least 1")
            }
            _ => None,
        };
        if let Some(range) = bad {
            return Err(format!("`{name}` = {value}: must be {range}"));
        }
    }
    let samples = table.get("samples").and_then(toml::Value::as_integer).filter(|n| *n > 0);
    if let (Some(n), Some(toml::Value::Array(ks))) = (samples, table.get("ks")) {
        if let Some(k) = ks.iter().find(|k| !k.as_integer().is_some_and(|k| (1..=n).contains(&k))) {
            return Err(format!("`{prefix}ks` holds {k}: each k must be in 1..={n} (`{prefix}samples`)"));
        }
    }
    Ok(())
}

/// `--temperature`: a finite number >= 0 (0 is greedy).
pub fn parse_temperature(s: &str) -> std::result::Result<f64, String> {
    let t: f64 = s.parse().map_err(|_| "not a number".to_string())?;
    if t.is_finite() && t >= 0.0 {
        Ok(t)
    } else {
        Err("must be a finite number >= 0".into())
    }
}

/// `--top-p`: in (0, 1].
pub fn parse_top_p(s: &str) -> std::result::Result<f64, String> {
    let p: f64 = s.parse().map_err(|_| "not a number".to_string())?;
    if p > 0.0 && p <= 1.0 {
        Ok(p)
    } else {
        Err("must be in (0, 1]".into())
    }
}

/// `-k`: samples per question, at least 1.
pub fn parse_k(s: &str) -> std::result::Result<usize, String> {
    match s.parse::<usize>() {
        Ok(k) if k >= 1 => Ok(k),
        _ => Err("must be a whole number, at least 1".into()),
    }
}

/// The config as TOML text, for the run folder.
pub fn to_toml<T: Serialize>(config: &T) -> String {
    toml::to_string_pretty(config).expect("configs serialise to TOML")
}

/// Deep merge: tables merge key by key, anything else replaces.
fn merge(into: &mut toml::Table, from: toml::Table) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

fn parse_value(text: &str) -> toml::Value {
    format!("v = {text}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(text.to_string()))
}

fn set(table: &mut toml::Table, key: &str, value: toml::Value) -> std::result::Result<(), String> {
    let (head, rest) = match key.split_once('.') {
        Some((head, rest)) => (head, Some(rest)),
        None => (key, None),
    };
    if head.is_empty() {
        return Err("empty key".into());
    }
    match rest {
        None => {
            table.insert(head.to_string(), value);
            Ok(())
        }
        Some(rest) => match table.entry(head.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new())) {
            toml::Value::Table(inner) => set(inner, rest, value),
            _ => Err(format!("`{head}` is not a table")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, serde::Serialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        #[serde(default)]
        lr: f64,
        #[serde(default)]
        name: String,
    }

    #[derive(Debug, serde::Deserialize, serde::Serialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        #[serde(default)]
        steps: usize,
        #[serde(default = "inner")]
        train: Inner,
    }

    fn inner() -> Inner {
        Inner { lr: 1.0, name: "x".into() }
    }

    impl Default for Outer {
        fn default() -> Self {
            Outer { steps: 1, train: Inner { lr: 2.0, name: "default".into() } }
        }
    }

    #[test]
    fn nested_defaults_survive_a_partial_table() {
        let c: Outer = load(None, &["train.lr=0.5".into()]).unwrap();
        assert_eq!(c, Outer { steps: 1, train: Inner { lr: 0.5, name: "default".into() } });
    }

    #[test]
    fn file_then_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "steps = 3\n[train]\nlr = 0.5\n").unwrap();
        let c: Outer = load(Some(&path), &["train.name=run one".into(), "steps=7".into()]).unwrap();
        assert_eq!(c, Outer { steps: 7, train: Inner { lr: 0.5, name: "run one".into() } });
        let back: Outer = toml::from_str(&to_toml(&c)).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn typos_and_bad_values_are_errors() {
        let err = load::<Outer>(None, &["train.lrr=1".into()]).unwrap_err().to_string();
        assert!(err.contains("lrr"), "{err}");
        let err = load::<Outer>(None, &["steps".into()]).unwrap_err().to_string();
        assert!(err.contains("KEY=VALUE"), "{err}");
        let err = load::<Outer>(None, &["steps=many".into()]).unwrap_err().to_string();
        assert!(err.contains("steps") || err.contains("many"), "{err}");
    }

    #[test]
    fn sampling_settings_are_range_checked_by_key() {
        use crate::eval::run::EvalConfig;
        use crate::train::ei::EiConfig;
        let err = |set: &[&str]| {
            let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
            load::<EvalConfig>(None, &set).unwrap_err().to_string()
        };
        assert!(err(&["temperature=-1"]).contains("`temperature` = -1: must be a finite number >= 0"));
        assert!(err(&["temperature=nan"]).contains("`temperature` = nan"));
        assert!(err(&["top_p=0"]).contains("`top_p` = 0: must be in (0, 1]"));
        assert!(err(&["top_p=1.5"]).contains("`top_p` = 1.5"));
        assert!(err(&["ks=[0]"]).contains("`ks` holds 0: each k must be in 1..=16"), "{}", err(&["ks=[0]"]));
        assert!(err(&["samples=4", "ks=[8]"]).contains("1..=4"));
        load::<EvalConfig>(None, &["samples=0".into(), "ks=[16]".into()]).expect("greedy only: ks unused");
        load::<EvalConfig>(None, &["temperature=0".into(), "top_p=1".into()]).expect("the bounds are allowed");
        let ei = load::<EiConfig>(None, &["sampling.samples_per_question=0".into()]).unwrap_err().to_string();
        assert!(ei.contains("`sampling.samples_per_question` = 0: must be at least 1"), "{ei}");
        let ei = load::<EiConfig>(None, &["eval.temperature=-0.5".into()]).unwrap_err().to_string();
        assert!(ei.contains("`eval.temperature`"), "{ei}");
        assert_eq!(parse_temperature("-1").unwrap_err(), "must be a finite number >= 0");
        assert!(parse_temperature("inf").is_err() && parse_top_p("0").is_err() && parse_k("0").is_err());
        assert_eq!((parse_temperature("0.7"), parse_top_p("1"), parse_k("3")), (Ok(0.7), Ok(1.0), Ok(3)));
    }
}
