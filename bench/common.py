"""Helpers shared by the benchmarks: machine description, result files."""
from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

from bsnn_lava.files import write_text_atomic

SHARED = Path(__file__).resolve().parents[2] / "shared"


def machine() -> dict:
    import torch

    return {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}


def machine_text(m: dict) -> str:
    """:func:`machine`'s record as one line of prose for a report."""
    threads = f"{m['torch_threads']} torch thread" + ("s" if m["torch_threads"] != 1 else "")
    return (f"{m['platform']}, {m['cpu_count']} CPUs ({threads}), Python {m['python']}, torch {m['torch']}, "
            f"{m['date_utc']} UTC")


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])


def add_command(payload: dict, command: str = None) -> None:
    """Record ``command`` (default: this run's :func:`command_line`) once in ``payload["commands"]``."""
    command = command or command_line()
    commands = payload.setdefault("commands", [])
    if command not in commands:
        commands.append(command)


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(payload, indent=1))


def write_markdown(path: Path, lines: list[str]) -> None:
    """A report's lines as one markdown file, written atomically (never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, "\n".join(lines) + "\n")


def add_resnet20_data_args(parser) -> None:
    """--model, --test-data, --calib-data: defaults in ../shared, flags for the user's own files."""
    parser.add_argument("--model", default=SHARED / "models" / "akamaster_resnet20-12fca82f.th", type=Path)
    parser.add_argument("--test-data", default=SHARED / "data" / "cifar10_test.npz", type=Path)
    parser.add_argument("--calib-data", default=SHARED / "data" / "cifar10_train_10k.npz", type=Path)
