"""Max pooling, exactly: a VGG with max pools, the same VGG with average pools, and SpikingJelly.

A CIFAR VGG (conv-BN-ReLU x2, pool, x2, pool, x2, pool, linear; widths w, 2w, 4w) is trained from
scratch on the training subset twice, once with 2x2 max pools and once with 2x2 average pools, the
same way (SGD, cosine decay, crops and flips; ``bsnn_lava.finetune(window=None)``). Each is
fine-tuned with clip-floor-shift activations for P in ``--levels`` (the toolkit's defaults), and
converted: binary spikes with window P, and graded spikes with L = P for the levels in ``--graded``.
On all test images (float64):

- the fine-tuned ANN's accuracy; its BSNN's predictions at the first complete frame (the reference
  simulator, float network) and the fixed-point (Loihi 2) network's, each compared image by image
  with what it must equal (the fine-tuned model; the fixed-point network's own integer frame);
- steps to the prediction, synaptic operations and Loihi 2 energy per inference (one frame);
- post-training (no fine-tuning): the max-pool ANN converted with P=2, and SpikingJelly 2.0.0's
  ``ann2snn`` (its max over each step's spikes, rate coding, 99.9% percentile) on the same ANN, after
  every step up to ``--steps``, with paired standard errors at fixed T.

Every finished step is kept in ``<out>/<name>.json`` (checkpoints in ``--checkpoints``), so the bench
resumes where it stopped. Writes ``<out>/<name>.{json,md,png}``.

    python bench/maxpool.py                   # everything (SpikingJelly: make peer)
    python bench/maxpool.py --report-only
"""
from __future__ import annotations

import argparse
import base64
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from common import SHARED, add_command, machine, machine_text, read_payload, write_json, write_markdown

RESULTS = Path(__file__).parent / "results"
FIXED_T = (16, 32, 64, 96, 128, 192, 256, 384, 512)


class VGG(nn.Module):
    """A small CIFAR VGG: (conv-BN-ReLU x2, 2x2 pool) x3 with widths w, 2w, 4w, then a linear layer."""

    def __init__(self, width: int, pool: str):
        super().__init__()
        layers, c_in = [], 3
        for c_out in (width, width, "P", 2 * width, 2 * width, "P", 4 * width, 4 * width, "P"):
            if c_out == "P":
                layers.append(nn.MaxPool2d(2) if pool == "max" else nn.AvgPool2d(2))
            else:
                layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
                c_in = c_out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(4 * width * 4 * 4, 10)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-data", type=Path, default=SHARED / "data" / "cifar10_train_10k.npz")
    parser.add_argument("--test-data", type=Path, default=SHARED / "data" / "cifar10_test.npz")
    parser.add_argument("--width", type=int, default=16, help="channels of the first two convolutions")
    parser.add_argument("--train-epochs", type=int, default=40)
    parser.add_argument("--train-lr", type=float, default=0.05)
    parser.add_argument("--levels", type=int, nargs="+", default=[4, 8], help="fine-tuned levels P")
    parser.add_argument("--graded", type=int, nargs="*", default=[8], help="levels also converted with graded spikes")
    parser.add_argument("--finetune-epochs", type=int, default=4)
    parser.add_argument("--n-test", type=int, default=10000)
    parser.add_argument("--n-calib", type=int, default=300)
    parser.add_argument("--steps", type=int, default=256, help="steps of the post-training runs (ours, SpikingJelly)")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--checkpoints", type=Path, default=Path("/tmp/bsnn-maxpool"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="maxpool")
    parser.add_argument("--no-peer", action="store_true", help="skip SpikingJelly")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    path = args.out / f"{args.name}.json"
    payload = read_payload(path, steps={})
    if args.report_only:
        write_report(args, payload)
        return
    add_command(payload)
    payload.update(machine=machine(), width=args.width, n_test=args.n_test, train_epochs=args.train_epochs,
                   finetune_epochs=args.finetune_epochs)

    from bsnn_lava.datasets import load_npz

    x_train, y_train = load_npz(args.train_data)
    x_test, y_test = load_npz(args.test_data)
    x_test, y_test = x_test[:args.n_test], y_test[:args.n_test]
    x_calib = x_train[:args.n_calib]
    args.checkpoints.mkdir(parents=True, exist_ok=True)

    def step(key, compute):
        """Run ``compute`` once: its result is kept under ``key`` in the JSON."""
        if key not in payload["steps"]:
            print(key, flush=True)
            started = time.perf_counter()
            payload["steps"][key] = dict(compute(), wall_s=time.perf_counter() - started)
            write_json(path, payload)
            write_report(args, payload)
        return payload["steps"][key]

    for pool in ("max", "avg"):
        ann = trained(args, pool, x_train, y_train)
        step(f"{pool}/ann", lambda: {"accuracy": accuracy(ann, x_test, y_test)})
        for levels in args.levels:
            tuned = finetuned(args, pool, ann, levels, x_train, y_train)
            spikes = ["binary"] + (["graded"] if levels in args.graded else [])
            for kind in spikes:
                step(f"{pool}/P{levels}/{kind}", lambda: exactness(args, tuned, kind, x_calib, x_test, y_test))
    if not args.no_peer:
        ann = trained(args, "max", x_train, y_train)
        ours = step("max/post-training", lambda: post_training(args, ann, x_calib, x_test, y_test))
        step("max/spikingjelly", lambda: spikingjelly(args, ann, x_calib, x_test, y_test))
        del ours
    write_json(path, payload)
    write_report(args, payload)


