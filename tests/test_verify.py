import io
import json
import os
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rasft  # noqa: E402
from rasft import (extract_answer, math_equal, run_tests, verify_code, verify_many,  # noqa: E402
                          verify_math)

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "math_corpus.jsonl")) as _f:
    CORPUS = [json.loads(line) for line in _f if line.strip()]


# ------------------------------------------------------------------ math: corpus
def test_corpus_shape():
    assert len(CORPUS) >= 300
    n_eq = sum(r["equal"] for r in CORPUS)
    assert 0.3 < n_eq / len(CORPUS) < 0.7


def test_corpus_accuracy():
    wrong = [r for r in CORPUS if math_equal(r["pred"], r["gold"]) != r["equal"]]
    acc = 1 - len(wrong) / len(CORPUS)
    assert acc >= 0.99, wrong[:20]


def test_bench_script_runs():
    import bench_verify
    buf = io.StringIO()
    acc = bench_verify.main(CORPUS[:25], out=buf)
    assert acc >= 0.9 and "median" in buf.getvalue()
    assert bench_verify.cases(out=buf) == 1.0 and "by class: boxes" in buf.getvalue()


@pytest.mark.parametrize("pred,gold,equal", [
    ("\\frac12", "0.5", True), ("\\dfrac{1}{2}", "\\frac{1}{2}", True), ("2\\frac{1}{2}", "\\frac52", True),
    ("2 1/2", "5/2", True), ("0.\\overline{3}", "\\frac13", True), ("x = 5", "5", True),
    ("y = 2x+1", "y=1+2x", True), ("y = 2x+1", "y=2x-1", False), ("5 cm", "5", True), ("12 \\text{ inches}", "12", True),
    ("3 dollars", "3", True), ("x", "x", True), ("m", "1", False), ("2m", "2", False), ("90^\\circ", "90", True),
    ("90^{\\circ}", "90", True), ("90°", "90", True), ("50\\%", "50", True), ("1,000,000", "1000000", True),
    ("1,2", "2, 1", True), ("1,2", "12", False), ("√2", "\\sqrt{2}", True), ("π", "\\pi", True), ("−3", "-3", True),
    ("x ≤ 3", "(-\\infty,3]", True), ("\\pi", "3.14", True), ("3.14", "\\pi", False), ("0.333", "\\frac13", False),
    ("(1,2]", "(1,2)", False), ("\\{1,2\\}", "\\{2,1\\}", True), ("(1,2)", "(2,1)", False),
    ("x > 3", "(3, \\infty)", True), ("-1 \\le x < 2", "[-1,2)", True), ("\\infty", "-\\infty", False),
    ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", True),
    ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "\\begin{pmatrix}1&3\\\\2&4\\end{pmatrix}", False),
    ("2\\pi r", "2 \\pi r", True), ("\\pi r^2", "r^2\\pi", True), ("3x", "x3", True), ("\\sin^2 x+\\cos^2 x", "1", True),
    ("1 \\pm \\sqrt{19}", "1-\\sqrt{19}, 1+\\sqrt{19}", True), ("\\frac{1}{2006!}", "\\frac{1}{2004!}", False),
    ("1,-2", "1,-3", False), ("\\text{(B)}", "B", True), ("\\text{East}", "east", True), ("\\$32,\\!348", "32348", True),
    ("4e33", "4.0\\times10^{33}", True), ("(a+5)(b+2)", "ab+2a+5b+10", True), ("\\sqrt{x^2}", "x", False),
    ("x \\lt 3", "(-\\infty,3)", True), ("x \\lt 3", "(-\\infty,3]", False), ("2\\varphi", "\\phi+\\phi", True),
    ("\\frac{\\sqrt{3}}{2}", "\\sqrt{3}/2", True), ("\\sqrt[3]{8}", "2", True), ("\\binom{5}{2}", "10", True),
])
def test_math_equal_cases(pred, gold, equal):
    assert math_equal(pred, gold) is equal


def test_math_equal_none_and_empty():
    assert math_equal(None, "1") is False
    assert math_equal("", "1") is False


