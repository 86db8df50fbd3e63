"""Window-aware fine-tuning and exact conversion: a clip-floor-shift model converts into a BSNN whose
every complete frame equals the model (float: to rounding; integer: exactly its integer frame)."""
import numpy as np
import pytest
import torch
import torch.nn as nn

import netx_export
from bsnn_lava import zoo
from bsnn_lava.conversion import convert
from bsnn_lava.data import as_nchw
from bsnn_lava.datasets import load_digits_uint8
from bsnn_lava.demo import train_digits_model
from bsnn_lava.quantize import quantize
from bsnn_lava.sim import frame_forward, simulate
from bsnn_lava.training import (ClipFloorShift, calibrate_thresholds, clip_floor_shift_model,
                                clip_floor_shift_modules, finetune, save_checkpoint)
from conftest import OptionAResNet, SmallVGG, TVStyleResNet, interrupted_finetune, normalized, randomize_batchnorm

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.3, 0.2)


def test_clip_floor_shift_values_and_straight_through_gradients():
    act = ClipFloorShift(4, 2.0)
    x = torch.tensor([-1.0, 0.0, 0.24, 0.26, 0.74, 0.76, 1.9, 2.0, 5.0], requires_grad=True)
    y = act(x)
    expected = 2.0 / 4 * np.clip(np.floor(x.detach().numpy() * 4 / 2.0 + 0.5), 0, 4)
    np.testing.assert_allclose(y.detach().numpy(), expected)
    y.sum().backward()
    # gradient 1 where the clip is inactive, 0 where it clips; the threshold learns
    np.testing.assert_array_equal(x.grad.numpy(), [0, 1, 1, 1, 1, 1, 1, 1, 0])
    assert act.threshold.grad is not None and float(act.threshold.grad) != 0
    per_channel = ClipFloorShift(2, torch.tensor([1.0, 4.0]))
    out = per_channel(torch.full((1, 2, 3, 3), 1.0))
    np.testing.assert_allclose(out[0, :, 0, 0].detach().numpy(), [1.0, 2.0])  # floor(2.5)=2 -> 1; floor(1)=1 -> 2
    with pytest.raises(ValueError, match="levels must be a positive integer"):
        ClipFloorShift(0, 1.0)


def test_rewrite_replaces_every_relu_call_once_per_use():
    model = randomize_batchnorm(TVStyleResNet())  # one nn.ReLU module used twice per block
    rewritten = clip_floor_shift_model(model, 3, (3, 16, 16), channelwise=True)
    names = [name for name, _ in clip_floor_shift_modules(rewritten)]
    assert len(names) == 5 and len(set(names)) == 5  # stem + 2 blocks x 2 uses of the shared ReLU
    assert not any(isinstance(m, nn.ReLU) for m in rewritten.modules())
    assert [n for n, _ in clip_floor_shift_modules(clip_floor_shift_model(model, 3, (3, 16, 16)))] == names
    assert all(m.threshold.shape == (m.threshold.shape[0],) for _, m in clip_floor_shift_modules(rewritten))
    functional = clip_floor_shift_model(randomize_batchnorm(OptionAResNet()), 2, (3, 16, 16))
    assert len(clip_floor_shift_modules(functional)) == 5  # F.relu calls, residual ones included
    assert any(isinstance(m, nn.ReLU) for m in model.modules())  # the original is untouched


def _cfs_model(model_cls, window, x, channelwise=False):
    model = clip_floor_shift_model(randomize_batchnorm(model_cls()), window, (3, 16, 16), channelwise).double()
    calibrate_thresholds(model, normalized(x, MEAN, STD))
    return model


@pytest.mark.parametrize("model_cls, window, channelwise", [(OptionAResNet, 2, False), (TVStyleResNet, 4, True),
                                                            (SmallVGG, 3, False)])
