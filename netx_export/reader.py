"""Read a bsnn-netx HDF5 file back into the network IR, validating every field.

Nothing in the file is executed: fields are typed datasets, provenance is parsed with
``json.loads``. Every problem raises :class:`NetxFormatError` with a one-line message naming the
file, the layer (index and name) and the field.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List

import h5py

from bsnn_lava.ir import IRError, Network, Synapse
from bsnn_lava.ir.network import NUMERIC_KINDS

from . import h5io
from .errors import NetxFormatError, UnknownTypeError, one_line
from .h5io import DIGEST_FIELD, H5_ERRORS, Where
from .limits import limits_from_provenance
from .schema import READABLE_VERSIONS, Context, layer_codec_for_file, read_pool, synapse_codec_for_file


def read(path) -> Network:
    """The network stored at ``path`` by :func:`netx_export.write` (``mode="bsnn"``).

    Raises:
        NetxFormatError: the file is missing, unreadable, damaged, or not a valid bsnn-netx file.
    """
    file = Path(path)
    if not file.exists():
        raise NetxFormatError(f"{path}: no such file")
    if file.is_dir():
        raise NetxFormatError(f"{path}: is a directory, not an HDF5 file")
    try:
        h5 = h5py.File(file, "r")
    except H5_ERRORS as err:
        raise NetxFormatError(one_line(f"{path}: not a readable HDF5 file ({type(err).__name__}: {err})")) from None
    try:
        with h5:
            return _read(h5, str(path))
    except NetxFormatError:
        raise
    except H5_ERRORS as err:
        raise NetxFormatError(one_line(f"{path}: damaged file ({type(err).__name__}: {err})")) from None


def _read(h5: h5py.File, path: str) -> Network:
    root = Where(path)
    if not h5io.has(h5, "format_version", root):
        raise root.error("format_version", "missing: not a bsnn-netx file (stock netx files, e.g. mode='netx' "
                         "exports, are read by lava-dl's netx.hdf5.Network)")
    version = h5io.get_int(h5, "format_version", root)
    if version not in READABLE_VERSIONS:
        raise root.error("format_version", f"is {version}; this reader knows versions "
                         f"{', '.join(map(str, READABLE_VERSIONS))}")
    numeric = h5io.get_str(h5, "numeric", root)
    if numeric not in NUMERIC_KINDS:
        raise root.error("numeric", f"is {numeric!r}, expected one of {', '.join(NUMERIC_KINDS)}")
    provenance = _provenance(h5, root)
    try:
        limits = limits_from_provenance(provenance)
    except ValueError as err:
        raise root.error("provenance", err) from None
    layers_group = h5io.get_group(h5, "layer", root)
    with h5io.guard(root, "layer"):
        keys = sorted(layers_group.keys())
    if sorted(str(i) for i in range(len(keys))) != keys or len(keys) < 2:
        raise root.error("layer", f"needs subgroups '0'..'n-1' (n >= 2), found {keys[:8]}")
    layers: List = []
    for i in range(len(keys)):
        group = h5io.get_group(layers_group, str(i), root.sub("layer"))
        name = h5io.get_str(group, "name", Where(path, i))
        if any(layer.name == name for layer in layers):
            raise Where(path, i, name).error("name", "duplicate layer name")
        context = Context(Where(path, i, name), numeric, limits, version, layers[0].name if layers else None)
        layers.append(_read_layer(group, context, layers, len(keys)))
    _check_digest(h5, root)
    try:
        return Network(tuple(layers), numeric=numeric, provenance=provenance)
    except IRError as err:
        raise root.error("layer", err) from None


def _provenance(h5: h5py.File, root: Where) -> dict:
    text = h5io.get_str(h5, "provenance", root)

    def refuse_constant(name):
        raise ValueError(f"non-standard JSON constant {name}")

    try:
        value = json.loads(text, parse_constant=refuse_constant)
    except ValueError as err:
        raise root.error("provenance", f"is not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise root.error("provenance", f"must be a JSON object, got {type(value).__name__}")
    return value


def _read_layer(group: h5py.Group, ctx: Context, previous: List, n_layers: int):
    where, index = ctx.where, ctx.where.index
    neuron = h5io.get_group(group, "neuron", where)
    neuron_type = h5io.get_str(neuron, "type", where.sub("neuron"))
    try:
        codec = layer_codec_for_file(neuron_type)
    except UnknownTypeError as err:
        raise where.sub("neuron").error("type", err) from None
    expected = "input" if index == 0 else "readout" if index == n_layers - 1 else "gated_if"
    if codec.kind != expected:
        raise where.sub("neuron").error("type", f"{neuron_type!r} at position {index} of {n_layers}: the first "
                                        "layer must be the input, the last the readout, the others gated IF")
    shape = h5io.get_ints(group, "shape", where)
    if len(shape) not in (1, 3) or min(shape, default=0) < 1:
        raise where.error("shape", f"is {shape}, expected (C, H, W) or (N,) with positive sizes")
    layer_type = h5io.get_str(group, "type", where)
    inputs = h5io.get_ints(group, "inputs", where)
    if codec.kind == "input":
        if layer_type != "input" or inputs:
            raise where.error("inputs" if inputs else "type", "the input layer has type 'input' and no inputs")
        synapses = ()
    else:
        synapses = _read_synapses(group, ctx, layer_type, inputs, shape, previous)
    try:
        return codec.read(group, neuron, ctx, where.name, shape, synapses)
    except IRError as err:
        raise where.error("neuron", err) from None


def _read_synapses(group: h5py.Group, ctx: Context, layer_type: str, inputs, shape, previous: List):
    """Synapse 0 from the layer's own fields, synapse k >= 1 from ``synapse/<k>/``."""
    where = ctx.where
    if not inputs:
        raise where.error("inputs", "is empty; a non-input layer needs at least one synapse")
    extra = [str(k) for k in range(1, len(inputs))]
    if h5io.has(group, "synapse", where):
        with h5io.guard(where, "synapse"):
            found = sorted(h5io.get_group(group, "synapse", where).keys())
        if found != sorted(extra):
            raise where.error("synapse", f"has subgroups {found[:8]}, expected {extra} (one per extra input)")
    elif extra:
        raise where.error("synapse", f"missing group (inputs lists {len(inputs)} sources)")
    synapses = []
    for k, source in enumerate(inputs):
        if not 0 <= source < where.index:
            raise where.error("inputs", f"entry {k} refers to layer {source}, which is not an earlier layer "
                              "(dangling reference or cycle)")
        sub_where = where if k == 0 else where.sub(f"synapse/{k}")
        target = group if k == 0 else h5io.get_group(group, f"synapse/{k}", where)
        synapse_type = layer_type if k == 0 else h5io.get_str(target, "type", sub_where)
        try:
            codec = synapse_codec_for_file(synapse_type)
        except UnknownTypeError as err:
            raise sub_where.error("type", err) from None
        sub_ctx = Context(sub_where, ctx.numeric, ctx.limits, ctx.version, ctx.input_name)
        pool = read_pool(target, sub_ctx, previous[source].shape)
        if pool is not None and previous[source].kind == "gated_if" and previous[source].schedule.mode != "bistable":
            raise sub_where.error("pool_kernel", f"max-pools layer {source}, whose mode is "
                                  f"{previous[source].schedule.mode!r}: only bistable spikes can be max-pooled")
        source_shape = previous[source].shape if pool is None else pool.output_shape(previous[source].shape)
        try:
            op = codec.read(target, sub_ctx, source_shape, shape)
            out_shape = op.output_shape(source_shape)
        except IRError as err:
            raise sub_where.error("weight", err) from None
        if out_shape != shape:
            raise sub_where.error("weight", f"gives shape {out_shape} from source {source} of shape "
                                  f"{source_shape}, but the layer shape is {shape}")
        synapses.append(Synapse(previous[source].name, op, pool))
    return tuple(synapses)


def _check_digest(h5: h5py.File, root: Where) -> None:
    stored = h5io.get_str(h5, DIGEST_FIELD, root)
    with h5io.guard(root, DIGEST_FIELD):
        actual = h5io.content_digest(h5)
    if stored != actual:
        raise root.error(DIGEST_FIELD, "does not match the file's contents: it was modified or damaged after "
                         "it was written")
