"""Output files: written completely or not at all, with the permissions a plain ``open()`` gives.

The one rule for every output path the toolkit writes (``--out``, ``--json``, ``--html``, plots,
HDF5 networks): the folder must already exist (:func:`check_output_path` says so before any work
starts); the file is filled under a temporary name in that folder and renamed over the target only
when complete, so an error or an interrupt never leaves a partial file; its mode follows the
process's umask (``0o666 & ~umask``), like any file created with ``open()``.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Callable


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output_path(path, what: str = "output") -> Path:
    """``path`` as a :class:`Path` if a file can be written there; otherwise ``ValueError`` with one
    line naming ``what`` (a flag, say), the path and the reason. Creates and removes a probe file."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path}: is a folder; give a file name")
    folder = path.parent
    if not folder.is_dir():
        raise ValueError(f"{what} {path}: folder {folder} does not exist (output folders are not created)")
    try:
        handle, probe = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".probe")
        os.close(handle)
        os.unlink(probe)
    except OSError as err:
        raise ValueError(f"{what} {path}: cannot write in folder {folder} ({err.strerror or err})") from None
    return path


def atomic_write(path, fill: Callable[[Path], None]) -> Path:
    """Create or replace ``path`` with what ``fill(temporary_path)`` writes; returns ``path``.

    ``fill`` writes a file at the temporary path it is given (same folder, so the final rename is
    atomic). Any exception, ``KeyboardInterrupt`` included, removes the temporary file and leaves
    ``path`` as it was.
    """
    path = Path(path)
    folder = path.parent
    handle, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        fill(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0o600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def write_text_atomic(path, text: str) -> Path:
    """:func:`atomic_write` of a UTF-8 text file."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
