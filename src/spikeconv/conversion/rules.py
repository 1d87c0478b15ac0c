"""Weight-mapping and threshold rules: from activation statistics to per-layer scales.

Every rule gives each stage a *scale* ``lambda_l``: the activation that maps to one spike
per step (``lambda_0 = 1`` for the input: pixel intensities in [0, 1] are firing
probabilities, Yang eq. 7). A scale is one number per layer, or one per output channel
(``channelwise``). The *scale factor* of a stage is ``f^l = lambda_l / lambda_in`` where
``lambda_in`` is the scale of its source (Yang eq. 10). The mapping is then either

* ``weights``: ``W_l <- W_l * lambda_in / lambda_l``, ``b_l <- b_l / lambda_l``, threshold 1
  (weight normalization, Diehl 2015; Rueckauer 2016 Sec. 3.2.1; Yang eq. 11), or
* ``thresholds``: weights unchanged, ``b_l <- b_l / lambda_in``, threshold ``f^l``
  (threshold balancing, Yang eq. 8). Both give the same spikes (Yang Sec. 3.2).

Pooling stages with their own neurons and max-pool gates keep their source's scale
(``f = 1``, Yang Appendix B; a gate only relays spikes).

**Branches that meet share one scale.** When the outputs of several stages are added in a
later synapse through paths without weights of their own (identity shortcuts, pools), as
in a residual block ``relu(conv(h) + x)``, those stages and the stage fed by the sum get
one common scale: the maximum of their own scales (per channel for ``channelwise``). So
no branch saturates (each branch's activations stay below its scale) and an identity
shortcut is a plain connection of weight 1. The price is a lower firing rate in the
branches whose own scale was smaller. Where the network input meets a branch (its scale is
fixed at 1), or with threshold balancing of differently scaled sources, the conversion
inserts a constant connection weight (``graph.Scale``) instead. A concatenation needs no
shared scale: each slice keeps its own scale and the next layer's weights absorb it per
input channel.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from ..sim.inputs import is_number
from .calibrate import ActivationStats, LayerStats
from .graph import ConversionError, Stage, TracedNetwork

__all__ = [
    "LayerMapping", "Mapping", "RULES", "maxnorm", "robust", "channelwise", "nscaling", "clip_floor_mse", "map_scales",
    "membrane_bits", "smallest_unsaturated_n",
]  # fmt: skip

ScaleValue = float | Tensor  # one scale per layer, or [C] per output channel

MappingMode = Literal["weights", "thresholds"]


@dataclass(frozen=True, kw_only=True)
class LayerMapping:
    """What a rule decided for one stage, and what it implies."""

    name: str
    factor: float  # f^l = lambda_l / lambda_in (per-channel scales: of the largest channel scale)
    scale: float  # lambda_l: the activation that maps to the maximum firing rate (largest channel's)
    max_activation: float  # a_M^l on the calibration set
    unsaturated: float  # fraction of non-zero activations below lambda_l (Yang asks >= 0.9)
    v_min: float  # V_min^l = m^l / (f^1 ... f^l), Yang eq. (17), in threshold-1 units
    input_scale: float = 1.0  # lambda_in: the (largest) scale of the stage's sources
    channel_scales: tuple[float, ...] | None = None  # lambda_l per output channel (channelwise rule)

    @property
    def scale_value(self) -> ScaleValue:
        """lambda_l as a float, or a ``[C]`` float64 tensor for per-channel scales."""
        if self.channel_scales is None:
            return self.scale
        return torch.tensor(self.channel_scales, dtype=torch.float64)


@dataclass(frozen=True, kw_only=True)
class Mapping:
    """A rule's full result: per-stage mappings, the global V_min and the membrane bit width."""

    rule: str
    mode: MappingMode
    options: dict[str, Any]
    layers: tuple[LayerMapping, ...]

    @property
    def v_min(self) -> float:
        """Global V_min: the minimum of V_min^l over layers (Yang Sec. 3.4)."""
        return min(layer.v_min for layer in self.layers)

    @property
    def membrane_bits(self) -> int:
        """Integer bits N of the membrane potential: min N with max(tau, |V_min|) < 2^N, tau = 1."""
        return membrane_bits(1.0, self.v_min)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "mode": self.mode,
            "options": dict(self.options),
            "v_min": self.v_min,
            "membrane_bits": self.membrane_bits,
            "layers": [vars(layer) for layer in self.layers],
        }


