"""
RASFT: Rollout-Adaptive Supervised Fine-Tuning (arXiv 2606.07006), in one file.

Plain SFT imitates one expert solution per problem. RASFT first asks, per problem, how solvable it
is for the current policy: the loss on the expert answer places it in a curriculum window that
slides from easier to harder problems; problems inside the window are probed with verified
on-policy rollouts. Where the policy struggles, expert supervision gets a larger share of the group
signal; where it already succeeds, the policy's own correct solutions join the training queue with
a weak, capped advantage. A clipped ratio to the frozen reference keeps the policy near where it began.

The loss, per sequence with advantage A and response tokens y_t (sg = stop-gradient):
    rho = clip( exp( mean_t log pi_ref(y_t) - mean_t log pi(y_t) ), ratio_low, ratio_high )
    w_t = sg[ rho * A * pi(y_t | x, y_<t) ]
    L   = sum_t w_t * (-log pi(y_t)) / (response tokens in the global batch)

Commands:
    python rasft.py                                           # CPU demo: tiny model, ~3 minutes
    torchrun --nproc_per_node 8 rasft.py --model Qwen2.5-7B   # the paper's math run
    python rasft.py --help                                    # every flag, with its default

Paper symbol -> name in this file:
    ell(x)        item loss = mean token NLL of the expert answer     measure(), item_loss
    q_.10 ... q_.90  calibration quantiles                            calibrate(), thresholds
    [low, high]   curriculum window at step t of T                    window_at()
    n, k_pos      rollouts per prompt, correct ones                   rollout_n, n_correct
    d, r*         difficulty, expert reward                           group_advantages()
    A_i, s        soft advantage tanh(0.4 z), damping 1/(1+k_pos)     group_advantages()
    rho           clipped inverse probability ratio                   loss_rasft()

Departures from the authors' code, on purpose: chunks are routed just in time (when the queue
holds less than one global batch) so the window really slides; the reference term is one number per
sequence, computed once, so no reference forward runs in the step; log-probs are computed in
chunks so no [B, T, vocab] tensor is kept; the global batch and the loss normalization do not
depend on the number of ranks; the verifier never falls back to "the last number in the text".
"""

import argparse
import dataclasses
import inspect
import json
import math
import os
import random
import re
import sys
import time
from dataclasses import dataclass, fields

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

# ---------------------------------------------------------------------------------------------------
# 2. Config: one source of defaults; argparse is generated from it.


@dataclass
class Config:
    # model
    model: str = "tiny"                # Hub id, local path, short Qwen name (Qwen2.5-7B), or 'tiny' (demo model built in code)
    act_ckpt: bool = True              # activation checkpointing of decoder layers
    # data
    data: str = ""                     # Hub dataset id, local .jsonl/.json/.parquet, a preset (numina_cot_10k, kodcode) or 'demo'; '' = demo for tiny, else numina_cot_10k
    data_files: str = ""               # file(s) inside a Hub dataset, comma separated
    split: str = "train"               # dataset split
    prompt_field: str = ""             # field with the problem ('' = preset or auto-detect)
    response_field: str = ""           # field with the expert solution
    answer_field: str = ""             # field with the gold answer ('' = auto; else last \boxed{} of the response)
    tests_field: str = ""              # field with unit tests (code items)
    entry_field: str = ""              # field with the function name (code items)
    max_items: int = 0                 # use the first N items (0 = all)
    max_len: int = 2048                # tokens, prompt + response; longer items are truncated
    min_response: int = 32             # tokens; items whose prompt leaves fewer for the response are dropped
    system_prompt: str = "Please reason step by step, and put your final answer within \\boxed{}."
    code_prompt: str = "Write a complete, self-contained Python solution in a single ```python code block."
    # rollouts
    adaptive: bool = True              # rollout-adaptive supervision (off: every item is an expert item with A = 1)
    rollout_backend: str = "auto"      # auto | vllm | hf
    vllm_gpu_memory: float = 0.3       # fraction of GPU memory for the colocated vLLM engine
    rollout_n: int = 3                 # samples per rolled-out prompt
    temperature: float = 0.9
    top_p: float = 0.95
    max_new_tokens: int = 1024         # per rollout, also bounded by max_len - prompt
    repetition_penalty: float = 1.1
    refresh_every: int = 32            # optimizer steps between refreshes
    rollout_frac: float = 0.35         # share of pending items rolled out at a refresh
    probe_frac: float = 0.03           # share of the hard pool probed at a refresh (at least one)
    route_chunk: int = 128             # items measured and routed at a time
    final_refresh: bool = False        # one more refresh (hard-pool probe) before the end
    # weighting
    q_easy: float = 0.10               # quantile of item loss below which an item is easy
    q_start_low: float = 0.20          # window at the first step
    q_start_high: float = 0.45
    q_end_low: float = 0.50            # window at the last step
    q_end_high: float = 0.75
    q_hard: float = 0.90               # hard-pool ceiling (authors' code: 0.95)
    r_min: float = 1.0                 # expert reward at difficulty 0
    r_max: float = 3.0                 # expert reward at difficulty 1
    adv_temp: float = 0.4              # A_i = tanh(adv_temp * z_i)
    pos_scale: float = 0.25            # positive rollout: A = pos_scale * clip(A_i * s, pos_min, pos_max)
    pos_min: float = 0.02
    pos_max: float = 0.15
    dup_jaccard: float = 0.82          # word 3-gram Jaccard above which two samples are duplicates
    neg_jaccard: float = 0.88          # negatives this close to a positive are dropped
    neg_target: float = 0.45           # preferred similarity of kept negatives to the positives
    max_neg: int = 3                   # negatives kept for the group statistics
    # loss
    loss: str = "rasft"                # rasft | sft | dft | sft_kl | asft | profit
    ratio_clip: bool = True            # rasft: clipped ratio to the reference (off: rho = 1)
    ratio_low: float = 0.4
    ratio_high: float = 1.2
    token_weight: bool = True          # rasft: DFT token weight sg[pi(y_t)] (off: 1)
    kl_coef: float = 0.1               # sft_kl, asft
    kl_dir: str = "ref_theta"          # KL(ref||theta) as the authors, or theta_ref as the ASFT paper
    profit_p: float = 0.1              # profit: train only tokens with probability above this
    logp_chunk: int = 1024             # response tokens per chunk of the vocabulary projection
    # optim
    batch_size: int = 256              # sequences per optimizer step, all ranks together
    micro_batch: int = 4               # sequences per forward, per rank
    lr: float = 5e-5
    min_lr: float = 0.0                # cosine schedule ends here
    warmup: float = 0.03               # share of steps of linear warmup
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    epochs: int = 1
    max_steps: int = 0                 # stop after this many optimizer steps (0 = whole data)
    seed: int = 42
    # log
    out: str = "out"                   # output folder: metrics.jsonl, checkpoints, final model
    save_every: int = 0                # optimizer steps between checkpoints (0 = only the final model)
    resume: bool = False               # continue from the latest checkpoint in --out
    wandb: str = ""                    # wandb project name ('' = off)
    demo_warmup: int = 150             # tiny model only: SFT steps from random init before the method starts
    eval_items: int = 200              # demo: held-out problems evaluated before and after


