"""Graded spikes on CIFAR-10: one spike per window carries its count, 2 steps per layer.

For the model and every level count L: the clip-floor-shift model fine-tuned for L levels (the
checkpoints of ``finetune.py``, trained here when missing), converted with graded spikes (window 1
step, payloads up to L, frame reset) and with binary spikes (window P = L, frame reset). On the test
images: the fine-tuned ANN's accuracy; the accuracy at every complete frame of the graded network,
float and fixed point (Loihi 2), of the binary one (its first frame) and, with ``--no-reset-runs``, of
the graded float network without frame reset; plain IF neurons on the fine-tuned network (QCFS) on
the same T axis; the steps to the first complete frame. Per inference at the first complete frame
(one-frame networks, ``convert(..., frames=1)``): spikes, synaptic operations next to the ANN's MACs,
Loihi 2 energy. Lava CPU ms per step of the graded and the binary fixed-point networks (one image,
its first frame), and the stock lava-dl Sigma-Delta anchor (:func:`sdnn_anchor`). The post-training
BSNN (P=2, percentile thresholds) is quoted from ``results/resnet20_fixed_point.json`` (all 10,000
test images, the same model).

Writes ``<out>/<name>.{json,md,png}``.

    python bench/graded.py                                  # ResNet20, L = 4, 8, 16
    python bench/graded.py --model ../shared/models/akamaster_resnet56-4bfd9763.th --name graded_resnet56 \\
        --levels 8 --epochs 4 --lr 0.005 --post-training ""
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
from bsnn_lava.lava.run import run_lava
from bsnn_lava.plots import plot_accuracy_vs_steps
from bsnn_lava.quantize import quantize
from bsnn_lava.sim import frame_forward
from bsnn_lava.sim.result import first_crossing

import finetune as finetune_bench
from common import add_resnet20_data_args, command_line, machine, machine_text, write_json, write_markdown

MEAN, STD = zoo.CIFAR_RESNET_MEAN, zoo.CIFAR_RESNET_STD
RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_resnet20_data_args(parser)
    parser.add_argument("--levels", type=int, nargs="+", default=[4, 8, 16], help="payload levels L")
    parser.add_argument("--epochs", type=int, default=6, help="fine-tuning epochs (as finetune.py)")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--n-test", type=int, default=10000, help="test images")
    parser.add_argument("--n-if", type=int, default=2000, help="test images for IF (step path, slow)")
    parser.add_argument("--n-energy", type=int, default=1000, help="test images for the energy profiles")
    parser.add_argument("--frames", type=int, default=4, help="complete frames of the graded networks")
    parser.add_argument("--no-reset-runs", action="store_true", help="also run the graded networks without frame reset")
    parser.add_argument("--one-frame-accuracy", type=int, default=None, metavar="N_CHECK",
                        help="with --frames 1: run the accuracy on the test images with the one-frame networks "
                             "(convert(..., frames=1): every layer computes the image once, not once per 2 steps "
                             "while the pipeline fills; about depth / 2 times less work), after checking on the "
                             "first N_CHECK images that their predictions equal those of the networks that run on, "
                             "at every step up to the first complete frame")
    parser.add_argument("--lava-levels", type=int, nargs="*", default=[8],
                        help="levels timed in Lava (none: no Lava runs, no SDNN anchor)")
    parser.add_argument("--sdnn-steps", type=int, default=30, help="steps of the stock SDNN anchor in Lava")
    parser.add_argument("--post-training", default=str(RESULTS / "resnet20_fixed_point.json"),
                        help="fixed_point.py results of the same model to quote ('' for none)")
    parser.add_argument("--checkpoints", type=Path, default=Path("/tmp/bsnn-finetune"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="graded_resnet20")
    parser.add_argument("--no-binary", action="store_true",
                        help="skip the binary network's accuracy run on the test images (slow for deep models; "
                             "finetune.py has it); its energy profile still runs")
    parser.add_argument("--merge", action="store_true",
                        help="keep the levels (and the SDNN anchor) of an existing <name>.json that this run does "
                             "not recompute")
    parser.add_argument("--lava-only", action="store_true",
                        help="rerun only the Lava CPU timings of --lava-levels into the existing <name>.json")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    if args.one_frame_accuracy is not None and args.frames != 1:
        parser.error("--one-frame-accuracy needs --frames 1 (a one-frame network has one complete frame)")
    args.channelwise = False  # the checkpoint names of finetune.py
    if args.report_only:
        write_report(args, json.loads((args.out / f"{args.name}.json").read_text()))
        return
    if args.lava_only:
        payload = json.loads((args.out / f"{args.name}.json").read_text())
        x_train, y_train = load_npz(args.calib_data)
        x_test, _ = load_npz(args.test_data)
        base = zoo.load_checkpoint(args.model)
        for levels in args.lava_levels:
            model = finetune_bench.trained(args, base, levels, x_train, y_train)
            entry = payload["levels"][str(levels)]
            entry["lava_cpu"] = lava_cpu(model, levels, x_train[:300], x_test[0])
            entry["lava_cpu_rerun"] = {"command": command_line(), "machine": machine()}
        write_json(args.out / f"{args.name}.json", payload)
        write_report(args, payload)
        return
    torch.manual_seed(0)
    args.checkpoints.mkdir(parents=True, exist_ok=True)
    x_train, y_train = load_npz(args.calib_data)
    x_test, y_test = load_npz(args.test_data)
    x_test, y_test = x_test[:args.n_test], y_test[:args.n_test]
    base = zoo.load_checkpoint(args.model)
    payload = {"benchmark": args.name, "command": command_line(), "machine": machine(), "model": str(args.model),
               "n_test": int(len(x_test)), "epochs": args.epochs, "lr": args.lr, "levels": {},
               "ann_original": finetune_bench.ann_accuracy(base, x_test, y_test),
               "post_training": quoted_post_training(args.post_training)}
    previous = args.out / f"{args.name}.json"
    if args.merge and previous.exists():
        old = json.loads(previous.read_text())
        if (old["epochs"], old["lr"], old["n_test"]) != (args.epochs, args.lr, len(x_test)):
            parser.error(f"--merge: {previous} was computed with other epochs, lr or test images")
        payload["levels"] = {levels: {"command": old["command"], **entry} for levels, entry in old["levels"].items()}
        if "sdnn_anchor" in old:
            payload["sdnn_anchor"] = old["sdnn_anchor"]
    print(f"ANN original {100 * payload['ann_original']:.2f}%", flush=True)
    for levels in args.levels:
        payload["levels"][str(levels)] = one_level(args, base, levels, x_train, y_train, x_test, y_test, payload)
        payload["levels"] = dict(sorted(payload["levels"].items(), key=lambda item: int(item[0])))
        write_json(args.out / f"{args.name}.json", payload)
    if args.lava_levels:
        shapes = convert(base, x_train[:50], mean=MEAN, std=STD)  # the layer shapes of the model
        payload["sdnn_anchor"] = sdnn_anchor(shapes, x_test[0], args.sdnn_steps)
        write_json(args.out / f"{args.name}.json", payload)
    write_report(args, payload)


def quoted_post_training(path: str):
    """The post-training BSNN's float accuracy curve from the fixed-point benchmark (``None`` for "")."""
    if not path:
        return None
    data = json.loads(Path(path).read_text())
    run = data["runs"]["float"]
    return {"source": Path(path).name, "n_test": data["n_test"], "window_steps": data["window_steps"],
            "accuracy": run["accuracy"], "ann_accuracy": run["ann_accuracy"], "T_within_1": run["steps_to_ann_minus_1"]}


