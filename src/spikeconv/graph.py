"""Phase 1 of conversion: trace a model with torch.fx into a graph of spiking stages.

The model's fx graph is cut at every ReLU and every max-pool. A *stage* is

* a layer of IF neurons (one per ReLU, plus the output layer) whose *synapse* is the
  linear sub-graph feeding it: convolutions, linear layers, average pools, flattens,
  BatchNorms that could not be folded (as a per-channel affine map), additions and
  concatenations, reading the outputs of one or more earlier stages (its ``sources``);
* or a spiking max-pool gate (Rueckauer 2016 Sec. 3.6) over one earlier stage.

Stages are in topological order; ``sources`` index earlier stages, ``-1`` is the network
input. A chain network gives a chain of stages whose synapses are ``nn.Sequential``; a
stage with several sources (a residual addition, a concatenation) gets an
``fx.GraphModule`` synapse called with one tensor per source.

BatchNorm is folded into the Conv2d/Linear before it (:func:`fold_batchnorm`, Rueckauer
Sec. 3.3); a BatchNorm with no such layer before it becomes an affine per-channel scale of
its own (:class:`ChannelAffine`). Dropout and Identity are dropped; a softmax at the very
end is dropped (it does not change the class ranking; see the ``softmax`` readout).

Everything that is not understood raises :class:`UnsupportedModelError` naming the node,
its target, its source location and what is supported: nothing is left analog in silence.
"""

from __future__ import annotations

import copy
import operator
import os
import re
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp

__all__ = [
    "ConversionError",
    "UnsupportedModelError",
    "Stage",
    "TracedNetwork",
    "MaxPoolSpec",
    "ChannelAffine",
    "Scale",
    "fold_batchnorm",
    "trace",
    "SUPPORTED_MODULES",
]

SUPPORTED_MODULES: tuple[type[nn.Module], ...] = (
    nn.Conv2d, nn.Linear, nn.ReLU, nn.AvgPool2d, nn.Flatten, nn.Dropout, nn.Identity,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.Softmax,
)  # fmt: skip
_AFFINE = (nn.Conv2d, nn.Linear)
_SUPPORTED_TEXT = (
    ", ".join(t.__name__ for t in SUPPORTED_MODULES)
    + "; F.relu, torch.relu, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, torch.flatten, torch.cat(dim=1), "
    "+ / torch.add, * by a constant, Tensor.view/reshape/flatten (flattening all but the batch dimension), "
    "a softmax at the very end"
)


class ConversionError(ValueError):
    """The model or its statistics cannot be converted as asked."""


class UnsupportedModelError(ConversionError):
    """The model holds an operation spikeconv cannot turn into spiking neurons."""


# ----------------------------------------------------------------------------- linear ops


