"""spikeconv's NIR files read by other libraries, and their NIR files read by spikeconv.

Export: a network trained on the 8x8 digits, converted (max-norm, reset to zero, no V_min),
written with ``spikeconv export --nir``; Norse, SpikingJelly, snnTorch and sinabs import the
file and simulate it on the same test images (analog input, the image as the current at
every step); we count the images whose output spike trains equal spikeconv's at every step.
Import: each library exports a network of its own to NIR; spikeconv imports it and
simulates it beside the library.

Weights and inputs sit on a 2^-8 grid, so every synaptic sum is exact in float32 whatever
the summation order: a difference in spikes is a difference in semantics, not rounding.

    bash benchmarks/interop/setup.sh
    benchmarks/interop/.venv/bin/python benchmarks/interop/nir_clients.py
"""

from __future__ import annotations

import datetime
import platform
import tempfile
import traceback
import warnings
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import nir
import numpy as np
import torch
from torch import nn

import spikeconv
from spikeconv.io import write_json, write_text
from spikeconv.io.data import load_digits
from spikeconv.io.export import from_nir, read_nir_graph, write_nir
from spikeconv.training import evaluate_ann

ROOT = Path(__file__).resolve().parents[2]
T = 32
IMAGES = 200
CLIENTS = ("norse", "spikingjelly", "snntorch", "sinabs")


def grid(t: torch.Tensor) -> torch.Tensor:
    return torch.round(t * 256) / 256


def networks() -> dict[str, Callable[[], nn.Module]]:
    return {
        "conv (stride-2 convs, flatten, affine)": lambda: nn.Sequential(
            nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(64, 10),
        ),
        "conv + average pool": lambda: nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
            nn.AvgPool2d(2), nn.Flatten(), nn.Linear(64, 10),
        ),
        "residual block (two edges into one node)": lambda: _Residual(),
        "MLP (flatten, affine)": lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)),
    }  # fmt: skip


class _Residual(nn.Module):
    """conv, then a block whose output adds the block's input (identity shortcut)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(1, 8, 3, stride=2, padding=1)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv0(x))
        y = torch.relu(self.conv1(y) + y)
        return self.fc(y.flatten(1))


def train_quickly(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 40) -> nn.Module:
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), 64):
            index = order[start : start + 64]
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[index]), y[index]).backward()
            optimizer.step()
    return model.eval()


# ----------------------------------------------------------------------------- clients: simulate a NIR graph


def stateful_steps(module: Any, x: torch.Tensor) -> torch.Tensor:
    """T steps of a module called as ``out, state = module(x, state)`` (nirtorch's executors)."""
    state, steps = None, []
    for _ in range(T):
        out, state = module(x, state)
        steps.append(out)
    return torch.stack(steps)


def run_norse(graph: Any, x: torch.Tensor) -> torch.Tensor:
    import norse.torch as norse

    module = norse.from_nir(graph, dt=1.0)
    # Norse maps NIR's Flatten(start_dim=0) to torch's Flatten(0): it runs one unbatched sample at a time
    return torch.stack([stateful_steps(module, image) for image in x], 1)


def run_spikingjelly(graph: Any, x: torch.Tensor) -> torch.Tensor:
    from spikingjelly.activation_based.nir_exchange.from_nir import import_from_nir

    return stateful_steps(import_from_nir(graph, dt=1.0), x)  # r = 1 / dt


def run_snntorch(graph: Any, x: torch.Tensor) -> torch.Tensor:
    import snntorch.utils
    from snntorch.import_nir import import_from_nir

    module = import_from_nir(graph)
    snntorch.utils.reset(module)
    return stateful_steps(module, x)


def run_sinabs(graph: Any, x: torch.Tensor) -> torch.Tensor:
    import sinabs

    module = sinabs.from_nir(graph, batch_size=len(x))
    sequence = x.unsqueeze(1).expand(len(x), T, *x.shape[1:]).reshape(len(x) * T, *x.shape[1:])  # [B*T, ...]
    out = module(sequence)
    out = out[0] if isinstance(out, tuple) else out
    return out.reshape(len(x), T, -1).transpose(0, 1)


RUNNERS: dict[str, Callable[[Any, torch.Tensor], torch.Tensor]] = {
    "norse": run_norse, "spikingjelly": run_spikingjelly, "snntorch": run_snntorch, "sinabs": run_sinabs,
}  # fmt: skip


def compare(ours: torch.Tensor, theirs: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    same = (ours == theirs).flatten(2).all(2).all(0)  # [images]: every step and output neuron equal
    return {
        "identical_images": int(same.sum()),
        "images": len(same),
        "spikes_spikeconv": int(ours.sum()),
        "spikes_client": int(theirs.sum()),
        "accuracy_spikeconv": 100.0 * float((ours.sum(0).argmax(1) == labels).float().mean()),
        "accuracy_client": 100.0 * float((theirs.sum(0).argmax(1) == labels).float().mean()),
    }


def short(error: BaseException) -> str:
    text = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
    return text[:220]


# ----------------------------------------------------------------------------- their exports into spikeconv


def spikingjelly_export(x: torch.Tensor) -> tuple[Any, torch.Tensor]:
    from spikingjelly.activation_based import functional, layer, neuron
    from spikingjelly.activation_based.nir_exchange.to_nir import export_to_nir

    torch.manual_seed(1)
    net = nn.Sequential(
        layer.Conv2d(1, 8, 3, stride=2, padding=1), neuron.IFNode(v_reset=0.0), layer.Flatten(),
        layer.Linear(128, 10), neuron.IFNode(v_reset=0.0),
    )  # fmt: skip
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(grid(p * 2))
    graph = export_to_nir(net, x[:1], dt=1.0)
    functional.reset_net(net)
    steps = [net(x) for _ in range(T)]
    return graph, torch.stack(steps).detach()


def norse_export(x: torch.Tensor) -> tuple[Any, torch.Tensor]:
    import norse.torch as norse

    torch.manual_seed(2)
    # Norse exports no Flatten node (None in the graph): the network takes flat images
    net = norse.SequentialState(nn.Linear(64, 32), norse.IAFCell(), nn.Linear(32, 10), norse.IAFCell())
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(grid(p * 2))
    flat = x.flatten(1)
    graph = norse.to_nir(net, flat[:1], dt=1.0)
    return graph, stateful_steps(net, flat).detach()


def sinabs_export(x: torch.Tensor) -> tuple[Any, torch.Tensor]:
    import sinabs
    import sinabs.layers as sl

    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(64, 32), sl.IAF(), nn.Linear(32, 10), sl.IAF())  # inputs [batch, time, 64]
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(grid(p * 2))
    graph = sinabs.to_nir(net, torch.zeros(1, 1, 64))
    sinabs.reset_states(net)
    out = net(x.flatten(1).unsqueeze(1).expand(len(x), T, 64)).transpose(0, 1)
    return graph, out.detach()


def snntorch_export(x: torch.Tensor) -> tuple[Any, torch.Tensor]:
    import snntorch as snn
    from snntorch.export_nir import export_to_nir

    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), snn.Leaky(beta=1.0, init_hidden=True, output=True))
    graph = export_to_nir(net, x[:1])
    return graph, torch.zeros(0)