# --- models ----------------------------------------------------------------------------------------

def _normalisation():
    from bsnn_lava import zoo

    return dict(mean=zoo.CIFAR_RESNET_MEAN, std=zoo.CIFAR_RESNET_STD)


def trained(args, pool: str, x_train, y_train) -> nn.Module:
    """The VGG trained from scratch (checkpointed; resumes an interrupted training)."""
    from bsnn_lava import finetune

    torch.manual_seed(0)
    return finetune(VGG(args.width, pool), x_train, y_train, window=None, epochs=args.train_epochs, lr=args.train_lr,
                    checkpoint=args.checkpoints / f"vgg{args.width}_{pool}.th", resume=True, **_normalisation())


def finetuned(args, pool: str, ann: nn.Module, levels: int, x_train, y_train) -> nn.Module:
    """``ann`` fine-tuned for ``levels`` with the toolkit's defaults (checkpointed)."""
    from bsnn_lava import finetune

    return finetune(ann, x_train, y_train, window=levels, epochs=args.finetune_epochs,
                    checkpoint=args.checkpoints / f"vgg{args.width}_{pool}_P{levels}.th", resume=True,
                    **_normalisation())


def normalised(images) -> torch.Tensor:
    norm = _normalisation()
    x = torch.as_tensor(images).permute(0, 3, 1, 2).double() / 255
    return (x - torch.tensor(norm["mean"]).view(1, 3, 1, 1)) / torch.tensor(norm["std"]).view(1, 3, 1, 1)


@torch.no_grad()
def predictions(model, images, batch: int = 500) -> np.ndarray:
    """The model's classes (float64)."""
    model = model.double().eval()
    out = torch.cat([model(normalised(images[i:i + batch])).argmax(1) for i in range(0, len(images), batch)]).numpy()
    model.float()
    return out


def accuracy(model, images, labels) -> float:
    return float((predictions(model, images) == np.asarray(labels)).mean())


# --- measurements ----------------------------------------------------------------------------------

def exactness(args, tuned, kind: str, x_calib, x_test, y_test) -> dict:
    """The fine-tuned model converted (``kind`` spikes), float and fixed point: its BSNN at the first
    complete frame against the model (float) and against its own integer frame (fixed point)."""
    from bsnn_lava import convert, simulate
    from bsnn_lava.data import as_nchw
    from bsnn_lava.profile import profile_run
    from bsnn_lava.quantize import quantize
    from bsnn_lava.sim import frame_forward

    network = convert(tuned, x_calib, spikes=kind, **_normalisation())
    fixed = quantize(network, "loihi2", calibration_images=x_calib)
    expected = predictions(tuned, x_test)
    out = {"ann_accuracy": float((expected == y_test).mean()), "pooled_synapses": sum(
        s.pool is not None for layer in network.layers[1:] for s in layer.synapses)}
    for name, net in (("float", network), ("fixed", fixed)):
        first = net.latency_steps  # the first complete frame
        result = simulate(net, x_test, y_test, steps=first, batch_size=args.batch_size, dtype=torch.float64,
                          progress=True)
        predicted = result.predictions_per_step[first - 1]
        if name == "float":
            reference = expected
        else:
            reference = np.concatenate([frame_forward(net, as_nchw(x_test[i:i + 500], 3))[0].argmax(1).numpy()
                                        for i in range(0, len(x_test), 500)])
        profile = profile_run(net, result, "loihi2")
        out[name] = {"T": int(first), "accuracy": float((predicted == y_test).mean()),
                     "equal_to_reference": float((predicted == reference).mean()),
                     "synops_per_inference": float(profile.synops),
                     "energy_uj": float(profile.energy_nj["total"]) / 1e3}
    return out


