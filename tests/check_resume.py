"""A run killed at its fifth step and resumed from its last checkpoint, against the same run uninterrupted
(tests/test_train.py runs it on CPU; tests/gpu_check.sh on a GPU, where it also measures how far two
uninterrupted runs differ: atomics in CUDA kernels make runs nondeterministic in the last bits).

    python tests/check_resume.py [--out DIR] [--twice]
"""
import argparse
import json
import os
import sys
import tempfile


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import rasft  # noqa: E402

ARGS = ["--demo_warmup", "0", "--rollout_backend", "hf", "--max_items", "64", "--batch_size", "8", "--micro_tokens", "256",
        "--route_chunk", "16", "--eval_items", "8", "--refresh_every", "2", "--save_every", "3", "--max_steps", "7"]


def weights(path):
    from safetensors.torch import load_file
    return load_file(os.path.join(path, "model.safetensors"))


def max_diff(a, b):
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def train(out, *extra):
    return rasft.train(rasft.parse_args(["--out", out, *ARGS, *extra]))


def killed_then_resumed(out, kill_at=5):
    real_step, calls = rasft.train_step, []

    def dies(*a, **kw):
        calls.append(1)
        if len(calls) == kill_at:
            raise KeyboardInterrupt("killed")
        return real_step(*a, **kw)

    rasft.train_step = dies
    try:
        train(out)
    except KeyboardInterrupt:
        pass
    finally:
        rasft.train_step = real_step
    assert len(calls) == kill_at, "the run ended before it could be killed"
    train(out, "--resume", "true")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="")
    p.add_argument("--twice", action="store_true", help="also run the uninterrupted run twice (nondeterminism)")
    args = p.parse_args(argv)
    out = args.out or tempfile.mkdtemp(prefix="rasft_resume_")
    straight, killed = os.path.join(out, "straight"), os.path.join(out, "killed")
    train(straight)
    killed_then_resumed(killed)
    result = {"resumed_vs_straight": max_diff(weights(straight), weights(killed)),
              "steps_logged": [m["step"] for m in map(json.loads, open(os.path.join(killed, "metrics.jsonl"))) if "loss" in m]}
    if args.twice:
        train(os.path.join(out, "again"))
        result["straight_vs_straight"] = max_diff(weights(straight), weights(os.path.join(out, "again")))
    print("resume check: " + " | ".join(f"{k} {v}" for k, v in result.items()))
    return result


if __name__ == "__main__":
    main()
