"""Coverage matrix: the constructs users' CNNs contain, each in a small model with random weights, and
the layouts of torchvision (ResNet-50, VGG-16-BN) and of the common CIFAR code (pre-activation ResNet-18)
with a fraction of their channels.

For every model: the IR's ANN equals the model (float64); after clip-floor-shift fine-tuning, the
integer-free frame (``frame_forward``) equals P times the fine-tuned model's logits and the simulated
BSNN predicts its class at every complete frame, binary and graded, one image at a time and streamed
(a new round of images every frame); the netx file reads back unchanged. Lava parity spike for spike
on the constructs that change what a synapse computes.
"""
import re
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import netx_export
from bsnn_lava import zoo
from bsnn_lava.conversion import ConversionError, convert, lower
from bsnn_lava.data import as_nchw
from bsnn_lava.ir import Conv2d
from bsnn_lava.quantize import quantize
from bsnn_lava.sim import ann_forward, frame_forward, simulate
from bsnn_lava.training import finetune

from conftest import batchnorm_statistics_of, normalized, randomize_batchnorm

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def conv_bn(c_in, c_out, kernel=3, stride=1, padding=1, **kwargs):
    return [nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=False, **kwargs), nn.BatchNorm2d(c_out)]


class DilatedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(*conv_bn(3, 8), nn.ReLU(), *conv_bn(8, 8, padding=2, dilation=2), nn.ReLU(),
                                  *conv_bn(8, 8, padding=(2, 1), dilation=(2, 1), stride=2), nn.ReLU())
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.body(x).mean((2, 3)))


class GroupedNet(nn.Module):
    """Depthwise-separable blocks (depthwise 3x3, pointwise 1x1) and a grouped strided conv."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(*conv_bn(3, 8), nn.ReLU(), *conv_bn(8, 8, groups=8), nn.ReLU(),
                                  *conv_bn(8, 16, 1, padding=0), nn.ReLU(), *conv_bn(16, 16, stride=2, groups=4),
                                  nn.ReLU())
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(self.body(x).mean((2, 3)))


class DenseBlockNet(nn.Module):
    """A DenseNet block (BN-ReLU-conv layers reading the concatenation of every earlier output), a
    transition (BN-ReLU-1x1 conv-average pool) and a head reading a concatenation of features."""

    def __init__(self, growth=4):
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(3, 8), nn.ReLU())
        self.layers = nn.ModuleList(
            nn.Sequential(nn.BatchNorm2d(8 + k * growth), nn.ReLU(), nn.Conv2d(8 + k * growth, growth, 3, padding=1))
            for k in range(2))
        self.transition = nn.Sequential(nn.BatchNorm2d(8 + 2 * growth), nn.ReLU(), nn.Conv2d(8 + 2 * growth, 8, 1),
                                        nn.AvgPool2d(2))
        self.head_bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 + 8 + 2 * growth, 10)

    def forward(self, x):
        features = [self.stem(x)]
        for layer in self.layers:
            features.append(layer(torch.cat(features, 1)))
        block = torch.cat(features, 1)
        t = torch.relu(self.head_bn(self.transition(block)))
        return self.fc(torch.cat([t.mean((2, 3)), torch.relu(block).mean((2, 3))], dim=1))


class _InputBypass(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.conv = nn.Conv2d(3, 4, 1), nn.Conv2d(8, 4, 3, padding=1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        stem = self.stem(x)
        return self.fc(torch.relu(self.conv(torch.cat([stem, torch.relu(stem)], 1))).mean((2, 3)))


class ClippedNet(nn.Module):
    """Every spelling of a ReLU clipped above (ceilings small enough to bind on these activations)."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Sequential(*conv_bn(3, 8)), nn.Sequential(*conv_bn(8, 8)), nn.Sequential(
            *conv_bn(8, 8))
        self.relu6, self.hardtanh = nn.ReLU6(), nn.Hardtanh(0.0, 0.5)
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 10)

    def forward(self, x):
        x = self.relu6(self.c1(x) * 8)  # scaled so that the ceiling clips
        x = self.hardtanh(self.c2(x))
        x = torch.clamp(self.c3(x), 0, 0.4) + nn.functional.relu6(self.c3(x) * 10) / 10
        x = x.clamp(min=0, max=0.7)
        x = nn.functional.hardtanh(self.fc1(x.mean((2, 3))), 0.0, 0.3)
        return self.fc2(x.clamp_min(0))


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expansion, depthwise 3x3, ReLU6 after both, linear 1x1 projection,
    identity shortcut where the shape is kept."""

    def __init__(self, c_in, c_out, stride, expand=4):
        super().__init__()
        hidden = c_in * expand
        self.block = nn.Sequential(*conv_bn(c_in, hidden, 1, padding=0), nn.ReLU6(),
                                   *conv_bn(hidden, hidden, stride=stride, groups=hidden), nn.ReLU6(),
                                   *conv_bn(hidden, c_out, 1, padding=0))
        self.shortcut = stride == 1 and c_in == c_out

    def forward(self, x):
        return x + self.block(x) if self.shortcut else self.block(x)


class MobileNetV2Stack(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(3, 8, stride=2), nn.ReLU6())
        self.blocks = nn.Sequential(InvertedResidual(8, 8, 1), InvertedResidual(8, 12, 2), InvertedResidual(12, 12, 1))
        self.head = nn.Sequential(*conv_bn(12, 32, 1, padding=0), nn.ReLU6())
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(nn.functional.adaptive_avg_pool2d(self.head(self.blocks(self.stem(x))), 1).flatten(1))


class VGG16(nn.Module):
    """VGG-16 as usually defined for CIFAR (13 conv-BN-ReLU layers, five 2x2 max pools, a linear
    head), every width divided by 16."""

    def __init__(self):
        super().__init__()
        layers, c_in = [], 3
        for width in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
            if width == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [*conv_bn(c_in, width // 16), nn.ReLU()]
                c_in = width // 16
        self.features, self.fc = nn.Sequential(*layers), nn.Linear(c_in, 10)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


class MaxPoolBeforeReLU(nn.Module):
    """Max pools where the ReLU comes after: conv-BN-maxpool-ReLU, conv-maxpool-BN-ReLU (padded,
    overlapping), then a global adaptive max pool into the head."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(nn.functional.max_pool2d(self.b1(self.c1(x)), 2))
        x = torch.relu(self.b2(nn.functional.max_pool2d(self.c2(x), 3, stride=2, padding=1)))
        return self.fc(self.pool(x).flatten(1))


