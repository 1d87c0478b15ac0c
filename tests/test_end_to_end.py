from __future__ import annotations

import json

import pytest

import spikeconv
from spikeconv.cli import main
from spikeconv.training import evaluate_ann


@pytest.mark.parametrize(
    "rule, reset",
    [("nscaling", "subtract"), ("maxnorm", "zero"), ("maxnorm", "subtract")],
)
def test_snn_is_within_one_percent_of_the_ann_at_T_200(digits, digits_model, rule, reset):
    train_set, test_set = digits
    model, _, _ = digits_model
    ann = evaluate_ann(model, test_set)
    assert ann > 96.0
    snn = spikeconv.convert(model, train_set.tensors()[0], rule=rule, reset=reset)
    result = spikeconv.simulate(snn, test_set, T=200, coding="constant")
    assert abs(result.final_accuracy - ann) <= 1.0
    assert result.accuracy_at(5) < result.final_accuracy + 5  # the curve starts lower or level


def test_cli_train_convert_evaluate(tmp_path, digits_model, capsys):
    _, _, model_path = digits_model
    snn_paths = []
    for rule in ("maxnorm", "nscaling"):
        out = tmp_path / f"{rule}.pt"
        assert main(["convert", "--model", str(model_path), "--rule", rule, "--calibration-size", "500", "--out", str(out)]) == 0
        snn_paths.append(str(out))
    printed = capsys.readouterr().out
    assert "V_min =" in printed and "membrane integer bits N" in printed and "unsaturated" in printed
    results, plot = tmp_path / "results.json", tmp_path / "acc.png"
    code = main(
        ["evaluate", "--snn", *snn_paths, "-T", "50", "--quiet", "--test-size", "100", "--out", str(results), "--plot", str(plot)]
    )
    assert code == 0
    record = json.loads(results.read_text())
    assert set(record["networks"]) == {"maxnorm", "nscaling"}
    entry = record["networks"]["nscaling"]
    assert entry["images"] == 100 and len(entry["accuracy"]) == 50
    assert entry["conversion_loss"] == pytest.approx(entry["ann_accuracy"] - entry["final_accuracy"])
    assert entry["mapping"]["rule"] == "nscaling"
    assert set(entry["rate_correlation"]) == {"0", "3", "7"}
    assert all(-1 <= v["correlation"] <= 1 for v in entry["rate_correlation"].values())
    assert plot.stat().st_size > 10_000 and plot.read_bytes()[:4] == b"\x89PNG"


def test_cli_train_writes_a_resumable_checkpoint(tmp_path, capsys):
    out = tmp_path / "m.pt"
    assert main(["train", "--model", "digits", "--epochs", "1", "--quiet", "--out", str(out)]) == 0
    assert "test accuracy" in capsys.readouterr().out
    assert main(["train", "--model", "digits", "--epochs", "1", "--quiet", "--out", str(out)]) == 0  # already done


def test_cli_demo_writes_table_json_and_plot(tmp_path, capsys):
    assert main(["demo", "--out-dir", str(tmp_path), "--epochs", "3", "-T", "30", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "| maxnorm |" in printed and "| nscaling (n=0.5) |" in printed
    record = json.loads((tmp_path / "demo.json").read_text())
    assert set(record["rules"]) == {"maxnorm", "nscaling (n=0.5)"}
    assert (tmp_path / "accuracy.png").stat().st_size > 10_000


def test_cli_errors_are_one_clear_line(tmp_path, capsys):
    assert main(["train", "--model", "yang-mnist", "--data-root", str(tmp_path), "--out", str(tmp_path / "x.pt")]) == 2
    error = capsys.readouterr().err
    assert "MNIST train files not found" in error and "--data-root" in error
    assert main(["convert", "--model", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "s.pt")]) == 2
    assert "model file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", "--model", "m.pt", "--rule", "nope", "--out", "s.pt"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", "--snn", "a.pt", "-T", "0"])
    assert "must be a positive integer" in capsys.readouterr().err
