"""Exact composition of the linear pieces between two ReLUs into one synapse.

Everything between two spiking layers (conv, BatchNorm, average pooling, the option-A shortcut's
strided slice and channel padding, flatten, linear) is linear, so it is fused into one convolution or
one dense matrix: Lava then delivers it with a single synaptic delay. Arithmetic is float64.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F


class FoldError(ValueError):
    """Two linear pieces cannot be fused exactly."""


@dataclass(frozen=True)
class ConvMap:
    """Cross-correlation with zero padding: ``weight`` (out, in, kh, kw), ``stride``, ``padding``.

    ``groups``, ``dilation``: the structure of a grouped or dilated torch convolution the map
    comes from, kept while per-channel maps (BatchNorm, normalisation) fold in: ``weight`` is zero
    outside the groups' blocks and between the dilated taps (:func:`compact_conv`).
    """
    weight: torch.Tensor
    stride: Tuple[int, int]
    padding: Tuple[int, int]
    groups: int = 1
    dilation: Tuple[int, int] = (1, 1)

    @property
    def channel_diagonal(self) -> bool:
        """A per-channel scale: 1x1, stride 1, no padding, no weight across channels."""
        w = self.weight
        return (w.shape[2:] == (1, 1) and w.shape[0] == w.shape[1] and self.stride == (1, 1)
                and self.padding == (0, 0) and bool((w[:, :, 0, 0] == torch.diag(torch.diagonal(w[:, :, 0, 0]))).all()))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, None, self.stride, self.padding)


@dataclass(frozen=True)
class DenseMap:
    """Matrix on the source flattened in (C, H, W) order: ``weight`` (out, in)."""
    weight: torch.Tensor

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1) @ self.weight.T


LinearMap = Union[ConvMap, DenseMap]


def _f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float64).cpu()


def conv_map(weight, stride=1, padding=0, groups=1, dilation=1) -> ConvMap:
    """A torch conv's weight as a :class:`ConvMap`: grouped weights expanded to a full matrix,
    dilated kernels to dense ones with zeros between the taps (the same map, which composes with
    any other; the IR synapse gets its groups and dilation back, :func:`compact_conv`)."""
    pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)
    weight = _f64(weight)
    dy, dx = pair(dilation)
    if (dy, dx) != (1, 1):
        kh, kw = weight.shape[2:]
        dilated = torch.zeros(*weight.shape[:2], dy * (kh - 1) + 1, dx * (kw - 1) + 1, dtype=torch.float64)
        dilated[:, :, ::dy, ::dx] = weight
        weight = dilated
    if groups > 1:
        out_ch, in_per_group = weight.shape[:2]
        full = torch.zeros(out_ch, in_per_group * groups, *weight.shape[2:], dtype=torch.float64)
        per_group = out_ch // groups
        for o in range(out_ch):
            g = o // per_group
            full[o, g * in_per_group:(g + 1) * in_per_group] = weight[o]
        weight = full
    return ConvMap(weight, pair(stride), pair(padding), groups, (dy, dx))


def compact_conv(m: ConvMap) -> torch.Tensor:
    """``m``'s full kernel as its (out, in / groups, kH, kW) weight of groups ``m.groups`` and
    dilation ``m.dilation``: only the zeros between groups and between dilated taps are dropped."""
    out_ch, in_ch = m.weight.shape[:2]
    out_per, in_per = out_ch // m.groups, in_ch // m.groups
    taps = m.weight[:, :, ::m.dilation[0], ::m.dilation[1]]
    compact = torch.cat([taps[g * out_per:(g + 1) * out_per, g * in_per:(g + 1) * in_per] for g in range(m.groups)])
    assert int((compact != 0).sum()) == int((m.weight != 0).sum()), "a grouped or dilated map lost a weight"
    return compact


def channel_scale_map(scale: torch.Tensor) -> ConvMap:
    """Per-channel multiplication (a folded BatchNorm) as a 1x1 convolution."""
    return ConvMap(torch.diag(_f64(scale))[:, :, None, None], (1, 1), (0, 0))


def subsample_map(channels: int, step_hw: Tuple[int, int]) -> ConvMap:
    """``x[:, :, ::sh, ::sw]`` as a strided identity 1x1 convolution."""
    return ConvMap(torch.eye(channels, dtype=torch.float64)[:, :, None, None], tuple(step_hw), (0, 0))


def channel_pad_map(channels: int, before: int, after: int) -> ConvMap:
    """Zero channels added before and after (option-A shortcut) as a 1x1 convolution."""
    weight = torch.zeros(before + channels + after, channels, 1, 1, dtype=torch.float64)
    weight[before:before + channels, :, 0, 0] = torch.eye(channels, dtype=torch.float64)
    return ConvMap(weight, (1, 1), (0, 0))


def avg_pool_map(channels: int, kernel: Tuple[int, int], stride: Tuple[int, int],
                 padding: Tuple[int, int]) -> ConvMap:
    """Average pooling (zero padding counted in the average) as a depthwise-diagonal convolution."""
    weight = torch.zeros(channels, channels, *kernel, dtype=torch.float64)
    for c in range(channels):
        weight[c, c] = 1.0 / (kernel[0] * kernel[1])
    return ConvMap(weight, tuple(stride), tuple(padding))


def adaptive_avg_pool_matrix(shape: Tuple[int, int, int], out_hw: Tuple[int, int]) -> DenseMap:
    """torch's adaptive average pooling of a (C, H, W) input to ``out_hw`` as a matrix on the input
    flattened in (C, H, W) order (block-diagonal over the channels). Where a size does not divide,
    its windows ``[floor(i H / h), ceil((i + 1) H / h))`` overlap or repeat pixels (1x1 to 7x7 copies
    the pixel), which no convolution computes."""
    channels, height, width = shape
    pixels = torch.eye(height * width, dtype=torch.float64).reshape(height * width, 1, height, width)
    per_channel = F.adaptive_avg_pool2d(pixels, out_hw).reshape(height * width, -1).T  # (out pixels, in pixels)
    weight = torch.einsum("cd,oi->codi", torch.eye(channels, dtype=torch.float64), per_channel)
    return DenseMap(weight.reshape(channels * per_channel.shape[0], channels * height * width))


def compose(first: Optional[LinearMap], second: LinearMap, input_shape: Tuple[int, ...]) -> LinearMap:
    """The single map equal to ``second(first(x))`` for inputs of ``input_shape`` (C, H, W) or (N,).

    ``first=None`` is the identity. Raises :class:`FoldError` where no exact single map exists.
    """
    if first is None:
        return second
    if isinstance(first, ConvMap) and isinstance(second, ConvMap):
        return _conv_after_conv(first, second)
    if isinstance(second, DenseMap):
        if isinstance(first, DenseMap):
            return DenseMap(second.weight @ first.weight)
        out_shape = first(torch.zeros(1, *input_shape, dtype=torch.float64)).shape[1:]
        grad_out = second.weight.reshape(second.weight.shape[0], *out_shape)
        weight = torch.nn.grad.conv2d_input((second.weight.shape[0], *input_shape), first.weight,
                                            grad_out, first.stride, first.padding)
        return DenseMap(weight.reshape(second.weight.shape[0], -1))
    raise FoldError("a convolution cannot follow a dense layer without a ReLU between them")


def _conv_after_conv(first: ConvMap, second: ConvMap) -> ConvMap:
    """Fuse two convolutions; exact when the second one has no padding, or when the first one is
    pooling-like (no padding, kernel <= stride), since then the first map of a zero-padded border
    is zero too."""
    k1 = first.weight.shape[2:]
    for axis in range(2):
        exact = second.padding[axis] == 0 or (first.padding[axis] == 0 and k1[axis] <= first.stride[axis])
        if not exact:
            raise FoldError("two padded convolutions without a ReLU between them cannot be fused exactly")
    s1, p1, k2 = first.stride, first.padding, second.weight.shape[2:]
    size = [k1[a] + s1[a] * (k2[a] - 1) for a in range(2)]
    weight = torch.zeros(second.weight.shape[0], first.weight.shape[1], *size, dtype=torch.float64)
    for m in range(k2[0]):
        for n in range(k2[1]):
            weight[:, :, s1[0] * m:s1[0] * m + k1[0], s1[1] * n:s1[1] * n + k1[1]] += torch.einsum(
                "oc,cikl->oikl", second.weight[:, :, m, n], first.weight)
    stride = (s1[0] * second.stride[0], s1[1] * second.stride[1])
    padding = (p1[0] + s1[0] * second.padding[0], p1[1] + s1[1] * second.padding[1])
    structure = ((first.groups, first.dilation) if second.channel_diagonal else
                 (second.groups, second.dilation) if first.channel_diagonal else (1, (1, 1)))
    return ConvMap(weight, stride, padding, *structure)