class ResNet18Style(nn.Module):
    """torchvision's ResNet-18 layout in miniature: 7x7/2 stem, 3x3/2 max pool, basic blocks with an
    identity shortcut reading the pooled stem and a 1x1 downsample."""

    def __init__(self):
        super().__init__()
        from bsnn_lava.zoo import TorchvisionBasicBlock

        self.stem = nn.Sequential(nn.Conv2d(3, 8, 7, 2, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        down = nn.Sequential(nn.Conv2d(8, 16, 1, 2, bias=False), nn.BatchNorm2d(16))
        self.layer1 = nn.Sequential(TorchvisionBasicBlock(8, 8), TorchvisionBasicBlock(8, 16, 2, down))
        self.avgpool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.avgpool(self.layer1(self.stem(x))), 1))


MODELS = {"dilated": DilatedNet, "grouped": GroupedNet, "dense_block": DenseBlockNet, "clipped": ClippedNet,
          "mobilenet_v2": MobileNetV2Stack, "vgg16": VGG16, "maxpool_before_relu": MaxPoolBeforeReLU,
          "resnet18": ResNet18Style,
          # torchvision's and the CIFAR code's module trees (bsnn_lava.zoo), a 16th (8th) of the channels
          "resnet50": lambda: zoo.imagenet_resnet50(num_classes=10, width=4),
          "vgg16_bn": lambda: zoo.vgg16_bn(num_classes=10, width=4),  # at 32x32: the 7x7 head copies 1x1
          "preact_resnet18": lambda: zoo.preact_resnet18(num_classes=10, width=8),
          "resnet50_224": lambda: zoo.imagenet_resnet50(num_classes=10, width=4),
          "vgg16_bn_224": lambda: zoo.vgg16_bn(num_classes=10, width=4)}
