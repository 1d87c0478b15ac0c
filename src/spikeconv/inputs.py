"""Turning what users pass as data (a tensor, an ImageDataset, an iterable of batches) into
``(x, y)`` batches, with the input shape checked against the model."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import Tensor

__all__ = ["iter_batches"]


def iter_batches(
    data: object, *, batch_size: int, input_shape: tuple[int, ...] | None = None
) -> Iterator[tuple[Tensor, Tensor | None]]:
    """Yield ``(x, y)`` with ``y`` ``None`` where no labels were given.

    ``data`` may be a tensor of images ``[N, ...]``, a pair ``(images, labels)`` of
    tensors, an object with ``tensors()`` (an :class:`~spikeconv.data.ImageDataset`), or an
    iterable of batches that are tensors or ``(x, y)`` pairs. Tensors are cut into batches
    of ``batch_size``; given batches are used as they come."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    tensors = getattr(data, "tensors", None)
    if callable(tensors):
        data = tensors()
    if isinstance(data, Tensor):
        data = (data, None)
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], Tensor):
        x_all, y_all = data
        if y_all is not None and len(y_all) != len(x_all):
            raise ValueError(f"{len(x_all)} images but {len(y_all)} labels")
        for start in range(0, len(x_all), batch_size):
            x = x_all[start : start + batch_size]
            y = None if y_all is None else y_all[start : start + batch_size]
            yield _checked(x, y, input_shape)
        return
    if not isinstance(data, Iterable):
        raise TypeError(
            f"data must be a tensor of images, an (images, labels) pair or an iterable of batches, "
            f"not {type(data).__name__}"
        )
    for batch in data:
        if isinstance(batch, Tensor):
            yield _checked(batch, None, input_shape)
        elif isinstance(batch, (tuple, list)) and len(batch) >= 1 and isinstance(batch[0], Tensor):
            y = batch[1] if len(batch) > 1 and isinstance(batch[1], Tensor) else None
            yield _checked(batch[0], y, input_shape)
        else:
            raise TypeError(f"each batch must be a tensor or an (x, y) pair, not {type(batch).__name__}")


def _checked(x: Tensor, y: Tensor | None, input_shape: tuple[int, ...] | None) -> tuple[Tensor, Tensor | None]:
    if input_shape is not None and tuple(x.shape[1:]) != tuple(input_shape):
        raise ValueError(
            f"input batch of shape {tuple(x.shape)} does not fit the model, which expects "
            f"[batch, {', '.join(map(str, input_shape))}]"
        )
    if not torch.is_floating_point(x):
        raise TypeError(f"images must be floating point in [0, 1], got dtype {x.dtype}")
    return x, y
