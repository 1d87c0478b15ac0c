"""Yang et al. 2020 on MNIST: train the Table 2 network, convert it with max-norm and with
the n-scaling rule (n = 0.5), simulate the 10,000 test images and compare with the paper.

Run by hand on a quiet machine (nothing else running: timings are reported):

    python benchmarks/mnist_yang.py --data-root ../shared/datasets

Writes benchmarks/results/mnist_yang.json and docs/results/mnist_yang.md. The trained
model is kept in benchmarks/runs/yang-mnist.pt (training resumes from it); each input
coding's results are saved as soon as they are done, and a rerun skips the finished ones
unless --force is given.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from spikeconv.experiments import RuleSetting, compare_rules
from spikeconv.experiments.compare import LATENCY_TEXT
from spikeconv.io import write_json, write_text
from spikeconv.io.data import load_mnist
from spikeconv.plotting import plot_accuracy
from spikeconv.training import TrainOptions, train

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
STEPS = (10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 200)
TARGETS = (99.0, 99.03)
TRAIN_OPTIONS = TrainOptions(epochs=15, batch_size=64, lr=1e-3, seed=0)
PAPER = {  # Yang et al. 2020, Sec. 4.2.1 and Table 3
    "ann_accuracy": 99.11,
    "snn_accuracy_T100_rule": 99.09,
    "weight_normalization_accuracy": 99.11,
    "steps_to_99.03_rule": 67,
    "steps_to_99.03_maxnorm": 100,
    "spikes_rule_over_maxnorm": 0.88,
}
SETTINGS = [
    RuleSetting(label="maxnorm", rule="maxnorm", reset="zero"),
    RuleSetting(label="nscaling (n=0.5)", rule="nscaling", reset="zero", options={"n": 0.5}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "datasets")
    parser.add_argument("-T", "--T", dest="T", type=int, default=200)
    parser.add_argument("--codings", default="poisson,constant", help="input codings to run, comma-separated")
    parser.add_argument("--calibration-size", type=int, default=60000, help="training images for a_M (Yang: all)")
    parser.add_argument("--test-size", type=int, default=None, help="a seeded test subset (default: all 10,000)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "mnist_yang.json")
    parser.add_argument("--force", action="store_true", help="rerun codings already in --out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    train_set = load_mnist(args.data_root, "train")
    test_set = load_mnist(args.data_root, "test").subset(args.test_size, seed=0)
    started = time.perf_counter()
    model, checkpoint = train("yang-mnist", train_set, test_set, TRAIN_OPTIONS, HERE / "runs" / "yang-mnist.pt")
    training_wall = time.perf_counter() - started

    record = json.loads(args.out.read_text()) if args.out.exists() and not args.force else {}
    record.update(
        command=f"python benchmarks/mnist_yang.py --data-root {args.data_root} -T {args.T} --codings {args.codings}",
        machine=f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        dataset="MNIST (../shared/datasets: train images 17,435+ rebuilt from PNG, test set exact)",
        train_options=vars(TRAIN_OPTIONS) | {"epochs_run": checkpoint["history"][-1]["epoch"]},
        training_history=checkpoint["history"],
        paper=PAPER,
    )
    record.setdefault("codings", {})
    if training_wall > 5:
        record["training_wall_s"] = training_wall
    for coding in args.codings.split(","):
        if coding in record["codings"]:
            print(f"{coding}: already in {args.out} (use --force to rerun)")
            continue
        result, curves = compare_rules(
            model, train_set, test_set, SETTINGS, T=args.T, coding=coding, seed=0, batch_size=args.batch_size,
            calibration_size=args.calibration_size, steps=STEPS, targets=TARGETS, progress=sys.stderr.isatty(),
        )  # fmt: skip
        record["codings"][coding] = result
        write_json(args.out, record)
        plot_accuracy(
            curves, ROOT / "docs" / "results" / f"mnist_yang_{coding}.png", ann_accuracy=result["ann_accuracy"],
            title=f"Yang MNIST net, {coding} input, reset to zero", ylim=(97.0, 99.6),
        )  # fmt: skip
    write_text(ROOT / "docs" / "results" / "mnist_yang.md", render(record))
    print(render(record))


def render(record: dict) -> str:
    lines = [
        "# Yang et al. 2020 on MNIST: max-norm against the n-scaling rule",
        "",
        f"Command: `{record['command']}`  ",
        f"Machine: {record['machine']}  ",
        f"Data: {record['dataset']}",
        "",
    ]
    for coding, result in record["codings"].items():
        lines += [
            f"## {coding} input, reset to zero, {result['test_images']} test images",
            "",
            f"ANN accuracy: **{result['ann_accuracy']:.2f} %** (paper: {PAPER['ann_accuracy']} %). "
            f"Statistics from {result['calibration_images']} training images in {result['calibration_time_s']:.1f} s.",
            "",
        ]
        head = ["rule"] + [f"T={s}" for s in STEPS if s <= result["T"]]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for label, entry in result["rules"].items():
            lines.append("| " + " | ".join([label] + [f"{entry['accuracy'][str(s)]:.2f}" for s in STEPS if s <= result["T"]]) + " |")
        lines += ["", "| rule | first t >= 99.0 % | first t >= 99.03 % | latency (steps, margin) | spikes/image | "
                  "conversion loss (pp) | mapping (s) | simulation (s) |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for label, entry in result["rules"].items():
            reach = entry["steps_to_reach"]
            lines.append(
                f"| {label} | {reach['99.0']} | {reach['99.03']} | {entry['latency']} (±{entry['latency_margin_pp']:.2f} pp) | "
                f"{entry['spikes_per_image']:.0f} | {entry['conversion_loss']:.2f} | {entry['mapping_time_s']:.3f} | "
                f"{entry['simulation_time_s']:.1f} |"
            )
        lines += ["", LATENCY_TEXT]
        rules = result["rules"]
        ratio = rules["nscaling (n=0.5)"]["spikes_per_image"] / rules["maxnorm"]["spikes_per_image"]
        lines += [
            "",
            f"Spikes, rule / max-norm, at T = {result['T']}: {ratio:.2f} (paper: {PAPER['spikes_rule_over_maxnorm']}).",
            "",
            f"![accuracy over time](mnist_yang_{coding}.png)",
            "",
        ]
    lines += [
        "## Paper (Yang et al. 2020, Sec. 4.2.1)",
        "",
        f"ANN {PAPER['ann_accuracy']} %; SNN with the rule {PAPER['snn_accuracy_T100_rule']} % at T = 100; "
        f"99.03 % reached at T = {PAPER['steps_to_99.03_rule']} with the rule and T = "
        f"{PAPER['steps_to_99.03_maxnorm']} with weight normalization; the rule uses "
        f"{PAPER['spikes_rule_over_maxnorm']:.0%} of max-norm's spikes.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
