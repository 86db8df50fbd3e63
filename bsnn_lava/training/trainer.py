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

from hw_profiles import HardwareProfile

from ..data import as_nchw, check_images
from ..files import atomic_write, check_output_path
from .activation import THRESHOLD_INITS, calibrate_thresholds, clip_floor_shift_model, clip_floor_shift_modules

#: Key of a fine-tuning checkpoint's record (window, epochs done, history...) next to its ``state_dict``.
CHECKPOINT_KEY = "bsnn_finetune"
#: Key of a checkpoint's folded network (the folded epochs' :class:`FoldedNetwork` ``state_dict``).
FOLDED_KEY = "folded_state_dict"
#: Random-crop padding (pixels, zeros) of the augmentation.
CROP_PADDING = 4
#: The share of the window's epochs that train the folded network when ``hw``, ``energy`` or
#: ``rate_target`` is set and ``fold_epochs`` is not (at least one epoch).
FOLD_SHARE = 1 / 3
#: Adam's learning rate of the folded epochs' weights (each stored relative to its output channel's
#: largest, so a step is a relative change), and the factor for thresholds and biases (relative to
#: their thresholds): the energy loss moves them most.
FOLD_LR = 5e-4
FOLD_THRESHOLD_LR_FACTOR = 10.0


def finetune(model: nn.Module, images, labels, window: Optional[int] = 4, epochs: int = 4, batch_size: int = 128,
             lr: float = 0.002, momentum: float = 0.9, weight_decay: float = 5e-4,
             mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,), pixel_max: float = 255.0,
             device: str = "cpu", augment: bool = True, seed: int = 0, percentile: float = 99.9,
             channelwise: bool = True, n_calibration: int = 300, checkpoint: Union[str, Path, None] = None,
             resume: bool = False, progress: bool = True, threshold_init: str = "least-squares",
             validation=None, n_check: int = 500, warn_drop: float = 10.0,
             teacher: Union[None, str, nn.Module] = None, distill_weight: float = 1.0,
             threshold_lr: Optional[float] = None, start_levels: Optional[int] = None, relu_epochs: int = 0,
             relu_lr: float = 0.01, hw=None, spikes: str = "binary", energy: float = 0.0,
             rate_target: Optional[float] = None, rate_weight: float = 1.0, fold_epochs: Optional[int] = None,
             fold_lr: float = FOLD_LR, headroom_bits: int = 6) -> nn.Module:
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
        hw, spikes, energy, rate_target, fold_epochs: fine-tuning for the chip. The last
            ``fold_epochs`` epochs (default, when any of ``hw``, ``energy``, ``rate_target`` is set:
            :data:`FOLD_SHARE` of the window's epochs, at least 1) train the converted network itself
            (:class:`~bsnn_lava.training.folded.FoldedNetwork`: BatchNorm and normalisation folded
            as the converter folds them, relays in place, ``spikes`` ``binary`` or ``graded``) with
            Adam at ``fold_lr`` for the weights and :data:`FOLD_THRESHOLD_LR_FACTOR` times it for
            thresholds and biases (cosine decay; every value stored relative to a fixed scale, so a
            step is a relative change); the returned model is that module, whose eval forward pass is the deployed
            network's exact frame and which ``bsnn_lava.convert`` turns into its float network. With
            ``hw`` (a profile name, path or :class:`HardwareProfile`) the forward pass computes on
            the profile's integers (scales as :func:`~bsnn_lava.quantize.quantize` chooses them with
            ``headroom_bits``, weights, thresholds and biases on their grids, straight-through
            gradients, the state clipped): ``quantize(convert(model), hw)`` then gives those integers
            as trained, and predicts what the model predicts on every image. ``energy`` (lambda)
            adds lambda x the frame's synaptic operations per image in millions
            (:class:`~bsnn_lava.training.folded.FrameCost`: as ``bsnn profile`` counts a one-frame
            run); ``rate_target`` adds lava-dl's event-rate loss, ``rate_weight`` x the sum over
            neuron layers of ``relu(mean rate - rate_target)**2`` (the rate: the layer's mean
            count over its largest, i.e. binary spikes per fire step or graded payload over L).
            Every window epoch's record (and progress line) holds the check images' synaptic
            operations, spikes and dynamic energy per image (``hw`` or Loihi 2; one frame, one
            image at a time and streamed).
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
    for name, value in (("energy", energy), ("rate_weight", rate_weight), ("fold_lr", fold_lr)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    if not fold_lr > 0:
        raise ValueError(f"fold_lr must be positive, got {fold_lr!r}")
    if rate_target is not None and not (isinstance(rate_target, (int, float)) and 0 <= rate_target <= 1):
        raise ValueError(f"rate_target must be a rate in [0, 1] (or None), got {rate_target!r}")
    if spikes not in ("binary", "graded"):
        raise ValueError(f"spikes must be 'binary' or 'graded', got {spikes!r}")
    on_chip = hw is not None or energy > 0 or rate_target is not None
    if fold_epochs is None:
        fold_epochs = max(1, round(FOLD_SHARE * window_epochs)) if on_chip and window is not None else 0
    if window is None and (on_chip or fold_epochs):
        raise ValueError("hw, energy, rate_target and fold_epochs are for a window fine-tune (a ReLU model has no "
                         "spiking network to train)")
    if isinstance(fold_epochs, bool) or int(fold_epochs) != fold_epochs or not 0 <= fold_epochs < window_epochs:
        raise ValueError(f"fold_epochs must be an integer from 0 to the window's epochs - 1 ({window_epochs - 1}), "
                         f"got {fold_epochs!r}")
    from ..quantize import grid_fields, integer_grid

    hw_spec = hw.name if isinstance(hw, HardwareProfile) else None if hw is None else str(hw)
    if hw is not None:
        hw = integer_grid(hw)  # a name or path: loads the profile now (one-line error before any training)
    schedule = None if window is None else level_schedule(int(window), window_epochs - int(fold_epochs), start_levels)
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
    if _is_folded(model):
        raise ValueError("the model is already a folded network (fine-tuned with hw, energy or rate_target); start "
                         "from the model it was fine-tuned from, or continue its run with resume=True")
    x_all, y_all = check_training_data(model, images, labels)
    if validation is None:
        check_x, check_y, check_what = x_all[:n_check], y_all[:n_check], f"the first {min(n_check, len(x_all))} training images"
    else:
        check_x, check_y = check_training_data(model, *validation)
        check_what = f"{len(check_x)} validation images"
    normalise = _Normalise(mean, std, pixel_max, x_all.shape[1])
    check_y = torch.as_tensor(check_y)
    check = lambda m: _accuracy(m, check_x, check_y, normalise)
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
              "n_images": int(x_all.shape[0]), "spikes": spikes, "fold_epochs": int(fold_epochs)}
    if fold_epochs:
        config["fold"] = {"hw": None if hw is None else hw.name, "hw_profile": hw_spec,
                          "grid": None if hw is None else grid_fields(hw), "headroom_bits": int(headroom_bits),
                          "energy": float(energy), "rate_target": None if rate_target is None else float(rate_target),
                          "rate_weight": float(rate_weight), "lr": float(fold_lr)}
    state = _load_resume(checkpoint) if resume and checkpoint is not None and Path(checkpoint).exists() else None
    config["check"] = {"images": check_what, "accuracy_before": check(model)}  # the model as given
    config["distillation"] = None if teacher is None else {
        "teacher": teacher if isinstance(teacher, str) else type(teacher).__name__, "weight": float(distill_weight)}
    if teacher is not None:
        teacher = copy.deepcopy(model if teacher == "original" else teacher).to(device).eval()
        for parameter in teacher.parameters():
            parameter.requires_grad_(False)
    float_kwargs = dict(batch_size=batch_size, momentum=momentum, weight_decay=weight_decay, mean=mean, std=std,
                        pixel_max=pixel_max, device=device, augment=augment, seed=seed, checkpoint=checkpoint,
                        resume=resume, progress=progress, validation=validation, n_check=n_check, warn_drop=warn_drop)
    if fold_epochs:
        folded_state = state is not None and "fold" in state[CHECKPOINT_KEY]
        if not folded_state:  # the float epochs first (or resumed), unless the checkpoint holds the folded ones
            model = finetune(model, images, labels, window=window, epochs=epochs - fold_epochs, lr=lr,
                             percentile=percentile, channelwise=channelwise, n_calibration=n_calibration,
                             threshold_init=threshold_init, teacher=config["distillation"] and teacher,
                             distill_weight=distill_weight, threshold_lr=threshold_lr, start_levels=start_levels,
                             relu_epochs=relu_epochs, relu_lr=relu_lr, spikes=spikes, **float_kwargs)
            config["float_phase"], state = model.finetune_record, None
        else:
            config["float_phase"] = state[CHECKPOINT_KEY].get("float_phase")
            model = _restored_float_model(model, state, config)
        torch.manual_seed(seed)
        return _train_folded(model, state, config, x_all, y_all, generator, hw, normalise, check_x, check_y,
                             check_what, teacher, distill_weight, device, checkpoint, progress, warn_drop)
    if relu_epochs and not (state is not None and state[CHECKPOINT_KEY].get("window") == config["window"]):
        # the ReLU step first (or resumed), unless the checkpoint holds the window's step already
        model = finetune(model, images, labels, window=None, epochs=relu_epochs, lr=relu_lr, **float_kwargs)
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
    history = []
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

    def loss_of(x, y):
        logits = model(normalise(x.float()).to(device))
        return logits, _task_loss(logits, y, teacher, distill_weight, lambda: normalise(x.float()).to(device)), {}

    def checked(m):
        entry = {"accuracy": check(m)}
        if window is not None:
            entry.update(_float_frame_cost(m, check_x, spikes, hw, mean, std, pixel_max))
        return entry

    what = "ReLU" if window is None else f"clip-floor-shift P={window}"
    loop = _EpochLoop(model, optimizer, x_all, y_all, generator, batch_size, augment, device, progress,
                      f"fine-tune {what}", check_what, config, warn_drop, checkpoint)
    history = loop.run(history, window_epochs - int(fold_epochs), loss_of, checked,
                       before_epoch=None if schedule is None else lambda epoch: _set_levels(model, schedule[epoch]),
                       after_step=lambda: [m.threshold.data.clamp_(min=1e-3) for _, m in clip_floor_shift_modules(model)])
    return loop.finish(history)


