"""Self-contained HTML report of a profiled run (plots embedded as PNG data URIs)."""
from __future__ import annotations

import base64
import html
import json
import tempfile
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from .plots import plot_accuracy_vs_steps, plot_energy_vs_steps, plot_raster, plot_spikes_per_layer
from .profile import Profile, format_profile


def write_html_report(path, profile: Profile, title: str, rasters: Optional[Mapping[str, np.ndarray]] = None,
                      extra_curves: Optional[Mapping[str, np.ndarray]] = None) -> Path:
    """Write the report: accuracy vs T (the run and ``extra_curves``, e.g. the IF baseline),
    spikes per layer, energy per inference vs T, a spike raster, the profile table and sources."""
    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        images = []
        if profile.accuracy_vs_steps is not None:
            curves = {"this network": profile.accuracy_vs_steps, **(extra_curves or {})}
            images.append(("Accuracy vs time steps", plot_accuracy_vs_steps(curves, profile.ann_accuracy,
                                                                             tmp / "acc.png")))
        images.append(("Spikes per layer", plot_spikes_per_layer([l.name for l in profile.layers],
                                                                 [l.spikes for l in profile.layers],
                                                                 [l.role for l in profile.layers], tmp / "spk.png")))
        images.append(("Energy per inference vs T", plot_energy_vs_steps(
            {profile.hardware: np.asarray(profile.energy_nj_vs_steps)},
            {f"ANN FP32 ({profile.ann_energy_nj['fp32']:.3g} nJ)": profile.ann_energy_nj["fp32"],
             f"ANN INT8 ({profile.ann_energy_nj['int8']:.3g} nJ)": profile.ann_energy_nj["int8"]}, tmp / "energy.png")))
        if rasters:
            images.append(("Spike raster", plot_raster(rasters, tmp / "raster.png")))
        figures = "\n".join(
            f"<h2>{html.escape(caption)}</h2><img alt='{html.escape(caption)}' src='data:image/png;base64,"
            f"{base64.b64encode(p.read_bytes()).decode()}'>" for caption, p in images)
    body = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}pre{font-size:12px;"
            "background:#f4f4f4;padding:8px;overflow-x:auto}img{max-width:100%}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>{figures}<h2>Profile</h2><pre>{html.escape(format_profile(profile))}</pre>"
            f"<h2>Data (JSON)</h2><pre>{html.escape(json.dumps(profile.to_dict(), indent=1)[:200_000])}</pre>"
            "</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_suffix(path.suffix + ".tmp")
    tmp_path.write_text(body)
    tmp_path.replace(path)
    return path
