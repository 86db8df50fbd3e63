"""What a new user hit on a fresh clone: every bad input is refused before any long work, in one line
naming the flag or file, with exit code 2; outputs are atomic and follow the umask; reports and the
JSON say what they mean. (The Ctrl-C / SIGTERM checks are in test_interrupts.py.)"""
import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import netx_export
from bsnn_lava.cli import main
from bsnn_lava.conversion import convert
from bsnn_lava.datasets import load_digits_uint8
from bsnn_lava.demo import DigitsResNet, train_digits_model
from bsnn_lava.quantize import quantize
from bsnn_lava.sim import simulate

pytestmark = pytest.mark.timeout(600)

BSNN_SCRIPT = Path(sys.executable).parent / "bsnn"


def bsnn(*args, cwd=None, script=False):
    """Run the command line in a subprocess; ``script=True`` through the installed ``bsnn`` console
    script (as users do), else ``python -m bsnn_lava.cli``."""
    command = [str(BSNN_SCRIPT)] if script else [sys.executable, "-m", "bsnn_lava.cli"]
    started = time.monotonic()
    out = subprocess.run([*command, *map(str, args)], capture_output=True, text=True, timeout=600, cwd=cwd)
    out.seconds = time.monotonic() - started
    return out


def assert_one_line_error(out, *fragments):
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    lines = out.stderr.strip().splitlines()
    assert lines and "Traceback" not in out.stderr, out.stderr
    assert all(fragment in lines[-1] for fragment in fragments), lines[-1]
    assert len([l for l in lines if "error" in l]) == 1, out.stderr


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """A trained digits model, its checkpoint, its quantized network file and data files."""
    folder = tmp_path_factory.mktemp("digits")
    x_train, y_train, x_test, y_test = load_digits_uint8()
    model = train_digits_model(x_train[:400], y_train[:400], epochs=2)
    torch.save(model.state_dict(), folder / "digits.pt")
    network = quantize(convert(model, x_train[:100], window=2), "loihi2")
    netx_export.write(network, folder / "digits.h5")
    np.savez(folder / "test.npz", x=x_test[:20], y=y_test[:20])
    return {"folder": folder, "model": model, "ckpt": folder / "digits.pt", "net": folder / "digits.h5",
            "network": network, "data": folder / "test.npz", "x": x_test[:20], "y": y_test[:20]}


# --- item 3: --limit below 1 -------------------------------------------------------------------------

@pytest.mark.parametrize("limit", ["0", "-3"])
def test_limit_below_one_is_refused(digits, limit):
    out = bsnn("simulate", digits["net"], "--data", "digits", "--limit", limit)
    assert_one_line_error(out, "--limit", "positive integer")
    assert out.stdout == ""


@pytest.mark.parametrize("flag", ["--batch-size", "--steps"])
def test_zero_counts_are_refused_with_the_flag_named(digits, flag):
    out = bsnn("simulate", digits["net"], "--data", "digits", flag, "0")
    assert_one_line_error(out, flag, "positive integer")


# --- item 4: outputs and profiles checked before the work --------------------------------------------

@pytest.mark.parametrize("command, flag", [("simulate", "--json"), ("profile", "--json"), ("profile", "--html")])
def test_missing_output_folder_is_refused_before_simulating(digits, tmp_path, command, flag):
    target = tmp_path / "nodir" / "r.out"
    out = bsnn(command, digits["net"], "--data", "digits", "--steps", "8", flag, target)
    assert_one_line_error(out, flag, f"folder {target.parent} does not exist")
    assert out.stdout == "" and "simulate (" not in out.stderr  # refused before the simulation started


def test_convert_output_folder_is_checked_before_calibrating(digits, tmp_path):
    target = tmp_path / "nodir" / "n.h5"
    out = bsnn("convert", digits["ckpt"], "--factory", "bsnn_lava.demo:DigitsResNet", "--calib", "digits:train",
               "--out", target)
    assert_one_line_error(out, "--out", f"folder {target.parent} does not exist")
    assert "calibrat" not in out.stderr


def test_convert_output_on_a_read_only_file_system_is_refused_first(digits):
    if os.access("/sys", os.W_OK) and not os.path.ismount("/sys"):
        pytest.skip("/sys is writable here")
    out = bsnn("convert", digits["ckpt"], "--factory", "bsnn_lava.demo:DigitsResNet", "--calib", "digits:train",
               "--out", "/sys/n.h5")
    assert_one_line_error(out, "--out /sys/n.h5: cannot write in folder /sys")
    assert "calibrat" not in out.stderr


