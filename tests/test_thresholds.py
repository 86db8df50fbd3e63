"""Threshold starts for fine-tuning: the least-squares threshold beats the percentile where few levels
quantize coarsely (quantization error and accuracy before training), and the module layering."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from bsnn_lava.datasets import load_digits_uint8
from bsnn_lava.demo import train_digits_model
from bsnn_lava.thresholds import (clip_floor_shift, least_squares_threshold, positive_percentile,
                                  quantization_error)
from bsnn_lava.training import ClipFloorShift, calibrate_thresholds, clip_floor_shift_model, clip_floor_shift_modules
from bsnn_lava.training.activation import THRESHOLD_INITS
from conftest import interrupted_finetune


@pytest.mark.parametrize("levels", [1, 2, 4])
def test_numpy_quantizer_is_the_clip_floor_shift_module(levels):
    x = np.random.default_rng(0).normal(0.3, 0.5, size=1000)
    module = ClipFloorShift(levels, torch.tensor(0.8))
    with torch.no_grad():
        expected = module(torch.as_tensor(x, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(clip_floor_shift(np.maximum(x, 0), 0.8, levels), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("levels", [1, 2, 4, 8])
def test_least_squares_threshold_has_the_least_quantization_error(levels):
    rng = np.random.default_rng(levels)
    acts = np.concatenate([rng.exponential(0.5, 20_000), np.zeros(5_000), -rng.exponential(1.0, 5_000)])
    theta = least_squares_threshold(acts, levels)
    best = quantization_error(acts, theta, levels)
    assert best <= quantization_error(acts, positive_percentile(acts, 99.9), levels)
    for other in np.linspace(0.05, acts.max(), 50):  # no threshold on a finer grid is much better
        assert best <= quantization_error(acts, other, levels) * 1.02
    assert least_squares_threshold(-acts[acts > 0], levels) == 1.0  # nothing positive: the converter's default



@pytest.mark.parametrize("n", [1, 7, 990, 1_000, 60_000, 150_000])
def test_the_blocked_search_is_the_search_one_candidate_at_a_time(n):
    """Every candidate at once (few activations), a few rows per call, or one at a time (many): the same
    threshold as the candidate-by-candidate search, to the bit."""
    from bsnn_lava.thresholds import GRID_FRACTIONS

    rng = np.random.default_rng(n)
    positive = np.round(rng.exponential(0.7, n), 2) + 0.01
    candidates = np.append(GRID_FRACTIONS * positive.max(), positive_percentile(positive, 99.9))
    errors = [np.mean((positive - clip_floor_shift(positive, theta, 2)) ** 2) for theta in candidates]
    assert least_squares_threshold(positive, 2) == candidates[int(np.argmin(errors))]

def test_least_squares_start_beats_the_percentile_before_training():
    """Digits ResNet, 2 levels: every layer's quantization error is at most the percentile start's,
    and the clip-floor-shift model's accuracy before any training is higher (measured: 95.2% vs 81.6%)."""
    x_train, y_train, x_test, y_test = load_digits_uint8()
    model = train_digits_model(x_train, y_train)
    calib = torch.as_tensor(x_train[:300], dtype=torch.float32).reshape(-1, 1, 8, 8) / 255
    test = torch.as_tensor(x_test, dtype=torch.float32).reshape(-1, 1, 8, 8) / 255
    errors, accuracy = {}, {}
    for init in THRESHOLD_INITS:
        cfs = clip_floor_shift_model(model, 2, (1, 8, 8))
        calibrate_thresholds(cfs, calib, init=init)
        inputs = {}
        hooks = [m.register_forward_hook(lambda m, a, o, name=name: inputs.__setitem__(name, a[0].numpy()))
                 for name, m in clip_floor_shift_modules(cfs)]
        with torch.no_grad():
            cfs.eval()(calib)
            for hook in hooks:
                hook.remove()
            accuracy[init] = float((cfs(test).argmax(1).numpy() == y_test).mean())
        errors[init] = {name: quantization_error(inputs[name], float(m.threshold.detach()), 2)
                        for name, m in clip_floor_shift_modules(cfs)}
    # the layers see the ReLU network's activations only up to the first quantized layer: compare that one
    first = next(iter(errors["percentile"]))
    assert errors["least-squares"][first] < errors["percentile"][first]
    assert accuracy["least-squares"] > accuracy["percentile"] + 0.05
    with pytest.raises(ValueError, match="init must be one of"):
        calibrate_thresholds(clip_floor_shift_model(model, 2, (1, 8, 8)), calib, init="median")


