"""ResNet20 / CIFAR-10: ANN vs BSNN vs IF accuracy against time steps, with sweeps.

Writes ``<out>/<name>.{json,md,png}`` (name: resnet20_accuracy). Defaults read ../shared (the pretrained akamaster
ResNet20 and the JPEG-decoded CIFAR-10 copies); point --model / --test-data / --calib-data at your own.

    python bench/resnet20_accuracy.py                   # full run (75 min on 2 busy cores; IF ~2-3 ms per image-step)
    python bench/resnet20_accuracy.py --main-only --channelwise --name resnet20_accuracy_channelwise
    python bench/resnet20_accuracy.py --n-test 100 --n-sweep 50 --steps 256   # quick look
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
from bsnn_lava.plots import plot_accuracy_vs_steps
from bsnn_lava.sim.result import sustained_crossing

from common import add_resnet20_data_args, command_line, machine, machine_text, write_json, write_markdown

CURVE_STEPS = (64, 128, 192, 256, 384, 512)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_resnet20_data_args(parser)
    parser.add_argument("--n-test", type=int, default=500, help="test images for the main comparison")
    parser.add_argument("--n-sweep", type=int, default=200, help="test images for the P / V(0) / threshold sweeps")
    parser.add_argument("--n-calib", type=int, default=300, help="calibration images (training set)")
    parser.add_argument("--steps", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--main-only", action="store_true", help="only the BSNN vs IF comparison on --n-test images")
    parser.add_argument("--channelwise", action="store_true", help="channel-wise thresholds for the main comparison")
    parser.add_argument("--name", default="resnet20_accuracy", help="base name of the result files")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite the markdown and plots from the JSON of an earlier run")
    args = parser.parse_args()
    if args.report_only:
        payload = json.loads((args.out / f"{args.name}.json").read_text())
        for r in payload["runs"]:
            for points in (1, 0.5):
                r[f"steps_to_stay_within_{points}"] = sustained_crossing(r["accuracy"], r["ann_accuracy"] - points / 100)
        write_report(args, payload["runs"], payload)
        return
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = zoo.load_checkpoint(args.model)
    x_test, y_test = load_npz(args.test_data)
    x_calib, _ = load_npz(args.calib_data)
    x_calib = x_calib[:args.n_calib]
    norm = dict(mean=zoo.CIFAR_RESNET_MEAN, std=zoo.CIFAR_RESNET_STD)

    runs = []

    def run(label, group, n_images, **settings):
        started = time.perf_counter()
        network = convert(model, x_calib, **norm, **settings)
        result = simulate(network, x_test[:n_images], y_test[:n_images], steps=args.steps,
                          batch_size=args.batch_size, progress=True)
        entry = {"label": label, "group": group, "n_images": n_images, "settings": settings,
                 "ann_accuracy": result.ann_accuracy, "method": result.method,
                 "pipeline_fill_steps": network.readout.schedule.offset_steps,
                 "steps_to_ann_minus_2": result.steps_to_within(2.0),
                 "steps_to_ann_minus_1": result.steps_to_within(1.0),
                 "steps_to_ann_minus_0.5": result.steps_to_within(0.5),
                 "steps_to_stay_within_1": result.steps_to_stay_within(1.0),
                 "steps_to_stay_within_0.5": result.steps_to_stay_within(0.5),
                 "accuracy_at": {t: float(result.accuracy[t - 1]) for t in CURVE_STEPS if t <= args.steps},
                 "final_accuracy": float(result.accuracy[-1]),
                 "accuracy": [float(a) for a in result.accuracy],
                 "spikes_per_image": sum(result.n_spikes.values()) / n_images,
                 "sin_per_image": sum(result.n_sin.values()) / n_images,
                 "lost_input": sum(result.n_lost_input.values()),
                 "wall_s": time.perf_counter() - started}
        runs.append(entry)
        print(f"{label:<40} ANN {100 * entry['ann_accuracy']:.2f}  T(-1) {entry['steps_to_ann_minus_1']}  "
              f"T(-0.5) {entry['steps_to_ann_minus_0.5']}  final {100 * entry['final_accuracy']:.2f}  "
              f"({entry['wall_s']:.0f} s)", flush=True)
        write_report(args, runs)

    n_main, n_sweep = args.n_test, args.n_sweep
    kind = ", channel-wise" if args.channelwise else ""
    run(f"BSNN P=2, V(0)=theta/2{kind}", "main", n_main, neuron="bistable", window=2, v_init=0.5,
        channelwise=args.channelwise)
    run(f"IF, V(0)=theta/2{kind}", "main", n_main, neuron="if", v_init=0.5, channelwise=args.channelwise)
    if args.main_only:
        return
    for v_init in (0.5, 0.0):
        for window in (1, 2, 4, 8):
            run(f"BSNN P={window}, V(0)={'theta/2' if v_init else '0'}", "sweep_p_v0", n_sweep,
                neuron="bistable", window=window, v_init=v_init)
        run(f"IF, V(0)={'theta/2' if v_init else '0'}", "sweep_p_v0", n_sweep, neuron="if", v_init=v_init)
    for percentile, channelwise in ((99.99, False), (100.0, False), (99.9, True), (99.99, True)):
        kind = "channel-wise" if channelwise else "layer-wise"
        run(f"BSNN P=2, theta/2, {kind} p={percentile}", "thresholds", n_sweep, neuron="bistable", window=2,
            v_init=0.5, percentile=percentile, channelwise=channelwise)
        if (percentile, channelwise) in ((99.99, False), (99.9, True)):  # IF costs ~2 ms per image-step
            run(f"IF, theta/2, {kind} p={percentile}", "thresholds", n_sweep, neuron="if", v_init=0.5,
                percentile=percentile, channelwise=channelwise)


def write_report(args, runs, payload=None) -> None:
    out = args.out
    payload = payload or {
        "benchmark": "resnet20_accuracy", "command": command_line(), "machine": machine(),
        "model": str(args.model), "test_data": str(args.test_data), "calib_data": str(args.calib_data),
        "n_calib": args.n_calib, "steps": args.steps}
    payload["definitions"] = {
        "steps_to_ann_minus_X": "first T (steps simulated, pipeline fill included) at which accuracy >= ANN "
                                "accuracy - X points, on the same images",
        "steps_to_stay_within_X": "first T from which accuracy stays >= ANN - X points until the end of the run",
        "synaptic_delay": "1 step per synapse, as in Lava"}
    payload["runs"] = runs
    write_json(out / f"{args.name}.json", payload)
    args.steps, args.n_calib = payload["steps"], payload["n_calib"]
    args.calib_data, args.test_data = payload["calib_data"], payload["test_data"]
    main_runs = [r for r in runs if r["group"] == "main"]
    if main_runs:
        plot_accuracy_vs_steps({r["label"]: r["accuracy"] for r in main_runs}, main_runs[0]["ann_accuracy"],
                               out / f"{args.name}.png",
                               title=f"ResNet20, CIFAR-10 (JPEG copy), first {main_runs[0]['n_images']} test images")
    sweep = [r for r in runs if r["group"] != "main"]
    if sweep:
        plot_accuracy_vs_steps({r["label"]: r["accuracy"] for r in sweep if r["group"] == "sweep_p_v0"},
                               sweep[0]["ann_accuracy"], out / f"{args.name}_sweep.png",
                               title=f"ResNet20 sweep, first {sweep[0]['n_images']} test images")
    lines = ["# ResNet20 / CIFAR-10: BSNN vs IF accuracy against time steps", "",
             f"Command: `{payload['command']}` (markdown regenerated with `--report-only`)  ",
             f"Machine: {machine_text(payload['machine'])}  ",
             f"Calibration: first {args.n_calib} images of {Path(args.calib_data).name}; "
             f"test: {Path(args.test_data).name}. T counts every step from the first input, pipeline fill included; "
             "each synapse adds one step of delay (Lava's). T(-x) = first T with accuracy >= ANN - x points "
             "(same images).", "",
             "| run | images | ANN % | fill | T(-2) | T(-1) | T(-0.5) | stays -1 from | stays -0.5 from | " +
             " | ".join(f"T={t}" for t in CURVE_STEPS if t <= args.steps) + " | spikes/img | SIN/img | lost |",
             "|---|---|---|---|---|---|---|---|---|" + "---|" * len([t for t in CURVE_STEPS if t <= args.steps]) +
             "---|---|---|"]
    for r in runs:
        cells = [r["label"], r["n_images"], f"{100 * r['ann_accuracy']:.2f}", r["pipeline_fill_steps"],
                 r["steps_to_ann_minus_2"], r["steps_to_ann_minus_1"], r["steps_to_ann_minus_0.5"],
                 r.get("steps_to_stay_within_1"), r.get("steps_to_stay_within_0.5")]
        cells += [f"{100 * v:.1f}" for v in r["accuracy_at"].values()]
        cells += [f"{r['spikes_per_image']:.0f}", f"{r['sin_per_image']:.0f}", r["lost_input"]]
        lines.append("| " + " | ".join("not reached" if c is None else str(c) for c in cells) + " |")
    lines += ["", f"![main]({args.name}.png)", ""] + ([f"![sweep]({args.name}_sweep.png)", ""] if sweep else [])
    write_markdown(out / f"{args.name}.md", lines)


if __name__ == "__main__":
    main()