def post_training(args, ann, x_calib, x_test, y_test) -> dict:
    """The max-pool ANN converted without fine-tuning (P=2, layer-wise 99.9% thresholds): correct
    after every step, and per image at the fixed T."""
    from bsnn_lava import convert, simulate

    network = convert(ann, x_calib, window=2, **_normalisation())
    result = simulate(network, x_test, y_test, steps=args.steps, batch_size=args.batch_size, progress=True)
    correct = result.predictions_per_step == np.asarray(y_test)
    return {"accuracy": correct.mean(axis=1).tolist(), "ann_accuracy": result.ann_accuracy,
            "correct_at": _at_fixed_t(args, correct), "synops": (result.n_synops_per_step.sum(axis=1)
                                                                 / len(x_test)).tolist()}


def spikingjelly(args, ann, x_calib, x_test, y_test) -> dict:
    """SpikingJelly 2.0.0 ``ann2snn`` on the same ANN (its MaxPool2d kept: the max over each step's
    spikes), the normalised image as constant input, the prediction the argmax of the summed outputs."""
    from spikingjelly.activation_based import functional
    from tqdm.auto import tqdm

    import compare

    model = compare.peer_model(ann.float().eval(), x_calib, args.batch_size)
    correct = np.zeros((args.steps, len(x_test)), dtype=bool)
    with torch.no_grad(), tqdm(total=len(x_test), desc="SpikingJelly", unit="images") as bar:
        for start in range(0, len(x_test), args.batch_size):
            x = compare.normalised(x_test[start:start + args.batch_size])
            y = torch.as_tensor(y_test[start:start + args.batch_size])
            functional.reset_net(model)
            summed = 0
            for t in range(args.steps):
                summed = summed + model(x)
                correct[t, start:start + len(x)] = (summed.argmax(1) == y).numpy()
            bar.update(len(x))
    from importlib.metadata import version

    return {"accuracy": correct.mean(axis=1).tolist(), "correct_at": _at_fixed_t(args, correct),
            "version": version("spikingjelly")}


def _at_fixed_t(args, correct: np.ndarray) -> dict:
    """Per-image correctness at the fixed T, for paired comparisons: bits packed, base64 (:func:`unpack`)."""
    return {str(t): pack(correct[t - 1]) for t in FIXED_T if t <= correct.shape[0]}


def pack(bits: np.ndarray) -> str:
    return base64.b64encode(np.packbits(np.asarray(bits, dtype=bool)).tobytes()).decode()


def unpack(text: str, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))[:n].astype(bool)


# --- report ----------------------------------------------------------------------------------------