def test_every_complete_frame_equals_the_clip_floor_shift_model(model_cls, window, channelwise, images):
    x, y = images
    model = _cfs_model(model_cls, window, x, channelwise)
    network = convert(model, x, mean=MEAN, std=STD)
    assert network.window_steps == window and network.frame_reset
    with torch.no_grad():
        logits = model(normalized(x, MEAN, STD))
    readout, _ = frame_forward(network, torch.as_tensor(x).permute(0, 3, 1, 2))
    torch.testing.assert_close(readout, window * logits, rtol=1e-9, atol=1e-9)
    frames = network.complete_frames(network.readout.schedule.offset_steps + 7 * window)
    assert len(frames) == 4
    for method in ("window", "step"):
        result = simulate(network, x, y, steps=frames[-1], method=method, dtype=torch.float64, frames="all")
        at_frames = result.predictions_per_step[[t - 1 for t in frames]]
        np.testing.assert_array_equal(at_frames, np.broadcast_to(logits.argmax(1).numpy(), at_frames.shape))
    # without frame reset the second frame carries the first one's residue and may differ; the first never does
    drifting = simulate(convert(model, x, mean=MEAN, std=STD, frame_reset=False), x, y, steps=frames[0],
                        dtype=torch.float64)
    np.testing.assert_array_equal(drifting.predictions_per_step[frames[0] - 1], logits.argmax(1).numpy())


@pytest.mark.parametrize("model_cls", [OptionAResNet, TVStyleResNet])
def test_integer_network_equals_its_integer_frame_at_every_frame(model_cls, images):
    x, y = images
    float_net = convert(_cfs_model(model_cls, 2, x), x, mean=MEAN, std=STD)
    network = quantize(float_net, "loihi2", calibration_images=x)
    readout, _ = frame_forward(network, torch.as_tensor(x).permute(0, 3, 1, 2))
    assert torch.equal(readout, readout.round())
    frames = network.complete_frames(network.readout.schedule.offset_steps + 6 * 2)
    result = simulate(network, x, y, steps=frames[-1], method="step", record=True, frames="all")
    for k, t in enumerate(frames):  # the readout after frame k + 1 is k + 1 times one frame, exactly
        np.testing.assert_array_equal(result.extras["readout_v"][t - 1], (k + 1) * readout.numpy())
    fast = simulate(network, x, y, steps=frames[-1], frames="all")
    np.testing.assert_array_equal(fast.predictions_per_step, result.predictions_per_step)
    np.testing.assert_array_equal(fast.n_spikes_per_step, result.n_spikes_per_step)


def test_resnet20_first_frames_equal_its_clip_floor_shift_model_on_100_images():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(100, 32, 32, 3), dtype=np.uint8)
    mean, std = zoo.CIFAR_RESNET_MEAN, zoo.CIFAR_RESNET_STD
    model = clip_floor_shift_model(randomize_batchnorm(zoo.cifar_resnet(20)), 4, (3, 32, 32)).double()
    calibrate_thresholds(model, normalized(x[:50], mean, std))
    network = convert(model, x[:50], mean=mean, std=std)
    with torch.no_grad():
        logits = model(normalized(x, mean, std))
    frames = network.complete_frames(network.readout.schedule.offset_steps + 4 + 8 * 2)
    assert frames[0] == 100
    result = simulate(network, x, steps=frames[-1], dtype=torch.float64, frames="all")
    at_frames = result.predictions_per_step[[t - 1 for t in frames]]
    np.testing.assert_array_equal(at_frames, np.broadcast_to(logits.argmax(1).numpy(), at_frames.shape))
    readout, _ = frame_forward(network, torch.as_tensor(x).permute(0, 3, 1, 2))
    torch.testing.assert_close(readout, 4 * logits, rtol=1e-9, atol=1e-9)


