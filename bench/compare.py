"""Whole-test-set comparison: this project's conversions against SpikingJelly 2.0.0's ``ann2snn``.

For one CIFAR ResNet checkpoint, on the same test images and the same T axis (1..``--steps``):

- ``bsnn_layer`` / ``bsnn_channel``: post-training BSNN (P=2, V(0)=theta/2, 99.9th-percentile
  thresholds per layer / per channel), float, the reference simulator;
- ``graded8_layer`` ... ``graded16_channel``: the same with graded spikes (Loihi 2), L = 8 or 16
  levels, layer- or channel-wise thresholds, for ``--graded-steps`` steps;
- ``if``: plain IF neurons (reset by subtraction, layer-wise 99.9th-percentile thresholds);
- ``bsnn_finetuned``: the window-aware fine-tuned BSNN (bench/finetune.py checkpoints, frame reset);
- ``spikingjelly``: SpikingJelly 2.0.0 ``ann2snn.Converter`` with its ``RateCodingRecipe`` in
  99.9% percentile mode and its other defaults (soft-reset IF neurons, threshold 1 with voltage
  scalers), calibrated on the same training images, the normalised image as constant input on
  every step, the prediction after t steps the argmax of the summed outputs (SpikingJelly's own
  evaluation). Its synaptic operations are counted by hooks on its Conv2d/Linear modules: nonzero
  inputs times their nonzero weights that reach an output (its own graph: BN fused, pooling
  unfused).

Each run is cached (``--cache``: accuracy after every step, per-image correctness at the fixed T
values, synaptic operations per inference there), so a comparison that takes hours on a small
machine can be done a run at a time (``--runs``), by several sessions or machines, and reported
when complete; within a run, every ``--part-size`` images are kept as they finish
(``<cache>/parts/``, also kept in the repository until the run completes and merges them), so an
interrupted run resumes where it stopped, on any checkout; a second process with ``--reverse-parts``
works through the same run from its last part. Speed: each simulator's
image-steps per second on the same ``--speed-images`` x ``--speed-steps`` in this run (BSNN: window
path; IF: step path; SpikingJelly: its step-by-step forward without the counting hooks).

Writes ``<out>/<name>.{json,md,png}``; ``--results-doc`` regenerates ``docs/results.md`` from every
``compare_*.json`` in ``<out>``.

    python bench/compare.py --runs bsnn_layer bsnn_channel           # a part; the cache keeps it
    python bench/compare.py --model ../shared/models/akamaster_resnet56-4bfd9763.th --name compare_resnet56 \\
        --finetuned-window 8 --finetuned-epochs 4 --finetuned-lr 0.005
    python bench/compare.py --report-only --results-doc

SpikingJelly is an optional extra, never a dependency of the toolkit: ``make peer``.
"""
from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np
import torch

from common import add_resnet20_data_args, command_line, machine, machine_text, write_json, write_markdown

RESULTS = Path(__file__).parent / "results"
#: graded post-training runs: name -> (levels L, channel-wise thresholds)
GRADED = {"graded8_layer": (8, False), "graded8_channel": (8, True), "graded16_layer": (16, False),
          "graded16_channel": (16, True)}
RUNS = ("bsnn_layer", "bsnn_channel", *GRADED, "if", "bsnn_finetuned", "spikingjelly")
LABELS = {"bsnn_layer": "BSNN post-training, layer-wise", "bsnn_channel": "BSNN post-training, channel-wise",
          **{run: f"BSNN graded L={levels} post-training, {'channel' if channel else 'layer'}-wise"
             for run, (levels, channel) in GRADED.items()},
          "if": "IF (reset by subtraction)", "bsnn_finetuned": "BSNN fine-tuned, frame reset",
          "spikingjelly": "SpikingJelly 2.0.0 ann2snn (99.9%)"}