# Defaults for the CPU demo; they apply to --model tiny unless the flag is given.
DEMO = dict(data="demo", batch_size=64, micro_batch=64, lr=2e-3, warmup=0.0, max_len=256,
            min_response=8, max_new_tokens=48, act_ckpt=False, refresh_every=8, route_chunk=64)

# The authors' two training sets, and the demo task's fields.
PRESETS = {
    "numina_cot_10k": dict(data="chichi56/ASFT", data_files="numina_cot_10k.jsonl", prompt_field="instruction",
                           response_field="response"),
    "kodcode": dict(data="KodCode/KodCode-V1-SFT-R1", prompt_field="question", response_field="r1_solution",
                    tests_field="test_code", entry_field="test_info"),
    "demo": dict(prompt_field="problem", response_field="solution", answer_field="answer"),
}
QWEN_SHORT = re.compile(r"^Qwen[\d.]+-[\w.-]+$")


def parse_args(argv=None):
    """argparse from the Config fields: every flag, its type, default and help come from there."""
    comments = dict(re.findall(r"^    (\w+): \w+ = .*?#\s*(.*)$", inspect.getsource(Config), re.M))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    for f in fields(Config):
        p.add_argument(f"--{f.name}", type=_str2bool if f.type is bool else f.type, default=None, metavar=f.type.__name__,
                       help=f"{comments.get(f.name, '')} (default: {f.default!r})".replace("%", "%%"))
    given = {k: v for k, v in vars(p.parse_args(argv)).items() if v is not None}
    cfg = Config(**given)
    if cfg.model == "tiny":
        cfg = dataclasses.replace(cfg, **{k: v for k, v in DEMO.items() if k not in given})
    if QWEN_SHORT.match(cfg.model) and not os.path.exists(cfg.model):
        cfg.model = "Qwen/" + cfg.model
    cfg.data = cfg.data or ("demo" if cfg.model == "tiny" else "numina_cot_10k")
    for k, v in PRESETS.get(cfg.data, {}).items():
        if k == "data" or k not in given:
            setattr(cfg, k, v)
    if cfg.loss not in LOSSES:
        p.error(f"--loss {cfg.loss}: choose one of {', '.join(LOSSES)}")
    return cfg


def _str2bool(s):
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


# ---------------------------------------------------------------------------------------------------
# 3. Distributed: replicated state, sharded work.


def setup_dist():
    """(rank, world, device). torchrun sets the env; a plain `python rasft.py` is one rank."""
    if "RANK" not in os.environ:
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    local = int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        torch.cuda.set_device(local)
    return dist.get_rank(), dist.get_world_size(), torch.device(f"cuda:{local}" if cuda else "cpu")


def rank0():
    return not dist.is_initialized() or dist.get_rank() == 0


def print0(*args, **kw):
    if rank0():
        print(*args, **kw, flush=True)


def world_size():
    return dist.get_world_size() if dist.is_initialized() else 1


def rank():
    return dist.get_rank() if dist.is_initialized() else 0


def all_gather_list(local):
    """Concatenate each rank's python list, in rank order."""
    if not dist.is_initialized():
        return list(local)
    out = [None] * world_size()
    dist.all_gather_object(out, local)
    return [x for part in out for x in part]


def shard_of(seq):
    """This rank's contiguous share of seq (shares in rank order concatenate back to seq)."""
    k = math.ceil(len(seq) / world_size())
    return seq[rank() * k:(rank() + 1) * k]


def progress(iterable, desc, total=None):
    from tqdm import tqdm
    return tqdm(iterable, desc=desc, total=total, disable=not rank0() or not sys.stderr.isatty(), leave=False)


# ---------------------------------------------------------------------------------------------------
# 4. Data: rows -> items {prompt, response (token ids), target (gold answer or unit tests)}.


class DataError(ValueError):
    """Bad input a user can fix; main() prints it as one line."""


def load_rows(cfg):
    """Rows as dicts: the demo generator, a local file, or a Hub dataset (both through `datasets`)."""
    if cfg.data == "demo":
        return demo_rows(DEMO_TRAIN, cfg.seed)
    from datasets import load_dataset
    if os.path.isfile(cfg.data):
        ext = cfg.data.rsplit(".", 1)[-1]
        fmt = {"jsonl": "json", "json": "json", "parquet": "parquet"}.get(ext)
        if fmt is None:
            raise DataError(f"{cfg.data}: unknown extension .{ext}; use .jsonl, .json or .parquet")
        if ext == "jsonl":
            check_jsonl(cfg.data)
        return load_dataset(fmt, data_files=cfg.data, split="train")
    if cfg.data.endswith((".jsonl", ".json", ".parquet")):
        raise DataError(f"--data {cfg.data}: no such file")
    files = cfg.data_files.split(",") if cfg.data_files else None
    return load_dataset(cfg.data, data_files=files, split=cfg.split)