@pytest.mark.parametrize("spec, message", [("loihi3", "loihi3: unknown profile"), ("bad.toml", "invalid TOML")])
def test_bad_profiles_are_refused_before_simulating(digits, tmp_path, spec, message):
    (tmp_path / "bad.toml").write_text("x = [\n")
    out = bsnn("profile", digits["net"], "--data", "digits", "--steps", "8", "--hw", spec, cwd=tmp_path)
    assert_one_line_error(out, "--hw", message)
    assert out.stdout == "" and "simulate (" not in out.stderr  # refused before the simulation started


def test_convert_hw_is_checked_before_calibrating(digits, tmp_path):
    out = bsnn("convert", digits["ckpt"], "--factory", "bsnn_lava.demo:DigitsResNet", "--calib", "digits:train",
               "--hw", "loihi3", "--out", tmp_path / "n.h5")
    assert_one_line_error(out, "--hw", "unknown profile")
    assert "calibrat" not in out.stderr


# --- item 5: labels -----------------------------------------------------------------------------------

def test_labels_out_of_range_are_refused(digits, tmp_path):
    np.savez(tmp_path / "shifted.npz", x=digits["x"], y=digits["y"] + 100)
    out = bsnn("simulate", digits["net"], "--data", tmp_path / "shifted.npz", "--steps", "8")
    assert_one_line_error(out, "--data", "class indices in [0, 10)", f"label 0 is {digits['y'][0] + 100}")
    assert out.stdout == ""


# --- item 6: the Loihi 2 refusal names a real backend -------------------------------------------------

def test_loihi2_refusal_names_the_lava_backend(digits):
    out = bsnn("simulate", digits["net"], "--data", "digits", "--steps", "8", "--limit", "1", "--backend", "loihi2")
    assert_one_line_error(out, "lava-loihi", "--backend lava")
    assert "backend 'cpu'" not in out.stderr


def test_lava_batches_give_the_reference_json_and_loihi2_refuses_them(digits, tmp_path):
    """`--backend lava --batch-size 2` on 5 images (batches of 2, 2, 1 + a blank) writes the JSON the
    reference simulator writes, timing aside; Loihi 2 takes no batches."""
    common = ["simulate", digits["net"], "--data", digits["data"], "--steps", "12", "--limit", "5"]
    for backend, batch in (("torch", "100"), ("lava", "2")):
        out = bsnn(*common, "--backend", backend, "--batch-size", batch, "--json", tmp_path / f"{backend}.json")
        assert out.returncode == 0, out.stderr[-2000:]
    torch_json, lava_json = (json.loads((tmp_path / f"{b}.json").read_text()) for b in ("torch", "lava"))
    for summary in (torch_json, lava_json):
        summary.pop("method")
    assert lava_json == torch_json
    out = bsnn(*common, "--backend", "loihi2", "--batch-size", "2")
    assert_one_line_error(out, "--batch-size 2", "--backend loihi2 runs one image at a time")


# --- item 7: --factory -------------------------------------------------------------------------------

TINYNETS = """
import torch.nn as nn


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(nn.functional.relu(self.conv(x)).flatten(1))


def build():
    return Tiny()
"""


@pytest.fixture
def tinynets(tmp_path):
    (tmp_path / "tinynets.py").write_text(TINYNETS)
    sys.path.insert(0, str(tmp_path))
    try:
        import tinynets
        torch.save(tinynets.build().state_dict(), tmp_path / "tiny.pt")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("tinynets", None)
    return tmp_path


def test_factory_module_in_the_current_folder_is_found(tinynets):
    out = bsnn("convert", "tiny.pt", "--factory", "tinynets:build", "--calib", "digits:train", "--n-calib", "20",
               "--out", "tiny.h5", cwd=tinynets, script=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tinynets / "tiny.h5").is_file()


def test_factory_checkpoint_that_does_not_fit_is_one_line(tinynets, digits):
    out = bsnn("convert", digits["ckpt"], "--factory", "tinynets:build", "--calib", "digits:train", "--out", "t.h5",
               cwd=tinynets, script=True)
    assert_one_line_error(out, str(digits["ckpt"]), "weights do not fit the model of tinynets:build", "missing",
                          "unexpected")
    assert len(out.stderr) < 600 and not (tinynets / "t.h5").exists()


