"""The PyTorch side of scripts/bench-vs-pytorch.sh: times PyTorch eager training and
transformers `generate` on a reasonrl model folder with the workloads `reasonrl bench` uses, then
prints both side by side with their ratios. A benchmark, never a runtime dependency.

  bench_pytorch.py MODEL_DIR OURS_FIXED.json OURS_WORKLOAD.json PROMPTS.jsonl [options]
"""

import argparse
import json
import os
import re
import time

import torch
import transformers


def matmul_params(model):
    """Parameters that take part in a matmul per token: all but the input embedding, plus the
    (possibly tied) output projection."""
    c = model.config
    total = sum(p.numel() for p in model.parameters())
    embed = c.vocab_size * c.hidden_size
    return total - embed + (embed if c.tie_word_embeddings else 0)


def peak_gflops():
    """Best f32 matmul rate on this machine with the current thread count: the 'peak' the
    achieved rates are a share of."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    best = 0.0
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * 2048**3 / (time.perf_counter() - start) / 1e9)
    return best


def train_step_ms(model, steps, batch=16, seq=128):
    """Forward + backward + AdamW on random ids, as `reasonrl bench` does (median step, ms)."""
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(3, model.config.vocab_size - 1, (batch, seq), generator=g)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        logits = model(ids[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    times = []
    for _ in range(max(steps, 1)):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e3  # the median step, as reasonrl bench reports


def generate_fixed(model, batch, prompt_tokens, new_tokens):
    """New tokens/s of `generate` when every row runs to the end (temperature 1, no top-k)."""
    g = torch.Generator().manual_seed(batch)
    ids = torch.randint(3, model.config.vocab_size - 1, (batch, prompt_tokens), generator=g)
    kwargs = dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=new_tokens,
                  min_new_tokens=new_tokens, pad_token_id=0, attention_mask=torch.ones_like(ids))
    model.generate(ids[:1], **{**kwargs, "attention_mask": torch.ones_like(ids[:1])})
    start = time.perf_counter()
    out = model.generate(ids, **kwargs)
    return (out.shape[0] * (out.shape[1] - prompt_tokens)) / (time.perf_counter() - start)


class AnswerLineStop(transformers.StoppingCriteria):
    """Stops a row once its response holds a complete `#### N` line, as reasonrl's sampler does;
    records how many tokens each row really used."""

    def __init__(self, tokenizer, newline, prompt_len, batch):
        self.tokenizer, self.newline, self.prompt_len = tokenizer, newline, prompt_len
        self.used = [None] * batch

    def __call__(self, input_ids, scores, **kwargs):
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool)
        for r in range(input_ids.shape[0]):
            if self.used[r] is None and int(input_ids[r, -1]) in self.newline:
                text = self.tokenizer.decode(input_ids[r, self.prompt_len:], skip_special_tokens=True)
                if re.search(r"####[^\n]*\d[^\n]*\n", text):
                    self.used[r] = input_ids.shape[1] - self.prompt_len
            done[r] = self.used[r] is not None
        return done


def generate_workload(model, tokenizer, prompts, k, temperature, max_new_tokens, batch_rows):
    """The eval workload through `generate`: k samples of each prompt, batch_rows rows a call
    (prompts left-padded, longest first), each call running until its last row stops."""
    eos = model.config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    per_call = max(1, batch_rows // k)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    newline = {i for i in range(len(tokenizer)) if "\n" in tokenizer.decode([i])}  # tokens that end a line
    useful = 0
    start = time.perf_counter()
    for c in range(0, len(order), per_call):
        chunk = [prompts[i] for i in order[c:c + per_call]]
        width = max(len(p) for p in chunk)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
        stop = AnswerLineStop(tokenizer, newline, width, len(chunk) * k)
        out = model.generate(ids, attention_mask=mask, do_sample=True, temperature=temperature, top_k=0,
                             top_p=1.0, max_new_tokens=max_new_tokens, num_return_sequences=k,
                             pad_token_id=pad, stopping_criteria=[stop])
        for r, row in enumerate(out[:, width:].tolist()):
            ends = [i + 1 for i, t in enumerate(row) if t in eos][:1]
            useful += min([len(row)] + ends + ([stop.used[r]] if stop.used[r] else []))
    return useful / (time.perf_counter() - start), useful


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("ours_fixed")
    ap.add_argument("ours_workload")
    ap.add_argument("prompts")
    ap.add_argument("--train-steps", type=int, default=5)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("-k", type=int, default=16)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--max-new-tokens", type=int, default=160)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()

    ours = json.load(open(args.ours_fixed))[0]
    ours_workload = json.load(open(args.ours_workload))[0]
    prompts = [json.loads(line) for line in open(args.prompts)]
    model = transformers.AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
    # The tokenizer only decodes responses for the stop rule; tokenizer.json alone serves.
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=os.path.join(args.model_dir, "tokenizer.json"))
    n = matmul_params(model)
    peak = peak_gflops()
    print(f"PyTorch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads, "
          f"f32; {sum(p.numel() for p in model.parameters()):,} parameters ({n:,} in matmuls); "
          f"measured f32 matmul peak {peak:.0f} GFLOP/s")

    rows = []

    def row(name, ours_value, theirs_value, unit, flops_per_unit, higher_is_better=True):
        ratio = ours_value / theirs_value if higher_is_better else theirs_value / ours_value
        rate = (ours_value if higher_is_better else 1e3 / ours_value) * flops_per_unit / 1e9
        rows.append((name, ours_value, theirs_value, unit, ratio, rate))

    model.train()
    theirs_step = train_step_ms(model, args.train_steps)
    train_tokens = 16 * 128
    row("train step (16x128, fwd+bwd+AdamW)", ours["train_step_ms"], theirs_step, "ms", 6 * n * train_tokens, False)
    model.eval()
    with torch.no_grad():
        for batch, ours_tps in ours["sampling_tokens_per_s"]:
            theirs = generate_fixed(model, batch, args.prompt_tokens, args.new_tokens)
            row(f"sample, batch {batch} (every row to the end)", ours_tps, theirs, "tok/s", 2 * n)
        theirs, useful = generate_workload(model, tokenizer, prompts, args.k, args.temperature,
                                           args.max_new_tokens, args.batch_size)
        row(f"eval workload ({len(prompts)} x {args.k}, batch {args.batch_size})", ours_workload["tokens_per_s"],
            theirs, "tok/s", 2 * n)
    print(f"eval workload: reasonrl {ours_workload['new_tokens']:,} new tokens, {ours_workload['stopped_early']:.0%} "
          f"stopped early; transformers {useful:,} useful new tokens")
    print()
    print(f"| {'measure':<44} | {'reasonrl':>10} | {'PyTorch':>10} | unit  | reasonrl speed-up | reasonrl GFLOP/s (share of peak) |")
    print(f"|{'-' * 46}|{'-' * 12}|{'-' * 12}|-------|-------------------|----------------------------------|")
    for name, a, b, unit, ratio, rate in rows:
        print(f"| {name:<44} | {a:>10.1f} | {b:>10.1f} | {unit:<5} | {ratio:>16.2f}x | {rate:>8.1f} ({rate / peak:>4.0%}) |")


if __name__ == "__main__":
    main()
