"""Cross-checks reasonrl's LoRA adapters against Python `peft` (run where torch, transformers and
peft are installed; tests/fixtures/peft-lora was made with torch 1.13.1, transformers 4.40.2 and
peft 0.10.0).

  peft_compat.py make DIR                      a random tiny Llama (DIR/base, transformers), a PEFT
                                               LoRA adapter over it with B != 0 (DIR/adapter) and
                                               PEFT's logits of the adapted model (DIR/logits.json)
  peft_compat.py ours ADAPTER BASE LOGITS_JSON load an adapter reasonrl saved with PEFT over BASE;
                                               compare PEFT's logits with reasonrl's (examples/logits)
"""
import json
import sys

import peft
import torch
import transformers

IDS = [1, 5, 9, 23, 42, 7, 3, 88, 13, 2]


def adapted_logits(model, ids):
    model.eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def make(out):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                      tie_word_embeddings=False)
    base = transformers.LlamaForCausalLM(config)
    base.save_pretrained(f"{out}/base", safe_serialization=True)
    lora = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, task_type="CAUSAL_LM",
                           target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = peft.get_peft_model(base, lora)
    with torch.no_grad():  # as if trained: a fresh adapter (B = 0) would change nothing
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * 0.1)
    model.save_pretrained(f"{out}/adapter", safe_serialization=True)
    logits = adapted_logits(model, IDS)
    json.dump({"ids": IDS, "logits": logits.tolist()}, open(f"{out}/logits.json", "w"))
    print(f"saved base, adapter and logits to {out}")


def ours(adapter, base_dir, logits_json):
    base = transformers.AutoModelForCausalLM.from_pretrained(base_dir, torch_dtype=torch.float32)
    model = peft.PeftModel.from_pretrained(base, adapter)
    theirs = json.load(open(logits_json))
    logits = adapted_logits(model, theirs["ids"])
    diff = (logits - torch.tensor(theirs["logits"])).abs().max().item()
    merged = model.merge_and_unload()
    merged_diff = (adapted_logits(merged, theirs["ids"]) - torch.tensor(theirs["logits"])).abs().max().item()
    ok = diff < 1e-4 and merged_diff < 1e-4
    print(f"our adapter in PEFT: max abs logit difference {diff:.2e}, merged by PEFT {merged_diff:.2e} -> "
          f"{'OK' if ok else 'MISMATCH'}")
    return ok


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2])
    else:
        sys.exit(0 if ours(sys.argv[2], sys.argv[3], sys.argv[4]) else 1)
