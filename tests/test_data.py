from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from spikeconv.io.data import (
    DatasetNotFoundError,
    load_dataset,
    load_digits,
    load_image_folder,
    load_mnist,
    read_idx,
)


def _write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def _fake_mnist(root, n=7):
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 28, 28))
    labels = rng.integers(0, 10, size=n)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return images, labels


def test_mnist_idx_files_are_read_in_torchvision_layout(tmp_path):
    images, labels = _fake_mnist(tmp_path)
    data = load_mnist(tmp_path, "test")
    assert data.images.shape == (7, 1, 28, 28) and data.images.dtype == torch.uint8
    assert torch.equal(data.images[:, 0], torch.from_numpy(images.astype(np.uint8)))
    assert torch.equal(data.labels, torch.from_numpy(labels))
    x, y = next(data.batches(4))
    assert x.dtype == torch.float32 and float(x.max()) <= 1.0 and x.shape == (4, 1, 28, 28)
    assert load_dataset("mnist", "train", tmp_path).name == "mnist-train"


def test_missing_mnist_files_name_the_files_and_the_flag(tmp_path):
    with pytest.raises(DatasetNotFoundError) as error:
        load_mnist(tmp_path, "train")
    message = str(error.value)
    assert "train-images-idx3-ubyte.gz" in message and "--data-root" in message
    with pytest.raises(DatasetNotFoundError, match="needs --data-root"):
        load_dataset("mnist", "train", None)


def test_idx_reader_refuses_bad_files(tmp_path):
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as handle:
        handle.write(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(bad)


def test_image_folder_reads_classes_in_sorted_order(tmp_path):
    rng = np.random.default_rng(1)
    for name, count in (("cat", 2), ("airplane", 3)):
        (tmp_path / name).mkdir()
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    data = load_image_folder(tmp_path)
    assert data.classes == ("airplane", "cat")
    assert data.images.shape == (5, 3, 32, 32)
    assert data.labels.tolist() == [0, 0, 0, 1, 1]


def test_image_folder_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        load_image_folder(tmp_path / "missing")
    with pytest.raises(DatasetNotFoundError, match="no class sub-folders"):
        load_image_folder(tmp_path)


def test_digits_split_is_fixed_and_disjoint():
    train, test = load_digits("train"), load_digits("test")
    assert (len(train), len(test)) == (1438, 359)
    assert train.input_shape == (1, 8, 8) and float(train.images.max()) == 1.0
    assert torch.equal(load_digits("test").images, test.images)
    with pytest.raises(ValueError, match="split must be"):
        load_digits("valid")


def test_subset_is_seeded():
    data = load_digits("test")
    a, b = data.subset(50, seed=3), data.subset(50, seed=3)
    assert torch.equal(a.labels, b.labels) and len(a) == 50
    assert not torch.equal(a.images, data.subset(50, seed=4).images)


def test_svhn_mat_files_are_read_with_label_10_as_zero(tmp_path):
    from scipy.io import savemat

    from spikeconv.io.data import load_svhn

    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, size=(32, 32, 3, 5), dtype=np.uint8)
    y = np.array([[10], [1], [2], [10], [9]])
    (tmp_path / "SVHN").mkdir()
    savemat(tmp_path / "SVHN" / "test_32x32.mat", {"X": x, "y": y})
    data = load_dataset("svhn", "test", tmp_path)
    assert data.images.shape == (5, 3, 32, 32)
    assert data.labels.tolist() == [0, 1, 2, 0, 9]
    assert torch.equal(data.images[1, 2], torch.from_numpy(x[:, :, 2, 1]))
    with pytest.raises(DatasetNotFoundError, match="train_32x32.mat"):
        load_svhn(tmp_path, "train")


def test_center_crop_and_training_augmentation():
    from spikeconv.training import TrainOptions, augment

    images = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).view(2, 3, 32, 32)
    from spikeconv.io.data import ImageDataset

    data = ImageDataset(images=images, labels=torch.tensor([0, 1]), name="x", classes=("a", "b"))
    crop = data.center_crop(24)
    assert crop.input_shape == (3, 24, 24) and torch.equal(crop.images, images[:, :, 4:28, 4:28])
    options = TrainOptions(crop=24, flip=True)
    a = augment(images, options, torch.Generator().manual_seed(0))
    b = augment(images, options, torch.Generator().manual_seed(0))
    assert a.shape == (2, 3, 24, 24) and torch.equal(a, b)


def test_padded_crop_keeps_size_and_is_a_window_of_the_padded_image():
    from spikeconv.training import TrainOptions, augment

    images = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(1)) + 1.0  # no zeros inside
    out = augment(images, TrainOptions(pad=2), torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    offsets = set()
    for img, src in zip(out, padded):
        found = [(t, l) for t in range(5) for l in range(5) if torch.equal(img, src[:, t : t + 8, l : l + 8])]
        assert len(found) == 1
        offsets.add(found[0])
    assert len(offsets) > 1  # offsets are drawn per image
    with pytest.raises(ValueError, match="pad"):
        TrainOptions(pad=-1)