def test_one_frame_network_stops_after_its_frame(images, tmp_path):
    x, y = images
    model = _cfs_model(OptionAResNet, 2, x)
    continuous = convert(model, x, mean=MEAN, std=STD)
    once = convert(model, x, mean=MEAN, std=STD, frames=1)
    steps = continuous.complete_frames(10 ** 4)[2]
    a = simulate(continuous, x, y, steps=steps, dtype=torch.float64, frames="all")
    b = simulate(once, x, y, steps=steps, dtype=torch.float64, method="step")
    c = simulate(once, x, y, steps=steps, dtype=torch.float64)
    by_default = simulate(continuous, x, y, steps=steps, dtype=torch.float64)  # a run stops it after one frame
    np.testing.assert_array_equal(by_default.n_spikes_per_step, c.n_spikes_per_step)
    np.testing.assert_array_equal(by_default.predictions_per_step, c.predictions_per_step)
    np.testing.assert_array_equal(simulate(once, x, y, steps=steps, dtype=torch.float64, frames=2).n_spikes_per_step,
                                  simulate(continuous, x, y, steps=steps, dtype=torch.float64,
                                           frames=2).n_spikes_per_step)
    first = continuous.complete_frames(steps)[0]
    np.testing.assert_array_equal(b.predictions_per_step[first - 1:], np.broadcast_to(
        a.predictions_per_step[first - 1], b.predictions_per_step[first - 1:].shape))
    np.testing.assert_array_equal(c.n_spikes_per_step, b.n_spikes_per_step)
    assert b.n_spikes_per_step[first:].sum() == 0 < b.n_spikes_per_step.sum() < a.n_spikes_per_step.sum()
    assert list(once.complete_frames(steps)) == [first]
    assert netx_export.read(netx_export.write(once, tmp_path / "once.h5")).input.schedule.frames == 1


def test_convert_refuses_what_breaks_exactness(images):
    x, _ = images
    model = _cfs_model(OptionAResNet, 2, x)
    with pytest.raises(ValueError, match="fine-tuned for a window of 2 steps.*not 4"):
        convert(model, x, window=4)
    with pytest.raises(ValueError, match="only with v_init=0.5"):
        convert(model, x, v_init=0.0)
    with pytest.raises(ValueError, match="frame_reset needs bistable"):
        convert(model, x, neuron="if", frame_reset=True)
    with pytest.raises(ValueError, match="frames must be a positive integer"):
        convert(model, x, neuron="warmup", frames=1)
    # IF neurons on the fine-tuned network (the QCFS baseline): allowed, thresholds learned, no frame reset
    qcfs = convert(model, x, neuron="if")
    assert qcfs.mode == "if" and not qcfs.frame_reset
    theta = [float(m.threshold.detach()) for _, m in clip_floor_shift_modules(model)]
    assert [float(layer.threshold) for layer in qcfs.spiking_layers if layer.role == "neuron"] == theta


def _digits():
    x_train, y_train, x_test, y_test = load_digits_uint8()
    return x_train[:400], y_train[:400], x_test[:100], y_test[:100]


def test_finetune_trains_thresholds_and_resumes_exactly(tmp_path, monkeypatch):
    x, y, _, _ = _digits()
    base = train_digits_model(x, y, epochs=1)
    kwargs = dict(window=2, epochs=3, batch_size=64, augment=False, progress=False, n_calibration=100,
                  channelwise=False)
    straight = finetune(base, x, y, checkpoint=tmp_path / "straight.th", **kwargs)
    history = straight.finetune_record["history"]
    assert len(history) == 3 and history[-1]["loss"] < history[0]["loss"]
    start = clip_floor_shift_model(base, 2, (1, 8, 8))
    calibrate_thresholds(start, as_nchw(x[:100], 1).float() / 255)
    learned = [float(m.threshold.detach()) for _, m in clip_floor_shift_modules(straight)]
    assert learned != [float(m.threshold.detach()) for _, m in clip_floor_shift_modules(start)]

    interrupted_finetune(monkeypatch, 2, lambda: finetune(base, x, y, checkpoint=tmp_path / "resumed.th", **kwargs))
    resumed = finetune(base, x, y, checkpoint=tmp_path / "resumed.th", resume=True, **kwargs)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert not list(tmp_path.glob(".*tmp"))


