"""Stopping long runs cleanly on SIGINT (Ctrl-C) and SIGTERM.

- :func:`signals_raise_interrupted` (used by the ``bsnn`` command line around every command): both
  signals raise :class:`Interrupted` in the main thread, so ``finally`` blocks and context managers
  release what a run holds (Lava's worker processes and shared memory, temporary folders) and the
  command exits with ``128 + signal`` (130 for SIGINT, 143 for SIGTERM).
- :func:`children_shielded` (used by :func:`bsnn_lava.lava.run.run_lava` while Lava forks its worker
  processes): SIGINT and SIGTERM are blocked in the calling thread, and processes forked meanwhile
  inherit the blocked mask. A Ctrl-C in a terminal (or ``timeout -s INT``) signals the whole process
  group; the workers then never act on it, and the main process alone stops them.
- :func:`note_progress`: loops attach how far they got to the :class:`Interrupted` passing through.
"""
from __future__ import annotations

import contextlib
import signal
from typing import Iterator, Optional

#: The signals a run stops on.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """A run stopped by a signal. ``done`` of ``total`` ``unit`` s were finished (``None``: unknown)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)
        self.done: Optional[int] = None
        self.total: Optional[int] = None
        self.unit = "image"

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + the signal number."""
        return 128 + self.signum

    def describe(self) -> str:
        """``interrupted (SIGINT) after image 3 of 10`` (the position only where known)."""
        where = f" after {self.unit} {self.done} of {self.total}" if self.done is not None else ""
        return f"interrupted ({signal.Signals(self.signum).name}){where}"


def _raise_interrupted(signum, _frame):
    raise Interrupted(signum)


@contextlib.contextmanager
def signals_raise_interrupted() -> Iterator[None]:
    """Inside, SIGINT and SIGTERM raise :class:`Interrupted` in the main thread (handlers restored
    on exit). Call from the main thread only."""
    previous = {signum: signal.signal(signum, _raise_interrupted) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def children_shielded() -> Iterator[None]:
    """Block SIGINT and SIGTERM in this thread while inside; processes forked inside keep them
    blocked for good (they stay pending there, never acted on). A signal that reaches this process
    meanwhile is delivered when the block ends, so nothing is lost, only deferred."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def note_progress(err: BaseException, done: int, total: int, unit: str = "image") -> None:
    """Record on an :class:`Interrupted` that ``done`` of ``total`` ``unit`` s were finished (the
    innermost loop that knows sets it first; outer loops leave it)."""
    if isinstance(err, Interrupted) and err.done is None:
        err.done, err.total, err.unit = int(done), int(total), unit
