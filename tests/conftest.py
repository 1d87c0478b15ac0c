from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from spikeconv.conversion.calibrate import ActivationStats
from spikeconv.io.data import load_digits
from spikeconv.sim.neurons import GateParams
from spikeconv.training import TrainOptions, train

torch.set_num_threads(min(2, torch.get_num_threads()))


def small_cnn(seed: int = 0, bias: bool = True, dtype: torch.dtype = torch.float64) -> nn.Module:
    """A seeded random CNN on 1x8x8 inputs covering conv, pool, flatten, linear, biases."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=bias), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1, bias=bias), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(24, 16, bias=bias), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 5, bias=bias),
    )  # fmt: skip
    return model.to(dtype).eval()


def random_images(n: int, seed: int = 1, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def random_window(generator: torch.Generator, **gate: object) -> tuple[GateParams, int, int]:
    """A random max-pool window (kernel 1-3, stride, padding up to half the kernel) as
    GateParams with the ``gate`` options, and a map height and width it fits."""

    def draw(low: int, high: int) -> int:
        return int(torch.randint(low, high, (1,), generator=generator))

    kernel = (draw(1, 4), draw(1, 4))
    params = GateParams(
        kernel_size=kernel, stride=(draw(1, 4), draw(1, 3)), padding=(draw(0, kernel[0] // 2 + 1), draw(0, kernel[1] // 2 + 1)),
        **gate,  # type: ignore[arg-type]
    )  # fmt: skip
    return params, draw(kernel[0], 9), draw(kernel[1], 9)


def on_grid(t: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """``t`` rounded to multiples of 2^-bits (sums of such values are exact in float32 up
    to 2^(24 - bits))."""
    return torch.round(t * 2**bits) / 2**bits


def round_parameters(module: nn.Module) -> None:
    """Every weight and bias of ``module`` onto the 2^-8 grid, in place."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(on_grid(p))


# Tests that two computations give *identical* spikes use sums that are exact in floating
# point: otherwise another CPU's kernels (another summation order) can put a neuron's input
# on the other side of its threshold, and the trains part (issue 15). Simulator against
# simulator: :func:`exact` parameters and :func:`grid_images`. Weight scaling against
# threshold balancing (different weights): :func:`power_of_two_stats`, on a model with
# :func:`round_parameters` and grid images, so that every sum of both networks is exact too.


def grid_images(n: int, seed: int = 1, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``random_images`` on the 2^-8 grid."""
    return on_grid(random_images(n, seed, dtype))


def exact(snn: nn.Module) -> nn.Module:
    """``snn`` with every parameter on the 2^-8 grid (in place): fed spikes or
    :func:`grid_images`, every synaptic sum is then exact in float32 and float64 in any
    order, so simulators that sum differently must agree on any CPU. Thresholds and V_min
    may be any number: comparing with them is exact, and the membrane updates that follow
    are the same elementwise operations in every simulator."""
    round_parameters(snn)
    return snn


def power_of_two_stats(stats: ActivationStats) -> ActivationStats:
    """``stats`` with every maximum (per layer and per channel) rounded up to a power of
    two. maxnorm, nscaling (n = 0.5, with the ceiling of f^1) and channelwise (p = 100) then
    give power-of-two scales, and weight scaling and threshold balancing differ by exact
    power-of-two factors: the same spikes in floating point on any CPU. Only the maxima are
    meant to be read (the histograms are left as they were)."""

    def up(value: float) -> float:
        return 2.0 ** math.ceil(math.log2(value)) if value > 0 else value

    layers = []
    for layer in stats.layers:
        channel_max = layer.channel_max
        if channel_max is not None:
            channel_max = torch.tensor([up(float(v)) for v in channel_max], dtype=channel_max.dtype)
        top = max(layer.top, up(layer.max))
        layers.append(dataclasses.replace(layer, max=up(layer.max), top=top, channel_max=channel_max))
    return dataclasses.replace(stats, layers=tuple(layers))


def is_power_of_two(value: float) -> bool:
    return value > 0 and math.frexp(value)[0] == 0.5


@pytest.fixture(scope="session")
def digits():
    return load_digits("train"), load_digits("test")


@pytest.fixture(scope="session")
def digits_model(digits, tmp_path_factory):
    """The digits net trained as the demo trains it (a few seconds on two cores)."""
    train_set, test_set = digits
    path = tmp_path_factory.mktemp("model") / "digits.pt"
    model, record = train("digits", train_set, test_set, TrainOptions(epochs=30, batch_size=32, lr=1e-2), path, progress=False)
    return model, record, path
