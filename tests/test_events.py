"""Event-driven synapses: bit for bit the dense convolution wherever the simulator uses them."""

from __future__ import annotations

import sys

import pytest
import torch
from conftest import grid_images, on_grid, random_images, round_parameters
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import spikeconv
from spikeconv.sim import events, kernels
from spikeconv.sim.events import (
    event_synapses,
    exact_sums,
    grid_bits,
    predicted_speedup,
)

pytestmark = pytest.mark.skipif(not kernels.available(), reason="no C compiler")


@pytest.mark.parametrize("seed", range(12))
def test_event_conv_equals_pool_then_dense_conv_bit_for_bit(seed):
    """Random geometries (odd sizes, strides, padding, pools of 1, 2 and 4, with and without
    bias) and spike rates, weights on a 2^-8 grid so that every sum is exact."""
    gen = torch.Generator().manual_seed(seed)
    pick = lambda options: options[int(torch.randint(len(options), (1,), generator=gen))]  # noqa: E731
    c_in, c_out, kernel = pick([1, 3, 12, 20]), pick([16, 32, 48, 64, 128, 144]), pick([1, 3, 5])
    pool, stride, padding = pick([1, 2, 4]), pick([1, 2]), pick([0, 1, 2])
    size = kernel + pick([0, 3, 6]) - 2 * padding if pool == 1 else pool * (kernel + pick([0, 2, 5])) + pick([0, 1])
    size = max(size, pool * max(1, kernel - 2 * padding))
    torch.manual_seed(seed)
    conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=bool(seed % 2))
    round_parameters(conv)
    rate = pick([0.02, 0.1, 0.5])
    spikes = (torch.rand(7, c_in, size, size, generator=gen) < rate).float().contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        dense = conv(nn.functional.avg_pool2d(spikes, pool) if pool > 1 else spikes)
        weight = (conv.weight / pool**2).permute(2, 3, 1, 0).contiguous()
        event = kernels.event_conv(spikes, weight, conv.bias, pool=pool, stride=stride, padding=padding)
    assert event.shape == dense.shape and event.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(event, dense)


@pytest.mark.parametrize("c_in", [1, 12, 16, 20, 40])
def test_scatter_path_equals_the_dense_convolution(c_in):
    """The scatter path (16 outputs, stride 1, no pooling): channel counts that fill 1 to 64
    entries of a spike's packed channel field, kernels of 1, 3, 5 and 2x4 taps, every
    padding below the kernel size, spike rates from 2 to 50 %."""
    torch.manual_seed(c_in)
    for kh, kw in ((1, 1), (3, 3), (5, 5), (2, 4)):
        for padding in range(min(kh, kw)):
            conv = nn.Conv2d(c_in, 16, (kh, kw), padding=padding, bias=bool(padding % 2))
            round_parameters(conv)
            weight = conv.weight.permute(2, 3, 1, 0).contiguous()
            for rate in (0.02, 0.1, 0.5):
                spikes = (torch.rand(5, c_in, 9, 11) < rate).float().contiguous(memory_format=torch.channels_last)
                with torch.inference_mode():
                    dense = conv(spikes)
                    scattered = kernels.event_conv(spikes, weight, conv.bias, pool=1, stride=1, padding=padding, scatter=True)
                assert torch.equal(scattered, dense), (kh, kw, padding, rate)
    conv = nn.Conv2d(c_in, 16, 3, padding=1)  # pooled inputs: each spike adds its weights / 4
    round_parameters(conv)
    spikes = (torch.rand(5, c_in, 10, 12) < 0.1).float().contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        dense = conv(nn.functional.avg_pool2d(spikes, 2))
        weight = (conv.weight / 4).permute(2, 3, 1, 0).contiguous()
        assert torch.equal(kernels.event_conv(spikes, weight, conv.bias, pool=2, stride=1, padding=1, scatter=True), dense)


