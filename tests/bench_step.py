"""Training-step speed and memory: the authors'-style step against rasft.py's own, in one run.

    python tests/bench_step.py --shape 1.5B --lengths uniform --seq 2048 --micro_batch 8   # one GPU
    python tests/bench_step.py --shape 1.5B --lengths real                                 # one GPU
    python tests/bench_step.py --shape tiny --lengths real                                 # CPU (what CI runs)

(a) authors'-style, as they ran it: bf16 weights and AdamW states; micro-batches of `micro_batch` sequences
    in the batch's own (random) order, each padded to its longest, with an attention mask; full-vocabulary
    logits of the policy and a reference forward; the RASFT token weights, mean over each micro-batch.
(b) rasft.train_step with rasft.py's defaults: fp32 master weights under FSDP2 with bf16 compute (one rank
    here, the code path of eight), sequences sorted by length into micro-batches of at most micro_tokens
    computed tokens, log-probs in chunks, the reference term precomputed, each decoder layer compiled on GPUs;
    then the variants in VARIANTS (--rows picks them): padded rows instead of packed ones, SDPA instead of
    flex_attention for packed rows, the vocabulary projection kept for backward instead of recomputed, no FSDP2
    on one rank, activation checkpointing.
Each row builds its own model and frees it, so peak memory is that row's alone. Lengths: `uniform`, every
sequence `seq` tokens (the first eighth prompt), or `real`: log-normal with median 306 and mean 455 tokens,
the prompt + solution lengths of MATH-500 and OlympiadBench measured for DESIGN.md, clipped to [32, seq],
30% prompt. Reported: real (non-padding) tokens/s, padding efficiency (real / computed tokens), peak memory,
and MFU: model FLOPs of the real tokens (6 N per token, lm_head included, plus causal attention) over a
measured matmul ceiling in the same dtype.
"""
import argparse
import contextlib
import dataclasses
import gc
import math
import os
import random
import sys
import time
from unittest import mock

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import rasft  # noqa: E402

SHAPES = {  # hidden, intermediate, layers, heads, kv heads, vocab, tied embeddings (Qwen2.5 configs)
    "tiny": (64, 256, 2, 2, 2, 259, False),
    "0.5B": (896, 4864, 24, 14, 2, 151936, True),
    "1.5B": (1536, 8960, 28, 12, 2, 151936, True),
    "7B": (3584, 18944, 28, 28, 4, 152064, False),
}
REAL_MEDIAN, REAL_MEAN = 306, 455


def build(shape, device, dtype):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    h, inter, layers, heads, kv, vocab, tied = SHAPES[shape]
    config = Qwen2Config(hidden_size=h, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv, vocab_size=vocab, tie_word_embeddings=tied,
                         max_position_embeddings=32768, attn_implementation="sdpa")
    torch.manual_seed(0)
    with torch.device(device):
        return Qwen2ForCausalLM(config).to(dtype)


def batch_of(kind, n, seq, vocab, seed=0):
    """n training samples (rasft's queue entries) and their items, in random order."""
    rng = random.Random(seed)
    sigma = math.sqrt(2 * math.log(REAL_MEAN / REAL_MEDIAN))
    lens = [seq if kind == "uniform" else min(seq, max(32, round(rng.lognormvariate(math.log(REAL_MEDIAN), sigma))))
            for _ in range(n)]
    items = []
    for t in lens:
        p = t // 8 if kind == "uniform" else round(0.3 * t)
        items.append({"prompt": [rng.randrange(vocab) for _ in range(p)],
                      "response": [rng.randrange(vocab) for _ in range(t - p)], "target": None})
    return [rasft.Entry(i, None, 1.0, -5.0) for i in range(n)], items


def model_flops(model, lens):
    c = model.config
    n = sum(p.numel() for p in model.parameters()) - model.model.embed_tokens.weight.numel() * (not c.tie_word_embeddings)
    return sum(t * (6 * n + 6 * c.num_hidden_layers * c.hidden_size * t) for t in lens)  # causal: half of 12 L d T


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


def authors_micro_batches(batch, items, micro_batch):
    return [batch[i:i + micro_batch] for i in range(0, len(batch), micro_batch)]


