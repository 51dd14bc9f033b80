"""Loading (local files through `datasets`), field mapping, targets, tokenization and truncation."""
import json

import pytest

import rasft
from conftest import needs_datasets, small_cfg

ROWS = [{"instruction": "What is 2+3?", "response": "2+3=5. \\boxed{5}"},
        {"instruction": "What is 2*3?", "response": "We get 6.", "answer": "6"},
        {"instruction": "Say hi.", "response": "hi"}]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def items_from(tmp_path, rows, *args):
    cfg = small_cfg(tmp_path, "--data", write_jsonl(tmp_path / "d.jsonl", rows), "--prompt_field", "instruction",
                    "--response_field", "response", *args)
    return rasft.build_items(rasft.load_rows(cfg), cfg, rasft.tiny_tokenizer()), cfg


@needs_datasets
def test_local_jsonl_targets_and_counts(tmp_path):
    (items, count), _ = items_from(tmp_path, ROWS)
    assert [it["target"] for it in items] == [{"answer": "5"}, {"answer": "6"}, None]
    assert (count["math"], count["no_target"], count["rows"]) == (2, 1, 3)


@needs_datasets
def test_prompt_uses_chat_template_and_response_ends_with_end_token(tmp_path):
    (items, _), cfg = items_from(tmp_path, ROWS)
    tok = rasft.tiny_tokenizer()
    prompt = tok.decode(items[0]["prompt"])
    assert prompt.startswith("<|im_start|>system\n" + cfg.system_prompt)
    assert prompt.endswith("What is 2+3?<|im_end|>\n<|im_start|>assistant\n")
    assert tok.decode(items[0]["response"]) == "2+3=5. \\boxed{5}<|im_end|>"


@needs_datasets
def test_truncate_and_drop(tmp_path):
    rows = [{"instruction": "short", "response": "x" * 500}, {"instruction": "y" * 300, "response": "z"}] + ROWS
    (items, count), cfg = items_from(tmp_path, rows, "--max_len", "200", "--min_response", "16")
    assert count["truncated"] == 1 and count["dropped"] == 1 and len(items) == 4
    assert all(len(it["prompt"]) + len(it["response"]) <= 200 for it in items)
    end = rasft.end_token_id(rasft.tiny_tokenizer())
    assert all(it["response"][-1] == end for it in items)  # a cut response keeps its end token, as the authors'


@needs_datasets
def test_cuts_that_lose_the_answer_are_counted_and_warned_about(tmp_path, capsys):
    rows = [{"instruction": "Add them.", "response": "We add. " * 40 + "\\boxed{7}"}] * 3 + ROWS[:1]
    (items, count), _ = items_from(tmp_path, rows, "--max_len", "200")
    assert count["truncated"] == 3 and count["lost_answer"] == 3
    assert "--max_len 200 cut the final answer off 3 of 4 expert solutions" in capsys.readouterr().out


@needs_datasets
def test_bad_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + '{"instruction": "oops"\n')
    cfg = small_cfg(tmp_path, "--data", str(path))
    with pytest.raises(rasft.UsageError, match=r"bad.jsonl:2: "):
        rasft.load_rows(cfg)


@needs_datasets
def test_missing_field_says_which_flag(tmp_path):
    with pytest.raises(rasft.UsageError, match=r"d.jsonl: no field 'question' \(--prompt_field\); fields: instruction"):
        items_from(tmp_path, ROWS, "--prompt_field", "question")
    with pytest.raises(rasft.UsageError, match=r"d.jsonl: no response field found .*; name it with --response_field"):
        items_from(tmp_path, [{"instruction": "hi", "answer": "1"}], "--response_field", "")


@needs_datasets
def test_main_prints_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        rasft.main(["--out", str(tmp_path), "--demo_warmup", "0", "--data", str(tmp_path / "missing.jsonl")])
    assert "no such file" in capsys.readouterr().err


