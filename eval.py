"""
Evaluate a model on the paper's six math and two code benchmarks (and the CPU demo's held-out task).

    python eval.py --model out                               # the eight benchmarks, 16 samples per problem
    python eval.py --model out --benchmarks demo --n 4       # the demo task's held-out problems
    python eval.py --backend oracle --data_dir benchmarks/   # grade the gold answers: checks the pipeline (100%)

Prompts are built as the model was trained (rasft.prompt_text: the chat template with the system prompt that
rasft.py recorded in the model's folder, rasft.json, or rasft's default for a model trained elsewhere; code
problems get the code instruction instead; --system_prompt and --code_prompt override them), or with --prompt
alpaca the authors' evaluation prompt (the "alpaca" template of their Qwen2.5-Math evaluation harness: no chat
template, no system prompt), so that numbers can be set beside the paper's table.
Samples come from the rollout engine (vLLM, else HF
generate) and are graded by rasft's verifier: math answers with verify_math, code by running the
benchmark's own tests in the sandbox. Per benchmark: avg@n, the mean accuracy over all samples, and
pass@k for k in {1, n} with the unbiased estimator 1 - C(n-c, k) / C(n, k) (Chen et al., 2021).
In --out: results.json, and <benchmark>.jsonl with every sample (id, completion, extracted answer, correct).
"""

import argparse
import json
import math
import os
import sys
import time
from typing import Callable, NamedTuple

import torch

import rasft

GEN_CHUNK = 128     # prompts per generate() call: one progress step, and still a full batch for vLLM
GRADE_CHUNK = 512   # samples per verify_all() call: one progress step
DEMO_PROBLEMS, DEMO_SEED = 200, 12345  # the held-out set the CPU demo reports (rasft.demo_heldout)
PROMPT_FLAGS = ("system_prompt", "code_prompt")  # recorded in the model's rasft.json; a flag overrides
ALPACA = ("Below is an instruction that describes a task. Write a response that appropriately completes the request."
          "\n\n### Instruction:\n{input}\n\n### Response:\n")


# ---------------------------------------------------------------------------------------------------
# Benchmarks: one table, name -> where the rows live and how a row becomes an item.
# An item is {id, problem (the user message), target (gold answer, or a program prefix and tests),
# reference (the gold as a completion: what --backend oracle answers)}.


def math_item(pid, problem, gold):
    gold = str(gold).strip()
    return {"id": pid, "problem": problem, "target": {"answer": gold}, "reference": f"\\boxed{{{gold}}}"}


def number(x):
    """AMC 2023 answers are floats (27.0), AIME 2024's zero-padded strings ("025"): both become "27", "25"."""
    x = float(x)
    return str(int(x)) if x.is_integer() else str(x)


def fence(code):
    return "```python\n" + code.strip("\n").rstrip() + "\n```"


def humaneval_item(i, r):
    """The signature and docstring go in the prompt; the graded program is that prompt (its imports and
    helper functions) followed by the model's code, then the tests and check(entry_point)."""
    return {"id": r["task_id"],
            "problem": f"Complete the following Python function.\n\n{fence(r['prompt'])}",
            "target": {"prefix": r["prompt"] + "\n", "tests": f"{r['test']}\n\ncheck({r['entry_point']})\n"},
            "reference": fence(r["prompt"] + r["canonical_solution"])}


def mbpp_item(i, r):
    """The task text plus its first test, so the function's name and signature are known."""
    return {"id": r["task_id"],
            "problem": f"{r['prompt']}\nYour code should pass this test:\n{r['test_list'][0]}",
            "target": {"tests": "\n".join(r["test_imports"] + r["test_list"]) + "\n"},
            "reference": fence(r["code"])}


class Bench(NamedTuple):
    hub: str                       # Hub dataset id
    configs: tuple                 # Hub configs, concatenated in this order
    split: str
    file: str                      # the same rows under --data_dir
    item: Callable                 # (row index, row) -> item