def _task_loss(logits, y, teacher, distill_weight: float, teacher_input):
    """Cross-entropy, mixed with the KL divergence to ``teacher``'s softmax (on ``teacher_input()``)."""
    loss = F.cross_entropy(logits, y)
    if teacher is not None:
        with torch.no_grad():
            target = F.softmax(teacher(teacher_input()), dim=1)
        distill = F.kl_div(F.log_softmax(logits, dim=1), target.to(logits.dtype), reduction="batchmean")
        loss = (1.0 - distill_weight) * loss + distill_weight * distill
    return loss


class _EpochLoop:
    """The epochs of one phase of :func:`finetune`: shuffled batches (augmented raw images), the
    cosine learning rate over the phase, the progress bar and line, the check after every epoch
    and the checkpoint after it."""

    def __init__(self, model, optimizer, x_all, y_all, generator, batch_size, augment, device, progress, what,
                 check_what, config, warn_drop, checkpoint, save=None):
        self.model, self.optimizer, self.x_all, self.y_all = model, optimizer, x_all, y_all
        self.generator, self.batch_size, self.augment, self.device = generator, batch_size, augment, device
        self.progress, self.what, self.check_what = progress, what, check_what
        self.config, self.warn_drop, self.checkpoint = config, warn_drop, checkpoint
        self.save = save or (lambda record: save_checkpoint(checkpoint, model, record, optimizer, generator))

    def run(self, history: list, epochs: int, loss_of, checked, before_epoch=None, after_step=None) -> list:
        """Train epochs ``len(history)`` to ``epochs - 1``; ``loss_of(x_raw, y)`` gives ``(logits,
        loss, postfix)`` of a batch; ``checked(model)`` the check entry of the epoch's record."""
        n_batches = math.ceil(self.x_all.shape[0] / self.batch_size)
        total_steps = epochs * n_batches
        for epoch in range(len(history), epochs):
            self.model.train()
            if before_epoch is not None:
                before_epoch(epoch)
            started = time.perf_counter()
            order = torch.randperm(self.x_all.shape[0], generator=self.generator)
            loss_sum, correct, seen = 0.0, 0, 0
            bar = tqdm(total=n_batches, desc=f"{self.what}, epoch {epoch + 1}/{epochs}", unit="batch",
                       disable=not self.progress, leave=False)
            for b in range(n_batches):
                index = order[b * self.batch_size:(b + 1) * self.batch_size]
                x = self.x_all[index]
                if self.augment:
                    x = _augment(x, self.generator)
                y = self.y_all[index].to(self.device)
                step = epoch * n_batches + b
                for group in self.optimizer.param_groups:
                    group["lr"] = group["initial_lr"] * 0.5 * (1 + math.cos(math.pi * step / total_steps))
                logits, loss, postfix = loss_of(x, y)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                if after_step is not None:
                    with torch.no_grad():
                        after_step()
                loss_sum += float(loss.detach()) * len(index)
                correct += int((logits.argmax(1) == y).sum())
                seen += len(index)
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{100 * correct / seen:.1f}%", **postfix,
                                refresh=False)
                bar.update(1)
            bar.close()
            entry = {"epoch": epoch + 1, "loss": loss_sum / seen, "train_accuracy": correct / seen,
                     "seconds": time.perf_counter() - started}
            entry.update(checked(self.model))
            history.append(entry)
            if self.progress:
                tqdm.write(f"{self.what}: epoch {epoch + 1}/{epochs} loss {entry['loss']:.3f}, train accuracy "
                           f"{100 * entry['train_accuracy']:.1f}%, on {self.check_what} {100 * entry['accuracy']:.2f}% "
                           f"(before: {100 * self.config['check']['accuracy_before']:.2f}%)"
                           f"{_cost_text(entry)}, {entry['seconds']:.0f} s")
            if self.checkpoint is not None:
                self.save(self.record(history))
        return history

    def record(self, history: list) -> dict:
        return dict(self.config, history=history, warning=collapse_warning(self.config, history, self.warn_drop))

    def finish(self, history: list) -> nn.Module:
        """The trained model in eval mode, its ``finetune_record`` set (the warning printed)."""
        self.model.eval()
        self.model.finetune_record = self.record(history)
        if self.model.finetune_record["warning"] and self.progress:
            tqdm.write(self.model.finetune_record["warning"], file=sys.stderr)
        return self.model


