"""Faithful to the authors' code by default: their schedule for each loss, their routing and window, their rollout
filter rule for rule, their end token, a reference equal to the step-0 policy."""
import dataclasses
import json
import math
import random
import types
from collections import Counter

import pytest
import torch

import rasft
from filter_cases import CASES

GOOD = ("Anna starts with 3 apples and her friend gives her 4 more, so we have 3 + 4 = 7 apples.\n"
        "Then she buys 5 more at the market, so 7 + 5 = 12.\nTherefore she has 12 apples in total. \\boxed{12}")
SELF_CORRECTING = ("First 3 + 4 = 8. Wait, that is wrong. Rechecking the sum: 3 + 4 = 7, and then 7 + 5 = 12, "
                   "so the total is 12 apples. \\boxed{12}")
SHORT = "3 + 4 + 5 = 12, so \\boxed{12}"
UNBOXED = "Anna has 3 + 4 = 7 apples, and after buying 5 more she has 7 + 5 = 12 apples in total.\nFinal answer: 12"
LOOPING = ("We add the numbers one at a time.\nWe add the numbers one at a time.\nWe add the numbers one at a time.\n"
           "So 3 + 4 = 7 and 7 + 5 = 12. \\boxed{12}")
WRONG = ("Anna starts with 3 apples and her friend gives her 4 more, so we have 3 + 4 = 7 apples.\n"
         "Then she buys 4 more at the market, so 7 + 4 = 11.\nTherefore she has 11 apples in total. \\boxed{11}")


def cfg_of(*args):
    return rasft.parse_args(["--model", "some/model", *args])


@pytest.mark.parametrize("loss", list(rasft.LOSSES))
def test_lr_schedule_is_the_one_the_authors_ran_for_each_loss(loss):
    """Against transformers' own get_cosine_schedule_with_warmup, which both of their scripts use: RASFT with
    4 warmup steps and a 1000-step horizon (train_RASFT.py), the baselines with 10% warmup over the run's
    real steps (train_v2.py, the HF Trainer)."""
    from transformers import get_cosine_schedule_with_warmup
    cfg, total = cfg_of("--loss", loss), 59  # numina_cot_10k at batch 256
    warm, horizon = (4, 1000) if loss == "rasft" else (math.ceil(0.1 * total), total)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=warm, num_training_steps=horizon)
    theirs = []
    for _ in range(total):
        theirs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    ours = [rasft.lr_at(step, total, cfg) for step in range(total)]
    assert ours == pytest.approx(theirs, rel=1e-12, abs=1e-18)
    mean = sum(ours) / total / cfg.lr
    assert mean > 0.95 if loss == "rasft" else 0.45 < mean < 0.55  # RASFT's lr stays near its peak


def test_schedule_flags_override_the_per_loss_defaults():
    cfg = cfg_of("--loss", "rasft", "--warmup", "0.03", "--horizon", "0")
    assert (cfg.warmup, cfg.horizon) == (0.03, 0)
    assert rasft.lr_at(0, 100, cfg) == 0.0 and rasft.lr_at(99, 100, cfg) < 0.01 * cfg.lr


@pytest.mark.parametrize("text,rule", [(SELF_CORRECTING, "self-corrections"), (SHORT, "under 80 characters"),
                                       (UNBOXED, "no boxed answer"), (LOOPING, "a sentence thrice")])
def test_authors_filter_drops_what_theirs_drops_and_minimal_keeps_it(text, rule):
    target = {"answer": "12"}
    assert rasft.verify_math(text, "12")  # each of them is correct
    assert rasft.broken_rule(text, target, cfg_of()) == rule
    assert rasft.broken_rule(text, target, cfg_of("--rollout_filter", "minimal")) is None
    assert rasft.broken_rule(GOOD, target, cfg_of()) is None


def test_more_rules():
    cfg, target = cfg_of(), {"answer": "B"}
    assert rasft.broken_rule("Thus, the correct answer is \\boxed{B}. " + "x" * 80, target, cfg) == "shortcut phrase"
    assert rasft.broken_rule("The options were compared one by one with care, and then we chose option B, so "
                             "\\boxed{B}", target, cfg) == "short boxed answer"
    assert rasft.broken_rule("$$" * 60 + " therefore \\boxed{B}", target, cfg) == "symbols over 42%"
    assert rasft.broken_rule(" ".join(f"word{k}" for k in range(40)) + " \\boxed{B}", target, cfg) == "no reasoning word"
    loop = " ".join(["we try one more value for x and check it"] * 3) + " and so on " * 10
    assert rasft.broken_rule(loop, {"tests": "assert True"}, cfg) == "an 8-word run thrice"  # code: loop rules only
    assert rasft.broken_rule("def f(x):\n    return x + 1\n", {"tests": "assert True"}, cfg) is None