@needs_datasets
def test_code_items_take_tests_and_entry_point(tmp_path):
    rows = [{"question": "Write add.", "r1_solution": "```python\ndef add(a, b):\n    return a + b\n```",
             "test_code": "from solution import add\ndef test_add():\n    assert add(1, 2) == 3\n",
             "test_info": [{"function_name": "add", "parameter_list": "(a, b)"}]}]
    path = write_jsonl(tmp_path / "code.jsonl", rows)
    cfg = small_cfg(tmp_path, "--data", path, "--prompt_field", "question", "--response_field", "r1_solution",
                    "--tests_field", "test_code", "--entry_field", "test_info")
    tok = rasft.tiny_tokenizer()
    (item,), count = rasft.build_items(rasft.load_rows(cfg), cfg, tok)
    assert item["target"] == {"tests": rows[0]["test_code"], "entry": "add"} and count["code"] == 1
    assert cfg.code_prompt in tok.decode(item["prompt"])


@needs_datasets
def test_parquet_and_json(tmp_path):
    from datasets import Dataset
    Dataset.from_list(ROWS).to_parquet(str(tmp_path / "d.parquet"))
    (tmp_path / "d.json").write_text(json.dumps(ROWS))
    for name in ("d.parquet", "d.json"):
        cfg = small_cfg(tmp_path, "--data", str(tmp_path / name), "--prompt_field", "instruction",
                        "--response_field", "response")
        items, _ = rasft.build_items(rasft.load_rows(cfg), cfg, rasft.tiny_tokenizer())
        assert len(items) == 3


def test_presets_and_short_model_names():
    cfg = rasft.parse_args(["--model", "Qwen2.5-7B"])
    assert cfg.model == "Qwen/Qwen2.5-7B" and cfg.data == "chichi56/ASFT"
    assert (cfg.data_files, cfg.prompt_field, cfg.response_field) == ("numina_cot_10k.jsonl", "instruction", "response")
    assert (cfg.batch_size, cfg.lr, cfg.max_len) == (256, 5e-5, 2048)
    cfg = rasft.parse_args(["--model", "Qwen/Qwen2.5-Coder-7B", "--data", "kodcode", "--lr", "1"])
    assert cfg.tests_field == "test_code" and cfg.lr == 1.0
    assert rasft.parse_args([]).data == "demo"


def test_demo_heldout_is_disjoint_from_training():
    train = {r["problem"] for r in rasft.demo_rows(2000, 1)}
    held = {r["problem"] for r in rasft.demo_rows(200, 2, heldout=True)}
    assert not train & held
    row = rasft.demo_rows(1, 0)[0]
    assert rasft.verify_math(row["solution"], row["answer"])


def test_demo_shift_writes_the_same_sums_another_valid_way():
    for numbers in (3, 4):
        running, grouped = rasft.demo_rows(300, 5, numbers=numbers), rasft.demo_rows(300, 5, numbers=numbers,
                                                                                       style="grouped")
        assert [r["problem"] for r in running] == [r["problem"] for r in grouped]
        for a, b in zip(running, grouped):
            assert a["answer"] == b["answer"] == str(eval(a["problem"][8:-1]))  # noqa: S307 -- our own digits
            assert rasft.verify_math(a["solution"], a["answer"]) and rasft.verify_math(b["solution"], b["answer"])
            assert "Plus:" in b["solution"] and "Plus:" not in a["solution"] and a["problem"].count("+") + \
                a["problem"].count("-") == numbers - 1
    cfg = rasft.parse_args(["--data", "demo_shift", "--eval_items", "100"])
    held = rasft.demo_task(cfg, heldout=True)
    assert [r["group"] for r in held].count("4 numbers") == 50 and all("Plus:" in r["solution"] for r in held)
    assert not {r["problem"] for r in held} & {r["problem"] for r in rasft.demo_task(cfg, heldout=False)}
    assert len(rasft.demo_rows(10_000, 0, heldout=True)) == 938  # all there are: one problem in three