def write_report(args, payload: dict) -> None:
    steps = payload["steps"]
    lines = ["# Max pooling, exactly: VGG with max pools vs average pools, and SpikingJelly", "",
             "Commands: " + "; ".join(f"`{c}`" for c in payload.get("commands", [])), "",
             f"Machine: {machine_text(payload['machine'])}" if "machine" in payload else "", "",
             f"VGG of width {payload.get('width')} (conv-BN-ReLU x2 + 2x2 pool, three times; widths w, 2w, 4w; a "
             f"linear head), trained from scratch for {payload.get('train_epochs')} epochs on the CIFAR-10 10k "
             f"training subset, fine-tuned {payload.get('finetune_epochs')} epochs per level count with the "
             f"toolkit's defaults; {payload.get('n_test')} test images, float64. 'equal' is the share of images "
             "whose BSNN prediction at its first complete frame equals the fine-tuned model's (float network) or "
             "the fixed-point network's own integer frame (Loihi 2 profile); energy: Loihi 2 profile, one frame.", ""]
    rows = ["| pooling | spikes | ANN (original) | fine-tuned ANN | BSNN float: T, accuracy, equal | fixed point: "
            "accuracy, equal | synops / inference | energy / inference |", "|---|---|---|---|---|---|---|---|"]
    for pool in ("max", "avg"):
        ann = steps.get(f"{pool}/ann")
        for key in sorted(k for k in steps if k.startswith(f"{pool}/P")):
            run = steps[key]
            levels, kind = key.split("/")[1][1:], key.split("/")[2]
            f, q = run["float"], run["fixed"]
            original = "" if ann is None else f"{100 * ann['accuracy']:.2f}%"
            rows.append(f"| {pool} | {kind} {'P' if kind == 'binary' else 'L'}={levels} | "
                        f"{original} | {100 * run['ann_accuracy']:.2f}% | "
                        f"{f['T']}, {100 * f['accuracy']:.2f}%, {100 * f['equal_to_reference']:.2f}% | "
                        f"{100 * q['accuracy']:.2f}%, {100 * q['equal_to_reference']:.2f}% | "
                        f"{q['synops_per_inference'] / 1e6:.2f} M | {q['energy_uj']:.0f} uJ |")
    lines += rows
    ours, peer = steps.get("max/post-training"), steps.get("max/spikingjelly")
    if ours or peer:
        from bsnn_lava.sim.compare import PairedComparison

        lines += ["", "Post-training, the max-pool ANN without fine-tuning: accuracy (%) after T steps; difference "
                      "to SpikingJelly on the same images (points, paired standard error).", "",
                  "| run | " + " | ".join(f"T={t}" for t in FIXED_T if str(t) in (ours or peer)["correct_at"]) + " |",
                  "|---|" + "---|" * len((ours or peer)["correct_at"])]
        for label, run in (("BSNN P=2, exact max pooling", ours), (f"SpikingJelly {(peer or {}).get('version', '')} "
                                                                   "ann2snn (max over spikes)", peer)):
            if run:
                lines.append(f"| {label} | " + " | ".join(f"{100 * unpack(v, payload['n_test']).mean():.2f}"
                                                           for v in run["correct_at"].values()) + " |")
        if ours and peer:
            cells = []
            for t, a in ours["correct_at"].items():
                a, b = unpack(a, payload["n_test"]), unpack(peer["correct_at"][t], payload["n_test"])
                paired = PairedComparison(len(a), np.array([a.mean()]), np.array([b.mean()]), np.array([(a & ~b).sum()]),
                                          np.array([(~a & b).sum()]), ours["ann_accuracy"])
                cells.append(f"{100 * paired.difference[0]:+.2f} +- {100 * paired.standard_error[0]:.2f}")
            lines.append("| BSNN - SpikingJelly | " + " | ".join(cells) + " |")
            lines += ["", f"ANN: {100 * ours['ann_accuracy']:.2f}%."]
    write_markdown(args.out / f"{args.name}.md", lines)
    plot(args, payload)


def plot(args, payload: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = payload["steps"]
    curves = {label: steps[key]["accuracy"] for key, label in (("max/post-training", "BSNN P=2 (exact max pooling)"),
                                                               ("max/spikingjelly", "SpikingJelly ann2snn"))
              if key in steps}
    if not curves:
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, acc in curves.items():
        ax.plot(np.arange(1, len(acc) + 1), 100 * np.asarray(acc), label=label)
    if "max/ann" in steps:
        ax.axhline(100 * steps["max/ann"]["accuracy"], color="k", ls="--", lw=1, label="ANN (max pools)")
    for key in sorted(k for k in steps if k.startswith("max/P")):
        run = steps[key]
        ax.plot(run["float"]["T"], 100 * run["float"]["accuracy"], "o",
                label=f"fine-tuned {key.split('/')[2]} {key.split('/')[1]}, first frame")
    ax.set_xlabel("time steps T")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Max-pool VGG: exact BSNN vs SpikingJelly's max over spikes")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out / f"{args.name}.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
