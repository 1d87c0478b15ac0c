from __future__ import annotations

import sys

import pytest
import torch
from conftest import (
    exact,
    grid_images,
    on_grid,
    random_images,
    random_window,
    small_cnn,
)

import spikeconv
from spikeconv.metrics import latency, steps_to_reach
from spikeconv.sim.encoders import encode


def _convert(reset: str, readout: str = "spikes", dtype=torch.float64, rule="nscaling"):
    """A converted small_cnn with its weights on the 2^-8 grid: fed :func:`grid_images` or
    spikes, every sum is exact, so the simulators must agree on any CPU (see conftest)."""
    model = small_cnn(dtype=dtype)
    return exact(spikeconv.convert(model, random_images(64, dtype=dtype), rule=rule, reset=reset, readout=readout))


def _assert_same(a: spikeconv.SimulationResult, b: spikeconv.SimulationResult) -> None:
    assert a.spike_trains is not None and b.spike_trains is not None
    for name in a.spike_trains:
        assert torch.equal(a.spike_trains[name], b.spike_trains[name]), name
    assert torch.equal(a.predictions, b.predictions)
    assert torch.equal(a.output_counts, b.output_counts)
    assert (a.correct_per_step is None) == (b.correct_per_step is None)
    if a.correct_per_step is not None:
        assert torch.equal(a.correct_per_step, b.correct_per_step)
    assert a.spikes_per_layer == b.spikes_per_layer


