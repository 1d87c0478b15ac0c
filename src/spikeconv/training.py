"""Seeded, resumable training of the ANN that will be converted.

The checkpoint (written atomically after every epoch) holds the model, the optimizer and
scheduler, the shuffling generator and the history, so a run that is stopped resumes where
it was and ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from .conversion.activations import (
    RateNorm,
    make_activation,
    rate_inference_loss,
    rate_norm_outputs,
    replace_relus,
)
from .io import fingerprint, load_torch, save_torch
from .io.data import ImageDataset
from .models import ZOO, build_model

__all__ = [
    "SCHEDULES", "TrainOptions", "augment", "build_trainable", "evaluate_ann", "load_model", "model_from_record", "save_model", "train",
]  # fmt: skip

MODEL_FORMAT = "spikeconv-model/1"
SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True, kw_only=True)
class TrainOptions:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3  # Adam
    schedule: str = "cosine"  # the learning rate: cosine-annealed to 0 over the run, or constant (the course report)
    weight_decay: float = 0.0
    seed: int = 0
    crop: int | None = None  # random crops of this size for training (Yang's CIFAR-10: 24 from 32)
    flip: bool = False  # random horizontal flips for training
    pad: int = 0  # zero-pad by this much before the random crop (the usual CIFAR-10 protocol: 4)
    # the activation every ReLU is trained as (spikeconv.conversion.activations): relu, threshold, qcfs, ratenorm
    activation: str = "relu"
    levels: int = 8  # qcfs: quantization levels L
    theta: float | None = None  # threshold / qcfs: the clip value (default 1 / 8)
    trainable_theta: bool = False  # threshold: learn theta
    shift: int | None = None  # threshold: train with the shift theta / (2 T), T = shift
    # ratenorm: weight lambda of Ding's Rate Inference Loss (mean Omega over layers), added to the
    # task loss (eq. 9), or with stage 2 to stage 2's loss only (eq. 13)
    ril: float = 0.0
    # ratenorm: epochs of Ding's stage 2 (Algorithm 1) after the `epochs` of stage 1; with
    # stage 2, stage 1 trains the weights with p = 1 and stage 2 only a p shared by all layers
    stage2_epochs: int = 0
    # Adam on the shared p' (p = sigmoid(p')), cosine-annealed to 0. At 1e-2 for 2 MNIST epochs
    # (1,876 steps) lambda Omega drove p to 0.24 and cost Ding's CNN 13 pt of ANN accuracy.
    stage2_lr: float = 1e-3

    def __post_init__(self) -> None:
        if self.epochs <= 0 or self.batch_size <= 0 or self.lr <= 0:
            raise ValueError(f"epochs, batch_size and lr must be positive: {self}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.pad < 0:
            raise ValueError(f"pad must be >= 0, got {self.pad}")
        self.activation_factory()  # refuses unknown activations and options that do not belong
        if self.ril < 0 or (self.ril > 0 and self.activation != "ratenorm"):
            raise ValueError(f"ril (Rate Inference Loss weight) must be >= 0 and needs activation 'ratenorm', got {self.ril}")
        if self.stage2_epochs < 0 or (self.stage2_epochs > 0 and self.activation != "ratenorm"):
            raise ValueError(
                f"stage2_epochs (Ding's threshold training) must be >= 0 and needs activation 'ratenorm', got {self.stage2_epochs}"
            )
        if self.stage2_lr <= 0:
            raise ValueError(f"stage2_lr must be positive, got {self.stage2_lr}")

    def activation_factory(self) -> Callable[[], nn.Module] | None:
        if self.activation == "ratenorm" and self.stage2_epochs > 0:
            return lambda: RateNorm(trainable_p=False)  # Algorithm 1, stage 1: p = 1
        return make_activation(
            self.activation, levels=self.levels, theta=self.theta, trainable_theta=self.trainable_theta,
            shift_steps=self.shift,
        )  # fmt: skip


def build_trainable(arch: str, options: TrainOptions) -> nn.Module:
    """Zoo model ``arch`` with its ReLUs trained as ``options.activation``."""
    model = build_model(arch)
    make = options.activation_factory()
    return model if make is None else replace_relus(model, make)


@torch.inference_mode()
def evaluate_ann(model: nn.Module, data: ImageDataset, batch_size: int = 500) -> float:
    """Top-1 accuracy of the ANN, in percent."""
    was_training = model.training
    model.eval()
    correct = 0
    dtype = next((p.dtype for p in model.parameters()), torch.float32)
    for x, y in data.batches(batch_size):
        correct += int((model(x.to(dtype)).argmax(1) == y).sum())
    model.train(was_training)
    return 100.0 * correct / len(data)


def train(
    arch: str,
    train_set: ImageDataset,
    test_set: ImageDataset | None,
    options: TrainOptions,
    checkpoint: str | Path,
    *,
    progress: bool = True,
    log: bool | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train zoo model ``arch``; resume from ``checkpoint`` if it exists (only when it was
    written for the same architecture, options and training images). Returns the model and
    the checkpoint record (with per-epoch history). ``progress``: progress bars; ``log``:
    a line per epoch (default: as ``progress``)."""
    log = progress if log is None else log
    checkpoint = Path(checkpoint)
    torch.manual_seed(options.seed)
    model = build_trainable(arch, options)
    expected = ZOO[arch].input_shape
    trained_shape = train_set.input_shape if options.crop is None else (train_set.input_shape[0], options.crop, options.crop)
    if trained_shape != expected:
        raise ValueError(f"model {arch!r} expects inputs {expected} but {train_set.name} has {train_set.input_shape}")
    if test_set is not None and test_set.input_shape != expected:
        raise ValueError(
            f"model {arch!r} expects inputs {expected} but the test set {test_set.name} has {test_set.input_shape}: "
            "centre-crop it (ImageDataset.center_crop)"
        )
    optimizer = torch.optim.Adam(model.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    steps_per_epoch = -(-len(train_set) // options.batch_size)
    scheduler: torch.optim.lr_scheduler.LRScheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=options.epochs * steps_per_epoch)
        if options.schedule == "cosine"
        else torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0)
    )
    generator = torch.Generator().manual_seed(options.seed)
    history: list[dict[str, float]] = []
    start_epoch = 0
    data = fingerprint([train_set.images, train_set.labels])
    stage2: _Stage2 | None = None
    if checkpoint.exists():
        state = load_torch(checkpoint, "checkpoint")
        # Checkpoints written before an option existed hold its default.
        saved_options = {**asdict(TrainOptions()), **state.get("options", {})}
        if state.get("arch") != arch or _effective(saved_options) != _effective(asdict(options)):
            raise ValueError(
                f"checkpoint {checkpoint} was written for {state.get('arch')} with {state.get('options')}, "
                f"not {arch} with {asdict(options)}: pass another --out or delete it to start afresh"
            )
        if state.get("train_data", data) != data:  # (older checkpoints do not record their data)
            raise ValueError(
                f"checkpoint {checkpoint} was trained on other images than {train_set.name} ({len(train_set)} "
                "images): pass another --out or delete it to start afresh"
            )
        model.load_state_dict(state["state_dict"])
        start_epoch = state["epoch"]
        if start_epoch > options.epochs:  # stopped in stage 2: its optimizer was saved
            stage2 = _Stage2(model, options, steps_per_epoch, resume=True)
            optimizer, scheduler = stage2.optimizer, stage2.scheduler
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        history = state["history"]
    loss_fn = nn.CrossEntropyLoss()
    record: dict[str, Any] = {}
    total_epochs = options.epochs + options.stage2_epochs
    stage1_ril = options.ril if options.stage2_epochs == 0 else 0.0  # Algorithm 1: stage 1 is task loss only
    for epoch in range(start_epoch, total_epochs):
        if epoch >= options.epochs and stage2 is None:
            stage2 = _Stage2(model, options, steps_per_epoch, resume=False)
            optimizer, scheduler = stage2.optimizer, stage2.scheduler
        if stage2 is None:
            model.train()
        else:
            stage2.train_mode()
        total_loss, seen = 0.0, 0
        batches = train_set.batches(options.batch_size, shuffle=True, generator=generator)
        desc = f"epoch {epoch + 1}/{total_epochs}" + ("" if stage2 is None else " (stage 2: p)")
        bar = tqdm(batches, total=steps_per_epoch, desc=desc, disable=not progress)
        for x, y in bar:
            x = augment(x, options, generator)
            optimizer.zero_grad(set_to_none=True)
            loss = _loss(loss_fn, model, x, y, stage1_ril) if stage2 is None else stage2.loss(x)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += float(loss.detach()) * len(y)
            seen += len(y)
            bar.set_postfix(loss=f"{total_loss / seen:.4f}")
        entry = {"epoch": epoch + 1, "train_loss": total_loss / seen}
        if stage2 is not None:
            entry["p"] = float(stage2.p)
        if test_set is not None:
            entry["test_accuracy"] = evaluate_ann(model, test_set)
        history.append(entry)
        if log:
            tqdm.write(", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in entry.items()))
        record = _checkpoint_record(arch, model, options, history)
        record.update(
            train_data=data,
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(),
            generator=generator.get_state(),
            epoch=epoch + 1,
        )
        save_torch(checkpoint, record)
    if stage2 is not None:
        stage2.p_logit.requires_grad_(False)
    if not record:  # already complete on entry
        record = load_torch(checkpoint, "checkpoint")
    model.eval()
    return model, record


def _loss(loss_fn: nn.Module, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ril: float = 0.0) -> torch.Tensor:
    """Cross-entropy; for a model that ends in a softmax (Rueckauer's CIFAR-10 net) the
    negative log of its probabilities, which is the same loss. With ``ril > 0``, plus ``ril``
    times the mean Rate Inference Loss of the Rate Norm Layers (Ding eq. 9)."""
    with rate_norm_outputs(model) as rates:
        out = model(x)
    last = list(model.modules())[-1]
    if isinstance(last, nn.Softmax):
        loss = nn.functional.nll_loss(torch.log(out.clamp_min(1e-30)), y)
    else:
        loss = loss_fn(out, y)
    if ril > 0 and rates:
        loss = loss + ril * torch.stack([rate_inference_loss(r).mean() for r in rates]).mean()
    return loss


def _effective(options: dict[str, Any]) -> dict[str, Any]:
    """The options that shape the trained weights (stage 2's learning rate does not without
    stage 2), so that a checkpoint resumes across a change of an unused option's default."""
    if options.get("stage2_epochs", 0) == 0:
        options = {k: v for k, v in options.items() if k != "stage2_lr"}
    return options


class _Stage2:
    """Ding et al.'s stage 2 (Algorithm 1, lines 16-35; Appendix B): the weights frozen, one
    p = sigmoid(p') shared by every Rate Norm Layer is trained to minimize
    ``1 - cos(r*_L, r'_L) + lambda * mean_l Omega_l`` (eq. 13), where r*_L is the output of
    the network with p = 1 (stage 1's) and r'_L with the trained p, on the same batch. The
    running maxima keep updating in both passes, as in the algorithm; BatchNorm stays in
    inference form. p starts at 0.99 (at p = 1, i.e. p' = +inf, the sigmoid's gradient
    vanishes)."""

    START_P = 0.99

    def __init__(self, model: nn.Module, options: TrainOptions, steps_per_epoch: int, *, resume: bool) -> None:
        self.model = model
        self.ril = options.ril
        self.layers = [m for m in model.modules() if isinstance(m, RateNorm)]
        if not self.layers:
            raise ValueError("stage 2 trains the p of Rate Norm Layers, and the model has none")
        for param in model.parameters():
            param.requires_grad_(False)
        start = float(self.layers[0].p_logit) if resume else math.log(self.START_P / (1 - self.START_P))
        self.p_logit = nn.Parameter(torch.tensor(start))
        for layer in self.layers:  # one parameter, registered in every layer (same state_dict keys)
            layer._buffers.pop("p_logit", None)
            layer._parameters.pop("p_logit", None)
            layer.p_logit = self.p_logit
        self.optimizer = torch.optim.Adam([self.p_logit], lr=options.stage2_lr)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=options.stage2_epochs * steps_per_epoch
        )

    @property
    def p(self) -> float:
        return float(torch.sigmoid(self.p_logit.detach()))

    def train_mode(self) -> None:
        self.model.eval()
        for layer in self.layers:
            layer.train()

    def loss(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            trained = self.p_logit.detach().clone()
            self.p_logit.fill_(20.0)  # p = 1 (sigmoid(20) = 1 - 2e-9)
            reference = self.model(x)
            self.p_logit.copy_(trained)
        with rate_norm_outputs(self.model) as rates:
            out = self.model(x)
        loss = 1 - nn.functional.cosine_similarity(out.flatten(1), reference.flatten(1), dim=1).mean()
        if self.ril > 0:
            loss = loss + self.ril * torch.stack([rate_inference_loss(r).mean() for r in rates]).mean()
        return loss


def augment(x: Tensor, options: TrainOptions, generator: torch.Generator) -> Tensor:
    """Zero padding, random crop (one offset per image) and horizontal flip, drawn from
    ``generator``. With padding and no crop size the crop is the original size."""
    if options.crop is not None or options.pad:
        size = options.crop or x.shape[2]
        x = nn.functional.pad(x, (options.pad,) * 4) if options.pad else x
        h, w = x.shape[2:]
        if size > min(h, w):
            raise ValueError(f"crop {size} is larger than the {h}x{w} training images")
        tops = torch.randint(0, h - size + 1, (len(x),), generator=generator)
        lefts = torch.randint(0, w - size + 1, (len(x),), generator=generator)
        x = torch.stack([img[:, t : t + size, l : l + size] for img, t, l in zip(x, tops.tolist(), lefts.tolist())])
    if options.flip:
        flip = torch.rand(len(x), generator=generator) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
    return x


def _checkpoint_record(arch: str, model: nn.Module, options: TrainOptions, history: list) -> dict[str, Any]:
    return {
        "format": MODEL_FORMAT,
        "arch": arch,
        "input_shape": ZOO[arch].input_shape,
        "state_dict": model.state_dict(),
        "options": asdict(options),
        "history": history,
    }


def save_model(path: str | Path, arch: str, model: nn.Module, options: TrainOptions | None = None) -> None:
    """Save a zoo model's weights in the format :func:`load_model` reads (``options`` says
    which activation it was built with; default: ReLU)."""
    save_torch(path, _checkpoint_record(arch, model, options or TrainOptions(), []))


def load_model(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a zoo model from a checkpoint written by ``train``/``save_model``."""
    state = load_torch(path, "model")
    if not isinstance(state, dict) or state.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path} is not a spikeconv model checkpoint (written by `spikeconv train`)")
    return model_from_record(state), state


def model_from_record(record: dict[str, Any]) -> nn.Module:
    """The zoo model a checkpoint record describes (its activation included), with its
    weights, in eval mode."""
    # records written before an option existed hold its default
    options = TrainOptions(**{**asdict(TrainOptions()), **record.get("options", {})})
    model = build_trainable(record["arch"], options)
    model.load_state_dict(record["state_dict"])
    return model.eval()
