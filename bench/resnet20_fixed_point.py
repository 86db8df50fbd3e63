"""ResNet20 / CIFAR-10: fixed-point (Loihi 2 profile) BSNN vs float BSNN vs ANN; resource checks.

Writes ``<out>/resnet20_fixed_point.{json,md,png}``: accuracy against T of the float and the integer
network on the same images, their difference where the float network first comes within 1 point of
the ANN, saturation counts, the quantization scales, and ``bsnn check`` tables for ResNet20 and a
VGG-style network on the loihi2 and loihi1 profiles.

    python bench/resnet20_fixed_point.py                  # 1000 images, T=320
    python bench/resnet20_fixed_point.py --n-test 200 --steps 200
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from bsnn_lava import convert, simulate, zoo
from bsnn_lava.datasets import load_npz
from bsnn_lava.plots import plot_accuracy_vs_steps
from bsnn_lava.quantize import quantize
from bsnn_lava.resources import check_resources

from common import add_resnet20_data_args, command_line, machine, write_json


def cifar_vgg11(num_classes: int = 10) -> nn.Module:
    """VGG-11 for 32x32 inputs with average pooling (random weights: structure only)."""
    layers, c_in = [], 3
    for v in (64, "P", 128, "P", 256, 256, "P", 512, 512, "P", 512, 512, "P"):
        if v == "P":
            layers.append(nn.AvgPool2d(2))
        else:
            layers += [nn.Conv2d(c_in, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU()]
            c_in = v
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(512, num_classes)).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_resnet20_data_args(parser)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--n-calib", type=int, default=300)
    parser.add_argument("--steps", type=int, default=320)
    parser.add_argument("--window", type=int, default=2)
    parser.add_argument("--hw", default="loihi2")
    parser.add_argument("--plain-rounding", action="store_true",
                        help="round weights to nearest and keep the float biases (default: error-feedback "
                             "rounding and bias correction on the calibration images)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--name", default="resnet20_fixed_point", help="result file stem")
    args = parser.parse_args()
    model = zoo.load_checkpoint(args.model)
    x_test, y_test = load_npz(args.test_data)
    x_test, y_test = x_test[:args.n_test], y_test[:args.n_test]
    x_calib = load_npz(args.calib_data)[0][:args.n_calib]
    float_net = convert(model, x_calib, neuron="bistable", window=args.window, v_init=0.5,
                        mean=zoo.CIFAR_RESNET_MEAN, std=zoo.CIFAR_RESNET_STD)
    int_net = quantize(float_net, args.hw, calibration_images=None if args.plain_rounding else x_calib)
    runs = {}
    for label, network in (("float", float_net), ("fixed-point", int_net)):
        started = time.perf_counter()
        result = simulate(network, x_test, y_test, steps=args.steps, progress=True)
        runs[label] = {"result": result, "wall_s": time.perf_counter() - started}
        print(f"{label}: ANN {100 * result.ann_accuracy:.2f}, final {100 * result.accuracy[-1]:.2f}, "
              f"T(-1) {result.steps_to_within(1.0)}, saturated {sum(result.n_saturated.values())}, "
              f"{runs[label]['wall_s']:.0f} s", flush=True)
    f, q = runs["float"]["result"], runs["fixed-point"]["result"]
    t_float = f.steps_to_within(1.0)
    diff_at = None if t_float is None else 100 * (f.accuracy[t_float - 1] - q.accuracy[t_float - 1])
    # mean difference over the plateau (T from t_float to the end): less sensitive to a single step
    plateau = None if t_float is None else float(100 * np.mean(f.accuracy[t_float - 1:] - q.accuracy[t_float - 1:]))
    checks = {}
    vgg = cifar_vgg11()
    vgg_net = quantize(convert(vgg, x_calib[:32]), args.hw)
    for name, network in (("ResNet20 BSNN", int_net), ("VGG-11 (avg pool) BSNN", vgg_net)):
        for hw in ("loihi2", "loihi1"):
            checks[f"{name} on {hw}"] = check_resources(network, hw).format()
    payload = {
        "benchmark": "resnet20_fixed_point", "command": command_line(), "machine": machine(),
        "n_test": args.n_test, "n_calib": args.n_calib, "steps": args.steps, "window_steps": args.window,
        "profile": args.hw, "rounding": "nearest" if args.plain_rounding else "error feedback + bias correction",
        "ann_accuracy": f.ann_accuracy, "ann_accuracy_fixed_point_ir": q.ann_accuracy,
        "float_steps_to_ann_minus_1": t_float, "fixed_steps_to_ann_minus_1": q.steps_to_within(1.0),
        "float_minus_fixed_points_at_t_float": diff_at, "mean_float_minus_fixed_points_after_t_float": plateau,
        "saturated_fixed": sum(q.n_saturated.values()), "lost_input_fixed": sum(q.n_lost_input.values()),
        "wall_s": {k: v["wall_s"] for k, v in runs.items()},
        "accuracy_float": [float(a) for a in f.accuracy], "accuracy_fixed": [float(a) for a in q.accuracy],
        "quantization": int_net.provenance["quantization"], "resource_checks": checks}
    write_json(args.out / f"{args.name}.json", payload)
    plot_accuracy_vs_steps({"BSNN float": f.accuracy, f"BSNN fixed point ({args.hw})": q.accuracy}, f.ann_accuracy,
                           args.out / f"{args.name}.png",
                           title=f"ResNet20 P={args.window}, first {args.n_test} CIFAR-10 test images")
    marks = [t for t in (96, 128, 160, 192, 256, 320, 384, 512) if t <= args.steps]
    lines = ["# ResNet20: fixed-point vs float BSNN", "", f"Command: `{payload['command']}`  ",
             f"Machine: {payload['machine']}  ", "",
             f"Rounding: {payload['rounding']} ({args.n_calib} calibration images).  ", "",
             f"ANN {100 * f.ann_accuracy:.2f}% on the first {args.n_test} test images. Float BSNN first within 1 point "
             f"of the ANN at T = {t_float}; there the fixed-point network is "
             f"{'n/a' if diff_at is None else f'{diff_at:+.2f}'} points below the float one (positive = fixed point "
             f"worse); mean difference from T = {t_float} to {args.steps}: "
             f"{'n/a' if plateau is None else f'{plateau:+.2f}'} points. Saturation events in the fixed-point run: "
             f"{payload['saturated_fixed']}; lost input: {payload['lost_input_fixed']}.", "",
             "| network | " + " | ".join(f"T={t}" for t in marks) + " | T(-1) |", "|---|" + "---|" * (len(marks) + 1)]
    for label, r in (("float", f), ("fixed point", q)):
        lines.append(f"| {label} | " + " | ".join(f"{100 * r.accuracy[t - 1]:.1f}" for t in marks) +
                     f" | {r.steps_to_within(1.0)} |")
    lines += ["", f"![curves]({args.name}.png)", "", "## Resource checks", ""]
    for name, text in checks.items():
        lines += [f"### {name}", "", "```", text, "```", ""]
    (args.out / f"{args.name}.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
