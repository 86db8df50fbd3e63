"""bsnn_lava.zoo's torchvision layouts (ImageNet ResNet-18/34/50/101, VGG-16-BN) and the CIFAR
pre-activation ResNet-18: torchvision's state-dict keys, shapes, parameter counts and initialisation, so a
torchvision state dict loads; each converts exactly; a plain state dict goes through
``bsnn convert --factory`` with the normalisation the model declares."""
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

import netx_export
from bsnn_lava import zoo
from bsnn_lava.cli import main
from bsnn_lava.conversion import lower
from bsnn_lava.data import as_nchw
from bsnn_lava.sim import ann_forward

from conftest import normalized, randomize_batchnorm

FACTORIES = ("imagenet_resnet18", "imagenet_resnet34", "imagenet_resnet50", "imagenet_resnet101", "vgg16_bn")
#: torchvision's parameter counts (the "num_params" of its ImageNet weights).
TORCHVISION_PARAMETERS = {"imagenet_resnet18": 11_689_512, "imagenet_resnet34": 21_797_672,
                          "imagenet_resnet50": 25_557_032, "imagenet_resnet101": 44_549_160, "vgg16_bn": 138_365_992}
BATCHNORM = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _batchnorm(prefix, channels):
    return {f"{prefix}.{field}": () if field == "num_batches_tracked" else (channels,) for field in BATCHNORM}


def torchvision_resnet_state(blocks, bottleneck):
    """torchvision.models.resnet's state-dict keys and shapes in order (64 channels, 1000 classes), as its
    ``ResNet._make_layer``, ``BasicBlock`` and ``Bottleneck`` (v1.5) name them."""
    expansion = 4 if bottleneck else 1
    state = {"conv1.weight": (64, 3, 7, 7), **_batchnorm("bn1", 64)}
    inplanes = 64
    for stage, n in enumerate(blocks, 1):
        planes = 64 * 2 ** (stage - 1)
        for b in range(n):
            block = f"layer{stage}.{b}"
            convs = ([(planes, inplanes, 1), (planes, planes, 3), (4 * planes, planes, 1)] if bottleneck else
                     [(planes, inplanes, 3), (planes, planes, 3)])
            for i, (c_out, c_in, k) in enumerate(convs, 1):
                state[f"{block}.conv{i}.weight"] = (c_out, c_in, k, k)
                state.update(_batchnorm(f"{block}.bn{i}", c_out))
            if b == 0 and (stage > 1 or inplanes != planes * expansion):
                state[f"{block}.downsample.0.weight"] = (planes * expansion, inplanes, 1, 1)
                state.update(_batchnorm(f"{block}.downsample.1", planes * expansion))
            inplanes = planes * expansion
    return {**state, "fc.weight": (1000, 512 * expansion), "fc.bias": (1000,)}


def torchvision_vgg16_bn_state():
    """torchvision.models.vgg16_bn's state-dict keys and shapes: ``features`` indices (conv, BN, ReLU per
    layer, one index per max pool), ``classifier.0/3/6``."""
    state, index, c_in = {}, 0, 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
        if v == "M":
            index += 1
            continue
        state.update({f"features.{index}.weight": (v, c_in, 3, 3), f"features.{index}.bias": (v,)})
        state.update(_batchnorm(f"features.{index + 1}", v))
        index, c_in = index + 3, v
    for i, (c_out, c_in) in zip((0, 3, 6), ((4096, 512 * 7 * 7), (4096, 4096), (1000, 4096))):
        state.update({f"classifier.{i}.weight": (c_out, c_in), f"classifier.{i}.bias": (c_out,)})
    return state


@pytest.mark.parametrize("factory, expected, entries", [
    ("imagenet_resnet18", torchvision_resnet_state((2, 2, 2, 2), False), 122),
    ("imagenet_resnet34", torchvision_resnet_state((3, 4, 6, 3), False), 218),
    ("imagenet_resnet50", torchvision_resnet_state((3, 4, 6, 3), True), 320),
    ("imagenet_resnet101", torchvision_resnet_state((3, 4, 23, 3), True), 626),
    ("vgg16_bn", torchvision_vgg16_bn_state(), 97),
])
def test_state_dict_keys_and_shapes_are_torchvisions(factory, expected, entries):
    with torch.device("meta"):  # shapes only: no memory, no initialisation work
        model = getattr(zoo, factory)()
    state = model.state_dict()
    assert len(expected) == entries and len(state) == entries
    assert [(k, tuple(v.shape)) for k, v in state.items()] == list(expected.items())
    assert sum(p.numel() for p in model.parameters()) == TORCHVISION_PARAMETERS[factory]
    assert isinstance(model.avgpool, nn.AdaptiveAvgPool2d)
    assert model.avgpool.output_size == ((7, 7) if factory == "vgg16_bn" else (1, 1))


def test_the_resnet_stem_and_blocks_are_torchvisions():
    model = zoo.imagenet_resnet50(width=8)
    assert (model.conv1.kernel_size, model.conv1.stride, model.conv1.padding) == ((7, 7), (2, 2), (3, 3))
    assert (model.maxpool.kernel_size, model.maxpool.stride, model.maxpool.padding) == (3, 2, 1)
    block = model.layer2[0]  # v1.5: the stride on the 3x3 conv and on the downsample
    assert (block.conv1.stride, block.conv2.stride, block.downsample[0].stride) == ((1, 1), (2, 2), (2, 2))
    assert model(torch.zeros(2, 3, 224, 224)).shape == (2, 1000)
    assert zoo.imagenet_resnet(18, num_classes=7, width=4)(torch.zeros(1, 3, 64, 64)).shape == (1, 7)
    with pytest.raises(ValueError, match="depth must be one of \\[18, 34, 50, 101\\], got 152"):
        zoo.imagenet_resnet(152)
    with pytest.raises(ValueError, match="width must be a positive integer"):
        zoo.vgg16_bn(width=0)


