"""Event-camera data in the N-MNIST format (Orchard et al. 2015), and a sensor model that
makes such data from still images.

**Format.** One ``.bin`` file per sample, ``Train/<digit>/*.bin`` and ``Test/<digit>/*.bin``;
each event is 40 bits, big-endian: byte 0 the x address, byte 1 the y address, then one
bit of polarity (1 = ON, brighter) and a 23-bit timestamp in microseconds; an event with
y = 240 marks a timestamp overflow, as in Orchard's reference reader. The sensor is 34 x 34 pixels. :func:`read_events` / :func:`write_events` read and write one file;
:func:`events_to_frames` bins events into count images ``[bins, 2, 34, 34]`` (channel 0
OFF, channel 1 ON), what an ANN trains on.

**Simulated recording** (:func:`saccade_events`). No N-MNIST copy exists on these machines,
so ``spikeconv make-events`` records MNIST images the way N-MNIST was recorded: the
28 x 28 image on a 34 x 34 sensor, moved through three saccades along the sides of an
isosceles triangle, 100 ms each; every pixel emits an ON (OFF) event each time its
log-intensity rises (falls) by the contrast threshold from the level of its last event.
These are simulated events, not the real dataset; the same reader reads the real one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .files import write_bytes, write_text

__all__ = [
    "EVENT_DTYPE",
    "SENSOR",
    "SaccadeOptions",
    "events_to_frames",
    "make_event_dataset",
    "read_events",
    "saccade_events",
    "write_events",
]

SENSOR = 34  # pixels on a side
_MAX_TIME = 2**23 - 1  # microseconds a timestamp can hold
_OVERFLOW_Y, _OVERFLOW_US = 240, 2**13
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


def _shifted(image: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """``image`` (28 x 28, values in [0, 1]) on the 34 x 34 sensor at sub-pixel offset
    (dx, dy) from the top-left, bilinear."""
    size = image.shape[0]
    canvas = np.zeros((SENSOR + 1, SENSOR + 1))
    ix, iy = math.floor(dx), math.floor(dy)
    fx, fy = dx - ix, dy - iy
    for oy, wy in ((0, 1 - fy), (1, fy)):
        for ox, wx in ((0, 1 - fx), (1, fx)):
            canvas[iy + oy : iy + oy + size, ix + ox : ix + ox + size] += wy * wx * image
    return canvas[:SENSOR, :SENSOR]


def saccade_events(image: Tensor | np.ndarray, options: SaccadeOptions | None = None, seed: int = 0) -> np.ndarray:
    """Events of a simulated N-MNIST recording of ``image`` (``[28, 28]`` or ``[1, 28, 28]``,
    values in [0, 1]), sorted by time (see the module docstring). Seeded: the times
    within each model step are drawn from ``seed``."""
    options = options or SaccadeOptions()
    array = np.asarray(image, dtype=np.float64).reshape(-1, np.asarray(image).shape[-1])
    if array.shape[0] != array.shape[1] or array.shape[0] + 2 * options.amplitude > SENSOR:
        raise ValueError(f"image must be square and fit the {SENSOR}-pixel sensor with its motion, got {array.shape}")
    rng = np.random.default_rng(seed)
    steps = round(3 * options.saccade_ms * 1000 / options.step_us)
    t_ms = np.arange(steps + 1) * options.step_us / 1000.0
    xs, ys = _path(t_ms, options)
    level = np.log(options.background + _shifted(array, xs[0], ys[0]))  # each pixel's level at its last event
    chunks = []
    for k in range(1, steps + 1):
        current = np.log(options.background + _shifted(array, xs[k], ys[k]))
        change = current - level
        crossings = np.floor(np.abs(change) / options.contrast).astype(np.int64)
        y, x = np.nonzero(crossings)
        if len(x):
            counts = crossings[y, x]
            polarity = (change[y, x] > 0).astype(np.uint8)
            level[y, x] += np.sign(change[y, x]) * counts * options.contrast
            n = int(counts.sum())
            batch = np.empty(n, dtype=EVENT_DTYPE)
            batch["x"], batch["y"] = np.repeat(x, counts), np.repeat(y, counts)
            batch["p"] = np.repeat(polarity, counts)
            start = (k - 1) * options.step_us
            batch["t"] = start + rng.integers(0, options.step_us, n)
            chunks.append(batch)
    events = np.concatenate(chunks) if chunks else np.empty(0, dtype=EVENT_DTYPE)
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
