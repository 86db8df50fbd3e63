"""Window-aware fine-tuning on CIFAR-10: a BSNN that equals its fine-tuned ANN after one frame.

For the model and every window P: fine-tune with clip-floor-shift activations (P levels) and, as
the fair baseline, with ReLU for the same epochs on the same data; convert the fine-tuned model
(learned thresholds, frame reset); simulate on the test images: float BSNN with and without frame
reset, the fixed-point (Loihi 2) BSNN with frame reset, and plain IF neurons on the fine-tuned
network (the QCFS baseline); report accuracy at every complete frame, T to within 0.5 / 1 point of
the original ANN and of the ReLU fine-tuned ANN, agreement with the fine-tuned ANN image by image,
and spikes, synaptic operations and Loihi 2 energy per inference at the first frame, next to the
post-training BSNN (P=2, percentile thresholds) at its own T(-1).

Writes ``<out>/<name>.{json,md,png}``; checkpoints go to ``--checkpoints`` (reused when present).

    python bench/finetune.py                                  # ResNet20, P=4, 6 epochs, 10000 images
    python bench/finetune.py --windows 2 4 8 --epochs 8
    python bench/finetune.py --model ../shared/models/akamaster_resnet56-4bfd9763.th --name finetune_resnet56
    python bench/finetune.py --report-only
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
from bsnn_lava.plots import plot_accuracy_vs_steps
from bsnn_lava.profile import profile_run
from bsnn_lava.quantize import quantize
from bsnn_lava.sim import frame_forward
from bsnn_lava.sim.result import first_crossing
from bsnn_lava.training import finetune

from common import add_resnet20_data_args, command_line, machine, machine_text, write_json, write_markdown

MEAN, STD = zoo.CIFAR_RESNET_MEAN, zoo.CIFAR_RESNET_STD


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_resnet20_data_args(parser)
    parser.add_argument("--windows", type=int, nargs="+", default=[4], help="windows P to fine-tune for")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--channelwise", action="store_true", help="one learned threshold per channel")
    parser.add_argument("--n-train", type=int, help="use only the first N training images")
    parser.add_argument("--n-test", type=int, default=10000, help="test images for the ANNs and frame_forward")
    parser.add_argument("--n-sim", type=int, help="test images for the BSNN simulations (default: --n-test)")
    parser.add_argument("--n-if", type=int, default=500, help="test images for IF (step path, slow)")
    parser.add_argument("--n-energy", type=int, default=1000, help="test images for the energy profiles")
    parser.add_argument("--frames", type=int, default=4, help="complete frames to simulate")
    parser.add_argument("--post-training-steps", type=int, default=276,
                        help="T(-1) of the post-training BSNN (bench/results/resnet20_fixed_point.md); 0: skip it")
    parser.add_argument("--checkpoints", type=Path, default=Path("/tmp/bsnn-finetune"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--name", default="finetune_resnet20")
    parser.add_argument("--frame-reset-only", action="store_true",
                        help="skip the runs without frame reset and the IF baseline (for deep models)")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--merge", action="store_true",
                        help="keep the windows of an existing <name>.json that this run does not recompute")
    args = parser.parse_args()
    if args.report_only:
        payload = json.loads((args.out / f"{args.name}.json").read_text())
        write_report(args, payload)
        return
    torch.manual_seed(0)
    args.checkpoints.mkdir(parents=True, exist_ok=True)
    x_train, y_train = load_npz(args.calib_data)
    x_train, y_train = x_train[:args.n_train], y_train[:args.n_train]
    x_test, y_test = load_npz(args.test_data)
    x_test, y_test = x_test[:args.n_test], y_test[:args.n_test]
    base = zoo.load_checkpoint(args.model)
    payload = {"benchmark": args.name, "command": command_line(), "machine": machine(), "model": str(args.model),
               "train_data": str(args.calib_data), "n_train": int(len(x_train)), "test_data": str(args.test_data),
               "n_test": int(len(x_test)), "epochs": args.epochs, "lr": args.lr, "channelwise": args.channelwise,
               "windows": {}}
    previous = args.out / f"{args.name}.json"
    if args.merge and previous.exists():
        old = json.loads(previous.read_text())
        if (old["epochs"], old["lr"], old["channelwise"], old["n_test"]) != (args.epochs, args.lr, args.channelwise,
                                                                          len(x_test)):
            parser.error(f"--merge: {previous} was computed with other epochs, lr, thresholds or test images")
        payload["windows"] = old["windows"]
    predictions = {"original": ann_logits(base, x_test).argmax(1).numpy()}
    relu = trained(args, base, None, x_train, y_train)
    predictions["relu_finetuned"] = ann_logits(relu, x_test).argmax(1).numpy()
    payload["ann_original"] = float((predictions["original"] == y_test).mean())
    payload["ann_relu_finetuned"] = float((predictions["relu_finetuned"] == y_test).mean())
    payload["relu_seconds_per_epoch"] = relu.finetune_record["history"][-1]["seconds"]
    print(f"ANN original {100 * payload['ann_original']:.2f}%, ReLU fine-tuned {100 * payload['ann_relu_finetuned']:.2f}%",
          flush=True)
    payload["post_training"] = post_training(args, base, x_train, x_test, y_test) if args.post_training_steps else None
    write_json(args.out / f"{args.name}.json", payload)
    for window in args.windows:
        payload["windows"][str(window)] = one_window(args, base, window, x_train, y_train, x_test, y_test, payload,
                                                     predictions)
        write_json(args.out / f"{args.name}.json", payload)
    write_report(args, payload)


def trained(args, base, window, x_train, y_train):
    """The fine-tuned model, from its checkpoint when a finished one exists."""
    tag = "relu" if window is None else f"cfs{window}{'c' if args.channelwise else ''}"
    lr = "" if args.lr == 0.01 else f"_lr{args.lr:g}"
    path = args.checkpoints / f"{Path(args.model).stem}_{tag}_e{args.epochs}_n{len(x_train)}{lr}.th"
    model = finetune(base, x_train, y_train, window=window, epochs=args.epochs, lr=args.lr, mean=MEAN, std=STD,
                     channelwise=args.channelwise, checkpoint=path, resume=True)
    return model


@torch.no_grad()
def ann_logits(model, images, mean_std_dtype=torch.float64) -> torch.Tensor:
    """The model's logits in float64 (``mean_std_dtype``: the normalisation constants' precision)."""
    x = torch.as_tensor(images).permute(0, 3, 1, 2).double() / 255
    mean = torch.tensor(MEAN, dtype=mean_std_dtype).view(1, 3, 1, 1)
    x = (x - mean) / torch.tensor(STD, dtype=mean_std_dtype).view(1, 3, 1, 1)
    model = model.double().eval()
    out = torch.cat([model(x[i:i + 500]) for i in range(0, len(x), 500)])
    model.float()
    return out


def ann_accuracy(model, images, labels) -> float:
    return float((ann_logits(model, images).argmax(1).numpy() == labels).mean())


def integer_frame_agreement(network, images: torch.Tensor, at_frames: np.ndarray):
    """Fraction of images, per complete frame, on which the integer network predicts its own integer
    frame (``frame_forward`` of its integer weights: the quantized ANN it computes); the reason
    (text) where ``frame_forward`` refuses the network (partial sums that could reach the state's
    limits, where the window path integrates step by step with saturation)."""
    try:
        readout = torch.cat([frame_forward(network, images[i:i + 500])[0] for i in range(0, len(images), 500)])
    except ValueError as err:
        return f"no integer frame: {err}"
    return [float(a) for a in (at_frames == readout.argmax(1).numpy()).mean(axis=1)]


def paired_difference(correct_a: np.ndarray, correct_b: np.ndarray) -> dict:
    """Accuracy of a minus accuracy of b on the same images, and its standard error (paired)."""
    d = correct_a.astype(np.float64) - correct_b.astype(np.float64)
    return {"difference": float(d.mean()), "se": float(d.std(ddof=1) / np.sqrt(d.size))}


def curve_entry(result, network, labels, reference: dict, predictions: dict, extra=None) -> dict:
    """Accuracy curve, accuracy at complete frames, T to within 0.5 / 1 point of each reference ANN,
    and the paired difference to each reference ANN (same images) at every complete frame."""
    frames = list(network.complete_frames(result.n_steps)) if network.mode == "bistable" else []
    acc = result.accuracy
    entry = {"accuracy": [float(a) for a in acc], "frames": frames,
             "accuracy_at_frames": [float(acc[t - 1]) for t in frames], "wall_s": extra, "paired_at_frames": {}}
    n = result.n_samples
    for name, level in reference.items():
        for points in (0.5, 1.0):
            entry[f"T_within_{points}_of_{name}"] = first_crossing(acc, level - points / 100)
        ann_correct = predictions[name][:n] == labels
        entry["paired_at_frames"][name] = [paired_difference(result.predictions_per_step[t - 1] == labels, ann_correct)
                                           for t in frames]
    return entry


def energy_at(network, x, y, steps: int) -> dict:
    """Per inference after ``steps`` steps on the Loihi 2 profile: accuracy, spikes, synaptic operations
    (all, of graded events, per ANN MAC), energy (and which figures are estimates), the INT8 ANN's."""
    result = simulate(network, x, y, steps=steps, progress=True)
    p = profile_run(network, result, "loihi2")
    return {"steps": steps, "n_images": int(len(x)), "accuracy": p.accuracy, "spikes": p.spikes, "synops": p.synops,
            "synops_graded": p.synops_graded, "ann_macs": p.ann_macs, "synops_per_mac": p.synops / p.ann_macs,
            "energy_uj": p.energy_nj["total"] / 1e3, "ann_int8_uj": p.ann_energy_nj["int8"] / 1e3,
            "energy_estimates": [e for e in p.energy_sources["estimates"].split(", ") if "energy" in e]}