def membrane_bits(threshold: float, v_min: float) -> int:
    """Yang Sec. 3.4: N = min{N : max(tau, |V_min|) < 2^N}."""
    bound = max(threshold, abs(v_min))
    return max(0, math.floor(math.log2(bound)) + 1) if bound > 0 else 0


def maxnorm(traced: TracedNetwork, stats: ActivationStats) -> list[ScaleValue]:
    """Data-based normalization (Diehl 2015; Rueckauer 2016 Sec. 3.2.1, eq. 6):
    lambda_l = a_M^l, the largest activation of layer l. Equal to ``robust`` with p = 100."""
    return robust(traced, stats, p=100.0)


def no_normalization(traced: TracedNetwork, stats: ActivationStats) -> list[ScaleValue]:
    """No normalization (Rueckauer 2016 Fig. 2a, "default"): lambda_l = 1, the ANN's weights
    and biases as they are, threshold 1."""
    return _inherit(traced, [1.0 for _ in traced.stages])


def robust(traced: TracedNetwork, stats: ActivationStats, p: float = 99.9) -> list[ScaleValue]:
    """Robust normalization (Rueckauer 2016 Sec. 3.2.2): lambda_l = the p-th percentile of
    layer l's non-zero activations on the calibration set (p = 99.9 by default; p = 100 is
    max-norm). Outliers then saturate instead of lowering every other neuron's rate."""
    if not 0 < p <= 100:
        raise ValueError(f"p must be a percentile in (0, 100], got {p}")
    raw: list[ScaleValue] = []
    for stage, layer in zip(traced.stages, stats.layers, strict=True):
        raw.append(0.0 if stage.inherits_scale else _own_scale(stage, layer, lambda stats: stats.percentile(p)))
    return _inherit(traced, raw)


def channelwise(traced: TracedNetwork, stats: ActivationStats, p: float = 99.9) -> list[ScaleValue]:
    """Channel-wise normalization (Kim et al. 2020, Spiking-YOLO, Sec. 3.1):
    lambda_l[c] = the p-th percentile of channel c's non-zero activations, so a channel of
    small activations fires as fast as one of large ones. The weights become
    ``W[c, c'] * lambda_{l-1}[c'] / lambda_l[c]`` and the bias ``b[c] / lambda_l[c]``. A
    channel that never fired gets the layer's scale. The output layer keeps one scale for
    all classes, since per-class scales would change which class wins."""
    if not 0 < p <= 100:
        raise ValueError(f"p must be a percentile in (0, 100], got {p}")
    raw: list[ScaleValue] = []
    for stage, layer in zip(traced.stages, stats.layers, strict=True):
        if stage.inherits_scale or stage.clip is not None:
            raw.append(stage.clip or 0.0)
            continue
        layer_scale = _require_active(layer, layer.percentile(p))
        if stage.is_output:
            raw.append(layer_scale)
            continue
        per_channel = layer.channel_percentile(p)
        raw.append(torch.where(per_channel > 0, per_channel, torch.full_like(per_channel, layer_scale)))
    return _inherit(traced, raw)


