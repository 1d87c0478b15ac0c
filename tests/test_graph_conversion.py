"""Graph conversion (issue 4): DAGs, BatchNorm folding, residual scales, spiking max-pool,
softmax readout, robust and channel-wise rules, the zoo."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    exact,
    is_power_of_two,
    on_grid,
    power_of_two_stats,
    random_window,
    round_parameters,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import spikeconv
from spikeconv import UnsupportedModelError
from spikeconv.conversion.graph import ChannelAffine, Scale, fold_batchnorm
from spikeconv.models import (
    ZOO,
    ding_cnn,
    preact_resnet18,
    resnet18,
    resnet20,
    rueckauer_cifar10,
    vgg16,
    vgg_small,
    yang_mnist,
)
from spikeconv.sim.neurons import GateParams, maxpool_gate, window_select

torch.set_num_threads(min(2, torch.get_num_threads()))


def _randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics (fresh ones are the identity)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.3 - 0.1)
    return model


def _rate_error(model: nn.Module, shape: tuple[int, ...], T: int, images: int = 2, **options) -> tuple[float, float]:
    """Max |SNN output rate - normalized ANN output| after T/10 and T steps (constant
    input, reset by subtraction, max-norm on the same images, so nothing saturates)."""
    x = torch.rand(images, *shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    snn = spikeconv.convert(model, x, rule="maxnorm", reset="subtract", **options)
    target = snn.analog_forward(x)[-1].clamp(0, 1)
    early = spikeconv.simulate(snn, x, T=T // 10, coding="constant").output_counts / (T // 10)
    late = spikeconv.simulate(snn, x, T=T, coding="constant").output_counts / T
    return float((early - target).abs().max()), float((late - target).abs().max())


ZOO_CASES = {
    "rueckauer-cifar10": (lambda: rueckauer_cifar10(width=0.125), (3, 32, 32), 0.08),
    "ding": (lambda: ding_cnn(width=0.25), (1, 28, 28), 0.02),
    "vgg16": (lambda: vgg16(width=1 / 32), (3, 32, 32), 0.03),
    "vgg-small": (vgg_small, (3, 32, 32), 0.01),
    "preact-resnet18": (lambda: preact_resnet18(width=1 / 32), (3, 32, 32), 0.02),
    "resnet20": (lambda: resnet20(width=0.125), (3, 32, 32), 0.03),
    "resnet18": (lambda: resnet18(width=1 / 32), (3, 32, 32), 0.03),
    # the course report's variants: average pools and BatchNorm after the FC layers too, or no BatchNorm
    "vgg16-avgbn": (lambda: vgg16(width=1 / 32, pool="avg", batchnorm="all"), (3, 32, 32), 0.03),
    "vgg16-max-no-bn": (lambda: vgg16(width=1 / 32, batchnorm="none"), (3, 32, 32), 0.03),
    "yang-nmnist-max": (lambda: yang_mnist(2, 34, "max"), (2, 34, 34), 0.03),
}


@pytest.mark.parametrize("name", list(ZOO_CASES))
def test_zoo_snn_rates_approach_normalized_ann_outputs(name):
    build, shape, bound = ZOO_CASES[name]
    torch.manual_seed(0)
    model = _randomize_batchnorm(build()).double().eval()
    early, late = _rate_error(model, shape, T=2000)
    assert late < bound, (early, late)
    assert late < early or late < 1e-3


class _ClassicBlock(nn.Module):
    """A classic ResNet block: relu(bn(conv(relu(bn(conv(x))))) + x)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + x)


class _ClassicResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.block1, self.block2 = _ClassicBlock(4), _ClassicBlock(4)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = self.block2(self.block1(x))
        return self.fc(F.avg_pool2d(x, 2).flatten(1))


