"""Integrate-and-fire neurons as a pure step function over an explicit state.

``if_step(z, v, params) -> (spikes, v)`` is the whole neuron model; the simulator owns the
loop over time. Dynamics (Yang eq. 1 and Fig. 2c; Rueckauer eq. 4):

    V(0) = v_init                              0, or e.g. threshold / 2 (QCFS, Bu et al. 2022)
    V(t) = V(t-1) + z(t)                       integrate the synaptic current (bias included)
    spike if V(t) >= threshold                 at most one spike per step
    reset "zero":     V <- 0 after a spike      (Yang Fig. 2c; Rueckauer eq. 4a)
    reset "subtract": V <- V - threshold        (Rueckauer eq. 4b, keeps the residual)
    V <- max(V, V_min) when V_min is set       (Yang: below V_min the membrane is set to V_min)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .inputs import is_number

__all__ = [
    "IFParams", "Reset", "RESETS", "if_step", "GateParams", "RateEstimate", "RATE_ESTIMATES", "maxpool_gate",
    "softmax_spikes", "window_select",
]  # fmt: skip

Reset = Literal["zero", "subtract"]
RESETS: tuple[str, ...] = ("zero", "subtract")


@dataclass(frozen=True, kw_only=True)
class IFParams:
    """Parameters of one layer of IF neurons."""

    threshold: float | Tensor = 1.0  # firing threshold tau^l; per channel: shape [C, 1, 1] or [F]
    reset: Reset = "subtract"  # what a spike does to the membrane
    v_min: float | Tensor | None = None  # lower bound of the membrane potential; None: unbounded
    v_init: float | Tensor = 0.0  # membrane potential before the first step (same units as the threshold)

    def __post_init__(self) -> None:
        if self.reset not in RESETS:
            raise ValueError(f"reset must be one of {RESETS}, got {self.reset!r}")
        if not bool(torch.all(torch.as_tensor(self.threshold) > 0)):
            raise ValueError(f"threshold must be positive, got {self.threshold}")
        if self.v_min is not None and bool(torch.any(torch.as_tensor(self.v_min) > 0)):
            raise ValueError(f"v_min must be <= 0 (it bounds the membrane from below), got {self.v_min}")
        if not bool(torch.all(torch.isfinite(torch.as_tensor(self.v_init)))):
            raise ValueError(f"v_init must be finite, got {self.v_init}")

    def initial_membrane(self, like: Tensor) -> Tensor:
        """The membrane before the first step, shaped and laid out like ``like`` (one step's
        current)."""
        v = torch.zeros_like(like)
        if isinstance(self.v_init, Tensor):
            return v.add_(self.v_init.to(device=like.device, dtype=like.dtype))
        return v.add_(self.v_init) if self.v_init != 0 else v

    @property
    def unit_threshold(self) -> bool:
        """Whether the threshold is 1 everywhere."""
        return bool(torch.all(torch.as_tensor(self.threshold) == 1.0))


def if_step(z: Tensor, v: Tensor, params: IFParams) -> tuple[Tensor, Tensor]:
    """One time step for a tensor of neurons: input current ``z``, membrane ``v``.
    Returns the spikes (0/1, dtype of ``z``) and the new membrane potential."""
    threshold = params.threshold
    if isinstance(threshold, Tensor):
        threshold = threshold.to(device=z.device, dtype=z.dtype)
    v = v + z
    fired = v >= threshold
    if params.reset == "zero":
        v = v.masked_fill(fired, 0.0)
    else:
        v = v - fired.to(v.dtype) * threshold
    if isinstance(params.v_min, Tensor):
        v = torch.maximum(v, params.v_min.to(device=v.device, dtype=v.dtype))
    elif params.v_min is not None:
        v = v.clamp_min(params.v_min)
    return fired.to(z.dtype), v


RateEstimate = Literal["count", "ewma", "spikes"]
RATE_ESTIMATES: tuple[str, ...] = ("count", "ewma", "spikes")


@dataclass(frozen=True, kw_only=True)
class GateParams:
    """A spiking max-pool gate (Rueckauer 2016 Sec. 3.6): in each pooling window only the
    spikes of the input with the highest estimated firing rate pass.

    Rate estimates, updated with the current step's spikes before the gate decides:
    ``count``: the running spike count ``c(t) = c(t-1) + s(t)`` (the online average times t);
    ``ewma``: ``r(t) = decay * r(t-1) + (1 - decay) * s(t)``, an exponentially weighted
    average that forgets the start; ``spikes``: no memory, ``r(t) = s(t)``: a window passes a
    spike whenever any of its inputs spikes, the max-pool of each step's spikes (what
    SpikingJelly's converter and Bu et al.'s QCFS code do with a max-pool; it can pass more
    spikes than the fastest input has). Ties go to the first input of the window (row-major)."""

    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    estimate: RateEstimate = "count"
    decay: float = 0.9  # for "ewma"

    def __post_init__(self) -> None:
        if self.estimate not in RATE_ESTIMATES:
            raise ValueError(f"max-pool rate estimate must be one of {RATE_ESTIMATES}, got {self.estimate!r}")
        if not is_number(self.decay) or not 0 < self.decay < 1:
            raise ValueError(f"max-pool ewma decay must be in (0, 1), got {self.decay}")


def maxpool_gate(spikes: Tensor, estimate: Tensor | None, params: GateParams) -> tuple[Tensor, Tensor]:
    """Gate ``spikes`` ``[steps, B, C, H, W]`` (a chunk of consecutive steps) with the rate
    ``estimate`` ``[B, C, H, W]`` carried from the previous step (``None`` at the start).
    Returns the pooled spikes ``[steps, B, C, H', W']`` and the new estimate."""
    estimate = torch.zeros_like(spikes[0]) if estimate is None else estimate
    passed = []
    for s in spikes:  # one step at a time: the estimate stays one step's size (and in cache)
        if params.estimate == "count":
            estimate = estimate + s
        elif params.estimate == "spikes":
            estimate = s
        else:
            estimate = params.decay * estimate + (1.0 - params.decay) * s
        passed.append(window_select(estimate, s, params))
    return torch.stack(passed), estimate


def window_select(key: Tensor, values: Tensor, params: GateParams) -> Tensor:
    """For each pooling window of ``key`` ``[B, C, H, W]``, the entry of ``values`` at the
    window's largest key; ties go to the first position in row-major order, as
    ``max_pool2d``'s indices (padding never wins). A running maximum over the k x k offsets,
    each a strided view: no indices, no copies of the inputs (``max_pool2d`` with indices
    plus a gather were 7x slower, and most of a max-pool net's simulation)."""
    (kh, kw), (sh, sw), (ph, pw) = params.kernel_size, params.stride, params.padding
    if ph or pw:
        key = F.pad(key, (pw, pw, ph, ph), value=-math.inf)
        values = F.pad(values, (pw, pw, ph, ph), value=0.0)
    rows, cols = (key.shape[-2] - kh) // sh + 1, (key.shape[-1] - kw) // sw + 1
    best = chosen = None
    for i in range(kh):
        for j in range(kw):
            window = (..., slice(i, i + sh * (rows - 1) + 1, sh), slice(j, j + sw * (cols - 1) + 1, sw))
            k, v = key[window], values[window]
            if best is None or chosen is None:
                best, chosen = k, v
            else:
                better = k > best  # strict: an equal key later in the window does not win
                best, chosen = torch.maximum(best, k), torch.where(better, v, chosen)
    assert chosen is not None
    return chosen.contiguous()


def softmax_spikes(v: Tensor, rate: float, generator: torch.Generator | None) -> Tensor:
    """Spiking softmax (Rueckauer 2016 Sec. 3.5, after Nessler 2009): the output neurons
    only accumulate their input ``v`` ``[B, C]``; an external Poisson generator fires with
    probability ``rate`` per step, and when it fires exactly one output neuron spikes,
    class k with probability softmax(v)_k. Two uniform draws per image and step."""
    trigger = torch.rand(v.shape[0], generator=generator, device=v.device, dtype=v.dtype) < rate
    pick = torch.rand(v.shape[0], 1, generator=generator, device=v.device, dtype=v.dtype)
    cumulative = torch.softmax(v, -1).cumsum(-1)
    winner = torch.searchsorted(cumulative, pick).clamp(max=v.shape[-1] - 1)
    spikes = torch.zeros_like(v).scatter_(1, winner, 1.0)
    return spikes * trigger.unsqueeze(1).to(v.dtype)