def test_event_conv_without_avx512_lists_the_same_spikes(monkeypatch):
    """The portable spike listing (a scalar loop, for CPUs without AVX-512) against the dense
    convolution, on pooled rows whose length is not a multiple of 16."""
    monkeypatch.setattr(kernels, "_library", kernels._build(("-mno-avx512f",)))
    torch.manual_seed(0)
    for c_in, pool, padding in ((3, 1, 1), (12, 2, 0), (20, 4, 2)):
        conv = nn.Conv2d(c_in, 32, 3, padding=padding)
        round_parameters(conv)
        spikes = (torch.rand(5, c_in, 12, 12) < 0.2).float().contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            dense = conv(nn.functional.avg_pool2d(spikes, pool) if pool > 1 else spikes)
            weight = (conv.weight / pool**2).permute(2, 3, 1, 0).contiguous()
            event = kernels.event_conv(spikes, weight, conv.bias, pool=pool, stride=1, padding=padding)
        assert torch.equal(event, dense), (c_in, pool)
    conv = nn.Conv2d(20, 16, 3, padding=1)  # the scatter path's portable listing
    round_parameters(conv)
    spikes = (torch.rand(5, 20, 12, 12) < 0.1).float().contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        weight = conv.weight.permute(2, 3, 1, 0).contiguous()
        scattered = kernels.event_conv(spikes, weight, conv.bias, pool=1, stride=1, padding=1, scatter=True)
        assert torch.equal(scattered, conv(spikes))


@given(st.lists(st.integers(-(2**20), 2**20), min_size=1, max_size=20), st.integers(0, 40))
def test_grid_bits_is_the_smallest_exact_power_of_two_grid(numerators, bits):
    """Against the definition: the smallest q with t * 2^q all integers."""
    t = torch.tensor(numerators, dtype=torch.float64) / 2.0**bits
    expected = next(q for q in range(64) if torch.equal(t * 2.0**q, (t * 2.0**q).round()))
    assert grid_bits(t) == expected <= bits


def test_exact_sums_needs_a_power_of_two_grid_and_headroom():
    torch.manual_seed(0)
    weight = torch.randn(32, 8, 3, 3)
    assert grid_bits(torch.tensor([0.5, 0.25, 3.0])) == 2 and grid_bits(torch.tensor([1.0, -2.0])) == 0
    assert exact_sums(on_grid(weight), on_grid(torch.randn(32)), 2, torch.float32)
    assert not exact_sums(weight, None, 1, torch.float32)  # unrounded float weights
    assert not exact_sums(on_grid(weight), None, 3, torch.float32)  # 1/9 is not exact
    fine = on_grid(weight, 20) * 64  # |w| sums ~2^10 on a 2^-20 grid: 2^30 > 2^24
    assert not exact_sums(fine, None, 1, torch.float32) and exact_sums(fine.double(), None, 1, torch.float64)


def test_cost_model_prefers_events_only_for_sparse_input():
    yang_conv2 = {"fan": 8 * 8 * 25 / 12**2, "c_out": 64, "pool": 2, "weight_bytes": 5 * 5 * 12 * 64 * 4,
                  "ranges_per_element": 8 * 8 / (24 * 24 * 12)}  # fmt: skip
    assert predicted_speedup(0.05, **yang_conv2) > events.MIN_SPEEDUP  # at its measured rate
    assert predicted_speedup(0.5, **yang_conv2) < 1
    rates = [0.01, 0.05, 0.1, 0.3, 1.0]
    shape = {"ranges_per_element": 1 / 64, "weight_bytes": 3 * 3 * 64 * 64 * 4}  # 3x3 conv, 'same' padding, 64 -> 64
    speedups = [predicted_speedup(r, 9, 64, 1, **shape) for r in rates]
    assert speedups == sorted(speedups, reverse=True)


def _grid_net() -> spikeconv.SpikingNetwork:
    """A converted net whose synapses the event kernel can run (pool + conv, conv, pool +
    flatten + linear, linear after linear), its weights and biases on a 2^-8 grid."""
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 48, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(48 * 2 * 2, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 5),
    ).float().eval()  # fmt: skip
    snn = spikeconv.convert(model, random_images(64, dtype=torch.float32), rule="maxnorm", reset="subtract")
    round_parameters(snn)
    return snn


