"""The clip-floor-shift activation and the torch.fx rewrite that puts it in place of every ReLU.

A bistable neuron with threshold ``theta``, ``V(0) = theta / 2`` and frame reset that integrates a
window of P steps fires ``c = clip(floor(P z / theta + 1/2), 0, P)`` spikes, ``z`` being its ANN
pre-activation, each worth ``theta / P`` activation units over the window. A network trained with
that activation (Bu et al., ICLR 2022, "QCFS", with L = P levels) converts to a BSNN whose every
complete frame computes the trained network exactly.
"""
from __future__ import annotations

import copy
from typing import Dict, List, Sequence, Tuple

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

    ``levels``: L, the bistable window P in steps. ``threshold``: theta in activation units, a scalar
    or one per channel (dimension 1 of the input). The floor passes gradients straight through (as
    in QCFS), so ``x`` gets gradient 1 inside ``[0, theta]`` and ``theta`` learns the clipping range.
    """

    def __init__(self, levels: int, threshold):
        super().__init__()
        if int(levels) != levels or levels < 1:
            raise ValueError(f"levels must be a positive integer, got {levels!r}")
        self.levels = int(levels)
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


def _is_relu(node: fx.Node, modules: Dict[str, nn.Module]) -> bool:
    return ((node.op == "call_module" and isinstance(modules.get(node.target), nn.ReLU))
            or (node.op == "call_function" and node.target in _RELU_FUNCTIONS)
            or (node.op == "call_method" and node.target in ("relu", "relu_")))


def clip_floor_shift_model(model: nn.Module, levels: int, input_shape: Sequence[int],
                           channelwise: bool = False) -> fx.GraphModule:
    """A copy of ``model`` with every ReLU call (module, functional or method, shared modules once
    per use) replaced by its own :class:`ClipFloorShift` submodule ``cfs_<fx node name>``, thresholds
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
        if not _is_relu(node, modules):
            continue
        channels = node.meta["tensor_meta"].shape[1]
        name = MODULE_PREFIX + node.name
        gm.add_submodule(name, ClipFloorShift(levels, torch.ones(channels) if channelwise else torch.tensor(1.0)))
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
    a ReLU: ``init="percentile"``, the ``percentile``-th percentile of the positive inputs (the
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
            act = torch.relu(args[0]).float()
            collected[name].append(act.transpose(0, 1).reshape(act.shape[1], -1).cpu().numpy())
            return torch.relu(args[0])
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
        module.threshold.copy_(torch.as_tensor(values, dtype=module.threshold.dtype))
