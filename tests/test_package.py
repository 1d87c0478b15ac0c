"""The package layout: the public API at the top level, the modules grouped by phase."""

from __future__ import annotations

import importlib
from pathlib import Path

import spikeconv


def test_every_public_name_resolves_to_its_subpackage_definition():
    homes = {
        "convert": "conversion.convert", "build_snn": "conversion.convert", "trace": "conversion.graph",
        "calibrate": "conversion.calibrate", "calibrate_snn": "conversion.calibration", "QCFS": "conversion.activations",
        "RateNorm": "conversion.activations", "ThresholdReLU": "conversion.activations",
        "replace_relus": "conversion.activations", "simulate": "sim.simulate", "if_step": "sim.neurons",
        "SpikingNetwork": "sim.network", "simulate_distributed": "sim.distributed", "load": "io.snn_file",
    }  # fmt: skip
    for name in spikeconv.__all__:
        assert getattr(spikeconv, name) is not None, name
    for name, home in homes.items():
        assert getattr(spikeconv, name) is getattr(importlib.import_module(f"spikeconv.{home}"), name), name
    # `spikeconv.convert` and `spikeconv.simulate` are the functions, their modules stay importable
    assert callable(spikeconv.convert) and callable(spikeconv.simulate)
    assert importlib.import_module("spikeconv.conversion.convert").__name__ == "spikeconv.conversion.convert"


def test_the_c_kernels_ship_beside_the_module_that_compiles_them():
    from spikeconv.sim import kernels

    source = Path(kernels.__file__).with_suffix(".c")
    assert source.is_file() and "if_recurrence_f64" in source.read_text()
