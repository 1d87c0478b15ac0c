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
import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, fx, nn

from ..sim.inputs import check_count, is_number, iter_batches
from ..sim.network import ConversionInfo, Readout, SpikingNetwork, SpikingStage
from ..sim.neurons import RATE_ESTIMATES, RESETS, GateParams, IFParams
from .calibrate import ActivationStats, calibrate
from .graph import (
    Add,
    Cat,
    ChannelAffine,
    ConversionError,
    Flatten,
    Scale,
    Stage,
    TracedNetwork,
    trace,
)
from .rules import map_scales

__all__ = ["convert", "build_snn", "fold_scales"]


def build_snn(
    traced: TracedNetwork,
    stats: ActivationStats,
    rule: str = "nscaling",
    *,
    reset: str = "subtract",
    v_min: float | str | None = "auto",
    initial_potential: float | str = "auto",
    readout: Readout = "spikes",
    maxpool_rate: str = "count",
    maxpool_decay: float = 0.9,
    softmax_rate: float = 1.0,
    **rule_options: Any,
) -> SpikingNetwork:
    """Map the traced ANN onto IF neurons with ``rule`` (``maxnorm``, ``robust``,
    ``channelwise``, ``nscaling``, ``mse``, ``threshold``) and its options (e.g. ``n=0.5``
    for ``nscaling``, ``p=99.9`` for ``robust``, ``T=32`` for ``mse``).

    ``reset``: ``"subtract"`` (reset by subtraction, Rueckauer eq. 4b; the default, right for
    any network) or ``"zero"`` (Yang's setting; see the README for when it is the right choice).

    ``v_min``: ``"auto"`` bounds the membrane at the rule's V_min (Yang eq. 17, the global
    minimum over layers) for ``reset="zero"`` and leaves it unbounded for ``"subtract"``;
    a number sets it; ``None`` leaves it unbounded. It is given in threshold-1 units and
    scaled with the threshold in ``thresholds`` mode.

    ``initial_potential``: each IF neuron's membrane before the first step, as a fraction of
    its threshold in [0, 1): ``"auto"`` takes half the threshold in the layers of a
    :class:`~spikeconv.conversion.activations.QCFS` activation (where T = L steps reproduce the ANN
    exactly; Bu et al. 2022) and of a :class:`~spikeconv.conversion.activations.ThresholdReLU`
    trained without the shift (with it: 0, the start the shift was trained for), the
    rule's ``shift`` (default one half) for the clip-floor ``mse`` rule, and 0 elsewhere; a
    number sets every layer.

    ``readout``: ``spikes`` (spike count), ``membrane`` (accumulated output potential) or
    ``softmax`` (Rueckauer Sec. 3.5; an external generator firing with probability
    ``softmax_rate`` per step triggers one output spike drawn from softmax(V)).
    ``maxpool_rate`` (``count``, ``ewma`` with ``maxpool_decay``, or ``spikes``) is the rate
    estimate of the spiking max-pool gates (Rueckauer Sec. 3.6); ``spikes`` has none: each
    step's max-pool of the spikes (:class:`~spikeconv.sim.neurons.GateParams`)."""
    if not isinstance(traced, TracedNetwork):
        raise TypeError(f"build_snn() takes the TracedNetwork of spikeconv.trace(model, shape), not {type(traced).__name__}")
    if not isinstance(stats, ActivationStats):
        raise TypeError(f"build_snn() takes the ActivationStats of spikeconv.calibrate(), not {type(stats).__name__}")
    if reset not in RESETS:
        raise ValueError(f"reset must be one of {RESETS}, got {reset!r}")
    if maxpool_rate not in RATE_ESTIMATES:
        raise ValueError(f"maxpool_rate must be one of {RATE_ESTIMATES}, got {maxpool_rate!r}")
    mapping = map_scales(traced, stats, rule, **rule_options)
    if v_min == "auto":
        bound: float | None = mapping.v_min if reset == "zero" else None
    elif v_min is None:
        bound = None
    elif is_number(v_min) and math.isfinite(v_min) and v_min <= 0:
        bound = float(v_min)
    else:
        raise ValueError(f"v_min must be 'auto', None or a finite number <= 0, got {v_min!r}")
    if initial_potential != "auto" and not (is_number(initial_potential) and 0 <= initial_potential < 1):
        raise ValueError(
            f"initial_potential must be 'auto' or a fraction of the threshold in [0, 1), got {initial_potential!r}"
        )
    shapes = traced.output_shapes()
    scales = [layer.scale_value for layer in mapping.layers]
    stages = []
    for index, (stage, layer) in enumerate(zip(traced.stages, mapping.layers, strict=True)):
        if stage.pool is not None:
            gate = GateParams(
                kernel_size=stage.pool.kernel_size,
                stride=stage.pool.stride,
                padding=stage.pool.padding,
                estimate=maxpool_rate,  # type: ignore[arg-type]
                decay=maxpool_decay,
            )
            spiking = SpikingStage(
                stage.name, nn.Sequential(), IFParams(reset=reset), is_output=stage.is_output,  # type: ignore[arg-type]
                sources=stage.sources, gate=gate,
            )  # fmt: skip
            stages.append(spiking)
            continue
        in_shapes = [traced.input_shape if s < 0 else shapes[s] for s in stage.sources]
        in_scales = [_broadcast(1.0 if s < 0 else scales[s], shape) for s, shape in zip(stage.sources, in_shapes)]
        own = _broadcast(scales[index], shapes[index])
        if mapping.mode == "weights":
            threshold: float | Tensor = 1.0
            target = own
        else:
            reference = torch.tensor(layer.input_scale, dtype=torch.float64)
            threshold = layer.factor if own.numel() == 1 else own / reference
            target = reference
        synapse = fold_scales(copy.deepcopy(stage.synapse), in_scales, in_shapes, target, _dtype(stage))
        if isinstance(threshold, Tensor):
            threshold = threshold.to(_dtype(stage))
        floor = None if bound is None else bound * threshold
        fraction = _initial_fraction(stage, initial_potential, _rule_shift(rule, rule_options))
        neuron = IFParams(threshold=threshold, reset=reset, v_min=floor, v_init=fraction * threshold)  # type: ignore[arg-type]
        stages.append(SpikingStage(stage.name, synapse, neuron, is_output=stage.is_output, sources=stage.sources))
    info = ConversionInfo(
        mapping=mapping, stats=stats, reset=reset, v_min=bound, spiking_pool=_has_pool(traced),
        initial_potential=initial_potential,
    )  # fmt: skip
    return SpikingNetwork(
        stages, input_shape=traced.input_shape, readout=readout, info=info, softmax_rate=softmax_rate
    )


