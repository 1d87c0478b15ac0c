"""Plots of accuracy against time step (matplotlib, written without a display)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

__all__ = ["plot_accuracy", "new_figure", "save_figure"]


def new_figure(panels: int = 1, width: float = 6.4) -> tuple[Any, Any]:
    """A figure with ``panels`` side-by-side axes, drawn without a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, panels, figsize=(width * panels if panels > 1 else width, 4.2), dpi=120)
    return fig, axes


def save_figure(fig: Any, path: str | Path) -> None:
    """Write ``fig`` atomically to ``path`` (format from its suffix) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)


def plot_accuracy(
    curves: Mapping[str, Tensor],
    path: str | Path,
    *,
    ann_accuracy: float | None = None,
    title: str = "",
    ylim: tuple[float, float] | None = None,
) -> None:
    """One line per curve (accuracy in percent after each step), the ANN as a dashed
    horizontal line; written atomically to ``path`` (format from its suffix)."""
    fig, ax = new_figure()
    for label, accuracy in curves.items():
        steps = range(1, len(accuracy) + 1)
        ax.plot(steps, accuracy.tolist(), label=label, linewidth=1.4)
    if ann_accuracy is not None:
        ax.axhline(ann_accuracy, color="black", linestyle="--", linewidth=1.0, label=f"ANN ({ann_accuracy:.2f} %)")
    ax.set_xlabel("time step t")
    ax.set_ylabel("accuracy (%)")
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    if title:
        ax.set_title(title)
    save_figure(fig, path)