def fold_batchnorm(
    weight: Tensor,
    bias: Tensor | None,
    running_mean: Tensor,
    running_var: Tensor,
    eps: float,
    gamma: Tensor | None,
    beta: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """Fold ``BN(W x + b)`` into one affine layer (Rueckauer 2016 Sec. 3.3, eq. 9):

        W' = gamma / sigma * W,   b' = gamma / sigma * (b - mu) + beta,   sigma = sqrt(var + eps)

    ``weight`` is ``[out, ...]`` (Conv2d or Linear); returns the new weight and bias."""
    std = torch.sqrt(running_var + eps)
    g = gamma if gamma is not None else torch.ones_like(running_mean)
    shift = beta if beta is not None else torch.zeros_like(running_mean)
    b = bias if bias is not None else torch.zeros_like(running_mean)
    factor = g / std
    new_weight = weight * factor.reshape(-1, *([1] * (weight.ndim - 1)))
    new_bias = factor * (b - running_mean) + shift
    return new_weight, new_bias


class ChannelAffine(nn.Module):
    """``y = weight * x + bias`` per channel (dim 1): a BatchNorm that has no Conv2d/Linear
    before it to be folded into, in inference form."""

    def __init__(self, weight: Tensor, bias: Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_batchnorm(cls, bn: nn.modules.batchnorm._BatchNorm) -> ChannelAffine:
        if bn.running_mean is None or bn.running_var is None:
            raise UnsupportedModelError("a BatchNorm without running statistics (track_running_stats=False)")
        ones = torch.ones_like(bn.running_mean)
        weight, bias = fold_batchnorm(ones, None, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
        return cls(weight, bias)

    def forward(self, x: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return x * self.weight.view(shape) + self.bias.view(shape)


class Scale(nn.Module):
    """Multiply by a constant (a scalar, or per channel/feature: shape ``[C, 1, 1]`` or
    ``[F]``). In a converted network it is the weight of a connection without synapses
    of its own, e.g. an identity shortcut whose two ends have different scales."""

    def __init__(self, factor: Tensor | float) -> None:
        super().__init__()
        self.factor = nn.Parameter(torch.as_tensor(factor).detach().clone(), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.factor


class Add(nn.Module):
    """The sum of its inputs (a residual addition)."""

    def forward(self, *xs: Tensor) -> Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out


class Cat(nn.Module):
    """Concatenation along the channel dimension."""

    def forward(self, *xs: Tensor) -> Tensor:
        return torch.cat(xs, 1)


class Flatten(nn.Module):
    """Flatten all but the batch dimension (``x.view(x.size(0), -1)``, ``x.flatten(1)``)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1)


@dataclass(frozen=True, kw_only=True)
class MaxPoolSpec:
    """The window of a max-pooling layer (2d, dilation 1, floor mode)."""

    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]

    def ann(self, x: Tensor) -> Tensor:
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding)


# ----------------------------------------------------------------------------- stages


@dataclass(eq=False, kw_only=True)
class Stage:
    """One spiking layer: ``synapse`` (linear ops reading ``sources``) followed by IF
    neurons; or, when ``pool`` is set, a max-pool gate over one source (no neurons).

    ``name`` is the model path of the stage's one weighted module, or else of its ReLU /
    max-pool. ``shared`` lists stages (this one included) whose outputs meet at an
    addition in this synapse: they share one scale (see :mod:`spikeconv.rules`)."""

    name: str
    synapse: nn.Module  # called as synapse(*source_outputs)
    sources: tuple[int, ...]  # earlier stages it reads; -1 is the network input
    spiking_pool: bool = False  # an avg-pool stage with IF neurons and scale 1 (Yang App. B)
    is_output: bool = False
    pool: MaxPoolSpec | None = None  # a spiking max-pool gate (Rueckauer Sec. 3.6)
    shared: tuple[int, ...] = ()

    @property
    def affine(self) -> nn.Conv2d | nn.Linear | None:
        """The stage's weighted module when it has exactly one."""
        found = [m for m in self.synapse.modules() if isinstance(m, _AFFINE)]
        return found[0] if len(found) == 1 else None

    @property
    def inherits_scale(self) -> bool:
        """No neurons with a scale of their own: the stage keeps its source's scale."""
        return self.pool is not None or self.spiking_pool

    def ann_forward(self, inputs: list[Tensor]) -> Tensor:
        """The ANN activation of this stage from its sources' activations."""
        if self.pool is not None:
            return self.pool.ann(inputs[0])
        z = self.synapse(*inputs)
        return z if self.is_output or self.spiking_pool else torch.relu(z)


@dataclass(eq=False, kw_only=True)
class TracedNetwork:
    """The model cut into stages (a deep copy: the user's model is never changed)."""

    stages: list[Stage]
    input_shape: tuple[int, ...]
    source: str = field(default="")
    softmax: bool = False  # the model ended in a softmax (dropped; see the softmax readout)

    @torch.no_grad()
    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """ANN activations after each stage (ReLU applied except after the output stage)."""
        outputs: list[Tensor] = []
        for stage in self.stages:
            outputs.append(stage.ann_forward([x if s < 0 else outputs[s] for s in stage.sources]))
        return outputs

    @torch.no_grad()
    def output_shapes(self) -> list[tuple[int, ...]]:
        """Each stage's output shape for one sample."""
        x = torch.zeros(1, *self.input_shape, dtype=_dtype_of(self))
        return [tuple(a.shape[1:]) for a in self.forward_stages(x)]


def _dtype_of(traced: TracedNetwork) -> torch.dtype:
    for stage in traced.stages:
        for param in stage.synapse.parameters():
            return param.dtype
    return torch.float32


# ----------------------------------------------------------------------------- tracing


def trace(model: nn.Module, input_shape: tuple[int, ...], *, spiking_pool: bool = False) -> TracedNetwork:
    """Trace ``model`` (torch.fx) into stages. ``input_shape`` is one sample's shape, e.g.
    ``(1, 28, 28)``; it is used to check the traced network reproduces the model.

    ``spiking_pool=True`` gives each average pool that follows a ReLU its own IF neurons with
    scale 1, as Yang et al. do (Appendix B); by default pooling is a linear operation folded
    into the next stage's synapse (Rueckauer et al. 2016 Sec. 2.2)."""
    if model.training:
        raise ConversionError("model is in training mode: call model.eval() before converting")
    module = copy.deepcopy(model)
    graph_module = _symbolic_trace(module)
    dtype = next((p.dtype for p in module.parameters()), torch.float32)
    example = torch.rand(2, *input_shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    try:
        with torch.no_grad():
            ShapeProp(graph_module).propagate(example)
    except Exception as error:  # any failure of the forward pass on this shape
        raise ConversionError(
            f"{type(model).__name__} does not accept inputs of shape {tuple(input_shape)}: {error}"
        ) from error
    ops, output, softmax = _to_ops(graph_module, module)
    _fold_batchnorms(ops)
    ops, output = _resolve_aliases(ops, output)
    _move_maxpool_after_relu(ops)
    stages = _cut(ops, output, spiking_pool)
    traced = TracedNetwork(stages=stages, input_shape=tuple(input_shape), source=type(model).__name__, softmax=softmax)
    _check_parameters(traced)
    _check_reproduces(model, traced, example)
    return traced


def _symbolic_trace(model: nn.Module) -> fx.GraphModule:
    tracer = fx.Tracer()
    tracer.record_stack_traces = True
    try:
        graph = tracer.trace(model)
    except Exception as error:  # fx raises many types; all mean "not traceable"
        raise UnsupportedModelError(
            f"torch.fx could not trace {type(model).__name__}: {error}. Make forward() free of "
            "data-dependent Python control flow (if/for on tensor values, e.g. `if x.sum() > 0`), "
            "of calls to non-torch libraries on tensors and of variable-length loops; or wrap such code "
            "in a leaf module (torch.fx.wrap) and convert the traceable part of the model."
        ) from error
    return fx.GraphModule(model, graph)


@dataclass(eq=False)
class _Op:
    """One node of the normalized graph."""

    name: str
    kind: str  # input, relu, maxpool, linear, bn, alias, softmax
    inputs: list[str]
    module: nn.Module | None = None
    pool: MaxPoolSpec | None = None
    shape: tuple[int, ...] = ()  # per-sample output shape
    label: str = ""  # what the user wrote (module path or function)


def _location(node: fx.Node) -> str:
    """``file:line`` (and the code) of the user's line that created ``node``."""
    trace_text = node.stack_trace or ""
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)\n\s*(.*)', trace_text)
    torch_dir = os.path.dirname(torch.__file__)
    user = [f for f in frames if not os.path.abspath(f[0]).startswith(torch_dir)]
    if not user:
        return "unknown location"
    file, line, func, code = user[-1]
    return f"{file}:{line} in {func}: {code.strip()}"


def _target_name(node: fx.Node) -> str:
    target = node.target
    return getattr(target, "__name__", str(target))


def _unsupported(node: fx.Node, what: str, hint: str = "") -> UnsupportedModelError:
    target = node.target if node.op == "call_module" else _target_name(node)
    return UnsupportedModelError(
        f"node {node.name!r} {what} ({node.op} {target}, at {_location(node)}). "
        + (hint + " " if hint else "")
        + f"Supported: {_SUPPORTED_TEXT}."
    )


_RELU = {F.relu, torch.relu}
_ADD = {operator.add, operator.iadd, torch.add}
_MUL = {operator.mul, operator.imul, torch.mul}
_SOFTMAX = {F.softmax, torch.softmax}
_SHAPE_METHODS = {"size", "dim"}


def _is_shape(node: fx.Node) -> bool:
    """Shape bookkeeping (``x.size(0)``, ``x.shape[0]``), not a tensor operation."""
    if node.op == "call_method" and node.target in _SHAPE_METHODS:
        return True
    if node.op == "call_function" and node.target is getattr and node.args[1] == "shape":
        return True
    return (
        node.op == "call_function"
        and node.target is operator.getitem
        and isinstance(node.args[0], fx.Node)
        and _is_shape(node.args[0])
    )


def _tensor_args(node: fx.Node) -> list[fx.Node]:
    found: list[fx.Node] = []

    def visit(a: Any) -> None:
        if isinstance(a, fx.Node) and not _is_shape(a):
            found.append(a)
        elif isinstance(a, (list, tuple)):
            for item in a:
                visit(item)

    visit(list(node.args) + list(node.kwargs.values()))
    return found


def _arg(node: fx.Node, index: int, key: str, default: Any) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(key, default)


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    return (int(v[0]), int(v[1]))


def _to_ops(gm: fx.GraphModule, model: nn.Module) -> tuple[list[_Op], str, bool]:
    modules = dict(gm.named_modules())
    ops: list[_Op] = []
    output = ""
    softmax_nodes: set[str] = set()
    for node in gm.graph.nodes:
        meta = node.meta.get("tensor_meta")
        shape = tuple(meta.shape[1:]) if meta is not None and hasattr(meta, "shape") else ()
        if node.op == "placeholder":
            if ops:
                raise UnsupportedModelError(f"{type(model).__name__}.forward takes more than one input ({node.name!r})")
            ops.append(_Op(node.name, "input", [], shape=shape, label="input"))
            continue
        if node.op == "output":
            result = node.args[0]
            if not isinstance(result, fx.Node):
                raise UnsupportedModelError(
                    f"{type(model).__name__}.forward returns {type(result).__name__}, not one tensor: return only "
                    "the class scores"
                )
            output = result.name
            break
        if _is_shape(node):
            continue
        if node.op == "get_attr":
            raise _unsupported(
                node, "uses a parameter or buffer directly in forward()", "Put it in a module (e.g. nn.Linear)."
            )
        args = [a.name for a in _tensor_args(node)]
        # a view/reshape/flatten is a flatten when it keeps the batch (ShapeProp ran on 2 samples) and
        # leaves one dimension
        flattens = meta is not None and hasattr(meta, "shape") and meta.shape[0] == 2 and len(shape) == 1
        if node.op == "call_method" and node.target == "flatten":
            flattens = flattens and tuple(node.args[1:]) in ((1,), ()) and node.kwargs.get("start_dim", 1) == 1
            flattens = flattens and bool(node.args[1:] or node.kwargs)
        op = _node_to_op(node, modules, args, shape, flattens)
        if op.kind == "softmax":
            softmax_nodes.add(op.name)
        ops.append(op)
    consumers = {name for op in ops for name in op.inputs}
    for name in softmax_nodes:
        if name in consumers or name != output:
            node = next(n for n in gm.graph.nodes if n.name == name)
            raise _unsupported(node, "is a softmax that is not the model's last operation")
    softmax = output in softmax_nodes
    if softmax:
        op = next(o for o in ops if o.name == output)
        op.kind = "alias"
    return ops, output, softmax


def _node_to_op(
    node: fx.Node, modules: dict[str, nn.Module], args: list[str], shape: tuple[int, ...], flattens: bool
) -> _Op:
    name, target = node.name, node.target

    def linear(module: nn.Module, label: str = "") -> _Op:
        return _Op(name, "linear", args, module=module, shape=shape, label=label or name)

    def single() -> None:
        if len(args) != 1:
            raise _unsupported(node, f"takes {len(args)} tensor inputs where one is expected")

    if node.op == "call_module":
        module = modules[str(target)]
        path = str(target)
        if isinstance(module, (nn.Dropout, nn.Identity)):
            single()
            return _Op(name, "alias", args, shape=shape, label=path)
        if isinstance(module, nn.ReLU):
            return _Op(name, "relu", args, shape=shape, label=path)
        if isinstance(module, nn.MaxPool2d):
            if module.dilation not in (1, (1, 1)) or module.ceil_mode or module.return_indices:
                raise _unsupported(node, "uses max-pooling with dilation, ceil_mode or return_indices")
            spec = MaxPoolSpec(
                kernel_size=_pair(module.kernel_size),
                stride=_pair(module.stride if module.stride is not None else module.kernel_size),
                padding=_pair(module.padding),
            )
            return _Op(name, "maxpool", args, pool=spec, shape=shape, label=path)
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            return _Op(name, "bn", args, module=copy.deepcopy(module), shape=shape, label=path)
        if isinstance(module, nn.Softmax):
            return _Op(name, "softmax", args, shape=shape, label=path)
        if isinstance(module, nn.Flatten):
            if module.start_dim != 1 or module.end_dim != -1:
                raise _unsupported(node, "must flatten all but the batch dimension (nn.Flatten(start_dim=1))")
            return linear(Flatten(), path)
        if isinstance(module, (nn.Conv2d, nn.Linear, nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
            single()
            return linear(copy.deepcopy(module), path)
        raise UnsupportedModelError(
            f"layer {path!r} is a {type(module).__name__}, which cannot be converted to spiking neurons "
            f"(node {name!r} at {_location(node)}). Supported: {_SUPPORTED_TEXT}."
        )
    if node.op == "call_function":
        if target in _RELU:
            return _Op(name, "relu", args, shape=shape, label=name)
        if target is F.max_pool2d:
            if _arg(node, 4, "dilation", 1) not in (1, (1, 1)) or _arg(node, 5, "ceil_mode", False):
                raise _unsupported(node, "uses max-pooling with dilation or ceil_mode")
            if _arg(node, 6, "return_indices", False):
                raise _unsupported(node, "uses max-pooling with return_indices")
            kernel = _arg(node, 1, "kernel_size", None)
            stride = _arg(node, 2, "stride", None) or kernel
            spec = MaxPoolSpec(
                kernel_size=_pair(kernel), stride=_pair(stride), padding=_pair(_arg(node, 3, "padding", 0))
            )
            return _Op(name, "maxpool", args, pool=spec, shape=shape, label=name)
        if target is F.avg_pool2d:
            kernel = _arg(node, 1, "kernel_size", None)
            pool = nn.AvgPool2d(
                kernel,
                _arg(node, 2, "stride", None),
                _arg(node, 3, "padding", 0),
                _arg(node, 4, "ceil_mode", False),
                _arg(node, 5, "count_include_pad", True),
                _arg(node, 6, "divisor_override", None),
            )
            return linear(pool)
        if target is F.adaptive_avg_pool2d:
            return linear(nn.AdaptiveAvgPool2d(_arg(node, 1, "output_size", None)))
        if target is torch.flatten:
            if _arg(node, 1, "start_dim", 0) != 1 or _arg(node, 2, "end_dim", -1) != -1:
                raise _unsupported(node, "must keep the batch dimension when flattening (start_dim=1)")
            return linear(Flatten())
        if target in _ADD:
            if len(args) != 2 or len(node.args) != 2 or node.kwargs:
                raise _unsupported(node, "adds something other than two tensors (constants and alpha are not supported)")
            return linear(Add())
        if target is torch.cat:
            dim = _arg(node, 1, "dim", 0)
            if dim != 1:
                raise _unsupported(node, f"concatenates along dim {dim}; only dim=1 (channels) is supported")
            return linear(Cat())
        if target in _MUL:
            return _scale_op(node, args, shape)
        if target in _SOFTMAX:
            return _Op(name, "softmax", args, shape=shape, label=name)
        if target is F.dropout:
            return _Op(name, "alias", args[:1], shape=shape, label=name)
    if node.op == "call_method":
        if target in ("relu", "relu_"):
            return _Op(name, "relu", args, shape=shape, label=name)
        if target in ("view", "reshape", "flatten"):
            if not flattens:
                raise _unsupported(
                    node,
                    f"calls {target}{tuple(node.args[1:])}, which is only supported as a flatten of all but the batch dimension",
                    "Write x.view(x.size(0), -1) or x.flatten(1).",
                )
            return linear(Flatten())
        if target in ("add", "add_"):
            if len(args) != 2 or node.kwargs:
                raise _unsupported(node, "adds something other than two tensors (constants and alpha are not supported)")
            return linear(Add())
        if target in ("mul", "mul_"):
            return _scale_op(node, args, shape)
        if target == "softmax":
            return _Op(name, "softmax", args, shape=shape, label=name)
    raise _unsupported(node, f"calls {_target_name(node)}, which cannot be converted to spiking neurons")


def _scale_op(node: fx.Node, args: list[str], shape: tuple[int, ...]) -> _Op:
    constants = [a for a in node.args if isinstance(a, (int, float)) and not isinstance(a, bool)]
    if len(args) != 1 or len(constants) != 1:
        raise _unsupported(node, "multiplies by something other than a constant number (only that is linear)")
    return _Op(node.name, "linear", args, module=Scale(float(constants[0])), shape=shape, label=node.name)


def _fold_batchnorms(ops: list[_Op]) -> None:
    """Fold each BatchNorm into the Conv2d/Linear feeding only it; make the others affine."""
    by_name = {op.name: op for op in ops}
    users: dict[str, int] = {}
    for op in ops:
        for name in op.inputs:
            users[name] = users.get(name, 0) + 1
    for op in ops:
        if op.kind != "bn":
            continue
        bn = op.module
        assert isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d))
        if bn.running_mean is None or bn.running_var is None:
            raise UnsupportedModelError(
                f"BatchNorm {op.name!r} has no running statistics (track_running_stats=False): it cannot be "
                "frozen into an affine map"
            )
        before = by_name[op.inputs[0]]
        affine = before.module
        if before.kind == "linear" and isinstance(affine, _AFFINE) and users.get(before.name) == 1:
            weight, bias = fold_batchnorm(
                affine.weight.detach(),
                None if affine.bias is None else affine.bias.detach(),
                bn.running_mean,
                bn.running_var,
                bn.eps,
                None if bn.weight is None else bn.weight.detach(),
                None if bn.bias is None else bn.bias.detach(),
            )
            with torch.no_grad():
                affine.weight.copy_(weight)
                if affine.bias is None:
                    affine.bias = nn.Parameter(bias.to(affine.weight.dtype))
                else:
                    affine.bias.copy_(bias)
            op.kind, op.module = "alias", None
        else:
            op.kind, op.module = "linear", ChannelAffine.from_batchnorm(bn)


def _resolve_aliases(ops: list[_Op], output: str) -> tuple[list[_Op], str]:
    target: dict[str, str] = {}
    kept = []
    for op in ops:
        op.inputs = [target.get(name, name) for name in op.inputs]
        if op.kind == "alias":
            target[op.name] = op.inputs[0]
        else:
            kept.append(op)
    return kept, target.get(output, output)


def _move_maxpool_after_relu(ops: list[_Op]) -> None:
    """``relu(maxpool(z)) == maxpool(relu(z))``: rewrite conv -> max-pool -> ReLU (a common
    ordering) so the gate pools spikes of ReLU neurons."""
    users: dict[str, list[_Op]] = {}
    for op in ops:
        for name in op.inputs:
            users.setdefault(name, []).append(op)
    by_name = {op.name: op for op in ops}
    for index, op in enumerate(ops):
        if op.kind != "maxpool" or by_name[op.inputs[0]].kind in ("relu", "maxpool", "input"):
            continue
        after = users.get(op.name, [])
        if len(after) == 1 and after[0].kind == "relu":
            relu = after[0]
            for user in users.get(relu.name, []):
                user.inputs = [op.name if n == relu.name else n for n in user.inputs]
            relu.inputs, op.inputs = list(op.inputs), [relu.name]
            relu.shape, op.shape = by_name[relu.inputs[0]].shape, relu.shape
            position = ops.index(relu)
            ops[index], ops[position] = relu, op


def _cut(ops: list[_Op], output: str, spiking_pool: bool) -> list[Stage]:
    by_name = {op.name: op for op in ops}
    if by_name[output].kind == "input":
        raise UnsupportedModelError("the model returns its input unchanged: there is nothing to convert")
    boundaries: set[str] = {op.name for op in ops if op.kind in ("input", "relu", "maxpool")}
    if spiking_pool:
        for op in ops:
            if isinstance(op.module, nn.AvgPool2d) and by_name[op.inputs[0]].kind == "relu":
                boundaries.add(op.name)
    index_of: dict[str, int] = {op.name: -1 for op in ops if op.kind == "input"}
    stages: list[Stage] = []
    names: set[str] = set()
    ends = [op for op in ops if op.name in boundaries and op.kind != "input"]
    if output in boundaries:  # the model ends in a ReLU or a pool: an identity output layer
        ends.append(_Op(output + "_out", "output", [output], shape=by_name[output].shape, label=output))
    elif by_name[output].kind == "linear":
        ends.append(_Op(output, "output", [output], shape=by_name[output].shape, label=output))
    for end in ends:
        if end.kind == "maxpool":
            source = by_name[end.inputs[0]]
            if source.name not in boundaries:
                raise UnsupportedModelError(
                    f"max-pool {end.label!r} pools {source.label!r}, which is not the output of a ReLU: spiking "
                    "max-pooling gates spikes, so put the max-pool right after a ReLU (or a ReLU right after it)"
                )
            stage = Stage(
                name=_unique(end.label, names),
                synapse=nn.Sequential(),
                sources=(index_of[source.name],),
                pool=end.pool,
            )
        else:
            is_pool = end.kind == "linear"  # a spiking average pool (spiking_pool=True)
            value = end.name if is_pool else end.inputs[0]
            stage = _make_stage(end, value, by_name, boundaries, index_of, names, is_pool)
        stage.shared = tuple(len(stages) if s == -2 else s for s in stage.shared)
        index_of[end.name] = len(stages)
        stages.append(stage)
    stages[-1].is_output = True
    return stages


def _unique(name: str, names: set[str]) -> str:
    candidate, k = name, 1
    while candidate in names:
        k += 1
        candidate = f"{name}_{k}"
    names.add(candidate)
    return candidate


def _make_stage(
    end: _Op,
    value: str,
    by_name: dict[str, _Op],
    boundaries: set[str],
    index_of: dict[str, int],
    names: set[str],
    is_pool: bool,
) -> Stage:
    """The stage whose synapse computes ``value`` from the nearest boundaries upstream."""
    order = {name: i for i, name in enumerate(by_name)}
    if value in boundaries and not is_pool:  # e.g. relu(relu(x)): an identity synapse
        members: list[_Op] = []
        sources = [value]
    else:
        seen: set[str] = set()
        stack = [value]
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            for parent in by_name[name].inputs:
                if parent not in boundaries:
                    stack.append(parent)
        members = sorted((by_name[n] for n in seen), key=lambda op: order[op.name])
        sources = sorted({p for op in members for p in op.inputs if p in boundaries}, key=order.__getitem__)
    source_index = tuple(index_of[s] for s in sources)
    affines = [op for op in members if isinstance(op.module, _AFFINE)]
    label = affines[0].label if len(affines) == 1 else (end.label if end.kind != "output" else value)
    chain = len(sources) <= 1 and all(
        len(op.inputs) == 1 and op.inputs[0] == (sources[0] if i == 0 else members[i - 1].name)
        for i, op in enumerate(members)
    )
    synapse: nn.Module
    if chain:
        synapse = nn.Sequential(*(op.module for op in members if op.module is not None))
    else:
        synapse = _graph_module(members, sources, value)
    shared = _shared_sources(members, sources, source_index)
    return Stage(
        name=_unique(label, names),
        synapse=synapse,
        sources=source_index,
        spiking_pool=is_pool,
        shared=shared,
    )


def _graph_module(members: list[_Op], sources: list[str], value: str) -> fx.GraphModule:
    root = nn.Module()
    graph = fx.Graph()
    env: dict[str, fx.Node] = {}
    for k, name in enumerate(sources):
        env[name] = graph.placeholder(f"source_{k}")
    for i, op in enumerate(members):
        assert op.module is not None
        attr = f"op{i}_" + re.sub(r"\W", "_", op.label)
        root.add_module(attr, op.module)
        node = graph.call_module(attr, tuple(env[n] for n in op.inputs))
        node.meta["shape"] = op.shape
        env[op.name] = node
    graph.output(env[value])
    return fx.GraphModule(root, graph)


def _shared_sources(members: list[_Op], sources: list[str], source_index: tuple[int, ...]) -> tuple[int, ...]:
    """Source stages that meet this stage's own output at an addition through scale-free
    paths (identity shortcuts, pools, flattens): they and this stage share one scale.
    ``-2`` stands for this stage; the network input (scale 1) never shares."""
    origin: dict[str, set[int] | None] = {name: {idx} for name, idx in zip(sources, source_index, strict=True)}
    meeting: set[int] = set()
    for op in members:
        parents = [origin.get(n) for n in op.inputs]
        if isinstance(op.module, Add):
            found: set[int] = set()
            for p in parents:
                found |= p if p is not None else {-2}
            if len(found) > 1:
                meeting |= found
            origin[op.name] = None if None in parents else set().union(*[p for p in parents if p is not None])
        elif isinstance(op.module, (nn.AvgPool2d, nn.AdaptiveAvgPool2d, Flatten, Cat)):
            origin[op.name] = None if None in parents else set().union(*[p for p in parents if p is not None])
        else:
            origin[op.name] = None
    meeting.discard(-1)
    return tuple(sorted(meeting))


# ----------------------------------------------------------------------------- checks


def _check_parameters(traced: TracedNetwork) -> None:
    for stage in traced.stages:
        for pname, param in stage.synapse.named_parameters():
            if not torch.isfinite(param).all():
                raise ConversionError(
                    f"layer {stage.name!r} has NaN or infinite values in its {pname.split('.')[-1]}: "
                    "retrain or repair the weights before converting"
                )


@torch.no_grad()
def _check_reproduces(model: nn.Module, traced: TracedNetwork, x: Tensor) -> None:
    expected = model(x)
    got = traced.forward_stages(x)[-1]
    if traced.softmax:
        got = torch.softmax(got, -1)
    if got.shape != expected.shape or not torch.allclose(got, expected, rtol=1e-4, atol=1e-5):
        raise ConversionError(
            f"the traced stages do not reproduce {type(model).__name__}'s output: forward() does something "
            "spikeconv's graph does not capture; please report the model"
        )


