"""Event-camera data in the N-MNIST format (Orchard et al. 2015), and a sensor model that
makes such data from still images.

**Format.** One ``.bin`` file per sample, ``Train/<digit>/*.bin`` and ``Test/<digit>/*.bin``;
each event is 40 bits, big-endian: byte 0 the x address, byte 1 the y address, then one
bit of polarity (1 = ON, brighter) and a 23-bit timestamp in microseconds; an event with
y = 240 marks a timestamp overflow, as in Orchard's reference reader. The sensor is 34 x 34 pixels. :func:`read_events` / :func:`write_events` read and write one file;
:func:`events_to_frames` bins events into count images ``[bins, 2, 34, 34]`` (channel 0
OFF, channel 1 ON), what an ANN trains on.

**Datasets** (:func:`load_nmnist`, :class:`EventSequences`). A recording is about 300 ms
(three saccades of 100 ms). The ANN trains on *frames*: each pixel's events over the
recording divided by its number of 1 ms bins, the mean events per bin. The SNN is fed
either those frames as a constant current, or the events themselves, one bin per time
step (``simulate(..., coding="events")``); over the recording both inject the same
charge, so the ANN's input is what the event-fed SNN sees on average.

**Simulated recording** (:func:`saccade_events`). No N-MNIST copy exists on these machines,
so ``spikeconv make-events`` records MNIST images the way N-MNIST was recorded: the
28 x 28 image on a 34 x 34 sensor, moved through three saccades along the sides of an
isosceles triangle, 100 ms each; every pixel emits an ON (OFF) event each time its
log-intensity rises (falls) by the contrast threshold from the level of its last event.
These are simulated events, not the real dataset; the same reader reads the real one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .data import DatasetNotFoundError, ImageDataset, check_split, subset_index
from .files import write_bytes, write_text

__all__ = [
    "BIN_US",
    "EVENT_DTYPE",
    "RECORDING_US",
    "SENSOR",
    "EventSequences",
    "SaccadeOptions",
    "event_files",
    "events_to_frames",
    "load_nmnist",
    "make_event_dataset",
    "read_events",
    "saccade_events",
    "write_events",
]

SENSOR = 34  # pixels on a side
_MAX_TIME = 2**23 - 1  # microseconds a timestamp can hold
_OVERFLOW_Y, _OVERFLOW_US = 240, 2**13
RECORDING_US = 300_000  # one N-MNIST recording: three saccades of about 100 ms
BIN_US = 1_000  # one time step of event input: 1 ms, 300 per recording
EVENT_DTYPE = np.dtype([("x", np.uint8), ("y", np.uint8), ("p", np.uint8), ("t", np.uint32)])


def write_events(path: str | Path, events: np.ndarray) -> None:
    """Write ``events`` (a structured array of ``EVENT_DTYPE``) in N-MNIST's 40-bit format."""
    if events.dtype != EVENT_DTYPE:
        raise TypeError(f"events must be a structured array of {EVENT_DTYPE}, got {events.dtype}")
    if len(events) and (events["x"].max() >= SENSOR or events["y"].max() >= SENSOR or events["t"].max() > _MAX_TIME):
        raise ValueError(f"events must lie on the {SENSOR} x {SENSOR} sensor within {_MAX_TIME} us")
    if len(events) and events["p"].max() > 1:
        raise ValueError("polarity must be 0 (OFF) or 1 (ON)")
    raw = np.empty((len(events), 5), dtype=np.uint8)
    t = events["t"].astype(np.uint32)
    raw[:, 0] = events["x"]
    raw[:, 1] = events["y"]
    raw[:, 2] = (events["p"].astype(np.uint32) << 7 | (t >> 16) & 0x7F).astype(np.uint8)
    raw[:, 3] = (t >> 8) & 0xFF
    raw[:, 4] = t & 0xFF
    write_bytes(path, raw.tobytes())