FIXED_T = (32, 64, 96, 128, 192, 256, 384, 512)
PEER_VERSION = "2.0.0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_resnet20_data_args(parser)
    parser.add_argument("--name", default="compare_resnet20")
    parser.add_argument("--runs", nargs="+", choices=RUNS, default=list(RUNS), help="runs to compute (cached)")
    parser.add_argument("--n-test", type=int, default=10000)
    parser.add_argument("--n-calib", type=int, default=300, help="calibration images (training set), every method")
    parser.add_argument("--steps", type=int, default=512)
    parser.add_argument("--graded-steps", type=int, default=256,
                        help="steps of the graded runs (they reach the ANN sooner; a run's table cells beyond "
                             "its steps stay empty)")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--part-size", type=int, default=500,
                        help="test images per resumable part: each finished part is kept in <cache>/parts/")
    parser.add_argument("--reverse-parts", action="store_true",
                        help="compute the parts last first: a second process on the same cache works from the "
                             "other end (parts either one finished are skipped; the first to find all done merges)")
    parser.add_argument("--finetuned-window", type=int, default=4)
    parser.add_argument("--finetuned-epochs", type=int, default=6)
    parser.add_argument("--finetuned-lr", type=float, default=0.01)
    parser.add_argument("--checkpoints", type=Path, default=Path("/tmp/bsnn-finetune"))
    parser.add_argument("--cache", type=Path, default=Path(__file__).parent / "cache",
                        help="one compressed .npz per finished run (kept in the repository: runs take hours)")
    parser.add_argument("--speed-images", type=int, default=200)
    parser.add_argument("--speed-steps", type=int, default=64)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--report-only", action="store_true", help="report the cached runs, compute nothing")
    parser.add_argument("--results-doc", action="store_true", help="also regenerate docs/results.md")
    args = parser.parse_args()
    args.fixed_t = [t for t in FIXED_T if t <= args.steps]

    from bsnn_lava import zoo
    from bsnn_lava.datasets import load_npz

    x_test, y_test = load_npz(args.test_data)
    x_test, y_test = x_test[:args.n_test], y_test[:args.n_test]
    x_calib = load_npz(args.calib_data)[0][:args.n_calib]
    base = zoo.load_checkpoint(args.model)
    args.cache.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        for run in args.runs:
            if cache_path(args, run).exists():
                print(f"{run}: cached in {cache_path(args, run)}", flush=True)
                continue
            entry, parts = compute_run(args, run, base, x_calib, x_test, y_test)
            if entry is None:
                print(f"{run}: finished by another process, in {cache_path(args, run)}", flush=True)
                continue
            entry["command"], entry["machine"] = command_line(), machine()
            save_run(cache_path(args, run), entry)
            for part in parts:
                part.unlink()
            print(f"{run}: {100 * entry['accuracy'][-1]:.2f}% after {run_steps(args, run)} steps ({entry['wall_s']:.0f} s)",
                  flush=True)
    runs = {run: load_run(found) for run in RUNS if (found := cached(args, run)) is not None}
    previous = args.out / f"{args.name}.json"
    speed = json.loads(previous.read_text()).get("speed") if previous.exists() else None
    if not args.report_only and args.speed_images:
        speed = measure_speed(args, base, x_calib, x_test, y_test)
    payload = report_payload(args, runs, y_test, speed)
    write_json(previous, payload)
    write_report(args, payload)
    if args.results_doc:
        write_results_doc(args.out)


def run_steps(args, run: str) -> int:
    """Steps simulated in ``run``."""
    return min(args.graded_steps, args.steps) if run in GRADED else args.steps


def cache_path(args, run: str) -> Path:
    return args.cache / f"{Path(args.model).stem}_{run}_n{args.n_test}_T{run_steps(args, run)}_c{args.n_calib}.npz"


def cached(args, run: str):
    """The run's cache file: the one for this invocation's steps, else (a report) the one with the
    most steps among those of the same model, images and calibration; ``None`` if there is none."""
    if cache_path(args, run).exists():
        return cache_path(args, run)
    pattern = f"{Path(args.model).stem}_{run}_n{args.n_test}_T*_c{args.n_calib}.npz"
    found = sorted(args.cache.glob(pattern), key=lambda path: int(path.stem.split("_T")[-1].split("_")[0]))
    return found[-1] if found else None


def part_path(args, run: str, images: range) -> Path:
    return args.cache / "parts" / f"{cache_path(args, run).stem}_images{images.start}-{images.stop}.npz"


def save_run(path: Path, entry: dict) -> None:
    arrays = {k: np.asarray(v) for k, v in entry.items() if isinstance(v, np.ndarray)}
    meta = {k: v for k, v in entry.items() if not isinstance(v, np.ndarray)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, meta=np.array(json.dumps(meta)), **arrays)
    tmp.replace(path)


