#!/usr/bin/env bash
# Every GPU figure the README and docs/results quote, from one command on a CUDA machine with the
# project and its packages importable (README, "What is verified where"; on the offline GPU box:
# PYTHONPATH=<project>:/tmp/site after the set-up in ../shared/GPU.md):
#
#   bash bench/gpu_all.sh [OUT_DIR] [JOBS]      # OUT_DIR default /tmp/out; JOBS default all, or a
#                                               # comma list of: chain,chain_head,tier,sweep,bench_step,
#                                               # bench_sampling,bench_all
#
# Jobs, in order (one H200: ~9.5 + ~6 + ~9 + ~1 + ~2 minutes, then make bench):
#   chain           pipeline=h100_small, timed (TORCH_LOGS=recompiles: a FlexAttention recompile shows)
#   chain_head      only (not in "all") its first five stages, base to reward, in <OUT_DIR>/runs/h100_head:
#                   what the sweep needs, ~6 minutes, when the sweep comes before the whole chain
#   tier            pytest -m gpu tests/gpu (vLLM and two-GPU checks only where their kinds are present)
#   sweep           pipeline=h100_dpo_sweep on the chain's run, or on chain_head's when the chain did not
#                   run (online DPO points, each vs sft_hard)
#   bench_step      bench/train_step.py on h100_small's SFT shape (16K-token packed row), with its profile
#   bench_sampling  bench/sampling.py at the eval's sampling setting (1,024 rows), eager and compiled decode
#   bench_all       make bench (bench/run_all.py) with each output and its card kept in <OUT_DIR>/bench_results
# Each job writes <job>.log; runs stay under <OUT_DIR>/runs; a line per job says its status and time.
set -u
OUT=${1:-/tmp/out}
JOBS=${2:-all}
RUNS=$OUT/runs
mkdir -p "$OUT" "$RUNS"
cd "$(dirname "$0")/.." || exit 1
export PYTHONUNBUFFERED=1
export YIALIGN_COMMIT=${YIALIGN_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}

want() { { [ "$JOBS" = all ] && [ "$1" != chain_head ]; } || [[ ",$JOBS," == *",$1,"* ]]; }
job() {  # job NAME CMD...: run, log, one status line
  local name=$1; shift
  want "$name" || return 0
  echo "[job $name] start $(date +%T) commit $YIALIGN_COMMIT"
  local t0=$SECONDS
  "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "[job $name] rc $rc wall $((SECONDS - t0)) s: $(grep -a -v '^\s*$' "$OUT/$name.log" | tail -1 | cut -c1-200)"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
job chain env TORCH_LOGS=recompiles python3 -m alignment pipeline=h100_small run_dir="$RUNS/h100_small"
job chain_head python3 -m alignment pipeline=h100_small run_dir="$RUNS/h100_head" "stages=[base,sft_broad,synth,sft_hard,reward]"
gpu_filter="not two_gpus"
[ "$(nvidia-smi -L 2>/dev/null | wc -l)" -ge 2 ] && gpu_filter=""
python3 -c "import vllm" 2>/dev/null || gpu_filter="${gpu_filter:+$gpu_filter and }not vllm"
job tier python3 -m pytest -q -m gpu tests/gpu ${gpu_filter:+-k "$gpu_filter"} -p no:cacheprovider
from="$RUNS/h100_small"; [ -d "$from/reward/model" ] || from="$RUNS/h100_head"
job sweep python3 -m alignment pipeline=h100_dpo_sweep vars.sweep_from="$from" run_dir="$RUNS/dpo_sweep"
job bench_step python3 bench/train_step.py --upcycled --batch 1 --seq 16384 --packed 48 --no-baseline
job bench_sampling python3 bench/sampling.py --upcycled --prompts 256 --n 4 --temperature 0.8 --top-p 0.95 \
  --max-new-tokens 160 --variants native/static+graph,native/static+graph+compile
job bench_all python3 bench/run_all.py --results "$OUT/bench_results"
echo "[job all] done $(date +%T)"
