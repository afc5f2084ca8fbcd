#!/usr/bin/env python3
"""Tiny random models of each supported family, saved by Python `transformers`, with
transformers' own logits: the fixtures tests/model.rs checks our forward pass against.

    python scripts/hf_fixtures.py tests/fixtures/hf

Run once in a scratch venv (torch and transformers from PyPI; see tests/fixtures/hf/README.md
for the versions used); CI only reads the fixtures. Each family gets DIR/FAMILY/ with the model
folder (config.json, generation_config.json, model.safetensors) and logits.json:
{"prompts": [[ids...], ...], "logits": [[[v...] per position] per prompt]}.
"""
import json
import pathlib
import sys

import torch
import transformers

COMMON = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)


def families():
    # Llama 3.x: Meta's frequency-dependent RoPE scaling, with an original context short
    # enough that the prompts below reach the scaled band; three end-of-sequence ids.
    yield "llama3", transformers.LlamaForCausalLM(transformers.LlamaConfig(
        **COMMON, head_dim=16, rope_theta=500000.0, tie_word_embeddings=True,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=16),
        bos_token_id=1, eos_token_id=[2, 3, 4]))
    # Linear RoPE scaling (position interpolation).
    yield "llama-linear", transformers.LlamaForCausalLM(transformers.LlamaConfig(
        **COMMON, rope_theta=10000.0, rope_scaling=dict(type="linear", factor=4.0)))
    # Qwen2: q/k/v biases.
    yield "qwen2", transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        **COMMON, rope_theta=1000000.0, tie_word_embeddings=True))
    # Mistral (its sliding window is longer than the prompts).
    yield "mistral", transformers.MistralForCausalLM(transformers.MistralConfig(**COMMON, sliding_window=128))
    # Gemma 3 (text): scaled embeddings, (1 + weight) norms around attention and MLP, tanh-GELU,
    # q/k norms, query_pre_attn_scalar, and every other layer sliding (window 8, shorter than the
    # long prompt) with its own RoPE base; linear scaling on the global layers only.
    yield "gemma3", transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(
        **{**COMMON, "num_hidden_layers": 3}, head_dim=16, query_pre_attn_scalar=24, sliding_window=8,
        sliding_window_pattern=2, rope_theta=1000000.0, rope_local_base_freq=10000.0,
        rope_scaling=dict(rope_type="linear", factor=2.0), attn_implementation="eager"))
    # Qwen3: q and k normed per head, a head_dim (12) that is not hidden / heads (8), no biases.
    yield "qwen3", transformers.Qwen3ForCausalLM(transformers.Qwen3Config(
        **COMMON, head_dim=12, rope_theta=1000000.0, tie_word_embeddings=True, rms_norm_eps=1e-6))


def prompts():
    g = torch.Generator().manual_seed(1)
    return [torch.randint(5, 97, (n,), generator=g).tolist() for n in (7, 40)]


def main():
    out = pathlib.Path(sys.argv[1])
    for name, model in families():
        torch.manual_seed(0)
        # transformers initialises norms to ones; random ones make the norms count in the check.
        with torch.no_grad():
            for pname, p in model.named_parameters():
                p.copy_(torch.randn_like(p) * (0.3 if "norm" in pname else 0.05) + (1.0 if "norm" in pname else 0.0))
        model.eval()
        if name == "gemma3":
            model.config._attn_implementation = "eager"
        folder = out / name
        model.save_pretrained(folder)
        rows = []
        with torch.no_grad():
            for ids in prompts():
                logits = model(torch.tensor([ids])).logits[0].tolist()
                rows.append([[float(f"{v:.7g}") for v in row] for row in logits])
        json.dump({"prompts": prompts(), "logits": rows}, open(folder / "logits.json", "w"))
        print(f"{name}: saved to {folder} (transformers {transformers.__version__}, torch {torch.__version__})")


if __name__ == "__main__":
    main()