BENCHMARKS = {
    "math500": Bench("HuggingFaceH4/MATH-500", (None,), "test", "math500.jsonl",
                     lambda i, r: math_item(r["unique_id"], r["problem"], r["answer"])),
    "aime24": Bench("HuggingFaceH4/aime_2024", (None,), "train", "aime24.jsonl",
                    lambda i, r: math_item(r["id"], r["problem"], number(r["answer"]))),
    "aime25": Bench("opencompass/AIME2025", ("AIME2025-I", "AIME2025-II"), "test", "aime25.jsonl",
                    lambda i, r: math_item(i, r["question"], r["answer"])),
    "amc23": Bench("math-ai/amc23", (None,), "test", "amc23.jsonl",
                   lambda i, r: math_item(r["id"], r["question"], number(r["answer"]))),
    "minerva_math": Bench("math-ai/minervamath", (None,), "test", "minerva_math.jsonl",
                          lambda i, r: math_item(i, r["question"], r["answer"])),
    "olympiadbench": Bench("math-ai/olympiadbench", (None,), "test", "olympiadbench.jsonl",
                           lambda i, r: math_item(r["id"], r["question"], ", ".join(r["final_answer"]))),
    "humaneval": Bench("openai/openai_humaneval", ("openai_humaneval",), "test", "humaneval.jsonl", humaneval_item),
    "mbpp": Bench("google-research-datasets/mbpp", ("sanitized",), "test", "mbpp_sanitized.jsonl", mbpp_item),
    "demo": Bench("", (), "", "", lambda i, r: math_item(i, r["problem"], r["answer"])),
}
PAPER = [b for b in BENCHMARKS if b != "demo"]


def load_rows(name, data_dir):
    """Rows as dicts, from the Hub or from --data_dir (same schema). The demo task is built in code."""
    b = BENCHMARKS[name]
    if name == "demo":
        return rasft.demo_rows(DEMO_PROBLEMS, DEMO_SEED, heldout=True)
    from datasets import load_dataset
    if data_dir:
        path = os.path.join(data_dir, b.file)
        if not os.path.isfile(path):
            raise rasft.UsageError(f"--data_dir: no file {path} (benchmark {name}, rows as in {b.hub})")
        rasft.check_jsonl(path)
        return list(load_dataset("json", data_files={"test": path}, split="test"))
    try:
        return [row for config in b.configs for row in load_dataset(b.hub, config, split=b.split)]
    except OSError as e:  # no network (ConnectionError), or the Hub refused
        raise rasft.UsageError(f"--benchmarks {name}: cannot load {b.hub} from the Hub "
                               f"({str(e).strip().splitlines()[0]}); without network, pass --data_dir with local "
                               f"copies ({b.file}, ...)") from None


def load_items(name, data_dir, limit=0, fields=None):
    """A benchmark's items, or a user's own file's (any name ending in .jsonl, .json or .parquet): fields found as
    in training (or named by --prompt_field and the like); a gold answer (else the last \\boxed{} of a response),
    or unit tests."""
    if name.endswith((".jsonl", ".json", ".parquet")):
        if not os.path.isfile(name):
            raise rasft.UsageError(f"--benchmarks {name}: no such file")
        texts, _ = rasft.read_rows(rasft.read_file(name), fields or rasft.Config(), name, need_response=False)
        items = [{"id": k, "problem": p, "target": t, "reference": r or f"\\boxed{{{t.get('answer', '')}}}"}
                 for k, (p, r, t) in enumerate(texts) if t]
        if len(items) < len(texts):
            print(f"{name}: {len(texts) - len(items)} of {len(texts)} rows have no answer or tests: skipped")
        return items[:limit or None]
    rows = load_rows(name, data_dir)
    return [BENCHMARKS[name].item(i, row) for i, row in enumerate(rows[:limit or None])]


def is_code(item):
    return "tests" in item["target"]


# ---------------------------------------------------------------------------------------------------
# Backends: complete(items, n, desc) -> per item, n completions (text).


class Oracle:
    """Every sample is the reference answer: a run must score 100%, or the grading pipeline is wrong."""

    def complete(self, items, n, desc):
        return [[it["reference"]] * n for it in items]