def test_classic_resnet_branches_share_the_largest_scale_and_track_the_ann():
    torch.manual_seed(1)
    model = _randomize_batchnorm(_ClassicResNet()).double().eval()
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    traced = spikeconv.trace(model, (1, 8, 8))
    names = [s.name for s in traced.stages]
    assert names == ["stem", "block1.conv1", "block1.conv2", "block2.conv1", "block2.conv2", "fc"]
    stats = spikeconv.calibrate(traced, x)
    snn = spikeconv.build_snn(traced, stats, "maxnorm", reset="subtract")
    layers = snn.info.mapping.layers
    group = [0, 2, 4]  # the stem output and both block outputs meet at the additions
    shared = max(stats.layers[i].max for i in group)
    assert all(layers[i].scale == pytest.approx(shared) for i in group)  # the largest: no branch saturates
    assert all(layers[i].unsaturated == 1.0 for i in group)
    assert layers[1].scale == pytest.approx(stats.layers[1].max)  # not in the group
    # the identity shortcut is a plain connection: no Scale weight was needed
    assert not any(isinstance(m, Scale) for m in snn.modules())
    torch.testing.assert_close(snn.analog_forward(x)[-1] * layers[-1].scale, model(x))
    T = 1500
    counts = spikeconv.simulate(snn, x, T=T, coding="constant").output_counts / T
    assert float((counts - snn.analog_forward(x)[-1].clamp(0, 1)).abs().max()) < 0.02


def test_network_input_meeting_a_branch_gets_a_scale_weight():
    class InputShortcut(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3, padding=1)
            self.fc = nn.Linear(64, 2)

        def forward(self, x):
            return self.fc(F.relu(self.conv(x) + x).flatten(1))

    torch.manual_seed(0)
    model = InputShortcut().double().eval()
    x = torch.rand(6, 1, 8, 8, dtype=torch.float64)
    snn = spikeconv.convert(model, x, rule="maxnorm", reset="subtract")
    scales = [m for m in snn.modules() if isinstance(m, Scale)]
    assert len(scales) == 1 and float(scales[0].factor) == pytest.approx(1 / snn.info.mapping.layers[0].scale)
    torch.testing.assert_close(snn.analog_forward(x)[-1] * snn.info.mapping.layers[-1].scale, model(x))


def test_fold_batchnorm_preserves_the_output():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 5, 3).double(), _randomize_batchnorm(nn.BatchNorm2d(5)).double().eval()
    x = torch.randn(4, 3, 7, 7, dtype=torch.float64)
    w, b = fold_batchnorm(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
    torch.testing.assert_close(F.conv2d(x, w, b), bn(conv(x)), rtol=1e-12, atol=1e-12)
    linear, bn1 = nn.Linear(6, 4, bias=False).double(), _randomize_batchnorm(nn.BatchNorm1d(4)).double().eval()
    v = torch.randn(5, 6, dtype=torch.float64)
    w, b = fold_batchnorm(linear.weight, None, bn1.running_mean, bn1.running_var, bn1.eps, bn1.weight, bn1.bias)
    torch.testing.assert_close(F.linear(v, w, b), bn1(linear(v)), rtol=1e-12, atol=1e-12)


def test_batchnorm_is_folded_into_the_conv_and_a_lone_batchnorm_becomes_an_affine_scale():
    model = nn.Sequential(
        nn.BatchNorm2d(1), nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3)
    )
    model = _randomize_batchnorm(model).double().eval()
    traced = spikeconv.trace(model, (1, 8, 8))
    kinds = [[type(m).__name__ for m in s.synapse] for s in traced.stages]
    assert kinds == [["ChannelAffine", "Conv2d"], ["Flatten", "Linear"]]
    x = torch.rand(5, 1, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(traced.forward_stages(x)[-1], model(x), rtol=1e-10, atol=1e-10)
    assert isinstance(traced.stages[0].synapse[0], ChannelAffine)


@st.composite
def _graphs(draw):
    """A random small network of conv / BN / linear / avg- and max-pool / add / cat."""
    ops = draw(st.lists(st.sampled_from(["conv", "bn_conv", "add", "cat", "avgpool", "maxpool"]), min_size=1, max_size=4))
    # spiking max-pooling gates the spikes of a ReLU: elsewhere (the input, a concatenation,
    # another pool) the converter refuses it by design, so the generator uses avg-pool there
    ops = [
        "avgpool" if op == "maxpool" and (i == 0 or ops[i - 1] not in ("conv", "bn_conv", "add")) else op
        for i, op in enumerate(ops)
    ]
    head = draw(st.sampled_from(["linear", "bn_linear"]))
    seed = draw(st.integers(0, 10_000))
    return ops, head, seed


class _RandomNet(nn.Module):
    def __init__(self, ops: list[str], head: str) -> None:
        super().__init__()
        self.ops = ops
        self.layers = nn.ModuleList()
        c, side = 2, 8
        for op in ops:
            if op == "conv":
                self.layers.append(nn.Conv2d(c, 3, 3, padding=1))
                c = 3
            elif op == "bn_conv":
                self.layers.append(nn.Sequential(nn.Conv2d(c, 3, 3, padding=1), nn.BatchNorm2d(3)))
                c = 3
            elif op in ("add", "cat"):
                self.layers.append(nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)))
                c = c * 2 if op == "cat" else c
            else:
                self.layers.append(nn.Identity())
                if side > 2:
                    side //= 2
                else:
                    self.ops[len(self.layers) - 1] = "none"
        features = c * side * side
        self.head = nn.Linear(features, 3) if head == "linear" else nn.Sequential(nn.Linear(features, 5), nn.BatchNorm1d(5))
        self.out = nn.Linear(5, 3) if head != "linear" else None

    def forward(self, x):
        for op, layer in zip(self.ops, self.layers):
            if op in ("conv", "bn_conv"):
                x = F.relu(layer(x))
            elif op == "add":
                x = F.relu(layer(x) + x)
            elif op == "cat":
                x = torch.cat([F.relu(layer(x)), x], 1)
            elif op == "avgpool":
                x = F.avg_pool2d(x, 2)
            elif op == "maxpool":
                x = F.max_pool2d(x, 2)
        x = x.flatten(1)
        if self.out is None:
            return self.head(x)
        return self.out(F.relu(self.head(x)))


