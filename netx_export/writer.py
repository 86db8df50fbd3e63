"""Write a network IR to HDF5: the bsnn-netx superset (``mode="bsnn"``) or stock netx (``"netx"``).

Both modes write atomically: into a temporary file in the target's folder, renamed over ``path``
only once complete, so an error or interruption never leaves a partial file at ``path``.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Dict

import h5py

from bsnn_lava.ir import Network

from . import h5io
from .errors import NetxExportError, one_line
from .h5io import DIGEST_FIELD, Where
from .limits import limits_from_provenance
from .netx_mode import fill_netx
from .schema import FORMAT_VERSION, Context, layer_codec, synapse_codec, synapse_kind, write_pool

WRITE_MODES = ("bsnn", "netx")


def write(network: Network, path, mode: str = "bsnn") -> Path:
    """Write ``network`` to ``path`` (HDF5) and return the path.

    Args:
        network: the network IR (float or integer).
        path: the file to create or replace.
        mode: ``bsnn`` (every IR detail, exactly invertible by :func:`netx_export.read`) or ``netx``
            (only what lava-dl's stock ``netx.hdf5.Network`` understands: sequential networks of
            integer IF neurons, written as CUBA neurons; see ``docs/format.md`` for what is lost).
    Raises:
        NetxExportError: the network cannot be written in this mode; names the layer and field.
    """
    if mode not in WRITE_MODES:
        raise ValueError(f"mode must be one of {', '.join(WRITE_MODES)}, got {mode!r}")
    if not isinstance(network, Network):
        raise TypeError(f"expected a bsnn_lava.ir.Network, got {type(network).__name__}")
    fill = fill_bsnn if mode == "bsnn" else fill_netx
    return h5io.atomic_h5(path, lambda h5: fill(h5, network, str(path)))


def fill_bsnn(h5: h5py.File, network: Network, path: str) -> None:
    """Write every field of the bsnn-netx layout into the open file ``h5``."""
    root = Where(path)
    try:
        provenance = json.dumps(network.provenance, sort_keys=True, allow_nan=False, ensure_ascii=True)
        limits = limits_from_provenance(network.provenance)
    except (TypeError, ValueError) as err:
        raise root.export_error("provenance", f"not a valid JSON object: {err}") from None
    h5io.put_int(h5, "format_version", FORMAT_VERSION)
    h5io.put_str(h5, "numeric", network.numeric)
    h5io.put_str(h5, "provenance", provenance)
    layers = h5.create_group("layer")
    index: Dict[str, int] = {}
    for i, layer in enumerate(network.layers):
        ctx = Context(Where(path, i, layer.name), network.numeric, limits)
        try:
            _write_layer(layers.create_group(str(i)), layer, index, ctx)
        except NetxExportError:
            raise
        except ValueError as err:  # a NUL in a name, an unregistered type
            raise NetxExportError(one_line(f"cannot write {path}: layer {i} ({layer.name!r}): {err}")) from None
        index[layer.name] = i
    h5io.put_str(h5, DIGEST_FIELD, h5io.content_digest(h5))


def _write_layer(group: h5py.Group, layer, index: Dict[str, int], ctx: Context) -> None:
    """Layer fields; synapse 0 in netx's own fields, synapse k >= 1 in ``synapse/<k>/``."""
    codec = layer_codec(layer.kind)
    synapse_codecs = [synapse_codec(synapse_kind(s.op)) for s in layer.synapses]
    h5io.put_str(group, "type", synapse_codecs[0].file_type if synapse_codecs else "input")
    h5io.put_str(group, "name", layer.name)
    h5io.put_ints(group, "shape", layer.shape)
    h5io.put_ints(group, "inputs", [index[s.source] for s in layer.synapses])
    for k, (synapse, scodec) in enumerate(zip(layer.synapses, synapse_codecs)):
        target, where = group, ctx.where
        if k:
            target, where = group.create_group(f"synapse/{k}"), ctx.where.sub(f"synapse/{k}")
            h5io.put_str(target, "type", scodec.file_type)
        scodec.write(target, synapse.op, replace(ctx, where=where))
        if synapse.pool is not None:
            write_pool(target, synapse.pool)
    neuron = group.create_group("neuron")
    h5io.put_str(neuron, "type", codec.file_type)
    codec.write(group, neuron, layer, ctx)
