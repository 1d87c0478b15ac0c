"""Datasets as in-memory image tensors: scikit-learn's 8x8 digits, MNIST (IDX gzip) and
class-per-folder image trees (e.g. CIFAR-10 as JPEG files).

Images are kept as ``uint8`` (or float) tensors ``[N, C, H, W]`` and handed out as float
batches in ``[0, 1]``: the range rate coding needs (Yang eq. 7, ``r0 = a0 * r_max``).
"""

from __future__ import annotations

import gzip
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "DATASETS",
    "DatasetNotFoundError",
    "ImageDataset",
    "check_split",
    "load_dataset",
    "load_digits",
    "load_image_folder",
    "load_mnist",
    "load_svhn",
    "read_idx",
    "subset_index",
]

DATASETS = ("digits", "mnist", "cifar10", "svhn", "nmnist")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm")


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not where they were looked for."""


@dataclass(frozen=True, kw_only=True)
class ImageDataset:
    """Images ``[N, C, H, W]`` (uint8 0..255, or float already in [0, 1]) and labels ``[N]``."""

    images: Tensor
    labels: Tensor
    name: str
    classes: tuple[str, ...]
    # what a uint8 image is divided by to give the float input: 255 for pixels; event
    # counts over a recording divide by its number of time bins (spikeconv.io.nmnist)
    divisor: float = 255.0

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise ValueError(f"{self.name}: images must be [N, C, H, W], got shape {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"{self.name}: {self.images.shape[0]} images but labels of shape {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def as_float(self, images: Tensor) -> Tensor:
        if images.dtype == torch.uint8:
            return images.float().div_(self.divisor)
        return images.float()

    def tensors(self) -> tuple[Tensor, Tensor]:
        """All images as float in [0, 1] and the labels."""
        return self.as_float(self.images), self.labels

    def subset(self, count: int | None, seed: int = 0) -> ImageDataset:
        """A fixed, seeded random subset of ``count`` images (all of them when ``None``)."""
        if count is None or count >= len(self):
            return self
        index = subset_index(len(self), count, seed)
        return replace(self, images=self.images[index], labels=self.labels[index])

    def center_crop(self, size: int) -> ImageDataset:
        """The central ``size`` x ``size`` crop of every image (Yang's CIFAR-10 test images)."""
        h, w = self.images.shape[2:]
        if size > min(h, w):
            raise ValueError(f"cannot crop {h}x{w} images of {self.name} to {size}x{size}")
        top, left = (h - size) // 2, (w - size) // 2
        images = self.images[:, :, top : top + size, left : left + size].contiguous()
        return replace(self, images=images, name=f"{self.name}-crop{size}")

    def batches(
        self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """``(x, y)`` float batches; shuffled with ``generator`` when asked."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            index = order[start : start + batch_size]
            yield self.as_float(self.images[index]), self.labels[index]


def subset_index(n: int, count: int, seed: int) -> Tensor:
    """The sorted indices of a seeded random subset of ``count`` of ``n`` items (what
    :meth:`ImageDataset.subset` keeps; event sequences pick the same samples)."""
    if count <= 0:
        raise ValueError(f"subset size must be positive, got {count}")
    index = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:count]
    return index.sort().values


def load_digits(split: str = "train") -> ImageDataset:
    """scikit-learn's bundled 8x8 digits (1,797 images, no download), split 80/20 with a
    fixed permutation: 1,438 train and 359 test images. Pixel values 0..16 map to [0, 1]."""
    from sklearn.datasets import load_digits as _sk_load_digits

    check_split(split)
    bunch = _sk_load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).div_(16.0).unsqueeze(1)
    labels = torch.tensor(bunch.target, dtype=torch.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    cut = int(round(0.8 * len(labels)))
    index = order[:cut] if split == "train" else order[cut:]
    index, _ = index.sort()
    return ImageDataset(
        images=images[index], labels=labels[index], name=f"digits-{split}", classes=tuple(str(i) for i in range(10))
    )


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed): the format of the MNIST distribution."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:  # a cut-off or damaged .gz
        raise ValueError(f"{path} is not a complete gzip file ({error}): download it again") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    type_code, ndim = data[2], data[3]
    dtypes: dict[int, Any] = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if type_code not in dtypes:
        raise ValueError(f"{path}: unknown IDX element type 0x{type_code:02x}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path} is truncated: its {ndim}-d header needs {header} bytes, the file has {len(data)}")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    itemsize = np.dtype(dtypes[type_code]).itemsize
    expected = int(np.prod(shape, dtype=np.int64)) * itemsize
    if len(data) - header != expected:
        raise ValueError(
            f"{path}: header says shape {shape} ({expected} bytes of data) but the file holds {len(data) - header}: "
            "it is truncated or damaged; download it again"
        )
    array = np.frombuffer(data, dtype=dtypes[type_code], offset=header)
    return array.reshape(shape)


_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def load_mnist(root: str | Path, split: str = "train") -> ImageDataset:
    """MNIST from the IDX files under ``root`` (torchvision layout ``root/MNIST/raw``;
    ``root/raw`` and ``root`` itself are also searched; ``.gz`` or uncompressed)."""
    check_split(split)
    root = Path(root)
    candidates = [root / "MNIST" / "raw", root / "raw", root]
    paths = []
    for stem in _MNIST_FILES[split]:
        found = next(
            (d / (stem + ext) for d in candidates for ext in (".gz", "") if (d / (stem + ext)).is_file()), None
        )
        if found is None:
            expected = ", ".join(s + ".gz" for s in _MNIST_FILES[split])
            raise DatasetNotFoundError(
                f"MNIST {split} files not found: expected {expected} in {root / 'MNIST' / 'raw'} "
                f"(torchvision layout). Point --data-root (data_root=) at the folder that contains MNIST/raw."
            )
        paths.append(found)
    images = torch.from_numpy(read_idx(paths[0]).copy()).unsqueeze(1)
    labels = torch.from_numpy(read_idx(paths[1]).astype(np.int64))
    return ImageDataset(
        images=images, labels=labels, name=f"mnist-{split}", classes=tuple(str(i) for i in range(10))
    )


def load_image_folder(
    path: str | Path, *, grayscale: bool = False, size: tuple[int, int] | None = None
) -> ImageDataset:
    """A class-per-folder image tree: ``path/<class>/<image>``; classes sorted by name.
    All images must share one size, or ``size`` = (height, width) resizes each (bilinear)."""
    from PIL import Image

    path = Path(path)
    if not path.is_dir():
        raise DatasetNotFoundError(
            f"image folder {path} does not exist: expected {path}/<class name>/<image files>. "
            "Point --data-root (data_root=) at the dataset's parent folder."
        )
    class_dirs = sorted(d for d in path.iterdir() if d.is_dir())
    if not class_dirs:
        raise DatasetNotFoundError(f"image folder {path} has no class sub-folders (expected {path}/<class>/<image>)")
    arrays: list[np.ndarray] = []
    labels: list[int] = []
    for label, class_dir in enumerate(class_dirs):
        for file in sorted(class_dir.iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(file) as image:
                    converted = image.convert("L" if grayscale else "RGB")
                    if size is not None and converted.size != (size[1], size[0]):
                        converted = converted.resize((size[1], size[0]), Image.Resampling.BILINEAR)
                    array = np.asarray(converted, dtype=np.uint8)
            except (OSError, SyntaxError) as error:  # Pillow's UnidentifiedImageError is an OSError
                raise ValueError(f"{file} cannot be read as an image ({error}): remove or replace it") from None
            if arrays and array.shape != arrays[0].shape:
                raise ValueError(
                    f"{file} is {array.shape[:2]} but earlier images are {arrays[0].shape[:2]}: resize them alike "
                    "(the CLI's --input-size resizes every image)"
                )
            arrays.append(array)
            labels.append(label)
    if not arrays:
        raise DatasetNotFoundError(f"image folder {path} has class folders but no image files ({IMAGE_SUFFIXES})")
    stacked = np.stack(arrays)
    stacked = stacked[:, None] if stacked.ndim == 3 else stacked.transpose(0, 3, 1, 2)
    return ImageDataset(
        images=torch.from_numpy(np.ascontiguousarray(stacked)),
        labels=torch.tensor(labels, dtype=torch.int64),
        name=path.name,
        classes=tuple(d.name for d in class_dirs),
    )


def load_svhn(root: str | Path, split: str = "train") -> ImageDataset:
    """SVHN from its standard MATLAB files (``train_32x32.mat``, ``test_32x32.mat``) under
    ``root`` or ``root/SVHN``: ``X`` is [32, 32, 3, N] uint8, ``y`` is [N, 1] with 10 for
    the digit 0 (mapped to label 0 here)."""
    from scipy.io import loadmat

    check_split(split)
    root = Path(root)
    name = f"{split}_32x32.mat"
    path = next((p for p in (root / name, root / "SVHN" / name, root / "svhn" / name) if p.is_file()), None)
    if path is None:
        raise DatasetNotFoundError(
            f"SVHN {split} file not found: expected {name} in {root} or {root / 'SVHN'}. "
            "Point --data-root (data_root=) at the folder that contains it."
        )
    try:
        mat = loadmat(path)
    except (ValueError, TypeError, OSError) as error:  # scipy's reports of a damaged or foreign file
        raise ValueError(f"{path} cannot be read as a MATLAB file ({error}): download it again") from None
    if "X" not in mat or "y" not in mat:
        raise ValueError(f"{path} has no 'X' and 'y' arrays: not an SVHN cropped-digits file")
    images = torch.from_numpy(np.ascontiguousarray(mat["X"].transpose(3, 2, 0, 1)).astype(np.uint8))
    labels = torch.from_numpy(mat["y"].reshape(-1).astype(np.int64) % 10)
    return ImageDataset(images=images, labels=labels, name=f"svhn-{split}", classes=tuple(str(i) for i in range(10)))


def load_dataset(name: str, split: str = "train", data_root: str | Path | None = None) -> ImageDataset:
    """Load a dataset by name: ``digits`` (embedded), ``mnist``, ``svhn`` (.mat files),
    ``cifar10`` (JPEG folders under ``data_root/cifar10-jpeg/{train,test}``) or ``nmnist``
    (N-MNIST event files under ``data_root/{Train,Test}``, as frames of mean events per
    millisecond: :func:`spikeconv.io.nmnist.load_nmnist`)."""
    check_split(split)
    if name == "digits":
        return load_digits(split)
    if name in ("mnist", "cifar10", "svhn", "nmnist") and data_root is None:
        raise DatasetNotFoundError(f"dataset {name!r} needs --data-root (data_root=): the folder that holds it")
    if name == "mnist":
        return load_mnist(data_root, split)  # type: ignore[arg-type]
    if name == "svhn":
        return load_svhn(data_root, split)  # type: ignore[arg-type]
    if name == "nmnist":
        from .nmnist import load_nmnist  # (io.nmnist builds on this module)

        return load_nmnist(data_root, split)  # type: ignore[arg-type]
    if name == "cifar10":
        return load_image_folder(Path(data_root) / "cifar10-jpeg" / split)  # type: ignore[arg-type]
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def check_split(split: str) -> None:
    """Refuses a split other than 'train' or 'test' (every loader takes these two)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