EXPORTERS = {
    "spikingjelly": spikingjelly_export, "norse": norse_export, "sinabs": sinabs_export, "snntorch": snntorch_export,
}  # fmt: skip


def main() -> None:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    train_x, train_y = load_digits("train").tensors()
    test_x, test_y = load_digits("test").subset(IMAGES, seed=0).tensors()
    test_x = grid(test_x)
    results: dict[str, Any] = {
        "date": datetime.date.today().isoformat(), "T": T, "images": len(test_x), "threads": 1,
        "versions": {p: version(p) for p in ("torch", "nir", "nirtorch", "norse", "spikingjelly", "snntorch", "sinabs", "spikeconv")},
        "machine": platform.machine(), "export": {}, "import": {},
    }  # fmt: skip
    for name, build in networks().items():
        torch.manual_seed(0)
        model = train_quickly(build(), train_x, train_y)
        snn = spikeconv.convert(model, train_x[:500], rule="maxnorm", reset="zero", v_min=None)
        with torch.no_grad():
            for p in snn.parameters():
                p.copy_(grid(p))
        ours = snn(test_x.unsqueeze(0).expand(T, *test_x.shape)).detach()
        entry: dict[str, Any] = {"ann_accuracy": evaluate_ann(model, load_digits("test").subset(IMAGES, seed=0))}
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "net.nir"
            write_nir(snn, path)
            graph = read_nir_graph(path)
            entry["nodes"] = sorted({type(n).__name__ for n in graph.nodes.values()})
            back = from_nir(read_nir_graph(path))
            entry["spikeconv"] = compare(ours, back(test_x.unsqueeze(0).expand(T, *test_x.shape)).detach(), test_y)
            for client in CLIENTS:
                try:
                    entry[client] = compare(ours, RUNNERS[client](read_nir_graph(path), test_x).detach().float(), test_y)
                except Exception as error:  # noqa: BLE001 - a client that cannot read or run the graph: say how it fails
                    entry[client] = {"error": short(error), "where": traceback.extract_tb(error.__traceback__)[-1].filename.split("site-packages/")[-1]}
        results["export"][name] = entry
        print(name, {k: _cell(v) if isinstance(v, dict) else v for k, v in entry.items()})
    for client, export in EXPORTERS.items():
        try:
            graph, theirs = export(test_x)
            entry = {"nodes": sorted({type(n).__name__ for n in graph.nodes.values()})}
            try:
                snn = from_nir(graph)
                # Norse and sinabs write the example's batch dimension into the Input type ([1, 64]): spikeconv
                # takes the graph's shape as it is, so the flat images go in as [B, 1, 64]
                images = test_x.reshape(len(test_x), *snn.input_shape)
                ours = snn(images.unsqueeze(0).expand(T, *images.shape)).detach().reshape(T, len(test_x), -1)
                entry.update(compare(ours, theirs.float(), test_y))
                # the exporter's own firing rule, v >= threshold, written unchanged: read as NIR's v > t' with
                # t' = nextafter(threshold, -inf) it must give the library's spikes
                for node in graph.nodes.values():
                    if isinstance(node, nir.IF):
                        node.v_threshold = np.nextafter(np.asarray(node.v_threshold, np.float32), -np.inf)
                ge = from_nir(graph)(images.unsqueeze(0).expand(T, *images.shape)).detach().reshape(T, len(test_x), -1)
                entry["identical_if_fires_on_ge"] = compare(ge, theirs.float(), test_y)["identical_images"]
            except Exception as error:  # noqa: BLE001 - spikeconv refuses what it cannot run: record the message
                entry["spikeconv_error"] = short(error)
        except Exception as error:  # noqa: BLE001 - the library's export failed: record how
            entry = {"error": short(error)}
        results["import"][client] = entry
        print("import", client, entry)
    write_json(ROOT / "benchmarks" / "results" / "interop_nir.json", results)
    write_text(ROOT / "docs" / "results" / "interop_nir.md", report(results))


