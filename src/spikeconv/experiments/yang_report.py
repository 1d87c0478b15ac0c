"""Markdown tables and plots for the records of :mod:`spikeconv.experiments.yang`, with the
paper's numbers beside ours."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..plotting import new_figure, save_figure

__all__ = ["REPORTS"]


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def stats_report(record: dict[str, Any], paper: dict[str, Any], png: Path) -> str:
    rows = []
    for i, layer in enumerate(record["layers"]):
        before = paper.get("unsaturated_first_layer_before_ceil") if i == 0 else None
        after = paper.get("unsaturated_first_layer_after_ceil") if i == 0 else None
        rows.append([
            layer["name"], _fmt(layer["a_M"], 3), _fmt(100 * layer["below_half_a_M"]),
            _fmt(100 * layer["unsaturated_before_ceil"]), _fmt(100 * layer["unsaturated_after_ceil"]),
            _fmt(before), _fmt(after),
        ])  # fmt: skip
    lines = [
        f"Non-zero activations of each layer on {record['calibration_images']} training images, normalized by a_M "
        f"(Yang Fig. 3); unsaturated = below the n-scaling scale (n = {record['n']}) before and after f1 = ceil(f1).",
        "",
        *_table(
            ["layer", "a_M", "% below 0.5 a_M", "% unsaturated (before ceil)", "% unsaturated (after ceil)",
             "paper before", "paper after"],
            rows,
        ),  # fmt: skip
        "",
        f"![activation statistics]({png.name})",
    ]
    fig, (left, right) = new_figure(2)
    for layer in record["layers"]:
        centres = [(a + b) / 2 for a, b in zip(layer["bin_edges"][:-1], layer["bin_edges"][1:])]
        left.plot(centres, [100 * d for d in layer["density"]], label=f"layer {layer['name']}")
        right.plot(layer["bin_edges"], [100 * c for c in layer["cumulative"]], label=f"layer {layer['name']}")
    left.set(xlabel="activation / a_M", ylabel="% of non-zero activations", title="(a) distribution")
    right.set(xlabel="activation / a_M", ylabel="% below", title="(b) integral curve")
    right.axvline(0.5, color="grey", linestyle=":")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    save_figure(fig, png)
    return "\n".join(lines)


def sweep_report(record: dict[str, Any], paper: dict[str, Any], png: Path) -> str:
    rows = []
    for key, point in sorted(record["points"].items(), key=lambda kv: float(kv[0])):
        p_acc, p_err = paper.get("sweep_n", {}).get(f"{float(key):.1f}", (None, None))
        rows.append([
            key, _fmt(point["stable_accuracy"]), _fmt(point["approximation_error"], 3),
            f"{point['latency']} (±{point.get('latency_margin_pp', record['margin']):.2f} pp)",
            _fmt(point["spikes_per_image"], 0), _fmt(p_acc), _fmt(p_err, 3),
        ])  # fmt: skip
    lines = [
        f"{record['test_images']} test images, {record['coding']} input, reset to zero, T = {record['T']}, "
        f"f1 = ceil(f1) {'applied' if record.get('ceil_first') else 'not applied (eq. 16 as is)'}; "
        + (
            f"latency = first step within {record['margin']} pp of the stable accuracy (accuracy at T). "
            if record.get("margin") is not None
            else "latency = first step from which the accuracy stays within the margin of the stable accuracy "
            "(accuracy at T): the half-width of its 95 % confidence interval on these test images, at least one "
            "image and 0.1 pp. "
        )
        + "Approximation error = mean |ideal - actual rate| of the output neurons (units of r_max).",
        "",
        *_table(
            ["n", "stable accuracy (%)", "Delta-epsilon", "latency (steps, margin)", "spikes/image", "paper accuracy",
             "paper Delta-epsilon"],
            rows,
        ),  # fmt: skip
        "",
        f"n chosen automatically (smallest with >= 90 % unsaturated in every layer, with the ceiling): "
        f"**{record['n_auto']}** (paper: {paper.get('n_chosen', '–')}). a_M of the first layer: "
        f"{record['a_M_first_layer']:.3f}; with the ceiling n acts only through ceil(n a_M^1).",
        "",
        f"![n sweep]({png.name})",
    ]
    points = sorted(record["points"].items(), key=lambda kv: float(kv[0]))
    fig, (left, right) = new_figure(2)
    left.plot([float(k) for k, _ in points], [p["latency"] for _, p in points], marker="o")
    left.set(xlabel="n", ylabel="latency (steps)", title="latency against n (Fig. 6)")
    for key, point in points:
        right.plot(range(1, len(point["accuracy_curve"]) + 1), point["accuracy_curve"], label=f"n={key}", linewidth=1)
    low = min(p["stable_accuracy"] for _, p in points)
    right.set(xlabel="time step", ylabel="accuracy (%)", ylim=(low - 3, 100), title="accuracy over time")
    right.legend(fontsize=7, ncol=2)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    save_figure(fig, png)
    return "\n".join(lines)


def fixed_point_report(record: dict[str, Any], paper: dict[str, Any], png: Path) -> str:
    rows = []
    widths = sorted(record["widths"].items(), key=lambda kv: int(kv[0]))
    for width, entry in widths:
        if "error" in entry:
            rows.append([width, "–", "–", "–", "–", entry["error"]])
            continue
        fmt = entry["format"]
        rows.append([
            width, str(fmt["integer_bits"]), str(fmt["fraction_bits"]), _fmt(entry["accuracy"]),
            _fmt(100 * fmt["zero_weight_fraction"]), "",
        ])  # fmt: skip
    lines = [
        f"{record['test_images']} test images, {record['coding']} input, T = {record['T']}. V_min = "
        f"{record.get('v_min', float('nan')):.3f} gives N = {record.get('integer_bits')} integer bits (Yang Sec. 3.4). "
        f"Float: **{record['float']['accuracy']:.2f} %**. Paper: {paper.get('fixed_point_16_accuracy', '–')} % at 16 bits "
        f"against {paper.get('float_accuracy', '–')} % in float.",
        "",
        *_table(["bits", "integer bits", "fraction bits", "accuracy (%)", "% weights -> 0", "note"], rows),
        "",
        f"![fixed point]({png.name})",
    ]
    ok = [(int(w), e["accuracy"]) for w, e in widths if "error" not in e]
    fig, ax = new_figure()
    ax.plot([w for w, _ in ok], [a for _, a in ok], marker="o", label="fixed point")
    ax.axhline(record["float"]["accuracy"], color="black", linestyle="--", label="float")
    ax.set(xlabel="total bits", ylabel="accuracy (%)", title="accuracy against fixed-point width")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, png)
    return "\n".join(lines)


def noise_report(record: dict[str, Any], paper: dict[str, Any], png: Path) -> str:
    lines = [
        f"{record['test_images']} test images, {record['coding']} input, T = {record['T']}, {record['repeats']} seeded "
        "draws per level (mean, [min, max]); Delta-Acc = ANN - SNN in percentage points.",
        "",
    ]
    fig, axes = new_figure(2)
    for ax, kind, title in zip(axes, ("awgn", "salt_and_pepper"), ("AWGN (SNR, dB)", "salt-and-pepper (density)")):
        rows = []
        entries = sorted(record[kind].items(), key=lambda kv: float(kv[0]), reverse=kind == "awgn")
        for level, e in entries:
            p = paper.get("noise_delta_accuracy", {}).get(kind, {}).get(level)
            rows.append([
                level, f"{e['ann_mean']:.2f} [{e['ann_range'][0]:.2f}, {e['ann_range'][1]:.2f}]",
                f"{e['snn_mean']:.2f} [{e['snn_range'][0]:.2f}, {e['snn_range'][1]:.2f}]",
                _fmt(e["delta_accuracy"]), _fmt(p),
            ])  # fmt: skip
        lines += [f"### {title}", "", *_table([title, "ANN (%)", "SNN (%)", "Delta-Acc", "paper Delta-Acc"], rows), ""]
        x = list(range(len(entries)))
        for who, offset in (("ann", -0.05), ("snn", 0.05)):
            mean = [e[f"{who}_mean"] for _, e in entries]
            err = [[m - e[f"{who}_range"][0] for m, (_, e) in zip(mean, entries)],
                   [e[f"{who}_range"][1] - m for m, (_, e) in zip(mean, entries)]]  # fmt: skip
            ax.errorbar([i + offset for i in x], mean, yerr=err, marker="o", capsize=3, label=who.upper())
        ax.set_xticks(x, [k for k, _ in entries])
        ax.set(xlabel=title, ylabel="accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend()
    save_figure(fig, png)
    lines.append(f"![noise]({png.name})")
    return "\n".join(lines)


def spikes_report(record: dict[str, Any], paper: dict[str, Any], png: Path) -> str:
    rows = []
    for label in ("maxnorm", "nscaling"):
        e = record[label]
        rows.append([label, _fmt(e["steps_to_target"]), _fmt(e["spikes_to_target"], 0), _fmt(e["spikes_at_T"], 0)])
    lines = [
        f"{record['test_images']} test images, {record['coding']} input, reset to zero, T = {record['T']}. Target: "
        f"max-norm's stable accuracy at T, {record['target_accuracy']:.2f} %. Spikes are totals over the test set.",
        "",
        *_table(["rule", "first step at target", "spikes to target", f"spikes by T={record['T']}"], rows),
        "",
        f"Rule / max-norm spikes: {_fmt(record.get('spikes_ratio_to_target'))} to target, "
        f"{record['spikes_ratio_at_T']:.2f} by T (paper: {paper.get('spikes_rule_over_maxnorm', '–')}). "
        f"Time saved: {_fmt(100 * record['time_saved'] if 'time_saved' in record else None, 0)} % "
        f"(paper: {_fmt(100 * paper['time_saved'] if 'time_saved' in paper else None, 0)} %).",
        "",
        f"![spikes]({png.name})",
    ]
    fig, ax = new_figure()
    for label in ("maxnorm", "nscaling"):
        curve = record[label]["accuracy_curve"]
        ax.plot(range(1, len(curve) + 1), curve, label=label)
    ax.axhline(record["target_accuracy"], color="black", linestyle="--", label="target")
    ax.set(xlabel="time step", ylabel="accuracy (%)", ylim=(record["target_accuracy"] - 5, 100))
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, png)
    return "\n".join(lines)


REPORTS = {
    "stats": stats_report,
    "sweep-n": sweep_report,
    "fixed-point": fixed_point_report,
    "noise": noise_report,
    "spikes": spikes_report,
}
