"""ImageNet-size networks, streamed: torchvision's ResNet-18, -34 and -50 at 224x224, graded and binary.

For each network (``zoo.imagenet_resnet``: torchvision's layout and initialisation, random weights, seed 0;
every figure is about cost and exactness, none about accuracy) and each spike kind:

* ``graded``: the model's ReLUs replaced by clip-floor-shift activations with ``--levels`` L (8), thresholds
  calibrated on the calibration images (:func:`bsnn_lava.training.calibrate_thresholds`, no fine-tuning),
  converted with graded spikes and frame reset (a frame is 2 steps);
* ``binary``: the ReLU model converted after training (percentile thresholds, window P = ``--window``, 2, as
  bench/resnet34.py does) with frame reset, so it streams (each frame is its P-level quantized ANN; a
  frame is 2P steps);

the stages, each timed with its peak memory (this process's RSS, and the PSS of this process and every child,
Lava's workers, :class:`common.TreeMemoryPeak`): convert (``--n-calib`` CIFAR-10 test photographs resized to
224), quantize for loihi2 (error-feedback rounding on ``--n-quant-calib`` of them), ``check_resources`` for
loihi2 (cores, chips), the reference simulator one image at a time (``--n-alone`` images in one batch, each
for the latency) and streamed (``--n-stream`` images, ``--lanes`` B images entering per frame; every streamed
prediction compared with the one-at-a-time run's; ``--without-ann``: without the equivalent ANN beside it), the Lava CPU build (:func:`check_memory`'s estimate) and a
streamed run of ``--n-lava`` images in Lava's CPU simulator (one lane), compared spike for spike with the
reference's streamed run (step path): spike counts of every layer at every step, spikes per neuron, each
image's prediction, prediction step and readout potentials.

Every stage is kept in ``<out>/<name>.json`` as it finishes, and each quantized network in ``--cache``; a rerun
does only the stages not there (``--force``: all of the runs named; ``--redo PREFIX``: those so named). Writes
``<out>/<name>.{json,md}``.

    python bench/imagenet_size.py                                        # all six, 64 images streamed
    python bench/imagenet_size.py --runs 50-graded 50-binary --n-stream 16
    python bench/imagenet_size.py --report-only
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from common import SHARED, add_command, machine, machine_text, measured, read_payload, write_json, write_markdown
from resnet34 import ann_macs, equal_to_reference, images, lava_build_stage

RESULTS = Path(__file__).parent / "results"
RUNS = ("34-graded", "34-binary", "50-graded", "50-binary", "18-graded", "18-binary")
#: the paper's ImageNet validation set, and the post-training binary figure of bench/results/resnet34.md
IMAGENET_IMAGES = 50000
#: seconds between samples of the process tree's memory in the one-process stages (each sample costs CPU time
#: that the measured stage would otherwise have on this shared 2-core machine)
TREE_INTERVAL = 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", choices=RUNS, default=list(RUNS), help="depth-kind, in this order")
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument("--cifar", type=Path, default=SHARED / "data" / "cifar10_test.npz",
                        help="CIFAR-10 images, resized to --size")
    parser.add_argument("--levels", type=int, default=8, help="graded: the clip-floor-shift levels L")
    parser.add_argument("--window", type=int, default=2, help="binary: the window P")
    parser.add_argument("--n-calib", type=int, default=32)
    parser.add_argument("--n-quant-calib", type=int, default=8,
                        help="of the calibration images, those for error-feedback rounding (0: round to nearest)")
    parser.add_argument("--n-alone", type=int, default=8, help="images of the one-at-a-time reference run (one batch)")
    parser.add_argument("--n-stream", type=int, default=64, help="images of each streamed reference run")
    parser.add_argument("--lanes", type=int, nargs="+", default=[1], help="lanes B of the streamed reference runs")
    parser.add_argument("--without-ann", action="store_true",
                        help="streamed reference runs without the equivalent ANN (simulate(..., ann=False): no ANN "
                             "predictions or SIN; stage names end in ', no ANN')")
    parser.add_argument("--n-lava", type=int, default=2, help="images of the streamed Lava run (0: build estimate only)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the ImageNet estimate is per thread)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="imagenet_size")
    parser.add_argument("--force", action="store_true", help="recompute every stage of the runs named")
    parser.add_argument("--redo", nargs="+", default=[], metavar="PREFIX",
                        help="recompute the stages (of the runs named) whose names start so, e.g. 'reference, streamed'")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/bsnn-imagenet-size"),
                        help="quantized networks, kept between runs of the same settings")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    path = args.out / f"{args.name}.json"
    payload = read_payload(path, runs={})
    if args.report_only:
        write_report(args, payload)
        return
    torch.set_num_threads(args.threads)
    payload.update(machine=machine(), data=str(args.cifar), input=[3, args.size, args.size])
    add_command(payload)
    args.data = None  # resnet34.images: CIFAR-10, resized
    x = images(args, args.n_calib + max(args.n_alone, args.n_stream, args.n_lava))
    calib, test = x[:args.n_calib], x[args.n_calib:]
    for run in args.runs:
        entry = payload["runs"].setdefault(run, {})
        if args.force:
            entry.clear()
        entry.setdefault("commands", [])
        if payload["commands"][-1] not in entry["commands"]:
            entry["commands"].append(payload["commands"][-1])
        entry["done"] = False
        measure(args, run, entry, calib, test, lambda: write_json(path, payload))
        entry["done"] = True
        write_json(path, payload)
        write_report(args, payload)
    write_report(args, payload)


def spiking_network(model, calib, kind: str, args):
    """``model`` converted with frame reset: graded (clip-floor-shift L levels, calibrated thresholds) or binary
    (post-training, window P)."""
    from bsnn_lava import convert, zoo
    from bsnn_lava.training import calibrate_thresholds, clip_floor_shift_model

    if kind == "binary":
        return convert(model, calib, window=args.window, frame_reset=True, mean=zoo.IMAGENET_MEAN,
                       std=zoo.IMAGENET_STD, progress=True)
    cfs = clip_floor_shift_model(model, args.levels, (3, args.size, args.size))
    pixels = torch.as_tensor(calib, dtype=torch.float32).permute(0, 3, 1, 2) / 255.0
    mean, std = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in (zoo.IMAGENET_MEAN, zoo.IMAGENET_STD))
    with torch.no_grad():
        calibrate_thresholds(cfs, (pixels - mean) / std, batch_size=8)
    return convert(cfs, calib, spikes="graded", mean=zoo.IMAGENET_MEAN, std=zoo.IMAGENET_STD, progress=True)


def prepared(args, run: str, entry: dict, calib, save):
    """The run's network quantized for loihi2: from ``--cache`` where an earlier run of the same settings left
    it, else converted, quantized and checked (those stages measured into ``entry``) and left there."""
    import pickle

    from bsnn_lava import zoo
    from bsnn_lava.quantize import quantize
    from bsnn_lava.resources import check_resources

    depth, kind = run.split("-")
    spec = f"L{args.levels}" if kind == "graded" else f"P{args.window}"
    cache = args.cache / f"resnet{depth}-{kind}-{spec}-{args.size}px-c{args.n_calib}-q{args.n_quant_calib}.pkl"
    stages = entry.setdefault("stages", {})
    if cache.exists() and not args.force and "quantize (loihi2)" in stages:
        with open(cache, "rb") as f:
            return pickle.load(f)
    torch.manual_seed(0)
    model = zoo.imagenet_resnet(int(depth)).eval()  # torchvision's initialisation
    entry.update(depth=int(depth), kind=kind, parameters=sum(p.numel() for p in model.parameters()),
                 ann_macs=ann_macs(model, args.size), levels=args.levels if kind == "graded" else None,
                 window=args.window if kind == "binary" else None)
    with measured(stages, "convert", TREE_INTERVAL) as e:
        network = spiking_network(model, calib, kind, args)
        e.update(layers=len(network.layers), neurons=int(sum(np.prod(l.shape) for l in network.layers[1:])),
                 calibration_images=len(calib))
    entry.update(latency_steps=network.latency_steps, frame_steps=network.frame_steps)
    del model
    with measured(stages, "quantize (loihi2)", TREE_INTERVAL) as e:
        fixed = quantize(network, "loihi2", calibration_images=calib[:args.n_quant_calib] if args.n_quant_calib
                         else None, progress=True)
        e["rounding_images"] = args.n_quant_calib
    del network
    with measured(stages, "check loihi2") as e:
        report = check_resources(fixed, "loihi2")
        e.update(fits=report.fits, n_cores=report.n_cores, n_chips=report.n_chips, violations=report.violations)
    args.cache.mkdir(parents=True, exist_ok=True)
    with open(cache, "wb") as f:
        pickle.dump(fixed, f, protocol=pickle.HIGHEST_PROTOCOL)
    save()
    return fixed


def measure(args, run: str, entry: dict, calib, test, save) -> None:
    """Every stage of ``run`` not yet in ``entry`` (all with ``--force``; those named by ``--redo`` again)."""
    from bsnn_lava import simulate
    from bsnn_lava.lava.run import run_lava

    print(f"== {run}", flush=True)
    stages = entry.setdefault("stages", {})
    for name in [n for n in stages if any(n.startswith(prefix) for prefix in args.redo)]:
        del stages[name]
    todo = lambda name: args.force or name not in stages
    fixed = prepared(args, run, entry, calib, save)
    if todo("reference, one at a time") or "alone_predictions" not in entry:
        with measured(stages, "reference, one at a time", TREE_INTERVAL) as e:
            alone = simulate(fixed, test[:args.n_alone], steps=fixed.latency_steps, batch_size=args.n_alone,
                             progress=True)
            e.update(images=args.n_alone, steps=alone.n_steps, lanes=args.n_alone, method=alone.method,
                     spikes_per_image=sum(alone.n_spikes.values()) / args.n_alone,
                     synops_per_image=float(alone.n_synops_per_step.sum()) / args.n_alone)
        e["images_per_s"] = args.n_alone / e["seconds"]
        e["images_per_cpu_s"] = args.n_alone / e["cpu_s"]
        entry["alone_predictions"] = alone.predictions.tolist()
        save()
    alone_predictions = np.asarray(entry["alone_predictions"])
    # Lava before the streamed reference runs: their batches leave this process larger, and Lava's
    # workers need the memory (check_memory counts what is available now)
    if todo("Lava CPU build"):
        entry["lava_build"] = lava_build_stage(stages, fixed)
        save()
    if args.n_lava and "refused" not in entry["lava_build"] and todo("Lava CPU, streamed"):
        with measured(stages, "Lava CPU, streamed") as e:
            lava = run_lava(fixed, test[:args.n_lava], stream=True, batch_size=1, progress=True)
        ref = simulate(fixed, test[:args.n_lava], stream=True, batch_size=1, method="step")
        timing = lava.extras["timing"]
        e.update(images=args.n_lava, steps=lava.n_steps, lanes=1, **timing, spikes=int(lava.n_spikes_per_step.sum()),
                 equal_to_reference=equal_to_reference(lava, ref),
                 same_predictions_as_alone=bool(np.array_equal(lava.predictions, alone_predictions[:args.n_lava])))
        e["steps_per_s"] = 1e3 / timing["ms_per_step"] if timing.get("ms_per_step") else None
        del lava, ref
        save()
    for lanes in args.lanes:
        name = f"reference, streamed, B={lanes}" + (", no ANN" if args.without_ann else "")
        if not todo(name):
            continue
        with measured(stages, name, TREE_INTERVAL) as e:
            streamed = simulate(fixed, test[:args.n_stream], stream=True, batch_size=lanes, progress=True,
                                ann=not args.without_ann)
            n = min(len(alone_predictions), args.n_stream)
            e.update(images=args.n_stream, steps=streamed.n_steps, lanes=lanes, method=streamed.method,
                     same_predictions_as_alone=bool(np.array_equal(streamed.predictions[:n], alone_predictions[:n])),
                     compared_with_alone=n)
        e.update(images_per_s=args.n_stream / e["seconds"], images_per_cpu_s=args.n_stream / e["cpu_s"],
                 steps_per_s=e["steps"] / e["seconds"], steps_per_cpu_s=e["steps"] / e["cpu_s"])
        save()


def write_report(args, payload: dict) -> None:
    runs = payload["runs"]
    lines = ["# ImageNet-size networks, streamed: ResNet-18, -34, -50 at 224x224, graded and binary", "",
             "Commands: " + "; ".join(f"`{c}`" for c in payload.get("commands", [])), "",
             f"Machine: {machine_text(payload['machine'])}" if "machine" in payload else "", "",
             f"Images: {payload.get('data')} resized to {payload.get('input', [0, 224])[1]}x{payload.get('input', [0, 0, 224])[2]}. Weights: random (torchvision's initialisation, "
             "seed 0): the figures are about cost and exactness, none about accuracy. *graded*: ReLUs replaced by "
             "clip-floor-shift activations (L levels), thresholds calibrated, no fine-tuning, graded spikes, frame "
             "reset (a frame is 2 steps). *binary*: post-training conversion of the ReLU model (percentile thresholds, "
             "window P) with frame reset (a frame is 2P steps). Both quantized for Loihi 2. Peak memory during the "
             "stage: this process's resident set (RSS), and the proportional set (PSS: shared pages divided among "
             "their sharers) summed over this process and its children, Lava's workers. Every run used one torch "
             "thread on a machine shared with another job, so wall times are upper bounds.", ""]
    for run, entry in runs.items():
        if "stages" not in entry:
            continue
        s = entry["stages"]
        spec = f"L={entry['levels']}" if entry["kind"] == "graded" else f"P={entry['window']}"
        lines += [f"## ResNet-{entry['depth']}, {entry['kind']} ({spec}): {entry['parameters'] / 1e6:.1f} M parameters, "
                  f"{entry['ann_macs'] / 1e9:.2f} G MACs per image; latency {entry.get('latency_steps')} steps, "
                  f"frame {entry.get('frame_steps')} steps", "",
                  "| stage | wall (s) | peak RSS (GiB) | peak PSS, processes (GiB) | figures |", "|---|---|---|---|---|"]
        for name, e in sorted(s.items(), key=lambda item: stage_order(*item)):
            lines.append(f"| {name} | {e['seconds']:.1f} | {e['peak_rss_gib']:.2f} | {e['peak_tree_pss_gib']:.2f}, "
                         f"{e['tree_processes']} | {stage_text(name, e)} |")
        if not entry.get("done"):
            lines.append("| (unfinished) | | | | the stages after the last row did not run |")
        lines += [""] + [f"Note: {note}" for note in entry.get("notes", [])] + ([""] if entry.get("notes") else [])
    lines += imagenet_estimate(runs)
    write_markdown(args.out / f"{args.name}.md", lines)
    print("\n".join(lines))


def stage_order(name: str, e: dict) -> tuple:
    """Stages in the order they run (a stage measured again later stays in its place)."""
    order = ["convert", "quantize (loihi2)", "check loihi2", "reference, one at a time", "reference, streamed",
             "Lava CPU build", "Lava CPU, streamed"]
    return (next(i for i, prefix in enumerate(order) if name.startswith(prefix)), e.get("lanes", 0),
            name.endswith("no ANN"))


def stage_text(name: str, e: dict) -> str:
    if name == "convert":
        return f"{e['layers']} layers, {e['neurons'] / 1e6:.2f} M neurons, {e['calibration_images']} calibration images"
    if name == "quantize (loihi2)":
        return (f"error-feedback rounding + bias correction on {e['rounding_images']} images" if e["rounding_images"]
                else "rounded to nearest")
    if name == "check loihi2":
        return (f"{e['n_cores']} cores, {e['n_chips']} chip(s); "
                f"{'fits' if e['fits'] else 'does not fit: ' + '; '.join(e['violations'])}")
    if name == "reference, one at a time":
        return (f"{e['images']} images in one batch x {e['steps']} steps ({e['method']} path): "
                f"{e['images_per_s']:.3f} images/s{per_cpu_second(e)}; {e['spikes_per_image'] / 1e6:.2f} M spikes, "
                f"{e['synops_per_image'] / 1e9:.2f} G synaptic ops per image")
    if name.startswith("reference, streamed"):
        return (f"{e['images']} images, {e['lanes']} lane(s), {e['steps']} steps ({e['method']} path): "
                f"**{e['images_per_s']:.3f} images/s**{per_cpu_second(e)}, {e['steps_per_s']:.2f} steps/s; predictions = one at a time "
                f"({e['compared_with_alone']} images): {'yes' if e['same_predictions_as_alone'] else 'NO'}")
    if name == "Lava CPU build":
        return (e.get("refused") or f"fits: {e['needs_gib']:.1f} GiB estimated") + (
            f" ({e['processes']} processes, the largest {e['largest_process_gib']:.2f} GiB; synapses: "
            + ", ".join(f"{n} {form}" for form, n in sorted(e["forms"].items())) + ")")
    if name == "Lava CPU, streamed":
        return (f"{e['images']} images streamed x {e['steps']} steps, {e['n_processes']} Lava processes: compile + "
                f"start {e['compile_start_s']:.0f} s, {e['ms_per_step']:.0f} ms per step "
                f"({e['steps_per_s']:.2f} steps/s); {e['spikes'] / 1e6:.2f} M spikes; spike counts of every layer at "
                f"every step, spikes per neuron, predictions, prediction steps and readout potentials = reference: "
                f"**{'yes' if e['equal_to_reference'] else 'NO'}**; predictions = one at a time: "
                f"{'yes' if e['same_predictions_as_alone'] else 'NO'}; sum of the processes' RSS (shared pages counted "
                f"in each) {e['tree_rss_sum_gib']:.1f} GiB")
    return ""


def per_cpu_second(e: dict) -> str:
    """A reference stage's images per second of its own CPU time (where measured: runs since it was recorded)."""
    return f" ({e['images_per_cpu_s']:.3f} per CPU-second)" if "images_per_cpu_s" in e else ""


