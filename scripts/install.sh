#!/usr/bin/env bash
# Installs apo-online and everything the offline default run and the tests need.
# torch is pinned to the local CPU wheel through constraints.txt; any other torch
# would pull several GB of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet torch==2.13.0
python -m pip install --quiet -c constraints.txt -e ".[dev]"
python -m pip install --quiet --no-deps -r requirements-offline.txt
python -c "import torch, transformers, peft, accelerate, trl; print('installed: torch', torch.__version__, '| transformers', transformers.__version__, '| peft', peft.__version__, '| accelerate', accelerate.__version__, '| trl', trl.__version__)"
