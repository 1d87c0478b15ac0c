"""`spikeconv sweep`: a grid from TOML, cached and resumable, the same table with 1 or 2
processes (and on Ray, in the optional environment)."""

from __future__ import annotations

import json

import pytest

from spikeconv.cli import main
from spikeconv.experiments.sweep import load_config, run_sweep

CONFIG = """
models = ["{model}"]
T = 20
test_size = 60
calibration_size = 300
seed = 1
batch_size = 25
steps = [5, 10, 20]
[grid]
rule = ["maxnorm", "nscaling"]
n = [0.25, 0.5]
coding = ["constant", "poisson"]
noise = ["none", "awgn:20"]
"""


def _rows(out):
    return json.loads((out / "sweep.json").read_text())["rows"]


def test_sweep_is_cached_resumable_and_the_same_with_two_processes(tmp_path, digits_model, capsys):
    _, _, model_path = digits_model
    config_path = tmp_path / "sweep.toml"
    config_path.write_text(CONFIG.format(model=model_path))
    config = load_config(config_path)
    assert len(config.points()) == 4 + 8  # n multiplies only the n-scaling points
    out = tmp_path / "one"
    assert main(["sweep", str(config_path), "--out-dir", str(out), "--quiet"]) == 0
    assert "12 points (12 computed now)" in capsys.readouterr().out
    rows = _rows(out)
    assert len(rows) == 12 and len(list((out / "stats").glob("*.pt"))) == 1  # statistics once, shared
    assert {r["point"]["rule"] for r in rows} == {"maxnorm", "nscaling"}
    assert all(0 <= r["final_accuracy"] <= 100 and r["accuracy"]["20"] == r["final_accuracy"] for r in rows)
    table = (out / "sweep.md").read_text()
    assert "| rule | n | coding | noise | ANN | T=5 | T=10 | T=20 |" in table and (out / "sweep.png").stat().st_size > 5000
    # a rerun computes nothing and gives the same table; a lost point is recomputed alone
    next(iter((out / "points").glob("*.json"))).unlink()
    assert run_sweep(config, out)["computed_now"] == 1 and _rows(out) == rows
    assert run_sweep(config, out, workers=2)["computed_now"] == 0
    # two processes from scratch: the same numbers
    assert run_sweep(config, tmp_path / "two", workers=2)["computed_now"] == 12
    assert _rows(tmp_path / "two") == rows
    # noise and Poisson input change results (the grid is really applied)
    by = {(r["point"]["rule"], r["point"].get("n"), r["point"]["coding"], r["point"]["noise"]): r for r in rows}
    assert by[("maxnorm", None, "constant", "none")]["spikes_per_image"] != by[("maxnorm", None, "constant", "awgn:20")]["spikes_per_image"]
    assert by[("maxnorm", None, "constant", "none")]["accuracy"] != by[("maxnorm", None, "poisson", "none")]["accuracy"]


def test_sweep_on_ray_gives_the_local_table(tmp_path, digits_model):
    pytest.importorskip("ray")  # optional: benchmarks/interop/setup.sh installs it
    _, _, model_path = digits_model
    config_path = tmp_path / "sweep.toml"
    config_path.write_text(CONFIG.format(model=model_path))
    config = load_config(config_path)
    run_sweep(config, tmp_path / "local")
    run_sweep(config, tmp_path / "ray", engine="ray")
    assert _rows(tmp_path / "ray") == _rows(tmp_path / "local")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("models = ['m.pt']\nsteps_ = 3\n", "unknown keys \\['steps_'\\]"),
        ("models = ['m.pt']\n[grid]\nrules = ['maxnorm']\n", "unknown keys \\['grid.rules'\\]"),
        ("models = ['m.pt']\n[grid]\nrule = ['maxnrom']\n", "grid.rule 'maxnrom' is not one of"),
        ("models = ['m.pt']\n[grid]\nnoise = ['gauss:3']\n", "noise 'gauss:3': write none, awgn"),
        ("T = 3\n", "give models"),
        ("models = [\n", "not valid TOML"),
    ],
)
def test_bad_configs_are_refused_by_name(tmp_path, text, message):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_config(path)