def nscaling(
    traced: TracedNetwork, stats: ActivationStats, n: float = 0.5, ceil_first: bool = True
) -> list[ScaleValue]:
    """Yang 2020 "n-scaling" (eq. 16, Appendix B): f^l = n * a_M^l / (f^0 ... f^{l-1}),
    f^0 = 1, pooling stages f = 1; then f^1 <- ceil(f^1). So lambda_l = n * a_M^l, all
    multiplied by ceil(f^1) / f^1: as in Appendix B the ceiling is applied after all
    factors are computed, so it lowers saturation in every later layer.
    ``n="auto"`` (resolved by :func:`map_scales`) picks :func:`smallest_unsaturated_n`."""
    if not 0 < n <= 1:
        raise ValueError(f"n must be in (0, 1] (Yang eq. 15 derives n in [0.5, 1]), got {n}")
    raw: list[ScaleValue] = []
    for stage, layer in zip(traced.stages, stats.layers, strict=True):
        raw.append(0.0 if stage.inherits_scale else _own_scale(stage, layer, lambda stats: n * stats.max))
    scales = _inherit(traced, raw)
    first = next(i for i, s in enumerate(traced.stages) if not s.inherits_scale)
    if ceil_first and traced.stages[first].sources == (-1,) and traced.stages[first].clip is None:
        f1 = float(scales[first])
        ratio = math.ceil(f1) / f1
        scales = [s * ratio for s in scales]
        scales[first] = float(math.ceil(f1))
    return scales


def smallest_unsaturated_n(
    traced: TracedNetwork, stats: ActivationStats, fraction: float = 0.9, ceil_first: bool = True, step: float = 0.01
) -> float:
    """The smallest n (on a grid of ``step``) for which every layer keeps at least
    ``fraction`` of its non-zero activations below its scale: Yang's ">= 90 % unsaturated"
    rule (Sec. 3.3) turned into a choice of n instead of a check."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    count = round(1.0 / step)
    for k in range(1, count + 1):
        n = round(k * step, 10)
        scales = nscaling(traced, stats, n=n, ceil_first=ceil_first)
        if all(layer.fraction_below(largest(scale)) >= fraction for layer, scale in zip(stats.layers, scales, strict=True)):
            return n
    return 1.0


def clip_floor_mse(
    traced: TracedNetwork, stats: ActivationStats, T: int = 32, shift: float = 0.5, candidates: int = 200
) -> list[ScaleValue]:
    """SNN Calibration's threshold (Li et al. 2021, Sec. 4.1): lambda_l minimizes the mean
    squared error between layer l's activations and the clip-floor function its IF neurons
    compute in ``T`` steps, ``s/T * clamp(floor(a T / s + shift), 0, T)`` (``shift``: the
    initial membrane potential as a fraction of the threshold; 0.5 rounds instead of
    flooring). Searched over ``candidates`` evenly spaced fractions of the layer's
    maximum, so the result is the best clip for that T: a small T prefers a lower clip
    (finer steps for the many small activations), a large T the maximum."""
    if not isinstance(T, int) or isinstance(T, bool) or T <= 0:
        raise ValueError(f"T (the time steps the thresholds are made for) must be a positive integer, got {T!r}")
    if not is_number(shift) or not 0 <= shift < 1:
        raise ValueError(f"shift (the initial potential the thresholds are made for, a fraction of the threshold; --initial-potential) must be in [0, 1), got {shift!r}")
    if not isinstance(candidates, int) or candidates < 1:
        raise ValueError(f"candidates must be a positive integer, got {candidates!r}")

    def best(layer: LayerStats) -> float:
        fractions = torch.arange(1, candidates + 1, dtype=torch.float64) / candidates
        scales = fractions * layer.max
        return float(scales[int(torch.argmin(layer.clip_floor_error(scales, T, shift)))])

    raw: list[ScaleValue] = []
    for stage, layer in zip(traced.stages, stats.layers, strict=True):
        raw.append(0.0 if stage.inherits_scale else _own_scale(stage, layer, best))
    return _inherit(traced, raw)


def _own_scale(stage: Stage, layer: LayerStats, scale: Callable[[LayerStats], float]) -> float:
    """A stage's scale from its statistics, or its activation's clip value (which needs none)."""
    return stage.clip if stage.clip is not None else _require_active(layer, scale(layer))


def _require_active(layer: LayerStats, scale: float) -> float:
    if layer.max <= 0 or scale <= 0:
        raise ConversionError(
            f"layer {layer.name!r} produced no positive activation on the calibration data, so it has no scale: "
            "check the calibration images (range [0, 1]?) and the model's weights"
        )
    return scale


def _inherit(traced: TracedNetwork, raw: list[ScaleValue]) -> list[ScaleValue]:
    """Pool stages and max-pool gates take their source's scale (the input's is 1)."""
    scales: list[ScaleValue] = []
    for stage, value in zip(traced.stages, raw, strict=True):
        if stage.inherits_scale:
            source = stage.sources[0]
            value = 1.0 if source < 0 else scales[source]
        scales.append(value)
    return scales


def share_scales(traced: TracedNetwork, scales: list[ScaleValue]) -> list[ScaleValue]:
    """Branches that meet at an addition share one scale: the maximum of their scales
    (per channel when per-channel), so none of them saturates (see the module docstring).
    Stages that inherit their scale (pools, gates) and the input never join a group."""
    parent = list(range(len(scales)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    stages = traced.stages
    for stage in stages:
        members = [i for i in stage.shared if i >= 0 and not stages[i].inherits_scale]
        for other in members[1:]:
            parent[find(other)] = find(members[0])
    groups: dict[int, list[int]] = {}
    for i in range(len(scales)):
        groups.setdefault(find(i), []).append(i)
    shared = list(scales)
    for members in groups.values():
        if len(members) < 2:
            continue
        values = [scales[i] for i in members]
        if any(isinstance(v, Tensor) for v in values):
            top = values[0] if isinstance(values[0], Tensor) else torch.tensor(values[0], dtype=torch.float64)
            for v in values[1:]:
                top = torch.maximum(top, v if isinstance(v, Tensor) else torch.tensor(v, dtype=torch.float64))
            for i in members:
                shared[i] = top.clone()
        else:
            for i in members:
                shared[i] = max(float(v) for v in values)  # type: ignore[arg-type]
    raw = [0.0 if s.inherits_scale else v for s, v in zip(stages, shared, strict=True)]
    return _inherit(traced, raw)


def largest(scale: ScaleValue) -> float:
    """The largest of a scale's values (the scale itself when it is one number)."""
    return float(scale.max()) if isinstance(scale, Tensor) else float(scale)


