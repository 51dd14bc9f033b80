#!/usr/bin/env bash
# Everything that needs a GPU, in one run of at most ~12 minutes (the step benchmark ~9) on one H200 that has
# torch and transformers (vLLM, datasets and pytest are used where installed). Prints every number the README
# reports; full logs go to OUT_DIR.
#
#     bash tests/gpu_check.sh [OUT_DIR]
#
# 1. the step benchmark at the 1.5B shape, uniform 2048-token and real-length sequences (tests/bench_step.py):
#    the authors'-style step, rasft.py's packed rows (flex_attention) against padded ones, packed through SDPA,
#    the vocabulary projection kept for backward, one GPU without FSDP2, activation checkpointing
# 2. the demo under torchrun on one GPU: nccl, FSDP2 with bf16 compute, compiled layers, HF rollouts; the
#    code path of an 8-GPU run (and again with vLLM rollouts where vLLM is installed: push, then generate)
# 3. a killed run resumed on CUDA against an uninterrupted one, and two uninterrupted runs against each other
# 4. the test suite (the CPU suite: it hides the GPUs), where pytest is installed
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-/tmp/rasft_gpu_check}}
runs=$(mktemp -d)  # models and checkpoints: not worth bringing back
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

# run NAME SECONDS LINES CMD...: CMD under a time limit, its log in $out/NAME.log, its last LINES lines shown
run() {
  local name=$1 limit=$2 lines=$3 t=$SECONDS rc
  shift 3
  echo "== $name: $*"
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  rc=$?
  grep -v "^\s*$" "$out/$name.log" | tail -n "$lines"
  echo "-- $name: exit $rc in $((SECONDS - t)) s"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python -c "import torch, transformers; print('torch', torch.__version__, '| transformers', transformers.__version__)"
has() { python -c "import $1" 2>/dev/null; }

# each row builds, shards and compiles its own 1.5B model (~40 s); --profile: the top ops of each rasft.py row
run bench_uniform 330 12 python tests/bench_step.py --shape 1.5B --lengths uniform --seq 2048 --micro_batch 8 \
  --warmup 1 --steps 2 --rows packed,padded,keep_logits,no_fsdp,act_ckpt --profile
run bench_real 200 9 python tests/bench_step.py --shape 1.5B --lengths real --warmup 1 --steps 2 \
  --rows packed,padded,packed_sdpa
run demo 160 6 torchrun --standalone --nproc_per_node 1 rasft.py --rollout_backend hf --out "$runs/demo"
grep -E "^(rollout backend|calibration|trained)" "$out/demo.log"
grep -E "^step " "$out/demo.log" | tail -n 2
if has vllm; then
  run demo_vllm 200 6 torchrun --standalone --nproc_per_node 1 rasft.py --rollout_backend vllm --out "$runs/demo_vllm"
fi
run resume 80 2 python tests/check_resume.py --out "$runs/resume" --twice
if has pytest; then
  run suite 60 3 python -m pytest -q -p no:cacheprovider tests
fi
