"""Matplotlib figures (Agg backend, written to PNG)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

import numpy as np


def plot_accuracy_vs_steps(curves: Mapping[str, np.ndarray], ann_accuracy: Optional[float], path,
                           title: str = "Accuracy vs time steps") -> Path:
    """One line per curve (accuracy after each step, fractions), the ANN as a dashed line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, accuracy in curves.items():
        ax.plot(np.arange(1, len(accuracy) + 1), 100 * np.asarray(accuracy), label=label)
    if ann_accuracy is not None:
        ax.axhline(100 * ann_accuracy, color="k", linestyle="--", linewidth=1, label="ANN")
        ax.axhline(100 * ann_accuracy - 1, color="grey", linestyle=":", linewidth=1, label="ANN - 1 point")
    ax.set_xlabel("time steps T (including pipeline fill)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
