"""Window-aware fine-tuning: train a model whose ReLUs are clip-floor-shift activations with P levels.

Fine-tuned this way, a model converts into a bistable network whose every complete frame (one
integrate and one fire window per layer, 2P steps) equals the trained network's output; see
``docs/design.md``. ``window=None`` fine-tunes the plain ReLU model the same way: the fair baseline,
since the same epochs on the same data also adapt the ANN to that data.
"""
from __future__ import annotations

import copy
import math
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data import as_nchw, check_images
from ..files import atomic_write, check_output_path
from .activation import THRESHOLD_INITS, calibrate_thresholds, clip_floor_shift_model, clip_floor_shift_modules

#: Key of a fine-tuning checkpoint's record (window, epochs done, history...) next to its ``state_dict``.
CHECKPOINT_KEY = "bsnn_finetune"
#: Random-crop padding (pixels, zeros) of the augmentation.
CROP_PADDING = 4


def finetune(model: nn.Module, images, labels, window: Optional[int] = 4, epochs: int = 4, batch_size: int = 128,
             lr: float = 0.002, momentum: float = 0.9, weight_decay: float = 5e-4,
             mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,), pixel_max: float = 255.0,
             device: str = "cpu", augment: bool = True, seed: int = 0, percentile: float = 99.9,
             channelwise: bool = True, n_calibration: int = 300, checkpoint: Union[str, Path, None] = None,
             resume: bool = False, progress: bool = True, threshold_init: str = "least-squares",
             validation=None, n_check: int = 500, warn_drop: float = 10.0,
             teacher: Union[None, str, nn.Module] = None, distill_weight: float = 1.0,
             threshold_lr: Optional[float] = None, start_levels: Optional[int] = None, relu_epochs: int = 0,
             relu_lr: float = 0.01) -> nn.Module:
    """Fine-tune ``model`` for a bistable window of ``window`` steps; returns the trained model (eval mode).

    Args:
        images, labels: raw uint8 training images ((N, H, W, C), (N, C, H, W) or (N, H, W)) and
            class indices.
        window: P, the levels of every :class:`ClipFloorShift` that replaces a ReLU (thresholds
            start from :func:`calibrate_thresholds` with ``threshold_init`` on the first
            ``n_calibration`` images, one per channel when ``channelwise``, the default: ResNet56 at
            P=4 gains 1.7 points, ResNet20 stays within noise); ``None`` keeps the ReLUs
            (the baseline).
        relu_epochs, relu_lr: a two-step fine-tune in one call: the first ``relu_epochs`` of the
            ``epochs`` train the ReLU model (cross-entropy, learning rate ``relu_lr`` with its own
            cosine decay, no teacher), the rest the window's model started from it (thresholds
            calibrated on its activations). The record keeps the ReLU step's as ``relu_phase``; a
            ``checkpoint`` holds whichever step is under way, and ``resume`` continues either.
            Equal to ``finetune(finetune(model, window=None, epochs=relu_epochs, lr=relu_lr),
            window=window, epochs=epochs - relu_epochs)`` with the other arguments the same. 0, the
            default: the recipe ablation found no gain over the same epochs spent at the window
            (ResNet56 P=4: 3 + 3 epochs 81.32% / 80.77% with two seeds against 80.81% / 81.22%; 6 + 6
            82.38% against 12 window epochs 82.48%).
        start_levels: progressive fine-tuning: the activations start with this many levels (``window``
            times a power of 2) and halve over equal shares of the epochs down to ``window``
            (:func:`level_schedule`); the thresholds start at the least-squares (or percentile)
            choice for ``start_levels``. ``None``: ``window`` levels throughout (what the recipe
            ablation favours: 4P down to P over 6 epochs lost 2 to 2.5 points at P=4).
        threshold_init: ``least-squares`` (each layer's threshold with the least quantization error
            at P levels) or ``percentile`` (the ``percentile``-th percentile of each layer's positive
            activations, the converter's post-training choice).
        epochs, batch_size, lr, momentum, weight_decay: SGD with a cosine learning-rate decay to 0
            over all steps; weight decay on the weights only (not on biases, BatchNorm or thresholds).
            The defaults (least-squares start, lr 0.002) are what the recipe ablation favours on
            CIFAR ResNet20 and ResNet56 at P=4 (``bench/results/finetune_recipe.md``: ResNet56 with
            lr 0.01 collapses to 11% from the percentile start and to 36% at lr 0.005, and reaches
            73% after 2 epochs at lr 0.002).
        threshold_lr: the thresholds' learning rate before the decay (``None``: ``lr``; 0 keeps
            them at their start; from 0 to ``lr / 10`` the ablation found no clear difference).
        mean, std: the model's input normalisation, on pixels scaled to [0, 1] by ``pixel_max``.
        augment: random crop (zero padding of 4 pixels) and horizontal flip (images, not digits).
        checkpoint: a file written atomically after every epoch (model, optimizer, history);
            ``resume=True`` continues from it when it exists.
        validation: ``(images, labels)`` on which the model is checked (eval mode, no augmentation)
            before training and after every epoch; ``None``: the first ``n_check`` training images
            (seen in training, so a guard against collapse rather than a held-out estimate). The
            accuracies go to the progress line and the record (``check``: the images, the model's
            accuracy before fine-tuning, ``accuracy`` per epoch in ``history``).
        warn_drop: when the last epoch's check accuracy is more than this many points below the
            model's before fine-tuning, the record's ``warning`` says so in one line (printed too),
            naming what to try.
        teacher: distillation: ``"original"`` (the model as given, a frozen copy), another model
            (e.g. a ReLU model fine-tuned first), or ``None``. The loss becomes
            ``(1 - distill_weight) * cross-entropy + distill_weight * KL(teacher || model)`` on the
            softmax of the logits, the teacher seeing the same augmented batch (in eval mode).
    """
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("n_calibration", n_calibration)):
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if window is not None and (int(window) != window or window < 1):
        raise ValueError(f"window must be a positive integer (or None for ReLU), got {window!r}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    if threshold_lr is not None and not threshold_lr >= 0:
        raise ValueError(f"threshold_lr must be 0 or more (or None for lr), got {threshold_lr!r}")
    if isinstance(relu_epochs, bool) or int(relu_epochs) != relu_epochs or not 0 <= relu_epochs < epochs:
        raise ValueError(f"relu_epochs must be an integer from 0 to epochs - 1 ({epochs - 1}), got {relu_epochs!r}")
    if not relu_lr > 0:
        raise ValueError(f"relu_lr must be positive, got {relu_lr!r}")
    if window is None and (start_levels is not None or relu_epochs):
        raise ValueError("start_levels and relu_epochs are for a window fine-tune (a ReLU one has no levels)")
    window_epochs = int(epochs) - int(relu_epochs)  # the epochs of the window's model (all of a ReLU fine-tune's)
    schedule = None if window is None else level_schedule(int(window), window_epochs, start_levels)
    if threshold_init not in THRESHOLD_INITS:
        raise ValueError(f"threshold_init must be one of {', '.join(THRESHOLD_INITS)}, got {threshold_init!r}")
    if isinstance(n_check, bool) or int(n_check) != n_check or n_check < 1:
        raise ValueError(f"n_check must be a positive integer, got {n_check!r}")
    if not (teacher is None or teacher == "original" or isinstance(teacher, nn.Module)):
        raise ValueError(f"teacher must be None, 'original' or a torch module, got {teacher!r}")
    if not 0.0 <= distill_weight <= 1.0:
        raise ValueError(f"distill_weight must be in [0, 1], got {distill_weight!r}")
    if checkpoint is not None:
        check_output_path(checkpoint, "checkpoint")
    x_all, y_all = check_training_data(model, images, labels)
    if validation is None:
        check_x, check_y, check_what = x_all[:n_check], y_all[:n_check], f"the first {min(n_check, len(x_all))} training images"
    else:
        check_x, check_y = check_training_data(model, *validation)
        check_what = f"{len(check_x)} validation images"
    normalise = _Normalise(mean, std, pixel_max, x_all.shape[1])
    check = lambda m: _accuracy(m, check_x, torch.as_tensor(check_y), normalise)
    y_all = torch.as_tensor(y_all)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    config = {"window": None if window is None else int(window), "channelwise": bool(channelwise),
              "epochs": int(epochs), "batch_size": int(batch_size), "lr": float(lr),
              "threshold_lr": float(lr if threshold_lr is None else threshold_lr), "momentum": float(momentum),
              "weight_decay": float(weight_decay), "augment": bool(augment), "seed": int(seed),
              "percentile": float(percentile), "threshold_init": threshold_init, "level_schedule": schedule,
              "relu_epochs": int(relu_epochs), "relu_lr": float(relu_lr), "input_shape": list(x_all.shape[1:]),
              "mean": list(map(float, mean)), "std": list(map(float, std)), "pixel_max": float(pixel_max),
              "n_images": int(x_all.shape[0])}
    state = _load_resume(checkpoint) if resume and checkpoint is not None and Path(checkpoint).exists() else None
    config["check"] = {"images": check_what, "accuracy_before": check(model)}  # the model as given
    config["distillation"] = None if teacher is None else {
        "teacher": teacher if isinstance(teacher, str) else type(teacher).__name__, "weight": float(distill_weight)}
    if teacher is not None:
        teacher = copy.deepcopy(model if teacher == "original" else teacher).to(device).eval()
        for parameter in teacher.parameters():
            parameter.requires_grad_(False)
    if relu_epochs and not (state is not None and state[CHECKPOINT_KEY].get("window") == config["window"]):
        # the ReLU step first (or resumed), unless the checkpoint holds the window's step already
        model = finetune(model, images, labels, window=None, epochs=relu_epochs, batch_size=batch_size, lr=relu_lr,
                         momentum=momentum, weight_decay=weight_decay, mean=mean, std=std, pixel_max=pixel_max,
                         device=device, augment=augment, seed=seed, checkpoint=checkpoint, resume=resume,
                         progress=progress, validation=validation, n_check=n_check, warn_drop=warn_drop)
        config["relu_phase"], state = model.finetune_record, None
        torch.manual_seed(seed)  # the window's step as if called on its own
    elif relu_epochs:
        config["relu_phase"] = state[CHECKPOINT_KEY].get("relu_phase")
    if window is not None:
        model = clip_floor_shift_model(model, int(window), tuple(x_all.shape[1:]), channelwise)
        if state is None:
            _set_levels(model, schedule[0])
            calibrate_thresholds(model, normalise(x_all[:n_calibration].float()), percentile, init=threshold_init)
    else:
        model = copy.deepcopy(model)
    model.to(device)
    thresholds = [m.threshold for _, m in clip_floor_shift_modules(model)]
    others = [p for p in model.parameters() if all(p is not t for t in thresholds)]
    groups = [{"params": [p for p in others if p.ndim > 1], "weight_decay": weight_decay, "initial_lr": lr},
              {"params": [p for p in others if p.ndim <= 1], "weight_decay": 0.0, "initial_lr": lr},
              {"params": thresholds, "weight_decay": 0.0, "initial_lr": config["threshold_lr"]}]
    optimizer = torch.optim.SGD([g for g in groups if g["params"]], lr=lr, momentum=momentum)
    history, start_epoch = [], 0
    if state is not None:
        for key in ("window",) if window is None else ("window", "channelwise", "relu_epochs"):  # ReLU: no thresholds
            trained = state[CHECKPOINT_KEY].get(key, 0 if key == "relu_epochs" else None)  # older records: no ReLU step
            if trained != config[key]:
                raise ValueError(f"{checkpoint}: was trained with {key} {trained}, not {config[key]} (resume with the "
                                 f"same {key}, or start a new checkpoint)")
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["rng"])
        history = list(state[CHECKPOINT_KEY]["history"])
        start_epoch = len(history)
    n_batches = math.ceil(x_all.shape[0] / batch_size)
    total_steps = window_epochs * n_batches
    what = "ReLU" if window is None else f"clip-floor-shift P={window}"
    for epoch in range(start_epoch, window_epochs):
        model.train()
        if schedule is not None:
            _set_levels(model, schedule[epoch])
        started = time.perf_counter()
        order = torch.randperm(x_all.shape[0], generator=generator)
        loss_sum, correct, seen = 0.0, 0, 0
        bar = tqdm(total=n_batches, desc=f"fine-tune {what}, epoch {epoch + 1}/{window_epochs}", unit="batch",
                   disable=not progress, leave=False)
        for b in range(n_batches):
            index = order[b * batch_size:(b + 1) * batch_size]
            x = x_all[index]
            if augment:
                x = _augment(x, generator)
            x, y = normalise(x.float()).to(device), y_all[index].to(device)
            step = epoch * n_batches + b
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * 0.5 * (1 + math.cos(math.pi * step / total_steps))
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            if teacher is not None:
                with torch.no_grad():
                    target = F.softmax(teacher(x), dim=1)
                distill = F.kl_div(F.log_softmax(logits, dim=1), target, reduction="batchmean")
                loss = (1.0 - distill_weight) * loss + distill_weight * distill
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for _, module in clip_floor_shift_modules(model):  # a threshold must stay positive
                module.threshold.data.clamp_(min=1e-3)
            loss_sum += float(loss.detach()) * len(index)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(index)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{100 * correct / seen:.1f}%", refresh=False)
            bar.update(1)
        bar.close()
        history.append({"epoch": epoch + 1, "loss": loss_sum / seen, "train_accuracy": correct / seen,
                        "seconds": time.perf_counter() - started, "accuracy": check(model)})
        if progress:
            tqdm.write(f"fine-tune {what}: epoch {epoch + 1}/{window_epochs} loss {loss_sum / seen:.3f}, "
                       f"train accuracy {100 * correct / seen:.1f}%, on {check_what} "
                       f"{100 * history[-1]['accuracy']:.2f}% (before: {100 * config['check']['accuracy_before']:.2f}%), "
                       f"{history[-1]['seconds']:.0f} s")
        if checkpoint is not None:
            save_checkpoint(checkpoint, model, dict(config, history=history,
                                                    warning=collapse_warning(config, history, warn_drop)),
                            optimizer, generator)
    model.eval()
    model.finetune_record = dict(config, history=history, warning=collapse_warning(config, history, warn_drop))
    if model.finetune_record["warning"] and progress:
        tqdm.write(model.finetune_record["warning"], file=sys.stderr)
    return model


