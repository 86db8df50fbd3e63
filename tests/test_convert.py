"""Converter: graph capture, folding exactness, calibration, shortcut handling, clear refusals."""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bsnn_lava import zoo
from bsnn_lava.conversion import ConversionError, calibrate, convert, lower
from bsnn_lava.data import as_nchw
from bsnn_lava.sim import ann_forward

from conftest import OptionAResNet, SmallVGG, TVStyleResNet, normalized, randomize_batchnorm

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def _ann_logits(network, x_nhwc):
    logits, _ = ann_forward(network, as_nchw(x_nhwc, 3).double())
    return logits


@pytest.mark.parametrize("model_cls", [SmallVGG, OptionAResNet, TVStyleResNet])
def test_lowered_network_computes_the_model(model_cls, images):
    """BN folding, normalisation folding, pooling folds and shortcuts are exact (float64)."""
    x, _ = images
    model = randomize_batchnorm(model_cls().double())
    network = lower(model, (3, 16, 16), MEAN, STD)
    expected = model(normalized(x, MEAN, STD))
    assert torch.allclose(_ann_logits(network, x), expected, rtol=1e-9, atol=1e-9)


def test_batchnorm_folding_is_exact_and_removes_batchnorm(images):
    x, _ = images
    model = randomize_batchnorm(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                              nn.Flatten(), nn.Linear(4 * 16 * 16, 3)).double())
    network = lower(model, (3, 16, 16), (0, 0, 0), (1, 1, 1))
    conv_layer = network.layers[1]
    assert len(conv_layer.synapses) == 1 and conv_layer.synapses[0].op.weight.shape == (4, 3, 3, 3)
    bn = model[1]
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().numpy()
    np.testing.assert_allclose(conv_layer.synapses[0].op.weight,
                               model[0].weight.detach().numpy() * scale[:, None, None, None] / 255.0, rtol=1e-12)
    expected_bias = (model[0].bias - bn.running_mean) * (bn.weight / torch.sqrt(bn.running_var + bn.eps)) + bn.bias
    np.testing.assert_allclose(conv_layer.bias, expected_bias.detach().numpy(), rtol=1e-12)
    assert torch.allclose(_ann_logits(network, x), model(normalized(x, (0, 0, 0), (1, 1, 1))), atol=1e-10)


def test_normalisation_folding_is_exact_at_padded_borders(images):
    """Zero padding of normalised input is the per-channel mean in raw pixels: the folded first
    layer gets a per-position bias, so borders stay exact."""
    x, _ = images
    model = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 16 * 16, 2)).double()
    network = lower(model, (3, 16, 16), MEAN, STD)
    first = network.layers[1]
    assert first.bias.shape == (2, 16, 16)  # border positions differ from the interior
    assert not np.allclose(first.bias[:, 0, 0], first.bias[:, 8, 8])
    _, pre = ann_forward(network, as_nchw(x, 3).double())
    expected = model[0](normalized(x, MEAN, STD))
    assert torch.allclose(pre[first.name], expected, atol=1e-10)


def test_percentile_calibration_layerwise_and_channelwise():
    """Identity 1x1 conv on pixels: activations are pixel / 255, so the percentiles are known."""
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(50, 2, 4, 4), dtype=np.uint8)
    x[:, 1] //= 2  # channel 1 has half the range
    conv = nn.Conv2d(2, 2, 1, bias=False)
    conv.weight.data = torch.eye(2).view(2, 2, 1, 1)
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(32, 2)).double()
    network = lower(model, (2, 4, 4), (0, 0), (1, 1))
    name = network.layers[1].name
    act = x / 255.0
    scales = calibrate(network, torch.as_tensor(x, dtype=torch.float64), percentile=99.0)
    assert scales[name].shape == ()
    np.testing.assert_allclose(scales[name], np.percentile(act[act > 0], 99.0), rtol=1e-6)
    per_channel = calibrate(network, torch.as_tensor(x, dtype=torch.float64), percentile=95.0, channelwise=True)
    for c in range(2):
        ch = act[:, c]
        np.testing.assert_allclose(per_channel[name][c], np.percentile(ch[ch > 0], 95.0), rtol=1e-6)
    assert per_channel[name][1] < 0.6 * per_channel[name][0]


