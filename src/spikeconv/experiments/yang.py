"""The experiments of Yang et al. 2020 Sec. 4, each a function returning a JSON-ready
record (with the paper's numbers beside ours where the paper gives them):

* :func:`activation_statistics` — Fig. 3: distribution of non-zero activations / a_M.
* :func:`sweep_n` — Table 4 and Fig. 6: stable accuracy, approximation error, latency per n.
* :func:`fixed_point` — Sec. 4.2.1: 16-bit fixed point, and a sweep of widths.
* :func:`noise_robustness` — Table 5 and Fig. 8: AWGN and salt-and-pepper noise.
* :func:`spike_comparison` — Sec. 4.2.1: spikes and time of the rule against max-norm.

Long ones take ``done`` (results of an earlier, interrupted run, keyed as they return
them) and call ``save(record)`` after every finished point, so a run can resume.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..conversion.calibrate import ActivationStats
from ..conversion.convert import build_snn
from ..conversion.graph import TracedNetwork
from ..conversion.rules import map_scales
from ..io.data import ImageDataset
from ..noise import distort
from ..sim.network import SpikingNetwork
from ..sim.simulate import SimulationResult, simulate
from ..training import evaluate_ann

__all__ = [
    "PAPER",
    "activation_statistics",
    "approximation_error",
    "fixed_point",
    "noise_robustness",
    "spike_comparison",
    "spike_input",
    "sweep_n",
]

Save = Callable[[dict[str, Any]], None]

PAPER: dict[str, dict[str, Any]] = {
    "mnist": {
        "unsaturated_first_layer_before_ceil": 83.37,
        "unsaturated_first_layer_after_ceil": 92.50,
        "n_chosen": 0.62,
        "sweep_n": {  # Table 4: n -> (stable accuracy %, approximation error)
            "0.1": (98.75, 0.582), "0.2": (99.06, 0.138), "0.3": (99.12, 0.066), "0.4": (99.12, 0.042),
            "0.5": (99.13, 0.031), "0.6": (99.10, 0.024), "0.7": (99.13, 0.020), "0.8": (99.10, 0.017),
            "0.9": (99.15, 0.015), "1.0": (99.13, 0.013),
        },
        "fixed_point_16_accuracy": 99.10,
        "float_accuracy": 99.09,
        "noise_delta_accuracy": {  # Table 5: ANN - SNN, percentage points
            "awgn": {"30": 0.03, "25": 0.07, "20": 0.04, "15": 0.02, "10": 0.10, "5": 0.31},
            "salt_and_pepper": {"0.03": 0.10, "0.06": 0.31, "0.09": 0.44, "0.12": 0.68, "0.15": 1.14},
        },
        "spikes_rule_over_maxnorm": 0.88,
        "time_saved": 0.33,
    },
    "cifar10": {
        "unsaturated_first_layer_before_ceil": 99.98,
        "unsaturated_first_layer_after_ceil": 99.99,
        "n_chosen": 0.57,
        "sweep_n": {
            "0.1": (76.10, 0.278), "0.2": (79.42, 0.079), "0.3": (79.82, 0.040), "0.4": (80.08, 0.026),
            "0.5": (80.14, 0.019), "0.6": (80.38, 0.014), "0.7": (80.46, 0.012), "0.8": (80.53, 0.010),
            "0.9": (80.55, 0.008), "1.0": (80.29, 0.007),
        },
        "fixed_point_16_accuracy": 80.41,
        "float_accuracy": 80.41,
        "noise_delta_accuracy": {
            "awgn": {"30": 0.61, "25": 0.39, "20": -0.52, "15": -1.63, "10": -1.46, "5": -0.79},
            "salt_and_pepper": {"0.03": 0.18, "0.06": 0.37, "0.09": 0.35, "0.12": 0.36, "0.15": 0.19},
        },
        "spikes_rule_over_maxnorm": 0.62,
        "time_saved": 0.39,
    },
}  # fmt: skip

N_VALUES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
AWGN_SNR_DB = (30, 25, 20, 15, 10, 5)
SALT_AND_PEPPER_DENSITY = (0.03, 0.06, 0.09, 0.12, 0.15)


def _noop(_: dict[str, Any]) -> None:
    return None


def activation_statistics(traced: TracedNetwork, stats: ActivationStats, n: float = 0.5, bins: int = 50) -> dict[str, Any]:
    """Fig. 3: per layer, the distribution of non-zero activations normalized by a_M
    (``bins`` bins over [0, 1]) and its integral curve; the fraction below 0.5 a_M, and
    the unsaturated fraction of the n-scaling rule before and after f^1 = ceil(f^1)."""
    after = map_scales(traced, stats, "nscaling", n=n)
    before = map_scales(traced, stats, "nscaling", n=n, ceil_first=False)
    layers = []
    for layer, a, b in zip(stats.layers, after.layers, before.layers, strict=True):
        edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
        cumulative = torch.tensor([layer.fraction_below(float(e) * layer.max) for e in edges])
        density = (cumulative[1:] - cumulative[:-1]).tolist()
        layers.append(
            {
                "name": layer.name,
                "a_M": layer.max,
                "nonzero_fraction": layer.nonzero / max(layer.count, 1),
                "below_half_a_M": layer.fraction_below(0.5 * layer.max),
                "unsaturated_before_ceil": b.unsaturated,
                "unsaturated_after_ceil": a.unsaturated,
                "scale_before_ceil": b.scale,
                "scale_after_ceil": a.scale,
                "bin_edges": edges.tolist(),
                "density": density,
                "cumulative": cumulative.tolist(),
            }
        )
    return {"n": n, "calibration_images": stats.images, "layers": layers}


@torch.no_grad()
def approximation_error(snn: SpikingNetwork, data: ImageDataset, result: SimulationResult, batch_size: int = 500) -> float:
    """Delta-epsilon of Yang eq. (11)-(12): the mean over last-layer neurons and images of
    |ideal rate - actual rate|, the ideal rate being the scaled ANN activation
    max(0, a^L / lambda_L) (in units of r_max) and the actual one spikes / T."""
    ideal = []
    for x, _ in data.batches(batch_size):
        ideal.append(snn.analog_forward(x)[-1].clamp_min(0).double().cpu())
    actual = result.output_counts.double() / result.T
    return float((torch.cat(ideal) - actual).abs().mean())


def _settle(result: SimulationResult, margin: float | None) -> dict[str, Any]:
    accuracy = result.accuracy_curve()
    return {
        "stable_accuracy": float(accuracy[-1]),
        "latency": result.latency(margin),
        "latency_margin_pp": result.latency_margin if margin is None else margin,
        "spikes_per_image": float(result.spikes_per_image.double().mean()),
    }


def sweep_n(
    traced: TracedNetwork,
    stats: ActivationStats,
    test: ImageDataset,
    *,
    ns: Sequence[float] = N_VALUES,
    T: int = 200,
    coding: str = "poisson",
    seed: int = 0,
    margin: float | None = None,
    ceil_first: bool = False,
    batch_size: int = 200,
    done: dict[str, Any] | None = None,
    save: Save = _noop,
    progress: bool = False,
) -> dict[str, Any]:
    """Table 4 / Fig. 6: for every n, the stable accuracy at ``T``, the approximation error
    and the latency to stable accuracy (first step within ``margin`` pp of it; by default
    what the test set resolves, :func:`spikeconv.metrics.latency_margin`). Also the
    n chosen automatically (smallest with >= 90 % unsaturated in every layer).

    ``ceil_first`` is off by default: with Appendix B's ceiling applied after the other
    factors, every scale is lambda_l = a_M^l ceil(n a_M^1) / a_M^1, so n acts only through
    ceil(n a_M^1) and a sweep collapses to a few distinct networks when a_M^1 is small.
    Table 4's ten distinct rows imply eq. (16) without the ceiling."""
    auto = map_scales(traced, stats, "nscaling", n="auto")
    record: dict[str, Any] = {
        "T": T, "coding": coding, "seed": seed, "margin": margin, "test_images": len(test), "ceil_first": ceil_first,
        "n_auto": auto.options["n"], "a_M_first_layer": stats.layers[0].max,
        "points": dict((done or {}).get("points", {})),
    }  # fmt: skip
    for n in ns:
        key = f"{n:g}"
        if key in record["points"]:
            continue
        snn = build_snn(traced, stats, "nscaling", n=n, ceil_first=ceil_first, reset="zero")
        result = simulate(snn, test, T=T, coding=coding, seed=seed, batch_size=batch_size, progress=progress)
        point = _settle(result, margin)
        point.update(
            approximation_error=approximation_error(snn, test, result),
            unsaturated={layer.name: layer.unsaturated for layer in snn.info.mapping.layers} if snn.info else {},
            accuracy_curve=result.accuracy_curve().tolist(),
        )
        record["points"][key] = point
        save(record)
    return record


