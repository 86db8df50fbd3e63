"""The ``bsnn`` command line.

Exit codes: 0 success; 1 an unexpected internal error (please report it); 2 bad input (a file,
a flag, a model or data that cannot be used), with a one-line message naming what is wrong.
"""
from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT = 0, 1, 2

EPILOG = """examples:
  bsnn demo                       train a digits ResNet, convert, compare BSNN with IF, plot
  bsnn convert resnet20.th --calib train.npz --hw loihi2 --out net.h5
  bsnn inspect net.h5
  bsnn check net.h5 --hw loihi1
  bsnn simulate net.h5 --data test.npz --steps 256 --limit 500 --json out.json

exit codes: 0 success, 1 internal error, 2 bad input (one-line message)"""


BACKENDS = ("torch", "lava", "loihi2")
BACKEND_HELP = ("torch: reference simulator (default); lava: Lava's CPU simulator (bit-accurate fixed_pt for "
                "quantized networks), one image at a time; loihi2: Intel's Loihi 2 through lava-loihi (INRC only, "
                "see docs/loihi.md)")


class UsageError(Exception):
    """Bad input detected by the CLI itself."""


def _cmd_demo(args) -> int:
    from .demo import run_demo

    if args.steps < 1 or args.window < 1 or args.lava_samples < 1:
        raise UsageError("--steps, --window and --lava-samples must be positive integers")
    run_demo(Path(args.out), steps=args.steps, window=args.window, seed=args.seed, lava_samples=args.lava_samples)
    return EXIT_OK


def _load_model(args):
    """The model to convert and its input normalisation (mean, std on pixels in [0, 1])."""
    from . import zoo

    if args.factory:
        import importlib

        module_name, _, attr = args.factory.partition(":")
        try:
            model = getattr(importlib.import_module(module_name), attr)()
        except (ImportError, AttributeError) as err:
            raise UsageError(f"--factory {args.factory}: cannot import ({err}); use module.path:function") from err
        if args.model:
            import torch

            state = torch.load(args.model, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state) if isinstance(state, dict) else state
            model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
        mean, std = (0.0,), (1.0,)
    else:
        if not args.model:
            raise UsageError("give a CIFAR ResNet checkpoint, or --factory module:function for another model")
        model = zoo.load_checkpoint(args.model)
        mean, std = zoo.CIFAR_RESNET_MEAN, zoo.CIFAR_RESNET_STD
    mean = tuple(args.mean) if args.mean else mean
    std = tuple(args.std) if args.std else std
    return model.eval(), mean, std


def _cmd_convert(args) -> int:
    from .conversion import convert
    from .datasets import load_dataset

    import netx_export

    model, mean, std = _load_model(args)
    x_calib, _ = load_dataset(args.calib, split="train")
    network = convert(model, x_calib[:args.n_calib], neuron=args.neuron, window=args.window, v_init=args.v_init,
                      percentile=args.percentile, channelwise=args.channelwise, mean=mean, std=std, progress=True)
    if args.hw:
        from .quantize import quantize

        network = quantize(network, args.hw, headroom_bits=args.headroom_bits,
                           max_exponent=0 if args.netx_compatible else None,
                           calibration_images=None if args.plain_rounding else x_calib[:args.n_calib])
    path = netx_export.write(network, args.out, mode="netx" if args.netx_compatible else "bsnn")
    kind = f"integer ({args.hw})" if args.hw else "float"
    print(f"wrote {path}: {len(network.layers)} layers, {kind} {args.neuron} network, P={args.window}, "
          f"pipeline fill {network.readout.schedule.offset_steps} steps")
    return EXIT_OK


def _read_network(path):
    import netx_export

    return netx_export.read(path)


def _cmd_check(args) -> int:
    import json

    from .resources import check_resources

    report = check_resources(_read_network(args.net), args.hw)
    print(report.format())
    if args.json:
        payload = {"profile": report.profile, "fits": report.fits, "n_cores": report.n_cores,
                   "n_chips": report.n_chips, "violations": report.violations, "notes": report.notes,
                   "layers": [vars(u) for u in report.layers]}
        Path(args.json).write_text(json.dumps(payload, indent=1))
    return EXIT_OK if report.fits else EXIT_BAD_INPUT


def _run_file(args):
    """Read ``args.net`` and ``args.data`` (first ``args.limit`` images) and simulate ``args.steps`` steps;
    returns ``(network, images, labels, result)``."""
    from .datasets import load_dataset
    from .sim import simulate

    if args.steps < 1:
        raise UsageError("--steps must be a positive integer")
    network = _read_network(args.net)
    x, y = load_dataset(args.data)
    if args.limit:
        x, y = x[:args.limit], y[:args.limit]
    if args.backend == "torch":
        result = simulate(network, x, y, steps=args.steps, batch_size=args.batch_size, device=args.device,
                          progress=True)
    else:
        from .lava.run import run_lava

        result = run_lava(network, x, y, steps=args.steps, backend="cpu" if args.backend == "lava" else "loihi2",
                          select_tag="fixed_pt" if network.numeric == "int" else "floating_pt")
    return network, x, y, result


