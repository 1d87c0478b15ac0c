"""NIR export and import: the Neuromorphic Intermediate Representation (``pip install nir``)
that Loihi, SpiNNaker2, Speck and the PyTorch SNN libraries read.

``to_nir(snn)`` maps each stage's synapse to NIR nodes (Conv2d, Affine/Linear, AvgPool2d,
SumPool2d, Flatten, Scale; a per-channel affine becomes a depthwise 1x1 Conv2d; an addition becomes
several edges into one node, which NIR sums) and its neurons to ``IF`` nodes (``r = 1``,
one time step = ``dt = 1``). ``from_nir(graph)`` does the inverse for any graph made of
those nodes. Semantic differences are handled explicitly, never silently:

- **Firing**: NIR fires on ``v > v_threshold``, spikeconv on ``v >= threshold``. For floats
  of the network's dtype ``v >= t`` is exactly ``v > nextafter(t, -inf)``: the export
  writes that threshold and the import reverses it, so the spikes are the same.
- **Reset**: a NIR IF resets to ``v_reset`` (spikeconv: reset to zero). Reset by
  subtraction has no NIR primitive: export refuses it unless asked for
  ``subtract_reset="as_zero"``, which writes reset to zero and records the approximation
  in each IF node's metadata (``spikeconv_reset: subtract``).
- **Refused, naming the layer**: max-pool gates, the softmax readout, concatenation, a
  membrane lower bound V_min, a non-zero initial potential (none exists in NIR), and on
  import any node type spikeconv has no neuron or synapse for (LIF, CubaLIF, Delay, ...).
- The membrane readout is an ``I`` (integrator) node at the output.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, fx, nn

from ..conversion.graph import Add, Cat, ChannelAffine, ConversionError, Flatten, Scale
from ..sim.network import SpikingNetwork, SpikingStage
from ..sim.neurons import IFParams
from .files import write_with

__all__ = ["SUBTRACT_RESETS", "NIRExportError", "from_nir", "read_nir", "read_nir_graph", "to_nir", "write_nir"]

SUBTRACT_RESETS = ("refuse", "as_zero")


class NIRExportError(ConversionError):
    """A network or graph that NIR and spikeconv cannot exchange without changing it."""


def _nir() -> Any:
    try:
        import nir
    except ImportError as error:
        raise ImportError("NIR export and import need the nir package: pip install 'spikeconv[nir]'") from error
    return nir


# ----------------------------------------------------------------------------- export


def to_nir(snn: SpikingNetwork, *, subtract_reset: str = "refuse") -> Any:
    """``snn`` as a ``nir.NIRGraph`` (see the module docstring for what maps to what)."""
    nir = _nir()
    if not isinstance(snn, SpikingNetwork):
        raise TypeError(f"to_nir() takes a SpikingNetwork from spikeconv.convert(), not {type(snn).__name__}")
    if subtract_reset not in SUBTRACT_RESETS:
        raise ValueError(f"subtract_reset must be one of {SUBTRACT_RESETS}, got {subtract_reset!r}")
    if snn.readout == "softmax":
        raise NIRExportError("NIR has no spiking softmax readout: convert with readout='spikes' or 'membrane'")
    dtype = snn.dtype
    with torch.no_grad():
        shapes = [tuple(r.shape[1:]) for r in snn.analog_forward(torch.zeros(1, *snn.input_shape, dtype=dtype))]
    nodes: dict[str, Any] = {"input": nir.Input(input_type={"input": np.array(snn.input_shape)})}
    edges: list[tuple[str, str]] = []
    produced: dict[int, str] = {-1: "input"}
    for index, stage in enumerate(snn.spiking_stages):
        if stage.gate is not None:
            raise NIRExportError(f"layer {stage.name!r} is a spiking max-pool gate, which NIR cannot express: "
                                 "convert a model with average pooling")  # fmt: skip
        sources = stage.source_indices(index)
        in_shapes = [snn.input_shape if s < 0 else shapes[s] for s in sources]
        builder = _SynapseExport(nir, _node_name(stage.name), nodes, edges, dtype)
        ends = builder.export(stage, [produced[s] for s in sources], in_shapes)
        neuron = _node_name(stage.name) + ".neuron"
        nodes[neuron] = _neuron_node(nir, stage, shapes[index], dtype, snn.readout, subtract_reset)
        edges.extend((end, neuron) for end in ends)
        produced[index] = neuron
    nodes["output"] = nir.Output(output_type={"output": np.array(shapes[-1])})
    edges.append((produced[len(shapes) - 1], "output"))
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata={"producer": "spikeconv", "dt": 1.0})


def write_nir(snn: SpikingNetwork, path: str | Path, *, subtract_reset: str = "refuse") -> Any:
    """Export ``snn`` and write it as a NIR HDF5 file, atomically; returns the graph."""
    graph = to_nir(snn, subtract_reset=subtract_reset)
    write_with(path, lambda tmp: _nir().write(tmp, graph))
    return graph


def read_nir_graph(path: str | Path) -> Any:
    """The ``nir.NIRGraph`` of a NIR HDF5 file."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"NIR file {path} does not exist")
    try:
        return _nir().read(str(path))
    except (OSError, KeyError, ValueError) as error:
        raise ValueError(f"{path} cannot be read as a NIR graph ({type(error).__name__}: {error})") from error


