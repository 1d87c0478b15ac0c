from __future__ import annotations

import pytest
import torch
from torch import nn

from spikeconv.data import load_digits
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


def on_grid(t: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """``t`` rounded to multiples of 2^-bits (sums of such values are exact in float32 up
    to 2^(24 - bits))."""
    return torch.round(t * 2**bits) / 2**bits


def round_parameters(module: nn.Module) -> None:
    """Every weight and bias of ``module`` onto the 2^-8 grid, in place."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(on_grid(p))


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
