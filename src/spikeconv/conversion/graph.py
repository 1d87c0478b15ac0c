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
its own (:class:`ChannelAffine`). Dropout (every variant: 1d/2d/3d, alpha, feature-alpha;
modules and functions) and Identity are dropped; a softmax or log-softmax at the very end is
dropped (it does not change the class ranking; see the ``softmax`` readout).

Common equivalents are normalized: ``x.mean(dim=(2, 3))`` (global average pooling) becomes
``AdaptiveAvgPool2d(1)`` + :class:`Flatten` (no flatten with ``keepdim=True``), and
``x.clamp(min=0)`` / ``x.clamp_min(0)`` is a ReLU.

Everything that is not understood raises :class:`UnsupportedModelError` naming the node,
its target, its source location (or, inside torch's own containers such as ``nn.Sequential``,
its model path) and what is supported: nothing is left analog in silence.
"""

from __future__ import annotations

import contextlib
import copy
import io
import operator
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from ..sim.inputs import is_integer, is_number
from .activations import ActivationTracer, ClipActivation, ThresholdReLU

__all__ = [
    "SUPPORTED_MODULES",
    "ChannelAffine",
    "ConversionError",
    "MaxPoolSpec",
    "Scale",
    "Stage",
    "TracedNetwork",
    "UnsupportedModelError",
    "fold_batchnorm",
    "trace",
]

# Dropout in every form is the identity in eval mode: dropped.
_DROPOUT_MODULES: tuple[type[nn.Module], ...] = (
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
)  # fmt: skip
SUPPORTED_MODULES: tuple[type[nn.Module], ...] = (
    nn.Conv2d, nn.Linear, nn.ReLU, nn.AvgPool2d, nn.Flatten, *_DROPOUT_MODULES, nn.Identity,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.Softmax, nn.LogSoftmax,
)  # fmt: skip
_AFFINE = (nn.Conv2d, nn.Linear)
_SUPPORTED_TEXT = (
    ", ".join(t.__name__ for t in SUPPORTED_MODULES)
    + "; F.relu, torch.relu, x.clamp(min=0) / torch.clamp(x, min=0) / x.clamp_min(0) (a ReLU), F.max_pool2d, "
    "F.avg_pool2d, F.adaptive_avg_pool2d, x.mean(dim=(2, 3)) of a 4-D tensor (global average pooling), "
    "torch.flatten, torch.cat(dim=1), + / torch.add, * by a constant, "
    "Tensor.view/reshape/flatten (flattening all but the batch dimension), F.dropout and its 1d/2d/3d/alpha variants "
    "(with training=self.training), a softmax or log-softmax at the very end"
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
    addition in this synapse: they share one scale (see :mod:`spikeconv.conversion.rules`)."""

    name: str
    synapse: nn.Module  # called as synapse(*source_outputs)
    sources: tuple[int, ...]  # earlier stages it reads; -1 is the network input
    spiking_pool: bool = False  # an avg-pool stage with IF neurons and scale 1 (Yang App. B)
    is_output: bool = False
    pool: MaxPoolSpec | None = None  # a spiking max-pool gate (Rueckauer Sec. 3.6)
    shared: tuple[int, ...] = ()
    # a conversion-aware activation in place of the ReLU (spikeconv.conversion.activations): its clip
    # value is this stage's scale, and the ANN forward applies it
    activation: ClipActivation | None = None

    @property
    def clip(self) -> float | None:
        """The clip value of the stage's activation (its scale), ``None`` for a ReLU."""
        return None if self.activation is None else self.activation.clip_value()

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
        if self.is_output or self.spiking_pool:
            return z
        return torch.relu(z) if self.activation is None else self.activation(z)


FinalOp = Literal["softmax", "log_softmax"]


