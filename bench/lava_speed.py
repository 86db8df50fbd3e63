"""Lava CPU speed: the ResNet20 BSNN on our event-driven processes vs stock lava-dl netx, one run.

Ours: the pretrained ResNet20 converted to a bistable network (P = 2, V(0) = theta/2), quantized for
Loihi 2, run by :func:`bsnn_lava.lava.run.run_lava` (``Loihi2SimCfg``, ``fixed_pt``) on the first test
images. Stock: a plain sequential integer IF network with the same 19 convolutions and the dense
readout (no shortcuts, CUBA neurons), written with ``netx_export.write(..., mode="netx")`` and run by
lava-dl's ``netx.hdf5.Network`` under the same run config. Both in this process, one after the other.
Compile + start (compiler, worker start-up, model set-up) is timed apart from the steps. The stock
network runs twice: with Lava's default channels (64 messages deep) and with the short channels
:func:`run_lava` uses (``CHANNEL_SLOTS``); the speed-up is quoted against the faster of the two.

Writes ``<out>/lava_speed.{json,md}``. Defaults read ../shared.

    python bench/lava_speed.py                         # 2 images x 80 steps, stock 20 steps
    python bench/lava_speed.py --images 1 --steps 80 --stock-steps 10
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

import netx_export
from bsnn_lava import convert, zoo
from bsnn_lava.datasets import load_npz
from bsnn_lava.ir import Conv2d, Dense, GatedIF, Input, Network, Readout, Schedule, Synapse
from bsnn_lava.lava.run import CHANNEL_SLOTS, run_lava
from bsnn_lava.quantize import quantize

from common import add_resnet20_data_args, command_line, machine, write_json

#: Stock network: weights uniform in +-WEIGHT_MAX, threshold THRESHOLD (integer scale); values do not
#: change the stock cost (every convolution is computed densely on every step).
WEIGHT_MAX, THRESHOLD = 8, 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_resnet20_data_args(parser)
    parser.add_argument("--n-calib", type=int, default=300, help="calibration images (training set)")
    parser.add_argument("--images", type=int, default=2, help="test images for our network")
    parser.add_argument("--steps", type=int, default=80, help="steps per image for our network")
    parser.add_argument("--stock-steps", type=int, default=20, help="steps of the stock netx network")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    x_calib, _ = load_npz(args.calib_data)
    x_test, y_test = load_npz(args.test_data)
    network = quantize(convert(zoo.load_checkpoint(args.model), x_calib[:args.n_calib], neuron="bistable", window=2,
                               v_init=0.5, mean=zoo.CIFAR_RESNET_MEAN, std=zoo.CIFAR_RESNET_STD), "loihi2")
    ours = run_lava(network, x_test[:args.images], y_test[:args.images], steps=args.steps, progress=False)
    twin = sequential_twin(network)
    stock = {name: run_stock(twin, x_test[0], args.stock_steps, channel_slots=slots)
             for name, slots in (("lava_default_channels", None), (f"channels_{CHANNEL_SLOTS}_deep", CHANNEL_SLOTS))}
    ours_ms = ours.extras["timing"]["ms_per_step"]
    stock_ms = min(run["ms_per_step"] for run in stock.values())
    payload = {
        "command": command_line(), "machine": machine(),
        "load_average_1min_at_start": load_before,
        "ours": {"network": "ResNet20 BSNN (P=2, V(0)=theta/2), quantized loihi2, event-driven processes",
                 "n_layers": len(network.layers), "n_synapses": sum(len(l.synapses) for l in network.layers),
                 "n_lava_processes": 1 + sum(1 + len(l.synapses) for l in network.layers[1:]),
                 "images": args.images, "steps_per_image": args.steps, **ours.extras["timing"],
                 "spikes_per_image": int(ours.n_spikes_per_step.sum()) // args.images,
                 "first_prediction_step": network.readout.schedule.offset_steps + 1,
                 "predictions": ours.predictions.tolist(), "labels": y_test[:args.images].tolist()},
        "stock": {"network": "lava-dl netx, 19 conv + dense with ResNet20's shapes, no skips, CUBA neurons",
                  "steps": args.stock_steps, "n_layers": len(twin.layers) - 1, "runs": stock},
        "speedup_per_step": stock_ms / ours_ms, "target_speedup": 10.0,
    }
    write_json(args.out / "lava_speed.json", payload)
    (args.out / "lava_speed.md").write_text(markdown(payload))
    print(markdown(payload))


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
    ours, stock = p["ours"], p["stock"]
    rows = [f"| stock ({name.replace('_', ' ')}): {stock['network']} | {stock['n_layers']} netx layers | "
            f"{stock['steps']} | {run['compile_start_s']:.1f} | {run['ms_per_step']:.1f} |"
            for name, run in stock["runs"].items()]
    return "\n".join([
        "# Lava CPU speed: ResNet20 BSNN (event-driven processes) vs stock lava-dl netx", "",
        f"`{p['command']}`", "",
        f"Machine: {p['machine']['platform']}, {p['machine']['cpu_count']} CPUs, Python {p['machine']['python']}, "
        f"{p['machine']['date_utc']} UTC; 1-minute load average {p['load_average_1min_at_start']:.1f} at the start "
        "(above ~0.5, other work shared the 2 cores). "
        "Everything ran in this one process, one network after the other, under "
        "`Loihi2SimCfg(select_tag='fixed_pt')`.", "",
        "| network | size | steps timed | compile + start (s) | ms per step |",
        "|---|---|---|---|---|",
        f"| ours: {ours['network']} | {ours['n_lava_processes']} Lava processes | {ours['images']} images x "
        f"{ours['steps_per_image']} | {ours['compile_start_s']:.1f} | {ours['ms_per_step']:.1f} |", *rows, "",
        f"**Speed-up per step: {p['speedup_per_step']:.1f}x** against the faster stock run (target >= "
        f"{p['target_speedup']:.0f}x).", "",
        f"Ours: {ours['spikes_per_image']} spikes per image over {ours['steps_per_image']} steps; the first "
        f"prediction comes after step {ours['first_prediction_step']}; predictions {ours['predictions']} "
        f"(labels {ours['labels']}). Ours builds once for all images and restarts every state in the models at "
        "each image, so compile + start is paid once per run; rebuilding per image would add it to every image.",
        ""])


if __name__ == "__main__":
    main()
