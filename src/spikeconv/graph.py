"""Phase 1 of conversion: trace a model with torch.fx and cut it into spiking stages.

A *stage* is the linear part between two ReLUs (an optional chain of average pools and
flattens, then one Conv2d or Linear) followed by the IF neurons that replace the ReLU. The
last stage has no ReLU: its neurons feed the spike-count readout. Dropout is dropped.

Everything that is not understood raises :class:`UnsupportedModelError` naming the node,
its type or target, and what is supported: nothing is left analog in silence.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

__all__ = ["ConversionError", "UnsupportedModelError", "Stage", "TracedNetwork", "trace", "SUPPORTED_MODULES"]

SUPPORTED_MODULES: tuple[type[nn.Module], ...] = (
    nn.Conv2d, nn.Linear, nn.ReLU, nn.AvgPool2d, nn.Flatten, nn.Dropout, nn.Identity,
)  # fmt: skip
_AFFINE = (nn.Conv2d, nn.Linear)


class ConversionError(ValueError):
    """The model or its statistics cannot be converted as asked."""


class UnsupportedModelError(ConversionError):
    """The model holds an operation spikeconv cannot turn into spiking neurons."""


@dataclass(eq=False, kw_only=True)
class Stage:
    """One spiking layer: ``synapse`` (linear ops ending in one Conv2d/Linear, or an average
    pool alone when pooling gets its own neurons) and the neurons after it.

    ``name`` is the model path of the stage's weighted module (or pool)."""

    name: str
    synapse: nn.Sequential
    spiking_pool: bool = False  # an avg-pool stage with IF neurons and scale 1 (Yang App. B)
    is_output: bool = False

    @property
    def affine(self) -> nn.Conv2d | nn.Linear | None:
        found = [m for m in self.synapse if isinstance(m, _AFFINE)]
        return found[0] if found else None


@dataclass(eq=False, kw_only=True)
class TracedNetwork:
    """The model cut into stages (a deep copy: the user's model is never changed)."""

    stages: list[Stage]
    input_shape: tuple[int, ...]
    source: str = field(default="")

    @torch.no_grad()
    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """ANN activations after each stage (ReLU applied except after the last)."""
        outputs = []
        for stage in self.stages:
            x = stage.synapse(x)
            if not stage.is_output and not stage.spiking_pool:
                x = torch.relu(x)
            outputs.append(x)
        return outputs


_RELU_FUNCTIONS = {F.relu, torch.relu}
_FLATTEN_FUNCTIONS = {torch.flatten}


def trace(model: nn.Module, input_shape: tuple[int, ...], *, spiking_pool: bool = False) -> TracedNetwork:
    """Trace ``model`` (torch.fx) into stages. ``input_shape`` is one sample's shape, e.g.
    ``(1, 28, 28)``; it is used to check the traced network reproduces the model.

    ``spiking_pool=True`` gives each average pool that follows a ReLU its own IF neurons with
    scale 1, as Yang et al. do (Appendix B); by default pooling is a linear operation folded
    into the next stage's synapse (Rueckauer et al. 2016 Sec. 2.2)."""
    if model.training:
        raise ConversionError("model is in training mode: call model.eval() before converting")
    ops = _linear_chain(model)
    stages = _group(ops, spiking_pool)
    traced = TracedNetwork(stages=stages, input_shape=tuple(input_shape), source=type(model).__name__)
    _check_parameters(traced)
    _check_reproduces(model, traced)
    return traced