@dataclass(eq=False, kw_only=True)
class TracedNetwork:
    """The model cut into stages (a deep copy: the user's model is never changed)."""

    stages: list[Stage]
    input_shape: tuple[int, ...]
    source: str = field(default="")
    # the model's last operation, dropped because it keeps the class ranking (see the softmax readout)
    final: FinalOp | None = None

    @property
    def softmax(self) -> bool:
        """The model ended in a softmax (dropped)."""
        return self.final == "softmax"

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
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"trace() takes the trained ANN as a torch.nn.Module, got {type(model).__name__}: pass the model "
            "itself (for a checkpoint, build the model and load_state_dict first)"
        )
    if not (
        isinstance(input_shape, (tuple, list))
        and input_shape
        and all(is_integer(d) and d > 0 for d in input_shape)
    ):
        raise ValueError(f"input_shape must be one sample's shape, positive integers such as (1, 28, 28), got {input_shape!r}")
    if model.training:
        raise ConversionError("model is in training mode: call model.eval() before converting")
    module = copy.deepcopy(model)
    graph_module = _symbolic_trace(module)
    dtype = next((p.dtype for p in module.parameters()), torch.float32)
    example = torch.rand(2, *input_shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    printed = io.StringIO()
    try:
        # ShapeProp prints a failing node's traceback to stderr before raising: the error's cause keeps it
        with torch.no_grad(), contextlib.redirect_stderr(printed):
            ShapeProp(graph_module).propagate(example)
    except Exception as error:  # any failure of the forward pass on this shape
        raise ConversionError(_shape_error(model, graph_module, tuple(input_shape), error)) from error
    sys.stderr.write(printed.getvalue())  # e.g. warnings of the forward pass
    ops, output, final = _to_ops(graph_module, module)
    _fold_batchnorms(ops)
    ops, output = _resolve_aliases(ops, output)
    _move_maxpool_after_relu(ops)
    _move_maxpool_before_scale(ops)
    stages = _cut(ops, output, spiking_pool)
    for stage in stages:  # constants the conversion made (Scale factors, clips) in the model's precision
        stage.synapse.to(dtype)
        if stage.activation is not None:
            stage.activation.to(dtype)
    traced = TracedNetwork(stages=stages, input_shape=tuple(input_shape), source=type(model).__name__, final=final)
    _check_parameters(traced)
    _check_reproduces(model, traced, example)
    return traced


def _shape_error(model: nn.Module, gm: fx.GraphModule, input_shape: tuple[int, ...], error: Exception) -> str:
    """One line: the shape given, torch's own complaint and what to pass instead."""
    # fx wraps torch's error ("ShapeProp error for: node=...") or appends "While executing ..." and
    # the original traceback to it: the first line of the innermost cause is torch's own message
    cause: BaseException = error
    while cause.__cause__ is not None:
        cause = cause.__cause__
    lines = str(cause).strip().splitlines()
    reason = lines[0].rstrip(".") if lines else type(cause).__name__
    text = (
        f"{type(model).__name__} does not accept inputs of shape {input_shape} (one calibration image, "
        f"without the batch dimension): {reason}. Pass images of the shape the model was trained on"
    )
    path, layer = _first_weighted(gm)
    if isinstance(layer, nn.Conv2d):
        channels = layer.in_channels
        return text + (
            f": its first weighted layer {path!r} (Conv2d) expects {channels} input channel{'s' * (channels != 1)}, "
            f"i.e. (C, H, W) = ({channels}, H, W) with the H and W it was trained on."
        )
    if isinstance(layer, nn.Linear):
        features = layer.in_features
        plural = "s" * (features != 1)
        return text + f": its first weighted layer {path!r} (Linear) expects {features} input feature{plural}."
    return text + ", e.g. (C, H, W) = (1, 28, 28) for MNIST or (3, 32, 32) for CIFAR-10."


def _first_weighted(gm: fx.GraphModule) -> tuple[str, nn.Module | None]:
    """The model path and module of the first Conv2d/Linear the traced forward() calls."""
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(gm.get_submodule(str(node.target)), _AFFINE):
            return str(node.target), gm.get_submodule(str(node.target))
    return "", None


def _symbolic_trace(model: nn.Module) -> fx.GraphModule:
    tracer = ActivationTracer()  # conversion-aware activations stay one node each
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
    # named after the model, so that locations can say "inside the top-level Sequential"
    return fx.GraphModule(model, graph, class_name=type(model).__name__)


@dataclass(eq=False)
class _Op:
    """One node of the normalized graph."""

    name: str
    kind: str  # input, relu, maxpool, linear, bn, alias, softmax, log_softmax
    inputs: list[str]
    module: nn.Module | None = None
    pool: MaxPoolSpec | None = None
    shape: tuple[int, ...] = ()  # per-sample output shape
    label: str = ""  # what the user wrote (module path or function)
    activation: ClipActivation | None = None  # for kind "relu": a conversion-aware activation


def _location(node: fx.Node) -> str:
    """``file:line`` (and the code) of the user's line that created ``node``. A layer of an
    ``nn.Sequential`` is called by torch's own code (the user's line, if any, only calls the
    container): then its model path first."""
    trace_text = node.stack_trace or ""
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)\n\s*(.*)', trace_text)
    torch_dir = os.path.dirname(torch.__file__)
    # the tracer's own frames (torch.fx) are in every trace: the code that created the node is before them
    code = [f for f in frames if not os.path.abspath(f[0]).startswith(os.path.join(torch_dir, "fx"))]
    user = [f for f in code if not os.path.abspath(f[0]).startswith(torch_dir)]
    where = ""
    if user:
        file, line, func, text = user[-1]
        where = f"{file}:{line} in {func}: {text.strip()}"
        if code[-1] is user[-1]:
            return where
    path = _model_path(node)
    if path and where:
        return f"{path}, called from {where}"
    return path or where or "unknown location"


