"""The ``spikeconv`` command: train, convert, evaluate, demo. Every command is a call of
the public API; errors in what the user gave are printed as one line and exit code 2."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from . import __version__
from .conversion.activations import ACTIVATIONS
from .conversion.calibrate import calibrate
from .conversion.calibration import CALIBRATIONS, calibrate_snn
from .conversion.convert import build_snn
from .conversion.graph import ConversionError, trace
from .conversion.rules import BASES, RULES
from .experiments import run_demo, yang
from .experiments.yang_report import REPORTS
from .io import fingerprint, write_json, write_text
from .io.data import (
    DATASETS,
    DatasetNotFoundError,
    ImageDataset,
    load_dataset,
    load_image_folder,
)
from .io.export import SUBTRACT_RESETS, write_nir
from .io.nmnist import EventSequences, SaccadeOptions, make_event_dataset
from .io.report import write_report
from .io.snn_file import load, network_to_dict, save
from .io.user_models import (
    USER_MODEL_FORMAT,
    is_factory,
    is_user_model,
    load_user_model,
    with_normalization,
)
from .metrics import ann_operations, conversion_loss, rate_correlation
from .models import ZOO
from .plotting import plot_accuracy
from .sim.distributed import simulate_distributed
from .sim.encoders import CODINGS, INPUT_CODINGS
from .sim.network import READOUTS, SpikingNetwork
from .sim.neurons import RATE_ESTIMATES, RESETS
from .sim.simulate import SEEDINGS, simulate
from .training import (
    SCHEDULES,
    TrainOptions,
    evaluate_ann,
    load_model,
    model_from_record,
    train,
)

__all__ = ["build_parser", "main"]


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _number_or_auto(text: str) -> float | str:
    """A number or ``auto`` (its range is checked where it is used, with a message naming it)."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from error


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from error


def _steps(text: str) -> list[int]:
    try:
        steps = [int(s) for s in text.split(",") if s.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from error
    if not steps or min(steps) <= 0:
        raise argparse.ArgumentTypeError(f"steps must be positive integers, got {text!r}")
    return steps


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none to show (None, a flag's
    False) or the help text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, False) or "default" in text or action.default is argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


