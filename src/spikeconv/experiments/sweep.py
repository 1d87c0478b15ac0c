"""Conversion sweeps: ``spikeconv sweep config.toml``.

A TOML file names the models (spikeconv checkpoints: one per activation), the data and
the grid; every combination of the grid is a point::

    models = ["relu.pt", "qcfs.pt"]      # one checkpoint per activation
    dataset = "digits"                   # default: the models' own
    T = 100
    test_size = 500
    calibration_size = 2000
    seed = 0
    [grid]
    rule = ["maxnorm", "nscaling"]
    n = [0.25, 0.5]                      # used by the rules that take it (nscaling, threshold)
    p = [99.9]                           # robust, channelwise
    reset = ["subtract", "zero"]
    coding = ["constant", "poisson"]
    T = [32, 100]                        # overrides the top-level T
    fixed_point_bits = [0, 16]           # 0: float
    noise = ["none", "awgn:20", "salt_and_pepper:0.05"]

Options a rule does not take are dropped from its points (so ``n`` does not multiply the
max-norm points). Each point's result is written to ``OUT/points/<key>.json`` as soon as it
is done, keyed by a hash of the point, the model's weights and the data; a rerun computes
only the missing points. Activation statistics are computed once per model, before the
points, and shared by all of them (``OUT/stats``). Points run in local processes
(``workers``) or as Ray tasks (``engine="ray"``, ``pip install ray``); each point is seeded
by the config alone, so the table is the same either way. ``OUT/sweep.json`` and
``OUT/sweep.md`` hold the table, ``OUT/sweep.png`` the accuracy curves.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import multiprocessing
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..conversion.calibrate import calibrate
from ..conversion.convert import build_snn
from ..conversion.graph import trace
from ..conversion.rules import RULES
from ..io import fingerprint, load_torch, save_torch, write_json, write_text
from ..io.data import ImageDataset, load_dataset
from ..io.snn_file import from_plain_data, to_plain_data
from ..models import ZOO
from ..noise import NOISE_KINDS, distort
from ..sim.simulate import simulate
from ..training import evaluate_ann, load_model
from .yang import spike_input

__all__ = ["SweepConfig", "load_config", "run_sweep"]

GRID_KEYS = ("rule", "n", "p", "reset", "coding", "T", "fixed_point_bits", "noise")
ENGINES = ("local", "ray")


@dataclass(frozen=True, kw_only=True)
class SweepConfig:
    """What a sweep runs (see the module docstring)."""

    models: tuple[str, ...]
    grid: dict[str, tuple[Any, ...]]
    dataset: str | None = None
    data_root: str | None = None
    T: int = 100
    test_size: int | None = 500
    calibration_size: int = 2000
    seed: int = 0
    batch_size: int = 100
    steps: tuple[int, ...] = field(default=(1, 2, 4, 8, 16, 32, 64, 128, 256))

    def points(self) -> list[dict[str, Any]]:
        """Every point of the grid, per model, without options its rule does not take."""
        grid = {"rule": ("maxnorm",), **self.grid}
        seen: set[str] = set()
        points = []
        for model in self.models:
            for values in itertools.product(*grid.values()):
                point = {"model": model, **dict(zip(grid, values, strict=True))}
                taken = RULES[point["rule"]].options
                for option in ("n", "p"):
                    if option in point and option not in taken:
                        del point[option]
                key = json.dumps(point, sort_keys=True)
                if key not in seen:
                    seen.add(key)
                    points.append(point)
        return points


def load_config(path: str | Path) -> SweepConfig:
    """The sweep a TOML file describes, checked: unknown keys, rules, resets, codings and
    noise kinds are refused by name."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"sweep config {path} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{path} is not valid TOML: {error}") from None
    grid = raw.pop("grid", {})
    known = {f for f in SweepConfig.__dataclass_fields__ if f != "grid"}
    unknown = sorted(set(raw) - known) + sorted(f"grid.{k}" for k in set(grid) - set(GRID_KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; the config takes {sorted(known)} and grid.{list(GRID_KEYS)}")
    models = raw.pop("models", None)
    if not models:
        raise ValueError(f"{path}: give models = [\"checkpoint.pt\", ...] (spikeconv train checkpoints)")
    base = path.parent
    models = tuple(str(m if Path(m).is_absolute() else base / m) for m in ([models] if isinstance(models, str) else models))
    values = {k: tuple(v) if isinstance(v, list) else (v,) for k, v in grid.items()}
    for rule in values.get("rule", ()):
        if rule not in RULES:
            raise ValueError(f"{path}: grid.rule {rule!r} is not one of {list(RULES)}")
    for noise in values.get("noise", ()):
        _noise_spec(noise)
    if "steps" in raw:
        raw["steps"] = tuple(raw["steps"])
    return SweepConfig(models=models, grid=values, **raw)


def _noise_spec(text: str) -> tuple[str, float]:
    if text == "none":
        return "none", 0.0
    kind, _, level = text.partition(":")
    if kind not in NOISE_KINDS or not level:
        raise ValueError(f"noise {text!r}: write none, awgn:<SNR dB> or salt_and_pepper:<density>")
    return kind, float(level)


# ----------------------------------------------------------------------------- running


def run_sweep(config: SweepConfig, out_dir: str | Path, *, workers: int = 1, engine: str = "local") -> dict[str, Any]:
    """Run the points of ``config`` not yet in ``out_dir``, then write the table. Returns
    the table's record (also ``out_dir/sweep.json``)."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    out = Path(out_dir)
    (out / "points").mkdir(parents=True, exist_ok=True)
    shared = _prepare(config, out)  # per model: its statistics file, ANN accuracy, fingerprints
    todo = []
    for point in config.points():
        key = _point_key(config, point, shared)
        if not (out / "points" / f"{key}.json").exists():
            todo.append((point, key))
    jobs = [(config, point, key, shared[point["model"]]["stats"], str(out)) for point, key in todo]
    if engine == "ray":
        _run_ray(jobs)
    elif workers > 1 and len(jobs) > 1:
        # spawned, not forked: a fork of a process with torch's thread pools running can hang
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            list(pool.map(_run_point_job, jobs))
    else:
        threads = torch.get_num_threads()
        try:
            for job in jobs:
                _run_point_job(job)
        finally:
            torch.set_num_threads(threads)  # the caller's setting back
    return _write_table(config, out, shared, computed=len(jobs))


def _point_key(config: SweepConfig, point: dict[str, Any], shared: dict[str, dict[str, Any]]) -> str:
    """What a point's result depends on: the point, the model's weights and data, T, the
    seed, the batch size (the Poisson streams are per batch) and the steps shown."""
    return fingerprint([point, shared[point["model"]]["key"], config.T, config.seed, config.batch_size, config.steps])


def _prepare(config: SweepConfig, out: Path) -> dict[str, dict[str, Any]]:
    """Statistics (once per model, shared by its points), ANN accuracy and the cache keys."""
    shared = {}
    for model_path in config.models:
        model, record = load_model(model_path)
        name = _dataset(config, record)
        calibration = load_dataset(name, "train", config.data_root).subset(config.calibration_size, seed=config.seed)
        test = _test_set(config, name)
        key = fingerprint([record["arch"], record["state_dict"], name, calibration.images, test.images])
        stats_path = out / "stats" / f"{key}.pt"
        if not stats_path.exists():
            traced = trace(model, tuple(record["input_shape"]))
            save_torch(stats_path, to_plain_data(calibrate(traced, calibration.tensors()[0], max_images=None), "stats"))
        shared[model_path] = {
            "key": key, "stats": str(stats_path), "dataset": name, "ann_accuracy": evaluate_ann(model, test),
            "activation": record.get("options", {}).get("activation", "relu"),
        }  # fmt: skip
    return shared


def _dataset(config: SweepConfig, record: dict[str, Any]) -> str:
    return config.dataset or ZOO[record["arch"]].dataset


def _test_set(config: SweepConfig, name: str) -> ImageDataset:
    """The sweep's test images: the same seeded subset for every point."""
    return load_dataset(name, "test", config.data_root).subset(config.test_size, seed=config.seed)


def _run_point_job(job: tuple[SweepConfig, dict[str, Any], str, str, str]) -> None:
    config, point, key, stats_path, out = job
    # one thread per point, in any engine: processes, not threads, share the cores, and the
    # float sums (so the spikes) are the same whichever engine ran the point
    torch.set_num_threads(1)
    result = run_point(config, point, stats_path)
    write_json(Path(out) / "points" / f"{key}.json", {"point": point, "result": result})


def run_point(config: SweepConfig, point: dict[str, Any], stats_path: str) -> dict[str, Any]:
    """Convert and simulate one point; what the table shows of it."""
    model, record = load_model(point["model"])
    images, labels = _test_set(config, _dataset(config, record)).tensors()
    kind, level = _noise_spec(point.get("noise", "none"))
    if kind != "none":
        images = distort(images, kind, level, torch.Generator().manual_seed(config.seed))
    traced = trace(model, tuple(record["input_shape"]))
    stats = from_plain_data(load_torch(stats_path, "statistics"))
    options = {k: point[k] for k in ("n", "p") if k in point}
    snn = build_snn(traced, stats, point["rule"], reset=point.get("reset", "subtract"), **options)
    T = int(point.get("T", config.T))
    bits = int(point.get("fixed_point_bits", 0)) or None
    coding = point.get("coding", "constant")
    result = simulate(
        snn, (spike_input(images, coding), labels), T=T, coding=coding, seed=config.seed,
        batch_size=config.batch_size, fixed_point_bits=bits, seeding="per_batch",
    )  # fmt: skip
    curve = result.accuracy_curve()
    return {
        "accuracy": {str(t): float(curve[t - 1]) for t in (*config.steps, T) if t <= T},
        "final_accuracy": result.final_accuracy,
        "latency": result.latency(),
        "spikes_per_image": float(result.spikes_per_image.double().mean()),
        "curve": [float(v) for v in curve],
    }


def _run_ray(jobs: list[Any]) -> None:
    try:
        import ray
    except ImportError as error:
        raise ImportError("engine='ray' needs ray: pip install 'spikeconv[ray]' (or use the local engine)") from error
    started = not ray.is_initialized()
    if started:
        ray.init(include_dashboard=False, log_to_driver=False)
    try:
        task = ray.remote(_run_point_job)
        ray.get([task.remote(job) for job in jobs])
    finally:
        if started:
            ray.shutdown()


# ----------------------------------------------------------------------------- the table


def _write_table(config: SweepConfig, out: Path, shared: dict[str, dict[str, Any]], computed: int) -> dict[str, Any]:
    from ..plotting import plot_accuracy

    rows = []
    for point in config.points():
        key = _point_key(config, point, shared)
        stored = json.loads((out / "points" / f"{key}.json").read_text())
        model = shared[point["model"]]
        rows.append({"point": point | {"activation": model["activation"]}, "ann_accuracy": model["ann_accuracy"],
                     **stored["result"]})  # fmt: skip
    varying = [k for k in ("model", "activation", *GRID_KEYS) if len({json.dumps(r["point"].get(k)) for r in rows}) > 1]
    record = {
        "config": {k: v for k, v in config.__dict__.items() if k != "grid"} | {"grid": {k: list(v) for k, v in config.grid.items()}},
        "points": len(rows), "computed_now": computed, "varying": varying,
        "rows": [{k: v for k, v in r.items() if k != "curve"} for r in rows],
    }  # fmt: skip
    write_json(out / "sweep.json", record)
    steps = [t for t in config.steps if all(str(t) in r["accuracy"] for r in rows)]
    header = [*varying, "ANN", *[f"T={t}" for t in steps], "final", "latency", "spikes/img"]
    lines = [f"# Sweep: {len(rows)} points", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [Path(str(r["point"].get(k))).name if k == "model" else str(r["point"].get(k, "")) for k in varying]
        cells += [f"{r['ann_accuracy']:.2f}", *[f"{r['accuracy'][str(t)]:.2f}" for t in steps]]
        cells += [f"{r['final_accuracy']:.2f}", str(r["latency"]), f"{r['spikes_per_image']:,.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    write_text(out / "sweep.md", "\n".join(lines) + "\n\n![accuracy over T](sweep.png)\n")
    curves = {", ".join(f"{k}={Path(str(r['point'].get(k))).name if k == 'model' else r['point'].get(k)}" for k in varying) or "point": torch.tensor(r["curve"]) for r in rows}
    plot_accuracy(curves, out / "sweep.png", title=f"sweep: {len(rows)} points")
    return record
