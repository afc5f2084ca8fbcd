//! The Llama-family decoder (Llama 2 and 3, Qwen2, Qwen3, Mistral, Gemma 3), written to match
//! Hugging Face's modeling code tensor for tensor: RMSNorm, rotate-half RoPE (with Llama 3's or
//! linear scaling), grouped-query attention through `scaled_dot_product_attention`, SwiGLU MLP,
//! optional tied embeddings, q/k/v biases and per-head q/k norms; and Gemma 3's variations (see
//! [`Gemma3`]).
//! Variable names are the Hugging Face ones, so safetensors files map one to one.

mod decode;

pub use decode::{CacheWrite, KvCache};

use super::config::{Gemma3, ModelConfig};
use super::lora::{Adapter, LoraConfig, Target};
use std::sync::atomic::{AtomicBool, Ordering};
use tch::nn::{self, Init};
use tch::{Kind, Tensor};

/// A linear layer `y = x W^T + b` with HF's `weight` / `bias` names, and an optional LoRA
/// adapter (`lora_A` / `lora_B` beside them).
#[derive(Debug)]
struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    adapter: Option<Adapter>,
}

/// How a forward pass runs: with the adapters at all, with their dropout (training), and with
/// its matmuls in bf16 over f32 weights (mixed-precision training).
#[derive(Debug, Clone, Copy)]
struct Pass {
    adapters: bool,
    dropout: bool,
    bf16: bool,
}

impl Linear {
    fn new(p: nn::Path, in_dim: i64, out_dim: i64, bias: bool, std: f64) -> Self {
        let weight = p.var("weight", &[out_dim, in_dim], Init::Randn { mean: 0.0, stdev: std });
        let bias = bias.then(|| p.var("bias", &[out_dim], Init::Const(0.0)));
        Linear { weight, bias, adapter: None }
    }

    fn forward(&self, x: &Tensor, pass: Pass) -> Tensor {
        let y = if pass.bf16 && self.weight.kind() == Kind::Float {
            bf16_linear(x, &self.weight, self.bias.as_ref())
        } else if x.kind() == self.weight.kind() {
            x.linear(&self.weight, self.bias.as_ref())
        } else {
            // A trained head stays f32 over a bf16 base.
            x.to_kind(self.weight.kind()).linear(&self.weight, self.bias.as_ref())
        };
        match &self.adapter {
            Some(a) if pass.adapters => y + a.forward(x, pass.dropout),
            _ => y,
        }
    }

    /// Adds a fresh adapter under `p` (`lora_A.weight`, `lora_B.weight`, f32); B = 0, so the
    /// layer's output does not change.
    fn add_adapter(&mut self, p: nn::Path, cfg: &LoraConfig) {
        let (out_dim, in_dim) = self.weight.size2().expect("a weight is [out, in]");
        let r = cfg.rank;
        let a = (&p / "lora_A").var("weight", &[r, in_dim], cfg.a_init(in_dim));
        let b = (&p / "lora_B").var("weight", &[out_dim, r], Init::Const(0.0));
        self.adapter = Some(Adapter { a, b, scale: cfg.scale(), dropout: cfg.dropout });
    }
}

#[derive(Debug)]
struct Block {
    input_norm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    /// RMSNorm weights over each head of q and k (`[head_dim]`; Qwen3, Gemma 3).
    qk_norm: Option<(Tensor, Tensor)>,
    /// Llama's norm before the MLP; Gemma 3's after attention.
    post_norm: Tensor,
    /// Gemma 3's norms before and after the MLP.
    ffn_norms: Option<(Tensor, Tensor)>,
    /// Gemma 3: attends to the last `sliding_window` positions only, with the local RoPE base.
    sliding: bool,
    gate: Linear,
    up: Linear,
    down: Linear,
    /// A decoding copy's q|k|v and gate|up, each stacked into one matmul (see
    /// [`Llama::decoding_copy`]); q, k, v, gate and up are then views into them.
    fused: Option<(Linear, Linear)>,
}

impl Block {
    /// The MLP's gate and up projections of `x`.
    fn gate_up(&self, x: &Tensor, a: Pass) -> (Tensor, Tensor) {
        match &self.fused {
            Some((_, gate_up)) => {
                let y = gate_up.forward(x, a);
                let n = self.gate.weight.size()[0];
                (y.narrow(-1, 0, n), y.narrow(-1, n, n))
            }
            None => (self.gate.forward(x, a), self.up.forward(x, a)),
        }
    }
}

