"""Re-derive the latency columns of committed sweep-n results from their accuracy curves.

The latency of a curve used to be the first step within 0.1 pp of its final accuracy, finer
than one image of the 1,000-2,000 test images these runs used. Its definition is now
`spikeconv.metrics.latency_margin` (the half-width of the final accuracy's 95 % confidence
interval on the test images, at least one image and 0.1 pp). No simulation is rerun: the committed curves are the measurement, the
latency is read off them, and the markdown and plot are re-rendered.

    python benchmarks/rederive_latency.py docs/results/yang-mnist docs/results/yang-cifar10
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

from spikeconv.experiments import yang
from spikeconv.experiments.yang_report import REPORTS
from spikeconv.io import write_json, write_text
from spikeconv.metrics import latency, latency_margin


def rederive(folder: Path) -> None:
    path = folder / "sweep-n.json"
    saved = json.loads(path.read_text())
    record = saved["result"]
    images = record["test_images"]
    for point in record["points"].values():
        curve = point["accuracy_curve"]
        point["latency_margin_pp"] = latency_margin(curve[-1], images)
        point["latency"] = latency(curve, images=images)
    record["margin"] = None
    write_json(path, saved)
    markdown = (folder / "sweep-n.md").read_text()
    header = markdown[: markdown.index("\n\n", markdown.index("Command:")) + 2]
    dataset = saved["settings"]["dataset"]
    body = REPORTS["sweep-n"](record, yang.PAPER.get(dataset, {}), folder / "sweep-n.png")
    note = (
        f"Latencies re-derived from the accuracy curves in sweep-n.json on {datetime.date.today()} with "
        f"`python benchmarks/rederive_latency.py {folder}` (no simulation rerun)."
    )
    write_text(folder / "sweep-n.md", f"{header}{body}\n\n{note}\n")
    print(f"{folder}: " + ", ".join(f"n={k}: {p['latency']}" for k, p in sorted(record["points"].items())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path, nargs="+", help="folders holding sweep-n.json and sweep-n.md")
    for folder in parser.parse_args().folders:
        rederive(folder)


if __name__ == "__main__":
    main()