def _cost_text(entry: dict) -> str:
    """``, 1.23e+07 synops, 383 uJ streamed`` for an epoch entry with a frame cost, else ``""``."""
    if entry.get("synops") is None:
        return ""
    energy = entry.get("energy_uj") or {}
    streamed = energy.get("streamed")
    return f", {entry['synops']:.3g} synops/image" + ("" if streamed is None else
                                                      f", {streamed:.4g} uJ/image streamed ({energy['profile']})")


def _frame_cost_entry(network, images: torch.Tensor, hw, labels: Optional[torch.Tensor] = None) -> dict:
    """The record's frame cost of ``network`` on raw ``images``: synaptic operations, spikes and the
    dynamic energy per image (``hw``, else Loihi 2; estimates), one at a time and streamed; with
    ``labels``, the frame's ``accuracy`` too."""
    from ..profile import frame_energy
    from .folded import frame_cost

    cost = frame_cost(network, images)
    entry = {"synops": cost["synops"], "spikes": cost["spikes"],
             "energy_uj": frame_energy(network, cost["synops"], cost["synops_graded"], cost["spikes"], hw or "loihi2")}
    if labels is not None:
        entry["accuracy"] = float((torch.as_tensor(cost["predictions"]) == labels.cpu()).double().mean())
    return entry


