"""The course report's experiments (../shared/papers/brown-course-report-cnn-to-snn.md,
issue 18): Tables 1-3 and the threshold sweeps of Figs. 2-3, the report's values beside ours.

    python benchmarks/course_report.py --part mnist  --data-root ../shared/datasets
    python benchmarks/course_report.py --part nmnist --events benchmarks/runs/nmnist-sim
    python benchmarks/course_report.py --part cifar  --data-root ../shared/datasets   # hours
    python benchmarks/course_report.py --report        # tables and plots from what is done

``--events`` is an N-MNIST folder (Train/, Test/); no copy of the real dataset exists on
these machines, so the results here use simulated events made by
``spikeconv make-events --data-root ../shared/datasets --out benchmarks/runs/nmnist-sim``
(all 70,000 MNIST images through three simulated saccades). They are not N-MNIST.

**Tables 1-2, Figs. 2-3** (MNIST and events): Yang's MNIST net (12C5-P2-64C5-P2-FC10; on
2 x 34 x 34 frames for events), the report's rows: ReLU (converted with max-norm), threshold
ReLU (IF threshold = y_th, no statistics), threshold ReLU with max-pools (spiking max-pool
gate), and the same with the spiking softmax readout. The report gives no training recipe
or T for these: we train 5 epochs (Adam, constant lr 1e-3, batch 64, seed 0) and simulate
T = 300 steps with analog input (events: one 1 ms bin per step, the whole 300 ms
recording); y_th swept over THRESHOLDS. On events the SNN runs both ways, fed the frames
the ANN was trained on (as a constant current) and fed the events themselves.

**Table 3** (CIFAR-10): VGG-16 at an eighth of the width (8-16-32-64-64 channels, FC-64;
what trains in about 10 min on two cores; He init, without which AVG and MAX stay at
chance) with threshold ReLU, y_th = 1 without BatchNorm
and 3 with, average or max pools (AVG, MAX, AVGBN, MAXBN); 20 epochs of Adam at a constant
lr 1e-3, batch 64, random crops (pad 4) and flips, three seeds; SNN at T = 128 and 256
(analog input) on the 10,000 test images.

Resumable: checkpoints in benchmarks/runs/course_report/ (each epoch); each conversion's
result is written atomically into benchmarks/results/course_report_<part>.json as soon as
it is done, and skipped when rerun (``--force`` redoes them).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

import spikeconv
from spikeconv.io import write_json, write_text
from spikeconv.io.data import ImageDataset, load_dataset
from spikeconv.io.nmnist import EventSequences
from spikeconv.plotting import new_figure, plot_accuracy, save_figure
from spikeconv.training import TrainOptions, evaluate_ann, train

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RUNS = HERE / "runs" / "course_report"  # a quick run (--train-size) keeps its checkpoints in quick/
DOCS = ROOT / "docs" / "results"
THRESHOLDS = (0.25, 0.5, 1.0, 2.0, 4.0)  # y_th of the sweeps; the tables use 1
T_DIGITS = 300  # 300 steps: the whole 300 ms recording at 1 ms per step
CURVE_STEPS = (10, 30, 100, 200, 300)  # the accuracy-over-time table of the digits
CIFAR_STEPS = (128, 256)
CIFAR_SEEDS = (0, 1, 2)
CHANCE_ACCURACY = 10.0  # CIFAR-10: ten balanced classes
STATS_IMAGES = 5000  # training images for the ReLU row's max-norm statistics
DIAGNOSES = ("V_min none", "bins shuffled")  # event-input variants of the ReLU and thReLU rows
SWEEP_IMAGES = 2000  # a seeded subset of the test set for the threshold sweeps (the tables use all)

REPORT_VALUES: dict[str, dict[str, tuple[float, float]]] = {  # model -> (ANN, SNN) in %
    "mnist": {
        "ReLU": (97.68, 95.21), "thReLU": (97.65, 95.82), "thReLU + Maxpool": (93.9, 91.44),
        "thReLU + Maxpool + Softmax": (95.1, 92.2),
    },
    "nmnist": {
        "ReLU": (98.58, 90.0), "thReLU": (93.52, 87.72), "thReLU + Maxpool": (93.83, 89.27),
        "thReLU + Maxpool + Softmax": (93.83, 91.97),
    },
}  # fmt: skip
REPORT_TABLE3 = {  # variant -> ANN, SNN T=128, SNN T=256 (mean of three runs)
    "AVG": (73.20, 62.21, 70.33), "MAX": (74.03, 69.91, 71.93),
    "AVGBN": (75.91, 74.61, 75.76), "MAXBN": (71.89, 67.36, 70.08),
}  # fmt: skip


@dataclass(frozen=True)
class Row:
    """One row of Table 1/2: which ANN (pool, activation, y_th) and which readout."""

    label: str
    pool: str  # avg / max
    activation: str  # relu / threshold
    readout: str = "spikes"


ROWS = (
    Row("ReLU", "avg", "relu"),
    Row("thReLU", "avg", "threshold"),
    Row("thReLU + Maxpool", "max", "threshold"),
    Row("thReLU + Maxpool + Softmax", "max", "threshold", "softmax"),
)


def digit_arch(part: str, pool: str) -> str:
    base = "yang-mnist" if part == "mnist" else "yang-nmnist"
    return base if pool == "avg" else f"{base}-max"


def digit_options(activation: str, theta: float | None) -> TrainOptions:
    return TrainOptions(
        epochs=5, batch_size=64, lr=1e-3, schedule="constant", seed=0, activation=activation,
        theta=theta if activation == "threshold" else None,
    )  # fmt: skip


def trained(arch: str, options: TrainOptions, name: str, train_set: ImageDataset, test_set: ImageDataset,
            quick: bool) -> torch.nn.Module:  # fmt: skip
    folder = RUNS / "quick" if quick else RUNS
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    model, record = train(arch, train_set, test_set, options, folder / f"{name}.pt", progress=False, log=True)
    print(f"  {name}: ANN {record['history'][-1]['test_accuracy']:.2f} % ({time.perf_counter() - started:.0f} s)")
    return model


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def _header(results: dict[str, Any], **extra: Any) -> None:
    results.update(
        threads=torch.get_num_threads(), torch=torch.__version__, python=platform.python_version(),
        date=str(datetime.date.today()), **extra,
    )  # fmt: skip


def _simulate(snn: Any, data: Any, T: int, coding: str) -> dict[str, Any]:
    started = time.perf_counter()
    result = spikeconv.simulate(snn, data, T=T, coding=coding, seed=0, batch_size=200)
    return {
        "accuracy": result.final_accuracy,
        "accuracy_curve": [round(float(a), 4) for a in result.accuracy_curve()],
        "spikes_per_image": float(result.spikes_per_image.double().mean()),
        "input_spikes_per_image": float(result.input_spikes_per_image.double().mean()),
        "images": result.num_images,
        "wall_time_s": time.perf_counter() - started,
    }


def run_digits(part: str, root: str, force: bool, test_size: int | None, train_size: int | None) -> Path:
    """Tables 1 (mnist) / 2 (nmnist) and the threshold sweeps of Figs. 2 / 3."""
    dataset = "mnist" if part == "mnist" else "nmnist"
    train_set = load_dataset(dataset, "train", root).subset(train_size)
    test_set = load_dataset(dataset, "test", root).subset(test_size)
    # static digits: analog current and Poisson spikes; events: frames as a current and the events themselves
    codings = ["constant", "poisson"] if part == "mnist" else ["constant", "events"]
    events = EventSequences.from_root(root, "test", batch_size=100).subset(test_size) if part == "nmnist" else None
    path = HERE / "results" / f"course_report_{part}{'_quick' if test_size else ''}.json"
    results = _load(path)
    _header(
        results, part=part, dataset=dataset, data_root=str(root), test_images=len(test_set), T=T_DIGITS,
        thresholds=list(THRESHOLDS), train_options=asdict(digit_options("threshold", 1.0)),
        simulated_events=part == "nmnist" and (Path(root) / "SIMULATED.txt").exists(),
    )  # fmt: skip
    results.setdefault("runs", {})
    calibration = train_set.subset(STATS_IMAGES, seed=1).tensors()[0]
    sweep_coding = "events" if part == "nmnist" else "constant"  # the report tested N-MNIST on events
    jobs = [("table", row, 1.0, coding, "") for row in ROWS for coding in codings]
    jobs += [("sweep", row, theta, sweep_coding, "") for theta in THRESHOLDS for row in ROWS[1:]]
    if part == "nmnist":  # why events lose against frames: no membrane floor, or no temporal structure
        jobs += [("table", row, 1.0, "events", variant) for variant in DIAGNOSES for row in ROWS[:2]]
    for kind, row, theta, coding, variant in jobs:
        y_th = theta if row.activation == "threshold" else None
        options = digit_options(row.activation, y_th)
        key = f"{kind} | {row.label} | y_th={theta:g} | {coding}" + (f" | {variant}" if variant else "")
        done = results["runs"].get(key)
        if done is not None and done.get("train_options") == asdict(options) and not force:
            continue
        name = f"{part}-{row.pool}-{row.activation}" + (f"-{theta:g}" if y_th is not None else "")
        model = trained(digit_arch(part, row.pool), options, name, train_set, test_set, train_size is not None)
        v_min = None if variant == "V_min none" else "auto"
        snn = spikeconv.convert(model, calibration, rule="maxnorm", readout=row.readout, v_min=v_min)
        images = test_set if kind == "table" else test_set.subset(SWEEP_IMAGES, seed=2)
        data: Any = images
        if coding == "events":
            data = events if kind == "table" else events.subset(SWEEP_IMAGES, seed=2)  # type: ignore[union-attr]
            if variant == "bins shuffled":
                data = ShuffledBins(data)
        entry = {
            "row": row.label, "y_th": y_th, "coding": coding, "variant": variant, "train_options": asdict(options),
            "ann_accuracy": evaluate_ann(model, images), **_simulate(snn, data, T_DIGITS, coding),
        }  # fmt: skip
        results["runs"][key] = entry
        write_json(path, results)
        print(f"  {key:60s} ANN {entry['ann_accuracy']:6.2f}  SNN {entry['accuracy']:6.2f}  "
              f"({entry['images']} images, {entry['wall_time_s']:.0f} s)")  # fmt: skip
    report_digits(path)
    return path


class ShuffledBins:
    """Event batches with each recording's time bins in a seeded random order: the same
    events per pixel and per bin, without the saccades' temporal structure."""

    def __init__(self, batches: Any, seed: int = 0) -> None:
        self.batches, self.seed = batches, seed

    def __iter__(self) -> Any:
        generator = torch.Generator().manual_seed(self.seed)
        for x, y in self.batches:
            order = torch.argsort(torch.rand(x.shape[:2], generator=generator), dim=1)  # [B, bins]
            yield x[torch.arange(len(x)).unsqueeze(1), order], y