def post_training(args, base, x_train, x_test, y_test) -> dict:
    network = convert(base, x_train[:300], window=2, mean=MEAN, std=STD)
    n = args.n_energy
    entry = energy_at(network, x_test[:n], y_test[:n], args.post_training_steps)
    print(f"post-training BSNN P=2 at T={args.post_training_steps}: {100 * entry['accuracy']:.2f}% "
          f"({n} images), {entry['energy_uj']:.0f} uJ", flush=True)
    return entry


def one_window(args, base, window, x_train, y_train, x_test, y_test, payload, predictions) -> dict:
    started = time.perf_counter()
    model = trained(args, base, window, x_train, y_train)
    record = model.finetune_record
    logits = ann_logits(model, x_test)
    entry = {"ann_cfs": float((logits.argmax(1).numpy() == y_test).mean()),
             "seconds_per_epoch": [h["seconds"] for h in record["history"]], "history": record["history"]}
    reference = {"original": payload["ann_original"], "relu_finetuned": payload["ann_relu_finetuned"]}
    print(f"P={window}: clip-floor-shift ANN {100 * entry['ann_cfs']:.2f}%", flush=True)
    bsnn = convert(model, x_train[:300], mean=MEAN, std=STD)
    steps = bsnn.complete_frames(10 ** 6)[args.frames - 1]
    images = torch.as_tensor(x_test).permute(0, 3, 1, 2)
    frame_logits = torch.cat([frame_forward(bsnn, images[i:i + 500])[0] for i in range(0, len(images), 500)])
    entry["frame_vs_ann_max_abs"] = float((frame_logits - window * logits).abs().max())
    entry["frame_vs_ann_prediction_agreement"] = float((frame_logits.argmax(1) == logits.argmax(1)).double().mean())
    n_sim = min(args.n_sim or len(x_test), len(x_test))
    x_sim, y_sim, sim_logits = x_test[:n_sim], y_test[:n_sim], logits[:n_sim]
    entry["n_sim"] = n_sim
    runs = {}
    fixed = quantize(bsnn, "loihi2", calibration_images=x_train[:300])
    variants = [("BSNN float, frame reset", bsnn), ("BSNN fixed point (Loihi 2), frame reset", fixed)]
    if not args.frame_reset_only:
        no_reset = convert(model, x_train[:300], mean=MEAN, std=STD, frame_reset=False)
        variants[1:1] = [("BSNN float, no frame reset", no_reset)]
        variants.append(("BSNN fixed point (Loihi 2), no frame reset",
                         quantize(no_reset, "loihi2", calibration_images=x_train[:300])))
    for label, network in variants:
        t0 = time.perf_counter()
        result = simulate(network, x_sim, y_sim, steps=steps, progress=True, frames="all")  # every frame
        run = curve_entry(result, network, y_sim, reference, predictions, time.perf_counter() - t0)
        at_frames = result.predictions_per_step[[t - 1 for t in run["frames"]]]
        run["agreement_with_cfs_ann_at_frames"] = [float(a) for a in (at_frames == sim_logits.argmax(1).numpy()).mean(axis=1)]
        if network.state_bits is not None:
            run["agreement_with_integer_frame_forward_at_frames"] = integer_frame_agreement(network, images[:n_sim],
                                                                                           at_frames)
        differ = np.flatnonzero(at_frames[0] != sim_logits.argmax(1).numpy())
        if network is bsnn and differ.size:  # float32 rounding at a floor boundary? the same images in float64:
            again = simulate(network, x_sim[differ], y_sim[differ], steps=run["frames"][0], dtype=torch.float64)
            run["differing_images"] = {"indices": differ.tolist(), "agree_in_float64": int(
                (again.predictions_per_step[-1] == sim_logits.argmax(1).numpy()[differ]).sum())}
        runs[label] = run
        print(f"P={window} {label}: accuracy at frames {[round(100 * a, 2) for a in run['accuracy_at_frames']]}, "
              f"agreement with the ANN {[round(100 * a, 2) for a in run['agreement_with_cfs_ann_at_frames']]} "
              f"({run['wall_s']:.0f} s)", flush=True)
    if not args.frame_reset_only:
        if_net = convert(model, x_train[:300], neuron="if", mean=MEAN, std=STD)
        n_if = min(args.n_if, n_sim)
        t0 = time.perf_counter()
        result = simulate(if_net, x_test[:n_if], y_test[:n_if], steps=steps, progress=True)
        runs[f"IF on the fine-tuned network (QCFS), {n_if} images"] = curve_entry(
            result, if_net, y_test[:n_if], reference, predictions, time.perf_counter() - t0)
    entry["runs"] = runs
    n = args.n_energy
    first = bsnn.complete_frames(steps)[0]
    once = convert(model, x_train[:300], mean=MEAN, std=STD, frames=1)
    entry["energy_first_frame"] = {
        "float, runs on": energy_at(bsnn, x_test[:n], y_test[:n], first),
        "float, one frame": energy_at(once, x_test[:n], y_test[:n], first),
        "fixed point, one frame": energy_at(quantize(once, "loihi2", calibration_images=x_train[:300]),
                                            x_test[:n], y_test[:n], first)}
    if payload["post_training"]:
        entry["energy_ratio_post_training_over_one_frame"] = (payload["post_training"]["energy_uj"] / entry[
            "energy_first_frame"]["float, one frame"]["energy_uj"])
    entry["wall_s"] = time.perf_counter() - started
    return entry