@settings(max_examples=6, deadline=None, derandomize=True)
@given(_graphs())
def test_random_graphs_convert_and_their_rates_approach_the_ann(graph):
    ops, head, seed = graph
    torch.manual_seed(seed)
    model = _randomize_batchnorm(_RandomNet(list(ops), head), seed).double().eval()
    last = model.out if model.out is not None else model.head
    with torch.no_grad():
        last.bias.add_(1.0)  # some output is positive, so the output layer has a scale
    x = torch.rand(2, 2, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    snn = spikeconv.convert(model, x, rule="maxnorm", reset="subtract")
    torch.testing.assert_close(snn.analog_forward(x)[-1] * snn.info.mapping.layers[-1].scale, model(x))
    target = snn.analog_forward(x)[-1].clamp(0, 1)
    T = 600
    rates = spikeconv.simulate(snn, x, T=T, coding="constant").output_counts / T
    assert float((rates - target).abs().max()) < 0.05


def _gate(kind: str, decay: float = 0.9) -> GateParams:
    return GateParams(kernel_size=(1, 2), stride=(1, 2), padding=(0, 0), estimate=kind, decay=decay)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["count", "ewma"])
def test_maxpool_gate_passes_the_spikes_of_the_fastest_input(kind):
    T = 200
    t = torch.arange(1, T + 1, dtype=torch.float64)
    slow = (torch.floor(t * 0.3) - torch.floor((t - 1) * 0.3))  # rate 0.3
    fast = (torch.floor(t * 0.7) - torch.floor((t - 1) * 0.7))  # rate 0.7
    spikes = torch.stack([slow, fast], -1).view(T, 1, 1, 1, 2)  # [T, B, C, H, W=2]: one window
    out, estimate = maxpool_gate(spikes, None, _gate(kind))
    assert out.shape == (T, 1, 1, 1, 1)
    # after a short transient the gate passes exactly the fast input's spikes
    assert torch.equal(out[10:, 0, 0, 0, 0], fast[10:])
    assert float(out.sum()) == pytest.approx(0.7 * T, abs=3)
    # step by step gives the same spikes as the whole chunk
    state, steps = None, []
    for k in range(T):
        o, state = maxpool_gate(spikes[k : k + 1], state, _gate(kind))
        steps.append(o)
    assert torch.equal(torch.cat(steps), out)


