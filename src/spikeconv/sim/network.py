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

from ..conversion.calibrate import ActivationStats
from ..conversion.rules import Mapping
from .inputs import is_number
from .neurons import GateParams, IFParams, if_step, maxpool_gate, softmax_spikes

__all__ = ["Readout", "READOUTS", "SpikingStage", "SpikingNetwork"]

Readout = Literal["spikes", "membrane", "softmax"]
READOUTS: tuple[str, ...] = ("spikes", "membrane", "softmax")


class SpikingStage(nn.Module):
    """A synapse (linear ops with the mapped weights, reading the outputs of ``sources``;
    ``-1`` is the network input) followed by a layer of IF neurons; or, when ``gate`` is
    set, a spiking max-pool gate over one source (no neurons, ``neuron`` unused)."""

    def __init__(
        self,
        name: str,
        synapse: nn.Module,
        neuron: IFParams,
        *,
        is_output: bool,
        sources: tuple[int, ...] | None = None,
        gate: GateParams | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.synapse = synapse
        self.neuron = neuron
        self.is_output = is_output
        self.sources = sources  # None: the previous stage (a chain)
        self.gate = gate

    def source_indices(self, index: int) -> tuple[int, ...]:
        """The stages this one (at position ``index``) reads; -1 is the network input."""
        return self.sources if self.sources is not None else (index - 1,)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, {self.gate if self.gate is not None else self.neuron}"


@dataclass(frozen=True, kw_only=True)
class ConversionInfo:
    """How the network was made: the rule's mapping and the statistics it used."""

    mapping: Mapping
    stats: ActivationStats
    reset: str
    v_min: float | None
    spiking_pool: bool
    initial_potential: float | str = 0.0  # fraction of the threshold, or "auto" (per activation)
    calibration: dict[str, Any] | None = None  # SNN Calibration's record (spikeconv.conversion.calibration)


class SpikingNetwork(nn.Module):
    """A converted spiking network."""

    def __init__(
        self,
        stages: list[SpikingStage],
        *,
        input_shape: tuple[int, ...],
        readout: Readout = "spikes",
        info: ConversionInfo | None = None,
        softmax_rate: float = 1.0,
    ) -> None:
        super().__init__()
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
        if not is_number(softmax_rate) or not 0 < softmax_rate <= 1:
            raise ValueError(f"softmax_rate (spike probability of the external generator per step) must be in (0, 1], got {softmax_rate}")
        self.stages = nn.ModuleList(stages)
        self.input_shape = tuple(input_shape)
        self.readout = readout
        self.info = info
        self.softmax_rate = softmax_rate  # the softmax readout's external Poisson generator, per step
        self.softmax_seed = 0  # seeds the softmax draws of forward(); reset_state() restarts them
        self._state: list[Tensor | None] | None = None
        self._generator: torch.Generator | None = None

    @property
    def spiking_stages(self) -> list[SpikingStage]:
        return list(self.stages)  # type: ignore[arg-type]

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype if any(True for _ in self.parameters()) else torch.float32

    def reset_state(self) -> None:
        """Forget all membrane potentials (start of a new input)."""
        self._state = None
        self._generator = None

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
        new_state: list[Tensor | None] = []
        outputs: list[Tensor] = []
        if self.readout == "softmax" and self._generator is None:
            self._generator = torch.Generator(device=x.device).manual_seed(self.softmax_seed)
        for index, stage in enumerate(self.spiking_stages):
            inputs = [x if s < 0 else outputs[s] for s in stage.source_indices(index)]
            previous = self._state[index] if self._state is not None else None
            if stage.gate is not None:
                out, state = maxpool_gate(inputs[0].unsqueeze(0), previous, stage.gate)
                out = out[0]
            else:
                z = stage.synapse(*inputs)
                v = previous if previous is not None else stage.neuron.initial_membrane(z)
                if stage.is_output and self.readout in ("membrane", "softmax"):
                    state = v + z
                    out = state if self.readout == "membrane" else softmax_spikes(state, self.softmax_rate, self._generator)
                else:
                    out, state = if_step(z, v, stage.neuron)
            new_state.append(state)
            outputs.append(out)
        self._state = new_state
        return outputs[-1]

    @torch.no_grad()
    def analog_forward(self, x: Tensor, *, clip: bool = False) -> list[Tensor]:
        """The rate each stage ideally fires at (ANN activation / lambda_l), unclipped:
        ``relu(synapse(a_prev)) / threshold`` stage by stage (Yang eqs. 8 and 11). With
        ``clip=True`` each hidden stage's rate is clamped to [0, 1] before the next stage
        reads it: the ANN of clip activations (threshold ReLU, QCFS without its floor)."""
        rates: list[Tensor] = []
        x = x.to(self.dtype)
        for index, stage in enumerate(self.spiking_stages):
            inputs = [x if s < 0 else rates[s] for s in stage.source_indices(index)]
            if stage.gate is not None:
                g = stage.gate
                rates.append(torch.nn.functional.max_pool2d(inputs[0], g.kernel_size, g.stride, g.padding))
                continue
            threshold = stage.neuron.threshold
            if isinstance(threshold, Tensor):
                threshold = threshold.to(device=x.device, dtype=x.dtype)
            z = stage.synapse(*inputs) / threshold
            rates.append(z if stage.is_output else z.clamp(0, 1) if clip else torch.relu(z))
        return rates

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary: stages, thresholds, reset, V_min and the rule's report."""
        summary: dict[str, Any] = {
            "input_shape": list(self.input_shape),
            "readout": self.readout,
            "stages": [
                {
                    "name": s.name,
                    "threshold": _plain(s.neuron.threshold),
                    "reset": s.neuron.reset,
                    "v_min": _plain(s.neuron.v_min),
                    "v_init": _plain(s.neuron.v_init),
                    "sources": list(s.source_indices(i)),
                    **({"maxpool_gate": vars(s.gate)} if s.gate is not None else {}),
                }
                for i, s in enumerate(self.spiking_stages)
            ],
        }
        if self.info is not None:
            summary["mapping"] = self.info.mapping.to_dict()
            summary["calibration_images"] = self.info.stats.images
            if self.info.calibration is not None:
                summary["snn_calibration"] = self.info.calibration
        return summary


def _plain(value: float | Tensor | None) -> float | list[float] | None:
    """A JSON-ready number or list."""
    if isinstance(value, Tensor):
        return [float(v) for v in value.flatten()]
    return value
