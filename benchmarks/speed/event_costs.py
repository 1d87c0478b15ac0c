"""Times the event-driven synapse (``spikeconv.sim.kernels.event_conv``) against the dense
``avg_pool2d`` + ``conv2d`` on layer shapes of converted nets at spike rates 2.5-30 %, and
fits the cost model that ``spikeconv.sim.events`` uses to choose between them.

    flock /tmp/spikeconv-cpu.lock python benchmarks/speed/event_costs.py

Writes ``benchmarks/speed/event_costs.json`` (every timing per image, the fit and the
model's prediction beside the measured speedup). Batch 100, 2 torch threads, best of 3
rounds of 10 calls; weights on a 2^-8 grid, so both give the same currents (checked).

Model, per image: event time = a * elements + b * adds + b_big * adds + c * ranges, where
elements are the input's (scanned to list the spikes), adds are the 16-float vector
additions (per spike, one per 16 outputs it feeds; b where the weights fit in 1 MiB, the L2
cache of a core here, b_big for larger ones, the 8 MB of two linear layers) and ranges are
(output pixel, 128-output block) pairs (each sums one contiguous range of spike lists, made
by merging, per output row, the lists of the KH rows it reads: a separate merge term, per
output row, pooled column and kernel row, was collinear with this one and fitted no
better); dense time = d * macs + e * pooled (the multiply-adds, and the pooling pass; d
fitted apart for linear layers, whose GEMM runs at another speed). Fitted by least squares
on absolute times, then expressed in units of b as in ``spikeconv.sim.events``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from spikeconv.io import write_json
from spikeconv.sim import kernels
from spikeconv.sim.events import (
    CACHED_WEIGHT_BYTES,
    MIN_SPEEDUP,
    EventCosts,
    predicted_speedup,
)

CONV_SHAPES = [  # (C_in, H, C_out, kernel, padding, pool): layers of the Yang, VGG and Rueckauer nets and wider ones
    (12, 24, 64, 5, 0, 2), (16, 32, 16, 3, 1, 1), (16, 32, 32, 3, 1, 2), (32, 16, 32, 3, 1, 1),
    (32, 32, 64, 3, 1, 2), (64, 16, 64, 3, 1, 1), (128, 8, 128, 3, 1, 1), (32, 32, 32, 3, 1, 1),
    (64, 8, 32, 3, 1, 1), (16, 32, 64, 3, 1, 1),
]  # fmt: skip
LINEAR_SHAPES = [  # (C_in, H, C_out, pool): pool -> flatten -> linear (Rueckauer's and VGG's first FC), FC after FC
    (64, 16, 512, 2), (32, 16, 128, 2), (64, 8, 512, 1), (512, 1, 128, 1),
]  # fmt: skip
RATES = (0.025, 0.05, 0.1, 0.2, 0.3)
BATCH = 100


def best_time(fn, calls: int = 10, rounds: int = 3) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def on_grid(layer: nn.Module) -> nn.Module:
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.round(p * 256) / 256)
    return layer


def time_layer(layer: nn.Module, c_in: int, size: int, pool: int, padding: int, rate: float) -> dict:
    """Dense and event times of ``layer`` after a ``pool`` on spikes at ``rate``, per image."""
    c_out = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
    p = size // pool
    if isinstance(layer, nn.Conv2d):
        kernel = layer.kernel_size[0]
        weight = layer.weight.detach().permute(2, 3, 1, 0)
        out_size = p + 2 * padding - kernel + 1
        fan = out_size**2 * kernel**2 / p**2
        ranges = out_size**2 * -(-c_out // 128)
    else:
        kernel = p
        weight = layer.weight.detach().view(c_out, c_in, p, p).permute(2, 3, 1, 0)
        fan = 1.0
        ranges = -(-c_out // 128)
    weight = (weight / pool**2).contiguous()
    spikes = (torch.rand(BATCH, c_in, size, size) < rate).float().contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        def dense() -> torch.Tensor:
            x = nn.functional.avg_pool2d(spikes, pool) if pool > 1 else spikes
            return layer(x if isinstance(layer, nn.Conv2d) else x.flatten(1))

        def event() -> torch.Tensor:
            out = kernels.event_conv(spikes, weight, layer.bias, pool=pool, stride=1, padding=padding)
            return out if isinstance(layer, nn.Conv2d) else out.view(BATCH, -1)

        assert torch.equal(dense(), event())
        t_dense, t_event = best_time(dense), best_time(event)
    elements = size * size * c_in
    return {
        "layer": type(layer).__name__, "c_in": c_in, "size": size, "c_out": c_out, "kernel": kernel, "pool": pool,
        "rate": rate, "fan": fan, "dense_s": t_dense / BATCH, "event_s": t_event / BATCH, "speedup": t_dense / t_event,
        "elements": elements, "adds": float(spikes.sum()) / BATCH * fan * c_out / 16,
        "ranges": ranges, "weight_bytes": weight.numel() * 4, "macs": elements * fan * c_out / pool**2, "pooled": elements * (pool > 1),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("event_costs.json"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = []
    for shape, make in [(s, lambda s: nn.Conv2d(s[0], s[2], s[3], padding=s[4])) for s in CONV_SHAPES] + [
        (s, lambda s: nn.Linear(s[0] * (s[1] // s[3]) ** 2, s[2])) for s in LINEAR_SHAPES
    ]:
        for rate in RATES:
            torch.manual_seed(0)
            layer = on_grid(make(shape))
            c_in, size = shape[0], shape[1]
            pool, padding = (shape[5], shape[4]) if isinstance(layer, nn.Conv2d) else (shape[3], 0)
            row = time_layer(layer, c_in, size, pool, padding, rate)
            rows.append(row)
            print(f"{row['layer']} C={c_in} H={size} C_out={row['c_out']} k={row['kernel']} pool={pool} rate={rate}: "
                  f"dense {row['dense_s'] * 1e6:.1f} us, event {row['event_s'] * 1e6:.1f} us per image, "
                  f"{row['speedup']:.2f}x", flush=True)  # fmt: skip
    # event = a * elements + (b or b_big) * adds + c * ranges; dense = (d or d_lin) * macs + e * pooled
    big = [r["weight_bytes"] > CACHED_WEIGHT_BYTES for r in rows]
    terms = np.array([[r["elements"], r["adds"] * (not g), r["adds"] * g, r["ranges"]] for r, g in zip(rows, big)])
    (a, b, b_big, c), *_ = np.linalg.lstsq(terms, [r["event_s"] for r in rows], rcond=None)
    convs = [r for r in rows if r["layer"] == "Conv2d"]
    (d, e), *_ = np.linalg.lstsq(np.array([[r["macs"], r["pooled"]] for r in convs]), [r["dense_s"] for r in convs], rcond=None)
    linears = [r for r in rows if r["layer"] == "Linear"]
    (d_lin,), *_ = np.linalg.lstsq(np.array([[r["macs"]] for r in linears]), [r["dense_s"] - e * r["pooled"] for r in linears], rcond=None)
    costs = EventCosts(scan=a / b, range=c / b, big_weights_add=b_big / b, mac=d / b, linear_mac=d_lin / b, pool=e / b)
    for r in rows:  # the runtime's model (spikeconv.sim.events.predicted_speedup) with this fit
        r["predicted_speedup"] = predicted_speedup(
            r["adds"] * 16 / (r["elements"] * r["fan"] * r["c_out"]), r["fan"], r["c_out"], r["pool"],
            ranges_per_element=r["ranges"] / r["elements"], weight_bytes=r["weight_bytes"],
            linear=r["layer"] == "Linear", costs=costs,
        )  # fmt: skip
    fit = {"scan_cost": costs.scan, "big_weights_add_cost": costs.big_weights_add, "range_cost": costs.range,
           "mac_cost": costs.mac, "pool_cost": costs.pool, "linear_mac_cost": costs.linear_mac,
           "seconds_per_vector_add": b, "conv_gmac_per_s": 1e-9 / d, "linear_gmac_per_s": 1e-9 / d_lin}  # fmt: skip
    print("fit (costs in units of one vector add):", {k: float(f"{v:.4g}") for k, v in fit.items()})
    picked = [r for r in rows if r["predicted_speedup"] >= MIN_SPEEDUP]
    missed = [r for r in rows if r["predicted_speedup"] < MIN_SPEEDUP and r["speedup"] > 1.25]
    print(f"at MIN_SPEEDUP = {MIN_SPEEDUP}: events for {len(picked)} of {len(rows)}, slowest of them "
          f"{min((r['speedup'] for r in picked), default=float('nan')):.2f}x dense; {len(missed)} left dense that events won by > 1.25x")
    write_json(args.out, {"command": "flock /tmp/spikeconv-cpu.lock python benchmarks/speed/event_costs.py",
                          "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch_threads": 2,
                          "batch": BATCH, "fit": fit, "timings": rows})  # fmt: skip


if __name__ == "__main__":
    main()