def load_run(path: Path) -> dict:
    with np.load(path) as data:
        entry = json.loads(str(data["meta"]))
        entry.update({k: data[k] for k in data.files if k != "meta"})
    return entry


# --- the runs --------------------------------------------------------------------------------------

def networks(args, run, base, x_calib):
    from bsnn_lava import convert, zoo

    norm = dict(mean=zoo.CIFAR_RESNET_MEAN, std=zoo.CIFAR_RESNET_STD)
    if run == "bsnn_layer":
        return convert(base, x_calib, window=2, **norm)
    if run == "bsnn_channel":
        return convert(base, x_calib, window=2, channelwise=True, **norm)
    if run in GRADED:
        levels, channelwise = GRADED[run]
        return convert(base, x_calib, spikes="graded", levels=levels, channelwise=channelwise, **norm)
    if run == "if":
        return convert(base, x_calib, neuron="if", **norm)
    if run == "bsnn_finetuned":
        import finetune as finetune_bench
        from bsnn_lava.datasets import load_npz

        x_train, y_train = load_npz(args.calib_data)
        ft_args = argparse.Namespace(model=args.model, epochs=args.finetuned_epochs, lr=args.finetuned_lr,
                                     checkpoints=args.checkpoints, channelwise=False)
        model = finetune_bench.trained(ft_args, base, args.finetuned_window, x_train, y_train)
        return convert(model, x_calib, **norm)
    raise ValueError(run)


def compute_run(args, run, base, x_calib, x_test, y_test):
    """``(entry, part files)``: the run on every test image, ``--part-size`` images at a time. Each
    finished part is saved under ``<cache>/parts/``, so a run interrupted (a session's end, a
    killed job) resumes at its first unfinished part; the entry equals a one-part run's.
    ``(None, [])`` when another process merged the run meanwhile."""
    simulate_part = peer_simulator(args, base, x_calib) if run == "spikingjelly" else \
        our_simulator(args, networks(args, run, base, x_calib), run_steps(args, run))
    all_images = {start: range(start, min(start + args.part_size, len(x_test)))
                  for start in range(0, len(x_test), args.part_size)}
    paths = {start: part_path(args, run, images) for start, images in all_images.items()}
    parts = {}
    for start in reversed(all_images) if args.reverse_parts else all_images:
        if cache_path(args, run).exists():  # another process finished and merged the run
            for path in paths.values():
                path.unlink(missing_ok=True)
            return None, []
        images, path = all_images[start], paths[start]
        if path.exists():
            part = load_run(path)
        else:
            print(f"{run}: images {images.start}..{images.stop - 1} of {len(x_test)}", flush=True)
            started = time.perf_counter()
            part = simulate_part(x_test[images.start:images.stop], y_test[images.start:images.stop])
            part["wall_s"] = time.perf_counter() - started
            save_run(path, part)
        parts[start] = part
    parts = [parts[start] for start in all_images]
    correct = np.concatenate([p["correct"] for p in parts], axis=1)  # (steps, images)
    synops = np.cumsum(sum(np.asarray(p["synops"]) for p in parts)) / len(x_test)
    steps = [t - 1 for t in args.fixed_t if t <= run_steps(args, run)]
    entry = {"accuracy": correct.mean(axis=1), "ann_accuracy": sum(p["ann_correct"] for p in parts) / len(x_test),
             "correct_at": correct[steps], "synops_at": synops[steps], "method": parts[0]["method"],
             "wall_s": sum(p["wall_s"] for p in parts)}
    if run == "spikingjelly":
        entry["peer_version"] = peer_version()
    return entry, list(paths.values())


def our_simulator(args, network, steps: int):
    """``part(x, y)``: this project's reference simulator on some images, correctness after every
    step ``(steps, images)``, synaptic operations summed over them per step, correct ANN predictions."""
    from bsnn_lava import simulate

    def part(x, y) -> dict:
        result = simulate(network, x, y, steps=steps, batch_size=args.batch_size, progress=True,
                          frames="all")  # the fine-tuned network's every frame, as in its reports
        return {"correct": result.predictions_per_step == y, "synops": result.n_synops_per_step.sum(axis=1),
                "ann_correct": int((result.ann_predictions == y).sum()), "method": result.method}

    return part


