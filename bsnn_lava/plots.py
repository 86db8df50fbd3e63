"""Matplotlib figures (Agg backend, written to PNG)."""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from .files import atomic_write


#: One style per curve, so that curves lying on top of each other stay visible.
LINE_STYLES = ({"linestyle": "-", "linewidth": 2.4, "alpha": 0.8}, {"linestyle": "--", "linewidth": 1.6},
               {"linestyle": ":", "linewidth": 2.0}, {"linestyle": "-.", "linewidth": 1.4})


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path) -> Path:
    """Write ``fig`` as a PNG at ``path`` (atomically, :func:`bsnn_lava.files.atomic_write`) and close it."""
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    finally:
        _pyplot().close(fig)


def accuracy_figure(curves: Mapping[str, np.ndarray], ann_accuracy: Optional[float],
                    title: str = "Accuracy vs time steps"):
    """The figure of :func:`plot_accuracy_vs_steps` (one style per curve from :data:`LINE_STYLES`)."""
    fig, ax = _pyplot().subplots(figsize=(7, 4.2))
    for (label, accuracy), style in zip(curves.items(), itertools.cycle(LINE_STYLES)):
        ax.plot(np.arange(1, len(accuracy) + 1), 100 * np.asarray(accuracy), label=label, **style)
    if ann_accuracy is not None:
        ax.axhline(100 * ann_accuracy, color="k", linestyle="--", linewidth=1, label="ANN")
        ax.axhline(100 * ann_accuracy - 1, color="grey", linestyle=":", linewidth=1, label="ANN - 1 point")
    ax.set_xlabel("time steps T (including pipeline fill)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return fig


def plot_accuracy_vs_steps(curves: Mapping[str, np.ndarray], ann_accuracy: Optional[float], path,
                           title: str = "Accuracy vs time steps") -> Path:
    """One line per curve (accuracy after each step, fractions), the ANN as a dashed line."""
    return _save(accuracy_figure(curves, ann_accuracy, title), path)


def plot_spikes_per_layer(names, spikes_per_inference, roles, path) -> Path:
    """Bar chart: spikes per inference of every spiking layer (relays hatched)."""
    fig, ax = _pyplot().subplots(figsize=(max(6, 0.35 * len(names)), 4))
    bars = ax.bar(range(len(names)), spikes_per_inference, color=["tab:orange" if r == "relay" else "tab:blue"
                                                                  for r in roles])
    ax.set_xticks(range(len(names)), names, rotation=70, ha="right", fontsize=7)
    ax.set_ylabel("spikes per inference")
    ax.set_title("Spikes per layer (orange: synchronous relays)")
    ax.grid(axis="y", alpha=0.3)
    del bars
    return _save(fig, path)


def plot_energy_vs_steps(energy_nj: Mapping[str, np.ndarray], ann_energy_nj: Mapping[str, float], path) -> Path:
    """Cumulative energy per inference against T, with the ANN's energy as horizontal lines."""
    fig, ax = _pyplot().subplots(figsize=(7, 4.2))
    for label, curve in energy_nj.items():
        ax.plot(np.arange(1, len(curve) + 1), np.asarray(curve) / 1e3, label=label)
    for label, value in ann_energy_nj.items():
        ax.axhline(value / 1e3, linestyle="--", linewidth=1, color="grey")
        ax.annotate(label, (1, value / 1e3), fontsize=8, va="bottom")
    ax.set_xlabel("time steps T")
    ax.set_ylabel("energy per inference (uJ)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_energy_per_image(throughput: Mapping[str, Optional[dict]], hardware: str, path) -> Path:
    """Energy per image, one image at a time and streamed (dynamic and static stacked, uJ), labelled
    with the steps per image and images per second (``Profile.throughput``)."""
    modes = [(name, t) for name, t in throughput.items() if t is not None]
    fig, ax = _pyplot().subplots(figsize=(6.5, 4))
    labels = []
    for i, (name, t) in enumerate(modes):
        e = t["energy_nj"]
        dynamic, static = e["dynamic"] / 1e3, (e["static"] or 0.0) / 1e3
        ax.bar(i, dynamic, color="tab:blue", label="dynamic" if i == 0 else None)
        if e["static"] is not None:
            ax.bar(i, static, bottom=dynamic, color="tab:gray", label="static" if i == 0 else None)
        speed = "" if t["images_per_s"] is None else f", {t['images_per_s']:.3g} images/s"
        labels.append(f"{name.replace('_', ' ')}\n{t['steps_per_image']:.0f} steps/image{speed}")
    ax.set_xticks(range(len(modes)), labels)
    ax.set_ylabel("energy per image (uJ)")
    ax.set_title(f"Energy per image on {hardware} (estimates)")
    ax.legend()
    return _save(fig, path)


def plot_raster(rasters: Mapping[str, np.ndarray], path, max_neurons: int = 40, title: Optional[str] = None) -> Path:
    """Spike raster of the first ``max_neurons`` neurons of each layer (rasters: (n_steps, n_neurons))."""
    fig, ax = _pyplot().subplots(figsize=(8, max(3, 0.25 * len(rasters) * 4)))
    base = 0
    ticks = []
    for name, raster in rasters.items():
        chosen = raster[:, :max_neurons]
        t, n = np.nonzero(chosen)
        ax.scatter(t, base + n, s=2, marker="|")
        ticks.append((base + chosen.shape[1] / 2, name))
        base += chosen.shape[1] + 4
    ax.set_yticks([p for p, _ in ticks], [n for _, n in ticks], fontsize=7)
    ax.set_xlabel("step")
    ax.set_title(title or f"Spike raster (first {max_neurons} neurons of each of {len(rasters)} layers, one image)",
                 fontsize=9)
    return _save(fig, path)


def plot_paired_differences(differences: Mapping[str, tuple], path, title: str = "Accuracy difference") -> Path:
    """``label -> (difference, standard_error)`` per step (fractions): one line per pair with a band
    of two standard errors, and zero as a dashed line."""
    fig, ax = _pyplot().subplots(figsize=(7, 4.2))
    for label, (difference, error) in differences.items():
        steps = np.arange(1, len(difference) + 1)
        line, = ax.plot(steps, 100 * np.asarray(difference), label=label, linewidth=1)
        ax.fill_between(steps, 100 * (np.asarray(difference) - 2 * np.asarray(error)),
                        100 * (np.asarray(difference) + 2 * np.asarray(error)), color=line.get_color(), alpha=0.15)
    ax.axhline(0, color="k", linestyle="--", linewidth=1)
    ax.set_xlabel("time steps T (including pipeline fill)")
    ax.set_ylabel("difference (points, +-2 standard errors)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    return _save(fig, path)


def plot_accuracy_vs_energy(points: Mapping[str, tuple], hardware: str, path, estimate: bool = False) -> Path:
    """Accuracy (%) against dynamic energy per image (uJ), one labelled point per network: one image
    at a time (filled circle) and, where it streams, streamed (open square, joined to it by a dashed
    line). ``points``: label -> (accuracy as a fraction, uJ one at a time, uJ streamed or ``None``).
    The energy axis is logarithmic where the energies span more than a factor of 10; ``estimate``
    says so in the title."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter

    fig, ax = _pyplot().subplots(figsize=(7.5, 4.6))
    energies = []
    for i, (label, (accuracy, one, streamed)) in enumerate(points.items()):
        color, y = f"C{i % 10}", 100 * accuracy
        ax.scatter([one], [y], color=color, marker="o", s=45, zorder=3)
        energies.append(one)
        if streamed is not None:
            ax.plot([one, streamed], [y, y], color=color, linestyle="--", linewidth=1, zorder=2)
            ax.scatter([streamed], [y], facecolors="white", edgecolors=color, marker="s", s=50, zorder=3)
            energies.append(streamed)
        ax.annotate(label, (one, y), textcoords="offset points", xytext=(6, 6), fontsize=8, color=color)
    if energies and min(energies) > 0 and max(energies) > 10 * min(energies):
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(  # 2 and 5 times each power of 10
            lambda value, _: f"{value:g}" if round(value / 10 ** np.floor(np.log10(value))) in (2, 5) else ""))
    ax.margins(0.15, 0.2)  # room for the labels
    ax.legend(handles=[Line2D([], [], color="grey", marker="o", linestyle="", label="one image at a time"),
                       Line2D([], [], color="grey", marker="s", markerfacecolor="white", linestyle="",
                              label="streamed (one image per frame)")], loc="best", fontsize=8)
    ax.set_xlabel("dynamic energy per image (uJ)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"Accuracy vs energy per image on {hardware}" + (" (estimates)" if estimate else ""))
    ax.grid(alpha=0.3, which="both")
    return _save(fig, path)