def level_schedule(window: int, epochs: int, start_levels: Optional[int] = None) -> List[int]:
    """The levels of the clip-floor-shift activations in each epoch: ``start_levels`` halved at equal
    shares of the ``epochs`` down to ``window`` (e.g. window 4, 6 epochs, start 16: 16 16 8 8 4 4);
    ``window`` throughout when ``start_levels`` is ``None``."""
    if start_levels is None:
        return [window] * epochs
    ratio = start_levels / window
    if int(start_levels) != start_levels or ratio < 1 or ratio != 2 ** round(math.log2(ratio)):
        raise ValueError(f"start_levels must be the window ({window}) times a power of 2, got {start_levels!r}")
    stages = [window * 2 ** k for k in range(round(math.log2(ratio)), -1, -1)]
    if epochs < len(stages):
        raise ValueError(f"start_levels {start_levels} halves down to window {window} in {len(stages)} stages: "
                         f"give at least {len(stages)} epochs, not {epochs}")
    return [stages[epoch * len(stages) // epochs] for epoch in range(epochs)]


def _set_levels(model: nn.Module, levels: int) -> None:
    for _, module in clip_floor_shift_modules(model):
        module.levels = levels


def collapse_warning(config: dict, history: list, warn_drop: float) -> Optional[str]:
    """One line when the last epoch's check accuracy is more than ``warn_drop`` points below the
    model's before fine-tuning, naming what to try; ``None`` otherwise."""
    before, after = config["check"]["accuracy_before"], history[-1]["accuracy"] if history else None
    if after is None or 100 * (before - after) <= warn_drop:
        return None
    tries = ["more epochs"]
    if config["window"] is not None:
        tries.append(f"more levels (--window {2 * config['window']}, or graded spikes)")
    tries.append(f"a lower learning rate (--lr {config['lr'] / 2:g})")
    if config["window"] is not None and config.get("threshold_init") != "least-squares":
        tries.append("--threshold-init least-squares")
    if config["window"] is not None and not config.get("distillation"):
        tries.append("distillation (--teacher original)")
    return (f"warning: fine-tuning ended at {100 * after:.2f}% on {config['check']['images']}, "
            f"{100 * (before - after):.1f} points below the model it started from ({100 * before:.2f}%): "
            f"try {', '.join(tries[:-1])} or {tries[-1]}")


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, normalise: "_Normalise",
              batch_size: int = 500) -> float:
    """``model``'s accuracy on raw images ``x`` (normalised a batch at a time) in eval mode, on the
    model's device (its training mode restored after)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = sum(int((model(normalise(x[i:i + batch_size].float()).to(device)).argmax(1).cpu()
                       == y[i:i + batch_size]).sum()) for i in range(0, len(x), batch_size))
    model.train(was_training)
    return correct / max(len(x), 1)


def check_training_data(model: nn.Module, images, labels):
    """``(x, y)``: raw images as (N, C, H, W) in their own dtype (uint8 pixels stay uint8; batches are
    made float as they are drawn) that fit ``model``'s input channels, and labels that are integers in
    [0, the model's classes); ``ValueError`` in one line otherwise (one forward pass of one image, in
    eval mode, gives the class count)."""
    first = next((p for p in model.parameters() if p.ndim == 4), None)
    x = as_nchw(images, None if first is None else first.shape[1], dtype=None)
    was_training = model.training
    with torch.no_grad():
        n_classes = int(model.eval()(x[:1].float()).shape[1])
    model.train(was_training)
    return x, check_images(x, labels, tuple(x.shape[1:]), n_classes)


class _Normalise:
    """Raw pixels (float) -> the model's input: ``(x / pixel_max - mean) / std`` per channel."""

    def __init__(self, mean, std, pixel_max: float, channels: int):
        for name, values in (("mean", mean), ("std", std)):
            if len(values) not in (1, channels):
                raise ValueError(f"{name} has {len(values)} values; the images have {channels} channel(s)")
        if any(float(s) <= 0 for s in std):
            raise ValueError(f"std must be positive, got {list(std)}")
        self.mean = torch.tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
        self.pixel_max = float(pixel_max)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x / self.pixel_max - self.mean) / self.std


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop after zero padding by :data:`CROP_PADDING`, and a random horizontal flip."""
    n, _, h, w = x.shape
    padded = F.pad(x, (CROP_PADDING,) * 4)
    dy = torch.randint(0, 2 * CROP_PADDING + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * CROP_PADDING + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    out = torch.empty_like(x)
    for i in range(n):
        crop = padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
        out[i] = crop.flip(-1) if flip[i] else crop
    return out


def save_checkpoint(path, model: nn.Module, record: dict, optimizer=None, generator=None) -> Path:
    """``{'state_dict', CHECKPOINT_KEY: record, 'optimizer', 'rng'}`` written atomically
    (``torch.load(weights_only=True)`` reads it; :func:`bsnn_lava.zoo.load_checkpoint` rebuilds it)."""
    payload = {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, CHECKPOINT_KEY: record}
    if optimizer is not None:
        payload["optimizer"] = optimizer.state_dict()
    if generator is not None:
        payload["rng"] = generator.get_state()
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def _load_resume(path) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or CHECKPOINT_KEY not in state or "optimizer" not in state:
        raise ValueError(f"{path}: not a fine-tuning checkpoint of bsnn finetune (cannot --resume from it)")
    return state


def rebuild(base: nn.Module, record: Optional[dict]) -> nn.Module:
    """The architecture a fine-tuning checkpoint's ``state_dict`` fits: ``base`` itself for a ReLU
    fine-tune (or no record), else ``base`` with its ReLUs replaced as :func:`finetune` did."""
    if not record or record.get("window") is None:
        return base
    return clip_floor_shift_model(base, int(record["window"]), tuple(record["input_shape"]),
                                  bool(record.get("channelwise", False)))
