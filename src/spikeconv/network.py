"""The converted network: stages of synapses and IF neurons, plus the readout.

``SpikingNetwork`` is a stateful ``nn.Module``: ``forward`` takes an input sequence
``[T, B, ...]`` (already coded, e.g. spikes or a constant current) and returns the output
spikes ``[T, B, classes]``, carrying membrane potentials across calls until
``reset_state()``. For whole evaluations use :func:`spikeconv.simulate`, which is faster and
records accuracy at every step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .calibrate import ActivationStats
from .neurons import IFParams, if_step
from .rules import Mapping

__all__ = ["Readout", "READOUTS", "SpikingStage", "SpikingNetwork"]

Readout = Literal["spikes", "membrane"]
READOUTS: tuple[str, ...] = ("spikes", "membrane")


class SpikingStage(nn.Module):
    """A synapse (linear ops with the mapped weights) followed by a layer of IF neurons."""

    def __init__(self, name: str, synapse: nn.Sequential, neuron: IFParams, *, is_output: bool) -> None:
        super().__init__()
        self.name = name
        self.synapse = synapse
        self.neuron = neuron
        self.is_output = is_output

    def extra_repr(self) -> str:
        return f"name={self.name!r}, {self.neuron}"


@dataclass(frozen=True, kw_only=True)
class ConversionInfo:
    """How the network was made: the rule's mapping and the statistics it used."""

    mapping: Mapping
    stats: ActivationStats
    reset: str
    v_min: float | None
    spiking_pool: bool


class SpikingNetwork(nn.Module):
    """A converted spiking network."""

    def __init__(
        self,
        stages: list[SpikingStage],
        *,
        input_shape: tuple[int, ...],
        readout: Readout = "spikes",
        info: ConversionInfo | None = None,
    ) -> None:
        super().__init__()
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
        self.stages = nn.ModuleList(stages)
        self.input_shape = tuple(input_shape)
        self.readout = readout
        self.info = info
        self._state: list[Tensor] | None = None

    @property
    def spiking_stages(self) -> list[SpikingStage]:
        return list(self.stages)  # type: ignore[arg-type]

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype if any(True for _ in self.parameters()) else torch.float32

    def reset_state(self) -> None:
        """Forget all membrane potentials (start of a new input)."""
        self._state = None

    @property
    def output_membrane(self) -> Tensor | None:
        """The output layer's membrane potential after the last step (``None`` before any)."""
        return None if self._state is None else self._state[-1]

    def forward(self, inputs: Tensor) -> Tensor:
        """Simulate the input sequence ``[T, B, ...]`` step by step; return output spikes
        ``[T, B, classes]`` (for the membrane readout: the output membrane after each step)."""
        if inputs.ndim < 2 or tuple(inputs.shape[2:]) != self.input_shape:
            raise ValueError(
                f"input of shape {tuple(inputs.shape)} does not fit: expected [T, batch, "
                f"{', '.join(map(str, self.input_shape))}]"
            )
        outputs = []
        for x in inputs.to(self.dtype):
            outputs.append(self.step(x))
        return torch.stack(outputs)

    def step(self, x: Tensor) -> Tensor:
        """One time step for input ``x`` ``[B, ...]``; returns the output spikes ``[B, classes]``
        (membrane readout: the output membrane potential)."""
        new_state: list[Tensor] = []
        for index, stage in enumerate(self.spiking_stages):
            z = stage.synapse(x)
            v = self._state[index] if self._state is not None else torch.zeros_like(z)
            if stage.is_output and self.readout == "membrane":
                v = v + z
                x = v
            else:
                x, v = if_step(z, v, stage.neuron)
            new_state.append(v)
        self._state = new_state
        return x

    @torch.no_grad()
    def analog_forward(self, x: Tensor) -> list[Tensor]:
        """The rate each stage ideally fires at (ANN activation / lambda_l), unclipped:
        ``relu(synapse(a_prev)) / threshold`` stage by stage (Yang eqs. 8 and 11)."""
        rates = []
        x = x.to(self.dtype)
        for stage in self.spiking_stages:
            z = stage.synapse(x) / stage.neuron.threshold
            x = z if stage.is_output else torch.relu(z)
            rates.append(x)
        return rates

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary: stages, thresholds, reset, V_min and the rule's report."""
        summary: dict[str, Any] = {
            "input_shape": list(self.input_shape),
            "readout": self.readout,
            "stages": [
                {"name": s.name, "threshold": s.neuron.threshold, "reset": s.neuron.reset, "v_min": s.neuron.v_min}
                for s in self.spiking_stages
            ],
        }
        if self.info is not None:
            summary["mapping"] = self.info.mapping.to_dict()
            summary["calibration_images"] = self.info.stats.images
        return summary