# ---------------------------------------------------------------- math: extract
@pytest.mark.parametrize("text,expected", [
    ("so \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
    ("\\boxed{\\{1, \\{2\\}\\}} done", "\\{1, \\{2\\}\\}"),
    ("nested \\boxed{a^{b^{c}}}", "a^{b^{c}}"),
    ("thus $\\boxed 5$.", "5"),
    ("\\fbox{7}", "7"),
    ("first \\boxed{1} then finally \\boxed{2}", "2"),
    ("<think>maybe \\boxed{3}</think> The answer is \\boxed{4}.", "4"),
    ("<think>so \\boxed{3}</think> The answer is four.", "four"),  # the text after </think> says the answer
    ("<think>so \\boxed{3}</think> Done.", "3"),
    ("roots: \\boxed{1}, \\boxed{2}", "1, 2"),
    ("$\\boxed{1}$ and $\\boxed{-2}$", "1, -2"),
    ("\\boxed{5} \\boxed{5}", "5"),
    ("The final answer is $42$. I hope it is correct.", "42"),
    ("Work...\nAnswer: 3.5 cm\nmore", "3.5 cm"),
    ("**Final Answer:** \\(x = 2\\).", "x = 2"),
    ("no marker and no box here", None),
    ("we compute 3 + 4 = 7", None),
    ("truncated \\boxed{1 + ", None),
    ("empty \\boxed{}", None),
    ("Answer:", None),
    ("Final Answer: The largest $n$ is 34.", "34"),
    ("\\boxed{255} for the first part.\nFinal Answer: The final answer is $10,455$.", "10,455"),
    ("$\\boxed{k = 45} \\quad \\text{and} \\quad \\boxed{n = 2}$", "k = 45, n = 2"),
    ("Thus $x <= 2$ is our answer.", "x <= 2"),
    ("We get $x = 3$.\nLet me check that again.", None),
    ("So there are 12 such sequences.", "12"),  # the value a finished final sentence states (issue 20)
    ("So there are 12 such", None),  # an unfinished sentence states nothing
    ("Thus the error increases by 100%.", "100%"),
    ("So the count is at least 12.", None),
    ("It costs $25, so the total is $1,000.99.", "1,000.99"),  # `$` before an amount is money, not math
    ("So the total comes to $\n9\n$.", "9"),
    ("so we multiply $(2+1)(1+1)(1+1)$, which is", None),  # stops before it states the value
    ("", None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_verify_math():
    assert verify_math("... so the answer is \\boxed{\\dfrac{1}{2}}", "0.5")
    assert verify_math("the answer is 7", "7")  # a marker, like "answer:"
    assert not verify_math("3 + 4 = 7", "7")  # never the last number
    assert not verify_math("\\boxed{8}", "7")


# -------------------------------------------------------------- math: timeouts
@pytest.mark.parametrize("pred", ["10^{10^{10}}", "1000000!", "10^{10^{10^{10}}}", "\\sqrt{" * 40 + "2" + "}" * 40])
def test_pathological_inputs_are_bounded(pred):
    t = time.monotonic()
    assert math_equal(pred, "1", timeout=2) is False
    assert time.monotonic() - t < 4


def _hang(pred, gold):
    if pred == "HANG":
        time.sleep(1000)
    return pred == gold


def test_hard_timeout_kills_worker(monkeypatch):
    # The worker is forked from this process, so a patched inner function is what it runs.
    rasft._shutdown_worker()
    monkeypatch.setattr(rasft, "_math_equal_inner", _hang)
    t = time.monotonic()
    assert math_equal("HANG", "\\sqrt{2}", timeout=1) is False
    assert time.monotonic() - t < 3
    assert math_equal("\\sqrt{a}", "\\sqrt{a}", timeout=1) is True  # a fresh worker took over
    rasft._shutdown_worker()


def test_worker_is_reaped():
    assert math_equal("\\sqrt{8}", "2\\sqrt{2}")
    pid = rasft._WORKER[0]
    rasft._shutdown_worker()
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def test_math_equal_in_forked_child():
    assert math_equal("\\sqrt{8}", "2\\sqrt{2}")
    parent_worker = rasft._WORKER[0]
    pid = os.fork()
    if pid == 0:
        ok = math_equal("\\sqrt{12}", "2\\sqrt{3}") and not math_equal("\\sqrt{12}", "3\\sqrt{2}")
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert rasft._WORKER[0] == parent_worker  # the child neither used nor killed it
    assert math_equal("\\sqrt{18}", "3\\sqrt{2}")


def test_math_equal_from_process_pool():
    import multiprocessing as mp
    pairs = [("\\sqrt{8}", "2\\sqrt{2}"), ("x^2", "x*x"), ("\\frac{\\pi}{2}", "\\pi"), ("3", "3.0")]
    with mp.get_context("fork").Pool(2) as pool:
        assert pool.starmap(math_equal, pairs) == [True, True, False, True]


def test_verify_many_matches_sequential():
    rows = CORPUS[::15][:50]
    pairs = [(f"Thus the answer is \\boxed{{{r['pred']}}}.", r["gold"]) for r in rows]
    pairs.append(("no answer", "1"))
    assert verify_many(pairs, timeout=5, workers=2) == [verify_math(c, g) for c, g in pairs]


def test_verify_many_empty():
    assert verify_many([]) == []


def test_verify_many_hung_item_does_not_block(monkeypatch):
    monkeypatch.setattr(rasft, "_math_equal_inner", _hang)
    pairs = [("\\boxed{HANG}", "\\sqrt{2}")] + [(f"\\boxed{{\\sqrt{{{k}}}}}", f"\\sqrt{{{k}}}") for k in range(6)]
    t = time.monotonic()
    assert verify_many(pairs, timeout=1, workers=2) == [False] + [True] * 6
    assert time.monotonic() - t < 4


# -------------------------------------------------------------- code: attacks
ADD = "def add(a, b):\n    return a + b\n"
ADD_TESTS = "assert add(1, 2) == 3\nassert add(-1, 1) == 0\n"
WRONG_ADD = "def add(a, b):\n    return a - b\n"


def _fast(fn, limit):
    t = time.monotonic()
    result = fn()
    assert time.monotonic() - t < limit
    return result


def test_infinite_loop():
    assert not _fast(lambda: run_tests("while True:\n    pass\n" + ADD, ADD_TESTS, timeout=1), 3)


def test_sleep():
    assert not _fast(lambda: run_tests("import time\ntime.sleep(100)\n" + ADD, ADD_TESTS, timeout=1), 3)


def test_sys_exit_before_tests():
    assert not run_tests("import sys\n" + WRONG_ADD + "sys.exit(0)\n", ADD_TESTS, timeout=3)


def test_os_exit_before_tests():
    assert not run_tests("import os\n" + WRONG_ADD + "os._exit(0)\n", ADD_TESTS, timeout=3)


def test_atexit_fake_success():
    prog = WRONG_ADD + "import atexit, sys\natexit.register(lambda: print('ALL TESTS PASSED'))\n"
    prog += "import builtins\nbuiltins.AssertionError = SystemExit\n"
    assert not run_tests(prog, ADD_TESTS, timeout=3)


def test_printed_fake_success():
    prog = WRONG_ADD + "print('All tests passed!')\nprint('OK')\nprint('\\n' + 'a' * 32)\n"
    assert not run_tests(prog, ADD_TESTS, timeout=3)


def test_huge_output():
    prog = "while True:\n    print('x' * 10**6)\n"
    assert not _fast(lambda: run_tests(prog, "", timeout=3), 5)


def test_long_output_of_a_correct_solution():  # 3 MB of debug lines: kept is only the tail, where the marker is
    prog = ADD + "for i in range(60000):\n    print('debug line', i, 'x' * 30)\n"
    assert run_tests(prog, ADD_TESTS, timeout=10)
    assert run_tests(prog, ADD_TESTS, timeout=10, max_output=4096)
    assert not run_tests(WRONG_ADD + prog.replace(ADD, ""), ADD_TESTS, timeout=10)


def test_memory_bomb():
    prog = "x = []\nwhile True:\n    x.append(bytearray(10**7))\n"
    assert not _fast(lambda: run_tests(prog + ADD, ADD_TESTS, timeout=3, memory_mb=512), 5)


def test_fork_bomb():
    prog = "import os\nwhile True:\n    os.fork()\n" + ADD
    assert not _fast(lambda: run_tests(prog, ADD_TESTS, timeout=2), 4)
    prog = "import subprocess\nsubprocess.Popen(['sleep', '100'])\n" + ADD
    assert not run_tests(prog, ADD_TESTS, timeout=2)


def test_cannot_delete_outside_sandbox(tmp_path):
    victim = tmp_path / "keep.txt"
    victim.write_text("precious")
    vdir = tmp_path / "dir"
    vdir.mkdir()
    for attack in (f"import os\nos.remove({str(victim)!r})\n", f"import pathlib\npathlib.Path({str(victim)!r}).unlink()\n",
                   f"import shutil\nshutil.rmtree({str(vdir)!r})\n", f"import os\nos.rename({str(victim)!r}, 'x')\n"):
        assert not run_tests(attack + ADD, ADD_TESTS, timeout=3)
    assert victim.read_text() == "precious" and vdir.is_dir()


def test_files_inside_sandbox_are_fine():
    prog = ADD + "import os\nopen('scratch.txt', 'w').write('hi')\nos.remove('scratch.txt')\n"
    assert run_tests(prog, ADD_TESTS, timeout=3)


def test_reading_stdin():
    assert not _fast(lambda: run_tests("x = input()\n" + ADD, ADD_TESTS, timeout=2), 4)
    assert run_tests("import sys\ndata = sys.stdin.read()\n" + ADD, ADD_TESTS + "assert data == ''\n", timeout=3)


def test_recursion_crash():
    prog = "import sys\nsys.setrecursionlimit(10**7)\ndef f(n):\n    return f(n + 1)\nf(0)\n" + ADD
    assert not run_tests(prog, ADD_TESTS, timeout=3)


# -------------------------------------------------------------- code: honest
def test_correct():
    assert run_tests(ADD, ADD_TESTS, timeout=3)


def test_correct_with_output_and_main_guard():
    prog = ADD + "print('debug')\nif __name__ == '__main__':\n    input()\n"
    assert run_tests(prog, ADD_TESTS, timeout=3)


def test_wrong_answer():
    assert not run_tests(WRONG_ADD, ADD_TESTS, timeout=3)


def test_exception():
    assert not run_tests("def add(a, b):\n    raise ValueError('no')\n", ADD_TESTS, timeout=3)


def test_syntax_error():
    assert not run_tests("def add(a, b)\n    return a + b\n", ADD_TESTS, timeout=3)


# -------------------------------------------------------------- code: formats
HUMANEVAL_TESTS = """
METADATA = {}

def check(candidate):
    assert candidate([1, 2, 3]) == 6
    assert candidate([]) == 0
"""


def test_humaneval_format():
    good = "Here you go:\n```python\ndef total(xs):\n    return sum(xs)\n```\n"
    bad = "```python\ndef total(xs):\n    return len(xs)\n```"
    assert verify_code(good, HUMANEVAL_TESTS, entry_point="total", timeout=3)
    assert not verify_code(bad, HUMANEVAL_TESTS, entry_point="total", timeout=3)
    # tests that already call check() themselves work through run_tests directly
    assert run_tests("def total(xs):\n    return 0\n", HUMANEVAL_TESTS + "check(total)\n", timeout=3) is False


def test_mbpp_format():
    tests = "\n".join(["assert add(1, 2) == 3", "assert add(2, 2) == 4", "assert add(0, 0) == 0"])
    assert verify_code("```\n" + ADD + "```", tests, timeout=3)
    assert not verify_code("```python\n" + WRONG_ADD + "```", tests, timeout=3)


KOD_TESTS = """
from solution import add
import pytest

def test_basic():
    assert add(1, 2) == 3

@pytest.mark.parametrize("a,b,c", [(1, 1, 2), pytest.param(2, 5, 7)])
def test_param(a, b, c):
    assert add(a, b) == c

@pytest.mark.parametrize("d", [{"a": 1, "b": 2}])
def test_dict_param(d):
    assert add(d["a"], d["b"]) == 3

class TestAdd:
    def test_neg(self):
        assert add(-1, -1) == -2

def test_tmp(tmp_path):
    (tmp_path / "f").write_text("x")
    assert (tmp_path / "f").read_text() == "x"
"""


def test_kodcode_format():
    assert verify_code("```python\n" + ADD + "```", KOD_TESTS, timeout=5)
    bad = "def add(a, b):\n    return 3 if (a, b) == (1, 2) else 0\n"
    assert not verify_code("```python\n" + bad + "```", KOD_TESTS, timeout=5)


def test_code_block_choice():
    text = "```python\ndef add(a, b):\n    return 0\n```\nfixed:\n```python\n" + ADD + "```\n"
    assert verify_code(text, ADD_TESTS, timeout=3)
    assert verify_code(ADD, ADD_TESTS, timeout=3)  # no fence: the whole text


def test_marker_needs_is_or_colon():
    # "final answer" in prose is not a marker: this completion has no answer
    assert extract_answer("I have no final answer here at all") is None
    assert extract_answer("The final answer is 5.") == "5"
