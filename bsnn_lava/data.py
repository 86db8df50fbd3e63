"""Image batches: layout handling for raw uint8 pixels."""
from __future__ import annotations

import numpy as np
import torch


def as_nchw(images, channels: int | None = None, dtype: torch.dtype | None = torch.float32) -> torch.Tensor:
    """Raw pixel images as a torch tensor (N, C, H, W) of ``dtype`` (``None``: the images' own, e.g.
    uint8, a quarter of float32's memory), values unchanged.

    Accepts numpy arrays or tensors shaped (N, H, W) (one channel), (N, C, H, W) or (N, H, W, C);
    ``channels`` (the network's input channels) resolves the layout where both readings fit.
    """
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise ValueError(f"images must be (N, H, W), (N, C, H, W) or (N, H, W, C); got shape {tuple(x.shape)}")
    channels_first = x.shape[1] == channels if channels else x.shape[1] in (1, 3)
    channels_last = x.shape[3] == channels if channels else x.shape[3] in (1, 3)
    if channels_last and not channels_first:
        x = x.permute(0, 3, 1, 2)
    elif not channels_first:
        raise ValueError(f"images of shape {tuple(x.shape)} have no axis of {channels or '1 or 3'} channel(s)"
                         + (", the number the model's input has" if channels else ""))
    return x.contiguous() if dtype is None else x.contiguous().to(dtype)


def network_batch(images, labels, input_shape, n_classes: int):
    """``(x, y)``: raw images checked against a network's input ``(C, H, W)`` as in :func:`as_nchw`,
    and labels (``None``, or a (N,) int64 array) checked to be integers in ``[0, n_classes)``.

    ``ValueError`` with a one-line message naming the shapes, or the first bad label's index.
    """
    if is_streamed(images):
        images = np.asarray(images)  # an unreadable file raises DataError (naming it) here
    x = _network_images(images, input_shape, np.shape(images))
    if x.shape[0] == 0:
        raise ValueError("no images: the image array is empty")
    return x, check_labels(labels, x.shape[0], n_classes)


def _network_images(images, input_shape, shape_named) -> torch.Tensor:
    """:func:`as_nchw` of ``images``, checked to be ``input_shape``; the error names ``shape_named``."""
    input_shape = tuple(int(s) for s in input_shape)
    try:
        x = as_nchw(images, input_shape[0])
    except ValueError:
        x = None
    if x is None or tuple(x.shape[1:]) != input_shape:
        raise ValueError(f"images of shape {tuple(shape_named)} do not fit the network's input (C, H, W) = "
                         f"{input_shape} (give (N, H, W, C) or (N, C, H, W) raw pixels of that size)")
    return x


def check_labels(labels, n_images: int, n_classes: int):
    """``labels`` as a (N,) int64 array of class indices in ``[0, n_classes)`` (``None`` stays ``None``);
    ``ValueError`` naming the first bad label."""
    if labels is None:
        return None
    y = np.asarray(labels)
    if y.shape != (n_images,):
        raise ValueError(f"{n_images} images but labels of shape {y.shape}")
    if y.size and not (np.issubdtype(y.dtype, np.integer) or np.array_equal(y, np.round(y))):
        bad = int(np.flatnonzero(y != np.round(y))[0])
        raise ValueError(f"labels must be integer class indices; label {bad} is {y[bad]!r}")
    y = y.astype(np.int64)
    outside = np.flatnonzero((y < 0) | (y >= n_classes))
    if outside.size:
        raise ValueError(f"labels must be class indices in [0, {n_classes}) for this network's {n_classes} classes; "
                         f"label {int(outside[0])} is {int(y[outside[0]])} ({outside.size} of {y.size} outside)")
    return y


def is_streamed(images) -> bool:
    """True for image sources decoded a batch at a time (:class:`bsnn_lava.datasets.ImageFolder`)."""
    from .datasets import ImageFolder

    return isinstance(images, ImageFolder)


def check_images(images, labels, input_shape, n_classes: int):
    """:func:`network_batch`'s checks, returning the checked labels (:func:`check_labels`), without
    converting the images: only the first is converted (decoded, for a streamed source), so that a
    run can convert one batch at a time."""
    if len(images) == 0:
        raise ValueError(f"no images: the image {'folder' if is_streamed(images) else 'array'} is empty")
    if is_streamed(images):
        network_batch(images[:1], None, input_shape, n_classes)
    else:
        _network_images(images[:1], input_shape, np.shape(images))
    return check_labels(labels, len(images), n_classes)
