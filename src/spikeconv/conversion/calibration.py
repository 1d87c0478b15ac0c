"""Post-hoc SNN Calibration (Li et al. 2021, ICML, "A Free Lunch From ANN"): for a ReLU
network that cannot be retrained, correct the converted network layer by layer so that
each layer's firing rates after T steps match the ANN's activations on average.

    snn = convert(model, images, rule="mse", T=32)        # clip-floor MSE thresholds
    snn = calibrate_snn(snn, images[:1000], T=32, mode="advanced")

Layer by layer, from the input on, with the layers before already corrected: simulate the
calibration images for T steps, compare the layer's rates r = spikes / T with the ANN's
activation in threshold units, a / lambda (``SpikingNetwork.analog_forward`` of the
uncorrected network), and take the mean error ``e = E[a / lambda - r]``:

* ``light`` (bias correction): e averaged per channel is added to the layer's bias, in
  threshold units (each step's input current rises by ``e * theta``, so T steps bring about
  ``T e`` more spikes).
* ``advanced``: light, then the remaining error of every neuron, measured again, becomes
  an initial membrane potential ``T e * theta`` (Li et al.'s potential correction, per
  neuron).

The output layer is left as it is: its activations are logits (negative ones included),
and a per-class shift would change which class wins. The calibration is made for one T:
at other T the correction is too large or too small (measured in the low-latency
benchmark).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
from torch import Tensor, fx, nn

from ..sim.inputs import check_count, is_integer
from ..sim.network import SpikingNetwork
from .graph import ChannelAffine, Scale

__all__ = ["CALIBRATIONS", "calibrate_snn"]

CALIBRATIONS = ("light", "advanced")


@torch.no_grad()
def calibrate_snn(
    snn: SpikingNetwork,
    images: Tensor,
    T: int,
    mode: str = "light",
    *,
    batch_size: int = 200,
    progress: bool = False,
) -> SpikingNetwork:
    """A calibrated copy of ``snn`` (``snn`` is unchanged), for simulation with ``T`` steps
    and analog (constant) input. ``images``: calibration images ``[N, C, H, W]`` in [0, 1],
    about 1,000 training images (Li et al.). ``mode``: ``light`` (per-channel bias
    correction) or ``advanced`` (plus a per-neuron initial potential). The network's
    ``info.calibration`` records the mode, T and each layer's mean absolute rate error
    before and after."""
    from ..sim.simulate import simulate

    if not isinstance(snn, SpikingNetwork):
        raise TypeError(f"calibrate_snn() takes a SpikingNetwork from spikeconv.convert(), not {type(snn).__name__}")
    if mode not in CALIBRATIONS:
        raise ValueError(f"mode must be one of {CALIBRATIONS}, got {mode!r}")
    if not is_integer(T) or T <= 0:
        raise ValueError(f"T (the time steps to calibrate for) must be a positive integer, got {T!r}")
    check_count("batch_size", batch_size)
    if not isinstance(images, Tensor) or images.ndim < 2 or tuple(images.shape[1:]) != snn.input_shape:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"calibration images must be a tensor [N, {', '.join(map(str, snn.input_shape))}], got {shape}")
    if len(images) == 0:
        raise ValueError("calibration images are empty: pass about 1,000 training images")
    if snn.readout == "softmax":
        raise ValueError("calibrate the network with readout 'spikes' or 'membrane' (the softmax readout draws at random)")
    calibrated = copy.deepcopy(snn)
    device = next(calibrated.parameters()).device
    images = images.to(device=device, dtype=calibrated.dtype)
    targets = _mean_rates_of_ann(calibrated, images, batch_size)
    stages = calibrated.spiking_stages
    layers: dict[str, dict[str, float]] = {}

    def mean_rates() -> list[Tensor]:
        """Every stage's rates after T steps, averaged over the images: one simulation gives
        the error left in the layer just corrected and the error of the next one."""
        result = simulate(calibrated, images, T=T, batch_size=batch_size, record_counts=True, progress=progress)
        assert result.spike_counts is not None
        return [result.spike_counts[s.name].double().mean(0) / T for s in stages]

    rates = mean_rates()
    for index, stage in enumerate(stages):
        if stage.gate is not None or stage.is_output:
            continue
        error = targets[index] - rates[index]
        report = {"error_before": float(error.abs().mean())}
        threshold = torch.as_tensor(stage.neuron.threshold, dtype=torch.float64)
        per_channel = error.mean(tuple(range(1, error.ndim))) if error.ndim > 1 else error
        _add_channel_bias(stage, per_channel * threshold.reshape(-1))
        rates = mean_rates()
        if mode == "advanced":
            error = targets[index] - rates[index]
            v_init = torch.as_tensor(stage.neuron.v_init, dtype=torch.float64) + T * error * threshold
            stage.neuron = dataclasses.replace(stage.neuron, v_init=v_init.to(calibrated.dtype))
            rates = mean_rates()
        report["error_after"] = float((targets[index] - rates[index]).abs().mean())
        layers[stage.name] = report
    record: dict[str, Any] = {"mode": mode, "T": T, "images": len(images), "layers": layers}
    if calibrated.info is not None:
        calibrated.info = dataclasses.replace(calibrated.info, calibration=record)
    return calibrated


def _mean_rates_of_ann(snn: SpikingNetwork, images: Tensor, batch_size: int) -> list[Tensor]:
    """Per stage, the ANN's activation in threshold units averaged over the images (float64)."""
    sums: list[Tensor] | None = None
    for start in range(0, len(images), batch_size):
        rates = snn.analog_forward(images[start : start + batch_size])
        batch = [r.double().sum(0) for r in rates]
        sums = batch if sums is None else [s + b for s, b in zip(sums, batch, strict=True)]
    assert sums is not None
    return [s / len(images) for s in sums]


