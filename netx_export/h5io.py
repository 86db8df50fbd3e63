"""Typed HDF5 datasets: one storage convention per kind of field, strict checks on read.

Conventions (shared with lava-dl netx): every field is a dataset; strings are 1-element fixed-length
byte-string datasets (``S10`` or longer, UTF-8); integers are int64; floats float64 unless the caller
asks for float32 (integer-valued weights). Readers check the dtype kind and size and the shape from
the metadata *before* reading any data, and turn every h5py/HDF5 error into a
:class:`NetxFormatError` that names the file, the layer and the field.
"""
from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Tuple

import h5py
import numpy as np

from bsnn_lava.files import atomic_write

from .errors import NetxExportError, NetxFormatError, one_line

#: Errors h5py, HDF5 and numpy raise on damaged files (h5py has no single base class for them).
H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError, IndexError, OverflowError,
             MemoryError, UnicodeError, SystemError, AttributeError)
#: Root dataset holding the SHA-256 of every other dataset (see :func:`content_digest`).
DIGEST_FIELD = "content_sha256"


@dataclass(frozen=True)
class Where:
    """The place of a field, for messages: file, layer (index and name, if any), group prefix."""
    path: str
    index: Optional[int] = None
    name: Optional[str] = None
    prefix: str = ""

    def sub(self, group: str) -> "Where":
        """The same place, one group deeper (``neuron/``, ``synapse/1/``)."""
        return replace(self, prefix=f"{self.prefix}{group}/")

    def describe(self, field: str) -> str:
        """``layer 3 ('conv1'), field 'neuron/threshold'`` (without the file)."""
        full = f"field {self.prefix + field!r}"
        if self.index is None:
            return full
        label = "name unreadable" if self.name is None else repr(self.name)
        return f"layer {self.index} ({label}), {full}"

    def error(self, field: str, problem: object) -> NetxFormatError:
        return NetxFormatError(one_line(f"{self.path}: {self.describe(field)}: {problem}"))

    def export_error(self, field: str, problem: object) -> NetxExportError:
        return NetxExportError(one_line(f"cannot write {self.path}: {self.describe(field)}: {problem}"))


@contextlib.contextmanager
def guard(where: Where, field: str) -> Iterator[None]:
    """Turn any h5py/HDF5 error raised inside into a :class:`NetxFormatError` for ``field``."""
    try:
        yield
    except NetxFormatError:
        raise
    except H5_ERRORS as err:
        raise where.error(field, f"unreadable ({type(err).__name__}: {err})") from None


# --- writing ---------------------------------------------------------------------------------------

def put_str(group: h5py.Group, key: str, text: str) -> None:
    """A 1-element fixed-length byte string (netx reads ``value[0].decode()``); no NUL bytes."""
    data = text.encode("utf-8")
    if b"\0" in data:
        raise ValueError(f"field {key!r}: text may not contain NUL characters: {text!r}")
    group.create_dataset(key, data=np.array([data], dtype=f"S{max(10, len(data))}"))


def put_int(group: h5py.Group, key: str, value: int) -> None:
    group.create_dataset(key, data=np.int64(value))


def put_ints(group: h5py.Group, key: str, values: Sequence[int]) -> None:
    group.create_dataset(key, data=np.asarray(values, dtype=np.int64).reshape(-1))


def put_float(group: h5py.Group, key: str, value: float) -> None:
    group.create_dataset(key, data=np.float64(value))


def put_array(group: h5py.Group, key: str, values: np.ndarray, dtype=np.float64) -> None:
    group.create_dataset(key, data=np.asarray(values, dtype=dtype))


def atomic_h5(path, fill: Callable[[h5py.File], None]) -> Path:
    """Write an HDF5 file through ``fill`` into a temporary file beside ``path``, then rename it
    (:func:`bsnn_lava.files.atomic_write`: mode per the umask).

    HDF5 metadata checksums are on (``libver="latest"``). Any exception leaves ``path`` as it was
    (absent or the previous file) and removes the temporary file.
    """
    path = Path(path)
    if path.is_dir():
        raise NetxExportError(f"cannot write {path}: it is a directory")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise NetxExportError(f"cannot write {path}: folder {folder} does not exist")

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w", libver="latest") as h5:
            fill(h5)

    return atomic_write(path, write)