/// The transformer: `forward` gives final hidden states, `logits` and `head_values` read them.
#[derive(Debug)]
pub struct Llama {
    pub config: ModelConfig,
    embed: Tensor,
    blocks: Vec<Block>,
    norm: Tensor,
    lm_head: Option<Linear>,
    /// Optional scalar head (value or reward) on the final hidden state.
    head: Option<Linear>,
    inv_freq: Tensor,
    /// Gemma 3's settings, and the inverse frequencies of its sliding layers.
    gemma: Option<(Gemma3, Tensor)>,
    /// Whether forward passes leave the adapters out (the base model: PPO's reference).
    adapters_off: AtomicBool,
    /// Whether the adapters' dropout is on (a supervised trainer is training).
    adapter_dropout: AtomicBool,
    /// Whether matmuls run in bf16 over the f32 weights (`train.precision = "bf16"`).
    bf16_matmuls: AtomicBool,
}

/// Variable-name prefix of the scalar head; it is saved in its own file.
pub const HEAD_PREFIX: &str = "score";

impl Llama {
    /// Creates the variables under `root` (HF names) with GPT-2 style initialisation: N(0, 0.02),
    /// residual projections scaled by 1/sqrt(2 * layers).
    pub fn new(root: &nn::Path, config: &ModelConfig, with_head: bool) -> Self {
        let c = config;
        let gemma = c.gemma3().expect("a validated config");
        // Gemma 3 stores norm weights as offsets from 1.
        let offsets = gemma.is_some();
        let norm = |p: nn::Path, dim: i64| if offsets { p.zeros("weight", &[dim]) } else { p.ones("weight", &[dim]) };
        let (h, hd) = (c.hidden_size, c.head_dim());
        let (nh, nkv) = (c.num_attention_heads, c.kv_heads());
        let std = 0.02;
        let resid_std = std / (2.0 * c.num_hidden_layers as f64).sqrt();
        let model = root / "model";
        let blocks = (0..c.num_hidden_layers)
            .map(|i| {
                let p = &model / "layers" / i;
                let attn = &p / "self_attn";
                let mlp = &p / "mlp";
                Block {
                    input_norm: norm(&p / "input_layernorm", h),
                    q: Linear::new(&attn / "q_proj", h, nh * hd, c.qkv_bias(), std),
                    k: Linear::new(&attn / "k_proj", h, nkv * hd, c.qkv_bias(), std),
                    v: Linear::new(&attn / "v_proj", h, nkv * hd, c.qkv_bias(), std),
                    o: Linear::new(&attn / "o_proj", nh * hd, h, c.o_bias(), resid_std),
                    qk_norm: c.qk_norm().then(|| (norm(&attn / "q_norm", hd), norm(&attn / "k_norm", hd))),
                    post_norm: norm(&p / "post_attention_layernorm", h),
                    ffn_norms: gemma.as_ref().map(|_| {
                        (norm(&p / "pre_feedforward_layernorm", h), norm(&p / "post_feedforward_layernorm", h))
                    }),
                    sliding: gemma.as_ref().is_some_and(|g| g.sliding[i as usize]),
                    gate: Linear::new(&mlp / "gate_proj", h, c.intermediate_size, c.mlp_bias, std),
                    up: Linear::new(&mlp / "up_proj", h, c.intermediate_size, c.mlp_bias, std),
                    down: Linear::new(&mlp / "down_proj", c.intermediate_size, h, c.mlp_bias, resid_std),
                    fused: None,
                }
            })
            .collect();
        let embed = (&model / "embed_tokens").var("weight", &[c.vocab_size, h], Init::Randn { mean: 0.0, stdev: std });
        let lm_head = (!c.tie_word_embeddings).then(|| Linear::new(root / "lm_head", h, c.vocab_size, false, std));
        let head = with_head.then(|| Linear::new(root / HEAD_PREFIX, h, 1, true, std));
        let inv_freq = Tensor::from_slice(&c.inv_freq()).to_device(root.device());
        let gemma = gemma.map(|g| {
            let local = ModelConfig { rope_theta: g.local_rope_theta, rope_scaling: None, ..c.clone() };
            (g, Tensor::from_slice(&local.inv_freq()).to_device(root.device()))
        });
        let final_norm = norm(&model / "norm", h);
        Llama {
            config: config.clone(),
            embed,
            blocks,
            norm: final_norm,
            lm_head,
            head,
            inv_freq,
            gemma,
            adapters_off: AtomicBool::new(false),
            adapter_dropout: AtomicBool::new(false),
            bf16_matmuls: AtomicBool::new(false),
        }
    }