def authors_step(policy, ref, batch, items, micro_batch, opt, device):
    """Per micro-batch: full logits of policy and reference, RASFT token weights, mean over its tokens."""
    for mb in authors_micro_batches(batch, items, micro_batch):
        lens = [rasft.seq_len(s, items) for s in mb]
        b = rasft.collate(mb, items, device)
        ids, mask = b["input_ids"][:, :max(lens)], b["resp_mask"][:, :max(lens) - 1].float()
        attn = (torch.arange(ids.shape[1], device=device) < torch.tensor(lens, device=device)[:, None]).long()
        with rasft.autocast(device):
            logits = policy(input_ids=ids, attention_mask=attn, use_cache=False).logits[:, :-1].float()      # (B, T, V)
            with torch.no_grad():
                ref_logits = ref(input_ids=ids, attention_mask=attn, use_cache=False).logits[:, :-1].float()  # (B, T, V)
        logp = logits.log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        ref_logp = ref_logits.log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        n = mask.sum(1)
        ratio = torch.exp((ref_logp * mask).sum(1) / n - (logp.detach() * mask).sum(1) / n).clamp(0.4, 1.2)
        w = ratio[:, None] * logp.detach().exp() * mask
        (-(w * logp).sum() / mask.sum()).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def efficiency(plan, items, computed):
    """Real tokens over computed tokens, for micro-batches given as lists of samples."""
    return sum(rasft.seq_len(s, items) for mb in plan for s in mb) / sum(computed(mb) for mb in plan if mb)


# rasft.py's step and its variants: a Config change, or a change to what the step runs
VARIANTS = {
    "packed": {},                                # rasft.py's defaults: packed rows, flex_attention on GPUs
    "padded": {"packing": False},                # a row per sequence, padded to the micro-batch's widest
    "packed_sdpa": {"attn": "sdpa"},             # packed rows through SDPA and its dense mask (CPU: the same as packed)
    "keep_logits": {"recompute": False},         # each chunk's vocabulary projection kept for backward, not recomputed
    "no_fsdp": {"fsdp": False},                  # one GPU without FSDP2 and its hooks (autocast casts the fp32 weights)
    "act_ckpt": {"act_ckpt": True},              # the memory mode: activation checkpointing of decoder layers
}
ROWS = {"uniform": "padded,packed,keep_logits,no_fsdp,act_ckpt", "real": "padded,packed,packed_sdpa,act_ckpt"}


def ours(name, args, cfg, device, dtype):
    """rasft.train_step as train() sets it up, with the variant's change: (label, cfg, step, patches)."""
    v = VARIANTS[name]
    cfg = dataclasses.replace(cfg, packing=v.get("packing", True))
    policy = build(args.shape, device, torch.float32)
    if v.get("act_ckpt"):
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    policy.train()
    compiled = args.compile == "true" or args.compile == "auto" and device.type == "cuda"
    scorer = rasft.Scorer(policy, rasft.frozen_copy(policy, dtype))
    scorer = rasft.shard(scorer, device, compiled) if v.get("fsdp", True) else scorer
    for layer in policy.model.layers if compiled and not v.get("fsdp", True) else []:
        layer.compile()
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-6)
    patches = contextlib.ExitStack()
    patches.enter_context(mock.patch.object(rasft, "PACKED_ATTN", v.get("attn", rasft.PACKED_ATTN)))
    if not v.get("recompute", True):
        patches.enter_context(mock.patch.object(rasft, "checkpoint", lambda fn, *a, use_reentrant: fn(*a)))
    label = f"rasft.py {name}, {cfg.micro_tokens} tokens{', compiled' if compiled else ''}"
    return label, cfg, opt, scorer, patches