def accuracy_entry(result, network, predictions_ann, labels, wall_s) -> dict:
    frames = network.complete_frames(result.n_steps)
    at = result.predictions_per_step[[t - 1 for t in frames]]
    return {"accuracy": [float(a) for a in result.accuracy], "frames": list(frames),
            "accuracy_at_frames": [float(result.accuracy[t - 1]) for t in frames],
            "agreement_with_ann_at_frames": [float(a) for a in (at == predictions_ann).mean(axis=1)],
            "wall_s": wall_s}


def lava_ms_per_step(network, image, steps: int) -> dict:
    result = run_lava(network, image[None].transpose(0, 3, 1, 2), steps=steps, progress=False)
    timing = result.extras["timing"]
    return {"steps": steps, "ms_per_step": timing["ms_per_step"], "compile_start_s": timing["compile_start_s"],
            "run_s": timing["run_s"], "n_processes": timing["n_processes"]}


def lava_cpu(model, levels: int, calib, image) -> dict:
    """Lava CPU ms per step of the graded and the binary one-frame fixed-point networks on one image,
    over its first frame."""
    runs = {}
    for kind, spikes in (("graded fixed point, one frame", "graded"),
                         (f"binary P={levels} fixed point, one frame", "binary")):
        network = quantize(convert(model, calib, mean=MEAN, std=STD, spikes=spikes, frames=1), "loihi2",
                           calibration_images=calib)
        runs[kind] = lava_ms_per_step(network, image, network.latency_steps)
    return runs


