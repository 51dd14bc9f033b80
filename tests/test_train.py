"""The training loop on the tiny model: it learns, it is split-invariant, it saves and resumes."""
import dataclasses
import json
import os
import re

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import rasft
from conftest import needs_datasets, small_cfg


def metrics(path):
    return [json.loads(line) for line in open(path / "metrics.jsonl")]


def weights(path):
    return AutoModelForCausalLM.from_pretrained(str(path)).state_dict()


def test_short_run_learns_and_changes_parameters(tmp_path):
    cfg = small_cfg(tmp_path, "--loss", "sft", "--max_items", "64", "--batch_size", "16", "--epochs", "4",
                    "--lr", "3e-3")
    rasft.train(cfg)
    losses = [m["loss"] for m in metrics(tmp_path) if "loss" in m]
    assert len(losses) == 16 and losses[-1] < 0.7 * losses[0]
    tok = rasft.tiny_tokenizer()
    torch.manual_seed(cfg.seed)
    init = rasft.tiny_model(tok).state_dict()
    after = weights(tmp_path)
    assert all(not torch.equal(init[k], after[k]) for k in init)


@pytest.mark.parametrize("loss", list(rasft.LOSSES))
def test_every_loss_trains(tmp_path, loss):
    rasft.train(small_cfg(tmp_path, "--loss", loss, "--max_steps", "2", "--refresh_every", "1", "--profit_p", "0.001"))
    m = [x for x in metrics(tmp_path) if "loss" in x]
    assert len(m) == 2 and all(x["loss"] == x["loss"] and x["grad_norm"] > 0 for x in m)


def step_delta(cfg, tok, batch, items):
    """Parameter change of one SGD step (lr 1, no clip): minus the gradient."""
    torch.manual_seed(0)
    model = rasft.tiny_model(tok)
    ref = rasft.frozen_copy(model, torch.float32)
    scorer = rasft.Scorer(model, ref, chunk=37)
    before = [p.detach().clone() for p in model.parameters()]
    rasft.train_step(scorer, torch.optim.SGD(model.parameters(), lr=1.0), batch, items, cfg, torch.device("cpu"))
    return [p.detach() - b for p, b in zip(model.parameters(), before)]


def unsorted_delta(cfg, tok, batch, items):
    """The same step written directly: the batch in its own order, one forward, no micro-batching."""
    torch.manual_seed(0)
    model = rasft.tiny_model(tok)
    scorer = rasft.Scorer(model, rasft.frozen_copy(model, torch.float32))
    b = rasft.collate(batch, items, torch.device("cpu"))
    logp, b["kl"] = scorer(b["input_ids"], b["resp_mask"], kl_dir=cfg.kl_dir if cfg.loss in rasft.KL_LOSSES else None)
    loss = rasft.LOSSES[cfg.loss](logp, b, cfg)[0].sum() / sum(len(rasft.response_of(s, items)) for s in batch)
    return [-g for g in torch.autograd.grad(loss, list(model.parameters()))]


@pytest.mark.parametrize("loss", ["rasft", "asft"])
def test_length_sorted_token_budget_micro_batches_do_not_change_the_gradient(tmp_path, tok, loss):
    cfg = small_cfg(tmp_path, "--loss", loss, "--grad_clip", "1e9")
    items, _ = rasft.build_items(rasft.load_rows(cfg), cfg, tok)
    # sequences of different lengths and advantages, so a per-micro-batch mean would differ
    batch = [rasft.Entry(i, None if i % 3 else items[i]["response"][:5 + i], 0.5 + 0.1 * i, -4.0 - 0.05 * i)
             for i in range(7)]
    budgets = {1: 7, 150: 3, 10_000: 1}  # micro_tokens -> micro-batches it makes of this batch
    assert {t: len(rasft.micro_batches(batch, items, dataclasses.replace(cfg, micro_tokens=t))) for t in budgets} == budgets
    expected = unsorted_delta(cfg, tok, batch, items)
    for t in budgets:
        got = step_delta(dataclasses.replace(cfg, micro_tokens=t), tok, batch, items)
        assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(got, expected)), t
    assert any(a.abs().max() > 0 for a in expected)