def cifar_options(bn: bool, seed: int) -> TrainOptions:
    return TrainOptions(
        epochs=20, batch_size=64, lr=1e-3, schedule="constant", seed=seed, pad=4, flip=True,
        activation="threshold", theta=3.0 if bn else 1.0,
    )  # fmt: skip


def run_cifar(root: str, force: bool, test_size: int | None, train_size: int | None, seeds: tuple[int, ...]) -> Path:
    """Table 3: four VGG variants x three seeds, SNN at T = 128 and 256."""
    train_set = load_dataset("cifar10", "train", root).subset(train_size)
    test_set = load_dataset("cifar10", "test", root).subset(test_size)
    path = HERE / "results" / f"course_report_cifar{'_quick' if test_size else ''}.json"
    results = _load(path)
    _header(results, part="cifar", dataset="cifar10", test_images=len(test_set), steps=list(CIFAR_STEPS))
    results.setdefault("runs", {})
    calibration = train_set.subset(STATS_IMAGES, seed=1).tensors()[0]
    for seed in seeds:  # a whole seed first: a partial run still fills every column
        for variant in REPORT_TABLE3:
            bn = variant.endswith("BN")
            options = cifar_options(bn, seed)
            key = f"{variant} | seed {seed}"
            done = results["runs"].get(key)
            if done is not None and done.get("train_options") == asdict(options) and not force:
                continue
            arch = f"vgg16-eighth-{variant.lower()}"
            model = trained(arch, options, f"cifar-{variant.lower()}-{seed}", train_set, test_set, train_size is not None)
            snn = spikeconv.convert(model, calibration, rule="maxnorm")
            simulated = _simulate(snn, test_set, max(CIFAR_STEPS), "constant")
            curve = simulated["accuracy_curve"]
            entry = {
                "variant": variant, "seed": seed, "arch": arch, "train_options": asdict(options),
                "ann_accuracy": evaluate_ann(model, test_set), **simulated,
                "snn_accuracy": {str(t): curve[t - 1] for t in CIFAR_STEPS},
            }  # fmt: skip
            results["runs"][key] = entry
            write_json(path, results)
            print(f"  {key:18s} ANN {entry['ann_accuracy']:6.2f}  " + "  ".join(
                f"T={t} {entry['snn_accuracy'][str(t)]:6.2f}" for t in CIFAR_STEPS) + f"  ({entry['wall_time_s']:.0f} s)")  # fmt: skip
    report_cifar(path)
    return path