def _planned(snn: spikeconv.SpikingNetwork, exact: bool = False) -> dict[int, events.EventSynapse]:
    shapes = [tuple(a.shape[1:]) for a in snn.analog_forward(random_images(1, dtype=torch.float32))]
    return event_synapses(snn.spiking_stages, shapes, torch.float32, torch.device("cpu"), exact)


def _spy(monkeypatch) -> list[int]:
    calls: list[int] = []  # output channels of each call
    original = kernels.event_conv

    def counted(*args, **kwargs):
        calls.append(int(args[1].shape[3]))
        return original(*args, **kwargs)

    monkeypatch.setattr(kernels, "event_conv", counted)
    return calls


@pytest.mark.parametrize("coding", ["constant", "poisson"])
def test_simulation_with_event_synapses_equals_the_reference(monkeypatch, coding):
    snn = _grid_net()
    planned = _planned(snn)
    assert sorted(planned) == [1, 2, 3, 4, 5] and [planned[i].linear for i in (2, 3, 4, 5)] == [False, True, True, True]
    assert planned[5].c_out == 5 and planned[5].weight.shape[-1] == 16  # the output layer, padded to 16 outputs
    monkeypatch.setattr(events, "MIN_SPEEDUP", 0.0)  # events at any rate
    calls = _spy(monkeypatch)
    images, labels = grid_images(20, seed=4, dtype=torch.float32), torch.arange(20) % 5
    kwargs = dict(T=40, coding=coding, seed=1, batch_size=8, record_trains=True)
    fast = spikeconv.simulate(snn, (images, labels), **kwargs)
    assert set(calls) == {16, 32, 48}, "the event path did not run for every planned synapse"
    dense = spikeconv.simulate(snn, (images, labels), event_driven=False, **kwargs)
    reference = spikeconv.simulate(snn, (images, labels), method="reference", **kwargs)
    for other in (dense, reference):
        for name in fast.spike_trains:
            assert torch.equal(fast.spike_trains[name], other.spike_trains[name]), name
        assert torch.equal(fast.output_counts, other.output_counts)
        assert torch.equal(fast.correct_per_step, other.correct_per_step)
    assert all(v > 0 for v in fast.spikes_per_layer.values())


def test_buffers_reused_over_time_chunks_of_unequal_length_keep_the_reference_spikes(monkeypatch):
    """Chunks of 3 steps over T = 20 (the last one shorter): the event currents and the
    constant-current stage's spikes go to buffers reused by every chunk."""
    module = sys.modules["spikeconv.sim.simulate"]  # the package's `simulate` is the function
    monkeypatch.setattr(module, "_chunk_steps", lambda T, batch, step_bytes, memory_bytes: 3)
    monkeypatch.setattr(events, "MIN_SPEEDUP", 0.0)
    snn = _grid_net()
    calls = _spy(monkeypatch)
    images = grid_images(10, seed=8, dtype=torch.float32)
    chunked = spikeconv.simulate(snn, images, T=20, coding="constant", record_trains=True)
    assert len(calls) == 7 * len(_planned(snn)), "not every chunk ran the event synapses"
    reference = spikeconv.simulate(snn, images, T=20, coding="constant", record_trains=True, method="reference")
    for name in chunked.spike_trains:
        assert torch.equal(chunked.spike_trains[name], reference.spike_trains[name]), name
    assert torch.equal(chunked.output_counts, reference.output_counts)
    assert all(v > 0 for v in chunked.spikes_per_layer.values())