    /// Adds a LoRA adapter to every `cfg.target_modules` layer of every block, its variables
    /// under `root` beside the layer's (`model.layers.N.self_attn.q_proj.lora_A.weight`, ...).
    pub fn add_adapters(&mut self, root: &nn::Path, cfg: &LoraConfig) {
        for (i, b) in self.blocks.iter_mut().enumerate() {
            let p = root / "model" / "layers" / i;
            for &target in &cfg.target_modules {
                let (group, layer) = match target {
                    Target::QProj => ("self_attn", &mut b.q),
                    Target::KProj => ("self_attn", &mut b.k),
                    Target::VProj => ("self_attn", &mut b.v),
                    Target::OProj => ("self_attn", &mut b.o),
                    Target::GateProj => ("mlp", &mut b.gate),
                    Target::UpProj => ("mlp", &mut b.up),
                    Target::DownProj => ("mlp", &mut b.down),
                };
                layer.add_adapter(&p / group / target.name(), cfg);
            }
        }
    }

    /// Runs `f` on the model without its adapters: the base model, for free.
    pub fn without_adapters<T>(&self, f: impl FnOnce() -> T) -> T {
        let was = self.adapters_off.swap(true, Ordering::SeqCst);
        let out = f();
        self.adapters_off.store(was, Ordering::SeqCst);
        out
    }

    /// Turns the adapters' dropout on (while a supervised trainer trains) or off.
    pub fn set_adapter_dropout(&self, on: bool) {
        self.adapter_dropout.store(on, Ordering::SeqCst);
    }

    /// Turns mixed precision on (matmuls in bf16, all else f32) or off; gradients still reach
    /// the f32 weights.
    pub fn set_bf16_matmuls(&self, on: bool) {
        self.bf16_matmuls.store(on, Ordering::SeqCst);
    }

    pub fn bf16_matmuls(&self) -> bool {
        self.bf16_matmuls.load(Ordering::SeqCst)
    }

    fn pass(&self) -> Pass {
        Pass {
            adapters: !self.adapters_off.load(Ordering::SeqCst),
            dropout: self.adapter_dropout.load(Ordering::SeqCst),
            bf16: self.bf16_matmuls(),
        }
    }

    /// Final (normed) hidden states `[B, T, H]` for token ids `[B, T]` at `positions` `[B, T]`.
    ///
    /// `mask` (bool, broadcastable to `[B, 1, T, keys]`, true = attend) is needed whenever some
    /// keys must not be seen; without it attention is causal when `T > 1` and sees every key when
    /// `T = 1`. With `cache`, keys and values are stored at their positions and attention reads
    /// the cache (see `CacheWrite`).
    pub fn forward(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        mask: Option<&Tensor>,
        mut cache: Option<CacheWrite>,
    ) -> Tensor {
        let global = self.rope(positions, &self.inv_freq);
        let local = self.gemma.as_ref().map(|(_, f)| self.rope(positions, f));
        let rows = cache.as_ref().map(|c| c.cache.rows_for(positions));
        let a = self.pass();
        let mut x = Tensor::embedding(&self.embed, ids, -1, false, false);
        if self.gemma.is_some() {
            // sqrt(hidden), rounded to the weights' dtype as transformers does.
            let scale = Tensor::from((self.config.hidden_size as f64).sqrt()).to_kind(x.kind()).to_device(x.device());
            x *= scale;
        }
        let window = self.window_mask(positions, mask, cache.as_ref().map(|c| c.span));
        for (i, b) in self.blocks.iter().enumerate() {
            let layer_cache = cache.as_mut().zip(rows.as_ref()).map(|(c, rows)| (&mut *c.cache, i, rows, c.span));
            let (cos, sin, mask) = match (&local, &window) {
                (Some((cos, sin)), Some(window)) if b.sliding => (cos, sin, Some(window)),
                _ => (&global.0, &global.1, mask),
            };
            let attn = self.attention(b, &self.rms(&x, &b.input_norm), cos, sin, mask, layer_cache);
            x = match &b.ffn_norms {
                // Gemma 3: x + norm(attn(norm(x))), then the same around the MLP.
                Some((pre, post)) => {
                    let h = &x + self.rms(&attn, &b.post_norm);
                    let (gate, up) = b.gate_up(&self.rms(&h, pre), a);
                    &h + self.rms(&b.down.forward(&(gate.gelu("tanh") * up), a), post)
                }
                None => {
                    let h = &x + attn;
                    let (gate, up) = b.gate_up(&self.rms(&h, &b.post_norm), a);
                    &h + b.down.forward(&(gate.silu() * up), a)
                }
            };
        }
        self.rms(&x, &self.norm)
    }

