from __future__ import annotations

import json

import pytest
import torch
from conftest import random_images, small_cnn

import spikeconv
from spikeconv.cli import main
from spikeconv.conversion.rules import map_scales, smallest_unsaturated_n
from spikeconv.experiments import yang
from spikeconv.io.data import ImageDataset


def _setup(n_images=40):
    model = small_cnn()
    traced = spikeconv.trace(model, (1, 8, 8))
    stats = spikeconv.calibrate(traced, random_images(200))
    images = random_images(n_images, seed=11)
    labels = model(images).argmax(1)  # the ANN's own answers: the SNN should approach 100 %
    test = ImageDataset(images=images, labels=labels, name="random", classes=tuple("abcde"))
    return model, traced, stats, test


def test_with_the_ceiling_n_acts_only_through_ceil_of_n_times_first_max():
    _, traced, stats, _ = _setup()
    a1 = stats.layers[0].max
    for n in (0.2, 0.5, 0.9):
        mapping = map_scales(traced, stats, "nscaling", n=n)
        for layer, lstats in zip(mapping.layers, stats.layers):
            expected = lstats.max * torch.tensor(n * a1).ceil().item() / a1
            assert layer.scale == pytest.approx(expected)


def test_auto_n_is_the_smallest_n_keeping_90_percent_unsaturated():
    _, traced, stats, _ = _setup()
    n = smallest_unsaturated_n(traced, stats)
    mapping = map_scales(traced, stats, "nscaling", n="auto")
    assert mapping.options["n"] == n and "auto" in mapping.options["n_chosen_by"]
    assert all(layer.unsaturated >= 0.9 for layer in mapping.layers)
    if n > 0.01:
        below = map_scales(traced, stats, "nscaling", n=round(n - 0.01, 2))
        assert any(layer.unsaturated < 0.9 for layer in below.layers)


def test_sweep_n_records_each_point_and_resumes(tmp_path):
    _, traced, stats, test = _setup()
    saved = []
    record = yang.sweep_n(traced, stats, test, ns=(0.3, 1.0), T=30, coding="constant", save=saved.append)
    assert set(record["points"]) == {"0.3", "1"} and len(saved) == 2
    low, high = record["points"]["0.3"], record["points"]["1"]
    assert low["spikes_per_image"] > high["spikes_per_image"]  # smaller n fires more
    assert len(low["accuracy_curve"]) == 30
    again = yang.sweep_n(traced, stats, test, ns=(0.3, 1.0), T=30, coding="constant", done=record, save=saved.append)
    assert again["points"] == record["points"] and len(saved) == 2  # nothing recomputed


def test_approximation_error_is_the_mean_rate_gap_of_the_output_layer():
    _, traced, stats, test = _setup()
    snn = spikeconv.build_snn(traced, stats, "nscaling", reset="subtract")
    result = spikeconv.simulate(snn, test, T=50)
    ideal = snn.analog_forward(test.tensors()[0])[-1].clamp_min(0)
    expected = float((ideal - result.output_counts / 50).abs().mean())
    assert yang.approximation_error(snn, test, result) == pytest.approx(expected)
    longer = spikeconv.simulate(snn, test, T=400)
    assert yang.approximation_error(snn, test, longer) < yang.approximation_error(snn, test, result)


def test_noise_robustness_uses_the_same_noise_for_ann_and_snn_and_reports_spread():
    model, traced, stats, test = _setup(20)
    snn = spikeconv.build_snn(traced, stats, "maxnorm", reset="subtract")
    record = yang.noise_robustness(model, snn, test, T=20, coding="constant", repeats=2, snr_db=(20,), densities=(0.1,))
    entry = record["awgn"]["20"]
    assert len(entry["ann"]) == 2 and entry["ann_range"][0] <= entry["ann_mean"] <= entry["ann_range"][1]
    assert entry["delta_accuracy"] == pytest.approx(entry["ann_mean"] - entry["snn_mean"])
    assert set(record["salt_and_pepper"]) == {"0.1"}


def test_spike_comparison_counts_spikes_up_to_the_target():
    _, traced, stats, test = _setup()
    record = yang.spike_comparison(traced, stats, test, T=40, coding="constant")
    for label in ("maxnorm", "nscaling"):
        entry = record[label]
        if entry["steps_to_target"] is not None:
            assert entry["spikes_to_target"] <= entry["spikes_at_T"]
    assert record["spikes_ratio_at_T"] == pytest.approx(record["nscaling"]["spikes_at_T"] / record["maxnorm"]["spikes_at_T"])


