"""Issue 16's post-hoc and training tools: clip-floor MSE thresholds, SNN Calibration (light
and advanced), Ding's stage-2 threshold training, and the synaptic-operation count."""

from __future__ import annotations

import math
import os

import pytest
import torch
from conftest import exact, grid_images, random_images, small_cnn
from torch import nn

import spikeconv
from spikeconv.conversion.activations import RateNorm
from spikeconv.conversion.calibrate import ActivationObserver
from spikeconv.conversion.calibration import calibrate_snn
from spikeconv.metrics import ann_operations, synaptic_fanouts
from spikeconv.training import TrainOptions, train

# --- clip-floor MSE thresholds (Li et al. 2021) ---------------------------------------------


def test_clip_floor_error_matches_a_direct_computation():
    observer = ActivationObserver()
    values = torch.linspace(0.01, 4.0, 4000, dtype=torch.float64)
    observer.update(torch.cat([values, torch.zeros(1000, dtype=torch.float64)]).view(1, -1))
    stats = observer.stats("x")
    scales = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    for T, shift in ((4, 0.0), (4, 0.5), (32, 0.5)):
        got = stats.clip_floor_error(scales, T, shift)
        for s, value in zip(scales, got):
            q = s / T * torch.clamp(torch.floor(values * T / s + shift), 0, T)
            direct = float(((q - values) ** 2).sum()) / 5000
            assert float(value) == pytest.approx(direct, rel=0.02, abs=1e-6)  # histogram bins vs exact values


def test_mse_thresholds_lower_the_clip_for_few_steps_and_reach_the_max_for_many(digits_model, digits):
    model = digits_model[0]
    images = digits[0].tensors()[0]
    traced = spikeconv.trace(model, (1, 8, 8))
    stats = spikeconv.calibrate(traced, images)
    few = spikeconv.map_scales(traced, stats, "mse", T=2)
    many = spikeconv.map_scales(traced, stats, "mse", T=4096)
    for a, b, layer in zip(few.layers, many.layers, stats.layers):
        assert a.scale < b.scale <= layer.max
        assert b.scale > 0.5 * layer.max
    snn = spikeconv.build_snn(traced, stats, "mse", T=8)
    assert all(float(s.neuron.v_init) == 0.5 * float(s.neuron.threshold) for s in snn.spiking_stages)
    snn = spikeconv.build_snn(traced, stats, "mse", T=8, shift=0.0)
    assert all(float(s.neuron.v_init) == 0.0 for s in snn.spiking_stages)


@pytest.mark.parametrize(
    "options, message",
    [({"T": 0}, "T"), ({"T": 2.5}, "T"), ({"shift": 1.0}, "shift"), ({"shift": -0.1}, "shift")],
)
def test_mse_rule_refuses_bad_options(digits_model, digits, options, message):
    with pytest.raises(ValueError, match=message):
        spikeconv.convert(digits_model[0], digits[0].tensors()[0][:100], rule="mse", **options)


# --- SNN Calibration ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["light", "advanced"])
def test_calibration_reduces_every_layers_rate_error_and_leaves_the_input_network_alone(digits_model, digits, mode):
    model = digits_model[0]
    images = digits[0].tensors()[0]
    snn = spikeconv.convert(model, images, rule="maxnorm")
    before = {k: v.clone() for k, v in snn.state_dict().items()}
    calibrated = calibrate_snn(snn, images[:500], T=8, mode=mode)
    assert all(torch.equal(before[k], v) for k, v in snn.state_dict().items())  # a copy was calibrated
    record = calibrated.info.calibration
    assert record["mode"] == mode and record["T"] == 8 and record["images"] == 500
    assert set(record["layers"]) == {s.name for s in snn.spiking_stages if not s.is_output}
    for layer in record["layers"].values():
        assert layer["error_after"] < layer["error_before"]
    hidden = [s for s in calibrated.spiking_stages if not s.is_output]
    if mode == "advanced":  # a potential per neuron, not per layer
        assert all(isinstance(s.neuron.v_init, torch.Tensor) and s.neuron.v_init.numel() > 1 for s in hidden)
    else:
        assert all(not isinstance(s.neuron.v_init, torch.Tensor) for s in hidden)
    assert calibrated.describe()["snn_calibration"]["mode"] == mode