def imagenet_estimate(runs: dict) -> list:
    """Hours for the ImageNet validation set streamed, at each streamed run's measured images per second."""
    lines = ["## The ImageNet validation set streamed", "",
             f"{IMAGENET_IMAGES} images at each streamed run's measured rate, by wall time on this shared machine and "
             "by the run's own CPU time (what one dedicated core would do, leaving aside the memory bandwidth the other "
             "jobs took). The rate includes the pipeline filling once, so it is slightly pessimistic; the filling is "
             "cheap (the progress output shows the first round's predictions after about as long as each later "
             "round's: the cost is per image, chiefly the reference ANN that each entering round is compared with, "
             "not per step; the runs marked *no ANN* skip it, `simulate(..., ann=False)` or `bsnn simulate --no-ann`, "
             "and give the same predictions), so a rate measured over dozens of images is the rate over 50,000. 2 cores: two processes, "
             "each streaming half the images with one thread (`torchrun --nproc_per_node 2`, lanes sharded; the "
             "ranks share nothing until one gather at the end), assumed to scale linearly (not measured here); N "
             "cores: N such processes. One torch thread throughout.", "",
             "| network | run | images/s (wall) | images per CPU-second | hours, 1 core (wall rate) | "
             "hours, 2 cores (wall rate) | hours, 2 cores (CPU rate) | hours, N cores (CPU rate) |",
             "|---|---|---|---|---|---|---|---|"]
    for run, entry in runs.items():
        best = None
        for name, e in sorted(entry.get("stages", {}).items(), key=lambda item: stage_order(*item)):
            if not name.startswith("reference, streamed"):
                continue
            wall_hours = IMAGENET_IMAGES / e["images_per_s"] / 3600
            cpu_hours = IMAGENET_IMAGES / e["images_per_cpu_s"] / 3600 if "images_per_cpu_s" in e else None
            lines.append(f"| ResNet-{entry['depth']} {entry['kind']} | {e['images']} images, B={e['lanes']}"
                         f"{', no ANN' if name.endswith('no ANN') else ''} | "
                         f"{e['images_per_s']:.3f} | "
                         + ("-" if cpu_hours is None else f"{e['images_per_cpu_s']:.3f}")
                         + f" | {wall_hours:.1f} | {wall_hours / 2:.1f} | "
                         + ("- | -" if cpu_hours is None else f"{cpu_hours / 2:.1f} | {cpu_hours:.1f} / N") + " |")
            if cpu_hours is not None and (best is None or cpu_hours < best["cpu_hours_1_core"]):
                best = {"lanes": e["lanes"], "ann": not name.endswith("no ANN"), "measured_images": e["images"],
                        "wall_hours_1_core": wall_hours,
                        "cpu_hours_1_core": cpu_hours, "cpu_hours_2_cores": cpu_hours / 2}
        if best:
            entry["imagenet_estimate"] = dict(best, images=IMAGENET_IMAGES)
    return lines + [""]


if __name__ == "__main__":
    main()