def write_report(args, payload) -> None:
    out, name = args.out, args.name
    lines = [f"# Window-aware fine-tuning: {Path(payload['model']).name}", "",
             f"Command: `{payload['command']}`  ", f"Machine: {machine_text(payload['machine'])}  ",
             f"Training: {payload['n_train']} images of {Path(payload['train_data']).name}, {payload['epochs']} epochs, "
             f"SGD lr {payload['lr']} cosine, crop + flip{', channel-wise thresholds' if payload['channelwise'] else ''}. "
             f"Test: {payload['n_test']} images.", "",
             "| network | accuracy |", "|---|---|",
             f"| ANN, original | {100 * payload['ann_original']:.2f}% |",
             f"| ANN, ReLU fine-tuned (same epochs, same data) | {100 * payload['ann_relu_finetuned']:.2f}% |"]
    for window, entry in payload["windows"].items():
        lines.append(f"| ANN, clip-floor-shift P={window} | {100 * entry['ann_cfs']:.2f}% |")
    pt = payload["post_training"]
    lines += [] if pt is None else ["", f"Post-training BSNN (P=2, percentile thresholds) at T={pt['steps']} on {pt['n_images']} images: "
              f"{100 * pt['accuracy']:.2f}%, {pt['spikes']:.0f} spikes, {pt['synops'] / 1e6:.1f} M synaptic operations, "
              f"{pt['energy_uj']:.0f} uJ per inference on Loihi 2 (INT8 ANN: {pt['ann_int8_uj']:.1f} uJ).", ""]
    curves = {}
    for window, entry in payload["windows"].items():
        lines += [f"## P = {window}", "",
                  f"Training: {', '.join(f'{s:.0f}' for s in entry['seconds_per_epoch'])} s per epoch. "
                  f"One frame computed without time (`sim.frame_forward`) equals {window} x the fine-tuned ANN's logits "
                  f"to {entry['frame_vs_ann_max_abs']:.1e} and gives its prediction on "
                  f"{100 * entry['frame_vs_ann_prediction_agreement']:.2f}% of the images.", "",
                  f"BSNN runs on the first {entry.get('n_sim', payload['n_test'])} test images.", "",
                  "| run | accuracy at complete frames (T) | same prediction as the fine-tuned ANN | T within 1 / 0.5 of original ANN | T within 1 / 0.5 of ReLU fine-tuned | minus original ANN, points (paired SE), per frame | minus ReLU fine-tuned ANN, points (paired SE), per frame |",
                  "|---|---|---|---|---|---|---|"]
        for label, run in entry["runs"].items():
            at = ", ".join(f"{100 * a:.2f} ({t})" for a, t in zip(run["accuracy_at_frames"], run["frames"]))
            agree = ", ".join(f"{100 * a:.2f}" for a in run.get("agreement_with_cfs_ann_at_frames", [])) or "-"
            if "differing_images" in run:
                d = run["differing_images"]
                agree += (f" ({len(d['indices'])} images differ in float32; simulated in float64, "
                          f"{d['agree_in_float64']} of them agree)")
            own = run.get("agreement_with_integer_frame_forward_at_frames")
            if own is not None:
                agree += " (the integer network's own frame_forward: " + (
                    own if isinstance(own, str) else ", ".join(f"{100 * a:.2f}" for a in own)) + ")"
            paired = [", ".join(f"{100 * p['difference']:+.2f} ({100 * p['se']:.2f})" for p in
                                run.get("paired_at_frames", {}).get(name, [])) or "-"
                      for name in ("original", "relu_finetuned")]
            lines.append(f"| {label} | {at or '-'} | {agree} | {run['T_within_1.0_of_original']} / "
                         f"{run['T_within_0.5_of_original']} | {run['T_within_1.0_of_relu_finetuned']} / "
                         f"{run['T_within_0.5_of_relu_finetuned']} | {paired[0]} | {paired[1]} |")
            curves[f"P={window} {label}"] = np.array(run["accuracy"])
        lines += ["", "Per inference at the first complete frame ('runs on': every layer keeps processing frames "
                  "while the pipeline fills; 'one frame': `convert(..., frames=1)`, every layer processes the image "
                  "once and stops):", "", "| network | T | images | accuracy | spikes | synaptic ops | Loihi 2 energy |",
                  "|---|---|---|---|---|---|---|"]
        for kind, e in entry["energy_first_frame"].items():
            lines.append(f"| {kind} | {e['steps']} | {e['n_images']} | {100 * e['accuracy']:.2f}% | {e['spikes']:.0f} | "
                         f"{e['synops'] / 1e6:.1f} M | {e['energy_uj']:.0f} uJ |")
        if pt is not None:
            lines.append(f"| post-training BSNN P=2 | {pt['steps']} | {pt['n_images']} | {100 * pt['accuracy']:.2f}% | "
                         f"{pt['spikes']:.0f} | {pt['synops'] / 1e6:.1f} M | {pt['energy_uj']:.0f} uJ |")
            lines.append(f"\nEnergy: post-training BSNN at its T(-1) / fine-tuned one-frame BSNN = "
                         f"{entry['energy_ratio_post_training_over_one_frame']:.1f}x.\n")
    write_markdown(out / f"{name}.md", lines)
    if curves:
        plot_accuracy_vs_steps(curves, payload["ann_original"], out / f"{name}.png",
                               title=f"{Path(payload['model']).stem}: fine-tuned BSNN, accuracy vs T")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
