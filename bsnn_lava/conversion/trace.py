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

import math
import operator
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp

from ..ir import Conv2d, Dense, GatedIF, Input, MaxPool, Network, Readout, Schedule, Synapse
from ..training.activation import ClipError, ClipFloorShift, relu_ceiling
from .linear import (ConvMap, DenseMap, FoldError, LinearMap, adaptive_avg_pool_matrix, avg_pool_map,
                     channel_pad_map, channel_scale_map, compact_conv, compose, conv_map, subsample_map)


class ConversionError(ValueError):
    """The model cannot be converted; the message names the module and what to do instead."""


#: Schedule of a freshly lowered layer; ``passes.assign_schedules`` replaces it.
UNSCHEDULED = Schedule("bistable", 0, 1)

_ACTIVATION_HINT = ("only ReLU (and ReLUs clipped above: ReLU6, Hardtanh(0, c), clamp(0, c)) converts to "
                    "integrate-and-fire neurons: replace it with nn.ReLU and retrain")
_UNSUPPORTED_MODULES = {
    nn.MaxPool1d: "only 2-D max pooling (nn.MaxPool2d) is supported",
    nn.Sigmoid: _ACTIVATION_HINT, nn.Tanh: _ACTIVATION_HINT, nn.GELU: _ACTIVATION_HINT,
    nn.SiLU: _ACTIVATION_HINT, nn.ELU: _ACTIVATION_HINT, nn.LeakyReLU: _ACTIVATION_HINT,
    nn.Hardswish: _ACTIVATION_HINT,
    nn.Softmax: "drop the softmax: the readout's argmax gives the same prediction",
    nn.MultiheadAttention: "attention multiplies activations with each other, which spikes cannot do; "
                           "use a convolutional network",
    nn.LayerNorm: "only BatchNorm (fixed statistics) can be folded into weights; use BatchNorm",
    nn.GroupNorm: "only BatchNorm (fixed statistics) can be folded into weights; use BatchNorm",
}
_UNSUPPORTED_FUNCTIONS = {
    torch.sigmoid: _ACTIVATION_HINT, F.sigmoid: _ACTIVATION_HINT, torch.tanh: _ACTIVATION_HINT,
    F.gelu: _ACTIVATION_HINT, F.silu: _ACTIVATION_HINT, F.softmax: "drop the softmax",
    F.scaled_dot_product_attention: "attention is not supported; use a convolutional network",
    torch.matmul: "activation-by-activation products are not supported",
}
_ADD = {operator.add, operator.iadd, torch.add}
_CAT = {torch.cat, torch.concat, torch.concatenate}
_SCALE = {operator.mul, torch.mul, operator.truediv, torch.div}
_PASS_MODULES = (nn.Dropout, nn.Dropout2d, nn.Identity)


