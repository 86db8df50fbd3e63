"""The CLI chain on the bundled digits: convert -> inspect -> check -> simulate -> profile."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from bsnn_lava.cli import main
from bsnn_lava.demo import DigitsResNet, train_digits_model
from bsnn_lava.datasets import load_digits_uint8


@pytest.fixture(scope="module")
def digits_checkpoint(tmp_path_factory):
    x_train, y_train, _, _ = load_digits_uint8()
    model = train_digits_model(x_train[:600], y_train[:600], epochs=4)
    path = tmp_path_factory.mktemp("ckpt") / "digits.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, path)
    return path


def _bsnn(*args):
    return subprocess.run([sys.executable, "-m", "bsnn_lava.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


def test_convert_inspect_check_simulate_profile(digits_checkpoint, tmp_path, capsys):
    net = tmp_path / "digits.h5"
    assert main(["convert", str(digits_checkpoint), "--factory", "bsnn_lava.demo:DigitsResNet", "--calib",
                 "digits:train", "--n-calib", "100", "--hw", "loihi2", "--out", str(net)]) == 0
    assert net.is_file()
    capsys.readouterr()
    assert main(["inspect", str(net), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["numeric"] == "int"
    assert info["provenance"]["quantization"]["calibration_images"] == 100  # GPTQ rounding + bias correction
    assert main(["check", str(net), "--hw", "loihi2", "--json", str(tmp_path / "check.json")]) == 0
    report = json.loads((tmp_path / "check.json").read_text())
    assert report["fits"] and report["n_cores"] >= 7
    assert main(["check", str(net), "--hw", "loihi1"]) == 2  # binary spikes only: graded pixels refused
    assert main(["simulate", str(net), "--data", "digits", "--limit", "40", "--steps", "40",
                 "--json", str(tmp_path / "sim.json")]) == 0
    sim = json.loads((tmp_path / "sim.json").read_text())
    assert len(sim["accuracy"]) == 40 and sum(sim["n_lost_input"].values()) == 0 and sum(sim["n_saturated"].values()) == 0
    assert main(["profile", str(net), "--data", "digits", "--limit", "20", "--steps", "40", "--json",
                 str(tmp_path / "p.json"), "--html", str(tmp_path / "p.html")]) == 0
    profile = json.loads((tmp_path / "p.json").read_text())
    assert profile["synops"] > 0 and profile["ann_macs"] > 0 and profile["energy_nj"]["total"] > 0
    assert set(profile["synops_by_kind"]) == {"input", "main", "relay", "shortcut"}
    assert profile["synops_by_kind"]["shortcut"] > 0
    page = (tmp_path / "p.html").read_text()
    assert page.count("data:image/png;base64,") == 5  # accuracy, spikes, energy vs T, energy per image, raster


@pytest.mark.parametrize("args, message", [
    (["convert", "missing.th", "--calib", "digits", "--out", "x.h5"], "missing.th"),
    (["convert", "--calib", "digits", "--out", "x.h5"], "give a CIFAR ResNet checkpoint"),
    (["simulate", "missing.h5", "--data", "digits"], "missing.h5"),
    (["check", "missing.h5"], "missing.h5"),
    (["profile", "missing.h5", "--data", "digits"], "missing.h5"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    out = _bsnn(*args)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_convert_refuses_bad_data_and_leaves_no_file(digits_checkpoint, tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((3, 8, 8), dtype=np.float32), y=np.zeros(3, dtype=np.int64))
    out = _bsnn("convert", digits_checkpoint, "--factory", "bsnn_lava.demo:DigitsResNet", "--calib", bad,
                "--out", tmp_path / "n.h5")
    assert out.returncode == 2 and "field 'x' must be uint8" in out.stderr
    assert not (tmp_path / "n.h5").exists()


def test_convert_with_graded_spikes_and_loihi1_refusal(digits_checkpoint, tmp_path, capsys):
    out = tmp_path / "graded.h5"
    base = ["convert", str(digits_checkpoint), "--factory", "bsnn_lava.demo:DigitsResNet", "--calib", "digits:train",
            "--n-calib", "60", "--spikes", "graded", "--levels", "4"]
    assert main(base + ["--hw", "loihi2", "--out", str(out)]) == 0
    written = capsys.readouterr()
    assert "graded spikes up to 4" in written.out and "hint:" not in written.err  # graded already
    assert main(["inspect", str(out)]) == 0
    assert "graded<=4" in capsys.readouterr().out
    assert main(base + ["--hw", "loihi1", "--out", str(tmp_path / "l1.h5")]) == 2
    err = capsys.readouterr().err
    assert "graded spikes with payloads up to 4 need 3-bit spike messages; loihi1 has binary spikes only" in err
    assert "Traceback" not in err and not (tmp_path / "l1.h5").exists()
    assert main(base[:-2] + ["--out", str(tmp_path / "none.h5")]) == 2  # a ReLU model needs --levels
    assert "graded spikes need levels=L" in capsys.readouterr().err
