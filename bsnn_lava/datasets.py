"""Image data sets as raw uint8 pixels: scikit-learn's bundled digits, ``.npz`` files, and
ImageNet-style folders of image files (decoded a batch at a time, never loaded whole)."""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

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


#: File name endings :class:`ImageFolder` reads (case-insensitive), as torchvision's ImageFolder.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class ImageFolder:
    """Images in class subfolders (``root/<class>/<image>``, the ImageNet / torchvision layout):
    classes are the subfolder names in sorted order (label = index), images sorted by path.

    Nothing is decoded up front. ``folder[a:b]`` is a view of images a..b-1; ``np.asarray(view)``
    decodes it to uint8 (n, size, size, 3): RGB, the shorter side resized to ``size * 256 / 224``
    (bilinear), then the centre ``size x size`` crop (torchvision's ImageNet evaluation transform,
    without the normalisation, which the converted network does on raw pixels). The simulators
    decode one batch at a time. ``labels``: (N,) int64.
    """

    def __init__(self, root: Union[str, Path], size: int = 224, files: Optional[Sequence[Path]] = None,
                 labels: Optional[np.ndarray] = None, classes: Optional[List[str]] = None):
        self.root, self.size = Path(root), int(size)
        if files is None:
            if not self.root.is_dir():
                raise DataError(f"{self.root}: no such folder")
            classes = sorted(d.name for d in self.root.iterdir() if d.is_dir())
            files, label_list = [], []
            for index, name in enumerate(classes):
                found = sorted(f for f in (self.root / name).rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
                files += found
                label_list += [index] * len(found)
            if not files:
                raise DataError(f"{self.root}: no images in class subfolders (<folder>/<class>/<image>, endings "
                                f"{', '.join(IMAGE_SUFFIXES)})")
            labels = np.asarray(label_list, dtype=np.int64)
        self.files, self.labels, self.classes = list(files), labels, list(classes)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: slice) -> "ImageFolder":
        if not isinstance(index, slice):
            raise TypeError("an ImageFolder is indexed by slices (folder[a:b]); np.asarray(folder) decodes it")
        return ImageFolder(self.root, self.size, self.files[index], self.labels[index], self.classes)

    @property
    def shape(self) -> Tuple[int, int, int, int]:
        """(N, size, size, 3): the shape :meth:`__array__` returns."""
        return len(self.files), self.size, self.size, 3

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        images = np.stack([self._decode(f) for f in self.files]) if self.files else np.zeros(self.shape, np.uint8)
        return images if dtype is None else images.astype(dtype)

    def _decode(self, path: Path) -> np.ndarray:
        from PIL import Image

        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
                scale = self.size * 256 / 224 / min(image.size)
                width, height = (max(self.size, round(s * scale)) for s in image.size)
                image = image.resize((width, height), Image.BILINEAR)
                left, top = (width - self.size) // 2, (height - self.size) // 2
                return np.asarray(image.crop((left, top, left + self.size, top + self.size)), dtype=np.uint8)
        except OSError as err:
            raise DataError(f"{path}: not a readable image ({err})") from None


def load_dataset(spec: str, split: str = "test", image_size: int = 224) -> Tuple[Union[np.ndarray, ImageFolder], np.ndarray]:
    """``(x, y)`` raw uint8 images and labels from a data spec.

    ``digits`` (scikit-learn's bundled digits; ``digits:train`` for the training split), a path to
    an ``.npz`` file with arrays ``x`` and ``y``, or a folder of class subfolders of image files
    (an :class:`ImageFolder` of ``image_size`` crops, decoded batch by batch; ``y`` its labels).
    """
    name, _, part = spec.partition(":")
    if name == "digits":
        x_train, y_train, x_test, y_test = load_digits_uint8()
        part = part or split
        if part not in ("train", "test"):
            raise DataError(f"{spec}: the digits split must be 'train' or 'test'")
        return (x_train, y_train) if part == "train" else (x_test, y_test)
    path = Path(spec)
    if path.is_dir():
        folder = ImageFolder(path, image_size)
        return folder, folder.labels
    if path.suffix == ".npz" or path.is_file():
        return load_npz(path)
    raise DataError(f"{spec}: not a data set (use 'digits', 'digits:train', a .npz file with x and y, or a folder "
                    "of class subfolders of images)")