def test_sixteen_output_convolutions_scatter_at_low_rates_and_keep_the_reference_spikes(monkeypatch):
    torch.manual_seed(5)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 16, 5, padding=2), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 8 * 8, 5),
    ).float().eval()  # fmt: skip
    snn = spikeconv.convert(model, random_images(64, dtype=torch.float32), rule="maxnorm", reset="subtract")
    round_parameters(snn)
    planned = _planned(snn)
    assert planned[1].scatters and planned[2].scatters and not planned[3].scatters
    monkeypatch.setattr(events, "MIN_SPEEDUP", 0.0)
    monkeypatch.setattr(events, "SCATTER_MAX_RATE", 0.3)  # these inputs fire at about 10-40 %
    calls: list[tuple[int, bool]] = []  # (kernel height, scattered)
    original = kernels.event_conv
    monkeypatch.setattr(kernels, "event_conv", lambda *a, **k: calls.append((a[1].shape[0], k["scatter"])) or original(*a, **k))
    images = grid_images(10, seed=2, dtype=torch.float32)
    kwargs = {"T": 30, "coding": "constant", "record_trains": True}
    fast = spikeconv.simulate(snn, images, **kwargs)
    assert {scatter for kh, scatter in calls if kh in (3, 5)} == {True}, "a 16-output conv did not scatter"
    assert {scatter for kh, scatter in calls if kh == 8} == {False}  # the linear output layer never does
    calls.clear()
    monkeypatch.setattr(events, "SCATTER_MAX_RATE", 0.0)
    assert torch.equal(spikeconv.simulate(snn, images, **kwargs).output_counts, fast.output_counts)
    assert calls and not any(scatter for _, scatter in calls)  # above the rate, outputs sum their spikes
    reference = spikeconv.simulate(snn, images, method="reference", **kwargs)
    for name in fast.spike_trains:
        assert torch.equal(fast.spike_trains[name], reference.spike_trains[name]), name
    assert all(v > 0 for v in fast.spikes_per_layer.values())


def test_fixed_point_networks_take_the_event_path_even_when_exact(monkeypatch):
    """Fixed point puts every weight on a power-of-two grid: sums are exact, so events run
    even with exact=True, which keeps the unrounded float net's synapses dense."""
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 8 * 8, 5),
    ).float().eval()  # fmt: skip
    snn = spikeconv.convert(model, random_images(64, dtype=torch.float32), rule="maxnorm", reset="zero")
    assert _planned(snn, exact=True) == {} and sorted(_planned(snn)) == [1, 2]
    monkeypatch.setattr(events, "MIN_SPEEDUP", 0.0)
    calls = _spy(monkeypatch)
    images = grid_images(10, seed=6, dtype=torch.float32)
    kwargs = dict(T=30, coding="constant", fixed_point_bits=16, record_trains=True, exact=True)
    fast = spikeconv.simulate(snn, images, **kwargs)
    assert calls
    reference = spikeconv.simulate(snn, images, method="reference", **kwargs)
    for name in fast.spike_trains:
        assert torch.equal(fast.spike_trains[name], reference.spike_trains[name]), name
    assert all(v > 0 for v in fast.spikes_per_layer.values())


def _float_net() -> spikeconv.SpikingNetwork:
    """A converted net with ordinary (unrounded) float weights whose synapses all have an
    event form: conv, pooled conv, pooled flatten + linear, linear."""
    torch.manual_seed(5)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(32 * 2 * 2, 40),
        nn.ReLU(), nn.Linear(40, 5),
    ).float().eval()  # fmt: skip
    return spikeconv.convert(model, random_images(64, dtype=torch.float32), rule="maxnorm")


@pytest.mark.parametrize("coding", ["constant", "poisson"])
def test_float_weights_run_event_driven_by_default_and_exact_equals_the_reference(monkeypatch, coding):
    """exact=True on unrounded weights: no event synapse, and every synapse is called one
    step at a time on the reference's layout, so the spikes are the reference's on any CPU."""
    snn = _float_net()
    assert sorted(_planned(snn)) == [1, 2, 3, 4] and _planned(snn, exact=True) == {}
    monkeypatch.setattr(events, "MIN_SPEEDUP", 0.0)
    calls = _spy(monkeypatch)
    images = random_images(12, seed=3, dtype=torch.float32)
    kwargs = dict(T=30, record_trains=True, coding=coding, batch_size=5)
    spikeconv.simulate(snn, images, **kwargs)
    assert set(calls) == {16, 32, 48}  # 40 and 5 outputs are padded to 48 and 16
    calls.clear()
    exact = spikeconv.simulate(snn, images, exact=True, **kwargs)
    assert not calls, "exact=True ran an event synapse on float weights"
    reference = spikeconv.simulate(snn, images, method="reference", **kwargs)
    for name in exact.spike_trains:
        assert torch.equal(exact.spike_trains[name], reference.spike_trains[name]), name
    assert torch.equal(exact.output_membrane, reference.output_membrane)