def timed(run, device, warmup, steps):
    """Seconds per step after `warmup` steps (compilation, and the recompile a new shape causes), and peak GiB."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup):
        run()
    sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        run()
    sync(device)
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else float("nan")
    return (time.perf_counter() - t) / steps, peak


def profile(run, device, top=15):
    """The ops that took the most time in one more step: device time on a GPU, else CPU time."""
    from torch.profiler import ProfilerActivity
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.profiler.profile(activities=activities) as prof:
        run()
        sync(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=top)


def compiled_graphs():
    from torch._dynamo.utils import counters
    return counters["stats"]["unique_graphs"]


def free(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="tiny", choices=list(SHAPES))
    p.add_argument("--lengths", default="uniform", choices=["uniform", "real"])
    p.add_argument("--seq", type=int, default=2048, help="uniform: every sequence's length; real: the longest")
    p.add_argument("--batch", type=int, default=0, help="sequences per optimizer step (default: micro_batch "
                                                        "for uniform lengths, 64 for real ones)")
    p.add_argument("--micro_batch", type=int, default=0, help="authors'-style sequences per micro-batch "
                                                              "(default: 8 uniform, 2 real: their setting)")
    p.add_argument("--micro_tokens", type=int, default=0, help="rasft.py's token budget (default: its own, or "
                                                               "micro_batch x seq for uniform lengths)")
    p.add_argument("--rows", default="", help="rasft.py's variants to run after the authors'-style step, comma "
                                              f"separated, of {', '.join(VARIANTS)} (default: {ROWS})")
    p.add_argument("--profile", action="store_true", help="print each rasft.py row's top ops in one more step")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--compile", default="auto", choices=["auto", "true", "false"])
    args = p.parse_args(argv)
    uniform = args.lengths == "uniform"
    mb = args.micro_batch or (8 if uniform else 2)
    n = args.batch or (mb if uniform else 64)
    device = rasft.setup_dist()  # on a GPU: a one-rank nccl group, so rasft.py's step runs under FSDP2
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    vocab = SHAPES[args.shape][5]
    batch, items = batch_of(args.lengths, n, args.seq, vocab)
    lens = [rasft.seq_len(s, items) for s in batch]
    micro_tokens = args.micro_tokens or (mb * args.seq if uniform else rasft.Config.micro_tokens)
    cfg = dataclasses.replace(rasft.Config(), loss="rasft", batch_size=n, compile=args.compile, micro_tokens=micro_tokens)
    ceiling = matmul_ceiling(device, dtype, 8192 if device.type == "cuda" else 512)
    flops = model_flops(build(args.shape, "meta", dtype), lens)
    rows = []

    def row(name, plan, computed, run):
        with contextlib.suppress(torch.OutOfMemoryError):
            t = time.perf_counter()
            dt, peak = timed(run, device, args.warmup, args.steps)
            rows.append({"step": name, "real_tok_s": sum(lens) / dt, "padding_eff": efficiency(plan, items, computed),
                         "forwards": len(plan), "peak_gib": peak, "mfu": flops / dt / ceiling,
                         "graphs": compiled_graphs(), "row_s": time.perf_counter() - t})
            if args.profile and name.startswith("rasft.py"):
                rows[-1]["profile"] = profile(run, device)
                print(f"{name}: top ops of one step\n{rows[-1]['profile']}")
        free(device)

    policy = build(args.shape, device, dtype)
    ref = rasft.frozen_copy(policy, dtype)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-6)  # states in the weights' dtype: bf16 on a GPU
    row(f"authors'-style, micro-batch {mb}", authors_micro_batches(batch, items, mb),
        lambda m: len(m) * max(rasft.seq_len(s, items) for s in m),
        lambda: authors_step(policy, ref, batch, items, mb, opt, device))
    del policy, ref, opt
    for name in (args.rows or ROWS[args.lengths]).split(","):
        free(device)
        label, c, opt, scorer, patches = ours(name, args, cfg, device, dtype)
        with patches:
            cap = rasft.row_cap(c, device)
            plan = [[batch[i] for i in m] for m in rasft.micro_batches(batch, items, c, cap)]
            row(label, plan, lambda m: rasft.collate(m, items, "cpu", cap)["input_ids"].numel(),
                lambda: rasft.train_step(scorer, opt, batch, items, c, device))
        del scorer, opt
    base = rows[0]["real_tok_s"] if rows and rows[0]["step"].startswith("authors") else float("nan")
    print(f"shape {args.shape} | {args.lengths} lengths: {n} sequences, mean {sum(lens) / n:.0f}, max {max(lens)} tokens | "
          f"{device.type} {dtype} | matmul ceiling {ceiling / 1e12:.2f} TFLOP/s")
    print("| step | real tokens/s | padding efficiency | forwards | peak GiB | MFU | vs authors'-style | row s |\n"
          "|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['step']} | {r['real_tok_s']:,.0f} | {r['padding_eff']:.2f} | {r['forwards']} | {r['peak_gib']:.1f} | "
              f"{100 * r['mfu']:.1f}% | {r['real_tok_s'] / base:.2f}x | {r['row_s']:.0f} |")
    print(f"graphs compiled in this process: {rows[-1]['graphs'] if rows else 0} (a recompile per new width would "
          f"show as one per micro-batch shape)")
    return rows


if __name__ == "__main__":
    main()
