"""Input coding: how an image in [0, 1] becomes the first layer's input at each step.

* ``constant``: the analog intensities enter as a current every step (Rueckauer Sec. 2.2).
* ``poisson``: a Bernoulli spike per pixel per step with probability = intensity (the
  usual "Poisson" rate code, Yang eq. 7), drawn from a seeded generator.
* ``deterministic``: an integrate-and-fire encoder whose spike count after t steps is
  exactly floor(t * intensity).

An encoder hands out time chunks ``[steps, B, ...]``. The random draws are made one step at
a time in order, so a simulator asking for one step at a time and one asking for a chunk
see the same spikes.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = ["Coding", "CODINGS", "encode"]

Coding = Literal["constant", "poisson", "deterministic"]
CODINGS: tuple[str, ...] = ("constant", "poisson", "deterministic")


def check_coding(coding: str) -> None:
    if coding not in CODINGS:
        raise ValueError(f"coding must be one of {CODINGS}, got {coding!r}")


def encode(x: Tensor, coding: str, start: int, stop: int, generator: torch.Generator | None) -> Tensor:
    """Input of steps ``start+1 .. stop`` (1-based time) as ``[stop - start, *x.shape]``."""
    check_coding(coding)
    steps = stop - start
    if coding == "constant":
        return x.unsqueeze(0).expand(steps, *x.shape)
    if coding == "poisson":
        return torch.stack(
            [(torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device) < x).to(x.dtype)
             for _ in range(steps)]
        )  # fmt: skip
    t = torch.arange(start, stop + 1, dtype=x.dtype, device=x.device).view(-1, *([1] * x.ndim))
    counts = torch.floor(t * x.clamp(0, 1))
    return counts[1:] - counts[:-1]