def _float_frame_cost(model, check_x, spikes, hw, mean, std, pixel_max) -> dict:
    """The frame cost (:func:`_frame_cost_entry`) of the clip-floor-shift ``model`` converted to a
    ``spikes`` network (float: an estimate of the integer one's); empty where it does not convert."""
    from ..conversion import ConversionError, convert

    try:
        network = convert(model, check_x[:1], spikes=spikes, mean=mean, std=std, pixel_max=pixel_max)
    except (ConversionError, ValueError):
        return {}
    return _frame_cost_entry(network, check_x, hw)


def _train_folded(model, state, config, x_all, y_all, generator, hw, normalise, check_x, check_y, check_what,
                  teacher, distill_weight, device, checkpoint, progress, warn_drop) -> nn.Module:
    """The folded epochs of :func:`finetune`: the clip-floor-shift ``model`` converted and trained as a
    :class:`~bsnn_lava.training.folded.FoldedNetwork` (``state``: a folded checkpoint to resume)."""
    fold = config["fold"]
    float_model = model
    folded = fold_model(float_model, config, hw).to(device)
    named = list(folded.values.items())
    groups = [{"params": [p for n, p in named if n.startswith("w")], "initial_lr": fold["lr"]},
              {"params": [p for n, p in named if not n.startswith("w")],
               "initial_lr": fold["lr"] * FOLD_THRESHOLD_LR_FACTOR}]
    optimizer = torch.optim.Adam(groups, lr=fold["lr"])
    history = []
    if state is not None:
        if state[CHECKPOINT_KEY].get("fold") != fold:
            raise ValueError(f"{checkpoint}: was trained with fold settings {state[CHECKPOINT_KEY].get('fold')}, not "
                             f"{fold} (resume with the same settings, or start a new checkpoint)")
        folded.load_state_dict(state["folded_state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["rng"])
        history = list(state[CHECKPOINT_KEY]["history"])
    neuron_layers = [l for l in folded.skeleton.spiking_layers if l.role == "neuron"]

    def loss_of(x, y):
        logits, counts = folded.frame(x.to(device))
        loss = _task_loss(logits, y, teacher, distill_weight, lambda: normalise(x.float()).to(device))
        postfix = {}
        if fold["energy"] > 0:
            synops = folded.cost(device)(counts)[0].mean()
            loss = loss + fold["energy"] * synops.to(loss.dtype) / 1e6
            postfix["synops"] = f"{float(synops.detach()):.3g}"
        if fold["rate_target"] is not None:
            rates = [counts[l.name].mean() / l.window_count_max for l in neuron_layers]
            loss = loss + fold["rate_weight"] * sum(F.relu(r - fold["rate_target"]) ** 2 for r in rates)
        return logits, loss, postfix

    def checked(m):
        return _frame_cost_entry(m.deployed(), check_x, hw, check_y)

    def save(record):
        save_checkpoint(checkpoint, float_model, record, optimizer, generator, folded=folded)

    loop = _EpochLoop(folded, optimizer, x_all, y_all, generator, config["batch_size"], config["augment"], device,
                      progress, f"fine-tune folded P={config['window']} {config['spikes']}"
                      + (f" on {fold['hw']}'s integers" if fold["hw"] else ""), check_what, config, warn_drop,
                      checkpoint, save)
    history = loop.run(history, config["fold_epochs"], loss_of, checked,
                       after_step=lambda: [folded.values[n].data.clamp_(min=1e-2) for n in folded.values
                                           if n.startswith("t")])
    return loop.finish(history)


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


def save_checkpoint(path, model: nn.Module, record: dict, optimizer=None, generator=None, folded=None) -> Path:
    """``{'state_dict', CHECKPOINT_KEY: record, 'optimizer', 'rng'}`` written atomically
    (``torch.load(weights_only=True)`` reads it; :func:`bsnn_lava.zoo.load_checkpoint` rebuilds it).
    ``folded``: the :class:`~bsnn_lava.training.folded.FoldedNetwork` trained from ``model`` (the
    clip-floor-shift model its network was converted from), kept as ``folded_state_dict``."""
    payload = {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, CHECKPOINT_KEY: record}
    if folded is not None:
        payload[FOLDED_KEY] = {k: v.detach().cpu() for k, v in folded.state_dict().items()}
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


def restore(base: nn.Module, state: dict, record: Optional[dict], source: str, target: str) -> nn.Module:
    """The model a checkpoint holds: ``base``'s architecture as fine-tuned (:func:`rebuild`) with the
    weights of ``state``, and for a checkpoint of folded epochs its
    :class:`~bsnn_lava.training.folded.FoldedNetwork` (``record[FOLDED_KEY]``, as
    :func:`bsnn_lava.zoo.read_checkpoint` gives it). ``source``, ``target``: the checkpoint and the
    architecture, for one-line errors."""
    from ..zoo import load_weights

    model = rebuild(base, record)
    load_weights(model, state, source, target)
    if not record or "fold" not in record:
        return model
    if FOLDED_KEY not in record:
        raise ValueError(f"{source}: the record says the network was folded, but the checkpoint holds no {FOLDED_KEY}")
    folded = fold_model(model.eval(), record, _record_profile(record, source))
    try:
        folded.load_state_dict(record[FOLDED_KEY])
    except RuntimeError as err:
        raise ValueError(f"{source}: its folded network does not fit {target} ({str(err).splitlines()[0]})") from None
    folded.finetune_record = {k: v for k, v in record.items() if k != FOLDED_KEY}
    return folded.eval()


def fold_model(model: nn.Module, config: dict, hw):
    """The :class:`~bsnn_lava.training.folded.FoldedNetwork` of a clip-floor-shift ``model``: converted
    with the record's ``spikes`` and normalisation (every threshold learned: no calibration), on
    ``hw``'s grid with the record's headroom."""
    from ..conversion import convert
    from .folded import FoldedNetwork

    shape = tuple(config["input_shape"])
    network = convert(model, torch.zeros((1, *shape), dtype=torch.uint8), spikes=config["spikes"],
                      mean=config["mean"], std=config["std"], pixel_max=config["pixel_max"])
    return FoldedNetwork(network, hw, config["fold"]["headroom_bits"])


def _record_profile(record: dict, source: str):
    """The hardware profile a folded record was trained on (``None``: float), loaded from where it was
    given and checked against the grid the record kept."""
    from hw_profiles import ProfileError, load_profile

    from ..quantize import grid_fields

    fold = record["fold"]
    if fold["hw"] is None:
        return None
    try:
        hw = load_profile(fold["hw_profile"])
    except ProfileError as err:
        raise ValueError(f"{source}: was fine-tuned on the integers of hardware profile {fold['hw_profile']!r}, which "
                         f"does not load here ({err})") from None
    if grid_fields(hw) != fold["grid"]:
        raise ValueError(f"{source}: hardware profile {fold['hw_profile']!r} has changed since the fine-tuning "
                         f"({fold['grid']} then, {grid_fields(hw)} now)")
    return hw


def _restored_float_model(base: nn.Module, state: dict, config: dict) -> nn.Module:
    """The clip-floor-shift model a folded checkpoint was folded from (its ``state_dict``)."""
    model = clip_floor_shift_model(base, config["window"], tuple(config["input_shape"]), config["channelwise"])
    model.load_state_dict(state["state_dict"])
    return model.eval()


def _is_folded(model: nn.Module) -> bool:
    from .folded import FoldedNetwork

    return isinstance(model, FoldedNetwork)


def rebuild(base: nn.Module, record: Optional[dict]) -> nn.Module:
    """The architecture a fine-tuning checkpoint's ``state_dict`` fits: ``base`` itself for a ReLU
    fine-tune (or no record), else ``base`` with its ReLUs replaced as :func:`finetune` did."""
    if not record or record.get("window") is None:
        return base
    return clip_floor_shift_model(base, int(record["window"]), tuple(record["input_shape"]),
                                  bool(record.get("channelwise", False)))