def _rule_shift(rule: str, options: dict[str, Any]) -> float | None:
    """The initial potential (fraction of the threshold) a rule's scales were chosen for:
    the clip-floor MSE rule's ``shift``; ``None`` for the others."""
    if rule == "mse" or (rule == "threshold" and options.get("base") == "mse"):
        return float(options.get("shift", 0.5))
    return None


def _initial_fraction(stage: Stage, initial_potential: float | str, rule_shift: float | None) -> float:
    """The initial membrane of a stage's neurons as a fraction of their threshold: the
    number given, or for ``"auto"`` the activation's (QCFS: one half), else the one the
    rule's thresholds assume, else 0."""
    if initial_potential != "auto":
        return float(initial_potential)
    if stage.activation is not None and not stage.is_output:
        return stage.activation.initial_fraction
    return 0.0 if rule_shift is None else rule_shift


def _dtype(stage: Stage) -> torch.dtype:
    return next((p.dtype for p in stage.synapse.parameters()), torch.float32)


def _broadcast(scale: float | Tensor, shape: tuple[int, ...]) -> Tensor:
    """A scale as a float64 tensor that broadcasts against one sample of shape ``shape``:
    0-d for one number, ``[C, 1, 1]`` or ``[F]`` per channel."""
    t = torch.as_tensor(scale, dtype=torch.float64)
    if t.numel() == 1:
        return t.reshape(())
    return t.reshape(-1, *([1] * (len(shape) - 1)))