def test_the_filter_decides_k_pos_and_so_the_experts_advantage():
    """The issue's group [self-correcting correct, short correct, wrong]: the authors' filter leaves no
    positive, so the expert keeps A = 1 and no rollout is trained; the minimal filter trains both."""
    texts, correct = (SELF_CORRECTING, SHORT, WRONG), (True, True, False)
    for name, expert_adv, n_pos in (("authors", None, 0), ("minimal", 0.155, 2)):
        cfg = cfg_of("--rollout_filter", name)
        n, pos, n_neg, broken = rasft.score_group(texts, correct, {"answer": "12"}, cfg)
        assert (n, len(pos), n_neg, broken) == (3, n_pos, 1, 2 - n_pos)
        adv = rasft.group_advantages(n, len(pos), n_neg, cfg)
        assert adv is None if expert_adv is None else adv[0] == pytest.approx(expert_adv, abs=1e-3)


def state_of(**fields):
    """A run state with no items, the given fields set."""
    return dataclasses.replace(rasft.new_state([], cfg_of()), **fields)


def test_refresh_fires_only_with_pending_items():
    cfg = dataclasses.replace(cfg_of(), refresh_every=4)
    state = state_of(step=8, pending=[], hard={3: 0})
    assert not rasft.refresh_due(state, cfg, dry=True)
    state.pending = [1]
    assert rasft.refresh_due(state, cfg, dry=False)
    assert rasft.refresh_due(dataclasses.replace(state, step=5), cfg, dry=True)
    assert not rasft.refresh_due(dataclasses.replace(state, step=5), cfg, dry=False)


def test_config_built_in_python_gets_each_losss_own_defaults():
    for loss, expected in (("rasft", (4, 1000, False, True)), ("sft", (0.1, 0, True, False))):
        cfg = rasft.Config(loss=loss)
        assert tuple(rasft.per_loss(cfg, k) for k in ("warmup", "horizon", "shuffle", "keep_end")) == expected
    assert rasft.lr_at(3, 59, rasft.Config()) == pytest.approx(0.75 * 5e-5)  # rasft: 4 warmup steps


@pytest.mark.parametrize("why,text,kept", CASES, ids=[c[0] for c in CASES])
def test_rollout_filter_keeps_and_drops_as_the_authors_gate(why, text, kept):
    rule = rasft.broken_rule(text, {"answer": "12"}, cfg_of())
    assert (rule is None) == kept, rule


def test_a_rollout_is_graded_on_their_box():
    cfg = cfg_of()
    assert rasft.graded("So \\boxed{3}, or \\boxed{12}.", {"answer": "12"}, cfg) == "\\boxed{12}"
    assert rasft.graded("So \\boxed{12} and then \\boxed{\\frac{", {"answer": "12"}, cfg) == ""  # unclosed last box
    assert rasft.graded("So \\fbox{12}", {"answer": "12"}, cfg) == ""
    assert rasft.graded("So \\boxed{$12$.}", {"answer": "12"}, cfg) == "\\boxed{12}"
    # the minimal filter, and code, leave the extraction to the verifier
    assert rasft.graded("So \\fbox{12}", {"answer": "12"}, cfg_of("--rollout_filter", "minimal")) == "So \\fbox{12}"
    assert rasft.graded("```python\nx = 1\n```", {"tests": "assert True"}, cfg) == "```python\nx = 1\n```"


def test_end_token_is_the_tokenizers_eos_and_rollouts_stop_where_theirs_stop(tok):
    from transformers import GenerationConfig
    base = rasft.tiny_tokenizer()
    base.eos_token = "<|endoftext|>"  # as a Qwen2.5 base model's tokenizer, with a ChatML chat template
    assert rasft.end_token_id(base) == base.convert_tokens_to_ids("<|endoftext|>")
    im_end = base.convert_tokens_to_ids("<|im_end|>")
    assert rasft.stop_token_ids(base) == [base.eos_token_id]  # <|im_end|> does not stop a base model's rollout
    assert rasft.stop_token_ids(base, GenerationConfig(eos_token_id=[im_end, base.eos_token_id])) == sorted(
        {im_end, base.eos_token_id})


