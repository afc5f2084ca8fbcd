"""Cross-checks reasonrl's model folders against Python `transformers` (run where torch and
transformers are installed, e.g. the GPU machine; see scripts/gpu-check.sh).

  hf_compat.py ours DIR LOGITS_JSON      load a folder reasonrl saved; compare with its logits
  hf_compat.py make DIR ARCH             save a random small model with transformers (sharded)
  hf_compat.py theirs DIR LOGITS_JSON    compare transformers' logits with reasonrl's on DIR
"""
import json
import sys

import torch
import transformers


def logits_of(model_dir, ids):
    # transformers 5 names the argument `dtype`; 4.x, `torch_dtype`.
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    except TypeError:
        model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def compare(model_dir, logits_json, label):
    ours = json.load(open(logits_json))
    theirs = logits_of(model_dir, ours["ids"])
    diff = (theirs - torch.tensor(ours["logits"])).abs().max().item()
    ok = diff < 1e-4
    print(f"{label}: max abs logit difference {diff:.2e} -> {'OK' if ok else 'MISMATCH'}")
    return ok


def make(model_dir, arch):
    torch.manual_seed(0)
    common = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    if arch == "qwen2":
        config = transformers.Qwen2Config(**common, tie_word_embeddings=True, rope_theta=1e6)
        model = transformers.Qwen2ForCausalLM(config)
    else:
        config = transformers.LlamaConfig(**common, tie_word_embeddings=False, rope_theta=5e5)
        model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(model_dir, max_shard_size="50KB")  # force several shards
    print(f"saved a random {arch} model to {model_dir}")


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "make":
        make(sys.argv[2], sys.argv[3])
    else:
        sys.exit(0 if compare(sys.argv[2], sys.argv[3], f"{cmd} {sys.argv[2]}") else 1)
