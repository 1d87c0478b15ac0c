"""Phase 3 of conversion, and the one-call shortcut over all three.

    traced = trace(model, input_shape)          # phase 1: torch.fx, stages, checks
    stats = calibrate(traced, calibration_data) # phase 2: activation statistics
    snn = build_snn(traced, stats, rule=...)    # phase 3: scales -> weights, thresholds

``convert(model, calibration_data, rule=...)`` does the three at once; the statistics stay
on ``snn.info.stats`` so another rule can be mapped without a second calibration pass.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .calibrate import ActivationStats, calibrate
from .graph import ConversionError, TracedNetwork, trace
from .inputs import iter_batches
from .io import load_torch, save_torch
from .network import ConversionInfo, Readout, SpikingNetwork, SpikingStage
from .neurons import RESETS, IFParams
from .rules import map_scales

__all__ = ["convert", "build_snn", "save_snn", "load_snn"]


def build_snn(
    traced: TracedNetwork,
    stats: ActivationStats,
    rule: str = "nscaling",
    *,
    reset: str = "zero",
    v_min: float | str | None = "auto",
    readout: Readout = "spikes",
    **rule_options: Any,
) -> SpikingNetwork:
    """Map the traced ANN onto IF neurons with ``rule`` (``maxnorm``, ``nscaling``,
    ``threshold``) and its options (e.g. ``n=0.5`` for ``nscaling``).

    ``v_min``: ``"auto"`` bounds the membrane at the rule's V_min (Yang eq. 17, the global
    minimum over layers) for ``reset="zero"`` and leaves it unbounded for ``"subtract"``;
    a number sets it; ``None`` leaves it unbounded. It is given in threshold-1 units and
    scaled with the threshold in ``thresholds`` mode."""
    if reset not in RESETS:
        raise ValueError(f"reset must be one of {RESETS}, got {reset!r}")
    mapping = map_scales(traced, stats, rule, **rule_options)
    if v_min == "auto":
        bound: float | None = mapping.v_min if reset == "zero" else None
    elif v_min is None or isinstance(v_min, (int, float)):
        bound = None if v_min is None else float(v_min)
    else:
        raise ValueError(f"v_min must be 'auto', None or a number <= 0, got {v_min!r}")
    stages, previous = [], 1.0
    for stage, layer in zip(traced.stages, mapping.layers, strict=True):
        synapse = copy.deepcopy(stage.synapse)
        affine = next((m for m in synapse if isinstance(m, (nn.Conv2d, nn.Linear))), None)
        threshold = 1.0
        with torch.no_grad():
            if mapping.mode == "weights":
                if affine is not None:
                    affine.weight.mul_(previous / layer.scale)
                    if affine.bias is not None:
                        affine.bias.div_(layer.scale)
            else:
                threshold = layer.factor
                if affine is not None and affine.bias is not None:
                    affine.bias.div_(previous)
        neuron = IFParams(threshold=threshold, reset=reset, v_min=None if bound is None else bound * threshold)  # type: ignore[arg-type]
        stages.append(SpikingStage(stage.name, synapse, neuron, is_output=stage.is_output))
        previous = layer.scale
    info = ConversionInfo(mapping=mapping, stats=stats, reset=reset, v_min=bound, spiking_pool=_has_pool(traced))
    return SpikingNetwork(stages, input_shape=traced.input_shape, readout=readout, info=info)


def _has_pool(traced: TracedNetwork) -> bool:
    return any(stage.spiking_pool for stage in traced.stages)


def convert(
    model: nn.Module,
    calibration_data: Tensor | Iterable,
    rule: str = "nscaling",
    reset: str = "zero",
    *,
    input_shape: tuple[int, ...] | None = None,
    calibration_size: int | None = 5000,
    v_min: float | str | None = "auto",
    readout: Readout = "spikes",
    spiking_pool: bool = False,
    **rule_options: Any,
) -> SpikingNetwork:
    """Convert a trained ReLU CNN into a spiking network of IF neurons.

    ``calibration_data``: a tensor of images in [0, 1] or an iterable of batches (tensors
    or ``(x, y)`` pairs); at most ``calibration_size`` images are used. ``input_shape`` is
    read from the data when not given. See :func:`build_snn` for the other options."""
    if isinstance(calibration_data, ActivationStats):
        raise TypeError("pass statistics to build_snn(trace(model, shape), stats, ...), not to convert()")
    batches = iter_batches(calibration_data, batch_size=500)
    first = next(batches, None)
    if first is None:
        raise ConversionError("the calibration data is empty: pass at least one image")
    shape = tuple(first[0].shape[1:]) if input_shape is None else tuple(input_shape)
    traced = trace(model, shape, spiking_pool=spiking_pool)
    stats = calibrate(traced, itertools.chain([first], batches), max_images=calibration_size)
    return build_snn(traced, stats, rule, reset=reset, v_min=v_min, readout=readout, **rule_options)


SNN_FORMAT = "spikeconv-snn/1"


def save_snn(path: str | Path, snn: SpikingNetwork, ann: dict[str, Any] | None = None) -> None:
    """Save a converted network (with its cached statistics and mapping) and, optionally,
    the ANN checkpoint record it came from, atomically."""
    save_torch(path, {"format": SNN_FORMAT, "snn": snn, "ann": ann})


def load_snn(path: str | Path) -> tuple[SpikingNetwork, dict[str, Any] | None]:
    """Load what :func:`save_snn` wrote: the network and the ANN record (or ``None``)."""
    state = load_torch(path, "converted network")
    if not isinstance(state, dict) or state.get("format") != SNN_FORMAT:
        raise ValueError(f"{path} is not a spikeconv converted network (written by `spikeconv convert`)")
    return state["snn"], state["ann"]
