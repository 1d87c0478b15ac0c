"""NIR export and import (nir is the only client library here; Norse / SpikingJelly and
the other readers are checked in benchmarks/interop, an optional environment)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import exact, grid_images, small_cnn
from torch import nn

import spikeconv
from spikeconv.cli import main
from spikeconv.io.export import NIRExportError, from_nir, read_nir, to_nir, write_nir
from spikeconv.models import ZOO

nir = pytest.importorskip("nir")


def _counts(snn, images, T):
    result = spikeconv.simulate(snn, images, T=T, record_counts=True)
    assert result.spike_counts is not None
    return result.output_counts, list(result.spike_counts.values())


def _assert_same_spikes(a, b, images, T):
    out_a, layers_a = _counts(a, images, T)
    out_b, layers_b = _counts(b, images, T)
    assert torch.equal(out_a, out_b)
    assert len(layers_a) == len(layers_b) and all(torch.equal(x, y) for x, y in zip(layers_a, layers_b))


def _nir_reference(graph, x: np.ndarray, T: int) -> np.ndarray:
    """NIR's own semantics, step by step, for a chain of Affine / Flatten / IF nodes: v += r I;
    fire where v > v_threshold; set v to v_reset there. Returns the output spikes per step."""
    order, current = [], "input"
    while current != "output":
        current = next(b for a, b in graph.edges if a == current)
        order.append(current)
    state: dict[str, np.ndarray] = {}
    out = []
    for _ in range(T):
        signal = x
        for key in order[:-1]:
            node = graph.nodes[key]
            if isinstance(node, nir.Flatten):
                signal = signal.reshape(len(signal), -1)
            elif isinstance(node, nir.Affine):
                signal = signal @ node.weight.T + node.bias
            elif isinstance(node, nir.IF):
                v = state.get(key, np.zeros_like(signal)) + node.r * signal
                fired = v > node.v_threshold
                state[key] = np.where(fired, node.v_reset, v)
                signal = fired.astype(signal.dtype)
        out.append(signal)
    return np.stack(out)


def test_round_trip_through_a_nir_file_gives_identical_spikes(tmp_path):
    images = grid_images(20)
    snn = exact(spikeconv.convert(small_cnn(), images, rule="maxnorm", reset="zero", v_min=None))
    write_nir(snn, tmp_path / "net.nir")
    back = read_nir(tmp_path / "net.nir")
    assert back.dtype == torch.float64 and back.spiking_stages[0].neuron.threshold == 1.0  # v > t back to v >= t
    _assert_same_spikes(snn, back, images, T=40)


def test_residual_network_with_batchnorm_round_trips(tmp_path):
    """ResNet-20: additions become several edges into one NIR node; folded BatchNorm and
    shortcut scales travel as Conv2d / Scale nodes."""
    torch.manual_seed(0)
    model = ZOO["resnet20"].build().eval().double()
    images = torch.nn.functional.interpolate(grid_images(4).expand(4, 3, 8, 8), size=32)
    snn = exact(spikeconv.convert(model, images, rule="maxnorm", reset="zero", v_min=None))
    graph = to_nir(snn)
    assert sum(1 for b in (e[1] for e in graph.edges) if b.endswith(".neuron")) > len(snn.spiking_stages)  # sums
    nir.write(tmp_path / "r.nir", graph)
    back = read_nir(tmp_path / "r.nir")
    _assert_same_spikes(snn, back, images, T=12)


def test_exported_graph_under_nir_semantics_fires_like_spikeconv():
    """NIR fires on v > threshold; the export writes nextafter(threshold, -inf), so a
    membrane that reaches the threshold exactly fires in both (0.5 + 0.5 = 1)."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2)).double().eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[0.5, 0.0], [0.25, 0.25], [0.0, 0.75]]))
        model[1].bias.zero_()
        model[3].weight.copy_(torch.tensor([[1.0, -0.5, 0.0], [0.0, 0.5, 0.5]]))
        model[3].bias.zero_()
    x = torch.tensor([[[[1.0, 1.0]]], [[[1.0, 0.5]]]], dtype=torch.float64)
    snn = spikeconv.convert(model, x, rule="none", reset="zero", v_min=None)
    expected = snn(x.unsqueeze(0).expand(16, *x.shape))
    snn.reset_state()
    reference = _nir_reference(to_nir(snn), x.numpy(), 16)
    assert np.array_equal(reference, expected.numpy())
    assert expected[:, 0].sum() > 0  # the exactly-at-threshold neuron fires


