"""What a large run depends on, checked on CPU: the vLLM engine sleeps after every wake-up (a stand-in `llm`
that models vLLM's sleep tags and the GPU memory they hold), per-prompt rollout budgets, the automatic vLLM
memory share, and, on two gloo ranks, the multi-node resume decision and the FSDP2 root freed before a wake-up.
tests/gpu_check.sh measures the GPU side."""
import contextlib
import json
import os
import sys
import types

import pytest
import torch
import torch.distributed as dist

import rasft

GIB = 2 ** 30


class StandInLLM:
    """vLLM 0.32's sleep semantics (v1/executor/abstract.py): sleep(level) puts weights and KV cache to sleep,
    wake_up(tags) wakes the tags given (all if None), is_sleeping() is True while any tag sleeps. It holds 15 GiB of
    weights and 30 GiB of KV cache while they are awake, on an 80 GiB GPU of which training uses 20 GiB."""

    SIZE = {"weights": 15 * GIB, "kv_cache": 30 * GIB}

    def __init__(self):
        self.calls, self.asleep = [], set()
        self.llm_engine = types.SimpleNamespace(is_sleeping=lambda: bool(self.asleep))

    def free_bytes(self):
        return 60 * GIB - sum(self.SIZE[t] for t in self.SIZE if t not in self.asleep)

    def sleep(self, level):
        self.calls.append(f"sleep {level}")
        self.asleep |= set(self.SIZE)

    def wake_up(self, tags=None):
        self.calls.append(f"wake {tags}")
        self.asleep -= set(tags or self.SIZE)

    def collective_rpc(self, method, kwargs):
        self.calls.append(method)
        list(kwargs["weights_iterator"])

    def reset_prefix_cache(self):
        self.calls.append("reset_prefix_cache")

    def generate(self, reqs, sp, use_tqdm):
        assert not self.asleep, "generate on a sleeping engine"
        self.calls.append(f"generate {[p['max_tokens'] for p in sp]}")
        return [types.SimpleNamespace(outputs=[types.SimpleNamespace(token_ids=[7] * p["max_tokens"])]) for p in sp]


@pytest.fixture
def engine(monkeypatch):
    """A training engine (sleeps=True, as on a GPU) over the stand-in; vllm.SamplingParams records its arguments."""
    llm = StandInLLM()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: llm.calls.append("empty_cache"))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda: (llm.free_bytes(), 80 * GIB))
    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(SamplingParams=lambda **kw: kw))
    monkeypatch.setattr(rasft, "_training_state_kept", lambda threads=None: contextlib.nullcontext())  # no CUDA RNG
    eng = rasft.VLLMEngine(llm, [0], sleeps=True, free=lambda: llm.calls.append("free"))
    assert llm.calls == ["sleep 2"]  # a new engine is awake: it sleeps until the first push
    llm.calls.clear()
    return eng


def test_a_rank_with_no_prompts_puts_the_weights_back_to_sleep(engine):
    llm = engine.llm
    engine.load_weights(iter([("w", torch.zeros(1))]))
    assert llm.llm_engine.is_sleeping() and llm.free_bytes() == 45 * GIB  # weights awake, KV cache asleep
    assert engine.generate([], n=3) == []
    assert llm.calls == ["free", "empty_cache", "wake ['weights']", "reload_weights", "reset_prefix_cache", "sleep 2"]
    assert llm.free_bytes() == 60 * GIB  # all of it back for training


def test_a_rank_with_prompts_wakes_all_then_sleeps(engine):
    llm = engine.llm
    engine.load_weights(iter([]))
    out = engine.generate([[1, 2], [3]], n=1, max_tokens=[4, 2])
    assert out == [[[7] * 4], [[7] * 2]]  # each prompt its own budget
    assert llm.calls[-5:] == ["free", "empty_cache", "wake None", "generate [4, 2]", "sleep 2"]
    assert llm.free_bytes() == 60 * GIB and llm.asleep == {"weights", "kv_cache"}
    # free GPU memory before and after each wake-up, for the refresh record in metrics.jsonl
    assert engine.free_gib == {"weights": [60.0, 45.0], "all": [45.0, 15.0]}
    n = len(llm.calls)
    assert engine.generate([], n=1) == [] and len(llm.calls) == n  # asleep already: nothing to put to sleep


def test_rollout_gives_each_prompt_its_own_budget(tok):
    """The authors' budget, per prompt: min(max_new_tokens, max_len - its length - 8). A 100-token prompt beside
    a 1900-token one keeps its 1024 new tokens."""
    seen = []

    class Recorder:
        stop_ids = [tok.eos_token_id]  # as both engines

        def generate(self, prompts, n=1, max_tokens=None, **kw):
            seen.append(max_tokens)
            return [[[tok.eos_token_id]] * n for _ in prompts]

    cfg = rasft.parse_args(["--max_len", "2048", "--max_new_tokens", "1024"])
    items = [{"prompt": [5] * 100, "target": {"answer": "1"}}, {"prompt": [5] * 1900, "target": {"answer": "1"}},
             {"prompt": [5] * 2045, "target": {"answer": "1"}}]
    groups = rasft.rollout(Recorder(), [0, 1, 2], items, tok, cfg, step=0)
    assert seen == [[1024, 140, 1]] and len(groups) == 3


