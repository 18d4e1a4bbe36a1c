#!/usr/bin/env bash
# The GPU check (issue 14): on a CUDA machine with torch, transformers, peft and accelerate preinstalled and no
# network, install the few missing packages from a local wheel folder, run the tests that exercise device placement
# and bfloat16 on CUDA, then benchmark apo-online against TRL PPO on random Llamas (bench/gpu_bench.py).
#
#   bench/gpu_wheels.sh                 # once, where pip reaches PyPI: fills .whl/ (about 3 MB)
#   bench/gpu_check.sh [OUT_DIR]        # on the GPU machine (default OUT_DIR: $OUT or bench/.assets/gpu_check)
#   BENCH_SCALE=user BENCH_TIMEOUT=540 bench/gpu_check.sh [OUT_DIR]   # no tests: the 1B bench at a user's batch
#
# Writes OUT_DIR/gpu_bench.json, OUT_DIR/tests.log, OUT_DIR/nvidia_smi.txt. Without CUDA it runs the CPU fallback
# (2-layer cuts of the same shapes, float32), which is how it is checked on a machine without a GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-bench/.assets/gpu_check}}"
mkdir -p "$out"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 TRL_EXPERIMENTAL_SILENCE=1
export APO_ONLINE_CACHE="${APO_ONLINE_CACHE:-/tmp/apo_online_cache}"
python="${PYTHON:-python3}"
pip_target() { "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$@"; }
# missing packages: apo-online's and the embedded corpus
if ! "$python" -c "import trl, datasets, chatterbot_corpus" 2>/dev/null; then
  pip_target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
trl_path=""
if ls .whl/trl-bench/*.whl >/dev/null 2>&1; then  # TRL 1.12.0 (the last with PPOTrainer) apart, for the TRL side
  pip_target /tmp/site-trl .whl/trl-bench/*.whl || exit 1
  trl_path=/tmp/site-trl
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
cuda=$("$python" -c "import torch; print(int(torch.cuda.is_available()))") || exit 1
(nvidia-smi || echo "no nvidia-smi") >"$out/nvidia_smi.txt" 2>&1
"$python" -c "import torch, transformers, peft, accelerate, trl; print('torch', torch.__version__,
  'cuda', torch.version.cuda, 'transformers', transformers.__version__, 'peft', peft.__version__,
  'accelerate', accelerate.__version__, 'trl', trl.__version__)" \
  | tee "$out/versions.txt"

status=0
if [ "$cuda" = 1 ] && [ -n "${BENCH_SCALE:-}" ]; then
  bench_args=()  # the user-scale bench alone: it needs the call's time
elif [ "$cuda" = 1 ]; then
  # test_cuda: placement, bfloat16, a checkpoint on CUDA; the game tests run on the GPU too (the accelerator picks it)
  parallel=$("$python" -c "import xdist" 2>/dev/null && echo "-n 4")
  timeout 180 "$python" -m pytest -q -p no:cacheprovider $parallel tests/test_cuda.py tests/test_ppo_step.py \
    tests/test_reward_step.py tests/test_rollout.py 2>&1 | tee "$out/tests.log" | tail -15 || status=1
  grep -q " passed" "$out/tests.log" && ! grep -qE " (failed|error)" "$out/tests.log" || status=1
  bench_args=()
else
  echo "no CUDA device: CPU fallback" | tee "$out/tests.log"
  bench_args=(--cpu --shapes smollm2-135m --updates 1)  # proves the path; the 1B cut takes ~10 min on 2 cores
fi
# BENCH_SCALE=user: the 1B shape at a user's batch (bench/gpu_bench.py --scale user), after or instead of the tests
timeout "${BENCH_TIMEOUT:-330}" "$python" bench/gpu_bench.py --output "$out/gpu_bench${BENCH_SCALE:+_$BENCH_SCALE}.json" \
  --scale "${BENCH_SCALE:-smoke}" --trl-path "$trl_path" --work-dir /tmp/apo_gpu_bench "${bench_args[@]}" 2>&1 \
  | grep -v "Warning\|warn(" | tail -60 || status=1
tar -czf "$out/bench_logs.tar.gz" -C /tmp/apo_gpu_bench logs 2>/dev/null  # one file: the device returns 8 at most
exit $status
