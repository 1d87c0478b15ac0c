"""Compare conversion rules on one trained model: accuracy against T, latency, spikes,
timings; calibrated once, every rule mapped from the same statistics."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..conversion.calibrate import calibrate
from ..conversion.convert import build_snn
from ..conversion.graph import trace
from ..io.data import ImageDataset
from ..metrics import conversion_loss
from ..sim.simulate import simulate
from ..training import evaluate_ann

__all__ = ["RuleSetting", "compare_rules", "markdown_table", "DEFAULT_STEPS"]

DEFAULT_STEPS = (10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 200)


@dataclass(frozen=True, kw_only=True)
class RuleSetting:
    """One conversion to compare: a label, the rule and its options."""

    label: str
    rule: str
    reset: str = "subtract"
    options: Mapping[str, Any] = field(default_factory=dict)


def compare_rules(
    model: nn.Module,
    calibration: ImageDataset,
    test: ImageDataset,
    settings: Sequence[RuleSetting],
    *,
    T: int,
    coding: str = "constant",
    seed: int = 0,
    batch_size: int = 100,
    calibration_size: int = 5000,
    steps: Sequence[int] = DEFAULT_STEPS,
    targets: Sequence[float] = (),
    progress: bool = True,
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Calibrate once, convert with every setting, simulate the test set to ``T``.
    Returns a JSON-ready record and the accuracy curves by label."""
    ann_accuracy = evaluate_ann(model, test)
    started = time.perf_counter()
    traced = trace(model, test.input_shape)
    calib_images = calibration.subset(calibration_size, seed=seed).tensors()[0]
    stats = calibrate(traced, calib_images, max_images=None)
    calibration_time = time.perf_counter() - started
    record: dict[str, Any] = {
        "ann_accuracy": ann_accuracy,
        "test_images": len(test),
        "calibration_images": stats.images,
        "calibration_time_s": calibration_time,
        "T": T,
        "coding": coding,
        "seed": seed,
        "torch_threads": torch.get_num_threads(),
        "rules": {},
    }
    curves: dict[str, Tensor] = {}
    for setting in settings:
        started = time.perf_counter()
        snn = build_snn(traced, stats, setting.rule, reset=setting.reset, **dict(setting.options))
        mapping_time = time.perf_counter() - started
        result = simulate(snn, test, T=T, coding=coding, seed=seed, batch_size=batch_size, progress=progress)
        accuracy = result.accuracy
        assert accuracy is not None
        curves[setting.label] = accuracy
        summary = result.to_dict(steps=[s for s in steps if s <= T])
        summary.update(
            rule=setting.rule,
            reset=setting.reset,
            options=dict(setting.options),
            conversion_loss=conversion_loss(ann_accuracy, result.final_accuracy),
            mapping_time_s=mapping_time,
            simulation_time_s=result.wall_time_s,
            steps_to_reach={str(t): result.steps_to_reach(t) for t in targets},
            accuracy_curve=accuracy.tolist(),
            mapping=snn.info.mapping.to_dict() if snn.info else None,
        )
        summary.pop("wall_time_s")
        record["rules"][setting.label] = summary
    return record, curves


def markdown_table(record: dict[str, Any], steps: Sequence[int]) -> str:
    """Accuracy at the chosen steps, one row per rule, with latency and spikes."""
    shown = [s for s in steps if s <= record["T"]]
    head = ["rule"] + [f"T={s}" for s in shown] + ["latency (steps, margin)", "spikes/image", "sim. time (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, entry in record["rules"].items():
        cells = [label] + [f"{entry['accuracy'][str(s)]:.2f}" for s in shown]
        cells += [
            f"{entry['latency']} (±{entry['latency_margin_pp']:.2f} pp)",
            f"{entry['spikes_per_image']:.0f}",
            f"{entry['simulation_time_s']:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"\nANN accuracy: {record['ann_accuracy']:.2f} % on {record['test_images']} test images. {LATENCY_TEXT}")
    return "\n".join(lines)


LATENCY_TEXT = (
    "Latency: the first step from which the accuracy stays within the margin of its value at T; the margin is "
    "the half-width of that accuracy's 95 % confidence interval on the test images, at least one image and 0.1 pp "
    "(`spikeconv.metrics.latency_margin`)."
)
