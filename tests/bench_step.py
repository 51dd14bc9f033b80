"""Training-step speed and memory: an authors'-style step against rasft.py's own step, in one run.

    python tests/bench_step.py --shape 1.5B --micro_batch 8 --seq 2048        # one GPU
    python tests/bench_step.py --shape tiny                                   # CPU, what CI runs

(a) authors'-style: full-vocabulary logits of the policy and a reference forward every step, the RASFT
    token weights on top; (b) rasft.train_step for --loss rasft and --loss sft (precomputed reference
    term, chunked log-probs). Random weights of a named Qwen2.5 shape; every sequence has `seq` tokens,
    the first eighth prompt. tokens/s counts all tokens of the step; MFU = model FLOPs of the policy's
    forward + backward (6 N per token, lm_head included, plus causal attention) over a measured matmul
    ceiling in the same dtype.
"""
import argparse
import contextlib
import dataclasses
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import rasft  # noqa: E402

SHAPES = {  # hidden, intermediate, layers, heads, kv heads, vocab, tied embeddings (Qwen2.5 configs)
    "tiny": (64, 256, 2, 2, 2, 259, False),
    "0.5B": (896, 4864, 24, 14, 2, 151936, True),
    "1.5B": (1536, 8960, 28, 12, 2, 151936, True),
    "7B": (3584, 18944, 28, 28, 4, 152064, False),
}


def build(shape, device, dtype):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    h, inter, layers, heads, kv, vocab, tied = SHAPES[shape]
    config = Qwen2Config(hidden_size=h, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv, vocab_size=vocab, tie_word_embeddings=tied,
                         max_position_embeddings=32768, attn_implementation="sdpa")
    with torch.device(device):
        return Qwen2ForCausalLM(config).to(dtype)


def flops_per_token(model, seq):
    c = model.config
    n = sum(p.numel() for p in model.parameters()) - model.model.embed_tokens.weight.numel() * (not c.tie_word_embeddings)
    return 6 * n + 6 * c.num_hidden_layers * c.hidden_size * seq  # causal attention: half of 12 L d T


def matmul_ceiling(device, dtype, n):
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    t, reps = time.perf_counter(), 10
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def authors_step(policy, ref, batch, opt, device):
    """Full logits for policy and reference, RASFT token weights, mean over the micro-batch's tokens."""
    ids, attn, mask = batch["input_ids"], batch["attention_mask"], batch["resp_mask"].float()
    with rasft.autocast(device):
        logits = policy(input_ids=ids, attention_mask=attn, use_cache=False).logits[:, :-1].float()          # (B, T, V)
        with torch.no_grad():
            ref_logits = ref(input_ids=ids, attention_mask=attn, use_cache=False).logits[:, :-1].float()      # (B, T, V)
    logp = logits.log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    ref_logp = ref_logits.log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    n = mask.sum(1)
    ratio = torch.exp((ref_logp * mask).sum(1) / n - (logp.detach() * mask).sum(1) / n).clamp(0.4, 1.2)
    w = (ratio[:, None] * logp.detach().exp() * mask)
    loss = -(w * logp).sum() / mask.sum()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def measure(name, step, device, tokens, flops, ceiling, steps):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    step()  # warm-up (and compilation)
    sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    dt = (time.perf_counter() - t) / steps
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else float("nan")
    return {"step": name, "tok_s": tokens / dt, "peak_gib": peak, "mfu": flops * tokens / dt / ceiling}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="tiny", choices=list(SHAPES))
    p.add_argument("--micro_batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--act_ckpt", default="both", choices=["both", "true", "false"])
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    policy = build(args.shape, device, torch.float32)
    ref = rasft.frozen_copy(policy, dtype)
    vocab, b, t = policy.config.vocab_size, args.micro_batch, args.seq
    items = [{"prompt": torch.randint(0, vocab, (t // 8,)).tolist(), "response": torch.randint(0, vocab, (t - t // 8,)).tolist(),
              "target": None} for _ in range(b)]
    batch = [{"item": i, "response": None, "adv": 1.0, "ref_logp": -5.0} for i in range(b)]
    tokens, flops = b * t, flops_per_token(policy, t)
    ceiling = matmul_ceiling(device, dtype, 8192 if device.type == "cuda" else 512)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-6)
    ckpts = {"both": [False, True], "true": [True], "false": [False]}[args.act_ckpt]
    rows = []
    for ckpt in ckpts:
        if ckpt:
            policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        policy.train()
        tag = f"act ckpt {'yes' if ckpt else 'no'}"
        full = rasft.collate(batch, items, device)
        with contextlib.suppress(torch.OutOfMemoryError):
            rows.append(measure(f"authors'-style, {tag}", lambda: authors_step(policy, ref, full, opt, device),
                                device, tokens, flops, ceiling, args.steps))
        scorer = rasft.Scorer(policy, ref)
        for loss in ("rasft", "sft"):
            cfg = dataclasses.replace(rasft.Config(), loss=loss, micro_batch=b, batch_size=b, act_ckpt=ckpt)
            with contextlib.suppress(torch.OutOfMemoryError):
                rows.append(measure(f"rasft.py --loss {loss}, {tag}",
                                    lambda: rasft.train_step(scorer, opt, batch, items, cfg, device),
                                    device, tokens, flops, ceiling, args.steps))
        policy.gradient_checkpointing_disable()
    base = max((r["tok_s"] for r in rows if r["step"].startswith("authors")), default=float("nan"))
    print(f"shape {args.shape} | micro-batch {b} x {t} | {device.type} {dtype} | matmul ceiling {ceiling / 1e12:.2f} TFLOP/s")
    print("| step | tokens/s | peak GiB | MFU | vs best authors'-style |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['step']} | {r['tok_s']:,.0f} | {r['peak_gib']:.1f} | {100 * r['mfu']:.1f}% | {r['tok_s'] / base:.2f}x |")
    return rows


if __name__ == "__main__":
    main()