@pytest.mark.parametrize("factory", ["imagenet_resnet50", "vgg16_bn"])
def test_weights_start_as_torchvisions(factory):
    """He normal (fan-out) convolutions, BatchNorm weight 1 bias 0; VGG: normal(0, 0.01) linear layers,
    zero biases."""
    torch.manual_seed(0)
    model = getattr(zoo, factory)(width=16)
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
            assert float(m.weight.std()) == pytest.approx((2 / fan_out) ** 0.5, rel=0.25), name
            assert m.bias is None or not m.bias.any()
        elif isinstance(m, nn.BatchNorm2d):
            assert bool((m.weight == 1).all()) and not m.bias.any()
        elif isinstance(m, nn.Linear) and factory == "vgg16_bn":
            assert float(m.weight.std()) == pytest.approx(0.01, rel=0.1) and not m.bias.any()


@pytest.mark.parametrize("final_activation", [False, True])
def test_the_preactivation_resnet_is_kuangliu_pytorch_cifars(final_activation):
    model = zoo.preact_resnet18(final_activation=final_activation)
    state = model.state_dict()
    assert list(state)[:3] == ["conv1.weight", "layer1.0.bn1.weight", "layer1.0.bn1.bias"]
    assert tuple(state["layer2.0.shortcut.0.weight"].shape) == (128, 64, 1, 1)
    assert "layer1.0.shortcut.0.weight" not in state
    assert "bn1.weight" not in state and ("bn.weight" in state) == final_activation
    assert tuple(state["linear.weight"].shape) == (10, 512) and len(state) == 102 + 5 * final_activation
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("factory", FACTORIES + ("preact_resnet18",))
def test_every_layout_lowers_to_an_ir_equal_to_the_model(factory):
    """Small widths; ResNets at 64x64, VGG-16-BN at 32x32 (its 7x7 head then copies the 1x1 map)."""
    size = 32 if factory in ("vgg16_bn", "preact_resnet18") else 64
    x = np.random.default_rng(2).integers(0, 256, size=(4, size, size, 3), dtype=np.uint8)
    torch.manual_seed(0)
    model = randomize_batchnorm(getattr(zoo, factory)(num_classes=10, width=4).double())
    mean, std = zoo.IMAGENET_MEAN, zoo.IMAGENET_STD
    logits, _ = ann_forward(lower(model, (3, size, size), mean, std), as_nchw(x, 3).double())
    with torch.no_grad():
        expected = model(normalized(x, mean, std))
    assert torch.allclose(logits, expected, rtol=0, atol=1e-9 * float(expected.abs().max()))


FACTORY_MODULE = """
from bsnn_lava import zoo


def build():
    return zoo.{factory}(num_classes=10, width=4)
"""


@pytest.mark.parametrize("factory, flags, mean, std", [
    ("imagenet_resnet50", [], zoo.IMAGENET_MEAN, zoo.IMAGENET_STD),  # the normalisation the model declares
    ("imagenet_resnet18", ["--mean", "0.5", "--std", "0.25"], (0.5,), (0.25,)),
])
def test_a_torchvision_state_dict_converts_with_bsnn_convert_factory(factory, flags, mean, std, tmp_path, monkeypatch,
                                                                     capsys):
    """A plain state dict (``torch.save(model.state_dict(), ...)``, as torchvision users have): the
    written network computes the model on the normalisation it declares, or on --mean/--std; the
    command names its first complete frame."""
    torch.manual_seed(0)
    model = randomize_batchnorm(getattr(zoo, factory)(num_classes=10, width=4))
    torch.save(model.state_dict(), tmp_path / "weights.pth")
    (tmp_path / "torchvision_layouts.py").write_text(FACTORY_MODULE.format(factory=factory))
    x = np.random.default_rng(3).integers(0, 256, size=(8, 64, 64, 3), dtype=np.uint8)
    np.savez(tmp_path / "calib.npz", x=x, y=np.arange(8) % 10)
    monkeypatch.chdir(tmp_path)
    try:
        assert main(["convert", "weights.pth", "--factory", "torchvision_layouts:build", "--calib", "calib.npz",
                     "--out", "net.h5", *flags]) == 0
    finally:
        sys.modules.pop("torchvision_layouts", None)
    network = netx_export.read(tmp_path / "net.h5")
    assert f"first complete frame at T={network.latency_steps}" in capsys.readouterr().out
    logits, _ = ann_forward(network, as_nchw(x, 3).double())
    with torch.no_grad():
        expected = model.double()(normalized(x, mean, std))
    assert torch.allclose(logits, expected, rtol=0, atol=1e-4 * float(expected.abs().max()))


def test_a_malformed_declared_normalisation_is_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "badnorm.py").write_text(FACTORY_MODULE.format(factory="imagenet_resnet18").replace(
        "return zoo.imagenet_resnet18(num_classes=10, width=4)",
        "model = zoo.imagenet_resnet18(num_classes=10, width=4)\n    model.input_normalisation = 'imagenet'\n"
        "    return model"))
    np.savez(tmp_path / "calib.npz", x=np.zeros((2, 64, 64, 3), np.uint8), y=np.zeros(2, int))
    monkeypatch.chdir(tmp_path)
    try:
        assert main(["convert", "--factory", "badnorm:build", "--random-weights", "--calib", "calib.npz",
                     "--out", "net.h5"]) == 2
    finally:
        sys.modules.pop("badnorm", None)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--factory badnorm:build: the model's input_normalisation must be (mean, std)" in err[0]
    assert not (tmp_path / "net.h5").exists()