def _assert_thresholds_at_least_squares_start(tuned, base, levels, x):
    """``tuned``'s thresholds equal the least-squares channel-wise start at ``levels`` on ``x[:100]``."""
    start = clip_floor_shift_model(base, levels, (1, 8, 8), channelwise=True)
    calibrate_thresholds(start, as_nchw(x[:100], 1).float() / 255, init="least-squares")
    for (name, a), (_, b) in zip(clip_floor_shift_modules(tuned), clip_floor_shift_modules(start)):
        assert torch.equal(a.threshold.detach(), b.threshold.detach()), name
    return start


def test_threshold_learning_rate_zero_keeps_the_least_squares_start():
    x, y, _, _ = _digits()
    base = train_digits_model(x, y, epochs=1)
    frozen = finetune(base, x, y, window=2, epochs=1, batch_size=64, augment=False, progress=False,
                      n_calibration=100, threshold_lr=0.0)
    start = _assert_thresholds_at_least_squares_start(frozen, base, 2, x)  # channel-wise: the default
    weights = [n for n, p in start.named_parameters() if p.ndim > 1]
    assert any(not torch.equal(frozen.get_parameter(n), start.get_parameter(n)) for n in weights)
    assert frozen.finetune_record["threshold_lr"] == 0.0 and frozen.finetune_record["lr"] == 0.002
    assert frozen.finetune_record["channelwise"]  # the default: one threshold per channel
    assert all(m.threshold.ndim == 1 for _, m in clip_floor_shift_modules(frozen))


def test_progressive_levels_halve_to_the_window_and_resume_exactly(tmp_path, monkeypatch):
    x, y, _, _ = _digits()
    base = train_digits_model(x, y, epochs=1)
    kwargs = dict(window=2, epochs=3, batch_size=64, augment=False, progress=False, n_calibration=100, start_levels=8)
    straight = finetune(base, x, y, checkpoint=tmp_path / "straight.th", **kwargs)
    assert straight.finetune_record["level_schedule"] == [8, 4, 2]
    assert {m.levels for _, m in clip_floor_shift_modules(straight)} == {2}
    frozen = finetune(base, x, y, **dict(kwargs, threshold_lr=0.0))
    _assert_thresholds_at_least_squares_start(frozen, base, 8, x)  # the choice for 8 levels, not 2
    interrupted_finetune(monkeypatch, 2, lambda: finetune(base, x, y, checkpoint=tmp_path / "resumed.th", **kwargs))
    resumed = finetune(base, x, y, checkpoint=tmp_path / "resumed.th", resume=True, **kwargs)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="give at least 3 epochs"):
        finetune(base, x, y, **dict(kwargs, epochs=2))
    with pytest.raises(ValueError, match="times a power of 2"):
        finetune(base, x, y, **dict(kwargs, start_levels=6))


