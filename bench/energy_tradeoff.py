"""Accuracy against energy: fine-tuning on the chip's integers, with energy in the loss (issue 38).

For each CIFAR ResNet and spike kind (binary P=4, graded L=8), on the 10k training subset and all
10,000 test images:

- ``float``: today's path: ``finetune`` (defaults, all epochs float), converted and quantized for
  Loihi 2 as ``bsnn convert --hw loihi2`` does (error-feedback rounding and bias correction on 300
  training images);
- ``hw lambda=l``: the same float epochs but the last ``--fold-epochs`` on the folded network with
  Loihi 2's integers in the loop (``finetune(..., hw="loihi2", energy=l)``), its integers as trained;
- ``float-fold lambda=l``: the folded epochs without the integers (``hw=None``), then quantized as
  ``float`` (calibrated rounding): the same lambda with ``hw`` off;
- ``rate r``: lava-dl's event-rate loss (``rate_target=r``, weight 1) with the integers in the loop:
  the peer lever.

Every folded run starts from one cached checkpoint of the float epochs (the same for all of a model
and kind). Each point: the trained model's accuracy (its eval forward pass: the deployed network's
frame, float64), the Loihi 2 integer network's accuracy in the reference simulator (one image at a
time, one frame: for ``hw`` runs the checkpoint is loaded, converted and quantized as ``bsnn convert``
does, written to netx and read back; its exact frame on every image, and the reference simulator on
the first 500 as a check), the share of images on which the two predict the same class, synaptic
operations, spikes and dynamic energy per image one at a time and streamed (``FrameCost`` and
``frame_energy``: ``bsnn profile``'s figures, which its run on the first 500 images confirms; Loihi 2
profile, estimates), and the paired standard error of its accuracy difference to the ``hw lambda=0``
point. Runs are kept in ``<out>/<name>.json`` as
they finish; a rerun skips them.

    python bench/energy_tradeoff.py                                    # everything (hours)
    python bench/energy_tradeoff.py --models resnet20 --kinds graded8 --lambdas 0 0.1
    python bench/energy_tradeoff.py --report-only
"""
from __future__ import annotations

import argparse
import base64
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import netx_export
from bsnn_lava import zoo
from bsnn_lava.conversion import convert
from bsnn_lava.datasets import load_npz
from bsnn_lava.profile import frame_energy, profile_run
from bsnn_lava.quantize import quantize
from bsnn_lava.sim import frame_forward, simulate
from bsnn_lava.training import finetune
from bsnn_lava.training.folded import frame_cost

from common import SHARED, add_command, machine, machine_text, read_payload, write_json, write_markdown

MEAN, STD = zoo.CIFAR_RESNET_MEAN, zoo.CIFAR_RESNET_STD
RESULTS = Path(__file__).parent / "results"
MODELS = {"resnet20": SHARED / "models" / "akamaster_resnet20-12fca82f.th",
          "resnet56": SHARED / "models" / "akamaster_resnet56-4bfd9763.th"}