@dataclass(frozen=True, kw_only=True)
class RuleSpec:
    scales: Callable[..., list[ScaleValue]]
    mode: MappingMode
    options: tuple[str, ...]
    doc: str


RULES: dict[str, RuleSpec] = {
    "none": RuleSpec(scales=no_normalization, mode="weights", options=(), doc="no normalization: weights as trained"),
    "maxnorm": RuleSpec(scales=maxnorm, mode="weights", options=(), doc="max-norm weight normalization"),
    "robust": RuleSpec(
        scales=robust, mode="weights", options=("p",), doc="robust normalization: p-th percentile (99.9)"
    ),
    "channelwise": RuleSpec(
        scales=channelwise, mode="weights", options=("p",), doc="channel-wise p-th percentile (Kim 2020)"
    ),
    "nscaling": RuleSpec(
        scales=nscaling, mode="weights", options=("n", "ceil_first"), doc="Yang 2020 n-scaling, threshold 1"
    ),
    "mse": RuleSpec(
        scales=clip_floor_mse, mode="weights", options=("T", "shift"),
        doc="clip-floor MSE thresholds for T steps (SNN Calibration, Li 2021)",
    ),
    "threshold": RuleSpec(
        scales=lambda traced, stats, base="maxnorm", **opts: _base_scales(base, traced, stats, opts),
        mode="thresholds",
        options=("base", "n", "ceil_first", "p", "T", "shift"),
        doc="threshold balancing: weights unchanged, thresholds = the scale factors of `base`",
    ),
}

