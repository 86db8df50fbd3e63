"""torchrun data parallelism: ResNet20 on 2 CPU ranks against one process, same JSON, wall times.

Converts the ResNet20 checkpoint (post-training BSNN, P=2, percentile thresholds) and quantizes it for
loihi2, writes both networks as netx HDF5, then runs ``bsnn simulate`` on the first ``--n`` test
images for ``--steps`` steps: once as one process (``torch`` with all cores as threads), once under
``torchrun --standalone --nproc-per-node R`` (each rank ``cores / R`` threads). The JSON files
must be byte for byte the same; the wall times (process start, imports and data loading
included, as a user sees them) are measured in the same run, one after the other.

Writes ``<out>/scaleout.{json,md}``.

    python bench/scaleout.py                   # 1,000 images x 256 steps, 2 ranks
    python bench/scaleout.py --ranks 2 4 --n 10000
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import add_resnet20_data_args, command_line, machine, machine_text, write_json, write_markdown

RESULTS = Path(__file__).parent / "results"


def timed(command, threads: int) -> float:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(map(str, command))} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_resnet20_data_args(parser)
    parser.add_argument("--n", type=int, default=1000, help="test images")
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--ranks", type=int, nargs="+", default=[2])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    import netx_export
    from bsnn_lava import convert, zoo
    from bsnn_lava.datasets import load_npz
    from bsnn_lava.quantize import quantize

    x_train, _ = load_npz(args.calib_data)
    calib = x_train[:300]
    network = convert(zoo.load_checkpoint(args.model), calib, window=2, mean=zoo.CIFAR_RESNET_MEAN,
                      std=zoo.CIFAR_RESNET_STD)
    networks = {"float": network, "fixed point (loihi2)": quantize(network, "loihi2", calibration_images=calib)}
    cores = os.cpu_count()
    payload = {"benchmark": "scaleout", "command": command_line(), "machine": machine(), "n_images": args.n,
               "steps": args.steps, "runs": {}}
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        for kind, net in networks.items():
            path = netx_export.write(net, folder / f"{len(payload['runs'])}.h5")
            simulate = ["simulate", str(path), "--data", str(args.test_data), "--limit", str(args.n), "--steps",
                        str(args.steps)]
            one_json = folder / "one.json"
            run = {"one_process_s": timed([sys.executable, "-m", "bsnn_lava", *simulate, "--json", str(one_json)], cores)}
            for ranks in args.ranks:
                ranks_json = folder / f"ranks{ranks}.json"
                seconds = timed([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                                 str(ranks), "-m", "bsnn_lava", *simulate, "--json", str(ranks_json)],
                                max(1, cores // ranks))
                same = ranks_json.read_bytes() == one_json.read_bytes()
                run[f"{ranks}_ranks"] = {"s": seconds, "json_identical": same, "speed-up": run["one_process_s"] / seconds}
                if not same:
                    raise RuntimeError(f"{kind}: the {ranks}-rank JSON differs from the one-process JSON")
            payload["runs"][kind] = run
            print(kind, run, flush=True)
    write_json(args.out / "scaleout.json", payload)
    lines = ["# torchrun data parallelism: ResNet20 BSNN (P=2)", "", f"Command: `{payload['command']}`  ",
             f"Machine: {machine_text(payload['machine'])}  ",
             f"`bsnn simulate` on the first {args.n} CIFAR-10 test images x {args.steps} steps (wall time of the "
             "whole command: start-up, imports, data, simulation). One process uses every core as torch threads; "
             "under torchrun each rank gets cores / ranks threads.", "",
             "| network | one process (s) | " + " | ".join(f"{r} ranks (s) | speed-up | JSON identical"
                                                        for r in args.ranks) + " |",
             "|---|---|" + "---|---|---|" * len(args.ranks)]
    for kind, run in payload["runs"].items():
        cells = " | ".join(f"{run[f'{r}_ranks']['s']:.1f} | {run[f'{r}_ranks']['speed-up']:.2f}x | "
                           f"{'yes' if run[f'{r}_ranks']['json_identical'] else 'no'}" for r in args.ranks)
        lines.append(f"| {kind} | {run['one_process_s']:.1f} | {cells} |")
    write_markdown(args.out / "scaleout.md", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
