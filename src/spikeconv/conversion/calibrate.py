"""Phase 2 of conversion: activation statistics of every stage on a calibration set.

One pass over the data feeds each stage's activations to an observer (``update(x)``) that
keeps the exact maximum, a histogram of the non-zero activations (from which percentiles
and the fraction below any scale are read), and the minimum input through the stage's
negative weights, ``m^l`` of Yang eq. (17). The result is a plain record, cached with the
converted model so other rules can be mapped without another pass.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..sim.inputs import (
    InputRangeWarning,
    check_count,
    iter_batches,
    range_text,
    value_range,
    warn_user,
)
from .graph import ConversionError, Stage, TracedNetwork

__all__ = ["ActivationObserver", "LayerStats", "ActivationStats", "calibrate"]

HISTOGRAM_BINS = 4096
CHANNEL_BINS = 512  # per-channel histograms (for the channelwise rule) share the layer's range


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
        self.channel_max: Tensor | None = None  # [C] largest activation of each channel (dim 1)
        self.channel_histogram: Tensor | None = None  # [C, CHANNEL_BINS] over [0, top]

    def update(self, activations: Tensor, negative_input: Tensor | None = None) -> None:
        self._update_channels(activations)
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
            if self.channel_histogram is not None:
                merged = self.channel_histogram.view(len(self.channel_histogram), -1, 2).sum(2)
                self.channel_histogram = torch.cat([merged, torch.zeros_like(merged)], 1)
            self.top *= 2.0
        self.histogram += torch.histc(positive, bins=HISTOGRAM_BINS, min=0.0, max=self.top)
        self._histogram_channels(activations)

    def _update_channels(self, activations: Tensor) -> None:
        if activations.ndim < 2:
            return
        per_channel = activations.detach().double().transpose(0, 1).flatten(1)  # [C, rest]
        top = per_channel.amax(1).clamp_min(0.0)
        self.channel_max = top if self.channel_max is None else torch.maximum(self.channel_max, top)
        if self.channel_histogram is None:
            self.channel_histogram = torch.zeros(len(top), CHANNEL_BINS, dtype=torch.float64)

    def _histogram_channels(self, activations: Tensor) -> None:
        if activations.ndim < 2 or self.channel_histogram is None:
            return
        per_channel = activations.detach().double().transpose(0, 1).flatten(1)
        channels = len(per_channel)
        index = (per_channel / self.top * CHANNEL_BINS).floor().clamp(max=CHANNEL_BINS - 1).long()
        index = index + torch.arange(channels).unsqueeze(1) * CHANNEL_BINS
        counts = torch.bincount(index[per_channel > 0], minlength=channels * CHANNEL_BINS)
        self.channel_histogram += counts.view(channels, CHANNEL_BINS).double()

    def stats(self, name: str) -> LayerStats:
        return LayerStats(
            name=name,
            max=self.max,
            min_negative_input=self.min_negative_input,
            count=self.count,
            nonzero=self.nonzero,
            histogram=self.histogram.clone(),
            top=self.top,
            channel_max=None if self.channel_max is None else self.channel_max.clone(),
            channel_histogram=None if self.channel_histogram is None else self.channel_histogram.clone(),
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
    channel_max: Tensor | None = None  # [C] largest activation of each channel (dim 1)
    channel_histogram: Tensor | None = None  # [C, CHANNEL_BINS] non-zero activations per channel, over [0, top]

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


    def clip_floor_error(self, scales: Tensor, T: int, shift: float = 0.0) -> Tensor:
        """For each candidate scale s in ``scales`` ``[K]``, the mean squared error over the
        calibration activations a of the clip-floor function an IF neuron computes in T
        steps (Li et al. 2021, eq. 6: ``s/T * clamp(floor(a T / s + shift), 0, T)``; reset by
        subtraction, initial potential ``shift * s``), from the histogram (each bin at its
        centre; zeros are exact). ``[K]``."""
        if self.nonzero == 0:
            return torch.zeros(len(scales), dtype=torch.float64)
        width = self.top / len(self.histogram)
        centres = (torch.arange(len(self.histogram), dtype=torch.float64) + 0.5) * width
        s = scales.double().reshape(-1, 1)
        quantized = s / T * torch.clamp(torch.floor(centres * T / s + shift), 0, T)
        return ((quantized - centres) ** 2 * self.histogram).sum(1) / max(self.count, 1)

    def channel_percentile(self, p: float) -> Tensor:
        """The ``p``-th percentile of each channel's non-zero activations, ``[C]``
        (``p = 100``: each channel's exact max; a channel that never fired gets 0)."""
        if not 0 < p <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {p}")
        if self.channel_max is None or self.channel_histogram is None:
            raise ConversionError(f"layer {self.name!r} has no per-channel statistics: recalibrate")
        if p == 100:
            return self.channel_max.clone()
        cumulative = torch.cumsum(self.channel_histogram, 1)
        totals = cumulative[:, -1:]
        target = p / 100.0 * totals
        index = torch.searchsorted(cumulative, target).clamp(max=CHANNEL_BINS - 1)
        before = torch.where(index > 0, cumulative.gather(1, (index - 1).clamp(min=0)), torch.zeros_like(target))
        inside = self.channel_histogram.gather(1, index)
        fraction = torch.where(inside > 0, (target - before) / inside.clamp_min(1e-300), torch.ones_like(target))
        width = self.top / CHANNEL_BINS
        value = ((index.double() + fraction) * width).squeeze(1)
        return torch.minimum(value, self.channel_max).where(totals.squeeze(1) > 0, torch.zeros_like(value))

    def fraction_below_channels(self, scales: Tensor) -> float:
        """Fraction of the non-zero activations below their channel's scale."""
        if self.channel_histogram is None or self.nonzero == 0:
            return 1.0
        position = (scales.double() / self.top * CHANNEL_BINS).clamp(0, CHANNEL_BINS)
        whole = position.floor().long().clamp(max=CHANNEL_BINS - 1)
        cumulative = torch.cumsum(self.channel_histogram, 1)
        before = torch.where(whole > 0, cumulative.gather(1, (whole - 1).clamp(min=0).unsqueeze(1)).squeeze(1), 0.0)
        inside = self.channel_histogram.gather(1, whole.unsqueeze(1)).squeeze(1) * (position - whole)
        below = torch.where(scales >= self.channel_max, cumulative[:, -1], before + inside)  # type: ignore[operator]
        return float(below.sum()) / self.nonzero


@dataclass(frozen=True, kw_only=True)
class ActivationStats:
    """Per-stage statistics, in stage order, and how many images they came from."""

    layers: tuple[LayerStats, ...]
    images: int
    input_range: tuple[float, float] | None = None  # smallest and largest pixel of the calibration images

    def __getitem__(self, name: str) -> LayerStats:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no statistics for layer {name!r}; have {[s.name for s in self.layers]}")


@torch.no_grad()
def calibrate(traced: TracedNetwork, data: Tensor | Iterable, *, max_images: int | None = 5000) -> ActivationStats:
    """Run the ANN stages over ``data`` (a tensor of images or an iterable of batches, tensors
    or ``(x, y)`` pairs) and collect each stage's statistics, from at most ``max_images``."""
    if not isinstance(traced, TracedNetwork):
        raise TypeError(f"calibrate() takes the TracedNetwork of spikeconv.trace(model, shape), not {type(traced).__name__}")
    check_count("max_images", max_images, optional=True)
    observers = [ActivationObserver() for _ in traced.stages]
    negatives = [_negative_part(stage) for stage in traced.stages]
    dtype = _dtype(traced)
    seen = 0
    low, high = math.inf, -math.inf
    for x, _ in iter_batches(data, batch_size=500, input_shape=traced.input_shape, what="calibration_data"):
        if max_images is not None:
            x = x[: max_images - seen]
        if not len(x):
            break
        seen += len(x)
        x = x.to(dtype)
        batch_low, batch_high = value_range(x)
        low, high = min(low, batch_low), max(high, batch_high)
        outputs: list[Tensor] = []
        for stage, negative, observer in zip(traced.stages, negatives, observers, strict=True):
            inputs = [x if s < 0 else outputs[s] for s in stage.sources]
            negative_input = negative(*inputs) if negative is not None else None
            outputs.append(stage.ann_forward(inputs))
            observer.update(outputs[-1], negative_input)
        if max_images is not None and seen >= max_images:
            break
    if seen == 0:
        raise ConversionError("the calibration data is empty: pass at least one image")
    if low < 0.0 or high > 1.0:
        warn_user(
            InputRangeWarning(
                f"calibration_data span {range_text(low, high)}, outside [0, 1]: the spiking network reads pixels as "
                "input currents and spike probabilities of this range. Divide 0..255 images by 255; mean/std-"
                "normalized images can only be simulated with coding='constant' (Poisson and deterministic coding "
                "refuse values outside [0, 1])"
            )
        )
    return ActivationStats(
        layers=tuple(o.stats(s.name) for o, s in zip(observers, traced.stages)), images=seen, input_range=(low, high)
    )


def _negative_part(stage: Stage) -> nn.Module | None:
    """The stage's synapse with only its negative weights and biases (``W_neg`` of Yang
    Appendix B); ``None`` for a pooling stage, whose weights are all positive. With several
    weighted layers in one synapse (a residual block) this is an estimate."""
    if not any(isinstance(m, (nn.Conv2d, nn.Linear)) for m in stage.synapse.modules()):
        return None
    negative = copy.deepcopy(stage.synapse)
    for module in negative.modules():
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
