"""Streamed inference on CIFAR-10: a new image every frame instead of one image per latency.

For each network (fine-tuned clip-floor-shift models from ``finetune.py``'s checkpoints, trained here
when missing; converted with frame reset and quantized for Loihi 2 with calibration images): the test
images one at a time (every layer stops after its frame) and streamed, through the reference
simulator and through Lava's CPU simulator, with B lanes (images entering per frame; B = 1 is one
image per frame, as on the chip). Reported: steps of each run, images per step, wall time and
lane-steps per second, whether every streamed prediction and readout potential equals the
one-at-a-time run's, and the Loihi 2 profile per image both ways: dynamic energy, static energy and
images per second (the profile's time per step and static power: lava-dl's PilotNet benchmark, estimates).

Every run is kept in ``<out>/<name>.json`` as it finishes; a rerun skips what is there (``--force``
recomputes). Writes ``<out>/<name>.{json,md,png}``.

    python bench/stream.py                                   # all three networks, all 10,000 test images
    python bench/stream.py --networks r20-g8 --n-test 500    # one network, fewer images
    python bench/stream.py --report-only
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from bsnn_lava import convert, simulate, zoo
from bsnn_lava.datasets import load_npz
from bsnn_lava.lava.run import run_lava
from bsnn_lava.profile import profile_run
from bsnn_lava.quantize import quantize

import finetune as finetune_bench
from common import SHARED, add_command, machine, machine_text, read_payload, write_json, write_markdown

MEAN, STD = zoo.CIFAR_RESNET_MEAN, zoo.CIFAR_RESNET_STD
RESULTS = Path(__file__).parent / "results"
MODELS = {"resnet20": SHARED / "models" / "akamaster_resnet20-12fca82f.th",
          "resnet56": SHARED / "models" / "akamaster_resnet56-4bfd9763.th"}
#: name -> (model, spikes, levels, fine-tuning epochs, learning rate): the fine-tunings of finetune.py / graded.py
NETWORKS = {"r20-g8": ("resnet20", "graded", 8, 6, 0.01), "r20-p4": ("resnet20", "binary", 4, 6, 0.01),
            "r56-g8": ("resnet56", "graded", 8, 4, 0.005)}
#: targets: images per step streamed vs one at a time, dynamic energy per image one at a time vs streamed, minutes
#: for the test images through Lava CPU (the ResNet20 target is met by the graded network, whose frame is 2 steps)
TARGETS = {"r20-g8": {"images_per_step_ratio": 15.0, "dynamic_energy_ratio": 3.0, "lava_minutes": 5.0},
           "r20-p4": {"images_per_step_ratio": 10.0}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--networks", nargs="+", choices=sorted(NETWORKS), default=list(NETWORKS))
    parser.add_argument("--resnet20", type=Path, default=MODELS["resnet20"], help="ResNet20 checkpoint")
    parser.add_argument("--resnet56", type=Path, default=MODELS["resnet56"], help="ResNet56 checkpoint")
    parser.add_argument("--test-data", type=Path, default=SHARED / "data" / "cifar10_test.npz")
    parser.add_argument("--calib-data", type=Path, default=SHARED / "data" / "cifar10_train_10k.npz",
                        help="fine-tuning and calibration images")
    parser.add_argument("--n-test", type=int, default=10000)
    parser.add_argument("--lanes", type=int, nargs="+", default=[1, 32], help="lanes B of the streamed runs")
    parser.add_argument("--reference-batch", type=int, default=100, help="batch of the one-at-a-time reference run")
    parser.add_argument("--no-lava", action="store_true", help="reference runs only")
    parser.add_argument("--checkpoints", type=Path, default=Path("/tmp/bsnn-finetune"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="stream")
    parser.add_argument("--force", action="store_true", help="recompute runs already in <name>.json")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    path = args.out / f"{args.name}.json"
    if args.report_only:
        write_report(args, json.loads(path.read_text()))
        return
    payload = read_payload(path, networks={})
    if payload.get("n_test", args.n_test) != args.n_test:
        parser.error(f"{path} holds runs on {payload['n_test']} test images; use --name for another file")
    payload.update(n_test=args.n_test, machine=machine())
    add_command(payload)
    torch.manual_seed(0)
    args.checkpoints.mkdir(parents=True, exist_ok=True)
    x_train, y_train = load_npz(args.calib_data)
    x_test, y_test = load_npz(args.test_data)
    x_test, y_test = x_test[:args.n_test], y_test[:args.n_test]
    for name in args.networks:
        entry = payload["networks"].setdefault(name, {"runs": {}})
        network = prepare(args, name, entry, x_train, y_train)
        write_json(path, payload)
        for run_name, run in planned_runs(args, network):
            if run_name in entry["runs"] and not args.force:
                continue
            print(f"{name}: {run_name}", flush=True)
            entry["runs"][run_name] = measure(network, x_test, y_test, run)
            compare_with_alone(entry)
            write_json(path, payload)
    write_report(args, payload)


def prepare(args, name: str, entry: dict, x_train, y_train):
    """The fine-tuned model of ``name`` (checkpoint), converted with frame reset and quantized for Loihi 2."""
    model_name, spikes, levels, epochs, lr = NETWORKS[name]
    model_path = getattr(args, model_name)
    tune = SimpleNamespace(model=model_path, epochs=epochs, lr=lr, channelwise=False, checkpoints=args.checkpoints)
    started = time.perf_counter()
    model = finetune_bench.trained(tune, zoo.load_checkpoint(model_path), levels, x_train, y_train)
    calib = x_train[:300]
    network = quantize(convert(model, calib, mean=MEAN, std=STD, spikes=spikes), "loihi2", calibration_images=calib)
    entry.update(model=str(model_path), spikes=spikes, levels=levels, epochs=epochs, lr=lr,
                 latency_steps=network.latency_steps, frame_steps=network.frame_steps,
                 n_neurons=sum(int(np.prod(layer.shape)) for layer in network.layers[1:]),
                 prepare_s=time.perf_counter() - started)
    return network


def planned_runs(args, network):
    """(name, how) of every run: one at a time in the reference, streamed in the reference and in Lava."""
    runs = [("reference, one at a time", dict(backend="torch", stream=False, lanes=args.reference_batch))]
    runs += [(f"reference, streamed, B={b}", dict(backend="torch", stream=True, lanes=b)) for b in args.lanes]
    if not args.no_lava:
        runs += [(f"Lava CPU, streamed, B={b}", dict(backend="lava", stream=True, lanes=b)) for b in args.lanes]
    return runs


def measure(network, x, y, run: dict) -> dict:
    started = time.perf_counter()
    if run["backend"] == "torch":
        if run["stream"]:
            result = simulate(network, x, y, stream=True, batch_size=run["lanes"], progress=True)
        else:
            result = simulate(network, x, y, steps=network.latency_steps, batch_size=run["lanes"], progress=True)
    else:
        result = run_lava(network, x, y, stream=True, batch_size=run["lanes"])
    wall_s = time.perf_counter() - started
    profile = profile_run(network, result, "loihi2")
    readout = result.stream.readout if result.stream is not None else None
    entry = {"stream": run["stream"], "backend": run["backend"], "lanes": run["lanes"], "n_steps": result.n_steps,
             "images": result.n_samples, "accuracy": result.final_accuracy, "ann_accuracy": result.ann_accuracy,
             "wall_s": wall_s, "lane_steps_per_s": (run["lanes"] if run["stream"] else result.n_samples)
             * result.n_steps / wall_s,
             "images_per_step": result.n_samples / result.n_steps if run["stream"] else 1.0 / result.n_steps,
             "images_per_lane_step": result.n_samples / result.n_steps / run["lanes"] if run["stream"]
             else 1.0 / result.n_steps,
             "spikes_per_image": profile.spikes, "synops_per_image": profile.synops,
             "throughput": profile.throughput, "energy_nj": profile.energy_nj, "timing": result.extras.get("timing"),
             "predictions_sha": _digest(result.predictions), "readout_sha": None if readout is None else _digest(readout)}
    print(f"  {entry['n_steps']} steps, {wall_s:.0f} s, accuracy {100 * entry['accuracy']:.2f}%", flush=True)
    return entry


def _digest(array: np.ndarray) -> str:
    """SHA-256 of an array's values in float64: equal digests, equal arrays."""
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(array, dtype=np.float64).tobytes()).hexdigest()