def test_window_select_takes_max_pool2d_s_first_maximum_in_any_window_and_layout():
    # against max_pool2d's indices and a gather: integer keys, so most windows hold ties
    g = torch.Generator().manual_seed(0)
    for case in range(200):
        params, height, width = random_window(g)
        shape = (2, 3, height, width)
        keys = torch.randint(0, 3, shape, generator=g).float()
        values = torch.rand(shape, generator=g)
        if case % 2:
            keys, values = keys.contiguous(memory_format=torch.channels_last), values.contiguous(memory_format=torch.channels_last)
        _, index = F.max_pool2d(keys, params.kernel_size, params.stride, params.padding, return_indices=True)
        expected = values.flatten(2).gather(2, index.flatten(2)).view_as(index)
        assert torch.equal(window_select(keys, values, params), expected), params


def test_gate_without_memory_passes_each_step_s_max_pool_of_the_spikes():
    g = torch.Generator().manual_seed(2)
    spikes = (torch.rand(6, 2, 3, 8, 8, generator=g) < 0.3).float()
    params = GateParams(kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), estimate="spikes")
    passed, _ = maxpool_gate(spikes, None, params)
    assert torch.equal(passed, F.max_pool2d(spikes.flatten(0, 1), 3, 2, 1).unflatten(0, (6, 2)))
    # more spikes than the rate gate passes: any spike in the window passes
    gated, _ = maxpool_gate(spikes, None, GateParams(kernel_size=(3, 3), stride=(2, 2), padding=(1, 1)))
    assert float(passed.sum()) > float(gated.sum())


def test_ewma_gate_follows_a_change_of_the_fastest_input_and_the_count_gate_remembers():
    T = 400
    a = torch.zeros(T, dtype=torch.float64)
    b = torch.zeros(T, dtype=torch.float64)
    a[:200:2] = 1.0  # first half: a fires at 0.5, b silent
    b[200:] = 1.0  # second half: b fires every step, a silent
    spikes = torch.stack([a, b], -1).view(T, 1, 1, 1, 2)
    ewma, _ = maxpool_gate(spikes, None, _gate("ewma", decay=0.8))
    count, _ = maxpool_gate(spikes, None, _gate("count"))
    assert float(ewma[220:].sum()) == T - 220  # switched to b within a few steps
    assert float(count[200:300].sum()) == 0  # a's larger count still holds the gate until b catches up
    assert float(count[310:].sum()) == T - 310


@pytest.mark.parametrize("rate", ["count", "ewma", "spikes"])
def test_maxpool_gate_is_identical_in_both_simulators_and_the_module(rate):
    torch.manual_seed(0)
    model = _randomize_batchnorm(ding_cnn(width=0.125, size=16)).double().eval()
    x = on_grid(torch.rand(3, 1, 16, 16, dtype=torch.float64))  # exact sums: the same spikes on any CPU
    snn = exact(spikeconv.convert(model, x, rule="robust", reset="subtract", maxpool_rate=rate, maxpool_decay=0.95))
    assert [s.gate is not None for s in snn.spiking_stages].count(True) == 3
    kwargs = dict(T=40, coding="poisson", seed=2, record_trains=True)
    fast = spikeconv.simulate(snn, x, **kwargs)
    reference = spikeconv.simulate(snn, x, method="reference", **kwargs)
    for name in fast.spike_trains:
        assert torch.equal(fast.spike_trains[name], reference.spike_trains[name]), name
    assert all(v > 0 for v in fast.spikes_per_layer.values())  # the gates pass spikes on
    snn.reset_state()
    constant = spikeconv.simulate(snn, x, T=30, coding="constant", record_trains=True)
    out = snn(x.unsqueeze(0).expand(30, *x.shape))
    assert torch.equal(out, constant.spike_trains[snn.spiking_stages[-1].name]) and out.sum() > 0


