"""Conversion-aware activations (issue 16): the activations themselves, their conversion to
IF neurons with the clip value as threshold, the initial membrane potential, and the theory
they rest on (QCFS exactness at T = L, Ding's Theorem 2)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import exact, grid_images, round_parameters
from torch import nn

import spikeconv
from spikeconv.conversion.activations import (
    QCFS,
    RateNorm,
    ThresholdReLU,
    rate_inference_loss,
    rate_norm_outputs,
    replace_relus,
)
from spikeconv.metrics import fit_curve


def _net(make=None, dtype=torch.float64) -> nn.Module:
    """conv-act-pool-conv-act-flatten-linear on 1x8x8, weights on the 2^-8 grid."""
    torch.manual_seed(4)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(96, 5),
    )  # fmt: skip
    round_parameters(model)
    if make is not None:
        model = replace_relus(model, make)
    return model.to(dtype).eval()


def test_threshold_relu_clips_trains_its_threshold_and_shifts_only_in_training():
    act = ThresholdReLU(2.0, trainable=True, shift_steps=4)
    x = torch.tensor([-1.0, 0.5, 1.5, 3.0])
    assert act.eval()(x).tolist() == [0.0, 0.5, 1.5, 2.0]
    y = act.train()(x)
    assert y.tolist() == [0.0, 0.25, 1.25, 2.0]  # clip(x - theta / (2T), 0, theta)
    y.sum().backward()
    assert act.theta.grad is not None and float(act.theta.grad) > 0  # the clipped input pulls theta up
    assert act.clip_value() == 2.0 and ThresholdReLU(1.0).theta.requires_grad is False
    with pytest.raises(ValueError, match="theta must be a positive number"):
        ThresholdReLU(0.0)
    with pytest.raises(ValueError, match="shift_steps must be a positive number"):
        ThresholdReLU(1.0, shift_steps=0)


def test_qcfs_quantizes_with_floor_and_shift_and_its_gradient_goes_straight_through():
    act = QCFS(levels=4, threshold=2.0)  # steps of lambda / L = 0.5, rounding to nearest
    x = torch.tensor([-1.0, 0.2, 0.26, 0.74, 0.76, 1.9, 5.0], requires_grad=True)
    y = act(x)
    assert y.tolist() == [0.0, 0.0, 0.5, 0.5, 1.0, 2.0, 2.0]
    y.sum().backward()
    # d/dx: 1 where floor(x L / lambda + 1/2) lies in [0, L] (the clamp passes it), 0 beyond
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    assert act.threshold.grad is not None and float(act.threshold.grad) != 0.0
    with pytest.raises(ValueError, match="levels"):
        QCFS(levels=0)


def test_rate_norm_keeps_a_running_max_and_outputs_rates_in_0_1():
    act = RateNorm(p_init=0.5)
    assert float(act.p.detach()) == pytest.approx(0.5)
    x = torch.tensor([[0.0, 3.0, 6.0]], requires_grad=True)
    y = act.train()(x)
    assert float(act.running_max) == pytest.approx(0.9 * 1.0 + 0.1 * 6.0)  # momentum 0.1 from 1
    assert y.tolist()[0] == pytest.approx([0.0, 1.0, 1.0])  # training: theta = p * the batch's max = 3
    y.sum().backward()
    assert float(x.grad[0, 2]) != 0  # the gradient flows through the batch maximum, as through BatchNorm's statistics
    x = x.detach()
    act.eval()
    before = float(act.running_max)
    y = act(x)
    assert float(act.running_max) == before  # no update in eval mode
    theta = 0.5 * before
    assert y.tolist()[0] == pytest.approx([0.0, 1.0, 1.0]) and act.clip_value() == pytest.approx(theta)
    y = act(torch.tensor([[theta / 2]]))
    assert float(y.detach()) == pytest.approx(0.5)
    assert float(RateNorm().p.detach()) == pytest.approx(1.0, abs=1e-8)  # Ding's stage 1: p = 1


def test_rate_inference_loss_is_l1_over_squared_l2():
    rates = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])
    assert rate_inference_loss(rates).tolist() == [1.0, 2.0]


def test_replace_relus_swaps_modules_and_functional_calls_and_keeps_parameter_names():
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.fc = nn.Conv2d(1, 2, 3), nn.Linear(72, 3)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).flatten(1).relu())

    model = _net()
    replaced = replace_relus(model, lambda: QCFS(4, 1.0))
    assert [type(m).__name__ for m in replaced] [1::3] == ["QCFS", "QCFS"]
    assert isinstance(model[1], nn.ReLU)  # the original is unchanged
    assert set(model.state_dict()) <= set(replaced.state_dict())
    functional = Functional()
    swapped = replace_relus(functional, lambda: ThresholdReLU(0.5))
    assert sum(isinstance(m, ThresholdReLU) for m in swapped.modules()) == 2
    x = torch.rand(3, 1, 8, 8)
    expected = functional.fc(functional.conv(x).clamp(0, 0.5).flatten(1).clamp(0, 0.5))
    torch.testing.assert_close(swapped(x), expected)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        replace_relus("model", nn.ReLU)


def test_conversion_takes_the_clip_values_as_scales_and_qcfs_starts_at_half_the_threshold():
    x = grid_images(20)
    model = _net(lambda: QCFS(4, 2.0))
    snn = spikeconv.convert(model, x, rule="maxnorm")  # reset by subtraction, initial_potential="auto"
    layers = snn.info.mapping.layers
    assert [l.scale for l in layers[:2]] == [2.0, 2.0]  # the clip values, not the statistics
    assert [s.neuron.v_init for s in snn.spiking_stages] == [0.5, 0.5, 0.0]  # the output layer starts at 0
    balanced = spikeconv.convert(model, x, rule="threshold")
    assert [s.neuron.threshold for s in balanced.spiking_stages[:2]] == [2.0, 1.0]
    assert [s.neuron.v_init for s in balanced.spiking_stages[:2]] == [1.0, 0.5]  # half of each threshold
    zero = spikeconv.convert(model, x, rule="maxnorm", initial_potential=0.0)
    assert all(s.neuron.v_init == 0.0 for s in zero.spiking_stages)
    for bad in (1.0, -0.1, "half"):
        with pytest.raises(ValueError, match="initial_potential must be 'auto' or a fraction"):
            spikeconv.convert(model, x, initial_potential=bad)
    # a layer that never fires on the calibration data needs no statistics: it has its clip value
    dead = _net(lambda: QCFS(4, 2.0))
    with torch.no_grad():
        dead[3].bias.fill_(-100.0)
    assert spikeconv.convert(dead, x, rule="maxnorm").info.mapping.layers[1].scale == 2.0


def test_threshold_relu_starts_at_half_its_threshold_unless_trained_with_the_shift():
    """``initial_potential="auto"``: theta/2 rounds T x / theta as QCFS does; the shift
    (Deng & Gu) trains for the floor of a neuron starting empty, so it keeps 0."""
    x = grid_images(20)
    plain = spikeconv.convert(_net(lambda: ThresholdReLU(2.0)), x, rule="maxnorm")
    assert [s.neuron.v_init for s in plain.spiking_stages] == [0.5, 0.5, 0.0]
    shifted = spikeconv.convert(_net(lambda: ThresholdReLU(2.0, shift_steps=8)), x, rule="maxnorm")
    assert [s.neuron.v_init for s in shifted.spiking_stages] == [0.0, 0.0, 0.0]
    # constant input (weights and images on the 2^-8 grid, theta = 2: exact sums): the
    # unshifted first layer fires clamp(floor(T z / theta + 1/2), 0, T) times, the shifted floor(T z / theta)
    model = _net(lambda: ThresholdReLU(2.0))
    z = model[0](x).detach()
    T = 16
    for snn, offset in ((plain, 0.5), (shifted, 0.0)):
        counts = spikeconv.simulate(snn, x, T=T, coding="constant", record_counts=True).spike_counts
        expected = torch.clamp(torch.floor(T * z / 2.0 + offset), 0, T)
        assert torch.equal(counts[snn.spiking_stages[0].name].double(), expected)
        assert 0 < float(expected.sum()) < T * expected.numel()


def test_the_clipped_analog_forward_reproduces_a_clip_activation_net():
    """``analog_forward(clip=True)`` is the threshold-ReLU ANN (up to the output scale);
    without ``clip`` the hidden rates above 1 pass on unclipped."""
    x = grid_images(20)
    model = _net(lambda: ThresholdReLU(0.25))  # a low clip: many activations are clipped
    snn = spikeconv.convert(model, x, rule="maxnorm")
    scale = snn.info.mapping.layers[-1].scale
    torch.testing.assert_close(snn.analog_forward(x, clip=True)[-1] * scale, model(x))
    assert not torch.allclose(snn.analog_forward(x)[-1] * scale, model(x))


def test_rate_norm_converts_to_its_threshold_and_the_division_moves_to_the_next_layer():
    model = _net(lambda: RateNorm(p_init=0.5))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, RateNorm):
                m.running_max.fill_(0.5)
    x = grid_images(20)
    snn = spikeconv.convert(model, x, rule="maxnorm")
    assert [l.scale for l in snn.info.mapping.layers[:2]] == pytest.approx([0.25, 0.25])
    long = spikeconv.simulate(snn, x, T=2000, record_counts=True)
    out = model(x).detach()
    rates = long.output_counts.double() / 2000 * snn.info.mapping.layers[-1].scale
    clipped = out.clamp(0, snn.info.mapping.layers[-1].scale)
    assert float((rates - clipped).abs().max()) < 0.02 * float(clipped.abs().max())


@pytest.mark.parametrize("T", [4, 7])
def test_qcfs_first_layer_spike_count_equals_the_activation_exactly(T):
    """Constant input, initial potential lambda / 2, reset by subtraction: after T steps the
    first layer has fired clamp(floor(T z / lambda + 1/2), 0, T) times, which at T = L is
    exactly the QCFS activation times L / lambda (Bu et al.). Weights and images on the
    2^-8 grid and lambda = 2: the sums are exact, so the equality must hold bit for bit."""
    levels, lam = 4, 2.0
    model = _net(lambda: QCFS(levels, lam))
    x = grid_images(30, seed=3)
    snn = spikeconv.convert(model, x, rule="maxnorm")
    counts = spikeconv.simulate(snn, x, T=T, coding="constant", record_counts=True).spike_counts
    z = model[0](x).detach()  # the first layer's input
    expected = torch.clamp(torch.floor(T * z / lam + 0.5), 0, T)
    assert torch.equal(counts[snn.spiking_stages[0].name].double(), expected)
    if T == levels:
        assert torch.equal(expected, model[1](z) * levels / lam)
    assert 0 < float(expected.sum()) < T * expected.numel()  # neither silent nor saturated


@pytest.mark.parametrize("coding", ["constant", "poisson"])
def test_fast_path_equals_the_reference_with_initial_potentials(coding):
    snn = exact(spikeconv.convert(_net(lambda: QCFS(4, 2.0)), grid_images(20), rule="maxnorm"))
    x = grid_images(12, seed=5)
    kwargs = {"T": 20, "coding": coding, "seed": 1, "record_trains": True}
    fast = spikeconv.simulate(snn, x, **kwargs)
    reference = spikeconv.simulate(snn, x, method="reference", **kwargs)
    for name in fast.spike_trains:
        assert torch.equal(fast.spike_trains[name], reference.spike_trains[name]), name
    snn.reset_state()
    out = snn(x.unsqueeze(0).expand(20, *x.shape)) if coding == "constant" else None
    if out is not None:
        assert torch.equal(out, fast.spike_trains[snn.spiking_stages[-1].name])
    assert fast.spikes_per_image.sum() > 0


def test_ding_theorem_2_bounds_the_first_layers_fit_curve():
    """K_1(t) < 2 Omega_1 / t for the first layer under constant input (Ding Theorem 2)."""
    model = _net(lambda: ThresholdReLU(1.0))
    x = grid_images(10, seed=2)
    snn = spikeconv.convert(model, x, rule="maxnorm", initial_potential=0.0)  # Ding's neurons start empty
    T = 50
    curves = fit_curve(snn, x, T=T)
    first = snn.spiking_stages[0].name
    r_hat = snn.analog_forward(x)[0].clamp(0, 1).flatten().unsqueeze(0)
    omega = float(rate_inference_loss(r_hat))
    t = torch.arange(1, T + 1, dtype=torch.float64)
    assert torch.all(curves[first] < 2 * omega / t)
    assert float(curves[first][-1]) < float(curves[first][0])  # the fit improves over time
    assert set(curves) == {s.name for s in snn.spiking_stages}


def test_the_fit_curve_of_a_clip_activation_net_measures_against_its_clipped_ann():
    """With a quarter of the first layer's inputs above theta, the second layer's r_hat must
    come from the clipped first layer (the ANN's): the SNN converges to it, not to the
    unclipped propagation."""
    model = _net(lambda: ThresholdReLU(0.5))
    x = grid_images(10, seed=2)
    snn = spikeconv.convert(model, x, rule="maxnorm", initial_potential=0.5)
    assert float((snn.analog_forward(x)[0] > 1).double().mean()) > 0.2
    plain, clipped = fit_curve(snn, x, T=256), fit_curve(snn, x, T=256, clip=True)
    first, second = (s.name for s in snn.spiking_stages[:2])
    assert torch.equal(plain[first], clipped[first])  # the first layer reads the input either way
    assert float(clipped[second][-1]) < 1e-3
    assert float(plain[second][-1]) > 1e-2


def test_a_trained_qcfs_digits_net_matches_its_ann_within_a_point_at_8_steps(digits):
    """Low latency in practice: QCFS (L = 4) on the 8x8 digits, 30 epochs (a few seconds)."""
    from spikeconv.models import build_model
    from spikeconv.training import evaluate_ann

    train_set, test_set = digits
    torch.manual_seed(0)
    model = replace_relus(build_model("digits"), lambda: QCFS(4, 4.0))
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(30):
        for x, y in train_set.batches(32, shuffle=True, generator=generator):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    model.eval()
    ann = evaluate_ann(model, test_set)
    snn = spikeconv.convert(model, train_set.tensors()[0], rule="maxnorm")
    result = spikeconv.simulate(snn, test_set, T=8)
    assert ann > 97.0 and result.accuracy_at(8) >= ann - 1.0, (ann, result.accuracy_curve().tolist())
    plain = spikeconv.convert(model, train_set.tensors()[0], rule="maxnorm", initial_potential=0.0)
    assert spikeconv.simulate(plain, test_set, T=2).accuracy_at(2) < result.accuracy_at(2)  # theta/2 helps early


def test_cli_trains_an_activation_and_the_checkpoint_rebuilds_it(tmp_path, capsys):
    from spikeconv.cli import main
    from spikeconv.training import load_model

    out, snn_path = tmp_path / "q.pt", tmp_path / "qs.pt"
    train = ["train", "--model", "digits", "--epochs", "3", "--batch-size", "32", "--lr", "1e-2", "--quiet"]
    assert main([*train, "--activation", "qcfs", "--levels", "4", "--theta", "4", "--out", str(out)]) == 0
    model, record = load_model(out)
    assert record["options"]["activation"] == "qcfs"
    assert sum(isinstance(m, QCFS) and m.levels == 4 for m in model.modules()) == 2
    assert main(["convert", "--model", str(out), "--rule", "maxnorm", "--calibration-size", "300", "--quiet",
                 "--out", str(snn_path)]) == 0  # fmt: skip
    snn = spikeconv.load(snn_path)
    assert [s.neuron.v_init for s in snn.spiking_stages] == [0.5, 0.5, 0.0]
    assert main(["evaluate", "--snn", str(snn_path), "-T", "8", "--test-size", "50", "--quiet"]) == 0
    assert "ANN" in capsys.readouterr().out  # the ANN was rebuilt with its QCFS layers
    for bad, message in ((["--theta", "2"], "not of relu"), (["--activation", "qcfs", "--ril", "1"], "needs activation 'ratenorm'")):
        assert main([*train, *bad, "--out", str(tmp_path / "x.pt")]) == 2
        assert message in capsys.readouterr().err


def test_rate_inference_loss_in_training_lowers_omega(digits, tmp_path):
    """Ding eq. 9: the same RateNorm digits net trained with lambda = 1 ends with a smaller
    mean Omega of its Rate Norm Layers than with lambda = 0."""
    from spikeconv.training import TrainOptions, train

    train_set, _ = digits
    x = train_set.tensors()[0][:300]
    omegas = {}
    for ril in (0.0, 1.0):
        options = TrainOptions(epochs=4, batch_size=32, lr=1e-2, activation="ratenorm", ril=ril)
        model, _ = train("digits", train_set, None, options, tmp_path / f"r{ril}.pt", progress=False)
        with torch.no_grad(), rate_norm_outputs(model) as rates:
            model(x)
        assert len(rates) == 2
        omegas[ril] = float(torch.stack([rate_inference_loss(r).mean() for r in rates]).mean())
    assert omegas[1.0] < omegas[0.0], omegas