def test_calibration_helps_at_the_steps_it_was_made_for(digits_model, digits):
    model = digits_model[0]
    train_images = digits[0].tensors()[0]
    snn = spikeconv.convert(model, train_images, rule="maxnorm")
    plain = spikeconv.simulate(snn, digits[1], T=4).accuracy_at(4)
    calibrated = spikeconv.simulate(calibrate_snn(snn, train_images, T=4, mode="advanced"), digits[1], T=4).accuracy_at(4)
    assert calibrated > plain + 3  # measured 77.7 -> 90.8 % at T = 4 (max-norm, digits)


def test_calibrated_network_fast_path_equals_the_step_reference():
    model = small_cnn()
    images = grid_images(64)
    snn = spikeconv.convert(model, images, rule="mse", T=8)
    calibrated = exact(calibrate_snn(snn, images, T=8, mode="advanced"))
    for s in calibrated.spiking_stages:  # the per-neuron potentials on the grid too, so sums stay exact
        if isinstance(s.neuron.v_init, torch.Tensor):
            s.neuron = type(s.neuron)(
                threshold=s.neuron.threshold, reset=s.neuron.reset, v_min=s.neuron.v_min,
                v_init=torch.round(s.neuron.v_init * 256) / 256,
            )  # fmt: skip
    fast = spikeconv.simulate(calibrated, images, T=16, record_counts=True)
    reference = spikeconv.simulate(calibrated, images, T=16, record_counts=True, method="reference")
    for name in fast.spike_counts:
        assert torch.equal(fast.spike_counts[name], reference.spike_counts[name])


def test_calibration_of_a_residual_network_puts_the_bias_at_the_synapse_output():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
            self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
            self.fc = nn.Linear(4 * 8 * 8, 3)

        def forward(self, x):
            h = torch.relu(self.conv1(x))
            h = torch.relu(self.conv2(h) + h)
            return self.fc(h.flatten(1))

    torch.manual_seed(0)
    images = random_images(64, dtype=torch.float32)
    snn = spikeconv.convert(Residual().eval(), images, rule="maxnorm")
    calibrated = calibrate_snn(snn, images, T=8)
    assert any(isinstance(m, spikeconv.conversion.graph.ChannelAffine) for m in calibrated.modules())
    for layer in calibrated.info.calibration["layers"].values():
        assert layer["error_after"] <= layer["error_before"]


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"mode": "heavy"}, ValueError, "mode"),
        ({"T": 0}, ValueError, "T"),
        ({"images": torch.zeros(4, 3, 8, 8)}, ValueError, r"\[N, 1, 8, 8\]"),
        ({"images": torch.zeros(0, 1, 8, 8)}, ValueError, "empty"),
        ({"snn": nn.Linear(2, 2)}, TypeError, "SpikingNetwork"),
    ],
)
def test_calibration_refuses_bad_arguments(kwargs, error, message):
    images = random_images(16, dtype=torch.float32)
    snn = spikeconv.convert(small_cnn(dtype=torch.float32), images, rule="maxnorm")
    arguments = {"snn": snn, "images": images, "T": 8, "mode": "light"} | kwargs
    with pytest.raises(error, match=message):
        calibrate_snn(**arguments)


# --- Ding's stage 2 -----------------------------------------------------------------------------


def _stage2_options(stage2_epochs: int = 2) -> TrainOptions:
    return TrainOptions(epochs=2, stage2_epochs=stage2_epochs, activation="ratenorm", ril=0.5, batch_size=64, lr=1e-2)


def test_stage2_trains_only_a_shared_p(digits, tmp_path):
    data = digits[0].subset(400)
    model, record = train("digits", data, None, _stage2_options(), tmp_path / "a.pt", progress=False)
    p = [float(m.p) for m in model.modules() if isinstance(m, RateNorm)]
    assert len(p) == 2 and p[0] == p[1] and p[0] < 0.99  # one p, trained down from 0.99
    assert [entry.get("p") is not None for entry in record["history"]] == [False, False, True, True]
    # stage 1 keeps p = 1; stage 2 leaves the weights as stage 1 left them
    stage1, _ = train("digits", data, None, _stage2_options(1), tmp_path / "b.pt", progress=False)
    weights = [k for k in model.state_dict() if k.endswith("weight")]
    assert weights and all(torch.equal(model.state_dict()[k], stage1.state_dict()[k]) for k in weights)