def _linear_chain(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's operations in order, as (path, module) pairs with functional forms
    replaced by their module equivalents."""
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception as error:  # fx raises many types; all mean "not traceable"
        raise UnsupportedModelError(
            f"torch.fx could not trace {type(model).__name__}: {error}. Make forward() free of "
            "data-dependent Python control flow (if/for on tensor values), or convert the traceable "
            "part of the model."
        ) from error
    modules = dict(model.named_modules())
    ops: list[tuple[str, nn.Module]] = []
    previous: fx.Node | None = None
    for node in graph.nodes:
        if node.op == "placeholder":
            if previous is not None:
                raise UnsupportedModelError(f"{type(model).__name__}.forward takes more than one input")
            previous = node
            continue
        if node.op == "output":
            break
        if _is_size_call(node):  # x.size(0) feeding a view/reshape: shape bookkeeping only
            continue
        tensor_args = [a for a in node.args if isinstance(a, fx.Node) and not _is_size_call(a)]
        users = [u for u in previous.users if not _is_size_call(u)]  # type: ignore[union-attr]
        if node.op == "get_attr" or tensor_args != [previous] or len(users) != 1:
            raise UnsupportedModelError(
                f"node {node.name!r} ({node.op} {_target_name(node)}) is not part of a single chain of "
                "layers; branches, skip connections and parameters used in forward() are not supported yet"
            )
        ops.append(_node_to_module(node, modules))
        previous = node
    return [(name, m) for name, m in ops if not isinstance(m, (nn.Dropout, nn.Identity))]


def _is_size_call(node: fx.Node) -> bool:
    return node.op == "call_method" and node.target == "size"


def _node_to_module(node: fx.Node, modules: dict[str, nn.Module]) -> tuple[str, nn.Module]:
    supported = ", ".join(t.__name__ for t in SUPPORTED_MODULES) + ", F.relu, torch.flatten, Tensor.view/reshape"
    if node.op == "call_module":
        module = modules[str(node.target)]
        if not isinstance(module, SUPPORTED_MODULES):
            raise UnsupportedModelError(
                f"layer {node.target!r} is a {type(module).__name__}, which cannot be converted to "
                f"spiking neurons. Supported: {supported}."
            )
        return str(node.target), copy.deepcopy(module)
    if node.op == "call_function" and node.target in _RELU_FUNCTIONS:
        return node.name, nn.ReLU()
    if node.op == "call_function" and node.target in _FLATTEN_FUNCTIONS:
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        if start != 1:
            raise UnsupportedModelError(f"node {node.name!r}: flatten must keep the batch dimension (start_dim=1)")
        return node.name, nn.Flatten()
    if node.op == "call_method" and node.target in ("relu", "relu_"):
        return node.name, nn.ReLU()
    if node.op == "call_method" and node.target in ("view", "reshape", "flatten"):
        return node.name, _Reshape(node)
    raise UnsupportedModelError(
        f"node {node.name!r} calls {_target_name(node)}, which cannot be converted to spiking neurons. "
        f"Supported: {supported}."
    )


def _target_name(node: fx.Node) -> str:
    target = node.target
    return getattr(target, "__name__", str(target))


class _Reshape(nn.Module):
    """A ``view``/``reshape``/``flatten`` call that flattens all but the batch dimension."""

    def __init__(self, node: fx.Node) -> None:
        super().__init__()
        args = tuple(node.args[1:])
        flattens = args == (1,) if node.target == "flatten" else (len(args) == 2 and args[1] == -1)
        if not flattens:
            raise UnsupportedModelError(
                f"node {node.name!r}: {node.target}{args} is only supported as a flatten of all but the "
                "batch dimension, e.g. x.view(x.size(0), -1) or x.flatten(1)"
            )

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1)


def _group(ops: list[tuple[str, nn.Module]], spiking_pool: bool) -> list[Stage]:
    stages: list[Stage] = []
    pending: list[tuple[str, nn.Module]] = []
    after_relu = False
    for name, module in ops:
        if isinstance(module, nn.ReLU):
            affine = [n for n, m in pending if isinstance(m, _AFFINE)]
            if len(affine) != 1:
                what = "no Conv2d/Linear" if not affine else f"{len(affine)} Conv2d/Linear layers ({', '.join(affine)})"
                raise UnsupportedModelError(
                    f"ReLU {name!r} follows {what} since the previous ReLU; each ReLU must follow exactly one "
                    "weighted layer"
                )
            stages.append(Stage(name=affine[0], synapse=nn.Sequential(*(m for _, m in pending))))
            pending = []
            after_relu = True
            continue
        if spiking_pool and after_relu and isinstance(module, nn.AvgPool2d) and not pending:
            stages.append(Stage(name=name, synapse=nn.Sequential(module), spiking_pool=True))
            continue
        after_relu = False
        pending.append((name, module))
    affine = [n for n, m in pending if isinstance(m, _AFFINE)]
    if len(affine) != 1:
        raise UnsupportedModelError(
            "the model must end in exactly one Conv2d/Linear layer after its last ReLU (the output layer); "
            f"found {len(affine)}"
        )
    stages.append(Stage(name=affine[0], synapse=nn.Sequential(*(m for _, m in pending)), is_output=True))
    return stages


def _check_parameters(traced: TracedNetwork) -> None:
    for stage in traced.stages:
        for pname, param in stage.synapse.named_parameters():
            if not torch.isfinite(param).all():
                raise ConversionError(
                    f"layer {stage.name!r} has NaN or infinite values in its {pname.split('.')[-1]}: "
                    "retrain or repair the weights before converting"
                )


@torch.no_grad()
def _check_reproduces(model: nn.Module, traced: TracedNetwork) -> None:
    x = torch.rand(2, *traced.input_shape, generator=torch.Generator().manual_seed(0))
    dtype = next((p.dtype for p in model.parameters()), torch.float32)
    x = x.to(dtype)
    try:
        expected = model(x)
    except RuntimeError as error:
        raise ConversionError(
            f"{type(model).__name__} does not accept inputs of shape {tuple(traced.input_shape)}: {error}"
        ) from error
    got = traced.forward_stages(x)[-1]
    if got.shape != expected.shape or not torch.allclose(got, expected, rtol=1e-4, atol=1e-5):
        raise ConversionError(
            f"the traced stages do not reproduce {type(model).__name__}'s output: forward() does something "
            "besides calling its layers in sequence"
        )
