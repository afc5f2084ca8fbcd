//! Decoding: the KV cache, and the copy of a model that samples (fused projections, another
//! dtype).

use super::{Block, Linear, Llama};
use crate::model::lora::Adapter;
use std::sync::atomic::{AtomicBool, Ordering};
use tch::{Kind, Tensor};

/// Keys and values of every layer, `[B, kv_heads, capacity, head_dim]`. Rows are right-aligned
/// at column 0 and never padded on the left, so the token at position `p` of a row lives in
/// column `p`: a decoding step writes each row at its own position, and a finished row's slot
/// can take a new sequence without touching the others (continuous batching).
#[derive(Debug)]
pub struct KvCache {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
}

/// A forward pass through a cache: token `t` of row `b` is stored in column `positions[b, t]`,
/// and attention reads columns `0..span` (what the mask, if any, covers).
#[derive(Debug)]
pub struct CacheWrite<'a> {
    pub cache: &'a mut KvCache,
    pub span: i64,
}

impl KvCache {
    /// The columns each row has room for.
    pub fn capacity(&self) -> i64 {
        self.keys.first().map_or(0, |k| k.size()[2])
    }

    /// Makes room for `columns` columns (new ones are zeros).
    pub fn reserve(&mut self, columns: i64) {
        for t in self.keys.iter_mut().chain(self.values.iter_mut()) {
            let [b, heads, old, dim] = t.size()[..] else { panic!("a cache is [B, heads, capacity, dim]") };
            if columns > old {
                *t = Tensor::cat(&[&*t, &t.new_zeros([b, heads, columns - old, dim], (t.kind(), t.device()))], 2);
            }
        }
    }

    /// Keeps only the batch rows `rows` (an int64 index tensor): finished sequences stop costing
    /// compute.
    pub fn select_rows(&mut self, rows: &Tensor) {
        for t in self.keys.iter_mut().chain(self.values.iter_mut()) {
            *t = t.index_select(0, rows);
        }
    }
    /// Copies rows `from` of `other` (its first `columns` columns) into rows `to` of this cache:
    /// one prefilled prompt serves every slot that samples from it.
    pub fn copy_rows(&mut self, to: &Tensor, other: &KvCache, from: &Tensor, columns: i64) {
        let pairs = self.keys.iter_mut().zip(&other.keys).chain(self.values.iter_mut().zip(&other.values));
        for (dst, src) in pairs {
            let _ = dst.narrow(2, 0, columns).index_copy_(0, to, &src.narrow(2, 0, columns).index_select(0, from));
        }
    }
    /// Where token `t` of row `b` goes for each key/value head `h`, flattened `[B * heads * T]`:
    /// the cache's row `(b * heads + h) * capacity + positions[b, t]` when viewed as `[-1,
    /// head_dim]`. One `index_copy_` of whole rows then stores a layer's keys: a bf16 `scatter_`
    /// (the obvious way) costs 40x as much on CPU.
    pub(super) fn rows_for(&self, positions: &Tensor) -> Tensor {
        let [b, heads, capacity, _] = self.keys[0].size()[..] else { panic!("a cache is [B, heads, capacity, dim]") };
        let opts = (Kind::Int64, positions.device());
        let base = Tensor::arange(b * heads, opts).view([b, heads, 1]) * capacity;
        (base + positions.unsqueeze(1)).view([-1])
    }

    pub(super) fn store(&mut self, layer: usize, k: &Tensor, v: &Tensor, rows: &Tensor, span: i64) -> (Tensor, Tensor) {
        let dim = *k.size().last().expect("keys have a head dimension");
        assert!(span <= self.keys[layer].size()[2], "KV cache capacity exceeded");
        for (cache, new) in [(&self.keys[layer], k), (&self.values[layer], v)] {
            let _ = cache.view([-1, dim]).index_copy_(0, rows, &new.reshape([-1, dim]));
        }
        (self.keys[layer].narrow(2, 0, span), self.values[layer].narrow(2, 0, span))
    }
}

impl Linear {
    /// This layer detached, in `kind` (a shallow copy when it is in `kind` already); an
    /// adapter stays as it is.
    fn copy_as(&self, kind: Kind) -> Linear {
        Linear {
            weight: self.weight.detach().to_kind(kind),
            bias: self.bias.as_ref().map(|b| b.detach().to_kind(kind)),
            adapter: self.adapter.as_ref().map(|a| Adapter {
                a: a.a.detach(),
                b: a.b.detach(),
                scale: a.scale,
                dropout: a.dropout,
            }),
        }
    }

