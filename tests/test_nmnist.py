"""N-MNIST's event format and the simulated saccade recording (spikeconv make-events)."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from spikeconv.cli import main
from spikeconv.io.nmnist import (
    EVENT_DTYPE,
    SENSOR,
    SaccadeOptions,
    events_to_frames,
    read_events,
    saccade_events,
    write_events,
)


def _events(rows) -> np.ndarray:
    events = np.empty(len(rows), dtype=EVENT_DTYPE)
    for k, row in enumerate(rows):
        events[k] = row
    return events


def test_forty_bit_layout_and_round_trip(tmp_path):
    one = _events([(1, 2, 1, 0x12345)])
    write_events(tmp_path / "one.bin", one)
    assert (tmp_path / "one.bin").read_bytes() == bytes([1, 2, 0x80 | 0x01, 0x23, 0x45])  # x, y, p|t22..16, t15..8, t7..0
    rng = np.random.default_rng(0)
    many = np.empty(1000, dtype=EVENT_DTYPE)
    many["x"], many["y"] = rng.integers(0, SENSOR, 1000), rng.integers(0, SENSOR, 1000)
    many["p"], many["t"] = rng.integers(0, 2, 1000), np.sort(rng.integers(0, 2**23, 1000))
    write_events(tmp_path / "many.bin", many)
    assert np.array_equal(read_events(tmp_path / "many.bin"), many)
    with pytest.raises(ValueError, match="sensor"):
        write_events(tmp_path / "x.bin", _events([(34, 0, 0, 0)]))


def test_overflow_markers_advance_later_timestamps(tmp_path):
    marker = bytes([0, 240, 0, 0, 0])  # y = 240: the timestamp overflowed
    (tmp_path / "o.bin").write_bytes(bytes([1, 2, 0x80, 0, 5]) + marker + bytes([3, 4, 0, 0, 6]))
    events = read_events(tmp_path / "o.bin")
    assert events["t"].tolist() == [5, 6 + 2**13] and events["x"].tolist() == [1, 3]


def test_tonic_reads_our_files_as_our_reader_does(tmp_path):
    tonic = pytest.importorskip("tonic")  # optional: benchmarks/interop/setup.sh installs it
    events = saccade_events(_digit(), seed=3)
    write_events(tmp_path / "d.bin", events)
    theirs = tonic.io.read_mnist_file(str(tmp_path / "d.bin"), dtype=tonic.datasets.NMNIST.dtype)
    for field in "xytp":
        assert np.array_equal(theirs[field].astype(np.int64), events[field].astype(np.int64)), field


def test_truncated_and_foreign_files_are_refused(tmp_path):
    write_events(tmp_path / "ok.bin", _events([(1, 2, 0, 7), (3, 4, 1, 9)]))
    (tmp_path / "cut.bin").write_bytes((tmp_path / "ok.bin").read_bytes()[:7])
    with pytest.raises(ValueError, match="7 bytes, not a whole number of 5-byte N-MNIST events: the file is truncated"):
        read_events(tmp_path / "cut.bin")
    (tmp_path / "png.bin").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(ValueError, match="not an N-MNIST file"):
        read_events(tmp_path / "png.bin")
    with pytest.raises(FileNotFoundError):
        read_events(tmp_path / "none.bin")


def _digit() -> torch.Tensor:
    image = torch.zeros(28, 28)
    image[6:22, 10:18] = 1.0  # a bright bar
    return image


def test_three_saccades_each_make_events_on_the_sensor():
    options = SaccadeOptions()
    events = saccade_events(_digit(), options, seed=0)
    assert np.all(np.diff(events["t"].astype(np.int64)) >= 0) and events["t"].max() < 300_000
    assert events["x"].max() < SENSOR and events["y"].max() < SENSOR
    per_saccade = [int(((events["t"] >= k * 100_000) & (events["t"] < (k + 1) * 100_000)).sum()) for k in range(3)]
    assert all(n > 100 for n in per_saccade), per_saccade
    assert 0.3 < events["p"].mean() < 0.7  # a moving bar: edges brighten and darken alike
    # a still image makes no events; the seed moves event times within their step, not their number
    still = saccade_events(_digit(), SaccadeOptions(amplitude=0.0), seed=0)
    assert len(still) == 0
    again, other = saccade_events(_digit(), options, seed=0), saccade_events(_digit(), options, seed=1)
    assert np.array_equal(again, events) and len(other) == len(events) and not np.array_equal(other["t"], events["t"])
    # twice the contrast threshold: fewer events
    assert len(saccade_events(_digit(), SaccadeOptions(contrast=1.0))) < len(events)


def test_frames_count_every_event_in_its_bin():
    events = _events([(0, 0, 0, 0), (0, 0, 1, 10), (5, 6, 1, 150), (5, 6, 1, 199)])
    frames = events_to_frames(events, bins=2, duration_us=200)
    assert frames.shape == (2, 2, SENSOR, SENSOR) and float(frames.sum()) == 4
    assert frames[0, 0, 0, 0] == 1 and frames[0, 1, 0, 0] == 1 and frames[1, 1, 6, 5] == 2
    assert float(events_to_frames(events, bins=1, duration_us=100).sum()) == 2  # later events left out


def _write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_make_events_writes_n_mnist_layout_and_resumes(tmp_path, capsys):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = np.zeros((4, 28, 28), dtype=np.uint8)
    images[:, 8:20, 12:16] = 255
    for prefix in ("train", "t10k"):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", np.array([3, 1, 3, 7]))
    out = tmp_path / "events"
    assert main(["make-events", "--data-root", str(tmp_path), "--out", str(out), "--test-size", "2", "--quiet"]) == 0
    assert "simulated" in capsys.readouterr().out
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.bin"))
    assert len(files) == 6 and all(f.split("/")[0] in ("Train", "Test") for f in files)
    assert {f.split("/")[1] for f in files if f.startswith("Train")} == {"1", "3", "7"}
    assert "not the N-MNIST recordings" in (out / "SIMULATED.txt").read_text()
    first = out / files[0]
    before = first.read_bytes()
    assert main(["make-events", "--data-root", str(tmp_path), "--out", str(out), "--test-size", "2", "--quiet"]) == 0
    assert "(0 new events" in capsys.readouterr().out and first.read_bytes() == before  # resumed, nothing rewritten
