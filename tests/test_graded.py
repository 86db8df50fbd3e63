"""Graded spikes (Loihi 2): one spike per window carries the window's count; exact conversion of a
fine-tuned model, the integer network, the file format, the hardware checks and the profiler."""
import dataclasses

import h5py
import numpy as np
import pytest
import torch

import netx_export
from bsnn_lava.conversion import convert
from bsnn_lava.dynamics import gated_if_step, window_payload, window_spike_count
from bsnn_lava.profile import profile_run
from bsnn_lava.quantize import quantize
from bsnn_lava.resources import check_resources
from bsnn_lava.sim import frame_forward, simulate
from bsnn_lava.training import calibrate_thresholds, clip_floor_shift_model
from hw_profiles import load_profile
from conftest import OptionAResNet, SmallVGG, TVStyleResNet, normalized, randomize_batchnorm

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.3, 0.2)


def _cfs_model(model_cls, levels, x):
    model = clip_floor_shift_model(randomize_batchnorm(model_cls()), levels, (3, 16, 16)).double()
    calibrate_thresholds(model, normalized(x, MEAN, STD))
    return model


@pytest.mark.parametrize("xp", [np, torch])
@pytest.mark.parametrize("window, payload_max", [(1, 4), (3, 2), (2, 1)])
def test_fire_steps_send_what_the_window_count_says(xp, window, payload_max):
    """Repeated fire-only steps send window_payload(count, j) on step j and leave the residual of
    window_spike_count; binary spikes are the payload_max=1 case."""
    threshold = 3
    v0 = np.array([-4, 0, 2, 3, 7, 11, 29, 100])
    v = xp.asarray(v0) if xp is np else torch.tensor(v0)
    count, residual = window_spike_count(v, threshold, window * payload_max)
    for j in range(window):
        spikes, v, _, _ = gated_if_step(v, None, 0, threshold, False, True, payload_max=payload_max)
        np.testing.assert_array_equal(np.asarray(spikes, dtype=np.int64),
                                      np.asarray(window_payload(count, j, payload_max)))
        assert (spikes.dtype == (torch.bool if xp is torch else np.bool_)) == (payload_max == 1)
    np.testing.assert_array_equal(np.asarray(v), np.asarray(residual))


@pytest.mark.parametrize("model_cls, levels", [(OptionAResNet, 4), (TVStyleResNet, 3), (SmallVGG, 8)])
def test_every_graded_frame_equals_the_clip_floor_shift_model(model_cls, levels, images):
    """Option-A and option-B shortcuts and a VGG: the readout after one frame is the model's logits
    (one step per window: no factor P), the prediction at every complete frame is the model's, and
    a frame costs 2 steps per layer."""
    x, y = images
    model = _cfs_model(model_cls, levels, x)
    network = convert(model, x, mean=MEAN, std=STD, spikes="graded")
    binary = convert(model, x, mean=MEAN, std=STD)
    assert network.spikes == "graded" and network.window_steps == 1 and network.frame_reset
    assert all(layer.payload_max == levels for layer in network.spiking_layers)
    depth = (binary.readout.schedule.offset_steps + levels) // (levels + 1)  # layers the signal crosses
    assert network.complete_frames(10 ** 4)[0] == 2 * depth
    with torch.no_grad():
        logits = model(normalized(x, MEAN, STD))
    readout, _ = frame_forward(network, torch.as_tensor(x).permute(0, 3, 1, 2))
    torch.testing.assert_close(readout, logits, rtol=1e-9, atol=1e-9)
    frames = network.complete_frames(10 ** 4)[:4]
    for method in ("window", "step"):
        result = simulate(network, x, y, steps=frames[-1], method=method, dtype=torch.float64, frames="all")
        at_frames = result.predictions_per_step[[t - 1 for t in frames]]
        np.testing.assert_array_equal(at_frames, np.broadcast_to(logits.argmax(1).numpy(), at_frames.shape))


def test_graded_integer_network_equals_its_integer_frame(images):
    x, y = images
    network = quantize(convert(_cfs_model(TVStyleResNet, 4, x), x, mean=MEAN, std=STD, spikes="graded"), "loihi2",
                       calibration_images=x)
    readout, _ = frame_forward(network, torch.as_tensor(x).permute(0, 3, 1, 2))
    frames = network.complete_frames(10 ** 4)[:3]
    step = simulate(network, x, y, steps=frames[-1], method="step", record=True, frames="all")
    for k, t in enumerate(frames):
        np.testing.assert_array_equal(step.extras["readout_v"][t - 1], (k + 1) * readout.numpy())
    window = simulate(network, x, y, steps=frames[-1], frames="all")
    for field in ("predictions_per_step", "n_spikes_per_step", "n_synops_per_step"):
        np.testing.assert_array_equal(getattr(window, field), getattr(step, field))
    for name, counts in step.n_spikes_per_neuron.items():  # events, one per nonzero payload
        np.testing.assert_array_equal(window.n_spikes_per_neuron[name], counts)
        np.testing.assert_array_equal(counts, (step.extras["spikes"][name] != 0).sum(axis=(0, 1)))
    assert max(int(r.max()) for r in step.extras["spikes"].values()) > 1


