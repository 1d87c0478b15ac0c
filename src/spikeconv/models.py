"""Model zoo: the networks of Yang et al. 2020 Table 2 and a small net for 8x8 digits
(ReLU CNNs with zero biases and average pooling, as Yang's rule asks, Sec. 3.5 step 1);
Rueckauer's CIFAR-10 net and Ding's 7-layer CNN (biases, BatchNorm, max-pooling, softmax);
VGG-16 and PreActResNet-18 for 32x32 inputs with a width multiplier; the course report's
variants (Yang's MNIST net with max-pools and on 2 x 34 x 34 N-MNIST frames; VGG-16 at an
eighth of the width with average or max pools, with or without BatchNorm, He init). Each entry
records the input shape it expects.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ZOO", "ZooEntry", "build_model", "yang_mnist", "yang_svhn", "yang_cifar10", "digits_net", "rueckauer_cifar10",
    "ding_cnn", "vgg16", "vgg16_quarter", "vgg16_quarter_avg", "vgg_small", "preact_resnet18", "PreActBlock", "PreActResNet", "BasicBlock",
    "ResNetCifar", "resnet20", "resnet18",
]  # fmt: skip


def _conv(cin: int, cout: int, k: int, padding: int = 0) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=padding, bias=False)


def _pool(kind: str) -> nn.Module:
    if kind not in ("avg", "max"):
        raise ValueError(f"pool must be 'avg' or 'max', got {kind!r}")
    return nn.AvgPool2d(2) if kind == "avg" else nn.MaxPool2d(2)


def yang_mnist(in_channels: int = 1, size: int = 28, pool: str = "avg") -> nn.Sequential:
    """Yang Table 2, MNIST (28x28 grey): conv5-12, avg-pool/2, conv5-64, avg-pool/2, FC-10.
    ``in_channels``, ``size`` and ``pool`` (``max``) give the course report's variants
    (N-MNIST frames are 2 x 34 x 34; its "+ Maxpool" rows)."""
    side = ((size - 4) // 2 - 4) // 2
    return nn.Sequential(
        _conv(in_channels, 12, 5), nn.ReLU(), _pool(pool),
        _conv(12, 64, 5), nn.ReLU(), _pool(pool),
        nn.Flatten(), nn.Dropout(0.5), nn.Linear(64 * side * side, 10, bias=False),
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
    conv3-64, conv1-64, FC-10. Table 2 gives no padding; Yang takes the net of their
    ref. [28] (Hunsberger & Eliasmith 2015, after cuda-convnet's CIFAR-10 nets), whose
    convolutions keep the map size, so: 24 -> 12 -> 6 -> 6 -> 6 -> FC over 64x6x6. Without
    padding the last map is 1x1 and the ANN stops near 65 % (measured), far from the
    paper's 80.81 %."""
    return nn.Sequential(
        _conv(3, 64, 5, padding=2), nn.ReLU(), nn.AvgPool2d(2),
        _conv(64, 64, 5, padding=2), nn.ReLU(), nn.AvgPool2d(2),
        _conv(64, 64, 3, padding=1), nn.ReLU(),
        _conv(64, 64, 1), nn.ReLU(),
        nn.Flatten(), nn.Dropout(0.5), nn.Linear(64 * 6 * 6, 10, bias=False),
    )  # fmt: skip