def test_micro_batches_balance_tokens_and_match_in_number_across_ranks(tok, monkeypatch):
    items = [{"prompt": [1] * 10, "response": [2] * n} for n in (5, 300, 40, 41, 100, 7, 250, 60)]
    samples = [rasft.Entry(i) for i in range(len(items))]
    cfg = rasft.Config(micro_tokens=384, packing=False)  # packed micro-batches: tests/test_packing.py
    plans = []
    for r in range(3):
        monkeypatch.setattr(rasft, "world_size", lambda: 3)
        monkeypatch.setattr(rasft, "rank", lambda r=r: r)
        plans.append(rasft.micro_batches(samples, items, cfg))
    assert len({len(p) for p in plans}) == 1  # every rank runs as many forwards
    assert sorted(i for p in plans for mb in p for i in mb) == list(range(len(items)))  # each sample once
    loads = [sum(rasft.seq_len(samples[i], items) for mb in p for i in mb) for p in plans]
    assert max(loads) - min(loads) <= 70  # dealt longest first to the lightest rank
    for p in plans:
        for mb in p:
            widths = [rasft.padded_width(rasft.seq_len(samples[i], items)) for i in mb]
            assert widths == sorted(widths, reverse=True) and (len(mb) <= 1 or len(mb) * widths[0] <= 384)


def test_save_then_from_pretrained(tmp_path, tok, tiny):
    rasft.save_hf(tiny, tok, str(tmp_path))
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path))
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in tiny.state_dict().items())
    tok2 = AutoTokenizer.from_pretrained(str(tmp_path))
    text = "Compute 12+34-5.\n 12+34=46. \\boxed{41}<|im_end|>"
    assert tok2(text)["input_ids"] == tok(text)["input_ids"] and tok2.decode(tok(text)["input_ids"]) == text
    assert rasft.stop_token_ids(tok2) == rasft.stop_token_ids(tok)


def test_saved_config_dtype_is_the_dtype_of_the_saved_weights(tmp_path, tok, tiny):
    """fp32 masters saved as the bf16 they came in: config.json must say bf16, or a reload doubles the memory."""
    from safetensors import safe_open
    tiny.save_dtype = torch.bfloat16
    rasft.save_hf(tiny, tok, str(tmp_path))
    assert json.load(open(tmp_path / "config.json"))["dtype"] == "bfloat16"
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype="auto")
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in tiny.parameters())  # the masters themselves are untouched


def test_killed_run_resumes_to_the_same_parameters(tmp_path):
    """On CPU exactly; tests/gpu_check.sh runs the same check on a GPU."""
    import check_resume
    r = check_resume.main(["--out", str(tmp_path)])
    assert r["resumed_vs_straight"] == 0.0
    # step 4 ran, died before its checkpoint, and ran again: its first record is gone from metrics.jsonl
    assert r["steps_logged"] == [1, 2, 3, 4, 5, 6, 7]


class ScriptedEngine:
    """Answers 'Compute a+b-c.' correctly in the first sample and wrongly in the others."""

    def __init__(self, tok):
        self.tok, self.stop_ids = tok, rasft.stop_token_ids(tok)

    def load_weights(self, named_tensors):
        list(named_tensors)

    def generate(self, prompts, n=1, **kw):
        out = []
        for p in prompts:
            expr = re.search(r"Compute (\d+[+-]\d+[+-]\d+)\.", self.tok.decode(p)).group(1)
            value = eval(expr)
            # long enough, with reasoning words, to pass the authors' rollout filter; the guesses worded apart
            texts = [f"We compute {expr} from left to right, one operation at a time, and write every partial result "
                     f"down so that nothing is lost on the way. Therefore {expr} = {value}. \\boxed{{{value}}}"] + [
                f"Guess {k}: no working needed{', really' * k}, the result must be about {value + k} because it looks "
                f"like it when we squint at the digits for a while and trust the feeling. So we get \\boxed{{{value + k}}}"
                for k in range(1, n)]
            out.append([self.tok(t)["input_ids"] + [rasft.end_token_id(self.tok)] for t in texts])
        return out


def test_refresh_trains_verified_rollouts_with_their_advantages(tmp_path, monkeypatch):
    monkeypatch.setattr(rasft, "make_engine", lambda policy, tok, *a: ScriptedEngine(tok))
    seen = []
    real_step = rasft.train_step
    monkeypatch.setattr(rasft, "train_step", lambda scorer, opt, batch, *a: seen.extend(batch) or real_step(scorer, opt, batch, *a))
    cfg = small_cfg(tmp_path, "--max_items", "96", "--refresh_every", "2", "--rollout_frac", "1.0")
    rasft.train(cfg)
    refreshes = [m for m in metrics(tmp_path) if m.get("event") == "refresh"]
    assert refreshes and sum(r["queued_rollouts"] for r in refreshes) > 0
    records = {r["item"]: r for r in map(json.loads, open(tmp_path / "solvability.jsonl"))}
    rollouts = [s for s in seen if s.response is not None]
    assert rollouts
    for s in rollouts:
        r = records[s.item]
        expert_adv, pos = rasft.group_advantages(r["distinct"], r["correct"], r["negatives"], cfg)
        assert s.adv == pytest.approx(pos[0]) and r["expert_adv"] == pytest.approx(expert_adv, abs=1e-4)
        experts = [x for x in seen if x.item == s.item and x.response is None]
        assert any(x.adv == pytest.approx(expert_adv) for x in experts)
        assert s.ref_logp < 0
    assert len({s.item for s in seen if s.response is None}) == 96  # every item trained as an expert


