"""An ImageNet-size network through the whole chain: torchvision's ResNet-34 (224x224, 1000 classes; the
7x7/2 stem with its 3x3/2 max pooling; ``--depth`` 18, 50 or 101 for the others).

No ImageNet weights are reachable here, so the weights are random (torchvision's initialisation,
seed 0; every figure below is about size and speed, none about accuracy). Calibration and test
images: ``--data DIR`` (a folder of class subfolders, ImageNet layout, centre crops) or, by default,
CIFAR-10 test images resized to 224x224 (real photographs, so activations have natural statistics).
Each stage is timed and its peak memory sampled (this process's resident set every 20 ms, and the
proportional set of this process and its children, Lava's workers, by a monitor process,
:class:`common.TreeMemoryPeak`):
convert (``--n-calib`` images), quantize for loihi2 (error-feedback rounding on ``--n-quant-calib`` of them),
export (file size), ``check_resources`` for loihi2 (cores, chips), the reference simulator on
``--n-sim`` images x ``--steps`` steps (float and fixed point), and the Lava CPU models
(:func:`bsnn_lava.lava.build.check_memory`'s estimate, or the reason they do not fit this machine;
where they fit, ``--lava-steps`` steps of one image in Lava, compared with the reference simulator:
spike counts of every layer at every step, spikes per neuron, predictions).

Writes ``<out>/<name>.{json,md}``.

    python bench/resnet34.py                                  # ResNet-34, 32 calibration images, 2 x 64 steps
    python bench/resnet34.py --data /data/imagenet/val --n-calib 256
    python bench/resnet34.py --n-throughput 0 --lava-steps 80 --name resnet34_lava   # the Lava stage's memory
"""
from __future__ import annotations

import argparse
import collections
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from common import SHARED, command_line, machine, machine_text, measured, write_json, write_markdown

RESULTS = Path(__file__).parent / "results"
#: where the ImageNet cost of a network that streams one image per frame is measured
STREAMED_NOTE = ("That is post-training binary conversion, each image alone for all 989 steps. A graded network with "
                 "frame reset streams one image per frame (2 steps): bench/results/imagenet_size.md "
                 "(`python bench/imagenet_size.py`) measures it for ResNet-18, -34 and -50, with Lava runs.")


def images(args, n: int) -> np.ndarray:
    """``n`` uint8 (n, size, size, 3) images: from ``--data``, else CIFAR-10 test images resized."""
    from bsnn_lava.datasets import ImageFolder, load_npz

    if args.data:
        return np.asarray(ImageFolder(args.data, args.size)[:n])
    from PIL import Image

    x, _ = load_npz(args.cifar)
    return np.stack([np.asarray(Image.fromarray(im).resize((args.size, args.size), Image.BILINEAR)) for im in x[:n]])


