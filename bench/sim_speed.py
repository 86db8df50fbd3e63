"""Reference simulator speed on ResNet20: float and fixed-point networks, window and step path.

Converts the ResNet20 checkpoint (P=2, V(0)=theta/2) and quantizes it for loihi2, then times
``simulate`` on the same images: the float network (window path, float32), the fixed-point network
on the window path in its default arithmetic (float32 where exact) and in float64, and on the step
path; and the float IF conversion (step path). With ``--baseline DIR`` (a checkout of another
revision of this project, e.g. made with ``git worktree add DIR REV``) every case is also timed
with that code, in subprocesses alternating with this code's, so the ratio comes from one run on
one machine.

Writes ``<out>/sim_speed.{json,md}``.

    python bench/sim_speed.py                                  # 200 images x 240 steps
    python bench/sim_speed.py --baseline /tmp/old --repeats 3
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import add_resnet20_data_args, command_line, machine, machine_text, write_json, write_markdown


def time_runs(nets_path: str, cases: list) -> dict:
    """Seconds per case (``name, network key, images, steps, simulate kwargs``) with the code importable here."""
    import torch

    import bsnn_lava
    from bsnn_lava import simulate

    with open(nets_path, "rb") as f:
        data = pickle.load(f)
    seconds = {}
    for key in {case[1] for case in cases}:  # warm-up: first calls pay for torch's kernel set-up
        simulate(data[key], data["x"][:2], data["y"][:2], steps=20)
    for name, key, n_images, steps, kwargs in cases:
        kwargs = dict(kwargs)
        if "dtype" in kwargs:
            kwargs["dtype"] = getattr(torch, kwargs["dtype"])
        started = time.perf_counter()
        result = simulate(data[key], data["x"][:n_images], data["y"][:n_images], steps=steps, **kwargs)
        seconds[name] = time.perf_counter() - started
        seconds[name + " accuracy"] = float(result.accuracy[-1])
    seconds["code"] = str(Path(bsnn_lava.__file__).resolve().parents[1])
    return seconds


def in_subprocess(tree: Path, nets_path: str, cases: list) -> dict:
    """:func:`time_runs` in a fresh interpreter that imports ``bsnn_lava`` from ``tree``."""
    script = ("import json, sys; sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[2]);"
              "from sim_speed import time_runs;"
              "print(json.dumps(time_runs(sys.argv[3], json.loads(sys.argv[4]))))")
    out = subprocess.run([sys.executable, "-c", script, str(Path(__file__).parent), str(tree), nets_path,
                          json.dumps(cases)], check=True, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(tree)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def revision(tree) -> str:
    """The git revision checked out in ``tree`` (or ``None``)."""
    if tree is None:
        return None
    out = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_resnet20_data_args(parser)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--n-step-path", type=int, default=100, help="images for the (slower) step path")
    parser.add_argument("--steps", type=int, default=240)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--baseline", type=Path, help="a checkout of another revision to time against")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    from bsnn_lava import convert, zoo
    from bsnn_lava.datasets import load_npz
    from bsnn_lava.quantize import quantize

    model = zoo.load_checkpoint(args.model)
    x, y = load_npz(args.test_data)
    x_calib = load_npz(args.calib_data)[0][:300]
    float_net = convert(model, x_calib, neuron="bistable", window=2, v_init=0.5,
                        mean=zoo.CIFAR_RESNET_MEAN, std=zoo.CIFAR_RESNET_STD)
    if_net = convert(model, x_calib, neuron="if", mean=zoo.CIFAR_RESNET_MEAN, std=zoo.CIFAR_RESNET_STD)
    nets = {"float": float_net, "fixed": quantize(float_net, "loihi2", calibration_images=x_calib), "if": if_net,
            "x": x[:args.n_test], "y": np.asarray(y[:args.n_test])}
    n, steps = args.n_test, args.steps
    cases = [["float, window", "float", n, steps, {}], ["fixed point, window", "fixed", n, steps, {}],
             ["fixed point, window, float64", "fixed", n, steps, {"dtype": "float64"}],
             ["fixed point, step path", "fixed", args.n_step_path, steps, {"method": "step"}],
             ["IF float, step path", "if", args.n_step_path, steps, {}]]
    here = Path(__file__).resolve().parents[1]
    timings = {"this code": [], "baseline": []}
    with tempfile.TemporaryDirectory() as tmp:
        nets_path = str(Path(tmp) / "nets.pkl")
        with open(nets_path, "wb") as f:
            pickle.dump(nets, f)
        for repeat in range(args.repeats):
            timings["this code"].append(in_subprocess(here, nets_path, cases))
            if args.baseline:
                timings["baseline"].append(in_subprocess(args.baseline.resolve(), nets_path, cases))
            print(f"repeat {repeat + 1}/{args.repeats} done", flush=True)
    best = {who: {name: min(t[name] for t in runs) for name, *_ in cases} for who, runs in timings.items() if runs}
    payload = {"benchmark": "sim_speed", "command": command_line(), "machine": machine(), "n_test": n,
               "n_step_path": args.n_step_path, "steps": steps, "repeats": args.repeats,
               "baseline": str(args.baseline) if args.baseline else None, "baseline_revision": revision(args.baseline),
               "timings": timings, "best_s": best}
    write_json(args.out / "sim_speed.json", payload)
    lines = ["# Reference simulator speed, ResNet20 (P=2)", "", f"Command: `{payload['command']}`  ",
             f"Machine: {machine_text(payload['machine'])}  ", "",
             f"Best of {args.repeats} runs (each in a fresh process; this code and the baseline alternate). "
             "Throughput in image-steps per second.", "",
             "| run | code | images | seconds | image-steps/s |", "|---|---|---|---|---|"]
    for who, values in best.items():
        for name, _, images, *_ in cases:
            lines.append(f"| {name} | {who} | {images} | {values[name]:.1f} | {images * steps / values[name]:.0f} |")
    if "baseline" in best:
        lines += [""] + [f"- {name}: this code {best['baseline'][name] / best['this code'][name]:.2f}x as fast as "
                         f"the baseline ({args.baseline}, revision {payload['baseline_revision']})"
                         for name, *_ in cases]
        same = all(t[name + " accuracy"] == timings["this code"][0][name + " accuracy"]
                   for t in timings["baseline"] for name, *_ in cases)
        lines.append(f"- final accuracies identical between the two codes: {same}")
    write_markdown(args.out / "sim_speed.md", lines)


if __name__ == "__main__":
    main()
