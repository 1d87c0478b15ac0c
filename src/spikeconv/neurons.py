"""Integrate-and-fire neurons as a pure step function over an explicit state.

``if_step(z, v, params) -> (spikes, v)`` is the whole neuron model; the simulator owns the
loop over time. Dynamics (Yang eq. 1 and Fig. 2c; Rueckauer eq. 4):

    V(t) = V(t-1) + z(t)                       integrate the synaptic current (bias included)
    spike if V(t) >= threshold                 at most one spike per step
    reset "zero":     V <- 0 after a spike      (Yang Fig. 2c; Rueckauer eq. 4a)
    reset "subtract": V <- V - threshold        (Rueckauer eq. 4b, keeps the residual)
    V <- max(V, V_min) when V_min is set       (Yang: below V_min the membrane is set to V_min)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

__all__ = ["IFParams", "Reset", "RESETS", "if_step"]

Reset = Literal["zero", "subtract"]
RESETS: tuple[str, ...] = ("zero", "subtract")


@dataclass(frozen=True, kw_only=True)
class IFParams:
    """Parameters of one layer of IF neurons."""

    threshold: float = 1.0  # firing threshold tau^l
    reset: Reset = "zero"  # what a spike does to the membrane
    v_min: float | None = None  # lower bound of the membrane potential; None: unbounded

    def __post_init__(self) -> None:
        if self.reset not in RESETS:
            raise ValueError(f"reset must be one of {RESETS}, got {self.reset!r}")
        if not self.threshold > 0:
            raise ValueError(f"threshold must be positive, got {self.threshold}")
        if self.v_min is not None and self.v_min > 0:
            raise ValueError(f"v_min must be <= 0 (it bounds the membrane from below), got {self.v_min}")


def if_step(z: Tensor, v: Tensor, params: IFParams) -> tuple[Tensor, Tensor]:
    """One time step for a tensor of neurons: input current ``z``, membrane ``v``.
    Returns the spikes (0/1, dtype of ``z``) and the new membrane potential."""
    v = v + z
    fired = v >= params.threshold
    if params.reset == "zero":
        v = v.masked_fill(fired, 0.0)
    else:
        v = v - fired.to(v.dtype) * params.threshold
    if params.v_min is not None:
        v = v.clamp_min(params.v_min)
    return fired.to(z.dtype), v