@dataclass
class _Value:
    """A tensor of the ANN as a linear expression of layer outputs: ``sum(map(source)) + bias``.

    A source may be a max-pooled layer output (:meth:`_Lowering._pooled_source`). ``pending_pool``:
    a max pool met before the activation (conv-BN-maxpool-ReLU): the value is still the pre-pool
    one (``shape`` before pooling); the activation's neurons take that resolution and the pool
    moves after them (a ReLU or clip-floor-shift is monotone, so the max commutes with it)."""
    terms: List[Tuple[str, Optional[LinearMap]]]
    bias: Optional[torch.Tensor]
    shape: Tuple[int, ...]
    pending_pool: Optional[MaxPool] = None


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
        #: a pooled source's name -> (the layer it pools, the pool); its shape is the pooled one
        self.pooled: Dict[str, Tuple[str, MaxPool]] = {}
        self.env: Dict[fx.Node, object] = {}

    # --- driver -------------------------------------------------------------------------------
    def run(self) -> Network:
        self._refuse_known_unsupported()
        for node in self.module.graph.nodes:
            try:
                if node.op == "output":
                    return self._finish(node)
                ceiling = relu_ceiling(node, self.modules)
                if ceiling is not None:
                    origin = node.target if node.op == "call_module" else self._origin(node)
                    self.env[node] = self._neuron(node, self._value(node, node.args[0]), origin, ceiling)
                    continue
                self.env[node] = getattr(self, "_op_" + node.op)(node)
            except ClipError as err:
                raise self._unsupported(node, str(err)) from err
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
        if isinstance(mod, ClipFloorShift):
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
            if len(x.shape) != 1:
                raise self._unsupported(node, "nn.Linear on a (C, H, W) tensor: flatten it first")
            return self._apply(node, x, DenseMap(mod.weight.detach().double()), mod.bias)
        if isinstance(mod, nn.AvgPool2d):
            return self._avg_pool(node, x, mod.kernel_size, mod.stride, mod.padding, mod.ceil_mode,
                                  mod.count_include_pad, mod.divisor_override)
        if isinstance(mod, nn.AdaptiveAvgPool2d):
            return self._adaptive_avg_pool(node, x)
        if isinstance(mod, nn.MaxPool2d):
            return self._max_pool(node, x, mod.kernel_size, mod.stride, mod.padding, mod.dilation, mod.ceil_mode,
                                  mod.return_indices)
        if isinstance(mod, nn.AdaptiveMaxPool2d):
            return self._adaptive_max_pool(node, x, mod.return_indices)
        if isinstance(mod, nn.Flatten):
            return self._flatten(node, x)
        raise ConversionError(f"module {node.target!r} ({type(mod).__name__}) is not supported: the converter "
                              "handles Conv2d, Linear, BatchNorm, ReLU (and ReLU6, Hardtanh(0, c)), AvgPool2d, "
                              "MaxPool2d, their adaptive forms, Flatten, Dropout, Identity, concatenation, residual "
                              "adds and option-A shortcuts")

    def _op_call_function(self, node):
        fn = node.target
        if fn in _ADD:
            return self._add(node)
        if fn in _SCALE:
            return self._scale(node, divide=fn in (operator.truediv, torch.div))
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
        if fn in (F.max_pool2d, torch.max_pool2d):
            args = _bind(node, ["input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"],
                         dict(stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False))
            return self._max_pool(node, self._value(node, args["input"]), args["kernel_size"], args["stride"],
                                  args["padding"], args["dilation"], args["ceil_mode"], args["return_indices"])
        if fn is F.adaptive_max_pool2d:
            args = _bind(node, ["input", "output_size", "return_indices"], dict(return_indices=False))
            return self._adaptive_max_pool(node, self._value(node, args["input"]), args["return_indices"])
        if fn is torch.flatten:
            return self._flatten(node, self._value(node, node.args[0]))
        if fn in (F.dropout, F.dropout2d):
            return self._value(node, node.args[0])
        if fn in _CAT:
            return self._cat(node)
        if fn is getattr:
            return None  # x.shape: used only for view/reshape sizes, checked through tensor_meta
        raise self._unsupported(node, f"function {getattr(fn, '__name__', fn)} has no spiking equivalent here")

    def _op_call_method(self, node):
        method = node.target
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
        self._no_pending_pool(node, x)
        out_shape = out_shape or self._shape(node)
        if isinstance(m, ConvMap) and len(x.shape) != 3:
            raise self._unsupported(node, "a convolution needs a (C, H, W) input")
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
        if x.pending_pool is not None:  # max(a z + b) = a max(z) + b where a > 0: fold it before the pool
            if bool((scale <= 0).any()):
                raise self._unsupported(node, "a BatchNorm with a non-positive scale (weight) after a max pool does "
                                              "not commute with the max; move the max pool after the BatchNorm")
            folded = self._apply(node, replace(x, pending_pool=None), channel_scale_map(scale), shift, out_shape=x.shape)
            return replace(folded, pending_pool=x.pending_pool)
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
        """A fixed average pooling where the output size divides the input's; otherwise (torchvision's
        VGG head, 7x7 from a smaller map) a matrix, which only a flatten and a linear layer may follow."""
        out_hw = self._shape(node)[1:]
        if all(x.shape[1 + i] % out_hw[i] == 0 for i in range(2)):
            kernel = tuple(x.shape[1 + i] // out_hw[i] for i in range(2))
            return self._apply(node, x, avg_pool_map(x.shape[0], kernel, kernel, (0, 0)))
        if not node.users or not all(self._flattens(user) for user in node.users):
            raise self._unsupported(node, f"adaptive pooling from {x.shape[1:]} to {out_hw} is not a fixed "
                                          "average pooling; it converts only when flattened right after (a "
                                          "classifier head), else use sizes that divide")
        return self._apply(node, x, adaptive_avg_pool_matrix(x.shape, out_hw))

    def _flattens(self, node: fx.Node) -> bool:
        """``node`` flattens its input (``nn.Flatten``, ``torch.flatten``, ``.view``/``.reshape``/``.flatten``)."""
        return ((node.op == "call_module" and isinstance(self.modules[node.target], nn.Flatten))
                or (node.op == "call_function" and node.target is torch.flatten)
                or (node.op == "call_method" and node.target in ("view", "reshape", "flatten")))

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
        self._no_pending_pool(node, x)
        out_shape = self._shape(node)
        if len(out_shape) != 1 or out_shape[0] != int(np.prod(x.shape)):
            raise self._unsupported(node, f"reshaping {x.shape} to {out_shape}: only flattening to "
                                          "(batch, features) is supported")
        return _Value(list(x.terms), None if x.bias is None else x.bias.reshape(-1), out_shape)

    def _add(self, node) -> _Value:
        a, b = (self._value(node, arg) for arg in node.args[:2])
        self._no_pending_pool(node, a)
        self._no_pending_pool(node, b)
        if len(node.args) > 2 or "alpha" in node.kwargs or a.shape != b.shape:
            raise self._unsupported(node, f"only plain adds of equal shapes are supported ({a.shape} + {b.shape})")
        if a.bias is None or b.bias is None:
            bias = a.bias if b.bias is None else b.bias
        else:
            bias = a.bias + b.bias
        return _Value(a.terms + b.terms, bias, a.shape)

    def _scale(self, node, divide: bool) -> _Value:
        """An activation times (or divided by) a constant number: a per-channel scale."""
        a, b = node.args[:2]
        tensor, number = (a, b) if isinstance(a, fx.Node) else (b, a)
        if not isinstance(number, (int, float)) or isinstance(number, bool) or node.kwargs or (divide and tensor is b):
            raise self._unsupported(node, "only products of an activation and a constant number are supported "
                                          "(activation-by-activation products have no spiking equivalent)")
        x = self._value(node, tensor)
        factor = 1.0 / number if divide else float(number)
        scale = torch.full((x.shape[0],), factor, dtype=torch.float64)
        m = channel_scale_map(scale) if len(x.shape) == 3 else DenseMap(torch.diag(scale))
        return self._apply(node, x, m)

    def _cat(self, node) -> _Value:
        """Concatenation of channels (or features): every input's terms placed at its channels'
        offset (a 1x1 convolution or a matrix into the wider output), so a conv, linear layer or
        pooling after it reads each source through its own synapse (exact: they are linear in
        their input's channels)."""
        args = _bind(node, ["tensors", "dim"], dict(dim=0))
        values = [self._value(node, arg) for arg in args["tensors"]]
        for v in values:
            self._no_pending_pool(node, v)
        out_shape = self._shape(node)
        dim = args["dim"] % (len(out_shape) + 1)
        if dim != 1 or any(v.shape[1:] != out_shape[1:] for v in values):
            raise self._unsupported(node, "only concatenation along the channels (dim 1) is supported")
        terms, bias, offset = [], torch.zeros(out_shape, dtype=torch.float64), 0
        for v in values:
            channels, after = v.shape[0], out_shape[0] - offset - v.shape[0]
            if len(out_shape) == 3:
                place = channel_pad_map(channels, offset, after)
            else:
                place = DenseMap(torch.eye(out_shape[0], dtype=torch.float64)[:, offset:offset + channels])
            terms += [(src, compose(m, place, self.source_shapes[src])) for src, m in v.terms]
            if v.bias is not None:
                bias[offset:offset + channels] = v.bias
            offset += channels
        has_bias = any(v.bias is not None for v in values)
        return _Value(terms, bias if has_bias else None, out_shape)

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

    def _neuron(self, node, x: _Value, origin: str, ceiling: float = math.inf) -> _Value:
        """A spiking layer for a ReLU (``ceiling`` infinite) or a ReLU clipped above (ReLU6: 6)."""
        name = node.name
        self.layers.append(GatedIF(name, x.shape, self._synapses(x), threshold=1.0,
                                   bias=_compact_bias(torch.zeros(x.shape, dtype=torch.float64) if x.bias is None
                                                      else x.bias),
                                   v_init=0.0, schedule=UNSCHEDULED, origin=origin,
                                   ann_clip=None if math.isinf(ceiling) else ceiling))
        self.source_shapes[name] = x.shape
        out = _Value([(name, None)], None, x.shape)
        return out if x.pending_pool is None else self._pool_value(node, out, x.pending_pool)

    def _synapses(self, x: _Value) -> Tuple[Synapse, ...]:
        """One IR synapse per term of ``x`` (a pooled source: the layer it pools, with the pool)."""
        synapses = []
        for src, m in x.terms:
            source, pool = self.pooled.get(src, (src, None))
            synapses.append(Synapse(source, _to_ir_op(m, self.source_shapes[src], x.shape), pool))
        return tuple(synapses)

    # --- max pooling --------------------------------------------------------------------------
    def _max_pool(self, node, x: _Value, kernel, stride, padding, dilation, ceil_mode, return_indices) -> _Value:
        """``max_pool2d``: exact on the counts of bistable neurons (see :class:`bsnn_lava.ir.MaxPool`).
        On a layer's output (or one scaled per channel by a positive factor, plus a per-channel
        shift: BatchNorm, the input normalisation) the pool goes on the synapses that read it; on a
        pre-activation it waits for the activation and moves after it."""
        pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)
        if ceil_mode or return_indices or pair(dilation) != (1, 1):
            raise self._unsupported(node, "max pooling with ceil_mode, dilation or return_indices")
        if len(x.shape) != 3:
            raise self._unsupported(node, "max pooling needs a (C, H, W) input")
        self._no_pending_pool(node, x)
        kernel = pair(kernel)
        pool = MaxPool(kernel, kernel if stride in (None, []) else pair(stride), pair(padding))
        return self._pool_value(node, x, pool)

    def _adaptive_max_pool(self, node, x: _Value, return_indices) -> _Value:
        out_hw = self._shape(node)[1:]
        if return_indices or len(x.shape) != 3 or any(x.shape[1 + i] % out_hw[i] for i in range(2)):
            raise self._unsupported(node, f"adaptive max pooling from {x.shape[1:]} to {out_hw} is not a fixed max "
                                          "pooling; use sizes that divide")
        kernel = tuple(x.shape[1 + i] // out_hw[i] for i in range(2))
        return self._max_pool(node, x, kernel, kernel, 0, 1, False, False)

    def _pool_value(self, node, x: _Value, pool: MaxPool) -> _Value:
        out_shape = pool.output_shape(x.shape)
        if len(x.terms) == 1 and _positive_channel_scale(x.terms[0][1]) and _uniform_per_channel(x.bias):
            src, m = x.terms[0]
            if src in self.pooled:  # a pool of a pool: one pool over the union of the windows, where it is one
                src, first = self.pooled[src]
                pool = _pool_of_pool(first, pool)
                if pool is None:
                    raise self._unsupported(node, "two max pools in a row without a layer between them, whose "
                                                  "windows do not combine into one (the second one padded, or the "
                                                  "first one leaving gaps)")
            pooled = f"{src}@maxpool{len(self.pooled)}"
            self.pooled[pooled] = (src, pool)
            self.source_shapes[pooled] = out_shape
            bias = None if x.bias is None else x.bias[:, :out_shape[1], :out_shape[2]].clone()
            return _Value([(pooled, m)], bias, out_shape)
        return replace(x, pending_pool=pool)

    def _no_pending_pool(self, node, x: _Value) -> None:
        if x.pending_pool is not None:
            raise self._unsupported(node, "a max pool before the activation must reach the activation (ReLU) with "
                                          "at most a BatchNorm between them")

    def _finish(self, node) -> Network:
        arg = node.args[0]
        x = self._value(node, arg)
        if len(x.shape) != 1:
            raise ConversionError(f"the model's output has shape {x.shape}: it must end in a linear layer "
                                  "giving (batch, classes)")
        if len(self.layers) == 1:
            raise ConversionError("the model has no ReLU: nothing to convert to spiking neurons")
        self._no_pending_pool(node, x)
        synapses = self._synapses(x)
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
        return Conv2d(compact_conv(m).numpy(), m.stride, m.padding, dilation=m.dilation, groups=m.groups)
    return Dense(m.weight.numpy())


def _pool_of_pool(first: MaxPool, second: MaxPool) -> Optional[MaxPool]:
    """The one max pool equal to ``second`` after ``first``, or ``None``: exact when the second has
    no padding (every window it takes is a real one) and the first's windows leave no gaps
    (stride <= kernel), so the windows under a second-pool output form one block."""
    if any(second.padding) or any(first.stride[i] > first.kernel[i] for i in range(2)):
        return None
    return MaxPool(tuple(first.kernel[i] + first.stride[i] * (second.kernel[i] - 1) for i in range(2)),
                   tuple(first.stride[i] * second.stride[i] for i in range(2)), first.padding)


def _positive_channel_scale(m: Optional[LinearMap]) -> bool:
    """The identity, or a per-channel scale by positive factors (max pooling commutes with it)."""
    return m is None or (isinstance(m, ConvMap) and m.channel_diagonal
                         and bool((torch.diagonal(m.weight[:, :, 0, 0]) > 0).all()))


def _uniform_per_channel(bias: Optional[torch.Tensor]) -> bool:
    """No bias, or one constant over each channel's pixels."""
    return bias is None or (bias.ndim == 3 and bool((bias == bias[:, :1, :1]).all()))


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
