"""How often event-driven synapses on float weights move a spike (issue 17).

With unrounded float weights the event-driven synapses (``spikeconv.sim.events``) sum in
another order than the dense convolution, so a current can differ by float rounding and
a membrane that lands within it of the threshold fires one step earlier or later. This
script measures how often that changes what users read off a run, on trained networks with
their ordinary float weights: the fast path (``simulate()``'s default) against the
step-by-step reference (``method="reference"``, dense ops one step at a time), T = 100,
analog input, max-norm, reset by subtraction, on every test image.

    python benchmarks/float_events.py --data-root ../shared/datasets

Writes ``benchmarks/results/float_events.json`` and ``docs/results/float_events.md``.
Each network's result is saved as soon as it is done; a rerun skips the finished ones
unless ``--force``. Networks: the Yang MNIST net (committed checkpoint, 10,000 MNIST test
images), the trained ``vgg-small`` (committed, 10,000 CIFAR-10 test images) and
Rueckauer's CIFAR-10 net with average pools, on 2,000 seeded test images, when
``benchmarks/runs/rueckauer-cifar10-speed.pt`` exists (its training command is in benchmarks/speed/bench.py), and VGG-16 at a quarter
of the width as trained by ``benchmarks/low_latency.py --net vgg-cifar`` (ReLU, 30 epochs,
spiking max-pool) when its checkpoint exists, on 2,000 seeded test images: a deep net,
where a moved spike has more layers to travel through.

Targets: output spike counts identical on >= 99.9 % of images, and the accuracy at every
step within 0.05 percentage points of the reference's.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import spikeconv
from spikeconv.io import write_json, write_text
from spikeconv.io.data import load_dataset
from spikeconv.training import load_model

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "benchmarks" / "runs"
OUT = ROOT / "benchmarks" / "results" / "float_events.json"
DOC = ROOT / "docs" / "results" / "float_events.md"
THREADS = 2
NETWORKS = ("yang-mnist", "vgg-small", "rueckauer-cifar10", "vgg16-quarter")
# the extra nets are simulated on a seeded subset (the targets are on the first two, on every image)
IMAGES = {"rueckauer-cifar10": 2000, "vgg16-quarter": 2000}
TARGET_SAME = 99.9  # % of images with identical output counts
TARGET_ACCURACY = 0.05  # percentage points, at every step


def network(name: str, data_root: Path) -> tuple[nn.Module, torch.Tensor, Any] | None:
    """(ANN, calibration images, test set) or None when its checkpoint or data is absent."""
    if name == "yang-mnist":
        model, _ = load_model(RUNS / "yang-mnist.pt")
        train, test = load_dataset("mnist", "train", data_root), load_dataset("mnist", "test", data_root)
        return model, train.as_float(train.subset(5000, seed=0).images), test
    checkpoint = RUNS / {
        "vgg-small": "vgg-small-cifar10.pt", "rueckauer-cifar10": "rueckauer-cifar10-speed.pt",
        "vgg16-quarter": "low_latency/vgg-cifar-relu.pt",
    }[name]  # fmt: skip
    if not checkpoint.is_file() or not (data_root / "cifar10-jpeg").is_dir():
        return None
    model, record = load_model(checkpoint)
    if record.get("epoch", 0) < record.get("options", {}).get("epochs", 0):
        print(f"{name}: {checkpoint.name} is still training (epoch {record['epoch']})")
        return None
    if name == "rueckauer-cifar10":  # as in the speed bench: average pools, no softmax
        layers = [nn.AvgPool2d(m.kernel_size, m.stride) if isinstance(m, nn.MaxPool2d) else m for m in model]
        model = nn.Sequential(*[m for m in layers if not isinstance(m, nn.Softmax)]).eval()
    test = load_dataset("cifar10", "test", data_root)
    # calibrate on 1,000 seeded test images (the 50,000 training JPEGs take minutes to read);
    # the accuracy compared is the SNN's against itself, so calibration's source does not matter
    return model, test.as_float(test.subset(1000, seed=1).images), test


def compare(snn: spikeconv.SpikingNetwork, test: Any, T: int, images: int | None) -> dict[str, Any]:
    data = test.subset(images, seed=0) if images else test
    runs: dict[str, spikeconv.SimulationResult] = {}
    times: dict[str, float] = {}
    for label, options in (("events", {}), ("exact", {"exact": True}), ("reference", {"method": "reference"})):
        started = time.perf_counter()
        runs[label] = spikeconv.simulate(snn, data, T=T, batch_size=100, progress=True, **options)
        times[label] = time.perf_counter() - started
        print(f"  {label}: {times[label]:.1f} s, accuracy {runs[label].final_accuracy:.2f} %", flush=True)
    reference = runs["reference"]
    n = reference.num_images
    rows = {}
    for label in ("events", "exact"):
        result = runs[label]
        same = (result.output_counts == reference.output_counts).all(1)
        gap = (result.correct_per_step - reference.correct_per_step).abs().double() * 100 / n
        spikes = {k: result.spikes_per_layer[k] - v for k, v in reference.spikes_per_layer.items()}
        rows[label] = {
            "seconds": times[label],
            "same_output_counts_percent": float(same.double().mean() * 100),
            "images_with_other_output_counts": int((~same).sum()),
            "images_with_other_prediction": int((result.predictions != reference.predictions).sum()),
            "max_accuracy_gap_pt": float(gap.max()),
            "steps_with_accuracy_gap": int((gap > 0).sum()),
            "spike_difference_per_layer": spikes,
            "spikes_total": sum(result.spikes_per_layer.values()),
        }  # fmt: skip
    return {
        "images": n, "T": T, "reference_seconds": times["reference"],
        "accuracy_final": {k: r.final_accuracy for k, r in runs.items()},
        "reference_spikes_total": sum(reference.spikes_per_layer.values()),
        "firing_rates": reference.firing_rates,
        "runs": rows,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "datasets")
    parser.add_argument("--T", type=int, default=100)
    parser.add_argument("--images", type=int, default=None, help="a seeded subset of each test set (default: all)")
    parser.add_argument("--force", action="store_true", help="recompute finished networks")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    results: dict[str, Any] = {}
    if OUT.is_file() and not args.force:
        import json

        results = json.loads(OUT.read_text())
        if (results.get("T"), results.get("images_option")) != (args.T, args.images):
            results = {}
    results.update({
        "command": "python benchmarks/float_events.py --data-root ../shared/datasets"
        + (f" --T {args.T}" if args.T != 100 else "") + (f" --images {args.images}" if args.images else ""),
        "T": args.T, "images_option": args.images, "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.machine()}, torch {torch.__version__}",
        "kernel": spikeconv.sim.kernels.available(),
    })  # fmt: skip
    results.setdefault("networks", {})
    for name in NETWORKS:
        if name in results["networks"]:
            print(f"{name}: done before (--force to redo)")
            continue
        loaded = network(name, args.data_root)
        if loaded is None:
            print(f"{name}: skipped (no checkpoint or no data)")
            continue
        ann, calibration, test = loaded
        print(f"{name}: converting", flush=True)
        snn = spikeconv.convert(ann, calibration, rule="maxnorm", reset="subtract", calibration_size=None)
        entry = compare(snn, test, args.T, args.images or IMAGES.get(name))
        entry["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        results["networks"][name] = entry
        write_json(OUT, results)
    write_text(DOC, report(results))
    print(f"-> {OUT}, {DOC}")


def report(results: dict[str, Any]) -> str:
    lines = [
        "# Event-driven synapses on float weights: how often a spike moves",
        "",
        (
            f"`{results['command']}` ({results['machine']}, {results['torch_threads']} threads). Trained networks "
            f"with their float weights, max-norm, reset by subtraction, analog input, T = {results['T']}. 'events': "
            "`simulate()`'s default fast path, whose event-driven synapses sum float weights in another order than "
            "the dense convolution (and whose dense convolutions run time-batched, channels-last); 'exact': the "
            "fast path with `exact=True`, which calls those synapses step by step as the reference does; each "
            "against the step-by-step reference (`method=\"reference\"`). Targets: output spike counts identical "
            f"on >= {TARGET_SAME} % of images, accuracy within {TARGET_ACCURACY} pt of the reference's at every "
            "step. (The JSON keeps each run's wall time, but other jobs may have run meanwhile: the speed figures "
            "are in docs/speed.md.)"
        ),
        "",
        (
            "| network | images | run | same output counts | other prediction at T | max accuracy gap (pt) "
            "| steps with a gap | net change of spike counts per layer (of all spikes) |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in results["networks"].items():
        for label, row in entry["runs"].items():
            moved = sum(abs(v) for v in row["spike_difference_per_layer"].values())
            meets = row["same_output_counts_percent"] >= TARGET_SAME and row["max_accuracy_gap_pt"] <= TARGET_ACCURACY
            lines.append(
                f"| {name} | {entry['images']} | {label} | {row['same_output_counts_percent']:.2f} % "
                f"({row['images_with_other_output_counts']} differ){'' if meets else ' (target missed)'} | "
                f"{row['images_with_other_prediction']} | {row['max_accuracy_gap_pt']:.2f} | "
                f"{row['steps_with_accuracy_gap']} of {entry['T']} | {moved:.0f} of {entry['reference_spikes_total']:.4g} |"
            )
    lines += ["", "Final accuracy (%) and firing rates of the reference:", ""]
    for name, entry in results["networks"].items():
        accuracy = ", ".join(f"{k} {v:.2f}" for k, v in entry["accuracy_final"].items())
        rates = ", ".join(f"{k}: {v:.1%}" for k, v in entry["firing_rates"].items())
        lines.append(f"- {name} ({entry['date']}): {accuracy}; firing rates {rates}")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
