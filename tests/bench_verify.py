"""Accuracy and per-comparison latency of the math verifier, in-process on one core (no worker pool).

    python tests/bench_verify.py [path/to/corpus.jsonl]

Two sets, reported apart: the labelled corpus of answer pairs (tests/math_corpus.jsonl, or the file given), and the
per-class cases of tests/verify_cases.py (pairs and whole completions), which were written alongside the rules.
"""
import collections
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rasft import _math_equal_inner, extract_answer  # noqa: E402
from verify_cases import CASES  # noqa: E402

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "math_corpus.jsonl")


def _judge(r):
    if r.get("kind") == "ext":  # a whole completion: extraction, then comparison
        return (a := extract_answer(r["pred"])) is not None and _math_equal_inner(a, r["gold"])
    return _math_equal_inner(r["pred"], r["gold"])


def main(rows=None, out=sys.stdout, name="corpus"):
    if rows is None:
        with open(sys.argv[1] if len(sys.argv) > 1 else CORPUS) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    times, wrong = [], []
    for r in rows:
        t = time.perf_counter()
        got = _judge(r)
        times.append((time.perf_counter() - t) * 1e3)
        if got != r["equal"]:
            wrong.append(r)
    times.sort()
    acc = 1 - len(wrong) / len(rows)
    n_eq = sum(r["equal"] for r in rows)
    print(f"{name}: {len(rows)} cases ({n_eq} equal / {len(rows) - n_eq} not equal)", file=out)
    print(f"accuracy: {acc:.4f} ({len(rows) - len(wrong)}/{len(rows)})", file=out)
    print(f"ms per comparison: mean {statistics.fmean(times):.3f}  median {statistics.median(times):.3f}  "
          f"p99 {times[min(len(times) - 1, int(0.99 * len(times)))]:.3f}  max {times[-1]:.3f}", file=out)
    for r in wrong:
        print(f"  MISCLASSIFIED label={r['equal']} pred={r['pred']!r} gold={r['gold']!r} [{r.get('source', '')}]", file=out)
    return acc


def cases(out=sys.stdout):
    rows = [{"source": c, "kind": k, "pred": p, "gold": g, "equal": e} for c, k, p, g, e in CASES]
    acc = main(rows, out, name="cases written with the verifier (tests/verify_cases.py)")
    by = collections.defaultdict(list)
    for r in rows:
        by[r["source"]].append(_judge(r) == r["equal"])
    print("  by class: " + ", ".join(f"{c} {sum(v)}/{len(v)}" for c, v in by.items()), file=out)
    return acc


if __name__ == "__main__":
    main()
    print(file=sys.stdout)
    cases()
