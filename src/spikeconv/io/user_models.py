"""Models from outside the zoo, as plain ``nn.Module``s the converter traces.

- a Python factory: ``path/to/file.py:factory`` (a function or class returning the model),
  with its weights from a state-dict file (:func:`load_weights`);
- a ``torch.export`` program (``.pt2``): its ATen graph is rebuilt from standard layers
  (``nn.Conv2d``, ``nn.Linear``, ``nn.BatchNorm``) and the functions the converter knows
  (:func:`from_exported_program`), so the same graph checks and errors apply;
- an ONNX file (``.onnx``, needs the ``onnx`` package): its nodes are rebuilt the same way
  (:func:`from_onnx`).

:func:`with_normalization` puts a user's per-channel ``(x - mean) / std`` in front of a
model as an inference-mode BatchNorm, which the converter turns into the first synapse's
per-channel affine map: the spiking network then takes images in [0, 1], like every
input coding expects.
"""

from __future__ import annotations

import hashlib
import importlib.util
import operator
import re
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from ..conversion.graph import UnsupportedModelError
from .files import load_torch

__all__ = [
    "USER_MODEL_FORMAT",
    "from_exported_program",
    "from_onnx",
    "is_factory",
    "is_user_model",
    "load_factory",
    "load_user_model",
    "load_weights",
    "with_normalization",
]

USER_MODEL_SUFFIXES = (".py", ".pt2", ".onnx")
USER_MODEL_FORMAT = "spikeconv-user-model"  # the ANN record a converted-network file keeps for such a model


def is_user_model(spec: str | Path) -> bool:
    """Whether ``spec`` names a model from outside the zoo (``file.py:factory``, ``.pt2``,
    ``.onnx``) rather than a spikeconv checkpoint."""
    text = str(spec)
    return ".py:" in text or Path(text).suffix.lower() in USER_MODEL_SUFFIXES


def is_factory(spec: str | Path) -> bool:
    """Whether ``spec`` names a Python factory (``file.py:factory``, or a bare ``file.py``,
    which :func:`load_factory` refuses for want of the name)."""
    text = str(spec)
    return ".py:" in text or text.endswith(".py")


def load_user_model(spec: str | Path, weights: str | Path | None = None) -> nn.Module:
    """The model ``spec`` names, in eval mode: ``file.py:factory`` (with ``weights``, a
    state-dict file; ``None`` keeps the factory's own), ``program.pt2`` or ``model.onnx``."""
    text = str(spec)
    if is_factory(text):
        model = load_factory(text)
        if weights is not None:
            load_weights(model, weights)
        return model.eval()
    if weights is not None:
        raise ValueError(f"--weights applies to a Python factory (file.py:factory); {text} holds its own weights")
    path = Path(text)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    if path.suffix.lower() == ".pt2":
        try:
            program = torch.export.load(str(path))
        except Exception as error:  # torch raises many types for a foreign or damaged archive
            raise ValueError(f"{path} cannot be read as a torch.export program ({type(error).__name__}: {error})") from error
        return from_exported_program(program, source=str(path)).eval()
    if path.suffix.lower() == ".onnx":
        return from_onnx(path).eval()
    raise ValueError(f"{path}: expected file.py:factory, a .pt2 torch.export program or an .onnx file")


# ----------------------------------------------------------------------------- Python factory


