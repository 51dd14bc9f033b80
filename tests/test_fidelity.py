"""Faithful to the authors' code by default: their learning-rate schedule for each loss, their rollout filter."""
import dataclasses
import math

import pytest
import torch

import rasft

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
    cfg = cfg_of("--loss", "rasft", "--warmup", "0.03", "--lr_horizon", "0")
    assert (cfg.warmup, cfg.lr_horizon) == (0.03, 0)
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
        n, pos, n_neg = rasft.score_group(texts, correct, {"answer": "12"}, cfg)
        assert (n, len(pos), n_neg) == (3, n_pos, 1)
        adv = rasft.group_advantages(n, len(pos), n_neg, cfg)
        assert adv is None if expert_adv is None else adv[0] == pytest.approx(expert_adv, abs=1e-3)


def test_refresh_fires_only_with_pending_items():
    cfg = dataclasses.replace(cfg_of(), refresh_every=4)
    state = {"step": 8, "pending": [], "hard": {3: 0}}
    assert not rasft.refresh_due(state, cfg, dry=True)
    state["pending"] = [1]
    assert rasft.refresh_due(state, cfg, dry=False) and rasft.refresh_due(dict(state, step=5), cfg, dry=True)
    assert not rasft.refresh_due(dict(state, step=5), cfg, dry=False)