def check_jsonl(path):
    """`datasets` reports a bad line deep inside pyarrow; say which file and line instead."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    if not isinstance(json.loads(line), dict):
                        raise ValueError("not a JSON object")
                except ValueError as e:
                    raise DataError(f"{path}:{n}: not a JSON object per line ({e}); fix or remove that line") from None


def pick_field(cfg_value, row, candidates, what, flag, required=True):
    """The configured field, else the first candidate present in the row."""
    if cfg_value:
        if cfg_value not in row:
            raise DataError(f"--{flag} {cfg_value}: no such field in the data (fields: {', '.join(row)})")
        return cfg_value
    found = next((c for c in candidates if c in row), None)
    if found is None and required:
        raise DataError(f"no {what} field found (fields: {', '.join(row)}); name it with --{flag}")
    return found


def target_of(row, f, response):
    """What a rollout is verified against: unit tests, a gold answer, or None (expert-only item)."""
    tests = row.get(f["tests"]) if f["tests"] else None
    if tests:
        entry = row.get(f["entry"]) if f["entry"] else None
        if isinstance(entry, list):  # KodCode's test_info: a list of {function_name, ...}
            entry = entry[0].get("function_name") if entry and isinstance(entry[0], dict) else None
        return {"tests": tests, "entry": entry}
    answer = row.get(f["answer"]) if f["answer"] else None
    if isinstance(answer, list):
        answer = ", ".join(map(str, answer))
    answer = str(answer).strip() if answer not in (None, "") else extract_answer(response)
    return {"answer": answer} if answer else None


def build_items(rows, cfg, tok):
    """Tokenize with the chat template; loss only on the response, which ends with the end token."""
    first = rows[0] if len(rows) else {}
    f = {"prompt": pick_field(cfg.prompt_field, first, ["problem", "question", "instruction", "prompt", "query"],
                              "prompt", "prompt_field"),
         "response": pick_field(cfg.response_field, first, ["solution", "response", "output", "completion"],
                                "response", "response_field"),
         "answer": pick_field(cfg.answer_field, first, ["answer", "final_answer", "gold"], "", "answer_field", False),
         "tests": pick_field(cfg.tests_field, first, ["test_code", "test_list", "test"], "", "tests_field", False),
         "entry": pick_field(cfg.entry_field, first, ["entry_point", "test_info"], "", "entry_field", False)}
    if cfg.max_items:
        rows = rows.select(range(min(cfg.max_items, len(rows)))) if hasattr(rows, "select") else rows[:cfg.max_items]
    count = dict(rows=len(rows), empty=0, dropped=0, truncated=0, math=0, code=0, no_target=0)
    texts = []
    for row in rows:
        prompt, response = row.get(f["prompt"]), row.get(f["response"])
        if not prompt or not response:
            count["empty"] += 1
            continue
        texts.append((str(prompt), str(response), target_of(row, f, str(response))))
    end = end_token_id(tok)
    prompts = tok([prompt_text(tok, p, t and "tests" in t, cfg) for p, _, t in texts], add_special_tokens=False)["input_ids"]
    responses = tok([r for _, r, _ in texts], add_special_tokens=False)["input_ids"]
    items = []
    for (_, _, target), p_ids, r_ids in zip(texts, prompts, responses):
        room = cfg.max_len - len(p_ids)
        if room < cfg.min_response:
            count["dropped"] += 1
            continue
        r_ids = r_ids + [end]
        if len(r_ids) > room:
            count["truncated"] += 1
            r_ids = r_ids[:room]
        count["code" if target and "tests" in target else "math" if target else "no_target"] += 1
        items.append({"prompt": p_ids, "response": r_ids, "target": target})
    if not items:
        raise DataError(f"--data {cfg.data}: no usable items ({count})")
    return items, count


def prompt_text(tok, problem, is_code, cfg):
    messages = [{"role": "system", "content": cfg.code_prompt if is_code else cfg.system_prompt},
                {"role": "user", "content": problem}]
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def end_token_id(tok):
    """The token that ends an assistant turn: <|im_end|> for ChatML templates, else EOS."""
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    return im_end if isinstance(im_end, int) and im_end != tok.unk_token_id and "<|im_end|>" in (tok.chat_template or "") else tok.eos_token_id


# ---------------------------------------------------------------------------------------------------
# 5. Verifier


def extract_answer(text):
    """The content of the last \boxed{...}, or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j].strip()
    return None


def math_equal(pred, gold, timeout=5.0):
    return pred is not None and pred.replace(" ", "") == gold.replace(" ", "")


def verify_math(completion, gold, timeout=5.0):
    return math_equal(extract_answer(completion), gold, timeout)


def verify_code(completion, tests, entry_point=None, timeout=10.0):
    raise NotImplementedError


def verify(completion, target):
    """One rollout against its item's target (gold answer or unit tests)."""
    if "tests" in target:
        return verify_code(completion, target["tests"], target.get("entry"))
    return verify_math(completion, target["answer"])


# ---------------------------------------------------------------------------------------------------
# 6. Rollouts: one interface, two backends. generate() returns, per prompt, n lists of token ids,
#    cut after the first stop token; load_weights() takes (name, full tensor) pairs.


class HFEngine:
    """HF `generate` on an unsharded copy of the policy (the policy itself may be sharded by FSDP)."""

    def __init__(self, model, tok, stop_ids):
        self.model, self.tok, self.stop_ids = model.eval(), tok, list(stop_ids)

    @classmethod
    def from_pretrained(cls, path, tok, stop_ids, device, dtype=None):
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or "auto").to(device)
        return cls(model, tok, stop_ids)

    @torch.no_grad()
    def load_weights(self, named_tensors):
        params = dict(self.model.named_parameters())
        for name, t in named_tensors:
            if name in params:
                params[name].copy_(t)

    @torch.no_grad()
    def generate(self, prompts, n=1, temperature=0.0, top_p=1.0, max_tokens=256, repetition_penalty=1.0,
                 seed=0, batch=64):
        torch.manual_seed(seed)
        dev, pad = self.model.device, self.tok.pad_token_id
        sample = temperature > 0
        out = []
        for i in range(0, len(prompts), batch):
            part = prompts[i:i + batch]
            width = max(map(len, part))  # left padding: generation continues from the right edge
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in part], device=dev)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in part], device=dev)
            gen = self.model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=max_tokens, do_sample=sample,
                temperature=temperature if sample else None, top_p=top_p if sample else None, top_k=0 if sample else None,
                repetition_penalty=repetition_penalty, num_return_sequences=n, eos_token_id=self.stop_ids,
                pad_token_id=pad)[:, width:].tolist()
            out += [[cut_at_stop(g, self.stop_ids) for g in gen[j * n:(j + 1) * n]] for j in range(len(part))]
        return out