@pytest.mark.parametrize("c_in,c_out,pool,rate", [(16, 16, 1, 0.05), (16, 32, 2, 0.2), (12, 40, 1, 0.5)])
def test_event_conv_on_float_weights_is_the_dense_sum_within_rounding(c_in, c_out, pool, rate):
    """Unrounded weights: the event current differs from the dense one only by the rounding
    of float32 sums, which for n terms in any order is at most about n * 2^-24 * sum |term|
    (Higham, Accuracy and Stability, eq. 4.4); here bounded with a 2x margin."""
    generator = torch.Generator().manual_seed(c_in + c_out)
    weight = torch.randn(c_out, c_in, 3, 3, generator=generator) * 0.3
    bias = torch.randn(c_out, generator=generator) * 0.1
    spikes = (torch.rand(8, c_in, 16, 16, generator=generator) < rate).float()
    layer = nn.Conv2d(c_in, c_out, 3, padding=1)
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    from spikeconv.sim.events import _event_form

    synapse = _event_form(layer, (c_in, 16, 16), pool, False, torch.float32, exact=False)
    assert synapse is not None and _event_form(layer, (c_in, 16, 16), pool, False, torch.float32) is None
    pooled = nn.functional.avg_pool2d(spikes, pool) if pool > 1 else spikes
    exact_current = nn.functional.conv2d(pooled.double(), weight.double(), bias.double(), padding=1)
    magnitude = nn.functional.conv2d(pooled.double(), weight.double().abs(), bias.double().abs(), padding=1)
    terms = c_in * 9 + 1
    bound = 2 * terms * 2.0**-24 * magnitude + 2.0**-126
    event_current = synapse(spikes).double()
    dense_current = layer(pooled).double()
    assert ((event_current - exact_current).abs() <= bound).all()
    assert ((dense_current - exact_current).abs() <= bound).all()
    assert not torch.equal(event_current, dense_current) or rate < 0.1  # rounding differs somewhere at these sizes


def test_float_event_simulation_stays_within_rounding_of_the_reference(monkeypatch):
    """With float weights the fast path's spikes may differ from the step reference's where a
    membrane lands within rounding of the threshold. On this small net that is rare: the
    output counts agree on nearly every image and the accuracy curves nearly everywhere
    (the measured rates on MNIST and CIFAR-10 nets are in docs/speed.md)."""
    snn = _float_net()
    monkeypatch.setattr(events, "MIN_SPEEDUP", 0.0)
    calls = _spy(monkeypatch)
    images = random_images(200, seed=9, dtype=torch.float32)
    labels = torch.arange(200) % 5
    kwargs = dict(T=40, batch_size=50)
    fast = spikeconv.simulate(snn, (images, labels), **kwargs)
    assert calls
    reference = spikeconv.simulate(snn, (images, labels), method="reference", **kwargs)
    same = (fast.output_counts == reference.output_counts).all(1).float().mean()
    assert same >= 0.95, f"output counts identical on only {same:.1%} of images"
    assert (fast.correct_per_step - reference.correct_per_step).abs().max() <= 2  # images, of 200
    for name, count in reference.spikes_per_layer.items():
        assert abs(fast.spikes_per_layer[name] - count) <= 1e-3 * count + 5, name