def test_threshold_balancing_keeps_the_ann_and_sets_spike_values(images):
    x, _ = images
    model = randomize_batchnorm(OptionAResNet().double())
    network = convert(model, x, neuron="bistable", window=2, mean=MEAN, std=STD, percentile=99.0)
    thresholds = {l.name: float(l.threshold) for l in network.spiking_layers if l.role == "neuron"}
    assert all(t > 0 for t in thresholds.values()) and len(set(thresholds.values())) > 1
    assert all(np.allclose(l.v_init, 0.5 * l.threshold) for l in network.spiking_layers if l.role == "neuron")
    # the readout's logits (ANN of the balanced network) equal the model's
    assert torch.allclose(_ann_logits(network, x), model(normalized(x, MEAN, STD)), atol=1e-8)


@pytest.mark.parametrize("depth", [20, 32, 44, 56])
def test_zoo_resnets_convert_with_relays_on_every_shortcut(depth):
    model = randomize_batchnorm(zoo.cifar_resnet(depth))
    x = np.random.default_rng(depth).integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    network = convert(model, x, mean=zoo.CIFAR_RESNET_MEAN, std=zoo.CIFAR_RESNET_STD)
    n_blocks = 3 * (depth - 2) // 6
    relays = [l for l in network.spiking_layers if l.role == "relay"]
    assert len(relays) == n_blocks
    assert len(network.spiking_layers) == 1 + 2 * n_blocks + n_blocks
    baseline = convert(model, x, neuron="if", mean=zoo.CIFAR_RESNET_MEAN, std=zoo.CIFAR_RESNET_STD)
    assert not any(l.role == "relay" for l in baseline.spiking_layers)


def test_load_checkpoint_strips_dataparallel_prefix(tmp_path):
    model = randomize_batchnorm(zoo.cifar_resnet(20), seed=3)
    state = {"module." + k: v for k, v in model.state_dict().items() if "num_batches_tracked" not in k}
    torch.save({"state_dict": state, "best_prec1": 1.0}, tmp_path / "ckpt.th")
    loaded = zoo.load_checkpoint(tmp_path / "ckpt.th")
    assert loaded.depth == 20
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(x), model(x))
    with pytest.raises(ValueError, match=r"depth 20\), not depth 32"):
        zoo.load_checkpoint(tmp_path / "ckpt.th", depth=32)
    with pytest.raises(FileNotFoundError, match="missing.th"):
        zoo.load_checkpoint(tmp_path / "missing.th")
    (tmp_path / "junk.th").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.th"):
        zoo.load_checkpoint(tmp_path / "junk.th")


class _GeluNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 14 * 14, 2)

    def forward(self, x):
        return self.fc(F.gelu(self.conv(x)).flatten(1))


class _Gate(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow
            return x
        return -x


class _ControlFlowNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.gate = _Gate()
        self.fc = nn.Linear(4 * 14 * 14, 2)

    def forward(self, x):
        return self.fc(self.gate(F.relu(self.conv(x))).flatten(1))


class _AttentionNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.fc = nn.Linear(16 * 3 * 16, 2)

    def forward(self, x):
        seq = x.flatten(1, 2)
        out, _ = self.attn(seq, seq, seq)
        return self.fc(F.relu(out).flatten(1))


@pytest.mark.parametrize("model, pattern", [
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sigmoid(), nn.Flatten(), nn.Linear(4 * 14 * 14, 2)),
     r"module '1' \(Sigmoid\).*nn.ReLU"),
    (_GeluNet(), r"gelu.*nn.ReLU"),
    (_ControlFlowNet(), r"module 'gate' \(_Gate\).*control flow"),
    (_AttentionNet(), r"module 'attn' \(MultiheadAttention\).*attention"),
])
def test_unsupported_layers_are_refused_with_the_module_name(model, pattern):
    x = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    with pytest.raises(ConversionError, match=pattern):
        convert(model, x)


def test_bad_arguments_are_refused(images):
    x, _ = images
    model = OptionAResNet()
    with pytest.raises(ValueError, match="neuron must be one of"):
        convert(model, x, neuron="lif")
    with pytest.raises(ValueError, match="window"):
        convert(model, x, window=0)
    with pytest.raises(ValueError, match="v_init"):
        convert(model, x, v_init=1.5)
    with pytest.raises(ValueError, match=r"images of shape \(2, 16, 16, 5\) have no axis of 3 channel\(s\)"):
        convert(model, np.zeros((2, 16, 16, 5), dtype=np.uint8))
