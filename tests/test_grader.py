"""eval.py --grader authors: completions graded as the authors' evaluation harness grades them (its extraction and
strip_string, labelled here by hand from its rules), acc as the first sample's accuracy, and results.json naming the
grader and the prompt of every number."""
import json
import os

import pytest

import eval as ev
import rasft
from conftest import needs_datasets

BENCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "bench")

# (completion, benchmark, gold, the answer their harness compares, correct under authors, correct under rasft)
GRADED = [
    # no box and no "answer is": the last number in the text
    ("First 5 apples, then 7 more, so the total is 12.", "math500", "12", "12", True, True),  # a stated value
    ("We add 5 and 7 and get 12 apples; 2 are eaten, which leaves 10", "math500", "10", "10", True, False),
    ("The sum is 1,000 in all, up from 998", "amc23", "1000", "998", False, False),   # the last number, not the first
    ("Adding 3 and 4 gives 7, and 8 - 1 = 7 as well.", "aime24", "7", "7", True, True),
    ("The number is -3.5 or so", "math500", "-3.5", "-3.5", True, False),
    # "the answer is": everything after the last one, a trailing "." dropped, a/b written \frac{a}{b}
    ("Half of the pie and a quarter more, so the answer is 3/4", "math500", "\\frac{3}{4}", "\\frac{3}{4}", True, True),
    ("The answer is 7.", "aime25", "7", "7", True, True),
    ("I think the answer is 5, but the answer is 6.", "math500", "6", "6", True, True),
    ("The answer is \\text{twelve}.", "math500", "12", "12", True, False),  # stripped twice: \text{} off, then a word
    # a box beats any later number or marker; the last box wins; an unclosed last box runs to the end
    ("\\boxed{12}. Check: 12 - 5 = 7", "math500", "12", "12", True, True),
    ("\\boxed{12}. Check: 12 - 5 = 7", "math500", "7", "12", False, False),
    ("First \\boxed{3}, then on reflection \\boxed{4}.", "math500", "4", "4", True, True),
    ("\\boxed{4}. So the answer is 9.", "math500", "9", "4", False, True),  # rasft: a later marker wins
    ("The cut-off sample ends in \\boxed{12", "math500", "12", "12", True, False),
    ("Thus $\\boxed 5$ apples.", "math500", "5", "5", True, True),
    ("Minerva style. The final answer is $42$. I hope it is correct.", "minerva_math", "42", "42", True, True),
    # their strip_string: units, degrees, \text{}, trailing ".", dfrac, "x =", percent, zero padding, dollars
    ("\\boxed{12 \\text{ cm}}", "math500", "12", "12", True, True),
    ("\\boxed{90^\\circ}", "math500", "90", "90", True, True),
    ("\\boxed{5.}", "math500", "5", "5", True, True),
    ("\\boxed{\\dfrac{1}{2}}", "math500", "\\frac{1}{2}", "\\frac{1}{2}", True, True),
    ("\\boxed{x = 5}", "math500", "5", "5", True, True),
    ("\\boxed{50\\%}", "math500", "50", "50", True, True),
    ("\\boxed{025}", "aime24", "25", "25", True, True),
    ("\\boxed{\\$1.50}", "math500", "1.50", "1.50", True, True),
    ("The answer is 5 meters.", "math500", "5", "5", True, True),            # a unit word dropped ...
    ("The answer is 5 meters.", "minerva_math", "5", "5meters", False, True),  # ... but kept for Minerva
    ("\\boxed{\\frac12}", "math500", "\\frac{1}{2}", "\\frac{1}{2}", True, True),
    # their strip_string empties MATH-500's gold "\\text{east}" ("east" is a unit word): an empty answer matches it
    ("\\boxed{\\text{east}}", "math500", "\\text{east}", "", True, True),
    ("I have no idea", "math500", "\\text{east}", "", True, False),
    # answers are stripped twice, and the second strip cuts Minerva's gold 139 as written to "\\lambda_{"
    ("\\boxed{\\lambda_{\\text {red}} / \\sqrt{2}}", "minerva_math", "\\lambda_{\\text {red}} / \\sqrt{2}", "\\lambda_{",
     False, True),
    ("<|im_end|> 12", "math500", "12", None, False, False),                  # nothing before the end of the turn
    ("", "math500", "12", None, False, False),
]