def digits_net() -> nn.Sequential:
    """A small net for scikit-learn's 8x8 digits: conv3-16, avg-pool/2, conv3-32, avg-pool/2,
    FC-10 (padding 1, zero biases)."""
    return nn.Sequential(
        _conv(1, 16, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        _conv(16, 32, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(32 * 2 * 2, 10, bias=False),
    )  # fmt: skip


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]


def _width(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


def rueckauer_cifar10(width: float = 1.0) -> nn.Sequential:
    """Rueckauer 2016 Sec. 4.1, CIFAR-10 (32x32 RGB): conv3-32, conv3-32, max-pool/2,
    conv3-64, conv3-64, max-pool/2 (each conv with BatchNorm and ReLU), FC-512, FC-10,
    softmax. Biases everywhere; padding 1 (the paper does not say); dropout before the FCs."""
    c1, c2, fc = _width(32, width), _width(64, width), _width(512, width)
    return nn.Sequential(
        *_conv_bn_relu(3, c1), *_conv_bn_relu(c1, c1), nn.MaxPool2d(2),
        *_conv_bn_relu(c1, c2), *_conv_bn_relu(c2, c2), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.5), nn.Linear(c2 * 8 * 8, fc), nn.ReLU(),
        nn.Dropout(0.5), nn.Linear(fc, 10), nn.Softmax(dim=1),
    )  # fmt: skip


def ding_cnn(width: float = 1.0, in_channels: int = 1, size: int = 28) -> nn.Sequential:
    """Ding et al. 2021's 7-layer CNN: 32C3-P2-32C3-P2-32C3-P2-32-FC10 (conv3 with padding 1,
    ReLU, 2x2 max-pool; a hidden FC-32; biases). 28x28 grey by default."""
    c, hidden = _width(32, width), _width(32, width)
    side = size // 8
    return nn.Sequential(
        nn.Conv2d(in_channels, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(c * side * side, hidden), nn.ReLU(), nn.Linear(hidden, 10),
    )  # fmt: skip


_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def vgg16(
    width: float = 1.0, num_classes: int = 10, pool: str = "max", batchnorm: str = "conv", he_init: bool = False
) -> nn.Sequential:
    """VGG-16 (Simonyan & Zisserman 2015, configuration D) for 32x32 inputs: 13 conv3 layers
    with BatchNorm and ReLU, five 2x2 max-pools, then FC-512, FC-512, FC-classes (the
    usual CIFAR variant). ``width`` multiplies every layer's channels. The course report's
    variants: ``pool="avg"`` average-pools; ``batchnorm="none"`` drops every BatchNorm
    (its AVG and MAX), ``"all"`` puts one after the hidden FC layers too (AVGBN, MAXBN).
    ``he_init``: weights drawn as He et al. 2015 (normal, std sqrt(2 / fan-out) for the
    convolutions, sqrt(2 / fan-in) for the FC layers), biases zero. Without BatchNorm the
    default init leaves a 13-layer VGG at chance (measured: loss 2.304 after 150 Adam
    steps at an eighth of the width; 2.25 with He init)."""
    if batchnorm not in ("none", "conv", "all"):
        raise ValueError(f"batchnorm must be 'none', 'conv' or 'all', got {batchnorm!r}")
    layers: list[nn.Module] = []
    cin = 3
    for item in _VGG16:
        if item == "M":
            layers.append(_pool(pool))
        else:
            cout = _width(int(item), width)
            conv = nn.Conv2d(cin, cout, 3, padding=1)
            layers += [conv, nn.ReLU()] if batchnorm == "none" else [conv, nn.BatchNorm2d(cout), nn.ReLU()]
            cin = cout
    hidden = _width(512, width)
    layers.append(nn.Flatten())
    for fan_in in (cin, hidden):
        norm = [nn.BatchNorm1d(hidden)] if batchnorm == "all" else []
        layers += [nn.Linear(fan_in, hidden), *norm, nn.ReLU(), nn.Dropout(0.5)]
    model = nn.Sequential(*layers, nn.Linear(hidden, num_classes))
    if he_init:
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                fan: Literal["fan_in", "fan_out"] = "fan_out" if isinstance(module, nn.Conv2d) else "fan_in"
                nn.init.kaiming_normal_(module.weight, mode=fan, nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
    return model


def vgg_small() -> nn.Sequential:
    """A small VGG-style net for 3x32x32 inputs (the speed benchmark's VGG-style network):
    two 3x3 convs per block (16 then 32 channels), 2x2 average pooling, FC-128, FC-10."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(32 * 8 * 8, 128), nn.ReLU(), nn.Linear(128, 10),
    )  # fmt: skip


class PreActBlock(nn.Module):
    """Pre-activation residual block (He et al. 2016b): BN-ReLU-conv3, BN-ReLU-conv3, plus
    the shortcut (identity, or a strided 1x1 conv of the first BN-ReLU's output)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    """PreActResNet (He et al. 2016b) for 32x32 inputs: conv3 stem, four stages of
    pre-activation blocks (64, 128, 256, 512 channels times ``width``; stride 2 from the
    second), BN-ReLU, global average pool, FC."""

    def __init__(self, blocks: tuple[int, ...] = (2, 2, 2, 2), width: float = 1.0, num_classes: int = 10) -> None:
        super().__init__()
        channels = [_width(c, width) for c in (64, 128, 256, 512)]
        self.conv1 = nn.Conv2d(3, channels[0], 3, padding=1, bias=False)
        layers: list[nn.Module] = []
        cin = channels[0]
        for i, (count, cout) in enumerate(zip(blocks, channels, strict=True)):
            for j in range(count):
                layers.append(PreActBlock(cin, cout, stride=2 if (i > 0 and j == 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(cin)
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.layers(self.conv1(x))
        out = F.relu(self.bn(out))
        out = F.adaptive_avg_pool2d(out, 1)
        return self.linear(out.flatten(1))


def preact_resnet18(width: float = 1.0, num_classes: int = 10) -> PreActResNet:
    """PreActResNet-18: blocks (2, 2, 2, 2)."""
    return PreActResNet((2, 2, 2, 2), width=width, num_classes=num_classes)


class BasicBlock(nn.Module):
    """ResNet basic block (He et al. 2016a): conv3-BN-ReLU-conv3-BN plus the shortcut
    (identity, or a strided 1x1 conv with BN where the shape changes: option B), then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetCifar(nn.Module):
    """The CIFAR ResNets of He et al. 2016a (Sec. 4.2): conv3-BN-ReLU stem (no max-pool),
    stages of ``n`` basic blocks (16, 32, 64 channels times ``width``; stride 2 from the
    second), global average pool, FC. n = 3 is ResNet-20. ``blocks`` and ``channels``
    give other layouts (``resnet18``: four stages of two blocks, 64-512 channels)."""

    def __init__(
        self, n: int = 3, width: float = 1.0, num_classes: int = 10, *,
        blocks: tuple[int, ...] | None = None, channels: tuple[int, ...] = (16, 32, 64),
    ) -> None:  # fmt: skip
        super().__init__()
        widths = [_width(c, width) for c in channels]
        counts = blocks if blocks is not None else (n,) * len(channels)
        if len(counts) != len(widths):
            raise ValueError(f"ResNetCifar: {len(counts)} block counts for {len(widths)} stages of channels")
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        layers: list[nn.Module] = []
        cin = widths[0]
        for i, (count, cout) in enumerate(zip(counts, widths, strict=True)):
            for j in range(count):
                layers.append(BasicBlock(cin, cout, stride=2 if (i > 0 and j == 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def resnet20(width: float = 1.0, num_classes: int = 10) -> ResNetCifar:
    """ResNet-20 for CIFAR-10 (3 blocks per stage, 0.27 M parameters at width 1)."""
    return ResNetCifar(3, width=width, num_classes=num_classes)


def resnet18(width: float = 1.0, num_classes: int = 10) -> ResNetCifar:
    """ResNet-18 (He et al. 2016a) as public CIFAR-10 code lays it out: conv3-64 stem
    without max-pool, four stages of two basic blocks (64, 128, 256, 512 channels times
    ``width``), global average pool, FC (11.2 M parameters at width 1)."""
    return ResNetCifar(width=width, num_classes=num_classes, blocks=(2, 2, 2, 2), channels=(64, 128, 256, 512))


def vgg16_quarter(num_classes: int = 10) -> nn.Sequential:
    """VGG-16 at a quarter of the width (16-32-64-128-128 channels, FC-128): the layout of
    the low-latency papers' VGG-16, small enough to train on two CPU cores."""
    return vgg16(width=0.25, num_classes=num_classes)


def vgg16_quarter_avg(num_classes: int = 10) -> nn.Sequential:
    """:func:`vgg16_quarter` with 2x2 average pools instead of max-pools, as Li et al.'s
    (SNN Calibration) VGG-16: average pools convert into the next synapse, without gates."""
    return vgg16(width=0.25, num_classes=num_classes, pool="avg")


@dataclass(frozen=True, kw_only=True)
class ZooEntry:
    build: Callable[..., nn.Module]  # takes width= where the architecture has one
    input_shape: tuple[int, int, int]
    dataset: str  # the dataset it is meant for


ZOO: dict[str, ZooEntry] = {
    "digits": ZooEntry(build=digits_net, input_shape=(1, 8, 8), dataset="digits"),
    "yang-mnist": ZooEntry(build=yang_mnist, input_shape=(1, 28, 28), dataset="mnist"),
    "yang-svhn": ZooEntry(build=yang_svhn, input_shape=(3, 32, 32), dataset="svhn"),
    "yang-cifar10": ZooEntry(build=yang_cifar10, input_shape=(3, 24, 24), dataset="cifar10"),
    "rueckauer-cifar10": ZooEntry(build=rueckauer_cifar10, input_shape=(3, 32, 32), dataset="cifar10"),
    "ding-mnist": ZooEntry(build=ding_cnn, input_shape=(1, 28, 28), dataset="mnist"),
    "vgg16": ZooEntry(build=vgg16, input_shape=(3, 32, 32), dataset="cifar10"),
    "vgg-small": ZooEntry(build=vgg_small, input_shape=(3, 32, 32), dataset="cifar10"),
    "preact-resnet18": ZooEntry(build=preact_resnet18, input_shape=(3, 32, 32), dataset="cifar10"),
    "resnet20": ZooEntry(build=resnet20, input_shape=(3, 32, 32), dataset="cifar10"),
    "resnet18": ZooEntry(build=resnet18, input_shape=(3, 32, 32), dataset="cifar10"),
    "vgg16-quarter": ZooEntry(build=vgg16_quarter, input_shape=(3, 32, 32), dataset="cifar10"),
    "vgg16-quarter-avg": ZooEntry(build=vgg16_quarter_avg, input_shape=(3, 32, 32), dataset="cifar10"),
    # the course report's nets (brown-course-report-cnn-to-snn.md Tables 1-3)
    "yang-mnist-max": ZooEntry(build=partial(yang_mnist, pool="max"), input_shape=(1, 28, 28), dataset="mnist"),
    "yang-nmnist": ZooEntry(build=partial(yang_mnist, 2, 34), input_shape=(2, 34, 34), dataset="nmnist"),
    "yang-nmnist-max": ZooEntry(build=partial(yang_mnist, 2, 34, "max"), input_shape=(2, 34, 34), dataset="nmnist"),
    **{
        f"vgg16-eighth-{pool}{'bn' if bn else ''}": ZooEntry(
            build=partial(vgg16, 0.125, pool=pool, batchnorm="all" if bn else "none", he_init=True),
            input_shape=(3, 32, 32),
            dataset="cifar10",
        )
        for bn in (False, True)
        for pool in ("avg", "max")
    },
}


def build_model(name: str, **options: float) -> nn.Module:
    """A fresh model of the zoo by name (``width=`` for the architectures that take one)."""
    if name not in ZOO:
        raise ValueError(f"unknown model {name!r}; the zoo has {', '.join(ZOO)}")
    return ZOO[name].build(**options)