def peer_model(base, x_calib, batch_size: int):
    """The checkpoint converted by SpikingJelly's ann2snn (rate coding, 99.9% percentile mode)."""
    import copy

    from spikingjelly.activation_based.ann2snn import Converter, RateCodingRecipe

    calib = normalised(x_calib)
    loader = [calib[i:i + batch_size] for i in range(0, len(calib), batch_size)]
    model = option_a_as_convolutions(copy.deepcopy(base))
    return Converter(RateCodingRecipe(dataloader=loader, mode="99.9%")).convert(as_modules(model))


def option_a_as_convolutions(model: torch.nn.Module) -> torch.nn.Module:
    """Every option-A shortcut (``F.pad`` of the strided input, which SpikingJelly's rate coding
    refuses) replaced by the same function as a bias-free 1x1 stride-2 convolution: weight 1 from
    input channel c to output channel c + pad, 0 elsewhere."""
    from bsnn_lava.zoo import OptionAShortcut

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, OptionAShortcut):
                conv = parent.conv1  # the block's first convolution: its input and output channels
                shortcut = torch.nn.Conv2d(conv.in_channels, conv.in_channels + 2 * child.pad, 1, 2, bias=False)
                shortcut.weight.data.zero_()
                for c in range(conv.in_channels):
                    shortcut.weight.data[c + child.pad, c] = 1.0
                setattr(parent, name, shortcut)
    return model


