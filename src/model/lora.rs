//! LoRA (Hu et al., 2021): a frozen linear layer `W` plus a trained low-rank update,
//! `y = x W^T + (alpha / r) * dropout(x) A^T B^T`, with `A` `[r, in]` and `B` `[out, r]`.
//! Here: the `[lora]` settings, one layer's adapter, and PEFT's `adapter_config.json`; the
//! `CausalLm` methods that add, reset and fold in adapters are in `adapters.rs`.
//! Adapters are saved the way PEFT saves them (`adapter_config.json` and
//! `adapter_model.safetensors`, tensors named `base_model.model.<module>.lora_A.weight`), so an
//! adapter trained here loads in PEFT and vLLM, and one trained with PEFT loads here.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use tch::Tensor;

pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// What PEFT puts before a module's own name in its saved tensors.
pub const PEFT_PREFIX: &str = "base_model.model.";

/// `[lora]` in a trainer's config: present, LoRA is on.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraConfig {
    /// The adapters' rank r.
    pub rank: i64,
    /// The update is scaled by alpha / r.
    pub alpha: f64,
    /// Dropout on an adapter's input, in the supervised trainers only (PPO and GRPO need the
    /// same network for their old and new log-probs, so they keep it off).
    pub dropout: f64,
    /// The linear layers that get adapters.
    pub target_modules: Vec<Target>,
    pub init: LoraInit,
    /// The frozen base weights' dtype: bf16 halves their memory (the adapters stay f32).
    pub base_dtype: BaseDtype,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            rank: 8,
            alpha: 16.0,
            dropout: 0.0,
            target_modules: Target::ALL.to_vec(),
            init: LoraInit::Kaiming,
            base_dtype: BaseDtype::F32,
        }
    }
}

/// A linear layer of a decoder block, by its Hugging Face name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    QProj,
    KProj,
    VProj,
    OProj,
    GateProj,
    UpProj,
    DownProj,
}

impl Target {
    pub const ALL: [Target; 7] = [
        Target::QProj,
        Target::KProj,
        Target::VProj,
        Target::OProj,
        Target::GateProj,
        Target::UpProj,
        Target::DownProj,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Target::QProj => "q_proj",
            Target::KProj => "k_proj",
            Target::VProj => "v_proj",
            Target::OProj => "o_proj",
            Target::GateProj => "gate_proj",
            Target::UpProj => "up_proj",
            Target::DownProj => "down_proj",
        }
    }

    fn from_name(name: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// How adapters start. Either way `B = 0`, so a fresh adapter leaves the model unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoraInit {
    /// `A ~ U(-1/sqrt(in), 1/sqrt(in))`: PEFT's default (Kaiming-uniform with a = sqrt(5)).
    Kaiming,
    /// `A ~ N(0, 1/r)`: PEFT's `init_lora_weights = "gaussian"`.
    Gaussian,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BaseDtype {
    F32,
    Bf16,
}

impl BaseDtype {
    pub fn kind(self) -> tch::Kind {
        match self {
            BaseDtype::F32 => tch::Kind::Float,
            BaseDtype::Bf16 => tch::Kind::BFloat16,
        }
    }
}

impl LoraConfig {
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// How an adapter's `A` `[r, in_dim]` is drawn.
    pub fn a_init(&self, in_dim: i64) -> tch::nn::Init {
        match self.init {
            LoraInit::Kaiming => {
                let bound = 1.0 / (in_dim as f64).sqrt();
                tch::nn::Init::Uniform { lo: -bound, up: bound }
            }
            LoraInit::Gaussian => tch::nn::Init::Randn { mean: 0.0, stdev: 1.0 / self.rank as f64 },
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.rank < 1 || !(self.alpha.is_finite() && self.alpha > 0.0) || !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::Invalid(format!(
                "lora: rank must be >= 1, alpha > 0 and dropout in [0, 1) (got rank {}, alpha {}, dropout {})",
                self.rank, self.alpha, self.dropout
            )));
        }
        if self.target_modules.is_empty() {
            return Err(Error::Invalid("lora.target_modules is empty".into()));
        }
        Ok(())
    }
}

/// One layer's adapter: the low-rank update added to its output.
#[derive(Debug)]
pub struct Adapter {
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
    pub dropout: f64,
}

impl Adapter {
    /// `scale * dropout(x) A^T B^T`, computed in the adapters' dtype (f32) and returned in `x`'s.
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let h = x.to_kind(self.a.kind());
        let h = if train && self.dropout > 0.0 { h.dropout(self.dropout, true) } else { h };
        (h.linear::<&Tensor>(&self.a, None).linear::<&Tensor>(&self.b, None) * self.scale).to_kind(x.kind())
    }
}

#[derive(Debug, Clone)]
pub struct LoraState {
    pub config: LoraConfig,
    /// The base model's folder (written into `adapter_config.json`).
    pub base: PathBuf,
}

/// Whether a variable belongs to a LoRA adapter.
pub fn is_adapter(name: &str) -> bool {
    name.contains(".lora_A.") || name.contains(".lora_B.")
}

/// LoRA on a whole model: adding, resetting and folding in its adapters.
/// PEFT's `adapter_config.json` for `cfg`, on the base model at `base`.
pub fn peft_config(cfg: &LoraConfig, base: &Path) -> serde_json::Value {
    serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base.display().to_string(),
        "r": cfg.rank,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": cfg.target_modules.iter().map(|t| t.name()).collect::<Vec<_>>(),
        "init_lora_weights": match cfg.init { LoraInit::Kaiming => serde_json::json!(true), LoraInit::Gaussian => serde_json::json!("gaussian") },
        "bias": "none",
        "fan_in_fan_out": false,
        "use_rslora": false,
        "use_dora": false,
        "modules_to_save": null,
        "layers_to_transform": null,
        "rank_pattern": {},
        "alpha_pattern": {},
        "inference_mode": true,
    })
}

