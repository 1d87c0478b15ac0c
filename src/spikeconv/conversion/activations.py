"""Conversion-aware activations: trained in place of ReLU, they anticipate the IF neuron, so
the converted network needs a few steps instead of hundreds.

Each is a small module whose output is bounded by a clip value theta; conversion turns it
into IF neurons with threshold theta (the activation value that maps to one spike per
step), so no activation statistics are needed for its layer:

* :class:`ThresholdReLU` — ``clip(x, 0, theta)``, theta fixed or trainable; optionally
  trained with the shift ``theta / (2T)`` (Deng & Gu 2021, ICLR).
* :class:`QCFS` — quantization-clip-floor-shift (Bu et al. 2022, ICLR):
  ``lambda * clamp(floor(x L / lambda + 1/2) / L, 0, 1)``, lambda trainable, L levels; its
  IF neurons start at half the threshold, where T = L steps reproduce it exactly.
* :class:`RateNorm` — the Rate Norm Layer (Ding et al. 2021, IJCAI, eq. 6):
  ``theta = p * running_max``, output ``clip(x, 0, theta) / theta``, ``p = sigmoid(p')``;
  and :func:`rate_inference_loss`, Omega = ||r||_1 / ||r||_2^2 (Ding eq. 8).

:func:`replace_relus` swaps every ReLU of a model (modules and functional calls) for one of
them.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

__all__ = [
    "ACTIVATIONS",
    "QCFS",
    "ActivationTracer",
    "ClipActivation",
    "RateNorm",
    "ThresholdReLU",
    "make_activation",
    "rate_inference_loss",
    "rate_norm_outputs",
    "replace_relus",
]


class ClipActivation(nn.Module):
    """An activation bounded by ``clip_value()``; conversion gives its layer IF neurons of
    that threshold, starting at ``initial_fraction`` of it, and multiplies its output by
    ``output_scale()`` in the next synapse (1 unless the activation normalizes)."""

    initial_fraction: float = 0.0

    def clip_value(self) -> float:
        raise NotImplementedError

    def output_scale(self) -> float:
        return 1.0


def _positive(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


class ThresholdReLU(ClipActivation):
    """``y = clip(x, 0, theta)`` (threshold ReLU, the course report's Sec. 3.1.1 after Deng
    & Gu 2021). ``trainable=True`` makes theta a parameter. ``shift_steps=T`` trains on
    ``clip(x - theta/(2T), 0, theta)``: an IF neuron with reset by subtraction and no
    initial charge fires ``floor(T x / theta)`` times in T steps, half a step below
    ``T x / theta`` on average, and the shifted activation teaches the network that offset
    (in eval mode the shift is off, as in the converted network). Without the shift the
    converted neurons start at theta/2 instead (``initial_fraction``), which removes the same
    offset: they fire ``floor(T x / theta + 1/2)`` times, as a QCFS neuron does."""

    theta: Tensor

    def __init__(self, theta: float = 1.0, *, trainable: bool = False, shift_steps: int | None = None) -> None:
        super().__init__()
        value = torch.tensor(_positive("theta", theta))
        if trainable:
            self.theta = nn.Parameter(value)
        else:
            self.register_buffer("theta", value)
        if shift_steps is not None and (not isinstance(shift_steps, int) or isinstance(shift_steps, bool) or shift_steps <= 0):
            raise ValueError(f"shift_steps must be a positive number of time steps or None, got {shift_steps!r}")
        self.shift_steps = shift_steps
        # the shift already trains for the floor of a neuron starting empty
        self.initial_fraction = 0.5 if shift_steps is None else 0.0

    def forward(self, x: Tensor) -> Tensor:
        theta = self.theta.abs()
        if self.training and self.shift_steps is not None:
            x = x - theta / (2 * self.shift_steps)
        return torch.minimum(F.relu(x), theta)

    def clip_value(self) -> float:
        return float(self.theta.detach().abs())

    def extra_repr(self) -> str:
        shift = f", shift_steps={self.shift_steps}" if self.shift_steps is not None else ""
        return f"theta={self.clip_value():.4g}{shift}"


class _FloorSTE(torch.autograd.Function):
    """``floor`` forward, identity backward (straight-through estimator)."""

    @staticmethod
    def forward(ctx: object, x: Tensor) -> Tensor:  # type: ignore[override]
        return torch.floor(x)

    @staticmethod
    def backward(ctx: object, grad: Tensor) -> Tensor:  # type: ignore[override]
        return grad


class QCFS(ClipActivation):
    """Quantization-clip-floor-shift activation (Bu et al. 2022, eq. 11):
    ``y = lambda * clamp(floor(x L / lambda + 1/2) / L, 0, 1)`` with a trainable threshold
    lambda and L quantization levels; the floor passes gradients straight through.

    An IF neuron with threshold lambda, reset by subtraction and initial potential
    lambda / 2 fires ``clamp(floor(T x / lambda + 1/2), 0, T)`` times in T steps under a
    constant input x: after T = L steps exactly ``y L / lambda`` spikes (tested), and its
    expected error is zero at any T (Bu et al. Theorem 2)."""

    initial_fraction = 0.5
    threshold: Tensor

    def __init__(self, levels: int = 8, threshold: float = 8.0, *, trainable: bool = True) -> None:
        super().__init__()
        if not isinstance(levels, int) or isinstance(levels, bool) or levels <= 0:
            raise ValueError(f"levels (L, quantization steps) must be a positive integer, got {levels!r}")
        self.levels = levels
        value = torch.tensor(_positive("threshold", threshold))
        if trainable:
            self.threshold = nn.Parameter(value)
        else:
            self.register_buffer("threshold", value)

    def forward(self, x: Tensor) -> Tensor:
        lam = self.threshold.abs()
        steps = _FloorSTE.apply(x * self.levels / lam + 0.5)
        return lam * torch.clamp(steps / self.levels, 0.0, 1.0)

    def clip_value(self) -> float:
        return float(self.threshold.detach().abs())

    def extra_repr(self) -> str:
        return f"levels={self.levels}, threshold={self.clip_value():.4g}"


class RateNorm(ClipActivation):
    """Rate Norm Layer (Ding et al. 2021, eq. 6 and Algorithm 1): ``theta = p * max``,
    ``y = clip(x, 0, theta) / theta``, the simulated firing rate in [0, 1]. In training
    ``max`` is the batch's maximum input (the gradient flows through it), and a running
    maximum is kept (``r_max <- (1 - m) r_max + m max(x)`` per training batch, momentum
    m = 0.1, starting at 1); in inference and conversion ``theta = p * r_max``.
    ``p = sigmoid(p')`` is trainable (``p = 1`` when ``p_init=1``, Ding's stage 1).
    Conversion: IF neurons of threshold theta; the division by theta moves into the next
    layer's weights."""

    p_logit: Tensor
    running_max: Tensor

    def __init__(self, p_init: float = 1.0, *, momentum: float = 0.1, trainable_p: bool = True) -> None:
        super().__init__()
        if not isinstance(p_init, (int, float)) or not 0 < p_init <= 1:
            raise ValueError(f"p_init must be in (0, 1], got {p_init!r}")
        if not isinstance(momentum, (int, float)) or not 0 < momentum <= 1:
            raise ValueError(f"momentum must be in (0, 1], got {momentum!r}")
        self.momentum = float(momentum)
        # p = 1 is sigmoid(+inf): a large logit instead, so that p can still be trained
        logit = math.log(p_init / (1 - p_init)) if p_init < 1 else 20.0
        value = torch.tensor(logit)
        if trainable_p:
            self.p_logit = nn.Parameter(value)
        else:
            self.register_buffer("p_logit", value)
        self.register_buffer("running_max", torch.tensor(1.0))

    @property
    def p(self) -> Tensor:
        return torch.sigmoid(self.p_logit)

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            # as BatchNorm does with its statistics (Ding Sec. 2.2: "similar to BN in mini-batch
            # training"): the batch's own maximum, with its gradient, in training; the running
            # maximum in inference and conversion. (Through the running maximum alone the
            # gradient stops and the maxima grow with the weights: Ding's CNN on 6,000 MNIST
            # images reached 52 % after 2 epochs that way, 83 % this way, ReLU 92 %.)
            batch_max = x.max().clamp_min(1e-12)
            with torch.no_grad():
                self.running_max.mul_(1 - self.momentum).add_(self.momentum * batch_max.detach())
            theta = self.p * batch_max
        else:
            theta = self.p * self.running_max.clamp_min(1e-12)
        return torch.minimum(F.relu(x), theta) / theta

    def clip_value(self) -> float:
        return float((self.p * self.running_max.clamp_min(1e-12)).detach())

    def output_scale(self) -> float:
        return 1.0 / self.clip_value()

    def extra_repr(self) -> str:
        return f"p={float(self.p.detach()):.4g}, running_max={float(self.running_max):.4g}, momentum={self.momentum}"


