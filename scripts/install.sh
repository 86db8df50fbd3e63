#!/usr/bin/env bash
# Install bsnn-lava and its dependencies into a virtual environment (default: .venv).
#
# Python 3.11 (this project's default): torch 2.13.0 (CPU build), numpy<2 and lava-nc / lava-dl's
# real runtime dependencies come from the registry; the lava-nc 0.10.0 and lava-dl 0.6.0 wheels are
# installed with --no-deps --ignore-requires-python (they declare Python <3.11; the one 3.11 fix is
# applied at import time by bsnn_lava.lava_compat, never by editing site-packages).
# Python 3.10: see docs/guide.md ("Install").
set -euo pipefail
VENV="${1:-.venv}"
PYTHON="${PYTHON:-python3}"
cd "$(dirname "$0")/.."

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
"${PIP[@]}" --upgrade pip
"${PIP[@]}" "torch==2.13.0" "numpy>=1.24,<2" "h5py>=3.7" "scipy>=1.10,<2" "matplotlib>=3.5" \
  "scikit-learn>=1.3" "tqdm>=4.60" \
  "networkx<=2.8.7" "asteval>=0.9.31,<0.10" "opencv-python-headless>=4.8,<4.12" "pillow>=10,<11" \
  "pytest>=7" "hypothesis>=6" "pytest-timeout>=2" "nbclient>=0.7" "nbformat>=5" "ipykernel>=6"
"${PIP[@]}" --no-deps --ignore-requires-python "lava-nc==0.10.0" "lava-dl==0.6.0"
"${PIP[@]}" --no-deps -e .
"$VENV/bin/python" -c "import bsnn_lava, torch, numpy; print('bsnn-lava', bsnn_lava.__version__, '| torch', torch.__version__, '| numpy', numpy.__version__)"
