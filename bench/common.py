"""Helpers shared by the benchmarks: machine description, result files."""
from __future__ import annotations

import contextlib
import json
import os
import platform
import shlex
import sys
import threading
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


def read_payload(path: Path, **empty) -> dict:
    """A bench's results kept at ``path`` (runs finished earlier), or a new payload
    ``{"benchmark": <path's stem>, **empty}``."""
    return json.loads(path.read_text()) if path.exists() else {"benchmark": path.stem, **empty}


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


def process_tree_memory(root: int = None, skip: int = None) -> dict:
    """Memory of process ``root`` (default: this one) and all its descendants (Lava's workers) but
    ``skip``, in bytes, from ``/proc``: ``rss`` (the sum of resident sets, counting pages the
    processes share, as a fork's copy-on-write pages, once per process), ``pss`` (the sum of
    proportional sets: shared pages divided among their sharers, so this is the memory the tree
    occupies) and ``processes``."""
    root = os.getpid() if root is None else root
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parents[int(entry)] = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        tree += frontier
    total = {"rss": 0, "pss": 0, "processes": 0}
    for pid in tree:
        if pid == skip:
            continue
        try:
            with open(f"/proc/{pid}/smaps_rollup") as rollup:
                fields = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in rollup if line.endswith("kB\n")}
        except OSError:
            continue
        total["rss"] += fields.get("Rss", 0)
        total["pss"] += fields.get("Pss", 0)
        total["processes"] += 1
    return total


class TreeMemoryPeak:
    """Context manager: the peak of :func:`process_tree_memory` of this process and its children while
    the block runs (``peak``: the sample with the largest ``pss``, plus ``samples``, their number). A
    separate monitor process, left out of the sum, samples every ``interval`` seconds (a sample reads
    every process's page tables: seconds for dozens of Lava workers, so a thread here would stall)."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.peak, self.monitor_cpu_s = interval, None, 0.0

    def __enter__(self):
        import subprocess
        import tempfile

        self._out = tempfile.NamedTemporaryFile(suffix=".json", delete=False)
        code = ("import json, os, signal, sys, time; sys.path.insert(0, sys.argv[1]); "
                "from common import process_tree_memory; root, out, interval = int(sys.argv[2]), sys.argv[3], "
                "float(sys.argv[4]); peak = dict(process_tree_memory(root, os.getpid()), samples=0); "
                "done = []; signal.signal(signal.SIGTERM, lambda *_: done.append(1)); json.dump(peak, open(out, 'w'))\n"
                "while not done and os.path.exists(f'/proc/{root}'):\n"
                "    now = process_tree_memory(root, os.getpid()); samples = peak['samples'] + 1\n"
                "    peak = dict(now, samples=samples) if now['pss'] > peak['pss'] else dict(peak, samples=samples)\n"
                "    time.sleep(interval)\n"
                "json.dump(peak, open(out, 'w'))")
        self._monitor = subprocess.Popen([sys.executable, "-c", code, str(Path(__file__).parent), str(os.getpid()),
                                          self._out.name, str(self.interval)])
        while not os.path.getsize(self._out.name):  # the monitor's first sample: it now takes SIGTERM
            if self._monitor.poll() is not None:
                raise RuntimeError(f"the memory monitor exited with {self._monitor.returncode}")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc):
        self._monitor.terminate()
        _, _, usage = os.wait4(self._monitor.pid, 0)  # reaped here: its CPU time is the monitor's own
        self._monitor.returncode, self.monitor_cpu_s = 0, usage.ru_utime + usage.ru_stime
        with open(self._out.name) as result:
            self.peak = json.load(result)
        os.unlink(self._out.name)


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))


@contextlib.contextmanager
def measured(record: dict, name: str, tree_interval: float = 0.2):
    """Wall time, CPU time (``cpu_s``: this process's, every thread; ``children_cpu_s``: its children
    that ended meanwhile), peak resident memory of this process (every 20 ms) and peak proportional
    set of this process and its children (:class:`TreeMemoryPeak`, a sample every ``tree_interval``
    seconds) during the block, in ``record[name]``."""
    peak, done = [rss_bytes()], threading.Event()
    cpu_started, children_started = time.process_time(), os.times()

    def sample():
        while not done.wait(0.02):
            peak[0] = max(peak[0], rss_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    entry = record.setdefault(name, {})
    tree = TreeMemoryPeak(tree_interval)
    try:
        with tree:
            yield entry
    finally:
        done.set()
        sampler.join()
        children = os.times()
        entry.update(seconds=time.perf_counter() - started, cpu_s=time.process_time() - cpu_started,
                     children_cpu_s=max(0.0, children.children_user + children.children_system
                                     - children_started.children_user - children_started.children_system
                                     - tree.monitor_cpu_s),
                     peak_rss_gib=max(peak[0], rss_bytes()) / 2 ** 30,
                     peak_tree_pss_gib=tree.peak["pss"] / 2 ** 30, tree_processes=tree.peak["processes"],
                     tree_rss_sum_gib=tree.peak["rss"] / 2 ** 30, tree_samples=tree.peak["samples"])
        print(f"{name}: {entry}", flush=True)
