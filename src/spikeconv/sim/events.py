"""Event-driven synapses: a convolution over binary spikes computed as the sum of the weights
of the neurons that fired, instead of a dense multiply over every input.

At the firing rates of converted nets (4-5 % on the Yang MNIST net) this does several times
fewer additions than the dense convolution, but it sums in a different order, and float
sums depend on their order. Where every weight and bias is a multiple of one power of two
2^-q and no partial sum can exceed 2^24 * 2^-q (float32's 24-bit significand), every
partial sum in any order is exact, and the event-driven current equals the dense one bit
for bit: fixed-point networks (``simulate(..., fixed_point_bits=...)``) and any net whose
weights sit on a power-of-two grid. With unrounded float weights the two currents differ
by float rounding (a few units in the last place), and a spike moves only where a
membrane potential lands within that of the threshold (docs/results/float_events.md
measures how often); ``simulate(..., exact=True)`` keeps such synapses dense, called as
the step reference calls them, so that the fast path equals it bit for bit.

It pays only when the input is sparse and the layer is wide. Per input element, with fan
the outputs one (pooled) input feeds (KH * KW for a stride-1 convolution, 1 for a linear
layer), the dense way does fan * C_out / pool^2 multiply-adds; the event way scans the
element and, per spike, adds fan * C_out / 16 vectors of 16 weights (C_out padded to a
multiple of 16), plus a cost per output pixel. A chunk of steps goes
the event way when a cost model of the two, fitted to timings on this machine's two cores
(benchmarks/speed/event_costs.py), predicts it at least :data:`MIN_SPEEDUP` times faster at
the input's measured spike rate. Linear layers (after an optional pool and flatten) run
as a convolution whose kernel covers the whole input map. Both ways give the same current
(up to float rounding, above), so the choice changes only the speed. 16-output convolutions (stride 1, no pooling) at input
rates below :data:`SCATTER_MAX_RATE` go the other way round: each spike adds its weights to
the outputs it feeds, which saves the per-output-pixel work that dominates such narrow
layers at low rates. A residual stage's synapse, a sum of identity shortcuts and
convolutions of its sources (:class:`ResidualEventSynapse`), runs each convolution this
way and adds the terms.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, fx, nn

from ..conversion.graph import Add, Flatten, _pair
from . import kernels
from .network import SpikingStage

__all__ = [
    "COSTS", "EventCosts", "EventForm", "EventSynapse", "ResidualEventSynapse", "event_synapses", "exact_sums", "predicted_speedup",
]  # fmt: skip

CACHED_WEIGHT_BYTES = 2**20  # the L2 cache of one core here: weights above it are read from L3


@dataclass(frozen=True)
class EventCosts:
    """The cost model's constants, per input element, in units of one 16-float vector
    addition of the event path."""

    scan: float  # listing the element's spike (AVX-512 compare and compress)
    range: float  # per (output pixel, 128-output block): merge the lists, sum one range in registers
    big_weights_add: float  # a vector addition when the weights exceed CACHED_WEIGHT_BYTES
    mac: float  # one multiply-add of the dense convolution (oneDNN, near peak)
    linear_mac: float  # one multiply-add of a dense linear layer
    pool: float  # the dense way's avg_pool2d pass


# Fitted to 70 timings of 14 layer shapes at rates 2.5-30 % (benchmarks/speed/event_costs.py
# -> event_costs.json); one vector addition took 0.22 ns on the two cores.
COSTS = EventCosts(scan=0.541, range=42.6, big_weights_add=2.29, mac=0.0419, linear_mac=0.0763, pool=1.44)
# Events when the model predicts at least this speedup. On the 70 timings it picked 61, none
# slower than dense (the closest 1.03x); it left dense none that events won by more than 1.25x.
MIN_SPEEDUP = 1.2
# 16-output convolutions scatter below this input spike rate (16 -> 16 3x3 on 32x32, 100
# images, best of 30, 2 threads: 1.6x at 3 %, 1.33x at 7 %, 0.97x at 15 % against summing
# per output pixel)
SCATTER_MAX_RATE = 0.1
_SIGNIFICAND_BITS = {torch.float32: 24, torch.float64: 53}


@dataclass(frozen=True)
class EventSynapse:
    """A stage's synapse in the event kernel's form: ``[AvgPool2d(k)] -> Conv2d``, or
    ``[AvgPool2d(k)] -> [Flatten] -> Linear`` as a convolution whose kernel covers the
    whole (pooled) input map. The kernel computes outputs 16 at a time, so weight and bias
    are padded with zeros to a multiple of 16 outputs; the extra outputs are dropped."""

    weight: Tensor  # [KH, KW, C_in, C_out padded to a multiple of 16], divided by pool ** 2
    bias: Tensor | None  # [C_out padded]
    pool: int  # 1: no pooling
    stride: int
    padding: int
    linear: bool  # input [N, C] or [N, C, H, W], output [N, C_out]
    c_out: int  # the layer's outputs

    def __call__(self, spikes: Tensor, out: Tensor | None = None, rate: float | None = None) -> Tensor:
        """``spikes`` (0/1) -> the synaptic current, the dense synapse's (bit for bit where
        :func:`exact_sums` holds, up to float rounding otherwise). ``out``: where
        the kernel writes, as :meth:`output_like` makes it (the result is a view of it).
        ``rate``: the spikes' measured rate, when known; below :data:`SCATTER_MAX_RATE` a
        16-output convolution scatters each spike's weights (``event_conv(scatter=True)``)."""
        n = spikes.shape[0]
        if spikes.dim() == 2:  # a linear layer after a linear layer: [N, C] is [N, C, 1, 1]
            spikes = spikes.view(n, -1, 1, 1)
        spikes = spikes.contiguous(memory_format=torch.channels_last)
        scatter = self.scatters and rate is not None and rate < SCATTER_MAX_RATE
        current = kernels.event_conv(
            spikes, self.weight, self.bias, pool=self.pool, stride=self.stride, padding=self.padding, out=out,
            scatter=scatter,
        )  # fmt: skip
        if self.linear:
            current = current.view(n, -1)
        return current if current.shape[1] == self.c_out else current[:, : self.c_out]

    @property
    def scatters(self) -> bool:
        """Whether the kernel's scatter path can run this synapse: 16 outputs (after padding),
        stride 1, no pooling (pooled inputs measured 0.2-1.1x slower scattered), padding
        below the kernel size."""
        kh, kw, _, padded = self.weight.shape
        return padded == 16 and self.stride == 1 and self.pool == 1 and not self.linear and self.padding < min(kh, kw)

    def output_like(self, spikes: Tensor) -> Tensor:
        """An empty tensor the kernel can write this synapse's current for ``spikes`` into."""
        h, w = (*spikes.shape[2:], 1, 1)[:2]
        kh, kw, _, padded = self.weight.shape
        oh, ow = kernels.event_output_size(h, w, kh, kw, pool=self.pool, stride=self.stride, padding=self.padding)
        return torch.empty((spikes.shape[0], padded, oh, ow), dtype=torch.float32, memory_format=torch.channels_last)

    def preferred(self, spikes: Tensor, rate: float) -> bool:
        """Whether events should beat the dense synapse on ``spikes`` (``[N, C, H, W]`` or
        ``[N, C]``), of which a fraction ``rate`` fired (and the kernel's int32 spike lists
        can index them)."""
        c, h, w = (*spikes.shape[1:], 1, 1)[:3]
        kh, kw, _, padded = self.weight.shape
        ph, pw = h // self.pool, w // self.pool
        oh, ow = kernels.event_output_size(h, w, kh, kw, pool=self.pool, stride=self.stride, padding=self.padding)
        fan = oh * ow * kh * kw / max(1, ph * pw)  # outputs each pooled input feeds (kernel taps)
        ranges = oh * ow * -(-padded // 128)  # per image, see kernels.event_conv
        fits = kernels.event_lists_fit(w, c, padded, self.pool, kh * kw)
        speedup = predicted_speedup(
            rate, fan, self.c_out, self.pool, linear=self.linear, event_c_out=padded,
            weight_bytes=self.weight.numel() * self.weight.element_size(),
            ranges_per_element=ranges / (c * h * w),
        )  # fmt: skip
        return fits and speedup >= MIN_SPEEDUP


@dataclass(frozen=True)
class ResidualEventSynapse:
    """A residual stage's synapse, the sum of one term per source: that source's spikes
    (an identity shortcut) or a convolution of them (the branch, a projection shortcut),
    each convolution an :class:`EventSynapse`. Each convolution runs event by event where
    the cost model prefers it for its input's rate, densely otherwise. The terms are added
    convolutions first, identities last: for two terms that is the dense graph's result
    (float addition commutes); for more, the same sum up to rounding (exact on a grid)."""

    # (source position, event form, dense layer); the first is a convolution, identities last
    terms: tuple[tuple[int, EventSynapse | None, nn.Module | None], ...]

    def __call__(self, inputs: list[Tensor], rates: list[float], out: Tensor | None = None) -> Tensor:
        """``inputs``: the spikes of each source (``[N, C, H, W]``); ``rates``: their
        measured rates; ``out``: where the first event convolution may write (as
        :meth:`output_like` makes it)."""
        current: Tensor | None = None
        for position, event, dense in self.terms:
            x = inputs[position]
            if event is None and dense is None:  # identity
                term = x
            elif event is not None and event.preferred(x, rates[position]):
                term = event(x, out=out if current is None else None, rate=rates[position])
            else:
                term = dense(x)  # type: ignore[misc]
            current = term if current is None else current.add_(term)  # the first term is a fresh tensor
        return current  # type: ignore[return-value]

    def output_like(self, inputs: list[Tensor]) -> Tensor | None:
        """A buffer for the first term's event convolution (``None`` when that convolution
        has no event form)."""
        position, event, _ = self.terms[0]
        return None if event is None else event.output_like(inputs[position])


EventForm = EventSynapse | ResidualEventSynapse


def predicted_speedup(
    rate: float, fan: float, c_out: int, pool: int, *, ranges_per_element: float, weight_bytes: int,
    linear: bool = False, event_c_out: int | None = None, costs: EventCosts = COSTS,
) -> float:  # fmt: skip
    """Dense time over event time per input element, from the fitted cost model. ``fan``:
    how many output positions one (pooled) input feeds, KH * KW for a stride-1 convolution
    and 1 for a linear layer; ``ranges_per_element``: (output pixel, 128-output block)
    pairs per input element; ``weight_bytes``: the size of the event kernel's weights;
    ``event_c_out``: the outputs the event kernel computes (``c_out`` padded to a multiple
    of 16; default ``c_out``); ``costs``: the model's constants (a fresh fit, in
    benchmarks/speed/event_costs.py)."""
    mac = costs.linear_mac if linear else costs.mac
    add = costs.big_weights_add if weight_bytes > CACHED_WEIGHT_BYTES else 1.0
    dense = fan * c_out / pool**2 * mac + (costs.pool if pool > 1 else 0.0)
    lists = costs.scan + costs.range * ranges_per_element
    return dense / (lists + rate * fan * (event_c_out or c_out) / 16 * add)


def grid_bits(t: Tensor, limit: int = 64) -> int | None:
    """The smallest q with every element of ``t`` a multiple of 2^-q (``None``: none below
    ``limit``). One pass: a value m * 2^(e - 53) with m an integer whose lowest set bit is
    2^z needs 53 - e - z fractional bits."""
    values = t.detach().double().flatten()  # exact for float32 values
    values = values[values != 0]
    if values.numel() == 0:
        return 0
    mantissa, exponent = torch.frexp(values)  # |mantissa| in [0.5, 1)
    m = (mantissa.abs() * 2.0**53).to(torch.int64)  # exact: a 53-bit integer
    _, lowest_bit = torch.frexp((m & -m).double())  # m & -m = 2^z, whose frexp exponent is z + 1
    q = max(0, int((54 - exponent - lowest_bit).max()))
    return q if q < limit else None


def exact_sums(weight: Tensor, bias: Tensor | None, pool: int, dtype: torch.dtype) -> bool:
    """Whether every partial sum of ``conv2d(avg_pool2d(spikes, pool), weight, bias)`` over
    0/1 spikes is exact in ``dtype``, whatever the order: the pooled inputs are multiples
    of 1/pool^2 in [0, 1] (pool^2 a power of two), so every product is a multiple of
    2^-(q_w + log2 pool^2), and no partial sum exceeds |bias| + sum |w| of an output."""
    if pool < 1 or pool & (pool - 1):  # pool^2 must be a power of two for the exact 1/pool^2
        return False
    q_w = grid_bits(weight)
    q_b = 0 if bias is None else grid_bits(bias)
    if q_w is None or q_b is None:
        return False
    q = max(q_w + 2 * (pool.bit_length() - 1), q_b)
    per_output = weight.detach().double().abs().flatten(1).sum(1)
    if bias is not None:
        per_output = per_output + bias.detach().double().abs()
    return float(per_output.max()) * 2.0**q < 2.0 ** _SIGNIFICAND_BITS[dtype]


def event_synapses(
    stages: list[SpikingStage], shapes: list[tuple[int, ...]], dtype: torch.dtype, device: torch.device,
    exact: bool = False,
) -> dict[int, EventForm]:
    """The stages whose synapse can run event by event:
    ``[AvgPool2d(k, stride k)] -> Conv2d`` (groups 1, dilation 1, zero padding) or
    ``[AvgPool2d(k, stride k)] -> [Flatten] -> Linear``, reading one spiking stage; float32
    on the CPU with the compiled kernel. ``exact``: only those whose sums are exact in any
    order (:func:`exact_sums`), so that the event current equals the dense one bit for bit;
    otherwise any weights, whose event current then differs from the dense one by float
    rounding. ``shapes``: each stage's output shape per image. ``{stage index: synapse}``."""
    if dtype != torch.float32 or device.type != "cpu" or not kernels.available():
        return {}
    found: dict[int, EventForm] = {}
    for j, stage in enumerate(stages):
        sources = stage.source_indices(j)
        if stage.gate is not None or min(sources) < 0:
            continue
        if isinstance(stage.synapse, fx.GraphModule):
            residual = _residual_form(stage.synapse, [shapes[k] for k in sources], dtype, exact)
            if residual is not None:
                found[j] = residual
            continue
        if len(sources) != 1 or not isinstance(stage.synapse, nn.Sequential):
            continue
        modules = list(stage.synapse)
        pool = _square_avg_pool(modules[0]) if len(modules) > 1 else 0
        if pool:
            modules = modules[1:]
        flattened = len(modules) == 2 and _flattens_all_but_batch(modules[0])
        if flattened:
            modules = modules[1:]
        if len(modules) != 1:
            continue
        synapse = _event_form(modules[0], shapes[sources[0]], max(pool, 1), flattened, dtype, exact)
        if synapse is not None:
            found[j] = synapse
    return found


def _event_form(
    layer: nn.Module, shape: tuple[int, ...], pool: int, flattened: bool, dtype: torch.dtype, exact: bool = True
) -> EventSynapse | None:
    """``layer`` (after a pool of ``pool`` and, if ``flattened``, a flatten, on inputs of
    ``shape``) in the event kernel's form, or ``None`` where the kernel cannot run it (or,
    with ``exact``, cannot run it with exactly the dense sums)."""
    if isinstance(layer, nn.Conv2d) and not flattened:
        c_out = layer.out_channels
        square = layer.stride[0] == layer.stride[1] and isinstance(layer.padding, tuple) and layer.padding[0] == layer.padding[1]
        plain = layer.groups == 1 and layer.dilation == (1, 1) and layer.padding_mode == "zeros"
        if not (square and plain) or len(shape) != 3:
            return None
        weight = layer.weight.detach().permute(2, 3, 1, 0)
        stride, padding, linear = int(layer.stride[0]), int(layer.padding[0]), False  # type: ignore[index]
    elif isinstance(layer, nn.Linear):
        c_out = layer.out_features
        c, h, w = (*shape, 1, 1)[:3]
        # a linear layer reads a flat vector: the input's own, or a 3-d map flattened
        if not (len(shape) == 1 and pool == 1 or len(shape) == 3 and flattened) or c * (h // pool) * (w // pool) != layer.in_features:
            return None
        # flatten order is (c, h, w) whatever the memory layout: a kernel over the whole map
        weight = layer.weight.detach().view(c_out, c, h // pool, w // pool).permute(2, 3, 1, 0)
        stride, padding, linear = 1, 0, True
    else:
        return None
    if exact and not exact_sums(layer.weight, layer.bias, pool, dtype):
        return None
    extra = -c_out % 16  # zero outputs up to the kernel's 16-output vectors (they are dropped)
    weight = nn.functional.pad(weight / pool**2, (0, extra)).contiguous()
    bias = None if layer.bias is None else nn.functional.pad(layer.bias.detach(), (0, extra)).contiguous()
    return EventSynapse(weight, bias, pool, stride, padding, linear, c_out)


def _residual_form(
    graph: fx.GraphModule, shapes: list[tuple[int, ...]], dtype: torch.dtype, exact: bool
) -> ResidualEventSynapse | None:
    """``graph`` (a residual stage's synapse) as a sum of identity and convolution terms,
    or ``None`` for any other graph: its output must be one ``Add`` whose inputs are each a
    source or a ``Conv2d`` of a source (used nowhere else), with at least one convolution in
    event form (with ``exact``: every convolution)."""
    nodes = list(graph.graph.nodes)
    places = {node: i for i, node in enumerate(n for n in nodes if n.op == "placeholder")}
    output = next(n for n in nodes if n.op == "output").args[0]
    if not (isinstance(output, fx.Node) and output.op == "call_module" and isinstance(graph.get_submodule(str(output.target)), Add)):
        return None
    terms: list[tuple[int, EventSynapse | None, nn.Module | None]] = []
    for arg in output.args:
        if not isinstance(arg, fx.Node) or len(arg.users) != 1:
            return None
        if arg in places:
            terms.append((places[arg], None, None))
            continue
        source = arg.args[0] if arg.op == "call_module" and len(arg.args) == 1 and not arg.kwargs else None
        layer = graph.get_submodule(str(arg.target)) if source is not None else None
        if source not in places or not isinstance(layer, nn.Conv2d):
            return None
        position = places[source]  # type: ignore[index]
        event = _event_form(layer, shapes[position], 1, False, dtype, exact)
        if event is None and exact:
            return None  # exact: an inexact term must be summed as the reference sums it, step by step
        terms.append((position, event, layer))  # without an event form, the term runs densely
    if all(event is None for _, event, _ in terms):
        return None
    # the convolutions first, so that the sum starts in a fresh tensor (the kernel's or the layer's)
    terms.sort(key=lambda term: term[1] is None and term[2] is None)
    return ResidualEventSynapse(tuple(terms))


def _flattens_all_but_batch(module: nn.Module) -> bool:
    if isinstance(module, nn.Flatten):
        return (module.start_dim, module.end_dim) == (1, -1)
    return isinstance(module, Flatten)  # what tracing makes of x.flatten(1) and x.view(x.size(0), -1)


def _square_avg_pool(module: nn.Module) -> int:
    """k for an ``AvgPool2d`` with a k x k kernel, stride k and no padding, ceil mode or
    divisor override; 0 for anything else."""
    if not isinstance(module, nn.AvgPool2d) or module.ceil_mode or module.divisor_override is not None:
        return 0
    kernel, stride, padding = _pair(module.kernel_size), _pair(module.stride), _pair(module.padding)
    if kernel[0] != kernel[1] or stride != kernel or padding != (0, 0):
        return 0
    return int(kernel[0])
