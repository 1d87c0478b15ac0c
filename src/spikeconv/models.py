"""Model zoo: the networks of Yang et al. 2020 Table 2 and a small net for 8x8 digits.

All are ReLU CNNs with zero biases and average pooling, as Yang's conversion rule asks
(Sec. 3.5 step 1). Each entry records the input shape it expects.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

__all__ = ["ZOO", "ZooEntry", "build_model", "yang_mnist", "yang_svhn", "yang_cifar10", "digits_net"]


def _conv(cin: int, cout: int, k: int, padding: int = 0) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=padding, bias=False)


def yang_mnist() -> nn.Sequential:
    """Yang Table 2, MNIST (28x28 grey): conv5-12, avg-pool/2, conv5-64, avg-pool/2, FC-10."""
    return nn.Sequential(
        _conv(1, 12, 5), nn.ReLU(), nn.AvgPool2d(2),
        _conv(12, 64, 5), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Dropout(0.5), nn.Linear(64 * 4 * 4, 10, bias=False),
    )  # fmt: skip


def yang_svhn() -> nn.Sequential:
    """Yang Table 2, SVHN (32x32 RGB): conv5-32, avg-pool/2, conv5-96, avg-pool/2, conv3-64,
    avg-pool/3, FC-10."""
    return nn.Sequential(
        _conv(3, 32, 5), nn.ReLU(), nn.AvgPool2d(2),
        _conv(32, 96, 5), nn.ReLU(), nn.AvgPool2d(2),
        _conv(96, 64, 3), nn.ReLU(), nn.AvgPool2d(3),
        nn.Flatten(), nn.Dropout(0.5), nn.Linear(64, 10, bias=False),
    )  # fmt: skip


def yang_cifar10() -> nn.Sequential:
    """Yang Table 2, CIFAR-10 (24x24 RGB crops): conv5-64, avg-pool/2, conv5-64, avg-pool/2,
    conv3-64, conv1-64, FC-10."""
    return nn.Sequential(
        _conv(3, 64, 5), nn.ReLU(), nn.AvgPool2d(2),
        _conv(64, 64, 5), nn.ReLU(), nn.AvgPool2d(2),
        _conv(64, 64, 3), nn.ReLU(),
        _conv(64, 64, 1), nn.ReLU(),
        nn.Flatten(), nn.Dropout(0.5), nn.Linear(64, 10, bias=False),
    )  # fmt: skip


def digits_net() -> nn.Sequential:
    """A small net for scikit-learn's 8x8 digits: conv3-16, avg-pool/2, conv3-32, avg-pool/2,
    FC-10 (padding 1, zero biases)."""
    return nn.Sequential(
        _conv(1, 16, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        _conv(16, 32, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(32 * 2 * 2, 10, bias=False),
    )  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class ZooEntry:
    build: Callable[[], nn.Module]
    input_shape: tuple[int, int, int]
    dataset: str  # the dataset it is meant for


ZOO: dict[str, ZooEntry] = {
    "digits": ZooEntry(build=digits_net, input_shape=(1, 8, 8), dataset="digits"),
    "yang-mnist": ZooEntry(build=yang_mnist, input_shape=(1, 28, 28), dataset="mnist"),
    "yang-svhn": ZooEntry(build=yang_svhn, input_shape=(3, 32, 32), dataset="svhn"),
    "yang-cifar10": ZooEntry(build=yang_cifar10, input_shape=(3, 24, 24), dataset="cifar10"),
}


def build_model(name: str) -> nn.Module:
    """A fresh model of the zoo by name."""
    if name not in ZOO:
        raise ValueError(f"unknown model {name!r}; the zoo has {', '.join(ZOO)}")
    return ZOO[name].build()
