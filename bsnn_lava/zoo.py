"""Model layouts whose checkpoints convert: CIFAR ResNets (option A), torchvision's ImageNet ResNets and
VGG-16-BN, and the pre-activation ResNet-18 of the common CIFAR code; checkpoint loading.

CIFAR (He et al. 2016, section 4.2), written from the architecture description: a 3x3 conv stem (16
channels), three stages of n BasicBlocks (16, 32, 64 channels; the first block of stages 2 and 3
has stride 2), global average pooling and a linear classifier; depth = 6n + 2 (20, 32, 44, 56, 110).
The key names match checkpoints of the common CIFAR ResNet implementations (``conv1``, ``bn1``,
``layer1.0.conv1``, ..., ``linear``), so their state dicts load directly.

ImageNet (:func:`imagenet_resnet`, :func:`vgg16_bn`): torchvision's module trees (``torchvision.models
.resnet`` and ``.vgg``), so their state-dict keys and shapes are torchvision's and a torchvision state
dict loads as it is: ResNet-18/34 (BasicBlock) and 50/101 (Bottleneck, stride on the 3x3 conv), with
the 7x7/2 stem and its 3x3/2 max pooling (exact on bistable neurons, docs/design.md "Max pooling"),
1x1 conv + BN downsampling, and VGG-16 with BatchNorm. torchvision itself is not a dependency (its
registry wheel is built for another torch). ``width`` scales the channels for small tests.

Pre-activation (:func:`preact_resnet18`): kuangliu/pytorch-cifar's ``PreActResNet18`` layout and keys.
"""
from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

#: torchvision's ImageNet normalisation (pixels in [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: The common CIFAR ResNet trainers normalise with the ImageNet statistics.
CIFAR_RESNET_MEAN, CIFAR_RESNET_STD = IMAGENET_MEAN, IMAGENET_STD


class OptionAShortcut(nn.Module):
    """Parameter-free shortcut: ``x[:, :, ::2, ::2]`` and ``pad`` zero channels on each side."""

    def __init__(self, pad: int):
        super().__init__()
        self.pad = pad

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad), "constant", 0.0)


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = OptionAShortcut(planes // 4) if stride != 1 or in_planes != planes else nn.Identity()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int = 20, num_classes: int = 10):
        super().__init__()
        if (depth - 2) % 6 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 (20, 32, 44, 56, 110), got {depth}")
        n = (depth - 2) // 6
        self.depth = depth
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        in_planes = 16
        stages = []
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def cifar_resnet(depth: int = 20, num_classes: int = 10) -> CifarResNet:
    """An untrained CIFAR ResNet of the given depth (20, 32, 44, 56, 110)."""
    return CifarResNet(depth, num_classes)


def load_checkpoint(path: Union[str, Path], depth: int | None = None) -> CifarResNet:
    """A CIFAR ResNet with weights from ``path`` (loaded with ``weights_only=True``).

    Accepts a bare state dict or ``{'state_dict': ...}``, with or without the ``module.`` prefix of
    DataParallel; the depth is inferred from the block count unless given.
    """
    state, record = read_checkpoint(path)
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"layer1\.(\d+)\.", k))}
    inferred = 6 * len(blocks) + 2
    if depth is not None and depth != inferred:
        raise ValueError(f"{path}: checkpoint has {len(blocks)} blocks per stage (depth {inferred}), not depth {depth}")
    num_classes = state["linear.weight"].shape[0] if "linear.weight" in state else 10
    from .training import restore

    model = restore(CifarResNet(inferred, num_classes), state, record, f"{path}",
                    f"a CIFAR ResNet-{inferred}" + (" fine-tuned by bsnn finetune" if record else ""))
    return model.eval()


def read_state_dict(path: Union[str, Path]) -> Dict[str, torch.Tensor]:
    """The state dict in a checkpoint file (see :func:`read_checkpoint`)."""
    return read_checkpoint(path)[0]


