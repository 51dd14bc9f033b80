"""Rollout backends on the same model and prompts: generated tokens/s of vLLM vs HF `generate`, and the
time to get new weights into vLLM: an in-memory push vs the authors' way (save a checkpoint, start a new
engine on it, which costs a new process: import, load, KV cache, warm-up).

    python tests/bench_rollout.py [--prompts 64 --n 3 --max_tokens 64]
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

import torch  # noqa: E402

import rasft  # noqa: E402


def prompts_of(tok, k, cfg):
    rows = rasft.demo_rows(k, seed=7)
    return [tok(rasft.prompt_text(tok, r["problem"], False, cfg), add_special_tokens=False)["input_ids"] for r in rows]


def timed(f, *a, **kw):
    t = time.perf_counter()
    out = f(*a, **kw)
    return out, time.perf_counter() - t


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--n", type=int, default=3)
    p.add_argument("--max_tokens", type=int, default=64)
    p.add_argument("--max_len", type=int, default=256)
    p.add_argument("--threads", type=int, default=1, help="torch threads for HF (the vLLM engine serves on 1 on CPU)")
    p.add_argument("--pushes", type=int, default=3, help="weight pushes timed (the mean is reported)")
    p.add_argument("--start_only", default="", help=argparse.SUPPRESS)  # internal: start an engine on DIR, exit
    a = p.parse_args(argv)
    tok = rasft.tiny_tokenizer()
    stop = rasft.stop_token_ids(tok)
    if a.start_only:  # the restart being measured, in its own process as the authors' loop does it
        rasft.VLLMEngine.from_pretrained(a.start_only, tok, stop, a.max_len)
        rasft.close_vllm()
        return None
    cfg = rasft.parse_args(["--out", tempfile.mkdtemp()])
    threads = torch.get_num_threads()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = rasft.tiny_model(tok).eval()
    with tempfile.TemporaryDirectory() as d:
        _, save = timed(rasft.save_hf, model, tok, d)
        vllm = rasft.VLLMEngine.from_pretrained(d, tok, stop, a.max_len)  # reuses this process's engine if any
        vllm.load_weights(rasft.full_params(model))
        hf = rasft.HFEngine(model, tok, stop)
        prompts = prompts_of(tok, a.prompts, cfg)
        kw = dict(n=a.n, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=a.max_tokens,
                  repetition_penalty=cfg.repetition_penalty, seed=1)
        vllm.generate(prompts[:2], **kw), hf.generate(prompts[:2], **kw)  # warm-up
        res = {}
        for name, eng in (("vllm", vllm), ("hf", hf)):
            gens, dt = timed(eng.generate, prompts, **kw)
            res[name] = sum(len(g) for group in gens for g in group) / dt
        push = sum(timed(vllm.load_weights, rasft.full_params(model))[1] for _ in range(a.pushes)) / a.pushes
        _, start = timed(subprocess.run, [sys.executable, os.path.abspath(__file__), "--start_only", d,
                                          "--max_len", str(a.max_len)], check=True, capture_output=True)
    torch.set_num_threads(threads)
    res.update(push_s=push, restart_s=save + start, save_s=save)
    rows = [("", "vLLM", "baseline", "vLLM gain"),
            ("rollouts, generated tok/s", f"{res['vllm']:.0f}", f"HF generate {res['hf']:.0f}", f"{res['vllm'] / res['hf']:.1f}x"),
            ("new weights into the engine, s", f"push {push:.3f}", f"save + new engine {save + start:.1f}",
             f"{(save + start) / push:.0f}x")]
    print(f"tiny model, {a.prompts} prompts x n={a.n}, <= {a.max_tokens} new tokens, T {cfg.temperature}, top-p {cfg.top_p}, "
          f"{'cuda' if torch.cuda.is_available() else f'cpu, {a.threads} torch thread(s)'}")
    for r in rows:
        print(f"{r[0]:<32} {r[1]:>12} {r[2]:>24} {r[3]:>10}")
    return res


if __name__ == "__main__":
    main()