def _model_path(node: fx.Node) -> str:
    """``model path 'features.1' (inside nn.Sequential 'features')`` for a module call; for a
    function called in a module's forward(), that module's path. Empty when fx recorded none."""
    # fx records the modules being called around each node, outermost first: (path, type)
    stack = [tuple(entry) for entry in (node.meta.get("nn_module_stack") or {}).values()]
    types = {str(entry[0]): entry[1] for entry in stack if len(entry) == 2}
    if node.op == "call_module":
        path = str(node.target)
    elif stack:
        path = str(stack[-1][0])
        return f"model path {path!r} (in the forward() of {_type_text(types.get(path))})"
    else:
        return ""
    parent = path.rpartition(".")[0]
    if not parent:
        return f"model path {path!r} (inside the top-level {type(node.graph.owning_module).__name__})"
    return f"model path {path!r} (inside {_type_text(types.get(parent))} {parent!r})"


def _type_text(kind: Any) -> str:
    """``nn.Sequential`` for torch's modules, the class name for others."""
    if not isinstance(kind, type):
        return "module" if kind is None else str(kind)
    torch_module = kind.__module__.startswith("torch.nn.")
    return ("nn." if torch_module else "") + kind.__name__


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
_LOG_SOFTMAX = {F.log_softmax, torch.log_softmax}
_DROPOUT = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout}
_CLAMP = {torch.clamp, torch.clamp_min}
_CLAMP_METHODS = {"clamp", "clamp_", "clamp_min", "clamp_min_"}
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


