"""Run ``bsnn`` commands one after another in one process under an address-space limit.

``python cli_memory_worker.py HEADROOM_BYTES COMMANDS_JSON``: imports what the commands use (torch,
Lava, matplotlib, scikit-learn), then limits this process's address space (``RLIMIT_AS``, inherited
by the worker processes Lava forks) to what it holds now plus ``HEADROOM_BYTES``, so that the limit
measures the commands, not the size of the libraries on this machine. Runs each command (a list of
arguments) with :func:`bsnn_lava.cli.main` and prints, after :data:`MARK`, one JSON line per command
to stdout (among the commands' own output): ``{"argv", "rc", "seconds", "vm_peak_bytes", "stderr"}``
(the last lines the command wrote to ``sys.stderr``). Used by ``test_cli_memory.py``.
"""
import contextlib
import io
import json
import resource
import sys
import time

#: What starts this worker's own lines on stdout.
MARK = "cli-memory: "


def status_bytes(field: str) -> int:
    """A ``/proc/self/status`` size field (``VmSize``, ``VmPeak``) in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def import_libraries() -> None:
    """Everything the commands import, so that the limit is set above it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401
    import sklearn.datasets  # noqa: F401
    import torch  # noqa: F401

    import bsnn_lava.cli  # noqa: F401
    from bsnn_lava.lava.compat import ensure_lava_importable

    ensure_lava_importable()
    import bsnn_lava.lava.run  # noqa: F401
    import lava.magma.compiler.compiler  # noqa: F401
    import lava.magma.core.run_configs  # noqa: F401


def main(headroom: int, commands) -> None:
    from bsnn_lava.cli import main as bsnn

    limit = status_bytes("VmSize") + headroom
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    print(MARK + json.dumps({"limit_bytes": limit, "headroom_bytes": headroom}), flush=True)
    for argv in commands:
        started, err = time.monotonic(), io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = bsnn(argv)
        print(MARK + json.dumps({"argv": argv, "rc": rc, "seconds": round(time.monotonic() - started, 2),
                                 "vm_peak_bytes": status_bytes("VmPeak"),
                                 "stderr": err.getvalue()[-2000:]}), flush=True)


if __name__ == "__main__":
    import_libraries()
    main(int(sys.argv[1]), json.loads(sys.argv[2]))
