"""Image data sets as raw uint8 pixels: scikit-learn's bundled digits and ``.npz`` files."""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Tuple

import numpy as np


class DataError(ValueError):
    """A data set cannot be read; the message names the file and the field."""


def load_digits_uint8(seed: int = 0, n_test: int = 397) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits (1797 images, always available offline) as uint8 pixels.

    The 0..16 grey levels are scaled to 0..255. Returns ``(x_train, y_train, x_test, y_test)`` with
    ``x`` shaped (N, 1, 8, 8); the split is a fixed shuffle by ``seed``.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    x, y = x[order], y[order]
    return x[n_test:], y[n_test:], x[:n_test], y[:n_test]


def load_npz(path) -> Tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` from an ``.npz`` with arrays ``x`` (uint8 images) and ``y`` (class indices)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not a NumPy .npz archive (write one with numpy.savez(path, x=images, y=labels))")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in ("x", "y") if k not in archive.files]
            if missing:
                raise DataError(f"{path}: missing array(s) {', '.join(missing)} (found {', '.join(archive.files)})")
            x, y = archive["x"], archive["y"]
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"{path}: not a readable .npz file ({err})") from err
    if x.ndim not in (3, 4) or len(x) == 0:
        raise DataError(f"{path}: field 'x' must hold at least one image, (N, H, W), (N, H, W, C) or (N, C, H, W); "
                        f"got shape {x.shape}")
    if x.dtype != np.uint8:
        raise DataError(f"{path}: field 'x' must be uint8 raw pixels, got {x.dtype}")
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: field 'y' must be {len(x)} integer labels, got {y.dtype} {y.shape}")
    return x, y.astype(np.int64)


def load_dataset(spec: str, split: str = "test") -> Tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` raw uint8 images and labels from a data spec.

    ``digits`` (scikit-learn's bundled digits; ``digits:train`` for the training split) or a path to
    an ``.npz`` file with arrays ``x`` and ``y``.
    """
    name, _, part = spec.partition(":")
    if name == "digits":
        x_train, y_train, x_test, y_test = load_digits_uint8()
        part = part or split
        if part not in ("train", "test"):
            raise DataError(f"{spec}: the digits split must be 'train' or 'test'")
        return (x_train, y_train) if part == "train" else (x_test, y_test)
    path = Path(spec)
    if path.suffix == ".npz" or path.is_file():
        return load_npz(path)
    raise DataError(f"{spec}: not a data set (use 'digits', 'digits:train' or a .npz file with x and y)")
