"""Fine-tuning recipe ablation: which levers keep low-level fine-tuning from collapsing on deep ResNets.

For each model, each level count P (binary window P; graded spikes with L = P levels convert the same
fine-tuned model, whose frame is the same clip-floor-shift ANN) and each epoch budget, fine-tune on
the training subset with one recipe at a time and score the fine-tuned clip-floor-shift ANN on the
test images: the BSNN with frame reset equals it at every complete frame (tests/test_finetune.py,
bench/results/finetune_*.md), so its accuracy is the BSNN's. Recipes (the levers):

- ``base``: the defaults before this ablation (percentile thresholds, cross-entropy, lr 0.01);
- ``ls``: least-squares threshold start (``threshold_init="least-squares"``);
- ``kd``: distillation from the original ReLU model (``teacher="original"``);
- ``ls+kd``, ``ls+mix``: both, the latter with half cross-entropy (``distill_weight=0.5``);
- ``ls+lr0.005``, ``ls+lr0.002``: the least-squares start with a lower learning rate;
- ``ls+kd+lr0.005``: least-squares start, distillation and half the learning rate;
- ``ls+lr0.002+kdft``, ``ls+lr0.002+mixft``: the defaults with distillation from the ``relu`` model
  (fine-tuned first, same epochs), all or half of the loss;
- ``ls+lr0.002+thlr0``, ``+thlr0.0002``, ``ls+lr0.01+thlr0.001``: the thresholds' own learning rate
  (0: kept at their least-squares start), below the weights';
- ``ls+lr0.001``, ``ls+lr0.002+bs32``: a lower rate; batches of 32 (four times the steps);
- ``ls+lr0.002+ch``: one threshold per channel (least-squares start per channel): the defaults since;
- ``ls+lr0.002+initft``, ``ls+lr0.002+ch+initft``: start from the ``relu`` model (fine-tuned first,
  same epochs) instead of the original, layer- or channel-wise;
- ``ls+lr0.002+prog2x``, ``+prog4x``, ``+ch+prog4x``: progressive levels, from 2P (4P) halving down
  to P over equal shares of the epochs (``start_levels``), the last also channel-wise;
- ``ls+lr0.002+ch+initft+kdft``: both: start from the ``relu`` model and distil from it;
- ``ls+lr0.002+ch+relu2``: two steps in one call (``relu_epochs=2``): 2 of the epochs fine-tune the
  ReLU model (lr 0.01, as ``relu``), the rest the window's model from it (``+initft`` at 3 epochs
  is the same with 3 + 3); ``ls+lr0.005+ch+relu3``: 3 + 3 with the window's step at lr 0.005;
- ``+s1``: the same recipe with another seed (the ReLU start too): the run-to-run spread;
- ``relu``: the ReLU model fine-tuned the same way (the baseline the issue compares with).

Also the accuracy of the clip-floor-shift model before training (each threshold start) and the wall
time per epoch. Every run is kept in ``<out>/<name>.json`` as it finishes; a rerun skips what is
there, so the ablation can go on over several sessions. Writes ``<out>/<name>.{json,md,png}``.

    python bench/finetune_recipe.py                                  # ResNet20 and ResNet56, P 2 4 8, 2 and 6 epochs
    python bench/finetune_recipe.py --models resnet20 --levels 4 --epochs 2
    python bench/finetune_recipe.py --report-only
    python bench/finetune_recipe.py --report-only --merge results/finetune_recipe_r20b.json   # a parallel run
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from bsnn_lava import zoo
from bsnn_lava.datasets import load_npz
from bsnn_lava.training import calibrate_thresholds, clip_floor_shift_model, finetune

from common import SHARED, add_command, machine, machine_text, read_payload, write_json, write_markdown

MEAN, STD = zoo.CIFAR_RESNET_MEAN, zoo.CIFAR_RESNET_STD
RESULTS = Path(__file__).parent / "results"
MODELS = {"resnet20": SHARED / "models" / "akamaster_resnet20-12fca82f.th",
          "resnet56": SHARED / "models" / "akamaster_resnet56-4bfd9763.th"}
#: the defaults before this ablation (percentile thresholds, one per layer, cross-entropy, lr 0.01)
BEFORE = {"threshold_init": "percentile", "lr": 0.01, "channelwise": False}
#: the least-squares start with one threshold per layer (the defaults between the first ablation and +ch)
LS = {"threshold_init": "least-squares", "channelwise": False}
#: recipe -> finetune() keyword arguments (teacher "relu": the ``relu`` baseline model of the same epochs)
RECIPES = {"base": BEFORE, "ls": {**BEFORE, "threshold_init": "least-squares"}, "kd": {**BEFORE, "teacher": "original"},
           "ls+kd": {**BEFORE, "threshold_init": "least-squares", "teacher": "original"},
           "ls+mix": {**BEFORE, "threshold_init": "least-squares", "teacher": "original", "distill_weight": 0.5},
           "ls+lr0.005": {**LS, "lr": 0.005},
           "ls+kd+lr0.005": {**LS, "teacher": "original", "lr": 0.005},
           "ls+lr0.002": {**LS, "lr": 0.002},
           "ls+lr0.002+kdft": {**LS, "lr": 0.002, "teacher": "relu"},
           "ls+lr0.002+mixft": {**LS, "lr": 0.002, "teacher": "relu", "distill_weight": 0.5},
           "ls+lr0.002+thlr0": {**LS, "lr": 0.002, "threshold_lr": 0.0},
           "ls+lr0.002+thlr0.0002": {**LS, "lr": 0.002, "threshold_lr": 0.0002},
           "ls+lr0.01+thlr0.001": {**LS, "lr": 0.01, "threshold_lr": 0.001},
           "ls+lr0.002+bs32": {**LS, "lr": 0.002, "batch_size": 32},
           "ls+lr0.002+initft": {**LS, "lr": 0.002, "start": "relu"},
           "ls+lr0.001": {**LS, "lr": 0.001},
           "ls+lr0.002+ch": {**LS, "lr": 0.002, "channelwise": True},
           "ls+lr0.002+ch+initft": {**LS, "lr": 0.002, "channelwise": True, "start": "relu"},
           "ls+lr0.002+prog2x": {**LS, "lr": 0.002, "start_levels": 2},
           "ls+lr0.002+prog4x": {**LS, "lr": 0.002, "start_levels": 4},
           "ls+lr0.002+ch+prog4x": {**LS, "lr": 0.002, "channelwise": True, "start_levels": 4},
           "ls+lr0.002+ch+initft+kdft": {**LS, "lr": 0.002, "channelwise": True, "start": "relu", "teacher": "relu"},
           "ls+lr0.002+ch+relu2": {**LS, "lr": 0.002, "channelwise": True, "relu_epochs": 2},
           "ls+lr0.005+ch+relu3": {**LS, "lr": 0.005, "channelwise": True, "relu_epochs": 3},
           "ls+lr0.002+ch+s1": {**LS, "lr": 0.002, "channelwise": True, "seed": 1},
           "ls+lr0.002+ch+initft+s1": {**LS, "lr": 0.002, "channelwise": True, "start": "relu", "seed": 1}}
#: the baseline: the ReLU model fine-tuned with cross-entropy at lr 0.01
RELU = {"window": None, "lr": 0.01}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument("--resnet20", type=Path, default=MODELS["resnet20"])
    parser.add_argument("--resnet56", type=Path, default=MODELS["resnet56"])
    parser.add_argument("--train-data", type=Path, default=SHARED / "data" / "cifar10_train_10k.npz")
    parser.add_argument("--test-data", type=Path, default=SHARED / "data" / "cifar10_test.npz")
    parser.add_argument("--levels", type=int, nargs="+", default=[4, 2, 8])
    parser.add_argument("--epochs", type=int, nargs="+", default=[2, 6])
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES) + ["relu"], default=list(RECIPES) + ["relu"])
    parser.add_argument("--checkpoints", type=Path, default=Path("/tmp/bsnn-finetune"),
                        help="where the ReLU baselines are kept (the teachers of the *ft recipes)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="finetune_recipe")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--merge", type=Path, nargs="+", default=[],
                        help="results of runs made in parallel under another --name: merged into this one")
    args = parser.parse_args()
    path = args.out / f"{args.name}.json"
    payload = read_payload(path, runs={}, start={})
    for other in map(json.loads, (p.read_text() for p in args.merge)):
        payload["start"].update(other["start"])
        payload["runs"].update(other["runs"])
        for command in other.get("commands", []):
            add_command(payload, command)
    if args.merge:
        write_json(path, payload)
    if args.report_only:
        write_report(args, payload)
        return
    add_command(payload)
    payload["machine"] = machine()
    x_train, y_train = load_npz(args.train_data)
    x_test, y_test = load_npz(args.test_data)
    bases = {name: zoo.load_checkpoint(getattr(args, name)) for name in args.models}
    for model_name, base in bases.items():
        key = f"{model_name}/ann"
        if key not in payload["start"]:
            payload["start"][key] = accuracy(base, x_test, y_test)
        for levels in args.levels:
            for init in ("percentile", "least-squares"):
                key = f"{model_name}/P{levels}/{init}"
                if key not in payload["start"]:
                    model = clip_floor_shift_model(base, levels, (3, 32, 32))
                    calibrate_thresholds(model, normalise(x_train[:300]), init=init)
                    payload["start"][key] = accuracy(model, x_test, y_test)
                    write_json(path, payload)
    for epochs in args.epochs:  # the short budget first, on every model
        for model_name, base in bases.items():
            for levels in args.levels:
                for recipe in args.recipes:
                    key = f"{model_name}/{'relu' if recipe == 'relu' else f'P{levels}'}/{recipe}/e{epochs}"
                    if key in payload["runs"]:
                        continue
                    print(key, flush=True)
                    payload["runs"][key] = one_run(args, model_name, base, recipe, levels, epochs, x_train, y_train,
                                                   x_test, y_test)
                    write_json(path, payload)
                    write_report(args, payload)
    write_report(args, payload)


def one_run(args, model_name, base, recipe: str, levels: int, epochs: int, x_train, y_train, x_test, y_test) -> dict:
    options = dict(RELU) if recipe == "relu" else dict(window=levels, **RECIPES[recipe])
    started = time.perf_counter()
    if recipe == "relu":
        model = relu_finetuned(args, model_name, base, epochs, x_train, y_train)
    else:
        if "start_levels" in options:  # the recipe gives it as a multiple of P
            options["start_levels"] *= levels
        kwargs = {k: v for k, v in options.items() if k != "start"}  # "start": the model fine-tuned
        if "relu" in (options.get("teacher"), options.get("start")):
            relu = relu_finetuned(args, model_name, base, epochs, x_train, y_train, options.get("seed", 0))
            if options.get("teacher") == "relu":
                kwargs["teacher"] = relu
            if options.get("start") == "relu":
                base = relu
        model = finetune(base, x_train, y_train, epochs=epochs, mean=MEAN, std=STD, **kwargs)
    record = model.finetune_record
    return {"accuracy": accuracy(model, x_test, y_test), "options": options,
            "seconds_per_epoch": [h["seconds"] for h in record["history"]], "warning": record["warning"],
            "check_accuracy": [h["accuracy"] for h in record["history"]], "wall_s": time.perf_counter() - started}


def relu_finetuned(args, model_name: str, base, epochs: int, x_train, y_train, seed: int = 0):
    """The ``relu`` baseline: ``base`` fine-tuned with :data:`RELU` for ``epochs`` (``seed``), kept in
    ``--checkpoints`` (a teacher for the ``*ft`` recipes; a rerun loads it)."""
    checkpoint = args.checkpoints / f"{model_name}_relu_e{epochs}{f'_s{seed}' if seed else ''}.th"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    return finetune(base, x_train, y_train, epochs=epochs, mean=MEAN, std=STD, checkpoint=checkpoint, resume=True,
                    seed=seed, **RELU)


def normalise(images) -> torch.Tensor:
    x = torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


@torch.no_grad()
def accuracy(model, images, labels) -> float:
    """Test accuracy of ``model`` (float64, batches of 500): for a clip-floor-shift model, the
    accuracy of its BSNN with frame reset at every complete frame."""
    model = model.double().eval()
    x = normalise(images).double()
    predicted = torch.cat([model(x[i:i + 500]).argmax(1) for i in range(0, len(x), 500)]).numpy()
    model.float()
    return float((predicted == np.asarray(labels)).mean())


def write_report(args, payload: dict) -> None:
    runs, start = payload["runs"], payload["start"]
    lines = ["# Fine-tuning recipes: ablation of the levers (CIFAR-10, 10k training subset, 10,000 test images)", "",
             "Commands: " + "; ".join(f"`{c}`" for c in payload.get("commands", [])), "",
             f"Machine: {machine_text(payload['machine'])}" if "machine" in payload else "", "",
             "Accuracy (%) of the fine-tuned clip-floor-shift ANN on all test images, which its BSNN (frame reset) "
             "equals at every complete frame. Recipes: base (percentile thresholds, cross-entropy, lr 0.01: the "
             "defaults before this ablation), ls (least-squares threshold start), kd (distillation from the original "
             "model), ls+kd, ls+mix (half cross-entropy), ls+lr0.005, ls+kd+lr0.005, ls+lr0.002 (the defaults until "
             "+ch), ls+lr0.002+kdft / +mixft (distillation from the relu model of the same epochs, all / half of the "
             "loss); +thlr<r> (the thresholds' learning rate r; 0: kept at their start), ls+lr0.001, +bs32 (batches "
             "of 32), +ch (channel-wise thresholds; ls+lr0.002+ch: the defaults since), +initft (starting from the "
             "relu model of the same epochs, so twice the epochs in all), +prog2x / +prog4x (levels from 2P / 4P "
             "halving down to P over the epochs), +initft+kdft (both: start from the relu model and distil from it), "
             "+relu2 / ls+lr0.005+ch+relu3 (relu_epochs: 2 or 3 of the epochs on the ReLU model at lr 0.01, the rest "
             "at P, in one call; 3 + 3 at lr 0.002 is +initft at 3 epochs), +s1 (another seed, the ReLU start too); "
             "relu: the ReLU model fine-tuned the same way (lr 0.01). Recipes "
             "without +ch have one threshold per layer. 'before': the clip-floor-shift model (layer-wise) before "
             "training, percentile / least-squares start.", ""]
    models = sorted({k.split("/")[0] for k in runs} | {k.split("/")[0] for k in start})
    for model_name in models:
        ann = start.get(f"{model_name}/ann")
        lines += [f"## {model_name} (original ANN {100 * ann:.2f}%)" if ann is not None else f"## {model_name}", ""]
        mine = [k for k in runs if k.startswith(model_name + "/")]
        recipes = [r for r in list(RECIPES) + ["relu"] if any(k.split("/")[2] == r for k in mine)]
        epochs = sorted({int(k.split("/")[3][1:]) for k in mine})
        levels = sorted({int(k.split("/")[1][1:]) for k in list(runs) + list(start) if k.startswith(model_name + "/P")})
        columns = [(p, e) for p in levels for e in epochs  # the budgets some window's run has
                   if any(k.startswith(f"{model_name}/P{p}/") and k.endswith(f"/e{e}") for k in mine)]
        lines += ["| recipe | " + " | ".join(f"P={p}, {e} epochs" for p, e in columns) + " |",
                  "|---|" + "---|" * len(columns)]
        before = [" / ".join("-" if b is None else f"{100 * b:.1f}" for b in
                             (start.get(f"{model_name}/P{p}/{i}") for i in ("percentile", "least-squares")))
                  for p, _ in columns]
        lines.append("| before (pct / ls) | " + " | ".join(before) + " |")
        for r in recipes:
            cells = []
            for p, e in columns:
                run = runs.get(f"{model_name}/relu/relu/e{e}" if r == "relu" else f"{model_name}/P{p}/{r}/e{e}")
                cells.append("" if run is None else f"{100 * run['accuracy']:.2f}" + (" (!)" if run["warning"] else ""))
            lines.append(f"| {r} | " + " | ".join(cells) + " |")
        seconds = [s for k, run in runs.items() if k.startswith(model_name + "/") for s in run["seconds_per_epoch"]]
        if seconds:
            lines += ["", f"Wall time per epoch: median {np.median(seconds):.0f} s (min {min(seconds):.0f}, max "
                      f"{max(seconds):.0f}; distillation adds the teacher's forward pass). (!): the run ended more than "
                      "10 points below the model it started from on its check images (the fine-tuning's warning)."]
        lines.append("")
    write_markdown(args.out / f"{args.name}.md", lines)
    plot(args, payload)


def plot(args, payload: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = payload["runs"]
    keys = sorted(k for k in runs if "/relu/" not in k)
    if not keys:
        return
    fig, ax = plt.subplots(figsize=(max(7, 0.35 * len(keys)), 4.5))
    ax.bar(range(len(keys)), [100 * runs[k]["accuracy"] for k in keys],
           color=["tab:red" if runs[k]["warning"] else "tab:blue" for k in keys])
    ax.set_xticks(range(len(keys)), keys, rotation=90, fontsize=7)
    ax.set_ylabel("test accuracy (%) of the fine-tuned ANN = its BSNN")
    ax.set_title("Fine-tuning recipes (red: the run warned of a collapse)")
    fig.tight_layout()
    fig.savefig(args.out / f"{args.name}.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