    /// RMSNorm over the last dimension; Gemma 3's weight is an offset from 1, applied in f32.
    fn rms(&self, x: &Tensor, weight: &Tensor) -> Tensor {
        let dim = *x.size().last().expect("a hidden state has a last dimension");
        match &self.gemma {
            Some(_) => {
                let w = weight.to_kind(Kind::Float) + 1.0;
                x.to_kind(Kind::Float).rms_norm([dim], Some(&w), self.config.rms_norm_eps).to_kind(x.kind())
            }
            None => x.rms_norm([dim], Some(weight), self.config.rms_norm_eps),
        }
    }

    /// Gemma 3's sliding layers' mask (bool, true = attend): the keys within the window before
    /// each query, causal, and within `mask` when one is given. Keys are the sequence's own
    /// positions, or with a cache its columns `0..span`. None for other models.
    fn window_mask(&self, positions: &Tensor, mask: Option<&Tensor>, span: Option<i64>) -> Option<Tensor> {
        let (g, _) = self.gemma.as_ref()?;
        let queries = positions.unsqueeze(1).unsqueeze(-1); // [B, 1, T, 1]
        let keys = match span {
            Some(span) => Tensor::arange(span, (Kind::Int64, positions.device())).view([1, 1, 1, span]),
            None => positions.unsqueeze(1).unsqueeze(1), // [B, 1, 1, T]
        };
        let window = keys.le_tensor(&queries).logical_and(&keys.gt_tensor(&(&queries - g.sliding_window)));
        Some(match mask {
            Some(m) => window.logical_and(m),
            None => window,
        })
    }

    fn attention(
        &self,
        b: &Block,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<(&mut KvCache, usize, &Tensor, i64)>,
    ) -> Tensor {
        let a = self.pass();
        let (bs, t, _) = x.size3().expect("hidden is [B, T, H]");
        let c = &self.config;
        let (nh, nkv, hd) = (c.num_attention_heads, c.kv_heads(), c.head_dim());
        let heads = |y: Tensor, n: i64, norm: Option<&Tensor>| {
            let y = y.view([bs, t, n, hd]);
            let y = match norm {
                Some(w) => self.rms(&y, w),
                None => y,
            };
            y.transpose(1, 2)
        };
        let (q_norm, k_norm) = b.qk_norm.as_ref().map_or((None, None), |(q, k)| (Some(q), Some(k)));
        let (q, k, v) = match &b.fused {
            Some((qkv, _)) => {
                let y = qkv.forward(x, a);
                (y.narrow(2, 0, nh * hd), y.narrow(2, nh * hd, nkv * hd), y.narrow(2, (nh + nkv) * hd, nkv * hd))
            }
            None => (b.q.forward(x, a), b.k.forward(x, a), b.v.forward(x, a)),
        };
        let q = apply_rope(&heads(q, nh, q_norm), cos, sin);
        let k = apply_rope(&heads(k, nkv, k_norm), cos, sin);
        let v = heads(v, nkv, None);
        let (k, v) = match cache {
            Some((cache, layer, rows, span)) => cache.store(layer, &k, &v, rows, span),
            None => (k, v),
        };
        let causal = mask.is_none() && t > 1;
        let mut grouped = nkv != nh;
        let (k, v) = if grouped && mask.is_some() && x.device().is_cuda() {
            // CUDA's fused kernels take a mask or grouped-query heads, not both; given both, torch
            // falls back to its slow math kernel, which also upcasts bf16. Repeating the key and
            // value heads keeps the memory-efficient kernel eligible.
            grouped = false;
            (k.repeat_interleave_self_int(nh / nkv, 1, None), v.repeat_interleave_self_int(nh / nkv, 1, None))
        } else {
            (k, v)
        };
        // Gemma 3 scales by query_pre_attn_scalar^-1/2, not head_dim^-1/2.
        let scale = self.gemma.as_ref().map(|(g, _)| g.query_pre_attn_scalar.powf(-0.5));
        let y = if t == 1 && !x.device().is_cuda() {
            decode_attention(&q, &k, &v, mask, scale.unwrap_or((hd as f64).powf(-0.5)))
        } else {
            Tensor::scaled_dot_product_attention(&q, &k, &v, mask, 0.0, causal, scale, grouped)
        };
        b.o.forward(&y.transpose(1, 2).reshape([bs, t, nh * hd]), a)
    }

