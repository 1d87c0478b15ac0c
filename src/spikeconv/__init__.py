"""spikeconv: convert trained PyTorch CNNs into spiking networks of integrate-and-fire
neurons, simulate them fast and measure accuracy over time, latency and spikes.

    snn = spikeconv.convert(model, calibration_images, rule="nscaling")
    result = spikeconv.simulate(snn, (test_images, test_labels), T=100)
    result.accuracy        # [T] accuracy after every step, percent
    spikeconv.save(snn, "net.snn.pt"); snn = spikeconv.load("net.snn.pt")
"""

from .conversion import activations
from .conversion.activations import (
    QCFS,
    RateNorm,
    ThresholdReLU,
    rate_inference_loss,
    replace_relus,
)
from .conversion.calibrate import ActivationStats, LayerStats, calibrate
from .conversion.calibration import calibrate_snn
from .conversion.convert import build_snn, convert
from .conversion.graph import (
    ConversionError,
    TracedNetwork,
    UnsupportedModelError,
    trace,
)
from .conversion.rules import RULES, Mapping, map_scales
from .io import export
from .io.snn_file import load, save
from .sim.distributed import simulate_distributed
from .sim.inputs import InputRangeWarning
from .sim.network import SpikingNetwork
from .sim.neurons import IFParams, if_step
from .sim.simulate import SimulationResult, simulate

__version__ = "0.1.0"

__all__ = [
    "ActivationStats",
    "ConversionError",
    "IFParams",
    "InputRangeWarning",
    "LayerStats",
    "Mapping",
    "QCFS",
    "RULES",
    "RateNorm",
    "SimulationResult",
    "SpikingNetwork",
    "ThresholdReLU",
    "TracedNetwork",
    "UnsupportedModelError",
    "activations",
    "build_snn",
    "calibrate",
    "calibrate_snn",
    "convert",
    "export",
    "if_step",
    "load",
    "map_scales",
    "rate_inference_loss",
    "replace_relus",
    "save",
    "simulate",
    "simulate_distributed",
    "trace",
]
