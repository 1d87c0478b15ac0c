"""Event input (coding 'events'): sequences fed one time bin per step, in the fast path and
the step reference alike, counted as input spikes and synaptic operations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import exact, grid_images, small_cnn
from torch import nn

import spikeconv
from spikeconv.io.nmnist import SENSOR, events_to_frames, saccade_events


def _counts(n: int, steps: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 3, (n, steps, 1, 8, 8), generator=generator).double() * (torch.rand(n, steps, 1, 8, 8, generator=generator) < 0.2)


@pytest.mark.parametrize("T", [6, 15])  # shorter and longer than the recording
def test_fast_path_equals_reference_and_the_module(T):
    snn = exact(spikeconv.convert(small_cnn(), grid_images(20), rule="maxnorm"))
    x, y = _counts(9, 10), torch.arange(9) % 5
    fast = spikeconv.simulate(snn, (x, y), T=T, coding="events", batch_size=4, record_counts=True, record_synops=True)
    reference = spikeconv.simulate(snn, (x, y), T=T, coding="events", method="reference", batch_size=9,
                                   record_counts=True, record_synops=True)  # fmt: skip
    assert torch.equal(fast.output_counts, reference.output_counts)
    assert all(torch.equal(fast.spike_counts[k], reference.spike_counts[k]) for k in fast.spike_counts)  # type: ignore[index]
    assert torch.equal(fast.synops_per_image, reference.synops_per_image)  # type: ignore[arg-type]
    # the module, fed the same sequence (zeros after the recording ends)
    sequence = torch.cat([x.transpose(0, 1), x.new_zeros(max(0, T - 10), *x.shape[:1], 1, 8, 8)])[:T]
    snn.reset_state()
    assert torch.equal(snn(sequence).sum(0), fast.output_counts.to(sequence.dtype))
    # input spikes are the events fed within T steps
    assert torch.allclose(fast.input_spikes_per_image, x[:, :T].flatten(1).sum(1))


def test_event_input_is_checked():
    snn = spikeconv.convert(small_cnn(), grid_images(20), rule="maxnorm")
    with pytest.raises(ValueError, match=r"coding 'events' takes sequences \[batch, steps, 1, 8, 8\]"):
        spikeconv.simulate(snn, grid_images(4), T=5, coding="events")
    with pytest.raises(ValueError, match="event counts .* go down to -1"):
        spikeconv.simulate(snn, -torch.ones(2, 3, 1, 8, 8, dtype=torch.float64), T=5, coding="events")


def test_simulated_n_mnist_events_run_through_a_network():
    """make-events' recordings, binned one bin per step, into a 2-channel 34x34 network."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 5, stride=3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 10 * 10, 3)).eval()
    digit = torch.zeros(28, 28)
    digit[6:22, 10:18] = 1.0
    frames = torch.stack([events_to_frames(saccade_events(digit, seed=s), bins=30, duration_us=300_000) for s in range(3)])
    assert frames.shape == (3, 30, 2, SENSOR, SENSOR)
    # calibrated on the mean counts per bin: what one step feeds on average
    snn = spikeconv.convert(model, frames.mean(1))
    result = spikeconv.simulate(snn, frames, T=40, coding="events")
    assert np.allclose(result.input_spikes_per_image.numpy(), frames.flatten(1).sum(1).numpy())
    assert float(result.spikes_per_image.sum()) > 0
