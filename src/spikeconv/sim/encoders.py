"""Input coding: how an image in [0, 1] becomes the first layer's input at each step.

* ``constant``: the analog intensities enter as a current every step (Rueckauer Sec. 2.2).
* ``poisson``: a Bernoulli spike per pixel per step with probability = intensity (the
  usual "Poisson" rate code, Yang eq. 7), drawn from a seeded generator.
* ``deterministic``: an integrate-and-fire encoder whose spike count after t steps is
  exactly floor(t * intensity).
* ``events``: the input is already a sequence, ``[B, T_in, ...]`` per batch (e.g. an event
  camera's counts per pixel and time bin, :func:`spikeconv.io.nmnist.events_to_frames`):
  step t feeds ``x[:, t - 1]`` as it is, and nothing after ``T_in`` steps.

An encoder hands out time chunks ``[steps, B, ...]``. The random draws are made one step at
a time in order, so a simulator asking for one step at a time and one asking for a chunk
see the same spikes.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = ["CODINGS", "EVENTS", "INPUT_CODINGS", "Coding", "encode"]

Coding = Literal["constant", "poisson", "deterministic", "events"]
CODINGS: tuple[str, ...] = ("constant", "poisson", "deterministic")  # of images
EVENTS = "events"  # input that carries its own time axis
INPUT_CODINGS: tuple[str, ...] = (*CODINGS, EVENTS)


def check_coding(coding: str) -> None:
    if coding not in INPUT_CODINGS:
        raise ValueError(f"coding must be one of {INPUT_CODINGS}, got {coding!r}")


def encode(x: Tensor, coding: str, start: int, stop: int, generator: torch.Generator | None) -> Tensor:
    """Input of steps ``start+1 .. stop`` (1-based time) as ``[stop - start, *x.shape]``
    (for ``events``: ``[stop - start, B, *x.shape[2:]]``)."""
    check_coding(coding)
    steps = stop - start
    if coding == EVENTS:
        chunk = x[:, start:stop].transpose(0, 1)
        if len(chunk) < steps:  # the recording has ended
            chunk = torch.cat([chunk, chunk.new_zeros(steps - len(chunk), *chunk.shape[1:])])
        return chunk
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