def test_a_cut_response_keeps_its_end_token_under_rasft_and_loses_it_under_the_baselines(tok):
    rows = [{"problem": "p", "solution": "x" * 300, "answer": "1"}]
    for loss in ("rasft", "sft"):
        cfg = cfg_of("--loss", loss, "--max_len", "64", "--data", "rows.jsonl", "--system_prompt", "")
        items, count = rasft.build_items(rows, cfg, tok)
        assert count["truncated"] == 1 and len(items[0]["prompt"]) + len(items[0]["response"]) == 64
        assert (items[0]["response"][-1] == tok.eos_token_id) == (loss == "rasft")


class StandIn:
    """A rollout engine that returns fixed token ids: one stopped at a stop token that is not EOS, one cut by length."""
    def __init__(self, tok, stop):
        self.tok, self.stop_ids = tok, [stop, tok.eos_token_id]

    def generate(self, prompts, n=1, **kw):
        ids = self.tok("So 3 + 4 = 7. \\boxed{7}", add_special_tokens=False)["input_ids"]
        return [[ids + [self.stop_ids[0]], ids[:5]] for _ in prompts]


def test_rollouts_are_trained_ending_with_the_end_token(tok):
    base = rasft.tiny_tokenizer()
    base.eos_token = "<|endoftext|>"
    engine, cfg = StandIn(base, base.convert_tokens_to_ids("<|im_end|>")), cfg_of("--rollout_filter", "minimal")
    items = [{"prompt": [1, 2, 3], "response": [4], "target": {"answer": "7"}}]
    (group,) = rasft.rollout(engine, [0], items, base, cfg, step=0)
    (stopped, text, ok), (cut, _, _) = group
    assert ok and stopped[-1] == cut[-1] == base.eos_token_id and base.convert_tokens_to_ids("<|im_end|>") not in stopped
    assert len(stopped) == len(base("So 3 + 4 = 7. \\boxed{7}", add_special_tokens=False)["input_ids"]) + 1


def route_all(losses, cfg, with_target=lambda i: True):
    items = [{"prompt": [1], "response": [2], "target": {"answer": "1"} if with_target(i) else None}
             for i in range(len(losses))]
    state = rasft.new_state(items, cfg)
    state.ref_logp = [-x for x in losses]
    state.thresholds = rasft.calibrate(losses, cfg)
    while state.cursor < len(state.order):
        rasft.route_chunk(state, None, items, cfg, None, adaptive=True)
    return state


def test_every_item_is_routed_at_step_0_with_its_step_0_loss_in_the_authors_shares():
    losses = [random.Random(k).uniform(0.2, 3.0) for k in range(1000)]
    state = route_all(losses, cfg_of())
    shares = Counter(r["route"] for r in state.records.values())
    assert {k: v / 1000 for k, v in shares.items()} == pytest.approx(
        {"easy": 0.10, "pending": 0.25, "hard": 0.45, "other": 0.20}, abs=0.002)
    assert all(r["loss"] == pytest.approx(losses[i], abs=1e-4) for i, r in state.records.items())
    assert sorted(state.hard) == sorted(i for i, r in state.records.items() if r["route"] == "hard")
    # in file order (rasft does not shuffle), a chunk's easy items are queued first, then hard, then the rest
    queued = sum(state.records[i]["route"] != "pending" for i in range(128))  # of the first chunk
    first = [state.records[s.item]["route"] for s in state.queue[:queued]]
    assert first == sorted(first, key=["easy", "hard", "other"].index) and state.order == list(range(1000))


def test_window_at_a_refresh_is_their_1000_step_horizon_and_the_run_s_length_when_sliding():
    th = rasft.calibrate([float(i) for i in range(101)], cfg_of())
    state = state_of(step=32, total=59, thresholds=th)
    assert rasft.window(state, cfg_of()) == pytest.approx(rasft.window_at(32, 1000, th))
    assert rasft.window(state, cfg_of()) == pytest.approx((20 + 0.032 * 30, 45 + 0.032 * 30))  # 3% of the way
    assert rasft.window(state, cfg_of("--sliding", "true")) == pytest.approx(rasft.window_at(32, 59, th))
    assert rasft.window(state, cfg_of("--horizon", "0")) == pytest.approx(rasft.window_at(32, 59, th))


