"""Simulation time of a max-pool network with synaptic operations recorded: this tree
against another revision's source (``--baseline``), in fresh processes, interleaved, best
of ``--repeats``, on the same network, images and T; both must give the same spikes,
accuracies and synaptic operations.

    git worktree add --detach /tmp/baseline <revision>
    python benchmarks/gate_speed.py --baseline /tmp/baseline/src --data-root ../shared/datasets

Network: the quarter-width VGG-16 of the low-latency benchmark (five spiking max-pool
gates; BatchNorm folded), the trained ReLU checkpoint when
benchmarks/runs/low_latency/vgg-cifar-relu.pt exists, else seeded He-initialized weights;
CIFAR-10 test images when the data root has them, else seeded random images. Max-norm,
analog input, reset by subtraction. Time nothing else while it runs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CHECKPOINT = HERE / "runs" / "low_latency" / "vgg-cifar-relu.pt"


def measure(args: argparse.Namespace) -> None:
    """One contender, in this process: prints one JSON line."""
    import torch

    import spikeconv
    from spikeconv.io.data import load_dataset
    from spikeconv.models import build_model
    from spikeconv.training import load_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if CHECKPOINT.exists():
        model, _ = load_model(CHECKPOINT)
        weights = "trained (vgg-cifar-relu.pt)"
    else:
        model, weights = build_model("vgg16-quarter"), "seeded He init"
    try:
        images, labels = load_dataset("cifar10", "test", args.data_root).subset(args.images).tensors()
        inputs = "CIFAR-10 test images"
    except Exception:  # noqa: BLE001 - no data root: random images, said in the output
        images, labels = torch.rand(args.images, 3, 32, 32, generator=torch.Generator().manual_seed(0)), None
        inputs = "seeded random images"
    snn = spikeconv.convert(model.eval(), images[:100], rule="maxnorm")
    data = (images, labels) if labels is not None else images
    out = {"weights": weights, "inputs": inputs, "threads": torch.get_num_threads(), "torch": torch.__version__}
    for synops in (True, False):
        spikeconv.simulate(snn, images[:20], T=4, batch_size=20, record_synops=synops, progress=False)  # warm-up
        started = time.perf_counter()
        result = spikeconv.simulate(snn, data, T=args.T, batch_size=args.batch_size, record_synops=synops, progress=False)
        key = "synops" if synops else "plain"
        out[key] = {
            "seconds": time.perf_counter() - started,
            "spikes": float(result.spikes_per_image.sum()),
            "accuracy_curve": [float(a) for a in result.accuracy_curve()] if labels is not None else None,
            "synops": result.synops_total if synops else None,
        }
    print(json.dumps(out))


def run_one(src: Path, args: argparse.Namespace) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    command = [sys.executable, __file__, "--measure", "--images", str(args.images), "--T", str(args.T),
               "--batch-size", str(args.batch_size), "--threads", str(args.threads)]  # fmt: skip
    if args.data_root:
        command += ["--data-root", args.data_root]
    done = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _revision(src: Path) -> str:
    """The commit a source folder is checked out at (``+`` when it has changes), or ``?``."""
    git = ["git", "-C", str(src)]
    try:
        commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
        changed = subprocess.run([*git, "status", "--porcelain", "--", "."], check=True, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"
    return commit + ("+" if changed else "")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, help="the src/ folder of the revision to compare with")
    parser.add_argument("--data-root", default=None, help="folder with cifar10-jpeg/")
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--T", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (recorded)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per contender; the best is kept")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        measure(args)
        return
    if args.baseline is None or not (args.baseline / "spikeconv").is_dir():
        parser.error("--baseline must be the src/ folder of another revision (it must hold spikeconv/)")
    contenders = {"this tree": ROOT / "src", "baseline": args.baseline}
    revisions = {name: _revision(src) for name, src in contenders.items()}
    runs: dict[str, list[dict]] = {name: [] for name in contenders}
    for _ in range(args.repeats):
        for name, src in contenders.items():  # interleaved
            runs[name].append(run_one(src, args))
            print(name, {k: round(runs[name][-1][k]["seconds"], 2) for k in ("synops", "plain")}, file=sys.stderr)
    ours, base = runs["this tree"][0], runs["baseline"][0]
    same = all(ours[k][f] == base[k][f] for k in ("synops", "plain") for f in ("spikes", "accuracy_curve", "synops"))
    best = {name: {k: min(r[k]["seconds"] for r in rs) for k in ("synops", "plain")} for name, rs in runs.items()}
    record = {
        "date": str(datetime.date.today()), "revisions": revisions, "images": args.images, "T": args.T,
        "batch_size": args.batch_size, "repeats": args.repeats, "weights": ours["weights"], "inputs": ours["inputs"],
        "threads": ours["threads"], "torch": ours["torch"], "best_seconds": best, "identical_results": same,
        "speedup": {k: best["baseline"][k] / best["this tree"][k] for k in ("synops", "plain")},
    }  # fmt: skip
    from spikeconv.io import write_json, write_text

    write_json(HERE / "results" / "gate_speed.json", record)
    rate = {name: {k: args.images * args.T / v for k, v in b.items()} for name, b in best.items()}
    lines = [
        "# Max-pool gates and synaptic operations: simulation time",
        "",
        f"`python benchmarks/gate_speed.py --baseline <worktree of {revisions['baseline']}>/src` (run {record['date']}, "
        f"this tree at {revisions['this tree']}, torch {record['torch']}, {record['threads']} threads, best of "
        f"{args.repeats}, fresh processes, interleaved).",
        "",
        f"VGG-16 at a quarter width (five spiking max-pool gates), {record['weights']}, {args.images} "
        f"{record['inputs']}, T = {args.T}, batch {args.batch_size}, max-norm, analog input.",
        "",
        "| recording | baseline s | this tree s | speed-up | this tree image-steps/s |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, label in (("synops", "spikes + synaptic operations"), ("plain", "spikes only")):
        lines.append(
            f"| {label} | {best['baseline'][key]:.2f} | {best['this tree'][key]:.2f} | "
            f"{record['speedup'][key]:.2f}x | {rate['this tree'][key]:,.0f} |"
        )
    lines += ["", f"Same spikes, accuracy after every step and synaptic operations in both: {'yes' if same else 'NO'}."]
    write_text(ROOT / "docs" / "results" / "gate_speed.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
