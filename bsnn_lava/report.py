"""Self-contained HTML reports of a profiled run, or of several profiled networks (plots embedded as PNG
data URIs)."""
from __future__ import annotations

import base64
import html
import json
import tempfile
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from .files import write_text_atomic
from .plots import (plot_accuracy_vs_energy, plot_accuracy_vs_steps, plot_energy_per_image, plot_energy_vs_steps,
                    plot_raster, plot_spikes_per_layer)
from .profile import Profile, format_profile


#: The reports' style sheet.
STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:auto}pre{font-size:12px;background:#f4f4f4;"
         "padding:8px;white-space:pre-wrap;overflow-wrap:anywhere}img{max-width:100%}")
#: Spiking layers shown in a report's raster (evenly spaced through the network), and neurons of each.
RASTER_LAYERS, RASTER_NEURONS = 6, 40


def raster_layers(network) -> list:
    """About :data:`RASTER_LAYERS` spiking layers of ``network``, evenly spaced, first included."""
    layers = network.spiking_layers
    return list(layers[::max(1, len(layers) // RASTER_LAYERS)])


def write_html_report(path, profile: Profile, title: str, rasters: Optional[Mapping[str, np.ndarray]] = None,
                      extra_curves: Optional[Mapping[str, np.ndarray]] = None,
                      n_spiking_layers: Optional[int] = None) -> Path:
    """Write the report: accuracy vs T (the run and ``extra_curves``, e.g. the IF baseline),
    spikes per layer, energy per inference vs T, a spike raster of one image (``rasters``: layer ->
    (steps, neurons); ``n_spiking_layers``: how many the network has, for the caption), the
    profile table and the sources of every energy figure."""
    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        images = []
        if profile.accuracy_vs_steps is not None:
            curves = {"this network": profile.accuracy_vs_steps, **(extra_curves or {})}
            images.append(("Accuracy vs time steps", plot_accuracy_vs_steps(curves, profile.ann_accuracy,
                                                                             tmp / "acc.png")))
        spiking = [l for l in profile.layers if l.role != "readout"]
        images.append(("Spikes per layer", plot_spikes_per_layer([l.name for l in spiking], [l.spikes for l in spiking],
                                                                 [l.role for l in spiking], tmp / "spk.png")))
        ann_uj = {kind: profile.ann_energy_nj[kind] / 1e3 for kind in ("fp32", "int8")}
        if profile.energy_nj_vs_steps:  # a streamed run has no curve per image
            images.append((f"Energy per inference vs T on {profile.hardware} (ANN at 45 nm: FP32 "
                           f"{ann_uj['fp32']:.3g} uJ, INT8 {ann_uj['int8']:.3g} uJ)", plot_energy_vs_steps(
                {profile.hardware: np.asarray(profile.energy_nj_vs_steps)},
                {f"ANN FP32 ({ann_uj['fp32']:.3g} uJ)": profile.ann_energy_nj["fp32"],
                 f"ANN INT8 ({ann_uj['int8']:.3g} uJ)": profile.ann_energy_nj["int8"]}, tmp / "energy.png")))
        if any(t is not None for t in profile.throughput.values()):
            images.append(("Energy per image and throughput: one image at a time and streamed",
                           plot_energy_per_image(profile.throughput, profile.hardware, tmp / "throughput.png")))
        if rasters:
            shown = f"{len(rasters)} of {n_spiking_layers}" if n_spiking_layers else f"{len(rasters)}"
            what = "a few images streamed through one lane" if profile.streamed else "one image"
            caption = f"Spike raster of {what}: the first {RASTER_NEURONS} neurons of {shown} spiking layers"
            images.append((caption, plot_raster(rasters, tmp / "raster.png", RASTER_NEURONS, title=caption)))
        figures = "\n".join(_figure(caption, p) for caption, p in images)
    return write_text_atomic(path, _page(title, f"{figures}<h2>Profile</h2><pre>{html.escape(format_profile(profile))}"
                                                f"</pre>{_json_section(profile.to_dict())}"))


def _figure(caption: str, png: Path) -> str:
    """A captioned figure, the PNG embedded."""
    return (f"<h2>{html.escape(caption)}</h2><img alt='{html.escape(caption)}' src='data:image/png;base64,"
            f"{base64.b64encode(png.read_bytes()).decode()}'>")


def _json_section(data) -> str:
    """``data`` as JSON (its first 200,000 characters)."""
    return f"<h2>Data (JSON)</h2><pre>{html.escape(json.dumps(data, indent=1)[:200_000])}</pre>"


def _page(title: str, content: str) -> str:
    """A self-contained HTML page: ``title`` as its title and heading, then ``content``."""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{content}</body></html>")


def write_comparison_report(path, comparison: Mapping[str, object], profiles: Sequence[Profile], table: str,
                            title: str) -> Path:
    """Write the report of several profiled networks: accuracy against dynamic energy per image (one
    point per network, one image at a time and streamed), the comparison ``table`` (text of
    :func:`bsnn_lava.profile.format_comparison`), each network's own profile, and the ``comparison``
    (:func:`bsnn_lava.profile.comparison`) as JSON."""
    rows = comparison["table"]
    labels = _short_labels([str(row["file"]) for row in rows])
    dynamic_uj = lambda row, mode: None if row["energy_nj"][mode] is None else row["energy_nj"][mode]["dynamic"] / 1e3
    points = {label: (row["accuracy"], dynamic_uj(row, "one_at_a_time"), dynamic_uj(row, "streamed"))
              for label, row in zip(labels, rows) if row["accuracy"] is not None}
    caption = "Accuracy vs dynamic energy per image: one image at a time and streamed"
    with tempfile.TemporaryDirectory() as tmp:
        chart = plot_accuracy_vs_energy(points, comparison["hardware"], Path(tmp) / "tradeoff.png",
                                        estimate="dynamic" in comparison["estimated_columns"])
        figure = _figure(caption, chart)
    each = "\n".join(f"<details><summary>{html.escape(str(row['file']))}</summary><pre>"
                     f"{html.escape(format_profile(p))}</pre></details>" for row, p in zip(rows, profiles))
    return write_text_atomic(path, _page(title, f"{figure}<h2>Profiles</h2><pre>{html.escape(table)}</pre>"
                                                f"<h2>Each network</h2>{each}{_json_section(comparison)}"))


def _short_labels(files: Sequence[str]) -> list:
    """The file names, or the paths as given where two files share a name."""
    names = [Path(f).name for f in files]
    return names if len(set(names)) == len(names) else list(files)