def content_digest(h5: h5py.File) -> str:
    """SHA-256 (hex) over every dataset except :data:`DIGEST_FIELD`: path, dtype, shape, values.

    Values are hashed little-endian, so the digest does not depend on the machine that wrote them.
    """
    names = []
    h5.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    digest = hashlib.sha256()
    for name in sorted(n for n in names if n != DIGEST_FIELD):
        data = np.asarray(h5[name][()])
        data = data.astype(data.dtype.newbyteorder("<"), copy=False)
        digest.update(f"{name}\0{data.dtype.str}\0{data.shape}\0".encode())
        digest.update(np.ascontiguousarray(data).tobytes())
    return digest.hexdigest()


# --- reading ---------------------------------------------------------------------------------------

def _open(group: h5py.Group, key: str, where: Where, missing: str):
    """``group[key]``; an absent key and a damaged link give different messages."""
    with guard(where, key):
        try:
            return group[key]
        except KeyError as err:
            if "doesn't exist" in str(err):
                raise where.error(key, missing) from None
            raise


def get_group(group: h5py.Group, key: str, where: Where) -> h5py.Group:
    obj = _open(group, key, where, "missing group")
    with guard(where, key):
        if not isinstance(obj, h5py.Group):
            raise where.error(key, "is a dataset, expected a group")
        return obj


def has(group: h5py.Group, key: str, where: Where) -> bool:
    with guard(where, key):
        return key in group


def _dataset(group: h5py.Group, key: str, where: Where, kinds: str, itemsize: Optional[int],
             shape: Optional[Tuple[int, ...]], what: str) -> h5py.Dataset:
    obj = _open(group, key, where, "missing")
    with guard(where, key):
        if not isinstance(obj, h5py.Dataset):
            raise where.error(key, "is a group, expected a dataset")
        dtype = obj.dtype
        if dtype.kind not in kinds or (itemsize is not None and dtype.itemsize != itemsize):
            raise where.error(key, f"has dtype {dtype}, expected {what}")
        if shape is not None and tuple(obj.shape) != shape:
            raise where.error(key, f"has shape {tuple(obj.shape)}, expected {shape}")
        return obj


def _values(ds: h5py.Dataset, key: str, where: Where) -> np.ndarray:
    with guard(where, key):
        return np.asarray(ds[()])


def get_str(group: h5py.Group, key: str, where: Where) -> str:
    """A 1-element byte-string dataset as text."""
    data = _values(_dataset(group, key, where, "S", None, (1,), "a byte string (S)"), key, where)[0]
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError as err:
        raise where.error(key, f"is not UTF-8 text ({err})") from None


def get_int(group: h5py.Group, key: str, where: Where) -> int:
    """A scalar int64 dataset."""
    return int(_values(_dataset(group, key, where, "i", 8, (), "a scalar int64"), key, where))


def get_ints(group: h5py.Group, key: str, where: Where, length: Optional[int] = None) -> Tuple[int, ...]:
    """A 1-D int64 dataset (of ``length`` elements, if given)."""
    ds = _dataset(group, key, where, "i", 8, None, "int64")
    with guard(where, key):
        shape = tuple(ds.shape)
    if len(shape) != 1 or (length is not None and shape[0] != length):
        expected = "a vector" if length is None else f"({length},)"
        raise where.error(key, f"has shape {shape}, expected {expected}")
    return tuple(int(v) for v in _values(ds, key, where))


def get_float(group: h5py.Group, key: str, where: Where) -> float:
    """A finite scalar float64 dataset."""
    value = float(_values(_dataset(group, key, where, "f", 8, (), "a scalar float64"), key, where))
    if not np.isfinite(value):
        raise where.error(key, f"is {value}, expected a finite number")
    return value


def get_array(group: h5py.Group, key: str, where: Where, itemsize: int,
              check_shape: Callable[[Tuple[int, ...]], Optional[str]]) -> np.ndarray:
    """A finite float array of ``itemsize``-byte floats, as float64.

    ``check_shape(shape)`` returns a problem (or ``None``); it runs on the metadata before any data
    is read, so a damaged size never allocates memory.
    """
    ds = _dataset(group, key, where, "f", itemsize, None, f"float{8 * itemsize}")
    with guard(where, key):
        shape = tuple(ds.shape)
    problem = check_shape(shape)
    if problem:
        raise where.error(key, problem)
    values = _values(ds, key, where).astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise where.error(key, "has NaN or infinite values")
    return values
