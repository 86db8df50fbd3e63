"""The Lava CPU models' two forms of a convolution synapse, timed per step on layer shapes of ResNet20
(CIFAR, 32x32) and ResNet-34 (ImageNet, 224x224): the sparse ``matrix`` (one entry per weight and
output position, :class:`~bsnn_lava.lava.procs.models.MatrixSynapse`) and the ``kernel``
(:class:`~bsnn_lava.lava.procs.models.KernelConv`), its event-driven scatter and its dense
correlation forced, then as the CPU models run it (``model``: the form of
:func:`~bsnn_lava.lava.procs.process.conv_form`, the path of ``KernelConv.__call__``), on random
messages with a given fraction of nonzero inputs (binary spikes; pixels 0..255 for a first layer),
integer mantissas in -127..127 (``fixed_pt``). Every form's output is checked equal to the matrix's
(where the matrix fits) or to the dense correlation's. One process, one thread; the best of
``--repeats`` calls. This sets :data:`bsnn_lava.lava.procs.process.MATRIX_FORM_MAX_WEIGHTS` and
the scatter's costs (:data:`bsnn_lava.lava.procs.models.SCATTER_CALL_COST` and the two after it).

Writes ``<out>/lava_kernel.{json,md}``.

    OMP_NUM_THREADS=1 python bench/lava_kernel.py
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from bsnn_lava.ir import Conv2d
from bsnn_lava.lava.procs import conv_synapse
from bsnn_lava.lava.procs.models import (DENSE_INPUT_FRACTION, MATRIX_CALL_COST, MATRIX_MAC_COST, MATRIX_WEIGHT_COST,
                                         SCATTER_CALL_COST, SCATTER_MAC_COST, SCATTER_TAP_COST, KernelConv,
                                         MatrixSynapse)
from bsnn_lava.lava.procs.process import MATRIX_FORM_MAX_WEIGHTS, conv_form

from common import command_line, machine, machine_text, write_json, write_markdown

#: (network, name, out channels, in channels, kernel, input size, stride, padding, max input)
LAYERS = [
    ("ResNet20", "first conv (pixels)", 16, 3, 3, 32, 1, 1, 255),
    ("ResNet20", "stage 1 3x3", 16, 16, 3, 32, 1, 1, 1),
    ("ResNet20", "stage 2 3x3, stride 2", 32, 16, 3, 32, 2, 1, 1),
    ("ResNet20", "stage 3 3x3", 64, 64, 3, 8, 1, 1, 1),
    ("ResNet-34", "stem 7x7, stride 2 (pixels)", 64, 3, 7, 224, 2, 3, 255),
    ("ResNet-34", "layer1 3x3", 64, 64, 3, 56, 1, 1, 1),
    ("ResNet-34", "layer2 downsample 1x1, stride 2", 128, 64, 1, 56, 2, 0, 1),
    ("ResNet-34", "layer3 3x3", 256, 256, 3, 14, 1, 1, 1),
    ("ResNet-34", "layer4 3x3", 512, 512, 3, 7, 1, 1, 1),
]
#: Matrices above this many nonzero weights are not built here (memory).
BENCH_MATRIX_MAX = 40_000_000


def best_ms(call, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return 1000 * min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.005, 0.01, 0.02, 0.05, 0.1, 0.3],
                        help="fractions of nonzero inputs of the spiking layers (pixels: always all)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    rows = []
    for network, name, out_ch, in_ch, kernel, size, stride, padding, max_input in LAYERS:
        weight = rng.integers(-127, 128, (out_ch, in_ch, kernel, kernel)).astype(float)
        conv = lambda form: conv_synapse(weight, (in_ch, size, size), (stride, stride), (padding, padding), 0,
                                         max_input, form=form)
        matrix_weights = int(Conv2d(weight, (stride, stride), (padding, padding)).fan_out((in_ch, size, size)).sum())
        kernel_form = KernelConv(conv("kernel"), integer=True)
        fractions = [1.0] if max_input > 1 else args.fractions
        for batch_size in args.batch_sizes if network == "ResNet20" else [1]:
            form, dense_fraction = conv_form(matrix_weights), DENSE_INPUT_FRACTION["image" if batch_size == 1 else "batch"]
            model = KernelConv(conv(form), True, dense_fraction)  # as the CPU models hold it
            matrix = MatrixSynapse(conv("matrix"), True, dense_fraction) if matrix_weights <= BENCH_MATRIX_MAX else None
            for fraction in fractions:
                n_in = in_ch * size * size
                s = ((rng.random((batch_size, n_in)) < fraction) * rng.integers(1, max_input + 1, (batch_size, n_in)))
                s = s.astype(np.int32)
                x = s.reshape(batch_size, in_ch, size, size)
                expected = kernel_form.correlated(x).astype(np.int64)
                if matrix is not None:
                    assert np.array_equal(matrix(s), expected), name
                assert np.array_equal(kernel_form.scattered(x).astype(np.int64), expected), name
                assert np.array_equal(model(s), expected), name
                row = {"network": network, "layer": name, "batch_size": batch_size, "active_fraction": fraction,
                       "matrix_weights": matrix_weights, "form": form,
                       "matrix_mib": None if matrix is None else (matrix.matrix.data.nbytes + matrix.matrix.indices.nbytes
                                                                  + matrix.matrix.indptr.nbytes) / 2 ** 20,
                       "kernel_mib": (kernel_form.grouped.nbytes + kernel_form.by_input.nbytes) / 2 ** 20,
                       "matrix_ms": None if matrix is None else best_ms(lambda: matrix(s), args.repeats),
                       "scatter_ms": best_ms(lambda: kernel_form.scattered(x), args.repeats),
                       "correlate_ms": best_ms(lambda: kernel_form.correlated(x), args.repeats),
                       "model_ms": best_ms(lambda: model(s), args.repeats)}
                rows.append(row)
                print(row, flush=True)
    payload = {"command": command_line(), "machine": machine(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
               "scatter_costs": {"call": SCATTER_CALL_COST, "tap": SCATTER_TAP_COST, "mac": SCATTER_MAC_COST},
               "matrix_costs": {"call": MATRIX_CALL_COST, "weight": MATRIX_WEIGHT_COST, "mac": MATRIX_MAC_COST},
               "matrix_form_max_weights": MATRIX_FORM_MAX_WEIGHTS,
               "rows": rows}
    write_json(args.out / "lava_kernel.json", payload)
    write_markdown(args.out / "lava_kernel.md", markdown(payload))


def markdown(p: dict) -> list:
    def ms(value):
        return "-" if value is None else f"{value:.2f}"

    scatter, matrix = p["scatter_costs"], p["matrix_costs"]
    lines = ["# Convolution synapses of the Lava CPU models: sparse matrix vs kernel, ms per step", "",
             f"`{p['command']}` (OMP_NUM_THREADS={p['omp_num_threads']})", "",
             f"Machine: {machine_text(p['machine'])}. Best of several calls of one synapse on random messages "
             "(binary spikes with the given fraction of nonzero inputs; pixels 0..255 for a first layer), integer "
             "mantissas, `fixed_pt`. Paths: the sparse matrix's active columns (`matrix`; '-': not built here), the "
             "kernel's scatter and its dense correlation. `form`: the CPU models' choice (`conv_form`: the matrix "
             f"form, kernel and matrix, up to {p['matrix_form_max_weights'] / 1e6:g} M matrix weights, else the kernel "
             "form); `model`: the step as the model runs it, by the cheapest path in multiply-adds of the "
             f"correlation: scatter {scatter['call'] / 2 ** 20:g} Mi + active inputs x taps x ({scatter['tap']} + "
             f"{scatter['mac']} x out channels), matrix {matrix['call'] / 2 ** 20:g} Mi + weights of the active "
             f"inputs x ({matrix['weight']} + {matrix['mac']} x B).", "",
             "| network | layer | B | active | matrix weights (M) | form | matrix MiB | kernel MiB | matrix ms | "
             "scatter ms | correlate ms | model ms |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in p["rows"]:
        lines.append(f"| {r['network']} | {r['layer']} | {r['batch_size']} | {r['active_fraction']:g} | "
                     f"{r['matrix_weights'] / 1e6:.1f} | {r['form']} | {ms(r['matrix_mib'])} | {r['kernel_mib']:.2f} | "
                     f"{ms(r['matrix_ms'])} | {ms(r['scatter_ms'])} | {ms(r['correlate_ms'])} | {ms(r['model_ms'])} |")
    return lines


if __name__ == "__main__":
    main()
