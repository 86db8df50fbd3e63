#!/usr/bin/env bash
# The peer converter for bench/compare.py: SpikingJelly 2.0.0, an optional extra (never a dependency
# of bsnn-lava). Its wheel declares torchvision and torchaudio, which would replace the CPU torch
# build with a multi-GB CUDA one, so it is installed without its declared dependencies (pip then
# notes that torchvision/torchaudio are missing: the ann2snn path does not import them), and the two
# that its ann2snn path imports (loguru, requests) come from this project's `peer` extra, installed
# over the existing environment (torch and the rest are already satisfied, nothing is replaced).
set -euo pipefail
VENV="${1:-.venv}"
cd "$(dirname "$0")/.."
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
"${PIP[@]}" --no-deps "spikingjelly==2.0.0"
"${PIP[@]}" -e ".[peer]"
"$VENV/bin/python" -c "from spikingjelly.activation_based.ann2snn import Converter, RateCodingRecipe; from importlib.metadata import version; print('spikingjelly', version('spikingjelly'))"
