"""The solvability weighting against hand-computed values (DESIGN steps 2-6)."""
import dataclasses
import math

import pytest

import rasft

CFG = rasft.Config()
TH = {"easy_floor": 1.0, "start_low": 2.0, "start_high": 3.0, "end_low": 4.0, "end_high": 6.0, "hard_ceiling": 8.0}


def test_window_slides_linearly():
    assert rasft.window_at(0, 100, TH) == (2.0, 3.0)
    assert rasft.window_at(100, 100, TH) == (4.0, 6.0)
    assert rasft.window_at(25, 100, TH) == pytest.approx((2.5, 3.75))
    assert rasft.window_at(150, 100, TH) == (4.0, 6.0)  # past the planned end: stays at the end window


@pytest.mark.parametrize("loss,expected", [(0.5, "easy"), (1.0, "easy"), (1.5, "other"), (2.0, "pending"),
                                           (3.0, "pending"), (3.01, "hard"), (8.0, "hard"), (8.5, "other")])
def test_route(loss, expected):
    assert rasft.route(loss, 2.0, 3.0, TH) == expected


def test_calibration_quantiles():
    th = rasft.calibrate([float(i) for i in range(101)], CFG)  # quantile q of 0..100 is 100 q
    assert th == pytest.approx({"easy_floor": 10, "start_low": 20, "start_high": 45, "end_low": 50, "end_high": 75,
                                "hard_ceiling": 90})


def test_group_advantages_one_of_three_correct():
    # rewards [1 + (2/3)*2, 1, 0, 0] = [7/3, 1, 0, 0]; mean 5/6; population std sqrt(11/12)
    exp_adv, pos = rasft.group_advantages(3, 1, 2, CFG)
    std = math.sqrt(11 / 12) + 1e-6  # the authors' guard
    s = 1 / 2
    assert exp_adv == pytest.approx(math.tanh(0.4 * (7 / 3 - 5 / 6) / std) * s)
    a1 = math.tanh(0.4 * (1 - 5 / 6) / std) * s  # 0.0348: inside [0.02, 0.15]
    assert pos == pytest.approx([0.25 * a1])


def test_group_advantages_clips_positive_signal():
    # 2 of 3 correct, 1 negative kept: rewards [5/3, 1, 1, 0]
    exp_adv, pos = rasft.group_advantages(3, 2, 1, CFG)
    r = [5 / 3, 1, 1, 0]
    mean = sum(r) / 4
    std = math.sqrt(sum((x - mean) ** 2 for x in r) / 4) + 1e-6
    a = [math.tanh(0.4 * (x - mean) / std) for x in r]
    assert exp_adv == pytest.approx(a[0] / 3)
    assert pos == pytest.approx([0.25 * min(max(a[1] / 3, 0.02), 0.15)] * 2)
    assert pos[0] == pytest.approx(0.25 * 0.02)  # A_i s = 0.007 is below the floor


def test_group_advantages_no_signal():
    assert rasft.group_advantages(3, 0, 3, CFG) is None       # none correct
    assert rasft.group_advantages(0, 0, 0, CFG) is None       # nothing left after de-duplication
    assert rasft.group_advantages(3, 3, 0, CFG) is None       # all correct: every reward is 1
    assert rasft.group_advantages(1, 1, 0, CFG) is None       # one sample, correct


def test_group_advantages_no_negatives_kept():
    # 1 of 2 correct but the wrong one was a near copy: rewards [2, 1]
    exp_adv, pos = rasft.group_advantages(2, 1, 0, CFG)
    assert exp_adv == pytest.approx(math.tanh(0.4 * 0.5 / (0.5 + 1e-6)) / 2)
    assert pos == pytest.approx([0.25 * 0.02])  # A_1 s = tanh(-0.4)/2 < 0 -> floor: never negative


def test_score_group_dedups_drops_malformed_and_keeps_negatives():
    target = {"answer": "5"}
    texts = ["so the sum is 2+3 = 5 and we are done \\boxed{5}",
             "so the sum is 2+3 = 5 and we are done \\boxed{5}",            # duplicate of 0
             "I think it is six because two plus three is six \\boxed{6}",  # wrong
             "no final answer here at all",                                 # malformed
             "wrong wrong wrong \\boxed{7}"]
    correct = [True, True, False, False, False]
    n, pos, n_neg, broken = rasft.score_group(texts, correct, target, dataclasses.replace(CFG, rollout_filter="minimal"))
    assert (n, pos, n_neg, broken) == (4, [0], 2, 1)


def test_score_group_drops_negatives_that_copy_a_positive():
    target = {"answer": "5"}
    base = "first add two and three to get five then check the result carefully by adding again from the left side"
    texts = [base + " \\boxed{5}", base + " \\boxed{6}"]
    sim = rasft.jaccard(rasft.ngrams(texts[0]), rasft.ngrams(texts[1]))
    assert CFG.neg_jaccard <= sim < 0.95
    # at the default 0.82 the near copy is already a duplicate
    cfg = dataclasses.replace(CFG, dup_jaccard=0.95, rollout_filter="minimal")
    n, pos, n_neg, broken = rasft.score_group(texts, [True, False], target, cfg)
    assert (n, pos, n_neg, broken) == (2, [0], 0, 0)


def test_minimal_filter_drops_loops_and_answerless_rollouts_only():
    cfg = dataclasses.replace(CFG, rollout_filter="minimal")
    assert rasft.broken_rule("and then " * 50 + "\\boxed{3}", {"answer": "3"}, cfg) == "loop"
    assert rasft.broken_rule("no final answer here", {"answer": "3"}, cfg) == "no answer"
    assert rasft.broken_rule("short and fine \\boxed{3}", {"answer": "3"}, cfg) is None