def test_softmax_readout_is_identical_in_both_simulators_and_predicts_the_largest_potential():
    torch.manual_seed(0)
    model = rueckauer_cifar10(width=0.125)
    model = _randomize_batchnorm(model).double().eval()
    x = on_grid(torch.rand(4, 3, 32, 32, dtype=torch.float64))
    snn = exact(spikeconv.convert(model, x, rule="robust", reset="subtract", readout="softmax", softmax_rate=0.5))
    assert spikeconv.trace(model, (3, 32, 32)).softmax
    kwargs = dict(T=60, coding="constant", seed=4, record_trains=True)
    fast = spikeconv.simulate(snn, x, **kwargs)
    reference = spikeconv.simulate(snn, x, method="reference", **kwargs)
    name = snn.spiking_stages[-1].name
    assert torch.equal(fast.spike_trains[name], reference.spike_trains[name])
    per_step = fast.spike_trains[name].sum(-1)
    assert set(per_step.unique().tolist()) <= {0.0, 1.0}  # at most one winner per step
    assert 0.3 < float(per_step.mean()) < 0.7  # the generator fires with probability 0.5
    # a long run picks the class with the largest accumulated potential
    long = spikeconv.simulate(snn, x, T=400, coding="constant", seed=1)
    assert torch.equal(long.predictions, long.output_membrane.argmax(1))


def test_robust_rule_uses_the_percentile_and_p100_is_maxnorm():
    torch.manual_seed(0)
    model = ding_cnn(width=0.25, size=16).double().eval()
    x = torch.rand(20, 1, 16, 16, dtype=torch.float64)
    traced = spikeconv.trace(model, (1, 16, 16))
    stats = spikeconv.calibrate(traced, x)
    robust = spikeconv.build_snn(traced, stats, "robust", p=99.0).info.mapping
    maxnorm = spikeconv.build_snn(traced, stats, "maxnorm").info.mapping
    p100 = spikeconv.build_snn(traced, stats, "robust", p=100).info.mapping
    assert [l.scale for l in p100.layers] == [l.scale for l in maxnorm.layers]
    acts = traced.forward_stages(x)
    for stage, layer, a in zip(traced.stages, robust.layers, acts):
        if stage.pool is not None:
            continue
        positive = a[a > 0].double().sort().values
        rank = int(0.99 * len(positive))
        resolution = 2 * stats[layer.name].top / len(stats[layer.name].histogram)
        high = float(positive[min(rank + 1, len(positive) - 1)])
        assert float(positive[max(rank - 2, 0)]) - resolution <= layer.scale <= high + resolution
        assert layer.unsaturated == pytest.approx(0.99, abs=0.02)


def test_channelwise_scales_each_channel_and_threshold_balancing_gives_the_same_spikes():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(96, 5), nn.ReLU(), nn.Linear(5, 3),
    ).double().eval()  # fmt: skip
    with torch.no_grad():
        model[0].weight[0] *= 5.0  # one channel much larger than the others
    round_parameters(model)  # with grid images: every sum of both networks exact (see conftest)
    x = on_grid(torch.rand(30, 1, 8, 8, dtype=torch.float64))
    traced = spikeconv.trace(model, (1, 8, 8))
    stats = spikeconv.calibrate(traced, x)
    first = spikeconv.build_snn(traced, stats, "channelwise", p=100, reset="subtract").info.mapping.layers[0]
    a = F.relu(model[0](x))
    expected = a.transpose(0, 1).flatten(1).amax(1)
    assert first.channel_scales == pytest.approx(expected.tolist())
    # power-of-two scales: weight scaling and threshold balancing are then exactly equal in
    # floating point, so their spikes must be identical on any CPU (see conftest)
    stats = power_of_two_stats(stats)
    expected = torch.tensor([2.0 ** math.ceil(math.log2(v)) for v in expected.tolist()], dtype=torch.float64)
    snn = spikeconv.build_snn(traced, stats, "channelwise", p=100, reset="subtract")
    assert list(snn.info.mapping.layers[0].channel_scales) == expected.tolist()
    assert all(is_power_of_two(v) for l in snn.info.mapping.layers for v in (l.channel_scales or (l.scale,)))
    rates = snn.analog_forward(x)
    torch.testing.assert_close(rates[0], a / expected.view(-1, 1, 1))
    assert snn.info.mapping.layers[-1].channel_scales is None  # one scale for the classes
    torch.testing.assert_close(rates[-1] * snn.info.mapping.layers[-1].scale, model(x))
    balanced = spikeconv.build_snn(traced, stats, "threshold", base="channelwise", p=100, reset="subtract")
    assert balanced.spiking_stages[0].neuron.threshold.shape == (4, 1, 1)
    assert torch.equal(balanced.spiking_stages[0].synapse[0].weight, model[0].weight)  # weights unchanged
    assert len(set(balanced.spiking_stages[0].neuron.threshold.flatten().tolist())) > 1  # per-channel thresholds
    kwargs = dict(T=50, coding="poisson", seed=0, record_trains=True)
    s1, s2 = spikeconv.simulate(snn, x, **kwargs), spikeconv.simulate(balanced, x, **kwargs)
    for name in s1.spike_trains:
        assert torch.equal(s1.spike_trains[name], s2.spike_trains[name]), name
    assert all(v > 0 for v in s1.spikes_per_layer.values())


