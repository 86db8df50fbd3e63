"""Lower a PyTorch ReLU network to the IR with torch.fx (real units, before calibration).

Every ReLU (or :class:`ClipFloorShift`, whose learned threshold the converter takes; the layer's
``origin`` is the module's name) becomes a :class:`GatedIF` layer; the linear pieces between ReLUs (conv, BatchNorm,
average pooling, option-A slicing and channel padding, flatten, linear, residual adds) are fused into
one synapse per source (see :mod:`.linear`); the input normalisation is folded into the first
synapses so the network consumes raw pixels; the final linear expression becomes the
:class:`Readout`. Thresholds are 1 (real units) and schedules are placeholders: calibration and the
schedule pass (``passes.py``) set them.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp

from ..ir import Conv2d, Dense, GatedIF, Input, Network, Readout, Schedule, Synapse
from ..training.activation import ClipFloorShift
from .linear import (ConvMap, DenseMap, FoldError, LinearMap, avg_pool_map, channel_pad_map,
                     channel_scale_map, compose, conv_map, subsample_map)


class ConversionError(ValueError):
    """The model cannot be converted; the message names the module and what to do instead."""


#: Schedule of a freshly lowered layer; ``passes.assign_schedules`` replaces it.
UNSCHEDULED = Schedule("if", 0, 1)

_ACTIVATION_HINT = "only ReLU converts to integrate-and-fire neurons: replace it with nn.ReLU and retrain"
_MAXPOOL_HINT = ("max pooling cannot be rate-coded: replace it with nn.AvgPool2d (same kernel and stride) "
                 "and retrain")
_UNSUPPORTED_MODULES = {
    nn.MaxPool1d: _MAXPOOL_HINT, nn.MaxPool2d: _MAXPOOL_HINT, nn.AdaptiveMaxPool2d: _MAXPOOL_HINT,
    nn.Sigmoid: _ACTIVATION_HINT, nn.Tanh: _ACTIVATION_HINT, nn.GELU: _ACTIVATION_HINT,
    nn.SiLU: _ACTIVATION_HINT, nn.ELU: _ACTIVATION_HINT, nn.LeakyReLU: _ACTIVATION_HINT,
    nn.ReLU6: _ACTIVATION_HINT + " (ReLU6 clips at 6)", nn.Hardswish: _ACTIVATION_HINT,
    nn.Softmax: "drop the softmax: the readout's argmax gives the same prediction",
    nn.MultiheadAttention: "attention multiplies activations with each other, which spikes cannot do; "
                           "use a convolutional network",
    nn.LayerNorm: "only BatchNorm (fixed statistics) can be folded into weights; use BatchNorm",
    nn.GroupNorm: "only BatchNorm (fixed statistics) can be folded into weights; use BatchNorm",
}
_UNSUPPORTED_FUNCTIONS = {
    F.max_pool2d: _MAXPOOL_HINT, torch.max_pool2d: _MAXPOOL_HINT, F.adaptive_max_pool2d: _MAXPOOL_HINT,
    torch.sigmoid: _ACTIVATION_HINT, F.sigmoid: _ACTIVATION_HINT, torch.tanh: _ACTIVATION_HINT,
    F.gelu: _ACTIVATION_HINT, F.silu: _ACTIVATION_HINT, F.softmax: "drop the softmax",
    F.scaled_dot_product_attention: "attention is not supported; use a convolutional network",
    torch.cat: "concatenation is not supported (a later format version may add it)",
    torch.matmul: "activation-by-activation products are not supported",
}
_RELU = {F.relu, torch.relu, torch.relu_}
_ADD = {operator.add, operator.iadd, torch.add}
_PASS_MODULES = (nn.Dropout, nn.Dropout2d, nn.Identity)


@dataclass
class _Value:
    """A tensor of the ANN as a linear expression of layer outputs: ``sum(map(source)) + bias``."""
    terms: List[Tuple[str, Optional[LinearMap]]]
    bias: Optional[torch.Tensor]
    shape: Tuple[int, ...]


class _Tracer(fx.Tracer):
    """Symbolic tracer that names the innermost module when tracing fails; keeps
    :class:`ClipFloorShift` activations as leaves."""

    def is_leaf_module(self, m, qualname):
        return isinstance(m, ClipFloorShift) or super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        try:
            return super().call_module(m, forward, args, kwargs)
        except ConversionError:
            raise
        except Exception as err:
            name = self.path_of_module(m)
            raise ConversionError(
                f"cannot trace module {name!r} ({type(m).__name__}): {err}. Data-dependent control flow "
                "(if/for on tensor values) cannot be converted: make the forward pass static") from err


def lower(model: nn.Module, input_shape_chw: Tuple[int, int, int], mean: Sequence[float],
          std: Sequence[float], pixel_max: float = 255.0) -> Network:
    """Lower ``model`` (eval mode) to a real-unit IR network that consumes raw pixels.

    ``mean``/``std``: the per-channel normalisation the model expects on pixels scaled to [0, 1]
    (the model sees ``(pixel / pixel_max - mean) / std``).
    """
    was_training = model.training
    model.eval()
    try:
        try:
            graph = _Tracer().trace(model)
        except ConversionError:
            raise
        except Exception as err:
            raise ConversionError(f"cannot trace the model's forward: {err}. Data-dependent control flow "
                                  "cannot be converted: make the forward pass static") from err
        module = fx.GraphModule(model, graph)
        first = next(iter(model.parameters()), None)
        sample = torch.zeros(1, *input_shape_chw, dtype=first.dtype if first is not None else torch.float32)
        ShapeProp(module).propagate(sample)
        return _Lowering(module, input_shape_chw, mean, std, pixel_max).run()
    finally:
        model.train(was_training)


class _Lowering:
    def __init__(self, module: fx.GraphModule, input_shape, mean, std, pixel_max):
        self.module = module
        self.modules = dict(module.named_modules())
        self.input_shape = tuple(input_shape)
        channels = input_shape[0]
        self.mean = _per_channel(mean, channels, "mean")
        self.std = _per_channel(std, channels, "std")
        self.pixel_max = float(pixel_max)
        self.layers: List = []
        self.source_shapes: Dict[str, Tuple[int, ...]] = {}
        self.env: Dict[fx.Node, object] = {}

    # --- driver -------------------------------------------------------------------------------
    def run(self) -> Network:
        self._refuse_known_unsupported()
        for node in self.module.graph.nodes:
            try:
                if node.op == "output":
                    return self._finish(node)
                self.env[node] = getattr(self, "_op_" + node.op)(node)
            except (FoldError, ValueError) as err:
                if isinstance(err, ConversionError):
                    raise
                raise ConversionError(f"{self._where(node)}: {err}") from err
        raise ConversionError("the traced graph has no output")

    def _refuse_known_unsupported(self) -> None:
        """Name a known-unsupported layer even where an earlier node would fail first."""
        for node in self.module.graph.nodes:
            if node.op == "call_module":
                mod = self.modules[node.target]
                for cls, hint in _UNSUPPORTED_MODULES.items():
                    if isinstance(mod, cls):
                        raise ConversionError(f"module {node.target!r} ({type(mod).__name__}) is not supported: {hint}")
            elif node.op == "call_function" and node.target in _UNSUPPORTED_FUNCTIONS:
                raise self._unsupported(node, _UNSUPPORTED_FUNCTIONS[node.target])

    def _where(self, node: fx.Node) -> str:
        stack = node.meta.get("nn_module_stack") or {}
        owner = next(reversed(stack.keys()), None) if stack else None
        target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", node.target)
        where = f"graph node {node.name!r} ({target})"
        return where + (f" in module {owner!r}" if owner and owner != node.target else "")

    def _unsupported(self, node: fx.Node, hint: str) -> ConversionError:
        return ConversionError(f"{self._where(node)} is not supported: {hint}")

    def _shape(self, node: fx.Node) -> Tuple[int, ...]:
        meta = node.meta.get("tensor_meta")
        if meta is None or not hasattr(meta, "shape"):
            raise self._unsupported(node, "it does not produce a single tensor")
        return tuple(meta.shape[1:])

    def _value(self, node, arg) -> _Value:
        value = self.env.get(arg) if isinstance(arg, fx.Node) else None
        if not isinstance(value, _Value):
            raise self._unsupported(node, f"argument {arg!r} is not an activation tensor")
        return value

    # --- fx opcodes ---------------------------------------------------------------------------
    def _op_placeholder(self, node):
        name = node.name
        self.layers.append(Input(name, self.input_shape, UNSCHEDULED))
        self.source_shapes[name] = self.input_shape
        scale = 1.0 / (self.pixel_max * self.std)
        shift = (-self.mean / self.std)[:, None, None].expand(self.input_shape).clone()
        return _Value([(name, channel_scale_map(scale))], shift, self.input_shape)

    def _op_get_attr(self, node):
        raise self._unsupported(node, "parameters used directly in forward() cannot be folded; "
                                      "wrap them in nn.Conv2d / nn.Linear / nn.BatchNorm2d modules")

    def _op_call_module(self, node):
        mod = self.modules[node.target]
        x = self._value(node, node.args[0])
        if isinstance(mod, (nn.ReLU, ClipFloorShift)):
            return self._neuron(node, x, origin=node.target)
        if isinstance(mod, _PASS_MODULES):
            return x
        if isinstance(mod, nn.Conv2d):
            if mod.padding_mode != "zeros" or isinstance(mod.padding, str):
                raise self._unsupported(node, "only numeric zero padding is supported")
            m = conv_map(mod.weight, mod.stride, mod.padding, mod.groups, mod.dilation)
            return self._apply(node, x, m, mod.bias)
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            return self._batch_norm(node, x, mod)
        if isinstance(mod, nn.Linear):
            return self._apply(node, x, DenseMap(mod.weight.detach().double()), mod.bias)
        if isinstance(mod, nn.AvgPool2d):
            return self._avg_pool(node, x, mod.kernel_size, mod.stride, mod.padding, mod.ceil_mode,
                                  mod.count_include_pad, mod.divisor_override)
        if isinstance(mod, nn.AdaptiveAvgPool2d):
            return self._adaptive_avg_pool(node, x)
        if isinstance(mod, nn.Flatten):
            return self._flatten(node, x)
        raise ConversionError(f"module {node.target!r} ({type(mod).__name__}) is not supported: the converter "
                              "handles Conv2d, Linear, BatchNorm, ReLU, AvgPool2d, AdaptiveAvgPool2d, Flatten, "
                              "Dropout, Identity, residual adds and option-A shortcuts")

    def _op_call_function(self, node):
        fn = node.target
        if fn in _RELU:
            return self._neuron(node, self._value(node, node.args[0]), origin=self._origin(node))
        if fn in _ADD:
            return self._add(node)
        if fn is operator.getitem:
            return self._getitem(node)
        if fn is F.pad:
            return self._pad(node)
        if fn is F.avg_pool2d:
            args = _bind(node, ["input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                                "divisor_override"], dict(stride=None, padding=0, ceil_mode=False,
                                                          count_include_pad=True, divisor_override=None))
            return self._avg_pool(node, self._value(node, args["input"]), args["kernel_size"], args["stride"],
                                  args["padding"], args["ceil_mode"], args["count_include_pad"],
                                  args["divisor_override"])
        if fn is F.adaptive_avg_pool2d:
            return self._adaptive_avg_pool(node, self._value(node, node.args[0]))
        if fn is torch.flatten:
            return self._flatten(node, self._value(node, node.args[0]))
        if fn in (F.dropout, F.dropout2d):
            return self._value(node, node.args[0])
        if fn is getattr:
            return None  # x.shape: used only for view/reshape sizes, checked through tensor_meta
        raise self._unsupported(node, f"function {getattr(fn, '__name__', fn)} has no spiking equivalent here")

    def _op_call_method(self, node):
        method = node.target
        if method in ("relu", "relu_"):
            return self._neuron(node, self._value(node, node.args[0]), origin=self._origin(node))
        if method in ("add", "add_", "__add__", "__iadd__"):
            return self._add(node)
        if method in ("size", "dim"):
            return None
        if method in ("view", "reshape", "flatten"):
            return self._flatten(node, self._value(node, node.args[0]))
        if method == "mean":
            return self._mean(node)
        if method in ("contiguous", "clone", "detach"):
            return self._value(node, node.args[0])
        raise self._unsupported(node, f"tensor method .{method}() has no spiking equivalent here")

    def _origin(self, node: fx.Node) -> str:
        stack = node.meta.get("nn_module_stack") or {}
        return f"{next(reversed(stack.keys()))}.{node.name}" if stack else node.name

    # --- operations ---------------------------------------------------------------------------
    def _apply(self, node, x: _Value, m: LinearMap, add_bias=None, out_shape=None) -> _Value:
        out_shape = out_shape or self._shape(node)
        if isinstance(m, ConvMap) and len(x.shape) != 3:
            raise self._unsupported(node, "a convolution needs a (C, H, W) input")
        if isinstance(m, DenseMap) and len(x.shape) != 1:
            raise self._unsupported(node, "nn.Linear on a (C, H, W) tensor: flatten it first")
        terms = [(src, compose(prev, m, self.source_shapes[src])) for src, prev in x.terms]
        bias = None if x.bias is None else m(x.bias[None])[0].reshape(out_shape)
        if add_bias is not None:
            extra = add_bias.detach().double().reshape((-1,) + (1,) * (len(out_shape) - 1)).expand(out_shape)
            bias = extra.clone() if bias is None else bias + extra
        return _Value(terms, bias, out_shape)

    def _batch_norm(self, node, x: _Value, bn) -> _Value:
        if bn.running_mean is None:
            raise self._unsupported(node, "BatchNorm without running statistics cannot be folded")
        scale = (bn.weight.detach().double() if bn.affine else 1.0) / torch.sqrt(bn.running_var.double() + bn.eps)
        shift = (bn.bias.detach().double() if bn.affine else 0.0) - bn.running_mean.double() * scale
        if len(x.shape) == 3:
            m = channel_scale_map(scale)
        else:
            m = DenseMap(torch.diag(scale))
        return self._apply(node, x, m, shift)

    def _avg_pool(self, node, x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
        pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)
        kernel = pair(kernel)
        stride = kernel if stride is None or stride == [] else pair(stride)
        padding = pair(padding)
        if ceil_mode or divisor_override or (not count_include_pad and padding != (0, 0)):
            raise self._unsupported(node, "average pooling with ceil_mode, divisor_override or "
                                          "count_include_pad=False with padding")
        return self._apply(node, x, avg_pool_map(x.shape[0], kernel, stride, padding))

    def _adaptive_avg_pool(self, node, x) -> _Value:
        out_hw = self._shape(node)[1:]
        if any(x.shape[1 + i] % out_hw[i] for i in range(2)):
            raise self._unsupported(node, f"adaptive pooling from {x.shape[1:]} to {out_hw} is not a fixed "
                                          "average pooling; use sizes that divide")
        kernel = tuple(x.shape[1 + i] // out_hw[i] for i in range(2))
        return self._apply(node, x, avg_pool_map(x.shape[0], kernel, kernel, (0, 0)))

    def _mean(self, node) -> _Value:
        x = self._value(node, node.args[0])
        dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
        dims = tuple(sorted(d % 4 for d in (dims if isinstance(dims, (tuple, list)) else [dims])))
        if dims != (2, 3) or len(x.shape) != 3:
            raise self._unsupported(node, "only the spatial mean x.mean((2, 3)) (global average pooling) "
                                          "is supported")
        pooled = self._apply(node, x, avg_pool_map(x.shape[0], x.shape[1:], x.shape[1:], (0, 0)),
                             out_shape=(x.shape[0], 1, 1))
        if len(self._shape(node)) == 3:
            return pooled
        return _Value(pooled.terms, None if pooled.bias is None else pooled.bias.reshape(-1), self._shape(node))

    def _flatten(self, node, x: _Value) -> _Value:
        out_shape = self._shape(node)
        if len(out_shape) != 1 or out_shape[0] != int(np.prod(x.shape)):
            raise self._unsupported(node, f"reshaping {x.shape} to {out_shape}: only flattening to "
                                          "(batch, features) is supported")
        return _Value(list(x.terms), None if x.bias is None else x.bias.reshape(-1), out_shape)

    def _add(self, node) -> _Value:
        a, b = (self._value(node, arg) for arg in node.args[:2])
        if len(node.args) > 2 or "alpha" in node.kwargs or a.shape != b.shape:
            raise self._unsupported(node, f"only plain adds of equal shapes are supported ({a.shape} + {b.shape})")
        if a.bias is None or b.bias is None:
            bias = a.bias if b.bias is None else b.bias
        else:
            bias = a.bias + b.bias
        return _Value(a.terms + b.terms, bias, a.shape)

    def _getitem(self, node):
        base = self.env.get(node.args[0])
        if not isinstance(base, _Value):
            return None  # indexing a size tuple
        index = node.args[1]
        index = index if isinstance(index, tuple) else (index,)
        if len(index) > 4 or not all(isinstance(s, slice) for s in index):
            raise self._unsupported(node, "only strided slicing x[:, :, ::s, ::s] is supported")
        full = index + (slice(None),) * (4 - len(index))
        steps = []
        for dim, s in enumerate(full):
            step = s.step or 1
            if s.start not in (None, 0) or s.stop is not None or (dim < 2 and step != 1):
                raise self._unsupported(node, "only strided slicing x[:, :, ::s, ::s] is supported")
            steps.append(step)
        return self._apply(node, base, subsample_map(base.shape[0], (steps[2], steps[3])))

    def _pad(self, node):
        args = _bind(node, ["input", "pad", "mode", "value"], dict(mode="constant", value=0.0))
        x = self._value(node, args["input"])
        pad = tuple(args["pad"])
        if args["mode"] != "constant" or args["value"] not in (0, 0.0, None) or len(pad) != 6 or any(pad[:4]):
            raise self._unsupported(node, "only zero padding of the channel dimension (option-A shortcut) is "
                                          "supported; spatial padding belongs in the convolution")
        return self._apply(node, x, channel_pad_map(x.shape[0], pad[4], pad[5]))

    def _neuron(self, node, x: _Value, origin: str) -> _Value:
        name = node.name
        synapses = tuple(Synapse(src, _to_ir_op(m, self.source_shapes[src], x.shape)) for src, m in x.terms)
        bias = torch.zeros(x.shape, dtype=torch.float64) if x.bias is None else x.bias
        self.layers.append(GatedIF(name, x.shape, synapses, threshold=1.0, bias=_compact_bias(bias),
                                   v_init=0.0, schedule=UNSCHEDULED, origin=origin))
        self.source_shapes[name] = x.shape
        return _Value([(name, None)], None, x.shape)

    def _finish(self, node) -> Network:
        arg = node.args[0]
        x = self._value(node, arg)
        if len(x.shape) != 1:
            raise ConversionError(f"the model's output has shape {x.shape}: it must end in a linear layer "
                                  "giving (batch, classes)")
        if len(self.layers) == 1:
            raise ConversionError("the model has no ReLU: nothing to convert to spiking neurons")
        synapses = tuple(Synapse(src, _to_ir_op(m, self.source_shapes[src], x.shape)) for src, m in x.terms)
        bias = np.zeros(x.shape) if x.bias is None else x.bias.numpy()
        origin = arg.target if arg.op == "call_module" else arg.name
        self.layers.append(Readout("readout", x.shape, synapses, bias, UNSCHEDULED, origin=str(origin)))
        return Network(self.layers)


def _to_ir_op(m: Optional[LinearMap], source_shape, target_shape):
    """IR synapse op for a fused map (identity -> 1x1 identity conv or identity matrix)."""
    if m is None:
        if tuple(source_shape) != tuple(target_shape):
            raise ConversionError(f"a ReLU directly after a reshape ({source_shape} -> {target_shape}) is not "
                                  "supported")
        m = (subsample_map(source_shape[0], (1, 1)) if len(source_shape) == 3
             else DenseMap(torch.eye(source_shape[0], dtype=torch.float64)))
    if isinstance(m, ConvMap):
        if len(target_shape) != 3:
            raise ConversionError("a ReLU directly after flatten is not supported: apply the ReLU first")
        return Conv2d(m.weight.numpy(), m.stride, m.padding)
    return Dense(m.weight.numpy())


def _compact_bias(bias: torch.Tensor) -> np.ndarray:
    """Per-channel bias when it is spatially uniform, else per neuron (exact either way)."""
    arr = bias.numpy()
    if arr.ndim == 3:
        per_channel = arr[:, :1, :1]
        if np.array_equal(np.broadcast_to(per_channel, arr.shape), arr):
            return per_channel[:, 0, 0].copy()
    return arr.copy()


def _per_channel(values, channels: int, what: str) -> torch.Tensor:
    arr = torch.as_tensor(np.broadcast_to(np.asarray(values, dtype=np.float64), (channels,)).copy())
    if what == "std" and bool((arr <= 0).any()):
        raise ConversionError(f"input {what} must be positive, got {values}")
    return arr


def _bind(node: fx.Node, names: List[str], defaults: dict) -> dict:
    bound = dict(defaults)
    bound.update(zip(names, node.args))
    bound.update(node.kwargs)
    return bound
