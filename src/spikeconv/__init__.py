"""spikeconv: convert trained PyTorch CNNs into spiking networks of integrate-and-fire
neurons, simulate them fast and measure accuracy over time, latency and spikes.

    snn = spikeconv.convert(model, calibration_images, rule="nscaling")
    result = spikeconv.simulate(snn, (test_images, test_labels), T=100)
    result.accuracy        # [T] accuracy after every step, percent
    spikeconv.save(snn, "net.snn.pt"); snn = spikeconv.load("net.snn.pt")
"""

from . import activations
from .calibrate import ActivationStats, LayerStats, calibrate
from .convert import build_snn, convert
from .graph import ConversionError, TracedNetwork, UnsupportedModelError, trace
from .inputs import InputRangeWarning
from .io import export
from .io.snn_file import load, save
from .network import SpikingNetwork
from .neurons import IFParams, if_step
from .rules import RULES, Mapping, map_scales
from .simulate import SimulationResult, simulate

__version__ = "0.1.0"

__all__ = [
    "ActivationStats",
    "ConversionError",
    "IFParams",
    "InputRangeWarning",
    "LayerStats",
    "Mapping",
    "RULES",
    "SimulationResult",
    "SpikingNetwork",
    "TracedNetwork",
    "UnsupportedModelError",
    "activations",
    "build_snn",
    "calibrate",
    "convert",
    "export",
    "if_step",
    "load",
    "map_scales",
    "save",
    "simulate",
    "trace",
]
