"""Every ``bsnn`` command runs in bounded memory: each runs on the bundled digits in a subprocess whose
address space is limited (``RLIMIT_AS``, see ``cli_memory_worker.py``) to what the imported libraries
hold plus :data:`HEADROOM_BYTES`.

The headroom: the smallest at which all these commands passed on the development machine was about
1.2 GiB (at 1.0 GiB a Lava worker process runs out and the run hangs, hence the timeout); twice that,
rounded up. The convert summary line that listed every frame time up to 10**9 steps needed about
10 GiB here (2.5e8 Python ints for the binary P=2 network), and fails under it.

The thread pools are set to one thread: every thread reserves address space (its stack and a malloc
arena), so that the limit does not depend on the machine's core count.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_memory_worker import MARK
from test_interrupts import session_processes

HEADROOM_BYTES = int(2.5 * 2 ** 30)
WORKER = Path(__file__).parent / "cli_memory_worker.py"
FACTORY = ["--factory", "bsnn_lava.demo:DigitsResNet"]

#: name -> arguments, in the order they run (later commands read earlier outputs); paths relative to
#: the run's folder.
COMMANDS = {
    "finetune": ["finetune", *FACTORY, "--random-weights", "--data", "digits:train", "--limit", "100", "--epochs", "1",
                 "--window", "2", "--batch-size", "50", "--check", "50", "--out", "ft.th"],
    "convert binary": ["convert", "ft.th", *FACTORY, "--calib", "digits:train", "--n-calib", "50", "--hw", "loihi2",
                       "--out", "binary.h5"],
    "convert graded": ["convert", "ft.th", *FACTORY, "--calib", "digits:train", "--n-calib", "50", "--hw", "loihi2",
                       "--spikes", "graded", "--out", "graded.h5"],
    "inspect": ["inspect", "binary.h5"],
    "check": ["check", "binary.h5", "--hw", "loihi2", "--json", "check.json"],
    "simulate": ["simulate", "binary.h5", "--data", "digits", "--limit", "50", "--steps", "40", "--json", "sim.json"],
    "simulate lava": ["simulate", "graded.h5", "--data", "digits", "--limit", "4", "--steps", "20", "--backend", "lava",
                      "--batch-size", "2"],
    "simulate stream": ["simulate", "graded.h5", "--data", "digits", "--limit", "20", "--stream", "--batch-size", "4"],
    "simulate stream lava": ["simulate", "graded.h5", "--data", "digits", "--limit", "8", "--stream", "--batch-size",
                             "4", "--backend", "lava"],
    "profile": ["profile", "binary.h5", "--data", "digits", "--limit", "50", "--steps", "40", "--json", "profile.json",
                "--html", "profile.html"],
    "profile stream": ["profile", "graded.h5", "--data", "digits", "--limit", "20", "--stream", "--html",
                       "stream.html"],
    "profile several": ["profile", "binary.h5", "graded.h5", "--data", "digits", "--limit", "20", "--steps", "30",
                        "--json", "tradeoff.json", "--html", "tradeoff.html"],
}


def run_limited(commands, folder: Path, timeout_s: float = 300):
    """Run ``commands`` (lists of arguments) in one worker process under the limit, in ``folder``;
    returns ``(records, stderr)``: the worker's first line (the limit), then one record per command
    that finished. A worker still running after ``timeout_s`` is killed with everything it forked."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    worker = subprocess.Popen([sys.executable, str(WORKER), str(HEADROOM_BYTES), json.dumps(commands)], cwd=folder,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                              start_new_session=True)
    try:
        out, err = worker.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        out, err = "", f"timed out after {timeout_s} s (a Lava worker that ran out of memory hangs the run)"
    finally:  # what is left of the session after a moment (a hung run's Lava workers): SIGKILL, they ignore SIGTERM
        for _ in range(20):
            if not session_processes(worker.pid):
                break
            time.sleep(0.25)
        for pid in session_processes(worker.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        worker.communicate()
    records = [json.loads(line[len(MARK):]) for line in out.splitlines() if line.startswith(MARK)]
    return records, err


@pytest.fixture(scope="module")
def limited_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli_memory")
    records, err = run_limited(list(COMMANDS.values()), folder)
    assert records, err[-3000:]
    limit, done = records[0], records[1:]
    return {"folder": folder, "limit": limit, "by_name": dict(zip(COMMANDS, done)), "stderr": err}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_command_runs_under_the_address_space_limit(limited_run, name):
    record = limited_run["by_name"].get(name)
    assert record is not None, f"{name}: did not finish; stderr: {limited_run['stderr'][-3000:]}"
    assert record["argv"] == COMMANDS[name]
    assert record["rc"] == 0, (f"bsnn {' '.join(record['argv'])} exited {record['rc']} under "
                               f"{limited_run['limit']['limit_bytes'] / 2 ** 30:.2f} GiB: {record['stderr']}")


def test_the_limited_commands_wrote_their_outputs(limited_run):
    folder = limited_run["folder"]
    for name in ("ft.th", "binary.h5", "graded.h5", "check.json", "sim.json", "profile.json", "profile.html",
                 "stream.html", "tradeoff.json", "tradeoff.html"):
        assert (folder / name).stat().st_size > 0, name


@pytest.mark.slow  # the demo trains, converts, fine-tunes and runs Lava: 20-60 s on two cores
def test_demo_runs_under_the_address_space_limit(tmp_path):
    records, err = run_limited([["demo", "--out", "demo", "--steps", "40"]], tmp_path)
    assert len(records) == 2 and records[1]["rc"] == 0, err[-3000:]
