from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    grid_images,
    is_power_of_two,
    power_of_two_stats,
    random_images,
    round_parameters,
    small_cnn,
)

import spikeconv
from spikeconv.conversion.calibrate import ActivationObserver
from spikeconv.conversion.rules import membrane_bits


def _activations(model, images):
    """Per-stage activations of small_cnn computed directly, and each stage's input."""
    conv1, conv2, fc1, fc2 = model[0], model[3], model[7], model[10]
    a1 = F.relu(conv1(images))
    in2 = F.avg_pool2d(a1, 2)
    a2 = F.relu(conv2(in2))
    in3 = F.avg_pool2d(a2, 2).flatten(1)
    a3 = F.relu(fc1(in3))
    a4 = fc2(a3)
    return [a1, a2, a3, a4], [images, in2, in3, a3], [conv1, conv2, fc1, fc2]


def test_maxnorm_scales_each_layer_by_its_max_activation():
    model, images = small_cnn(), random_images(50)
    snn = spikeconv.convert(model, images, rule="maxnorm")
    with torch.no_grad():
        acts, _, _ = _activations(model, images)
    layers = snn.info.mapping.layers
    for layer, a in zip(layers, acts):
        assert layer.scale == pytest.approx(float(a.detach().max()))
        assert layer.unsaturated == 1.0
    # the scaled network's analog activations are a / lambda: at most 1
    for rate, a, layer in zip(snn.analog_forward(images), acts, layers):
        torch.testing.assert_close(rate, a / layer.scale)


@torch.no_grad()
def test_nscaling_factors_follow_yang_appendix_b():
    model, images = small_cnn(), random_images(50)
    n = 0.5
    snn = spikeconv.convert(model, images, rule="nscaling", n=n, reset="zero")
    with torch.no_grad():
        acts, inputs, affines = _activations(model, images)
    maxima = [float(a.max()) for a in acts]
    expected, product = [], 1.0
    for m in maxima:  # f^l = n a_M^l / (f^0 ... f^{l-1}), before the ceiling
        expected.append(n * m / product)
        product *= expected[-1]
    expected[0] = math.ceil(expected[0])  # f^1 <- ceil(f^1), applied last
    layers = snn.info.mapping.layers
    assert [l.factor for l in layers] == pytest.approx(expected)
    scales = torch.tensor(expected, dtype=torch.float64).cumprod(0)
    for layer, a, scale, x, affine in zip(layers, acts, scales, inputs, affines):
        positive = a[a > 0]
        assert layer.unsaturated == pytest.approx(float((positive < scale).double().mean()), abs=2e-3)
        # V_min^l = m^l / (f^1 ... f^l), m^l = min of the negative-weight convolution (eq. 17)
        negative = F.conv2d(x, affine.weight.clamp(max=0), affine.bias.clamp(max=0), padding=affine.padding) \
            if isinstance(affine, torch.nn.Conv2d) else F.linear(x, affine.weight.clamp(max=0), affine.bias.clamp(max=0))
        assert layer.v_min == pytest.approx(float(negative.min()) / float(scale))
    assert snn.info.mapping.v_min == min(l.v_min for l in layers)
    assert all(s.neuron.v_min == pytest.approx(snn.info.mapping.v_min) for s in snn.spiking_stages)
    assert all(s.neuron.threshold == 1.0 for s in snn.spiking_stages)


def test_smaller_n_fires_more():
    model, images = small_cnn(), random_images(50)
    rates = {}
    for n in (0.5, 1.0):
        snn = spikeconv.convert(model, images, rule="nscaling", n=n, ceil_first=False)
        rates[n] = float(spikeconv.simulate(snn, images, T=30).spikes_per_image.mean())
    assert rates[0.5] > rates[1.0]