def test_a_relu_step_first_equals_two_calls_and_resumes_exactly(tmp_path, monkeypatch):
    x, y, _, _ = _digits()
    base = train_digits_model(x, y, epochs=1)
    common = dict(batch_size=64, augment=False, progress=False, n_calibration=100)
    kwargs = dict(common, window=2, epochs=4, relu_epochs=2, relu_lr=0.01)
    one_call = finetune(base, x, y, checkpoint=tmp_path / "one.th", **kwargs)
    separate = finetune(finetune(base, x, y, window=None, epochs=2, lr=0.01, **common), x, y, window=2, epochs=2,
                        **common)
    for (name, a), b in zip(one_call.state_dict().items(), separate.state_dict().values()):
        assert torch.equal(a, b), name
    record = torch.load(tmp_path / "one.th", weights_only=True)["bsnn_finetune"]
    assert record["relu_epochs"] == 2 and len(record["history"]) == 2 and record["relu_phase"]["window"] is None
    assert [h["loss"] for h in record["relu_phase"]["history"]] == [
        h["loss"] for h in one_call.finetune_record["relu_phase"]["history"]]
    for after in (1, 2, 3):  # in the ReLU step, right after it, in the window's step
        path = tmp_path / f"after{after}.th"
        interrupted_finetune(monkeypatch, after, lambda: finetune(base, x, y, checkpoint=path, **kwargs))
        resumed = finetune(base, x, y, checkpoint=path, resume=True, **kwargs)
        for (name, a), b in zip(one_call.state_dict().items(), resumed.state_dict().values()):
            assert torch.equal(a, b), (after, name)
        assert len(resumed.finetune_record["relu_phase"]["history"]) == 2
    with pytest.raises(ValueError, match="trained with relu_epochs 2, not 0"):
        finetune(base, x, y, checkpoint=tmp_path / "one.th", resume=True, **dict(kwargs, relu_epochs=0))
    with pytest.raises(ValueError, match="relu_epochs must be an integer from 0 to epochs - 1"):
        finetune(base, x, y, **dict(kwargs, relu_epochs=4))
    with pytest.raises(ValueError, match="are for a window fine-tune"):
        finetune(base, x, y, **dict(kwargs, window=None))


def test_a_relu_fine_tune_resumes_whatever_channelwise_says(tmp_path):
    x, y, _, _ = _digits()
    base = train_digits_model(x, y, epochs=1)
    kwargs = dict(window=None, batch_size=64, augment=False, progress=False, checkpoint=tmp_path / "relu.th")
    finetune(base, x, y, epochs=1, channelwise=False, **kwargs)
    resumed = finetune(base, x, y, epochs=2, resume=True, **kwargs)  # channelwise=True: no thresholds to differ
    assert len(resumed.finetune_record["history"]) == 2


def test_finetuned_checkpoint_loads_and_converts(tmp_path):
    model = clip_floor_shift_model(randomize_batchnorm(zoo.cifar_resnet(20)), 4, (3, 32, 32))
    for i, (_, m) in enumerate(clip_floor_shift_modules(model)):
        m.threshold.data.fill_(0.5 + 0.1 * i)
    record = {"window": 4, "channelwise": False, "input_shape": [3, 32, 32], "history": []}
    path = save_checkpoint(tmp_path / "ft.th", model, record)
    loaded = zoo.load_checkpoint(path)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(x), model.eval()(x))
    relu_path = save_checkpoint(tmp_path / "relu.th", zoo.cifar_resnet(20), {"window": None, "history": []})
    assert isinstance(zoo.load_checkpoint(relu_path), zoo.CifarResNet)


def test_finetune_rejects_bad_arguments():
    x, y, _, _ = _digits()
    base = train_digits_model(x[:50], y[:50], epochs=1)
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        finetune(base, x, y, epochs=0)
    with pytest.raises(ValueError, match="window must be a positive integer"):
        finetune(base, x, y, window=0)
    with pytest.raises(ValueError, match="threshold_lr must be 0 or more"):
        finetune(base, x, y, threshold_lr=-0.1)
    with pytest.raises(ValueError, match="400 images but labels of shape"):
        finetune(base, x, y[:5], epochs=1)
    with pytest.raises(ValueError, match="checkpoint .*does not exist"):
        finetune(base, x, y, epochs=1, checkpoint="/no/such/folder/ft.th")


def test_finetune_holds_uint8_images_as_uint8():
    """Training images stay uint8 (a quarter of float32's memory; batches are made float as they are
    drawn, the validation images a batch at a time)."""
    from bsnn_lava.training.trainer import check_training_data

    x, y, _, _ = _digits()
    base = train_digits_model(x[:50], y[:50], epochs=1)
    images, labels = check_training_data(base, x, y)
    assert images.dtype == torch.uint8 and torch.equal(images, torch.as_tensor(x)) and labels.dtype == np.int64