def test_the_finetuning_record_keeps_the_threshold_start():
    from bsnn_lava.training import finetune

    x_train, y_train, _, _ = load_digits_uint8()
    model = train_digits_model(x_train, y_train, epochs=1)
    tuned = finetune(model, x_train[:64], y_train[:64], window=2, epochs=1, augment=False, progress=False,
                     n_calibration=64, threshold_init="least-squares")
    assert tuned.finetune_record["threshold_init"] == "least-squares"
    with pytest.raises(ValueError, match="threshold_init must be one of"):
        finetune(model, x_train[:64], y_train[:64], window=2, epochs=1, progress=False, threshold_init="max")


def test_training_does_not_import_the_converter():
    """The percentile helper lives below both (bsnn_lava.thresholds): no import cycle."""
    code = ("import sys, torch, torch.nn as nn, bsnn_lava.training as t\n"
            "m = t.clip_floor_shift_model(nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)), 2, "
            "(1, 2, 2))\n"
            "t.calibrate_thresholds(m, torch.randn(8, 1, 2, 2))\n"
            "print('bsnn_lava.conversion' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr


def test_the_check_accuracy_is_recorded_and_a_collapse_is_named(capsys):
    """Every epoch's accuracy on the check images is in the record; a deliberately broken run (a
    learning rate far too high) ends with a one-line warning naming what to try; a sound run has none."""
    from bsnn_lava.training import finetune

    x_train, y_train, x_test, y_test = load_digits_uint8()
    model = train_digits_model(x_train, y_train, epochs=4)
    common = dict(window=2, epochs=2, batch_size=64, augment=False, n_calibration=100, n_check=200)
    sound = finetune(model, x_train[:400], y_train[:400], lr=0.01, progress=False, **common)
    record = sound.finetune_record
    with torch.no_grad():
        before = float((model.eval()(torch.as_tensor(x_train[:200], dtype=torch.float32).reshape(-1, 1, 8, 8) / 255)
                        .argmax(1).numpy() == y_train[:200]).mean())
    assert record["check"] == {"images": "the first 200 training images", "accuracy_before": before}
    assert [h["epoch"] for h in record["history"]] == [1, 2] and all(0 <= h["accuracy"] <= 1 for h in record["history"])
    assert record["warning"] is None
    broken = finetune(model, x_train[:400], y_train[:400], lr=50.0, progress=True,
                      validation=(x_test[:100], y_test[:100]), **common)
    warning = broken.finetune_record["warning"]
    assert warning.startswith("warning: fine-tuning ended at") and "100 validation images" in warning
    assert "more epochs" in warning and "--lr 25" in warning and "\n" not in warning
    assert warning in capsys.readouterr().err


def test_distillation_from_the_original_model_lowers_its_loss_and_resumes_exactly(tmp_path, monkeypatch):
    from bsnn_lava.training import finetune

    x_train, y_train, _, _ = load_digits_uint8()
    model = train_digits_model(x_train, y_train, epochs=4)
    kwargs = dict(window=2, epochs=3, batch_size=64, augment=False, progress=False, n_calibration=100,
                  teacher="original", distill_weight=1.0)
    tuned = finetune(model, x_train[:400], y_train[:400], checkpoint=tmp_path / "a.th", **kwargs)
    history = tuned.finetune_record["history"]
    assert tuned.finetune_record["distillation"] == {"teacher": "original", "weight": 1.0}
    assert history[-1]["loss"] < history[0]["loss"]  # the KL divergence to the teacher falls
    interrupted_finetune(monkeypatch, 2, lambda: finetune(model, x_train[:400], y_train[:400],
                                                          checkpoint=tmp_path / "b.th", **kwargs))
    resumed = finetune(model, x_train[:400], y_train[:400], checkpoint=tmp_path / "b.th", resume=True, **kwargs)
    for (name, a), b in zip(tuned.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert [h["loss"] for h in resumed.finetune_record["history"]] == [h["loss"] for h in history]
    # the ReLU model distilled from itself (the teacher in eval mode, so only BatchNorm's batch statistics
    # differ): a far smaller loss than its cross-entropy
    relu = dict(window=None, epochs=1, augment=False, progress=False)
    itself = finetune(model, x_train[:400], y_train[:400], teacher="original", **relu)
    plain = finetune(model, x_train[:400], y_train[:400], **relu)
    assert itself.finetune_record["history"][0]["loss"] < plain.finetune_record["history"][0]["loss"] / 2
    with pytest.raises(ValueError, match="teacher must be"):
        finetune(model, x_train[:64], y_train[:64], teacher="best", progress=False)


def test_cli_finetune_distils_checks_and_warns(tmp_path, capsys):
    from bsnn_lava.cli import main

    x_train, y_train, _, _ = load_digits_uint8()
    torch.save(train_digits_model(x_train, y_train, epochs=2).state_dict(), tmp_path / "digits.pt")
    relu = ["finetune", str(tmp_path / "digits.pt"), "--factory", "bsnn_lava.demo:DigitsResNet", "--data", "digits",
            "--limit", "300", "--epochs", "1", "--no-augment"]
    common = [*relu, "--window", "2"]
    assert main([*common, "--teacher", "original", "--distill-weight", "0.5", "--threshold-init", "least-squares",
                 "--threshold-lr", "0.0005", "--no-channelwise", "--validation", "digits:test", "--check", "100",
                 "--out", str(tmp_path / "ft.th")]) == 0
    record = torch.load(tmp_path / "ft.th", weights_only=True)["bsnn_finetune"]
    assert record["distillation"] == {"teacher": "original", "weight": 0.5}
    assert record["check"]["images"] == "100 validation images" and record["threshold_init"] == "least-squares"
    assert record["threshold_lr"] == 0.0005 and record["channelwise"] is False
    assert main([*common, "--threshold-lr", "-1", "--out", str(tmp_path / "bad.th")]) == 2
    assert "threshold_lr must be 0 or more" in capsys.readouterr().err and not (tmp_path / "bad.th").exists()
    assert main([*common, "--start-levels", "8", "--out", str(tmp_path / "bad.th")]) == 2
    assert "give at least 3 epochs, not 1" in capsys.readouterr().err and not (tmp_path / "bad.th").exists()
    assert main([*relu, "--relu", "--start-levels", "8", "--out", str(tmp_path / "bad.th")]) == 2
    assert "start_levels and relu_epochs are for a window fine-tune" in capsys.readouterr().err
    assert main([*common, "--relu-epochs", "1", "--out", str(tmp_path / "bad.th")]) == 2
    assert "relu_epochs must be an integer from 0 to epochs - 1 (0), got 1" in capsys.readouterr().err
    assert main([*common, "--lr", "40", "--out", str(tmp_path / "broken.th")]) == 0
    assert "warning: fine-tuning ended at" in capsys.readouterr().err
    assert torch.load(tmp_path / "broken.th", weights_only=True)["bsnn_finetune"]["warning"].startswith("warning:")
    assert main([*common, "--teacher", str(tmp_path / "missing.th"), "--out", str(tmp_path / "x.th")]) == 2
    assert "missing.th" in capsys.readouterr().err and not (tmp_path / "x.th").exists()
    # docs/guide.md's two steps: a ReLU fine-tune first, then the teacher of the window's fine-tune
    assert main([*relu, "--relu", "--out", str(tmp_path / "relu.th")]) == 0
    assert main([*common, "--teacher", str(tmp_path / "relu.th"), "--out", str(tmp_path / "kd.th")]) == 0
    distilled = torch.load(tmp_path / "kd.th", weights_only=True)["bsnn_finetune"]
    assert distilled["distillation"]["weight"] == 1.0 and distilled["distillation"]["teacher"] != "original"
    assert distilled["window"] == 2
    # or the ReLU fine-tune as the start: the window's fine-tune begins where the ReLU one ended
    assert main(["finetune", str(tmp_path / "relu.th"), *relu[2:], "--window", "2",
                 "--out", str(tmp_path / "i.th")]) == 0
    relu_record = torch.load(tmp_path / "relu.th", weights_only=True)["bsnn_finetune"]
    started = torch.load(tmp_path / "i.th", weights_only=True)["bsnn_finetune"]
    assert started["check"]["accuracy_before"] == relu_record["history"][-1]["accuracy"]
    assert started["check"]["accuracy_before"] != distilled["check"]["accuracy_before"]  # the original model
    # or both steps in one run
    assert main([*common, "--epochs", "2", "--relu-epochs", "1", "--relu-lr", "0.002", "--out",
                 str(tmp_path / "both.th")]) == 0
    both = torch.load(tmp_path / "both.th", weights_only=True)["bsnn_finetune"]
    assert both["relu_phase"]["history"][0]["loss"] == relu_record["history"][0]["loss"]  # the ReLU epoch above
    assert both["relu_epochs"] == 1 and len(both["history"]) == 1 and both["window"] == 2


def test_a_frame_reset_network_is_compared_with_its_frame():
    """What a frame-reset BSNN equals is its frame (the quantized ANN): the run's ANN accuracy and
    predictions are the frame's (reference and Lava), not the ReLU rates of the same weights."""
    from bsnn_lava.conversion import convert
    from bsnn_lava.lava.run import run_lava
    from bsnn_lava.quantize import quantize
    from bsnn_lava.sim import ann_forward, frame_forward, simulate
    from bsnn_lava.training import finetune

    x_train, y_train, x_test, y_test = load_digits_uint8()
    model = train_digits_model(x_train, y_train, epochs=2)
    tuned = finetune(model, x_train[:300], y_train[:300], window=2, epochs=1, augment=False, progress=False,
                     n_calibration=100)
    network = quantize(convert(tuned, x_train[:200]), "loihi2", calibration_images=x_train[:200])
    images = torch.as_tensor(x_test, dtype=torch.float64).reshape(-1, 1, 8, 8)
    frame = frame_forward(network, images)[0].argmax(1).numpy()
    rates = ann_forward(network, images)[0].argmax(1).numpy()
    assert (frame != rates).any()  # the two ANNs differ on this network: the test can tell them apart
    result = simulate(network, x_test, y_test, steps=network.latency_steps)
    assert result.extras["ann"] == "frame"
    np.testing.assert_array_equal(result.ann_predictions, frame)
    assert result.ann_accuracy == result.final_accuracy == float((frame == y_test).mean())  # exact from frame 1
    lava = run_lava(network, x_test[:5], y_test[:5], steps=network.latency_steps, progress=False)
    np.testing.assert_array_equal(lava.ann_predictions, frame[:5])
    assert lava.extras["ann"] == "frame"
    post = convert(model, x_train[:200])  # no frame reset: it approximates the rates
    run = simulate(post, x_test, y_test, steps=20)
    np.testing.assert_array_equal(run.ann_predictions, ann_forward(post, images)[0].argmax(1).numpy())
    assert run.extras["ann"] == "rates"