def _to_ops(gm: fx.GraphModule, model: nn.Module) -> tuple[list[_Op], str, FinalOp | None]:
    modules = dict(gm.named_modules())
    ops: list[_Op] = []
    output = ""
    final_nodes: dict[str, FinalOp] = {}  # softmax and log-softmax nodes: only the last one may be dropped
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
        if _is_mean(node):  # global average pooling: a pool and a flatten, two ops
            ops.extend(_mean_ops(node, args, shape))
            continue
        if node.op == "call_module" and isinstance(modules[str(node.target)], ClipActivation):
            ops.extend(_activation_ops(node, modules[str(node.target)], args, shape))  # type: ignore[arg-type]
            continue
        op = _node_to_op(node, modules, args, shape, flattens)
        if op.kind in ("softmax", "log_softmax"):
            final_nodes[op.name] = "softmax" if op.kind == "softmax" else "log_softmax"
        ops.append(op)
    consumers = {name for op in ops for name in op.inputs}
    for name, kind in final_nodes.items():
        if name in consumers or name != output:
            node = next(n for n in gm.graph.nodes if n.name == name)
            what = "softmax" if kind == "softmax" else "log-softmax"
            raise _unsupported(node, f"is a {what} that is not the model's last operation")
    final = final_nodes.get(output)
    if final is not None:
        op = next(o for o in ops if o.name == output)
        op.kind = "alias"
    return ops, output, final


def _activation_ops(node: fx.Node, module: ClipActivation, args: list[str], shape: tuple[int, ...]) -> list[_Op]:
    """A conversion-aware activation is a ReLU boundary whose neurons have its clip value as
    scale; one that normalizes its output (RateNorm: ``/ theta``) adds that constant factor
    as a linear op, which the next synapse absorbs."""
    if len(args) != 1:
        raise _unsupported(node, f"takes {len(args)} tensor inputs where one is expected")
    path = str(node.target)
    activation = copy.deepcopy(module).eval()
    factor = module.output_scale()
    if factor == 1.0:
        return [_Op(node.name, "relu", args, shape=shape, label=path, activation=activation)]
    # the clip alone (the division follows as its own op); the name has a dot, which no fx node name has
    bound = ThresholdReLU(module.clip_value()).eval()
    clip = _Op(node.name + ".clip", "relu", args, shape=shape, label=path, activation=bound)
    return [clip, _Op(node.name, "linear", [clip.name], module=Scale(factor), shape=shape, label=path)]


def _is_mean(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target is torch.mean) or (
        node.op == "call_method" and node.target == "mean"
    )


def _mean_ops(node: fx.Node, args: list[str], shape: tuple[int, ...]) -> list[_Op]:
    """``x.mean(dim=(2, 3))`` of a ``[B, C, H, W]`` tensor is global average pooling:
    ``AdaptiveAvgPool2d(1)``, then a :class:`Flatten` to ``[B, C]`` unless ``keepdim=True``."""
    source = node.args[0]
    meta = source.meta.get("tensor_meta") if isinstance(source, fx.Node) else None
    ndim = len(meta.shape) if meta is not None and hasattr(meta, "shape") else 0
    dim = _arg(node, 1, "dim", None)
    dims = tuple(dim) if isinstance(dim, (tuple, list)) else (dim,)
    supported = (
        "only the mean over H and W of a 4-D [B, C, H, W] tensor (x.mean(dim=(2, 3)), global average pooling) "
        "is supported"
    )
    if ndim != 4:
        raise _unsupported(node, f"takes the mean of a {ndim}-D tensor over dim {dim}; {supported}")
    if len(args) != 1 or not all(isinstance(d, int) for d in dims) or sorted(d % 4 for d in dims) != [2, 3]:
        raise _unsupported(node, f"takes the mean over dim {dim}; {supported}")
    if node.kwargs.get("dtype") is not None:
        raise _unsupported(node, "takes a mean with a dtype; " + supported + " (without dtype)")
    pool = nn.AdaptiveAvgPool2d(1)
    if _arg(node, 2, "keepdim", False):
        return [_Op(node.name, "linear", args, module=pool, shape=shape, label=node.name)]
    # the pool's name has a dot, which no fx node name has: it cannot clash
    pooled = _Op(node.name + ".pool", "linear", args, module=pool, shape=(*shape, 1, 1), label=node.name)
    return [pooled, _Op(node.name, "linear", [pooled.name], module=Flatten(), shape=shape, label=node.name)]


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
        if isinstance(module, (*_DROPOUT_MODULES, nn.Identity)):
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
        if isinstance(module, nn.LogSoftmax):
            return _Op(name, "log_softmax", args, shape=shape, label=path)
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
        if target in _CLAMP:
            return _clamp_relu(node, args, shape)
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
        if target in _LOG_SOFTMAX:
            return _Op(name, "log_softmax", args, shape=shape, label=name)
        if target in _DROPOUT:
            # fx records the value of `training` at trace time: self.training is False in eval mode
            if _arg(node, 2, "training", True) and _arg(node, 1, "p", 0.5) != 0:
                raise _unsupported(
                    node,
                    f"applies {_target_name(node)} with training=True (its default), so the model is random even "
                    "in eval mode",
                    "Pass training=self.training.",
                )
            return _Op(name, "alias", args[:1], shape=shape, label=name)
    if node.op == "call_method":
        if target in ("relu", "relu_"):
            return _Op(name, "relu", args, shape=shape, label=name)
        if target in _CLAMP_METHODS:
            return _clamp_relu(node, args, shape)
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
        if target == "log_softmax":
            return _Op(name, "log_softmax", args, shape=shape, label=name)
    raise _unsupported(node, f"calls {_target_name(node)}, which cannot be converted to spiking neurons")