def test_import_of_a_foreign_graph_runs_like_nir_says():
    """A graph as another library writes it (Affine -> IF -> Affine -> IF, float32,
    per-neuron thresholds, r != 1), simulated by spikeconv and by NIR's semantics."""
    rng = np.random.default_rng(0)
    grid = lambda *shape: (np.round(rng.uniform(-1, 1, shape) * 64) / 64).astype(np.float32)
    graph = nir.NIRGraph(
        nodes={
            "input": nir.Input({"input": np.array([1, 2, 3])}),
            "flat": nir.Flatten({"input": np.array([1, 2, 3])}, start_dim=0, end_dim=-1),
            "fc1": nir.Affine(grid(5, 6), grid(5)),
            "if1": nir.IF(r=np.full(5, 2.0, np.float32), v_threshold=np.linspace(0.5, 1.5, 5).astype(np.float32),
                           v_reset=np.zeros(5, np.float32)),
            "fc2": nir.Affine(grid(3, 5), grid(3)),
            "if2": nir.IF(r=np.ones(3, np.float32), v_threshold=np.ones(3, np.float32), v_reset=np.zeros(3, np.float32)),
            "output": nir.Output({"output": np.array([3])}),
        },
        edges=[("input", "flat"), ("flat", "fc1"), ("fc1", "if1"), ("if1", "fc2"), ("fc2", "if2"), ("if2", "output")],
    )
    snn = from_nir(graph)
    assert snn.dtype == torch.float32 and snn.input_shape == (1, 2, 3)
    x = (np.round(rng.uniform(0, 1, (8, 1, 2, 3)) * 64) / 64).astype(np.float32)
    ours = snn(torch.as_tensor(x).unsqueeze(0).expand(30, *x.shape)).numpy()
    assert np.array_equal(ours, _nir_reference(graph, x, 30))
    assert ours.sum() > 0


def test_what_nir_cannot_express_is_refused_by_name(tmp_path):
    images = grid_images(10)
    subtract = spikeconv.convert(small_cnn(), images, rule="maxnorm", v_min=None)
    with pytest.raises(NIRExportError, match=r"resets by subtraction.*reset='zero'.*subtract_reset='as_zero'"):
        to_nir(subtract)
    graph = to_nir(subtract, subtract_reset="as_zero")
    neuron = next(n for n in graph.nodes.values() if isinstance(n, nir.IF))
    assert neuron.metadata["spikeconv_reset"] == "subtract" and "approximation" in neuron.metadata["spikeconv_exported_reset"]
    bounded = spikeconv.convert(small_cnn(), images, rule="nscaling", reset="zero")
    assert bounded.spiking_stages[0].neuron.v_min is not None
    with pytest.raises(NIRExportError, match=r"layer '0' bounds its membrane below.*v_min=None"):
        to_nir(bounded)
    half = spikeconv.convert(small_cnn(), images, rule="maxnorm", reset="zero", v_min=None, initial_potential=0.5)
    with pytest.raises(NIRExportError, match="non-zero membrane potential"):
        to_nir(half)
    pooled = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32, 3))
    gated = spikeconv.convert(pooled.double().eval(), images, rule="maxnorm", reset="zero", v_min=None)
    with pytest.raises(NIRExportError, match="spiking max-pool gate"):
        to_nir(gated)
    softmax = spikeconv.convert(small_cnn(), images, rule="maxnorm", reset="zero", v_min=None, readout="softmax")
    with pytest.raises(NIRExportError, match="softmax"):
        to_nir(softmax)
    membrane = spikeconv.convert(small_cnn(), images, rule="maxnorm", reset="zero", v_min=None, readout="membrane")
    write_nir(membrane, tmp_path / "m.nir")
    back = read_nir(tmp_path / "m.nir")
    assert back.readout == "membrane"
    _assert_same_spikes(exact(membrane), exact(back), images, T=10)

    leaky = nir.NIRGraph(
        nodes={"input": nir.Input({"input": np.array([2])}), "fc": nir.Affine(np.eye(2), np.zeros(2)),
               "lif": nir.LIF(tau=np.ones(2), r=np.ones(2), v_leak=np.zeros(2), v_threshold=np.ones(2)),
               "output": nir.Output({"output": np.array([2])})},
        edges=[("input", "fc"), ("fc", "lif"), ("lif", "output")],
    )  # fmt: skip
    with pytest.raises(NIRExportError, match="node 'lif' is a LIF, which spikeconv has no neuron"):
        from_nir(leaky)
    bad = tmp_path / "bad.nir"
    bad.write_bytes(b"no hdf5 here")
    with pytest.raises(ValueError, match="cannot be read as a NIR graph"):
        read_nir(bad)


