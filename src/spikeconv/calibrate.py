"""Phase 2 of conversion: activation statistics of every stage on a calibration set.

One pass over the data feeds each stage's activations to an observer (``update(x)``) that
keeps the exact maximum, a histogram of the non-zero activations (from which percentiles
and the fraction below any scale are read), and the minimum input through the stage's
negative weights, ``m^l`` of Yang eq. (17). The result is a plain record, cached with the
converted model so other rules can be mapped without another pass.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .graph import ConversionError, Stage, TracedNetwork
from .inputs import iter_batches

__all__ = ["ActivationObserver", "LayerStats", "ActivationStats", "calibrate"]

HISTOGRAM_BINS = 4096


class ActivationObserver:
    """Streaming statistics of one layer's activations.

    The histogram covers ``[0, top]`` in ``HISTOGRAM_BINS`` bins; when a larger value
    arrives, ``top`` doubles and pairs of bins merge, so counts stay exact and the
    resolution stays at least ``max / (HISTOGRAM_BINS / 2)``."""

    def __init__(self) -> None:
        self.max = 0.0
        self.min_negative_input = 0.0
        self.count = 0
        self.nonzero = 0
        self.top = 0.0
        self.histogram = torch.zeros(HISTOGRAM_BINS, dtype=torch.float64)

    def update(self, activations: Tensor, negative_input: Tensor | None = None) -> None:
        a = activations.detach().double().flatten()
        self.count += a.numel()
        positive = a[a > 0]
        self.nonzero += positive.numel()
        if negative_input is not None and negative_input.numel():
            self.min_negative_input = min(self.min_negative_input, float(negative_input.min()))
        if not positive.numel():
            return
        self.max = max(self.max, float(positive.max()))
        if self.top == 0.0:
            self.top = self.max
        while self.max > self.top:
            self.histogram = self.histogram.view(-1, 2).sum(1)
            self.histogram = torch.cat([self.histogram, torch.zeros_like(self.histogram)])
            self.top *= 2.0
        self.histogram += torch.histc(positive, bins=HISTOGRAM_BINS, min=0.0, max=self.top)

    def stats(self, name: str) -> LayerStats:
        return LayerStats(
            name=name,
            max=self.max,
            min_negative_input=self.min_negative_input,
            count=self.count,
            nonzero=self.nonzero,
            histogram=self.histogram.clone(),
            top=self.top,
        )


@dataclass(frozen=True, kw_only=True)
class LayerStats:
    """Statistics of one stage's activations over the calibration set."""

    name: str
    max: float  # a_M: the largest activation
    min_negative_input: float  # m: min over inputs of (W_neg * a_prev + min(b, 0)), Yang eq. 17
    count: int  # activations seen (neurons x images)
    nonzero: int  # of which > 0
    histogram: Tensor  # counts of the non-zero activations in HISTOGRAM_BINS bins over [0, top]
    top: float

    def fraction_below(self, value: float) -> float:
        """Fraction of the non-zero activations below ``value`` (linear within a bin)."""
        if self.nonzero == 0:
            return 1.0
        if value >= self.max:
            return 1.0
        if value <= 0:
            return 0.0
        position = value / self.top * len(self.histogram)
        whole = int(position)
        below = float(self.histogram[:whole].sum()) + float(self.histogram[whole]) * (position - whole)
        return below / self.nonzero

    def percentile(self, p: float) -> float:
        """The ``p``-th percentile of the non-zero activations (``p = 100`` is the exact max)."""
        if not 0 < p <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {p}")
        if p == 100 or self.nonzero == 0:
            return self.max
        cumulative = torch.cumsum(self.histogram, 0)
        target = p / 100.0 * self.nonzero
        index = int(torch.searchsorted(cumulative, torch.tensor(target, dtype=cumulative.dtype)))
        before = float(cumulative[index - 1]) if index > 0 else 0.0
        inside = float(self.histogram[index])
        fraction = (target - before) / inside if inside > 0 else 1.0
        width = self.top / len(self.histogram)
        return min(self.max, (index + fraction) * width)


@dataclass(frozen=True, kw_only=True)
class ActivationStats:
    """Per-stage statistics, in stage order, and how many images they came from."""

    layers: tuple[LayerStats, ...]
    images: int

    def __getitem__(self, name: str) -> LayerStats:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no statistics for layer {name!r}; have {[s.name for s in self.layers]}")


@torch.no_grad()
def calibrate(traced: TracedNetwork, data: Tensor | Iterable, *, max_images: int | None = 5000) -> ActivationStats:
    """Run the ANN stages over ``data`` (a tensor of images or an iterable of batches, tensors
    or ``(x, y)`` pairs) and collect each stage's statistics, from at most ``max_images``."""
    observers = [ActivationObserver() for _ in traced.stages]
    negatives = [_negative_part(stage) for stage in traced.stages]
    dtype = _dtype(traced)
    seen = 0
    for x, _ in iter_batches(data, batch_size=500, input_shape=traced.input_shape):
        if max_images is not None:
            x = x[: max_images - seen]
        if not len(x):
            break
        seen += len(x)
        x = x.to(dtype)
        for stage, negative, observer in zip(traced.stages, negatives, observers, strict=True):
            negative_input = negative(x) if negative is not None else None
            z = stage.synapse(x)
            x = z if stage.is_output or stage.spiking_pool else torch.relu(z)
            observer.update(x, negative_input)
        if max_images is not None and seen >= max_images:
            break
    if seen == 0:
        raise ConversionError("the calibration data is empty: pass at least one image")
    return ActivationStats(layers=tuple(o.stats(s.name) for o, s in zip(observers, traced.stages)), images=seen)


def _negative_part(stage: Stage) -> nn.Sequential | None:
    """The stage's synapse with only its negative weights and biases (``W_neg`` of Yang
    Appendix B); ``None`` for a pooling stage, whose weights are all positive."""
    if stage.affine is None:
        return None
    negative = copy.deepcopy(stage.synapse)
    for module in negative:
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.weight.data.clamp_(max=0.0)
            if module.bias is not None:
                module.bias.data.clamp_(max=0.0)
    return negative


def _dtype(traced: TracedNetwork) -> torch.dtype:
    for stage in traced.stages:
        for param in stage.synapse.parameters():
            return param.dtype
    return torch.float32
