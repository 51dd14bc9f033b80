"""eval.py: benchmark loaders on fixture rows (Hub schema), grading (oracle 100%, wrong 0%), pass@k, and the
tiny demo model end to end through the HF and vLLM engines."""
import json
import os
import subprocess
import sys

import pytest

import eval as ev
import rasft
from conftest import needs_datasets

BENCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "bench")
ALL = ev.PAPER + ["demo"]
WRONG = "I am not sure. \\boxed{\\text{no idea}}\n```python\nraise SystemExit(0)\n```"


def run(tmp_path, *args):
    return ev.main(["--out", str(tmp_path / "out"), *args])


# first fixture row of each benchmark: (id, start of the user message, target)
FIRST = {
    "math500": ("test/algebra/1098.json", "Evaluate $(1+2i)6-3i$.", "6+9i"),
    "aime24": (67, "There exist real numbers $x$ and $y$", "25"),            # gold "025": zero padding dropped
    "aime25": (0, "Find the sum of all integer bases $b>9$", "70"),
    "amc23": (1, "Positive real numbers $x$ and $y$", "36"),                  # gold 36.0, a float
    "minerva_math": (0, "Find the polynomial solution", "-t^2 - t - 3"),
    "olympiadbench": (2238, "Determine all integer values of $x$", "-1,0,1"),  # final_answer is a list
}


@needs_datasets
@pytest.mark.parametrize("name", list(FIRST))
def test_math_loaders_map_schema_to_prompt_and_gold(name):
    items = ev.load_items(name, BENCH)
    pid, start, gold = FIRST[name]
    assert (items[0]["id"], items[0]["target"]) == (pid, {"answer": gold})
    assert items[0]["problem"].startswith(start)
    assert all(it["problem"] and it["target"]["answer"] for it in items)


@needs_datasets
def test_aime25_reads_both_configs_and_keeps_the_hub_gold():
    items = ev.load_items("aime25", BENCH)
    assert [it["target"]["answer"] for it in items] == ["70", "49", "336^\\circ"]  # AIME2025-I, then II


@needs_datasets
def test_code_loaders_and_prompts(tok):
    cfg = rasft.Config()
    he, mbpp = ev.load_items("humaneval", BENCH), ev.load_items("mbpp", BENCH)
    assert he[0]["id"] == "HumanEval/23" and "def strlen(string: str) -> int:" in he[0]["problem"]
    assert he[0]["target"]["tests"].endswith("check(strlen)\n")
    assert mbpp[0]["id"] == 82 and mbpp[0]["problem"].endswith("pass this test:\nassert math.isclose(volume_sphere(10)"
                                                               ", 4188.790204786391, rel_tol=0.001)")
    assert mbpp[0]["target"]["tests"].startswith("import math\nassert ")  # test_imports, then test_list
    text = rasft.prompt_text(tok, he[0]["problem"], ev.is_code(he[0]), cfg)
    assert cfg.code_prompt in text and cfg.system_prompt not in text
    math_text = rasft.prompt_text(tok, ev.load_items("math500", BENCH)[0]["problem"], False, cfg)
    assert cfg.system_prompt in math_text


def test_demo_is_the_heldout_split():
    items = ev.load_items("demo", "", limit=5)
    rows = rasft.demo_rows(5, ev.DEMO_SEED, heldout=True)
    assert [(it["problem"], it["target"]["answer"]) for it in items] == [(r["problem"], r["answer"]) for r in rows]


@needs_datasets
def test_oracle_scores_100_on_every_benchmark(tmp_path):
    res = run(tmp_path, "--backend", "oracle", "--data_dir", BENCH, "--benchmarks", ",".join(ALL), "--n", "2",
              "--limit", "3")
    assert {b: r["avg"] for b, r in res.items()} == {b: 1.0 for b in ALL}
    saved = json.loads((tmp_path / "out" / "results.json").read_text())["results"]
    assert saved["humaneval"]["pass@2"] == 1.0 and saved["mbpp"]["problems"] == 3


@needs_datasets
def test_wrong_backend_scores_0(tmp_path, monkeypatch):
    monkeypatch.setattr(ev.Oracle, "complete", lambda self, items, n, desc: [[WRONG] * n for _ in items])
    res = run(tmp_path, "--backend", "oracle", "--data_dir", BENCH, "--benchmarks", ",".join(ALL), "--n", "2",
              "--limit", "3")
    assert {b: r["pass@2"] for b, r in res.items()} == {b: 0.0 for b in ALL}


