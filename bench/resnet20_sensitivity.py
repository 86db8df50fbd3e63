"""ResNet20 / CIFAR-10: how far the float BSNN's accuracy moves under a perturbation no ANN notices.

The spiking network turns small input differences into different spike trains, and these add up
through 19 layers. Multiplying every non-relay weight by ``1 + eps * N(0, 1)`` (eps = 1e-4 by
default; relays keep their exact identity weights) changes no ANN prediction, yet moves the SNN's
accuracy at a given T. This run measures that spread on the images of
``bench/resnet20_fixed_point.py``, which is the floor against which a fixed-point vs float
difference (0.3 point in issue 3's target) has to be read.

Writes ``<out>/resnet20_sensitivity.{json,md}``.

    python bench/resnet20_sensitivity.py                      # 1000 images, T=240, 2 seeds
    python bench/resnet20_sensitivity.py --n-test 200 --seeds 1
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from bsnn_lava import convert, simulate, zoo
from bsnn_lava.datasets import load_npz
from bsnn_lava.ir import Network, Synapse, replace
from bsnn_lava.sim.ann import ann_forward
from bsnn_lava.data import as_nchw

from common import add_resnet20_data_args, command_line, machine, write_json


def perturbed(network: Network, eps: float, seed: int) -> Network:
    """``network`` with every non-relay weight multiplied by ``1 + eps * N(0, 1)``."""
    rng = np.random.default_rng(seed)
    layers = [network.input]
    for layer in network.layers[1:]:
        if getattr(layer, "role", "") == "relay":
            layers.append(layer)
            continue
        synapses = [Synapse(s.source, replace(s.op, weight=s.op.weight * (1 + eps * rng.standard_normal(s.op.weight.shape))))
                    for s in layer.synapses]
        layers.append(replace(layer, synapses=synapses))
    return Network(layers, numeric=network.numeric, provenance=network.provenance)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_resnet20_data_args(parser)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--n-calib", type=int, default=300)
    parser.add_argument("--steps", type=int, default=240)
    parser.add_argument("--eps", type=float, default=1e-4)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--float-json", type=Path, default=None,
                        help="take the float curve from this resnet20_fixed_point.json (same images and T) "
                             "instead of simulating it again")
    args = parser.parse_args()
    model = zoo.load_checkpoint(args.model)
    x_test, y_test = load_npz(args.test_data)
    x_test, y_test = x_test[:args.n_test], y_test[:args.n_test]
    x_calib = load_npz(args.calib_data)[0][:args.n_calib]
    float_net = convert(model, x_calib, neuron="bistable", window=2, v_init=0.5,
                        mean=zoo.CIFAR_RESNET_MEAN, std=zoo.CIFAR_RESNET_STD)
    images = as_nchw(x_test, 3)
    ann_pred = ann_forward(float_net, images)[0].argmax(1)
    runs = {}
    candidates = [(f"perturbed seed {k}", perturbed(float_net, args.eps, k)) for k in range(1, args.seeds + 1)]
    if args.float_json is None:
        candidates.insert(0, ("float", float_net))
    else:
        previous = json.loads(args.float_json.read_text())
        if (previous["n_test"], previous["steps"]) != (args.n_test, args.steps):
            parser.error(f"{args.float_json}: n_test {previous['n_test']}, steps {previous['steps']} differ from "
                         f"--n-test {args.n_test} --steps {args.steps}")
        accuracy = np.array(previous["accuracy_float"])
        runs["float"] = {"accuracy": accuracy.tolist(), "ann_agreement": 1.0, "from": str(args.float_json),
                         "steps_to_ann_minus_1": previous["float_steps_to_ann_minus_1"]}
    for label, network in candidates:
        started = time.perf_counter()
        result = simulate(network, x_test, y_test, steps=args.steps, progress=True)
        agree = float((ann_forward(network, images)[0].argmax(1) == ann_pred).float().mean())
        runs[label] = {"accuracy": [float(a) for a in result.accuracy], "ann_agreement": agree,
                       "steps_to_ann_minus_1": result.steps_to_within(1.0), "wall_s": time.perf_counter() - started}
        print(f"{label}: T(-1) {result.steps_to_within(1.0)}, ANN agreement {agree:.4f}", flush=True)
    f = np.array(runs["float"]["accuracy"])
    t_float = runs["float"]["steps_to_ann_minus_1"]
    for label, run in runs.items():
        acc = np.array(run["accuracy"])
        run["minus_float_points_at_t_float"] = None if t_float is None else float(100 * (acc - f)[t_float - 1])
        run["mean_minus_float_points_after_t_float"] = None if t_float is None else float(100 * np.mean((acc - f)[t_float - 1:]))
    payload = {"benchmark": "resnet20_sensitivity", "command": command_line(), "machine": machine(),
               "n_test": args.n_test, "steps": args.steps, "eps": args.eps, "float_steps_to_ann_minus_1": t_float,
               "runs": runs}
    write_json(args.out / "resnet20_sensitivity.json", payload)
    lines = ["# ResNet20 BSNN: accuracy spread under a perturbation no ANN notices", "",
             f"Command: `{payload['command']}`  ", f"Machine: {payload['machine']}  ", "",
             f"Every non-relay weight of the float BSNN (P=2, V(0)=theta/2) times 1 + {args.eps:g} N(0,1); first "
             f"{args.n_test} CIFAR-10 test images; float T(-1) = {t_float}.", "",
             "| network | ANN predictions unchanged | T(-1) | minus float at T(-1) (points) | mean minus float from T(-1) on |",
             "|---|---|---|---|---|"]
    for label, run in runs.items():
        at, mean = run["minus_float_points_at_t_float"], run["mean_minus_float_points_after_t_float"]
        lines.append(f"| {label} | {100 * run['ann_agreement']:.1f}% | {run['steps_to_ann_minus_1']} | "
                     f"{'n/a' if at is None else f'{at:+.2f}'} | {'n/a' if mean is None else f'{mean:+.2f}'} |")
    (args.out / "resnet20_sensitivity.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