#: Input height and width where not 32: ResNet-50 at 64 has a 2x2 last stage (at 32, 1x1, its fine-tuned
#: model predicts one class for every random image); torchvision's own size in the slow runs.
INPUT_SIZE = {"resnet50": 64, "resnet50_224": 224, "vgg16_bn_224": 224}
#: A minute or more each (one epoch, 24 images at 224x224).
SLOW = ("resnet50_224", "vgg16_bn_224")
#: Fine-tuned with the BatchNorm statistics of the images (batchnorm_statistics_of): with random ones,
#: ResNet-50's fine-tuning diverges within its first epoch.
STATISTICS_FROM_DATA = ("resnet50", "resnet50_224")
def models(slow=SLOW):
    """The names of MODELS as pytest parameters, those in ``slow`` marked slow."""
    return [pytest.param(name, marks=[pytest.mark.slow] if name in slow else []) for name in MODELS]


@lru_cache(maxsize=None)
def images(size: int):
    """24 random (size, size) RGB uint8 images (NHWC) and labels in [0, 10)."""
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, size=(24, size, size, 3), dtype=np.uint8), rng.integers(0, 10, size=24)


@pytest.fixture(scope="module")
def data():
    return images(32)


@pytest.mark.parametrize("name", models())
def test_the_ir_ann_equals_the_model(name):
    x, _ = images(INPUT_SIZE.get(name, 32))
    torch.manual_seed(0)
    model = randomize_batchnorm(MODELS[name]().double())
    network = lower(model, (3, *x.shape[1:3]), MEAN, STD)
    logits, _ = ann_forward(network, as_nchw(x, 3).double())
    with torch.no_grad():
        expected = model(normalized(x, MEAN, STD))
    assert torch.allclose(logits, expected, rtol=0, atol=1e-9 * float(expected.abs().max()))


def test_groups_and_dilation_are_kept_in_the_ir_and_the_file(data, tmp_path):
    """A depthwise conv stores its own weights (not C times more); dilation stays a field."""
    x, _ = data
    torch.manual_seed(0)
    grouped = convert(randomize_batchnorm(GroupedNet()), x, window=2, mean=MEAN, std=STD)
    ops = [s.op for layer in grouped.layers[1:] for s in layer.synapses if isinstance(s.op, Conv2d)]
    assert [op.groups for op in ops] == [1, 8, 1, 4] and ops[1].weight.shape == (8, 1, 3, 3)
    dilated = convert(randomize_batchnorm(DilatedNet()), x, window=2, mean=MEAN, std=STD)
    ops = [s.op for layer in dilated.layers[1:] for s in layer.synapses if isinstance(s.op, Conv2d)]
    assert [op.dilation for op in ops] == [(1, 1), (2, 2), (2, 1)] and ops[1].weight.shape == (8, 8, 3, 3)
    for network in (grouped, quantize(dilated, "loihi2", calibration_images=x[:8])):
        path = tmp_path / "net.h5"
        netx_export.write(network, path)
        again = netx_export.read(path)
        for a, b in zip(network.layers[1:], again.layers[1:]):
            for sa, sb in zip(a.synapses, b.synapses):
                assert type(sa.op) is type(sb.op) and np.array_equal(sa.op.weight, sb.op.weight)
                assert getattr(sa.op, "groups", 1) == getattr(sb.op, "groups", 1)
                assert getattr(sa.op, "dilation", 1) == getattr(sb.op, "dilation", 1)


