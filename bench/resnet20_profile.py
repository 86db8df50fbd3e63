"""ResNet20 / CIFAR-10: spikes, synaptic operations and energy per inference (BSNN vs IF vs ANN).

Writes ``<out>/resnet20_profile.{json,md,html}``. The BSNN is quantized for Loihi 2 (the integer
network is what would run on chip); the IF baseline is profiled in float at the same T.

    python bench/resnet20_profile.py --n-test 100 --steps 176
"""
from __future__ import annotations

import argparse
from pathlib import Path

from bsnn_lava import convert, simulate, zoo
from bsnn_lava.datasets import load_npz
from bsnn_lava.profile import format_profile, profile_run
from bsnn_lava.quantize import quantize
from bsnn_lava.report import write_html_report

from common import add_resnet20_data_args, command_line, machine, machine_text, write_json, write_markdown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_resnet20_data_args(parser)
    parser.add_argument("--n-test", type=int, default=100)
    parser.add_argument("--steps", type=int, default=176,
                        help="T; default: where the float BSNN first came within 1 point of the ANN on 1000 images")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    model = zoo.load_checkpoint(args.model)
    x, y = load_npz(args.test_data)
    x, y = x[:args.n_test], y[:args.n_test]
    calib = load_npz(args.calib_data)[0][:300]
    norm = dict(mean=zoo.CIFAR_RESNET_MEAN, std=zoo.CIFAR_RESNET_STD)
    bsnn = quantize(convert(model, calib, neuron="bistable", window=2, v_init=0.5, **norm), "loihi2")
    plain_if = convert(model, calib, neuron="if", v_init=0.5, **norm)
    runs = {"BSNN (fixed point, loihi2)": simulate(bsnn, x, y, steps=args.steps, progress=True),
            "IF (float)": simulate(plain_if, x, y, steps=args.steps, progress=True)}
    profiles = {f"{label} on {hw}": profile_run(bsnn if label.startswith("BSNN") else plain_if, result, hw)
                for label, result in runs.items() for hw in ("loihi2", "loihi1")}
    payload = {"benchmark": "resnet20_profile", "command": command_line(), "machine": machine(),
               "n_test": args.n_test, "steps": args.steps,
               "profiles": {k: {f: v for f, v in p.to_dict().items() if f not in ("energy_nj_vs_steps",)}
                            for k, p in profiles.items()}}
    write_json(args.out / "resnet20_profile.json", payload)
    lines = ["# ResNet20 / CIFAR-10: spikes, synaptic operations, energy per inference", "",
             f"Command: `{payload['command']}`  ", f"Machine: {machine_text(payload['machine'])}  ",
             f"First {args.n_test} test images, T = {args.steps} steps (pipeline fill included).", "",
             "| run | accuracy % (ANN) | spikes/inf | synops/inf | ANN MACs | synops/MAC | energy/inf (uJ) | "
             "ANN FP32 (uJ) | ANN INT8 (uJ) | SNN at 0.9 pJ/synop (uJ) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, p in profiles.items():
        lines.append(f"| {name} | {100 * p.accuracy:.1f} ({100 * p.ann_accuracy:.1f}) | {p.spikes:.3g} | {p.synops:.3g} | "
                     f"{p.ann_macs:.3g} | {p.synops / p.ann_macs:.2f} | {p.energy_nj['total'] / 1e3:.3g} | "
                     f"{p.ann_energy_nj['fp32'] / 1e3:.3g} | {p.ann_energy_nj['int8'] / 1e3:.3g} | "
                     f"{p.snn_energy_nj_at_0p9pj / 1e3:.3g} |")
    for name, p in profiles.items():
        lines += ["", f"## {name}", "", "```", format_profile(p), "```"]
    write_markdown(args.out / "resnet20_profile.md", lines)
    first = next(iter(profiles))
    write_html_report(args.out / "resnet20_profile.html", profiles[first], f"ResNet20 {first}",
                      extra_curves={"IF (float)": runs["IF (float)"].accuracy})


if __name__ == "__main__":
    main()