def test_factory_without_checkpoint_needs_random_weights(tinynets):
    out = bsnn("convert", "--factory", "tinynets:build", "--calib", "digits:train", "--out", "t.h5", cwd=tinynets,
               script=True)
    assert_one_line_error(out, "--factory tinynets:build without a checkpoint", "--random-weights")
    out = bsnn("convert", "--factory", "tinynets:build", "--random-weights", "--calib", "digits:train", "--n-calib",
               "20", "--out", "t.h5", cwd=tinynets, script=True)
    assert out.returncode == 0, out.stderr[-2000:]


# --- item 8: messages a user can act on ---------------------------------------------------------------

def test_empty_npz_names_the_file(digits, tmp_path):
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 8, 8), dtype=np.uint8), y=np.zeros(0, dtype=np.int64))
    out = bsnn("simulate", digits["net"], "--data", tmp_path / "empty.npz")
    assert_one_line_error(out, "--data", str(tmp_path / "empty.npz"), "at least one image")


def test_text_file_named_npz_names_the_file(digits, tmp_path):
    (tmp_path / "text.npz").write_text("not numpy")
    out = bsnn("simulate", digits["net"], "--data", tmp_path / "text.npz")
    assert_one_line_error(out, str(tmp_path / "text.npz"), "not a NumPy .npz archive")


def test_mean_of_the_wrong_length_is_refused(tmp_path):
    from bsnn_lava import zoo

    torch.save(zoo.cifar_resnet(20).state_dict(), tmp_path / "r20.pt")
    x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "c.npz", x=x, y=np.arange(4))
    out = bsnn("convert", tmp_path / "r20.pt", "--calib", tmp_path / "c.npz", "--mean", "0.5", "0.5",
               "--out", tmp_path / "r.h5")
    assert_one_line_error(out, "mean has 2 values", "3 channel(s)")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this torch build has CUDA")
def test_cuda_device_on_a_cpu_build_is_bad_input(digits):
    out = bsnn("simulate", digits["net"], "--data", "digits", "--steps", "8", "--device", "cuda")
    assert_one_line_error(out, "--device", "'cuda' cannot be used here", "use 'cpu'")


@pytest.mark.parametrize("kind, message", [("random", "not a torch checkpoint"),
                                           ("module", "holds pickled Python objects (a whole model?)")])
def test_unusable_checkpoints_are_one_line(tmp_path, kind, message):
    path = tmp_path / "bad.th"
    if kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(2000))
    else:
        torch.save(DigitsResNet(), path)
    out = bsnn("convert", path, "--calib", "digits:train", "--out", tmp_path / "r.h5")
    assert_one_line_error(out, str(path), message)


def test_digits_network_on_cifar_images_says_what_fits(digits, tmp_path):
    np.savez(tmp_path / "cifar.npz", x=np.zeros((3, 32, 32, 3), dtype=np.uint8), y=np.arange(3))
    out = bsnn("simulate", digits["net"], "--data", tmp_path / "cifar.npz")
    assert_one_line_error(out, "--data", "(3, 32, 32, 3) do not fit the network's input (C, H, W) = (1, 8, 8)")


# --- item 10: progress ---------------------------------------------------------------------------------

