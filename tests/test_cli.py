"""The command line: every error one line with exit code 2, defaults shown, resumption
keyed on content, files written with the user's permissions, no progress bars in logs."""

from __future__ import annotations

import gzip
import json
import os
import struct

import numpy as np
import pytest
import torch
from PIL import Image

import spikeconv
from spikeconv.cli import build_parser, main
from spikeconv.io import write_json
from spikeconv.training import load_model, save_model


@pytest.fixture(scope="module")
def snn_path(digits_model, tmp_path_factory):
    _, _, model_path = digits_model
    out = tmp_path_factory.mktemp("snn") / "maxnorm.pt"
    assert main(["convert", "--model", str(model_path), "--rule", "maxnorm", "--calibration-size", "300",
                 "--quiet", "--out", str(out)]) == 0  # fmt: skip
    return out


def _one_line_error(capsys, code: int) -> str:
    captured = capsys.readouterr()
    assert code == 2, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


def test_evaluate_on_a_dataset_that_does_not_fit_the_network_is_one_line(tmp_path, snn_path, capsys):
    for k in range(2):  # a CIFAR-10-like folder of 3x32x32 images
        folder = tmp_path / "cifar10-jpeg" / "test" / f"class{k}"
        folder.mkdir(parents=True)
        Image.fromarray(np.full((32, 32, 3), 40 * k, dtype=np.uint8)).save(folder / "a.png")
    code = main(["evaluate", "--snn", str(snn_path), "--dataset", "cifar10", "--data-root", str(tmp_path), "-T", "5"])
    line = _one_line_error(capsys, code)
    assert "dataset 'cifar10' has test images of shape (3, 32, 32), but the model takes (1, 8, 8)" in line
    assert "--dataset" in line


def _fake_mnist(root, images: bytes | None = None) -> None:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    array = np.zeros((4, 28, 28), dtype=np.uint8)
    data = bytes([0, 0, 8, 3]) + struct.pack(">3I", 4, 28, 28) + array.tobytes()
    labels = bytes([0, 0, 8, 1]) + struct.pack(">I", 4) + bytes(4)
    for prefix in ("train", "t10k"):
        with gzip.open(raw / f"{prefix}-images-idx3-ubyte.gz", "wb") as handle:
            handle.write(images if images is not None else data)
        with gzip.open(raw / f"{prefix}-labels-idx1-ubyte.gz", "wb") as handle:
            handle.write(labels)


@pytest.mark.parametrize("content", [bytes([0, 0, 8, 3, 0, 0]), bytes([0, 0, 8, 3]) + struct.pack(">3I", 4, 28, 28) + bytes(100)])
def test_a_truncated_idx_file_is_one_line_naming_the_file(tmp_path, capsys, content):
    _fake_mnist(tmp_path, content)
    code = main(["train", "--model", "yang-mnist", "--data-root", str(tmp_path), "--epochs", "1", "--out", str(tmp_path / "m.pt")])
    line = _one_line_error(capsys, code)
    assert "train-images-idx3-ubyte.gz" in line and "truncated" in line


def test_a_cut_off_gzip_file_is_one_line(tmp_path, capsys):
    _fake_mnist(tmp_path)
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:30])
    code = main(["train", "--model", "yang-mnist", "--data-root", str(tmp_path), "--epochs", "1", "--out", str(tmp_path / "m.pt")])
    assert "not a complete gzip file" in _one_line_error(capsys, code)