def cut_at_stop(ids, stop_ids):
    """Tokens up to and including the first stop token (or all, if the length limit came first)."""
    for k, t in enumerate(ids):
        if t in stop_ids:
            return ids[:k + 1]
    return ids


def stop_token_ids(tok):
    return sorted({end_token_id(tok), tok.eos_token_id} - {None})


# ---------------------------------------------------------------------------------------------------
# 7. Solvability weighting: pure functions of numbers.

QUANTILES = dict(easy_floor="q_easy", start_low="q_start_low", start_high="q_start_high",
                 end_low="q_end_low", end_high="q_end_high", hard_ceiling="q_hard")


def calibrate(losses, cfg):
    """Thresholds on the item loss: quantiles of the losses of all items under the starting policy."""
    x = torch.tensor(losses, dtype=torch.float64)
    return {k: torch.quantile(x, getattr(cfg, q)).item() for k, q in QUANTILES.items()}


def window_at(step, total_steps, thresholds):
    """The curriculum window slides linearly from [start_low, start_high] to [end_low, end_high]."""
    a = min(step / max(total_steps, 1), 1.0)
    t = thresholds
    return (1 - a) * t["start_low"] + a * t["end_low"], (1 - a) * t["start_high"] + a * t["end_high"]


def route(loss, low, high, thresholds):
    if loss <= thresholds["easy_floor"]:
        return "easy"
    if low <= loss <= high:
        return "pending"
    if high < loss <= thresholds["hard_ceiling"]:
        return "hard"
    return "other"


def group_advantages(n_samples, n_correct, n_wrong_kept, cfg):
    """(expert advantage, [advantage per correct rollout]), or None: no signal, expert alone with A = 1."""
    if n_samples == 0 or n_correct == 0:
        return None
    d = 1 - n_correct / n_samples
    rewards = torch.tensor([cfg.r_min + d * (cfg.r_max - cfg.r_min)] + [1.0] * n_correct + [0.0] * n_wrong_kept,
                           dtype=torch.float64)
    if torch.all(rewards == rewards[0]):
        return None
    z = (rewards - rewards.mean()) / rewards.std(unbiased=False)
    a = torch.tanh(cfg.adv_temp * z)
    s = 1 / (1 + n_correct)
    pos = [cfg.pos_scale * min(max(ai * s, cfg.pos_min), cfg.pos_max) for ai in a[1:1 + n_correct].tolist()]
    return a[0].item() * s, pos


def ngrams(text, n=3):
    w = text.split()
    return {tuple(w[i:i + n]) for i in range(max(len(w) - n + 1, 1))}


def jaccard(a, b):
    return len(a & b) / max(len(a | b), 1)


def is_malformed(text, target):
    """No final answer (math), or stuck in a loop: few distinct word 3-grams in a long text."""
    if "answer" in target and extract_answer(text) is None:
        return True
    grams, words = ngrams(text), len(text.split())
    return words >= 60 and len(grams) / (words - 2) < 0.3


def score_group(texts, correct, target, cfg):
    """De-duplicate, drop malformed, split into positives and kept negatives.
    Returns (n_samples after de-duplication, indices of positives, number of negatives kept)."""
    grams, kept = [ngrams(t) for t in texts], []
    for i in range(len(texts)):
        if all(jaccard(grams[i], grams[j]) < cfg.dup_jaccard for j in kept):
            kept.append(i)
    ok = [i for i in kept if not is_malformed(texts[i], target)]
    pos = [i for i in ok if correct[i]]
    near = {i: max((jaccard(grams[i], grams[j]) for j in pos), default=0.0) for i in ok if not correct[i]}
    neg = sorted((i for i in near if near[i] < cfg.neg_jaccard), key=lambda i: abs(near[i] - cfg.neg_target))
    return len(kept), pos, len(neg[:cfg.max_neg])


# ---------------------------------------------------------------------------------------------------
# 8. Loss. Token log-probs are computed in chunks of response tokens, each chunk's vocabulary
#    projection recomputed in backward, so no [tokens, vocab] tensor outlives its chunk.


def chunk_logp(h, weight, targets, h_ref=None, w_ref=None, kl_dir="ref_theta"):
    """log pi(target) for each row of h (n, H); and the full-vocabulary KL to the reference if given."""
    logits = F.linear(h, weight).float()                                           # (n, V)
    logp = logits.gather(1, targets[:, None]).squeeze(1) - logits.logsumexp(1)     # (n,)
    if h_ref is None:
        return logp, None
    lp, ref = logits.log_softmax(1), F.linear(h_ref, w_ref).float().log_softmax(1)   # (n, V)
    kl = (ref.exp() * (ref - lp)).sum(1) if kl_dir == "ref_theta" else (lp.exp() * (lp - ref)).sum(1)
    return logp, kl


class Scorer(nn.Module):
    """Policy (and frozen reference) -> log-probs of the response tokens, flattened over the batch.
    One module, so that FSDP2 gathers the output projections of both inside its forward."""

    def __init__(self, policy, ref=None, chunk=1024):
        super().__init__()
        self.policy, self.ref, self.chunk = policy, ref, chunk

    def forward(self, input_ids, attention_mask, resp_mask, which="policy", kl_dir=None):
        """resp_mask (B, T-1) marks positions whose next token is a response token.
        Returns logp (N,) of those tokens under `which`, and KL (N,) to the reference if kl_dir is set."""
        model = self.policy if which == "policy" else self.ref
        targets = input_ids[:, 1:][resp_mask]                                      # (N,)
        h = hidden(model, input_ids, attention_mask)[:, :-1][resp_mask]             # (N, H)
        h_ref = w_ref = None
        if kl_dir:
            with torch.no_grad():
                h_ref = hidden(self.ref, input_ids, attention_mask)[:, :-1][resp_mask]
            w_ref = self.ref.get_output_embeddings().weight
        weight = model.get_output_embeddings().weight
        logp, kl = [], []
        for i in range(0, len(targets), self.chunk):
            args = (h[i:i + self.chunk], weight, targets[i:i + self.chunk],
                    None if h_ref is None else h_ref[i:i + self.chunk], w_ref, kl_dir)
            lp, k = checkpoint(chunk_logp, *args, use_reentrant=False) if torch.is_grad_enabled() else chunk_logp(*args)
            logp.append(lp)
            kl.append(k)
        return torch.cat(logp), (torch.cat(kl) if kl_dir else None)