def test_cli_experiment_writes_json_markdown_png_and_refuses_mismatched_resume(tmp_path, digits_model, capsys):
    _, _, model_path = digits_model
    args = ["experiment", "fixed-point", "--model", str(model_path), "--out-dir", str(tmp_path), "-T", "20",
            "--test-size", "60", "--widths", "6,16", "--quiet"]  # fmt: skip
    assert main(args) == 0
    record = json.loads((tmp_path / "fixed-point.json").read_text())["result"]
    assert set(record["widths"]) == {"6", "16"} and "accuracy" in record["float"]
    assert (tmp_path / "fixed-point.png").stat().st_size > 5000
    assert "| 16 |" in (tmp_path / "fixed-point.md").read_text()
    capsys.readouterr()
    assert main([a if a != "20" else "30" for a in args]) == 2
    assert "another model, data or settings (T: 20 then, 30 now)" in capsys.readouterr().err
    assert main(["experiment", "stats", "--model", str(model_path), "--out-dir", str(tmp_path), "--quiet"]) == 0
    stats = json.loads((tmp_path / "stats.json").read_text())["result"]
    assert stats["layers"][0]["unsaturated_after_ceil"] >= stats["layers"][0]["unsaturated_before_ceil"]


def test_cli_experiment_reads_a_converted_network_file(tmp_path, digits_model, capsys):
    """`convert` writes the file, `evaluate` and `experiment --snn` read it: the fixed-point
    experiment then runs on that network (here max-norm with reset by subtraction), not on
    its own n-scaling conversion, and the ANN and dataset come from the file."""
    _, _, model_path = digits_model
    snn_path = tmp_path / "maxnorm.snn.pt"
    assert main(["convert", "--model", str(model_path), "--rule", "maxnorm", "--calibration-size", "300",
                 "--out", str(snn_path), "--quiet"]) == 0  # fmt: skip
    assert main(["evaluate", "--snn", str(snn_path), "-T", "10", "--test-size", "40", "--quiet"]) == 0
    common = ["--out-dir", str(tmp_path / "a"), "-T", "20", "--test-size", "60", "--widths", "16", "--quiet"]
    assert main(["experiment", "fixed-point", "--snn", str(snn_path), *common]) == 0
    from_file = json.loads((tmp_path / "a" / "fixed-point.json").read_text())
    assert from_file["settings"]["snn"] and from_file["settings"]["dataset"] == "digits"
    common[1] = str(tmp_path / "b")
    assert main(["experiment", "fixed-point", "--model", str(model_path), *common]) == 0
    own = json.loads((tmp_path / "b" / "fixed-point.json").read_text())
    assert from_file["result"]["float"]["accuracy"] != own["result"]["float"]["accuracy"]  # another network
    capsys.readouterr()
    assert main(["experiment", "stats", "--snn", str(snn_path), *common]) == 2
    assert "--snn applies to the fixed-point and noise experiments" in capsys.readouterr().err
    assert main(["experiment", "noise", *common]) == 2
    assert "pass --model" in capsys.readouterr().err


def test_noise_with_poisson_input_clips_like_a_bernoulli_draw_of_the_noisy_value():
    """AWGN pushes pixels outside [0, 1]; Poisson coding refuses such input, so the noise
    experiment clips it: the same spikes as u < x for the unclipped x (never below 0,
    always above 1), and the experiment runs with its default, Poisson, input."""
    from spikeconv.noise import awgn
    from spikeconv.sim.encoders import encode

    model, traced, stats, test = _setup(20)
    images = test.tensors()[0].double()
    noisy = awgn(images, 10.0, torch.Generator().manual_seed(0))
    assert float(noisy.min()) < 0 and float(noisy.max()) > 1
    clipped = yang.spike_input(noisy, "poisson")
    draws = encode(clipped, "poisson", 0, 5, torch.Generator().manual_seed(1))
    u = torch.stack([torch.rand(noisy.shape, generator=g, dtype=noisy.dtype) for g in [torch.Generator().manual_seed(1)] for _ in range(5)])
    assert torch.equal(draws, (u < noisy).to(draws.dtype))
    assert torch.equal(yang.spike_input(noisy, "constant"), noisy)
    snn = spikeconv.build_snn(traced, stats, "maxnorm", reset="zero")
    record = yang.noise_robustness(model, snn, test, T=10, coding="poisson", repeats=1, snr_db=(10,), densities=(0.1,))
    assert 0 <= record["awgn"]["10"]["snn_mean"] <= 100
