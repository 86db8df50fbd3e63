"""Data-parallel runs under ``torchrun``: each rank simulates a contiguous shard of the images.

``torchrun --nproc-per-node N -m bsnn_lava simulate ...`` (or any script calling
:func:`bsnn_lava.simulate` / :func:`bsnn_lava.lava.run.run_lava`) starts N processes; torchrun sets
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in each. A run then takes images
``[rank * N_images // world, (rank + 1) * N_images // world)``, and the ranks exchange their results
in one collective (``all_gather_object``): every rank returns the same :class:`SimResult`, equal to
a one-process run's (counts summed, per-image predictions in image order, accuracy recounted from
them). The process group uses gloo on CPU and nccl on CUDA (each rank on ``cuda:LOCAL_RANK``).
"""
from __future__ import annotations

import atexit
import os
from typing import TYPE_CHECKING, Callable, List, Optional, Tuple

import numpy as np

if TYPE_CHECKING:  # the CLI imports this module before it knows whether torch is needed
    from .dynamics import StreamPlan
    from .sim.result import SimResult


def launched_ranks() -> Optional[Tuple[int, int]]:
    """``(rank, world_size)`` when torchrun (or another launcher setting ``WORLD_SIZE``) started this
    process as one of several; ``None`` for a plain one-process run."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    return int(os.environ["RANK"]), world


def use_ranks(distributed: Optional[bool]) -> bool:
    """The ``distributed`` argument of a run resolved: ``None`` means "when launched as one of
    several ranks"; ``True`` outside such a launch is a ``ValueError``."""
    if distributed is None:
        return launched_ranks() is not None
    if distributed and launched_ranks() is None:
        raise ValueError("distributed=True needs a launch by torchrun with more than one process (WORLD_SIZE > 1)")
    return bool(distributed)


def is_main_process() -> bool:
    """True on rank 0 of a data-parallel run and in a one-process run: the process that prints,
    shows progress and writes files."""
    ranks = launched_ranks()
    return ranks is None or ranks[0] == 0


def rank_device(device: str) -> str:
    """The device of this rank: ``cuda`` becomes ``cuda:LOCAL_RANK`` in a data-parallel run."""
    if launched_ranks() is not None and str(device) == "cuda":
        return f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    return device


