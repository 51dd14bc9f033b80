"""What a large run depends on and only a GPU shows, in one short run (tests/gpu_check.sh runs it under torchrun on
one GPU: nccl and FSDP2, the code path of eight). One line per check; the numbers also go to --json.

1. compile: the compiled decoder layers, policy and reference (--layers each: 28 is Qwen2.5-7B's 56 instances),
   through training forwards and backwards (activation checkpointing on, as for real models), no-grad policy forwards (routing, probes) and reference forwards,
   each at several widths: graphs compiled, recompiles, and whether dynamo hit its recompile limit (after which
   it silently runs the remaining layers uncompiled).
2. FSDP2 root: the memory a no-grad forward leaves unsharded (policy and reference embeddings, norms, output
   layers), freed by the engine's free() hook before each wake-up; the bytes the weight push gathers (bf16).
3. verifier: forked math workers and code sandboxes, started from a process that holds CUDA and an NCCL group.
4. the automatic vLLM memory share, as make_engine computes it here.
5. vLLM, where installed (else one line says it is skipped): a wake-up for the weights, then no prompts (a rank
   whose share of a refresh is empty) must give all of the engine's memory back; the free memory around each
   wake-up; per-prompt budgets.

    torchrun --standalone --nproc_per_node 1 tests/check_scale.py [--layers 28] [--json FILE]
"""
import argparse
import importlib.util
import json
import logging
import os
import sys
import tempfile
import time

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import rasft  # noqa: E402

MIB = 2 ** 20


def build(tok, a):
    """A Qwen2 with the layer count of a real model and a narrow width, so compiling and sharding it is quick."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=4 * a.hidden,
                         num_hidden_layers=a.layers, num_attention_heads=a.hidden // 64, num_key_value_heads=2,
                         max_position_embeddings=4096, tie_word_embeddings=False, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, bos_token_id=None, dtype=torch.float32,
                         attn_implementation="sdpa")
    return Qwen2ForCausalLM(config)


class Recompiles(logging.Handler):
    """Counts dynamo's recompile messages and its recompile-limit warnings."""

    def __init__(self):
        super().__init__()
        self.recompiles, self.limit_hits, self.reasons = 0, 0, []

    def emit(self, record):
        msg = record.getMessage()
        if "Recompiling function" in msg:
            self.recompiles += 1
            self.reasons += [line.strip()[:160] for line in msg.splitlines() if line.strip().startswith("- ")][:1]
        elif "hit config." in msg:
            self.limit_hits += 1


def check_compile(scorer, device, a, out):
    from torch._dynamo.utils import counters
    watch = Recompiles()
    torch._logging.set_logs(recompiles=True)
    for name in ("torch._dynamo", "torch"):
        logging.getLogger(name).addHandler(watch)
    widths, phases = [97, 384, 1023, 2048][:a.widths], {}
    for phase, which, grad in (("policy train", "policy", True), ("policy no-grad", "policy", False),
                               ("reference", "ref", False)):
        t, before = time.time(), (counters["stats"]["unique_graphs"], watch.recompiles)
        for w in widths:
            ids = torch.randint(0, a.vocab, (2, w), device=device)
            mask = torch.ones(2, w - 1, dtype=torch.bool, device=device)
            with torch.set_grad_enabled(grad), rasft.autocast(device):
                logp, _ = scorer(ids, mask, which=which)
            if grad:
                logp.float().sum().backward()
        phases[phase] = dict(graphs=counters["stats"]["unique_graphs"] - before[0],
                             recompiles=watch.recompiles - before[1], s=round(time.time() - t, 1))
    scorer.policy.zero_grad(set_to_none=True)
    instances = len(scorer.policy.model.layers) + len(scorer.ref.model.layers)
    out["compile"] = dict(instances=instances, widths=widths, phases=phases, recompile_limit_hits=watch.limit_hits,
                          reasons=sorted(set(watch.reasons))[:5])
    rasft.print0(f"compile: {instances} compiled layer instances, widths {widths} | " + " | ".join(
        f"{k}: {v['graphs']} graphs, {v['recompiles']} recompiles, {v['s']} s" for k, v in phases.items())
        + f" | recompile limit hit {watch.limit_hits} times")
    for r in out["compile"]["reasons"]:
        rasft.print0(f"  recompile reason: {r}")


def check_root(scorer, device, a, out):
    if not hasattr(scorer, "reshard"):
        rasft.print0("fsdp root: skipped (not sharded: FSDP2 shards every GPU run and every multi-rank run)")
        return
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    used = torch.cuda.memory_allocated if device.type == "cuda" else (lambda: 0)
    root = sum(p.numel() for n, p in scorer.named_parameters() if ".layers." not in n)
    ids = torch.randint(0, a.vocab, (2, 512), device=device)
    with torch.no_grad(), rasft.autocast(device):
        scorer(ids, torch.ones(2, 511, dtype=torch.bool, device=device), which="policy")
        scorer(ids, torch.ones(2, 511, dtype=torch.bool, device=device), which="ref")
    sync()
    held = used()
    unsharded = type(scorer.policy.model.embed_tokens.weight).__name__ != "DTensor"
    rasft.VLLMEngine(None, [], sleeps=False, free=scorer.reshard).free()  # the hook make_engine gives the engine
    sync()
    freed = held - used()
    t = time.time()
    pushed = sum(x.numel() * x.element_size() for _, x in rasft.full_params(scorer.policy))
    sync()
    masters = sum(p.numel() * 4 for p in scorer.policy.parameters())
    out["root"] = dict(unsharded_after_no_grad_forward=unsharded, freed_mib=freed / MIB, root_params=root,
                       pushed_mib=pushed / MIB, fp32_masters_mib=masters / MIB, push_s=time.time() - t)
    rasft.print0(f"fsdp root: unsharded after a no-grad forward: {unsharded} | freed by free(): {freed / MIB:.0f} MiB "
          f"(root bf16: {2 * root / MIB:.0f} MiB) | push gathers {pushed / MIB:.0f} MiB (fp32 masters: "
          f"{masters / MIB:.0f} MiB) in {time.time() - t:.2f} s")