def test_sliding_routes_just_in_time_by_the_current_policys_loss(monkeypatch):
    losses = [float(i) for i in range(100)]
    cfg = cfg_of("--sliding", "true", "--route_chunk", "10")
    easier = [x / 4 for x in losses]  # what the trained policy measures: every item looks easier
    monkeypatch.setattr(rasft, "measure", lambda scorer, samples, *a: [-easier[s.item] for s in samples])
    items = [{"prompt": [1], "response": [2], "target": {"answer": "1"}} for _ in losses]
    state = rasft.new_state(items, cfg)
    state.ref_logp, state.thresholds = [-x for x in losses], rasft.calibrate(losses, cfg)
    rasft.route_chunk(state, None, items, cfg, None, adaptive=True)
    assert state.cursor == 10 and all(state.records[i]["loss"] == pytest.approx(easier[i]) for i in range(10))
    # through the loop: --sliding routes chunks only until a batch is queued; by default all before the first step
    for sliding, routed_all in (("true", False), ("false", True)):
        cfg = cfg_of("--sliding", sliding, "--route_chunk", "10", "--batch_size", "8")
        state = rasft.new_state(items, cfg)
        state.ref_logp, state.thresholds = [-x for x in losses], rasft.calibrate(losses, cfg)
        run = types.SimpleNamespace(cfg=cfg, state=state, scorer=None, items=items, device=None, adaptive=True)
        assert len(rasft.next_batch(run)) == 8 and (state.cursor == len(losses)) == routed_all


def test_reference_in_bf16_equals_the_step_0_policy_as_fsdp_computes_it(tok):
    """A GPU run keeps its reference in bf16 while FSDP2 casts only the policy's parameters to bf16 for compute:
    the reference's rotary buffers must stay as the policy's (fp32), or its log-probs drift with the position."""
    torch.manual_seed(0)
    policy = rasft.tiny_model(tok)
    ref = rasft.frozen_copy(policy, torch.bfloat16)
    assert all(b.dtype == torch.float32 and torch.equal(b, dict(policy.named_buffers())[n])
               for n, b in ref.named_buffers())
    assert {p.dtype for p in ref.parameters()} == {torch.bfloat16}
    as_fsdp = rasft.frozen_copy(policy, torch.float32)  # the policy with bf16 parameters, its buffers untouched
    for p in as_fsdp.parameters():
        p.data = p.data.to(torch.bfloat16)
    ids = torch.randint(0, 200, (1, 1500))
    assert torch.equal(ref(ids).logits, as_fsdp(ids).logits)


