"""``bsnn demo``: train a small ResNet on the bundled digits, convert it, compare BSNN and IF."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Dict

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .conversion import convert
from .datasets import load_digits_uint8
from .plots import plot_accuracy_vs_steps
from .sim import simulate
from .zoo import OptionAShortcut


class DigitsResNet(nn.Module):
    """A tiny ResNet for 8x8 digits: stem, one identity block, one option-A block (stride 2),
    global average pooling, linear."""

    def __init__(self, width: int = 16, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.block1 = _Block(width, width, 1)
        self.block2 = _Block(width, 2 * width, 2)
        self.linear = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        out = self.block2(self.block1(self.stem(x)))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


class _Block(nn.Module):
    def __init__(self, in_planes, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Identity() if stride == 1 and in_planes == planes else OptionAShortcut(planes // 4)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def train_digits_model(x_train: np.ndarray, y_train: np.ndarray, epochs: int = 12, seed: int = 0) -> DigitsResNet:
    """Train :class:`DigitsResNet` on uint8 digits (pixels / 255, no further normalisation)."""
    torch.manual_seed(seed)
    model = DigitsResNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    x = torch.as_tensor(x_train, dtype=torch.float32) / 255.0
    y = torch.as_tensor(y_train)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=generator).split(64):
            optimizer.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()
    return model.eval()


def run_demo(out_dir: Path, steps: int = 96, window: int = 2, seed: int = 0, log=print) -> Dict[str, object]:
    """The whole demo; writes ``accuracy_vs_steps.png`` and ``summary.json`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    x_train, y_train, x_test, y_test = load_digits_uint8(seed)
    log(f"data: scikit-learn digits, {len(y_train)} train / {len(y_test)} test images, 8x8 uint8")
    model = train_digits_model(x_train, y_train, seed=seed)
    with torch.no_grad():
        ann_acc = float((model(torch.as_tensor(x_test, dtype=torch.float32) / 255).argmax(1).numpy() == y_test).mean())
    log(f"ANN (DigitsResNet, trained {time.perf_counter() - started:.1f} s): test accuracy {100 * ann_acc:.2f}%")
    calibration = x_train[:300]
    results = {}
    for label, neuron in (("BSNN", "bistable"), ("IF", "if")):
        network = convert(model, calibration, neuron=neuron, window=window, v_init=0.5)
        results[label] = simulate(network, x_test, y_test, steps=steps)
    table_steps = [t for t in (8, 16, 24, 32, 48, 64, 96, 128, 192, 256) if t <= steps]
    log("\naccuracy (%) after T steps (T counts the pipeline fill):")
    log("  T     " + "".join(f"{t:>7d}" for t in table_steps))
    for label, result in results.items():
        log(f"  {label:<6}" + "".join(f"{100 * result.accuracy[t - 1]:7.2f}" for t in table_steps))
    log("\nsteps to reach ANN - 1 point / ANN - 0.5 point (first crossing):")
    for label, result in results.items():
        log(f"  {label:<6} {_fmt(result.steps_to_within(1.0))} / {_fmt(result.steps_to_within(0.5))}")
    log(f"\nspikes of inactivated neurons (SIN; ANN pre-activation <= 0 but spiked), summed over "
        f"{len(y_test)} images, {steps} steps:")
    for label, result in results.items():
        per_layer = ", ".join(f"{name}={n}" for name, n in result.n_sin.items())
        log(f"  {label:<6} total {sum(result.n_sin.values())}: {per_layer}")
    log(f"  lost input (should be 0): " + ", ".join(f"{k} {sum(r.n_lost_input.values())}" for k, r in results.items()))
    plot = plot_accuracy_vs_steps({f"{k} (P={window}, V(0)=theta/2)" if k == "BSNN" else f"{k} (V(0)=theta/2)":
                                   r.accuracy for k, r in results.items()}, ann_acc, out_dir / "accuracy_vs_steps.png",
                                  title="Digits ResNet: BSNN vs IF")
    summary = {"ann_accuracy": ann_acc, "steps": steps, "window_steps": window,
               "results": {k: r.summary() for k, r in results.items()},
               "wall_time_s": time.perf_counter() - started}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    log(f"\nwrote {plot} and {out_dir / 'summary.json'} ({summary['wall_time_s']:.1f} s)")
    return summary


def _fmt(steps) -> str:
    return "not reached" if steps is None else str(steps)