def read_events(path: str | Path) -> np.ndarray:
    """The events of one N-MNIST ``.bin`` file, as a structured array (x, y, p, t in us)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"event file {path} does not exist")
    data = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    if len(data) % 5:
        raise ValueError(
            f"{path} is {len(data)} bytes, not a whole number of 5-byte N-MNIST events: the file is truncated "
            "(copy it again) or not in N-MNIST's format"
        )
    raw = data.reshape(-1, 5).astype(np.uint32)
    t = (raw[:, 2] & 0x7F) << 16 | raw[:, 3] << 8 | raw[:, 4]
    # y = 240 marks a timestamp overflow (Orchard's reference reader): later times gain 2^13 us
    overflow = raw[:, 1] == _OVERFLOW_Y
    if overflow.any():
        t = t + np.cumsum(overflow).astype(np.uint32) * _OVERFLOW_US
        raw, t = raw[~overflow], t[~overflow]
    events = np.empty(len(raw), dtype=EVENT_DTYPE)
    events["x"], events["y"] = raw[:, 0], raw[:, 1]
    events["p"] = raw[:, 2] >> 7
    events["t"] = t
    if len(events) and (events["x"].max() >= SENSOR or events["y"].max() >= SENSOR):
        raise ValueError(
            f"{path} has addresses up to ({events['x'].max()}, {events['y'].max()}), beyond N-MNIST's "
            f"{SENSOR} x {SENSOR} sensor: it is not an N-MNIST file"
        )
    return events


def events_to_frames(events: np.ndarray, bins: int = 1, duration_us: int | None = None) -> Tensor:
    """Event counts per pixel and polarity in ``bins`` equal time bins over ``[0,
    duration_us)`` (default: up to the last event): ``[bins, 2, 34, 34]``, float32,
    channel 0 OFF, channel 1 ON. Events at or after ``duration_us`` are left out."""
    if bins <= 0:
        raise ValueError(f"bins must be positive, got {bins}")
    duration = int(events["t"].max()) + 1 if duration_us is None and len(events) else (duration_us or 1)
    frames = torch.zeros(bins * 2 * SENSOR * SENSOR, dtype=torch.float32)
    keep = events["t"] < duration
    kept = events[keep]
    index = (kept["t"].astype(np.int64) * bins // duration) * (2 * SENSOR * SENSOR)
    index += kept["p"].astype(np.int64) * SENSOR * SENSOR + kept["y"].astype(np.int64) * SENSOR + kept["x"]
    frames.index_add_(0, torch.from_numpy(index), torch.ones(len(index)))
    return frames.view(bins, 2, SENSOR, SENSOR)


# ----------------------------------------------------------------------------- datasets


def _check_bins(bin_us: int, duration_us: int) -> None:
    if bin_us <= 0 or duration_us < bin_us:
        raise ValueError(f"need 0 < bin_us <= duration_us, got bin_us {bin_us}, duration_us {duration_us}")


def event_files(root: str | Path, split: str) -> tuple[list[Path], Tensor]:
    """The ``.bin`` files of one split and their labels: ``root/Train/<digit>/*.bin`` (or
    ``Test``), sorted by digit and name. ``root`` may also hold that layout one folder
    down, as ``N-MNIST/`` or ``NMNIST/`` (how the real dataset unpacks)."""
    check_split(split)
    name = {"train": "Train", "test": "Test"}[split]
    root = Path(root)
    candidates = [root / name, root / "N-MNIST" / name, root / "NMNIST" / name]
    folder = next((c for c in candidates if c.is_dir()), None)
    if folder is None:
        raise DatasetNotFoundError(
            f"no N-MNIST {split} split under {root} (looked for {', '.join(str(c) for c in candidates)}): pass the "
            "folder holding Train/ and Test/, or make simulated events with `spikeconv make-events`"
        )
    files: list[Path] = []
    labels: list[int] = []
    for digit in range(10):
        found = sorted((folder / str(digit)).glob("*.bin"))
        files += found
        labels += [digit] * len(found)
    if not files:
        raise DatasetNotFoundError(f"{folder} holds no <digit>/*.bin event files")
    return files, torch.tensor(labels, dtype=torch.int64)


def load_nmnist(
    root: str | Path, split: str = "train", *, bin_us: int = BIN_US, duration_us: int = RECORDING_US
) -> ImageDataset:
    """N-MNIST (or ``spikeconv make-events`` output) as frames ``[N, 2, 34, 34]``: each
    pixel's events in ``[0, duration_us)`` divided by the recording's number of
    ``bin_us`` bins, i.e. the mean events per time step of event input (module
    docstring). Stored as uint8 counts; ``ImageDataset.divisor`` holds the bins."""
    _check_bins(bin_us, duration_us)
    files, labels = event_files(root, split)
    counts = torch.cat([events_to_frames(read_events(f), 1, duration_us) for f in files])
    if counts.max() > 255:
        raise ValueError(f"{root}: a pixel has {counts.max():.0f} events in one recording; frames hold at most 255")
    return ImageDataset(
        images=counts.to(torch.uint8), labels=labels, name=f"nmnist-{split}",
        classes=tuple(str(d) for d in range(10)), divisor=duration_us / bin_us,
    )  # fmt: skip


class EventSequences:
    """Batches ``(x, y)`` of event recordings for ``simulate(..., coding="events")``: ``x``
    ``[B, bins, 2, 34, 34]``, the events of each ``bin_us`` bin of ``[0, duration_us)``,
    read from the files as they are needed. ``subset(count, seed)`` keeps the recordings
    that :meth:`ImageDataset.subset` keeps of the frames."""

    def __init__(
        self, files: list[Path], labels: Tensor, *, batch_size: int = 100, bin_us: int = BIN_US,
        duration_us: int = RECORDING_US,
    ) -> None:  # fmt: skip
        _check_bins(bin_us, duration_us)
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if len(files) != len(labels):
            raise ValueError(f"{len(files)} event files but {len(labels)} labels")
        self.files, self.labels = list(files), labels
        self.batch_size, self.bin_us, self.duration_us = batch_size, bin_us, duration_us

    @classmethod
    def from_root(cls, root: str | Path, split: str = "test", **options: int) -> EventSequences:
        files, labels = event_files(root, split)
        return cls(files, labels, **options)

    @property
    def bins(self) -> int:
        return -(-self.duration_us // self.bin_us)

    def subset(self, count: int | None, seed: int = 0) -> EventSequences:
        if count is None or count >= len(self):
            return self
        return self._select(subset_index(len(self), count, seed).tolist())

    def first(self, count: int) -> EventSequences:
        """The first ``count`` recordings, as one batch."""
        chosen = self._select(list(range(min(count, len(self)))))
        chosen.batch_size = max(1, len(chosen))
        return chosen

    def _select(self, index: list[int]) -> EventSequences:
        return EventSequences(
            [self.files[i] for i in index], self.labels[index], batch_size=self.batch_size, bin_us=self.bin_us,
            duration_us=self.duration_us,
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for start in range(0, len(self), self.batch_size):
            files = self.files[start : start + self.batch_size]
            x = torch.stack([
                events_to_frames(read_events(f), self.bins, self.bins * self.bin_us) for f in files
            ])  # fmt: skip
            yield x, self.labels[start : start + len(files)]


# ----------------------------------------------------------------------------- simulated sensor


@dataclass(frozen=True, kw_only=True)
class SaccadeOptions:
    """How :func:`saccade_events` records an image."""

    saccade_ms: float = 100.0  # duration of each of the three saccades
    amplitude: float = 3.0  # triangle size in pixels: the image moves within the sensor's 6-pixel margin
    contrast: float = 0.5  # log-intensity change that makes one event (3,000-7,000 events per MNIST digit)
    step_us: int = 1000  # the sensor model's time step; event times are spread uniformly within it
    background: float = 0.05  # light on a black pixel (the log of zero is -inf)


def _path(t_ms: np.ndarray, options: SaccadeOptions) -> tuple[np.ndarray, np.ndarray]:
    """The image's offset (x, y) in pixels at times ``t_ms``: the corners of an isosceles
    triangle, one side per saccade, starting and ending at the top-left corner."""
    a = options.amplitude
    corners = np.array([[0.0, 0.0], [a, 2 * a], [2 * a, 0.0], [0.0, 0.0]])
    phase = np.clip(t_ms / options.saccade_ms, 0, 3 - 1e-9)
    side = phase.astype(int)
    fraction = (phase - side)[:, None]
    offset = corners[side] * (1 - fraction) + corners[side + 1] * fraction
    return offset[:, 0], offset[:, 1]


def _shifted(image: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """``image`` (square, values in [0, 1]) on the 34 x 34 sensor at sub-pixel offsets
    ``(dx[k], dy[k])`` from the top-left, bilinear: ``[len(dx), 34, 34]``. Each frame is
    ``A_y image A_x^T`` with A's rows the interpolation weights of one sensor row/column."""
    size = image.shape[0]

    def weights(offset: np.ndarray) -> np.ndarray:
        whole = np.floor(offset).astype(np.int64)
        fraction = offset - whole
        matrix = np.zeros((len(offset), SENSOR + 1, size))
        k, j = np.arange(len(offset))[:, None], np.arange(size)[None, :]
        matrix[k, whole[:, None] + j, j] = (1 - fraction)[:, None]
        matrix[k, whole[:, None] + j + 1, j] += fraction[:, None]
        return matrix[:, :SENSOR]  # light moved past the last row/column leaves the sensor

    return weights(dy) @ image @ weights(dx).transpose(0, 2, 1)


def saccade_events(image: Tensor | np.ndarray, options: SaccadeOptions | None = None, seed: int = 0) -> np.ndarray:
    """Events of a simulated N-MNIST recording of ``image`` (``[28, 28]`` or ``[1, 28, 28]``,
    values in [0, 1]), sorted by time (see the module docstring). Seeded: the times
    within each model step are drawn from ``seed``.

    A pixel's last event leaves its reference level at ``L(0) + m c`` (c the contrast,
    m an integer), so its events follow from u = (L(t) - L(0)) / c alone: m becomes
    floor(u) when u rose past it and ceil(u) when u fell below it, and each step's
    change of m is that many ON (OFF) events."""
    options = options or SaccadeOptions()
    array = np.asarray(image, dtype=np.float64).reshape(-1, np.asarray(image).shape[-1])
    if array.shape[0] != array.shape[1] or array.shape[0] + 2 * options.amplitude > SENSOR:
        raise ValueError(f"image must be square and fit the {SENSOR}-pixel sensor with its motion, got {array.shape}")
    rng = np.random.default_rng(seed)
    steps = round(3 * options.saccade_ms * 1000 / options.step_us)
    xs, ys = _path(np.arange(steps + 1) * options.step_us / 1000.0, options)
    log_intensity = np.log(options.background + _shifted(array, xs, ys))
    u = (log_intensity - log_intensity[0]) / options.contrast
    m = np.zeros((steps + 1, SENSOR, SENSOR))
    for step in range(1, steps + 1):
        m[step] = np.where(u[step] >= m[step - 1], np.floor(u[step]), np.ceil(u[step]))
    change = np.diff(m, axis=0).astype(np.int64)  # [steps, y, x]: signed event counts
    k, y, x = np.nonzero(change)
    counts = np.abs(change[k, y, x])
    events = np.empty(int(counts.sum()), dtype=EVENT_DTYPE)
    events["x"], events["y"] = np.repeat(x, counts), np.repeat(y, counts)
    events["p"] = np.repeat(change[k, y, x] > 0, counts)
    events["t"] = np.repeat(k * options.step_us, counts) + rng.integers(0, options.step_us, len(events))
    return events[np.argsort(events["t"], kind="stable")]


def make_event_dataset(
    images: Tensor, labels: Tensor, root: str | Path, split: str, options: SaccadeOptions | None = None, seed: int = 0
) -> int:
    """Record ``images`` ``[N, 1, 28, 28]`` in [0, 1] with :func:`saccade_events` into
    ``root/{Train,Test}/<label>/<index>.bin`` (N-MNIST's layout); image ``i`` is seeded
    with ``seed + i``. Files already there are kept (a run resumes). Returns the events
    written."""
    folder = Path(root) / {"train": "Train", "test": "Test"}[split]
    total = 0
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        path = folder / str(int(label)) / f"{i:05d}.bin"
        if path.exists():
            continue
        events = saccade_events(image, options, seed=seed + i)
        write_events(path, events)
        total += len(events)
    write_text(Path(root) / "SIMULATED.txt", "These events were simulated by spikeconv make-events from MNIST images "
               "(three saccades, log-intensity change events); they are not the N-MNIST recordings.\n")  # fmt: skip
    return total