@pytest.mark.parametrize("base", ["maxnorm", "nscaling"])
@pytest.mark.parametrize("coding", ["constant", "poisson"])
@pytest.mark.parametrize("reset", ["zero", "subtract"])
def test_threshold_balancing_gives_the_same_spikes_as_weight_scaling(base, coding, reset):
    """Yang Sec. 3.2: the two mappings differ by the factor lambda_l in every weight, bias,
    membrane and threshold. With power-of-two scales that factor is exact in floating point,
    so the spikes must be identical on any CPU (with other scales a neuron whose input
    equals its threshold exactly, as max-norm makes one do, may fall either way). The
    model's parameters and the images are on the 2^-8 grid besides, so that every sum of
    both networks is exact too, whatever order a kernel sums in."""
    model, images = small_cnn(), grid_images(40)
    round_parameters(model)
    traced = spikeconv.trace(model, (1, 8, 8))
    stats = power_of_two_stats(spikeconv.calibrate(traced, images))
    scaled = spikeconv.build_snn(traced, stats, base, reset=reset)
    balanced = spikeconv.build_snn(traced, stats, "threshold", reset=reset, base=base)
    assert all(is_power_of_two(l.scale) for l in scaled.info.mapping.layers)
    thresholds = [s.neuron.threshold for s in balanced.spiking_stages]
    assert thresholds == pytest.approx([l.factor for l in scaled.info.mapping.layers])
    assert any(t != 1.0 for t in thresholds)  # the two networks really differ
    kwargs = dict(T=60, coding=coding, seed=0, record_trains=True)
    a = spikeconv.simulate(scaled, images, **kwargs)
    b = spikeconv.simulate(balanced, images, **kwargs)
    for name in a.spike_trains:
        assert torch.equal(a.spike_trains[name], b.spike_trains[name]), name
    assert all(v > 0 for v in a.spikes_per_layer.values())


def test_membrane_bits_follow_yang_section_3_4():
    assert membrane_bits(1.0, -0.5) == 1  # max(1, 0.5) = 1 < 2^1
    assert membrane_bits(1.0, -3.1) == 2  # 3.1 < 4
    assert membrane_bits(1.0, -4.0) == 3  # 4 is not < 4
    assert membrane_bits(1.0, 0.0) == 1


def test_histogram_percentiles_and_fractions_match_exact_values():
    torch.manual_seed(0)
    observer = ActivationObserver()
    batches = [torch.relu(torch.randn(5000)) * s for s in (1.0, 3.0, 0.5, 10.0)]  # forces range doubling
    for batch in batches:
        observer.update(batch)
    stats = observer.stats("x")
    values = torch.cat(batches)
    positive = values[values > 0].double()
    assert stats.max == pytest.approx(float(positive.max()))
    assert stats.nonzero == positive.numel() and stats.count == values.numel()
    resolution = 2 * stats.top / len(stats.histogram)
    ordered = positive.sort().values
    for p in (50, 90, 99, 99.9):
        rank = int(p / 100 * len(ordered))  # the value lies between neighbouring order statistics
        low, high = float(ordered[rank - 2]), float(ordered[min(rank + 1, len(ordered) - 1)])
        assert low - resolution <= stats.percentile(p) <= high + resolution
    assert stats.percentile(100) == stats.max
    for value in (0.5, 2.0, 7.0):
        assert stats.fraction_below(value) == pytest.approx(float((positive < value).double().mean()), abs=1e-3)


def test_unknown_rule_and_options_are_refused():
    model, images = small_cnn(), random_images(10)
    with pytest.raises(ValueError, match="unknown rule 'maxnrom'.*maxnorm"):
        spikeconv.convert(model, images, rule="maxnrom")
    with pytest.raises(TypeError, match="takes options"):
        spikeconv.convert(model, images, rule="maxnorm", n=0.5)
    with pytest.raises(ValueError, match="n must be in"):
        spikeconv.convert(model, images, rule="nscaling", n=1.5)


def test_phases_reuse_statistics_for_another_rule():
    model, images = small_cnn(), random_images(30)
    traced = spikeconv.trace(model, (1, 8, 8))
    stats = spikeconv.calibrate(traced, images)
    assert stats.images == 30
    a = spikeconv.build_snn(traced, stats, "maxnorm")
    b = spikeconv.convert(model, images, rule="maxnorm")
    for sa, sb in zip(a.spiking_stages, b.spiking_stages):
        for pa, pb in zip(sa.parameters(), sb.parameters()):
            assert torch.equal(pa, pb)
    assert a.info.stats is stats