/// Reads a PEFT `adapter_config.json`: the LoRA settings and the base model's folder (relative
/// paths are taken from the adapter's folder). What this model cannot do (DoRA, per-layer ranks,
/// biases, layers left out, extra trained modules) is refused by name.
pub fn read_peft_config(dir: &Path) -> Result<(LoraConfig, PathBuf)> {
    let path = dir.join(ADAPTER_CONFIG_FILE);
    let text = crate::fsutil::read_to_string(&path)?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::file(&path, e.to_string()))?;
    let bad = |msg: String| Error::file(&path, msg);
    let field = |key: &str| json.get(key).filter(|v| !v.is_null());
    if field("peft_type").and_then(|v| v.as_str()) != Some("LORA") {
        return Err(bad("is not a LoRA adapter (`peft_type` is not \"LORA\")".into()));
    }
    let number = |key: &str| field(key).and_then(|v| v.as_f64()).ok_or_else(|| bad(format!("missing number `{key}`")));
    let rank = number("r")? as i64;
    let mut alpha = number("lora_alpha")?;
    if field("use_rslora").and_then(|v| v.as_bool()) == Some(true) {
        // rsLoRA scales by alpha / sqrt(r): the same update with alpha' = alpha * sqrt(r).
        alpha *= (rank as f64).sqrt();
    }
    let unsupported = [
        ("use_dora", field("use_dora").and_then(|v| v.as_bool()) == Some(true)),
        ("fan_in_fan_out", field("fan_in_fan_out").and_then(|v| v.as_bool()) == Some(true)),
        ("bias", field("bias").and_then(|v| v.as_str()).is_some_and(|b| b != "none")),
        ("rank_pattern", field("rank_pattern").and_then(|v| v.as_object()).is_some_and(|m| !m.is_empty())),
        ("alpha_pattern", field("alpha_pattern").and_then(|v| v.as_object()).is_some_and(|m| !m.is_empty())),
        ("layers_to_transform", field("layers_to_transform").is_some()),
        ("layer_replication", field("layer_replication").is_some()),
        ("modules_to_save", field("modules_to_save").and_then(|v| v.as_array()).is_some_and(|m| !m.is_empty())),
    ];
    if let Some((key, _)) = unsupported.iter().find(|(_, on)| *on) {
        return Err(bad(format!("uses `{key}`, which reasonrl's LoRA does not support")));
    }
    let target_modules = match field("target_modules") {
        Some(serde_json::Value::String(s)) if s == "all-linear" => Target::ALL.to_vec(),
        Some(serde_json::Value::Array(names)) => names
            .iter()
            .map(|n| {
                let name = n.as_str().unwrap_or_default();
                // PEFT matches a name as the last part of a module path.
                Target::from_name(name.rsplit('.').next().unwrap_or(name))
                    .ok_or_else(|| bad(format!("target module `{name}` is not a decoder block's linear layer")))
            })
            .collect::<Result<Vec<_>>>()?,
        _ => return Err(bad("`target_modules` must be a list of layer names or \"all-linear\"".into())),
    };
    let init = match field("init_lora_weights").and_then(|v| v.as_str()) {
        Some("gaussian") => LoraInit::Gaussian,
        _ => LoraInit::Kaiming,
    };
    let cfg = LoraConfig {
        rank,
        alpha,
        dropout: field("lora_dropout").and_then(|v| v.as_f64()).unwrap_or(0.0),
        target_modules,
        init,
        // A training setting, not the adapter's: loaded adapters sit on an f32 base.
        base_dtype: BaseDtype::F32,
    };
    cfg.validate().map_err(|e| bad(e.to_string()))?;
    let base = field("base_model_name_or_path")
        .and_then(|v| v.as_str())
        .ok_or_else(|| bad("missing `base_model_name_or_path`".into()))?;
    Ok((cfg, dir.join(base)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_config_reads_back_and_unsupported_peft_options_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = LoraConfig {
            rank: 4,
            alpha: 8.0,
            dropout: 0.1,
            target_modules: vec![Target::QProj, Target::DownProj],
            init: LoraInit::Gaussian,
            base_dtype: BaseDtype::Bf16,
        };
        let write = |json: &serde_json::Value| {
            std::fs::write(dir.path().join(ADAPTER_CONFIG_FILE), serde_json::to_string(json).unwrap()).unwrap()
        };
        write(&peft_config(&cfg, Path::new("/models/base")));
        let (back, base) = read_peft_config(dir.path()).unwrap();
        let want = LoraConfig { base_dtype: BaseDtype::F32, ..cfg.clone() };
        assert_eq!((back, base), (want, PathBuf::from("/models/base")));

        let mut json = peft_config(&cfg, Path::new("base"));
        json["use_rslora"] = true.into();
        json["target_modules"] = "all-linear".into();
        write(&json);
        let (back, base) = read_peft_config(dir.path()).unwrap();
        assert_eq!(back.alpha, 16.0, "rsLoRA's alpha / sqrt(r) as alpha' / r");
        assert_eq!(back.target_modules, Target::ALL.to_vec());
        assert_eq!(base, dir.path().join("base"));

        for (key, value) in [
            ("use_dora", serde_json::json!(true)),
            ("bias", serde_json::json!("all")),
            ("modules_to_save", serde_json::json!(["lm_head"])),
        ] {
            let mut json = peft_config(&cfg, Path::new("base"));
            json[key] = value;
            write(&json);
            let err = read_peft_config(dir.path()).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(ADAPTER_CONFIG_FILE), "{err}");
        }
    }
}