def test_the_readmes_sft_recipe_is_the_sft_run(tmp_path):
    """README, "Plain SFT from RASFT, flag by flag": the loss flags and the schedule flags together train exactly
    what --loss sft trains."""
    from conftest import small_cfg
    recipe = ["--adaptive", "false", "--ratio_clip", "false", "--token_weight", "false", "--warmup", "0.1",
              "--horizon", "0", "--shuffle", "true", "--keep_end", "false"]
    runs = {name: small_cfg(tmp_path / name, "--max_steps", "3", "--eval_items", "0", *args)
            for name, args in (("sft", ["--loss", "sft"]), ("recipe", ["--loss", "rasft", *recipe]))}
    for cfg in runs.values():
        rasft.train(cfg)
    from transformers import AutoModelForCausalLM
    a, b = (AutoModelForCausalLM.from_pretrained(str(tmp_path / n)).state_dict() for n in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    lr = {n: [json.loads(x)["lr"] for x in open(tmp_path / n / "metrics.jsonl")] for n in runs}
    assert lr["sft"] == lr["recipe"]


def test_refresh_queues_in_the_authors_order_and_keeps_every_epochs_occurrence(monkeypatch):
    """Pending items not picked (in pending order), then probes that leave the pool (by index), then each rolled-out
    item by index: its expert, then its correct rollouts. An item pending in two epochs is two occurrences."""
    cfg = cfg_of("--rollout_frac", "0.5", "--probe_frac", "1.0", "--rollout_filter", "minimal")
    th = {"easy_floor": 1.0, "start_low": 2.0, "start_high": 3.0, "end_low": 4.0, "end_high": 6.0, "hard_ceiling": 8.0}
    probe_loss = {20: 1.5, 21: 5.0, 22: 9.0}  # leaves the pool (easier than the window), rolled out, stays
    monkeypatch.setattr(rasft, "measure", lambda scorer, samples, items, which, *a: [
        -probe_loss[s.item] if which == "policy" else -1.0 for s in samples])
    good = "We add 3 + 4 = 7 and then 7 + 5 = 12, so the total is \\boxed{12}"
    monkeypatch.setattr(rasft, "rollout", lambda engine, chosen, *a: [
        [([1, 2], good, True), ([3], "no idea \\boxed{9}", False), ([4], "it is \\boxed{8}", False)] for _ in chosen])
    engine = type("E", (), {"load_weights": lambda self, w: list(w)})()
    pending = [5, 3, 9, 7, 5, 3, 9, 7]  # four items, two epochs
    state = state_of(step=32, total=59, thresholds=th, pending=list(pending), hard={20: 0, 21: 0, 22: 0},
                     records={i: {} for i in (*pending, 20, 21, 22)})
    items = [{"prompt": [1], "response": [2], "target": {"answer": "12"}}] * 23
    scorer = type("S", (), {"policy": torch.nn.Linear(1, 1)})()
    rasft.refresh(types.SimpleNamespace(state=state, scorer=scorer, engine=engine, items=items, tok=None, cfg=cfg,
                                        device=None))
    q = [(s.item, s.response is None) for s in state.queue]
    n_rest = len(pending) - 4  # half of the 8 occurrences are picked
    rest, leaver, groups = q[:n_rest], q[n_rest], q[n_rest + 1:]
    assert [i for i, _ in rest] == [i for i in pending if i in [i for i, _ in rest]][:n_rest] and leaver == (20, True)
    experts = [i for i, is_expert in groups if is_expert]
    assert experts == sorted(experts) and 21 in experts and 22 not in experts and 20 not in experts
    assert sorted([i for i, _ in rest] + [i for i in experts if i != 21]) == sorted(pending)  # every occurrence once
    for k, (i, is_expert) in enumerate(groups):  # each expert is followed by its one correct rollout
        assert is_expert == (k % 2 == 0) and groups[k - k % 2][0] == i
    assert state.hard == {22: 1} and state.pending == []


def test_a_filter_that_drops_most_rollouts_says_so_once_and_names_minimal(monkeypatch, capsys):
    """Short-answer data under the authors' filter: every rollout is under 80 characters, so none is ever kept."""
    monkeypatch.setattr(rasft, "measure", lambda scorer, samples, *a: [-1.0] * len(samples))
    monkeypatch.setattr(rasft, "rollout", lambda engine, chosen, *a: [
        [([1], "3 + 4 = 7, \\boxed{7}", True), ([2], "so \\boxed{7}", True)] for _ in chosen])
    items = [{"prompt": [1], "response": [2], "target": {"answer": "7"}}] * 4
    th = {"easy_floor": 1.0, "start_low": 2.0, "start_high": 3.0, "end_low": 4.0, "end_high": 6.0, "hard_ceiling": 8.0}
    state = state_of(step=8, total=20, thresholds=th, records={i: {} for i in range(4)})
    engine = type("E", (), {"load_weights": lambda self, w: list(w)})()
    run = types.SimpleNamespace(state=state, scorer=type("S", (), {"policy": torch.nn.Linear(1, 1)})(), engine=engine,
                                items=items, tok=None, cfg=cfg_of("--rollout_frac", "1.0"), device=None)
    for step in (8, 16):
        state.step, state.pending = step, [0, 1, 2, 3]
        assert rasft.refresh(run)["malformed"] == 1.0
    out = capsys.readouterr().out
    assert out.count("warning: --rollout_filter authors dropped 8 of 8 rollouts") == 1
    assert "--rollout_filter minimal" in out
    run.cfg = cfg_of("--rollout_frac", "1.0", "--rollout_filter", "minimal")
    state.step, state.pending, state.warned = 24, [0, 1], False
    assert rasft.refresh(run)["malformed"] == 0.0 and "warning" not in capsys.readouterr().out


def test_help_shows_each_losss_own_defaults(capsys):
    with pytest.raises(SystemExit):
        rasft.parse_args(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: rasft: 4; baselines: 0.1)" in out and "(default: rasft: 1000; baselines: 0)" in out
    assert "(default: rasft: False; baselines: True)" in out  # --shuffle
