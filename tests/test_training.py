from __future__ import annotations

import pytest
import torch

import spikeconv
from spikeconv.io.data import load_digits
from spikeconv.training import TrainOptions, load_model, train


def test_training_is_seeded_and_resumes_to_the_same_weights(tmp_path):
    data = load_digits("train").subset(200)
    options = TrainOptions(epochs=3, batch_size=32, lr=1e-2, seed=5)
    full, _ = train("digits", data, None, options, tmp_path / "full.pt", progress=False)

    # an interrupted run: stop after one epoch, then resume from the checkpoint
    partial = tmp_path / "partial.pt"
    first = TrainOptions(epochs=3, batch_size=32, lr=1e-2, seed=5)
    import spikeconv.training as training

    calls = {"n": 0}
    original = training.save_torch

    def stop_after_first_epoch(path, payload):
        original(path, payload)
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt

    training.save_torch = stop_after_first_epoch
    try:
        with pytest.raises(KeyboardInterrupt):
            train("digits", data, None, first, partial, progress=False)
    finally:
        training.save_torch = original
    assert torch.load(partial, weights_only=False)["epoch"] == 1
    resumed, record = train("digits", data, None, first, partial, progress=False)
    assert record["epoch"] == 3
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    loaded, _ = load_model(partial)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), resumed.state_dict().values()))


def test_checkpoint_of_other_options_is_not_silently_resumed(tmp_path):
    data = load_digits("train").subset(64)
    train("digits", data, None, TrainOptions(epochs=1, seed=0), tmp_path / "m.pt", progress=False)
    with pytest.raises(ValueError, match="was written for digits"):
        train("digits", data, None, TrainOptions(epochs=2, seed=0), tmp_path / "m.pt", progress=False)


def test_wrong_dataset_shape_for_the_model():
    with pytest.raises(ValueError, match=r"expects inputs \(1, 28, 28\)"):
        train("yang-mnist", load_digits("train"), None, TrainOptions(epochs=1), "unused.pt", progress=False)


def test_save_model_round_trips_through_load_model(tmp_path):
    import json

    from spikeconv.models import build_model
    from spikeconv.training import load_model, save_model

    torch.manual_seed(0)
    model = build_model("digits").eval()
    save_model(tmp_path / "m.pt", "digits", model)
    loaded, record = load_model(tmp_path / "m.pt")
    assert record["arch"] == "digits"
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(loaded(x), model(x))
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt"):
        load_model(tmp_path / "bad.pt")
    snn = spikeconv.convert(loaded, x, rule="maxnorm")
    summary = snn.describe()
    json.dumps(summary)  # JSON-ready
    assert [s["name"] for s in summary["stages"]] == [s.name for s in snn.spiking_stages]
    assert summary["mapping"]["rule"] == "maxnorm" and summary["calibration_images"] == 3


def test_constant_schedule_keeps_the_learning_rate_and_resumes(tmp_path):
    data = load_digits("train").subset(64)
    options = TrainOptions(epochs=2, batch_size=32, lr=3e-3, seed=1, schedule="constant")
    _, record = train("digits", data, None, options, tmp_path / "c.pt", progress=False)
    assert record["optimizer"]["param_groups"][0]["lr"] == 3e-3  # cosine would end at 0
    cosine = TrainOptions(epochs=2, batch_size=32, lr=3e-3, seed=1)
    _, record = train("digits", data, None, cosine, tmp_path / "k.pt", progress=False)
    assert record["optimizer"]["param_groups"][0]["lr"] < 1e-9
    with pytest.raises(ValueError, match="checkpoint .* was written for"):  # the schedule is part of the run
        train("digits", data, None, cosine, tmp_path / "c.pt", progress=False)
    with pytest.raises(ValueError, match="schedule must be one of cosine, constant"):
        TrainOptions(schedule="step")
