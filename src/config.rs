//! Experiment configs: a TOML file (optional) plus `--set a.b=c` overrides, resolved into a typed
//! struct. The resolved TOML is what a run folder keeps as `config.toml`.

use crate::error::{Error, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::Path;

/// A config type: what `load` reads. `check` holds the range rules that serde's types cannot
/// say, each error naming its key.
pub trait Config: DeserializeOwned + Serialize + Default {
    fn check(&self) -> std::result::Result<(), String> {
        Ok(())
    }
}

/// Keys that were renamed: (old name, new name). An old key is refused with its new one.
const RENAMED: &[(&str, &str)] = &[
    ("samples_per_question", "samples_per_prompt"),
    ("group_size", "samples_per_prompt"),
    ("samples", "samples_per_prompt"),
    ("sample_batch_size", "batch_size"),
    ("policy", "model"),
];

/// Starts from `T::default()`, merges `path` into it, applies each `key.path=value` override
/// (the value is read as TOML — `3`, `0.5`, `true`, `"text"`, `[1, 2]` — and as a plain string
/// when that fails), deserialises and checks. A key the config does not have is an error naming
/// it (and its new name, if it was renamed), so typos do not pass silently.
pub fn load<T: Config>(path: Option<&Path>, overrides: &[String]) -> Result<T> {
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
    let invalid = |msg: String| Error::Invalid(format!("config ({origin} with --set overrides): {msg}"));
    let config = T::deserialize(toml::Value::Table(table.clone())).map_err(|e| invalid(e.to_string().trim().into()))?;
    let known = toml::Table::try_from(&config).expect("configs serialise to a TOML table");
    unknown_key(&table, &known, "").map_or(Ok(()), |msg| Err(invalid(msg)))?;
    config.check().map_err(invalid)?;
    Ok(config)
}

/// The first key of `given` that `known` (the config read back) lacks: serde drops what it
/// does not know, so whatever did not survive the round trip was never read.
fn unknown_key(given: &toml::Table, known: &toml::Table, prefix: &str) -> Option<String> {
    for (key, value) in given {
        let name = format!("{prefix}{key}");
        match (value, known.get(key)) {
            (toml::Value::Table(inner), Some(toml::Value::Table(k))) => {
                if let Some(msg) = unknown_key(inner, k, &format!("{name}.")) {
                    return Some(msg);
                }
            }
            (toml::Value::Array(items), Some(toml::Value::Array(k))) => {
                for (i, (item, k)) in items.iter().zip(k).enumerate() {
                    if let (toml::Value::Table(item), toml::Value::Table(k)) = (item, k) {
                        if let Some(msg) = unknown_key(item, k, &format!("{name}[{i}].")) {
                            return Some(msg);
                        }
                    }
                }
            }
            (_, Some(_)) => {}
            (_, None) => {
                let new = RENAMED.iter().find(|(old, _)| old == key).map_or(key.as_str(), |(_, new)| new);
                let in_sampling =
                    known.get("sampling").and_then(toml::Value::as_table).is_some_and(|t| t.contains_key(new));
                let renamed = if in_sampling && !known.contains_key(new) {
                    Some(format!(": it is now `{prefix}sampling.{new}`"))
                } else {
                    (new != key).then(|| format!(": it is now `{prefix}{new}`"))
                };
                let mut keys: Vec<&str> = known.keys().map(String::as_str).collect();
                keys.sort();
                return Some(match renamed {
                    Some(hint) => format!("unknown key `{name}`{hint}"),
                    None => format!("unknown key `{name}` (known here: {})", keys.join(", ")),
                });
            }
        }
    }
    None
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
    struct Outer {
        #[serde(default)]
        steps: usize,
        #[serde(default = "inner")]
        train: Inner,
    }

    fn inner() -> Inner {
        Inner { lr: 1.0, name: "x".into() }
    }

    impl Config for Outer {}

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
    fn old_keys_typos_and_bad_values_are_refused_by_name() {
        use crate::train::ppo::PpoConfig;
        let err = |set: &[&str]| {
            let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
            load::<PpoConfig>(None, &set).unwrap_err().to_string()
        };
        assert!(err(&["temperature=0.5"]).contains("unknown key `temperature`: it is now `sampling.temperature`"));
        assert!(err(&["group_size=4"]).contains("`group_size`: it is now `sampling.samples_per_prompt`"));
        assert!(err(&["eval.samples=4"]).contains("`eval.samples`: it is now `eval.samples_per_prompt`"));
        let typo = err(&["kl_coeff=1"]);
        assert!(typo.contains("unknown key `kl_coeff` (known here: ") && typo.contains("kl_coef"), "{typo}");
        assert!(err(&["reward.kinds=\"orm\""]).contains("kinds"));
        for (set, named) in [("critic=\"shard\"", "shard"), ("optim.schedule=\"cosin\"", "cosin")] {
            let e = err(&[set]);
            assert!(e.contains(named) && e.contains("expected"), "{e}");
        }
        assert!(err(&["sampling.top_p=0"]).contains("`sampling.top_p` = 0: must be in (0, 1]"));
        assert!(err(&["sampling.temperature=-1"]).contains("`sampling.temperature` = -1: must be a finite number >= 0"));
        assert!(
            err(&["eval.samples_per_prompt=4", "eval.ks=[8]"]).contains("`eval.ks` holds 8: each k must be in 1..=4")
        );
        let lora =
            load::<PpoConfig>(None, &["lora.rank=4".into()]).expect("[lora] is read through the flattened block");
        assert_eq!(lora.pg.common.lora.map(|l| l.rank), Some(4));
        let ok =
            load::<PpoConfig>(None, &["sampling.temperature=0".into(), "eval.samples_per_prompt=0".into()]).unwrap();
        assert_eq!((ok.pg.sampling.temperature, ok.pg.eval.ks()), (0.0, vec![]));
    }

    #[test]
    fn sampling_settings_are_range_checked_by_key_in_every_config() {
        use crate::eval::run::EvalConfig;
        use crate::train::ei::EiConfig;
        let err = |set: &[&str]| {
            let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
            load::<EvalConfig>(None, &set).unwrap_err().to_string()
        };
        assert!(err(&["temperature=-1"]).contains("`temperature` = -1: must be a finite number >= 0"));
        assert!(err(&["temperature=nan"]).contains("`temperature` = NaN"), "{}", err(&["temperature=nan"]));
        assert!(err(&["top_p=0"]).contains("`top_p` = 0: must be in (0, 1]"));
        assert!(err(&["top_p=1.5"]).contains("`top_p` = 1.5"));
        assert!(err(&["ks=[0]"]).contains("`ks` holds 0: each k must be in 1..=4"), "{}", err(&["ks=[0]"]));
        assert!(err(&["samples_per_prompt=2", "ks=[4]"]).contains("1..=2"));
        assert!(err(&["scorer=\"orm\""]).contains("needs `orm`"));
        load::<EvalConfig>(None, &["samples_per_prompt=0".into(), "ks=[16]".into()]).expect("greedy only: ks unused");
        load::<EvalConfig>(None, &["temperature=0".into(), "top_p=1".into()]).expect("the bounds are allowed");
        let ei = load::<EiConfig>(None, &["sampling.samples_per_prompt=0".into()]).unwrap_err().to_string();
        assert!(ei.contains("`sampling.samples_per_prompt` = 0: must be at least 1"), "{ei}");
        let ei = load::<EiConfig>(None, &["eval.temperature=-0.5".into()]).unwrap_err().to_string();
        assert!(ei.contains("`eval.temperature`"), "{ei}");
        let ei = load::<EiConfig>(None, &["samples_per_question=8".into()]).unwrap_err().to_string();
        assert!(ei.contains("`samples_per_question`: it is now `sampling.samples_per_prompt`"), "{ei}");
    }
}
