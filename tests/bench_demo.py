"""The demo tasks, side by side: per seed one warm-up, then each run (a loss, and any flags) from the same
warmed-up model with the same data and budget; greedy held-out accuracy on many problems.

    python tests/bench_demo.py --seeds 3                                 # demo: sft, dft, asft, rasft
    python tests/bench_demo.py --data demo_shift --seeds 3               # expert and policy write differently
    python tests/bench_demo.py --runs sft "rasft --adaptive false" "rasft --ratio_clip false" rasft
    python tests/bench_demo.py --runs rasft "rasft --token_weight false" --baseline rasft   # an ablation vs rasft

Prints per run and group of held-out problems: accuracy before (the warmed-up start) and after, mean and
standard deviation over seeds; the paired difference to the --baseline run (default sft; same seed, same start)
with its standard deviation; and the share of held-out answers written in the running style the warm-up taught
(the expert's demo_shift solutions use the grouped style). Warm-ups, always the demo's own, are cached in
OUT/seed_S/warmup (delete OUT to redo them); other flags go to every run after it (e.g. --max_items 64 for a
quick look).
"""
import argparse
import dataclasses
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import rasft  # noqa: E402


def mean_sd(xs):
    return statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def run_all(args, rest):
    """{run name: [result per seed]}; a result: accuracy before and after per group, running-style share, seconds."""
    results = {name: [] for name in args.runs}
    for seed in range(42, 42 + args.seeds):
        seed_dir = os.path.join(args.out, f"seed_{seed}")
        for name in args.runs:
            loss, *flags = name.split()
            cfg = rasft.parse_args(["--data", args.data, "--seed", str(seed), "--eval_items", str(args.eval_items),
                                    *rest, "--loss", loss, *flags, "--out", seed_dir, "--resume", "true"])
            warmed = rasft.warm_up(cfg)  # the seed's first run trains it; the others reuse it
            t = time.time()
            out = rasft.train(dataclasses.replace(warmed, out=os.path.join(seed_dir, name.replace(" ", "_")),
                                                  resume=False))
            running = sum("Plus:" not in c for c in out["completions"]) / len(out["completions"])
            results[name].append({**out, "running": running, "seconds": time.time() - t})
    return results


def table(results, base="sft"):
    lines = [f"| run | held-out group | before | after: mean ± sd | after − {base}, paired: mean ± sd | running style | "
             "seconds per run |", "|---|---|---|---|---|---|---|"]
    for name, rs in results.items():
        for g in rs[0]["after"] if len(rs[0]["after"]) > 2 else ["all"]:  # per group where there are several
            before, after = mean_sd([r["before"][g] for r in rs]), mean_sd([r["after"][g] for r in rs])
            diff = "" if name == base or base not in results else "{:+.1f} ± {:.1f}".format(*(100 * x for x in mean_sd(
                [r["after"][g] - b["after"][g] for r, b in zip(rs, results[base])])))
            lines.append(f"| {name} | {g} | {100 * before[0]:.1f} | {100 * after[0]:.1f} ± {100 * after[1]:.1f} | {diff} | "
                         f"{100 * statistics.mean(r['running'] for r in rs):.0f}% | "
                         f"{statistics.mean(r['seconds'] for r in rs):.0f} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)  # --seed is not --seeds
    p.add_argument("--data", default="demo", choices=["demo", "demo_shift"])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--runs", nargs="+", default=["sft", "dft", "asft", "rasft"], help='a loss and its flags: "rasft '
                   '--adaptive false"')
    p.add_argument("--eval_items", type=int, default=2000, help="held-out problems (the demo task has 938)")
    p.add_argument("--baseline", default="sft", help="the run every other is paired against (one of --runs)")
    p.add_argument("--out", default="")
    args, rest = p.parse_known_args(argv)
    if args.baseline not in args.runs:
        p.error(f"--baseline {args.baseline!r} is not one of --runs: {', '.join(map(repr, args.runs))}")
    args.out = args.out or os.path.join("out", "bench_demo", args.data)
    torch.set_num_threads(1)  # as python rasft.py runs the demo
    rasft.quiet()
    results = run_all(args, rest)
    n = len(results[args.runs[0]][0]["completions"])
    print(f"\n{args.data}: {args.seeds} seeds, {n} held-out problems per run (one problem = {100 / n:.2f} points)")
    print(table(results, args.baseline))
    rasft.release_out()  # the runs' locks on their folders
    return results


if __name__ == "__main__":
    main()