def test_kernels_without_openmp_split_images_over_python_threads(monkeypatch):
    """The fallback when the compiler has no OpenMP: same results from Python threads."""
    snn = _grid_net()
    monkeypatch.setattr(events, "MIN_SPEEDUP", 0.0)
    images = grid_images(12, seed=5, dtype=torch.float32)
    with_openmp = spikeconv.simulate(snn, images, T=20, record_trains=True)
    monkeypatch.setattr(kernels, "_has_openmp", lambda library: False)
    pools: list[int] = []
    executor = kernels._executor
    monkeypatch.setattr(kernels, "_executor", lambda threads: pools.append(threads) or executor(threads))
    threads = spikeconv.simulate(snn, images, T=20, record_trains=True)
    assert pools, "the kernels did not run on Python threads"
    for name in with_openmp.spike_trains:
        assert torch.equal(with_openmp.spike_trains[name], threads.spike_trains[name]), name
    assert all(v > 0 for v in threads.spikes_per_layer.values())


def test_event_forms_are_kept_per_network_until_a_weight_changes_in_place(monkeypatch):
    module = sys.modules["spikeconv.sim.simulate"]
    found: list[int] = []
    monkeypatch.setattr(module, "event_synapses", lambda *a: found.append(1) or event_synapses(*a))
    monkeypatch.setattr(events, "MIN_SPEEDUP", 0.0)
    snn = _grid_net()
    calls = _spy(monkeypatch)
    images = grid_images(6, seed=3, dtype=torch.float32)
    first = spikeconv.simulate(snn, images, T=15, record_trains=True, exact=True)
    again = spikeconv.simulate(snn, images, T=15, record_trains=True, exact=True)
    assert len(found) == 1 and torch.equal(first.output_counts, again.output_counts)
    assert 48 in calls
    with torch.no_grad():  # off the grid: the 32 -> 48 conv's sums are no longer exact
        snn.spiking_stages[2].synapse[0].weight[0, 0, 0, 0] += 1e-3
    calls.clear()
    changed = spikeconv.simulate(snn, images, T=15, record_trains=True, exact=True)
    assert len(found) == 2 and calls and 48 not in calls, "a stale event form ran after the weights changed"
    # the dense path with the new weights (the step reference would sum the now-inexact
    # layer in another order, which another CPU may round differently)
    dense = spikeconv.simulate(snn, images, T=15, record_trains=True, event_driven=False)
    for name in changed.spike_trains:
        assert torch.equal(changed.spike_trains[name], dense.spike_trains[name]), name
    assert all(v > 0 for v in changed.spikes_per_layer.values())
    conv = snn.spiking_stages[2].synapse[0]
    conv.weight.data = on_grid(conv.weight.detach().clone())  # a new tensor, back on the grid
    calls.clear()
    spikeconv.simulate(snn, images, T=15, exact=True)
    assert len(found) == 3 and 48 in calls, "a replaced weight tensor did not bring the event path back"
    conv.weight.data += 1e-3  # off the grid again: exact=False still runs it event-driven
    calls.clear()
    spikeconv.simulate(snn, images, T=15, exact=False)
    assert len(found) == 4 and 48 in calls


def test_linear_layers_run_event_driven_only_on_flat_inputs():
    """A linear layer on a 3-d map without a flatten acts on the last dimension only; the
    event form (a kernel over the whole map) would be wrong there, so it is refused."""
    from spikeconv.sim.events import _event_form

    layer = nn.Linear(4, 32)
    round_parameters(layer)
    assert _event_form(layer, (2, 4, 4), 1, False, torch.float32) is None
    assert _event_form(nn.Linear(32, 32), (2, 4, 4), 1, True, torch.float32) is None  # 32 = 2*4*4 but weights off-grid
    flat = nn.Linear(32, 32)
    round_parameters(flat)
    assert _event_form(flat, (2, 4, 4), 1, True, torch.float32) is not None
    assert _event_form(flat, (32,), 1, False, torch.float32) is not None
    assert _event_form(flat, (32,), 2, False, torch.float32) is None  # no pooling of a vector