def he_twin(network) -> "Network":
    """A plain sequential integer network with the shapes of ``network``'s neuron layers' main
    convolutions and its classifier, He-initialised weights scaled by 2**6 (Sigma-Delta messages carry 6
    fractional bits), clipped to 8 bits; zero biases."""
    from bsnn_lava.ir import Conv2d, Dense, GatedIF, Input, Network, Readout, Schedule, Synapse

    rng = np.random.default_rng(0)

    def he(shape):
        fan_in = int(np.prod(shape[1:]))
        return np.clip(np.round(rng.normal(0, 64 * np.sqrt(2 / fan_in), shape)), -127, 127)

    layers = [Input("x", network.input.shape, Schedule("if", 0, 1))]
    for layer in network.spiking_layers:
        if layer.role != "neuron":
            continue
        op = next(s.op for s in layer.synapses if isinstance(s.op, Conv2d) and s.op.weight.shape[2] > 1)
        synapse = Synapse(layers[-1].name, Conv2d(he(op.weight.shape), stride=op.stride, padding=op.padding))
        layers.append(GatedIF(f"conv{len(layers)}", layer.shape, (synapse,), threshold=64, bias=0.0, v_init=0.0,
                              schedule=Schedule("if", len(layers), 1)))
    weight = he((network.readout.shape[0], int(np.prod(layers[-1].shape))))
    layers.append(Readout("readout", network.readout.shape, (Synapse(layers[-1].name, Dense(weight)),), bias=0.0,
                          schedule=Schedule("if", len(layers), 1)))
    return Network(layers, numeric="int")