def _add_channel_bias(stage: Any, delta: Tensor) -> None:
    """Add ``delta`` (one value per output channel or feature, in the units of the stage's
    input current) to the stage's synapse: into the bias of its last weighted layer where
    only per-channel linear ops follow it, else as a :class:`~spikeconv.conversion.graph.ChannelAffine`
    bias at the synapse's output."""
    synapse = stage.synapse
    if isinstance(synapse, nn.Sequential):
        modules = list(synapse)
        weighted = [i for i, m in enumerate(modules) if isinstance(m, (nn.Conv2d, nn.Linear, ChannelAffine))]
        tail = modules[weighted[-1] + 1 :] if weighted else []
        if weighted and all(isinstance(m, (nn.AvgPool2d, nn.AdaptiveAvgPool2d, Scale)) for m in tail):
            layer = modules[weighted[-1]]
            factor = torch.ones((), dtype=torch.float64)
            for m in tail:
                if isinstance(m, Scale):
                    factor = factor * m.factor.double().reshape(-1)
            weight: Tensor = layer.weight  # type: ignore[assignment]
            correction = (delta / factor).to(weight.dtype).reshape(-1)
            if layer.bias is None:
                layer.bias = nn.Parameter(torch.zeros(weight.shape[0], dtype=weight.dtype), requires_grad=False)
            bias: Tensor = layer.bias  # type: ignore[assignment]
            bias.add_(correction.expand_as(bias))
            return
        dtype = next((p.dtype for p in synapse.parameters()), torch.float32)
        synapse.append(ChannelAffine(torch.ones(delta.numel(), dtype=dtype), delta.reshape(-1).to(dtype)))
        return
    assert isinstance(synapse, fx.GraphModule)
    dtype = next((p.dtype for p in synapse.parameters()), torch.float32)
    name = "calibration_bias"
    synapse.add_module(name, ChannelAffine(torch.ones(delta.numel(), dtype=dtype), delta.reshape(-1).to(dtype)))
    output = next(n for n in synapse.graph.nodes if n.op == "output")
    with synapse.graph.inserting_before(output):
        node = synapse.graph.call_module(name, (output.args[0],))
    output.args = (node,)
    synapse.graph.lint()
    synapse.recompile()