def test_hf_engine_honours_per_prompt_budgets(tiny, tok):
    eng = rasft.HFEngine(tiny, tok, rasft.stop_token_ids(tok))
    prompts = [tok("Compute 1+2-3.")["input_ids"], tok("Compute 10+20-30, please.")["input_ids"]]
    both = eng.generate(prompts, max_tokens=[3, 9])
    for p, cap, got in zip(prompts, [3, 9], both):
        alone = eng.generate([p], max_tokens=cap)[0]
        assert got == alone and (len(got[0]) == cap or got[0][-1] in eng.stop_ids)
    sampled = eng.generate(prompts, n=2, temperature=1.0, max_tokens=[2, 6], seed=3)
    assert [max(map(len, g)) for g in sampled] == [2, 6]


def test_vllm_memory_share():
    """85% of what the fullest GPU has free less AdamW's states, as a share of the total; no room: one line."""
    assert rasft.vllm_memory(60 * GIB, 80 * GIB, 20 * GIB) == pytest.approx(0.85 * 40 / 80)
    with pytest.raises(rasft.UsageError, match=r"^--vllm_gpu_memory: training leaves 10.0 of 80.0 GiB free and AdamW "
                                               r"needs 12.0: no room for vLLM; use more GPUs or --rollout_backend hf$"):
        rasft.vllm_memory(10 * GIB, 80 * GIB, 12 * GIB)
    for bad in ("-0.1", "1.5"):
        with pytest.raises(rasft.UsageError, match=f"--vllm_gpu_memory {bad}: must be between 0 and 1"):
            rasft.parse_args(["--vllm_gpu_memory", bad])


# --- two gloo ranks in spawned processes ---

def _two_ranks(r, tmp):
    """Rank r: the resume decision with shared and unshared --out, then the FSDP2 root around a no-grad forward.
    Writes what it saw to tmp/rank{r}.json."""
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=r, world_size=2)
    torch.set_num_threads(1)
    tok, seen = rasft.tiny_tokenizer(), {}
    shared, local = os.path.join(tmp, "shared"), os.path.join(tmp, f"local{r}")
    for where, out in (("shared", shared), ("unshared", shared if r == 0 else local)):
        try:
            seen[where] = rasft.checkpoints(rasft.parse_args(["--out", out]))
        except rasft.UsageError as e:
            seen[where] = str(e)
    torch.manual_seed(0)
    policy = rasft.tiny_model(tok)
    scorer = rasft.shard(rasft.Scorer(policy, rasft.frozen_copy(policy, torch.float32)), torch.device("cpu"))
    root = lambda: [type(p).__name__ for p in (policy.model.embed_tokens.weight, scorer.ref.model.norm.weight)]  # noqa: E731
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        scorer(ids, torch.ones(1, 3, dtype=torch.bool))
    seen["after_forward"] = root()
    rasft.VLLMEngine(None, [0], sleeps=False, free=getattr(scorer, "reshard", None)).free()
    seen["after_free"] = root()
    seen["pushed"] = {n: list(t.shape) for n, t in rasft.full_params(policy)}
    json.dump(seen, open(os.path.join(tmp, f"rank{r}.json"), "w"))
    dist.destroy_process_group()


def test_two_ranks_resume_decision_and_root_reshard(tmp_path, tok):
    ckpt = tmp_path / "shared" / "ckpt" / "step_3"
    ckpt.mkdir(parents=True)
    (ckpt / "state.pt").write_bytes(b"")  # rank 0 alone writes state.pt: a rank on another node sees none
    torch.multiprocessing.spawn(_two_ranks, args=(str(tmp_path),), nprocs=2)
    seen = [json.load(open(tmp_path / f"rank{r}.json")) for r in range(2)]
    assert seen[0]["shared"] == seen[1]["shared"] == [str(ckpt)]
    # not shared: every rank stops, with one line that says what to do (none resumes while another starts over)
    for s in seen:
        assert s["unshared"].startswith("--out ") and "\n" not in s["unshared"]
        assert s["unshared"].endswith("ranks see different checkpoints; put it on a filesystem every node shares")
    # a no-grad forward leaves the FSDP2 root (embeddings, final norms, output layers) unsharded; the engine's
    # free() hook, called before every wake-up, gives it back
    assert seen[0]["after_forward"] == ["Parameter", "Parameter"] and seen[0]["after_free"] == ["DTensor", "DTensor"]
    policy = rasft.tiny_model(tok)
    assert seen[0]["pushed"] == seen[1]["pushed"] == {n: list(p.shape) for n, p in policy.named_parameters()}
