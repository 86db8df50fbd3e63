"""Ctrl-C (SIGINT) and SIGTERM stop `bsnn simulate` within seconds and leave nothing behind.

Each test starts the command in a new session (its own process group), waits until the run is under
way, signals the whole group as a terminal's Ctrl-C or `timeout -s INT` does, and then checks the exit
code and message, the time to exit, that no process of the session is left, and that no /dev/shm
segment or temporary file or folder was left (the command gets a private TMPDIR).
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import netx_export
from bsnn_lava.conversion import convert
from bsnn_lava.datasets import load_digits_uint8
from bsnn_lava.demo import train_digits_model
from bsnn_lava.quantize import quantize

pytestmark = pytest.mark.timeout(300)

#: Seconds a signalled command may take to exit.
EXIT_WITHIN_S = 10


@pytest.fixture(scope="module")
def digits_file(tmp_path_factory):
    x_train, y_train, _, _ = load_digits_uint8()
    model = train_digits_model(x_train[:300], y_train[:300], epochs=1)
    network = quantize(convert(model, x_train[:100], window=2), "loihi2")
    return netx_export.write(network, tmp_path_factory.mktemp("net") / "digits.h5")


def session_processes(sid: int):
    """PIDs of the live (not zombie) processes whose session id is ``sid``."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # fields after the name: state, ppid, pgrp, session
            pids.append(int(stat.parent.name))
    return pids


def shm_entries():
    return set(os.listdir("/dev/shm"))


def run_and_signal(args, tmp_path, signum, started_marker):
    """Start ``bsnn ARGS`` in a new session, signal its group once ``started_marker`` shows on stderr
    and a second has passed; returns (returncode, stderr, seconds to exit, processes left, shm left)."""
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    stderr_path = tmp_path / "stderr.txt"
    shm_before = shm_entries()
    env = dict(os.environ, TMPDIR=str(tmpdir), PYTHONUNBUFFERED="1")
    with open(stderr_path, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "bsnn_lava.cli", *map(str, args)], stdout=subprocess.DEVNULL,
                                stderr=stderr, env=env, start_new_session=True)
    sid = proc.pid
    try:
        deadline = time.monotonic() + 120
        while started_marker not in stderr_path.read_text():
            assert proc.poll() is None, f"the command ended before it got going: {stderr_path.read_text()}"
            assert time.monotonic() < deadline, "the run did not start within 120 s"
            time.sleep(0.2)
        time.sleep(1.0)
        assert proc.poll() is None, "the run ended before the signal: make it longer"
        os.killpg(sid, signum)
        signalled = time.monotonic()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running 60 s after {signal.Signals(signum).name}")
        exit_s = time.monotonic() - signalled
        left = session_processes(sid)
        for _ in range(20):  # an orphan finishing its own clean-up may need a moment
            if not left:
                break
            time.sleep(0.25)
            left = session_processes(sid)
        shm_left = shm_entries() - shm_before
        temp_left = sorted(p.name for p in tmpdir.iterdir())
        return proc.returncode, stderr_path.read_text(), exit_s, left, shm_left, temp_left
    finally:
        for pid in session_processes(sid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_lava_run_stops_cleanly_on_signal(digits_file, tmp_path, signum, code):
    args = ["simulate", digits_file, "--data", "digits", "--steps", "3000", "--limit", "40", "--backend", "lava",
            "--json", tmp_path / "out.json"]
    rc, stderr, exit_s, left, shm_left, temp_left = run_and_signal(args, tmp_path, signum, "lava:")
    lines = stderr.strip().splitlines()
    name = signal.Signals(signum).name
    assert rc == code, stderr[-2000:]
    assert lines[-1].startswith(f"bsnn simulate: interrupted ({name}) after image ") and lines[-1].endswith(" of 40")
    assert "Traceback" not in stderr and "leaked" not in stderr
    assert exit_s < EXIT_WITHIN_S, f"took {exit_s:.1f} s to exit"
    assert left == [], f"processes left: {left}"
    assert shm_left == set(), f"/dev/shm entries left: {sorted(shm_left)[:5]}"
    assert temp_left == [], f"temporary files left: {temp_left}"
    assert not (tmp_path / "out.json").exists()


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_torch_run_stops_cleanly_on_signal(digits_file, tmp_path, signum, code):
    args = ["simulate", digits_file, "--data", "digits", "--steps", "20000", "--batch-size", "50",
            "--json", tmp_path / "out.json"]
    rc, stderr, exit_s, left, shm_left, temp_left = run_and_signal(args, tmp_path, signum, "simulate (")
    name = signal.Signals(signum).name
    assert rc == code, stderr[-2000:]
    assert stderr.strip().splitlines()[-1].startswith(f"bsnn simulate: interrupted ({name}) after image ")
    assert "Traceback" not in stderr
    assert exit_s < EXIT_WITHIN_S, f"took {exit_s:.1f} s to exit"
    assert left == [] and shm_left == set() and temp_left == []
    assert not (tmp_path / "out.json").exists() and not list(tmp_path.glob(".out.json*"))