BASES = ("maxnorm", "nscaling", "robust", "channelwise", "mse")


def _base_scales(base: str, traced: TracedNetwork, stats: ActivationStats, options: dict[str, Any]) -> list[ScaleValue]:
    """The scales of rule ``base`` with its own options (threshold balancing's thresholds)."""
    if base not in BASES:
        raise ValueError(f"threshold balancing takes base= one of {BASES}, got {base!r}")
    spec = RULES[base]
    unknown = set(options) - set(spec.options)
    if unknown:
        raise TypeError(f"threshold balancing with base={base!r} takes options {list(spec.options) or 'none'}, not {sorted(unknown)}")
    return spec.scales(traced, stats, **options)


def _check_options(options: dict[str, Any]) -> None:
    """Option types, checked before any arithmetic on them (a string n would otherwise end in
    Python's own comparison error)."""

    if "n" in options and not (options["n"] == "auto" or is_number(options["n"])):
        raise TypeError(f"n must be a number in (0, 1] or 'auto', got {options['n']!r}")
    if "p" in options and not is_number(options["p"]):
        raise TypeError(f"p must be a percentile in (0, 100], got {options['p']!r}")
    if "ceil_first" in options and not isinstance(options["ceil_first"], bool):
        raise TypeError(f"ceil_first must be True or False, got {options['ceil_first']!r}")


def map_scales(traced: TracedNetwork, stats: ActivationStats, rule: str, **options: Any) -> Mapping:
    """Apply rule ``rule`` with its ``options`` to the statistics: the per-stage mapping."""
    if not isinstance(rule, str) or rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; choose one of {', '.join(RULES)}")
    spec = RULES[rule]
    unknown = set(options) - set(spec.options)
    if unknown:
        raise TypeError(f"rule {rule!r} takes options {list(spec.options) or 'none'}, not {sorted(unknown)}")
    if len(stats.layers) != len(traced.stages):
        raise ConversionError(
            f"statistics cover {len(stats.layers)} layers but the model has {len(traced.stages)}: recalibrate"
        )
    _check_options(options)
    if options.get("n") == "auto":  # Yang Sec. 3.3: smallest n with >= 90 % unsaturated everywhere
        options = dict(options, n=smallest_unsaturated_n(traced, stats, ceil_first=options.get("ceil_first", True)))
        resolved = dict(options, n_chosen_by="auto: smallest n with >= 90 % unsaturated in every layer")
    else:
        resolved = dict(options)
    # a conversion-aware activation's layer takes its clip value, whatever the rule: the
    # activation never exceeds it and was trained for exactly that bound
    raw = [s if stage.clip is None else stage.clip for stage, s in zip(traced.stages, spec.scales(traced, stats, **options), strict=True)]
    scales = share_scales(traced, raw)
    layers = []
    for stage, layer, scale in zip(traced.stages, stats.layers, scales, strict=True):
        input_scale = max((1.0 if s < 0 else largest(scales[s]) for s in stage.sources), default=1.0)
        top = largest(scale)
        per_channel = isinstance(scale, Tensor) and scale.numel() > 1
        unsaturated = (
            layer.fraction_below_channels(scale) if per_channel else layer.fraction_below(top)  # type: ignore[arg-type]
        )
        smallest = float(scale.min()) if isinstance(scale, Tensor) else float(scale)
        layers.append(
            LayerMapping(
                name=stage.name,
                factor=top / input_scale,
                scale=top,
                max_activation=layer.max,
                unsaturated=unsaturated,
                v_min=layer.min_negative_input / smallest,
                input_scale=input_scale,
                channel_scales=tuple(float(v) for v in scale) if per_channel else None,  # type: ignore[union-attr]
            )
        )
    return Mapping(rule=rule, mode=spec.mode, options=resolved, layers=tuple(layers))
