"""Scale-out on this machine: evaluation under torchrun with 1 and 2 processes, and a
24-point sweep in one process, two processes and on Ray; wall times and whether the
results are identical.

    bash benchmarks/interop/setup.sh          # the environment with Ray
    benchmarks/interop/.venv/bin/python benchmarks/scale_out.py --data-root ../shared/datasets

Nothing else may run meanwhile (the times are the point). Each process uses one thread,
so two processes use the two cores; one process with two threads is timed too.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from spikeconv.io import write_json, write_text

ROOT = Path(__file__).resolve().parents[1]
EVAL_NET = ROOT / "benchmarks" / "runs" / "yang-cifar10.pt"
SWEEP_NET = ROOT / "benchmarks" / "runs" / "yang-mnist.pt"
SWEEP = """
models = ["{model}"]
dataset = "mnist"
data_root = "{data_root}"
T = 100
test_size = 1000
calibration_size = 5000
seed = 0
steps = [10, 25, 50, 100]
[grid]
rule = ["maxnorm", "robust", "nscaling"]
n = [0.25, 0.5]
coding = ["constant", "poisson"]
noise = ["none", "awgn:20", "salt_and_pepper:0.05"]
"""


def cli(*args: str, processes: int = 0, threads: int = 1) -> float:
    """Run a spikeconv command (under torchrun with ``processes`` > 0); its wall time."""
    base = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)] if processes else [sys.executable]
    command = [*base, "-m", "spikeconv.cli", *args, "--quiet", "--threads", str(threads)]
    started = time.perf_counter()
    subprocess.run(command, check=True, env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
    return time.perf_counter() - started


def evaluation(data_root: str, work: Path, images: int, T: int) -> dict[str, Any]:
    snn = work / "yang-cifar10.snn.pt"
    cli("convert", "--model", str(EVAL_NET), "--data-root", data_root, "--rule", "maxnorm", "--calibration-size", "2000",
        "--out", str(snn), threads=2)  # fmt: skip
    common = ["evaluate", "--snn", str(snn), "--data-root", data_root, "-T", str(T), "--test-size", str(images),
              "--coding", "poisson", "--batch-size", "100", "--correlation-images", "10"]  # fmt: skip
    runs: dict[str, dict[str, Any]] = {}
    for label, processes, threads in (("1 process, 1 thread", 1, 1), ("2 processes, 1 thread each", 2, 1),
                                      ("1 process, 2 threads", 0, 2)):  # fmt: skip
        tries = []
        for attempt in range(2):  # the best of two, with that run's own simulation time
            out = work / f"eval-{processes}-{threads}-{attempt}.json"
            seconds = cli(*common, "--out", str(out), processes=processes, threads=threads)
            tries.append((seconds, json.loads(out.read_text())["networks"]["yang-cifar10.snn"]))
        seconds, entry = min(tries, key=lambda t: t[0])
        runs[label] = {"seconds": seconds, "simulation_seconds": entry["wall_time_s"],
                       "final_accuracy": entry["final_accuracy"], "entry": entry}  # fmt: skip
    reference = runs["1 process, 1 thread"]["entry"]

    def same(entry: dict[str, Any]) -> bool:
        return _without_time(entry) == _without_time(reference)

    for run in runs.values():
        entry = run.pop("entry")
        run["identical_to_1_process"] = same(entry)
        run["differing"] = {  # what differs, and by how much relative to the 1-process value
            k: _relative(entry[k], reference[k]) for k in _without_time(entry) if entry[k] != reference[k]
        }
    return {"net": "yang-cifar10 (max-norm, reset by subtraction)", "images": images, "T": T, "coding": "poisson",
            "runs": runs}  # fmt: skip


def _relative(value: Any, reference: Any) -> float | None:
    """The largest relative difference between two numbers or equal-shaped structures."""
    if isinstance(value, dict):
        parts = [_relative(value[k], reference.get(k)) for k in value if k in reference]
        return max((p for p in parts if p is not None), default=None)
    if isinstance(value, list) and isinstance(reference, list) and len(value) == len(reference):
        parts = [_relative(a, b) for a, b in zip(value, reference, strict=True)]
        return max((p for p in parts if p is not None), default=None)
    if isinstance(value, (int, float)) and isinstance(reference, (int, float)):
        return abs(value - reference) / max(abs(reference), 1e-12)
    return None


def _without_time(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k != "wall_time_s"}


def sweep(data_root: str, work: Path) -> dict[str, Any]:
    config = work / "sweep.toml"
    config.write_text(SWEEP.format(model=SWEEP_NET, data_root=Path(data_root).resolve()))
    runs: dict[str, dict[str, Any]] = {}
    for label, extra in (("1 process", []), ("2 processes", ["--workers", "2"]), ("Ray (local, 2 CPUs)", ["--engine", "ray"])):
        out = work / f"sweep-{len(runs)}"
        seconds = cli("sweep", str(config), "--out-dir", str(out), *extra, threads=1)
        rows = json.loads((out / "sweep.json").read_text())["rows"]
        runs[label] = {"seconds": seconds, "points": len(rows), "rows": rows}
    reference = runs["1 process"]["rows"]
    for run in runs.values():
        run["identical_table"] = run.pop("rows") == reference
    return {"net": "yang-mnist", "points": runs["1 process"]["points"], "test_images": 1000, "T": 100, "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("-T", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results = {
            "date": datetime.date.today().isoformat(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "evaluation": evaluation(args.data_root, work, args.images, args.T), "sweep": sweep(args.data_root, work),
        }  # fmt: skip
    write_json(ROOT / "benchmarks" / "results" / "scale_out.json", results)
    write_text(ROOT / "docs" / "results" / "scale_out.md", report(results))
    print(report(results))


def report(results: dict[str, Any]) -> str:
    e, s = results["evaluation"], results["sweep"]
    lines = [
        f"# Scale-out on this machine ({results['date']}, {results['cpus']} CPUs, torch {results['torch']})", "",
        ("Command: `benchmarks/interop/.venv/bin/python benchmarks/scale_out.py --data-root ../shared/datasets` "
         "(nothing else running)."), "",
        f"## Evaluation: {e['net']}, {e['images']} CIFAR-10 (JPEG) test images, T = {e['T']}, {e['coding']} input", "",
        ("| run | wall time (s, best of 2) | speed-up | simulation (s, slowest process) | speed-up | final accuracy | "
         "identical to 1 process |"), "|---|---:|---:|---:|---:|---:|---|",
    ]  # fmt: skip
    base = e["runs"]["1 process, 1 thread"]["seconds"]
    base_sim = e["runs"]["1 process, 1 thread"]["simulation_seconds"]
    for label, run in e["runs"].items():
        if run["identical_to_1_process"]:
            verdict = "yes"
        else:
            worst = ", ".join(f"{k} {v:.1e}" if v is not None else k for k, v in run["differing"].items())
            verdict = f"no: differ (largest relative difference) {worst}"
        lines.append(f"| {label} | {run['seconds']:.1f} | {base / run['seconds']:.2f}x | {run['simulation_seconds']:.1f} | "
                     f"{base_sim / run['simulation_seconds']:.2f}x | {run['final_accuracy']:.2f} % | {verdict} |")  # fmt: skip
    lines += ["", ("Wall times include starting the processes and loading the test images (every process decodes "
                   "the CIFAR-10 test JPEGs); the simulation column is evaluate's own simulation time. The torchrun runs use "
                   "one thread per process and are compared at equal threads; one process with two threads lets "
                   "torch split each convolution over the threads, summing the float weights in another order, and "
                   "the fields that then differ are listed with their largest relative difference."), "",
              f"## Sweep: {s['points']} points on {s['net']} ({s['test_images']} test images, T = {s['T']})", "",
              "| engine | wall time (s) | identical table |", "|---|---:|---|"]  # fmt: skip
    for label, run in s["runs"].items():
        lines.append(f"| {label} | {run['seconds']:.1f} | {'yes' if run['identical_table'] else 'NO'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
