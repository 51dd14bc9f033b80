"""FSDP2 on two CPU ranks (gloo, torchrun) against one process on the same global batches."""
import json
import os
import subprocess
import sys

import torch
from transformers import AutoModelForCausalLM

import rasft
from conftest import finished, small_cfg

ARGS = ["--max_items", "48", "--max_steps", "4", "--refresh_every", "2", "--act_ckpt", "true"]


def records(path, name):
    return [json.loads(line) for line in open(os.path.join(path, name))]


def test_two_ranks_match_one_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    rasft.train(small_cfg(one, *ARGS))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.join(os.path.dirname(rasft.__file__), "rasft.py"), "--out", str(two), "--demo_warmup", "0",
           "--batch_size", "8", "--micro_tokens", "256", "--route_chunk", "16", "--eval_items", "8", *ARGS]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    finished(run)
    assert run.stdout.count("refresh @ step") == 1 and "step 4/4" in run.stdout
    # the same routing decisions for every item, from losses measured on different shards
    r1, r2 = records(one, "solvability.jsonl"), records(two, "solvability.jsonl")
    assert [(r["item"], r["route"]) for r in r1] == [(r["item"], r["route"]) for r in r2]
    assert all(abs(a["loss"] - b["loss"]) < 1e-3 for a, b in zip(r1, r2))
    # the same losses step by step, and the same weights at the end
    l1 = [m["loss"] for m in records(one, "metrics.jsonl") if "loss" in m]
    l2 = [m["loss"] for m in records(two, "metrics.jsonl") if "loss" in m]
    assert len(l1) == 4 and all(abs(a - b) < 1e-5 * max(1, abs(a)) for a, b in zip(l1, l2))
    w1 = AutoModelForCausalLM.from_pretrained(str(one)).state_dict()
    w2 = AutoModelForCausalLM.from_pretrained(str(two)).state_dict()
    assert all(torch.allclose(w1[k], w2[k], atol=1e-5) for k in w1)
    torch.manual_seed(42)  # the run seed: the starting weights
    init = rasft.tiny_model(rasft.tiny_tokenizer()).state_dict()
    assert all(not torch.equal(w1[k], init[k]) for k in w1)
