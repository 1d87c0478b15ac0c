"""N-MNIST as a dataset: frames for the ANN, event sequences for the SNN, the sensor model
against a step-by-step reference, and the CLI pipeline train -> convert -> evaluate on
event files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from spikeconv.cli import main
from spikeconv.io.data import DatasetNotFoundError, load_dataset
from spikeconv.io.nmnist import (
    BIN_US,
    RECORDING_US,
    SENSOR,
    EventSequences,
    SaccadeOptions,
    _path,
    _shifted,
    event_files,
    load_nmnist,
    make_event_dataset,
    saccade_events,
)


def _digits(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Bars of a few shapes: images [n, 1, 28, 28] in [0, 1] and labels 0..2 by shape."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    images = torch.zeros(n, 1, 28, 28)
    for i, label in enumerate(labels.tolist()):
        top, left = (int(v) for v in torch.randint(4, 8, (2,), generator=generator))
        if label == 0:
            images[i, 0, top : top + 16, left + 6 : left + 10] = 1.0  # vertical bar
        elif label == 1:
            images[i, 0, top + 6 : top + 10, left : left + 16] = 1.0  # horizontal bar
        else:
            images[i, 0, top : top + 14, left : left + 14] = 0.6  # square
    return images, labels


@pytest.fixture(scope="module")
def event_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("nmnist")
    for split, n, seed in (("train", 36, 0), ("test", 12, 100)):
        images, labels = _digits(n, seed)
        make_event_dataset(images, labels, root, split, seed=seed)
    return root


def _reference_events(image: np.ndarray, options: SaccadeOptions) -> np.ndarray:
    """The sensor model step by step, as its docstring describes it: each pixel keeps the
    level of its last event, L(0) + m c (m counted as an integer, so no rounding drifts
    it), and fires once per whole contrast step its log-intensity moved away from that
    level. Counts per (step, polarity, y, x)."""
    steps = round(3 * options.saccade_ms * 1000 / options.step_us)
    xs, ys = _path(np.arange(steps + 1) * options.step_us / 1000.0, options)
    frames = np.log(options.background + _shifted(image, xs, ys))
    m = np.zeros((SENSOR, SENSOR), dtype=np.int64)
    counts = np.zeros((steps, 2, SENSOR, SENSOR), dtype=np.int64)
    for k in range(1, steps + 1):
        change = (frames[k] - frames[0]) / options.contrast - m  # in contrast steps
        crossings = np.floor(np.abs(change)).astype(np.int64)
        counts[k - 1, 1] = np.where(change > 0, crossings, 0)
        counts[k - 1, 0] = np.where(change < 0, crossings, 0)
        m += np.sign(change).astype(np.int64) * crossings
    return counts


def test_sensor_model_matches_the_step_by_step_reference():
    images, _ = _digits(3)
    options = SaccadeOptions()
    for image in images:
        events = saccade_events(image, options, seed=0)
        ours = np.zeros((300, 2, SENSOR, SENSOR), dtype=np.int64)
        np.add.at(ours, (events["t"] // options.step_us, events["p"], events["y"], events["x"]), 1)
        reference = _reference_events(image[0].numpy().astype(np.float64), options)
        # floor(u - m) and floor(u) - m can round apart where u is within an ulp of an
        # integer; stated tolerance: all but 0.01 % of (step, pixel) counts equal
        assert (ours != reference).mean() < 1e-4
        assert abs(int(ours.sum()) - int(reference.sum())) <= 1e-3 * reference.sum()
        assert reference.sum() > 500


def test_frames_are_mean_events_per_bin_and_sequences_sum_to_them(event_root):
    frames = load_nmnist(event_root, "test")
    assert frames.input_shape == (2, SENSOR, SENSOR) and len(frames) == 12 and frames.num_classes == 10
    assert frames.divisor == RECORDING_US / BIN_US == 300
    files, labels = event_files(event_root, "test")
    sequences = EventSequences(files, labels, batch_size=5)
    assert sequences.bins == 300
    batches = list(sequences)
    assert [len(x) for x, _ in batches] == [5, 5, 2]
    x = torch.cat([b[0] for b in batches])
    assert x.shape == (12, 300, 2, SENSOR, SENSOR)
    assert torch.equal(torch.cat([b[1] for b in batches]), frames.labels)
    # the ANN's input is the event input's mean per step (exact: integer counts / 300)
    images, _ = frames.tensors()
    assert torch.equal(x.sum(1) / 300, images)
    assert torch.equal(frames.images.long(), x.sum(1).long())
    head = EventSequences(files, labels, batch_size=5, bin_us=3000).first(7)  # one batch, options kept
    assert [tuple(b[0].shape[:2]) for b in head] == [(7, 100)] and torch.equal(head.labels, labels[:7])
    # a subset keeps the same recordings on both paths
    part_frames, part_sequences = frames.subset(5, seed=3), sequences.subset(5, seed=3)
    assert torch.equal(part_frames.labels, part_sequences.labels)
    assert torch.equal(next(iter(part_sequences))[0].sum(1), part_frames.images.float())
    # load_dataset knows it; the real dataset's extra folder level is found too
    assert torch.equal(load_dataset("nmnist", "test", event_root).images, frames.images)


def test_missing_or_empty_dataset_says_what_to_do(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="no N-MNIST test split .* `spikeconv make-events`"):
        load_nmnist(tmp_path, "test")
    (tmp_path / "N-MNIST" / "Test" / "3").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="holds no <digit>/\\*.bin event files"):
        event_files(tmp_path, "test")
    with pytest.raises(DatasetNotFoundError, match="needs --data-root"):
        load_dataset("nmnist", "test")
    with pytest.raises(ValueError, match="bin_us"):
        load_nmnist(tmp_path, "test", bin_us=0)
    with pytest.raises(ValueError, match="split must be 'train' or 'test', got 'Test'"):
        event_files(tmp_path, "Test")


def test_cli_trains_converts_and_evaluates_on_events_and_frames(event_root, tmp_path, capsys):
    model, snn = tmp_path / "m.pt", tmp_path / "snn.pt"
    common = ["--dataset", "nmnist", "--data-root", str(event_root), "--quiet"]
    assert main(["train", "--model", "yang-nmnist", *common, "--epochs", "2", "--schedule", "constant", "--out",
                 str(model)]) == 0  # fmt: skip
    record = torch.load(model, weights_only=False)
    assert record["options"]["schedule"] == "constant" and record["input_shape"] == (2, SENSOR, SENSOR)
    assert main(["convert", "--model", str(model), *common, "--rule", "maxnorm", "--calibration-size", "20", "--out",
                 str(snn)]) == 0  # fmt: skip
    results = {}
    for coding in ("events", "constant"):
        out = tmp_path / f"{coding}.json"
        assert main(["evaluate", "--snn", str(snn), *common, "-T", "300", "--coding", coding, "--batch-size", "5",
                     "--correlation-images", "4", "--out", str(out)]) == 0  # fmt: skip
        results[coding] = json.loads(out.read_text())["networks"]["snn"]
    capsys.readouterr()
    # the same 12 recordings; events feed every event once, frames the same charge as a constant current
    files, _ = event_files(event_root, "test")
    assert results["events"]["images"] == results["constant"]["images"] == 12
    assert results["events"]["input_spikes_per_image"] == pytest.approx(
        sum(len(np.fromfile(f, dtype=np.uint8)) // 5 for f in files) / 12
    )
    assert results["events"]["rate_correlation"] and results["events"]["conversion_loss"] is not None
    with pytest.raises(SystemExit):  # argparse refuses an unknown schedule
        main(["train", "--model", "yang-nmnist", *common, "--schedule", "step", "--out", str(model)])
    assert main(["evaluate", "--snn", str(snn), "--dataset", "mnist", "--data-root", str(event_root), "--coding",
                 "events", "--quiet"]) == 2  # fmt: skip
