"""Clock-driven simulation of a converted network over T steps, recording the prediction
after every step so one run gives the accuracy at every t <= T.

Two simulators share the neuron step (:func:`spikeconv.sim.neurons.if_step`) and the encoder:

* ``method="fast"`` (default) is time-batched: for a chunk of steps it computes a stage's
  synaptic input for all of them as one batched tensor op, then runs the IF recurrence over
  t; then the next stage. With constant (analog) input the first stage's current is
  computed once. Chunks bound the memory for any T x batch. Float32 convolutions on the
  CPU run in channels-last layout (1.3-2x faster in oneDNN than NCHW on our nets); the IF
  kernel works in whatever layout the current comes in. Convolutions and linear layers
  over sparse spikes run event-driven (:mod:`spikeconv.sim.events`). Where weights sit on a
  power-of-two grid every sum is exact and all of this gives the reference's currents bit
  for bit; with float weights the sums may round differently.
* ``method="reference"`` steps the whole network one time step at a time (the textbook
  loop). It is the oracle the fast path is tested against: both give identical spikes
  where sums are exact (weights on a grid) or with ``simulate(..., exact=True)``, and
  otherwise spikes that differ only where a membrane lies within float rounding of the
  threshold (docs/results/float_events.md: 1 image's output counts of 10,000).
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from . import kernels
from .encoders import EVENTS, INPUT_CODINGS, encode
from .events import EventForm, ResidualEventSynapse, event_synapses
from .fixedpoint import FixedPoint, quantize_network
from .inputs import (
    InputRangeWarning,
    check_coding_range,
    check_labels,
    is_integer,
    iter_batches,
    outside,
    range_text,
    value_range,
    warn_user,
)
from .network import SpikingNetwork, SpikingStage
from .neurons import GateParams, if_step, maxpool_gate, softmax_spikes

__all__ = ["SimulationResult", "simulate", "METHODS"]

METHODS = ("fast", "reference")
# Activations of one time chunk. Small chunks stay in cache: on the Yang MNIST net 16 MiB
# ran 1.4x faster than 512 MiB (benchmarks/speed, 2 threads).
DEFAULT_MEMORY_BYTES = 16 * 2**20
# Spike sums and output-layer steps held back and then processed in one go, at most this many
# elements (small tensor ops per time chunk cost more than their work, see _Readout.flush).
_PENDING_ELEMENTS = 2**16
# A batch is split into sub-batches when one of its steps would take more than this many
# times memory_bytes (64 MiB by default).
SUB_BATCH_FACTOR = 4
_SOFTMAX_SEED_OFFSET = 0x5F3759DF  # the softmax readout draws from its own stream, so both simulators agree
SEEDINGS: tuple[str, ...] = ("stream", "per_batch")


@dataclass(frozen=True, kw_only=True)
class SimulationResult:
    """What one simulation measured. Accuracies are in percent."""

    T: int
    coding: str
    predictions: Tensor  # [N] class after T steps
    output_counts: Tensor  # [N, classes] output spikes after T steps
    output_membrane: Tensor  # [N, classes] output membrane potential after T steps
    labels: Tensor | None  # [N]
    correct_per_step: Tensor | None  # [T] number of correct predictions after each step
    spikes_per_layer: dict[str, float]  # total spikes of each layer, all images and steps
    neurons_per_layer: dict[str, int]
    spikes_per_image: Tensor  # [N] spikes of all layers (input spikes not included)
    input_spikes_per_image: Tensor  # [N] spikes of the input encoder (0 for constant input)
    spikes_per_step: Tensor  # [T] spikes of all layers in each step, summed over images
    wall_time_s: float
    fixed_point: dict[str, Any] | None = None  # the number format, when simulated in fixed point
    spike_counts: dict[str, Tensor] | None = field(default=None, repr=False)  # per neuron [N, ...]
    spike_trains: dict[str, Tensor] | None = field(default=None, repr=False)  # [T, N, ...]
    # with record_synops: synaptic operations (spikes x fan-out, spikeconv.metrics.synaptic_fanouts),
    # counted at the receiving layer, all images and steps; per image; per step over all images
    synops_per_layer: dict[str, float] | None = None
    synops_per_image: Tensor | None = field(default=None, repr=False)  # [N]
    synops_per_step: Tensor | None = field(default=None, repr=False)  # [T]

    @property
    def num_images(self) -> int:
        return int(self.predictions.shape[0])

    @property
    def accuracy(self) -> Tensor | None:
        """Accuracy after each step, ``[T]``, in percent (``None`` without labels)."""
        if self.correct_per_step is None:
            return None
        return 100.0 * self.correct_per_step.double() / self.num_images

    def accuracy_curve(self) -> Tensor:
        """Accuracy after each step, ``[T]``; raises when the simulation had no labels."""
        accuracy = self.accuracy
        if accuracy is None:
            raise ValueError("this simulation had no labels: pass (images, labels) to simulate()")
        return accuracy

    @property
    def final_accuracy(self) -> float:
        return float(self.accuracy_curve()[-1])

    def accuracy_at(self, t: int) -> float:
        """Accuracy after step ``t`` (1-based)."""
        if not 1 <= t <= self.T:
            raise ValueError(f"t must be in 1..{self.T}, got {t}")
        return float(self.accuracy_curve()[t - 1])

    def latency(self, margin: float | None = None) -> int:
        """First step from which the accuracy stays within ``margin`` percentage points of
        its final value; by default :attr:`latency_margin`, what this many test images can
        resolve (:func:`spikeconv.metrics.latency_margin`)."""
        from ..metrics import latency

        return latency(self.accuracy_curve(), self.latency_margin if margin is None else margin)

    @property
    def latency_margin(self) -> float:
        """The default margin of :meth:`latency`, in percentage points: the 95 % confidence
        bound of the final accuracy on these images, at least one image and 0.1 pp."""
        from ..metrics import latency_margin

        return latency_margin(self.final_accuracy, self.num_images)

    def steps_to_reach(self, target: float) -> int | None:
        """First step at which the accuracy reaches ``target`` percent (``None``: never)."""
        from ..metrics import steps_to_reach

        return steps_to_reach(self.accuracy_curve(), target)

    @property
    def synops_total(self) -> float:
        """All synaptic operations of the run (all images and steps); needs ``record_synops``."""
        if self.synops_per_step is None:
            raise ValueError("this simulation did not count synaptic operations: pass record_synops=True")
        return float(self.synops_per_step.sum())

    def cost_to_reach(self, target: float) -> dict[str, float | int] | None:
        """What reaching ``target`` percent accuracy costs, per image: the first step t at
        which the accuracy is >= target, the spikes of all layers up to t (energy in units of
        one spike's, Ding et al. 2021 Sec. 3.4 after Cao et al. 2015: E = alpha x spikes) and,
        when recorded, the synaptic operations up to t. ``None`` if it is never reached."""
        t = self.steps_to_reach(target)
        if t is None:
            return None
        cost: dict[str, float | int] = {"step": t, "spikes_per_image": float(self.spikes_per_step[:t].sum()) / self.num_images}
        if self.synops_per_step is not None:
            cost["synops_per_image"] = float(self.synops_per_step[:t].sum()) / self.num_images
        return cost

    @property
    def firing_rates(self) -> dict[str, float]:
        """Mean spikes per neuron per step of each layer."""
        return {
            name: total / (self.neurons_per_layer[name] * self.num_images * self.T)
            for name, total in self.spikes_per_layer.items()
        }

    def to_dict(self, steps: list[int] | None = None) -> dict[str, Any]:
        """A JSON-ready summary; the accuracy curve in full, or only at ``steps``."""
        out: dict[str, Any] = {
            "T": self.T,
            "coding": self.coding,
            "images": self.num_images,
            "spikes_per_image": float(self.spikes_per_image.double().mean()),
            "input_spikes_per_image": float(self.input_spikes_per_image.double().mean()),
            "spikes_per_layer_per_image": {k: v / self.num_images for k, v in self.spikes_per_layer.items()},
            "firing_rates": self.firing_rates,
            "wall_time_s": self.wall_time_s,
        }
        if self.fixed_point is not None:
            out["fixed_point"] = self.fixed_point
        if self.synops_per_layer is not None:
            out["synops_per_image"] = self.synops_total / self.num_images
            out["synops_per_layer_per_image"] = {k: v / self.num_images for k, v in self.synops_per_layer.items()}
        accuracy = self.accuracy
        if accuracy is not None:
            out["final_accuracy"] = float(accuracy[-1])
            chosen = steps if steps is not None else list(range(1, self.T + 1))
            out["accuracy"] = {str(t): float(accuracy[t - 1]) for t in chosen if 1 <= t <= self.T}
            out["latency"] = self.latency()
            out["latency_margin_pp"] = self.latency_margin
        return out


def simulate(
    snn: SpikingNetwork,
    data: Any,
    T: int = 100,
    coding: str = "constant",
    seed: int = 0,
    batch_size: int = 100,
    *,
    method: str = "fast",
    device: str | torch.device | None = None,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
    progress: bool = False,
    record_counts: bool = False,
    record_trains: bool = False,
    fixed_point_bits: int | None = None,
    integer_bits: int | None = None,
    event_driven: bool = True,
    exact: bool = False,
    record_synops: bool = False,
    seeding: str = "stream",
    first_batch: int = 0,
) -> SimulationResult:
    """Simulate ``snn`` on ``data`` for ``T`` steps.

    ``data``: a tensor of images in [0, 1], an ``(images, labels)`` pair, an
    :class:`~spikeconv.io.data.ImageDataset`, or an iterable of ``(x, y)`` batches.
    ``coding``: ``constant``, ``poisson`` or ``deterministic`` (see
    :mod:`spikeconv.sim.encoders`), or ``events``: then each data item is a sequence
    ``[T_in, *input_shape]`` of counts (e.g. an event camera's, binned) fed one entry per
    step. ``seed`` seeds the Poisson draws. ``device`` moves the
    network there. ``record_counts`` keeps each neuron's spike count, ``record_trains``
    every spike (small runs only). ``memory_bytes`` bounds the activations of one time
    chunk of the fast path; a batch whose single step needs more than
    ``SUB_BATCH_FACTOR * memory_bytes`` is run in sub-batches (same results; not with
    Poisson input or the softmax readout, whose random draws are made per batch).

    ``fixed_point_bits``: simulate with weights, currents and membrane potentials as signed
    fixed-point numbers of this total width (``None``: float). The integer bits are
    ``integer_bits`` or, by default, the rule's N from V_min (Yang Sec. 3.4); see
    :mod:`spikeconv.sim.fixedpoint`.

    ``event_driven``: let the fast path compute convolutions and linear layers over sparse
    spikes event by event, adding the weights of the inputs that fired (see
    :mod:`spikeconv.sim.events`), where a cost model predicts it faster. It sums in another
    order than the dense convolution, so with float weights a membrane potential can differ
    by float rounding and, rarely, a spike moves (docs/results/float_events.md).
    ``exact``: the reference's spikes bit for bit, on any CPU: event-driven synapses only
    where every sum is exact in any order (weights on a power-of-two grid, as in fixed
    point), and every other synapse called one step at a time on the reference's layout,
    as the reference calls it (time-batched convolutions in another layout may round
    differently too: 1 spike in 2.3e9 moved on vgg-small). On float weights that costs
    most of the fast path's speed.

    ``record_synops``: count synaptic operations, each spike (and each non-zero analog input
    value per step) times its fan-out (:func:`spikeconv.metrics.synaptic_fanouts`), per
    receiving layer, per image and per step; compare with
    :func:`spikeconv.metrics.ann_operations`.

    ``seeding`` (Poisson input, softmax readout): ``stream``, one random stream for the whole
    run, batch after batch; or ``per_batch``, batch ``k`` (counted from ``first_batch``)
    draws from its own stream seeded by ``(seed, k)``, so any split of the data into whole
    batches of ``batch_size`` (processes, machines: :mod:`spikeconv.sim.distributed`) draws the
    same spikes as one run."""
    if not is_integer(T) or T <= 0:
        raise ValueError(f"T (number of time steps) must be a positive integer, got {T!r}")
    for name, value, low in (("batch_size", batch_size, 1), ("memory_bytes", memory_bytes, 1), ("seed", seed, 0)):
        if not is_integer(value) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if seed >= 2**62:
        raise ValueError(f"seed must be below 2**62, got {seed}")
    for name, bits in (("fixed_point_bits", fixed_point_bits), ("integer_bits", integer_bits)):
        if bits is not None and (not is_integer(bits) or bits < 0):
            raise ValueError(f"{name} must be a non-negative integer or None, got {bits!r}")
    if seeding not in SEEDINGS:
        raise ValueError(f"seeding must be one of {SEEDINGS}, got {seeding!r}")
    flags = {"progress": progress, "record_counts": record_counts, "record_trains": record_trains,
             "event_driven": event_driven, "exact": exact, "record_synops": record_synops}  # fmt: skip
    for name, flag in flags.items():  # a string such as "no" would count as true
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be True or False, got {flag!r}")
    if not is_integer(first_batch) or first_batch < 0:
        raise ValueError(f"first_batch must be an integer >= 0, got {first_batch!r}")
    if coding not in INPUT_CODINGS:
        raise ValueError(f"coding must be one of {INPUT_CODINGS}, got {coding!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not isinstance(snn, SpikingNetwork):
        raise TypeError(f"simulate() takes a SpikingNetwork from spikeconv.convert(), not {type(snn).__name__}")
    if device is not None:
        snn = snn.to(_available_device(device))
    fixed, zero_weights = None, None
    if fixed_point_bits is not None:
        fixed = _fixed_point(snn, fixed_point_bits, integer_bits)
        snn, zero_weights = quantize_network(snn, fixed)  # type: ignore[assignment]
    device = next(snn.parameters()).device if any(True for _ in snn.parameters()) else torch.device("cpu")
    fanouts = None
    if record_synops:
        from ..metrics import synaptic_fanouts

        fanouts = {
            s: [(j, f.to(device=device, dtype=snn.dtype)) for j, f in pairs] for s, pairs in synaptic_fanouts(snn).items()
        }
    generator = torch.Generator(device=device).manual_seed(seed)
    softmax_generator = torch.Generator(device=device).manual_seed(seed + _SOFTMAX_SEED_OFFSET)
    stages = snn.spiking_stages
    names = [s.name for s in stages]
    started = time.perf_counter()
    records: list[_BatchRecord] = []
    labels: list[Tensor] = []
    numels: list[int] | None = None
    sequence = coding == EVENTS  # each item is [T_in, *input_shape]
    shape = None if sequence else snn.input_shape
    batches = iter_batches(data, batch_size=batch_size, input_shape=shape, what="simulate data")
    calibrated = snn.info.stats.input_range if snn.info is not None else None
    checked = _DataChecks(coding, calibrated)
    total = len(data) if hasattr(data, "__len__") and not isinstance(data, tuple) else None
    bar = tqdm(total=total, unit="img", desc=f"simulate T={T}", disable=not progress)
    events: dict[int, EventForm] | None = None
    with torch.inference_mode():
        for k, (x, y) in enumerate(batches):
            if seeding == "per_batch":
                batch_seed = _batch_seed(seed, first_batch + k)
                generator = torch.Generator(device=device).manual_seed(batch_seed)
                softmax_generator = torch.Generator(device=device).manual_seed(batch_seed + _SOFTMAX_SEED_OFFSET)
            x = x.to(device=device, dtype=snn.dtype)
            if sequence:
                _check_sequence(x, snn.input_shape, checked.seen)
            if numels is None:
                shapes = [tuple(a.shape[1:]) for a in snn.analog_forward(x[:1, 0] if sequence else x[:1])]
                numels = [math.prod(shape) for shape in shapes]
                use_events = event_driven and method == "fast"
                events = _event_synapses(snn, shapes, device, exact) if use_events else {}
            checked(x, y, numels[-1])
            generators = (generator, softmax_generator)
            step_bytes = (int(x[0].numel()) + 2 * sum(numels)) * x.element_size()  # per image
            random_draws = coding == "poisson" or snn.readout == "softmax"
            pieces = [(x, y)] if method == "reference" else _sub_batches(
                x, y, step_bytes, SUB_BATCH_FACTOR * memory_bytes, random_draws
            )  # fmt: skip
            for xs, ys in pieces:
                if method == "fast":
                    chunk = _chunk_steps(T, len(xs), step_bytes, memory_bytes)
                    record = _run_fast(
                        snn, xs, ys, T, coding, generators, chunk, fixed, record_counts, record_trains, events=events,
                        fanouts=fanouts, exact=exact,
                    )  # fmt: skip
                else:
                    record = _run_reference(
                        snn, xs, ys, T, coding, generators, fixed, record_counts, record_trains, fanouts=fanouts
                    )  # fmt: skip
                records.append(record)
                if ys is not None:
                    labels.append(ys.cpu())
            bar.update(len(x))
    bar.close()
    if not records:
        raise ValueError("no images to simulate: data is empty")
    if labels and len(labels) != len(records):
        raise ValueError("some batches have labels and some do not")
    cat = torch.cat
    return SimulationResult(
        T=T,
        coding=coding,
        predictions=cat([r.predictions for r in records]),
        output_counts=cat([r.output_counts for r in records]),
        output_membrane=cat([r.output_membrane for r in records]),
        labels=cat(labels) if labels else None,
        correct_per_step=torch.stack([r.correct for r in records]).sum(0) if labels else None,
        spikes_per_layer={n: float(sum(float(r.layer_spikes[i].sum()) for r in records)) for i, n in enumerate(names)},
        neurons_per_layer=dict(zip(names, numels or [], strict=True)),
        spikes_per_image=cat([torch.stack(r.layer_spikes).sum(0) for r in records]),
        input_spikes_per_image=cat([r.input_spikes for r in records]),
        spikes_per_step=torch.stack([r.step_spikes for r in records]).sum(0),
        wall_time_s=time.perf_counter() - started,
        fixed_point=None if fixed is None else fixed.to_dict() | {"zero_weight_fraction": zero_weights},
        spike_counts={n: cat([r.counts[i] for r in records]) for i, n in enumerate(names)} if record_counts else None,
        spike_trains={n: cat([r.trains[i] for r in records], 1) for i, n in enumerate(names)} if record_trains else None,
        synops_per_layer=_synops_per_layer(records, stages) if record_synops else None,
        synops_per_image=cat([r.synops.sum(0) for r in records]) if record_synops else None,  # type: ignore[union-attr]
        synops_per_step=torch.stack([r.synops_steps for r in records]).sum(0) if record_synops else None,  # type: ignore[misc]
    )


def _synops_per_layer(records: list[_BatchRecord], stages: list[SpikingStage]) -> dict[str, float]:
    totals = torch.stack([r.synops.sum(1) for r in records if r.synops is not None]).sum(0)
    return {s.name: float(totals[j]) for j, s in enumerate(stages) if s.gate is None}


def _check_sequence(x: Tensor, input_shape: tuple[int, ...], seen: int) -> None:
    """Event input: ``[B, T_in, *input_shape]`` of non-negative counts."""
    if x.ndim != 2 + len(input_shape) or tuple(x.shape[2:]) != tuple(input_shape):
        raise ValueError(
            f"simulate data: coding 'events' takes sequences [batch, steps, {', '.join(map(str, input_shape))}] "
            f"(the network's input per step), got a batch of shape {tuple(x.shape)}"
        )
    low = float(x.min()) if x.numel() else 0.0
    if low < 0:
        raise ValueError(f"simulate data: event counts of images {seen}..{seen + len(x) - 1} go down to {low}; "
                         "events are counts >= 0 per pixel and step")  # fmt: skip


def _batch_seed(seed: int, batch: int) -> int:
    """The seed of batch ``batch``'s random stream: a hash of both (64-bit mix), below
    2**62 so that the softmax offset keeps it in range."""
    z = (seed * 0x9E3779B97F4A7C15 + batch * 0xBF58476D1CE4E5B9 + 1) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) >> 2


class _DataChecks:
    """What a batch of simulated data must satisfy beyond its shape (checked in
    :func:`spikeconv.sim.inputs.iter_batches`): labels that are classes of the network; values a
    spike coding can represent; for analog input, a warning when the images reach far
    beyond the calibration images' range (a 0..255 batch for a network calibrated on
    0..1 images fires at a rate the conversion never planned for)."""

    def __init__(self, coding: str, calibrated: tuple[float, float] | None) -> None:
        self.coding = coding
        self.calibrated = calibrated
        self.seen = 0
        self.warned = False

    def __call__(self, x: Tensor, y: Tensor | None, classes: int) -> None:
        if y is not None:
            check_labels(y, classes, "simulate data", self.seen)
        if self.coding not in ("constant", EVENTS):
            check_coding_range(x, self.coding, "simulate data", self.seen)
        elif self.coding == "constant" and self.calibrated is not None and not self.warned:
            low, high = value_range(x)
            if outside(low, high, self.calibrated):
                self.warned = True
                warn_user(
                    InputRangeWarning(
                        f"simulate data: images {self.seen}..{self.seen + len(x) - 1} span {range_text(low, high)}, "
                        f"far outside the calibration images' {range_text(*self.calibrated)}: the network was "
                        "normalized for the calibration data; preprocess both alike (e.g. both in [0, 1])"
                    )
                )
        self.seen += len(x)


def _available_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device, or a ValueError that says why it cannot be used here
    (torch's own errors name neither the argument nor what to pass instead)."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device {device!r} is not a torch device ({error}): pass e.g. 'cpu' or 'cuda'") from None
    if parsed.type == "cuda" and not (torch.cuda.is_available() and (parsed.index or 0) < torch.cuda.device_count()):
        raise ValueError(
            f"device {device!r} is not available: this torch ({torch.__version__}) sees "
            f"{torch.cuda.device_count() if torch.cuda.is_available() else 'no'} CUDA GPU(s); simulate on 'cpu' "
            "(the default) or install a CUDA build of torch"
        )
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} is not available on this machine: simulate on 'cpu' (the default)")
    return parsed


# The event form of each network's synapses, kept while the network lives and its weights
# are unchanged: finding it checks every weight's grid (22 ms on the Rueckauer net), which
# would otherwise be paid again by every simulate() call of a sweep.
_EVENT_FORMS: weakref.WeakKeyDictionary[SpikingNetwork, tuple[tuple, list, dict[int, EventForm]]] = (
    weakref.WeakKeyDictionary()
)


def _event_synapses(
    snn: SpikingNetwork, shapes: list[tuple[int, ...]], device: torch.device, exact: bool
) -> dict[int, EventForm]:
    """:func:`spikeconv.sim.events.event_synapses` of ``snn``, cached. The key holds every
    parameter's and buffer's storage address and version counter, so an in-place change
    (which bumps the version) or a new tensor recomputes it. The entry keeps the storages
    alive, so that no new tensor can take over a cached address with an equal version."""
    tensors = [*snn.parameters(), *snn.buffers()]
    key = (tuple(shapes), snn.dtype, device, exact, tuple((t.data_ptr(), t._version) for t in tensors))
    cached = _EVENT_FORMS.get(snn)
    if cached is None or cached[0] != key:
        storages = [t.untyped_storage() for t in tensors]
        cached = (key, storages, event_synapses(snn.spiking_stages, shapes, snn.dtype, device, exact))
        _EVENT_FORMS[snn] = cached
    return cached[2]


def _fixed_point(snn: SpikingNetwork, bits: int, integer_bits: int | None) -> FixedPoint:
    if integer_bits is None:
        if snn.info is None:
            raise ValueError("this network has no conversion record to take V_min from: pass integer_bits=")
        integer_bits = snn.info.mapping.membrane_bits
    if not all(stage.neuron.unit_threshold for stage in snn.spiking_stages):
        raise ValueError(
            "fixed-point simulation needs threshold 1 in every layer (a weight-scaling rule such as maxnorm or "
            "nscaling), not threshold balancing"
        )
    return FixedPoint(bits=bits, integer_bits=integer_bits)


def _sub_batches(
    x: Tensor, y: Tensor | None, step_bytes: int, limit: int, random_draws: bool
) -> list[tuple[Tensor, Tensor | None]]:
    """Split a batch whose one step would take more than ``limit`` bytes of activations
    into sub-batches that fit (oneDNN runs 1.6x faster on VGG-sized nets at batch 100 than
    at 1000). Not with random draws (Poisson input, softmax readout): those are made for
    the whole batch each step, and a split would change them."""
    size = len(x) if random_draws else max(1, limit // max(1, step_bytes))
    if size >= len(x):
        return [(x, y)]
    return [(x[i : i + size], None if y is None else y[i : i + size]) for i in range(0, len(x), size)]


def _chunk_steps(T: int, batch: int, step_bytes: int, memory_bytes: int) -> int:
    """Steps per time chunk: as many as fit in ``memory_bytes`` at ``step_bytes`` per image-step."""
    return max(1, min(T, memory_bytes // max(1, batch * step_bytes)))


@dataclass
class _BatchRecord:
    predictions: Tensor
    output_counts: Tensor
    output_membrane: Tensor
    correct: Tensor  # [T] (zeros when no labels)
    layer_spikes: list[Tensor]  # per layer [B]
    input_spikes: Tensor  # [B]
    step_spikes: Tensor  # [T] all layers, summed over the batch
    counts: list[Tensor]  # per layer [B, ...] when recorded
    trains: list[Tensor]  # per layer [T, B, ...] when recorded
    synops: Tensor | None = None  # [layers, B] synaptic operations received, when recorded
    synops_steps: Tensor | None = None  # [T] all layers, summed over the batch


class _Readout:
    """Running output counts and the prediction after every step: argmax of the spike
    count, ties broken by the output membrane potential (membrane readout: argmax V)."""

    def __init__(self, snn: SpikingNetwork, y: Tensor | None, T: int, device: torch.device) -> None:
        self.membrane_readout = snn.readout == "membrane"
        self.y = None if y is None else y.to(device)
        self.correct = torch.zeros(T, dtype=torch.int64)
        self.counts: Tensor | None = None
        self.t = 0
        self._pending: list[tuple[Tensor, Tensor]] = []
        self._pending_elements = 0

    def update(self, spikes: Tensor, membrane: Tensor) -> None:
        """``spikes`` and ``membrane``: the output layer's ``[steps, B, C]`` (kept, not
        copied: the caller must not overwrite them). Processed in bulk by :meth:`flush`."""
        self._pending.append((spikes, membrane))
        self._pending_elements += spikes.numel()
        if self._pending_elements >= _PENDING_ELEMENTS:
            self.flush()

    def flush(self) -> None:
        """The predictions after each pending step. Batched because with short time chunks
        the ~10 small tensor ops per call cost more than the tensors (measured: 4.3 ms of the
        Yang net's 113 ms at T = 100, batch 100, one step per chunk)."""
        if not self._pending:
            return
        spikes, membrane = (torch.cat(parts) for parts in zip(*self._pending))
        self._pending, self._pending_elements = [], 0
        base = self.counts if self.counts is not None else torch.zeros_like(spikes[0])
        counts = base + torch.cumsum(spikes, 0)
        if self.membrane_readout:
            predictions = membrane.argmax(-1)
        else:
            top = counts.amax(-1, keepdim=True)
            predictions = torch.where(counts == top, membrane, -math.inf).argmax(-1)
        if self.y is not None:
            self.correct[self.t : self.t + len(spikes)] = (predictions == self.y).sum(1).cpu()
        self.counts = counts[-1]
        self.predictions = predictions[-1]
        self.membrane = membrane[-1]
        self.t += len(spikes)


def _run_fast(
    snn: SpikingNetwork,
    x: Tensor,
    y: Tensor | None,
    T: int,
    coding: str,
    generators: tuple[torch.Generator, torch.Generator],
    chunk: int,
    fixed: FixedPoint | None,
    record_counts: bool,
    record_trains: bool,
    use_kernel: bool = True,
    events: dict[int, EventForm] | None = None,
    fanouts: _Fanouts | None = None,
    exact: bool = False,
) -> _BatchRecord:
    """The time-batched simulation of one batch. ``events``: the stages whose synapse may run
    event-driven (:mod:`spikeconv.sim.events`), chosen per chunk by their input's spike rate.
    ``exact``: every other synapse runs one step at a time on the reference's (contiguous)
    layout, the very call the reference makes, so that float sums are rounded alike."""
    stages = snn.spiking_stages
    events = events or {}
    event_sources = {k for j, stage in enumerate(stages) if j in events for k in stage.source_indices(j)}
    batch = len(x)
    state: list[Tensor | None] = [None] * len(stages)
    acc = _Accumulator(len(stages), batch, T, x.device, record_counts, record_trains, fanouts)
    readout = _Readout(snn, y, T, x.device)
    constant = coding == "constant"
    if constant:
        acc.add_constant_input(x)
    # exact: synapses without an (exact) event form take the reference's layout and calls
    layout = [(lambda t: t) if exact and i not in events else _conv_layout(s, x) for i, s in enumerate(stages)]
    constant_current = {  # stages reading only the analog input: their current is the same every step
        i: _dense(layout[i](s.synapse(*([layout[i](x)] * len(s.sources or (-1,))))))
        for i, s in enumerate(stages)
        if constant and s.gate is None and all(k < 0 for k in s.source_indices(i))
    }
    # Per hidden stage, a tensor reused by every chunk for what would otherwise be a new
    # multi-MB tensor each chunk (the spikes of a constant-current stage, the current of an
    # event synapse): in many runs glibc handed those out as fresh pages, and the page faults
    # made the Yang net 1.5-2x slower (T = 100, batch 100: 95 ms or 150-190 ms per process).
    # The first chunk is the longest, so later ones take a prefix.
    buffers: dict[int, Tensor] = {}
    for start in range(0, T, chunk):
        steps = min(chunk, T - start)
        layer_input = encode(x, coding, start, start + steps, generators[0])
        if not constant:
            acc.add_input(layer_input, start)
        outputs: list[Tensor] = []
        totals: dict[int, float] = {}  # spikes in this chunk of the stages that event synapses read
        for index, stage in enumerate(stages):
            inputs = [layer_input if s < 0 else outputs[s] for s in stage.source_indices(index)]
            counts: Tensor | None = None
            if stage.gate is not None:
                out = buffers[index][:steps] if index in buffers else None
                spikes, state[index] = _gate(inputs[0], state[index], stage.gate, use_kernel, out)
                if index not in buffers and len(spikes) == chunk:  # the first, longest chunk
                    buffers[index] = spikes
                membranes = None
            else:
                reuse = not stage.is_output  # the readout keeps the output stage's spikes
                spikes_out = None
                if index in constant_current:
                    c = constant_current[index]
                    # stride 0 over time even for one step: the kernel then writes its spikes
                    # to another tensor instead of over the shared constant current
                    current = c.as_strided((steps, *c.shape), (0, *c.stride()))
                    if reuse:
                        if index not in buffers:
                            buffers[index] = kernels.steps_like(c, chunk)
                        spikes_out = buffers[index][:steps]
                else:
                    flat = [layout[index](i.flatten(0, 1)) for i in inputs]
                    event = events.get(index)
                    rates = [totals[k] / max(1, f.numel()) for k, f in zip(stage.source_indices(index), flat, strict=True)] if event is not None else []
                    rate = rates[0] if rates else 0.0
                    if exact and event is None:  # as the reference: one call per step, contiguous inputs
                        steps_in = [i.contiguous() for i in inputs]
                        current = torch.stack([stage.synapse(*(i[t] for i in steps_in)) for t in range(steps)]).flatten(0, 1)
                    elif isinstance(event, ResidualEventSynapse):
                        if reuse and index not in buffers and (buffer := event.output_like(flat)) is not None:
                            buffers[index] = buffer
                        out = buffers[index][: len(flat[0])] if index in buffers else None
                        current = event(flat, rates, out=out)
                    elif event is not None and event.preferred(flat[0], rate):
                        if reuse and index not in buffers:
                            buffers[index] = event.output_like(flat[0])
                        out = buffers[index][: len(flat[0])] if reuse else None
                        current = event(flat[0], out=out, rate=rate)  # the dense current, sooner on sparse spikes
                    else:
                        current = stage.synapse(*flat)
                    current = current.unflatten(0, (steps, batch))
                    if any(_shares_memory(current, i) for i in inputs):  # an identity synapse: the kernel
                        current = current.clone()  # writes spikes into `current`, which must not be an input
                spikes, membranes, state[index], counts = _recurrence(
                    stage, current, state[index], snn, fixed, generators[1], use_kernel=use_kernel, spikes_out=spikes_out
                )
            if membranes is not None:
                readout.update(spikes, membranes)
            acc.add_layer(index, spikes, start, counts)
            outputs.append(spikes)
            if index in event_sources:
                totals[index] = float(counts.sum() if counts is not None else spikes.sum())
    return acc.finish(readout)


def _gate(
    spikes: Tensor, estimate: Tensor | None, gate: GateParams, use_kernel: bool, out: Tensor | None
) -> tuple[Tensor, Tensor]:
    """The max-pool gate over a chunk of steps: in C where it can (the same spikes as the
    reference's :func:`maxpool_gate`: it only adds, compares and copies; ewma's products are made
    as the tensor code makes them, tested), into ``out`` when it fits, updating the
    simulator's own ``estimate`` in place; else the tensor code."""
    if use_kernel and kernels.supports(spikes) and kernels.dense_blocks(spikes, 2):
        return kernels.maxpool_gate(
            spikes, estimate, kernel_size=gate.kernel_size, stride=gate.stride, padding=gate.padding,
            rate=gate.estimate, decay=gate.decay, out=out,
        )  # fmt: skip
    return maxpool_gate(spikes, estimate, gate)


def _conv_layout(stage: SpikingStage, x: Tensor) -> Callable[[Tensor], Tensor]:
    """How to lay out a stage's 4-D inputs: channels-last for float32 CPU convolutions
    (oneDNN's fast path; its float sums may round unlike NCHW's, exact on a grid), unchanged
    otherwise."""
    has_conv = any(isinstance(m, nn.Conv2d) for m in stage.synapse.modules())
    # (applied to the constant current too: a 1-channel input is both layouts at once, and
    # oneDNN then answers in NCHW, which the next stage would have to transpose every step)
    if has_conv and x.device.type == "cpu" and x.dtype == torch.float32:
        return lambda t: t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t
    return lambda t: t


def _dense(t: Tensor) -> Tensor:
    """``t`` itself when its memory is one dense block (any dimension order), else a
    contiguous copy."""
    return t if kernels.dense_blocks(t, 0) else t.contiguous()


def _shares_memory(a: Tensor, b: Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _run_reference(
    snn: SpikingNetwork,
    x: Tensor,
    y: Tensor | None,
    T: int,
    coding: str,
    generators: tuple[torch.Generator, torch.Generator],
    fixed: FixedPoint | None,
    record_counts: bool,
    record_trains: bool,
    fanouts: _Fanouts | None = None,
) -> _BatchRecord:
    stages = snn.spiking_stages
    state: list[Tensor | None] = [None] * len(stages)
    acc = _Accumulator(len(stages), len(x), T, x.device, record_counts, record_trains, fanouts)
    readout = _Readout(snn, y, T, x.device)
    if coding == "constant":
        acc.add_constant_input(x)
    for t in range(T):
        layer_input = encode(x, coding, t, t + 1, generators[0])
        if coding != "constant":
            acc.add_input(layer_input, t)
        outputs: list[Tensor] = []
        for index, stage in enumerate(stages):
            inputs = [layer_input if s < 0 else outputs[s] for s in stage.source_indices(index)]
            if stage.gate is not None:
                spikes, state[index] = maxpool_gate(inputs[0], state[index], stage.gate)
                membranes = None
            else:
                current = stage.synapse(*(i[0] for i in inputs)).unsqueeze(0)
                spikes, membranes, state[index], _ = _recurrence(
                    stage, current, state[index], snn, fixed, generators[1], use_kernel=False
                )
            if membranes is not None:
                readout.update(spikes, membranes)
            acc.add_layer(index, spikes, t)
            outputs.append(spikes)
    return acc.finish(readout)


_Fanouts = dict[int, list[tuple[int, Tensor]]]  # source -> (consumer, fan-out), metrics.synaptic_fanouts


class _Accumulator:
    """Spike totals per layer and image (and, when asked, per neuron and per step, and the
    synaptic operations they cause)."""

    def __init__(
        self, layers: int, batch: int, T: int, device: torch.device, counts: bool, trains: bool,
        fanouts: _Fanouts | None = None,
    ) -> None:  # fmt: skip
        self.T = T
        self.fanouts = fanouts
        # per fan-out: whether spikes (0/1) x fan-out summed in its own dtype are exact whatever
        # the order: integer fan-outs whose total stays below the dtype's integer range
        self._exact_sums = {
            id(f): bool((f == f.round()).all()) and float(f.sum()) < 1.0 / torch.finfo(f.dtype).eps
            for pairs in (fanouts or {}).values() for _, f in pairs
        }  # fmt: skip
        self.synops = torch.zeros(layers, batch, dtype=torch.float64, device=device) if fanouts is not None else None
        self.synops_steps = torch.zeros(T, dtype=torch.float64, device=device) if fanouts is not None else None
        self.layer_spikes = [torch.zeros(batch, dtype=torch.float64, device=device) for _ in range(layers)]
        self.step_spikes = torch.zeros(T, dtype=torch.float64, device=device)
        self.input_spikes = torch.zeros(batch, dtype=torch.float64, device=device)
        self.counts: list[Tensor | None] = [None] * layers if counts else []
        self.trains: list[list[Tensor]] = [[] for _ in range(layers)] if trains else []
        # per layer: the [steps, B] spike sums not yet added, their first step and elements (_flush)
        self._pending: list[list[Tensor]] = [[] for _ in range(layers)]
        self._pending_first = [0] * layers
        self._pending_elements = [0] * layers

    def add_input(self, spikes: Tensor, start: int) -> None:
        self.input_spikes += spikes.flatten(2).sum((0, 2), dtype=torch.float64)
        self._add_synops(-1, spikes, start)

    def add_constant_input(self, x: Tensor) -> None:
        """The analog input: every non-zero value drives its synapses at every step."""
        if self.fanouts is None or self.synops is None or self.synops_steps is None:
            return
        for j, fanout in self.fanouts.get(-1, []):
            per_image = ((x != 0).to(fanout.dtype) * fanout).flatten(1).sum(1, dtype=torch.float64)
            self.synops[j] += self.T * per_image
            self.synops_steps += per_image.sum()

    def _add_synops(self, source: int, spikes: Tensor, start: int) -> None:
        if self.fanouts is None or self.synops is None or self.synops_steps is None:
            return
        for j, fanout in self.fanouts.get(source, []):
            # a matrix-vector product in the spikes' own memory order (a multiply, a copy to
            # NCHW and a float64 sum were a quarter of a VGG's simulation); the input may
            # carry event counts, so its sums are made in float64
            exact = source >= 0 and self._exact_sums[id(fanout)]
            x, order = _per_sample(spikes)
            w = fanout.permute(order).reshape(-1)
            ops = (x @ w if exact else x.double() @ w.double()).to(torch.float64).view(spikes.shape[:2])  # [steps, B]
            self.synops[j] += ops.sum(0)
            self.synops_steps[start : start + len(ops)] += ops.sum(1)

    def add_layer(self, index: int, spikes: Tensor, start: int, counts: Tensor | None = None) -> None:
        """``spikes`` ``[steps, B, ...]`` of layer ``index`` for steps ``start+1 ..``;
        ``counts`` ``[steps, B]``: their sums per step and image when already known."""
        if counts is None:  # 0/1 spikes: their float sums are exact while a sample has < 1/eps values
            x, _ = _per_sample(spikes)
            exact = x.shape[1] < 1.0 / torch.finfo(x.dtype).eps
            counts = (x.sum(1) if exact else x.sum(1, dtype=torch.float64)).to(torch.float64).view(spikes.shape[:2])
        self._add_synops(index, spikes, start)
        if not self._pending[index]:
            self._pending_first[index] = start
        self._pending[index].append(counts)
        self._pending_elements[index] += counts.numel()
        if self._pending_elements[index] >= _PENDING_ELEMENTS:
            self._flush(index)
        if self.counts:
            per_neuron = spikes.sum(0)
            previous = self.counts[index]
            self.counts[index] = per_neuron if previous is None else previous + per_neuron
        if self.trains:
            self.trains[index].append(spikes.clone())

    def _flush(self, index: int) -> None:
        """Adds layer ``index``'s pending sums: in bulk, as per chunk the small ops cost
        more than the sums (measured: 4.5 ms of the Yang net's 113 ms at T = 100, batch 100)."""
        if self._pending[index]:
            counts, first = torch.cat(self._pending[index]), self._pending_first[index]
            self.step_spikes[first : first + len(counts)] += counts.sum(1)
            self.layer_spikes[index] += counts.sum(0)
            self._pending[index], self._pending_elements[index] = [], 0

    def finish(self, readout: _Readout) -> _BatchRecord:
        readout.flush()
        for index in range(len(self._pending)):
            self._flush(index)
        return _BatchRecord(
            predictions=readout.predictions.cpu(),
            output_counts=readout.counts.cpu(),  # type: ignore[union-attr]
            output_membrane=readout.membrane.cpu(),
            correct=readout.correct,
            layer_spikes=[s.cpu() for s in self.layer_spikes],
            input_spikes=self.input_spikes.cpu(),
            step_spikes=self.step_spikes.cpu(),
            counts=[c.cpu() for c in self.counts if c is not None],
            trains=[torch.cat(chunks).cpu() for chunks in self.trains],
            synops=None if self.synops is None else self.synops.cpu(),
            synops_steps=None if self.synops_steps is None else self.synops_steps.cpu(),
        )


def _per_sample(t: Tensor) -> tuple[Tensor, list[int]]:
    """``t`` ``[steps, B, ...]`` as ``[steps * B, n]`` with each sample's values in their
    memory order (a view for channels-last as for NCHW), and that order of one sample's
    dimensions (to lay out a per-sample tensor the same way)."""
    order = sorted(range(t.dim() - 2), key=lambda d: -t.stride(d + 2))
    return t.permute(0, 1, *(d + 2 for d in order)).reshape(t.shape[0] * t.shape[1], -1), order


def _recurrence(
    stage: SpikingStage,
    current: Tensor,
    v: Tensor | None,
    snn: SpikingNetwork,
    fixed: FixedPoint | None,
    softmax_generator: torch.Generator | None = None,
    *,
    use_kernel: bool,
    spikes_out: Tensor | None = None,
) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
    """The IF recurrence over the steps of ``current`` ``[steps, B, ...]``. Returns the
    spikes, the membrane after each step (output stage only), the final membrane and, from
    the fused kernel, the spikes per step and image ``[steps, B]`` (else ``None``).
    In fixed point the current is rounded to the grid and the membrane saturates. The
    output stage of the membrane and softmax readouts only integrates; the softmax readout
    then draws its spikes (:func:`spikeconv.sim.neurons.softmax_spikes`).

    ``use_kernel``: run the fused C recurrence (:mod:`spikeconv.sim.kernels`) when it supports
    the tensors (one-number thresholds, no softmax readout); it overwrites a freshly computed
    ``current`` with the spikes. Otherwise (and in the step-by-step reference) the tensor
    loop over :func:`if_step`. ``spikes_out``: where the kernel writes the spikes of a
    step-broadcast ``current`` (in the current's layout; default: a new tensor)."""
    if fixed is not None:
        current = fixed.quantize(current)
    integrate_only = stage.is_output and snn.readout in ("membrane", "softmax")
    softmax = stage.is_output and snn.readout == "softmax"
    scalar_neuron = not isinstance(stage.neuron.threshold, Tensor) and not isinstance(stage.neuron.v_min, Tensor)
    if use_kernel and not softmax and scalar_neuron and kernels.supports(current):
        broadcast = current.stride(0) == 0
        if not broadcast and not kernels.dense_blocks(current, 2):
            current = current.contiguous()
        if v is None:
            v = stage.neuron.initial_membrane(current[0])  # the current's layout (channels-last or not)
        if not kernels.dense_blocks(v, 1) or not kernels.same_layout(v, 1, current, 2):
            v = torch.empty_like(current[0]).copy_(v)  # rare: give the state the current's layout
        spikes = current if not broadcast else spikes_out if spikes_out is not None else kernels.steps_like(v, len(current))
        membranes = kernels.steps_like(v, len(current)) if stage.is_output else None
        counts = kernels.if_recurrence(
            current, v,
            mode="integrate" if integrate_only else stage.neuron.reset,
            threshold=float(stage.neuron.threshold),
            v_min=None if stage.neuron.v_min is None else float(stage.neuron.v_min),
            saturate=None if fixed is None else (fixed.low, fixed.high),
            spikes=spikes, membranes=membranes,
        )  # fmt: skip
        return spikes, membranes, v, counts
    if v is None:
        v = stage.neuron.initial_membrane(current[0])
    spikes = torch.empty_like(current)
    membranes = torch.empty_like(current) if stage.is_output else None
    for k in range(len(current)):
        if integrate_only:
            v = v + current[k]
            spikes[k] = softmax_spikes(v, snn.softmax_rate, softmax_generator) if softmax else 0.0
        else:
            spikes[k], v = if_step(current[k], v, stage.neuron)
        if fixed is not None:
            v = fixed.saturate(v)
        if membranes is not None:
            membranes[k] = v
    return spikes, membranes, v, None