def test_stage2_resumes_mid_stage_to_the_same_result(digits, tmp_path):
    from spikeconv import training

    data = digits[0].subset(400)
    whole, _ = train("digits", data, None, _stage2_options(), tmp_path / "whole.pt", progress=False)
    calls = {"n": 0}
    original = training.save_torch

    def stop_after_third_epoch(path, payload):
        original(path, payload)
        calls["n"] += 1
        if calls["n"] == 3:  # the first epoch of stage 2
            raise KeyboardInterrupt

    training.save_torch = stop_after_third_epoch
    try:
        with pytest.raises(KeyboardInterrupt):
            train("digits", data, None, _stage2_options(), tmp_path / "part.pt", progress=False)
    finally:
        training.save_torch = original
    assert torch.load(tmp_path / "part.pt", weights_only=False)["epoch"] == 3
    resumed, _ = train("digits", data, None, _stage2_options(), tmp_path / "part.pt", progress=False)
    for key, value in whole.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_stage2_options_are_checked():
    with pytest.raises(ValueError, match="stage2_epochs"):
        TrainOptions(stage2_epochs=2)  # needs ratenorm
    with pytest.raises(ValueError, match="stage2_epochs"):
        TrainOptions(activation="ratenorm", stage2_epochs=-1)
    with pytest.raises(ValueError, match="stage2_lr"):
        TrainOptions(activation="ratenorm", stage2_epochs=1, stage2_lr=0)


# --- synaptic operations ------------------------------------------------------------------------


def test_fanout_of_a_convolution_and_the_anns_multiply_adds():
    model = small_cnn(dtype=torch.float32)
    images = random_images(32, dtype=torch.float32)
    snn = spikeconv.convert(model, images, rule="maxnorm")
    fanouts = synaptic_fanouts(snn)
    stages = snn.spiking_stages
    first = stages[0].synapse[0]
    assert isinstance(first, nn.Conv2d)
    ((consumer, fanout),) = fanouts[-1]
    k = first.kernel_size[0] * first.kernel_size[1]
    assert consumer == 0 and float(fanout.max()) == first.out_channels * k  # an interior pixel
    assert float(fanout.min()) < first.out_channels * k  # corners reach fewer outputs (padding)
    macs = ann_operations(snn)["layers"][stages[0].name]
    assert macs == float(fanout.sum())  # one multiply-add per connection


def test_synaptic_operations_stay_exact_where_float32_sums_would_not():
    # 64 -> 64 channels of 3 x 3 on 32 x 32: 3.7e7 connections, over float32's exact
    # integers (2^24), so these sums are made in float64
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(64 * 32 * 32, 10),
    ).eval()  # fmt: skip
    images = torch.rand(3, 3, 32, 32)
    snn = spikeconv.convert(model, images, rule="maxnorm")
    fanouts = synaptic_fanouts(snn)
    assert float(fanouts[0][0][1].sum()) > 2**24
    result = spikeconv.simulate(snn, images, T=3, record_synops=True, record_counts=True)
    stages = snn.spiking_stages
    for source, pairs in fanouts.items():
        for j, fanout in pairs:
            if source >= 0:
                expected = float((result.spike_counts[stages[source].name].double() * fanout).sum())
                assert result.synops_per_layer[stages[j].name] == expected


