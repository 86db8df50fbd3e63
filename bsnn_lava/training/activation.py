"""The clip-floor-shift activation and the torch.fx rewrite that puts it in place of every ReLU.

A bistable neuron with threshold ``theta``, ``V(0) = theta / 2`` and frame reset that integrates a
window of P steps fires ``c = clip(floor(P z / theta + 1/2), 0, P)`` spikes, ``z`` being its ANN
pre-activation, each worth ``theta / P`` activation units over the window. A network trained with
that activation (Bu et al., ICLR 2022, "QCFS", with L = P levels) converts to a BSNN whose every
complete frame computes the trained network exactly.
"""
from __future__ import annotations

import copy
import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp

from ..thresholds import least_squares_threshold, positive_percentile

#: Prefix of the submodules the rewrite adds, followed by the fx name of the ReLU call they replace.
MODULE_PREFIX = "cfs_"
_RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_}


class ClipFloorShift(nn.Module):
    """``theta / L * clip(floor(x L / theta + 1/2), 0, L)`` with a learnable ``theta``.

    ``ceiling``: the upper bound of the activation it replaced (ReLU6: 6; a ReLU: infinity), which
    calibration clips the activations at and starts ``theta`` at or below.

    ``levels``: L, the bistable window P in steps. ``threshold``: theta in activation units, a scalar
    or one per channel (dimension 1 of the input). The floor passes gradients straight through (as
    in QCFS), so ``x`` gets gradient 1 inside ``[0, theta]`` and ``theta`` learns the clipping range.
    """

    def __init__(self, levels: int, threshold, ceiling: float = math.inf):
        super().__init__()
        if int(levels) != levels or levels < 1:
            raise ValueError(f"levels must be a positive integer, got {levels!r}")
        self.levels = int(levels)
        self.ceiling = float(ceiling)
        self.threshold = nn.Parameter(torch.as_tensor(threshold, dtype=torch.float32).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        theta = self.threshold.to(x.dtype)
        if theta.ndim == 1:
            theta = theta.reshape(1, -1, *([1] * (x.ndim - 2)))
        y = x * self.levels / theta + 0.5
        y = y + (torch.floor(y) - y).detach()
        return y.clamp(0, self.levels) * theta / self.levels

    def extra_repr(self) -> str:
        return f"levels={self.levels}, threshold shape={tuple(self.threshold.shape)}"


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, ClipFloorShift) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> fx.GraphModule:
    """``model`` as an fx GraphModule, :class:`ClipFloorShift` modules kept as leaves."""
    return fx.GraphModule(model, _Tracer().trace(model))


_CLAMP_FUNCTIONS = {torch.clamp, torch.clip, torch.clamp_min}
_CLAMP_METHODS = ("clamp", "clamp_", "clip", "clip_", "clamp_min", "clamp_min_")


class ClipError(ValueError):
    """A clamp or hardtanh whose lower bound is not 0: no neuron computes it."""


def _bound(node: fx.Node, names: Sequence[str], defaults: Sequence) -> List:
    """The values of the arguments ``names`` (after the tensor) of a call, positional or keyword."""
    values = list(defaults)
    for i, value in enumerate(node.args[1:1 + len(names)]):
        values[i] = value
    for i, name in enumerate(names):
        if name in node.kwargs:
            values[i] = node.kwargs[name]
    return values


def relu_ceiling(node: fx.Node, modules: Dict[str, nn.Module]) -> Optional[float]:
    """If ``node`` computes a ReLU, or a ReLU clipped above (``nn.ReLU6``, ``F.relu6``,
    ``nn.Hardtanh(0, c)``, ``F.hardtanh(x, 0, c)``, ``torch.clamp(x, 0, c)``, ``x.clamp(min=0)``...):
    its ceiling c (``math.inf`` for a plain ReLU); ``None`` for anything else. Raises
    :class:`ClipError` for a clamp or hardtanh whose lower bound is not 0 or whose ceiling is not
    positive."""
    low, high = None, None
    if node.op == "call_module":
        module = modules.get(node.target)
        if isinstance(module, nn.ReLU):
            return math.inf
        if isinstance(module, nn.Hardtanh):  # nn.ReLU6 is a Hardtanh(0, 6)
            low, high = module.min_val, module.max_val
    elif node.op == "call_function":
        if node.target in _RELU_FUNCTIONS:
            return math.inf
        if node.target is F.relu6:
            return 6.0
        if node.target is F.hardtanh:
            low, high = _bound(node, ["min_val", "max_val"], [-1.0, 1.0])
        elif node.target in _CLAMP_FUNCTIONS:
            low, high = _bound(node, ["min", "max"], [None, None])
    elif node.op == "call_method":
        if node.target in ("relu", "relu_"):
            return math.inf
        if node.target in _CLAMP_METHODS:
            low, high = _bound(node, ["min", "max"], [None, None])
    if low is None and high is None:
        return None
    if not isinstance(low, (int, float)) or low != 0 or not (high is None or (isinstance(high, (int, float))
                                                                             and high > 0)):
        raise ClipError(f"a clamp to [{low}, {high}] has no spiking equivalent: only a lower bound of 0 and a "
                        "positive (or no) upper bound converts, as a ReLU clipped above")
    return math.inf if high is None else float(high)