def test_cli_exports_a_converted_file(tmp_path, digits_model, capsys):
    _, _, model_path = digits_model
    snn_path = tmp_path / "z.snn.pt"
    assert main(["convert", "--model", str(model_path), "--rule", "maxnorm", "--reset", "zero", "--v-min", "none",
                 "--calibration-size", "200", "--out", str(snn_path), "--quiet"]) == 0  # fmt: skip
    out = tmp_path / "z.nir"
    assert main(["export", str(snn_path), "--nir", str(out), "--quiet"]) == 0
    assert "nodes" in capsys.readouterr().out
    back = read_nir(out)
    assert len(back.spiking_stages) == len(spikeconv.load(snn_path).spiking_stages)
    assert main(["convert", "--model", str(model_path), "--rule", "maxnorm", "--calibration-size", "200",
                 "--v-min", "none", "--out", str(snn_path), "--quiet"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["export", str(snn_path), "--nir", str(out), "--quiet"]) == 2
    assert "--subtract-reset as_zero" in capsys.readouterr().err
    assert main(["export", str(snn_path), "--nir", str(out), "--subtract-reset", "as_zero", "--quiet"]) == 0


def _graph(nodes: dict, edges: list) -> object:
    return nir.NIRGraph(nodes={"input": nir.Input({"input": np.array([2])}), **nodes, "output": nir.Output({"output": np.array([2])})},
                        edges=edges, type_check=False)  # fmt: skip


def test_every_import_refusal_names_the_node():
    ones, zeros = np.ones(2, np.float32), np.zeros(2, np.float32)
    fc = nir.Affine(np.eye(2, dtype=np.float32), zeros)
    chain = [("input", "fc"), ("fc", "n"), ("n", "output")]
    with pytest.raises(NIRExportError, match="node 'n' resets to 0.5"):
        from_nir(_graph({"fc": fc, "n": nir.IF(r=ones, v_threshold=ones, v_reset=np.full(2, 0.5, np.float32))}, chain))
    with pytest.raises(NIRExportError, match="cycle"):
        from_nir(_graph({"fc": fc, "n": nir.IF(r=ones, v_threshold=ones, v_reset=zeros), "back": nir.Affine(np.eye(2), zeros)},
                        [*chain, ("n", "back"), ("back", "fc")]))  # fmt: skip
    with pytest.raises(NIRExportError, match="node 'i' is an integrator"):
        from_nir(_graph({"fc": fc, "i": nir.I(r=ones), "fc2": nir.Affine(np.eye(2), zeros), "n": nir.IF(r=ones, v_threshold=ones)},
                        [("input", "fc"), ("fc", "i"), ("i", "fc2"), ("fc2", "n"), ("n", "output")]))  # fmt: skip
    flat = nir.Flatten({"input": np.array([1, 2])}, start_dim=1, end_dim=-1)
    with pytest.raises(NIRExportError, match="node 'flat' flattens dims 1..-1"):
        from_nir(_graph({"flat": flat, "fc": fc, "n": nir.IF(r=ones, v_threshold=ones)},
                        [("input", "flat"), ("flat", "fc"), ("fc", "n"), ("n", "output")]))  # fmt: skip
    with pytest.raises(NIRExportError, match="Output node must be fed by one layer of IF neurons"):
        from_nir(_graph({"fc": fc}, [("input", "fc"), ("fc", "output")]))
    with pytest.raises(NIRExportError, match="threshold <= 0"):
        from_nir(_graph({"fc": fc, "n": nir.IF(r=ones, v_threshold=-ones)}, chain))


def test_concatenation_and_unusual_pools_are_refused_on_export():
    class Branches(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(1, 2, 3, padding=1)
            self.fc = nn.Linear(4 * 64, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], 1).flatten(1))

    images = grid_images(6)
    snn = spikeconv.convert(Branches().double().eval(), images, rule="maxnorm", reset="zero", v_min=None)
    with pytest.raises(NIRExportError, match="concatenates channels"):
        to_nir(snn)
    ceil = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.AvgPool2d(4, ceil_mode=True), nn.Flatten(), nn.Linear(8, 3))
    snn = spikeconv.convert(ceil.double().eval(), images, rule="maxnorm", reset="zero", v_min=None)
    with pytest.raises(NIRExportError, match="ceil_mode"):
        to_nir(snn)


def test_sum_pool_round_trips():
    """A SumPool2d (an average pool with divisor 1) is imported and written back as one."""
    ones = np.ones(8, np.float32)
    graph = nir.NIRGraph(
        nodes={
            "input": nir.Input({"input": np.array([2, 4, 4])}),
            "pool": nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0])),
            "flat": nir.Flatten({"input": np.array([2, 2, 2])}, start_dim=0, end_dim=-1),
            "n": nir.IF(r=ones, v_threshold=np.full(8, 1.5, np.float32), v_reset=np.zeros(8, np.float32)),
            "output": nir.Output({"output": np.array([8])}),
        },
        edges=[("input", "pool"), ("pool", "flat"), ("flat", "n"), ("n", "output")],
        type_check=False,
    )
    snn = from_nir(graph)
    x = torch.round(torch.rand(5, 2, 4, 4) * 64) / 64
    sums = torch.nn.functional.avg_pool2d(x, 2, divisor_override=1).flatten(1)
    assert torch.equal(snn(x.unsqueeze(0))[0], (sums > 1.5).float())  # one step: fires where the window's sum > 1.5
    again = to_nir(snn)
    assert sum(isinstance(n, nir.SumPool2d) for n in again.nodes.values()) == 1
    _assert_same_spikes(snn, from_nir(again), x, T=6)
