"""The demo task, side by side: one warm-up, then each loss from the same warmed-up model with the
same data, seed and budget. Prints held-out greedy accuracy and wall time per loss.

    python tests/bench_demo.py                      # sft, dft, asft, rasft (a few minutes each on 2 CPU cores)
    python tests/bench_demo.py --losses sft,rasft --out /tmp/demo
"""
import argparse
import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import rasft  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--losses", default="sft,dft,asft,rasft")
    p.add_argument("--out", default="out/demo")
    args, rest = p.parse_known_args(argv)
    cfg = rasft.warm_up(rasft.parse_args(["--out", args.out, *rest]))
    rows = []
    for loss in args.losses.split(","):
        t = time.time()
        acc = rasft.train(dataclasses.replace(cfg, loss=loss, out=os.path.join(args.out, loss)))
        rows.append((loss, acc, time.time() - t))
    print("\n| loss | held-out accuracy: start -> end | wall time |\n|---|---|---|")
    for loss, acc, dt in rows:
        print(f"| {loss} | {100 * acc['before']:.1f}% -> {100 * acc['after']:.1f}% | {dt:.0f} s |")
    return rows


if __name__ == "__main__":
    main()
