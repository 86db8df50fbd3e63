"""The ``bsnn`` command line.

Exit codes: 0 success; 1 an unexpected internal error (please report it); 2 bad input (a file,
a flag, a model or data that cannot be used), with a one-line message naming what is wrong;
130 / 143 stopped by SIGINT (Ctrl-C) / SIGTERM, after releasing everything the run held.

Every argument is checked before any long work starts: output paths, hardware profiles, the model,
the data and whether it fits the network.
"""
from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

from .distributed import is_main_process
from .interrupts import Interrupted, signals_raise_interrupted

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT = 0, 1, 2

OUTPUT_RULE = ("output files (--out, --json, --html): the folder must exist (it is not created); a file is "
               "written completely or not at all, replacing an existing one")

EPILOG = f"""examples (README.md's command table; each command's --help has its own):
  bsnn demo                                                   # the end-to-end demo (digits)
  bsnn convert resnet20.th --calib train.npz --hw loihi2 --out r20.h5   # checkpoint -> netx HDF5
  bsnn inspect r20.h5                                         # layer table and provenance
  bsnn check r20.h5 --hw loihi1                               # layers -> cores; exit 2 if it does not fit
  bsnn simulate r20.h5 --data test.npz --steps 256 --limit 500 --json result.json
  bsnn simulate r20.h5 --data test.npz --steps 80 --limit 2 --backend lava     # the same file in Lava, bit-exact
  bsnn profile r20.h5 --data test.npz --steps 256 --limit 100 --hw loihi2 --html report.html
  bsnn finetune resnet20.th --data train.npz --window 4 --epochs 6 --out r20_p4.th   # exact after one frame
  bsnn finetune resnet20.th --data train.npz --window 8 --spikes graded --hw loihi2 --energy 0.03 --out r20_g8e.th
  bsnn convert r20_p4.th --calib train.npz --hw loihi2 --out r20_p4.h5     # learned thresholds, frame reset
  bsnn convert r20_p4.th --calib train.npz --hw loihi2 --spikes graded --out r20_g4.h5 # Loihi 2 graded spikes
  bsnn convert r20_g8e.th --calib train.npz --out r20_g8e.h5   # the integers as trained (--hw from the checkpoint)
  bsnn simulate r20_g4.h5 --data test.npz --stream --batch-size 32 --backend lava   # a new image every frame
  bsnn profile r20_g4.h5 --data test.npz --stream --limit 1000 --hw loihi2 --html stream.html
  bsnn profile r20_p4.h5 r20_g4.h5 r20_g8e.h5 --data test.npz --limit 1000 --hw loihi2 --html tradeoff.html
  torchrun --standalone --nproc-per-node 4 -m bsnn_lava simulate r20.h5 --data test.npz --steps 512 --json r.json
  bsnn simulate r34.h5 --data /data/imagenet/val --steps 64 --limit 100   # a folder of class subfolders
  bsnn convert resnet50.pth --factory bsnn_lava.zoo:imagenet_resnet50 --calib /data/imagenet/val --hw loihi2 --out r50.h5

{OUTPUT_RULE}.
exit codes: 0 success, 1 internal error, 2 bad input (one-line message), 130/143 interrupted (SIGINT/SIGTERM)"""


BACKENDS = ("torch", "lava", "loihi2")
BACKEND_HELP = ("torch: reference simulator (default); lava: Lava's CPU simulator (bit-accurate fixed_pt for "
                "quantized networks), --batch-size images at a time (default 1); loihi2: Intel's Loihi 2 through lava-loihi (INRC only, "
                "see docs/loihi.md)")

#: Adam's learning rate of folded epochs (bsnn_lava.training.trainer.FOLD_LR; not imported, to keep --help fast).
FOLD_LR_DEFAULT = 5e-4
#: Images per batch of the reference simulator when --batch-size is not given.
TORCH_BATCH_SIZE = 100
#: Images a profile's HTML raster streams through one lane (``bsnn profile --stream``).
RASTER_STREAM_IMAGES = 4