def compare_with_alone(entry: dict) -> None:
    """Every run's predictions against the one-at-a-time run's (same images), by digest."""
    alone = entry["runs"].get("reference, one at a time")
    if alone is None:
        return
    for run in entry["runs"].values():
        run["same_predictions_as_alone"] = run["predictions_sha"] == alone["predictions_sha"]
    streamed = [r for r in entry["runs"].values() if r["stream"]]
    entry["same_readout_in_every_stream"] = len({r["readout_sha"] for r in streamed}) == 1 if streamed else None


def write_report(args, payload: dict) -> None:
    lines = [f"# Streamed inference: one image per frame ({payload['n_test']} CIFAR-10 test images)", "",
             "Commands: " + "; ".join(f"`{c}`" for c in payload["commands"]), "",
             f"Machine: {machine_text(payload['machine'])}", "",
             "Each network is a fine-tuned clip-floor-shift model (bench/finetune.py checkpoints) converted with frame "
             "reset and quantized for Loihi 2. *One at a time*: each image occupies the network for its latency (every "
             "layer stops after its frame). *Streamed*: B lanes, a new round of B images enters every frame (2P steps "
             "binary, 2 graded), every layer holds a different round, each image's prediction is read at the end of its "
             "readout frame. Images per step and lane: images / (steps of the run x lanes), what one network does (one at a "
             "time: 1 / latency; the last round of a stream may be partial, and the pipeline fills once).", ""]
    lines += ["| network | run | steps | images per step and lane | vs one at a time | wall (s) | lane-steps/s | "
              "accuracy | same predictions as one at a time |", "|---|---|---|---|---|---|---|---|---|"]
    for name, entry in payload["networks"].items():
        runs = entry["runs"]
        alone = runs.get("reference, one at a time")
        for run_name, run in runs.items():
            ratio = "" if alone is None else f"{run['images_per_lane_step'] / alone['images_per_lane_step']:.1f}x"
            lines.append(f"| {name} ({entry['spikes']}, {'L' if entry['spikes'] == 'graded' else 'P'}={entry['levels']}) "
                         f"| {run_name} | {run['n_steps']} | {run['images_per_lane_step']:.4f} | {ratio} | "
                         f"{run['wall_s']:.0f} | {run['lane_steps_per_s']:.0f} | {100 * run['accuracy']:.2f}% | "
                         f"{'yes' if run.get('same_predictions_as_alone') else 'NO'} |")
    lines += ["", "Per image on the Loihi 2 profile (estimates: borrowed Loihi 1 energies per operation; 152.8 us per "
              "step and 0.232 W static per chip from lava-dl's PilotNet LIF benchmark on Loihi 2):", "",
              "| network | latency (steps) | frame (steps) | chips | mode | steps per image | images/s | dynamic (uJ) | "
              "static (uJ) | total (uJ) | static share |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, entry in payload["networks"].items():
        streamed = next((r for r in entry["runs"].values() if r["stream"] and r["backend"] == "torch"), None)
        if streamed is None:
            continue
        for mode, t in streamed["throughput"].items():
            e = t["energy_nj"]
            lines.append(f"| {name} | {entry['latency_steps']} | {entry['frame_steps']} | {t['chips']:.0f} | "
                         f"{mode.replace('_', ' ')} | {t['steps_per_image']:.0f} | {t['images_per_s']:.0f} | "
                         f"{e['dynamic'] / 1e3:.1f} | {e['static'] / 1e3:.1f} | {e['total'] / 1e3:.1f} | "
                         f"{100 * t['static_share']:.0f}% |")
    lines += ["", "Targets:", ""]
    for name, entry in payload["networks"].items():
        lines += target_lines(name, entry)
    write_markdown(args.out / f"{args.name}.md", lines)
    plot(args, payload)


def target_lines(name: str, entry: dict) -> list:
    runs = entry["runs"]
    alone = runs.get("reference, one at a time")
    streamed = [r for r in runs.values() if r["stream"]]
    if alone is None or not streamed:
        return []
    lines = [f"- {name}: every streamed prediction equals the one-at-a-time prediction: "
             f"{'yes' if all(r.get('same_predictions_as_alone') for r in streamed) else 'NO'}; the streams' readout "
             f"potentials identical across B and backends: {'yes' if entry.get('same_readout_in_every_stream') else 'NO'}"]
    b1 = next((r for r in streamed if r["lanes"] == 1 and r["backend"] == "torch"), None)
    target = TARGETS.get(name, {})
    if b1 is not None:
        ratio = b1["images_per_lane_step"] / alone["images_per_lane_step"]
        want = target.get("images_per_step_ratio")
        lines.append(f"- {name}: images per step streamed (B=1) / one at a time = {ratio:.2f}x (ideal "
                     f"{entry['latency_steps'] / entry['frame_steps']:.1f}x)"
                     + ("" if want is None else f"; target >= {want:g}x: {'met' if ratio >= want else 'NOT met'}"))
        t = b1["throughput"]
        energy = t["one_at_a_time"]["energy_nj"]["dynamic"] / t["streamed"]["energy_nj"]["dynamic"]
        want = target.get("dynamic_energy_ratio")
        lines.append(f"- {name}: dynamic energy per image one at a time / streamed = {energy:.2f}x"
                     + ("" if want is None else f"; target >= {want:g}x: {'met' if energy >= want else 'NOT met'}"))
    lava = [r for r in streamed if r["backend"] == "lava"]
    if lava:
        fastest = min(lava, key=lambda r: r["wall_s"])
        want = target.get("lava_minutes")
        lines.append(f"- {name}: all {fastest['images']} images through Lava CPU streamed in {fastest['wall_s'] / 60:.1f} "
                     f"min (B={fastest['lanes']})" + ("" if want is None else
                                                      f"; target < {want:g} min: "
                                                      f"{'met' if fastest['wall_s'] < 60 * want else 'NOT met'}"))
    return lines


def plot(args, payload: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, e in payload["networks"].items() if any(r["stream"] for r in e["runs"].values())]
    if not names:
        return
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.38
    for i, name in enumerate(names):
        streamed = next(r for r in payload["networks"][name]["runs"].values() if r["stream"])
        for j, mode in enumerate(("one_at_a_time", "streamed")):
            t = streamed["throughput"][mode]
            x = i + (j - 0.5) * width
            dynamic, static = t["energy_nj"]["dynamic"] / 1e3, t["energy_nj"]["static"] / 1e3
            axes[0].bar(x, dynamic, width, color=("tab:blue", "tab:orange")[j], label=f"{mode.replace('_', ' ')}, dynamic" if i == 0 else None)
            axes[0].bar(x, static, width, bottom=dynamic, color=("tab:blue", "tab:orange")[j], alpha=0.35,
                        label=f"{mode.replace('_', ' ')}, static" if i == 0 else None)
            axes[1].bar(x, t["images_per_s"], width, color=("tab:blue", "tab:orange")[j],
                        label=mode.replace("_", " ") if i == 0 else None)
    for ax, label in zip(axes, ("energy per image (uJ), Loihi 2 profile", "images per second, Loihi 2 profile")):
        ax.set_xticks(range(len(names)), names)
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    axes[1].set_yscale("log")  # energy stays linear: stacked bars on a log axis mislead
    fig.suptitle("One image at a time vs streamed (estimates: borrowed energies, PilotNet step time and static power)")
    fig.tight_layout()
    fig.savefig(args.out / f"{args.name}.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