def test_fan_out_and_full_weight_agree_with_torch():
    """A grouped, dilated, strided, padded conv: its full kernel computes the same map, and its
    fan-out is the input gradient of the summed outputs through the nonzero-weight mask."""
    rng = np.random.default_rng(3)
    weight = rng.normal(size=(6, 2, 3, 2)) * (rng.random((6, 2, 3, 2)) > 0.3)
    op = Conv2d(weight, stride=(2, 1), padding=(2, 1), dilation=(2, 3), groups=3)
    x = torch.as_tensor(rng.normal(size=(2, 6, 9, 8)))
    ours = torch.nn.functional.conv2d(x, torch.as_tensor(op.full_weight()), None, op.stride, op.padding)
    theirs = torch.nn.functional.conv2d(x, torch.as_tensor(weight), None, op.stride, op.padding, op.dilation, 3)
    assert torch.allclose(ours, theirs) and ours.shape[1:] == op.output_shape((6, 9, 8))
    ones = torch.ones(1, 6, 9, 8, dtype=torch.float64, requires_grad=True)
    torch.nn.functional.conv2d(ones, torch.as_tensor((weight != 0).astype(float)), None, op.stride, op.padding,
                               op.dilation, 3).sum().backward()
    np.testing.assert_array_equal(op.fan_out((6, 9, 8)), ones.grad[0].numpy().astype(np.int64))


@pytest.mark.parametrize("spikes", ["binary", "graded"])
@pytest.mark.parametrize("name", models(SLOW + ("resnet50",)))  # bottlenecks: test_zoo and the CLI test below
def test_finetuned_models_convert_exactly(name, spikes):
    """Clip-floor-shift fine-tuning (one short epoch on random data): the frame equals P times the
    fine-tuned model's logits (graded: one-step windows, the logits), and the BSNN predicts its class at
    every complete frame; streamed (5 lanes, a partial last round), every image's prediction is its
    class and its readout the frame's."""
    x, y = images(INPUT_SIZE.get(name, 32))
    torch.manual_seed(0)
    model = randomize_batchnorm(MODELS[name]())
    if name in STATISTICS_FROM_DATA:
        batchnorm_statistics_of(model, normalized(x, MEAN, STD))
    model = finetune(model, x, y, window=2, epochs=1, batch_size=8, augment=False, progress=False, n_calibration=16,
                     mean=MEAN, std=STD, n_check=8)
    network = convert(model, x[:16], spikes=spikes, mean=MEAN, std=STD)
    model = model.double().eval()
    with torch.no_grad():
        expected = model(normalized(x, MEAN, STD))
    readout, _ = frame_forward(network, as_nchw(x, 3).double())
    tolerance = 1e-7 * float(expected.abs().max())
    assert torch.allclose(readout, network.window_steps * expected, atol=tolerance)
    frames = network.complete_frames(network.readout.schedule.offset_steps + 2 * network.frame_steps)
    result = simulate(network, x, y, steps=frames[-1], frames="all", dtype=torch.float64)
    for t in frames:
        np.testing.assert_array_equal(result.predictions_per_step[t - 1], expected.argmax(1).numpy())
    streamed = simulate(network, x, y, stream=True, batch_size=5, dtype=torch.float64)
    np.testing.assert_array_equal(streamed.predictions, expected.argmax(1).numpy())
    np.testing.assert_allclose(streamed.stream.readout, readout.numpy(), rtol=0, atol=tolerance)


def test_a_linear_path_from_the_pixels_past_the_first_neurons_reaches_them_through_relays(data):
    """A stem without a ReLU concatenated after one: the pixels reach the later layer exactly, through
    relays of the input (tests/test_pixel_relays.py covers them)."""
    model = _InputBypass()
    network = convert(model, data[0], mean=MEAN, std=STD)
    assert [layer.synapses[0].source for layer in network.pixel_relays] == [network.input.name]
    with torch.no_grad():
        expected = model.double()(normalized(data[0], MEAN, STD))
    logits, _ = ann_forward(network, as_nchw(data[0], 3).double())
    assert torch.allclose(logits, expected, atol=1e-9)