def fixed_point(
    snn: SpikingNetwork,
    test: ImageDataset,
    *,
    T: int = 100,
    widths: Sequence[int] = tuple(range(8, 17)),
    coding: str = "poisson",
    seed: int = 0,
    batch_size: int = 200,
    done: dict[str, Any] | None = None,
    save: Save = _noop,
    progress: bool = False,
) -> dict[str, Any]:
    """Sec. 3.4 / 4.2.1: accuracy with weights and membranes in signed fixed point of each
    width (integer bits N from V_min), the fraction of weights that quantize to zero, and
    float for comparison. Widths too narrow for N are reported as such."""
    record: dict[str, Any] = dict(done or {})
    record.update(T=T, coding=coding, seed=seed, test_images=len(test))
    if snn.info is not None:
        record.update(v_min=snn.info.mapping.v_min, integer_bits=snn.info.mapping.membrane_bits)
    if "float" not in record:
        result = simulate(snn, test, T=T, coding=coding, seed=seed, batch_size=batch_size, progress=progress)
        record["float"] = {"accuracy": result.final_accuracy, "accuracy_curve": result.accuracy_curve().tolist()}
        save(record)
    record.setdefault("widths", {})
    for width in widths:
        if str(width) in record["widths"]:
            continue
        try:
            result = simulate(
                snn, test, T=T, coding=coding, seed=seed, batch_size=batch_size, fixed_point_bits=width,
                progress=progress,
            )  # fmt: skip
        except ValueError as error:
            record["widths"][str(width)] = {"error": str(error)}
        else:
            record["widths"][str(width)] = {
                "accuracy": result.final_accuracy,
                "format": result.fixed_point,
                "accuracy_curve": result.accuracy_curve().tolist(),
            }
        save(record)
    return record


