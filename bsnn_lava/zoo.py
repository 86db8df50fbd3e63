"""ResNets: CIFAR ResNets with option-A shortcuts, and ImageNet-size ResNet-18/34 with option-B shortcuts.

CIFAR (He et al. 2016, section 4.2), written from the architecture description: a 3x3 conv stem (16
channels), three stages of n BasicBlocks (16, 32, 64 channels; the first block of stages 2 and 3
has stride 2), global average pooling and a linear classifier; depth = 6n + 2 (20, 32, 44, 56, 110).
The key names match checkpoints of the common CIFAR ResNet implementations (``conv1``, ``bn1``,
``layer1.0.conv1``, ..., ``linear``), so their state dicts load directly.

ImageNet (:func:`imagenet_resnet`): torchvision's layout and key names (``conv1``, ``layer1.0.conv1``,
``layer2.0.downsample.0``, ``fc``), with the stem's 3x3/2 max pooling (padding 1) replaced by 2x2/2
average pooling, which gives the same 56x56 output: max pooling cannot be rate-coded, and a padded
pooling followed by the first block's padded convolution cannot be folded into one exact synapse.
"""
from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

#: The ImageNet statistics the common CIFAR ResNet trainers normalise with (pixels in [0, 1]).
CIFAR_RESNET_MEAN = (0.485, 0.456, 0.406)
CIFAR_RESNET_STD = (0.229, 0.224, 0.225)


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


#: BasicBlocks per stage of the ImageNet ResNets.
IMAGENET_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


class ImageNetResNet(nn.Module):
    """ResNet-18/34 for 224x224 images: 7x7/2 conv stem (64 channels), 2x2/2 average pooling, four
    stages of BasicBlocks (64, 128, 256, 512 channels; stages 2-4 start with stride 2), global average
    pooling and a linear classifier."""

    def __init__(self, depth: int = 34, num_classes: int = 1000, width: int = 64):
        super().__init__()
        if depth not in IMAGENET_BLOCKS:
            raise ValueError(f"ImageNet ResNet depth must be one of {sorted(IMAGENET_BLOCKS)}, got {depth}")
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.pool = nn.AvgPool2d(2)
        in_planes, stages = width, []
        for i, n in enumerate(IMAGENET_BLOCKS[depth]):
            planes = width * 2 ** i
            stride = 1 if i == 0 else 2
            down = (nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
                    if stride != 1 or in_planes != planes else None)
            stages.append(nn.Sequential(TorchvisionBasicBlock(in_planes, planes, stride, down),
                                        *[TorchvisionBasicBlock(planes, planes) for _ in range(n - 1)]))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x):
        out = self.pool(F.relu(self.bn1(self.conv1(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def imagenet_resnet(depth: int = 34, num_classes: int = 1000, width: int = 64) -> ImageNetResNet:
    """An untrained torchvision-style ResNet-18/34 (``width``: the stem's channels, 64 in torchvision;
    smaller for tests)."""
    return ImageNetResNet(depth, num_classes, width)
