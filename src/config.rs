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
    T::deserialize(toml::Value::Table(table))
        .map_err(|e| Error::Invalid(format!("config ({origin} with --set overrides): {}", e.to_string().trim())))
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
}