def test_adaptive_average_pooling_to_sizes_that_do_not_divide(data):
    """Overlapping windows (8x8 to 3x3) and copies (1x1 to 7x7, torchvision's VGG head on a small image)
    convert as a matrix before a flatten and a linear layer, exactly; elsewhere they are refused."""
    x, _ = data

    class Head(nn.Module):
        def __init__(self, stride, out_hw, then_conv=False):
            super().__init__()
            self.conv, self.pool = nn.Conv2d(3, 4, 3, stride, 1), nn.AdaptiveAvgPool2d(out_hw)
            self.then = nn.Conv2d(4, 4, 1) if then_conv else nn.Flatten()
            self.fc = nn.Linear(4 * out_hw[0] * out_hw[1], 10)

        def forward(self, x):
            return self.fc(torch.flatten(torch.relu(self.then(self.pool(torch.relu(self.conv(x))))), 1))

    torch.manual_seed(0)
    for stride, out_hw in ((4, (3, 3)), (32, (7, 7)), (4, (3, 5))):
        model = Head(stride, out_hw).double()
        logits, _ = ann_forward(lower(model, (3, 32, 32), MEAN, STD), as_nchw(x, 3).double())
        with torch.no_grad():
            expected = model(normalized(x, MEAN, STD))
        assert torch.allclose(logits, expected, rtol=0, atol=1e-12 * float(expected.abs().max())), (stride, out_hw)
    with pytest.raises(ConversionError, match=r"graph node 'pool' .*adaptive pooling from \(8, 8\) to \(3, 3\) .*"
                                              r"only when flattened right after"):
        convert(Head(4, (3, 3), then_conv=True), x)


def test_concatenation_elsewhere_than_the_channels_is_refused(data):
    class WidthCat(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 10)

        def forward(self, x):
            y = torch.relu(self.conv(x))
            return self.fc(torch.relu(torch.cat([y, y], dim=3)).mean((2, 3)))

    with pytest.raises(ConversionError, match=r"graph node 'cat' .* only concatenation along the channels"):
        convert(WidthCat(), data[0])


@pytest.mark.parametrize("name", ["grouped", "dilated"])
def test_lava_runs_grouped_and_dilated_synapses_spike_for_spike(name, data):
    from test_lava_parity import assert_parity

    x, y = data
    torch.manual_seed(0)
    network = quantize(convert(randomize_batchnorm(MODELS[name]()), x, window=2, mean=MEAN, std=STD), "loihi2",
                       calibration_images=x[:8])
    ref = assert_parity(network, x[:2], y[:2], network.readout.schedule.offset_steps + 10)
    assert ref.n_spikes_per_step.sum() > 0


def test_clipped_activations_keep_their_ceiling_and_thresholds_stay_below_it(data, tmp_path):
    x, _ = data
    torch.manual_seed(0)
    network = convert(randomize_batchnorm(ClippedNet()), x, window=2, mean=MEAN, std=STD, channelwise=True)
    clipped = [layer for layer in network.spiking_layers if layer.ann_clip is not None]
    assert [layer.ann_clip for layer in clipped] == [6.0, 0.5, 0.4, 6.0, 0.7, 0.3]
    assert all(np.all(layer.threshold <= layer.ann_clip) for layer in clipped)
    _, pre = ann_forward(network, as_nchw(x, 3).double())
    assert all(bool((pre[layer.name] > layer.ann_clip).any()) for layer in clipped)  # every ceiling binds
    integer = quantize(network, "loihi2", calibration_images=x[:8])
    path = tmp_path / "clipped.h5"
    netx_export.write(integer, path)
    again = netx_export.read(path)
    assert [layer.ann_clip for layer in again.spiking_layers] == [layer.ann_clip for layer in integer.spiking_layers]
    assert all(np.all(layer.threshold <= layer.ann_clip + 0.5) for layer in again.spiking_layers if layer.ann_clip)


@pytest.mark.parametrize("activation, pattern", [
    (lambda x: torch.clamp(x, -1, 1), r"graph node 'clamp' .*clamp to \[-1, 1\] has no spiking equivalent"),
    (nn.Hardtanh(), r"graph node 'act' .*clamp to \[-1.0, 1.0\]"),
    (lambda x: x.clamp(max=2), r"graph node 'clamp' .*clamp to \[None, 2\]"),
    (nn.LeakyReLU(), r"module 'act' \(LeakyReLU\) is not supported"),
])
def test_other_activations_stay_refused_naming_the_node(activation, pattern, data):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 10)
            if isinstance(activation, nn.Module):
                self.act = activation

        def forward(self, x):
            y = self.act(self.conv(x)) if isinstance(activation, nn.Module) else activation(self.conv(x))
            return self.fc(torch.relu(y).mean((2, 3)))

    with pytest.raises(ConversionError, match=pattern):
        convert(Net(), data[0])


