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
benchmark's own tests in the sandbox; or, with --grader authors, math answers as the authors' harness grades
them (authors_answer: last box, else "the answer is", else the last number). Per benchmark: avg@n, the mean
accuracy over all samples, pass@k for k in {1, n} with the unbiased estimator 1 - C(n-c, k) / C(n, k) (Chen
et al., 2021), and the authors' acc (each problem's first sample) and mean_acc (= avg@n).
In --out: results.json (naming each benchmark's grader and prompt), and <benchmark>.jsonl with every sample (id,
completion, extracted answer, correct).
"""

import argparse
import json
import math
import multiprocessing
import os
import re
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


def grade(items, completions, desc, verify=rasft.verify_all):
    """Per item, a correct flag per completion (verify: rasft.verify_all, math under hard timeouts and code in
    sandboxes, or authors_verify_all). Identical completions of a problem are graded once."""
    samples = list(dict.fromkeys((k, c) for k, cs in enumerate(completions) for c in cs))
    ok = {}
    for i in rasft.progress(range(0, len(samples), GRADE_CHUNK), f"{desc}: grade"):
        part = samples[i:i + GRADE_CHUNK]
        ok.update(zip(part, verify([(c, items[k]["target"]) for k, c in part])))
    return [[bool(ok[k, c]) for c in cs] for k, cs in enumerate(completions)]


def pass_at_k(n, c, k):
    """Unbiased estimate of P(at least one of k samples is correct) from n samples with c correct."""
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def metrics(correct, n):
    """avg@n and pass@k, and the two numbers of the authors' harness: acc, the accuracy of each problem's first
    sample, and mean_acc, the mean over sample indices j of the accuracy of the j-th samples (their table's number;
    it equals avg@n, and theirs rounds each index's accuracy to 0.1% first)."""
    mean = lambda xs: sum(xs) / max(len(xs), 1)  # noqa: E731
    return {"acc": mean([cs[0] for cs in correct]),
            "mean_acc": mean([mean([cs[j] for cs in correct]) for j in range(n)]),
            "avg": mean([mean(cs) for cs in correct]),
            **{f"pass@{k}": mean([pass_at_k(n, sum(cs), k) for cs in correct]) for k in sorted({1, n})}}


def extracted(item, completion):
    return rasft.extract_code(completion) if is_code(item) else rasft.extract_answer(completion)


def write_samples(path, items, completions, correct, answer=extracted):
    with open(path, "w") as f:
        for it, cs, oks in zip(items, completions, correct):
            for j, (c, ok) in enumerate(zip(cs, oks)):
                f.write(json.dumps({"id": it["id"], "sample": j, "completion": c, "answer": answer(it, c),
                                    "correct": ok}) + "\n")


def table(results, n):
    ks = sorted({1, n})
    lines = [f"| benchmark | grader | prompt | problems | samples | acc (1st sample) | avg@{n} | "
             + " | ".join(f"pass@{k}" for k in ks) + " | time |",
             "|---|---|---|--:|--:|--:|--:|" + "--:|" * len(ks) + "--:|"]
    for name, r in results.items():
        scores = " | ".join(f"{100 * r[f'pass@{k}']:.1f}" for k in ks)
        lines.append(f"| {name} | {r['grader']} | {r['prompt'] or 'none'} | {r['problems']} | {r['samples']} | "
                     f"{100 * r['acc']:.1f} | {100 * r['avg']:.1f} | {scores} | "
                     f"{r['time_s']:.0f} s |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# --grader authors: a math sample graded as the authors' evaluation grades it, to set numbers beside the paper's
# table. Their harness is the Qwen2.5-Math evaluation their eval.sh runs (alpaca prompt, 16 samples at
# temperature 1, the six math sets). Theirs, reimplemented here rule for rule from their parser.py (not copied):
# where the answer is (authors_extract: the last "boxed", else after "the answer is", else the last number in
# the text), the normalization of answer and gold (authors_strip, their strip_string, applied as often as they
# apply it), the gold each benchmark is compared with (authors_gold), and a 3 s limit per comparison.
# Ours: the comparison itself, rasft.math_equal (theirs, grader.py's math_equal, also counts x, x/100 and 100x as
# equal and compares case-blind), and the grading of code, which their harness does not do.

GRADERS = {  # results.json names, for every benchmark, the grader that made its numbers
    "rasft": "rasft.verify_math: rasft's answer extraction (never the last number) and rasft.math_equal (5 s limit)",
    "authors": "the authors' evaluation harness (Qwen2.5-Math, as their eval.sh runs it): their answer extraction "
               "(last box, else 'the answer is', else the last number) and strip_string, reimplemented; then "
               "rasft.math_equal under their 3 s limit",
    "tests": "the benchmark's unit tests in rasft's sandbox (the same under either --grader)",
}
AUTHORS_TIMEOUT = 3.0  # s per comparison, as their evaluate.py; a comparison that runs over counts as wrong
UNITS_KEPT = {"minerva_math"}  # their harness leaves units in Minerva's answers (the units are its physics)
GOLD_FROM_BOX = {"math500", "minerva_math"}  # their gold here is the worked solution's last box (= our Hub gold)
AUTHORS_STOPS = ("</s>", "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<｜end▁of▁sentence｜>")
# Their unit words (mostly MathQA's), in their order, then each with an "s": each is removed in turn wherever it
# stands between non-word characters, and as a regular expression, so that "q ." also removes "q x".
_UNIT_WORDS = ("east|degree|mph|kmph|ft|m sqaure| m east|sq m|deg|mile|q .|monkey|prime|ratio|profit of rs|rd|o|gm|"
               "p . m|lb|tile|per|dm|lt|gain|ab|way|west|a .|b .|c .|d .|e .|f .|g .|h .|t|a|h|no change|men|soldier|"
               "pie|bc|excess|st|inches|noon|percent|by|gal|kmh|c|acre|rise|a . m|th|π r 2|sq|mark|l|toy|coin|sq . m|"
               "gallon|° f|profit|minw|yr|women|feet|am|pm|hr|cu cm|square|v â € ™|are|rupee|rounds|cubic|cc|mtr|"
               "s|ohm|number|kmph|day|hour|minute|min|second|man|woman|sec|cube|mt|sq inch|mp|∏ cm ³|hectare|more|sec|"
               "unit|cu . m|cm 2|rs .|rs|kg|g|month|km|m|cm|mm|apple|liter|loss|yard|pure|year|increase|decrease|d|"
               "less|Surface|litre|pi sq m|s .|metre|meter|inch").split("|")
_UNIT_RES = [re.compile(r"(^|\W)" + u + r"($|\W)") for u in _UNIT_WORDS + [u + "s" for u in _UNIT_WORDS]]
_DIGIT_WORDS = "zero one two three four five six seven eight nine".split()
_NUMBER_WORDS = {**{w: i for i, w in enumerate(_DIGIT_WORDS + "ten eleven twelve thirteen fourteen fifteen sixteen "
                                                 "seventeen eighteen nineteen".split())},
                 **{w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(),
                                                    2)},
                 "hundred": 100, "thousand": 10 ** 3, "million": 10 ** 6, "billion": 10 ** 9}


def authors_answer(completion, bench):
    """A math sample's answer as their harness compares it, or None for an empty sample (wrong, whatever the gold)."""
    text = completion.rstrip()
    for stop in AUTHORS_STOPS:  # their engine stops at these strings: nothing after one counts
        text = text.split(stop)[0].strip() if stop in text else text
    if not text or text == "error":  # "error" is their harness's mark of a failed sample
        return None
    return authors_strip(authors_extract(text, bench), bench in UNITS_KEPT)


def authors_extract(text, bench):
    """Their extract_answer for the alpaca prompt: the first rule that applies, a clean-up, then one strip."""
    text = text.replace("ки", "")  # a step tag of Math-Shepherd data, which their harness drops
    if "final answer is $" in text and "$. I hope" in text:  # Minerva's answer sentence
        ans = text.split("final answer is $", 1)[1].split("$. I hope", 1)[0].strip()
    elif "boxed" in text:  # any "boxed", the last one: an unclosed box runs to the end of the text
        ans = _last_box(text.split("boxed")[-1])
    elif "he answer is" in text:  # "The answer is", "the answer is": all that follows the last one
        ans = text.split("he answer is")[-1].strip()
    elif "final answer is" in text:
        ans = text.split("final answer is")[-1].strip()
    elif "答案是" in text:
        ans = text.split("答案是")[1].strip().split("\n\n")[0].strip()
    else:  # the last number in the text, thousands separators dropped first
        ans = (re.findall(r"-?\d*\.?\d+", text.replace(",", "")) or [""])[-1]
    ans = re.sub(r"\n\s*", "", ans)
    ans = ans[1:] if ans.startswith(":") else ans
    ans = ans[:-1] if ans.endswith(".") else ans
    ans = ans[:-1] if ans.endswith("/") else ans
    return authors_strip(ans, bench in UNITS_KEPT)


def _last_box(tail):
    """The box that starts tail: a braced group (every brace counted, escaped or not), else the text up to a "$"."""
    if not tail.startswith("{"):
        return tail.split("$")[0].strip()
    depth = 0
    for k, c in enumerate(tail):
        depth += (c == "{") - (c == "}")
        if depth == 0:
            return tail[1:k]
    return tail[1:]


def authors_gold(gold, bench):
    """The gold as their harness holds it. MATH-500's and Minerva's is the last box of the worked solution, read
    like a sample's answer but stripped once; OlympiadBench's is trimmed of "$"; the others' (and a file's of your
    own) are stripped twice."""
    if bench in GOLD_FROM_BOX:
        return authors_extract(f"\\boxed{{{gold}}}", bench)
    return authors_strip(authors_strip(gold.strip("$") if bench == "olympiadbench" else gold))


def authors_strip(s, skip_unit=False):
    """Their strip_string: LaTeX spelling unified, units, degrees, dollars, "\\text{}" and "x=" dropped, number
    words read, trailing zeros cut, "\\frac12" braced and "3/4" written \\frac{3}{4}."""
    s = str(s).strip().replace("\n", "").rstrip(".").replace("\\!", "")
    s = re.sub(r"\\begin\{array\}\{.*?\}", r"\\begin{pmatrix}", s)
    s = re.sub(r"\\end\{array\}", r"\\end{pmatrix}", s)
    for old, new in (("bmatrix", "pmatrix"), ("tfrac", "frac"), ("dfrac", "frac"), ("\\neq", "\\ne"),
                     ("\\leq", "\\le"), ("\\geq", "\\ge"), ("\\left", ""), ("\\right", ""), ("\\{", "{"), ("\\}", "}")):
        s = s.replace(old, new)
    s = re.sub(r"\\text\{.*?\}$", "", s).strip() or s  # from the first \text{ on, if the text ends in a brace
    for _ in range(0 if skip_unit else 2):
        for unit in _UNIT_RES:
            s = unit.sub(r"\1\2", s) or s
    for old in ("^{\\circ}", "^\\circ", "\\$", "$", "\\(", "\\)"):
        s = s.replace(old, "")
    s = re.sub(r"\\text\{(.*?)\}", r"\1", _word_number(s))
    for old, new in [(v + op, "") for op in ("=", "\\in", "\\to") for v in "xyz"] + [
            ("\\emptyset", "{}"), ("(-\\infty,\\infty)", "\\mathbb{R}"), ("\\%", ""), ("%", ""), (" .", " 0."),
            ("{.", "{0."), ("infinity", "\\infty")]:
        s = s.replace(old, new)
    return _strip_tail(s)


def _strip_tail(s):
    """The second half of their strip_string. (Their rule that unwraps "{x}" never fires: it also asks the braced
    text to be alphanumeric; their quote removals discard their result. Neither is here.)"""
    s = s if "\\infty" in s else s.replace("inf", "\\infty")
    s = re.sub(r"\\mbox\{.*?\}", "", s.replace("+\\inity", "\\infty").replace("and", "").replace("\\mathbf", ""))
    s = s.replace("j", "i") if "j" in s and "i" not in s else s
    s = re.sub(r"(\d+)\.0*$", r"\1", re.sub(r"(\d+)\.0*([^\d])", r"\1\2", s))  # 3.00 -> 3, 2.0x -> 2x
    if not s:
        return s
    s = "0" + s if s[0] == "." else s
    lhs, *rhs = s.split("=")
    s = rhs[0] if len(rhs) == 1 and len(lhs) <= 2 else s  # "k=5" -> 5
    s = re.sub(r"\\sqrt(\w+)", r"\\sqrt{\1}", s).replace(" ", "")
    return _slash_to_frac(_braced_fracs(s))


def _braced_fracs(s):
    """\\frac12 -> \\frac{1}{2}, \\frac1{72} -> \\frac{1}{72}; s unchanged if a \\frac has under two characters
    after it."""
    head, *tails = s.split("\\frac")
    for k, t in enumerate(tails):
        if not t.startswith("{"):
            if len(t) < 2:
                return s
            tails[k] = "{" + t[0] + "}" + (t[1:] if t[1] == "{" else "{" + t[1] + "}" + t[2:])
    return "\\frac".join([head, *tails])


def _slash_to_frac(s):
    """a/b -> \\frac{a}{b} when a and b are each an integer as Python writes it, or contain "sqrt"."""
    parts = s.split("/")
    return "\\frac{%s}{%s}" % tuple(parts) if len(parts) == 2 and all(map(_int_or_sqrt, parts)) else s


def _int_or_sqrt(x):  # "sqrt" in it, or an integer as Python writes one (str(int(x)) == x)
    return "sqrt" in x or re.fullmatch(r"0|-?[1-9][0-9]*", x) is not None


def _word_number(s):
    """Their number-word step (the word2number package): "twelve" -> 12, "007" -> 7, "one point five" -> 1.5;
    words it does not know are skipped ("one half" -> 1); s unchanged when it finds no number or cannot read it."""
    text = s.replace("-", " ").lower()
    words = [w for w in text.split() if w in _NUMBER_WORDS or w == "point"]
    try:
        if text.isdigit():
            return str(int(text))
        if not words or any(words.count(w) > 1 for w in ("thousand", "million", "billion", "point")):
            return s
        k = words.index("point") if "point" in words else len(words)
        whole, frac = words[:k], words[k + 1:]
        value = _NUMBER_WORDS[whole[0]] if len(whole) == 1 else _scaled(whole) if whole else 0
    except (ValueError, IndexError):  # digits int() cannot read ("²"), misplaced scales, a scale with no number
        return s
    if frac:
        digits = "".join(str(_DIGIT_WORDS.index(w)) for w in frac if w in _DIGIT_WORDS)
        value += float("0." + digits) if len(digits) == len(frac) else 0  # any other word: no decimals at all
    return str(value)


def _scaled(whole):
    """A number of several words, as word2number adds it up, its quirks included: "two million three thousand" is
    2004003, as the words after "million" are read once more, as "three" + "thousand", when "thousand" ends the text."""
    b, m, t = (whole.index(w) if w in whole else -1 for w in ("billion", "million", "thousand"))
    if t > -1 and (t < m or t < b) or -1 < m < b:
        raise ValueError("scale words out of order")
    value = (_group(whole[:b]) * 10 ** 9 if b > -1 else 0) + (_group(whole[b + 1:m]) * 10 ** 6 if m > -1 else 0)
    value += _group(whole[max(b, m) + 1:t]) * 10 ** 3 if t > -1 else 0
    tail = next((i for i in (t, m, b) if -1 < i != len(whole) - 1), None)
    return value + (_group(whole[tail + 1:]) if tail is not None else _group(whole) if t == m == b == -1 else 0)


def _group(words):
    """Up to four number words as word2number combines them: "two hundred five" = 2 * 100 + 5, "twenty five" = 25."""
    v = [_NUMBER_WORDS[w] for w in words]
    if len(v) in (3, 4):
        return v[0] * v[1] + sum(v[2:])
    return (v[0] * v[1] if 100 in v else v[0] + v[1]) if len(v) == 2 else v[0]


def _authors_verdict(completion, gold, bench):
    """An empty sample is wrong; an empty answer is right where their strip_string empties the gold too (MATH-500's
    "\\text{east}": "east" is one of their unit words), as their math_equal first compares the two strings."""
    pred = authors_answer(completion, bench)
    return pred is not None and rasft.math_equal(pred, authors_gold(gold, bench), AUTHORS_TIMEOUT)


def authors_verify_all(pairs, bench):
    """rasft.verify_all's contract under --grader authors: math samples graded as above in forked processes (each
    comparison under the 3 s limit), code samples by rasft.verify_all, as under --grader rasft."""
    maths = [k for k, (_, t) in enumerate(pairs) if "answer" in t]
    ok = {}
    if maths:
        with multiprocessing.get_context("fork").Pool(max(1, min(len(maths), os.cpu_count() or 1))) as pool:
            ok = dict(zip(maths, pool.starmap(_authors_verdict, [(pairs[k][0], pairs[k][1]["answer"], bench)
                                                                  for k in maths])))
    code = [k for k in range(len(pairs)) if k not in ok]
    ok.update(zip(code, rasft.verify_all([pairs[k] for k in code]) if code else []))
    return [ok[k] for k in range(len(pairs))]


def grader(args, bench):
    """(verify, answer) for grade() and write_samples() under --grader: math by rasft's verifier or as the
    authors grade, code by its tests either way."""
    if args.grader == "rasft":
        return rasft.verify_all, extracted
    return (lambda pairs: authors_verify_all(pairs, bench),
            lambda it, c: extracted(it, c) if is_code(it) else authors_answer(c, bench))


def grader_label(items, name):
    """Which grader made a benchmark's numbers: the math grader --grader names, "tests" for code."""
    return "+".join(sorted({"tests" if is_code(it) else name for it in items})) or name


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
    p.add_argument("--grader", default="rasft", choices=["rasft", "authors"],
                   help="math answers: rasft: rasft.verify_math; authors: as the authors' evaluation harness grades "
                        "(last box, else 'the answer is', else the last number; 3 s per comparison). Code: tests")
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
        verify, answer = grader(args, name)
        correct = grade(items, completions, name, verify)
        results[name] = {"problems": len(items), "samples": len(items) * args.n, **metrics(correct, args.n),
                         "grader": grader_label(items, args.grader),  # the oracle answers without a prompt
                         "prompt": None if args.backend == "oracle" else args.prompt, "time_s": time.time() - t0}
        write_samples(os.path.join(args.out, f"{os.path.basename(name).rsplit('.', 1)[0]}.jsonl"), items, completions,
                      correct, answer)
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump({"args": vars(args), "graders": GRADERS, "results": results}, f, indent=1)
        print(f"{name}: acc {100 * results[name]['acc']:.1f}%, avg@{args.n} {100 * results[name]['avg']:.1f}% "
              f"({results[name]['grader']} grader, {time.time() - t0:.0f} s)", flush=True)
    print(table(results, args.n))
    print(f"results and samples: {args.out}")
    return results


if __name__ == "__main__":
    main()
