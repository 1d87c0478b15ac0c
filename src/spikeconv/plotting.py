"""Plots of accuracy and of Ding et al.'s fit curve against time step (matplotlib, written
without a display)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from .io.files import write_with

__all__ = ["new_figure", "plot_accuracy", "plot_fit_curves", "save_figure"]


def new_figure(panels: int = 1, width: float = 6.4) -> tuple[Any, Any]:
    """A figure with ``panels`` side-by-side axes, drawn without a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, panels, figsize=(width * panels if panels > 1 else width, 4.2), dpi=120)
    return fig, axes


def save_figure(fig: Any, path: str | Path) -> None:
    """Write ``fig`` atomically to ``path`` (format from its suffix, permissions from the
    umask) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    fig.tight_layout()
    try:
        write_with(path, lambda tmp: fig.savefig(tmp, format=path.suffix.lstrip(".") or "png"))
    finally:
        plt.close(fig)


def _tab20(k: int) -> Any:
    import matplotlib

    return matplotlib.colormaps["tab20"](k)


def plot_accuracy(
    curves: Mapping[str, Tensor],
    path: str | Path,
    *,
    ann_accuracy: float | None = None,
    title: str = "",
    ylim: tuple[float, float] | None = None,
    log_steps: bool = False,
) -> None:
    """One line per curve (accuracy in percent after each step), the ANN as a dashed
    horizontal line; written atomically to ``path`` (format from its suffix).
    ``log_steps``: time steps on a log scale (for T = 1 ... 256)."""
    fig, ax = new_figure()
    many = len(curves) > 10  # beyond the default cycle's 10 colours: 20 colours, alternating dashes
    for k, (label, accuracy) in enumerate(curves.items()):
        steps = range(1, len(accuracy) + 1)
        style = {"color": _tab20(k % 20), "linestyle": "-" if k % 2 == 0 else "--"} if many else {}
        ax.plot(steps, accuracy.tolist(), label=label, linewidth=1.4, **style)
    if ann_accuracy is not None:
        ax.axhline(ann_accuracy, color="black", linestyle="--", linewidth=1.0, label=f"ANN ({ann_accuracy:.2f} %)")
    ax.set_xlabel("time step t")
    if log_steps:
        ax.set_xscale("log", base=2)
    ax.set_ylabel("accuracy (%)")
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7 if len(curves) > 6 else None)
    if title:
        ax.set_title(title)
    save_figure(fig, path)


def plot_fit_curves(curves: Mapping[str, Mapping[str, Any]], path: str | Path, *, title: str = "") -> None:
    """Ding et al.'s fit curve K(t) (:func:`spikeconv.metrics.fit_curve`) on log-log axes,
    one panel per network (``curves``: ``{network: {layer: K over t}}``), one line per layer;
    the dotted line is 1/t, the slope that Theorem 2's bound 2 Omega / t follows."""
    fig, axes = new_figure(len(curves), width=4.6)
    axes = [axes] if len(curves) == 1 else list(axes)
    for ax, (network, layers) in zip(axes, curves.items(), strict=True):
        for layer, values in layers.items():
            k = [float(v) for v in values]
            ax.plot(range(1, len(k) + 1), k, label=f"layer {layer}", linewidth=1.2)
        steps = len(next(iter(layers.values())))
        ax.plot(range(1, steps + 1), [1.0 / t for t in range(1, steps + 1)], "k:", linewidth=1.0, label="1/t")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("time step t")
        ax.set_ylabel("K(t) = ||r(t) - r_hat||^2 / ||r_hat||^2")
        ax.set_title(network, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    if title:
        fig.suptitle(title)
    save_figure(fig, path)
