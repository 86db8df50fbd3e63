"""Pixels at any depth: relays of the input carry the image (graded payloads of up to 255) to a layer
that reads it beside spiking layers, as a pre-activation ResNet's residual stream does. Exact in every
path: the frame, the simulated network one at a time and streamed, Lava, the netx file, the counts."""
import h5py
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import netx_export
from bsnn_lava.conversion import convert
from bsnn_lava.data import as_nchw
from bsnn_lava.ir import PIXEL_MAX
from bsnn_lava.profile import profile_run
from bsnn_lava.quantize import quantize
from bsnn_lava.resources import check_resources
from bsnn_lava.sim import ann_forward, frame_forward, simulate
from bsnn_lava.training import finetune
from bsnn_lava.training.folded import frame_cost
from conftest import normalized, randomize_batchnorm

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


class PreActBlock(nn.Module):
    """kuangliu/pytorch-cifar's PreActBlock: BN-ReLU before each conv, the shortcut from the block's input
    (identity) or from its first activation (a strided 1x1 conv)."""

    def __init__(self, c_in, c_out, stride=1):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(c_in), nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(c_out), nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(c_in, c_out, 1, stride, bias=False) if stride != 1 or c_in != c_out else None

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        return self.conv2(F.relu(self.bn2(self.conv1(out)))) + shortcut


class PreActNet(nn.Module):
    """A stem conv without BN or ReLU, two identity blocks (the pixels' linear map reaches both, and the
    strided block after them), a final BN-ReLU."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.layer1 = nn.Sequential(PreActBlock(8, 8), PreActBlock(8, 8), PreActBlock(8, 16, 2))
        self.bn, self.linear = nn.BatchNorm2d(16), nn.Linear(16, 10)

    def forward(self, x):
        out = F.relu(self.bn(self.layer1(self.conv1(x))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(24, 16, 16, 3), dtype=np.uint8), rng.integers(0, 10, size=24)


@pytest.fixture(scope="module")
def tuned(data):
    x, y = data
    torch.manual_seed(0)
    return finetune(randomize_batchnorm(PreActNet()), x, y, window=2, epochs=1, batch_size=8, augment=False,
                    progress=False, n_calibration=16, mean=MEAN, std=STD, n_check=8)


def test_a_preactivation_resnet_converts_with_relays_of_the_pixels(data):
    x, _ = data
    model = randomize_batchnorm(PreActNet())
    network = convert(model, x, mean=MEAN, std=STD)
    relays = network.pixel_relays
    assert relays and all(r.role == "relay" and r.payload_max == PIXEL_MAX for r in relays)
    assert network.spikes == "binary" and network.levels == 2
    with torch.no_grad():
        expected = model.double()(normalized(x, MEAN, STD))
    logits, _ = ann_forward(network, as_nchw(x, 3).double())
    assert torch.allclose(logits, expected, atol=1e-9)


@pytest.mark.parametrize("spikes", ["binary", "graded"])
def test_the_fine_tuned_preactivation_resnet_is_exact_at_every_frame_and_streamed(spikes, data, tuned):
    x, y = data
    network = convert(tuned, x[:8], spikes=spikes, mean=MEAN, std=STD)
    assert all(r.payload_max == PIXEL_MAX for r in network.pixel_relays)  # graded L=2 elsewhere
    with torch.no_grad():
        expected = tuned.double().eval()(normalized(x, MEAN, STD))
    readout, _ = frame_forward(network, as_nchw(x, 3).double())
    assert torch.allclose(readout, network.window_steps * expected, atol=1e-9)
    frames = network.complete_frames(network.latency_steps + 2 * network.frame_steps)
    result = simulate(network, x, y, steps=frames[-1], frames="all", dtype=torch.float64)
    for t in frames:
        np.testing.assert_array_equal(result.predictions_per_step[t - 1], expected.argmax(1).numpy())
    streamed = simulate(network, x, y, stream=True, batch_size=5, dtype=torch.float64)
    np.testing.assert_array_equal(streamed.predictions, expected.argmax(1).numpy())


@pytest.mark.parametrize("spikes", ["binary", "graded"])
def test_lava_carries_the_pixels_spike_for_spike(spikes, data, tuned):
    from test_lava_parity import assert_parity

    x, y = data
    network = quantize(convert(tuned, x[:8], spikes=spikes, mean=MEAN, std=STD), "loihi2", calibration_images=x)
    assert_parity(network, x[:2], y[:2], network.latency_steps + network.frame_steps, frames="all")


def test_the_file_keeps_the_relays_and_an_older_version_refuses_them(data, tuned, tmp_path):
    x, _ = data
    network = quantize(convert(tuned, x[:8], mean=MEAN, std=STD), "loihi2", calibration_images=x)
    path = netx_export.write(network, tmp_path / "preact.h5")
    back = netx_export.read(path)
    assert [r.name for r in back.pixel_relays] == [r.name for r in network.pixel_relays]
    readout, _ = frame_forward(back, as_nchw(x, 3).double())
    assert torch.equal(readout, frame_forward(network, as_nchw(x, 3).double())[0])
    with h5py.File(path, "r+") as h5:
        del h5["format_version"]
        h5.create_dataset("format_version", data=np.int64(4))
    with pytest.raises(netx_export.NetxFormatError, match=r"'relay' reading the input .* format version 5"):
        netx_export.read(path)


def test_the_relays_count_as_graded_events_and_only_loihi_2_carries_them(data, tuned):
    x, y = data
    network = quantize(convert(tuned, x[:8], mean=MEAN, std=STD), "loihi2", calibration_images=x)
    run = simulate(network, x, y, frames=1, steps=network.latency_steps)
    profile = profile_run(network, run, "loihi2")
    cost = frame_cost(network, as_nchw(x, 3))
    assert cost["synops"] == pytest.approx(profile.synops, rel=1e-12)
    assert cost["synops_graded"] == pytest.approx(profile.synops_graded, rel=1e-12)
    relays = {r.name for r in network.pixel_relays}
    relay_synops = sum(l.synops_out for l in profile.layers if l.name in relays)
    assert relay_synops > 0 and profile.synops_graded >= relay_synops + profile.synops_by_kind["input"]
    report = check_resources(network, "loihi2")
    assert report.fits and any("relays carry the pixels" in note for note in report.notes)
    refused = check_resources(network, "loihi1")
    assert not refused.fits and any(next(iter(relays)) in v for v in refused.violations)
