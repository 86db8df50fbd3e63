"""Run by tests/test_distributed.py under ``torchrun --nproc-per-node 2``: simulates every network
file given (reference simulator, and the Lava CPU models for those named with ``--lava``; streamed,
both, for those named with ``--stream``) on the digits test images; rank 0 pickles the merged results
to ``--out``. Not a test module itself."""
import argparse
import pickle

from bsnn_lava import simulate
from bsnn_lava.datasets import load_digits_uint8
from bsnn_lava.distributed import is_main_process, launched_ranks

import netx_export

parser = argparse.ArgumentParser()
parser.add_argument("nets", nargs="+")
parser.add_argument("--lava", nargs="*", default=[])
parser.add_argument("--stream", nargs="*", default=[], help="also stream these files (reference, and Lava)")
parser.add_argument("--images", type=int, default=31)
parser.add_argument("--steps", type=int, default=24)
parser.add_argument("--out", required=True)
args = parser.parse_args()
assert launched_ranks() is not None, "run me with torchrun --nproc-per-node 2"
_, _, x, y = load_digits_uint8()
x, y = x[:args.images], y[:args.images]
results = {}
for path in args.nets:
    network = netx_export.read(path)
    results[path] = simulate(network, x, y, steps=args.steps, batch_size=7)
for path in args.lava:
    from bsnn_lava.lava.run import run_lava

    results["lava:" + path] = run_lava(path, x, y, steps=args.steps, progress=False, batch_size=3)
for path in args.stream:
    from bsnn_lava.lava.run import run_lava

    results["stream:" + path] = simulate(netx_export.read(path), x, y, stream=True, batch_size=7)
    results["lava-stream:" + path] = run_lava(path, x, y, stream=True, progress=False, batch_size=3)
if is_main_process():
    with open(args.out, "wb") as f:
        pickle.dump(results, f)