def test_progress_moves_within_a_batch(digits):
    env = dict(os.environ, TQDM_MININTERVAL="0")  # tqdm draws every update
    out = subprocess.run([sys.executable, "-m", "bsnn_lava.cli", "simulate", str(digits["net"]), "--data",
                          str(digits["data"]), "--steps", "200", "--batch-size", "20"], capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    shown = [int(n) for n in re.findall(r"(\d+)/20 images", out.stderr)]
    assert any(0 < n < 20 for n in shown), f"no update inside the one batch: {shown}"
    assert "simulate (window path)" in out.stderr


def test_convert_says_which_stage_runs(digits, tmp_path):
    out = bsnn("convert", digits["ckpt"], "--factory", "bsnn_lava.demo:DigitsResNet", "--calib", "digits:train",
               "--n-calib", "60", "--hw", "loihi2", "--out", tmp_path / "n.h5")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "calibrating thresholds on 60 images" in out.stderr
    assert "quantizing for loihi2 (error-feedback rounding and bias correction on 60 images)" in out.stderr
    assert "quantize (error-feedback rounding)" in out.stderr  # the per-layer progress bar
    # a post-training binary conversion for a graded-spike chip recommends the measured alternative
    assert "hint: loihi2 carries graded spikes; without fine-tuning, --spikes graded --levels 16 --channelwise" \
        in out.stderr


# --- item 11: permissions follow the umask -----------------------------------------------------------

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_outputs_follow_the_umask(digits, tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        h5 = netx_export.write(digits["network"], tmp_path / "n.h5")
        assert main(["simulate", str(h5), "--data", str(digits["data"]), "--steps", "8",
                     "--json", str(tmp_path / "r.json")]) == 0
    finally:
        os.umask(previous)
    for path in (h5, tmp_path / "r.json"):
        assert stat.S_IMODE(path.stat().st_mode) == mode, (path.name, oct(path.stat().st_mode))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n.h5", "r.json"]  # no temporary files left


# --- item 12: the HTML report --------------------------------------------------------------------------

def test_html_report_says_what_it_shows(digits, tmp_path, capsys):
    page_path = tmp_path / "p.html"
    assert main(["profile", str(digits["net"]), "--data", str(digits["data"]), "--steps", "24", "--json",
                 str(tmp_path / "p.json"), "--html", str(page_path)]) == 0
    page = page_path.read_text()
    n_spiking = len(digits["network"].spiking_layers)
    assert f"the first 40 neurons of {min(n_spiking, 7)} of {n_spiking} spiking layers" in page
    energy_caption = page.split("<h2>Energy per inference vs T")[1].split("</h2>")[0]
    assert "uJ" in energy_caption and "nJ" not in energy_caption
    table = page.split("<h2>Profile</h2><pre>")[1].split("</pre>")[0]
    assert "synops out/inf" in table and "synaptic operations the layer&#x27;s spikes cause" in table
    readout_rows = [line for line in table.splitlines() if line.split()[:2] == ["readout", "readout"]]
    assert len(readout_rows) == 1
    assert "white-space:pre-wrap" in page
    profile = json.loads((tmp_path / "p.json").read_text())
    assert [layer["role"] for layer in profile["layers"]][-1] == "readout"


# --- item 13: per-image predictions in the JSON ------------------------------------------------------

def test_simulate_json_has_per_image_predictions(digits, tmp_path):
    steps = 40
    assert main(["simulate", str(digits["net"]), "--data", str(digits["data"]), "--steps", str(steps),
                 "--json", str(tmp_path / "r.json")]) == 0
    images = json.loads((tmp_path / "r.json").read_text())["images"]
    reference = simulate(digits["network"], digits["x"], digits["y"], steps=steps)
    assert images["index"] == list(range(20)) and images["label"] == digits["y"].tolist()
    assert images["prediction"] == reference.predictions.tolist()
    assert images["ann_prediction"] == reference.ann_predictions.tolist()
    per_step = reference.predictions_per_step
    for i, first in enumerate(images["final_from_step"]):
        assert np.all(per_step[first - 1:, i] == per_step[-1, i])
        assert first == 1 or per_step[first - 2, i] != per_step[-1, i]


# --- item 14: the demo says what it shows -------------------------------------------------------------

def test_demo_help_and_plot_styles():
    from bsnn_lava.plots import accuracy_figure

    out = bsnn("demo", "--help")
    assert "a few seconds" not in out.stdout and "20-60 s" in out.stdout
    curve = np.linspace(0, 1, 20)
    fig = accuracy_figure({"float": curve, "fixed point": curve, "IF": curve}, 0.9)
    lines = fig.axes[0].lines[:3]
    assert len({(line.get_linestyle(), line.get_linewidth()) for line in lines}) == 3


def test_demo_explains_the_pipeline_fill():
    from bsnn_lava.demo import pipeline_note

    bsnn_net = convert(DigitsResNet(), np.zeros((2, 8, 8), dtype=np.uint8), window=2)
    if_net = convert(DigitsResNet(), np.zeros((2, 8, 8), dtype=np.uint8), neuron="if")
    note = pipeline_note(bsnn_net, if_net, 2, 37, 16)
    assert f"after {bsnn_net.readout.schedule.offset_steps} steps" in note and "lets IF come within a point first" in note
    assert "IF come within" not in pipeline_note(bsnn_net, if_net, 2, 30, 40)