# ----------------------------------------------------------------------------- reports


def _command(results: dict[str, Any], name: str) -> str:
    part = results["part"]
    data = "--events benchmarks/runs/nmnist-sim" if part == "nmnist" else "--data-root ../shared/datasets"
    quick = " --test-size N" if name.endswith("_quick") else ""
    return (f"`python benchmarks/course_report.py --part {part} {data}{quick}` (run {results['date']}, torch "
            f"{results['torch']}, {results['threads']} threads)")  # fmt: skip


def report_digits(path: Path) -> None:
    results = _load(path)
    runs = results.get("runs", {})
    if not runs:
        return
    part, name = results["part"], path.stem.removeprefix("course_report_")
    events = part == "nmnist"
    title = "Table 2: N-MNIST-format events (simulated)" if events else "Table 1: MNIST"
    lines = [
        f"# Course report, {title}",
        "",
        _command(results, name) + ".",
        "",
        f"Yang's MNIST net{' on 2 x 34 x 34 frames' if events else ''}, trained "
        f"{results['train_options']['epochs']} epochs (Adam, constant lr {results['train_options']['lr']}, batch "
        f"{results['train_options']['batch_size']}, seed 0) per row and threshold; SNN: reset by subtraction, "
        f"T = {results['T']} steps, {results['test_images']} test images. ReLU rows: max-norm on "
        f"{STATS_IMAGES} training images; threshold ReLU: IF threshold = y_th. The tables use y_th = 1.",
    ]
    if events:
        lines += [
            "",
            "**These are simulated events** (`spikeconv make-events`: MNIST moved through three saccades, "
            "log-intensity change events), not the N-MNIST recordings; the report's values are on the real dataset. "
            "Frames: each pixel's events over the 300 ms recording divided by 300, the mean events per 1 ms step. "
            "SNN (frames): those frames as a constant current for 300 steps; SNN (events): the events themselves, "
            "one 1 ms bin per step. Both inject the same charge over the 300 steps.",
        ]
    # SNN columns (coding, t, name); the losses are the ANN against each coding at t = T
    second = "events" if events else "poisson"
    first_name, second_name = ("frames", "events") if events else ("analog", "Poisson")
    columns = [("constant", T_DIGITS, f"SNN {first_name}"), (second, T_DIGITS, f"SNN {second_name}")]
    lines += [
        "",
        "| model | ANN | " + " | ".join(name for *_, name in columns)
        + f" | loss {first_name} / {second_name} (t={T_DIGITS}) | report ANN | report SNN |",
        "|---|---:|" + "---:|" * (len(columns) + 3),
    ]
    for row in ROWS:
        cells = {c: runs.get(f"table | {row.label} | y_th=1 | {c}") for c in ("constant", second)}
        base = cells["constant"] or cells[second]
        if base is None:
            continue
        ann = base["ann_accuracy"]
        report_ann, report_snn = REPORT_VALUES[part][row.label]
        snn = [f"{cells[c]['accuracy_curve'][t - 1]:.2f}" if cells[c] else "not run" for c, t, _ in columns]
        losses = " / ".join(f"{ann - cells[c]['accuracy']:+.2f}" if cells[c] else "-" for c in ("constant", second))
        lines.append(f"| {row.label} | {ann:.2f} | " + " | ".join(snn) + f" | {losses} | {report_ann:.2f} | {report_snn:.2f} |")
    coding = "events" if events else "constant"
    lines += [
        "",
        f"Threshold sweep (Fig. {3 if events else 2}): ANN and SNN{' (events)' if events else ''} accuracy against "
        f"y_th, in %, on a seeded subset of {SWEEP_IMAGES} test images:",
        "",
        "| y_th | " + " | ".join(f"{r.label} ANN | SNN" for r in ROWS[1:]) + " |",
        "|---:|" + "---:|---:|" * len(ROWS[1:]),
    ]
    for theta in results["thresholds"]:
        cells = []
        for row in ROWS[1:]:
            entry = runs.get(f"sweep | {row.label} | y_th={theta:g} | {coding}")
            cells += [f"{entry['ann_accuracy']:.2f}", f"{entry['accuracy']:.2f}"] if entry else ["", ""]
        lines.append(f"| {theta:g} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"{second_name.capitalize()} against {first_name} input at equal simulated time (accuracy after t steps, "
        "y_th = 1; spikes per image over all 300 steps):",
        "",
        "| model | input | " + " | ".join(f"t={t}" for t in CURVE_STEPS) + " | input spikes/img | spikes/img |",
        "|---|---|" + "---:|" * (len(CURVE_STEPS) + 2),
    ]
    for row in ROWS:
        for c, label in (("constant", first_name), (second, second_name)):
            entry = runs.get(f"table | {row.label} | y_th=1 | {c}")
            if entry:
                curve = entry["accuracy_curve"]
                lines.append(
                    f"| {row.label} | {label} | " + " | ".join(f"{curve[t - 1]:.2f}" for t in CURVE_STEPS)
                    + f" | {entry['input_spikes_per_image']:,.0f} | {entry['spikes_per_image']:,.0f} |"
                )
    diagnoses = [(row, v, runs.get(f"table | {row.label} | y_th=1 | events | {v}")) for v in DIAGNOSES for row in ROWS[:2]]
    if any(entry for *_, entry in diagnoses):
        lines += [
            "",
            "Why the events lose (accuracy after t steps): the same nets on the events with no membrane floor "
            "(V_min none: a neuron can carry negative charge from one saccade into the next), and on the events "
            "with each recording's 300 bins in random order (bins shuffled: the same counts, no saccades):",
            "",
            "| model | events | " + " | ".join(f"t={t}" for t in CURVE_STEPS) + " |",
            "|---|---|" + "---:|" * len(CURVE_STEPS),
        ]
        for row in ROWS[:2]:
            plain = runs.get(f"table | {row.label} | y_th=1 | events")
            for label, entry in [("as recorded", plain)] + [(v, e) for r, v, e in diagnoses if r is row]:
                if entry:
                    curve = entry["accuracy_curve"]
                    lines.append(f"| {row.label} | {label} | " + " | ".join(f"{curve[t - 1]:.2f}" for t in CURVE_STEPS) + " |")
    lines += ["", f"![threshold sweep](course_report_{name}_sweep.png)", "",
              f"![accuracy over time](course_report_{name}.png)"]  # fmt: skip
    write_text(DOCS / f"course_report_{name}.md", "\n".join(lines) + "\n")
    _plot_sweep(results, DOCS / f"course_report_{name}_sweep.png", coding)
    curves = {}
    for row in ROWS:
        for c, label in (("constant", first_name), (second, second_name)):
            entry = runs.get(f"table | {row.label} | y_th=1 | {c}")
            if entry:
                curves[f"{row.label}, {label}"] = torch.tensor(entry["accuracy_curve"])
    plot_accuracy(curves, DOCS / f"course_report_{name}.png", title=f"{title}: SNN accuracy after t steps",
                  log_steps=True)  # fmt: skip
    print(f"wrote docs/results/course_report_{name}.md")


def _plot_sweep(results: dict[str, Any], path: Path, coding: str) -> None:
    fig, ax = new_figure()
    runs = results["runs"]
    for k, row in enumerate(ROWS[1:]):
        points = [(t, runs.get(f"sweep | {row.label} | y_th={t:g} | {coding}")) for t in results["thresholds"]]
        points = [(t, e) for t, e in points if e]
        if not points:
            continue
        xs = [t for t, _ in points]
        color = f"C{k}"
        if row.readout == "spikes":  # the softmax row shares its ANN with the max-pool row
            ax.plot(xs, [e["ann_accuracy"] for _, e in points], "--", color=color, label=f"{row.label}, ANN")
        ax.plot(xs, [e["accuracy"] for _, e in points], "o-", color=color, label=f"{row.label}, SNN")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("threshold y_th")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{results['dataset']}: accuracy against the threshold")
    ax.legend(fontsize=7)
    save_figure(fig, path)


def report_cifar(path: Path) -> None:
    results = _load(path)
    runs = results.get("runs", {})
    if not runs:
        return
    name = path.stem.removeprefix("course_report_")

    # a run whose ANN stayed at chance did not train: it is listed per seed, not averaged
    untrained = {k for k, e in runs.items() if e["ann_accuracy"] < CHANCE_ACCURACY + 1.0}

    def column(variant: str, key: str) -> list[float]:
        entries = [e for k, e in runs.items() if e["variant"] == variant and k not in untrained]
        if key == "ann":
            return [e["ann_accuracy"] for e in entries]
        if key.startswith("loss"):
            t = key.split()[1]
            return [e["ann_accuracy"] - e["snn_accuracy"][t] for e in entries]
        return [e["snn_accuracy"][key] for e in entries]

    def cell(values: list[float]) -> str:
        if not values:
            return "not run"
        if len(values) == 1:
            return f"{values[0]:.2f} (1 seed)"
        return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} ({len(values)} seeds)"

    variants = list(REPORT_TABLE3)
    lines = [
        "# Course report, Table 3: VGG-16 variants on CIFAR-10",
        "",
        _command(results, name) + ".",
        "",
        "VGG-16 at an eighth of the width (8-16-32-64-64 channels, FC-64, He init) with threshold ReLU (y_th = 1 without "
        "BatchNorm, 3 with), 20 epochs of Adam at a constant lr 1e-3, batch 64, random crops (pad 4) and flips; "
        f"SNN: analog input, reset by subtraction, IF threshold = y_th, {results['test_images']} test images. Mean ± "
        "standard deviation over the seeds whose ANN trained (above chance + 1 pt); loss = ANN - SNN in points. The "
        "report's VGG-16 is full width.",
        "",
        "| | " + " | ".join(variants) + " |",
        "|---|" + "---:|" * len(variants),
    ]
    rows = [("ANN", "ann", 0)] + [
        item for t in CIFAR_STEPS for item in ((f"SNN, T={t}", str(t), 1 + CIFAR_STEPS.index(t)), (f"Loss, T={t}", f"loss {t}", None))
    ]  # fmt: skip
    for label, key, _ in rows:
        lines.append(f"| {label} | " + " | ".join(cell(column(v, key)) for v in variants) + " |")
    lines += ["", "The report (full-width VGG-16, mean of three runs):", "",
              "| | " + " | ".join(variants) + " |", "|---|" + "---:|" * len(variants)]  # fmt: skip
    for label, _key, index in rows:
        if index is None:
            t = int(label.split("=")[1])
            i = 1 + CIFAR_STEPS.index(t)
            lines.append(f"| {label} | " + " | ".join(f"{REPORT_TABLE3[v][0] - REPORT_TABLE3[v][i]:.2f}" for v in variants) + " |")
        else:
            lines.append(f"| {label} | " + " | ".join(f"{REPORT_TABLE3[v][index]:.2f}" for v in variants) + " |")
    seeds = sorted({e["seed"] for e in runs.values()})
    lines += ["", "Per seed, ANN -> SNN at T = " + " / ".join(str(t) for t in CIFAR_STEPS) + ":", "",
              "| seed | " + " | ".join(variants) + " |", "|---|" + "---:|" * len(variants)]  # fmt: skip
    for seed in seeds:
        cells = []
        for v in variants:
            key = f"{v} | seed {seed}"
            e = runs.get(key)
            cells.append("not run" if e is None else f"{e['ann_accuracy']:.2f} -> " + " / ".join(
                f"{e['snn_accuracy'][str(t)]:.2f}" for t in CIFAR_STEPS) + (" (did not train)" if key in untrained else ""))  # fmt: skip
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    lines += ["", f"![accuracy over time, seed 0](course_report_{name}.png)"]
    write_text(DOCS / f"course_report_{name}.md", "\n".join(lines) + "\n")
    curves = {e["variant"]: torch.tensor(e["accuracy_curve"]) for e in runs.values() if e["seed"] == 0}
    plot_accuracy(curves, DOCS / f"course_report_{name}.png", title="VGG-16/8 variants: SNN accuracy after t steps (seed 0)",
                  log_steps=True)  # fmt: skip
    print(f"wrote docs/results/course_report_{name}.md")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("mnist", "nmnist", "cifar"), help="which table to make")
    parser.add_argument("--data-root", default=None, help="folder with MNIST/ and cifar10-jpeg/")
    parser.add_argument("--events", default=None, help="--part nmnist: the folder holding Train/ and Test/ event files")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (recorded)")
    parser.add_argument("--test-size", type=int, default=None, help="a seeded test subset (a _quick run)")
    parser.add_argument("--train-size", type=int, default=None, help="a seeded training subset (with --test-size)")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(CIFAR_SEEDS), help="--part cifar: the seeds")
    parser.add_argument("--force", action="store_true", help="redo the conversions (training always resumes)")
    parser.add_argument("--report", action="store_true", help="only write the tables and plots of finished runs")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.report:
        for path in sorted((HERE / "results").glob("course_report_*.json")):
            (report_cifar if "cifar" in path.stem else report_digits)(path)
        return
    if args.part is None:
        parser.error("--part is required (or --report)")
    if args.train_size is not None and args.test_size is None:
        parser.error("--train-size makes a quick run: pass --test-size too (the results file is then *_quick.json)")
    root = args.events if args.part == "nmnist" else args.data_root
    if root is None:
        parser.error("--part nmnist needs --events FOLDER" if args.part == "nmnist" else "--data-root is required")
    print(f"{datetime.date.today()}: course report {args.part}, {args.threads} threads, torch {torch.__version__}",
          file=sys.stderr)  # fmt: skip
    if args.part == "cifar":
        run_cifar(root, args.force, args.test_size, args.train_size, tuple(args.seeds))
    else:
        run_digits(args.part, root, args.force, args.test_size, args.train_size)


if __name__ == "__main__":
    main()