def _same(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and bool(torch.equal(a, b)) or (
        a.numel() == 1 and b.numel() == 1 and float(a) == float(b)
    )


def _per_channel(sigma: Tensor, channels: int) -> Tensor:
    """``sigma`` as one value per channel (dim 0 of a sample), ``[channels]``."""
    if sigma.numel() == 1:
        return sigma.reshape(1).expand(channels)
    flat = sigma.reshape(sigma.shape[0], -1)
    if flat.shape[1] != 1 or flat.shape[0] != channels:
        raise ConversionError("a per-position scale cannot be folded into a convolution: please report the model")
    return flat[:, 0]


@torch.no_grad()
def _fold_module(module: nn.Module, value: Tensor, sigma: Tensor, target: Tensor) -> Tensor:
    """Rescale ``module`` in place so that it maps inputs in units of ``sigma`` to outputs in
    units of ``target`` (for a weighted module) and return the output's units."""
    if isinstance(module, (nn.Conv2d, nn.Linear, ChannelAffine)):
        weight, bias = module.weight, module.bias
        out_channels = weight.shape[0]
        if sigma.numel() == 1 and target.numel() == 1:  # one number: the arithmetic of a chain
            weight.mul_(float(sigma) / float(target))
            if bias is not None:
                bias.div_(float(target))
            return target
        in_channels = weight.shape[0] if isinstance(module, ChannelAffine) else weight.shape[1]
        if isinstance(module, nn.Conv2d) and module.groups != 1 and sigma.numel() != 1:
            raise ConversionError("per-channel scales into a grouped convolution are not supported")
        s_in = _per_channel(sigma, in_channels).to(weight.dtype)
        s_out = _per_channel(target, out_channels).to(weight.dtype)
        if isinstance(module, ChannelAffine):
            weight.mul_(s_in / s_out)
        else:
            weight.mul_(s_in.reshape(1, -1, *([1] * (weight.ndim - 2))))
            weight.div_(s_out.reshape(-1, *([1] * (weight.ndim - 1))))
        if bias is not None:
            bias.div_(s_out)
        return target
    if isinstance(module, Flatten):
        return sigma if sigma.numel() == 1 else sigma.expand(value.shape[1:]).flatten()
    if isinstance(module, (nn.AvgPool2d, nn.AdaptiveAvgPool2d, Scale)):
        return sigma
    raise ConversionError(f"cannot rescale a {type(module).__name__} inside a synapse: please report the model")


@torch.no_grad()
def fold_scales(
    synapse: nn.Module,
    in_scales: list[Tensor],
    in_shapes: list[tuple[int, ...]],
    target: Tensor,
    dtype: torch.dtype,
) -> nn.Module:
    """Fold the scales into ``synapse`` (changed in place and returned): its inputs come in
    units of ``in_scales`` (the sources' lambda), its output must be in units of ``target``
    (lambda_l / threshold). Weighted modules absorb the ratios into weights and biases
    (``W <- W * lambda_in / target``, ``b <- b / target``); where two inputs of an addition
    arrive in different units, or a path has no weights (an identity shortcut), a
    :class:`~spikeconv.conversion.graph.Scale` connection weight is inserted."""
    values = [torch.zeros(1, *shape, dtype=dtype) for shape in in_shapes]
    inner = target if target.numel() == 1 else target.max().reshape(())
    if isinstance(synapse, nn.Sequential):
        if len(in_scales) != 1:
            raise ConversionError(f"a chain synapse reads one source, got {len(in_scales)}")
        sigma, value = in_scales[0], values[0]
        modules = list(synapse)
        for k, module in enumerate(modules):
            last_weighted = k == max((i for i, m in enumerate(modules) if _weighted(m)), default=-1)
            sigma = _fold_module(module, value, sigma, target if last_weighted and _tail_is_linear(modules[k + 1 :]) else inner)
            value = module(value)
        if not _same(sigma, target):
            synapse.append(Scale(_ratio(sigma, target, value, dtype)))
        return synapse
    assert isinstance(synapse, fx.GraphModule)
    graph = synapse.graph
    env: dict[fx.Node, tuple[Tensor, Tensor]] = {}
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    for node, sigma, value in zip(placeholders, in_scales, values, strict=True):
        env[node] = (value, sigma)
    counter = 0

    def insert_scale(before: fx.Node, arg: fx.Node, factor: Tensor) -> fx.Node:
        nonlocal counter
        counter += 1
        name = f"scale_{counter}"
        synapse.add_module(name, Scale(factor))
        with graph.inserting_before(before):
            return graph.call_module(name, (arg,))

    for node in list(graph.nodes):
        if node.op == "call_module":
            module = synapse.get_submodule(str(node.target))
            args = list(node.args)
            if isinstance(module, Add):
                want = inner
                for i, arg in enumerate(args):
                    value, sigma = env[arg]
                    if not _same(sigma, want):
                        args[i] = insert_scale(node, arg, _ratio(sigma, want, value, dtype))
                node.args = tuple(args)
                out = module(*[env_value(env, a) for a in args])
                env[node] = (out, want)
            elif isinstance(module, Cat):
                parts = [env[a] for a in args]
                sigmas = [s for _, s in parts]
                out = module(*(v for v, _ in parts))
                if all(s.numel() == 1 for s in sigmas) and all(_same(s, sigmas[0]) for s in sigmas):
                    env[node] = (out, sigmas[0])
                else:
                    per = torch.cat([_per_channel(s, v.shape[1]) for v, s in parts])
                    env[node] = (out, per.reshape(-1, *([1] * (out.ndim - 2))))
            else:
                value, sigma = env[args[0]]
                sigma = _fold_module(module, value, sigma, inner)
                env[node] = (module(value), sigma)
        elif node.op == "output":
            result = node.args[0]
            value, sigma = env[result]
            if not _same(sigma, target):
                node.args = (insert_scale(node, result, _ratio(sigma, target, value, dtype)),)
    graph.lint()
    synapse.recompile()
    return synapse


def env_value(env: dict[fx.Node, tuple[Tensor, Tensor]], arg: fx.Node) -> Tensor:
    """The example value of ``arg`` (an inserted Scale node reads its input's)."""
    if arg in env:
        return env[arg][0]
    return env[arg.args[0]][0]  # type: ignore[index]


def _weighted(module: nn.Module) -> bool:
    return isinstance(module, (nn.Conv2d, nn.Linear, ChannelAffine))


def _tail_is_linear(rest: list[nn.Module]) -> bool:
    """Only shape-preserving per-channel ops follow (the last weighted module may take the
    per-channel output units)."""
    return all(isinstance(m, (nn.AvgPool2d, nn.AdaptiveAvgPool2d, Scale)) for m in rest)


def _ratio(sigma: Tensor, target: Tensor, value: Tensor | None, dtype: torch.dtype) -> Tensor:
    """The constant connection weight sigma / target, shaped for one sample of ``value``."""
    ratio = sigma / target
    return ratio.to(dtype)


def _has_pool(traced: TracedNetwork) -> bool:
    return any(stage.spiking_pool for stage in traced.stages)


def convert(
    model: nn.Module,
    calibration_data: Tensor | Iterable,
    rule: str = "nscaling",
    reset: str = "subtract",
    *,
    input_shape: tuple[int, ...] | None = None,
    calibration_size: int | None = 5000,
    v_min: float | str | None = "auto",
    initial_potential: float | str = "auto",
    readout: Readout = "spikes",
    spiking_pool: bool = False,
    maxpool_rate: str = "count",
    maxpool_decay: float = 0.9,
    softmax_rate: float = 1.0,
    **rule_options: Any,
) -> SpikingNetwork:
    """Convert a trained ReLU CNN into a spiking network of IF neurons.

    ``calibration_data``: a tensor of images in [0, 1] or an iterable of batches (tensors
    or ``(x, y)`` pairs); at most ``calibration_size`` images are used. ``input_shape`` is
    read from the data when not given. See :func:`build_snn` for the other options."""
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"convert() takes the trained ANN as a torch.nn.Module, got {type(model).__name__}: pass the model "
            "itself (for a checkpoint, build the model and load_state_dict first)"
        )
    if isinstance(calibration_data, ActivationStats):
        raise TypeError("pass statistics to build_snn(trace(model, shape), stats, ...), not to convert()")
    check_count("calibration_size", calibration_size, optional=True)  # before the trace, which takes a while
    batches = iter_batches(calibration_data, batch_size=500, what="calibration_data")
    first = next(batches, None)
    if first is None:
        raise ConversionError("the calibration data is empty: pass at least one image")
    shape = tuple(first[0].shape[1:]) if input_shape is None else input_shape
    traced = trace(model, shape, spiking_pool=spiking_pool)
    stats = calibrate(traced, itertools.chain([first], batches), max_images=calibration_size)
    return build_snn(
        traced, stats, rule, reset=reset, v_min=v_min, initial_potential=initial_potential, readout=readout,
        maxpool_rate=maxpool_rate,
        maxpool_decay=maxpool_decay, softmax_rate=softmax_rate, **rule_options,
    )  # fmt: skip
