"""Data-parallel simulation: 1, 2 and 3 processes (gloo, CPU) give the result of one."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import exact, grid_images, small_cnn

import spikeconv
from spikeconv.sim.distributed import merge_results, shard, simulate_distributed

T, BATCH = 12, 4


def _network_and_data():
    snn = exact(spikeconv.convert(small_cnn(), grid_images(40), rule="maxnorm", readout="softmax"))
    images = grid_images(22, seed=5)  # 6 batches of 4, the last of 2
    return snn, (images, torch.arange(22) % 5)


def _worker(rank: int, world: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        snn, data = _network_and_data()
        result = simulate_distributed(snn, data, T=T, batch_size=BATCH, coding="poisson", seed=3, record_counts=True,
                                      record_synops=True)  # fmt: skip
        if rank == 0:
            torch.save(dataclasses.asdict(result), out)
    finally:
        dist.destroy_process_group()


def test_shards_cover_every_batch_once():
    for batches in range(12):
        for world in range(1, 5):
            taken = [k for rank in range(world) for k in shard(batches, world, rank)]
            assert taken == list(range(batches))
    with pytest.raises(ValueError):
        shard(3, 2, 2)


def _same(a: dict, b: dict) -> None:
    for key, value in a.items():
        if key == "wall_time_s":
            continue
        other = b[key]
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, other), key
        elif isinstance(value, dict):
            assert value.keys() == other.keys(), key
            for k in value:
                assert torch.equal(value[k], other[k]) if isinstance(value[k], torch.Tensor) else value[k] == other[k], (key, k)
        else:
            assert value == other, key


@pytest.mark.parametrize("world", [1, 2, 3])
def test_any_number_of_processes_gives_the_one_process_result(tmp_path, world):
    """Poisson input and the softmax readout included: each batch draws from its own
    stream, seeded by (seed, batch index)."""
    out = tmp_path / "merged.pt"
    mp.spawn(_worker, args=(world, str(tmp_path / "store"), str(out)), nprocs=world, join=True)
    merged = torch.load(out, weights_only=False)
    snn, data = _network_and_data()
    one = spikeconv.simulate(snn, data, T=T, batch_size=BATCH, coding="poisson", seed=3, record_counts=True,
                             record_synops=True, seeding="per_batch")  # fmt: skip
    _same(merged, dataclasses.asdict(one))


def test_per_batch_seeding_is_split_invariant_and_merge_joins_in_order():
    snn, (images, labels) = _network_and_data()
    options = {"T": T, "batch_size": BATCH, "coding": "poisson", "seed": 3, "seeding": "per_batch", "record_counts": True}
    whole = spikeconv.simulate(snn, (images, labels), **options)
    parts = [
        spikeconv.simulate(snn, (images[:8], labels[:8]), **options),
        spikeconv.simulate(snn, (images[8:], labels[8:]), first_batch=2, **options),
    ]
    _same(dataclasses.asdict(merge_results(parts)), dataclasses.asdict(whole))
    # the stream seeding of one run is not split-invariant (and stays the default)
    stream = dict(options, seeding="stream")
    assert not torch.equal(
        spikeconv.simulate(snn, (images[8:], labels[8:]), **stream).output_counts, whole.output_counts[8:]
    )
    with pytest.raises(ValueError, match="seeding must be one of"):
        spikeconv.simulate(snn, images, T=2, seeding="per_image")


def test_cli_evaluate_under_torchrun_equals_one_process(tmp_path, digits_model):
    import json
    import subprocess
    import sys

    from spikeconv.cli import main

    _, _, model_path = digits_model
    snn_path = tmp_path / "d.snn.pt"
    assert main(["convert", "--model", str(model_path), "--rule", "maxnorm", "--calibration-size", "200",
                 "--out", str(snn_path), "--quiet"]) == 0  # fmt: skip
    args = ["evaluate", "--snn", str(snn_path), "-T", "15", "--test-size", "70", "--coding", "poisson",
            "--batch-size", "16", "--quiet", "--threads", "1"]  # fmt: skip
    threads = torch.get_num_threads()
    try:
        assert main([*args, "--out", str(tmp_path / "one.json")]) == 0
    finally:
        torch.set_num_threads(threads)  # --threads 1 set it for this whole test process
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "spikeconv.cli", *args, "--out", str(tmp_path / "two.json")]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"), check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    one = json.loads((tmp_path / "one.json").read_text())["networks"]["d.snn"]
    two = json.loads((tmp_path / "two.json").read_text())["networks"]["d.snn"]
    one.pop("wall_time_s"), two.pop("wall_time_s")
    assert one == two and one["images"] == 70
