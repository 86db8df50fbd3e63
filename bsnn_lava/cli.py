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
  bsnn demo --steps 128 --window 4 --out my-demo

exit codes: 0 success, 1 internal error, 2 bad input (one-line message)"""


class UsageError(Exception):
    """Bad input detected by the CLI itself."""


def _cmd_demo(args) -> int:
    from .demo import run_demo

    if args.steps < 1 or args.window < 1:
        raise UsageError("--steps and --window must be positive integers")
    run_demo(Path(args.out), steps=args.steps, window=args.window, seed=args.seed)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bsnn", description="Bistable spiking networks for Loihi: convert, "
                                     "simulate, export, run in Lava.", epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="end-to-end demo on scikit-learn's bundled digits (no download)",
                          description="Train a small ResNet on the bundled 8x8 digits for a few seconds, convert "
                          "it to a bistable SNN and to a plain IF SNN, simulate both, print accuracy vs T and "
                          "SIN counts, and write a plot.", epilog="example: bsnn demo --out bsnn-demo",
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_argument("--out", default="bsnn-demo", help="output folder (default: bsnn-demo)")
    demo.add_argument("--steps", type=int, default=96, help="time steps T to simulate (default: 96)")
    demo.add_argument("--window", type=int, default=2, help="bistable window P in steps (default: 2)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.set_defaults(handler=_cmd_demo)
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
    except (UsageError, ValueError, FileNotFoundError, OSError) as err:
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
