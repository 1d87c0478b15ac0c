"""Input distortions for robustness tests (Yang 2020 Sec. 4.3, Fig. 7).

Both return a distorted copy; the input is never modified."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["NOISE_KINDS", "awgn", "distort", "measured_snr_db", "salt_and_pepper"]

NOISE_KINDS: tuple[str, ...] = ("awgn", "salt_and_pepper")


def awgn(images: Tensor, snr_db: float, generator: torch.Generator | None = None) -> Tensor:
    """Additive white Gaussian noise at a signal-to-noise ratio of ``snr_db`` per image:
    the noise of each image is scaled so that its power is exactly
    ``P_signal / 10^(snr_db / 10)`` with ``P_signal = mean(x^2)`` over the image. The result
    is not clipped (so its SNR is exact); rate coding treats values outside [0, 1] as
    never/always firing."""
    if images.ndim < 2:
        raise ValueError(f"images must be [N, ...], got shape {tuple(images.shape)}")
    x = images.to(torch.float64) if not torch.is_floating_point(images) else images
    noise = torch.randn(x.shape, generator=generator, dtype=torch.float64, device=x.device)
    dims = tuple(range(1, x.ndim))
    signal_power = x.double().pow(2).mean(dims, keepdim=True)
    target_power = signal_power / 10.0 ** (snr_db / 10.0)
    noise = noise - noise.mean(dims, keepdim=True)
    noise = noise * torch.sqrt(target_power / noise.pow(2).mean(dims, keepdim=True).clamp_min(1e-30))
    return (x.double() + noise).to(x.dtype)


def salt_and_pepper(images: Tensor, density: float, generator: torch.Generator | None = None) -> Tensor:
    """Salt-and-pepper noise: a fraction ``density`` of the pixels (chosen independently,
    the same across colour channels) is set to 0 or 1 with equal probability."""
    if not 0 <= density <= 1:
        raise ValueError(f"density must be in [0, 1], got {density}")
    if images.ndim != 4:
        raise ValueError(f"images must be [N, C, H, W], got shape {tuple(images.shape)}")
    n, _, h, w = images.shape
    hit = torch.rand((n, 1, h, w), generator=generator, device=images.device) < density
    salt = torch.rand((n, 1, h, w), generator=generator, device=images.device) < 0.5
    value = salt.to(images.dtype).expand_as(images)
    return torch.where(hit.expand_as(images), value, images)


def distort(images: Tensor, kind: str, level: float, generator: torch.Generator | None = None) -> Tensor:
    """``images`` with noise ``kind``: ``awgn`` at ``level`` dB SNR or ``salt_and_pepper``
    at density ``level``."""
    if kind == "awgn":
        return awgn(images, level, generator)
    if kind == "salt_and_pepper":
        return salt_and_pepper(images, level, generator)
    raise ValueError(f"noise kind must be one of {NOISE_KINDS}, got {kind!r}")


def measured_snr_db(clean: Tensor, noisy: Tensor) -> Tensor:
    """Per-image SNR in dB: 10 log10(mean(clean^2) / mean((noisy - clean)^2))."""
    dims = tuple(range(1, clean.ndim))
    signal = clean.double().pow(2).mean(dims)
    noise = (noisy.double() - clean.double()).pow(2).mean(dims)
    return 10.0 * torch.log10(signal / noise)