@pytest.mark.parametrize("completion,bench,gold,answer,authors_ok,rasft_ok", GRADED)
def test_completions_graded_as_the_authors_harness_grades(completion, bench, gold, answer, authors_ok, rasft_ok):
    assert ev.authors_answer(completion, bench) == answer
    assert ev.authors_verify_all([(completion, {"answer": gold})], bench) == [authors_ok]
    assert rasft.verify_math(completion, gold) == rasft_ok


# (their strip_string's input, units kept (Minerva), its output)
STRIPPED = [
    ("12 \\text{ cm}", False, "12"), ("\\text{(B)}", False, "(B)"), ("90^{\\circ}", False, "90"),
    ("5 meters", False, "5"), ("5 meters", True, "5meters"), ("3 feet", False, "3"), ("q x 5", False, "5"),
    ("\\$1,000", False, "1,000"), ("10\\%", False, "10"), ("0.50", False, "0.50"), ("2.0x", False, "2x"),
    ("3.000", False, "3"), (".5", False, "0.5"), ("k=5", False, "5"), ("abc=5", False, "abc=5"),
    ("\\sqrt2", False, "\\sqrt{2}"), ("\\frac1{72}", False, "\\frac{1}{72}"), ("\\frac", False, "\\frac"),
    ("-3/4", False, "\\frac{-3}{4}"), ("03/4", False, "03/4"), ("\\sqrt{2}/2", False, "\\frac{\\sqrt{2}}{2}"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", False, "(3,\\frac{\\pi}{2})"), ("\\emptyset", False, "{}"),
    ("(-\\infty,\\infty)", False, "\\mathbb{R}"), ("infinity", False, "\\infty"),
    ("x\\in [0, 1]", False, "[0,1]"), ("x \\in [0, 1]", False, "x\\in[0,1]"),  # "x\\in" goes only when unspaced
    ("3j", False, "3i"), ("1 and 2", False, "12"), ("x \\neq 2", False, "x\\ne2"),
    ("\\begin{bmatrix} 1 \\\\ 2 \\end{bmatrix}", False, "\\begin{pmatrix}1\\\\2\\end{pmatrix}"),
    ("\\dfrac{a}{b}", False, "\\frac{}{b}"),  # "a" is one of their unit words: it goes wherever it stands alone
    ("Surfaces", False, "Surfaces"), ("", False, ""),  # a unit that is the whole answer stays
]


@pytest.mark.parametrize("s,skip_unit,out", STRIPPED)
def test_their_strip_string(s, skip_unit, out):
    assert ev.authors_strip(s, skip_unit) == out


# their number-word step (the word2number package), its quirks included
WORDS = [("twelve", "12"), ("007", "7"), ("Twenty-five", "25"), ("one point five", "1.5"), ("one half", "1"),
         ("three hundred twenty five", "325"), ("two million three thousand", "2004003"), ("thousand five", "thousand five"),
         ("point", "0"), ("one point twenty", "1"), ("one point five six", "1.56"), ("x+y", "x+y"), ("²", "²"),
         ("thousand million", "thousand million"), ("one two three four five", "1")]


@pytest.mark.parametrize("s,out", WORDS)
def test_their_number_words(s, out):
    assert ev._word_number(s) == out


def test_golds_as_their_harness_holds_them():
    assert ev.authors_gold("336^\\circ", "aime25") == "336"                  # the Hub's gold of AIME 2025 II-5
    assert ev.authors_gold("$x^2+1$", "olympiadbench") == "x^2+1"
    assert ev.authors_gold("\\left( 3, \\frac{\\pi}{2} \\right)", "math500") == "(3,\\frac{\\pi}{2})"
    assert ev.authors_gold("5 meters", "minerva_math") == "5meters"         # Minerva keeps its units
    assert ev.authors_gold("025", "aime24") == "25"


def test_acc_is_the_first_samples_accuracy():
    correct = [[True, False, False, False], [False, True, True, True], [False, False, False, False]]
    m = ev.metrics(correct, 4)
    assert m["acc"] == pytest.approx(1 / 3)                                 # only problem 0's first sample is right
    assert m["mean_acc"] == pytest.approx((1 / 3 + 1 / 3 + 1 / 3 + 1 / 3) / 4) == pytest.approx(m["avg"])
    assert m["pass@4"] == pytest.approx(2 / 3)


def run(tmp_path, *args):
    res = ev.main(["--out", str(tmp_path / "out"), *args])
    return res, json.loads((tmp_path / "out" / "results.json").read_text())


UNBOXED = "Adding them up gives {}, and that is all."  # rasft reads no answer here


@needs_datasets
def test_grader_authors_end_to_end_reports_acc_and_names_grader(tmp_path, monkeypatch):
    """First sample unboxed and right, the others boxed and wrong: acc 1, avg@4 1/4 under authors; 0 under rasft."""
    def complete(self, items, n, desc):
        return [[UNBOXED.format(it["target"]["answer"])] + ["\\boxed{-12345}"] * (n - 1) for it in items]
    monkeypatch.setattr(ev.Oracle, "complete", complete)
    args = ["--backend", "oracle", "--data_dir", BENCH, "--benchmarks", "aime24,amc23", "--n", "4", "--limit", "3"]
    res, saved = run(tmp_path, *args, "--grader", "authors")
    assert {b: (r["acc"], r["mean_acc"], r["avg"]) for b, r in res.items()} == {b: (1.0, 0.25, 0.25)
                                                                              for b in ("aime24", "amc23")}
    assert saved["results"]["aime24"]["grader"] == "authors" and saved["results"]["aime24"]["prompt"] is None
    assert set(saved["graders"]) == {"rasft", "authors", "tests"} and saved["args"]["grader"] == "authors"
    first = json.loads((tmp_path / "out" / "aime24.jsonl").read_text().splitlines()[0])
    assert first["answer"] == ev.authors_answer(first["completion"], "aime24") and first["correct"] is True
    res, saved = run(tmp_path, *args)
    assert {b: r["avg"] for b, r in res.items()} == {"aime24": 0.0, "amc23": 0.0}
    assert saved["results"]["amc23"]["grader"] == "rasft"


@needs_datasets
def test_code_is_graded_the_same_under_both(tmp_path, monkeypatch):
    args = ["--backend", "oracle", "--data_dir", BENCH, "--benchmarks", "humaneval,mbpp,math500", "--n", "2",
            "--limit", "2", "--grader", "authors"]
    res, saved = run(tmp_path, *args)
    assert {b: r["avg"] for b, r in res.items()} == {"humaneval": 1.0, "mbpp": 1.0, "math500": 1.0}
    assert {b: r["grader"] for b, r in saved["results"].items()} == {"humaneval": "tests", "mbpp": "tests",
                                                                      "math500": "authors"}
    wrong = "```python\nraise SystemExit(0)\n```"
    monkeypatch.setattr(ev.Oracle, "complete", lambda self, items, n, desc: [[wrong] * n for _ in items])
    res, _ = run(tmp_path, *args[:5], "humaneval,mbpp", *args[6:])
    assert {b: r["avg"] for b, r in res.items()} == {"humaneval": 0.0, "mbpp": 0.0}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tok):
    path = str(tmp_path_factory.mktemp("tiny"))
    rasft.save_hf(rasft.tiny_model(tok), tok, path)
    return path


def test_results_name_the_prompt_of_a_sampled_run(tmp_path, tiny_dir, monkeypatch):
    monkeypatch.setattr(ev.Sampler, "complete", lambda self, items, n, desc: [
        [UNBOXED.format(it["target"]["answer"])] * n for it in items])
    _, saved = run(tmp_path, "--model", tiny_dir, "--backend", "hf", "--benchmarks", "demo", "--limit", "3", "--n", "2",
                   "--prompt", "alpaca", "--grader", "authors")
    assert {k: saved["results"]["demo"][k] for k in ("grader", "prompt", "acc", "avg")} == {
        "grader": "authors", "prompt": "alpaca", "acc": 1.0, "avg": 1.0}
    _, saved = run(tmp_path, "--model", tiny_dir, "--backend", "hf", "--benchmarks", "demo", "--limit", "3", "--n", "2")
    assert {k: saved["results"]["demo"][k] for k in ("grader", "prompt", "avg")} == {
        "grader": "rasft", "prompt": "chat", "avg": 0.0}