def read_checkpoint(path: Union[str, Path]) -> Tuple[Dict[str, torch.Tensor], Optional[dict]]:
    """``(state_dict, fine-tuning record or None)`` of a checkpoint file (``torch.load(weights_only=True)``:
    no code is run). The record is what ``bsnn finetune`` stores (window, epochs, history), needed to
    rebuild the fine-tuned architecture (:func:`bsnn_lava.training.restore`); a checkpoint of folded
    epochs adds its network's state under ``FOLDED_KEY``.

    Accepts a bare state dict or ``{'state_dict': ...}``; DataParallel's ``module.`` prefix is
    removed. Errors are one line naming the file: ``FileNotFoundError``, or ``ValueError`` for a file
    that is not a torch checkpoint, holds a whole pickled model, or holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        if not zipfile.is_zipfile(path):
            raise ValueError(f"{path}: not a torch checkpoint (torch.save writes a zip archive; this file is "
                             "not one)") from None
        if "Unsupported global" in str(err):
            raise ValueError(f"{path}: holds pickled Python objects (a whole model?), which are not loaded since "
                             "they could run code; save and give model.state_dict() instead") from None
        first_line = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise ValueError(f"{path}: not a loadable torch checkpoint ({first_line[:200]})") from None
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict (parameter names -> tensors) or {{'state_dict': ...}}")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    from .training.trainer import CHECKPOINT_KEY, FOLDED_KEY

    record = checkpoint.get(CHECKPOINT_KEY) if isinstance(checkpoint, dict) else None
    if not isinstance(record, dict):
        return state, None
    if FOLDED_KEY in checkpoint:  # the folded epochs' network, beside the model it was folded from
        record = {**record, FOLDED_KEY: checkpoint[FOLDED_KEY]}
    return state, record


def load_weights(model: nn.Module, state: Dict[str, torch.Tensor], source: str, target: str) -> None:
    """``model.load_state_dict(state)`` (strict), or ``ValueError`` in one line: how many keys of
    ``source`` are missing, unexpected or of the wrong shape for ``target``, with examples."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError:
        expected = model.state_dict()
        missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
        unexpected = [k for k in state if k not in expected]
        wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                 if k in state and tuple(state[k].shape) != tuple(v.shape)]
        parts = [f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})"
                 for label, keys in (("missing", missing), ("unexpected", unexpected), ("of the wrong shape", wrong))
                 if keys]
        raise ValueError(f"{source}: weights do not fit {target}: " + ("; ".join(parts) or "load_state_dict refused them")
                         ) from None


# --- torchvision's ImageNet layouts ------------------------------------------------------------------------


def _torchvision_init(model: nn.Module, linear_std: Optional[float] = None) -> None:
    """torchvision's initialisation of its ResNets and VGGs: convolutions He normal (fan-out, ReLU
    gain) with zero biases, BatchNorm weight 1 and bias 0; with ``linear_std`` (VGG) linear weights
    normal(0, linear_std) with zero biases, else PyTorch's default linear initialisation (ResNet)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0, linear_std)
            nn.init.constant_(m.bias, 0)


def _check_width(width: int) -> None:
    if not isinstance(width, int) or isinstance(width, bool) or width < 1:
        raise ValueError(f"width must be a positive integer (64: torchvision's channels), got {width!r}")


class TorchvisionBasicBlock(nn.Module):
    """torchvision's BasicBlock as torchvision writes it (one ``nn.ReLU`` module applied twice, an
    in-place add): two 3x3 convs, and ``downsample`` (an option-B 1x1 conv with stride + BN, or
    ``None``) on the shortcut."""
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class TorchvisionBottleneck(nn.Module):
    """torchvision's Bottleneck (ResNet v1.5: the stride on the 3x3 conv): 1x1 conv to ``planes``,
    3x3 conv with ``stride``, 1x1 conv to ``4 planes``, each with BatchNorm, ReLU after the first two
    and after the add; ``downsample`` as in :class:`TorchvisionBasicBlock`."""
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


#: torchvision's ImageNet ResNets: depth -> (block, blocks per stage).
IMAGENET_LAYOUTS = {18: (TorchvisionBasicBlock, (2, 2, 2, 2)), 34: (TorchvisionBasicBlock, (3, 4, 6, 3)),
                    50: (TorchvisionBottleneck, (3, 4, 6, 3)), 101: (TorchvisionBottleneck, (3, 4, 23, 3))}


class ImageNetResNet(nn.Module):
    """torchvision's ``ResNet`` module tree: 7x7/2 conv stem (``width`` channels, 64 in torchvision)
    with BatchNorm and ReLU, 3x3/2 max pooling (padding 1), four stages of blocks (``width`` x 1, 2,
    4, 8 planes; stages 2-4 start with stride 2; a 1x1 conv + BN ``downsample`` where the shape
    changes), global average pooling and the linear classifier ``fc``. For 224x224 images."""

    #: the normalisation of torchvision's ImageNet weights (``bsnn convert --factory`` reads it)
    input_normalisation = (IMAGENET_MEAN, IMAGENET_STD)

    def __init__(self, depth: int = 34, num_classes: int = 1000, width: int = 64):
        super().__init__()
        if depth not in IMAGENET_LAYOUTS:
            raise ValueError(f"ImageNet ResNet depth must be one of {sorted(IMAGENET_LAYOUTS)}, got {depth}")
        _check_width(width)
        block, blocks = IMAGENET_LAYOUTS[depth]
        self.depth = depth
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes, stages = width, []
        for i, n in enumerate(blocks):
            planes, stride = width * 2 ** i, 1 if i == 0 else 2
            downsample = None
            if stride != 1 or inplanes != planes * block.expansion:
                downsample = nn.Sequential(nn.Conv2d(inplanes, planes * block.expansion, 1, stride, bias=False),
                                           nn.BatchNorm2d(planes * block.expansion))
            stages.append(nn.Sequential(block(inplanes, planes, stride, downsample),
                                        *[block(planes * block.expansion, planes) for _ in range(n - 1)]))
            inplanes = planes * block.expansion
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(inplanes, num_classes)
        _torchvision_init(self)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def imagenet_resnet(depth: int = 34, num_classes: int = 1000, width: int = 64) -> ImageNetResNet:
    """An untrained ResNet-18/34/50/101 with torchvision's module names, state-dict keys and
    initialisation, so a torchvision state dict loads into it (``width``: the stem's channels, 64 in
    torchvision; smaller for tests)."""
    return ImageNetResNet(depth, num_classes, width)


def imagenet_resnet18(num_classes: int = 1000, width: int = 64) -> ImageNetResNet:
    """torchvision's ``resnet18`` layout (``bsnn convert --factory bsnn_lava.zoo:imagenet_resnet18``)."""
    return ImageNetResNet(18, num_classes, width)


