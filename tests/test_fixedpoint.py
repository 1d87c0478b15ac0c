from __future__ import annotations

import pytest
import torch
from conftest import grid_images, random_images, small_cnn

import spikeconv
from spikeconv.sim.fixedpoint import FixedPoint, quantize_network


def test_format_range_and_rounding():
    fixed = FixedPoint(bits=8, integer_bits=2)  # sign, 2 integer, 5 fraction bits
    assert fixed.fraction_bits == 5 and fixed.resolution == 1 / 32
    assert (fixed.low, fixed.high) == (-4.0, 4.0 - 1 / 32)
    x = torch.tensor([0.01, 0.02, -0.02, 1.2345, 9.0, -9.0], dtype=torch.float64)
    q = fixed.quantize(x)
    assert q.tolist() == [0.0, 1 / 32, -1 / 32, 40 / 32, 4 - 1 / 32, -4.0]
    assert torch.all((q * 32) == torch.round(q * 32))
    with pytest.raises(ValueError, match="at least 4 bits"):
        FixedPoint(bits=3, integer_bits=3)


def test_quantized_network_counts_weights_that_became_zero():
    model = torch.nn.Sequential(torch.nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.001, 0.5, -0.002, 0.0], [1.0, -1.0, 0.3, 0.01]]))
    quantized, zeroed = quantize_network(model, FixedPoint(bits=8, integer_bits=2))
    assert zeroed == pytest.approx(3 / 7)  # 0.001, -0.002, 0.01 round to 0; the exact 0 is not counted
    assert float(model[0].weight.detach()[0, 0]) == pytest.approx(0.001)  # the original is untouched


@pytest.mark.parametrize("coding", ["constant", "poisson"])
def test_fixed_point_fast_path_equals_reference_and_16_bits_track_float(coding):
    snn = spikeconv.convert(small_cnn(), random_images(64), rule="nscaling", reset="zero")
    images = grid_images(30, seed=3)  # quantized weights times grid pixels: exact sums on any CPU
    kwargs = dict(T=60, coding=coding, record_trains=True, fixed_point_bits=16)
    fast = spikeconv.simulate(snn, images, **kwargs)
    reference = spikeconv.simulate(snn, images, method="reference", **kwargs)
    for name in fast.spike_trains:
        assert torch.equal(fast.spike_trains[name], reference.spike_trains[name])
    assert all(v > 0 for v in fast.spikes_per_layer.values())
    assert fast.fixed_point["integer_bits"] == snn.info.mapping.membrane_bits
    floating = spikeconv.simulate(snn, images, T=60, coding=coding)
    agree = float((floating.predictions == fast.predictions).double().mean())
    assert agree >= 0.9
    coarse = spikeconv.simulate(snn, images, T=60, coding=coding, fixed_point_bits=5)
    assert coarse.fixed_point["zero_weight_fraction"] > fast.fixed_point["zero_weight_fraction"]


def test_fixed_point_refuses_threshold_balancing():
    snn = spikeconv.convert(small_cnn(), random_images(20), rule="threshold", reset="subtract")
    with pytest.raises(ValueError, match="threshold 1 in every layer"):
        spikeconv.simulate(snn, random_images(2), T=5, fixed_point_bits=16)