def test_graded_synaptic_operations_are_counted_and_priced_apart(images):
    x, y = images
    network = convert(_cfs_model(OptionAResNet, 4, x), x, mean=MEAN, std=STD, spikes="graded")
    result = simulate(network, x, y, steps=network.complete_frames(10 ** 4)[0])
    hw = load_profile("loihi2")
    base = profile_run(network, result, hw)
    assert base.synops_graded == pytest.approx(base.synops)  # pixels and graded layers: every event is graded
    assert "graded_synop_energy_pj" in base.energy_sources["estimates"]
    dearer = profile_run(network, result, dataclasses.replace(hw, graded_synop_energy_pj=2 * hw.synop_energy_pj))
    assert dearer.energy_nj["synops"] - base.energy_nj["synops"] == pytest.approx(
        base.synops_graded * hw.synop_energy_pj / 1e3)
    binary = convert(_cfs_model(OptionAResNet, 4, x), x, mean=MEAN, std=STD)
    b = profile_run(binary, simulate(binary, x, y, steps=binary.complete_frames(10 ** 4)[0]), hw)
    assert b.synops_graded == pytest.approx(b.synops_by_kind["input"])  # only the pixels are graded
    assert b.synops_graded < b.synops


def test_convert_refuses_graded_settings_that_cannot_work(images):
    x, _ = images
    model = _cfs_model(OptionAResNet, 4, x)
    plain = randomize_batchnorm(OptionAResNet())
    cases = [
        (lambda: convert(model, x, spikes="graded", levels=8), "fine-tuned for 4 levels.*not 8"),
        (lambda: convert(model, x, spikes="graded", window=2), "window is 1 step"),
        (lambda: convert(plain, x, spikes="graded", neuron="if", levels=4), "need bistable neurons"),
        (lambda: convert(plain, x, spikes="graded"), "need levels=L"),
        (lambda: convert(plain, x, levels=4), "levels=4 is for graded spikes"),
        (lambda: convert(plain, x, spikes="spiky"), "spikes must be 'binary' or 'graded'"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


def test_loihi1_refuses_graded_layers_by_name(images):
    x, _ = images
    network = convert(randomize_batchnorm(OptionAResNet()), x, spikes="graded", levels=4)
    first = network.spiking_layers[0].name
    with pytest.raises(ValueError, match=f"layer '{first}': graded spikes with payloads up to 4 need 3-bit.*loihi1 "
                                         "has binary spikes only"):
        quantize(network, "loihi1")
    report = check_resources(quantize(network, "loihi2"), "loihi1")
    graded = [v for v in report.violations if "graded spikes with payloads" in v]
    assert len(graded) == len(network.spiking_layers) and not report.fits
    fits = check_resources(quantize(network, "loihi2"), "loihi2")
    assert not [v for v in fits.violations if "payload" in v]
    assert f"graded spikes in {len(network.spiking_layers)} layers: payloads up to 4 need 3-bit messages; loihi2 " \
           "carries 24" in fits.notes


def test_graded_network_round_trips_and_older_files_read_as_binary(images, tmp_path):
    x, _ = images
    network = quantize(convert(randomize_batchnorm(OptionAResNet()), x, spikes="graded", levels=6), "loihi2")
    again = netx_export.read(netx_export.write(network, tmp_path / "g.h5"))
    assert [l.payload_max for l in again.spiking_layers] == [6] * len(network.spiking_layers)
    np.testing.assert_array_equal(simulate(again, x, steps=12).n_spikes_per_step,
                                  simulate(network, x, steps=12).n_spikes_per_step)
    # a version-2 file (before graded spikes) has no payload_max: binary spikes
    binary = convert(randomize_batchnorm(OptionAResNet()), x, window=2)
    path = netx_export.write(binary, tmp_path / "v2.h5")
    _edit(path, lambda h5: [h5["layer"][k]["neuron"].pop("payload_max", None) for k in h5["layer"]], version=2)
    assert netx_export.read(path).spikes == "binary"
    # a payload wider than the recorded profile's spike messages is refused, naming the field
    path = netx_export.write(network, tmp_path / "wide.h5")
    first = network.spiking_layers[0].name

    def widen(h5):
        for key in h5["layer"]:
            if netx_export.h5io.get_str(h5["layer"][key], "name", None) == first:
                del h5["layer"][key]["neuron"]["payload_max"]
                h5["layer"][key]["neuron"].create_dataset("payload_max", data=np.int64(2 ** 30))
    _edit(path, widen)
    with pytest.raises(netx_export.NetxFormatError, match="field 'neuron/payload_max'.*31 payload bits.*24-bit"):
        netx_export.read(path)


def _edit(path, change, version=None):
    """Change an exported file in place and re-sign it (a file someone else wrote)."""
    with h5py.File(path, "r+") as h5:
        change(h5)
        if version is not None:
            del h5["format_version"]
            h5.create_dataset("format_version", data=np.int64(version))
        del h5[netx_export.h5io.DIGEST_FIELD]
        netx_export.h5io.put_str(h5, netx_export.h5io.DIGEST_FIELD, netx_export.h5io.content_digest(h5))