def _cmd_simulate(args) -> int:
    import json

    _, _, _, result = _run_file(args)
    print(f"{result.n_samples} images, {result.n_steps} steps ({result.method} path): ANN {100 * result.ann_accuracy:.2f}%, "
          f"SNN {100 * result.accuracy[-1]:.2f}% after {result.n_steps} steps")
    for points in (2.0, 1.0, 0.5):
        print(f"  steps to ANN - {points} point(s): {result.steps_to_within(points) or 'not reached'}")
    print(f"  spikes per image {sum(result.n_spikes.values()) / result.n_samples:.0f}, SIN per image "
          f"{sum(result.n_sin.values()) / result.n_samples:.1f}, lost input {sum(result.n_lost_input.values())}, "
          f"saturated {sum(result.n_saturated.values())}")
    if args.json:
        Path(args.json).write_text(json.dumps(result.summary(), indent=1))
    return EXIT_OK


def _cmd_profile(args) -> int:
    import json

    from .profile import format_profile, profile_run
    from .sim import simulate

    network, x, y, result = _run_file(args)
    profile = profile_run(network, result, args.hw)
    print(format_profile(profile))
    if args.json:
        Path(args.json).write_text(json.dumps(profile.to_dict(), indent=1))
    if args.html:
        from .report import write_html_report

        one = simulate(network, x[:1], y[:1], steps=args.steps, method="step", record=True)
        chosen = network.spiking_layers[::max(1, len(network.spiking_layers) // 6)]
        rasters = {l.name: one.extras["spikes"][l.name].reshape(args.steps, -1) for l in chosen}
        print(f"wrote {write_html_report(args.html, profile, f'bsnn profile: {args.net}', rasters)}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bsnn", description="Bistable spiking networks for Loihi: convert, "
                                     "simulate, export, run in Lava.", epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="end-to-end demo on scikit-learn's bundled digits (no download)",
                          description="Train a small ResNet on the bundled 8x8 digits for a few seconds, convert "
                          "it to a bistable SNN and to a plain IF SNN, simulate both, quantize the BSNN for Loihi 2, "
                          "export it as netx HDF5, run the file in Lava on a few digits and compare every spike with "
                          "the reference, profile spikes and energy, and write a plot and an HTML report.", epilog="example: bsnn demo --out bsnn-demo",
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_argument("--out", default="bsnn-demo", help="output folder (default: bsnn-demo)")
    demo.add_argument("--steps", type=int, default=96, help="time steps T to simulate (default: 96)")
    demo.add_argument("--window", type=int, default=2, help="bistable window P in steps (default: 2)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.add_argument("--lava-samples", type=int, default=3, help="digits run in Lava for the parity check (default: 3)")
    demo.set_defaults(handler=_cmd_demo)

    conv = sub.add_parser("convert", help="convert a trained model to a BSNN / IF network and write netx HDF5",
                          description="Convert a trained ReLU network (a CIFAR ResNet checkpoint, or any model from "
                          "--factory) into a spiking network, calibrated on --calib, optionally quantized for a "
                          "hardware profile, and write it as a netx HDF5 file.",
                          epilog="examples:\n  bsnn convert resnet20.th --calib train.npz --out r20.h5\n"
                          "  bsnn convert resnet20.th --calib train.npz --hw loihi2 --window 4 --out r20_q.h5\n"
                          "  bsnn convert w.pt --factory mypkg.nets:build_vgg --mean 0.5 --std 0.25 --calib "
                          "train.npz --out vgg.h5", formatter_class=argparse.RawDescriptionHelpFormatter)
    conv.add_argument("model", nargs="?", help="checkpoint (state dict; CIFAR ResNet unless --factory)")
    conv.add_argument("--factory", help="module.path:function returning the nn.Module (weights from MODEL if given)")
    conv.add_argument("--calib", required=True, help="calibration data: digits[:train|test] or a .npz (x uint8, y)")
    conv.add_argument("--n-calib", type=int, default=300, help="calibration images (default: 300)")
    conv.add_argument("--out", required=True, help="output .h5 file (written atomically)")
    conv.add_argument("--neuron", choices=("bistable", "if", "warmup"), default="bistable")
    conv.add_argument("--window", type=int, default=2, help="window P in steps (default: 2)")
    conv.add_argument("--v-init", type=float, default=0.5, help="V(0) as a fraction of theta (default: 0.5)")
    conv.add_argument("--percentile", type=float, default=99.9, help="threshold percentile (default: 99.9)")
    conv.add_argument("--channelwise", action="store_true", help="one threshold per channel")
    conv.add_argument("--mean", type=float, nargs="+", help="input normalisation mean (pixels in [0, 1])")
    conv.add_argument("--std", type=float, nargs="+", help="input normalisation std")
    conv.add_argument("--hw", help="quantize for this hardware profile (loihi2, loihi1 or a .toml path)")
    conv.add_argument("--headroom-bits", type=int, default=6, help="state headroom above P+1 thresholds (default 6)")
    conv.add_argument("--plain-rounding", action="store_true",
                      help="round weights to nearest, keep the float biases (default: error-feedback rounding "
                           "and bias correction on the calibration images)")
    conv.add_argument("--netx-compatible", action="store_true",
                      help="write only what stock lava-dl netx loads (sequential IF networks, CUBA neurons)")
    conv.set_defaults(handler=_cmd_convert)

    from .cli_netx import add_inspect_parser

    add_inspect_parser(sub)

    check = sub.add_parser("check", help="map a network onto cores of a hardware profile; exit 2 if it does not fit",
                           description="Map each layer onto cores (neurons, input axons, synaptic memory per core) "
                           "and print layers -> cores, totals and every violated limit.",
                           epilog="examples:\n  bsnn check net.h5 --hw loihi2\n  bsnn check net.h5 --hw my_chip.toml "
                           "--json report.json", formatter_class=argparse.RawDescriptionHelpFormatter)
    check.add_argument("net", help="a netx HDF5 file written by bsnn convert")
    check.add_argument("--hw", default="loihi2", help="hardware profile: loihi2, loihi1 or a .toml path")
    check.add_argument("--json", help="also write the report as JSON to this file")
    check.set_defaults(handler=_cmd_check)

    simulate = sub.add_parser("simulate", help="run a network file on data: accuracy at every step, counts",
                              description="Simulate a netx HDF5 network on images with the reference simulator "
                              "(exact integer arithmetic for quantized networks).",
                              epilog="examples:\n  bsnn simulate net.h5 --data digits --steps 96\n  bsnn simulate "
                              "net.h5 --data test.npz --steps 256 --limit 500 --json result.json",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    simulate.add_argument("net", help="a netx HDF5 file written by bsnn convert")
    simulate.add_argument("--data", required=True, help="digits[:train|test] or a .npz (x uint8, y)")
    simulate.add_argument("--steps", type=int, default=128, help="time steps T (default: 128)")
    simulate.add_argument("--limit", type=int, help="use only the first N images")
    simulate.add_argument("--batch-size", type=int, default=100)
    simulate.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    simulate.add_argument("--backend", choices=BACKENDS, default="torch", help=BACKEND_HELP)
    simulate.add_argument("--json", help="write accuracy per step and counts as JSON to this file")
    simulate.set_defaults(handler=_cmd_simulate)

    prof = sub.add_parser("profile", help="spikes, synaptic ops and energy per layer and inference; HTML report",
                          description="Simulate a network file and report, per layer and in total: spikes, exact "
                          "synaptic operations (relay and shortcut traffic apart), neuron updates, SIN, lost input, "
                          "saturation; energy per the hardware profile (every constant's source printed); the ANN's "
                          "MACs and energy (Horowitz 45 nm).",
                          epilog="examples:\n  bsnn profile net.h5 --data digits --steps 64 --hw loihi2\n"
                          "  bsnn profile net.h5 --data test.npz --limit 100 --steps 256 --json p.json --html p.html",
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    prof.add_argument("net", help="a netx HDF5 file written by bsnn convert")
    prof.add_argument("--data", required=True, help="digits[:train|test] or a .npz (x uint8, y)")
    prof.add_argument("--steps", type=int, default=128, help="time steps T (default: 128)")
    prof.add_argument("--hw", default="loihi2", help="hardware profile for energy: loihi2, loihi1 or a .toml path")
    prof.add_argument("--limit", type=int, help="use only the first N images")
    prof.add_argument("--batch-size", type=int, default=100)
    prof.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    prof.add_argument("--backend", choices=BACKENDS, default="torch", help=BACKEND_HELP)
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
        return args.handler(args)
    except KeyboardInterrupt:
        print("bsnn: interrupted", file=sys.stderr)
        return EXIT_INTERNAL
    except (UsageError, ValueError, FileNotFoundError, OSError, ImportError) as err:
        print(f"bsnn {args.command}: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as err:  # an internal error: one line unless --debug
        if args.debug:
            traceback.print_exc()
        print(f"bsnn {args.command}: internal error: {type(err).__name__}: {err} (rerun with --debug for "
              "the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
