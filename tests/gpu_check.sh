#!/usr/bin/env bash
# Everything that needs a GPU, on one H100/H200 that has torch and transformers (vLLM, datasets and pytest are used
# where installed). Prints every number the README reports; full logs go to OUT_DIR. Its time limits add up to
# ~16 minutes, more than one 10-minute device command or a 15-minute device session: run it in two parts,
# `step` (1, at most ~9 minutes) and `runs` (2-5, at most ~8 minutes), in one session each if need be.
#
#     bash tests/gpu_check.sh [OUT_DIR] [all|step|runs]
#
# 1. the step benchmark at the 1.5B shape, uniform 2048-token and real-length sequences (tests/bench_step.py):
#    the authors'-style step, rasft.py's packed rows (flex_attention) against padded ones, packed through SDPA,
#    the vocabulary projection kept for backward, one GPU without FSDP2, activation checkpointing
# 2. the demo under torchrun on one GPU: nccl, FSDP2 with bf16 compute, compiled layers, HF rollouts; the
#    code path of an 8-GPU run (and again with vLLM rollouts where vLLM is installed: push, then generate)
# 3. a killed run resumed on CUDA against an uninterrupted one, and two uninterrupted runs against each other
# 4. what a large run depends on (tests/check_scale.py): recompiles of 56 compiled layer instances, the FSDP2 root
#    freed before a wake-up, the verifier forked under CUDA and NCCL, the vLLM memory share; with vLLM: a rank with
#    no prompts gives the engine's memory back, free memory around each wake-up, per-prompt budgets
# 5. the test suite (the CPU suite: it hides the GPUs), where pytest is installed
# Lines that need vLLM say so and are skipped where it is not installed; everything else runs.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-/tmp/rasft_gpu_check}}
part=${2:-all}
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
# The CUDA 13 wheels (torch 2.13 and vLLM 0.32 from PyPI) need an NVIDIA driver of the 580 series or newer
driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -n 1)
cuda=$(python -c "import torch; print(torch.version.cuda or 0)")
[ "${cuda%%.*}" -lt 13 ] || [ "${driver%%.*}" -ge 580 ] && verdict="new enough" || verdict="too old: CUDA 13 needs >= 580"
echo "driver $driver | torch built for CUDA $cuda | driver $verdict"

if [ "$part" != runs ]; then
# each row builds, shards and compiles its own 1.5B model (~40 s); --profile: the top ops of each rasft.py row
run bench_uniform 330 12 python tests/bench_step.py --shape 1.5B --lengths uniform --seq 2048 --micro_batch 8 \
  --warmup 1 --steps 2 --rows packed,padded,keep_logits,no_fsdp,act_ckpt --profile
run bench_real 200 9 python tests/bench_step.py --shape 1.5B --lengths real --warmup 1 --steps 2 \
  --rows packed,padded,packed_sdpa
fi
[ "$part" = step ] && exit 0
run demo 160 6 torchrun --standalone --nproc_per_node 1 rasft.py --rollout_backend hf --out "$runs/demo"
grep -E "^(rollout backend|calibration|trained)" "$out/demo.log"
grep -E "^step " "$out/demo.log" | tail -n 2
if has vllm; then
  run demo_vllm 200 6 torchrun --standalone --nproc_per_node 1 rasft.py --rollout_backend vllm --out "$runs/demo_vllm"
  # free GPU memory (GiB) before and after each wake-up, as the run's refresh records hold it
  grep '"event": "refresh"' "$runs/demo_vllm/metrics.jsonl" | head -n 3 | python -c "import json, sys
for r in map(json.loads, sys.stdin): print('refresh @ step', r['step'], '| free GiB around wake-ups', r.get('free_gib'))"
  scale_limit=300
else
  echo "== demo_vllm: skipped (vLLM is not installed here)"
  scale_limit=150
fi
run scale $scale_limit 2 torchrun --standalone --nproc_per_node 1 tests/check_scale.py --json "$out/scale.json"
grep -E "^(compile|  recompile reason|fsdp root|verifier|vllm)" "$out/scale.log"
run resume 80 2 python tests/check_resume.py --out "$runs/resume" --twice
if has pytest; then
  run suite 60 3 python -m pytest -q -p no:cacheprovider tests
fi