def noise_robustness(
    model: nn.Module,
    snn: SpikingNetwork,
    test: ImageDataset,
    *,
    T: int = 100,
    coding: str = "poisson",
    repeats: int = 5,
    seed: int = 0,
    snr_db: Sequence[float] = AWGN_SNR_DB,
    densities: Sequence[float] = SALT_AND_PEPPER_DENSITY,
    batch_size: int = 200,
    done: dict[str, Any] | None = None,
    save: Save = _noop,
    progress: bool = False,
) -> dict[str, Any]:
    """Table 5 / Fig. 8: ANN and SNN accuracy on test images distorted by AWGN (SNR per
    image) and salt-and-pepper noise, ``repeats`` seeded draws each; mean, min and max,
    and Delta-Acc = ANN - SNN. The noise of repeat r is the same for the ANN and the SNN."""
    images, labels = test.tensors()
    record: dict[str, Any] = {"T": T, "coding": coding, "repeats": repeats, "seed": seed, "test_images": len(test)}
    record["awgn"] = dict((done or {}).get("awgn", {}))
    record["salt_and_pepper"] = dict((done or {}).get("salt_and_pepper", {}))
    plan: list[tuple[str, float]] = [("awgn", s) for s in snr_db] + [("salt_and_pepper", d) for d in densities]
    for kind, level in plan:
        key = f"{level:g}"
        if key in record[kind]:
            continue
        ann, snn_acc = [], []
        for r in range(repeats):
            generator = torch.Generator().manual_seed(seed * 1000 + r)
            noisy = distort(images, kind, level, generator)
            distorted = ImageDataset(images=noisy, labels=labels, name=f"{test.name}-{kind}", classes=test.classes)
            ann.append(evaluate_ann(model, distorted))
            spikes_in = spike_input(noisy, coding)
            result = simulate(snn, (spikes_in, labels), T=T, coding=coding, seed=seed + r, batch_size=batch_size)
            snn_acc.append(result.final_accuracy)
        record[kind][key] = _spread(ann, snn_acc)
        save(record)
    return record