def test_max_pools_sit_on_the_synapses_at_the_neurons_resolution(data, tmp_path):
    """After the ReLU: on the synapses that read it (the ResNet-18 stem's pool also on the shortcut's
    relay path); before it: the neurons take the conv's resolution and the pool moves after them."""
    x, _ = data
    torch.manual_seed(0)
    resnet = convert(randomize_batchnorm(ResNet18Style()), x, window=2, mean=MEAN, std=STD)
    pooled = [(layer.name, s.source) for layer in resnet.layers[1:] for s in layer.synapses if s.pool is not None]
    stem = resnet.layers[1].name
    assert all(source == stem or source.startswith(stem + "_relay") for _, source in pooled) and len(pooled) == 2
    assert resnet.layers[1].shape == (8, 16, 16)
    path = tmp_path / "resnet18.h5"  # the pools survive the file (format version 4)
    netx_export.write(resnet, path)
    again = netx_export.read(path)
    assert [(l.name, [s.pool for s in l.synapses]) for l in again.layers[1:]] == [
        (l.name, [s.pool for s in l.synapses]) for l in resnet.layers[1:]]
    before = convert(randomize_batchnorm(MaxPoolBeforeReLU()), x, window=2, mean=MEAN, std=STD)
    assert [layer.shape for layer in before.spiking_layers] == [(8, 32, 32), (8, 16, 16)]
    # the global max after the padded 3x3/2 pool: one 17x17 pool of stride 16 over the 32x32 neurons
    assert [(s.pool.kernel, s.pool.stride) for layer in before.layers[2:] for s in layer.synapses] == [
        ((2, 2), (2, 2)), ((17, 17), (16, 16))]


@pytest.mark.parametrize("neuron", ["if", "warmup"])
def test_max_pooling_needs_bistable_neurons(neuron, data):
    with pytest.raises(ConversionError, match=r"layer '_4' reads a max pool of layer '_1' \(1\): max pooling "
                                              r"converts only with bistable neurons"):
        convert(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3), nn.ReLU(),
                              nn.Flatten(), nn.Linear(4 * 13 * 13, 10)), data[0], neuron=neuron)


@pytest.mark.parametrize("pool, pattern", [
    (nn.MaxPool2d(2, ceil_mode=True), r"graph node '_4' \(4\) .*ceil_mode"),
    (nn.MaxPool2d(2, dilation=2), r"graph node '_4' \(4\) .*dilation"),
    (nn.Sequential(nn.MaxPool2d(2), nn.MaxPool2d(3, 1, 1)), r"two max pools in a row .* do not combine"),
    (nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(4, 4, 1)), r"max pool before the activation must reach the activation"),
])
def test_unsupported_max_pools_are_refused_naming_the_node(pool, pattern, data):
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), pool,
                          nn.ReLU(), nn.Flatten(), nn.LazyLinear(10))
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    if isinstance(pool, nn.Sequential) and isinstance(pool[0], nn.MaxPool2d) and isinstance(pool[1], nn.MaxPool2d):
        model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), *pool, nn.Conv2d(4, 4, 1), nn.ReLU(),
                              nn.Flatten(), nn.Linear(4 * 16 * 16, 10))
    with pytest.raises(ConversionError, match=pattern):
        convert(model, data[0])


def test_a_negative_batchnorm_after_a_max_pool_is_refused(data):
    model = randomize_batchnorm(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.MaxPool2d(2), nn.BatchNorm2d(4),
                                              nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16 * 16, 10)))
    model[2].weight.data[1] = -0.5
    with pytest.raises(ConversionError, match=r"graph node '_2' \(2\) .*non-positive scale"):
        convert(model, data[0])