def rate_inference_loss(rates: Tensor, eps: float = 1e-12) -> Tensor:
    """Ding et al.'s Rate Inference Loss of one layer, ``Omega = ||r||_1 / ||r||_2^2``
    (eq. 8), for each sample of ``rates`` ``[B, ...]`` (non-negative simulated firing
    rates): ``[B]``. With constant input the layer's fit curve is bounded by
    ``K(t) < 2 Omega / t`` (Theorem 2), so a smaller Omega converges sooner."""
    flat = rates.flatten(1)
    return flat.abs().sum(1) / flat.pow(2).sum(1).clamp_min(eps)


ACTIVATIONS = ("relu", "threshold", "qcfs", "ratenorm")


def make_activation(
    kind: str,
    *,
    levels: int = 8,
    theta: float | None = None,
    trainable_theta: bool = False,
    shift_steps: int | None = None,
) -> Callable[[], nn.Module] | None:
    """A factory of the activation ``kind`` (``None`` for ``relu``), for :func:`replace_relus`:
    ``threshold`` (theta 1 by default, fixed unless ``trainable_theta``; ``shift_steps``),
    ``qcfs`` (``levels``, trainable threshold, 8 by default as in Bu et al.'s code),
    ``ratenorm`` (p trainable from 1)."""
    if kind not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {kind!r}")
    if kind == "relu":
        if theta is not None or shift_steps is not None:
            raise ValueError("theta and shift_steps are options of the threshold and qcfs activations, not of relu")
        return None
    if kind == "threshold":
        value = 1.0 if theta is None else theta
        return lambda: ThresholdReLU(value, trainable=trainable_theta, shift_steps=shift_steps)
    if shift_steps is not None:
        raise ValueError(f"shift_steps is an option of the threshold activation, not of {kind}")
    if kind == "qcfs":
        value = 8.0 if theta is None else theta
        return lambda: QCFS(levels, value)
    if theta is not None:
        raise ValueError("ratenorm learns its threshold (p x running max): it takes no theta")
    return RateNorm