def test_event_synapse_after_a_spiking_max_pool_equals_the_reference(monkeypatch):
    """The gate of a spiking max-pool passes 0/1 spikes on: the next convolution may run
    event-driven (and must still match the step reference)."""
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 4 * 4, 5),
    ).float().eval()  # fmt: skip
    snn = spikeconv.convert(model, random_images(64, dtype=torch.float32), rule="maxnorm", reset="subtract")
    round_parameters(snn)
    planned = _planned(snn)
    gated = [j for j in planned if snn.spiking_stages[snn.spiking_stages[j].source_indices(j)[0]].gate is not None]
    assert gated, "no event synapse reads the max-pool gate"
    monkeypatch.setattr(events, "MIN_SPEEDUP", 0.0)
    calls = _spy(monkeypatch)
    images = grid_images(12, seed=8, dtype=torch.float32)
    kwargs = dict(T=30, coding="constant", record_trains=True)
    fast = spikeconv.simulate(snn, images, **kwargs)
    assert calls
    reference = spikeconv.simulate(snn, images, method="reference", **kwargs)
    for name in fast.spike_trains:
        assert torch.equal(fast.spike_trains[name], reference.spike_trains[name]), name
    assert torch.equal(fast.output_counts, reference.output_counts)
    assert all(v > 0 for v in fast.spikes_per_layer.values())


def test_event_conv_refuses_inputs_it_cannot_run_and_says_what_to_pass():
    weight = torch.zeros(3, 3, 4, 32)
    nchw = torch.zeros(2, 4, 5, 5)
    with pytest.raises(ValueError, match="channels-last.*contiguous\\(memory_format=torch.channels_last\\)"):
        kernels.event_conv(nchw, weight, None, pool=1, stride=1, padding=1)
    spikes = nchw.contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match=r"multiple of 16, got \[3, 3, 4, 24\].*permute"):
        kernels.event_conv(spikes, torch.zeros(3, 3, 4, 24), None, pool=1, stride=1, padding=1)
    with pytest.raises(ValueError, match=r"\[KH, KW, 4, C_out\]"):
        kernels.event_conv(spikes, torch.zeros(3, 3, 5, 32), None, pool=1, stride=1, padding=1)
    with pytest.raises(ValueError, match=r"out must be a float32 channels-last tensor of shape \[2, 32, 5, 5\]"):
        kernels.event_conv(spikes, weight, None, pool=1, stride=1, padding=1, out=torch.empty(2, 32, 5, 5))
    out = torch.full((2, 32, 5, 5), float("nan")).contiguous(memory_format=torch.channels_last)
    assert kernels.event_conv(spikes, weight, None, pool=1, stride=1, padding=1, out=out) is out and not out.isnan().any()
    assert kernels.event_lists_fit(32, 64, 512, 1, 9) and not kernels.event_lists_fit(2**16, 2**8, 2**7, 1, 9)
    assert not kernels.event_lists_fit(8, 512, 512, 1, 2**13)  # a large kernel alone overflows
    wide = torch.zeros(1, 1, 1, 2**17).contiguous(memory_format=torch.channels_last)  # 2^17 x 1 x 2^14 = 2^31
    with pytest.raises(ValueError, match="int32 spike lists.*dense layer"):
        kernels.event_conv(wide, torch.zeros(1, 1, 1, 2**14), None, pool=1, stride=1, padding=0)