def trained_prompts(model):
    """How the model's training built its prompts (rasft.json, written by rasft.save_hf), or {}."""
    path = os.path.join(model, "rasft.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def prompt_line(args, cfg, trained):
    """Which prompt the samples get, and where its system prompt came from."""
    if args.prompt == "alpaca":
        return "the alpaca template (no chat template, no system prompt)"
    source = ("--system_prompt" if args.system_prompt is not None else f"as trained: {args.model}/rasft.json"
              if "system_prompt" in trained else f"rasft's default: {args.model} has no rasft.json")
    return f"the chat template, system prompt {cfg.system_prompt!r} ({source})"


class Sampler:
    """The rollout engine on the model (open_engine: vLLM, else HF), prompted as in training or as the authors."""

    def __init__(self, args, benches):
        if os.path.isdir(args.model) and not os.path.isfile(os.path.join(args.model, "config.json")):
            raise rasft.UsageError(f"--model {args.model}: this folder holds no model (no config.json); pass the --out "
                                   "folder of a finished rasft.py run, or a Hub id")
        trained = trained_prompts(args.model)
        given = {k: getattr(args, k) for k in PROMPT_FLAGS if getattr(args, k) is not None}
        prompts = {k: trained[k] for k in PROMPT_FLAGS if k in trained} | given
        self.args, self.cfg = args, rasft.Config(model=args.model, **prompts)
        self.tok = rasft.load_tokenizer(self.cfg)
        # the end token training appended to every response stops generation too
        stop = sorted(set(rasft.stop_token_ids(self.tok)) | {trained.get("end_token_id")} - {None})
        print(f"prompts: {prompt_line(args, self.cfg, trained)}")
        longest = max(len(self.prompt_ids(it)) for items in benches.values() for it in items)
        self.engine = open_engine(args.model, self.tok, args.backend, longest + args.max_tokens, args.seed, stop)

    def prompt_ids(self, item):
        text = (ALPACA.format(input=item["problem"]) if self.args.prompt == "alpaca"
                else rasft.prompt_text(self.tok, item["problem"], is_code(item), self.cfg))
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def complete(self, items, n, desc):
        a, out = self.args, []
        prompts = [self.prompt_ids(it) for it in items]
        for i in rasft.progress(range(0, len(prompts), GEN_CHUNK), f"{desc}: generate"):
            gens = self.engine.generate(prompts[i:i + GEN_CHUNK], n=n, temperature=a.temperature, top_p=a.top_p,
                                        max_tokens=a.max_tokens, seed=a.seed + i)
            out += [self.tok.batch_decode(g, skip_special_tokens=True) for g in gens]
        return out


def open_engine(path, tok, backend, max_len, seed, stop):
    """vLLM where it runs (an evaluation engine never sleeps), else HF generate, on the finished model."""
    if rasft.pick_backend(backend) == "vllm":
        return rasft.VLLMEngine.from_pretrained(path, tok, stop, max_len, 0.9, seed)
    from transformers import AutoModelForCausalLM
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16 if device.type == "cuda" else torch.float32)
    return rasft.HFEngine(model.to(device), tok, stop)


def make_backend(args, benches):
    return Oracle() if args.backend == "oracle" else Sampler(args, benches)


# ---------------------------------------------------------------------------------------------------
# Grading and metrics.


def grade(items, completions, desc):
    """Per item, a correct flag per completion (rasft.verify_all: math under hard timeouts, code in sandboxes).
    Identical completions of a problem are graded once."""
    samples = list(dict.fromkeys((k, c) for k, cs in enumerate(completions) for c in cs))
    ok = {}
    for i in rasft.progress(range(0, len(samples), GRADE_CHUNK), f"{desc}: grade"):
        part = samples[i:i + GRADE_CHUNK]
        ok.update(zip(part, rasft.verify_all([(c, items[k]["target"]) for k, c in part])))
    return [[bool(ok[k, c]) for c in cs] for k, cs in enumerate(completions)]


def pass_at_k(n, c, k):
    """Unbiased estimate of P(at least one of k samples is correct) from n samples with c correct."""
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def metrics(correct, n):
    mean = lambda xs: sum(xs) / max(len(xs), 1)  # noqa: E731
    return {"avg": mean([mean(cs) for cs in correct]),
            **{f"pass@{k}": mean([pass_at_k(n, sum(cs), k) for cs in correct]) for k in sorted({1, n})}}


def extracted(item, completion):
    return rasft.extract_code(completion) if is_code(item) else rasft.extract_answer(completion)


def write_samples(path, items, completions, correct):
    with open(path, "w") as f:
        for it, cs, oks in zip(items, completions, correct):
            for j, (c, ok) in enumerate(zip(cs, oks)):
                f.write(json.dumps({"id": it["id"], "sample": j, "completion": c, "answer": extracted(it, c),
                                    "correct": ok}) + "\n")