def test_unsupported_node_names_target_and_source_location():
    class Gelu(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 3)

        def forward(self, x):
            return self.fc(F.gelu(x.flatten(1)))

    with pytest.raises(UnsupportedModelError) as error:
        spikeconv.convert(Gelu().eval(), torch.rand(4, 1, 8, 8))
    message = str(error.value)
    assert "node 'gelu' calls gelu" in message and "call_function gelu" in message
    assert "test_graph_conversion.py:" in message and "F.gelu(x.flatten(1))" in message
    assert "Supported:" in message


def test_maxpool_that_does_not_follow_a_relu_and_a_softmax_in_the_middle_are_refused():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(18, 3)).eval()
    with pytest.raises(UnsupportedModelError, match="put the max-pool right after a ReLU"):
        spikeconv.convert(model, torch.rand(4, 1, 8, 8))
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 5), nn.Softmax(1), nn.Linear(5, 3)).eval()
    with pytest.raises(UnsupportedModelError, match="softmax that is not the model's last operation"):
        spikeconv.convert(model, torch.rand(4, 1, 8, 8))


def test_conv_maxpool_relu_order_is_rewritten_to_pool_spikes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(18, 3)).double().eval()
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    snn = spikeconv.convert(model, x, rule="maxnorm")
    assert [s.gate is not None for s in snn.spiking_stages] == [False, True, False]
    torch.testing.assert_close(snn.analog_forward(x)[-1] * snn.info.mapping.layers[-1].scale, model(x))


def test_course_report_variants_have_the_layers_they_name():
    def count(model, kind):
        return sum(isinstance(m, kind) for m in model.modules())

    avg, maxbn = ZOO["vgg16-eighth-avg"].build(), ZOO["vgg16-eighth-maxbn"].build()
    assert count(avg, nn.AvgPool2d) == 5 and count(avg, nn.MaxPool2d) == 0 and count(avg, nn.BatchNorm2d) == 0
    assert count(maxbn, nn.MaxPool2d) == 5 and count(maxbn, nn.BatchNorm2d) == 13 and count(maxbn, nn.BatchNorm1d) == 2
    assert avg[0].out_channels == 8  # an eighth of VGG-16's 64
    assert count(vgg16(), nn.BatchNorm1d) == 0  # the default VGG-16 is unchanged
    torch.manual_seed(0)
    conv = avg[2]  # the second convolution: He init, std sqrt(2 / fan-out) = sqrt(2 / (8 * 9)), zero bias
    assert abs(float(conv.weight.detach().std()) - (2 / 72) ** 0.5) < 0.02 and not conv.bias.any()
    assert ZOO["yang-nmnist"].build()(torch.zeros(1, 2, 34, 34)).shape == (1, 10)
    with pytest.raises(ValueError, match="pool must be 'avg' or 'max'"):
        yang_mnist(pool="min")
    with pytest.raises(ValueError, match="batchnorm must be 'none', 'conv' or 'all'"):
        vgg16(batchnorm="yes")