def imagenet_resnet34(num_classes: int = 1000, width: int = 64) -> ImageNetResNet:
    """torchvision's ``resnet34`` layout (``--factory bsnn_lava.zoo:imagenet_resnet34``)."""
    return ImageNetResNet(34, num_classes, width)


def imagenet_resnet50(num_classes: int = 1000, width: int = 64) -> ImageNetResNet:
    """torchvision's ``resnet50`` layout, Bottleneck blocks (``--factory bsnn_lava.zoo:imagenet_resnet50``)."""
    return ImageNetResNet(50, num_classes, width)


def imagenet_resnet101(num_classes: int = 1000, width: int = 64) -> ImageNetResNet:
    """torchvision's ``resnet101`` layout, Bottleneck blocks (``--factory bsnn_lava.zoo:imagenet_resnet101``)."""
    return ImageNetResNet(101, num_classes, width)


#: torchvision's VGG-16 configuration "D": output channels of each 3x3 conv, "M" a 2x2/2 max pool.
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG16BN(nn.Module):
    """torchvision's ``vgg16_bn`` module tree: ``features`` (conv 3x3 with bias, BatchNorm, ReLU per
    layer; 2x2/2 max pools; torchvision's indices), ``avgpool`` (adaptive to 7x7, the identity at
    224x224) and ``classifier`` (Linear-ReLU-Dropout-Linear-ReLU-Dropout-Linear). ``width`` scales
    every channel count and the 4096 hidden units by width / 64."""

    input_normalisation = (IMAGENET_MEAN, IMAGENET_STD)

    def __init__(self, num_classes: int = 1000, width: int = 64):
        super().__init__()
        _check_width(width)
        layers, c_in = [], 3
        for v in VGG16_LAYOUT:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                c_out = v * width // 64
                layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
                c_in = c_out
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        hidden = 4096 * width // 64
        self.classifier = nn.Sequential(nn.Linear(c_in * 7 * 7, hidden), nn.ReLU(True), nn.Dropout(0.5),
                                        nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(0.5),
                                        nn.Linear(hidden, num_classes))
        _torchvision_init(self, linear_std=0.01)

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def vgg16_bn(num_classes: int = 1000, width: int = 64) -> VGG16BN:
    """An untrained VGG-16 with BatchNorm with torchvision's keys and initialisation
    (``--factory bsnn_lava.zoo:vgg16_bn``; 224x224 images)."""
    return VGG16BN(num_classes, width)


# --- pre-activation ResNet (CIFAR) --------------------------------------------------------------------------

class PreActBlock(nn.Module):
    """The pre-activation BasicBlock of He et al. 2016 ("Identity Mappings in Deep Residual Networks")
    as the common CIFAR code writes it (kuangliu/pytorch-cifar, models/preact_resnet.py): BN-ReLU
    before each 3x3 conv, no activation after the add; a 1x1 conv ``shortcut`` (no BN) reading the
    activated input where the shape changes, else the identity of the block's input."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = (nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False))
                         if stride != 1 or in_planes != planes else None)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nn.Module):
    """Pre-activation ResNet-18 for 32x32 images, kuangliu/pytorch-cifar's layout and keys: a 3x3
    conv stem without BN or ReLU, four stages of two :class:`PreActBlock` (``width`` x 1, 2, 4, 8
    channels), 4x4 average pooling and ``linear``. ``final_activation``: a BN-ReLU (``bn``) before the
    pooling, as many other CIFAR repositories add (kuangliu's has none)."""

    def __init__(self, num_classes: int = 10, width: int = 64, final_activation: bool = False):
        super().__init__()
        _check_width(width)
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        in_planes, stages = width, []
        for i in range(4):
            planes = width * 2 ** i
            stages.append(nn.Sequential(PreActBlock(in_planes, planes, 1 if i == 0 else 2),
                                        PreActBlock(planes, planes)))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn = nn.BatchNorm2d(in_planes) if final_activation else None
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x):
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        if self.bn is not None:
            out = F.relu(self.bn(out))
        out = F.avg_pool2d(out, 4)
        return self.linear(out.view(out.size(0), -1))


def preact_resnet18(num_classes: int = 10, width: int = 64, final_activation: bool = False) -> PreActResNet18:
    """An untrained pre-activation ResNet-18 for CIFAR (``--factory bsnn_lava.zoo:preact_resnet18``)."""
    return PreActResNet18(num_classes, width, final_activation)