@pytest.mark.parametrize("spikes", ["binary", "graded"])
def test_lava_max_pooling_spike_for_spike(spikes, data):
    """A fine-tuned max-pool network (pools after and before the ReLU, a global max): Lava equals the
    reference on every spike, readout potential and synaptic operation count."""
    from test_lava_parity import assert_parity

    x, y = data
    torch.manual_seed(0)
    model = finetune(randomize_batchnorm(MaxPoolBeforeReLU()), x, y, window=2, epochs=1, batch_size=8, augment=False,
                     progress=False, n_calibration=16, mean=MEAN, std=STD, n_check=8)
    network = quantize(convert(model, x[:16], spikes=spikes, mean=MEAN, std=STD), "loihi2", calibration_images=x[:8])
    frames = network.complete_frames(network.readout.schedule.offset_steps + 2 * network.frame_steps)
    ref = assert_parity(network, x[:2], y[:2], frames[-1], frames="all", batch_size=2)
    assert ref.n_synops_per_step.sum() > 0


@pytest.mark.parametrize("name", ["vgg16", "resnet18", "mobilenet_v2", "dense_block", "resnet50", "vgg16_bn"])
def test_bsnn_convert_and_check_on_the_coverage_models(name, data, tmp_path):
    """``bsnn convert --factory`` quantizes each model for Loihi 2 and ``bsnn check`` maps it onto cores."""
    from test_cli_faults import bsnn

    (tmp_path / "coverage_models.py").write_text(
        "import sys\nsys.path.insert(0, %r)\nfrom test_coverage import MODELS\n\n\ndef build():\n"
        "    return MODELS[%r]()\n" % (str(Path(__file__).parent), name))
    np.savez(tmp_path / "calib.npz", x=data[0], y=data[1])
    out = bsnn("convert", "--factory", "coverage_models:build", "--random-weights", "--calib", tmp_path / "calib.npz",
               "--out", tmp_path / "net.h5", "--hw", "loihi2", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    out = bsnn("check", tmp_path / "net.h5", "--hw", "loihi2", cwd=tmp_path)
    assert out.returncode == 0 and re.search(r"total: \d+ neurons, \d+ cores, 1 chip", out.stdout), out.stdout
    assert ("pooling compartments" in out.stdout) == (name in ("vgg16", "resnet18", "resnet50", "vgg16_bn"))


@pytest.mark.parametrize("field, value, pattern", [
    ("pool_stride", np.array([0, 2]), r"field 'pool_stride': is \(0, 2\); expected integers >= 1"),
    ("pool_kernel", np.array([64, 64]), r"field 'pool_kernel': max pool kernel \(64, 64\) does not fit"),
    ("pool_padding", np.array([2, 2]), r"field 'pool_kernel': max pool padding \(2, 2\) must be at most half"),
])
def test_malformed_pool_fields_are_refused_in_one_line(field, value, pattern, data, tmp_path):
    x, _ = data
    torch.manual_seed(0)
    network = convert(randomize_batchnorm(VGG16()), x, window=2, mean=MEAN, std=STD)
    path = tmp_path / "vgg.h5"
    netx_export.write(network, path)
    import h5py

    with h5py.File(path, "r+") as h5:
        index = next(i for i in range(len(h5["layer"])) if "pool_kernel" in h5[f"layer/{i}"])
        del h5[f"layer/{index}/{field}"]
        h5.create_dataset(f"layer/{index}/{field}", data=value)
    with pytest.raises(netx_export.NetxFormatError, match=r"vgg.h5: layer \d+ \('[^']+'\), " + pattern):
        netx_export.read(path)


def test_the_ir_refuses_a_max_pool_of_if_spikes():
    from bsnn_lava.ir import Dense, GatedIF, Input, IRError, MaxPool, Network, Readout, Schedule, Synapse, replace

    schedule = Schedule("if", 0, 1)
    layers = [Input("x", (1, 4, 4), schedule),
              GatedIF("h", (1, 4, 4), (Synapse("x", Conv2d(np.ones((1, 1, 1, 1)))),), 1.0, 0.0, 0.0, schedule),
              Readout("out", (2,), (Synapse("h", Dense(np.ones((2, 4))), MaxPool(2, 2)),), 0.0, schedule)]
    with pytest.raises(IRError, match=r"layer 'out': synapse from 'h' max-pools the spikes of a 'if' layer"):
        Network(layers)
    Network([layers[0], replace(layers[1], schedule=Schedule("bistable", 0, 1)), layers[2]])  # bistable: valid