def _add_data(parser: argparse.ArgumentParser, default: str | None = None, folder: bool = True) -> None:
    parser.add_argument(
        "--dataset", choices=(*DATASETS, "folder") if folder else DATASETS, default=default,
        help="dataset (default: the one the model was made for; folder: --data-root is an image folder)",
    )  # fmt: skip
    parser.add_argument(
        "--data-root", type=Path, default=None,
        help="folder holding MNIST/raw/*.gz or cifar10-jpeg/ (not for digits); for nmnist: Train/ and Test/ of "
        "N-MNIST event files (or spikeconv make-events' --out); for --dataset folder: <class>/<image> folders, or "
        "train/ and test/ each holding them",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spikeconv", description="Convert trained CNNs into spiking networks, simulate and measure them.",
        formatter_class=_HelpFormatter,
    )  # fmt: skip
    parser.add_argument("--version", action="version", version=f"spikeconv {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads (default: torch's)")
    common.add_argument(
        "--quiet", action="store_true", help="no progress bars or per-epoch lines (bars are only drawn on a terminal)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=help, description=help, formatter_class=_HelpFormatter)

    p = command("train", "train a zoo model (seeded; resumes from --out if it exists)")
    p.add_argument("--model", choices=list(ZOO), required=True, help="architecture from the zoo")
    _add_data(p, folder=False)
    p.add_argument("--epochs", type=_positive_int, default=10, help="training epochs")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="images per optimizer step")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument(
        "--schedule", choices=SCHEDULES, default="cosine",
        help="learning rate over the run: cosine-annealed to 0, or constant (the course report's protocol)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the initial weights, shuffling and augmentation")
    p.add_argument("--crop", type=_positive_int, default=None, help="random crops of this size (test: centre crops)")
    p.add_argument("--flip", action="store_true", help="random horizontal flips")
    p.add_argument("--pad", type=int, default=0, help="zero-pad by this many pixels before the random crop (CIFAR-10: 4)")
    p.add_argument(
        "--activation", choices=ACTIVATIONS, default="relu",
        help="train every ReLU as this (spikeconv.conversion.activations): threshold ReLU, QCFS or Rate Norm Layer",
    )  # fmt: skip
    p.add_argument("--levels", type=_positive_int, default=8, help="qcfs: quantization levels L")
    p.add_argument("--theta", type=float, default=None, help="threshold / qcfs: the clip value (default: 1 / 8; "
                   "for qcfs on a BatchNorm net under Adam, start near 2: see the README)")
    p.add_argument("--train-theta", action="store_true", help="threshold: learn theta (qcfs always learns it)")
    p.add_argument("--shift", type=_positive_int, default=None, help="threshold: train with the shift theta/(2T), T = this")
    p.add_argument("--ril", type=float, default=0.0, help="ratenorm: weight lambda of Ding's Rate Inference Loss")
    p.add_argument(
        "--stage2-epochs", type=int, default=0,
        help="ratenorm: epochs of Ding's stage 2 after --epochs (weights frozen, one shared p trained on "
        "1 - cos + lambda Omega; stage 1 then keeps p = 1)",
    )  # fmt: skip
    p.add_argument("--stage2-lr", type=float, default=1e-3, help="ratenorm: Adam learning rate of stage 2")
    p.add_argument("--out", type=Path, required=True, help="checkpoint file (written after every epoch)")

    p = command("convert", "convert a trained model into a spiking network")
    p.add_argument(
        "--model", required=True,
        help="checkpoint written by `spikeconv train`; or your own model: file.py:factory (with --weights), a "
        "torch.export program (.pt2) or an ONNX file (.onnx)",
    )  # fmt: skip
    p.add_argument(
        "--weights", default=None,
        help="file.py:factory models: state dict to load (torch.save(model.state_dict()); 'none': the factory "
        "loads its own)",
    )  # fmt: skip
    p.add_argument(
        "--input-size", type=_steps, default=None,
        help="your own model: its input C,H,W, e.g. 3,32,32 (images are resized to it; a .pt2 program knows it)",
    )  # fmt: skip
    p.add_argument("--mean", type=_floats, default=None, help="your own model: per-channel mean it normalizes by")
    p.add_argument("--std", type=_floats, default=None, help="your own model: per-channel std it normalizes by")
    _add_data(p)
    p.add_argument("--rule", choices=list(RULES), default="nscaling", help="weight/threshold mapping rule")
    p.add_argument(
        "--n", type=_number_or_auto, default=None,
        help="nscaling: the n of f = n * a_M (default 0.5), or 'auto': the smallest n with >= 90 %% unsaturated",
    )  # fmt: skip
    p.add_argument("--p", type=float, default=None, help="robust/channelwise: the percentile (default 99.9)")
    p.add_argument("--base", choices=list(BASES), default=None, help="threshold: whose scales to use (default: maxnorm)")
    p.add_argument(
        "--maxpool-rate", choices=RATE_ESTIMATES, default="count",
        help="max-pool gate rate estimate: running spike count, ewma, or none ('spikes': each step's max-pool "
        "of the spikes, as SpikingJelly and QCFS's code)",
    )  # fmt: skip
    p.add_argument("--maxpool-decay", type=float, default=0.9, help="max-pool gate: decay of the ewma estimate")
    p.add_argument(
        "--reset", choices=RESETS, default="subtract",
        help="what a spike does to the membrane: subtract the threshold (right for any net) or set it to zero "
        "(Yang et al.; see the README for when)",
    )  # fmt: skip
    p.add_argument("--v-min", default="auto", help="membrane lower bound: auto (Yang eq. 17), none, or a number")
    p.add_argument(
        "--initial-potential", type=_number_or_auto, default="auto",
        help="membrane before the first step, as a fraction of the threshold in [0, 1): auto (half in QCFS and "
        "unshifted threshold-ReLU layers and for --rule mse, 0 elsewhere) or a number for every layer",
    )  # fmt: skip
    p.add_argument(
        "--readout", choices=READOUTS, default="spikes",
        help="class = most output spikes (ties: membrane), largest output membrane, or spiking softmax (Rueckauer)",
    )  # fmt: skip
    p.add_argument("--spiking-pool", action="store_true", help="give average pools their own IF neurons (Yang)")
    p.add_argument("--calibration-size", type=_positive_int, default=5000, help="training images for statistics")
    p.add_argument(
        "--target-T", dest="target_T", type=_positive_int, default=32,
        help="the time steps that --rule mse's thresholds and --calibrate are made for",
    )  # fmt: skip
    p.add_argument(
        "--calibrate", choices=CALIBRATIONS, default=None,
        help="SNN Calibration (Li et al. 2021) after mapping: light (bias correction) or advanced (plus a "
        "per-neuron initial potential)",
    )  # fmt: skip
    p.add_argument(
        "--calibrate-images", type=_positive_int, default=1000, help="--calibrate: training images it uses"
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration subset")
    p.add_argument("--out", type=Path, required=True, help="where to write the converted network")

    p = command("evaluate", "simulate converted networks on the test set; JSON and a plot")
    p.add_argument("--snn", type=Path, nargs="+", required=True, help="files written by `spikeconv convert`")
    _add_data(p)
    p.add_argument("-T", "--T", dest="T", type=_positive_int, default=100, help="time steps")
    p.add_argument(
        "--coding", choices=INPUT_CODINGS, default="constant",
        help="input coding (constant: analog current; events: --dataset nmnist's recordings, one 1 ms bin per step)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the test subset and of the Poisson draws")
    p.add_argument("--batch-size", type=_positive_int, default=100, help="images simulated at once")
    p.add_argument("--test-size", type=_positive_int, default=None, help="a seeded subset of the test set")
    p.add_argument("--steps", type=_steps, default=None, help="steps to print, each <= T, e.g. 10,20,50,100")
    p.add_argument("--device", default=None, help="torch device, e.g. cuda (default: cpu)")
    p.add_argument(
        "--seeding", choices=SEEDINGS, default="per_batch",
        help="Poisson draws: per_batch (batch k seeded by (seed, k): the same under torchrun with any number of "
        "processes) or stream (one stream for the run, as simulate() by default)",
    )  # fmt: skip
    p.add_argument(
        "--exact", action="store_true",
        help="spikes bit-identical to the step-by-step reference on any CPU (slower on float weights): event-driven "
        "synapses only where their sums are exact (weights on a power-of-two grid), every other synapse called "
        "step by step as the reference does; by default float sums may round differently, which moves a spike "
        "very rarely (docs/results/float_events.md)",
    )  # fmt: skip
    p.add_argument(
        "--correlation-images", type=_positive_int, default=100,
        help="images for the per-layer correlation of firing rate with the normalized ANN activation",
    )  # fmt: skip
    p.add_argument("--out", type=Path, default=None, help="results JSON")
    p.add_argument("--plot", type=Path, default=None, help="PNG of accuracy against time step")

    p = command(
        "experiment",
        "Yang et al. 2020 Sec. 4 experiments: stats, sweep-n, fixed-point, noise, spikes (JSON, markdown, PNG); "
        "Yang's setting: reset to zero, Poisson input",
    )
    p.add_argument("name", choices=list(REPORTS), help="which experiment")
    p.add_argument("--model", type=Path, default=None, help="checkpoint written by `spikeconv train`")
    p.add_argument(
        "--snn", type=Path, default=None,
        help="fixed-point, noise: the converted network of this file (written by `spikeconv convert`) instead of "
        "n-scaling with reset to zero; the ANN comes from the file unless --model is given",
    )  # fmt: skip
    _add_data(p)
    p.add_argument("--out-dir", type=Path, default=Path("experiments_out"), help="where NAME.json/.md/.png go")
    p.add_argument("-T", "--T", dest="T", type=_positive_int, default=None, help="time steps (default: per experiment)")
    p.add_argument("--coding", choices=CODINGS, default="poisson", help="input coding (Yang et al.: poisson)")
    p.add_argument("--n", type=float, default=0.5, help="n of the n-scaling rule (stats, fixed-point, noise, spikes)")
    p.add_argument("--test-size", type=_positive_int, default=None, help="a seeded subset of the test set")
    p.add_argument("--calibration-size", type=_positive_int, default=5000, help="training images for statistics")
    p.add_argument("--repeats", type=_positive_int, default=5, help="noise: seeded draws per level")
    p.add_argument("--widths", type=_steps, default=list(range(8, 17)), help="fixed-point: total widths, e.g. 8,12,16")
    p.add_argument("--batch-size", type=_positive_int, default=200, help="images simulated at once")
    p.add_argument("--seed", type=int, default=0, help="seed of the subsets and of the Poisson draws")
    p.add_argument(
        "--force", action="store_true",
        help="start afresh instead of resuming --out-dir/NAME.json (a run resumes only with the same model, data "
        "and settings)",
    )  # fmt: skip

    p = command("export", "write a converted network for neuromorphic toolchains (NIR)")
    p.add_argument("snn", type=Path, help="file written by `spikeconv convert`")
    p.add_argument("--nir", type=Path, required=True, help="the NIR (HDF5) file to write")
    p.add_argument(
        "--subtract-reset", choices=SUBTRACT_RESETS, default="refuse",
        help="NIR has no reset by subtraction: refuse such a network, or write reset to zero (as_zero) and record "
        "the approximation in each IF node",
    )  # fmt: skip

    p = command(
        "make-events",
        "simulate an N-MNIST-format event dataset from MNIST (three saccades, log-intensity change events)",
    )
    p.add_argument("--data-root", type=Path, required=True, help="folder holding MNIST/raw/*.gz")
    p.add_argument("--out", type=Path, required=True, help="dataset folder: OUT/{Train,Test}/<digit>/*.bin")
    p.add_argument("--train-size", type=_positive_int, default=None, help="a seeded subset of the training images")
    p.add_argument("--test-size", type=_positive_int, default=None, help="a seeded subset of the test images")
    p.add_argument("--contrast", type=float, default=0.5, help="log-intensity change per event")
    p.add_argument("--seed", type=int, default=0, help="seed of the subsets and of the event times")

    p = command("sweep", "a grid of conversions and simulations from a TOML file; cached, resumable; JSON, markdown, plot")
    p.add_argument("config", type=Path, help="the sweep's TOML file (see spikeconv.experiments.sweep)")
    p.add_argument("--out-dir", type=Path, default=Path("sweep_out"), help="where points/, sweep.json/.md/.png go")
    p.add_argument("--workers", type=_positive_int, default=1, help="local processes running points at once")
    p.add_argument("--engine", choices=("local", "ray"), default="local", help="run points in local processes or on Ray")

    p = command("report", "one self-contained HTML page of a run directory's tables and plots")
    p.add_argument("run_dir", type=Path, help="a folder of results: experiment --out-dir, evaluate's JSON, benchmarks")
    p.add_argument("--out", type=Path, default=None, help="the HTML file (default: RUN_DIR/report.html)")

    p = command("demo", "train on the embedded 8x8 digits, convert with maxnorm and nscaling, simulate, plot")
    p.add_argument("--out-dir", type=Path, default=Path("demo_out"), help="where the model, JSON, table and plot go")
    p.add_argument("--epochs", type=_positive_int, default=30, help="training epochs")
    p.add_argument("-T", "--T", dest="T", type=_positive_int, default=200, help="time steps")
    p.add_argument("--coding", choices=CODINGS, default="constant", help="input coding (constant: analog current)")
    p.add_argument("--seed", type=int, default=0, help="seed of training and of the Poisson draws")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    # Bars only where someone watches: in a log file they are thousands of lines.
    args.progress = not args.quiet and sys.stderr.isatty()
    try:
        return int(COMMANDS[args.command](args) or 0)
    except (ConversionError, DatasetNotFoundError, ImportError, OSError, ValueError, TypeError) as error:
        print(f"spikeconv {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"spikeconv {args.command}: interrupted; results written so far are complete files", file=sys.stderr)
        return 130


def _dataset_name(args: argparse.Namespace, arch: str) -> str:
    if args.dataset is None and arch not in ZOO:  # a user's model: its data is an image folder
        return "folder"
    name = args.dataset or ZOO[arch].dataset
    if name == "folder":
        return name
    if name not in DATASETS:
        raise ValueError(f"model {arch!r} is meant for {name!r}, which has no loader here; pass --dataset")
    return name


def fit_to_model(data: ImageDataset, input_shape: tuple[int, ...]) -> ImageDataset:
    """Centre-crop images somewhat larger than the model's input, keeping at least half of
    each side (Yang's 24x24 CIFAR-10 test protocol); any other mismatch (a 28x28 dataset
    for an 8x8 model) is left for the shape check to report."""
    c, h, w = data.input_shape
    if data.input_shape != tuple(input_shape) and c == input_shape[0] and input_shape[1] == input_shape[2]:
        if h == w and input_shape[1] < h <= 2 * input_shape[1]:
            return data.center_crop(input_shape[1])
    return data


def _load_for_model(
    name: str,
    split: str,
    root: Path | None,
    input_shape: tuple[int, ...],
    size: int | None,
    seed: int,
    classes: int | None = None,
) -> ImageDataset:
    """A seeded subset of ``size`` images of one split (all when ``None``), fitted to the
    model's input (the subset picks the same images whether cropped before or after);
    refused, naming both, when its images or classes do not fit the model's."""
    if name == "folder":
        return _image_folder(split, root, input_shape).subset(size, seed=seed)
    data = fit_to_model(load_dataset(name, split, root).subset(size, seed=seed), input_shape)
    if data.input_shape != tuple(input_shape):
        raise ValueError(
            f"dataset {name!r} has {split} images of shape {data.input_shape}, but the model takes "
            f"{tuple(input_shape)}: pass the --dataset the model was trained on"
        )
    if classes is not None and data.num_classes > classes:
        raise ValueError(
            f"dataset {name!r} has {data.num_classes} classes, but the model has {classes} outputs: pass the "
            "--dataset the model was trained on"
        )
    return data


def _image_folder(split: str, root: Path | None, input_shape: tuple[int, ...]) -> ImageDataset:
    """``root/split`` when it exists, else ``root``: class folders of images, resized to
    the model's input (1 channel: grayscale, 3: RGB)."""
    if root is None:
        raise ValueError("--dataset folder needs --data-root: a folder of <class>/<image> folders")
    if len(input_shape) != 3 or input_shape[0] not in (1, 3):
        raise ValueError(f"an image folder feeds models taking 1 or 3 channels of H x W, not {tuple(input_shape)}")
    folder = root / split if (root / split).is_dir() else root
    return load_image_folder(folder, grayscale=input_shape[0] == 1, size=(input_shape[1], input_shape[2]))


def _model_from_args(args: argparse.Namespace) -> tuple[nn.Module, dict[str, Any]]:
    """The model ``--model`` names and its record: a spikeconv checkpoint's, or for a
    user's model, what it was loaded from and its input shape."""
    own = ("--weights", args.weights), ("--input-size", args.input_size), ("--mean", args.mean), ("--std", args.std)
    if not is_user_model(args.model):
        given = [flag for flag, value in own if value is not None]
        if given:
            raise ValueError(f"{', '.join(given)} apply to your own model (file.py:factory, .pt2, .onnx), not to "
                             f"{args.model}, a spikeconv checkpoint that knows its input")  # fmt: skip
        return load_model(Path(args.model))
    if is_factory(args.model) and args.weights is None:
        raise ValueError(f"{args.model} builds a model: pass --weights STATE_DICT (or --weights none when the "
                         "factory loads its weights itself)")  # fmt: skip
    weights = None if args.weights in (None, "none") else args.weights
    model = load_user_model(args.model, weights)
    shape = args.input_size or (model.meta.get("input_shape") if isinstance(model, fx.GraphModule) else None)
    if shape is None:
        raise ValueError(f"pass --input-size C,H,W: the input shape of {args.model}")
    if len(shape) != 3:
        raise ValueError(f"--input-size takes C,H,W (three numbers), got {shape}")
    if (args.mean is None) != (args.std is None):
        raise ValueError("pass both --mean and --std (one value per channel each), or neither")
    if args.mean is not None:
        if len(args.mean) != shape[0]:
            raise ValueError(f"--mean and --std need {shape[0]} values (one per input channel), got {len(args.mean)}")
        model = with_normalization(model, args.mean, args.std)
    record = {
        "format": USER_MODEL_FORMAT, "arch": args.model, "weights": weights, "input_shape": list(shape),
        "mean": args.mean, "std": args.std,
    }  # fmt: skip
    return model, record


def _classes(snn: SpikingNetwork) -> int:
    """The number of output neurons (classes) of a converted network."""
    with torch.no_grad():
        return int(snn.analog_forward(torch.zeros(1, *snn.input_shape))[-1].shape[1])


def _cmd_train(args: argparse.Namespace) -> None:
    name = _dataset_name(args, args.model)
    train_set = load_dataset(name, "train", args.data_root)
    test_set = _load_for_model(name, "test", args.data_root, ZOO[args.model].input_shape, None, args.seed)
    options = TrainOptions(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, schedule=args.schedule, seed=args.seed, crop=args.crop, flip=args.flip,
        pad=args.pad, activation=args.activation, levels=args.levels, theta=args.theta,
        trainable_theta=args.train_theta, shift=args.shift, ril=args.ril, stage2_epochs=args.stage2_epochs,
        stage2_lr=args.stage2_lr,
    )  # fmt: skip
    _, record = train(args.model, train_set, test_set, options, args.out, progress=args.progress, log=not args.quiet)
    print(f"{args.model}: test accuracy {record['history'][-1]['test_accuracy']:.2f} % -> {args.out}")


def _rule_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if args.n is not None:
        options["n"] = args.n
    if args.p is not None:
        options["p"] = args.p
    if args.base is not None:
        if args.rule != "threshold":
            raise ValueError("--base only applies to --rule threshold")
        options["base"] = args.base
    if args.rule == "mse" or options.get("base") == "mse":
        options["T"] = args.target_T
        if args.initial_potential != "auto":  # the thresholds are chosen for the potential the neurons start at
            options["shift"] = args.initial_potential
    return options


def _parse_v_min(text: str) -> float | str | None:
    if text in ("auto", "none"):
        return None if text == "none" else "auto"
    try:
        return float(text)
    except ValueError as error:
        raise ValueError(f"--v-min must be auto, none or a number <= 0, got {text!r}") from error


def _cmd_convert(args: argparse.Namespace) -> None:
    model, record = _model_from_args(args)
    name = _dataset_name(args, record["arch"])
    calibration = _load_for_model(
        name, "train", args.data_root, tuple(record["input_shape"]), args.calibration_size, args.seed
    )
    traced = trace(model, tuple(record["input_shape"]), spiking_pool=args.spiking_pool)
    stats = calibrate(traced, calibration.tensors()[0], max_images=None)
    snn = build_snn(
        traced, stats, args.rule, reset=args.reset, v_min=_parse_v_min(args.v_min),
        initial_potential=args.initial_potential, readout=args.readout,
        maxpool_rate=args.maxpool_rate, maxpool_decay=args.maxpool_decay, **_rule_options(args),
    )  # fmt: skip
    if args.calibrate is not None:
        images = calibration.tensors()[0][: args.calibrate_images]
        snn = calibrate_snn(snn, images, T=args.target_T, mode=args.calibrate, progress=args.progress)
    if record["format"] == USER_MODEL_FORMAT:
        ann = dict(record)  # where the model came from (spikeconv runs no code a file names)
    else:
        ann = {k: record[k] for k in ("format", "arch", "input_shape", "state_dict")} | {"options": record.get("options", {})}
    save(snn, args.out, ann=ann | {"dataset": name})
    assert snn.info is not None
    mapping = snn.info.mapping
    print(f"{record['arch']} -> {args.rule} ({stats.images} calibration images), reset {args.reset}")
    if args.n == "auto":
        print(f"n = {mapping.options['n']:g} ({mapping.options['n_chosen_by']})")
    print(f"{'layer':>8} {'a_M':>10} {'f':>10} {'lambda':>10} {'unsaturated':>12} {'V_min^l':>10}")
    for layer in mapping.layers:
        print(
            f"{layer.name:>8} {layer.max_activation:10.4f} {layer.factor:10.4f} {layer.scale:10.4f} "
            f"{100 * layer.unsaturated:11.2f}% {layer.v_min:10.4f}"
        )
    if snn.info.calibration is not None:
        record = snn.info.calibration
        errors = ", ".join(f"{k}: {v['error_before']:.4f} -> {v['error_after']:.4f}" for k, v in record["layers"].items())
        print(f"calibration {record['mode']} for T = {record['T']} on {record['images']} images; mean |rate error| {errors}")
    print(f"V_min = {mapping.v_min:.4f}, membrane integer bits N = {mapping.membrane_bits} -> {args.out}")


def _cmd_evaluate(args: argparse.Namespace) -> None:
    if args.steps and max(args.steps) > args.T:
        raise ValueError(f"--steps {max(args.steps)} is beyond -T {args.T}: simulate longer or ask for steps <= T")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun: the test set is split over the processes
        import torch.distributed as dist

        if args.seeding != "per_batch":
            raise ValueError("--seeding stream cannot be split over processes: use --seeding per_batch (the default)")
        dist.init_process_group("nccl" if str(args.device or "cpu").startswith("cuda") else "gloo")
        try:
            _evaluate(args, simulate_distributed, quiet=dist.get_rank() != 0)
        finally:
            dist.destroy_process_group()
        return
    _evaluate(args, simulate, quiet=False)


def _evaluate(args: argparse.Namespace, run: Any, quiet: bool) -> None:
    """The evaluation itself: ``run`` is ``simulate`` or ``simulate_distributed``; a
    ``quiet`` process (a rank other than 0) prints and writes nothing."""
    say = (lambda *a, **k: None) if quiet else print
    results: dict[str, Any] = {"T": args.T, "coding": args.coding, "seed": args.seed, "exact": args.exact, "networks": {}}
    curves = {}
    ann_accuracy = None
    for path in args.snn:
        snn, ann = load(path, with_ann=True)
        name = args.dataset or (ann or {}).get("dataset")
        if name is None:
            raise ValueError(f"{path} does not record its dataset: pass --dataset")
        test = _load_for_model(
            name, "test", args.data_root, snn.input_shape, args.test_size, args.seed, classes=_classes(snn)
        )
        data: Any = test
        if args.coding == "events":
            data = _event_sequences(name, args).subset(args.test_size, seed=args.seed)
        entry: dict[str, Any] = {"dataset": name}
        if ann is not None and ann.get("format") == USER_MODEL_FORMAT:
            say(f"{path}: converted from {ann['arch']}; its ANN accuracy is not computed here (spikeconv does not "
                "import code a file names)")  # fmt: skip
        elif ann is not None:
            ann_accuracy = entry["ann_accuracy"] = evaluate_ann(model_from_record(ann), test)
        result = run(
            snn, data, T=args.T, coding=args.coding, seed=args.seed, batch_size=args.batch_size,
            device=args.device, progress=args.progress and not quiet, record_synops=True, seeding=args.seeding,
            exact=args.exact,
        )  # fmt: skip
        entry.update(result.to_dict())
        entry["ann_macs_per_image"] = ann_operations(snn)["total"]
        sample = test.tensors()[0][: args.correlation_images]
        if isinstance(data, EventSequences):  # the same recordings as events
            sample = next(iter(data.first(len(sample))))[0]
        entry["rate_correlation"] = rate_correlation(
            snn, sample, T=args.T, coding=args.coding, seed=args.seed, exact=args.exact
        )
        if snn.info is not None:
            entry["mapping"] = snn.info.mapping.to_dict()
        if ann_accuracy is not None:
            entry["conversion_loss"] = conversion_loss(ann_accuracy, result.final_accuracy)
        label = f"{path.stem}"
        results["networks"][label] = entry
        curves[label] = result.accuracy_curve()
        steps = args.steps or sorted({s for s in (10, 20, 50, 100, 200, 500, 1000) if s < args.T} | {args.T})
        shown = ", ".join(f"T={s}: {result.accuracy_at(s):.2f} %" for s in steps)
        ann_text = f"ANN {ann_accuracy:.2f} %, " if ann_accuracy is not None else ""
        say(f"{label} ({len(test)} images): {ann_text}{shown}")
        say(
            f"  latency {result.latency():d} steps (within ±{result.latency_margin:.2f} pp of the final accuracy), "
            f"{entry['spikes_per_image']:.0f} spikes/image, {entry['synops_per_image']:.3g} synaptic operations/image "
            f"({entry['synops_per_image'] / entry['ann_macs_per_image']:.2f} x the ANN's {entry['ann_macs_per_image']:.3g} "
            "multiply-adds)"
        )
        correlations = ", ".join(f"{k}: {v['correlation']:.3f}" for k, v in entry["rate_correlation"].items())
        say(f"  rate-activation correlation per layer ({len(sample)} images): {correlations}")
    if quiet:
        return
    if args.out:
        write_json(args.out, results)
        print(f"results -> {args.out}")
    if args.plot:
        plot_accuracy(curves, args.plot, ann_accuracy=ann_accuracy, title=f"accuracy over time ({args.coding} input)")
        print(f"plot -> {args.plot}")


def _event_sequences(name: str, args: argparse.Namespace) -> EventSequences:
    """The test recordings as events, one 1 ms bin per time step (``--coding events``)."""
    if name != "nmnist":
        raise ValueError(
            f"--coding events feeds event recordings one time bin per step; dataset {name!r} has none: use "
            "--dataset nmnist (N-MNIST or spikeconv make-events output) or another coding"
        )
    return EventSequences.from_root(args.data_root, "test", batch_size=args.batch_size)


def _resumable(path: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The results of the earlier run in ``path``, when it had exactly ``settings`` (the
    model file's path aside: the same weights elsewhere are the same model)."""
    try:
        previous = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not the JSON of an earlier run ({error}): pass --force or another --out-dir") from None
    before = previous.get("settings") if isinstance(previous, dict) else None
    if not isinstance(before, dict):
        raise ValueError(f"{path} is not the JSON of an earlier run: pass --force or another --out-dir")
    differ = sorted(k for k in set(before) | set(settings) if k != "model_file" and before.get(k) != settings.get(k))
    if differ:
        what = ", ".join(f"{k}: {before.get(k)!r} then, {settings.get(k)!r} now" for k in differ)
        raise ValueError(
            f"{path} holds a run of another model, data or settings ({what}): pass --force to start afresh or "
            "another --out-dir"
        )
    return dict(previous.get("result", {}))


EXPERIMENT_T = {"sweep-n": 200, "fixed-point": 100, "noise": 100, "spikes": 200, "stats": 0}


def _cmd_experiment(args: argparse.Namespace) -> None:
    converted: SpikingNetwork | None = None
    if args.snn is not None:
        if args.name not in ("fixed-point", "noise"):
            raise ValueError(f"--snn applies to the fixed-point and noise experiments; {args.name} converts the ANN itself")
        converted, ann_record = load(args.snn, with_ann=True)
        if args.model is None and ann_record is None:
            raise ValueError(f"{args.snn} holds no ANN record (the noise experiment and the data need it): pass --model")
    elif args.model is None:
        raise ValueError("pass --model (a checkpoint written by `spikeconv train`) or --snn (by `spikeconv convert`)")
    if args.model is not None:
        model, record = load_model(args.model)
    elif ann_record.get("format") == USER_MODEL_FORMAT:
        if args.name == "noise":
            raise ValueError(f"{args.snn} was converted from {ann_record['arch']}, which the noise experiment would "
                             "need to run as an ANN: spikeconv does not import code a file names")  # fmt: skip
        record, model = ann_record, None
    else:
        record = ann_record
        model = model_from_record(record)
    if args.dataset is None and record.get("dataset") is not None:
        args.dataset = record["dataset"]
    name = _dataset_name(args, record["arch"])
    shape = tuple(record["input_shape"])
    T = args.T or EXPERIMENT_T[args.name]
    calibration = _load_for_model(name, "train", args.data_root, shape, args.calibration_size, args.seed)
    test = _load_for_model(name, "test", args.data_root, shape, args.test_size, args.seed)
    # A run resumes only what was computed from the same weights, images and settings: the
    # file's path alone would let a JSON written for another model at that path mix in.
    settings = {
        "model": fingerprint([record["arch"], record.get("state_dict")]),
        "data": fingerprint([name, calibration.images, test.images, test.labels]),
        "model_file": str(args.model), "dataset": name, "T": T, "coding": args.coding, "n": args.n,
        "seed": args.seed, "test_size": args.test_size, "calibration_size": args.calibration_size,
        "repeats": args.repeats, "widths": args.widths, "batch_size": args.batch_size,
    }  # fmt: skip
    if converted is not None:
        settings["snn"] = fingerprint(network_to_dict(converted))
    out_json = args.out_dir / f"{args.name}.json"
    done: dict[str, Any] = {}
    if out_json.exists() and not args.force:
        done = _resumable(out_json, settings)
        print(f"resuming {out_json}")
    if converted is None:
        assert model is not None
        traced = trace(model, shape)
        stats = calibrate(traced, calibration.tensors()[0], max_images=None)

    def save(result: dict[str, Any]) -> None:
        write_json(out_json, {"experiment": args.name, "settings": settings, "result": result})

    progress = args.progress
    common = {"coding": args.coding, "seed": args.seed, "batch_size": args.batch_size}
    if args.name == "stats":
        result = yang.activation_statistics(traced, stats, n=args.n)
    elif args.name == "sweep-n":
        result = yang.sweep_n(traced, stats, test, T=T, done=done, save=save, progress=progress, **common)
    elif args.name == "spikes":
        result = yang.spike_comparison(traced, stats, test, n=args.n, T=T, progress=progress, **common)
    else:
        snn = converted if converted is not None else build_snn(traced, stats, "nscaling", n=args.n, reset="zero")
        if args.name == "fixed-point":
            result = yang.fixed_point(
                snn, test, T=T, widths=args.widths, done=done, save=save, progress=progress, **common
            )
        else:
            assert model is not None  # refused above for a network without its ANN
            result = yang.noise_robustness(
                model, snn, test, T=T, repeats=args.repeats, done=done, save=save, progress=progress, **common
            )
    save(result)
    paper = yang.PAPER.get(name, {})
    body = REPORTS[args.name](result, paper, args.out_dir / f"{args.name}.png")
    command = "spikeconv experiment " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["experiment"] else args.name
    text = f"# {args.name}: {record['arch']} on {name}\n\nCommand: `{command}`\n\n{body}\n"
    write_text(args.out_dir / f"{args.name}.md", text)
    print(text)


def _cmd_export(args: argparse.Namespace) -> None:
    snn = load(args.snn)
    graph = write_nir(snn, args.nir, subtract_reset=args.subtract_reset)
    note = " (reset by subtraction written as reset to zero)" if any(
        s.neuron.reset == "subtract" for s in snn.spiking_stages
    ) else ""
    print(f"{args.snn} -> {args.nir}: {len(graph.nodes)} nodes, {len(graph.edges)} edges{note}")


def _cmd_make_events(args: argparse.Namespace) -> None:
    if not args.contrast > 0:
        raise ValueError(f"--contrast must be positive, got {args.contrast}")
    options = SaccadeOptions(contrast=args.contrast)
    for split, size in (("train", args.train_size), ("test", args.test_size)):
        data = load_dataset("mnist", split, args.data_root).subset(size, seed=args.seed)
        images, labels = data.tensors()
        events = make_event_dataset(images, labels, args.out, split, options, seed=args.seed)
        print(f"{split}: {len(data)} images -> {args.out} ({events} new events; simulated, not recorded)")


def _cmd_sweep(args: argparse.Namespace) -> None:
    from .experiments.sweep import load_config, run_sweep

    config = load_config(args.config)
    record = run_sweep(config, args.out_dir, workers=args.workers, engine=args.engine)
    print(f"{record['points']} points ({record['computed_now']} computed now) -> {args.out_dir / 'sweep.md'}")


def _cmd_report(args: argparse.Namespace) -> None:
    out = write_report(args.run_dir, args.out)
    print(f"{args.run_dir} -> {out} ({out.stat().st_size / 1e6:.1f} MB, self-contained)")


def _cmd_demo(args: argparse.Namespace) -> None:
    record = run_demo(
        args.out_dir, epochs=args.epochs, T=args.T, coding=args.coding, seed=args.seed, progress=args.progress,
        log=not args.quiet,
    )
    print(record["table"])
    print(f"results -> {args.out_dir / 'demo.json'}, plot -> {args.out_dir / 'accuracy.png'}")


COMMANDS = {
    "train": _cmd_train, "convert": _cmd_convert, "evaluate": _cmd_evaluate, "experiment": _cmd_experiment,
    "export": _cmd_export, "make-events": _cmd_make_events, "sweep": _cmd_sweep, "report": _cmd_report, "demo": _cmd_demo,
}  # fmt: skip

if __name__ == "__main__":
    sys.exit(main())