def read_nir(path: str | Path) -> SpikingNetwork:
    """Read a NIR HDF5 file and import it with :func:`from_nir`."""
    return from_nir(read_nir_graph(path))


def _node_name(name: str) -> str:
    return re.sub(r"[^\w.]", "_", name)


def _neuron_node(nir: Any, stage: SpikingStage, shape: tuple[int, ...], dtype: torch.dtype, readout: str, subtract: str) -> Any:
    params = stage.neuron
    if params.v_min is not None:
        raise NIRExportError(f"layer {stage.name!r} bounds its membrane below (V_min), which a NIR IF cannot: "
                             "convert with v_min=None (--v-min none)")  # fmt: skip
    if bool(torch.any(torch.as_tensor(params.v_init) != 0)):
        raise NIRExportError(f"layer {stage.name!r} starts from a non-zero membrane potential, which NIR has no "
                             "parameter for: convert with initial_potential=0")  # fmt: skip
    ones = np.ones(shape, dtype=_numpy(dtype))
    if stage.is_output and readout == "membrane":
        return nir.I(r=ones, metadata={"spikeconv_readout": "membrane"})
    metadata: dict[str, Any] = {"spikeconv_fires_on": "v >= threshold, written as v > nextafter(threshold, -inf)"}
    if params.reset == "subtract":
        if subtract == "refuse":
            raise NIRExportError(
                f"layer {stage.name!r} resets by subtraction, which NIR has no primitive for (a NIR IF resets to "
                "v_reset): convert with reset='zero' (--reset zero), or export with subtract_reset='as_zero' "
                "(--subtract-reset as_zero) to write reset to zero and record the approximation in the node"
            )
        metadata["spikeconv_reset"] = "subtract"
        metadata["spikeconv_exported_reset"] = "zero (approximation)"
    threshold = torch.as_tensor(params.threshold, dtype=dtype).expand(shape).numpy()
    strict = np.nextafter(threshold, -np.inf).astype(_numpy(dtype))
    return nir.IF(r=ones, v_threshold=strict, v_reset=np.zeros_like(ones), metadata=metadata)


def _numpy(dtype: torch.dtype) -> Any:
    return np.float64 if dtype == torch.float64 else np.float32


