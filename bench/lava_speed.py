"""Lava CPU throughput: ResNet20 BSNNs on our event-driven processes, one image or a batch of B
images per Lava step, vs stock lava-dl netx, one run.

Ours: the pretrained ResNet20 converted to a bistable network (P = 2, V(0) = theta/2, post-training),
and the same model fine-tuned for 4 levels (``finetune.py``'s checkpoint, trained when missing; one
frame, frame reset, its T = 100 steps), both quantized for Loihi 2 and run by
:func:`bsnn_lava.lava.run.run_lava` (``Loihi2SimCfg``, ``fixed_pt``) with ``batch_size`` B in
{1, 8, 32}, ``--samples`` samples (batches) each; every run's predictions and spike counts at every
step are checked against the reference simulator. Stock: a plain sequential integer IF network with
the same 19 convolutions and the dense readout (no shortcuts, CUBA neurons), written with
``netx_export.write(..., mode="netx")`` and run by lava-dl's ``netx.hdf5.Network`` under the same run
config, one image; it runs twice: with Lava's default channels (64 messages deep) and with the short
channels :func:`run_lava` uses (``CHANNEL_SLOTS``), and ratios are quoted against the faster. All in
this process, one after the other. Compile + start (compiler, worker start-up, model set-up) is
timed apart from the steps. The whole 10,000-image test set's Lava time for the fine-tuned network is
extrapolated from the best throughput.

Writes ``<out>/lava_speed.{json,md}``. Defaults read ../shared.

    python bench/lava_speed.py                             # B = 1, 8, 32; 2 samples each; stock 20 steps
    python bench/lava_speed.py --batch-sizes 1 32 --samples 1 --finetuned ""
    python bench/lava_speed.py --whole-test-set            # + the fine-tuned network on all 10,000 images
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

import netx_export
from bsnn_lava import convert, simulate, zoo
from bsnn_lava.datasets import load_npz
from bsnn_lava.files import write_text_atomic
from bsnn_lava.ir import Conv2d, Dense, GatedIF, Input, Network, Readout, Schedule, Synapse
from bsnn_lava.lava.run import CHANNEL_SLOTS, run_lava
from bsnn_lava.quantize import quantize

from common import add_resnet20_data_args, command_line, machine, machine_text, write_json

#: Stock network: weights uniform in +-WEIGHT_MAX, threshold THRESHOLD (integer scale); values do not
#: change the stock cost (every convolution is computed densely on every step).
WEIGHT_MAX, THRESHOLD = 8, 64
#: Targets of the issue: image-steps per second against stock netx's, with B = 1 and with B = 32.
TARGETS = {1: 10.0, 32: 100.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_resnet20_data_args(parser)
    parser.add_argument("--n-calib", type=int, default=300, help="calibration images (training set)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32], help="Lava batch sizes B")
    parser.add_argument("--samples", type=int, default=2, help="samples (batches of B images) per run")
    parser.add_argument("--steps", type=int, default=80, help="steps per image of the post-training network")
    parser.add_argument("--stock-steps", type=int, default=20, help="steps of the stock netx network")
    parser.add_argument("--finetuned", default="4", help="levels of the fine-tuned network ('' for none)")
    parser.add_argument("--epochs", type=int, default=6, help="fine-tuning epochs (finetune.py's checkpoint)")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--checkpoints", type=Path, default=Path("/tmp/bsnn-finetune"))
    parser.add_argument("--test-images", type=int, default=10000, help="test set size for the extrapolation")
    parser.add_argument("--whole-test-set", action="store_true",
                        help="also run the fine-tuned network on --test-images images in Lava with the largest B, "
                             "and compare it with the reference on every step (about half an hour for 10,000)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    x_calib, y_calib = load_npz(args.calib_data)
    x_test, y_test = load_npz(args.test_data)
    base = zoo.load_checkpoint(args.model)
    mean_std = dict(mean=zoo.CIFAR_RESNET_MEAN, std=zoo.CIFAR_RESNET_STD)
    post = quantize(convert(base, x_calib[:args.n_calib], neuron="bistable", window=2, v_init=0.5, **mean_std), "loihi2")
    networks = {"post-training BSNN (P=2, V(0)=theta/2)": (post, args.steps)}
    if args.finetuned:
        import finetune as finetune_bench

        args.channelwise = False  # finetune.py's checkpoint names
        model = finetune_bench.trained(args, base, int(args.finetuned), x_calib, y_calib)
        tuned = quantize(convert(model, x_calib[:args.n_calib], frames=1, **mean_std), "loihi2",
                         calibration_images=x_calib[:args.n_calib])
        networks[f"fine-tuned P={args.finetuned}, one frame, frame reset"] = (tuned, tuned.latency_steps)
    runs = []
    for label, (network, steps) in networks.items():
        for batch_size in args.batch_sizes:
            n = batch_size * args.samples
            images, labels = x_test[:n], y_test[:n]
            lava = run_lava(network, images, labels, steps=steps, progress=False, batch_size=batch_size)
            ref = simulate(network, images, labels, steps=steps, progress=False)
            equal = bool(np.array_equal(lava.predictions_per_step, ref.predictions_per_step)
                         and np.array_equal(lava.n_spikes_per_step, ref.n_spikes_per_step))
            runs.append({"network": label, "batch_size": batch_size, "images": n, "steps": steps,
                         **lava.extras["timing"], "spikes_per_image": int(lava.n_spikes_per_step.sum()) // n,
                         "equal_to_reference": equal})
            print(f"{label} B={batch_size}: {lava.extras['timing']['ms_per_step']:.1f} ms per step, "
                  f"{lava.extras['timing']['image_steps_per_s']:.0f} image-steps/s, reference equal: {equal}",
                  flush=True)
    twin = sequential_twin(post)
    stock = {name: run_stock(twin, x_test[0], args.stock_steps, channel_slots=slots)
             for name, slots in (("lava_default_channels", None), (f"channels_{CHANNEL_SLOTS}_deep", CHANNEL_SLOTS))}
    stock_rate = max(1000.0 / run["ms_per_step"] for run in stock.values())
    for run in runs:
        run["vs_stock"] = run["image_steps_per_s"] / stock_rate
    payload = {
        "command": command_line(), "machine": machine(), "load_average_1min_at_start": load_before,
        "ours": runs, "targets_vs_stock": {str(b): t for b, t in TARGETS.items()},
        "stock": {"network": "lava-dl netx, 19 conv + dense with ResNet20's shapes, no skips, CUBA neurons",
                  "steps": args.stock_steps, "n_layers": len(twin.layers) - 1, "runs": stock,
                  "image_steps_per_s": stock_rate},
        "test_images": args.test_images,
    }
    if args.finetuned:
        best = max((r for r in runs if r["network"].startswith("fine-tuned")), key=lambda r: r["image_steps_per_s"])
        payload["whole_test_set"] = {"network": best["network"], "batch_size": best["batch_size"], "steps": best["steps"],
                                     "hours": args.test_images * best["steps"] / best["image_steps_per_s"] / 3600,
                                     "compile_start_s": best["compile_start_s"]}
        if args.whole_test_set:
            payload["whole_test_set"]["measured"] = whole_test_set(tuned, best["steps"], max(args.batch_sizes),
                                                                   x_test[:args.test_images], y_test[:args.test_images])
    write_json(args.out / "lava_speed.json", payload)
    report = markdown(payload)
    write_text_atomic(args.out / "lava_speed.md", report)
    print(report)


def whole_test_set(network: Network, steps: int, batch_size: int, images, labels) -> dict:
    """``network`` on all ``images`` in Lava (``batch_size`` at once) and in the reference simulator:
    wall times, accuracy at ``steps``, and whether every image's prediction after every step and the
    spike counts per step are the same."""
    started = time.perf_counter()
    lava = run_lava(network, images, labels, steps=steps, batch_size=batch_size, progress=True)
    lava_wall = time.perf_counter() - started
    started = time.perf_counter()
    ref = simulate(network, images, labels, steps=steps, progress=True)
    return {"images": len(images), "steps": steps, "batch_size": batch_size, "lava_wall_s": lava_wall,
            **{f"lava_{k}": v for k, v in lava.extras["timing"].items()},
            "reference_wall_s": time.perf_counter() - started, "accuracy": float(lava.accuracy[-1]),
            "ann_accuracy": float(lava.ann_accuracy),
            "predictions_equal_every_step": bool(np.array_equal(lava.predictions_per_step, ref.predictions_per_step)),
            "spike_counts_equal_every_step": bool(np.array_equal(lava.n_spikes_per_step, ref.n_spikes_per_step)),
            "synops_equal_every_step": bool(np.array_equal(lava.n_synops_per_step, ref.n_synops_per_step))}


def sequential_twin(network: Network) -> Network:
    """A plain integer IF network with the neuron layers' main convolutions and the readout's shape."""
    rng = np.random.default_rng(0)
    layers = [Input("x", network.input.shape, Schedule("if", 0, 1))]
    for layer in network.spiking_layers:
        if layer.role != "neuron":
            continue
        op = next(s.op for s in layer.synapses if isinstance(s.op, Conv2d) and s.op.weight.shape[2] > 1)
        weight = rng.integers(-WEIGHT_MAX, WEIGHT_MAX + 1, size=op.weight.shape).astype(float)
        synapse = Synapse(layers[-1].name, Conv2d(weight, stride=op.stride, padding=op.padding))
        layers.append(GatedIF(f"conv{len(layers)}", layer.shape, (synapse,), threshold=THRESHOLD, bias=0.0,
                              v_init=0.0, schedule=Schedule("if", len(layers), 1)))
    n_in = int(np.prod(layers[-1].shape))
    weight = rng.integers(-WEIGHT_MAX, WEIGHT_MAX + 1, size=(network.readout.shape[0], n_in)).astype(float)
    layers.append(Readout("readout", network.readout.shape, (Synapse(layers[-1].name, Dense(weight)),), bias=0.0,
                          schedule=Schedule("if", len(layers), 1)))
    return Network(layers, numeric="int")


def run_stock(network: Network, image_hwc: np.ndarray, steps: int, channel_slots) -> dict:
    """Run the netx-mode file of ``network`` in lava-dl's netx (fixed_pt), the image on every step;
    ``channel_slots``: Lava's ``pypy_channel_size`` (``None``: Lava's default)."""
    from bsnn_lava.lava.compat import ensure_netx_importable

    ensure_netx_importable()
    from lava.lib.dl import netx
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.io.sink import RingBuffer as Sink
    from lava.proc.io.source import RingBuffer as Source

    with tempfile.TemporaryDirectory() as folder:
        path = netx_export.write(network, Path(folder) / "stock.h5", mode="netx")
        net = netx.hdf5.Network(net_config=str(path), input_message_bits=8)
    frames = np.repeat(image_hwc.transpose(1, 0, 2)[..., None].astype(np.int32), steps, axis=-1)  # (W, H, C, T)
    source, sink = Source(data=frames), Sink(shape=net.out.shape, buffer=steps)
    source.s_out.connect(net.inp)
    net.out.connect(sink.a_in)
    try:
        started = time.perf_counter()
        config = {} if channel_slots is None else {"pypy_channel_size": channel_slots}
        net.create_runtime(run_cfg=Loihi2SimCfg(select_tag="fixed_pt"), compile_config=config)
        compiled = time.perf_counter()
        net.run(condition=RunSteps(num_steps=steps))
        finished = time.perf_counter()
    finally:
        net.stop()
    return {"compile_start_s": compiled - started, "run_s": finished - compiled,
            "ms_per_step": 1000.0 * (finished - compiled) / steps}


def markdown(p: dict) -> str:
    stock = p["stock"]
    rows = [f"| {r['network']} | {r['n_processes']} | {r['batch_size']} | {r['images']} x {r['steps']} | "
            f"{r['compile_start_s']:.1f} | {r['ms_per_step']:.1f} | {r['image_steps_per_s']:.0f} | "
            f"**{r['vs_stock']:.1f}x** | {'yes' if r['equal_to_reference'] else 'NO'} |" for r in p["ours"]]
    stock_rows = [f"| stock ({name.replace('_', ' ')}) | {stock['n_layers']} netx layers | {run['compile_start_s']:.1f} | "
                  f"{run['ms_per_step']:.1f} | {1000 / run['ms_per_step']:.2f} |" for name, run in stock["runs"].items()]
    lines = [
        "# Lava CPU throughput: ResNet20 BSNNs (event-driven processes, batches of B images) vs stock lava-dl netx",
        "", f"`{p['command']}`", "",
        f"Machine: {machine_text(p['machine'])}; 1-minute load average {p['load_average_1min_at_start']:.1f} at the start "
        "(above ~0.5, other work shared the 2 cores). Everything ran in this one process, one network after the "
        "other, under `Loihi2SimCfg(select_tag='fixed_pt')`.", "",
        "| ours | Lava processes | B | images x steps | compile + start (s) | ms per Lava step | image-steps/s | "
        "vs stock | every step's predictions and spike counts = reference |", "|---|---|---|---|---|---|---|---|---|",
        *rows, "", f"Stock: {stock['network']}, one image, {stock['steps']} steps:", "",
        "| stock run | size | compile + start (s) | ms per step | image-steps/s |", "|---|---|---|---|---|", *stock_rows, "",
        "Targets (image-steps per second against the faster stock run): " + ", ".join(
            f">= {t:.0f}x with B = {b}" for b, t in p["targets_vs_stock"].items()) + "."]
    whole = p.get("whole_test_set")
    if whole:
        lines += ["", f"Whole test set in Lava ({p['test_images']} images x {whole['steps']} steps, {whole['network']}, "
                      f"B = {whole['batch_size']}): **{whole['hours']:.2f} h** extrapolated from the measured "
                      f"throughput (+ {whole['compile_start_s']:.0f} s compile + start, once); target < 1 h."]
        run = whole.get("measured")
        if run:
            lines += ["", f"Measured (`--whole-test-set`): {run['images']} images x {run['steps']} steps in Lava with "
                          f"B = {run['batch_size']}: **{run['lava_wall_s'] / 3600:.2f} h** wall ({run['lava_run_s']:.0f} s "
                          f"in Lava's run calls, {run['lava_image_steps_per_s']:.0f} image-steps/s), accuracy "
                          f"{100 * run['accuracy']:.2f}% (bench/results/finetune_resnet20.md: the fixed-point P=4 network's first "
                          f"frame); the reference "
                          f"simulator took {run['reference_wall_s']:.0f} s. Same as the reference at every step: "
                          f"predictions of every image {'yes' if run['predictions_equal_every_step'] else 'NO'}, "
                          f"spike counts {'yes' if run['spike_counts_equal_every_step'] else 'NO'}, synaptic "
                          f"operations {'yes' if run['synops_equal_every_step'] else 'NO'}."]
    return "\n".join(lines + [""])


if __name__ == "__main__":
    main()
