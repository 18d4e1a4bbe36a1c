#!/usr/bin/env bash
# Fill .whl/ with the packages bench/gpu_check.sh installs on the GPU machine (Python 3.12, x86-64, no network),
# which has torch, transformers, peft, accelerate, pandas, pyarrow and the rest preinstalled but not these:
# trl (apo-online's pin) with datasets and its two missing needs, and TRL 1.12.0 apart (.whl/trl-bench/) for the
# TRL side of the benchmark. All are pure-Python wheels (about 3 MB). Run from the repo root where pip reaches PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >>.git/info/exclude
get() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
          --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d "$@"; }
get .whl trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 chatterbot-corpus==1.3.3
get .whl/trl-bench trl==1.12.0
ls -R .whl