class _SynapseExport:
    """The NIR nodes of one synapse; ``export`` returns the nodes whose sum feeds the neurons."""

    def __init__(self, nir: Any, prefix: str, nodes: dict[str, Any], edges: list[tuple[str, str]], dtype: torch.dtype) -> None:
        self.nir, self.prefix, self.nodes, self.edges, self.dtype = nir, prefix, nodes, edges, dtype

    def export(self, stage: SpikingStage, sources: list[str], shapes: list[tuple[int, ...]]) -> list[str]:
        synapse = stage.synapse
        if isinstance(synapse, nn.Sequential):
            ends, shape = [sources[0]], shapes[0]
            for k, layer in enumerate(synapse):
                ends, shape = self.layer(stage, f"{k}", layer, ends, shape)
            return ends
        assert isinstance(synapse, fx.GraphModule)
        env: dict[fx.Node, tuple[list[str], tuple[int, ...]]] = {}
        placeholders = iter(zip(sources, shapes, strict=True))
        for node in synapse.graph.nodes:
            if node.op == "placeholder":
                source, shape = next(placeholders)
                env[node] = ([source], shape)
            elif node.op == "call_module":
                layer = synapse.get_submodule(str(node.target))
                inputs = [env[a] for a in node.args]
                if isinstance(layer, Add):
                    env[node] = ([e for ends, _ in inputs for e in ends], inputs[0][1])
                else:
                    env[node] = self.layer(stage, str(node.target), layer, *inputs[0])
            elif node.op == "output":
                ends, _ = env[node.args[0]]
                if len(set(ends)) != len(ends):
                    raise NIRExportError(f"layer {stage.name!r} adds a signal to itself, which NIR edges cannot express")
                return ends
        raise AssertionError("a synapse graph without output")

    def layer(self, stage: SpikingStage, key: str, layer: nn.Module, ends: list[str], shape: tuple[int, ...]) -> tuple[list[str], tuple[int, ...]]:
        nir, name = self.nir, f"{self.prefix}.{_node_name(key)}"
        node: Any
        if isinstance(layer, nn.Conv2d):
            if layer.padding_mode != "zeros":
                raise NIRExportError(f"layer {stage.name!r}: NIR convolutions pad with zeros, not {layer.padding_mode!r}")
            node = nir.Conv2d(
                input_shape=tuple(shape[1:]), weight=_array(layer.weight), stride=layer.stride,
                padding=layer.padding, dilation=layer.dilation, groups=layer.groups,
                bias=_array(layer.bias) if layer.bias is not None else np.zeros(layer.out_channels, _numpy(self.dtype)),
            )  # fmt: skip
        elif isinstance(layer, nn.Linear):
            node = nir.Affine(_array(layer.weight), _array(layer.bias)) if layer.bias is not None else nir.Linear(_array(layer.weight))
        elif isinstance(layer, nn.AvgPool2d):
            node = self.avg_pool(stage, layer.kernel_size, layer.stride, layer.padding, layer)
        elif isinstance(layer, nn.AdaptiveAvgPool2d):
            size = layer.output_size if isinstance(layer.output_size, tuple) else (layer.output_size, layer.output_size)
            if any(s is None or shape[k + 1] % s for k, s in enumerate(size)):
                raise NIRExportError(f"layer {stage.name!r}: an adaptive pool to {size} of {shape} has unequal windows")
            kernel = tuple(shape[k + 1] // s for k, s in enumerate(size))  # type: ignore[operator]
            node = nir.AvgPool2d(kernel_size=np.array(kernel), stride=np.array(kernel), padding=np.array((0, 0)))
        elif isinstance(layer, Flatten):
            node = nir.Flatten(input_type={"input": np.array(shape)}, start_dim=0, end_dim=-1)
        elif isinstance(layer, Scale):
            node = nir.Scale(np.ascontiguousarray(np.broadcast_to(_array(layer.factor), shape)))
        elif isinstance(layer, ChannelAffine):
            weight, bias = _array(layer.weight), _array(layer.bias)
            if len(shape) == 3:  # per channel: a depthwise 1x1 convolution
                node = nir.Conv2d(input_shape=tuple(shape[1:]), weight=weight.reshape(-1, 1, 1, 1), stride=1,
                                  padding=0, dilation=1, groups=len(weight), bias=bias)  # fmt: skip
            else:
                node = nir.Affine(np.diag(weight), bias)
        elif isinstance(layer, Cat):
            raise NIRExportError(f"layer {stage.name!r} concatenates channels, which NIR has no node for")
        else:
            raise NIRExportError(f"layer {stage.name!r}: a {type(layer).__name__} has no NIR node")
        self.nodes[name] = node
        self.edges.extend((end, name) for end in ends)
        with torch.no_grad():
            out = layer(torch.zeros(1, *shape, dtype=self.dtype))
        return [name], tuple(out.shape[1:])

    def avg_pool(self, stage: SpikingStage, kernel: Any, stride: Any, padding: Any, layer: nn.AvgPool2d) -> Any:
        window = {"kernel_size": np.array(_pair(kernel)), "stride": np.array(_pair(stride or kernel)),
                  "padding": np.array(_pair(padding))}  # fmt: skip
        if layer.divisor_override == 1 and not layer.ceil_mode:  # the window's sum
            return self.nir.SumPool2d(**window)
        if layer.ceil_mode or layer.divisor_override is not None or (not layer.count_include_pad and any(_pair(padding))):
            raise NIRExportError(f"layer {stage.name!r}: NIR's AvgPool2d has no ceil_mode, divisor_override or "
                                 "count_include_pad=False")  # fmt: skip
        return self.nir.AvgPool2d(**window)


def _array(t: Tensor) -> Any:
    return t.detach().cpu().numpy().copy()


# ----------------------------------------------------------------------------- import

_SYNAPSE_NODES = ("Conv2d", "Affine", "Linear", "Scale", "Flatten", "AvgPool2d", "SumPool2d")


def from_nir(graph: Any, *, dtype: torch.dtype | None = None) -> SpikingNetwork:
    """A spiking network computing what the NIR graph ``graph`` computes, one step per
    ``dt``: each IF (or, at the output, I) node becomes a layer of neurons, the nodes
    between them its synapse (edges into one node are summed). ``dtype``: the network's
    float type; by default that of the IF thresholds (float64 if any is, else float32),
    the type in which ``v > t`` is turned into ``v >= nextafter(t, +inf)`` exactly."""
    nir = _nir()
    if dtype is None:
        wide = any(np.asarray(n.v_threshold).dtype == np.float64 for n in graph.nodes.values() if isinstance(n, nir.IF))
        dtype = torch.float64 if wide else torch.float32
    inputs = [k for k, n in graph.nodes.items() if isinstance(n, nir.Input)]
    outputs = [k for k, n in graph.nodes.items() if isinstance(n, nir.Output)]
    if len(inputs) != 1 or len(outputs) != 1:
        raise NIRExportError(f"the graph has {len(inputs)} Input and {len(outputs)} Output nodes; spikeconv takes one each")
    for key, node in graph.nodes.items():
        kind = type(node).__name__
        if kind not in (*_SYNAPSE_NODES, "IF", "I", "Input", "Output"):
            raise NIRExportError(f"node {key!r} is a {kind}, which spikeconv has no neuron or synapse for "
                                 f"(it imports IF neurons and {', '.join(_SYNAPSE_NODES)})")  # fmt: skip
    parents: dict[str, list[str]] = {k: [] for k in graph.nodes}
    for a, b in graph.edges:
        parents[b].append(a)
    order = _topological(graph.nodes, graph.edges)
    neurons = [k for k in order if type(graph.nodes[k]).__name__ in ("IF", "I")]
    feeding = parents[outputs[0]]
    if len(feeding) != 1 or feeding[0] not in neurons:
        raise NIRExportError("the Output node must be fed by one layer of IF neurons (or an I node for a membrane readout)")
    input_shape = tuple(int(d) for d in np.asarray(graph.nodes[inputs[0]].input_type["input"]).reshape(-1))
    index = {inputs[0]: -1, **{k: i for i, k in enumerate(neurons)}}
    stages = []
    for key in neurons:
        node = graph.nodes[key]
        is_output = key == feeding[0]
        if type(node).__name__ == "I" and not is_output:
            raise NIRExportError(f"node {key!r} is an integrator (I) inside the network; only the output may be one")
        synapse, sources = _import_synapse(key, graph.nodes, parents, index, order, dtype)
        neuron = _import_neuron(key, node, dtype)
        r = np.asarray(node.r)
        if not np.all(r == 1):  # v += r I: r scales the synapse's current
            synapse = _append_scale(synapse, torch.as_tensor(r, dtype=dtype))
        name = key.removesuffix(".neuron")
        stages.append(SpikingStage(name, synapse, neuron, is_output=is_output, sources=sources))
    readout = "membrane" if type(graph.nodes[feeding[0]]).__name__ == "I" else "spikes"
    snn = SpikingNetwork(stages, input_shape=input_shape, readout=readout)  # type: ignore[arg-type]
    return snn.eval()


def _topological(nodes: dict[str, Any], edges: list[tuple[str, str]]) -> list[str]:
    pending = {k: 0 for k in nodes}
    for _, b in edges:
        pending[b] += 1
    ready = [k for k in nodes if pending[k] == 0]
    order: list[str] = []
    while ready:
        key = ready.pop(0)
        order.append(key)
        for a, b in edges:
            if a == key:
                pending[b] -= 1
                if pending[b] == 0:
                    ready.append(b)
    if len(order) != len(nodes):
        raise NIRExportError("the graph has a cycle (recurrent connections), which spikeconv's feed-forward layers cannot run")
    return order


def _import_neuron(key: str, node: Any, dtype: torch.dtype) -> IFParams:
    if type(node).__name__ == "I":
        return IFParams()
    v_reset = np.asarray(node.v_reset)
    if np.any(v_reset != 0):
        raise NIRExportError(f"node {key!r} resets to {float(v_reset.reshape(-1)[0])}; spikeconv resets to zero (or subtracts)")
    # v > t is v >= nextafter(t, +inf) in the network's float type
    threshold = torch.as_tensor(np.nextafter(np.asarray(node.v_threshold, dtype=_numpy(dtype)), np.inf))
    if bool(torch.any(threshold <= 0)):
        raise NIRExportError(f"node {key!r} has a threshold <= 0")
    value: float | Tensor = float(threshold.reshape(-1)[0]) if bool(torch.all(threshold == threshold.reshape(-1)[0])) else threshold
    return IFParams(threshold=value, reset="zero")


def _import_synapse(
    key: str, nodes: dict[str, Any], parents: dict[str, list[str]], index: dict[str, int], order: list[str], dtype: torch.dtype
) -> tuple[nn.Module, tuple[int, ...]]:
    """The synapse feeding neuron node ``key``: the synapse nodes back to the nearest
    neurons or the input, as a chain (nn.Sequential) or a graph with additions."""
    members: set[str] = set()
    sources: list[str] = []
    stack = list(parents[key])
    while stack:
        name = stack.pop()
        if name in index:
            if name not in sources:
                sources.append(name)
        elif name not in members:
            members.add(name)
            stack.extend(parents[name])
    sources.sort(key=order.index)
    ordered = [n for n in order if n in members]
    modules = {n: _import_layer(n, nodes[n], dtype) for n in ordered}
    chain = len(sources) == 1 and all(len(parents[n]) == 1 for n in [*ordered, key]) and all(
        parents[n][0] == (sources[0] if i == 0 else ordered[i - 1]) for i, n in enumerate([*ordered, key])
    )
    source_index = tuple(index[s] for s in sources)
    if chain:
        return nn.Sequential(*modules.values()), source_index
    graph = fx.Graph()
    root = nn.Module()
    env: dict[str, fx.Node] = {s: graph.placeholder(f"source_{k}") for k, s in enumerate(sources)}
    adds = 0

    def summed(names: list[str]) -> fx.Node:
        nonlocal adds
        value = env[names[0]]
        for other in names[1:]:
            adds += 1
            root.add_module(f"add_{adds}", Add())
            value = graph.call_module(f"add_{adds}", (value, env[other]))
        return value

    for n in ordered:
        attr = re.sub(r"\W", "_", n)
        root.add_module(attr, modules[n])
        env[n] = graph.call_module(attr, (summed(parents[n]),))
    graph.output(summed(parents[key]))
    return fx.GraphModule(root, graph), source_index


def _import_layer(key: str, node: Any, dtype: torch.dtype) -> nn.Module:
    kind = type(node).__name__

    def tensor(a: Any) -> Tensor:
        return torch.as_tensor(np.asarray(a), dtype=dtype)

    if kind == "Conv2d":
        weight = tensor(node.weight)
        padding = node.padding if isinstance(node.padding, str) else _pair(node.padding)
        conv = nn.Conv2d(
            weight.shape[1] * int(node.groups), weight.shape[0], _pair(weight.shape[2:]), stride=_pair(node.stride),
            padding=padding, dilation=_pair(node.dilation), groups=int(node.groups), dtype=dtype,
        )  # fmt: skip
        conv.load_state_dict({"weight": weight, "bias": tensor(node.bias).expand(weight.shape[0]).clone()})
        return conv.requires_grad_(False)
    if kind in ("Affine", "Linear"):
        weight = tensor(node.weight)
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=kind == "Affine", dtype=dtype)
        linear.load_state_dict({"weight": weight} | ({"bias": tensor(node.bias)} if kind == "Affine" else {}))
        return linear.requires_grad_(False)
    if kind == "Scale":
        return Scale(tensor(node.scale))
    if kind == "Flatten":
        if int(node.start_dim) != 0 or int(node.end_dim) != -1:
            raise NIRExportError(f"node {key!r} flattens dims {node.start_dim}..{node.end_dim}; spikeconv flattens all "
                                 "dims of a sample (start_dim 0, end_dim -1 without the batch)")  # fmt: skip
        return Flatten()
    pool = nn.AvgPool2d(_pair(node.kernel_size), _pair(node.stride), _pair(node.padding))
    if kind == "SumPool2d":
        pool.divisor_override = 1  # the window's sum
    return pool


def _pair(value: Any) -> tuple[int, int]:
    """Two ints from a NIR attribute (a number, a pair, an array of one or two)."""
    flat = [int(v) for v in np.asarray(value).reshape(-1)]
    return (flat[0], flat[0]) if len(flat) == 1 else (flat[0], flat[1])


def _append_scale(synapse: nn.Module, factor: Tensor) -> nn.Module:
    if isinstance(synapse, nn.Sequential):
        synapse.append(Scale(factor))
        return synapse
    assert isinstance(synapse, fx.GraphModule)
    synapse.add_module("neuron_r", Scale(factor))
    output = next(n for n in synapse.graph.nodes if n.op == "output")
    with synapse.graph.inserting_before(output):
        node = synapse.graph.call_module("neuron_r", (output.args[0],))
    output.args = (node,)
    synapse.recompile()
    return synapse
