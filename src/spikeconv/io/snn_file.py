"""The converted-network file: ``save(snn, path)`` / ``load(path)``.

The file holds plain data only (dicts, lists, strings, numbers and tensors), so
``torch.load(path, weights_only=True)`` reads it and loading a file from someone else runs
no pickled code. It describes the network rather than pickling it:

- every stage: name, output flag, sources, the IF neurons (threshold, reset, V_min,
  initial potential) or the max-pool gate, and the synapse as a list of primitive layers
  (conv2d, linear, avgpool2d, adaptiveavgpool2d, flatten, add, cat, scale,
  channelaffine) with their settings and tensors; a synapse with several inputs is stored
  as its graph (each layer's inputs by index);
- the network: input shape, readout, softmax rate and seed;
- the conversion record: the rule's mapping (scales, V_min, bits), the calibration
  statistics, reset, initial potential and the SNN-calibration summary;
- optionally the ANN it came from (``ann``: a model checkpoint record).

``format`` and ``version`` are checked on loading: a file from a newer spikeconv or one
that is not a spikeconv network is refused with a message that says so.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from torch import Tensor, fx, nn

from ..conversion.calibrate import ActivationStats, LayerStats
from ..conversion.graph import Add, Cat, ChannelAffine, Flatten, Scale
from ..conversion.rules import LayerMapping, Mapping
from ..sim.network import ConversionInfo, SpikingNetwork, SpikingStage
from ..sim.neurons import GateParams, IFParams
from .files import load_torch, save_torch

__all__ = [
    "SNN_FORMAT", "SNN_VERSION", "from_plain_data", "load", "network_from_dict", "network_to_dict", "save", "to_plain_data",
]

SNN_FORMAT = "spikeconv-snn"
SNN_VERSION = 2  # 1: the pickled module of spikeconv 0.1 (needed weights_only=False)

# the records a file may contain, by name (nothing else is rebuilt from a file)
_RECORDS: dict[str, type] = {
    cls.__name__: cls
    for cls in (IFParams, GateParams, ConversionInfo, Mapping, LayerMapping, ActivationStats, LayerStats)
}

# layer type -> (class, constructor settings read from the module, tensors)
_CONV_SETTINGS = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode")
_POOL_SETTINGS = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
_LAYERS: dict[str, tuple[type[nn.Module], tuple[str, ...], tuple[str, ...]]] = {
    "conv2d": (nn.Conv2d, _CONV_SETTINGS, ("weight", "bias")),
    "linear": (nn.Linear, ("in_features", "out_features"), ("weight", "bias")),
    "avgpool2d": (nn.AvgPool2d, _POOL_SETTINGS, ()),
    "adaptiveavgpool2d": (nn.AdaptiveAvgPool2d, ("output_size",), ()),
    "flatten": (Flatten, (), ()),
    "add": (Add, (), ()),
    "cat": (Cat, (), ()),
    "scale": (Scale, (), ("factor",)),
    "channelaffine": (ChannelAffine, (), ("weight", "bias")),
}
_LAYER_NAMES = {cls: name for name, (cls, _, _) in _LAYERS.items()}


class SNNFileError(ValueError):
    """A converted-network file that cannot be read (foreign, newer, damaged)."""


def save(snn: SpikingNetwork, path: str | Path, *, ann: dict[str, Any] | None = None) -> None:
    """Write ``snn`` (and, optionally, the ANN checkpoint record it came from) to ``path``,
    atomically. Read it back with :func:`load`."""
    if not isinstance(snn, SpikingNetwork):
        raise TypeError(f"save() takes a SpikingNetwork from spikeconv.convert(), not {type(snn).__name__}")
    payload = {"format": SNN_FORMAT, "version": SNN_VERSION, "network": network_to_dict(snn)}
    if ann is not None:
        payload["ann"] = to_plain_data(ann, "ann")
    save_torch(path, payload)


def load(path: str | Path, *, with_ann: bool = False) -> Any:
    """The network :func:`save` wrote to ``path`` (``with_ann=True``: the pair ``(network,
    ANN record or None)``). Loads with ``weights_only=True``: no code in the file runs."""
    state = load_torch(path, "converted network")
    if not isinstance(state, dict) or not str(state.get("format", "")).startswith(SNN_FORMAT):
        raise SNNFileError(
            f"{path} is not a spikeconv converted network: write one with spikeconv.save() or `spikeconv convert`"
        )
    version = state.get("version")
    if not isinstance(version, int) or version > SNN_VERSION:
        raise SNNFileError(
            f"{path} was written by a newer spikeconv (file version {version}, this one reads up to {SNN_VERSION}): "
            "upgrade spikeconv to read it"
        )
    if version < SNN_VERSION:  # pragma: no cover - version 1 files hold pickled modules and do not load safely
        raise SNNFileError(f"{path} is a version {version} file: convert the model again with this spikeconv")
    try:
        snn = network_from_dict(state["network"])
    except (KeyError, TypeError, ValueError) as error:
        raise SNNFileError(f"{path} is damaged: {type(error).__name__}: {error}") from error
    return (snn, state.get("ann")) if with_ann else snn


# ----------------------------------------------------------------------------- network


def network_to_dict(snn: SpikingNetwork) -> dict[str, Any]:
    """The network as plain data (what :func:`save` writes)."""
    return {
        "input_shape": list(snn.input_shape),
        "readout": snn.readout,
        "softmax_rate": snn.softmax_rate,
        "softmax_seed": snn.softmax_seed,
        "stages": [_stage_to_dict(stage) for stage in snn.spiking_stages],
        "info": None if snn.info is None else to_plain_data(snn.info, "info"),
    }


def network_from_dict(data: dict[str, Any]) -> SpikingNetwork:
    """The network :func:`network_to_dict` described."""
    stages = [_stage_from_dict(entry) for entry in data["stages"]]
    snn = SpikingNetwork(
        stages,
        input_shape=tuple(data["input_shape"]),
        readout=data["readout"],
        info=None if data["info"] is None else from_plain_data(data["info"]),
        softmax_rate=data["softmax_rate"],
    )
    snn.softmax_seed = int(data["softmax_seed"])
    return snn.eval()


def _stage_to_dict(stage: SpikingStage) -> dict[str, Any]:
    return {
        "name": stage.name,
        "is_output": stage.is_output,
        "sources": None if stage.sources is None else list(stage.sources),
        "neuron": to_plain_data(stage.neuron, f"{stage.name}.neuron"),
        "gate": None if stage.gate is None else to_plain_data(stage.gate, f"{stage.name}.gate"),
        "synapse": _synapse_to_dict(stage.name, stage.synapse),
    }


def _stage_from_dict(entry: dict[str, Any]) -> SpikingStage:
    return SpikingStage(
        entry["name"],
        _synapse_from_dict(entry["synapse"]),
        from_plain_data(entry["neuron"]),
        is_output=bool(entry["is_output"]),
        sources=None if entry["sources"] is None else tuple(entry["sources"]),
        gate=None if entry["gate"] is None else from_plain_data(entry["gate"]),
    )


def _synapse_to_dict(stage: str, synapse: nn.Module) -> dict[str, Any]:
    if isinstance(synapse, nn.Sequential):
        return {"kind": "chain", "layers": [_layer_to_dict(stage, m) for m in synapse]}
    if not isinstance(synapse, fx.GraphModule):
        raise TypeError(f"stage {stage!r}: cannot save a synapse of type {type(synapse).__name__}")
    index: dict[fx.Node, int] = {}
    inputs = 0
    layers: list[dict[str, Any]] = []
    output = None
    for node in synapse.graph.nodes:
        if node.op == "placeholder":
            index[node] = inputs
            inputs += 1
        elif node.op == "call_module":
            if not all(isinstance(a, fx.Node) for a in node.args) or node.kwargs:
                raise TypeError(f"stage {stage!r}: layer {node.target!r} takes inputs other than layer outputs")
            entry = _layer_to_dict(stage, synapse.get_submodule(str(node.target)))
            entry["name"] = str(node.target)
            entry["inputs"] = [index[a] for a in node.args]
            layers.append(entry)  # layers are numbered after the inputs, in order
            index[node] = inputs + len(layers) - 1
        elif node.op == "output":
            output = index[node.args[0]]
        else:
            raise TypeError(f"stage {stage!r}: cannot save a synapse that calls {node.op} {node.target!r}")
    return {"kind": "graph", "inputs": inputs, "layers": layers, "output": output}


def _synapse_from_dict(entry: dict[str, Any]) -> nn.Module:
    if entry["kind"] == "chain":
        return nn.Sequential(*(_layer_from_dict(layer) for layer in entry["layers"]))
    if entry["kind"] != "graph":
        raise ValueError(f"unknown synapse kind {entry['kind']!r}")
    root = nn.Module()
    graph = fx.Graph()
    values = [graph.placeholder(f"source_{k}") for k in range(entry["inputs"])]
    for layer in entry["layers"]:
        name = layer["name"]
        root.add_module(name, _layer_from_dict(layer))
        values.append(graph.call_module(name, tuple(values[i] for i in layer["inputs"])))
    graph.output(values[entry["output"]])
    return fx.GraphModule(root, graph)


def _layer_to_dict(stage: str, module: nn.Module) -> dict[str, Any]:
    kind = _LAYER_NAMES.get(type(module))
    if kind is None:
        raise TypeError(
            f"stage {stage!r}: cannot save a {type(module).__name__} layer (a converted network holds only "
            f"{', '.join(_LAYERS)})"
        )
    _, settings, tensors = _LAYERS[kind]
    entry: dict[str, Any] = {"type": kind, "settings": {k: to_plain_data(getattr(module, k), k) for k in settings}}
    entry["tensors"] = {k: None if getattr(module, k) is None else getattr(module, k).detach().cpu().clone() for k in tensors}
    return entry


def _layer_from_dict(entry: dict[str, Any]) -> nn.Module:
    if entry["type"] not in _LAYERS:
        raise ValueError(f"unknown layer type {entry['type']!r}")
    cls, _, _ = _LAYERS[entry["type"]]
    settings, tensors = dict(entry["settings"]), entry["tensors"]
    module: nn.Module
    if cls in (nn.Conv2d, nn.Linear):
        module = cls(**settings, bias=tensors["bias"] is not None, dtype=tensors["weight"].dtype)
        module.load_state_dict({k: v for k, v in tensors.items() if v is not None})
        module.requires_grad_(False)
    elif cls is Scale:
        module = Scale(tensors["factor"])
    elif cls is ChannelAffine:
        module = ChannelAffine(tensors["weight"], tensors["bias"])
    else:
        module = cls(**settings)
    return module


# ----------------------------------------------------------------------------- plain data


def to_plain_data(value: Any, where: str) -> Any:
    """``value`` as data ``torch.load(weights_only=True)`` reads: records become dicts
    tagged with their class name; anything else that is not plain is refused."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, (list, tuple)):
        items = [to_plain_data(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"{where}: only string keys can be saved, got {list(value)}")
        return {k: to_plain_data(v, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(value) and type(value).__name__ in _RECORDS:
        fields = {f.name: to_plain_data(getattr(value, f.name), f"{where}.{f.name}") for f in dataclasses.fields(value)}
        return {"__record__": type(value).__name__, **fields}
    raise TypeError(f"{where}: cannot save a {type(value).__name__} in a converted-network file")


def from_plain_data(value: Any) -> Any:
    """The inverse of :func:`_plain`."""
    if isinstance(value, list):
        return [from_plain_data(v) for v in value]
    if isinstance(value, tuple):
        return tuple(from_plain_data(v) for v in value)
    if isinstance(value, dict):
        fields = {k: from_plain_data(v) for k, v in value.items() if k != "__record__"}
        if "__record__" not in value:
            return fields
        cls = _RECORDS.get(value["__record__"])
        if cls is None:
            raise ValueError(f"unknown record {value['__record__']!r}")
        return cls(**fields)
    return value
