"""Recheck a finetune.py result computed before two fixes: ANN normalisation in float64, and the
float32 check of the images where the float BSNN with frame reset differs from its fine-tuned ANN.

``finetune.py`` first computed the ANNs' logits with the normalisation constants rounded to float32
(``torch.tensor(MEAN)``), while the BSNN folds them in float64: a pre-activation within ~1e-7 of a
floor boundary could then round differently. This script recomputes, from the checkpoints, every ANN
accuracy and the frame_forward comparison in float64, counts the images whose ANN prediction the fix
changes (a bound on the change of every "same prediction" figure), re-simulates the first complete
frame of each frame-reset float BSNN in float32 (as the benchmark did) and its differing images in
float64; then rewrites ``<out>/<name>.json`` (marking what it recomputed) and the report.

    python bench/finetune_float32_check.py --name finetune_resnet20
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from bsnn_lava import convert, simulate, zoo
from bsnn_lava.datasets import load_npz
from bsnn_lava.sim import frame_forward

import finetune as bench
from common import write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--name", default="finetune_resnet20")
    parser.add_argument("--checkpoints", type=Path, default=Path("/tmp/bsnn-finetune"))
    args = parser.parse_args()
    path = args.out / f"{args.name}.json"
    payload = json.loads(path.read_text())
    x_train, y_train = load_npz(payload["train_data"])
    x_test, y_test = load_npz(payload["test_data"])
    x_test, y_test = x_test[:payload["n_test"]], y_test[:payload["n_test"]]
    base = zoo.load_checkpoint(payload["model"])
    payload["ann_original"] = bench.ann_accuracy(base, x_test, y_test)
    relu = zoo.load_checkpoint(args.checkpoints / f"{Path(payload['model']).stem}_relu_e{payload['epochs']}_n{len(x_train)}.th")
    payload["ann_relu_finetuned"] = bench.ann_accuracy(relu, x_test, y_test)
    payload["rechecked_by"] = "bench/finetune_float32_check.py (ANN accuracies, frame_forward comparison, differing images)"
    print(f"ANN original {100 * payload['ann_original']:.2f}%, ReLU fine-tuned {100 * payload['ann_relu_finetuned']:.2f}%")
    for window, entry in payload["windows"].items():
        tag = f"cfs{window}{'c' if payload['channelwise'] else ''}"
        ckpt = args.checkpoints / f"{Path(payload['model']).stem}_{tag}_e{payload['epochs']}_n{len(x_train)}.th"
        model = zoo.load_checkpoint(ckpt)
        logits = bench.ann_logits(model, x_test)
        rounded = bench.ann_logits(model, x_test, mean_std_dtype=torch.float32)
        entry["ann_cfs"] = float((logits.argmax(1).numpy() == y_test).mean())
        entry["ann_predictions_changed_by_float64_normalisation"] = int((logits.argmax(1) != rounded.argmax(1)).sum())
        network = convert(model, x_train[:300], mean=bench.MEAN, std=bench.STD)
        images = torch.as_tensor(x_test).permute(0, 3, 1, 2)
        frame = torch.cat([frame_forward(network, images[i:i + 500])[0] for i in range(0, len(images), 500)])
        entry["frame_vs_ann_max_abs"] = float((frame - int(window) * logits).abs().max())
        entry["frame_vs_ann_prediction_agreement"] = float((frame.argmax(1) == logits.argmax(1)).double().mean())
        first = network.complete_frames(10 ** 6)[0]
        n = entry.get("n_sim", len(x_test))
        result = simulate(network, x_test[:n], y_test[:n], steps=first, progress=True)
        differ = np.flatnonzero(result.predictions_per_step[-1] != logits[:n].argmax(1).numpy())
        again = simulate(network, x_test[differ], y_test[differ], steps=first, dtype=torch.float64)
        run = entry["runs"]["BSNN float, frame reset"]
        run["differing_images"] = {"indices": differ.tolist(), "agree_in_float64": int(
            (again.predictions_per_step[-1] == logits[:n].argmax(1).numpy()[differ]).sum()),
            "computed_by": "bench/finetune_float32_check.py"}
        print(f"P={window}: ANN {100 * entry['ann_cfs']:.2f}%, frame vs ANN max |diff| {entry['frame_vs_ann_max_abs']:.2g}, "
              f"{entry['ann_predictions_changed_by_float64_normalisation']} ANN predictions changed by the fix; "
              f"{differ.size} images differ in float32; in float64 "
              f"{run['differing_images']['agree_in_float64']} of them agree", flush=True)
    write_json(path, payload)
    bench.write_report(args, payload)


if __name__ == "__main__":
    main()