def test_pass_at_k_hand_computed():
    assert ev.pass_at_k(5, 2, 1) == pytest.approx(2 / 5)
    assert ev.pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)    # 1 - C(3,2)/C(5,2)
    assert ev.pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)     # 1 - C(3,2)/C(4,2)
    assert ev.pass_at_k(16, 1, 16) == 1.0 and ev.pass_at_k(16, 0, 16) == 0.0
    assert ev.pass_at_k(16, 15, 2) == 1.0                        # fewer than k wrong: always a hit
    m = ev.metrics([[True, False, False, False], [True, True, True, True]], 4)
    assert m == pytest.approx({"acc": 1.0, "mean_acc": 5 / 8, "avg": 5 / 8, "pass@1": 5 / 8, "pass@4": 1.0})


@needs_datasets
def test_user_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run(tmp_path, "--backend", "oracle", "--benchmarks", "math500,gsm8k")
    assert "--benchmarks gsm8k: unknown; choose from math500, aime24" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run(tmp_path, "--backend", "oracle", "--data_dir", str(tmp_path), "--benchmarks", "mbpp")
    assert f"no file {tmp_path / 'mbpp_sanitized.jsonl'}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run(tmp_path, "--model", str(tmp_path / "no_such_model"), "--benchmarks", "demo")
    assert capsys.readouterr().err.strip() == f"error: --model {tmp_path / 'no_such_model'}: no such file or folder"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tok):
    path = str(tmp_path_factory.mktemp("tiny"))
    rasft.save_hf(rasft.tiny_model(tok), tok, path)
    return path


def check_demo_run(tmp_path, res):
    assert res["demo"]["problems"] == 4 and res["demo"]["samples"] == 8
    lines = [json.loads(x) for x in (tmp_path / "out" / "demo.jsonl").read_text().splitlines()]
    assert len(lines) == 8 and set(lines[0]) == {"id", "sample", "completion", "answer", "correct"}


def test_tiny_model_end_to_end_hf(tmp_path, tiny_dir):
    res = run(tmp_path, "--model", tiny_dir, "--backend", "hf", "--benchmarks", "demo", "--limit", "4", "--n", "2",
              "--max_tokens", "16")
    check_demo_run(tmp_path, res)


def test_tiny_model_end_to_end_vllm(tmp_path, tiny_dir):
    """In its own process: a process holds one vLLM engine (test_vllm.py has this process's)."""
    pytest.importorskip("vllm")
    args = ["--out", str(tmp_path / "out"), "--model", tiny_dir, "--backend", "vllm", "--benchmarks", "demo",
            "--limit", "4", "--n", "2", "--max_tokens", "16"]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    run_ = subprocess.run([sys.executable, ev.__file__, *args], env=env, capture_output=True, text=True, timeout=600)
    assert run_.returncode == 0, run_.stderr[-3000:]
    check_demo_run(tmp_path, json.loads((tmp_path / "out" / "results.json").read_text())["results"])


@needs_datasets
def test_own_file_math_and_code_with_fields_found_as_in_training(tmp_path, capsys):
    math_rows = [{"question": "What is 2+3?", "answer": "5"}, {"question": "Half of 9?", "final_answer": "4.5"},
                 {"question": "No gold here."}]
    code_rows = [{"prompt": "Write add(a, b).", "solution": "```python\ndef add(a, b):\n    return a + b\n```",
                  "test": "def check(f):\n    assert f(2, 3) == 5\n", "entry_point": "add"}]
    mpath, cpath = tmp_path / "mine.jsonl", tmp_path / "code.jsonl"
    mpath.write_text("".join(json.dumps(r) + "\n" for r in math_rows[:1] + math_rows[2:]))
    cpath.write_text("".join(json.dumps(r) + "\n" for r in code_rows))
    res = run(tmp_path, "--backend", "oracle", "--benchmarks", f"{mpath},{cpath}", "--n", "2")
    assert "1 of 2 rows have no answer or tests: skipped" in capsys.readouterr().out
    assert res[str(mpath)]["problems"] == 1 and res[str(mpath)]["avg"] == 1.0
    assert res[str(cpath)]["problems"] == 1 and res[str(cpath)]["avg"] == 1.0  # its solution passes its tests
    assert (tmp_path / "out" / "mine.jsonl").exists() and (tmp_path / "out" / "code.jsonl").exists()
    (tmp_path / "f.jsonl").write_text(json.dumps({"problem": "1+1?", "gold_value": "2"}) + "\n")
    res = run(tmp_path, "--backend", "oracle", "--benchmarks", str(tmp_path / "f.jsonl"), "--answer_field", "gold_value")
    assert res[str(tmp_path / "f.jsonl")]["avg"] == 1.0


def test_alpaca_prompt_is_the_authors_template(tmp_path, tiny_dir, monkeypatch):
    seen = []
    monkeypatch.setattr(ev.Sampler, "complete", lambda self, items, n, desc: seen.append(
        self.tok.decode(self.prompt_ids(items[0]))) or [["\\boxed{0}"] * n for _ in items])
    run(tmp_path, "--model", tiny_dir, "--backend", "hf", "--benchmarks", "demo", "--limit", "1", "--n", "1",
        "--prompt", "alpaca")
    assert seen[0].startswith("Below is an instruction that describes a task.") and "### Response:\n" in seen[0]
    assert "<|im_start|>" not in seen[0]