def report(results: dict[str, Any]) -> str:
    v = results["versions"]
    lines = [
        f"# NIR interoperability ({results['date']})", "",
        "Command: `bash benchmarks/interop/setup.sh && benchmarks/interop/.venv/bin/python benchmarks/interop/nir_clients.py`", "",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + f"; {results['machine']}, 1 thread.", "",
        (f"Each cell: images (of {results['images']} digits test images) whose output spike trains equal the other "
         f"side's at every one of T = {results['T']} steps; spikes in all; accuracy from the spike counts. Weights and "
         "inputs on a 2^-8 grid (exact sums): a difference is one of semantics."), "",
        "## spikeconv's NIR file, read by each library", "",
        "| network | nodes | spikeconv read back | " + " | ".join(CLIENTS) + " |",
        "|---|---|---|" + "---|" * len(CLIENTS),
    ]  # fmt: skip
    for name, entry in results["export"].items():
        cells = [_cell(entry[c]) for c in ("spikeconv", *CLIENTS)]
        lines.append(f"| {name} (ANN {entry['ann_accuracy']:.1f} %) | {', '.join(entry['nodes'])} | " + " | ".join(cells) + " |")
    lines += ["", "## Each library's NIR export, read by spikeconv", "", "| exported by | nodes | result |", "|---|---|---|"]
    for client, entry in results["import"].items():
        if "error" in entry:
            lines.append(f"| {client} | | export failed: {entry['error']} |")
        elif "spikeconv_error" in entry:
            lines.append(f"| {client} | {', '.join(entry['nodes'])} | spikeconv refuses: {entry['spikeconv_error']} |")
        else:
            ge = entry["identical_if_fires_on_ge"]
            lines.append(f"| {client} | {', '.join(entry['nodes'])} | {_cell(entry)}; read as firing on v >= threshold: "
                         f"**{ge}/{entry['images']}** identical |")
    lines += ["", "## Why cells differ (read in each library's source, version above)", "", *NOTES]
    return "\n".join(lines) + "\n"


NOTES = [
    ("- Norse maps NIR's Flatten(start_dim=0) to torch's Flatten(0, -1), which flattens the batch too: the harness "
     "runs Norse one unbatched image at a time. Norse has no AvgPool2d import (nirtorch then misses the node: "
     "KeyError). It fires on v > threshold and resets to zero, NIR's IF exactly."),
    ("- SpikingJelly shifts Flatten dims by one for the batch and imports IF as IFNode with v_reset (hard reset); "
     "it fires on v >= threshold on the nextafter(threshold, -inf) spikeconv writes, so the two differ only for a "
     "membrane exactly one float step below spikeconv's threshold (never on the 2^-8 grid here). Its own "
     "export writes its v >= threshold rule's threshold unchanged: read with NIR's v > threshold (spikeconv, Norse), "
     "membranes landing exactly on it do not fire; read as v >= threshold, every image agrees."),
    ("- snnTorch 1.0.0 imports IF as `snn.Leaky(beta=0.9, init_hidden=False)`: a leaky neuron whose tuple output "
     "(spikes, membrane) reaches the next layer (TypeError), and its Flatten is not shifted for the batch. Its "
     "export of a Leaky network fails NIR's type check."),
    ("- sinabs imports IF as IAFSqueeze with min_v_mem = -threshold and sinabs' defaults, MultiSpike (several "
     "spikes per step) and MembraneSubtract (reset by subtraction): other dynamics than NIR's IF. It exports its "
     "IAF (the same defaults) as a NIR IF, so its own network and the IF it writes differ the same way. No "
     "AvgPool2d import (SumPool2d only)."),
]


def _cell(entry: dict[str, Any]) -> str:
    if "error" in entry:
        return f"fails: {entry['error']} ({entry['where']})".replace("|", "/")
    return (f"**{entry['identical_images']}/{entry['images']}** identical; spikes {entry['spikes_spikeconv']} vs "
            f"{entry['spikes_client']}; acc. {entry['accuracy_spikeconv']:.1f} vs {entry['accuracy_client']:.1f} %")  # fmt: skip


if __name__ == "__main__":
    main()