def hidden(model, input_ids, attention_mask):
    return model.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def seq_mean(x, seq, n):
    """Mean of token values x (N,) per sequence, seq (N,) the sequence index of each token."""
    return torch.zeros(n, dtype=x.dtype, device=x.device).index_add_(0, seq, x) / torch.bincount(seq, minlength=n).clamp(min=1)


# Each loss returns per-token losses (N,); the step sums them and divides by the global token count.
# b holds the micro-batch: seq (N,) sequence of each token, adv (B,), ref_logp (B,), kl (N,) or None.

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


def loss_rasft(logp, b, cfg):
    seq = b["seq"]
    raw = (b["ref_logp"] - seq_mean(logp.detach(), seq, len(b["adv"]))).exp()     # (B,)
    ratio = raw.clamp(cfg.ratio_low, cfg.ratio_high) if cfg.ratio_clip else torch.ones_like(raw)
    w = ratio[seq] * b["adv"][seq]                                                  # (N,)
    if cfg.token_weight:
        w = w * logp.detach().exp()
    clipped = ((raw < cfg.ratio_low) | (raw > cfg.ratio_high)).float().mean()
    return -w * logp, {"w": w.mean(), "clip": clipped}


LOSSES = {"rasft": loss_rasft, "sft": loss_sft, "dft": loss_dft, "sft_kl": loss_sft_kl, "asft": loss_asft,
          "profit": loss_profit}


# ---------------------------------------------------------------------------------------------------
# 9. Model: load, shard with FSDP2, save in Hugging Face format, checkpoint and resume.


def load_tokenizer(cfg):
    if cfg.model == "tiny":
        return tiny_tokenizer()
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(cfg.model)
    if not tok.chat_template:
        print0(f"{cfg.model} has no chat template; using ChatML")
        tok.chat_template = CHATML
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_policy(cfg, tok):
    """fp32 master weights on CPU; FSDP2 moves each rank's shard to its device."""
    if cfg.model == "tiny":
        torch.manual_seed(cfg.seed)
        return tiny_model(tok)
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(cfg.model, dtype=torch.float32, attn_implementation="sdpa")


def frozen_copy(model, dtype):
    import copy
    ref = copy.deepcopy(model).to(dtype).eval()
    ref.requires_grad_(False)
    return ref


def shard(scorer, device):
    """FSDP2: each decoder layer, then the root. One process: the module moves to the device."""
    if not dist.is_initialized():
        return scorer.to(device)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if device.type == "cuda" else MixedPrecisionPolicy()
    for model in (scorer.policy, scorer.ref):
        for layer in (model.model.layers if model is not None else []):
            fully_shard(layer, mp_policy=mp)
    return fully_shard(scorer, mp_policy=mp)


def full_params(model):
    """(name, full tensor) for each parameter. Under FSDP2 every rank must iterate: each is a collective."""
    for name, p in model.named_parameters():
        yield name, (p.full_tensor() if hasattr(p, "full_tensor") else p).detach()


def save_hf(model, tok, path):
    """Weights (in the model's own dtype), config and tokenizer, loadable by from_pretrained and vLLM."""
    dtype = getattr(model.config, "dtype", None) or torch.float32
    sd = {k: v.to("cpu", dtype if v.is_floating_point() else v.dtype) for k, v in full_params(model)}
    if rank0():
        model.save_pretrained(path, state_dict=sd)
        tok.save_pretrained(path)
    if dist.is_initialized():
        dist.barrier()


def save_checkpoint(scorer, opt, state, cfg):
    """Sharded model and optimizer (torch.distributed.checkpoint) + the replicated run state."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    path = os.path.join(cfg.out, "ckpt", f"step_{state['step']}")
    model_sd, optim_sd = get_state_dict(scorer.policy, opt)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=path)
    if rank0():
        torch.save(state, os.path.join(path, "state.pt"))
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump(dataclasses.asdict(cfg), f, indent=1)
        with open(os.path.join(cfg.out, "ckpt", "latest"), "w") as f:
            f.write(os.path.basename(path))  # written last: a checkpoint is complete once named here
    if dist.is_initialized():
        dist.barrier()


def load_checkpoint(scorer, opt, cfg):
    """The run state of the latest complete checkpoint (model and optimizer loaded in place), or None."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    latest = os.path.join(cfg.out, "ckpt", "latest")
    if not os.path.exists(latest):
        print0(f"--resume: no checkpoint in {cfg.out}/ckpt; starting from the beginning")
        return None
    path = os.path.join(cfg.out, "ckpt", open(latest).read().strip())
    model_sd, optim_sd = get_state_dict(scorer.policy, opt)
    sd = {"model": model_sd, "optim": optim_sd}
    dcp.load(sd, checkpoint_id=path)
    set_state_dict(scorer.policy, opt, model_state_dict=sd["model"], optim_state_dict=sd["optim"])
    print0(f"resumed from {path}")
    return torch.load(os.path.join(path, "state.pt"), weights_only=False)


# ---------------------------------------------------------------------------------------------------
# 10. Training: one loop, four phases per optimizer step: route -> refresh -> step -> log/save.

KL_LOSSES = ("sft_kl", "asft")


def expert(i, adv, state):
    """A queue entry training item i's expert response (response None = the item's own)."""
    return {"item": i, "response": None, "adv": adv, "ref_logp": state["ref_logp"][i] if state["ref_logp"] else 0.0}


def response_of(s, items):
    return items[s["item"]]["response"] if s["response"] is None else s["response"]


