"""A user's mistakes end in one line that says what to fix, exit code 2, and the output folder untouched."""
import json
import os

import pytest

import rasft
from conftest import needs_datasets


def fail(tmp_path, capsys, *args):
    """main() on args, into an --out that holds an earlier run's files: (the one error line, files after)."""
    out = tmp_path / "out"
    if not out.exists():
        out.mkdir()
        (out / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(SystemExit) as e:
        rasft.main(["--out", str(out), "--demo_warmup", "0", "--rollout_backend", "hf", *args])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("error: ") and "\n" not in err, err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # nothing lost or changed
    return err


@pytest.mark.parametrize("args,says", [
    (["--batch_size", "0"], "--batch_size 0: must be at least 1"),
    (["--micro_tokens", "-1"], "--micro_tokens -1: must be at least 1"),
    (["--ratio_low", "2", "--ratio_high", "1"], "--ratio_low 2.0: must be above 0 and below --ratio_high 1.0"),
    (["--rollout_n", "0"], "--rollout_n 0: must be at least 1"),
    (["--top_p", "1.5"], "--top_p 1.5: must be between 0 and 1"),
    (["--q_start_low", "0.6"], "--q_start_low 0.6: must be in order"),
    (["--loss", "ppo"], "--loss ppo: must be one of rasft, sft"),
    (["--model", "./nonexistent_dir"], "--model ./nonexistent_dir: no such file or folder"),
    (["--model", "Qwen2.5-7B"], "--model Qwen/Qwen2.5-7B: cannot load it"),  # offline (conftest)
])
def test_flag_and_model_mistakes(tmp_path, capsys, args, says):
    assert says in fail(tmp_path, capsys, *args)


def test_out_is_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit):
        rasft.main(["--out", str(tmp_path / "file")])
    assert "is a file: pass a folder" in capsys.readouterr().err and (tmp_path / "file").read_text() == "x"


@needs_datasets
def test_data_mistakes(tmp_path, capsys):
    (tmp_path / "empty.jsonl").write_text("")
    assert "empty.jsonl: no rows" in fail(tmp_path, capsys, "--data", str(tmp_path / "empty.jsonl"))
    (tmp_path / "folder").mkdir()
    assert f"--data {tmp_path / 'folder'}: cannot load it" in fail(tmp_path, capsys, "--data", str(tmp_path / "folder"))
    (tmp_path / "q.jsonl").write_text(json.dumps({"question": "1+1?", "answer": "2"}) + "\n")
    err = fail(tmp_path, capsys, "--data", str(tmp_path / "q.jsonl"))
    assert f"--data {tmp_path / 'q.jsonl'}: no response field found (fields: question, answer)" in err


def test_a_fresh_run_will_not_run_over_checkpoints(tmp_path, capsys):
    os.makedirs(tmp_path / "out" / "ckpt" / "step_4")
    (tmp_path / "out" / "ckpt" / "step_4" / "state.pt").write_bytes(b"x")
    assert "holds checkpoints of an earlier run: --resume true continues it" in fail(tmp_path, capsys)


def test_flags_name_their_values_and_are_never_abbreviated(capsys):
    for args, says in [(["--adaptive", "maybe"], "argument --adaptive: invalid true_or_false value: 'maybe'"),
                       (["--eval_item", "3"], "unrecognized arguments: --eval_item 3")]:
        with pytest.raises(SystemExit):
            rasft.parse_args(args)
        assert says in capsys.readouterr().err
