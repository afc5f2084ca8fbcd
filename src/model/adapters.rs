//! The `CausalLm` methods that add LoRA adapters (see `lora.rs`) over a base model, reset them,
//! and fold them in.

use super::hf::{CausalLm, CONFIG_FILE, HEAD_FILE};
use super::llama::{Llama, HEAD_PREFIX};
use super::lora::{is_adapter, read_peft_config, BaseDtype, LoraConfig, LoraState, ADAPTER_CONFIG_FILE};
use crate::error::{Error, Result};
use std::path::Path;
use tch::{Device, Kind, Tensor};

impl CausalLm {
    /// The model folder `base` with the PEFT adapter folder `adapter` over it (whatever base
    /// the adapter's config names).
    pub fn load_adapter(base: &Path, adapter: &Path, device: Device, with_head: bool) -> Result<Self> {
        let (cfg, _) = read_peft_config(adapter)?;
        if !base.join(CONFIG_FILE).exists() {
            return Err(Error::file(
                adapter.join(ADAPTER_CONFIG_FILE),
                format!("its base model {} is not a model folder (no {CONFIG_FILE})", base.display()),
            ));
        }
        let mut model = CausalLm::load(base, device, with_head || adapter.join(HEAD_FILE).exists())?;
        model.add_lora(&cfg, base).map_err(|e| Error::file(adapter.join(ADAPTER_CONFIG_FILE), e.to_string()))?;
        model.load_weights(adapter)?;
        Ok(model)
    }

    /// Adds fresh LoRA adapters (see [`super::Llama::add_adapters`]) over the model loaded from
    /// `base`, freezes everything else but a scalar head, and casts the frozen weights to
    /// `cfg.base_dtype`. The model then saves as an adapter folder.
    pub fn add_lora(&mut self, cfg: &LoraConfig, base: &Path) -> Result<()> {
        cfg.validate()?;
        let c = self.config();
        let widest = c.hidden_size.max(c.intermediate_size).max(c.num_attention_heads * c.head_dim());
        if cfg.rank > widest {
            return Err(Error::Invalid(format!(
                "lora: rank {} is more than the widest layer of the model ({widest}): a LoRA rank beyond a layer's \
                 width adds nothing",
                cfg.rank
            )));
        }
        if self.lora.is_some() {
            return Err(Error::Invalid("the model already has LoRA adapters".into()));
        }
        self.net.add_adapters(&self.vs.root(), cfg);
        let kind = cfg.base_dtype.kind();
        for (name, mut t) in self.vs.variables() {
            if !is_adapter(&name) && !name.starts_with(HEAD_PREFIX) {
                let _ = t.set_requires_grad(false);
                if t.kind() != kind {
                    tch::no_grad(|| t.set_data(&t.to_kind(kind)));
                }
            }
        }
        let base = std::path::absolute(base).map_err(|e| Error::io(base, e))?;
        self.lora = Some(LoraState { config: cfg.clone(), base });
        Ok(())
    }

    /// [`CausalLm::add_lora`] when `cfg` is set (a trainer's `[lora]`), over the model from `base`.
    pub fn maybe_add_lora(&mut self, cfg: Option<&LoraConfig>, base: &Path) -> Result<()> {
        cfg.map_or(Ok(()), |cfg| self.add_lora(cfg, base))
    }

    /// Draws the adapters afresh (B = 0: the base model again), for a round that restarts
    /// from the base.
    pub fn reset_adapters(&mut self) -> Result<()> {
        let cfg = &self.lora.as_ref().ok_or_else(|| Error::Invalid("the model has no LoRA adapters".into()))?.config;
        // In name order, so a seed draws the same adapters in every process.
        let vars: std::collections::BTreeMap<String, Tensor> = self.vs.variables().into_iter().collect();
        tch::no_grad(|| {
            for (name, mut var) in vars {
                if name.contains(".lora_A.") {
                    cfg.a_init(var.size()[1]).set(&mut var);
                } else if name.contains(".lora_B.") {
                    let _ = var.zero_();
                }
            }
        });
        Ok(())
    }

    /// `f` of this model with its adapters folded in (see [`CausalLm::merged`]), or of this
    /// model as it is when it has none: for writers of plain weights (GGUF, engine syncs).
    pub fn with_merged<T>(&self, f: impl FnOnce(&CausalLm) -> Result<T>) -> Result<T> {
        match self.lora {
            Some(_) => f(&self.merged()?),
            None => f(self),
        }
    }

    /// The copy to sample with (see [`Llama::decoding_copy`]), in `kind` or this model's own
    /// dtype. Adapters on an f32 base are merged in first (un-merged, their small matmuls cost
    /// about a third of the decoding speed: 2,558 vs 3,930 tok/s on the small preset); on a bf16
    /// base they stay apart (merged, the update would be rounded, and sampled log-probs would
    /// drift from the trainer's).
    pub fn decoding_copy(&self, kind: Option<Kind>) -> Result<Llama> {
        let kind = kind.unwrap_or(self.net.kind());
        Ok(match &self.lora {
            Some(l) if l.config.base_dtype == BaseDtype::F32 => self.merged()?.net.decoding_copy(kind),
            _ => self.net.decoding_copy(kind),
        })
    }

    /// Whether `name` is trained: every variable, or with LoRA the adapters and a scalar head.
    pub fn trains(&self, name: &str) -> bool {
        self.lora.is_none() || is_adapter(name) || name.starts_with(HEAD_PREFIX)
    }

    /// A plain model whose weights fold the adapters in (`W + alpha/r * B A`): what
    /// `model merge-lora` writes. Without adapters, a copy.
    pub fn merged(&self) -> Result<CausalLm> {
        let merged = CausalLm::new(self.config(), self.vs.device(), self.has_head())?;
        let vars = self.vs.variables();
        let scale = self.lora.as_ref().map_or(1.0, |l| l.config.scale());
        tch::no_grad(|| {
            for (name, mut var) in merged.vs.variables() {
                let module = name.strip_suffix(".weight").unwrap_or(&name);
                let a = vars.get(&format!("{module}.lora_A.weight"));
                let b = vars.get(&format!("{module}.lora_B.weight"));
                let w = &vars[&name];
                match (a, b) {
                    (Some(a), Some(b)) => {
                        let update = b.to_kind(Kind::Float).matmul(&a.to_kind(Kind::Float)) * scale;
                        var.copy_(&(w.to_kind(Kind::Float) + update))
                    }
                    _ => var.copy_(w),
                }
            }
        });
        Ok(merged)
    }
}
