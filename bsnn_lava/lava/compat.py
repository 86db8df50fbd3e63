"""Import-time fixes that let lava-nc 0.10.0 and lava-dl 0.6.0 run on Python 3.11.

Both wheels declare Python <3.11. One thing really breaks on 3.11: in
``lava/magma/compiler/var_model.py`` dataclass fields default to a shared ``ByteEncoder()``
instance, which 3.11's dataclasses reject ("mutable default ... use default_factory"). Instead of
editing site-packages, :func:`ensure_lava_importable` installs an import hook that compiles that one
module from its own source with ``field(default_factory=ByteEncoder)``. lava-dl's ``netx`` imports
slayer, which imports torchvision for object detection only; the registry's torchvision cannot load
beside the CPU torch build, so :func:`ensure_netx_importable` puts an empty stand-in module in place
when torchvision is not importable. Lava sets the multiprocessing start method at import, which
fails if it was set before (see :func:`_import_lava_multiprocessing`). Call these before importing
Lava; both are idempotent.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import multiprocessing
import sys
import types

_VAR_MODEL = "lava.magma.compiler.var_model"
_LAVA_MP = "lava.magma.runtime.message_infrastructure.multiprocessing"
_MUTABLE_DEFAULT = "= ByteEncoder()"
_FIXED_DEFAULT = "= field(default_factory=ByteEncoder)"


class LavaNotInstalled(ImportError):
    """lava-nc (or lava-dl) is missing; the message says how to install it."""


class _VarModelLoader(importlib.machinery.SourceFileLoader):
    def source_to_code(self, data, path, *, _optimize=-1):
        source = data.decode("utf-8")
        if _MUTABLE_DEFAULT not in source:
            return super().source_to_code(data, path)
        source = source.replace(_MUTABLE_DEFAULT, _FIXED_DEFAULT)
        source = source.replace("from dataclasses import dataclass, InitVar",
                                "from dataclasses import dataclass, InitVar, field", 1)
        return compile(source, path, "exec", dont_inherit=True)

    def get_code(self, fullname):  # never use a cached .pyc of the unpatched source
        return self.source_to_code(self.get_data(self.get_filename(fullname)), self.get_filename(fullname))


class _VarModelFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != _VAR_MODEL:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or not spec.origin:
            return None
        return importlib.util.spec_from_file_location(fullname, spec.origin,
                                                      loader=_VarModelLoader(fullname, spec.origin))


def ensure_lava_importable() -> None:
    """Make ``import lava...`` work on this Python; raise :class:`LavaNotInstalled` if it is absent."""
    if importlib.util.find_spec("lava") is None or importlib.util.find_spec("lava.magma") is None:
        raise LavaNotInstalled("lava-nc is not installed: run scripts/install.sh (Python 3.11) or "
                               "`pip install lava-nc==0.10.0` (Python 3.10)")
    if sys.version_info >= (3, 11) and _VAR_MODEL not in sys.modules and not any(
            isinstance(f, _VarModelFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _VarModelFinder())
    _import_lava_multiprocessing()


def _import_lava_multiprocessing() -> None:
    """Lava's message infrastructure calls ``multiprocessing.set_start_method('fork')`` when it is
    imported, which raises "context has already been set" once anything (tqdm's lock, for one) has
    touched the default context. Where that context is already 'fork', import it with the call
    made a no-op; any other start method is left to fail loudly, since Lava needs fork."""
    if _LAVA_MP in sys.modules or multiprocessing.get_start_method(allow_none=True) != "fork":
        return
    original = multiprocessing.set_start_method

    def set_start_method(method, force=False):
        if method != "fork" or force:
            original(method, force)

    multiprocessing.set_start_method = set_start_method
    try:
        importlib.import_module(_LAVA_MP)
    finally:
        multiprocessing.set_start_method = original


def ensure_netx_importable() -> None:
    """:func:`ensure_lava_importable`, plus a torchvision stand-in if torchvision cannot load."""
    ensure_lava_importable()
    if importlib.util.find_spec("lava.lib.dl") is None:
        raise LavaNotInstalled("lava-dl is not installed: run scripts/install.sh (Python 3.11) or "
                               "`pip install lava-dl==0.6.0` (Python 3.10)")
    if "torchvision" in sys.modules:
        return
    try:
        import torchvision  # noqa: F401
    except Exception:  # absent, or the registry build that cannot load beside torch's CPU build
        for name in ("torchvision", "torchvision.ops", "torchvision.transforms"):
            sys.modules[name] = types.ModuleType(name)
        sys.modules["torchvision"].ops = sys.modules["torchvision.ops"]
        sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]
