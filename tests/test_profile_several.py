"""`bsnn profile A B ...`: several network files run on the same images, one table and one
accuracy-vs-energy chart; every number is the file's own single-file profile."""
import base64
import json
import re

import numpy as np
import pytest
import torch.nn as nn

import netx_export
from bsnn_lava.cli import main
from bsnn_lava.conversion import convert
from bsnn_lava.datasets import load_digits_uint8
from bsnn_lava.demo import DigitsResNet, train_digits_model
from bsnn_lava.quantize import quantize
from bsnn_lava.training import finetune

RUN = ["--data", "digits", "--limit", "30", "--hw", "loihi2"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Fixed-point digits networks: fine-tuned (P=2) with binary and with graded spikes (both stream),
    and the post-training network of the same model (no frame reset: it cannot stream)."""
    folder = tmp_path_factory.mktemp("several")
    x, y, _, _ = load_digits_uint8()
    model = train_digits_model(x[:300], y[:300], epochs=2)
    tuned = finetune(model, x[:200], y[:200], window=2, epochs=1, batch_size=50, augment=False, n_check=50,
                     progress=False)
    networks = {"binary.h5": convert(tuned, x[:100]), "graded.h5": convert(tuned, x[:100], spikes="graded"),
                "post.h5": convert(model, x[:100], window=2)}
    paths = {name: str(netx_export.write(quantize(network, "loihi2"), folder / name))
             for name, network in networks.items()}
    few_classes = DigitsResNet(num_classes=5).eval()
    paths["five_classes.h5"] = str(netx_export.write(convert(few_classes, x[:50]), folder / "five_classes.h5"))
    rgb = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10)).eval()
    paths["rgb.h5"] = str(netx_export.write(convert(rgb, np.zeros((2, 8, 8, 3), dtype=np.uint8) + 9), folder / "rgb.h5"))
    np.savez(folder / "rgb.npz", x=np.zeros((4, 16, 16, 3), dtype=np.uint8), y=np.zeros(4, dtype=np.int64))
    paths["rgb.npz"] = str(folder / "rgb.npz")
    return paths


def _profile(capsys, *args):
    """``bsnn profile ARGS`` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main(["profile", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def _single(capsys, path, tmp_path, *flags):
    """The single-file profile of ``path`` with ``flags`` (its --json)."""
    out = tmp_path / "single.json"
    assert _profile(capsys, path, *flags, "--json", out)[0] == 0
    return json.loads(out.read_text())


@pytest.mark.parametrize("names, flags", [
    (("binary.h5", "graded.h5", "post.h5"), ("--steps", "40")),
    (("binary.h5", "graded.h5"), ("--stream", "--batch-size", "4")),
])
def test_table_chart_and_json_hold_each_files_own_profile(files, tmp_path, capsys, names, flags):
    paths = [files[name] for name in names]
    code, out, err = _profile(capsys, *paths, *RUN, *flags, "--json", tmp_path / "several.json", "--html",
                              tmp_path / "several.html")
    assert code == 0, err
    several = json.loads((tmp_path / "several.json").read_text())
    assert several["hardware"] == "loihi2" and [row["file"] for row in several["table"]] == paths
    assert set(several["estimated_columns"]) == {"dynamic", "static", "total", "images_per_s"}  # Loihi 2: estimates
    for path, row, profile in zip(paths, several["table"], several["profiles"]):
        single = _single(capsys, path, tmp_path, *RUN, *flags)
        assert profile.pop("file") == path and profile == single
        assert (row["accuracy"], row["ann_accuracy"]) == (single["accuracy"], single["ann_accuracy"])
        assert (row["spikes_per_image"], row["synops_per_image"]) == (single["spikes"], single["synops"])
        for mode in ("one_at_a_time", "streamed"):
            modes = single["throughput"][mode]
            assert row["energy_nj"][mode] == (None if modes is None else modes["energy_nj"])
            assert row["images_per_s"][mode] == (None if modes is None else modes["images_per_s"])
        assert row["chips"] == single["throughput"]["one_at_a_time"]["chips"] >= 1
        frames = single["frames"] or {}
        assert row["first_frame_steps"] == frames.get("first_complete_frame_steps")
        assert row["accuracy_at_first_frame"] == frames.get("accuracy_at_first_frame")
        line = next(line for line in out.splitlines() if line.startswith(path))
        one = single["throughput"]["one_at_a_time"]["energy_nj"]["dynamic"] / 1e3
        assert f"{one:.3g} / " in line and f"{100 * single['accuracy']:.2f}%" in line
    streamed = {row["file"]: row["energy_nj"]["streamed"] for row in several["table"]}
    assert streamed[files["binary.h5"]] is not None and streamed.get(files["post.h5"]) is None  # post: no frame reset
    assert "dynamic uJ*" in out and "* rests on estimates of loihi2: " in out
    page = (tmp_path / "several.html").read_text()
    charts = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert len(charts) == 1 and base64.b64decode(charts[0])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Accuracy vs dynamic energy per image" in page
    assert all(path in page for path in paths) and page.count("<details>") == len(paths)


def test_bad_combinations_are_refused_in_one_line_naming_the_file(files, tmp_path, capsys):
    binary, graded, post = files["binary.h5"], files["graded.h5"], files["post.h5"]
    out = tmp_path / "never.json"
    refusals = [
        ((binary, files["five_classes.h5"], *RUN), f"{files['five_classes.h5']}: classes 5, but {binary} has 10"),
        ((binary, files["rgb.h5"], *RUN), f"{files['rgb.h5']}: input (C, H, W) (3, 8, 8), but {binary} has (1, 8, 8)"),
        ((binary, graded, "--data", files["rgb.npz"]), f"({binary}, {graded})"),
        ((binary, graded, binary, *RUN), f"{binary}: given twice"),
        ((binary, post, *RUN, "--stream"), f"{post}: a streamed run needs frame reset"),
        ((binary, "missing.h5", *RUN), "missing.h5"),
    ]
    for args, message in refusals:
        code, _, err = _profile(capsys, *args, "--json", out)
        assert code == 2 and message in err, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert not out.exists()