def load_factory(spec: str) -> nn.Module:
    """Import ``file.py`` and call its ``factory`` (``file.py:factory``) with no arguments."""
    if ":" not in spec or not spec.rsplit(":", 1)[1]:
        raise ValueError(f"{spec}: name the function that builds the model, e.g. {spec.rstrip(':')}:make_model")
    file_text, name = spec.rsplit(":", 1)
    path = Path(file_text)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    # a name of its own per file, so two users' model.py files do not replace each other
    module_name = "spikeconv_user_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    loader = importlib.util.spec_from_file_location(module_name, path)
    if loader is None or loader.loader is None:
        raise ValueError(f"{path} cannot be imported as Python")
    module = importlib.util.module_from_spec(loader)
    sys.modules[module_name] = module  # dataclasses and pickling look the module up by name
    loader.loader.exec_module(module)
    factory = getattr(module, name, None)
    if not callable(factory):
        found = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        raise ValueError(f"{path} has no function or class {name!r}; it defines {found}")  # noqa: TRY004 (a missing name)
    model = factory()
    if not isinstance(model, nn.Module):
        raise TypeError(f"{spec} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a state dict (or a checkpoint dict holding one under ``state_dict``) into
    ``model``, read with ``weights_only=True``; every key must match."""
    state = load_torch(path, "weights")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a state dict (a dict of tensors, as model.state_dict() gives)")
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{path} does not fit the model: missing {result.missing_keys[:5]}, unexpected "
            f"{result.unexpected_keys[:5]}{' ...' if len(result.missing_keys) + len(result.unexpected_keys) > 10 else ''}"
        )


# ----------------------------------------------------------------------------- normalization


def with_normalization(model: nn.Module, mean: list[float], std: list[float]) -> nn.Module:
    """``model`` after ``(x - mean) / std`` per channel (an inference-mode BatchNorm2d)."""
    if len(mean) != len(std):
        raise ValueError(f"--mean has {len(mean)} values and --std {len(std)}: give one per input channel")
    if any(s <= 0 for s in std):
        raise ValueError(f"--std must be positive, got {std}")
    norm = nn.BatchNorm2d(len(mean), eps=0.0, affine=False)
    with torch.no_grad():
        norm.running_mean.copy_(torch.tensor(mean))  # type: ignore[union-attr]
        norm.running_var.copy_(torch.tensor(std) ** 2)  # type: ignore[union-attr]
    dtype = next((p.dtype for p in model.parameters()), torch.float32)
    return nn.Sequential(norm.to(dtype), model).eval()


# ----------------------------------------------------------------------------- torch.export

_aten = torch.ops.aten
# ATen op -> the function the converter's tracer knows, arguments passed through
_SAME_ARGS: dict[Any, Any] = {
    _aten.relu.default: F.relu,
    _aten.relu_.default: F.relu,
    _aten.cat.default: torch.cat,
    _aten.mean.dim: torch.mean,
    _aten.adaptive_avg_pool2d.default: F.adaptive_avg_pool2d,
    _aten._adaptive_avg_pool2d.default: F.adaptive_avg_pool2d,
    _aten.clamp.default: torch.clamp,
    _aten.clamp_min.default: torch.clamp_min,
    _aten.flatten.using_ints: torch.flatten,
    _aten.softmax.int: F.softmax,
    _aten.log_softmax.int: F.log_softmax,
}
_IDENTITY = {
    _aten.dropout.default, _aten.dropout_.default, _aten.clone.default, _aten.alias.default,
    _aten.detach.default, _aten.contiguous.default, _aten.feature_dropout.default,
}  # fmt: skip
_RESHAPES = {_aten.view.default, _aten.reshape.default, _aten._unsafe_view.default}


def from_exported_program(program: Any, source: str = "the exported program") -> fx.GraphModule:
    """An ``nn.Module`` computing what the ``torch.export`` program ``program`` computes,
    built from ``nn.Conv2d`` / ``nn.Linear`` / ``nn.BatchNorm`` layers (named after the
    program's parameters) and torch functions. Refuses, naming the node, what it cannot map."""
    gm = program.module()
    graph = fx.Graph()
    layers: dict[str, nn.Module] = {}
    env: dict[fx.Node, Any] = {}

    def tensor(node: Any) -> Tensor | None:
        if node is None:
            return None
        if not isinstance(node, fx.Node) or node.op != "get_attr":
            raise _refuse(node, source, "takes a weight that is computed, not stored")
        return operator.attrgetter(str(node.target))(gm).detach()

    def add_layer(node: fx.Node, weight_node: Any, layer: nn.Module) -> None:
        base = str(weight_node.target).rsplit(".", 1)[0] if isinstance(weight_node, fx.Node) else node.name
        name, k = base, 1
        while name in layers:
            name, k = f"{base}_{k}", k + 1
        layers[name] = layer
        source_node: Any = node.args[0]
        env[node] = graph.call_module(name, (env[source_node],))

    for node in gm.graph.nodes:
        if node.op == "placeholder":
            env[node] = graph.placeholder(node.name)
        elif node.op == "get_attr" or (node.op == "call_module" and str(node.target).startswith("_guards")):
            continue  # weights are read by the layer that uses them; guards check input shapes
        elif node.op == "output":
            result = node.args[0]
            if isinstance(result, (tuple, list)):
                if len(result) != 1:
                    raise UnsupportedModelError(f"{source} returns {len(result)} outputs: return only the class scores")
                result = result[0]
            graph.output(env[result])
        elif node.op == "call_function":
            _map_node(node, graph, env, tensor, add_layer, source)
        else:
            raise _refuse(node, source, f"is a {node.op} node")
    module = fx.GraphModule(layers, graph, class_name="ExportedProgram")  # type: ignore[arg-type]
    example = next((n.meta.get("val") for n in gm.graph.nodes if n.op == "placeholder"), None)
    if example is not None and hasattr(example, "shape"):
        module.meta["input_shape"] = tuple(int(d) for d in example.shape[1:])
    return module


def _map_node(node: fx.Node, graph: fx.Graph, env: dict[fx.Node, Any], tensor: Any, add_layer: Any, source: str) -> None:
    target = node.target
    a: tuple[Any, ...] = tuple(node.args)

    def arg(i: int, default: Any) -> Any:
        return a[i] if len(a) > i else default

    def mapped(value: Any) -> Any:
        if isinstance(value, fx.Node):
            if value not in env:
                raise _refuse(value, source, "is used as a tensor in forward() (put it in a module)")
            return env[value]
        if isinstance(value, (list, tuple)):
            return type(value)(mapped(v) for v in value)
        return value

    if target in (_aten.conv2d.default, _aten.convolution.default):
        weight, bias = tensor(a[1]), tensor(arg(2, None))
        assert weight is not None
        if target is _aten.convolution.default and (arg(6, False) or any(arg(7, [0]))):
            raise _refuse(node, source, "is a transposed convolution")
        groups = arg(8 if target is _aten.convolution.default else 6, 1)
        conv = nn.Conv2d(
            weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]), stride=tuple(arg(3, [1, 1])),
            padding=arg(4, [0, 0]) if isinstance(arg(4, 0), str) else tuple(arg(4, [0, 0])),
            dilation=tuple(arg(5, [1, 1])), groups=groups, bias=bias is not None, dtype=weight.dtype,
        )  # fmt: skip
        conv.load_state_dict({"weight": weight} | ({"bias": bias} if bias is not None else {}))
        add_layer(node, a[1], conv)
    elif target is _aten.linear.default:
        weight, bias = tensor(a[1]), tensor(arg(2, None))
        assert weight is not None
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype)
        linear.load_state_dict({"weight": weight} | ({"bias": bias} if bias is not None else {}))
        add_layer(node, a[1], linear)
    elif target in (_aten.batch_norm.default, _aten._native_batch_norm_legit_no_training.default):
        weight, bias, mean, var = (tensor(x) for x in a[1:5])
        assert mean is not None and var is not None
        eps = arg(7, 1e-5) if target is _aten.batch_norm.default else arg(6, 1e-5)
        ndim = len(a[0].meta["val"].shape) if isinstance(a[0], fx.Node) and "val" in a[0].meta else 4
        bn = (nn.BatchNorm2d if ndim == 4 else nn.BatchNorm1d)(
            len(mean), eps=eps, affine=weight is not None, dtype=mean.dtype
        )
        state = {"running_mean": mean, "running_var": var}
        bn.load_state_dict(state | ({"weight": weight, "bias": bias} if weight is not None else {}), strict=False)
        add_layer(node, a[3], bn.eval())
    elif target in (_aten.max_pool2d.default, _aten.max_pool2d_with_indices.default):
        kernel = arg(1, None)
        env[node] = graph.call_function(
            F.max_pool2d, (mapped(a[0]), kernel, arg(2, None) or kernel, arg(3, 0), arg(4, 1), arg(5, False))
        )
    elif target is _aten.avg_pool2d.default:
        kernel = arg(1, None)
        pool_args = (kernel, arg(2, None) or kernel, arg(3, 0), arg(4, False), arg(5, True), arg(6, None))
        env[node] = graph.call_function(F.avg_pool2d, (mapped(a[0]), *pool_args))
    elif target in _RESHAPES:
        before, after = a[0].meta.get("val"), node.meta.get("val")
        if before is None or after is None or after.ndim != 2 or after.shape[0] != before.shape[0]:
            raise _refuse(node, source, "reshapes other than a flatten of all but the batch dimension")
        env[node] = graph.call_function(torch.flatten, (mapped(a[0]), 1))
    elif target in (_aten.add.Tensor, _aten.add_.Tensor):
        if node.kwargs.get("alpha", 1) != 1:
            raise _refuse(node, source, "adds with alpha != 1")
        env[node] = graph.call_function(operator.add, (mapped(a[0]), mapped(a[1])))
    elif target in (_aten.mul.Tensor, _aten.mul.Scalar):
        env[node] = graph.call_function(operator.mul, (mapped(a[0]), mapped(a[1])))
    elif target in _SAME_ARGS:
        env[node] = graph.call_function(_SAME_ARGS[target], mapped(a), dict(node.kwargs))
    elif target in _IDENTITY:
        env[node] = mapped(a[0])
    elif target is operator.getitem:
        if a[1] != 0:
            if node.users:
                raise _refuse(node, source, "uses a second output of an operation (e.g. max-pool indices)")
            return
        env[node] = mapped(a[0])
    else:
        raise _refuse(node, source, f"calls {target}, which cannot be converted to spiking neurons")