def process_group(device: str):
    """``torch.distributed``, its default process group initialised (gloo for CPU, nccl for CUDA
    devices) if this process is not yet part of one. A group initialised here is destroyed at
    interpreter exit (``atexit``): gloo's worker threads outliving the interpreter abort the process
    ("terminate called without an active exception", pytorch/pytorch#190489)."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        cuda = str(device).startswith("cuda")
        if cuda:
            torch.cuda.set_device(torch.device(device))
        dist.init_process_group("nccl" if cuda else "gloo")
        atexit.register(_leave_process_group)
    return dist


def _leave_process_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def shard(n_images: int, rank: int, world: int) -> slice:
    """The contiguous images of ``rank`` out of ``world`` (sizes differ by at most one)."""
    return slice(rank * n_images // world, (rank + 1) * n_images // world)


def run_sharded(run: Callable[[slice, bool], SimResult], n_images: int, labels, device: str = "cpu") -> SimResult:
    """``run(images, progress)`` on this rank's shard of ``n_images``, the ranks' results merged
    (:func:`merge_results`); ``progress`` is true on rank 0 only. ``ValueError`` when there are fewer
    images than ranks."""
    rank, world = launched_ranks()
    if n_images < world:
        raise ValueError(f"{n_images} image(s) for {world} ranks: give at least one image per rank")
    local = run(shard(n_images, rank, world), rank == 0)
    parts: List[Optional[SimResult]] = [None] * world
    process_group(device).all_gather_object(parts, local)
    return merge_results(parts, labels)


def run_lane_sharded(run: Callable[["StreamPlan", bool], SimResult], plan: "StreamPlan", labels,
                     device: str = "cpu") -> SimResult:
    """A streamed run under torchrun: ``run(rank_plan, progress)`` streams this rank's contiguous share of
    ``plan``'s lanes (every rank runs the same steps, so the per-step counts add up to a one-process
    run's), and the ranks' results are merged (:func:`merge_results`). ``ValueError`` when there are
    fewer lanes than ranks."""
    from .dynamics import StreamPlan

    rank, world = launched_ranks()
    if plan.lanes < world:
        raise ValueError(f"a streamed run with {plan.lanes} lane(s) (images entering per frame, the batch size) cannot "
                         f"be shared by {world} ranks: give a batch size of at least {world}")
    lanes = shard(plan.lanes, rank, world)
    local = run(StreamPlan(plan.n_images, plan.lanes, lanes.start, lanes.stop), rank == 0)
    parts: List[Optional[SimResult]] = [None] * world
    process_group(device).all_gather_object(parts, local)
    return merge_results(parts, labels)


def merge_results(parts: List[SimResult], labels=None) -> SimResult:
    """One result from the results of consecutive shards of the same images and steps: counts
    summed, per-image arrays concatenated in order, accuracy counted again from the predictions and
    ``labels`` (all images'), so it equals a one-process run's to the bit. ``extras``: recorded
    spikes and readout potentials concatenated, integer counts summed, Lava's ``timing`` kept per
    rank in ``timing_per_rank`` (``timing``: rank 0's), other entries taken from the first part."""
    from .sim.result import SimResult

    first = parts[0]
    for part in parts[1:]:
        if (part.n_steps, part.layer_names, part.synapse_names) != (first.n_steps, first.layer_names,
                                                                     first.synapse_names):
            raise ValueError("the shards were simulated with different steps or networks")
    sum_dicts = lambda key: {k: sum(getattr(p, key)[k] for p in parts) for k in getattr(first, key)}
    n_samples = sum(p.n_samples for p in parts)
    summed = dict(
        n_steps=first.n_steps, n_samples=n_samples, layer_names=first.layer_names,
        n_spikes_per_step=sum(p.n_spikes_per_step for p in parts), synapse_names=first.synapse_names,
        n_synops_per_step=sum(p.n_synops_per_step for p in parts),
        n_spikes_per_neuron=sum_dicts("n_spikes_per_neuron"),
        n_sin=None if first.n_sin is None else sum_dicts("n_sin"),
        n_lost_input=sum_dicts("n_lost_input"), n_saturated=sum_dicts("n_saturated"), n_neurons=first.n_neurons,
        method=first.method, extras=_merge_extras([p.extras for p in parts]), frame_limit=first.frame_limit)
    if first.stream is not None:
        return SimResult(**summed, **_stream_rows(parts, labels))
    predictions_per_step = np.concatenate([p.predictions_per_step for p in parts], axis=1)
    ann_predictions = None if first.ann_predictions is None else np.concatenate([p.ann_predictions for p in parts])
    accuracy = ann_accuracy = None
    if labels is not None and first.accuracy is not None:
        labels = np.asarray(labels)
        accuracy = (predictions_per_step == labels).sum(axis=1) / n_samples
        if ann_predictions is not None:
            ann_accuracy = int((ann_predictions == labels).sum()) / n_samples
    return SimResult(**summed, predictions=np.concatenate([p.predictions for p in parts]),
                     predictions_per_step=predictions_per_step, ann_predictions=ann_predictions, accuracy=accuracy,
                     ann_accuracy=ann_accuracy)


def _stream_rows(parts: List[SimResult], labels) -> dict:
    """The per-image fields of the lane shares of one stream, put in image order, with the accuracy
    counted again from ``labels`` (all images')."""
    from dataclasses import replace

    index = np.concatenate([p.stream.image_index for p in parts])
    order = np.argsort(index, kind="stable")
    rows = lambda values: np.concatenate(values)[order]
    predictions = rows([p.predictions for p in parts])
    ann_predictions = None if parts[0].ann_predictions is None else rows([p.ann_predictions for p in parts])
    stream = replace(parts[0].stream, image_index=index[order],
                     prediction_step=rows([p.stream.prediction_step for p in parts]),
                     readout=rows([p.stream.readout for p in parts]))
    final_correct = ann_accuracy = None
    if labels is not None and parts[0].final_correct is not None:
        labels = np.asarray(labels)[stream.image_index]
        final_correct = int((predictions == labels).sum())
        if ann_predictions is not None:
            ann_accuracy = int((ann_predictions == labels).sum()) / len(index)
    return dict(predictions=predictions, predictions_per_step=None, ann_predictions=ann_predictions,
                ann_accuracy=ann_accuracy, stream=stream, final_correct=final_correct)


def _merge_extras(extras: List[dict]) -> dict:
    merged = dict(extras[0])
    for key, value in extras[0].items():
        if key in ("spikes", "readout_v"):  # (n_steps, n_samples, ...)
            concat = lambda values: np.concatenate(values, axis=1)
            merged[key] = ({name: concat([e[key][name] for e in extras]) for name in value}
                           if isinstance(value, dict) else concat([e[key] for e in extras]))
        elif key == "timing":
            merged["timing_per_rank"] = [e[key] for e in extras]
        elif isinstance(value, int) and not isinstance(value, bool):
            merged[key] = sum(e[key] for e in extras)
    return merged
