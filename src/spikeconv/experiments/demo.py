"""The embedded-digits demo: train, convert with max-norm and n-scaling, simulate, plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..io import write_json, write_text
from ..io.data import load_digits
from ..plotting import plot_accuracy
from ..training import TrainOptions, train
from .compare import RuleSetting, compare_rules, markdown_table

__all__ = ["run_demo"]


def run_demo(
    out_dir: str | Path,
    *,
    epochs: int = 30,
    T: int = 200,
    coding: str = "constant",
    seed: int = 0,
    progress: bool = True,
    log: bool | None = None,
) -> dict[str, Any]:
    """Train the digits net on scikit-learn's 8x8 digits (resuming a checkpoint in
    ``out_dir``), convert with maxnorm and nscaling with the library's defaults (reset by
    subtraction), simulate to ``T`` with ``coding`` input (analog by default); write ``demo.json``, ``demo.md`` and
    ``accuracy.png`` to ``out_dir``."""
    out_dir = Path(out_dir)
    train_set, test_set = load_digits("train"), load_digits("test")
    options = TrainOptions(epochs=epochs, batch_size=32, lr=1e-2, seed=seed)
    model, _ = train("digits", train_set, test_set, options, out_dir / "digits-model.pt", progress=progress, log=log)
    settings = [RuleSetting(label="maxnorm", rule="maxnorm"), RuleSetting(label="nscaling (n=0.5)", rule="nscaling")]
    steps = [s for s in (5, 10, 20, 30, 50, 100, 150, 200) if s <= T]
    record, curves = compare_rules(
        model, train_set, test_set, settings, T=T, coding=coding, seed=seed, steps=steps, progress=progress
    )
    record["dataset"] = "scikit-learn digits 8x8 (1,438 train / 359 test)"
    write_json(out_dir / "demo.json", record)
    table = markdown_table(record, steps)
    write_text(out_dir / "demo.md", table + "\n")
    plot_accuracy(
        curves, out_dir / "accuracy.png", ann_accuracy=record["ann_accuracy"], title=f"8x8 digits: SNN accuracy over time ({coding} input)"
    )
    record["table"] = table
    return record