    /// `layers` stacked into one layer, in `kind`, and each of them as a view into it. None when
    /// one has an adapter.
    fn stack(layers: &[&Linear], kind: Kind) -> Option<(Linear, Vec<Linear>)> {
        if layers.iter().any(|l| l.adapter.is_some()) {
            return None;
        }
        let cat = |ts: Vec<&Tensor>| Tensor::cat(&ts, 0).detach().to_kind(kind);
        let weight = cat(layers.iter().map(|l| &l.weight).collect());
        let bias = layers.iter().map(|l| l.bias.as_ref()).collect::<Option<Vec<_>>>().map(cat);
        let mut start = 0;
        let views = layers
            .iter()
            .map(|l| {
                let n = l.weight.size()[0];
                start += n;
                Linear {
                    weight: weight.narrow(0, start - n, n),
                    bias: bias.as_ref().map(|b| b.narrow(0, start - n, n)),
                    adapter: None,
                }
            })
            .collect();
        Some((Linear { weight, bias, adapter: None }, views))
    }
}

impl Block {
    /// See [`Llama::decoding_copy`].
    fn decoding_copy(&self, kind: Kind) -> Block {
        let norm = |t: &Tensor| t.detach().to_kind(kind);
        let qkv = Linear::stack(&[&self.q, &self.k, &self.v], kind);
        let gate_up = Linear::stack(&[&self.gate, &self.up], kind);
        let ([q, k, v], [gate, up], fused) = match (qkv, gate_up) {
            (Some((qkv, views)), Some((gate_up, halves))) => {
                (views.try_into().expect("three views"), halves.try_into().expect("two views"), Some((qkv, gate_up)))
            }
            _ => (
                [&self.q, &self.k, &self.v].map(|l| l.copy_as(kind)),
                [&self.gate, &self.up].map(|l| l.copy_as(kind)),
                None,
            ),
        };
        Block {
            input_norm: norm(&self.input_norm),
            q,
            k,
            v,
            o: self.o.copy_as(kind),
            qk_norm: self.qk_norm.as_ref().map(|(q, k)| (norm(q), norm(k))),
            post_norm: norm(&self.post_norm),
            ffn_norms: self.ffn_norms.as_ref().map(|(pre, post)| (norm(pre), norm(post))),
            sliding: self.sliding,
            gate,
            up,
            down: self.down.copy_as(kind),
            fused,
        }
    }
}

impl Llama {
    /// An empty cache for `batch` rows and up to `capacity` positions.
    pub fn new_cache(&self, batch: i64, capacity: i64) -> KvCache {
        let c = &self.config;
        let shape = [batch, c.kv_heads(), capacity, c.head_dim()];
        let opts = (self.embed.kind(), self.embed.device());
        let n = self.blocks.len();
        KvCache {
            keys: (0..n).map(|_| Tensor::zeros(shape, opts)).collect(),
            values: (0..n).map(|_| Tensor::zeros(shape, opts)).collect(),
        }
    }

    /// A detached copy to sample with, its weights in `kind`, and each block's q/k/v and
    /// gate/up projections stacked into one matmul each (when they have no adapter): a decoding
    /// step of the tiny preset at batch 128 is a few dozen small ops per layer, and each one
    /// saved counts. Sampling calls it per rollout, so later updates to this model never reach
    /// a copy.
    pub fn decoding_copy(&self, kind: Kind) -> Llama {
        tch::no_grad(|| Llama {
            config: self.config.clone(),
            embed: self.embed.detach().to_kind(kind),
            blocks: self.blocks.iter().map(|b| b.decoding_copy(kind)).collect(),
            norm: self.norm.detach().to_kind(kind),
            lm_head: self.lm_head.as_ref().map(|l| l.copy_as(kind)),
            head: self.head.as_ref().map(|l| l.copy_as(l.weight.kind())),
            inv_freq: self.inv_freq.shallow_clone(),
            gemma: self.gemma.as_ref().map(|(g, f)| (g.clone(), f.shallow_clone())),
            adapters_off: AtomicBool::new(self.adapters_off.load(Ordering::SeqCst)),
            adapter_dropout: AtomicBool::new(false),
            bf16_matmuls: AtomicBool::new(false),
        })
    }
}