def table(results, n):
    ks = sorted({1, n})
    lines = [f"| benchmark | problems | samples | avg@{n} | " + " | ".join(f"pass@{k}" for k in ks) + " | time |",
             "|---|--:|--:|--:|" + "--:|" * len(ks) + "--:|"]
    for name, r in results.items():
        scores = " | ".join(f"{100 * r[f'pass@{k}']:.1f}" for k in ks)
        lines.append(f"| {name} | {r['problems']} | {r['samples']} | {100 * r['avg']:.1f} | {scores} | "
                     f"{r['time_s']:.0f} s |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# main


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The docstring as written, and every flag's default (where its help does not say it)."""

    def _get_help_string(self, action):
        return action.help if "(default" in action.help or action.default is argparse.SUPPRESS else \
            action.help + " (default: %(default)r)"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[1], formatter_class=HelpFormatter,
                                allow_abbrev=False)  # a shortened flag could later come to mean another one
    p.add_argument("--model", default="", help="the model: rasft.py's output folder, a local path or a Hub id")
    p.add_argument("--benchmarks", default=",".join(PAPER),
                   help=f"comma separated, from: {', '.join(BENCHMARKS)}; or your own .jsonl/.json/.parquet file")
    p.add_argument("--n", type=int, default=16, help="samples per problem")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (0: greedy)")
    p.add_argument("--top_p", type=float, default=1.0, help="nucleus sampling")
    p.add_argument("--max_tokens", type=int, default=4096, help="new tokens per sample")
    p.add_argument("--limit", type=int, default=0, help="only the first k problems of each benchmark (0 = all)")
    p.add_argument("--backend", default="auto", choices=["auto", "vllm", "hf", "oracle"],
                   help="auto: vLLM if installed, else HF generate; oracle: answer with the gold (checks grading)")
    p.add_argument("--data_dir", default="",
                   help="read local copies in the Hub schema: <dir>/math500.jsonl, ..., <dir>/mbpp_sanitized.jsonl")
    p.add_argument("--out", default="", help="output folder (default: <model>/eval, or out/eval)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    for field in ("prompt", "response", "answer", "tests", "entry"):
        p.add_argument(f"--{field}_field", default="", help=f"own file: the {field} field (default: auto-detected)")
    for flag in PROMPT_FLAGS:
        p.add_argument(f"--{flag}", help=f"--prompt chat: the {flag.replace('_', ' ')} ('': none) (default: the one "
                       "the model was trained with, from its rasft.json; without one, rasft's default)")
    p.add_argument("--prompt", default="chat", choices=["chat", "alpaca"],
                   help="chat: the training prompt (chat template + system prompt); alpaca: the authors' evaluation prompt")
    args = p.parse_args(argv)
    args.benchmarks = [b.strip() for b in args.benchmarks.split(",") if b.strip()]
    args.out = args.out or os.path.join(args.model if os.path.isdir(args.model) else "out", "eval")
    return args


def check(args):
    """What argparse cannot check, as one line that says what to fix."""
    for b in args.benchmarks:
        if b in BENCHMARKS or b.endswith((".jsonl", ".json", ".parquet")):
            continue
        if os.path.isfile(b) or "." in os.path.basename(b):  # meant as an own file
            raise rasft.UsageError(f"--benchmarks {b}: unknown extension .{b.rsplit('.', 1)[-1]}; an own file must end "
                                   "in .jsonl, .json or .parquet")
        raise rasft.UsageError(f"--benchmarks {b}: unknown; choose from {', '.join(BENCHMARKS)}, or pass a "
                               ".jsonl/.json/.parquet file")
    if not args.model and args.backend != "oracle":
        raise rasft.UsageError("--model is required (the trained model's folder or a Hub id), unless --backend oracle")
    if args.n < 1:
        raise rasft.UsageError(f"--n {args.n}: must be at least 1")


def main(argv=None):
    rasft.quiet()
    args = parse_args(argv)
    try:
        check(args)
        fields = rasft.Config(**{f"{k}_field": getattr(args, f"{k}_field") for k in ("prompt", "response", "answer",
                                                                                    "tests", "entry")})
        benches = {name: load_items(name, args.data_dir, args.limit, fields) for name in args.benchmarks}
        backend = make_backend(args, benches)
    except rasft.UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    os.makedirs(args.out, exist_ok=True)
    results = {}
    for name, items in benches.items():
        t0 = time.time()
        completions = backend.complete(items, args.n, name)
        correct = grade(items, completions, name)
        results[name] = {"problems": len(items), "samples": len(items) * args.n, **metrics(correct, args.n),
                         "time_s": time.time() - t0}
        write_samples(os.path.join(args.out, f"{os.path.basename(name).rsplit('.', 1)[0]}.jsonl"), items, completions,
                      correct)
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)
        print(f"{name}: avg@{args.n} {100 * results[name]['avg']:.1f}% ({time.time() - t0:.0f} s)", flush=True)
    print(table(results, args.n))
    print(f"results and samples: {args.out}")
    return results


if __name__ == "__main__":
    main()