def clip_floor_shift_model(model: nn.Module, levels: int, input_shape: Sequence[int],
                           channelwise: bool = False) -> fx.GraphModule:
    """A copy of ``model`` with every ReLU call (module, functional or method, shared modules once
    per use; clipped ReLUs such as ReLU6 too, :func:`relu_ceiling`) replaced by its own
    :class:`ClipFloorShift` submodule ``cfs_<fx node name>``, thresholds
    1.0 (per channel when ``channelwise``); ``input_shape`` (C, H, W) sizes the per-channel ones.
    Deterministic: the same model class gives the same names, so checkpoints load into it."""
    gm = trace(copy.deepcopy(model))
    was_training = gm.training
    gm.eval()
    ShapeProp(gm).propagate(torch.zeros(1, *input_shape, dtype=next(gm.parameters()).dtype))
    gm.train(was_training)
    modules = dict(gm.named_modules())
    replaced = 0
    for node in list(gm.graph.nodes):
        try:
            ceiling = relu_ceiling(node, modules)
        except ClipError as err:
            raise ValueError(f"graph node {node.name!r}: {err}") from err
        if ceiling is None:
            continue
        channels = node.meta["tensor_meta"].shape[1]
        name = MODULE_PREFIX + node.name
        gm.add_submodule(name, ClipFloorShift(levels, torch.ones(channels) if channelwise else torch.tensor(1.0),
                                              ceiling=ceiling))
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(name, (node.args[0],))
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        replaced += 1
    if not replaced:
        raise ValueError(f"{type(model).__name__} has no ReLU to replace")
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    type(gm).__name__ = f"{type(model).__name__}ClipFloorShift"  # fx gives every GraphModule its own class
    return gm


def clip_floor_shift_modules(model: nn.Module) -> List[Tuple[str, ClipFloorShift]]:
    """``(qualified name, module)`` of every :class:`ClipFloorShift` in ``model``."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, ClipFloorShift)]


#: How :func:`calibrate_thresholds` starts a threshold (see :mod:`bsnn_lava.thresholds`).
THRESHOLD_INITS = ("percentile", "least-squares")


@torch.no_grad()
def calibrate_thresholds(model: nn.Module, inputs: torch.Tensor, percentile: float = 99.9,
                         batch_size: int = 100, init: str = "percentile") -> None:
    """Set every :class:`ClipFloorShift` threshold from its inputs, with every such module acting as
    the ReLU it replaced (clipped at its ``ceiling``; the threshold starts at most there): ``init="percentile"``, the ``percentile``-th percentile of the positive inputs (the
    converter's calibration of the ReLU network, :func:`bsnn_lava.conversion.calibrate`);
    ``"least-squares"``, the threshold whose quantization with the module's levels is closest to the
    ReLU's output in squared error (:func:`bsnn_lava.thresholds.least_squares_threshold`). Per
    channel where the threshold is. ``inputs``: normalised model inputs."""
    if init not in THRESHOLD_INITS:
        raise ValueError(f"init must be one of {', '.join(THRESHOLD_INITS)}, got {init!r}")
    sites = clip_floor_shift_modules(model)
    collected: Dict[str, list] = {name: [] for name, _ in sites}

    def recorder(name):
        def hook(module, args, output):
            act = args[0].clamp(0.0, module.ceiling)
            collected[name].append(act.float().transpose(0, 1).reshape(act.shape[1], -1).cpu().numpy())
            return act
        return hook

    handles = [m.register_forward_hook(recorder(name)) for name, m in sites]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, inputs.shape[0], batch_size):
            model(inputs[start:start + batch_size])
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    choose = ((lambda act, levels: positive_percentile(act, percentile)) if init == "percentile" else
              (lambda act, levels: least_squares_threshold(act, levels, percentile)))
    for name, module in sites:
        act = np.concatenate(collected[name], axis=1)
        if module.threshold.ndim == 1:
            values = [choose(row, module.levels) for row in act]
        else:
            values = choose(act.ravel(), module.levels)
        values = np.minimum(values, module.ceiling)
        module.threshold.copy_(torch.as_tensor(values, dtype=module.threshold.dtype))
