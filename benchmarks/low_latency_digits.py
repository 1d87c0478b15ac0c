"""Low-latency conversion on the bundled 8x8 digits: the digits net trained with ReLU,
threshold ReLU and QCFS, converted and simulated at T = 1 ... 64 (analog input, reset by
subtraction). A small measurement that runs in under a minute anywhere; the MNIST and
CIFAR-10 tables are made by benchmarks/low_latency.py.

    python benchmarks/low_latency_digits.py

Writes benchmarks/results/low_latency_digits.json, docs/results/low_latency_digits.md and
docs/results/low_latency_digits.png.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import spikeconv
from spikeconv.conversion.activations import QCFS, ThresholdReLU, replace_relus
from spikeconv.io import write_json, write_text
from spikeconv.io.data import load_digits
from spikeconv.models import build_model
from spikeconv.plotting import plot_accuracy
from spikeconv.training import evaluate_ann

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
STEPS = (1, 2, 4, 8, 16, 32, 64)
ACTIVATIONS: dict[str, Callable[[], nn.Module] | None] = {
    "ReLU": None,
    "threshold ReLU (theta trainable, from 2)": lambda: ThresholdReLU(2.0, trainable=True),
    "QCFS L=4": lambda: QCFS(4, 4.0),
    "QCFS L=8": lambda: QCFS(8, 4.0),
}
# (label, activation, rule, rule options, initial potential)
CONVERSIONS = [
    ("ReLU, max-norm", "ReLU", "maxnorm", {}, "auto"),
    ("ReLU, robust 99.9", "ReLU", "robust", {"p": 99.9}, "auto"),
    ("threshold ReLU, V(0) = theta/2", "threshold ReLU (theta trainable, from 2)", "maxnorm", {}, "auto"),
    ("threshold ReLU, V(0) = 0", "threshold ReLU (theta trainable, from 2)", "maxnorm", {}, 0.0),
    ("QCFS L=4, V(0) = theta/2", "QCFS L=4", "maxnorm", {}, "auto"),
    ("QCFS L=4, V(0) = 0", "QCFS L=4", "maxnorm", {}, 0.0),
    ("QCFS L=8, V(0) = theta/2", "QCFS L=8", "maxnorm", {}, "auto"),
]


def train_digits(make: Callable[[], nn.Module] | None, epochs: int, seed: int) -> nn.Module:
    """The zoo's digits net with its ReLUs replaced, trained as the demo trains it (Adam,
    lr 1e-2, batch 32, seeded)."""
    train_set = load_digits("train")
    torch.manual_seed(seed)
    model = build_model("digits")
    if make is not None:
        model = replace_relus(model, make)
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for x, y in train_set.batches(32, shuffle=True, generator=generator):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train_set, test_set = load_digits("train"), load_digits("test")
    models = {name: train_digits(make, args.epochs, args.seed) for name, make in ACTIVATIONS.items()}
    record: dict = {
        "command": "python benchmarks/low_latency_digits.py" + (f" --epochs {args.epochs}" if args.epochs != 30 else ""),
        "date": str(datetime.date.today()),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "T": max(STEPS),
        "coding": "constant",
        "test_images": len(test_set),
        "ann": {name: evaluate_ann(model, test_set) for name, model in models.items()},
        "conversions": {},
    }
    curves = {}
    for label, activation, rule, options, initial in CONVERSIONS:
        snn = spikeconv.convert(
            models[activation], train_set.tensors()[0], rule=rule, initial_potential=initial, **options
        )
        result = spikeconv.simulate(snn, test_set, T=max(STEPS), progress=sys.stderr.isatty())
        curves[label] = result.accuracy_curve()
        cumulative = torch.cumsum(result.spikes_per_step, 0) / result.num_images
        record["conversions"][label] = {
            "activation": activation,
            "rule": rule,
            "options": options,
            "initial_potential": initial,
            "scales": [layer.scale for layer in snn.info.mapping.layers] if snn.info else None,
            "accuracy": {str(t): result.accuracy_at(t) for t in STEPS},
            "spikes_per_image": {str(t): float(cumulative[t - 1]) for t in STEPS},
        }
    write_json(HERE / "results" / "low_latency_digits.json", record)
    plot_accuracy(
        curves, ROOT / "docs" / "results" / "low_latency_digits.png", ann_accuracy=None,
        title="8x8 digits: SNN accuracy over time, trained activations",
    )  # fmt: skip
    text = render(record)
    write_text(ROOT / "docs" / "results" / "low_latency_digits.md", text)
    print(text)


def render(record: dict) -> str:
    head = ["conversion", "ANN (%)"] + [f"T={t}" for t in STEPS] + ["spikes/image at T=8"]
    lines = [
        "# Low-latency conversion on the 8x8 digits",
        "",
        (
            f"Command: `{record['command']}` ({record['date']}, {record['machine']}). {record['test_images']} test "
            "images, analog input, reset by subtraction; each activation's layers take its clip value as threshold, "
            "the output layer max-norm."
        ),
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for label, entry in record["conversions"].items():
        cells = [label, f"{record['ann'][entry['activation']]:.2f}"]
        cells += [f"{entry['accuracy'][str(t)]:.2f}" for t in STEPS]
        cells.append(f"{entry['spikes_per_image']['8']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "![accuracy over time](low_latency_digits.png)", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