def test_cli_finetune_convert_simulate(tmp_path):
    """bsnn finetune -> bsnn convert (learned thresholds, frame reset, one frame) -> bsnn simulate, and
    the refusals: a window the checkpoint was not tuned for, data that does not fit, a bad --resume."""
    from test_cli_faults import assert_one_line_error, bsnn

    (tmp_path / "tinynet.py").write_text(
        "import torch.nn as nn\n"
        "def build():\n"
        "    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AvgPool2d(2),\n"
        "                         nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))\n")
    common = ["--factory", "tinynet:build"]
    out = bsnn("finetune", *common, "--random-weights", "--data", "digits", "--limit", "300", "--window", "2",
               "--epochs", "2", "--no-augment", "--out", "ft.th", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    record = torch.load(tmp_path / "ft.th", weights_only=True)["bsnn_finetune"]
    assert record["window"] == 2 and len(record["history"]) == 2
    out = bsnn("convert", "ft.th", *common, "--calib", "digits", "--hw", "loihi2", "--frames", "1", "--out", "ft.h5",
               cwd=tmp_path)
    assert out.returncode == 0 and "frame reset" in out.stdout and "stops after 1 frame" in out.stdout, out.stderr
    network = netx_export.read(tmp_path / "ft.h5")
    assert network.frame_reset and network.window_steps == 2 and network.provenance["calibration"]["learned_thresholds"] == 2
    out = bsnn("simulate", "ft.h5", "--data", "digits", "--limit", "20", "--steps", "20", "--json", "r.json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert_one_line_error(bsnn("convert", "ft.th", *common, "--calib", "digits", "--window", "3", "--out", "x.h5",
                               cwd=tmp_path), "fine-tuned for a window of 2 steps")
    np.savez(tmp_path / "rgb.npz", x=np.zeros((4, 8, 8, 3), np.uint8), y=np.zeros(4, np.int64))
    assert_one_line_error(bsnn("finetune", "ft.th", *common, "--data", "rgb.npz", "--out", "y.th", cwd=tmp_path),
                          "--data rgb.npz")
    assert_one_line_error(bsnn("finetune", *common, "--random-weights", "--data", "digits", "--window", "3",
                               "--resume", "--out", "ft.th", cwd=tmp_path), "was trained with window 2, not 3")
    assert_one_line_error(bsnn("finetune", *common, "--random-weights", "--data", "digits", "--window", "2",
                               "--no-channelwise", "--resume", "--out", "ft.th", cwd=tmp_path),
                          "was trained with channelwise True, not False")
    assert not (tmp_path / "x.h5").exists() and not (tmp_path / "y.th").exists()


def test_digits_network_equals_its_fine_tuned_model_at_every_frame():
    x, y, x_test, y_test = _digits()
    # layer-wise: at lr 0.05 on 400 digits the per-channel thresholds train to 33% (the coverage tests
    # check channel-wise exactness)
    model = finetune(train_digits_model(x, y, epochs=2), x, y, window=2, epochs=2, batch_size=64, lr=0.05,
                     augment=False, progress=False, n_calibration=100, channelwise=False).double()
    network = convert(model, x[:100])
    with torch.no_grad():
        logits = model(as_nchw(x_test, 1).double() / 255)
    frames = network.complete_frames(network.readout.schedule.offset_steps + 2 + 4 * 4)
    result = simulate(network, x_test, y_test, steps=frames[-1], dtype=torch.float64, frames="all")
    at_frames = result.predictions_per_step[[t - 1 for t in frames]]
    np.testing.assert_array_equal(at_frames, np.broadcast_to(logits.argmax(1).numpy(), at_frames.shape))
    assert result.accuracy[frames[0] - 1] == (logits.argmax(1).numpy() == y_test).mean() > 0.5
