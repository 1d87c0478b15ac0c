"""Turning what users pass as data (a tensor, an ImageDataset, an iterable of batches) into
``(x, y)`` batches, with the shape, the type and the content checked; and the checks of the
numbers they pass (``is_integer``, ``is_number``, ``check_count``).

Every check names the argument at fault (``what``), the value found and what to do, so a
wrong input is an error before it becomes a wrong result: non-finite images, labels that
are not class indices, values a spike coding cannot represent. Images outside [0, 1] are
legal for analog (constant) input, so there they give an :class:`InputRangeWarning`.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Iterable, Iterator
from typing import TypeGuard

import torch
from torch import Tensor

__all__ = ["InputRangeWarning", "check_coding_range", "check_count", "check_labels", "is_integer", "is_number", "iter_batches", "outside", "range_text", "value_range", "warn_user"]


class InputRangeWarning(UserWarning):
    """Images outside the range the conversion or the input coding assumes: [0, 1] for
    calibration data, the calibration data's range for simulated data."""


def is_integer(value: object) -> TypeGuard[int]:
    """An ``int`` that is not a ``bool`` (``True`` is an int to Python, not a count to us)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> TypeGuard[int | float]:
    """An ``int`` or ``float`` that is not a ``bool``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_count(name: str, value: object, *, optional: bool = False) -> None:
    """A positive number of images (``None`` too when ``optional``: all of them)."""
    if optional and value is None:
        return
    if not is_integer(value) or value <= 0:
        what = "a positive number of images" + (" or None (all)" if optional else "")
        raise ValueError(f"{name} must be {what}, got {value!r}")


def warn_user(warning: Warning) -> None:
    """Issue ``warning`` at the caller's line: the first frame outside spikeconv and torch
    (whose decorators would otherwise be named as the place)."""
    own = (os.path.dirname(__file__), os.path.dirname(torch.__file__))
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_code.co_filename.startswith(own):
        frame, level = frame.f_back, level + 1  # type: ignore[assignment]
    warnings.warn(warning, stacklevel=level)