def sdnn_anchor(network, image, steps: int) -> dict:
    """lava-dl's stock Sigma-Delta neurons (netx ``SDNN``) on ``network``'s plain sequential twin (its
    19 main convolutions and the classifier, no shortcuts) with random weights (He initialisation in
    Sigma-Delta's fixed point: normal, standard deviation ``2**6 sqrt(2 / fan-in)``, so activity
    neither dies out nor grows along the 20 layers) and delta threshold 0 (every change of a ReLU
    activation is sent, the lossless setting), run in Lava for ``steps`` steps on one image, delta-encoded: the pixels are
    sent once, on the first step, as a Sigma-Delta input layer would for a still image.
    An :class:`~bsnn_lava.lava.procs.EventCount` probe on every layer's output counts its messages
    (graded deltas) per step. Returns the steps until the classifier first sends, the events per
    inference, and the Lava time per step."""
    import tempfile

    import h5py

    import netx_export
    from bsnn_lava.lava.compat import ensure_netx_importable
    from bsnn_lava.lava.procs import EventCount

    ensure_netx_importable()
    from lava.lib.dl import netx
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.io.source import RingBuffer as Source

    twin = he_twin(network)
    with tempfile.TemporaryDirectory() as folder:
        path = netx_export.write(twin, Path(folder) / "sdnn.h5", mode="netx")
        with h5py.File(path, "r+") as h5:  # the same layers with Sigma-Delta neurons
            for key in h5["layer"]:
                if "neuron" in h5["layer"][key]:
                    neuron = h5["layer"][key]["neuron"]
                    del neuron["type"], neuron["vThMant"]
                    netx_export.h5io.put_str(neuron, "type", "SDNN")
                    netx_export.h5io.put_int(neuron, "vThMant", 0)
        net = netx.hdf5.Network(net_config=str(path), input_message_bits=8)
        frames = np.zeros((*image.transpose(1, 0, 2).shape, steps), dtype=np.int32)  # (W, H, C, T)
        frames[..., 0] = image.transpose(1, 0, 2)
        source = Source(data=frames)
        source.s_out.connect(net.inp)
        logs = [Path(folder) / f"{i}.npy" for i in range(len(net.layers))]
        for log, block in zip(logs, net.layers):
            np.lib.format.open_memmap(log, mode="w+", dtype=np.int64, shape=(steps,))
            block.out.connect(EventCount(shape=block.out.shape, steps_per_sample=steps,
                                         log_paths={"counts": str(log)}).s_in)
        try:
            started = time.perf_counter()
            net.create_runtime(run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
            compiled = time.perf_counter()
            net.run(condition=RunSteps(num_steps=steps))
            finished = time.perf_counter()
        finally:
            net.stop()
        counts = np.stack([np.load(log) for log in logs])  # (layers, steps)
    sending = np.flatnonzero(counts[-1])
    return {"network": "lava-dl netx SDNN blocks: ResNet20's 19 main convolutions + classifier, no shortcuts, "
                       "He-initialised random weights, delta threshold 0", "n_layers": len(net.layers), "steps": steps,
            "first_classifier_step": int(sending[0]) + 1 if sending.size else None,
            "events_per_inference": int(counts.sum()), "events_per_layer": counts.sum(axis=1).tolist(),
            "events_per_step": counts.sum(axis=0).tolist(), "ms_per_step": 1000 * (finished - compiled) / steps,
            "compile_start_s": compiled - started}


def same_first_frame(pairs: dict, images) -> dict:
    """Check that each one-frame network predicts what its running-on twin predicts at every step up
    to its first complete frame on ``images`` (``pairs``: label -> (running on, one frame, T));
    ``RuntimeError`` otherwise."""
    for label, (running_on, once, steps) in pairs.items():
        a = simulate(running_on, images, steps=steps).predictions_per_step
        b = simulate(once, images, steps=steps).predictions_per_step
        if not np.array_equal(a, b):
            raise RuntimeError(f"{label}: the one-frame network differs from the one that runs on at steps "
                               f"{np.flatnonzero((a != b).any(axis=1)) + 1}")
    return {"n_images": int(len(images)), "equal_predictions_every_step": True,
            "networks": {label: steps for label, (_, _, steps) in pairs.items()}}


def one_level(args, base, levels, x_train, y_train, x_test, y_test, payload) -> dict:
    started = time.perf_counter()
    model = finetune_bench.trained(args, base, levels, x_train, y_train)
    logits = finetune_bench.ann_logits(model, x_test)
    ann = logits.argmax(1).numpy()
    entry = {"command": command_line(), "ann_cfs": float((ann == y_test).mean()), "training_s_per_epoch":
             [h["seconds"] for h in model.finetune_record["history"]], "runs": {}}
    print(f"L={levels}: clip-floor-shift ANN {100 * entry['ann_cfs']:.2f}%", flush=True)
    calib = x_train[:300]
    graded = convert(model, calib, mean=MEAN, std=STD, spikes="graded")
    binary = convert(model, calib, mean=MEAN, std=STD)
    steps = graded.complete_frames(10 ** 6)[args.frames - 1]
    entry["first_frame_T"] = {"graded": graded.latency_steps, "binary": binary.latency_steps}
    entry["depth_layers"] = (binary.readout.schedule.offset_steps + levels) // (levels + 1)
    images = torch.as_tensor(x_test).permute(0, 3, 1, 2)
    frame = torch.cat([frame_forward(graded, images[i:i + 500])[0] for i in range(0, len(images), 500)])
    entry["frame_vs_ann_max_abs"] = float((frame - logits).abs().max())
    fixed = quantize(graded, "loihi2", calibration_images=calib)
    once = {"graded": convert(model, calib, mean=MEAN, std=STD, spikes="graded", frames=1),
            "binary": convert(model, calib, mean=MEAN, std=STD, frames=1)}
    fixed_once = quantize(once["graded"], "loihi2", calibration_images=calib)
    if args.one_frame_accuracy is not None:
        pairs = {"graded float": (graded, once["graded"], steps), "graded fixed point": (fixed, fixed_once, steps)}
        if not args.no_binary:
            pairs[f"binary P={levels} float"] = (binary, once["binary"], entry["first_frame_T"]["binary"])
        entry["one_frame_accuracy_check"] = same_first_frame(pairs, x_test[:args.one_frame_accuracy])
        graded, fixed, binary = once["graded"], fixed_once, once["binary"]
    variants = [("graded float, frame reset", graded, steps), ("graded fixed point (Loihi 2), frame reset", fixed, steps)]
    if not args.no_binary:
        variants.append((f"binary P={levels} float, frame reset", binary, entry["first_frame_T"]["binary"]))
    if args.no_reset_runs:
        variants.append(("graded float, no frame reset", convert(model, calib, mean=MEAN, std=STD, spikes="graded",
                                                                 frame_reset=False), steps))
    for label, network, n_steps in variants:
        t0 = time.perf_counter()
        result = simulate(network, x_test, y_test, steps=n_steps, progress=True, frames="all")  # every frame
        run = accuracy_entry(result, network, ann, y_test, time.perf_counter() - t0)
        for points in (0.5, 1.0):
            run[f"T_within_{points}_of_original"] = first_crossing(result.accuracy, payload["ann_original"] - points / 100)
        if network is fixed:
            run["agreement_with_integer_frame_forward_at_frames"] = finetune_bench.integer_frame_agreement(
                fixed, images, result.predictions_per_step[[t - 1 for t in run["frames"]]])
        entry["runs"][label] = run
        print(f"L={levels} {label}: {[round(100 * a, 2) for a in run['accuracy_at_frames']]} at T={run['frames']}, "
              f"agreement with the ANN {[round(100 * a, 2) for a in run['agreement_with_ann_at_frames']]} "
              f"({run['wall_s']:.0f} s)", flush=True)
    if_net = convert(model, calib, neuron="if", mean=MEAN, std=STD)
    n_if = min(args.n_if, len(x_test))
    t0 = time.perf_counter()
    result = simulate(if_net, x_test[:n_if], y_test[:n_if], steps=steps, progress=True)
    entry["runs"][f"IF on the fine-tuned network (QCFS), {n_if} images"] = {
        "accuracy": [float(a) for a in result.accuracy], "wall_s": time.perf_counter() - t0,
        "T_within_1.0_of_original": first_crossing(result.accuracy, payload["ann_original"] - 0.01)}
    n = min(args.n_energy, len(x_test))
    first = entry["first_frame_T"]
    entry["per_inference_first_frame"] = {
        "graded float, one frame": finetune_bench.energy_at(once["graded"], x_test[:n], y_test[:n], first["graded"]),
        "graded fixed point, one frame": finetune_bench.energy_at(fixed_once, x_test[:n], y_test[:n], first["graded"]),
        f"binary P={levels} float, one frame": finetune_bench.energy_at(once["binary"], x_test[:n], y_test[:n],
                                                                        first["binary"])}
    if levels in args.lava_levels:
        entry["lava_cpu"] = lava_cpu(model, levels, calib, x_test[0])
        print(f"L={levels} Lava: {entry['lava_cpu']}", flush=True)
    entry["wall_s"] = time.perf_counter() - started
    return entry


def _min_percent(agreement) -> str:
    """The lowest agreement over the frames, or the reason there is none."""
    return agreement if isinstance(agreement, str) else f"{100 * min(agreement):.2f}%"


def write_report(args, payload) -> None:
    out, name = args.out, args.name
    lines = [f"# Graded spikes: {Path(payload['model']).name}", "",
             *[f"Command (L={levels}): `{e.get('command', payload['command'])}`  "
               for levels, e in payload["levels"].items()], f"Machine: {machine_text(payload['machine'])}  ",
             f"Fine-tuning: {payload['epochs']} epochs, SGD lr {payload['lr']} (bench/finetune.py checkpoints). "
             f"Test: {payload['n_test']} images. Original ANN: {100 * payload['ann_original']:.2f}%.", ""]
    pt = payload.get("post_training")
    if pt:
        lines += [f"Post-training BSNN (binary, P={pt['window_steps']}, percentile thresholds, float; "
                  f"{pt['source']}, {pt['n_test']} images): within 1 point of its ANN first at T={pt['T_within_1']}.", ""]
    lines += ["| L | ANN clip-floor-shift | first complete frame T, graded / binary (P = L) | graded float at frames (T) | "
              "graded fixed point at frames | same prediction as the ANN (float / fixed vs its integer frame) | "
              "graded without frame reset at frames | binary P = L, first frame |", "|---|---|---|---|---|---|---|---|"]
    curves = {}
    for levels, e in payload["levels"].items():
        runs = e["runs"]
        g, f, n = (runs["graded float, frame reset"], runs["graded fixed point (Loihi 2), frame reset"],
                   runs.get("graded float, no frame reset"))
        b = runs.get(f"binary P={levels} float, frame reset")
        binary_first = f"{100 * b['accuracy_at_frames'][0]:.2f}%" if b else "not run"
        fmt = lambda r: ", ".join(f"{100 * a:.2f} ({t})" for a, t in zip(r["accuracy_at_frames"], r["frames"]))
        lines.append(f"| {levels} | {100 * e['ann_cfs']:.2f}% | {e['first_frame_T']['graded']} / "
                     f"{e['first_frame_T']['binary']} | {fmt(g)} | "
                     f"{', '.join(f'{100 * a:.2f}' for a in f['accuracy_at_frames'])} | "
                     f"{100 * min(g['agreement_with_ann_at_frames']):.2f}% / "
                     f"{_min_percent(f['agreement_with_integer_frame_forward_at_frames'])} | "
                     f"{', '.join(f'{100 * a:.2f}' for a in n['accuracy_at_frames']) if n else 'not run'} | "
                     f"{binary_first} |")
        curves[f"graded L={levels}, frame reset"] = np.array(g["accuracy"])
        if n:
            curves[f"graded L={levels}, no frame reset"] = np.array(n["accuracy"])
        if b:
            curves[f"binary P={levels}, frame reset"] = np.array(b["accuracy"])
        if_label = next(k for k in runs if k.startswith("IF"))
        curves[f"IF (QCFS) L={levels}, {if_label.split(', ')[-1]}"] = np.array(runs[if_label]["accuracy"])
    for levels, e in payload["levels"].items():
        check = e.get("one_frame_accuracy_check")
        if check:
            lines.append(f"L={levels}: the accuracy runs use the one-frame networks (`convert(..., frames=1)`, "
                         f"`--one-frame-accuracy`); on the first {check['n_images']} test images they predict what "
                         "the networks that run on predict at every step up to their first complete frame ("
                         + ", ".join(f"{k}: T={t}" for k, t in check["networks"].items()) + "; checked in the run).")
    lines += ["", "Per inference at the first complete frame (one-frame networks: every layer processes the image "
              "once), Loihi 2 profile (estimates, not published figures: " + ", ".join(
                  next(iter(next(iter(payload["levels"].values()))["per_inference_first_frame"].values()))[
                      "energy_estimates"]) + "):",
              "", "| L | network | T | images | accuracy | spikes | synaptic ops | of them graded | synops / ANN MAC | "
              "energy |", "|---|---|---|---|---|---|---|---|---|---|"]
    for levels, e in payload["levels"].items():
        for kind, p in e["per_inference_first_frame"].items():
            lines.append(f"| {levels} | {kind} | {p['steps']} | {p['n_images']} | {100 * p['accuracy']:.2f}% | "
                         f"{p['spikes']:.0f} | {p['synops'] / 1e6:.2f} M | {p['synops_graded'] / 1e6:.2f} M | "
                         f"{p['synops_per_mac']:.3f} | {p['energy_uj']:.0f} uJ |")
    first = next(iter(payload["levels"].values()))["per_inference_first_frame"]
    p0 = next(iter(first.values()))
    lines += ["", f"ANN: {p0['ann_macs'] / 1e6:.1f} M MACs; INT8 at 45 nm {p0['ann_int8_uj']:.1f} uJ per inference.", ""]
    lava = {levels: e["lava_cpu"] for levels, e in payload["levels"].items() if "lava_cpu" in e}
    if lava:
        lines += ["Lava CPU (`run_lava`, `Loihi2SimCfg`, fixed_pt, one image, its first frame):", "",
                  "| L | network | Lava processes | steps | ms per step | run (s) | compile + start (s) |",
                  "|---|---|---|---|---|---|---|"]
        for levels, runs in lava.items():
            for kind, r in runs.items():
                lines.append(f"| {levels} | {kind} | {r['n_processes']} | {r['steps']} | {r['ms_per_step']:.1f} | "
                             f"{r['run_s']:.1f} | {r['compile_start_s']:.1f} |")
        lines.append("")
        for levels, e in payload["levels"].items():
            if "lava_cpu_rerun" in e:
                rerun = e["lava_cpu_rerun"]
                lines += [f"L={levels}: Lava timings rerun with `{rerun['command']}` "
                          f"({rerun['machine']['date_utc']} UTC).", ""]
    anchor = payload.get("sdnn_anchor")
    if anchor:
        lines += [f"Stock anchor, in Lava on one image ({anchor['network']}; the image sent once, as a delta "
                  f"encoder sends a still image): its classifier first sends on step {anchor['first_classifier_step']} "
                  f"(one step per layer, {anchor['n_layers']} layers); {anchor['events_per_inference']} events "
                  f"(graded messages) per inference, all in the first pass; {anchor['ms_per_step']:.0f} ms per step "
                  "in Lava (dense stock models). Events per layer: "
                  f"{anchor['events_per_layer']}. Its weights are random, so its event count shows the scale of "
                  "one graded message per active neuron per pass, not this model's activity.", ""]
    write_markdown(out / f"{name}.md", lines)
    if pt:
        curves[f"post-training BSNN P={pt['window_steps']} ({pt['n_test']} images)"] = np.array(pt["accuracy"])
    horizon = max(len(c) for k, c in curves.items() if k.startswith("graded"))
    plot_accuracy_vs_steps({k: c[:max(horizon, 300)] for k, c in curves.items()}, payload["ann_original"],
                           out / f"{name}.png", title=f"{Path(payload['model']).stem}: graded vs binary spikes")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
