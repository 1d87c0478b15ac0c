"""Seeded, resumable training of the ANN that will be converted.

The checkpoint (written atomically after every epoch) holds the model, the optimizer and
scheduler, the shuffling generator and the history, so a run that is stopped resumes where
it was and ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from .activations import (
    make_activation,
    rate_inference_loss,
    rate_norm_outputs,
    replace_relus,
)
from .data import ImageDataset
from .io import fingerprint, load_torch, save_torch
from .models import ZOO, build_model

__all__ = [
    "TrainOptions", "augment", "build_trainable", "evaluate_ann", "load_model", "model_from_record", "save_model", "train",
]  # fmt: skip

MODEL_FORMAT = "spikeconv-model/1"


@dataclass(frozen=True, kw_only=True)
class TrainOptions:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3  # Adam, cosine-annealed to 0 over the run
    weight_decay: float = 0.0
    seed: int = 0
    crop: int | None = None  # random crops of this size for training (Yang's CIFAR-10: 24 from 32)
    flip: bool = False  # random horizontal flips for training
    pad: int = 0  # zero-pad by this much before the random crop (the usual CIFAR-10 protocol: 4)
    # the activation every ReLU is trained as (spikeconv.activations): relu, threshold, qcfs, ratenorm
    activation: str = "relu"
    levels: int = 8  # qcfs: quantization levels L
    theta: float | None = None  # threshold / qcfs: the clip value (default 1 / 8)
    trainable_theta: bool = False  # threshold: learn theta
    shift: int | None = None  # threshold: train with the shift theta / (2 T), T = shift
    ril: float = 0.0  # ratenorm: weight lambda of Ding's Rate Inference Loss (mean Omega over layers)

    def __post_init__(self) -> None:
        if self.epochs <= 0 or self.batch_size <= 0 or self.lr <= 0:
            raise ValueError(f"epochs, batch_size and lr must be positive: {self}")
        if self.pad < 0:
            raise ValueError(f"pad must be >= 0, got {self.pad}")
        self.activation_factory()  # refuses unknown activations and options that do not belong
        if self.ril < 0 or (self.ril > 0 and self.activation != "ratenorm"):
            raise ValueError(f"ril (Rate Inference Loss weight) must be >= 0 and needs activation 'ratenorm', got {self.ril}")

    def activation_factory(self) -> Callable[[], nn.Module] | None:
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
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=options.epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(options.seed)
    history: list[dict[str, float]] = []
    start_epoch = 0
    data = fingerprint([train_set.images, train_set.labels])
    if checkpoint.exists():
        state = load_torch(checkpoint, "checkpoint")
        # Checkpoints written before an option existed hold its default.
        saved_options = {**asdict(TrainOptions()), **state.get("options", {})}
        if state.get("arch") != arch or saved_options != asdict(options):
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
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        history = state["history"]
        start_epoch = state["epoch"]
    loss_fn = nn.CrossEntropyLoss()
    record: dict[str, Any] = {}
    for epoch in range(start_epoch, options.epochs):
        model.train()
        total_loss, seen = 0.0, 0
        batches = train_set.batches(options.batch_size, shuffle=True, generator=generator)
        bar = tqdm(batches, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{options.epochs}", disable=not progress)
        for x, y in bar:
            x = augment(x, options, generator)
            optimizer.zero_grad(set_to_none=True)
            loss = _loss(loss_fn, model, x, y, options.ril)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += float(loss.detach()) * len(y)
            seen += len(y)
            bar.set_postfix(loss=f"{total_loss / seen:.4f}")
        entry = {"epoch": epoch + 1, "train_loss": total_loss / seen}
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