def iter_batches(
    data: object, *, batch_size: int, input_shape: tuple[int, ...] | None = None, what: str = "data"
) -> Iterator[tuple[Tensor, Tensor | None]]:
    """Yield ``(x, y)`` with ``y`` ``None`` where no labels were given.

    ``data`` may be a tensor of images ``[N, ...]``, a pair ``(images, labels)`` of
    tensors, an object with ``tensors()`` (an :class:`~spikeconv.io.data.ImageDataset`), or an
    iterable of batches that are tensors or ``(x, y)`` pairs. Tensors are cut into batches
    of ``batch_size``; given batches are used as they come. ``what`` names the argument in
    errors (e.g. ``"calibration_data"``)."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    tensors = getattr(data, "tensors", None)
    if callable(tensors):
        data = tensors()
    if isinstance(data, Tensor):
        data = (data, None)
    seen = 0
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], Tensor):
        x_all, y_all = data
        if y_all is not None and not isinstance(y_all, Tensor):
            raise TypeError(f"{what}: labels must be a tensor of class indices, not {type(y_all).__name__}")
        if y_all is not None and (y_all.ndim == 0 or len(y_all) != len(x_all)):
            raise ValueError(f"{what}: {len(x_all)} images but labels of shape {tuple(y_all.shape)}")
        for start in range(0, len(x_all), batch_size):
            x = x_all[start : start + batch_size]
            y = None if y_all is None else y_all[start : start + batch_size]
            yield _checked(x, y, input_shape, what, start)
        return
    if isinstance(data, (str, bytes)) or not isinstance(data, Iterable):
        raise TypeError(
            f"{what} must be a tensor of images, an (images, labels) pair or an iterable of batches, "
            f"not {type(data).__name__}"
        )
    for batch in data:
        if isinstance(batch, Tensor):
            x, y = batch, None
        elif isinstance(batch, (tuple, list)) and len(batch) >= 1 and isinstance(batch[0], Tensor):
            x = batch[0]
            y = batch[1] if len(batch) > 1 and isinstance(batch[1], Tensor) else None
        else:
            raise TypeError(f"{what}: each batch must be a tensor or an (x, y) pair, not {type(batch).__name__}")
        if y is not None and (y.ndim == 0 or len(y) != len(x)):
            raise ValueError(f"{what}: a batch of {len(x)} images has labels of shape {tuple(y.shape)}")
        yield _checked(x, y, input_shape, what, seen)
        seen += len(x)


def _checked(
    x: Tensor, y: Tensor | None, input_shape: tuple[int, ...] | None, what: str, offset: int
) -> tuple[Tensor, Tensor | None]:
    if input_shape is not None and tuple(x.shape[1:]) != tuple(input_shape):
        raise ValueError(
            f"{what}: a batch of shape {tuple(x.shape)} does not fit the model, which expects "
            f"[batch, {', '.join(map(str, input_shape))}]"
        )
    if not torch.is_floating_point(x):
        raise TypeError(
            f"{what}: images must be floating point in [0, 1], got dtype {x.dtype} (for uint8 images: x.float() / 255)"
        )
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = (~finite).flatten(1).any(1).nonzero().flatten()
        first = int(bad[0])
        kind = "NaN" if bool(x[first].isnan().any()) else "infinite"
        raise ValueError(
            f"{what}: image {offset + first} holds {kind} values ({len(bad)} such images in its batch): remove or "
            "repair them (e.g. torch.nan_to_num) before converting or simulating"
        )
    return x, y


def value_range(x: Tensor) -> tuple[float, float]:
    """The smallest and the largest value of ``x``."""
    low, high = torch.aminmax(x)
    return float(low), float(high)


def range_text(low: float, high: float) -> str:
    return f"[{low:.4g}, {high:.4g}]"


def check_coding_range(x: Tensor, coding: str, what: str, offset: int = 0) -> None:
    """Spike codings read intensities as probabilities (Poisson) or rates (deterministic):
    values outside [0, 1] cannot be represented, and clipping them would be a silent
    change of the input."""
    low, high = value_range(x)
    if low < 0.0 or high > 1.0:
        raise ValueError(
            f"{what}: images {offset}..{offset + len(x) - 1} span {range_text(low, high)}, but coding {coding!r} "
            "reads each pixel as a spike probability per step, which needs values in [0, 1]: divide 0..255 images "
            "by 255 and undo mean/std normalization, or simulate with coding='constant' (analog input takes any "
            "finite value)"
        )


def check_labels(y: Tensor, classes: int, what: str, offset: int = 0) -> None:
    """Labels must be integer class indices of the model's ``classes`` outputs."""
    if y.ndim == 2 and y.shape[1] == classes and y.shape[1] > 1:
        raise ValueError(
            f"{what}: labels of shape {tuple(y.shape)} look one-hot; pass class indices of shape [N], "
            "e.g. labels.argmax(1)"
        )
    if y.ndim != 1:
        raise ValueError(f"{what}: labels must be class indices of shape [N], got shape {tuple(y.shape)}")
    if torch.is_floating_point(y) or torch.is_complex(y) or y.dtype == torch.bool:
        raise TypeError(f"{what}: labels must be integer class indices, got dtype {y.dtype}: pass labels.long()")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= classes):
        bad = int(y.min()) if int(y.min()) < 0 else int(y.max())
        index = offset + int(((y < 0) | (y >= classes)).nonzero()[0])
        raise ValueError(
            f"{what}: label {bad} of image {index} is not a class of this network, which has {classes} outputs "
            f"(classes 0..{classes - 1}): check that the labels belong to the model's dataset"
        )


def outside(low: float, high: float, reference: tuple[float, float]) -> bool:
    """Whether [low, high] reaches beyond ``reference`` by more than the reference's own
    width (a scale error such as 0..255 against 0..1, not one brighter image)."""
    ref_low, ref_high = reference
    width = ref_high - ref_low
    width = width if width > 0 and math.isfinite(width) else 1.0
    return high > ref_high + width or low < ref_low - width
