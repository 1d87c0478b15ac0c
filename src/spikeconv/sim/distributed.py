"""Data-parallel simulation with ``torch.distributed`` (``torchrun``; gloo on CPU, nccl on GPU).

The test set is cut into batches of ``batch_size``; rank ``r`` of ``W`` simulates a
contiguous run of whole batches (:func:`shard`: the first ``n mod W`` ranks take one batch
more), so no image is padded or simulated twice. Each rank's :class:`SimulationResult` is
gathered and :func:`merge_results` joins them in rank order: per-image tensors
(predictions, output counts and membranes, labels, spikes and synaptic operations per
image, per-neuron counts) are concatenated, totals (correct predictions per step, spikes
per layer and per step, synaptic operations) are summed, which is exact for these integer
counts. Poisson input and the softmax readout draw with ``seeding="per_batch"``: batch
``k``'s stream is seeded by ``(seed, k)``, so 1, 2 or W processes draw the same spikes as
``simulate(..., seeding="per_batch")`` in one process.

What travels: each rank reads only its own batches' images (all ranks read the network);
only the per-image results (a few numbers per image, plus per-neuron counts when asked)
and the per-step totals are sent back. See the README for the split at ImageNet scale.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from .inputs import iter_batches
from .network import SpikingNetwork
from .simulate import SimulationResult, simulate

__all__ = ["merge_results", "shard", "simulate_distributed"]


def shard(batches: int, world: int, rank: int) -> range:
    """The batches rank ``rank`` of ``world`` simulates: contiguous, the first ``batches mod
    world`` ranks one more, every batch exactly once."""
    if world <= 0 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not one of {world} ranks")
    size, extra = divmod(batches, world)
    start = rank * size + min(rank, extra)
    return range(start, start + size + (1 if rank < extra else 0))


def merge_results(results: list[SimulationResult]) -> SimulationResult:
    """One result from the results of consecutive shards of the data, in order."""
    if not results:
        raise ValueError("no results to merge")
    first = results[0]
    for r in results[1:]:
        if (r.T, r.coding) != (first.T, first.coding) or r.neurons_per_layer != first.neurons_per_layer:
            raise ValueError("the results come from different simulations (T, coding or network differ)")
        if (r.labels is None) != (first.labels is None):
            raise ValueError("some shards have labels and some do not")

    def cat(name: str) -> Any:  # a per-image tensor (or None where the field was not recorded)
        values = [getattr(r, name) for r in results]
        return None if values[0] is None else torch.cat(values)

    def total(name: str) -> Any:
        values = [getattr(r, name) for r in results]
        if values[0] is None:
            return None
        if isinstance(values[0], dict):
            return {k: sum(v[k] for v in values) for k in values[0]}
        return torch.stack(values).sum(0)

    def per_key(name: str, dim: int) -> dict[str, Tensor] | None:
        values = [getattr(r, name) for r in results]
        return None if values[0] is None else {k: torch.cat([v[k] for v in values], dim) for k in values[0]}

    return dataclasses.replace(
        first,
        predictions=cat("predictions"),
        output_counts=cat("output_counts"),
        output_membrane=cat("output_membrane"),
        labels=cat("labels"),
        correct_per_step=total("correct_per_step"),
        spikes_per_layer=total("spikes_per_layer"),
        spikes_per_image=cat("spikes_per_image"),
        input_spikes_per_image=cat("input_spikes_per_image"),
        spikes_per_step=total("spikes_per_step"),
        wall_time_s=max(r.wall_time_s for r in results),
        spike_counts=per_key("spike_counts", 0),
        spike_trains=per_key("spike_trains", 1),
        synops_per_layer=total("synops_per_layer"),
        synops_per_image=cat("synops_per_image"),
        synops_per_step=total("synops_per_step"),
    )


def simulate_distributed(
    snn: SpikingNetwork, data: Any, T: int = 100, *, batch_size: int = 100, group: Any = None, **options: Any
) -> SimulationResult:
    """:func:`~spikeconv.simulate` over the ranks of the initialized default process group
    (or ``group``): each rank simulates its :func:`shard` of the batches, and every rank
    returns the merged result. ``options`` go to ``simulate`` (``seeding`` is
    ``per_batch``). ``data`` is cut into batches the same way on every rank: a tensor, an
    ``(images, labels)`` pair, an ``ImageDataset`` or an iterable of batches."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            "simulate_distributed() needs an initialized process group: run under torchrun and call "
            "torch.distributed.init_process_group('gloo') first (or use simulate() in one process)"
        )
    if options.pop("seeding", "per_batch") != "per_batch":
        raise ValueError("simulate_distributed() draws per batch (seeding='per_batch'), so that any split agrees")
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    batches = list(iter_batches(data, batch_size=batch_size, what="simulate data"))
    mine = shard(len(batches), world, rank)
    result = None
    if len(mine):
        result = simulate(
            snn, (batches[k] for k in mine), T=T, batch_size=batch_size, seeding="per_batch", first_batch=mine.start,
            **options,
        )  # fmt: skip
        result = dataclasses.replace(result, **_to_cpu(result))
    gathered: list[SimulationResult | None] = [None] * world
    dist.all_gather_object(gathered, result, group=group)
    return merge_results([r for r in gathered if r is not None])


def _to_cpu(result: SimulationResult) -> dict[str, Any]:
    """The tensors of ``result`` on the CPU (what all_gather_object pickles)."""
    moved: dict[str, Any] = {}
    for f in dataclasses.fields(result):
        value = getattr(result, f.name)
        if isinstance(value, Tensor):
            moved[f.name] = value.cpu()
        elif isinstance(value, dict) and value and isinstance(next(iter(value.values())), Tensor):
            moved[f.name] = {k: v.cpu() for k, v in value.items()}
    return moved