def _refuse(node: Any, source: str, what: str) -> UnsupportedModelError:
    name = node.name if isinstance(node, fx.Node) else repr(node)
    trace = node.meta.get("stack_trace", "") if isinstance(node, fx.Node) else ""
    where = f" ({trace.strip().splitlines()[-2].strip()})" if trace and len(trace.strip().splitlines()) > 1 else ""
    return UnsupportedModelError(f"node {name!r} of {source}{where} {what}")


# ----------------------------------------------------------------------------- ONNX


def from_onnx(path: str | Path) -> fx.GraphModule:
    """An ``nn.Module`` computing what the ONNX model at ``path`` computes, built like
    :func:`from_exported_program`: Conv / Gemm / MatMul(+Add) / BatchNormalization become
    ``nn`` layers named after their weights, the other supported ops torch functions, and
    the shape arithmetic exporters emit for a flatten is read as one. Refuses, naming the
    node, any op it cannot map."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as error:
        raise ImportError(f"reading {path} needs the onnx package: pip install 'spikeconv[onnx]'") from error
    path = Path(path)
    try:
        proto = onnx.load(str(path))
        proto = onnx.shape_inference.infer_shapes(proto)
    except Exception as error:  # onnx raises its own types for a damaged or foreign file
        raise ValueError(f"{path} cannot be read as an ONNX model ({type(error).__name__}: {error})") from error
    return _OnnxImport(proto, numpy_helper, str(path)).build()


class _OnnxImport:
    def __init__(self, proto: Any, numpy_helper: Any, source: str) -> None:
        self.graph_proto, self.source = proto.graph, source
        self.constants: dict[str, Tensor] = {
            init.name: torch.from_numpy(numpy_helper.to_array(init).copy()) for init in proto.graph.initializer
        }
        self.numpy_helper = numpy_helper
        self.ranks: dict[str, int] = {}
        for info in [*proto.graph.value_info, *proto.graph.input, *proto.graph.output]:
            if info.type.tensor_type.HasField("shape"):
                self.ranks[info.name] = len(info.type.tensor_type.shape.dim)
        self.graph = fx.Graph()
        self.layers: dict[str, nn.Module] = {}
        self.env: dict[str, fx.Node] = {}
        self.layer_of: dict[str, str] = {}  # output name -> the layer that produced it (for a following bias Add)
        self.uses: dict[str, int] = {}
        for node in proto.graph.node:
            for name in node.input:
                self.uses[name] = self.uses.get(name, 0) + 1

    def refuse(self, node: Any, what: str) -> UnsupportedModelError:
        return UnsupportedModelError(f"node {node.name or node.output[0]!r} ({node.op_type}) of {self.source} {what}")

    def attrs(self, node: Any) -> dict[str, Any]:
        import onnx

        return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}

    def build(self) -> fx.GraphModule:
        inputs = [i for i in self.graph_proto.input if i.name not in self.constants]
        if len(inputs) != 1:
            raise UnsupportedModelError(f"{self.source} takes {len(inputs)} inputs; spikeconv converts models of one")
        self.env[inputs[0].name] = self.graph.placeholder("x")
        for node in self.graph_proto.node:
            self.map(node)
        outputs = list(self.graph_proto.output)
        if len(outputs) != 1:
            raise UnsupportedModelError(f"{self.source} returns {len(outputs)} outputs: return only the class scores")
        self.graph.output(self.env[outputs[0].name])
        module = fx.GraphModule(self.layers, self.graph, class_name="OnnxModel")  # type: ignore[arg-type]
        dims = inputs[0].type.tensor_type.shape.dim
        if len(dims) > 1 and all(d.HasField("dim_value") for d in dims[1:]):
            module.meta["input_shape"] = tuple(int(d.dim_value) for d in dims[1:])
        return module

    def tensor_input(self, node: Any, k: int) -> fx.Node:
        name = node.input[k]
        if name not in self.env:
            raise self.refuse(node, f"reads {name!r} as a signal, but it is a constant or unknown")
        return self.env[name]

    def constant(self, node: Any, k: int) -> Tensor | None:
        if len(node.input) <= k or not node.input[k]:
            return None
        name = node.input[k]
        if name not in self.constants:
            raise self.refuse(node, f"takes {name!r} as a weight, but it is computed, not stored")
        return self.constants[name]

    def add_layer(self, node: Any, weight_name: str, layer: nn.Module, source: fx.Node) -> None:
        base = weight_name.rsplit(".", 1)[0] if weight_name.endswith(".weight") else (node.name or node.output[0])
        base = re.sub(r"\W", "_", base.strip("/").removesuffix("/Conv").removesuffix("/Gemm").replace("/", ".")).strip("_")
        base = base.replace(".", "_") or "layer"
        name, k = base, 1
        while name in self.layers:
            name, k = f"{base}_{k}", k + 1
        self.layers[name] = layer
        self.env[node.output[0]] = self.graph.call_module(name, (source,))
        self.layer_of[node.output[0]] = name

    def map(self, node: Any) -> None:
        op, a, out = node.op_type, self.attrs(node), node.output[0]
        call = self.graph.call_function
        if op == "Constant":
            self.constants[out] = torch.from_numpy(self.numpy_helper.to_array(a["value"]).copy())
            return
        if op == "Shape" or not any(i in self.env for i in node.input):
            return  # arithmetic on shapes and constants (an exporter's flatten target): Reshape reads the result
        if op == "Conv":
            weight = self.constant(node, 1)
            assert weight is not None
            if weight.ndim != 4 or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
                raise self.refuse(node, "is not a 2-D convolution with explicit padding")
            pads = list(a.get("pads", [0, 0, 0, 0]))
            if pads[:2] != pads[2:]:
                raise self.refuse(node, f"pads unequally ({pads}), which nn.Conv2d cannot")
            bias = self.constant(node, 2)
            groups = int(a.get("group", 1))
            conv = nn.Conv2d(
                weight.shape[1] * groups, weight.shape[0], (weight.shape[2], weight.shape[3]), stride=tuple(a.get("strides", [1, 1])),
                padding=tuple(pads[:2]), dilation=tuple(a.get("dilations", [1, 1])), groups=groups, bias=bias is not None,
                dtype=weight.dtype,
            )  # fmt: skip
            conv.load_state_dict({"weight": weight} | ({"bias": bias} if bias is not None else {}))
            self.add_layer(node, node.input[1], conv, self.tensor_input(node, 0))
        elif op in ("Gemm", "MatMul"):
            weight = self.constant(node, 1)
            assert weight is not None
            if op == "Gemm":
                if a.get("transA", 0):
                    raise self.refuse(node, "transposes its input (transA)")
                weight = weight * a.get("alpha", 1.0)
                weight = weight if a.get("transB", 0) else weight.T
                bias = self.constant(node, 2)
                bias = None if bias is None else bias * a.get("beta", 1.0)
            else:
                weight, bias = weight.T, None
            linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype)
            linear.load_state_dict({"weight": weight.contiguous()} | ({"bias": bias.expand(weight.shape[0]).clone()} if bias is not None else {}))
            self.add_layer(node, node.input[1], linear, self.tensor_input(node, 0))
        elif op == "Add" and any(i in self.constants for i in node.input):
            signal = next(i for i in node.input if i not in self.constants)
            bias = self.constants[next(i for i in node.input if i in self.constants)]
            layer = self.layers.get(self.layer_of.get(signal, ""))
            if not isinstance(layer, (nn.Linear, nn.Conv2d)) or self.uses.get(signal, 0) != 1:
                raise self.refuse(node, "adds a constant that is not the bias of the layer before it")
            shape = (-1,)
            current = layer.bias if layer.bias is not None else torch.zeros(layer.weight.shape[0], dtype=layer.weight.dtype)
            layer.bias = nn.Parameter(current.detach() + bias.reshape(shape).to(current.dtype).expand_as(current))
            self.env[out] = self.env[signal]
            self.layer_of[out] = self.layer_of[signal]
        elif op == "Add":
            self.env[out] = call(operator.add, (self.tensor_input(node, 0), self.tensor_input(node, 1)))
        elif op == "Mul":
            signal = [i for i in node.input if i in self.env]
            factor = [self.constants[i] for i in node.input if i in self.constants]
            if len(signal) != 1 or len(factor) != 1 or factor[0].numel() != 1:
                raise self.refuse(node, "multiplies by something other than one constant number")
            self.env[out] = call(operator.mul, (self.env[signal[0]], float(factor[0])))
        elif op == "BatchNormalization":
            scale, bias, mean, var = (self.constant(node, k) for k in range(1, 5))
            assert scale is not None and bias is not None and mean is not None and var is not None
            rank = self.ranks.get(node.input[0], 4)
            bn = (nn.BatchNorm2d if rank == 4 else nn.BatchNorm1d)(len(mean), eps=float(a.get("epsilon", 1e-5)), dtype=mean.dtype)
            bn.load_state_dict({"weight": scale, "bias": bias, "running_mean": mean, "running_var": var}, strict=False)
            self.add_layer(node, node.input[3], bn.eval(), self.tensor_input(node, 0))
        elif op == "Relu":
            self.env[out] = call(F.relu, (self.tensor_input(node, 0),))
        elif op in ("MaxPool", "AveragePool"):
            kernel = tuple(a["kernel_shape"])
            pads = list(a.get("pads", [0, 0, 0, 0]))
            if pads[:2] != pads[2:] or len(kernel) != 2:
                raise self.refuse(node, f"is not a 2-D pool with equal padding (pads {pads})")
            stride = tuple(a.get("strides", kernel))
            x = self.tensor_input(node, 0)
            ceil = bool(a.get("ceil_mode", 0))
            if op == "MaxPool":
                dilation = tuple(a.get("dilations", [1, 1]))
                self.env[out] = call(F.max_pool2d, (x, kernel, stride, tuple(pads[:2]), dilation, ceil))
            else:  # ONNX counts padding in the average only when asked (count_include_pad = 1)
                include = bool(a.get("count_include_pad", 0))
                self.env[out] = call(F.avg_pool2d, (x, kernel, stride, tuple(pads[:2]), ceil, include))
        elif op == "GlobalAveragePool":
            self.env[out] = call(F.adaptive_avg_pool2d, (self.tensor_input(node, 0), 1))
        elif op == "ReduceMean":
            axes = a.get("axes")
            if axes is None and len(node.input) > 1:
                axes = self.constant(node, 1).tolist()  # type: ignore[union-attr]
            self.env[out] = call(torch.mean, (self.tensor_input(node, 0), list(axes or [])), {"keepdim": bool(a.get("keepdims", 1))})
        elif op == "Flatten":
            if int(a.get("axis", 1)) != 1:
                raise self.refuse(node, f"flattens from axis {a.get('axis')}; only axis 1 (all but the batch) converts")
            self.env[out] = call(torch.flatten, (self.tensor_input(node, 0), 1))
        elif op == "Reshape":
            if self.ranks.get(out) != 2:
                raise self.refuse(node, "reshapes other than a flatten of all but the batch dimension")
            self.env[out] = call(torch.flatten, (self.tensor_input(node, 0), 1))
        elif op == "Concat":
            if int(a.get("axis", 0)) != 1:
                raise self.refuse(node, f"concatenates along axis {a.get('axis')}; only channels (axis 1) convert")
            self.env[out] = call(torch.cat, ([self.tensor_input(node, k) for k in range(len(node.input))], 1))
        elif op in ("Dropout", "Identity"):
            self.env[out] = self.tensor_input(node, 0)
        elif op in ("Softmax", "LogSoftmax"):
            function = F.softmax if op == "Softmax" else F.log_softmax
            self.env[out] = call(function, (self.tensor_input(node, 0), int(a.get("axis", -1))))
        else:
            raise self.refuse(node, "cannot be converted to spiking neurons")