def test_demo_bench_runs_each_loss_per_seed_from_one_warm_up(tmp_path, capsys):
    """python rasft.py's path (warm-up from random weights, save, reload, the method) at a tiny budget, through
    the side-by-side benchmark, on the task where expert and policy write differently."""
    import bench_demo
    res = bench_demo.main(["--data", "demo_shift", "--seeds", "2", "--runs", "sft", "rasft --ratio_clip false",
                           "--out", str(tmp_path), "--eval_items", "8", "--rollout_backend", "hf", "--demo_warmup", "3",
                           "--max_items", "32", "--batch_size", "16", "--refresh_every", "1"])
    assert list(res) == ["sft", "rasft --ratio_clip false"] and all(len(r) == 2 for r in res.values())
    for r in [r for rs in res.values() for r in rs]:
        assert set(r["after"]) == {"all", "3 numbers", "4 numbers"} and len(r["completions"]) == 8
        assert all(0 <= v <= 1 for v in (*r["before"].values(), *r["after"].values(), r["running"]))
    out = capsys.readouterr().out
    assert out.count("demo warm-up: 3 steps") == 2 and out.count("reusing the finished one") == 2  # one per seed
    assert "| rasft --ratio_clip false | 4 numbers |" in out and "one problem = 12.50 points" in out
    assert (tmp_path / "seed_42" / "warmup" / "model.safetensors").exists()
    assert (tmp_path / "seed_43" / "rasft_--ratio_clip_false" / "solvability.jsonl").exists()


def test_checkpoints_keep_the_newest_and_a_torn_one_falls_back(tmp_path, capsys):
    args = ["--max_items", "64", "--refresh_every", "2", "--save_every", "2", "--keep_ckpts", "2"]
    rasft.train(small_cfg(tmp_path, *args, "--max_steps", "6"))
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["step_4", "step_6"]
    (tmp_path / "ckpt" / "step_6" / "state.pt").write_bytes(b"torn")
    older = tmp_path / "ckpt" / "step_4" / "state.pt"  # as written before RunState: a dict, no 'warned' key
    state = torch.load(older, weights_only=False)
    assert set(state) == {f.name for f in dataclasses.fields(rasft.RunState)} and isinstance(state["queue"][0], dict)
    del state["warned"]
    torch.save(state, older)
    capsys.readouterr()
    rasft.train(small_cfg(tmp_path, *args, "--max_steps", "7", "--resume", "true"))
    out = capsys.readouterr().out
    assert "skipping" in out and f"resumed from {tmp_path / 'ckpt' / 'step_4'}" in out and "trained 3 steps" in out


def test_a_resumed_demo_reuses_its_finished_warm_up(tmp_path, capsys):
    args = ["--out", str(tmp_path), "--rollout_backend", "hf", "--demo_warmup", "3", "--max_items", "32",
            "--batch_size", "8", "--eval_items", "4", "--max_steps", "2", "--save_every", "1"]
    rasft.main(args)
    assert "demo warm-up: 2 steps of plain SFT" in capsys.readouterr().out  # --max_steps caps the warm-up too
    rasft.main(args + ["--resume", "true"])
    assert "reusing the finished one" in capsys.readouterr().out


@needs_datasets
def test_held_out_items_of_own_data_are_verified_before_and_after(tmp_path, capsys):
    rows = [{"question": f"What is {a}+{b}?", "solution": f"{a}+{b}={a + b}. \\boxed{{{a + b}}}"}
            for a in range(1, 9) for b in range(1, 6)]
    path = tmp_path / "own.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    acc = rasft.main(["--data", str(path), "--out", str(tmp_path / "out"), "--rollout_backend", "hf",
                      "--demo_warmup", "0", "--batch_size", "8", "--eval_items", "6", "--max_steps", "2",
                      "--max_new_tokens", "16"])
    out = capsys.readouterr().out
    assert "held out 6 items" in out and "data " in out and "held-out accuracy: " in out
    assert 0 <= acc["before"]["all"] <= 1 and 0 <= acc["after"]["all"] <= 1 and len(acc["completions"]) == 6
