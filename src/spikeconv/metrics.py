"""Measurements of a converted network: latency, conversion loss, rate-activation fit,
Ding et al.'s fit curve K(t), and synaptic operations (fan-out) against the ANN's
multiply-adds.

Plain functions over tensors and results; accuracies in percent."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from .conversion.graph import ChannelAffine, Scale
from .sim.network import SpikingNetwork

__all__ = [
    "LATENCY_Z", "ann_operations", "conversion_loss", "fit_curve", "latency", "latency_margin", "rate_correlation",
    "steps_to_reach", "synaptic_fanouts",
]  # fmt: skip


LATENCY_Z = 1.96  # the margin is the half-width of a 95 % confidence interval


def latency_margin(final_accuracy: float, images: int) -> float:
    """The default margin of :func:`latency`, in percentage points: the half-width of the
    95 % confidence interval of the final accuracy on ``images`` test images,
    ``1.96 * 100 sqrt(a (1 - a) / N)`` (normal approximation), but at least one image
    (``100 / N``) and at least 0.1 pp. Accuracies closer than this are not told apart by
    the test set; a finer margin reports noise: on 359 images one image is 0.28 pp and the
    bound at 98 % is 1.45 pp, so a 0.1 pp margin ends at the last image that flips."""
    if images <= 0:
        raise ValueError(f"images must be positive, got {images}")
    if not 0 <= final_accuracy <= 100:
        raise ValueError(f"final_accuracy must be a percentage in [0, 100], got {final_accuracy}")
    a = final_accuracy / 100.0
    bound = LATENCY_Z * 100.0 * math.sqrt(a * (1.0 - a) / images)
    return max(0.1, 100.0 / images, bound)


def latency(accuracy: Tensor, margin: float | None = None, *, images: int | None = None) -> int:
    """First step t (1-based) from which ``accuracy[t-1:]`` stays within ``margin``
    percentage points of the final accuracy. ``margin=None`` takes
    :func:`latency_margin` of the final accuracy on ``images`` test images."""
    accuracy = torch.as_tensor(accuracy, dtype=torch.float64)
    if margin is None:
        if images is None:
            raise ValueError("latency() needs margin= or the number of test images (images=) to derive it")
        margin = latency_margin(float(accuracy[-1]), images)
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    outside = ((accuracy - accuracy[-1]).abs() > margin + 1e-9).nonzero()
    return 1 if len(outside) == 0 else int(outside[-1]) + 2


def steps_to_reach(accuracy: Tensor, target: float) -> int | None:
    """First step t (1-based) at which the accuracy is >= ``target``; ``None`` if never."""
    reached = (torch.as_tensor(accuracy, dtype=torch.float64) >= target - 1e-9).nonzero()
    return None if len(reached) == 0 else int(reached[0]) + 1


def conversion_loss(ann_accuracy: float, snn_accuracy: float) -> float:
    """ANN accuracy minus SNN accuracy, in percentage points."""
    return ann_accuracy - snn_accuracy


def rate_correlation(
    snn: SpikingNetwork, images: Tensor, T: int = 100, coding: str = "constant", seed: int = 0, exact: bool = False
) -> dict[str, Any]:
    """Per layer: Pearson correlation between each neuron's firing rate after ``T`` steps
    and its normalized ANN activation clipped to [0, 1] (Rueckauer Fig. 3), and the mean
    absolute difference. ``images``: a small batch (every neuron's count is kept); for
    ``coding="events"`` sequences ``[B, T_in, ...]``, whose ANN input is the mean input
    per step over the ``T`` steps. ``exact``: as in :func:`~spikeconv.simulate`."""
    from .sim.simulate import simulate

    result = simulate(snn, images, T=T, coding=coding, seed=seed, record_counts=True, exact=exact)
    if result.spike_counts is None:  # record_counts=True always fills it
        raise RuntimeError("simulate() returned no spike counts")
    mean_input = images[:, :T].sum(1) / T if coding == "events" else images
    ideal = snn.analog_forward(mean_input.to(next(snn.parameters()).device))
    report = {}
    for (name, counts), target in zip(result.spike_counts.items(), ideal, strict=True):
        rate = counts.double().flatten() / T
        target = target.double().clamp(0, 1).flatten().cpu()
        if rate.std() == 0 or target.std() == 0:
            corr = float("nan")
        else:
            corr = float(torch.corrcoef(torch.stack([rate, target]))[0, 1])
        report[name] = {"correlation": corr, "mean_abs_error": float((rate - target).abs().mean())}
    return report


def fit_curve(
    snn: SpikingNetwork, images: Tensor, T: int, coding: str = "constant", seed: int = 0, *, clip: bool = False
) -> dict[str, Tensor]:
    """Ding et al.'s optimal fit curve (eq. 7) of every layer over time:
    ``K(t) = ||r(t) - r_hat||^2 / ||r_hat||^2``, with r(t) each neuron's spike count after t
    steps divided by t and r_hat its ideal rate (the normalized ANN activation clipped to
    [0, 1]), summed over all neurons of the layer and all ``images``. ``{layer: [T]}``; with
    constant input Theorem 2 bounds it by ``2 Omega / t`` (:func:`rate_inference_loss` of
    r_hat), for the first layer exactly.

    r_hat is the ANN's own activation: a ReLU net's propagates unclipped (only the rate is
    clipped), so ``clip=False``; a net trained with clip activations (threshold ReLU, QCFS,
    Rate Norm) clips every layer before the next reads it, so pass ``clip=True``."""
    from .sim.simulate import simulate

    result = simulate(snn, images, T=T, coding=coding, seed=seed, record_trains=True)
    if result.spike_trains is None:  # record_trains=True always fills it
        raise RuntimeError("simulate() returned no spike trains")
    ideal = snn.analog_forward(images.to(next(snn.parameters()).device), clip=clip)
    steps = torch.arange(1, T + 1, dtype=torch.float64).view(-1, 1)
    curves = {}
    for (name, trains), target in zip(result.spike_trains.items(), ideal, strict=True):
        r_hat = target.double().clamp(0, 1).flatten().cpu()
        rates = trains.double().flatten(1).cumsum(0) / steps  # [T, neurons x images]
        curves[name] = ((rates - r_hat) ** 2).sum(1) / (r_hat**2).sum().clamp_min(1e-300)
    return curves


class _SumPool(nn.Module):
    """An average pool times its window: each input adds once into each window it is in."""

    def __init__(self, pool: nn.AvgPool2d | nn.AdaptiveAvgPool2d) -> None:
        super().__init__()
        self.pool = pool

    def forward(self, x: Tensor) -> Tensor:
        p = self.pool
        if isinstance(p, nn.AdaptiveAvgPool2d):
            out = p(x)
            return out * (x.shape[-2] * x.shape[-1] / (out.shape[-2] * out.shape[-1]))
        return F.avg_pool2d(x, p.kernel_size, p.stride, p.padding, p.ceil_mode, p.count_include_pad, divisor_override=1)


def _counting(synapse: nn.Module) -> nn.Module:
    """A float64 copy of ``synapse`` in which every non-zero weight is 1, biases are 0 and
    average pools sum: fed ones, the gradient at an input is its number of connections."""
    counting = copy.deepcopy(synapse).double()
    for parent in list(counting.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
                setattr(parent, name, _SumPool(child))
    with torch.no_grad():
        for module in counting.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear, ChannelAffine)):
                module.weight.copy_((module.weight != 0).double())
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, Scale):
                module.factor.copy_((module.factor != 0).double())
    if isinstance(counting, fx.GraphModule):
        counting.recompile()
    return counting


def synaptic_fanouts(snn: SpikingNetwork) -> dict[int, list[tuple[int, Tensor]]]:
    """Per source (a stage index, -1 for the input): ``(consumer, fan-out)`` for every stage
    whose synapse reads it, where the fan-out ``[shape of one sample]`` is each source
    neuron's number of synaptic connections into the consumer (connections through a
    weight of exactly 0 do not count; an input inside a window of p average pools counts
    once per window). A spike of the neuron costs that many synaptic operations (additions
    into the consumer's membranes); the ANN does one multiply-add per connection. Max-pool
    gates relay spikes without synapses (fan-out 0 into them)."""
    stages = snn.spiking_stages
    with torch.inference_mode(False), torch.enable_grad():
        example = torch.zeros(1, *snn.input_shape, dtype=snn.dtype, device=next(snn.parameters()).device)
        shapes = [tuple(r.shape[1:]) for r in snn.analog_forward(example)]
        fanouts: dict[int, list[tuple[int, Tensor]]] = {}
        for j, stage in enumerate(stages):
            if stage.gate is not None:
                continue
            sources = stage.source_indices(j)
            ones = [
                torch.ones(1, *(snn.input_shape if s < 0 else shapes[s]), dtype=torch.float64, requires_grad=True)
                for s in sources
            ]
            counting = _counting(stage.synapse).cpu()
            counting(*ones).sum().backward()
            for s, x in zip(sources, ones, strict=True):
                assert x.grad is not None
                fanouts.setdefault(s, []).append((j, x.grad[0].detach()))
    return fanouts


def ann_operations(snn: SpikingNetwork) -> dict[str, Any]:
    """The multiply-adds of one inference of the ANN the network was converted from, per
    layer (``{"layers": {name: MACs}}``) and in all (``"total"``): each convolution and
    linear layer does one per connection through a non-zero weight (border positions that
    read padding do none), a folded BatchNorm without a layer before it one per value.
    Pools' additions and connection weights are not counted. Compare with the SNN's
    synaptic operations per image (``simulate(..., record_synops=True)``)."""
    layers: dict[str, float] = {}
    example = torch.zeros(1, *snn.input_shape, dtype=snn.dtype, device=next(snn.parameters()).device)
    shapes = [tuple(r.shape[1:]) for r in snn.analog_forward(example)]
    weighted = (nn.Conv2d, nn.Linear, ChannelAffine)
    for j, stage in enumerate(snn.spiking_stages):
        if stage.gate is not None:
            continue
        seen: list[tuple[nn.Module, tuple[int, ...]]] = []
        hooks = [
            m.register_forward_pre_hook(lambda module, args, seen=seen: seen.append((module, tuple(args[0].shape))))
            for m in stage.synapse.modules()
            if isinstance(m, weighted)
        ]
        try:
            with torch.no_grad():
                stage.synapse(*(example if s < 0 else torch.zeros(1, *shapes[s], dtype=snn.dtype) for s in stage.source_indices(j)))
        finally:
            for hook in hooks:
                hook.remove()
        layers[stage.name] = sum(_connections(module, shape) for module, shape in seen)
    return {"layers": layers, "total": sum(layers.values())}


def _connections(module: nn.Module, shape: tuple[int, ...]) -> float:
    """Connections of one layer through non-zero weights, for an input of ``shape``."""
    with torch.inference_mode(False), torch.enable_grad():
        ones = torch.ones(shape, dtype=torch.float64, requires_grad=True)
        _counting(module).cpu()(ones).sum().backward()
        assert ones.grad is not None
        return float(ones.grad.sum())