def one_line_error(tmp_path, capsys, *args):
    with pytest.raises(SystemExit) as e:
        run(tmp_path, *args)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("error: ") and "\n" not in err, err
    return err


def test_messages_say_what_to_fix(tmp_path, capsys):
    (tmp_path / "empty_folder").mkdir()
    assert "this folder holds no model (no config.json); pass the --out folder of a finished rasft.py run" in \
        one_line_error(tmp_path, capsys, "--model", str(tmp_path / "empty_folder"), "--benchmarks", "demo")
    (tmp_path / "mine.jsnol").write_text("{}\n")  # a typo in the extension is not an unknown benchmark
    assert f"--benchmarks {tmp_path / 'mine.jsnol'}: unknown extension .jsnol; an own file must end in .jsonl" in \
        one_line_error(tmp_path, capsys, "--backend", "oracle", "--benchmarks", str(tmp_path / "mine.jsnol"))
    assert "--n 0: must be at least 1" in one_line_error(tmp_path, capsys, "--backend", "oracle", "--n", "0")


@needs_datasets
def test_a_paper_benchmark_without_network_names_data_dir(tmp_path, capsys):
    """conftest keeps the Hub offline: the same error as no network, at once."""
    err = one_line_error(tmp_path, capsys, "--backend", "oracle", "--benchmarks", "math500")
    assert err.startswith("error: --benchmarks math500: cannot load HuggingFaceH4/MATH-500 from the Hub (")
    assert err.endswith("without network, pass --data_dir with local copies (math500.jsonl, ...)")


def test_help_shows_defaults_and_flags_are_never_abbreviated(capsys):
    with pytest.raises(SystemExit):
        ev.parse_args(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for says in ["samples per problem (default: 16)", "sampling temperature (0: greedy) (default: 1.0)",
                 "nucleus sampling (default: 1.0)", "sampling seed (default: 0)", "(default: 'chat')",
                 "the system prompt ('': none) (default: the one the model was trained with, from its rasft.json"]:
        assert says in help_text
    with pytest.raises(SystemExit):
        ev.parse_args(["--bench", "demo"])
    assert "unrecognized arguments: --bench demo" in capsys.readouterr().err


def seen_prompt(tmp_path, monkeypatch, model, *args):
    """The first prompt eval.py builds for the model (decoded), and the stop tokens of its engine."""
    seen = []

    def complete(self, items, n, desc):
        seen.append((self.tok.decode(self.prompt_ids(items[0])), self.engine.stop_ids))
        return [["\\boxed{0}"] * n for _ in items]
    monkeypatch.setattr(ev.Sampler, "complete", complete)
    run(tmp_path, "--model", model, "--backend", "hf", "--benchmarks", "demo", "--limit", "1", "--n", "1", *args)
    return seen[-1]


def test_eval_prompts_the_model_as_it_was_trained(tmp_path, tiny_dir, monkeypatch, capsys):
    """The demo trains without a system prompt: eval.py must not add one (it scored 1% instead of 80% with it)."""
    out = str(tmp_path / "trained")
    rasft.main(["--out", out, "--demo_warmup", "0", "--rollout_backend", "hf", "--max_items", "16", "--batch_size", "8",
                "--eval_items", "0", "--max_steps", "1"])
    recorded = json.loads((tmp_path / "trained" / "rasft.json").read_text())
    tok = rasft.tiny_tokenizer()
    assert recorded == {"chat_template": True, "system_prompt": "", "code_prompt": rasft.Config.code_prompt,
                        "end_token_id": rasft.end_token_id(tok), "end_token": "<|im_end|>"}
    capsys.readouterr()
    prompt, stop = seen_prompt(tmp_path, monkeypatch, out)
    assert prompt.startswith("<|im_start|>user\nCompute ") and "system" not in prompt
    assert recorded["end_token_id"] in stop
    assert f"prompts: the chat template, system prompt '' (as trained: {out}/rasft.json)" in capsys.readouterr().out
    prompt, _ = seen_prompt(tmp_path, monkeypatch, out, "--system_prompt", "Be brief.")  # the flag overrides it
    assert prompt.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nCompute ")
    assert "system prompt 'Be brief.' (--system_prompt)" in capsys.readouterr().out
    prompt, _ = seen_prompt(tmp_path, monkeypatch, tiny_dir)  # a model trained elsewhere: rasft's default
    assert prompt.startswith(f"<|im_start|>system\n{rasft.Config.system_prompt}<|im_end|>")
    assert f"(rasft's default: {tiny_dir} has no rasft.json)" in capsys.readouterr().out
