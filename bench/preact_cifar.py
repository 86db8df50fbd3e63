"""A pre-activation ResNet-18 (CIFAR layout) fine-tuned for a window, converted exactly: binary and graded.

``zoo.preact_resnet18`` (kuangliu/pytorch-cifar's PreActResNet18: a stem convolution without a ReLU, blocks
``x + conv(relu(bn(x)))``, so every block's stage reads the pixels through a linear path beside spiking layers),
random initialisation (seed 0), trained as a ReLU network for ``--relu-epochs`` (1, learning rate ``--relu-lr``: a
stand-in for the user's trained network) then fine-tuned for the window P = ``--window`` for one epoch, both on the
first ``--n-train`` images of the 10k CIFAR-10 training subset, then converted twice from the same model: binary spikes and graded
spikes, both with frame reset. For each, on the first ``--n-test`` CIFAR-10 test images, in float64:

* the frame (``frame_forward``) against P times the model's logits (largest difference, relative);
* one image at a time (``--frames`` complete frames, every layer running all of them): the prediction at every
  complete frame against the model's class;
* streamed (``--lanes`` images entering per frame): each image's prediction against the model's class, its
  readout potentials against the frame;
* Lava (CPU simulator): the network quantized for loihi2 (rounded to nearest), ``--n-lava`` images streamed,
  spike for spike against the reference's streamed run (spike counts of every layer at every step, spikes per
  neuron, predictions, prediction steps, readout potentials).

The accuracy of a network trained for one epoch from random weights on a few thousand images says nothing;
the figures are about exactness and cost. Writes ``<out>/<name>.{json,md}``; every finished stage is kept in the
JSON and a rerun does only what is missing (``--force``: all).

    python bench/preact_cifar.py
    python bench/preact_cifar.py --n-train 512 --n-test 50 --name preact_cifar_quick
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from common import SHARED, add_command, machine, machine_text, measured, read_payload, write_json, write_markdown
from resnet34 import equal_to_reference

RESULTS = Path(__file__).parent / "results"
KINDS = ("binary", "graded")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=Path, default=SHARED / "data" / "cifar10_train_10k.npz")
    parser.add_argument("--test", type=Path, default=SHARED / "data" / "cifar10_test.npz")
    parser.add_argument("--n-train", type=int, default=2000, help="training images of the one epoch")
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--window", type=int, default=4, help="P")
    parser.add_argument("--relu-epochs", type=int, default=1, help="ReLU epochs before the window's one epoch")
    parser.add_argument("--relu-lr", type=float, default=0.05)
    parser.add_argument("--frames", type=int, default=2, help="complete frames of the one-at-a-time run")
    parser.add_argument("--lanes", type=int, default=25, help="images entering per frame in the streamed run")
    parser.add_argument("--n-lava", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=50, help="images per batch of the one-at-a-time run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="preact_cifar")
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    path = args.out / f"{args.name}.json"
    payload = read_payload(path, runs={})
    if not args.report_only:
        add_command(payload)
        payload["machine"] = machine()
        run(args, payload, lambda: write_json(path, payload))
    write_json(path, payload)
    write_report(args, payload)


def run(args, payload: dict, save) -> None:
    from bsnn_lava import convert, finetune, simulate, zoo
    from bsnn_lava.data import as_nchw
    from bsnn_lava.lava.run import run_lava
    from bsnn_lava.quantize import quantize
    from bsnn_lava.sim import frame_forward

    train, test = np.load(args.train), np.load(args.test)
    x_train, y_train = train["x"][:args.n_train], train["y"][:args.n_train]
    x, y = test["x"][:args.n_test], test["y"][:args.n_test]
    mean, std = zoo.CIFAR_RESNET_MEAN, zoo.CIFAR_RESNET_STD
    key = f"relu{args.relu_epochs}-P{args.window}-train{args.n_train}-test{args.n_test}"
    entry = {} if args.force else payload["runs"].get(key, {})
    payload["runs"][key] = entry
    stages = entry.setdefault("stages", {})
    torch.manual_seed(0)
    model = zoo.preact_resnet18()
    entry["parameters"] = sum(p.numel() for p in model.parameters())
    with measured(stages, "fine-tune") as e:
        model = finetune(model, x_train, y_train, window=args.window, epochs=1 + args.relu_epochs, batch_size=64,
                         mean=mean, std=std, relu_epochs=args.relu_epochs, relu_lr=args.relu_lr,
                         n_check=min(500, args.n_train), progress=True)
        e.update(images=args.n_train, relu_epochs=args.relu_epochs, window_epochs=1, window=args.window)
    model = model.double().eval()
    pixels = as_nchw(x, 3, torch.float64) / 255.0
    m, s = (torch.tensor(v, dtype=torch.float64).view(1, -1, 1, 1) for v in (mean, std))
    with torch.no_grad():
        logits = torch.cat([model((pixels[i:i + 100] - m) / s) for i in range(0, len(x), 100)])
    expected = logits.argmax(1).numpy()
    entry["model_accuracy"] = float(np.mean(expected == y))
    entry["model_classes"] = np.bincount(expected, minlength=logits.shape[1]).tolist()  # images per predicted class
    save()
    for kind in KINDS:
        result = entry.setdefault(kind, {})
        print(f"== {kind}", flush=True)
        with measured(stages, f"{kind}: convert") as e:
            network = convert(model, x_train[:300], spikes=kind, mean=mean, std=std, frame_reset=True)
            e.update(layers=len(network.layers), pixel_relays=len(network.pixel_relays))
        result.update(latency_steps=network.latency_steps, frame_steps=network.frame_steps,
                      window_steps=network.window_steps, pixel_relays=len(network.pixel_relays))
        with measured(stages, f"{kind}: frame") as e:
            readout, _ = frame_forward(network, as_nchw(x, 3).double())
        scale = float(logits.abs().max())
        result["frame_max_relative_difference"] = float((readout - network.window_steps * logits).abs().max()) / scale
        result["frame_same_class"] = float(np.mean(readout.argmax(1).numpy() == expected))
        frames = network.complete_frames(network.readout.schedule.offset_steps + args.frames * network.frame_steps)
        with measured(stages, f"{kind}: one at a time") as e:
            alone = simulate(network, x, y, steps=frames[-1], frames="all", dtype=torch.float64,
                             batch_size=args.batch_size, progress=True)
            e.update(images=len(x), steps=alone.n_steps, method=alone.method)
        result["complete_frames"] = [int(t) for t in frames]
        result["same_class_at_frame"] = [float(np.mean(alone.predictions_per_step[t - 1] == expected)) for t in frames]
        result["accuracy"] = float(np.mean(alone.predictions == y))
        with measured(stages, f"{kind}: streamed") as e:
            streamed = simulate(network, x, y, stream=True, batch_size=args.lanes, dtype=torch.float64, progress=True)
            e.update(images=len(x), steps=streamed.n_steps, lanes=args.lanes, method=streamed.method)
        result["streamed_same_class"] = float(np.mean(streamed.predictions == expected))
        result["streamed_readout_max_relative_difference"] = float(
            np.abs(streamed.stream.readout - readout.numpy()).max()) / scale
        save()
        fixed = quantize(network, "loihi2")
        with measured(stages, f"{kind}: Lava, streamed") as e:
            lava = run_lava(fixed, x[:args.n_lava], stream=True, batch_size=1, progress=True)
            e.update(images=args.n_lava, steps=lava.n_steps)
        ref = simulate(fixed, x[:args.n_lava], stream=True, batch_size=1, method="step")
        result["lava_equal_to_reference"] = equal_to_reference(lava, ref)
        result["lava_images"] = args.n_lava
        del network, fixed, lava, ref, alone, streamed
        save()


def write_report(args, payload: dict) -> None:
    lines = [f"# Pre-activation ResNet-18 (CIFAR layout), fine-tuned P={args.window}: exact conversion", "",
             "Commands: " + "; ".join(f"`{c}`" for c in payload.get("commands", [])), ""]
    if "machine" in payload:
        lines += [f"Machine: {machine_text(payload['machine'])}", ""]
    lines += ["`zoo.preact_resnet18()` (kuangliu/pytorch-cifar's PreActResNet18 layout), random initialisation, "
              "one ReLU epoch and one epoch at the window from random weights on a few thousand images (its accuracy says little), converted "
              "with binary and with graded spikes from the same model (frame reset); every check in float64 on CIFAR-10 "
              "test images, against the fine-tuned model's own class. Lava: the network quantized for loihi2, "
              "streamed, spike for spike against the reference.", ""]
    for key, entry in payload["runs"].items():
        lines += [f"## {key}: {entry.get('parameters', 0) / 1e6:.1f} M parameters; model accuracy "
                  f"{100 * entry.get('model_accuracy', float('nan')):.2f}%", "",
                  "Test images per class the model predicts: " + ", ".join(map(str, entry.get("model_classes", [])))
                  + " (the checks below compare with these classes, and the readout with the logits).", "",
                  "| spikes | latency (steps) | frame (steps) | pixel relays | frame vs P x logits (max, relative) | "
                  "same class: frame | same class at each complete frame (step) | streamed: same class | "
                  "streamed readout vs frame | Lava = reference |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for kind in KINDS:
            r = entry.get(kind, {})
            if "same_class_at_frame" not in r:
                continue
            at_frames = ", ".join(f"{100 * s:.1f}% ({t})" for s, t in zip(r["same_class_at_frame"], r["complete_frames"]))
            lava = ("-" if "lava_equal_to_reference" not in r else
                    f"**{'yes' if r['lava_equal_to_reference'] else 'NO'}** ({r['lava_images']} images)")
            lines.append(f"| {kind} | {r['latency_steps']} | {r['frame_steps']} | {r['pixel_relays']} | "
                         f"{r['frame_max_relative_difference']:.1e} | {100 * r['frame_same_class']:.1f}% | {at_frames} | "
                         f"{100 * r['streamed_same_class']:.1f}% | {r['streamed_readout_max_relative_difference']:.1e} | "
                         f"{lava} |")
        lines += ["", "| stage | wall (s) | peak RSS (GiB) |", "|---|---|---|"]
        for name, e in entry.get("stages", {}).items():
            lines.append(f"| {name} | {e['seconds']:.1f} | {e['peak_rss_gib']:.2f} |")
        lines.append("")
    write_markdown(args.out / f"{args.name}.md", lines)


if __name__ == "__main__":
    main()