@contextlib.contextmanager
def rate_norm_outputs(model: nn.Module) -> Iterator[list[Tensor]]:
    """Within the block, the outputs of ``model``'s Rate Norm Layers (its simulated firing
    rates, Ding eq. 6) in the order they run, for :func:`rate_inference_loss`."""
    outputs: list[Tensor] = []
    hooks = [
        m.register_forward_hook(lambda _module, _inputs, out: outputs.append(out))
        for m in model.modules()
        if isinstance(m, RateNorm)
    ]
    try:
        yield outputs
    finally:
        for hook in hooks:
            hook.remove()


_FUNCTIONAL_RELUS = {F.relu, torch.relu}


class ActivationTracer(fx.Tracer):
    """torch.fx's tracer with the activations above as leaves (one call each in the graph,
    not the operations inside them)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, ClipActivation) or super().is_leaf_module(m, module_qualified_name)


def replace_relus(model: nn.Module, make: Callable[[], nn.Module]) -> nn.Module:
    """A copy of ``model`` with every ReLU replaced by a fresh ``make()``: ``nn.ReLU``
    modules in place (the model keeps its class and parameter names), and functional
    calls (``F.relu``, ``torch.relu``, ``x.relu()``) through a torch.fx rewrite, which
    returns an ``fx.GraphModule`` with the same parameter names. ``model`` is unchanged."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"replace_relus() takes a torch.nn.Module, got {type(model).__name__}")
    copied = copy.deepcopy(model)
    for name, module in list(copied.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(module, child_name, make())
    try:
        graph = ActivationTracer().trace(copied)
    except Exception:  # not traceable: only module ReLUs can be replaced, and they were
        return copied
    functional = [
        n for n in graph.nodes
        if (n.op == "call_function" and n.target in _FUNCTIONAL_RELUS) or (n.op == "call_method" and n.target in ("relu", "relu_"))
    ]  # fmt: skip
    if not functional:
        return copied
    rewritten = fx.GraphModule(copied, graph, class_name=type(model).__name__)
    for k, node in enumerate(functional):
        name = f"relu_replaced_{k}"
        rewritten.add_module(name, make())
        with graph.inserting_before(node):
            new = graph.call_module(name, (node.args[0],))
        node.replace_all_uses_with(new)
        graph.erase_node(node)
    graph.lint()
    rewritten.recompile()
    return rewritten