def _clamp_relu(node: fx.Node, args: list[str], shape: tuple[int, ...]) -> _Op:
    """``clamp(x, min=0)`` (or ``clamp_min(x, 0)``) with no upper bound is a ReLU."""
    low = _arg(node, 1, "min", None)
    high = None if _target_name(node).startswith("clamp_min") else _arg(node, 2, "max", None)
    zero = is_number(low) and low == 0
    if len(args) != 1 or not zero or high is not None:
        raise _unsupported(
            node,
            f"is a clipping activation (min={low}, max={high}) that is not a ReLU",
            "Only clamp(min=0) without max (a ReLU) can be converted; a ReLU6-like upper bound cannot.",
        )
    return _Op(node.name, "relu", args, shape=shape, label=node.name)


def _scale_op(node: fx.Node, args: list[str], shape: tuple[int, ...]) -> _Op:
    constants = [a for a in node.args if is_number(a)]
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


def _move_maxpool_before_scale(ops: list[_Op]) -> None:
    """``maxpool(s * relu(z)) == s * maxpool(relu(z))`` for a positive constant s: a max-pool
    after a normalizing activation (RateNorm: clip, then ``/ theta``) gates the clip's
    spikes, and the scale follows the gate."""
    users: dict[str, list[_Op]] = {}
    for op in ops:
        for name in op.inputs:
            users.setdefault(name, []).append(op)
    by_name = {op.name: op for op in ops}
    for op in list(ops):
        scale = by_name[op.inputs[0]] if op.kind == "maxpool" else None
        if scale is None or not isinstance(scale.module, Scale) or users.get(scale.name) != [op]:
            continue
        if scale.module.factor.numel() != 1 or float(scale.module.factor) <= 0 or by_name[scale.inputs[0]].kind != "relu":
            continue
        for user in users.get(op.name, []):
            user.inputs = [scale.name if n == op.name else n for n in user.inputs]
        op.inputs, scale.inputs = list(scale.inputs), [op.name]
        scale.shape = op.shape
        i, j = ops.index(scale), ops.index(op)
        ops[i], ops[j] = op, scale


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
        activation=end.activation if end.kind == "relu" else None,
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
    if traced.final == "softmax":
        got = torch.softmax(got, -1)
    elif traced.final == "log_softmax":
        got = torch.log_softmax(got, -1)
    if got.shape != expected.shape or not torch.allclose(got, expected, rtol=1e-4, atol=1e-5):
        raise ConversionError(
            f"the traced stages do not reproduce {type(model).__name__}'s output: forward() does something "
            "spikeconv's graph does not capture; please report the model"
        )


