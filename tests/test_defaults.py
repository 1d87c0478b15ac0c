"""The defaults are the settings that work on any network: reset by subtraction."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import spikeconv
from spikeconv.cli import build_parser
from spikeconv.experiments import RuleSetting
from spikeconv.training import evaluate_ann


class _Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))) + x)


class _ResidualNet(nn.Module):
    """A small ResNet-style digits net: BatchNorm everywhere and an identity shortcut."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(1, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.block = _Block(c)
        self.fc = nn.Linear(c * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(torch.relu(self.bn(self.stem(x))))
        return self.fc(torch.flatten(nn.functional.avg_pool2d(x, 2), 1))


@pytest.fixture(scope="module")
def residual_model(digits):
    train_set, _ = digits
    torch.manual_seed(0)
    model = _ResidualNet()
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(8):
        for x, y in train_set.batches(32, shuffle=True, generator=generator):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    return model.eval()


def test_the_default_reset_is_subtraction_everywhere():
    assert spikeconv.IFParams().reset == "subtract"
    assert RuleSetting(label="x", rule="maxnorm").reset == "subtract"
    for command in (["convert", "--model", "m.pt", "--out", "s.pt"],):
        assert build_parser().parse_args(command).reset == "subtract"


@pytest.mark.parametrize("rule", ["maxnorm", "nscaling", "channelwise"])
def test_a_residual_batchnorm_net_converts_within_a_point_of_its_ann_with_the_defaults(digits, residual_model, rule):
    train_set, test_set = digits
    ann = evaluate_ann(residual_model, test_set)
    assert ann > 97.0
    snn = spikeconv.convert(residual_model, train_set.tensors()[0], rule=rule)  # every other option: default
    assert snn.info.reset == "subtract" and all(s.neuron.reset == "subtract" for s in snn.spiking_stages)
    result = spikeconv.simulate(snn, test_set, T=200)
    assert abs(result.final_accuracy - ann) <= 1.0, (rule, ann, result.final_accuracy)