def as_modules(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` traced with torch.fx, its functional ReLUs, adaptive average pooling and flatten
    made modules (``nn.ReLU``, ``nn.AdaptiveAvgPool2d``, ``nn.Flatten``): SpikingJelly's rate-coding
    recipe replaces ``nn.ReLU`` modules only and refuses those function calls."""
    import torch.nn.functional as F
    from torch import fx

    graph = fx.symbolic_trace(model.eval())
    for k, node in enumerate(list(graph.graph.nodes)):
        module = None
        if node.op == "call_function" and node.target in (F.relu, torch.relu):
            module = torch.nn.ReLU()
        elif node.op == "call_function" and node.target is F.adaptive_avg_pool2d:
            module = torch.nn.AdaptiveAvgPool2d(node.args[1] if len(node.args) > 1 else node.kwargs["output_size"])
        elif (node.op == "call_method" and node.target == "flatten") or (
                node.op == "call_function" and node.target is torch.flatten):
            module = torch.nn.Flatten(node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0))
        if module is None:
            continue
        name = f"{type(module).__name__.lower()}_{k}"
        graph.add_submodule(name, module)
        with graph.graph.inserting_after(node):
            replacement = graph.graph.call_module(name, args=(node.args[0],))
        node.replace_all_uses_with(replacement)
        graph.graph.erase_node(node)
    graph.recompile()
    return graph


def normalised(images: np.ndarray) -> torch.Tensor:
    from bsnn_lava import zoo

    x = torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(zoo.CIFAR_RESNET_MEAN).view(1, 3, 1, 1)
    return (x - mean) / torch.tensor(zoo.CIFAR_RESNET_STD).view(1, 3, 1, 1)


class SynopCounter:
    """Forward hooks on every Conv2d/Linear: nonzero inputs x nonzero weights reaching an output.

    Counted per image as ``sum_i active_i * fan_out_i``, ``fan_out_i`` the number of nonzero weights
    through which input i reaches an output (the input gradient of ``layer(ones, weight != 0).sum()``,
    computed once per layer and input shape): a matrix-vector product instead of a second
    convolution; exact, in float32 while an image's total stays below 2**24, else float64."""

    def __init__(self, model):
        self.total = 0.0
        self.fan_out = {}
        self.handles = [m.register_forward_hook(self.hook) for m in model.modules()
                        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]

    def hook(self, module, inputs, output):
        x = inputs[0]
        key = (id(module), tuple(x.shape[1:]))
        if key not in self.fan_out:
            fan_out = self.input_fan_out(module, x.shape[1:]).flatten()
            self.fan_out[key] = fan_out.float() if float(fan_out.sum()) < 2 ** 24 else fan_out
        fan_out = self.fan_out[key]
        per_image = torch.mv(x.ne(0).reshape(len(x), -1).to(fan_out.dtype), fan_out)
        self.total += float(per_image.sum(dtype=torch.float64))

    @staticmethod
    def input_fan_out(module, shape) -> torch.Tensor:
        with torch.enable_grad():
            ones = torch.ones(1, *shape, dtype=torch.float64, requires_grad=True)
            mask = (module.weight != 0).double()
            if isinstance(module, torch.nn.Conv2d):
                out = torch.nn.functional.conv2d(ones, mask, None, module.stride, module.padding, module.dilation,
                                                 module.groups)
            else:
                out = ones @ mask.T
            out.sum().backward()
        return ones.grad[0]

    def remove(self):
        for handle in self.handles:
            handle.remove()


def peer_simulator(args, base, x_calib):
    """``part(x, y)`` as :func:`our_simulator`'s, for SpikingJelly's converted model run step by step;
    its synaptic operations counted by :class:`SynopCounter`."""
    from spikingjelly.activation_based import functional
    from tqdm.auto import tqdm

    model = peer_model(base, x_calib, args.batch_size)
    counter = SynopCounter(model)

    @torch.no_grad()
    def part(x_part, y_part) -> dict:
        correct = np.zeros((args.steps, len(x_part)), dtype=bool)
        synops = np.zeros(args.steps)
        ann_correct = 0
        with tqdm(total=len(x_part), desc="SpikingJelly", unit="images") as bar:
            for start in range(0, len(x_part), args.batch_size):
                x = normalised(x_part[start:start + args.batch_size])
                y = torch.as_tensor(y_part[start:start + args.batch_size])
                ann_correct += int((base(x).argmax(1) == y).sum())
                functional.reset_net(model)
                summed = 0
                for t in range(args.steps):
                    before = counter.total
                    summed = summed + model(x)
                    synops[t] += counter.total - before
                    correct[t, start:start + len(x)] = (summed.argmax(1) == y).numpy()
                bar.update(len(x))
        return {"correct": correct, "synops": synops, "ann_correct": ann_correct,
                "method": f"spikingjelly {PEER_VERSION} step by step"}

    return part


def peer_version() -> str:
    from importlib.metadata import version

    return version("spikingjelly")


def measure_speed(args, base, x_calib, x_test, y_test) -> dict:
    """Image-steps per second of each simulator on the same images and steps, one after the other."""
    from bsnn_lava import simulate

    from spikingjelly.activation_based import functional

    x, y, steps = x_test[:args.speed_images], y_test[:args.speed_images], args.speed_steps
    speed = {"images": len(x), "steps": steps}
    for run in ("bsnn_layer", "if"):
        network = networks(args, run, base, x_calib)
        simulate(network, x[:2], y[:2], steps=4)  # warm-up
        started = time.perf_counter()
        result = simulate(network, x, y, steps=steps, batch_size=args.batch_size)
        speed[run] = {"image_steps_per_s": len(x) * steps / (time.perf_counter() - started), "method": result.method}
    model = peer_model(base, x_calib, args.batch_size)
    with torch.no_grad():
        model(normalised(x[:2]))
        started = time.perf_counter()
        for start in range(0, len(x), args.batch_size):
            batch = normalised(x[start:start + args.batch_size])
            functional.reset_net(model)
            for _ in range(steps):
                model(batch)
    speed["spikingjelly"] = {"image_steps_per_s": len(x) * steps / (time.perf_counter() - started),
                             "method": "step by step (no counting hooks)"}
    print(f"speed: {speed}", flush=True)
    return speed


# --- report ----------------------------------------------------------------------------------------

def report_payload(args, runs: dict, y_test, speed) -> dict:
    from bsnn_lava.sim.compare import PairedComparison
    from bsnn_lava.sim.result import first_crossing, sustained_crossing

    payload = {"benchmark": args.name, "command": command_line(), "machine": machine(), "model": str(args.model),
               "n_test": len(y_test), "steps": args.steps, "fixed_t": args.fixed_t, "runs": {}, "speed": speed,
               "missing_runs": [r for r in RUNS if r not in runs]}
    # every crossing against the original ANN (the fine-tuned run's own ANN is another network;
    # only when it is the one run cached does its ANN stand in)
    original = [e["ann_accuracy"] for r, e in runs.items() if r != "bsnn_finetuned"] or [
        e["ann_accuracy"] for e in runs.values()]
    payload["original_ann_accuracy"] = ann = original[0] if original else None
    for run, entry in runs.items():
        accuracy = np.asarray(entry["accuracy"])
        row = {"label": LABELS[run], "method": entry["method"], "ann_accuracy": entry["ann_accuracy"],
               "accuracy": accuracy.tolist(),
               "accuracy_at": dict(zip(map(str, args.fixed_t), np.asarray(entry["correct_at"]).mean(axis=1).tolist())),
               "synops_per_inference_at": dict(zip(map(str, args.fixed_t), np.asarray(entry["synops_at"]).tolist())),
               "wall_s": entry["wall_s"], "computed": entry["machine"]["date_utc"], "command": entry["command"]}
        for points in (1.0, 0.5):
            row[f"T_within_{points}_first"] = first_crossing(accuracy, ann - points / 100)
            row[f"T_within_{points}_sustained"] = sustained_crossing(accuracy, ann - points / 100)
        if "peer_version" in entry:
            row["peer_version"] = entry["peer_version"]
        payload["runs"][run] = row
    if "spikingjelly" in runs:
        peer = np.asarray(runs["spikingjelly"]["correct_at"])
        for run, entry in runs.items():
            if run == "spikingjelly":
                continue
            ours = np.asarray(entry["correct_at"])
            theirs = peer[:len(ours)]  # a shorter run: its fixed T values only
            paired = PairedComparison(len(y_test), ours.mean(axis=1), theirs.mean(axis=1), (ours & ~theirs).sum(axis=1),
                                      (~ours & theirs).sum(axis=1), entry["ann_accuracy"])
            payload["runs"][run]["minus_peer"] = {"difference": paired.difference.tolist(),
                                                  "standard_error": paired.standard_error.tolist()}
    return payload


def write_report(args, payload) -> None:
    from bsnn_lava.plots import plot_accuracy_vs_steps

    lines = report_lines(payload)
    write_markdown(args.out / f"{payload['benchmark']}.md", lines)
    if payload["runs"]:
        ann = payload["original_ann_accuracy"]
        plot_accuracy_vs_steps({r["label"]: np.array(r["accuracy"]) for r in payload["runs"].values()}, ann,
                               args.out / f"{payload['benchmark']}.png",
                               title=f"{Path(payload['model']).stem}: {payload['n_test']} test images")
    print("\n".join(lines))


def report_lines(payload) -> list:
    ts = payload["fixed_t"]
    lines = [f"# Conversion comparison: {Path(payload['model']).name}, {payload['n_test']} test images", "",
             f"Command: `{payload['command']}`  ", f"Machine: {machine_text(payload['machine'])}  "]
    if payload["missing_runs"]:
        lines.append(f"Not computed yet: {', '.join(LABELS[r] for r in payload['missing_runs'])}.  ")
    runs = payload["runs"]
    if not runs:
        return lines
    lines += ["", f"Original ANN: {100 * payload['original_ann_accuracy']:.2f}%. Accuracy (%) after T steps; "
                  "T within 1 and 0.5 points of the original ANN, first and sustained (from then on to the run's last "
                  "step; None: not by then; '-': after the run's last step).",
              "", "| run | " + " | ".join(f"T={t}" for t in ts) + " | T within 1 (first / sustained) | T within 0.5 |",
              "|---|" + "---|" * (len(ts) + 2)]
    for r in runs.values():
        lines.append(f"| {r['label']} | "
                     + " | ".join(_cell(r["accuracy_at"], t, lambda a: f"{100 * a:.2f}") for t in ts)
                     + f" | {r['T_within_1.0_first']} / {r['T_within_1.0_sustained']} | "
                     f"{r['T_within_0.5_first']} / {r['T_within_0.5_sustained']} |")
    paired = {k: r for k, r in runs.items() if "minus_peer" in r}
    if paired:
        lines += ["", "Difference to SpikingJelly, same images (points, paired standard error):", "",
                  "| run | " + " | ".join(f"T={t}" for t in ts) + " |", "|---|" + "---|" * len(ts)]
        for r in paired.values():
            d = r["minus_peer"]
            cells = [f"{100 * a:+.2f} +- {100 * s:.2f}" for a, s in zip(d["difference"], d["standard_error"])]
            lines.append(f"| {r['label']} | " + " | ".join(cells + ["-"] * (len(ts) - len(cells))) + " |")
    lines += ["", "Synaptic operations per inference (millions):", "",
              "| run | " + " | ".join(f"T={t}" for t in ts) + " |", "|---|" + "---|" * len(ts)]
    for r in runs.values():
        lines.append(f"| {r['label']} | " + " | ".join(_cell(r["synops_per_inference_at"], t, lambda n: f"{n / 1e6:.1f}")
                                                       for t in ts) + " |")
    speed = payload.get("speed")
    if speed:
        lines += ["", f"Simulator speed, measured one after the other in one run ({speed['images']} images x "
                      f"{speed['steps']} steps):", "", "| simulator | path | image-steps/s |", "|---|---|---|"]
        for run in ("bsnn_layer", "if", "spikingjelly"):
            lines.append(f"| {LABELS[run]} | {speed[run]['method']} | {speed[run]['image_steps_per_s']:.0f} |")
        lines += ["", f"In {speed['steps']} steps a deep network's later layers may not have started yet (the window "
                      "path skips silent layers): the whole runs' throughput below covers every step."]
    lines += ["", "How each run was computed (in `bench/`; the wall time summed over its parts, including any time "
                  "another job shared the machine):", "",
              "| run | command | finished (UTC) | wall time (min) | image-steps/s over the run |",
              "|---|---|---|---|---|"]
    lines += [f"| {r['label']} | `{r['command']}` | {r['computed']} | {r['wall_s'] / 60:.0f} | "
              f"{payload['n_test'] * len(r['accuracy']) / r['wall_s']:.0f} |" for r in runs.values()]
    return lines


def _cell(values: dict, t: int, text) -> str:
    """A table cell: ``text(values[T])``, or '-' where the run stopped before T."""
    return text(values[str(t)]) if str(t) in values else "-"


def write_results_doc(out: Path) -> None:
    """docs/results.md from every compare_*.json in ``out``."""
    parts = ["# Results: conversions compared on the whole test set", "",
             "Generated by `python bench/compare.py --report-only --results-doc` from `bench/results/compare_*.json` "
             "(and the sections of `bench/results/maxpool.md`, `finetune_recipe.md` and `energy_tradeoff.md`); "
             "do not edit.", "",
             "Every run uses the same CIFAR-10 test images (`../shared/data`, JPEG-decoded), the same 300 training "
             "images for calibration and the same T axis; the prediction after T steps is the class of the largest "
             "readout potential (SpikingJelly: of the summed outputs). The runs:", "",
             "- **BSNN post-training**: bistable neurons, window P=2 steps, V(0)=theta/2, thresholds at the 99.9th "
             "percentile of the ANN's activations per layer or per channel; synchronous relays on the shortcuts.",
             "- **BSNN graded post-training** (Loihi 2's graded spikes): the same conversion with `spikes=\"graded\"`, "
             "levels L = 8 or 16: every layer integrates for one step and sends its count (up to L) as one spike's "
             "payload, so a frame is 2 steps; thresholds per layer or per channel. Run for fewer steps (`--graded-steps`): "
             "'-' marks the T it did not reach.",
             "- **IF**: integrate-and-fire neurons with reset by subtraction, layer-wise 99.9th-percentile thresholds.",
             "- **BSNN fine-tuned**: the ANN fine-tuned with clip-floor-shift activations of its window "
             "(`bench/finetune.py`), converted exactly; frame reset makes every frame of 2P steps compute the same "
             "function, so its accuracy is flat from the first complete frame.",
             "- **SpikingJelly 2.0.0** `ann2snn.Converter` (an optional extra, `make peer`): rate coding, 99.9% "
             "percentile mode, its other defaults.", "",
             "Paired differences use the same images: standard errors from the discordant pairs "
             "(`bsnn_lava.sim.compare`). Accuracy-against-T plots: `bench/results/compare_*.png`.", ""]
    for path in sorted(out.glob("compare_*.json")):
        lines = report_lines(json.loads(path.read_text()))
        parts += ["#" + lines[0], *lines[1:], ""]  # each network a section of the document
    for name in ("maxpool.md", "finetune_recipe.md", "energy_tradeoff.md"):  # the other whole-test-set reports
        if (out / name).exists():
            lines = [re.sub(r"\]\(([\w.-]+\.png)\)", r"](../bench/results/\1)", line)  # pictures from docs/
                     for line in (out / name).read_text().splitlines()]
            parts += ["#" + lines[0], *[("#" + line if line.startswith("## ") else line) for line in lines[1:]], ""]
    doc = Path(__file__).resolve().parents[1] / "docs" / "results.md"
    write_markdown(doc, parts)


if __name__ == "__main__":
    main()