def test_files_are_written_with_the_users_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        os.umask(0o077)
        write_json(tmp_path / "b.json", {"x": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o600


def test_help_shows_the_defaults_and_each_commands_coding():
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    convert = " ".join(sub["convert"].format_help().split())
    assert "(default: subtract)" in convert and "(default: nscaling)" in convert and "(default: 5000)" in convert
    evaluate = " ".join(sub["evaluate"].format_help().split())
    assert "(default: constant)" in evaluate and "(default: 100)" in evaluate
    assert "(default: poisson)" in " ".join(sub["experiment"].format_help().split())
    assert "(default: constant)" in " ".join(sub["demo"].format_help().split())


def test_convert_with_n_auto_prints_the_n_it_chose(digits_model, tmp_path, capsys):
    _, _, model_path = digits_model
    assert main(["convert", "--model", str(model_path), "--n", "auto", "--calibration-size", "300", "--quiet",
                 "--out", str(tmp_path / "s.pt")]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "n = 0." in printed or "n = 1 " in printed
    assert "smallest n with >= 90 % unsaturated" in printed


def test_steps_beyond_T_are_refused(snn_path, capsys):
    code = main(["evaluate", "--snn", str(snn_path), "-T", "20", "--steps", "10,30", "--quiet"])
    assert "--steps 30 is beyond -T 20" in _one_line_error(capsys, code)


def test_no_progress_bars_when_stderr_is_not_a_terminal(snn_path, capsys):
    assert main(["evaluate", "--snn", str(snn_path), "-T", "20", "--test-size", "50"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "latency" in captured.out


def test_an_experiment_resumes_only_the_same_model_and_data(digits_model, tmp_path, capsys):
    _, _, model_path = digits_model
    model, record = load_model(model_path)
    path = tmp_path / "model.pt"
    save_model(path, record["arch"], model)
    args = ["experiment", "sweep-n", "--model", str(path), "--out-dir", str(tmp_path / "out"), "-T", "5",
            "--test-size", "20", "--calibration-size", "100", "--quiet"]  # fmt: skip
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 0 and "resuming" in capsys.readouterr().out  # the same content: resumed
    with torch.no_grad():
        model[0].weight.mul_(1.5)  # another model written to the same path
    save_model(path, record["arch"], model)
    line = _one_line_error(capsys, main(args))
    assert "holds a run of another model, data or settings (model:" in line and "--force" in line
    capsys.readouterr()
    assert main([*args, "--force"]) == 0
    result = json.loads((tmp_path / "out" / "sweep-n.json").read_text())
    assert result["settings"]["model"] != "" and result["settings"]["data"] != ""
    line = _one_line_error(capsys, main([a if a != "20" else "30" for a in args]))
    assert "test_size: 20 then, 30 now" in line and "data:" in line


def test_convert_sets_the_initial_potential_and_refuses_bad_values(digits_model, tmp_path, capsys):

    _, _, model_path = digits_model
    out = tmp_path / "half.pt"
    args = ["convert", "--model", str(model_path), "--rule", "maxnorm", "--calibration-size", "200", "--quiet"]
    assert main([*args, "--initial-potential", "0.5", "--out", str(out)]) == 0
    snn = spikeconv.load(out)
    assert all(s.neuron.v_init == 0.5 for s in snn.spiking_stages)
    capsys.readouterr()
    line = _one_line_error(capsys, main([*args, "--initial-potential", "1.5", "--out", str(out)]))
    assert "initial_potential must be 'auto' or a fraction of the threshold in [0, 1), got 1.5" in line


def test_evaluate_exact_keeps_float_synapses_dense_and_records_it(snn_path, tmp_path, monkeypatch):
    """--exact reaches simulate(): no event synapse runs on the digits net's float weights."""
    from spikeconv.sim import kernels

    calls: list[int] = []
    original = kernels.event_conv
    monkeypatch.setattr(kernels, "event_conv", lambda *a, **k: calls.append(1) or original(*a, **k))
    monkeypatch.setattr("spikeconv.sim.events.MIN_SPEEDUP", 0.0)
    out = tmp_path / "exact.json"
    assert main(["evaluate", "--snn", str(snn_path), "-T", "10", "--test-size", "30", "--exact", "--quiet",
                 "--out", str(out)]) == 0  # fmt: skip
    assert not calls and json.loads(out.read_text())["exact"] is True
    assert main(["evaluate", "--snn", str(snn_path), "-T", "10", "--test-size", "30", "--quiet"]) == 0
    assert calls or not kernels.available()