def test_synaptic_operations_are_spikes_times_fanout_in_both_simulators():
    model = small_cnn(dtype=torch.float32)
    images = grid_images(40, dtype=torch.float32)
    snn = exact(spikeconv.convert(model, images, rule="maxnorm"))
    fanouts = synaptic_fanouts(snn)
    stages = snn.spiking_stages
    for coding in ("constant", "poisson"):
        fast = spikeconv.simulate(snn, images, T=12, coding=coding, record_synops=True, record_counts=True)
        reference = spikeconv.simulate(snn, images, T=12, coding=coding, record_synops=True, method="reference")
        assert fast.synops_per_layer == reference.synops_per_layer
        assert torch.equal(fast.synops_per_step, reference.synops_per_step)
        assert fast.synops_total == pytest.approx(float(fast.synops_per_image.sum()))
        assert fast.synops_total == pytest.approx(sum(fast.synops_per_layer.values()))
        expected = {s.name: 0.0 for s in stages if s.gate is None}
        for source, pairs in fanouts.items():
            for j, fanout in pairs:
                if source >= 0:
                    expected[stages[j].name] += float((fast.spike_counts[stages[source].name].double() * fanout).sum())
                elif coding == "constant":
                    expected[stages[j].name] += 12 * float(((images != 0).double() * fanout).sum())
        for name, value in expected.items():
            if coding == "constant" or name != stages[0].name:  # Poisson input: its spikes are not kept
                assert fast.synops_per_layer[name] == value  # integer sums: exact in any order


def test_cost_to_reach_sums_spikes_and_operations_up_to_that_step(digits_model, digits):
    snn = spikeconv.convert(digits_model[0], digits[0].tensors()[0], rule="maxnorm")
    result = spikeconv.simulate(snn, digits[1], T=32, record_synops=True)
    cost = result.cost_to_reach(90.0)
    t = result.steps_to_reach(90.0)
    assert cost["step"] == t
    assert cost["spikes_per_image"] == pytest.approx(float(result.spikes_per_step[:t].sum()) / result.num_images)
    assert cost["synops_per_image"] == pytest.approx(float(result.synops_per_step[:t].sum()) / result.num_images)
    assert result.cost_to_reach(100.1) is None
    plain = spikeconv.simulate(snn, digits[1], T=4)
    assert "synops_per_image" not in plain.cost_to_reach(0.0)
    with pytest.raises(ValueError, match="record_synops"):
        _ = plain.synops_total
    summary = result.to_dict(steps=[32])
    assert summary["synops_per_image"] == pytest.approx(result.synops_total / result.num_images)
    assert math.isfinite(summary["synops_per_layer_per_image"][snn.spiking_stages[0].name])


def test_fit_curves_and_log_scale_accuracy_plots_are_written(tmp_path):
    from spikeconv.metrics import fit_curve
    from spikeconv.plotting import plot_accuracy, plot_fit_curves

    images = random_images(8, dtype=torch.float32)
    snn = spikeconv.convert(small_cnn(dtype=torch.float32), images, rule="maxnorm")
    curves = fit_curve(snn, images, T=16)
    plot_fit_curves({"max-norm": curves, "again": curves}, tmp_path / "k.png", title="K")
    plot_accuracy({"a": torch.linspace(10, 90, 16)}, tmp_path / "a.png", log_steps=True, ann_accuracy=91.0)
    assert (tmp_path / "k.png").stat().st_size > 1000 and (tmp_path / "a.png").stat().st_size > 1000
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the format from the suffix
    plot_accuracy({"a": torch.linspace(10, 90, 16)}, tmp_path / "a.pdf")
    assert (tmp_path / "a.pdf").read_bytes()[:5] == b"%PDF-"
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.png").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_an_unused_stage2_learning_rate_does_not_block_resuming(digits, tmp_path):
    data = digits[0].subset(200)
    first, _ = train("digits", data, None, TrainOptions(epochs=1, stage2_lr=0.5), tmp_path / "m.pt", progress=False)
    again, _ = train("digits", data, None, TrainOptions(epochs=1), tmp_path / "m.pt", progress=False)  # loads
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))
    with pytest.raises(ValueError, match="was written for"):  # with stage 2 it shapes the weights
        options = TrainOptions(epochs=1, activation="ratenorm", stage2_epochs=1)
        train("digits", data, None, options, tmp_path / "m.pt", progress=False)


def test_a_max_pool_after_a_rate_norm_layer_gates_its_spikes():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), RateNorm(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 3)
    ).double()
    images = random_images(16)
    model.train()(images)  # running maximum
    model.eval()
    snn = spikeconv.convert(model, images, rule="maxnorm")
    assert [s.gate is not None for s in snn.spiking_stages] == [False, True, False]
    with torch.no_grad():  # the SNN's ideal output is the ANN's, in units of the output layer's scale
        scale = snn.info.mapping.layers[-1].scale
        assert torch.allclose(snn.analog_forward(images)[-1] * scale, model(images))