@pytest.mark.parametrize("coding", ["constant", "poisson", "deterministic"])
@pytest.mark.parametrize("reset", ["zero", "subtract"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_time_batched_and_step_by_step_give_identical_spikes(coding, reset, dtype):
    snn = _convert(reset, dtype=dtype)
    images, labels = grid_images(24, seed=5, dtype=dtype), torch.arange(24) % 5
    kwargs = dict(T=40, coding=coding, seed=3, batch_size=10, record_trains=True)
    fast = spikeconv.simulate(snn, (images, labels), method="fast", **kwargs)
    reference = spikeconv.simulate(snn, (images, labels), method="reference", **kwargs)
    _assert_same(fast, reference)
    assert fast.spikes_per_image.sum() > 0


def test_membrane_readout_matches_reference_and_predicts_argmax_potential():
    snn = _convert("subtract", readout="membrane")
    images = grid_images(12, seed=2)
    kwargs = dict(T=30, coding="poisson", record_trains=True)
    fast = spikeconv.simulate(snn, images, method="fast", **kwargs)
    _assert_same(fast, spikeconv.simulate(snn, images, method="reference", **kwargs))
    assert torch.equal(fast.predictions, fast.output_membrane.argmax(1))
    assert fast.output_counts.sum() == 0 and fast.spikes_per_image.sum() > 0  # the hidden layers spike


@pytest.mark.parametrize("coding", ["constant", "poisson"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_time_chunking_does_not_change_the_result(coding, dtype):
    """One-step chunks included: a constant current must never be overwritten in place."""
    snn = _convert("zero", dtype=dtype)
    images = grid_images(16, seed=7, dtype=dtype)
    whole = spikeconv.simulate(snn, images, T=50, coding=coding, record_trains=True, memory_bytes=2**30)
    chunked = spikeconv.simulate(snn, images, T=50, coding=coding, record_trains=True, memory_bytes=1)
    reference = spikeconv.simulate(snn, images, T=50, coding=coding, record_trains=True, method="reference")
    _assert_same(whole, chunked)
    _assert_same(reference, chunked)
    assert chunked.spikes_per_image.sum() > 0


def test_sums_held_back_and_flushed_at_any_point_give_the_same_result(monkeypatch):
    """Spike sums and the readout are processed in bulk; flushing after every chunk (one
    element) or once at the end must give the same totals and accuracy curve."""
    module = sys.modules["spikeconv.sim.simulate"]  # the package's `simulate` is the function
    snn = _convert("subtract", dtype=torch.float32)
    images, labels = grid_images(16, seed=3, dtype=torch.float32), torch.arange(16) % 5
    run = lambda: spikeconv.simulate(snn, (images, labels), T=30, memory_bytes=1, record_trains=True)
    held = run()
    monkeypatch.setattr(module, "_PENDING_ELEMENTS", 1)
    flushed = run()
    _assert_same(held, flushed)
    assert torch.equal(held.spikes_per_step, flushed.spikes_per_step) and held.spikes_per_step.sum() > 0
    assert torch.equal(held.spikes_per_image, flushed.spikes_per_image)


def test_module_forward_is_the_step_by_step_simulation():
    snn = _convert("zero")
    images = grid_images(6, seed=4)
    T = 25
    result = spikeconv.simulate(snn, images, T=T, coding="constant", record_trains=True)
    snn.reset_state()
    out = snn(images.unsqueeze(0).expand(T, *images.shape))
    assert out.shape == (T, 6, 5)
    assert torch.equal(out, result.spike_trains[snn.spiking_stages[-1].name]) and out.sum() > 0


def test_seeded_poisson_runs_are_reproducible_and_seeds_differ():
    snn = _convert("zero")
    images = grid_images(8)
    a = spikeconv.simulate(snn, images, T=30, coding="poisson", seed=1)
    b = spikeconv.simulate(snn, images, T=30, coding="poisson", seed=1)
    c = spikeconv.simulate(snn, images, T=30, coding="poisson", seed=2)
    assert torch.equal(a.spikes_per_image, b.spikes_per_image)
    assert not torch.equal(a.spikes_per_image, c.spikes_per_image)


def test_deterministic_encoder_counts_are_floor_t_times_intensity():
    x = torch.tensor([[0.0, 0.3, 0.5, 0.97, 1.0]], dtype=torch.float64)
    spikes = torch.cat([encode(x, "deterministic", 0, 10, None), encode(x, "deterministic", 10, 37, None)])
    counts = spikes.cumsum(0)
    t = torch.arange(1, 38, dtype=torch.float64).view(-1, 1, 1)
    assert torch.equal(counts, torch.floor(t * x))
    assert set(spikes.unique().tolist()) <= {0.0, 1.0}


def test_poisson_encoder_rate_matches_intensity():
    x = torch.full((1, 2000), 0.3)
    spikes = encode(x, "poisson", 0, 200, torch.Generator().manual_seed(0))
    assert abs(float(spikes.mean()) - 0.3) < 0.005


def test_ties_in_spike_count_are_broken_by_membrane_potential():
    from spikeconv.sim.simulate import _Readout

    class Fake:
        readout = "spikes"

    readout = _Readout(Fake(), torch.tensor([2]), T=1, device=torch.device("cpu"))
    spikes = torch.tensor([[[1.0, 0.0, 1.0]]])
    membrane = torch.tensor([[[0.1, 0.9, 0.4]]])
    readout.update(spikes, membrane)
    readout.flush()
    assert int(readout.predictions[0]) == 2  # classes 0 and 2 tie on count; 2 has more potential
    assert int(readout.correct[0]) == 1


def test_result_accuracy_curve_latency_and_serialization():
    snn = _convert("subtract")
    images, labels = grid_images(20, seed=9), torch.arange(20) % 5
    result = spikeconv.simulate(snn, (images, labels), T=60)
    assert result.accuracy.shape == (60,)
    assert result.accuracy_at(60) == result.final_accuracy
    summary = result.to_dict(steps=[10, 60])
    assert set(summary["accuracy"]) == {"10", "60"}
    assert summary["spikes_per_image"] == pytest.approx(float(result.spikes_per_image.mean()))
    assert 1 <= result.latency() <= 60


def test_latency_and_steps_to_reach():
    acc = torch.tensor([10.0, 50.0, 98.0, 99.0, 98.95, 99.05, 99.0])
    assert latency(acc, margin=0.1) == 4
    assert latency(acc, margin=0.0) == 7
    assert latency(torch.tensor([5.0, 5.0]), 0.1) == 1
    assert steps_to_reach(acc, 99.0) == 4
    assert steps_to_reach(acc, 99.5) is None


def test_rates_and_spike_totals_are_consistent():
    snn = _convert("zero")
    images = grid_images(10)
    result = spikeconv.simulate(snn, images, T=20, record_counts=True)
    for name, counts in result.spike_counts.items():
        assert float(counts.sum()) == result.spikes_per_layer[name]
        assert 0 <= result.firing_rates[name] <= 1
    assert float(result.spikes_per_image.sum()) == pytest.approx(sum(result.spikes_per_layer.values()))


@pytest.mark.parametrize("readout", ["spikes", "membrane"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_kernel_and_tensor_loop_give_the_reference_spikes(monkeypatch, readout, dtype):
    """Reset to zero with V_min (clamped in the IF step, not in the integrate-only output)."""
    from spikeconv.sim import kernels
    from spikeconv.sim.neurons import if_step

    snn = _convert("zero", readout=readout, dtype=dtype)
    assert snn.spiking_stages[0].neuron.v_min is not None
    images = grid_images(10, seed=11, dtype=dtype)
    kwargs = dict(T=35, coding="constant", record_trains=True)
    clamped: list[bool] = []

    def step(z, v, params):  # the reference's IF step, noting whether V_min holds a membrane up
        if params.v_min is not None:
            clamped.append(bool((v + z < params.v_min).any()))
        return if_step(z, v, params)

    monkeypatch.setattr(sys.modules["spikeconv.sim.simulate"], "if_step", step)
    reference = spikeconv.simulate(snn, images, method="reference", **kwargs)
    assert any(clamped), "V_min is never reached: the test would not cover the clamp"
    assert reference.spikes_per_image.sum() > 0
    _assert_same(spikeconv.simulate(snn, images, method="fast", **kwargs), reference)
    monkeypatch.setattr(kernels, "supports", lambda current: False)
    _assert_same(spikeconv.simulate(snn, images, method="fast", **kwargs), reference)


def test_threshold_balancing_fast_equals_reference_in_float32():
    """Thresholds other than 1 (comparisons with them are exact; the sums are on the grid)."""
    snn = _convert("subtract", dtype=torch.float32, rule="threshold")
    assert any(float(s.neuron.threshold) != 1.0 for s in snn.spiking_stages)
    images = grid_images(10, seed=12, dtype=torch.float32)
    kwargs = dict(T=40, coding="constant", record_trains=True)
    fast = spikeconv.simulate(snn, images, method="fast", **kwargs)
    _assert_same(fast, spikeconv.simulate(snn, images, method="reference", **kwargs))
    assert fast.spikes_per_image.sum() > 0


def test_rate_correlation_is_near_one_for_subtraction_and_long_runs():
    from spikeconv.metrics import rate_correlation

    snn = _convert("subtract", rule="maxnorm")
    images = grid_images(20, seed=8)
    report = rate_correlation(snn, images, T=500)
    assert report["0"]["correlation"] > 0.999 and report["0"]["mean_abs_error"] < 2 / 500
    short = rate_correlation(snn, images, T=5)
    assert short["0"]["mean_abs_error"] > report["0"]["mean_abs_error"]


def test_sub_batches_give_the_same_labels_and_accuracy_curve():
    snn = _convert("subtract")
    images = grid_images(12, seed=9)
    labels = torch.arange(12) % 5
    whole = spikeconv.simulate(snn, (images, labels), T=40, coding="constant", memory_bytes=2**30)
    split = spikeconv.simulate(snn, (images, labels), T=40, coding="constant", memory_bytes=1)  # one image each
    assert torch.equal(whole.labels, split.labels) and torch.equal(whole.predictions, split.predictions)
    assert torch.equal(whole.accuracy_curve(), split.accuracy_curve())
    assert torch.equal(whole.output_counts, split.output_counts) and whole.output_counts.sum() > 0


@pytest.mark.parametrize("reset", ["zero", "subtract"])
@pytest.mark.parametrize("v_min", [None, -0.5])
def test_fused_kernel_in_channels_last_layout_steps_like_if_step(reset, v_min):
    """The kernel takes any per-image-dense layout (the simulator hands it channels-last
    currents) and must update every neuron exactly as if_step, in place or not."""
    from spikeconv.sim import kernels
    from spikeconv.sim.neurons import IFParams, if_step

    if not kernels.available():
        pytest.skip("no C compiler")
    params = IFParams(threshold=0.75, reset=reset, v_min=v_min)
    gen = torch.Generator().manual_seed(3)
    flat = on_grid(torch.rand(24, 5, 3, 3, generator=gen) - 0.3)  # exact membrane sums (as threshold and V_min)
    flat = flat.contiguous(memory_format=torch.channels_last)
    current = flat.unflatten(0, (6, 4))  # [steps, B, C, H, W], as the simulator makes it
    assert kernels.dense_blocks(current, 2) and not current.is_contiguous()
    assert not kernels.dense_blocks(current.transpose(0, 1), 2)
    for inplace in (False, True):
        z = current.clone(memory_format=torch.preserve_format)
        v = torch.zeros_like(z[0])
        spikes = z if inplace else kernels.steps_like(v, len(z))
        counts = kernels.if_recurrence(
            z, v, mode=reset, threshold=0.75, v_min=v_min, saturate=None, spikes=spikes, membranes=None
        )
        v_ref = torch.zeros(4, 5, 3, 3)
        for k in range(len(current)):
            s_ref, v_ref = if_step(current[k].contiguous(), v_ref, params)
            assert torch.equal(spikes[k], s_ref) and torch.equal(counts[k], s_ref.flatten(1).sum(1, dtype=torch.float64))
        assert torch.equal(v, v_ref)
    with pytest.raises(ValueError, match="layout"):
        kernels.if_recurrence(
            current, torch.zeros(4, 5, 3, 3), mode=reset, threshold=0.75, v_min=v_min, saturate=None,
            spikes=torch.empty_like(current), membranes=None,
        )  # fmt: skip


def test_maxpool_gate_kernel_passes_the_tensor_code_s_spikes_in_any_window_and_layout():
    """The C gate against neurons.maxpool_gate: random windows (padding, strides), every
    rate estimate, float32/64, NCHW and channels-last, integer starting estimates (ties)."""
    from spikeconv.sim import kernels
    from spikeconv.sim.neurons import maxpool_gate

    if not kernels.available():
        pytest.skip("no C compiler")
    gen = torch.Generator().manual_seed(1)
    for case in range(120):
        params, height, width = random_window(
            gen, estimate=("count", "ewma", "spikes")[case % 3], decay=(0.9, 0.7, 0.33)[case // 3 % 3]
        )
        dtype = (torch.float32, torch.float64)[case // 2 % 2]
        steps, batch, channels = (int(n) for n in torch.randint(1, 5, (3,), generator=gen))
        spikes = (torch.rand(steps, batch, channels, height, width, generator=gen) < 0.4).to(dtype)
        if case % 3 == 0:
            spikes = spikes.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, (steps, batch))
        start = None if case % 4 == 0 else torch.randint(0, 3, spikes[0].shape, generator=gen).to(dtype)
        expected, expected_estimate = maxpool_gate(spikes, start, params)
        passed, estimate = kernels.maxpool_gate(
            spikes, None if start is None else start.clone(), kernel_size=params.kernel_size, stride=params.stride,
            padding=params.padding, rate=params.estimate, decay=params.decay,
        )  # fmt: skip
        assert torch.equal(passed, expected) and torch.equal(estimate, expected_estimate), (case, params)
        layout = torch.channels_last if case % 3 == 0 and channels > 1 else torch.contiguous_format
        assert passed.flatten(0, 1).is_contiguous(memory_format=layout)  # the spikes' layout


def test_layouts_compare_without_size_one_dimensions():
    """A 1-channel (or 1x1) map is NCHW and channels-last at once: its size-1 strides are
    arbitrary and must not make the kernel refuse it; a real permutation still differs."""
    from spikeconv.sim import kernels

    if not kernels.available():
        pytest.skip("no C compiler")
    last = torch.channels_last
    one = torch.rand(6, 4, 1, 3, 3)  # [steps, B, 1, H, W], plain layout
    assert kernels.same_layout(torch.zeros(4, 1, 3, 3).contiguous(memory_format=last), 1, one, 2)
    one_by_one = torch.zeros(8, 7, 1, 1).contiguous(memory_format=last).unflatten(0, (2, 4))
    assert kernels.same_layout(torch.zeros(4, 7, 1, 1), 1, one_by_one, 2)
    assert not kernels.same_layout(torch.zeros(4, 5, 3, 3), 1, torch.zeros(4, 5, 3, 3).contiguous(memory_format=last), 1)
    assert not kernels.same_layout(torch.zeros(4, 5, 3, 3), 1, torch.zeros(2, 4, 5, 3, 2), 2)  # shapes differ
    v = torch.zeros(4, 1, 3, 3).contiguous(memory_format=last)
    counts = kernels.if_recurrence(
        one, v, mode="subtract", threshold=0.5, v_min=None, saturate=None, spikes=one.clone(), membranes=None
    )
    assert counts.shape == (6, 4)


def test_device_argument_runs_where_named_and_refuses_unavailable_devices_by_name():
    snn = _convert("subtract", dtype=torch.float32)
    images = grid_images(6, seed=1, dtype=torch.float32)
    here = spikeconv.simulate(snn, images, T=20, device="cpu", record_trains=True)
    _assert_same(here, spikeconv.simulate(snn, images, T=20, record_trains=True))
    with pytest.raises(ValueError, match="device 'gpu0' is not a torch device"):
        spikeconv.simulate(snn, images, T=5, device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device 'cuda' is not available.*simulate on 'cpu'"):
            spikeconv.simulate(snn, images, T=5, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_cuda_simulation_gives_the_cpu_spikes_on_exact_sums():
    """Weights on a 2^-8 grid make every sum exact, so the GPU's summation order cannot
    change a spike: the same spikes as the step-by-step reference on the CPU."""
    snn = _convert("subtract", dtype=torch.float32, rule="maxnorm")
    images = grid_images(8, seed=2, dtype=torch.float32)
    reference = spikeconv.simulate(snn, images, T=30, method="reference", record_trains=True)
    on_gpu = spikeconv.simulate(snn, images, T=30, device="cuda", record_trains=True)
    _assert_same(on_gpu, reference)


def test_switches_must_be_booleans():
    snn = spikeconv.convert(small_cnn(), random_images(10), rule="maxnorm")
    with pytest.raises(TypeError, match="exact must be True or False, got 'no'"):
        spikeconv.simulate(snn, random_images(2), T=2, exact="no")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="record_counts must be True or False, got 1"):
        spikeconv.simulate(snn, random_images(2), T=2, record_counts=1)  # type: ignore[arg-type]