def check_verifier(out):
    code = {"tests": "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n"}
    pairs = [("so \\boxed{\\frac{1}{2}}", {"answer": "0.5"}), ("we get \\boxed{(x+1)^2}", {"answer": "x^2+2x+1"}),
             ("thus \\boxed{3}", {"answer": "4"}), ("```python\ndef add(a, b):\n    return a + b\n```", code),
             ("```python\ndef add(a, b):\n    return a - b\n```", code)] * 8
    t = time.time()
    ok = rasft.verify_all(pairs)
    right = ok == [True, True, False, True, False] * 8
    out["verifier"] = dict(pairs=len(pairs), right=right, s=time.time() - t)
    where = "CUDA + NCCL" if torch.cuda.is_available() else "CPU + gloo"
    rasft.print0(f"verifier under {where}: {len(pairs)} pairs in {time.time() - t:.2f} s | results right: {right}")


def check_share(scorer, out):
    adam = 8 * sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in scorer.policy.parameters())
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info()
    out["share"] = rasft.vllm_memory(free, total, adam)
    rasft.print0(f"vllm memory share: {out['share']:.3f} of {total / 2 ** 30:.1f} GiB ({free / 2 ** 30:.1f} GiB free, "
          f"AdamW states to come {adam / 2 ** 30:.2f} GiB)")


def check_vllm(scorer, tok, out):
    if importlib.util.find_spec("vllm") is None:
        rasft.print0("vllm: skipped (not installed here): sleep after a wake-up with no prompts, free memory around "
              "wake-ups and per-prompt budgets are unmeasured")
        return
    path = tempfile.mkdtemp()
    rasft.save_hf(scorer.policy, tok, path)
    gib = lambda: round(torch.cuda.mem_get_info()[0] / 2 ** 30, 2)  # noqa: E731
    eng = rasft.VLLMEngine.from_pretrained(path, tok, rasft.stop_token_ids(tok), 1024, out.get("share", 0.3),
                                           sleeps=True, dummy=True, free=getattr(scorer, "reshard", None))
    asleep = gib()
    eng.load_weights(rasft.full_params(scorer.policy))
    weights = dict(eng.free_gib)
    eng.generate([], n=3)  # this rank's share of the refresh is empty
    empty = dict(asleep=asleep, after_weights=weights, after_no_prompts=gib(),
                 sleeping=eng.llm.llm_engine.is_sleeping(), awake=eng.awake)
    eng.load_weights(rasft.full_params(scorer.policy))
    caps = [5, 40, 1, 17]
    gens = eng.generate([[5, 6, 7, 8] * 8] * 4, n=2, temperature=1.0, max_tokens=caps)
    within = all(len(s) <= c for g, c in zip(gens, caps) for s in g)
    out["vllm"] = dict(no_prompts=empty, free_gib=eng.free_gib, after_generate=gib(), budgets_kept=within)
    rasft.print0(f"vllm, a rank with no prompts: free {asleep} GiB asleep, {weights} around the weights' wake-up, "
          f"{empty['after_no_prompts']} GiB after generate([]) (weights given back: "
          f"{empty['after_no_prompts'] >= asleep - 0.1})")
    rasft.print0(f"vllm, a rank with prompts: free GiB around each wake-up {eng.free_gib}, {gib()} after | per-prompt "
          f"budgets {caps} kept: {within}")


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, default=28)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--vocab", type=int, default=152064)
    p.add_argument("--widths", type=int, default=3, help="how many of the widths 97, 384, 1023, 2048")
    p.add_argument("--act_ckpt", type=rasft._str2bool, default=True, help="as rasft.py's default for real models")
    p.add_argument("--json")
    a = p.parse_args(argv)
    device, out = rasft.setup_dist(), {}
    tok = rasft.tiny_tokenizer()
    policy = build(tok, a)
    ref = rasft.frozen_copy(policy, torch.bfloat16 if device.type == "cuda" else torch.float32)
    if a.act_ckpt:  # as train() does: the backward recomputes each compiled layer
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    scorer = rasft.shard(rasft.Scorer(policy, ref), device, compile_layers=True)
    check_compile(scorer, device, a, out)
    check_root(scorer, device, a, out)
    check_verifier(out)
    if device.type == "cuda":
        check_share(scorer, out)
        check_vllm(scorer, tok, out)
    if a.json:
        json.dump(out, open(a.json, "w"), indent=1, default=str)
    rasft.close_vllm()  # first: its teardown uses the process group (and then destroys it)
    if dist.is_initialized():
        dist.destroy_process_group()
    return out


if __name__ == "__main__":
    main()