def collate(samples, items, device):
    """Right-padded batch; resp_mask (B, T-1) marks positions whose next token belongs to the response."""
    seqs = [(items[s["item"]]["prompt"], response_of(s, items)) for s in samples]
    width = max(len(p) + len(r) for p, r in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    attn = torch.zeros(len(seqs), width, dtype=torch.long)
    resp = torch.zeros(len(seqs), width, dtype=torch.bool)
    for k, (p, r) in enumerate(seqs):
        ids[k, :len(p) + len(r)] = torch.tensor(p + r)
        attn[k, :len(p) + len(r)] = 1
        resp[k, len(p):len(p) + len(r)] = True
    resp_mask = resp[:, 1:]
    seq = torch.arange(len(seqs))[:, None].expand_as(resp_mask)[resp_mask]
    return {"input_ids": ids.to(device), "attention_mask": attn.to(device), "resp_mask": resp_mask.to(device),
            "seq": seq.to(device), "adv": torch.tensor([s.get("adv", 1.0) for s in samples], device=device),
            "ref_logp": torch.tensor([s.get("ref_logp", 0.0) for s in samples], device=device)}


def autocast(device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.no_grad()
def measure(scorer, samples, items, which, cfg, device):
    """Mean token log-prob of each sample's response under `which` (policy or ref); item loss = -this.
    Samples are split over ranks (padded so every rank runs the same number of forwards) and gathered."""
    if not samples:
        return []
    k = math.ceil(len(samples) / world_size())
    mine = shard_of(samples)
    padded = mine + [samples[0]] * (k - len(mine))
    out = []
    for j in progress(range(0, k, cfg.micro_batch), f"measure {which}"):
        b = collate(padded[j:j + cfg.micro_batch], items, device)
        with autocast(device):
            logp, _ = scorer(b["input_ids"], b["attention_mask"], b["resp_mask"], which=which)
        out += seq_mean(logp.float(), b["seq"], len(b["adv"])).tolist()
    return all_gather_list(out[:len(mine)])


def train_step(scorer, opt, batch, items, cfg, device):
    """One optimizer step on a global batch: this rank's share in micro-batches, the loss of each
    divided by the global response-token count, so the gradient is the same for any split."""
    world = world_size()
    n_tok = sum(len(response_of(s, items)) for s in batch)
    mine = batch[rank()::world]
    n_micro = math.ceil(math.ceil(len(batch) / world) / cfg.micro_batch)
    sums = torch.zeros(4, dtype=torch.float64)  # loss, w, clip (token-weighted), tokens seen
    for k in range(n_micro):
        mb = mine[k * cfg.micro_batch:(k + 1) * cfg.micro_batch]
        # FSDP averages gradients over ranks; `world` turns that back into the global sum.
        scale = world / n_tok if mb else 0.0  # a rank out of samples runs a zero-weight step (collectives match)
        b = collate(mb or batch[:1], items, device)
        if hasattr(scorer, "set_requires_gradient_sync"):
            scorer.set_requires_gradient_sync(k == n_micro - 1)
        with autocast(device):
            logp, b["kl"] = scorer(b["input_ids"], b["attention_mask"], b["resp_mask"],
                                   kl_dir=cfg.kl_dir if cfg.loss in KL_LOSSES else None)
            tok_loss, st = LOSSES[cfg.loss](logp.float(), b, cfg)
        (tok_loss.sum() * scale).backward()
        if mb:
            n = len(tok_loss)
            sums += torch.tensor([tok_loss.sum().item(), st.get("w", 1.0) * n, st.get("clip", 0.0) * n, n], dtype=torch.float64)
    grad_norm = torch.nn.utils.clip_grad_norm_([p for p in scorer.policy.parameters() if p.requires_grad], cfg.grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    if dist.is_initialized():
        dist.all_reduce(sums)
    grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
    n = max(sums[3].item(), 1)
    return {"loss": sums[0].item() / n, "w": float(sums[1]) / n, "clip": float(sums[2]) / n, "grad_norm": grad_norm.item(),
            "tokens": sum(len(items[s["item"]]["prompt"]) + len(response_of(s, items)) for s in batch)}


def lr_at(step, total, cfg):
    warm = math.ceil(cfg.warmup * total)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    progress_ = (step - warm) / max(total - warm, 1)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(progress_, 1.0)))


def new_state(items, cfg):
    order = []
    for epoch in range(cfg.epochs):
        perm = list(range(len(items)))
        random.Random(cfg.seed + epoch).shuffle(perm)
        order += perm
    return {"step": 0, "total": math.ceil(len(order) / cfg.batch_size), "order": order, "cursor": 0, "queue": [],
            "pending": [], "hard": {}, "ref_logp": [], "thresholds": None, "records": {}, "last": {}}


def route_chunk(state, scorer, items, cfg, device, adaptive):
    """Measure the next chunk under the current policy and route each item by the current window."""
    ids = state["order"][state["cursor"]:state["cursor"] + cfg.route_chunk]
    state["cursor"] += len(ids)
    if not adaptive:
        state["queue"] += [expert(i, 1.0, state) for i in ids]
        return
    th = state["thresholds"]
    low, high = window_at(state["step"], state["total"], th)
    logps = measure(scorer, [expert(i, 1.0, state) for i in ids], items, "policy", cfg, device)
    for i, lp in zip(ids, logps):
        r = route(-lp, low, high, th) if items[i]["target"] else "other"
        state["records"].setdefault(i, {}).update(route=r, loss=round(-lp, 4))
        if r == "pending":
            state["pending"].append(i)
        else:
            state["queue"].append(expert(i, 1.0, state))
        if r == "hard":
            state["hard"][i] = 0


def rollout(engine, chosen, items, tok, cfg, step):
    """n verified samples per chosen item, generated by each rank for its share, gathered everywhere.
    Returns per item a list of (token ids, text, correct)."""
    mine = shard_of(chosen)
    out = []
    if mine:
        prompts = [items[i]["prompt"] for i in mine]
        room = cfg.max_len - max(map(len, prompts))
        gens = engine.generate(prompts, n=cfg.rollout_n, temperature=cfg.temperature, top_p=cfg.top_p,
                               max_tokens=max(1, min(cfg.max_new_tokens, room)),
                               repetition_penalty=cfg.repetition_penalty, seed=cfg.seed + 7919 * step + rank())
        for i, group in zip(mine, gens):
            texts = tok.batch_decode(group, skip_special_tokens=True)
            out.append([(g, t, verify(t, items[i]["target"])) for g, t in zip(group, texts)])
    return all_gather_list(out)


def refresh(state, scorer, engine, items, tok, cfg, device):
    """Roll out a random share of the pending items and a probe of the hard pool; score each group;
    queue the expert with its group advantage and the correct rollouts with theirs."""
    rng = random.Random(cfg.seed * 1_000_003 + state["step"])
    queue, hard, th, rec = state["queue"], state["hard"], state["thresholds"], state["records"]
    pending, state["pending"] = state["pending"], []
    rng.shuffle(pending)
    n_roll = round(cfg.rollout_frac * len(pending))
    chosen = pending[:n_roll]
    queue += [expert(i, 1.0, state) for i in pending[n_roll:]]
    low, _ = window_at(state["step"], state["total"], th)
    probes = rng.sample(sorted(hard), max(1, int(cfg.probe_frac * len(hard)))) if hard else []
    for i, lp in zip(probes, measure(scorer, [expert(i, 1.0, state) for i in probes], items, "policy", cfg, device)):
        rec[i]["probes"] = rec[i].get("probes", 0) + 1
        if -lp < low:
            del hard[i]
            queue.append(expert(i, 1.0, state))
        elif -lp <= th["hard_ceiling"]:
            del hard[i]
            chosen.append(i)
        else:
            hard[i] += 1
    engine.load_weights(full_params(scorer.policy))
    groups = rollout(engine, chosen, items, tok, cfg, state["step"])
    new, n_correct, n_samples = [], 0, 0
    for i, group in zip(chosen, groups):
        toks, texts, correct = zip(*group)
        n, pos, n_neg = score_group(texts, correct, items[i]["target"], cfg)
        adv = group_advantages(n, len(pos), n_neg, cfg)
        n_correct, n_samples = n_correct + sum(correct), n_samples + len(correct)
        rec[i].update(rollouts=len(correct), distinct=n, correct=len(pos), pass_rate=round(len(pos) / max(n, 1), 3),
                      expert_adv=round(adv[0], 4) if adv else 1.0, rollout_adv=[round(a, 4) for a in adv[1]] if adv else [])
        queue.append(expert(i, adv[0] if adv else 1.0, state))
        new += [{"item": i, "response": list(toks[j]), "adv": a} for j, a in zip(pos, adv[1] if adv else [])]
    for s, lp in zip(new, measure(scorer, new, items, "ref", cfg, device)):
        s["ref_logp"] = lp
    queue += new
    state["last"] = {"event": "refresh", "step": state["step"], "pending": len(pending), "rolled_out": len(chosen),
                     "probed": len(probes), "pass": n_correct / max(n_samples, 1), "queued_rollouts": len(new),
                     "hard_pool": len(hard), "low": low, "high": window_at(state["step"], state["total"], th)[1]}
    return state["last"]


def train(cfg):
    """Fine-tune cfg.model on cfg.data with cfg.loss; returns the held-out accuracy (demo) or None."""
    _, world, device = setup_dist()
    torch.manual_seed(cfg.seed)
    os.makedirs(cfg.out, exist_ok=True)
    tok = load_tokenizer(cfg)
    items, count = build_items(load_rows(cfg), cfg, tok)
    print0(f"data {cfg.data}: {len(items)} items of {count['rows']} rows | {count['math']} math, {count['code']} code, "
           f"{count['no_target']} without a target (expert only) | {count['truncated']} truncated, "
           f"{count['dropped']} dropped (prompt leaves < {cfg.min_response} tokens), {count['empty']} empty")
    adaptive = cfg.adaptive and cfg.loss == "rasft"
    policy = load_policy(cfg, tok)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    ref = frozen_copy(policy, dtype) if adaptive or cfg.loss in KL_LOSSES else None
    heldout = demo_heldout(cfg, tok) if cfg.data == "demo" else None
    engine = make_engine(policy, tok, cfg, device, dtype) if adaptive or heldout else None
    if cfg.act_ckpt:
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    policy.train()
    scorer = shard(Scorer(policy, ref, cfg.logp_chunk), device)
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
    state = load_checkpoint(scorer, opt, cfg) if cfg.resume else None
    acc0 = evaluate(engine, heldout, tok, cfg) if heldout and state is None else None
    if state is None:
        state = new_state(items, cfg)
        if cfg.loss == "rasft":  # at step 0 the policy is the reference: one pass gives both terms
            state["ref_logp"] = measure(scorer, [expert(i, 1.0, {"ref_logp": []}) for i in range(len(items))],
                                        items, "policy", cfg, device)
            if adaptive:
                state["thresholds"] = calibrate([-x for x in state["ref_logp"]], cfg)
                print0("calibration: " + " | ".join(f"{k} {v:.3f}" for k, v in state["thresholds"].items()))
    log = open(os.path.join(cfg.out, "metrics.jsonl"), "a") if rank0() else None
    run = wandb_run(cfg)
    t_start = time.time()
    while not (cfg.max_steps and state["step"] >= cfg.max_steps):
        # 1. route: measure and route chunks until the queue holds a global batch
        while len(state["queue"]) < cfg.batch_size and state["cursor"] < len(state["order"]):
            route_chunk(state, scorer, items, cfg, device, adaptive)
        # 2. refresh: every refresh_every steps, and whenever the queue runs dry with items pending
        step, queue = state["step"], state["queue"]
        dry = len(queue) < cfg.batch_size and state["cursor"] == len(state["order"])
        if adaptive and ((step and step % cfg.refresh_every == 0) or (dry and state["pending"])
                         or (dry and cfg.final_refresh and state["hard"] and not state.get("final_done"))):
            state["final_done"] = dry
            r = refresh(state, scorer, engine, items, tok, cfg, device)
            print0(f"refresh @ step {step} | pending {r['pending']} | rolled out {r['rolled_out']} | probed {r['probed']} | "
                   f"pass {r['pass']:.2f} | correct rollouts queued {r['queued_rollouts']} | hard pool {r['hard_pool']} | "
                   f"window [{r['low']:.3f}, {r['high']:.3f}]")
            emit(log, run, r)
        if dry and not state["pending"]:  # end of data: the hard pool is trained as expert items
            queue += [expert(i, 1.0, state) for i in sorted(state["hard"])]
            state["hard"] = {}
        if not queue:
            break
        remaining = len(queue) + len(state["order"]) - state["cursor"] + len(state["pending"]) + len(state["hard"])
        state["total"] = max(state["total"], step + math.ceil(remaining / cfg.batch_size))
        if cfg.max_steps:
            state["total"] = min(state["total"], cfg.max_steps)
        # 3. step
        batch, state["queue"] = queue[:cfg.batch_size], queue[cfg.batch_size:]
        lr = lr_at(step, state["total"], cfg)
        for g in opt.param_groups:
            g["lr"] = lr
        t0 = time.time()
        m = train_step(scorer, opt, batch, items, cfg, device)
        dt = time.time() - t0
        state["step"] += 1
        # 4. log, save
        m.update(step=state["step"], total=state["total"], lr=lr, ms=1000 * dt, tok_s=m["tokens"] / dt)
        print0(f"step {m['step']}/{m['total']} | loss {m['loss']:.4f} | w {m['w']:.3f} | "
               + (f"pass {state['last']['pass']:.2f} | " if state["last"] else "")
               + f"clip {100 * m['clip']:.1f}% | lr {lr:.2e} | gnorm {m['grad_norm']:.2f} | {m['ms']:.0f} ms | "
               f"{m['tok_s'] / 1000:.1f}k tok/s")
        emit(log, run, m)
        if cfg.save_every and state["step"] % cfg.save_every == 0:
            save_checkpoint(scorer, opt, state, cfg)
    print0(f"trained {state['step']} steps in {time.time() - t_start:.0f} s")
    save_hf(scorer.policy, tok, cfg.out)
    if rank0() and state["records"]:
        with open(os.path.join(cfg.out, "solvability.jsonl"), "w") as f:
            for i in sorted(state["records"]):
                f.write(json.dumps({"item": i, **state["records"][i]}) + "\n")
    if heldout:
        engine.load_weights(full_params(scorer.policy))
        acc = evaluate(engine, heldout, tok, cfg)
        print0(f"held-out accuracy: {'' if acc0 is None else f'{100 * acc0:.1f}% before -> '}{100 * acc:.1f}% after")
        return acc
    return None


def emit(log, run, record):
    if log:
        log.write(json.dumps(record) + "\n")
        log.flush()
    if run:
        run.log(record)


def wandb_run(cfg):
    if not (cfg.wandb and rank0()):
        return None
    import wandb
    return wandb.init(project=cfg.wandb, config=dataclasses.asdict(cfg))


def make_engine(policy, tok, cfg, device, dtype):
    """The rollout engine, created once from the starting weights; refreshes push new weights into it."""
    if cfg.rollout_backend == "vllm":
        raise NotImplementedError("--rollout_backend vllm")
    return HFEngine(frozen_copy(policy, dtype).to(device), tok, stop_token_ids(tok))


def evaluate(engine, rows, tok, cfg):
    """Greedy held-out accuracy, verified (rank 0 computes, everyone gets the number)."""
    acc = [0.0]
    if rank0():
        gens = engine.generate([r["prompt"] for r in rows], n=1, max_tokens=cfg.max_new_tokens)
        texts = tok.batch_decode([g[0] for g in gens], skip_special_tokens=True)
        acc = [sum(verify_math(t, r["answer"]) for t, r in zip(texts, rows)) / len(rows)]
    if dist.is_initialized():
        dist.broadcast_object_list(acc)
    return acc[0]


# ---------------------------------------------------------------------------------------------------
# 11. Demo task (tiny model, two-step arithmetic) and main.

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
DEMO_TRAIN = 6000  # training problems of the demo task


def tiny_tokenizer():
    """Byte-level Qwen2 tokenizer with the ChatML specials, built in code (survives save / reload)."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import Qwen2Tokenizer
    vocab = {c: i for i, c in enumerate(sorted(ByteLevel.alphabet()))}
    tok = Qwen2Tokenizer(vocab=vocab, merges=[], unk_token=None, bos_token=None, eos_token="<|im_end|>",
                         pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    return tok


def tiny_model(tok):
    """A 150k-parameter Qwen2 (head_dim 32, which vLLM's CPU kernels need)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    config = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         bos_token_id=None, dtype=torch.float32, attn_implementation="sdpa")
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = stop_token_ids(tok)
    model.generation_config.pad_token_id = tok.pad_token_id
    return model


def demo_rows(n, seed, heldout=False):
    """'Compute 38+47-24.' -> '38+47=85. 85-24=61. \\boxed{61}'. One problem in ten (by a hash of
    its text) is held out, so the training and held-out sets never share a problem."""
    import zlib
    rng, rows, seen = random.Random(seed), [], set()
    while len(rows) < n:
        a, b, c = (rng.randint(10, 99) for _ in range(3))
        o1, o2 = rng.choice("+-"), rng.choice("+-")
        problem = f"Compute {a}{o1}{b}{o2}{c}."
        if (zlib.crc32(problem.encode()) % 10 == 0) != heldout or problem in seen:
            continue
        seen.add(problem)
        ab = a + b if o1 == "+" else a - b
        abc = ab + c if o2 == "+" else ab - c
        rows.append({"problem": problem, "solution": f"{a}{o1}{b}={ab}. {ab}{o2}{c}={abc}. \\boxed{{{abc}}}",
                     "answer": str(abc)})
    return rows


def demo_heldout(cfg, tok):
    rows = demo_rows(cfg.eval_items, seed=12345, heldout=True)
    return [{"prompt": tok(prompt_text(tok, r["problem"], False, cfg), add_special_tokens=False)["input_ids"],
             "answer": r["answer"]} for r in rows]


def main(argv=None):
    cfg = parse_args(argv)
    try:
        if cfg.model == "tiny" and cfg.demo_warmup:
            # The method starts from a model that solves some problems: warm the random tiny model up first.
            warm = dataclasses.replace(cfg, loss="sft", adaptive=False, max_steps=cfg.demo_warmup, seed=cfg.seed + 1,
                                       out=os.path.join(cfg.out, "warmup"), save_every=0, resume=False)
            print0(f"== demo warm-up: {cfg.demo_warmup} steps of plain SFT from random weights -> {warm.out}")
            train(warm)
            cfg = dataclasses.replace(cfg, model=warm.out)
            print0(f"== {cfg.loss} from the warmed-up model -> {cfg.out}")
        return train(cfg)
    except DataError as e:
        print0(f"error: {e}")
        sys.exit(2)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
