"""``bsnn inspect NET.h5``: the layer table and the provenance of a bsnn-netx file.

:func:`add_inspect_parser` registers the sub-command on ``bsnn``'s sub-parsers; :func:`cmd_inspect`
runs it. Exit codes: 0 success, 2 bad input (one line on stderr naming the file, layer and field).
Also runnable alone: ``python -m bsnn_lava.cli_netx inspect NET.h5 [--json]``.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Dict, List

import numpy as np

EXIT_OK, EXIT_BAD_INPUT = 0, 2
_COLUMNS = ("index", "name", "kind", "type", "shape", "inputs", "neuron", "mode", "offset", "window",
            "frames", "reset", "spikes", "threshold", "bias", "scale", "weights")


def add_inspect_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``inspect`` to ``subparsers`` (from ``ArgumentParser.add_subparsers``); returns its parser."""
    parser = subparsers.add_parser(
        "inspect", help="print the layer table and provenance of a netx HDF5 file",
        description="Read a bsnn-netx HDF5 file (validating every field) and print one row per layer: index, "
        "name, kind, netx type, shape, input layers, neuron type/role, schedule mode, offset and window "
        "(steps), threshold and bias (value or min..max, in the layer's units), scale, number of weights; "
        "then the provenance.", epilog="examples:\n  bsnn inspect r20.h5\n  bsnn inspect r20.h5 --json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", help="a file written by netx_export.write(..., mode='bsnn')")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.set_defaults(handler=cmd_inspect)
    return parser


def cmd_inspect(args) -> int:
    """Print ``args.file``'s layers and provenance (``args.json``: as JSON); 0, or 2 on a bad file."""
    from netx_export import FORMAT_VERSION, NetxFormatError, read

    try:
        network = read(args.file)
    except NetxFormatError as err:
        print(f"bsnn inspect: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    rows = layer_rows(network)
    if args.json:
        print(json.dumps({"file": str(args.file), "format_version": FORMAT_VERSION, "numeric": network.numeric,
                          "layers": rows, "provenance": network.provenance}, indent=2, sort_keys=True))
        return EXIT_OK
    print(f"{args.file}: {len(rows)} layers, {network.numeric} network, format version {FORMAT_VERSION}")
    print(format_table(rows))
    print("provenance:")
    print(json.dumps(network.provenance, indent=2, sort_keys=True))
    return EXIT_OK


def _summary(values) -> str:
    """A number for a constant array, else ``min..max``; ``-`` when absent."""
    if values is None:
        return "-"
    arr = np.asarray(values)
    low, high = float(arr.min()), float(arr.max())
    return f"{low:g}" if low == high else f"{low:g}..{high:g}"


def layer_rows(network) -> List[Dict[str, object]]:
    """One JSON-compatible dict per layer with the :data:`_COLUMNS` keys."""
    from netx_export.schema import layer_codec, synapse_codec, synapse_kind

    rows = []
    for index, layer in enumerate(network.layers):
        synapses = layer.synapses
        neuron = layer_codec(layer.kind).file_type + (f"/{layer.role}" if hasattr(layer, "role") else "")
        rows.append({
            "index": index, "name": layer.name, "kind": layer.kind,
            "type": synapse_codec(synapse_kind(synapses[0].op)).file_type if synapses else "input",
            "shape": list(layer.shape), "inputs": [s.source for s in synapses], "neuron": neuron,
            "mode": layer.schedule.mode, "offset": layer.schedule.offset_steps,
            "window": layer.schedule.window_steps, "frames": layer.schedule.frames or "-",
            "reset": "frame" if getattr(layer, "frame_reset", False) else "-",
            "spikes": "-" if layer.kind != "gated_if" else ("binary" if layer.payload_max == 1
                                                           else f"graded<={layer.payload_max}"),
            "threshold": _summary(getattr(layer, "threshold", None)),
            "bias": _summary(getattr(layer, "bias", None)), "scale": getattr(layer, "scale", None),
            "weights": int(sum(s.op.weight.size for s in synapses)),
        })
    return rows


def format_table(rows: List[Dict[str, object]]) -> str:
    """The rows as an aligned text table, one line per layer."""
    def cell(key, value):
        if key == "shape":
            return "x".join(map(str, value))
        if key == "inputs":
            return ",".join(value) or "-"
        if key == "scale":
            return "-" if value is None else f"{value:g}"
        return str(value)

    cells = [list(_COLUMNS)] + [[cell(key, row[key]) for key in _COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(_COLUMNS))]
    return "\n".join("  ".join(text.ljust(width) for text, width in zip(line, widths)).rstrip() for line in cells)


def _main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bsnn")
    add_inspect_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(_main())