class UsageError(Exception):
    """Bad input detected by the CLI itself."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2), like every other bad input."""

    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (1 or more), got {value}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}") from None
    if not (value >= 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def frame_limit(text: str):
    """argparse type: an integer >= 1, or ``all`` (no frame limit)."""
    if text.strip().lower() == "all":
        return "all"
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'all', got {text!r}") from None


def _check_outputs(args, *flags: str) -> None:
    """Every given output flag names a file that can be written (before any work starts)."""
    from .files import check_output_path

    for flag in flags:
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            try:
                check_output_path(value, flag)
            except ValueError as err:
                raise UsageError(str(err)) from None


def _load_hw(spec: str, flag: str = "--hw"):
    """A hardware profile by name or path; a :class:`UsageError` naming ``flag`` if it does not load."""
    from hw_profiles import ProfileError, load_profile

    try:
        return load_profile(spec)
    except ProfileError as err:
        raise UsageError(f"{flag}: {err}") from None


def _load_data(spec: str, flag: str, limit=None, split: str = "test", image_size: int = 224, streamed: bool = False):
    """``(x, y)`` of a data spec, cut to ``limit`` images; errors name the flag. A folder of images
    gives ``image_size`` crops, left undecoded (an ImageFolder) when ``streamed``, else decoded."""
    import numpy as np

    from .datasets import DataError, load_dataset

    try:
        x, y = load_dataset(spec, split=split, image_size=image_size)
        x, y = (x[:limit], y[:limit]) if limit else (x, y)
        if not streamed:
            x = np.asarray(x)
    except DataError as err:
        raise UsageError(f"{flag}: {err}") from None
    return x, y


def _write_json(path, payload) -> None:
    import json

    from .files import write_text_atomic

    write_text_atomic(path, json.dumps(payload, indent=1))


def _cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(Path(args.out), steps=args.steps, window=args.window, seed=args.seed, lava_samples=args.lava_samples)
    return EXIT_OK


def _load_model(args):
    """The model to convert and its input normalisation (mean, std on pixels in [0, 1]): --mean/--std,
    else a CIFAR ResNet checkpoint's (the ImageNet statistics), a --factory model's declared
    ``input_normalisation`` (bsnn_lava.zoo's ImageNet layouts), or mean 0 and std 1."""
    from . import zoo

    if args.factory:
        model, declared = _factory_model(args)
        mean, std = declared or ((0.0,), (1.0,))
    else:
        if not args.model:
            raise UsageError("give a CIFAR ResNet checkpoint, or --factory module:function for another model")
        model = zoo.load_checkpoint(args.model)
        mean, std = zoo.CIFAR_RESNET_MEAN, zoo.CIFAR_RESNET_STD
    mean = tuple(args.mean) if args.mean else mean
    std = tuple(args.std) if args.std else std
    return model.eval(), mean, std


def _factory_model(args):
    """``(model, its declared normalisation or None)``: ``--factory module:function`` called, with the
    checkpoint's weights (or, with ``--random-weights``, none). The current folder is searched first,
    as ``python -m`` does. A model declares the normalisation it expects with an attribute
    ``input_normalisation = (mean, std)`` (per channel, pixels in [0, 1])."""
    import importlib

    import torch.nn as nn

    from . import zoo

    module_name, _, attr = args.factory.partition(":")
    if not module_name or not attr:
        raise UsageError(f"--factory {args.factory}: use module.path:function (a function returning the nn.Module)")
    if str(Path.cwd()) not in sys.path and "" not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except ImportError as err:
        raise UsageError(f"--factory {args.factory}: cannot import {module_name!r} ({err}); it must be a module in "
                         "the current folder or an installed package") from None
    except AttributeError:
        raise UsageError(f"--factory {args.factory}: module {module_name!r} has no attribute {attr!r}") from None
    if not args.model and not args.random_weights:
        raise UsageError(f"--factory {args.factory} without a checkpoint would convert the model's random initial "
                         "weights: give the checkpoint (bsnn convert CKPT --factory ...), or --random-weights to do "
                         "that on purpose")
    try:
        model = factory()
    except Exception as err:
        raise UsageError(f"--factory {args.factory}: calling {attr}() failed: {type(err).__name__}: {err}") from None
    if not isinstance(model, nn.Module):
        raise UsageError(f"--factory {args.factory}: {attr}() returned {type(model).__name__}, not a torch nn.Module")
    declared = getattr(model, "input_normalisation", None)
    if declared is not None:
        try:
            mean, std = (tuple(float(v) for v in values) for values in declared)
        except (TypeError, ValueError):
            raise UsageError(f"--factory {args.factory}: the model's input_normalisation must be (mean, std), each "
                             f"a sequence of numbers, got {declared!r}") from None
        declared = (mean, std)
    if args.model:
        from .training import restore

        state, record = zoo.read_checkpoint(args.model)
        model = restore(model, state, record, str(args.model), f"the model of {args.factory}"
                        + (" fine-tuned by bsnn finetune" if record else ""))
    return model, declared


def _model_channels(model):
    first = next((p for p in model.parameters() if p.ndim == 4), None)
    return None if first is None else int(first.shape[1])


def _cmd_convert(args) -> int:
    import netx_export

    from .conversion import convert
    from .data import as_nchw

    _check_outputs(args, "--out")
    hw = _load_hw(args.hw) if args.hw else None
    model, mean, std = _load_model(args)
    x_calib, _ = _load_data(args.calib, "--calib", args.n_calib, split="train")
    try:
        as_nchw(x_calib[:1], _model_channels(model))
    except ValueError as err:
        raise UsageError(f"--calib {args.calib}: {err}") from None
    from .quantize import TRAINED_INTEGERS
    from .training import clip_floor_shift_modules
    from .training.folded import FoldedNetwork

    learned = clip_floor_shift_modules(model)
    source = ("the network trained folded (bsnn finetune --hw/--energy/--rate-target)" if isinstance(model, FoldedNetwork)
              else f"learned thresholds of {len(learned)} clip-floor-shift layers" if learned else
              f"calibrating thresholds on {len(x_calib)} images")
    print(f"converting {type(model).__name__} to a {args.neuron} network; {source}", file=sys.stderr)
    network = convert(model, x_calib, neuron=args.neuron, window=args.window, v_init=args.v_init,
                      percentile=args.percentile, channelwise=args.channelwise, mean=mean, std=std,
                      frame_reset=args.frame_reset, frames=args.frames, spikes=args.spikes, levels=args.levels,
                      progress=True)
    trained = network.provenance.get(TRAINED_INTEGERS)
    if trained is not None and hw is None:  # its integers are what was trained: write those
        hw = _load_hw(trained["profile"], f"the profile {args.model} was fine-tuned on (give --hw)")
    if hw is not None:
        from .quantize import quantize

        rounding = ("the integers as trained (bsnn finetune --hw)" if trained is not None else "rounding to nearest"
                    if args.plain_rounding else f"error-feedback rounding and bias correction on {len(x_calib)} images")
        print(f"quantizing for {hw.name} ({rounding})", file=sys.stderr)
        network = quantize(network, hw, headroom_bits=args.headroom_bits,
                           max_exponent=0 if args.netx_compatible else None,
                           calibration_images=None if args.plain_rounding or trained is not None else x_calib,
                           progress=True)
    path = netx_export.write(network, args.out, mode="netx" if args.netx_compatible else "bsnn")
    kind = f"integer ({hw.name})" if hw is not None else "float"
    frame = ""
    if network.mode == "bistable":
        frame = (f", first complete frame at T={network.latency_steps}"
                 + (", frame reset" if network.frame_reset else "")
                 + (f", stops after {args.frames} frame(s)" if args.frames else ""))
    spikes = f"binary spikes, P={network.window_steps}" if network.spikes == "binary" else \
        f"graded spikes up to {network.levels} (1-step windows)"
    if network.pixel_relays:
        spikes += f", {len(network.pixel_relays)} relays carrying the pixels to deeper layers (8-bit graded)"
    print(f"wrote {path}: {len(network.layers)} layers, {kind} {args.neuron} network, {spikes}, "
          f"pipeline fill {network.readout.schedule.offset_steps} steps{frame}")
    if hw is not None and hw.graded_payload_bits >= (16).bit_length() and not learned and trained is None \
            and network.spikes == "binary":
        print(f"hint: {hw.name} carries graded spikes; without fine-tuning, --spikes graded --levels 16 --channelwise "
              f"{GRADED_POST_TRAINING_EVIDENCE}", file=sys.stderr)
    return EXIT_OK


#: What the whole-test-set comparison measured for graded post-training conversion (bench/compare.py).
GRADED_POST_TRAINING_EVIDENCE = ("came within 1 point of the ANN at T=44 on ResNet20 and T=118 on ResNet56, binary "
                                 "channel-wise P=2 at T=235 and T=439 (all 10,000 CIFAR-10 test images, "
                                 "bench/results/compare_resnet20.md, compare_resnet56.md)")


def _cmd_finetune(args) -> int:
    import torch

    from .sim.reference import check_device
    from .training import finetune
    from .training.trainer import check_training_data

    _check_outputs(args, "--out")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    check_device(device)
    model, mean, std = _load_model(args)
    x, y = _load_data(args.data, "--data", args.limit, split="train")
    validation = _load_data(args.validation, "--validation", args.check) if args.validation else None
    for flag, spec, (images, labels) in (("--data", args.data, (x, y)),
                                         ("--validation", args.validation, validation or (None, None))):
        try:
            if images is not None:
                check_training_data(model, images, labels)
        except ValueError as err:
            raise UsageError(f"{flag} {spec}: {err}") from None
    teacher = _teacher(args)
    hw = _load_hw(args.hw) if args.hw else None
    on_chip = [text for flag, text in ((args.hw, f"on {args.hw}'s integers"),
                                       (args.energy, f"energy {args.energy:g} per 10^6 synaptic operations"),
                                       (args.rate_target is not None, f"event-rate target {args.rate_target}")) if flag]
    if args.relu and (on_chip or args.fold_epochs):
        raise UsageError("--hw, --energy, --rate-target and --fold-epochs train the spiking network of a window "
                         "fine-tune; a --relu fine-tune has none")
    what = "ReLU (baseline)" if args.relu else f"clip-floor-shift activations, P={args.window}" + (
        f", after {args.relu_epochs} ReLU epoch(s)" if args.relu_epochs else "") + (
        f"; the last epochs folded ({args.spikes} spikes), {', '.join(on_chip)}" if on_chip or args.fold_epochs else "")
    print(f"fine-tuning {type(model).__name__} with {what} on {len(x)} images for {args.epochs} epoch(s) on {device}; "
          f"checkpoint after every epoch: {args.out}", file=sys.stderr)
    finetune(model, x, y, window=None if args.relu else args.window, epochs=args.epochs, batch_size=args.batch_size,
             lr=args.lr, mean=mean, std=std, device=device, augment=not args.no_augment, seed=args.seed,
             percentile=args.percentile, channelwise=args.channelwise, checkpoint=args.out, resume=args.resume,
             threshold_init=args.threshold_init, validation=validation, n_check=args.check,
             teacher=teacher, distill_weight=args.distill_weight, threshold_lr=args.threshold_lr,
             start_levels=args.start_levels, relu_epochs=args.relu_epochs, relu_lr=args.relu_lr, hw=hw,
             spikes=args.spikes, energy=args.energy, rate_target=args.rate_target, rate_weight=args.rate_weight,
             fold_epochs=args.fold_epochs, fold_lr=args.fold_lr, headroom_bits=args.headroom_bits)
    factory = f" --factory {args.factory}" if args.factory else ""
    print(f"wrote {args.out}; next: bsnn convert {args.out}{factory} --calib DATA --out net.h5")
    return EXIT_OK


def _teacher(args):
    """``--teacher``: ``original`` (the model as given), a checkpoint of the same architecture (loaded
    as MODEL is, e.g. a ReLU fine-tune), or ``None``."""
    if args.teacher in (None, "original"):
        return args.teacher
    teacher, _, _ = _load_model(argparse.Namespace(**{**vars(args), "model": args.teacher, "random_weights": False}))
    return teacher


def _read_network(path):
    import netx_export

    return netx_export.read(path)


def _cmd_check(args) -> int:
    from .resources import check_resources

    _check_outputs(args, "--json")
    hw = _load_hw(args.hw)
    report = check_resources(_read_network(args.net), hw)
    print(report.format())
    if args.json:
        payload = {"profile": report.profile, "fits": report.fits, "n_cores": report.n_cores,
                   "n_chips": report.n_chips, "violations": report.violations, "notes": report.notes,
                   "layers": [vars(u) for u in report.layers]}
        _write_json(args.json, payload)
    return EXIT_OK if report.fits else EXIT_BAD_INPUT


def _run_file(args):
    """Read ``args.net`` and ``args.data`` (first ``args.limit`` images), check that they fit, and
    simulate ``args.steps`` steps (or streamed); returns ``(network, images, labels, result)``."""
    _check_run_flags(args)
    network = _read_for_run(args, args.net)
    x, y = _load_run_data(args, network, args.net)
    return network, x, y, _simulate_file(args, network, x, y)


def _check_run_flags(args) -> None:
    """The run flags that exclude each other."""
    if args.stream and args.steps is not None:
        raise UsageError(f"--steps {args.steps} with --stream: a streamed run lasts the latency plus one frame period "
                         "per further round of images; leave --steps out")
    if args.stream and args.frames is not None:
        raise UsageError(f"--frames {args.frames} with --stream: a streamed run gives every layer one frame per round "
                         "of images; --frames sets the frame limit of a run of one image at a time")


def _read_for_run(args, path):
    """The network file at ``path``, checked to run as the flags ask (--frames, --stream)."""
    network = _read_network(path)
    try:
        network.for_run(args.frames, 1 if args.stream else None)
    except ValueError as err:
        raise UsageError(f"{path}: {err}") from None
    return network


def _load_run_data(args, network, named: str):
    """``(x, y)`` of ``--data`` (the first ``--limit`` images), checked to fit ``network`` (errors name
    ``named``, its file or files)."""
    from .data import check_images

    x, y = _load_data(args.data, "--data", args.limit, image_size=network.input.shape[-1], streamed=True)
    try:
        check_images(x, y, network.input.shape, network.readout.shape[0])
    except ValueError as err:
        raise UsageError(f"--data {args.data}: {err} ({named})") from None
    return x, y


def _simulate_file(args, network, x, y):
    """The run of ``network`` on ``(x, y)`` with the flags' backend, steps or stream, batch size."""
    from .sim import simulate
    from .sim.reference import check_device

    no_ann = getattr(args, "no_ann", False)  # a flag of bsnn simulate only
    if args.backend == "torch":
        try:
            check_device(args.device)
        except ValueError as err:
            raise UsageError(f"--device: {err}") from None
        return simulate(network, x, y, steps=args.steps, batch_size=args.batch_size or TORCH_BATCH_SIZE,
                        device=args.device, progress=True, stream=args.stream, frames=args.frames, ann=not no_ann)
    from .lava.run import run_lava

    if no_ann:
        raise UsageError(f"--no-ann with --backend {args.backend}: the Lava runs always compare with the ANN; "
                         "--no-ann skips it in the reference simulator (--backend torch)")

    if args.backend == "loihi2" and args.batch_size not in (None, 1):
        raise UsageError(f"--batch-size {args.batch_size}: batches are a layout of Lava's CPU simulator; "
                         "--backend loihi2 runs one image at a time")
    return run_lava(network, x, y, steps=args.steps, backend="cpu" if args.backend == "lava" else "loihi2",
                    select_tag="fixed_pt" if network.numeric == "int" else "floating_pt",
                    batch_size=args.batch_size or 1, stream=args.stream, frames=args.frames)


def _cmd_simulate(args) -> int:
    _check_outputs(args, "--json")
    _, _, y, result = _run_file(args)
    if not is_main_process():  # under torchrun: rank 0 reports and writes
        return EXIT_OK
    ann = "" if result.ann_accuracy is None else f"ANN {100 * result.ann_accuracy:.2f}%, "
    if result.stream is not None:
        s = result.stream
        snn = "" if result.final_accuracy is None else f": {ann}SNN {100 * result.final_accuracy:.2f}%"
        print(f"{result.n_samples} images streamed ({result.method} path), {s.lanes} at a time{snn}, each read "
              f"{s.latency_steps} steps after it entered")
        print(f"  {result.n_steps} steps: a new round every {s.frame_steps} steps, {result.images_per_step:.4g} images "
              f"per step; {s.lanes} at a time without streaming: {s.n_rounds * s.latency_steps} steps "
              f"({s.n_rounds * s.latency_steps / result.n_steps:.1f}x as many)")
    else:
        snn = "" if result.final_accuracy is None else f"SNN {100 * result.final_accuracy:.2f}% "
        print(f"{result.n_samples} images, {result.n_steps} steps ({result.method} path): {ann}{snn}after "
              f"{result.n_steps} steps")
        for points in (2.0, 1.0, 0.5):
            print(f"  steps to ANN - {points} point(s): {result.steps_to_within(points) or 'not reached'}")
    sin = "-" if result.n_sin is None else f"{sum(result.n_sin.values()) / result.n_samples:.1f}"
    print(f"  spikes per image {sum(result.n_spikes.values()) / result.n_samples:.0f}, SIN per image {sin}, "
          f"lost input {sum(result.n_lost_input.values())}, saturated {sum(result.n_saturated.values())}")
    if args.json:
        _write_json(args.json, result.summary(labels=y))
    return EXIT_OK


def _cmd_profile(args) -> int:
    from .profile import format_profile, profile_run
    from .sim import simulate

    _check_outputs(args, "--json", "--html")
    hw = _load_hw(args.hw)
    if len(args.net) > 1:
        return _profile_several(args, hw)
    args.net = args.net[0]
    network, x, y, result = _run_file(args)
    if not is_main_process():
        return EXIT_OK
    profile = profile_run(network, result, hw)
    print(format_profile(profile))
    if args.json:
        _write_json(args.json, profile.to_dict())
    if args.html:
        from .report import raster_layers, write_html_report

        shown = [l.name for l in raster_layers(network)]  # recorded alone: one image's every layer can be GBs
        if args.stream:  # a few images streamed through one lane: each layer holds a different image
            one = simulate(network, x[:RASTER_STREAM_IMAGES], None, stream=True, batch_size=1, method="step",
                           record=shown, distributed=False)
        else:
            one = simulate(network, x[:1], y[:1], steps=args.steps, method="step", record=shown, distributed=False,
                           frames=args.frames)
        rasters = {name: one.extras["spikes"][name].reshape(one.n_steps, -1) for name in shown}
        path = write_html_report(args.html, profile, f"bsnn profile: {args.net}", rasters,
                                 n_spiking_layers=len(network.spiking_layers))
        print(f"wrote {path}")
    return EXIT_OK


def _profile_several(args, hw) -> int:
    """``bsnn profile A B ...``: every file run on the same images with the same flags and profiled
    (:func:`bsnn_lava.profile.profile_run`); one table, and one accuracy-vs-energy chart in --html.
    Every file is read and checked against the others and the data before any is run."""
    from .profile import comparison, format_comparison, profile_run
    from .report import write_comparison_report

    _check_run_flags(args)
    first_index = {}  # resolved path -> where it was first given
    for k, path in enumerate(args.net):
        first = first_index.setdefault(Path(path).resolve(), k)
        if first != k:
            before = "" if args.net[first] == path else f" (as {args.net[first]})"
            raise UsageError(f"{path}: given twice{before}; give each file once")
    networks = [_read_for_run(args, path) for path in args.net]
    first, reference = args.net[0], networks[0]
    for path, network in zip(args.net[1:], networks[1:]):
        for what, theirs, ours in (("input (C, H, W)", network.input.shape, reference.input.shape),
                                   ("classes", network.readout.shape[0], reference.readout.shape[0])):
            if theirs != ours:
                raise UsageError(f"{path}: {what} {theirs}, but {first} has {ours}: the files profiled together run "
                                 "on the same images, so they need the same input and classes")
    x, y = _load_run_data(args, reference, ", ".join(args.net))
    profiles = []
    for k, (path, network) in enumerate(zip(args.net, networks)):
        print(f"profiling {path} ({k + 1} of {len(args.net)})", file=sys.stderr)
        result = _simulate_file(args, network, x, y)
        if is_main_process():  # under torchrun: rank 0 reports and writes
            profiles.append(profile_run(network, result, hw))
    if not is_main_process():
        return EXIT_OK
    summary = comparison(args.net, profiles, hw)
    table = format_comparison(summary["table"], hw)
    print(table)
    if args.json:
        _write_json(args.json, summary)
    if args.html:
        path = write_comparison_report(args.html, summary, profiles, table, f"bsnn profile: {', '.join(args.net)}")
        print(f"wrote {path}")
    return EXIT_OK


def add_model_arguments(command, verb: str) -> None:
    """MODEL, --factory, --random-weights: the model a command starts from (see :func:`_load_model`)."""
    command.add_argument("model", nargs="?", help="checkpoint (state dict; CIFAR ResNet unless --factory)")
    command.add_argument("--factory", help="module.path:function returning the nn.Module (weights from MODEL)")
    command.add_argument("--random-weights", action="store_true",
                         help=f"with --factory and no MODEL: {verb} the model's initial (random) weights on purpose")


def add_normalisation_arguments(command) -> None:
    command.add_argument("--mean", type=float, nargs="+",
                         help="input normalisation mean, 1 value or one per channel (pixels in [0, 1])")
    command.add_argument("--std", type=float, nargs="+", help="input normalisation std, 1 value or one per channel")


def build_parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    parser = _Parser(prog="bsnn", description="Bistable spiking networks for Loihi: convert, simulate, export, run "
                     "in Lava.", epilog=EPILOG, formatter_class=raw)
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="end-to-end demo on scikit-learn's bundled digits (no download)",
                          description="Train a small ResNet on the bundled 8x8 digits (20-60 s on two cores in "
                          "all), convert it to a bistable SNN and to a plain IF SNN, simulate both, fine-tune it for "
                          "an exact BSNN (clip-floor-shift activations, frame reset) and check it frame by frame, "
                          "quantize the BSNN for Loihi 2, export it as netx HDF5, run the file in Lava on a few digits and compare every "
                          "spike with the reference, profile spikes and energy, and write a plot and an HTML report.",
                          epilog="examples:\n  bsnn demo\n  bsnn demo --out bsnn-demo", formatter_class=raw)
    demo.add_argument("--out", default="bsnn-demo", help="output folder, created if needed (default: bsnn-demo)")
    demo.add_argument("--steps", type=positive_int, default=96, help="time steps T to simulate (default: 96)")
    demo.add_argument("--window", type=positive_int, default=2, help="bistable window P in steps (default: 2)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.add_argument("--lava-samples", type=positive_int, default=3,
                      help="digits run in Lava for the parity check (default: 3)")
    demo.set_defaults(handler=_cmd_demo)

    conv = sub.add_parser("convert", help="convert a trained model to a BSNN / IF network and write netx HDF5",
                          description="Convert a trained ReLU network (a CIFAR ResNet checkpoint, or any model from "
                          "--factory) into a spiking network, calibrated on --calib, optionally quantized for a "
                          "hardware profile, and write it as a netx HDF5 file.",
                          epilog="examples:\n  bsnn convert resnet20.th --calib train.npz --hw loihi2 --out r20.h5\n"
                          "  bsnn convert r20_p4.th --calib train.npz --hw loihi2 --out r20_p4.h5     # learned "
                          "thresholds, frame reset\n"
                          "  bsnn convert r20_p4.th --calib train.npz --hw loihi2 --spikes graded --out r20_g4.h5\n"
                          "  bsnn convert r20_g8e.th --calib train.npz --out r20_g8e.h5   # the integers as trained "
                          "(--hw from the checkpoint)\n"
                          "  bsnn convert resnet20.th --calib train.npz --spikes graded --levels 16 --channelwise "
                          "--hw loihi2 --out r20_g16.h5\n"
                          "  bsnn convert w.pt --factory mynets:build_vgg --mean 0.5 --std 0.25 --calib "
                          "train.npz --out vgg.h5\n"
                          "  bsnn convert resnet50.pth --factory bsnn_lava.zoo:imagenet_resnet50 --calib "
                          "/data/imagenet/val --hw loihi2 --out r50.h5\n"
                          "  bsnn convert vgg16_bn.pth --factory bsnn_lava.zoo:vgg16_bn --calib /data/imagenet/val "
                          "--n-calib 64 --out vgg16_bn.h5\n\n"
                          "--factory looks for the module in the current folder first, then in installed packages.\n"
                          "bsnn_lava.zoo's imagenet_resnet18, imagenet_resnet34, imagenet_resnet50, imagenet_resnet101 "
                          "and vgg16_bn\nare torchvision's module trees: a torchvision state dict "
                          "(torch.save(model.state_dict(), PATH)) loads as it is,\nand they declare ImageNet's "
                          "normalisation (mean 0.485 0.456 0.406, std 0.229 0.224 0.225).\nThe normalisation: "
                          "--mean/--std, else the model's input_normalisation = (mean, std), else mean 0, std 1.\n"
                          f"{OUTPUT_RULE}.", formatter_class=raw)
    add_model_arguments(conv, "convert")
    conv.add_argument("--calib", required=True, help="calibration data: digits[:train|test], a .npz (x uint8, y), "
                      "or a folder of class subfolders of images (224x224 centre crops, ImageNet models)")
    conv.add_argument("--n-calib", type=positive_int, default=300, help="calibration images (default: 300)")
    conv.add_argument("--out", required=True, help="output .h5 file (its folder must exist)")
    conv.add_argument("--neuron", choices=("bistable", "if", "warmup"), default="bistable")
    conv.add_argument("--window", type=positive_int,
                      help="window P in steps (default: the levels of a fine-tuned model, else 2)")
    conv.add_argument("--v-init", type=float, default=0.5, help="V(0) as a fraction of theta (default: 0.5)")
    conv.add_argument("--percentile", type=float, default=99.9, help="threshold percentile (default: 99.9)")
    conv.add_argument("--channelwise", action="store_true", help="one threshold per channel")
    add_normalisation_arguments(conv)
    conv.add_argument("--hw", help="quantize for this hardware profile (loihi2, loihi1 or a .toml path)")
    conv.add_argument("--headroom-bits", type=int, default=6, help="state headroom above P+1 thresholds (default 6)")
    conv.add_argument("--plain-rounding", action="store_true",
                      help="round weights to nearest, keep the float biases (default: error-feedback rounding "
                           "and bias correction on the calibration images)")
    conv.add_argument("--frame-reset", action=argparse.BooleanOptionalAction, default=None,
                      help="bistable neurons restart from V(0) at every integrate window, so every frame equals the "
                           "first (default: on for a model from bsnn finetune, else off)")
    conv.add_argument("--frames", type=positive_int,
                      help="store a frame limit in the file: every layer stops after this many frames (default: "
                           "none stored; runs of a frame-reset network stop after one frame anyway, and bsnn "
                           "simulate/profile --frames chooses per run)")
    conv.add_argument("--spikes", choices=("binary", "graded"),
                      help="graded (Loihi 2): each layer integrates one step and sends its count as one spike's "
                           "payload, 2 steps per layer instead of P + 1 (default: binary, or what a checkpoint of "
                           "bsnn finetune --spikes was trained with)")
    conv.add_argument("--levels", type=positive_int,
                      help="largest payload of a graded spike (default: the levels of a model from bsnn finetune)")
    conv.add_argument("--netx-compatible", action="store_true",
                      help="write only what stock lava-dl netx loads (sequential IF networks, CUBA neurons)")
    conv.set_defaults(handler=_cmd_convert)

    tune = sub.add_parser("finetune", help="fine-tune a model for a bistable window (exact conversion after one frame)",
                          description="Replace every ReLU of the model by a clip-floor-shift activation with P levels "
                          "(learnable thresholds, initialised by percentile calibration) and train it on --data, so "
                          "that bsnn convert gives a BSNN that equals the fine-tuned model at every complete frame "
                          "(frame reset). --relu fine-tunes the plain model the same way (the fair baseline). A "
                          "checkpoint is written after every epoch; --resume continues from it.",
                          epilog="examples:\n  bsnn finetune resnet20.th --data train.npz --window 4 --epochs 6 "
                          "--out r20_p4.th\n  bsnn convert r20_p4.th --calib train.npz --hw loihi2 --out r20_p4.h5\n"
                          "  bsnn finetune resnet20.th --data train.npz --window 8 --spikes graded "
                          "--hw loihi2 --energy 0.03 --out r20_g8e.th\n"
                          "  bsnn convert r20_g8e.th --calib train.npz --out r20_g8e.h5   # its Loihi 2 integers as "
                          "trained\n"
                          "  bsnn finetune resnet20.th --data train.npz --relu --epochs 4 --out r20_relu.th\n\n"
                          f"{OUTPUT_RULE}.", formatter_class=raw)
    add_model_arguments(tune, "start from")
    tune.add_argument("--data", required=True, help="training data: digits[:train|test] or a .npz (x uint8, y)")
    tune.add_argument("--limit", type=positive_int, help="use only the first N images")
    tune.add_argument("--out", required=True, help="output checkpoint (written after every epoch; its folder must exist)")
    group = tune.add_mutually_exclusive_group()
    group.add_argument("--window", type=positive_int, default=4, help="window P = activation levels (default: 4)")
    group.add_argument("--relu", action="store_true", help="keep the ReLUs (the baseline fine-tune)")
    tune.add_argument("--start-levels", type=positive_int,
                      help="progressive: the activations start with this many levels (--window times a power of 2) "
                           "and halve over equal shares of the epochs down to --window")
    tune.add_argument("--epochs", type=positive_int, default=4, help="epochs (default: 4)")
    tune.add_argument("--relu-epochs", type=int, default=0,
                      help="two steps in one run: the first N of --epochs fine-tune the ReLU model (at --relu-lr), "
                           "the rest the window's model started from it (default: 0)")
    tune.add_argument("--relu-lr", type=float, default=0.01,
                      help="learning rate of the --relu-epochs, cosine decay (default: 0.01)")
    tune.add_argument("--batch-size", type=positive_int, default=128, help="images per batch (default: 128)")
    tune.add_argument("--lr", type=float, default=0.002, help="SGD learning rate, cosine decay (default: 0.002)")
    tune.add_argument("--threshold-lr", type=float,
                      help="the thresholds' learning rate, cosine decay (default: --lr; 0 keeps their start)")
    tune.add_argument("--percentile", type=float, default=99.9, help="initial threshold percentile (default: 99.9)")
    tune.add_argument("--validation", help="data to check the model on before training and after every epoch "
                      "(default: the first --check training images); a run that ends more than 10 points below the "
                      "model it started from says so and what to try")
    tune.add_argument("--check", type=positive_int, default=500,
                      help="images checked after every epoch (default: 500; of --validation, or of --data)")
    tune.add_argument("--teacher", help="distil from 'original' (the model as given) or from a checkpoint of the "
                      "same architecture (e.g. a --relu fine-tune): KL divergence to its outputs on the same batch")
    tune.add_argument("--distill-weight", type=float, default=1.0,
                      help="with --teacher: the loss is (1 - w) cross-entropy + w KL (default: 1)")
    tune.add_argument("--threshold-init", choices=("percentile", "least-squares"), default="least-squares",
                      help="initial thresholds: the --percentile of each layer's positive activations, or the "
                           "threshold with the least quantization error at --window levels (default: least-squares)")
    tune.add_argument("--channelwise", action=argparse.BooleanOptionalAction, default=True,
                      help="one learned threshold per channel (default), or one per layer (--no-channelwise)")
    chip = tune.add_argument_group(
        "fine-tuning for the chip (the last --fold-epochs train the converted network itself: BatchNorm folded, "
        "relays in place)")
    chip.add_argument("--hw", help="train on this hardware profile's integers (loihi2, loihi1 or a .toml path): bsnn "
                      "convert --hw then writes them as trained, and they predict what the model predicts")
    chip.add_argument("--spikes", choices=("binary", "graded"), default="binary",
                      help="the spikes of the folded network, as bsnn convert --spikes (default: binary)")
    chip.add_argument("--energy", type=non_negative_float, default=0.0,
                      help="lambda: add lambda x the synaptic operations per image in millions (as bsnn profile counts "
                           "a one-frame run) to the loss (default: 0)")
    chip.add_argument("--rate-target", type=non_negative_float,
                      help="lava-dl's event-rate loss instead or beside: each neuron layer's mean rate above this "
                           "(0 to 1) is penalised, --rate-weight x (rate - target)^2")
    chip.add_argument("--rate-weight", type=non_negative_float, default=1.0,
                      help="weight of the event-rate loss (default: 1, lava-dl's)")
    chip.add_argument("--fold-epochs", type=positive_int,
                      help="epochs that train the folded network (default with --hw, --energy or --rate-target: a "
                           "third of the window's epochs, at least 1)")
    chip.add_argument("--fold-lr", type=float, default=FOLD_LR_DEFAULT,
                      help=f"Adam learning rate of the folded epochs' weights, 10x for thresholds and biases, cosine "
                           f"decay (default: {FOLD_LR_DEFAULT:g})")
    chip.add_argument("--headroom-bits", type=int, default=6,
                      help="with --hw: state headroom above a full window, as bsnn convert (default: 6)")
    tune.add_argument("--no-augment", action="store_true", help="no random crop and flip (e.g. for digits)")
    add_normalisation_arguments(tune)
    tune.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    tune.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    tune.add_argument("--resume", action="store_true", help="continue from --out if it holds an unfinished run")
    tune.set_defaults(handler=_cmd_finetune)

    from .cli_netx import add_inspect_parser

    add_inspect_parser(sub)

    check = sub.add_parser("check", help="map a network onto cores of a hardware profile; exit 2 if it does not fit",
                           description="Map each layer onto cores (neurons, input axons, synaptic memory per core) "
                           "and print layers -> cores, totals and every violated limit.",
                           epilog="examples:\n  bsnn check r20.h5 --hw loihi1     # exit 2 if it does not fit\n"
                           "  bsnn check net.h5 --hw loihi2\n  bsnn check net.h5 --hw my_chip.toml "
                           f"--json report.json\n\n{OUTPUT_RULE}.", formatter_class=raw)
    check.add_argument("net", help="a netx HDF5 file written by bsnn convert")
    check.add_argument("--hw", default="loihi2", help="hardware profile: loihi2, loihi1 or a .toml path")
    check.add_argument("--json", help="also write the report as JSON to this file")
    check.set_defaults(handler=_cmd_check)

    def add_run_arguments(command, several: bool = False):
        if several:
            command.add_argument("net", nargs="+", help="one or more netx HDF5 files written by bsnn convert (several: "
                                 "each runs on the same --data with the same flags)")
        else:
            command.add_argument("net", help="a netx HDF5 file written by bsnn convert")
        command.add_argument("--data", required=True, help="digits[:train|test], a .npz (x uint8, y), or a folder "
                             "of class subfolders of images (ImageNet layout; centre crops of the network's input "
                             "size, decoded one batch at a time)")
        command.add_argument("--steps", type=positive_int,
                             help="time steps T per image (default: 128; a streamed run needs none)")
        command.add_argument("--stream", action="store_true",
                             help="a new round of --batch-size images enters every frame (frame-reset bistable "
                                  "networks): one prediction per image at the end of its frame, the run lasts the "
                                  "latency plus one frame period per further round")
        command.add_argument("--frames", type=frame_limit,
                             help="frame limit of a run of one image at a time: N, or 'all' (default: the file's "
                                  "limit; a frame-reset network stops each layer after its first frame)")
        command.add_argument("--limit", type=positive_int, help="use only the first N images (N >= 1)")
        command.add_argument("--batch-size", type=positive_int,
                             help=f"images per batch, or per round of a stream (default: {TORCH_BATCH_SIZE} for "
                                  "torch; 1 for lava: the CPU models then run that many images at once, paying "
                                  "Lava's messaging once)")
        command.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
        command.add_argument("--backend", choices=BACKENDS, default="torch", help=BACKEND_HELP)

    simulate = sub.add_parser("simulate", help="run a network file on data: accuracy at every step, counts",
                              description="Simulate a netx HDF5 network on images with the reference simulator "
                              "(exact integer arithmetic for quantized networks), or in Lava. Ctrl-C or SIGTERM "
                              "stops the run within seconds and writes nothing.",
                              epilog="examples:\n  bsnn simulate net.h5 --data digits --steps 96\n"
                              "  bsnn simulate r20.h5 --data test.npz --steps 256 --limit 500 --json result.json\n"
                              "  bsnn simulate r20.h5 --data test.npz --steps 80 --limit 2 --backend lava\n"
                              "  bsnn simulate r20_g4.h5 --data test.npz --stream --batch-size 32 --backend lava\n"
                              "  torchrun --standalone --nproc-per-node 4 -m bsnn_lava simulate r20.h5 --data test.npz "
                              "--steps 512 --json r.json\n"
                              "  bsnn simulate r34.h5 --data /data/imagenet/val --steps 64 --limit 100   # a folder of "
                              "class subfolders\n\n--json holds the "
                              "accuracy after every step, the counts, and per image (columns): index, label, "
                              "prediction, ann_prediction, final_from_step; streamed: 'stream' (lanes, rounds, "
                              "latency_steps, frame_steps, images_per_step, accuracy) and per image prediction_step "
                              f"and readout (the readout's potentials when the prediction was read).\n{OUTPUT_RULE}.",
                              formatter_class=raw)
    add_run_arguments(simulate)
    simulate.add_argument("--json", help="write accuracy per step, counts and per-image predictions as JSON")
    simulate.add_argument("--no-ann", action="store_true",
                          help="do not run the equivalent ANN beside the network (no ANN accuracy, ann_prediction or "
                               "SIN; torch backend): a streamed run of an ImageNet-size network spends most of its "
                               "time there")
    simulate.set_defaults(handler=_cmd_simulate)

    prof = sub.add_parser("profile", help="spikes, synaptic ops and energy per layer and inference; HTML report",
                          description="Simulate a network file and report, per layer and in total: spikes, exact "
                          "synaptic operations (relay and shortcut traffic apart), neuron updates, SIN, lost input, "
                          "saturation; energy per the hardware profile (every constant's source printed); the ANN's "
                          "MACs and energy (Horowitz 45 nm); images per second and energy per image (dynamic and "
                          "static) one image at a time and, for frame-reset networks, streamed (--stream runs the "
                          "stream itself). Several files: each runs on the same images with the same flags, and one "
                          "table (accuracy, spikes, synaptic operations, energy per image, images/s, chips) and one "
                          "chart of accuracy against dynamic energy per image show the trade-off.",
                          epilog="examples:\n  bsnn profile net.h5 --data digits --steps 64 --hw loihi2\n"
                          "  bsnn profile r20.h5 --data test.npz --steps 256 --limit 100 --hw loihi2 --html report.html\n"
                          "  bsnn profile r20_g4.h5 --data test.npz --stream --limit 1000 --hw loihi2 --html stream.html\n"
                          "  bsnn profile r20_p4.h5 r20_g4.h5 r20_g8e.h5 --data test.npz --limit 1000 --hw loihi2 "
                          "--html tradeoff.html\n\nSeveral files: --json holds 'table' (a row per file) and 'profiles' (each "
                          "file's profile); the files must take the same input and classes."
                          f"\n{OUTPUT_RULE}.", formatter_class=raw)
    add_run_arguments(prof, several=True)
    prof.add_argument("--hw", default="loihi2", help="hardware profile for energy: loihi2, loihi1 or a .toml path")
    prof.add_argument("--json", help="write the profile as JSON to this file")
    prof.add_argument("--html", help="write a self-contained HTML report (plots embedded) to this file")
    prof.set_defaults(handler=_cmd_profile)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        with signals_raise_interrupted():
            return args.handler(args)
    except Interrupted as err:
        print(f"bsnn {args.command}: {err.describe()}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:  # a Ctrl-C outside the handler's reach
        print(f"bsnn {args.command}: interrupted (SIGINT)", file=sys.stderr)
        return 130
    except (UsageError, ValueError, FileNotFoundError, OSError, ImportError) as err:
        print(f"bsnn {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as err:  # an internal error: one line unless --debug
        if args.debug:
            traceback.print_exc()
        print(f"bsnn {args.command}: internal error: {type(err).__name__}: {_one_line(err)} (rerun with --debug for "
              "the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
