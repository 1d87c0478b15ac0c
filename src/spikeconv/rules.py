"""Weight-mapping and threshold rules: from activation statistics to per-layer scales.

Every rule returns the *scale factor* ``f^l`` of each stage (Yang eq. 10). The activation
of stage ``l`` that maps to one spike per step is ``lambda_l = f^1 * ... * f^l``
(``lambda_0 = 1``: pixel intensities in [0, 1] are firing probabilities, Yang eq. 7).
The mapping is then either

* ``weights``: ``W_l <- W_l * lambda_{l-1} / lambda_l``, ``b_l <- b_l / lambda_l``, threshold 1
  (weight normalization, Diehl 2015; Rueckauer 2016 Sec. 3.2.1; Yang eq. 11), or
* ``thresholds``: weights unchanged, ``b_l <- b_l / lambda_{l-1}``, threshold ``f^l``
  (threshold balancing, Yang eq. 8). Both give the same spikes (Yang Sec. 3.2).

Pooling stages with their own neurons keep ``f = 1`` (Yang Appendix B).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from .calibrate import ActivationStats, LayerStats
from .graph import ConversionError, TracedNetwork

__all__ = [
    "LayerMapping", "Mapping", "RULES", "maxnorm", "nscaling", "map_scales", "membrane_bits", "smallest_unsaturated_n",
]  # fmt: skip

MappingMode = Literal["weights", "thresholds"]


@dataclass(frozen=True, kw_only=True)
class LayerMapping:
    """What a rule decided for one stage, and what it implies."""

    name: str
    factor: float  # f^l = lambda_l / lambda_{l-1}
    scale: float  # lambda_l: the activation that maps to the maximum firing rate
    max_activation: float  # a_M^l on the calibration set
    unsaturated: float  # fraction of non-zero activations below lambda_l (Yang asks >= 0.9)
    v_min: float  # V_min^l = m^l / (f^1 ... f^l), Yang eq. (17), in threshold-1 units


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


def _require_active(layer: LayerStats) -> float:
    if layer.max <= 0:
        raise ConversionError(
            f"layer {layer.name!r} produced no positive activation on the calibration data, so it has no scale: "
            "check the calibration images (range [0, 1]?) and the model's weights"
        )
    return layer.max


def maxnorm(traced: TracedNetwork, stats: ActivationStats) -> list[float]:
    """Data-based normalization (Diehl 2015; Rueckauer 2016 Sec. 3.2.1): lambda_l = a_M^l,
    so f^l = a_M^l / lambda_{l-1}."""
    factors, previous = [], 1.0
    for stage, layer in zip(traced.stages, stats.layers, strict=True):
        scale = previous if stage.spiking_pool else _require_active(layer)
        factors.append(scale / previous)
        previous = scale
    return factors


def nscaling(traced: TracedNetwork, stats: ActivationStats, n: float = 0.5, ceil_first: bool = True) -> list[float]:
    """Yang 2020 "n-scaling" (eq. 16, Appendix B): f^l = n * a_M^l / (f^0 ... f^{l-1}),
    f^0 = 1, pooling stages f = 1; then f^1 <- ceil(f^1). As in Appendix B the ceiling is
    applied after all factors are computed, so it lowers saturation in every later layer.
    ``n="auto"`` (resolved by :func:`map_scales`) picks :func:`smallest_unsaturated_n`."""
    if not 0 < n <= 1:
        raise ValueError(f"n must be in (0, 1] (Yang eq. 15 derives n in [0.5, 1]), got {n}")
    factors, product = [], 1.0
    for stage, layer in zip(traced.stages, stats.layers, strict=True):
        factor = 1.0 if stage.spiking_pool else n * _require_active(layer) / product
        factors.append(factor)
        product *= factor
    if ceil_first:
        factors[0] = float(math.ceil(factors[0]))
    return factors


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
        factors = nscaling(traced, stats, n=n, ceil_first=ceil_first)
        scale, ok = 1.0, True
        for layer, factor in zip(stats.layers, factors, strict=True):
            scale *= factor
            if layer.fraction_below(scale) < fraction:
                ok = False
                break
        if ok:
            return n
    return 1.0


@dataclass(frozen=True, kw_only=True)
class RuleSpec:
    factors: Callable[..., list[float]]
    mode: MappingMode
    options: tuple[str, ...]
    doc: str


RULES: dict[str, RuleSpec] = {
    "maxnorm": RuleSpec(factors=maxnorm, mode="weights", options=(), doc="max-norm weight normalization"),
    "nscaling": RuleSpec(
        factors=nscaling, mode="weights", options=("n", "ceil_first"), doc="Yang 2020 n-scaling, threshold 1"
    ),
    "threshold": RuleSpec(
        factors=lambda traced, stats, base="maxnorm", **opts: _base_rule(base).factors(traced, stats, **opts),
        mode="thresholds",
        options=("base", "n", "ceil_first"),
        doc="threshold balancing: weights unchanged, thresholds = the scale factors of `base`",
    ),
}


def _base_rule(base: str) -> RuleSpec:
    if base not in ("maxnorm", "nscaling"):
        raise ValueError(f"threshold balancing takes base='maxnorm' or 'nscaling', got {base!r}")
    return RULES[base]


def map_scales(traced: TracedNetwork, stats: ActivationStats, rule: str, **options: Any) -> Mapping:
    """Apply rule ``rule`` with its ``options`` to the statistics: the per-stage mapping."""
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; choose one of {', '.join(RULES)}")
    spec = RULES[rule]
    unknown = set(options) - set(spec.options)
    if unknown:
        raise TypeError(f"rule {rule!r} takes options {list(spec.options) or 'none'}, not {sorted(unknown)}")
    if len(stats.layers) != len(traced.stages):
        raise ConversionError(
            f"statistics cover {len(stats.layers)} layers but the model has {len(traced.stages)}: recalibrate"
        )
    if options.get("n") == "auto":  # Yang Sec. 3.3: smallest n with >= 90 % unsaturated everywhere
        options = dict(options, n=smallest_unsaturated_n(traced, stats, ceil_first=options.get("ceil_first", True)))
        resolved = dict(options, n_chosen_by="auto: smallest n with >= 90 % unsaturated in every layer")
    else:
        resolved = dict(options)
    factors = spec.factors(traced, stats, **options)
    layers, scale = [], 1.0
    for stage, layer, factor in zip(traced.stages, stats.layers, factors, strict=True):
        scale *= factor
        layers.append(
            LayerMapping(
                name=stage.name,
                factor=factor,
                scale=scale,
                max_activation=layer.max,
                unsaturated=layer.fraction_below(scale),
                v_min=layer.min_negative_input / scale,
            )
        )
    return Mapping(rule=rule, mode=spec.mode, options=resolved, layers=tuple(layers))