#: kind -> (spikes, window = levels)
KINDS = {"binary4": ("binary", 4), "graded8": ("graded", 8)}
#: the issue's targets: dynamic energy per image streamed (uJ) within 1 point of the lambda = 0 run
ENERGY_TARGETS_UJ = {("resnet20", "graded8"): 150, ("resnet56", "graded8"): 400, ("resnet20", "binary4"): 300}
N_CALIBRATION = 300
#: Test images also run in the reference simulator and priced by ``profile_run`` (a check of the frame's figures).
PROFILED_IMAGES = 500


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument("--resnet20", type=Path, default=MODELS["resnet20"])
    parser.add_argument("--resnet56", type=Path, default=MODELS["resnet56"])
    parser.add_argument("--train-data", type=Path, default=SHARED / "data" / "cifar10_train_10k.npz")
    parser.add_argument("--test-data", type=Path, default=SHARED / "data" / "cifar10_test.npz")
    parser.add_argument("--kinds", nargs="+", choices=list(KINDS), default=list(KINDS))
    parser.add_argument("--lambdas", type=float, nargs="+", default=[0.0, 0.01, 0.03, 0.1],
                        help="energy weights of the hw runs (per 10^6 synaptic operations per image)")
    parser.add_argument("--float-lambdas", type=float, nargs="*", default=[0.0],
                        help="energy weights of the folded runs without the integers (hw off)")
    parser.add_argument("--rates", type=float, nargs="*", default=[0.1, 0.05, 0.02],
                        help="rate targets of the event-rate loss runs (the peer lever)")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--fold-epochs", type=int, default=2)
    parser.add_argument("--fold-lr", type=float, default=None, help="default: finetune's")
    parser.add_argument("--limit", type=int, help="test images (default: all)")
    parser.add_argument("--checkpoints", type=Path, default=Path("/tmp/bsnn-energy"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="energy_tradeoff")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    path = args.out / f"{args.name}.json"
    payload = read_payload(path, runs={})
    if args.report_only:
        write_report(args, payload)
        return
    add_command(payload)
    payload["machine"] = machine()
    x_train, y_train = load_npz(args.train_data)
    x_test, y_test = load_npz(args.test_data)
    x_test, y_test = (x_test[:args.limit], y_test[:args.limit]) if args.limit else (x_test, y_test)
    args.checkpoints.mkdir(parents=True, exist_ok=True)
    specs = ([("float", None)] + [(f"hw lambda={l:g}", {"hw": "loihi2", "energy": l}) for l in args.lambdas]
             + [(f"float-fold lambda={l:g}", {"energy": l}) for l in args.float_lambdas]
             + [(f"rate {r:g}", {"hw": "loihi2", "rate_target": r}) for r in args.rates])
    for model_name in args.models:
        base = zoo.load_checkpoint(getattr(args, model_name))
        for kind in args.kinds:
            for label, options in specs:
                key = f"{model_name}/{kind}/{label}"
                if key in payload["runs"]:
                    continue
                print(key, flush=True)
                payload["runs"][key] = one_run(args, model_name, base, kind, options, x_train, y_train, x_test, y_test)
                write_json(path, payload)
                write_report(args, payload)
    write_report(args, payload)


def one_run(args, model_name, base, kind, options, x_train, y_train, x_test, y_test) -> dict:
    spikes, window = KINDS[kind]
    started = time.perf_counter()
    common = dict(window=window, mean=MEAN, std=STD, spikes=spikes)
    if options is None:  # today's path: float epochs only, calibrated rounding
        checkpoint = args.checkpoints / f"{model_name}_{kind}_float_e{args.epochs}.th"
        model = finetune(base, x_train, y_train, epochs=args.epochs, checkpoint=checkpoint, resume=True, **common)
    else:
        float_phase = args.checkpoints / f"{model_name}_{kind}_float_e{args.epochs - args.fold_epochs}.th"
        if not float_phase.exists():  # the float epochs every folded run of this model and kind starts from
            finetune(base, x_train, y_train, epochs=args.epochs - args.fold_epochs, checkpoint=float_phase, **common)
        run_checkpoint = args.checkpoints / (f"{model_name}_{kind}_" + "_".join(f"{k}{v}" for k, v in options.items())
                                             + f"_e{args.epochs}f{args.fold_epochs}.th")
        if not run_checkpoint.exists():
            shutil.copyfile(float_phase, run_checkpoint)
        extra = {} if args.fold_lr is None else {"fold_lr": args.fold_lr}
        model = finetune(base, x_train, y_train, epochs=args.epochs, fold_epochs=args.fold_epochs,
                         checkpoint=run_checkpoint, resume=True, **common, **options, **extra)
    train_seconds = time.perf_counter() - started
    model_predictions = trained_predictions(model, x_test)
    calibration = x_train[:N_CALIBRATION]
    if options is not None and options.get("hw"):  # the user's path: the checkpoint, converted with its integers
        network = convert(zoo.load_checkpoint(run_checkpoint), calibration)
        network = quantize(network, "loihi2")
        rounding = "as trained"
    else:
        network = quantize(convert(model, calibration, spikes=spikes, mean=MEAN, std=STD), "loihi2",
                           calibration_images=calibration)
        rounding = f"error feedback + bias correction ({N_CALIBRATION} images)"
    with tempfile.TemporaryDirectory() as folder:  # what a user deploys: the netx file
        network = netx_export.read(netx_export.write(network, Path(folder) / "net.h5"))
    cost = frame_cost(network, torch.as_tensor(x_test).permute(0, 3, 1, 2))  # the exact frame, every image
    integer_predictions = np.asarray(cost["predictions"])
    energy = frame_energy(network, cost["synops"], cost["synops_graded"], cost["spikes"], "loihi2")
    n_run = min(len(x_test), PROFILED_IMAGES)  # the same figures from a run of the simulator and bsnn profile
    result = simulate(network, x_test[:n_run], y_test[:n_run], frames=1, steps=network.latency_steps)
    profile = profile_run(network, result, "loihi2")
    subset = frame_cost(network, torch.as_tensor(x_test[:n_run]).permute(0, 3, 1, 2))
    profiled = {"images": n_run, "synops": profile.synops, "synops_estimate": subset["synops"],
                "dynamic_uj": {m: profile.throughput[m]["energy_nj"]["dynamic"] / 1e3 for m in energy if m != "profile"},
                "dynamic_uj_estimate": {m: v for m, v in frame_energy(network, subset["synops"], subset["synops_graded"],
                                                                       subset["spikes"], "loihi2").items()
                                        if m != "profile"},
                "same_predictions": bool(np.array_equal(result.predictions_per_step[-1], integer_predictions[:n_run]))}
    labels = np.asarray(y_test)
    record = model.finetune_record
    return {
        "options": options, "spikes": spikes, "window": window, "rounding": rounding,
        "model_accuracy": float((model_predictions == labels).mean()),
        "integer_accuracy": float((integer_predictions == labels).mean()),
        "same_predictions": float((model_predictions == integer_predictions).mean()),
        "correct": pack(integer_predictions == labels),
        "synops": cost["synops"], "spikes_per_image": cost["spikes"], "profiled": profiled,
        "energy_uj": {mode: energy[mode] for mode in ("one_at_a_time", "streamed")},
        "latency_steps": network.latency_steps, "frame_steps": network.frame_steps,
        "history": [{k: h.get(k) for k in ("epoch", "loss", "accuracy", "synops", "seconds")}
                    for h in record["history"]],
        "train_seconds": train_seconds, "wall_s": time.perf_counter() - started}


@torch.no_grad()
def trained_predictions(model, images) -> np.ndarray:
    """The trained model's classes on raw test ``images`` (NHWC uint8), in float64: a clip-floor-shift
    model on normalised images, a folded network (eval: its deployed network's frame) on raw pixels."""
    x = torch.as_tensor(images).permute(0, 3, 1, 2)
    if not hasattr(model, "deployed"):
        model = model.double().eval()
        x = (x.double() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    else:
        model.eval()
    return torch.cat([model(x[i:i + 500]).argmax(1) for i in range(0, len(x), 500)]).numpy()


def pack(correct: np.ndarray) -> str:
    return base64.b64encode(np.packbits(correct.astype(bool)).tobytes()).decode()


def unpack(text: str, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))[:n].astype(bool)


def paired(a: dict, b: dict, n: int):
    """Accuracy difference a - b (points) and its paired standard error on the same images."""
    d = unpack(a["correct"], n).astype(float) - unpack(b["correct"], n).astype(float)
    return 100 * d.mean(), 100 * d.std(ddof=1) / np.sqrt(n)


def write_report(args, payload: dict) -> None:
    runs = payload["runs"]
    lines = ["# Accuracy against energy: fine-tuning on Loihi 2's integers, energy in the loss", "",
             "Commands: " + "; ".join(f"`{c}`" for c in payload.get("commands", [])), "",
             f"Machine: {machine_text(payload['machine'])}" if "machine" in payload else "", "",
             "CIFAR-10, fine-tuned on the 10k training subset, all 10,000 test images. `float`: today's path (every "
             "epoch float, then `bsnn convert --hw loihi2`: error-feedback rounding and bias correction); `hw "
             "lambda=l`: the last epochs on the folded network with Loihi 2's integers in the loop and l x the "
             "synaptic operations per image in millions in the loss, its integers as trained; `float-fold lambda=l`: "
             "the same without the integers, then rounded as `float`; `rate r`: lava-dl's event-rate loss "
             "(`rate_target=r`, weight 1) with the integers. model: the trained model's accuracy (its frame, float64); "
             "integer: the Loihi 2 integer network in the reference simulator (netx file, one frame); same: images on "
             "which the two predict the same class. Energy: `bsnn profile`'s dynamic energy per image on the Loihi 2 "
             "profile (estimates: borrowed Loihi 1 energies per operation), one image at a time and streamed (a new "
             "image every frame). d: integer accuracy minus the `hw lambda=0` point's, with its paired standard "
             "error.", "", f"![accuracy against dynamic energy per image]({args.name}.png)", ""]
    for key_prefix in sorted({"/".join(k.split("/")[:2]) for k in runs}):
        model_name, kind = key_prefix.split("/")
        mine = {k.split("/", 2)[2]: v for k, v in runs.items() if k.startswith(key_prefix + "/")}
        n = None
        reference = mine.get("hw lambda=0")
        lines += [f"## {model_name}, {kind}", "",
                  "| run | model (%) | integer (%) | same (%) | d vs hw lambda=0 (points) | synops / image (M) | spikes / "
                  "image (k) | dynamic uJ, one at a time | dynamic uJ, streamed |", "|---|---|---|---|---|---|---|---|---|"]
        for label, run in mine.items():
            n = n or (args.limit or 10000)
            d = "" if reference is None or run is reference else "{:+.2f} +- {:.2f}".format(*paired(run, reference, n))
            lines.append(f"| {label} | {100 * run['model_accuracy']:.2f} | {100 * run['integer_accuracy']:.2f} | "
                         f"{100 * run['same_predictions']:.2f} | {d} | {run['synops'] / 1e6:.2f} | "
                         f"{run['spikes_per_image'] / 1e3:.1f} | {run['energy_uj']['one_at_a_time']:.0f} | "
                         f"{run['energy_uj']['streamed']:.0f} |")
        lines += [""] + targets(model_name, kind, mine, args.limit or 10000) + [""]
    write_markdown(args.out / f"{args.name}.md", lines)
    plot(args, payload)


def targets(model_name: str, kind: str, mine: dict, n: int) -> list:
    """The issue's targets for one model and kind, each with its measured figure."""
    rows = []
    checked = [v["profiled"] for v in mine.values() if "profiled" in v]
    if checked:
        agree = all(c["same_predictions"] and abs(c["synops"] - c["synops_estimate"]) <= 1e-9 * c["synops"]
                    and all(abs(c["dynamic_uj"][m] - c["dynamic_uj_estimate"][m]) <= 1e-9 * c["dynamic_uj"][m]
                            for m in c["dynamic_uj"]) for c in checked)
        rows.append(f"- the frame's predictions, synaptic operations and energies equal a reference-simulator run's "
                    f"and bsnn profile's on the first {checked[0]['images']} test images ({len(checked)} runs): "
                    f"{'yes' if agree else 'NO'}")
    hw_runs = {k: v for k, v in mine.items() if k.startswith("hw ") or k.startswith("rate ")}
    if hw_runs:
        same = min(v["same_predictions"] for v in hw_runs.values())
        rows.append(f"- with hw: the integer network predicts what the trained model predicts on "
                    f"{100 * same:.2f}% of the images at least (every hw run); target 100%: "
                    f"{'met' if same == 1.0 else 'not met'}")
    if "float" in mine and "hw lambda=0" in mine:
        gap = 100 * (mine["hw lambda=0"]["integer_accuracy"] - mine["float"]["model_accuracy"])
        rows.append(f"- hw lambda=0 integer accuracy minus the float fine-tune's: {gap:+.2f} points; target >= -0.2: "
                    f"{'met' if gap >= -0.2 else 'not met'}")
    goal = ENERGY_TARGETS_UJ.get((model_name, kind))
    reference = mine.get("hw lambda=0")
    if goal and reference:
        within = [(v["energy_uj"]["streamed"], k) for k, v in mine.items() if k.startswith("hw ")
                  and 100 * (reference["integer_accuracy"] - v["integer_accuracy"]) <= 1.0]
        best = min(within) if within else None
        rows.append(f"- lowest streamed dynamic energy within 1 point of hw lambda=0: "
                    + ("none" if best is None else f"{best[0]:.0f} uJ ({best[1]})")
                    + f"; target <= {goal} uJ: {'met' if best and best[0] <= goal else 'not met'}")
    return rows


def plot(args, payload: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = payload["runs"]
    models = sorted({k.split("/")[0] for k in runs})
    if not models:
        return
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4.8), squeeze=False)
    colors = {"binary4": "tab:blue", "graded8": "tab:orange"}
    for ax, model_name in zip(axes[0], models):
        for kind in KINDS:
            mine = {k.split("/", 2)[2]: v for k, v in runs.items() if k.startswith(f"{model_name}/{kind}/")}
            for prefix, style, what in (("hw lambda=", "o-", "energy loss (ours)"), ("rate ", "s--", "event-rate loss "
                                                                                               "(lava-dl)")):
                points = sorted((v["energy_uj"]["streamed"], 100 * v["integer_accuracy"]) for k, v in mine.items()
                                if k.startswith(prefix))
                if prefix == "rate " and "hw lambda=0" in mine:  # the peer's curve starts at the same lambda = 0 point
                    v = mine["hw lambda=0"]
                    points = sorted(points + [(v["energy_uj"]["streamed"], 100 * v["integer_accuracy"])])
                if points:
                    ax.plot(*zip(*points), style, color=colors[kind], label=f"{kind}: {what}")
            for label, marker, what in (("float", "x", "float fine-tune, rounded after"),
                                        ("float-fold lambda=0", "+", "folded epochs without the integers")):
                if label in mine:
                    v = mine[label]
                    ax.plot(v["energy_uj"]["streamed"], 100 * v["integer_accuracy"], marker, color=colors[kind],
                            ms=10, label=f"{kind}: {what}")
        ax.set_xscale("log")
        ax.set_xlabel("dynamic energy per image, streamed (uJ, Loihi 2 profile: estimate)")
        ax.set_ylabel("accuracy of the Loihi 2 integer network (%)")
        ax.set_title(model_name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out / f"{args.name}.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
