import os
import sys

# The suite is the CPU suite, also on a machine with GPUs (the GPU paths: tests/gpu_check.sh).
os.environ["CUDA_VISIBLE_DEVICES"] = ""

import importlib.util  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import rasft  # noqa: E402


@pytest.fixture(scope="session")
def tok():
    return rasft.tiny_tokenizer()


@pytest.fixture
def tiny(tok):
    torch.manual_seed(0)
    return rasft.tiny_model(tok)


# Files load through `datasets` (requirements-cpu.txt); a GPU machine may lack it: those tests skip there.
needs_datasets = pytest.mark.skipif(importlib.util.find_spec("datasets") is None, reason="`datasets` is not installed")


def small_cfg(tmp_path, *args):
    """Demo defaults, shrunk so a run takes seconds."""
    # HF rollouts in-process: the vLLM engine is one per process (tests/test_vllm.py runs it in subprocesses)
    return rasft.parse_args(["--out", str(tmp_path), "--demo_warmup", "0", "--rollout_backend", "hf",
                             "--max_items", "48", "--batch_size", "8",
                             "--micro_tokens", "256", "--route_chunk", "16", "--eval_items", "8", *args])


def finished(p):
    """stderr of a subprocess run that must have exited 0."""
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p.stderr