def ann_macs(model: nn.Module, size: int) -> int:
    """Multiply-accumulates of one ``size`` x ``size`` image through ``model``'s convolutions and linear layers."""
    with torch.no_grad():
        macs = []
        hooks = [m.register_forward_hook(lambda m, i, o: macs.append(o[0].numel() * m.weight[0].numel()))
                 for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        model(torch.zeros(1, 3, size, size))
        for hook in hooks:
            hook.remove()
    return int(sum(macs))


def lava_build_stage(stages: dict, fixed) -> dict:
    """The "Lava CPU build" stage: :func:`check_memory`'s estimate of every Lava process (or its
    refusal), the processes, the largest, and how many synapses take each form."""
    from bsnn_lava.ir import Conv2d
    from bsnn_lava.lava.build import available_memory_bytes, check_memory, memory_estimate
    from bsnn_lava.lava.procs.process import conv_form

    with measured(stages, "Lava CPU build") as entry:
        available = available_memory_bytes()
        entry["available_gib"] = None if available is None else available / 2 ** 30
        try:
            entry["needs_gib"] = check_memory(fixed) / 2 ** 30
        except ValueError as err:
            entry["refused"] = str(err)
        per_process, building = memory_estimate(fixed)
        entry.update(processes=len(per_process), largest_process_gib=max(per_process.values()) / 2 ** 30,
                     forms=dict(collections.Counter(
                         conv_form(int(s.op.fan_out(s.input_shape(fixed[s.source].shape)).sum()))
                         if isinstance(s.op, Conv2d) else "dense" for layer in fixed.layers[1:] for s in layer.synapses)))
    return entry


def equal_to_reference(lava, ref) -> bool:
    """Spike counts of every layer at every step, spikes per neuron and predictions (every step's;
    streamed: each image's, with its prediction step and readout potentials) equal."""
    same = (np.array_equal(lava.n_spikes_per_step, ref.n_spikes_per_step)
            and np.array_equal(lava.predictions, ref.predictions)
            and lava.n_spikes_per_neuron.keys() == ref.n_spikes_per_neuron.keys()
            and all(np.array_equal(n, ref.n_spikes_per_neuron[name]) for name, n in lava.n_spikes_per_neuron.items()))
    if ref.stream is None:
        return bool(same and np.array_equal(lava.predictions_per_step, ref.predictions_per_step))
    return bool(same and np.array_equal(lava.stream.prediction_step, ref.stream.prediction_step)
                and np.array_equal(lava.stream.readout, ref.stream.readout))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=34, choices=(18, 34, 50, 101))
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument("--data", type=Path, help="a folder of class subfolders of images (ImageNet layout)")
    parser.add_argument("--cifar", type=Path, default=SHARED / "data" / "cifar10_test.npz",
                        help="without --data: CIFAR-10 images resized to --size")
    parser.add_argument("--n-calib", type=int, default=32)
    parser.add_argument("--n-quant-calib", type=int, default=8,
                        help="of the calibration images, those for error-feedback rounding (0: round to nearest)")
    parser.add_argument("--n-sim", type=int, default=2)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--n-throughput", type=int, default=8,
                        help="images in one batch for the throughput behind the ImageNet extrapolation (0: none)")
    parser.add_argument("--throughput-steps", type=int, default=989,
                        help="the paper's T: the rate includes the pipeline filling, as a full run's does")
    parser.add_argument("--device", default="cpu", help="torch device of the simulator runs")
    parser.add_argument("--lava-steps", type=int, default=0,
                        help="where the Lava CPU models fit: run one image this many steps in Lava (0: estimate only)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="resnet34")
    args = parser.parse_args()

    import netx_export
    from bsnn_lava import convert, simulate, zoo
    from bsnn_lava.lava.run import run_lava
    from bsnn_lava.quantize import quantize
    from bsnn_lava.resources import check_resources

    torch.manual_seed(0)
    model = zoo.imagenet_resnet(args.depth).eval()  # torchvision's initialisation
    x = images(args, args.n_calib + max(args.n_sim, args.n_throughput))
    calib, test, batch = x[:args.n_calib], x[args.n_calib:args.n_calib + args.n_sim], x[args.n_calib:]
    stages: dict = {}
    payload = {"benchmark": args.name, "command": command_line(), "machine": machine(), "depth": args.depth,
               "input": [3, args.size, args.size], "classes": 1000, "data": str(args.data or args.cifar),
               "parameters": sum(p.numel() for p in model.parameters()), "stages": stages}
    payload["ann_macs"] = ann_macs(model, args.size)
    with measured(stages, "convert") as entry:
        network = convert(model, calib, window=2, mean=zoo.IMAGENET_MEAN, std=zoo.IMAGENET_STD, progress=True)
        entry.update(layers=len(network.layers), neurons=int(sum(np.prod(l.shape) for l in network.layers[1:])),
                     calibration_images=len(calib))
    with measured(stages, "quantize (loihi2)") as entry:
        fixed = quantize(network, "loihi2", calibration_images=calib[:args.n_quant_calib] if args.n_quant_calib else None,
                         progress=True)
        entry["rounding_images"] = args.n_quant_calib
    with tempfile.TemporaryDirectory() as folder:
        with measured(stages, "export") as entry:
            path = netx_export.write(fixed, Path(folder) / "resnet34.h5")
            entry["file_mib"] = path.stat().st_size / 2 ** 20
        with measured(stages, "read back") as entry:
            netx_export.read(path)
    with measured(stages, "check loihi2") as entry:
        report = check_resources(fixed, "loihi2")
        entry.update(fits=report.fits, n_cores=report.n_cores, n_chips=report.n_chips, violations=report.violations)
    for kind, net in (("float", network), ("fixed point", fixed)):
        with measured(stages, f"simulate {kind}") as entry:
            result = simulate(net, test, steps=args.steps, batch_size=args.n_sim, device=args.device, progress=True)
            entry.update(images=len(test), steps=args.steps, method=result.method,
                         spikes_per_image=sum(result.n_spikes.values()) / len(test),
                         synops_per_image=float(result.n_synops_per_step.sum()) / len(test),
                         saturated=sum(result.n_saturated.values()))
    for kind in ("float", "fixed point"):
        entry = stages[f"simulate {kind}"]
        entry["image_steps_per_s"] = entry["images"] * entry["steps"] / entry["seconds"]
    if args.n_throughput:
        with measured(stages, "throughput fixed point") as entry:
            simulate(fixed, batch, steps=args.throughput_steps, batch_size=len(batch), device=args.device,
                     progress=True)
            entry.update(images=len(batch), steps=args.throughput_steps)
        entry["image_steps_per_s"] = len(batch) * args.throughput_steps / entry["seconds"]
        rate = entry["image_steps_per_s"]
        payload["imagenet_extrapolation"] = {
            "images": 50000, "steps": 989, "image_steps": 50000 * 989, "measured_image_steps_per_s": rate,
            "device": args.device, "cores_here": machine()["cpu_count"],
            "hours_here": 50000 * 989 / rate / 3600}
    lava_build_stage(stages, fixed)
    if args.lava_steps and "refused" not in stages["Lava CPU build"]:
        with measured(stages, "Lava CPU run") as entry:
            lava = run_lava(fixed, test[:1], steps=args.lava_steps, progress=True)
        ref = simulate(fixed, test[:1], steps=args.lava_steps, method="step")
        entry.update(images=1, steps=args.lava_steps, **lava.extras["timing"],
                     spikes=int(lava.n_spikes_per_step.sum()),
                     equal_to_reference=equal_to_reference(lava, ref))
    write_json(args.out / f"{args.name}.json", payload)
    write_report(args, payload)


def write_report(args, payload) -> None:
    s = payload["stages"]
    lines = [f"# ImageNet-size chain: ResNet-{payload['depth']} ({payload['parameters'] / 1e6:.1f} M parameters, "
             f"{payload['ann_macs'] / 1e9:.2f} G MACs per image, random weights)", "",
             f"Command: `{payload['command']}`  ", f"Machine: {machine_text(payload['machine'])}  ",
             f"Images: {payload['data']} at {payload['input'][1]}x{payload['input'][2]}. Peak memory during the stage: "
             "this process's resident set (RSS, sampled every 20 ms), and the proportional set (PSS: shared pages "
             "divided among their sharers) summed over this process and its children, Lava's workers (sampled by a "
             "monitor process as often as it can read them: every 0.2 s alone, every few seconds with 50 workers).",
             "",
             "| stage | wall (s) | peak RSS (GiB) | peak PSS, processes (GiB) | figures |", "|---|---|---|---|---|"]
    figures = {
        "convert": lambda e: f"{e['layers']} layers, {e['neurons'] / 1e6:.2f} M neurons, {e['calibration_images']} "
                             "calibration images",
        "quantize (loihi2)": lambda e: (f"error-feedback rounding + bias correction on {e['rounding_images']} images"
                                        if e["rounding_images"] else "rounded to nearest"),
        "export": lambda e: f"netx HDF5 {e['file_mib']:.1f} MiB",
        "read back": lambda e: "validating reader",
        "check loihi2": lambda e: f"{e['n_cores']} cores, {e['n_chips']} chip(s); "
                                  f"{'fits' if e['fits'] else 'does not fit: ' + '; '.join(e['violations'])}",
        "Lava CPU build": lambda e: (e.get("refused") or f"fits: {e['needs_gib']:.1f} GiB estimated") + (
            f" ({e['processes']} processes, the largest {e['largest_process_gib']:.2f} GiB; synapses: "
            + ", ".join(f"{n} {form}" for form, n in sorted(e["forms"].items())) + ")" if "forms" in e else ""),
        "Lava CPU run": lambda e: (f"{e['images']} image x {e['steps']} steps, {e['n_processes']} Lava processes: "
                                   f"compile + start {e['compile_start_s']:.0f} s, {e['ms_per_step']:.0f} ms per step; "
                                   f"{e['spikes'] / 1e6:.2f} M spikes; spike counts of every layer at every step, spikes "
                                   f"per neuron and predictions = reference: {'yes' if e['equal_to_reference'] else 'NO'}; "
                                   f"sum of the processes' RSS (shared pages counted in each) "
                                   f"{e['tree_rss_sum_gib']:.1f} GiB"),
    }
    for name, e in s.items():
        if name.startswith("simulate") or name.startswith("throughput"):
            text = f"{e['images']} images x {e['steps']} steps, one batch: {e['image_steps_per_s']:.2f} image-steps/s"
            if "method" in e:
                text += (f" ({e['method']} path); {e['spikes_per_image'] / 1e6:.2f} M spikes, "
                         f"{e['synops_per_image'] / 1e9:.2f} G synaptic ops per image; {e['saturated']} saturated")
        else:
            text = figures[name](e)
        lines.append(f"| {name} | {e['seconds']:.1f} | {e['peak_rss_gib']:.2f} | {e['peak_tree_pss_gib']:.2f}, "
                     f"{e['tree_processes']} | {text} |")
    x = payload.get("imagenet_extrapolation")
    if x:
        lines += ["", f"The paper's ImageNet experiment ({x['images']} images x {x['steps']} steps = "
                      f"{x['image_steps'] / 1e6:.1f} M image-steps) at the measured {x['measured_image_steps_per_s']:.2f} "
                      f"image-steps/s ({x['device']}, {x['cores_here']} cores): {x['hours_here']:.0f} h here.", "",
                  STREAMED_NOTE]
    write_markdown(args.out / f"{args.name}.md", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