    /// cos and sin tables `[B, 1, T, head_dim]` for the positions (HF rotate-half layout).
    fn rope(&self, positions: &Tensor, inv_freq: &Tensor) -> (Tensor, Tensor) {
        let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * inv_freq;
        let emb = Tensor::cat(&[&freqs, &freqs], -1).unsqueeze(1);
        let kind = self.embed.kind();
        (emb.cos().to_kind(kind), emb.sin().to_kind(kind))
    }

    /// Next-token logits `[B, T, V]` from hidden states.
    pub fn logits(&self, hidden: &Tensor) -> Tensor {
        match &self.lm_head {
            Some(head) => head.forward(hidden, self.pass()),
            None if self.bf16_matmuls() && self.embed.kind() == Kind::Float => bf16_linear(hidden, &self.embed, None),
            None => hidden.matmul(&self.embed.tr()),
        }
    }

    /// The scalar head's values `[B, T]`, if the model has one.
    pub fn head_values(&self, hidden: &Tensor) -> Option<Tensor> {
        self.head.as_ref().map(|h| h.forward(hidden, self.pass()).squeeze_dim(-1))
    }

    /// The weights' dtype (a LoRA adapter's and a scalar head's may be f32 over it).
    pub fn kind(&self) -> Kind {
        self.embed.kind()
    }

    pub fn device(&self) -> tch::Device {
        self.embed.device()
    }

    pub fn has_head(&self) -> bool {
        self.head.is_some()
    }

    /// Final hidden states `[B, T, H]` of unpadded (or right-padded) sequences: positions 0..,
    /// causal.
    pub fn forward_hidden(&self, ids: &Tensor) -> Tensor {
        let (b, t) = ids.size2().expect("ids are [B, T]");
        let positions = Tensor::arange(t, (Kind::Int64, ids.device())).unsqueeze(0).expand([b, t], false);
        self.forward(ids, &positions, None, None)
    }

    /// Logits `[B, T, V]` of unpadded (or right-padded) sequences.
    pub fn forward_logits(&self, ids: &Tensor) -> Tensor {
        self.logits(&self.forward_hidden(ids))
    }
}

/// Attention of one query per row, `q` `[B, heads, 1, D]`, over keys and values `[B, kv_heads,
/// S, D]` (mask `[B, 1, 1, S]`, true = attend): the query heads of each key head go through as
/// one small matmul. On CPU this beats SDPA's flash kernel at decoding shapes by ~20% (tiny
/// preset at batch 128, SmolLM2 at batch 64).
fn decode_attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>, scale: f64) -> Tensor {
    let (b, heads, _, dim) = q.size4().expect("queries are [B, heads, 1, D]");
    let kv_heads = k.size()[1];
    let scores = q.reshape([b, kv_heads, heads / kv_heads, dim]).matmul(&k.transpose(-1, -2)) * scale;
    let scores = match mask {
        Some(m) => scores.masked_fill(&m.logical_not(), f64::NEG_INFINITY),
        None => scores,
    };
    scores.softmax(-1, Kind::Float).to_kind(v.kind()).matmul(v).reshape([b, heads, 1, dim])
}

/// `x W^T + b` in bf16, the result back in f32 (mixed precision): gradients reach the f32 `weight`
/// and `bias` through the casts.
fn bf16_linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Tensor {
    let bf16 = |t: &Tensor| t.to_kind(Kind::BFloat16);
    bf16(x).linear(&bf16(weight), bias.map(bf16).as_ref()).to_kind(Kind::Float)
}

fn rotate_half(x: &Tensor) -> Tensor {
    let half = x.size()[3] / 2;
    Tensor::cat(&[x.narrow(3, half, half).neg(), x.narrow(3, 0, half)], 3)
}

fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    x * cos + rotate_half(x) * sin
}