class _Block(nn.Module):
    """conv-ReLU-conv plus an identity or a strided 1x1 projection shortcut, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride) if stride != 1 or cin != cout else None

    def forward(self, x):
        out = self.conv2(torch.relu(self.conv1(x)))
        return torch.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class _ResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.block1, self.block2 = _Block(16, 16, 1), _Block(16, 32, 2)
        self.fc = nn.Linear(32, 5)

    def forward(self, x):
        x = self.block2(self.block1(torch.relu(self.stem(x))))
        return self.fc(x.mean((2, 3)))


def _resnet(grid: bool) -> spikeconv.SpikingNetwork:
    torch.manual_seed(11)
    snn = spikeconv.convert(_ResNet().float().eval(), random_images(64, dtype=torch.float32), rule="maxnorm")
    if grid:
        round_parameters(snn)
    return snn


def test_residual_stages_run_event_driven_and_equal_the_reference_on_a_grid(monkeypatch):
    """The identity block's sum (conv + spikes) and the projection block's (conv + 1x1
    stride-2 conv) run event by event; with weights on a grid every sum is exact, so the
    spikes are the reference's bit for bit."""
    snn = _resnet(grid=True)
    planned = _planned(snn, exact=True)
    residual = {j: p for j, p in planned.items() if isinstance(p, events.ResidualEventSynapse)}
    assert len(residual) == 2
    identity, projection = (residual[j].terms for j in sorted(residual))
    assert [(e is None, d is None) for _, e, d in identity] == [(False, False), (True, True)]
    assert all(e is not None for _, e, _ in projection) and len(projection) == 2
    monkeypatch.setattr(events, "MIN_SPEEDUP", 0.0)
    calls = _spy(monkeypatch)
    images, labels = grid_images(16, seed=2, dtype=torch.float32), torch.arange(16) % 5
    kwargs = dict(T=40, batch_size=8, record_trains=True)
    fast = spikeconv.simulate(snn, (images, labels), exact=True, **kwargs)
    # per batch (one time chunk each): block 2's first convolution, then its residual sum's two
    assert calls.count(32) == 2 * 3, "the projection block's convolutions did not all run event-driven"
    reference = spikeconv.simulate(snn, (images, labels), method="reference", **kwargs)
    for name in fast.spike_trains:
        assert torch.equal(fast.spike_trains[name], reference.spike_trains[name]), name
    assert all(v > 0 for v in fast.spikes_per_layer.values())


def test_residual_stages_with_float_weights_stay_within_rounding_of_the_reference(monkeypatch):
    snn = _resnet(grid=False)
    assert _planned(snn, exact=True) == {}
    assert sum(isinstance(p, events.ResidualEventSynapse) for p in _planned(snn).values()) == 2
    monkeypatch.setattr(events, "MIN_SPEEDUP", 0.0)
    images, labels = random_images(100, seed=4, dtype=torch.float32), torch.arange(100) % 5
    fast = spikeconv.simulate(snn, (images, labels), T=40, batch_size=50)
    reference = spikeconv.simulate(snn, (images, labels), T=40, batch_size=50, method="reference")
    same = (fast.output_counts == reference.output_counts).all(1).float().mean()
    assert same >= 0.95, f"output counts identical on only {same:.1%} of images"
    for name, count in reference.spikes_per_layer.items():
        assert abs(fast.spikes_per_layer[name] - count) <= 1e-3 * count + 5, name
    exact = spikeconv.simulate(snn, (images, labels), T=40, batch_size=50, exact=True)
    assert torch.equal(exact.output_counts, reference.output_counts)
    assert torch.equal(exact.spikes_per_image, reference.spikes_per_image)


def test_residual_graphs_other_than_a_sum_of_convolutions_keep_the_dense_synapse():
    from spikeconv.sim.events import _residual_form

    class Scaled(nn.Module):  # a scaled identity: not a term the event form takes
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, a, b):
            return self.conv(b) + a * 0.5

    graph = torch.fx.symbolic_trace(Scaled())
    assert _residual_form(graph, [(4, 6, 6), (4, 6, 6)], torch.float32, exact=False) is None


def test_exact_keeps_a_residual_sum_dense_when_any_of_its_convolutions_is_inexact():
    """exact=True: a sum whose projection shortcut is off the grid is left to the per-step
    dense path as a whole (its inexact term must be summed as the reference sums it)."""
    snn = _resnet(grid=True)
    residual = [j for j, p in _planned(snn, exact=True).items() if isinstance(p, events.ResidualEventSynapse)]
    projection = max(residual)
    shortcut = [m for m in snn.spiking_stages[projection].synapse.modules() if isinstance(m, nn.Conv2d)][-1]
    with torch.no_grad():
        shortcut.weight[0, 0, 0, 0] += 1e-3  # off the grid
    assert projection not in _planned(snn, exact=True) and projection in _planned(snn)
