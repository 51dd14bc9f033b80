"""A user's mistakes end in one line that says what to fix, exit code 2, and the output folder untouched."""
import json
import os
import socket
import subprocess
import sys

import pytest

import rasft
from conftest import needs_datasets, small_cfg


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


# Everything that can be checked is checked before the demo's warm-up (here 3 steps, capped by --max_steps 2): an
# error after it would leave out/warmup behind, which fail() sees as a changed folder.
@needs_datasets
def test_data_mistakes_stop_before_the_warm_up(tmp_path, capsys):
    warm = ["--demo_warmup", "3", "--max_steps", "2"]
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "d.csv").write_text("problem,solution\n1+1,2\n")
    (tmp_path / "q.jsonl").write_text("".join(json.dumps({"question": f"{k}+1?", "worked": f"\\boxed{{{k + 1}}}"}) + "\n"
                                              for k in range(5)))
    for args, says in [(["--data", str(tmp_path / "missing.jsonl")], "missing.jsonl: no such file or folder"),
                       (["--data", str(tmp_path / "d.csv")], "d.csv: unknown extension .csv"),
                       (["--data", str(tmp_path / "empty.jsonl")], "empty.jsonl: no rows"),
                       (["--data", str(tmp_path / "q.jsonl"), "--prompt_field", "problem"],
                        f"--data {tmp_path / 'q.jsonl'}: no field 'problem' (--prompt_field); fields: question, worked"),
                       (["--data", str(tmp_path / "q.jsonl"), "--prompt_field", "question", "--response_field", "worked",
                         "--eval_items", "5"], "--eval_items 5: only 5 items have an answer or tests; hold out fewer")]:
        assert says in fail(tmp_path, capsys, *warm, *args)
    os.makedirs(tmp_path / "out" / "ckpt" / "step_4")
    (tmp_path / "out" / "ckpt" / "step_4" / "state.pt").write_bytes(b"x")
    assert "holds checkpoints of an earlier run" in fail(tmp_path, capsys, *warm)
    with pytest.raises(SystemExit):  # a new --out, made for the lock, is not left behind empty
        rasft.main(["--out", str(tmp_path / "new"), "--data", str(tmp_path / "missing.jsonl"), *warm])
    assert "missing.jsonl: no such file" in capsys.readouterr().err and not (tmp_path / "new").exists()


@needs_datasets
def test_eval_items_beyond_the_data_is_one_line_not_a_crash(tmp_path, capsys):
    """Through main() and through train() (held_out counts the items left after those too long were dropped)."""
    rows = [{"problem": f"{k}+1?", "solution": f"{k}+1={k + 1}. \\boxed{{{k + 1}}}"} for k in range(12)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert "--eval_items 20: only 12 items have an answer or tests; hold out fewer" in fail(
        tmp_path, capsys, "--data", str(tmp_path / "d.jsonl"), "--eval_items", "20")
    cfg = small_cfg(tmp_path / "t", "--data", str(tmp_path / "d.jsonl"), "--eval_items", "12", "--max_steps", "1")
    with pytest.raises(rasft.UsageError, match="--eval_items 12: only 12 items have an answer or tests"):
        rasft.train(cfg)


def test_resume_needs_a_checkpoint(tmp_path, capsys):
    says = f"--resume true: no checkpoint in {tmp_path / 'out' / 'ckpt'}: check --out"
    assert says in fail(tmp_path, capsys, "--resume", "true", "--demo_warmup", "3", "--max_steps", "2")
    with pytest.raises(SystemExit):  # a typo in --out: nothing there, and nothing made there
        rasft.main(["--out", str(tmp_path / "typo"), "--resume", "true"])
    assert "no checkpoint in" in capsys.readouterr().err and not (tmp_path / "typo").exists()


def test_flags_name_their_values_and_are_never_abbreviated(capsys):
    for args, says in [(["--adaptive", "maybe"], "argument --adaptive: 'maybe': use true or false"),
                       (["--eval_item", "3"], "unrecognized arguments: --eval_item 3")]:
        with pytest.raises(SystemExit):
            rasft.parse_args(args)
        assert says in capsys.readouterr().err


HOLDER = """import sys, time
sys.path.insert(0, {repo!r})
import rasft
assert rasft.lock_out({out!r}) is None
print("holding", flush=True)
time.sleep(600)
"""


def test_one_run_per_out_and_a_dead_runs_lock_is_taken_over(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    code = HOLDER.format(repo=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), out=str(out))
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "holding\n"
        err = fail(tmp_path, capsys, "--max_steps", "1")
        assert f"--out {out} is in use by process {holder.pid} on {socket.gethostname()}: let it finish" in err
    finally:
        holder.kill()
        holder.wait()
    assert (out / "rasft.lock").exists()  # killed: its file is left, its lock is not
    rasft.main(["--out", str(out), "--demo_warmup", "0", "--rollout_backend", "hf", "--max_items", "16",
                "--batch_size", "8", "--eval_items", "0", "--max_steps", "1"])
    said = capsys.readouterr().out
    assert f"--out {out}: taking it over from process {holder.pid} on {socket.gethostname()}, which is gone" in said
    assert "trained 1 steps" in said and not (out / "rasft.lock").exists()  # released at the end


def test_with_two_ranks_every_rank_stops_at_a_held_out(tmp_path):
    """Rank 0 alone takes the lock; rank 1 must learn the verdict and stop too, not wait in a collective. The ranks
    are started as torchrun starts them, without its agent, which would kill a waiting rank once rank 0 ended."""
    out = tmp_path / "out"
    out.mkdir()
    assert rasft.lock_out(str(out)) is None  # held by this process
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": port}
    script = os.path.join(os.path.dirname(rasft.__file__), "rasft.py")
    ranks = [subprocess.Popen([sys.executable, script, "--out", str(out), "--demo_warmup", "0"], text=True,
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for r in range(2)]
    try:
        errs = [p.communicate(timeout=300)[1] for p in ranks]
    finally:
        rasft.release_out()
        for p in ranks:
            p.kill()
    assert [p.returncode for p in ranks] == [2, 2], errs
    assert errs[0].strip() == f"error: --out {out} is in use by process {os.getpid()} on {os.uname().nodename}: let " \
                              "it finish, or pass another --out" and errs[1].strip() == ""  # rank 0 alone prints


@needs_datasets
def test_the_tiny_model_on_own_data_warms_up_as_the_demo(tmp_path, capsys):
    """The user's field flags and the real-model defaults (system prompt, max_len 2048) are for the user's data;
    the warm-up keeps the demo's own."""
    rows = [{"question": f"What is {a}+{b}?", "worked": f"{a}+{b}={a + b}. \\boxed{{{a + b}}}"}
            for a in range(1, 6) for b in range(1, 6)]
    (tmp_path / "arith.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    rasft.main(["--data", str(tmp_path / "arith.jsonl"), "--prompt_field", "question", "--response_field", "worked",
                "--out", str(out), "--rollout_backend", "hf", "--demo_warmup", "2", "--max_steps", "2",
                "--batch_size", "8", "--eval_items", "0"])
    said = capsys.readouterr().out
    assert "data demo: 1900 items of 1900 rows" in said and "cut to --max_len 256 " in said  # the warm-up's data
    assert f"data {tmp_path / 'arith.jsonl'}: 25 items of 25 rows" in said and "cut to --max_len 1024 " in said
    warm, own = (json.loads((d / "rasft.json").read_text()) for d in (out / "warmup", out))
    assert warm["system_prompt"] == "" and own["system_prompt"] == rasft.Config.system_prompt