def spike_input(noisy: Tensor, coding: str) -> Tensor:
    """A noisy image as a spike coding reads it: intensities clipped to [0, 1], so a pixel
    pushed below 0 never fires and one above 1 fires every step (the spikes of a Bernoulli
    draw ``u < x`` with ``u`` in [0, 1) for the unclipped value). Analog input takes the
    values as they are."""
    return noisy if coding == "constant" else noisy.clamp(0.0, 1.0)


def _spread(ann: list[float], snn: list[float]) -> dict[str, Any]:
    a, s = torch.tensor(ann, dtype=torch.float64), torch.tensor(snn, dtype=torch.float64)
    return {
        "ann": ann,
        "snn": snn,
        "ann_mean": float(a.mean()),
        "snn_mean": float(s.mean()),
        "ann_range": [float(a.min()), float(a.max())],
        "snn_range": [float(s.min()), float(s.max())],
        "delta_accuracy": float((a - s).mean()),
    }


def spike_comparison(
    traced: TracedNetwork,
    stats: ActivationStats,
    test: ImageDataset,
    *,
    n: float = 0.5,
    T: int = 200,
    coding: str = "poisson",
    seed: int = 0,
    batch_size: int = 200,
    progress: bool = False,
) -> dict[str, Any]:
    """Sec. 4.2.1: max-norm's stable accuracy (at ``T``), the first step at which each
    rule reaches it, the spikes each has used by then and by ``T``, and the ratios."""
    results = {}
    plan: list[tuple[str, str, dict[str, Any]]] = [("maxnorm", "maxnorm", {}), ("nscaling", "nscaling", {"n": n})]
    for label, rule, options in plan:
        snn = build_snn(traced, stats, rule, reset="zero", **options)
        results[label] = simulate(snn, test, T=T, coding=coding, seed=seed, batch_size=batch_size, progress=progress)
    target = results["maxnorm"].final_accuracy
    record: dict[str, Any] = {"T": T, "coding": coding, "n": n, "test_images": len(test), "target_accuracy": target}
    for label, result in results.items():
        step = result.steps_to_reach(target)
        cumulative: Tensor = torch.cumsum(result.spikes_per_step, 0)
        record[label] = {
            "steps_to_target": step,
            "spikes_to_target": None if step is None else float(cumulative[step - 1]),
            "spikes_at_T": float(cumulative[-1]),
            "final_accuracy": result.final_accuracy,
            "accuracy_curve": result.accuracy_curve().tolist(),
        }
    rule, base = record["nscaling"], record["maxnorm"]
    record["spikes_ratio_at_T"] = rule["spikes_at_T"] / base["spikes_at_T"]
    if rule["steps_to_target"] is not None and base["steps_to_target"] is not None:
        record["spikes_ratio_to_target"] = rule["spikes_to_target"] / base["spikes_to_target"]
        record["time_saved"] = 1 - rule["steps_to_target"] / base["steps_to_target"]
    return record
