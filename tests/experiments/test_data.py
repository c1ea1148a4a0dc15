"""Datasets: bundled digits, generated signals, synthetic data, image folders and torchvision files made in tmp_path."""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

import diagnostics as dx
from diagnostics.experiments.data import (
    DATASETS, DataError, load_digits, load_image_folder, load_torchvision, make_signals1d, make_synthetic,
    split_indices,
)


def assert_normalised(split: dx.DataSplit) -> None:
    dims = [0, *range(2, split.x_train.dim())]
    torch.testing.assert_close(split.x_train.mean(dim=dims), torch.zeros(split.in_channels), atol=1e-4, rtol=0)
    torch.testing.assert_close(split.x_train.std(dim=dims), torch.ones(split.in_channels), atol=1e-3, rtol=0)


# --- splits ------------------------------------------------------------------------------------------------

def test_split_is_stratified_disjoint_complete_and_seeded():
    labels = np.repeat(np.arange(4), [10, 20, 30, 40])
    train, test = split_indices(labels, 0.2, seed=0)
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(100))
    assert np.bincount(labels[test]).tolist() == [2, 4, 6, 8]
    again, _ = split_indices(labels, 0.2, seed=0)
    other, _ = split_indices(labels, 0.2, seed=1)
    assert np.array_equal(train, again) and not np.array_equal(train, other)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1], ids=["zero", "one", "negative"])
def test_split_fraction_must_be_between_0_and_1(fraction):
    with pytest.raises(DataError, match="test_fraction must be between 0 and 1"):
        split_indices(np.arange(10) % 2, fraction, seed=0)
    assert fraction <= 0 or fraction >= 1


# --- bundled and generated ----------------------------------------------------------------------------------

def test_digits_are_the_1797_real_images_split_and_normalised():
    digits = load_digits()
    assert digits.x_train.shape[1:] == (1, 8, 8) and digits.dims == 2
    assert len(digits.y_train) + len(digits.y_test) == 1797
    assert len(digits.y_test) == pytest.approx(0.2 * 1797, abs=10)
    assert digits.num_classes == 10 and set(digits.y_test.tolist()) == set(range(10))
    assert_normalised(digits)


def test_digits_upsampled():
    digits = load_digits(upsample=2)
    assert digits.x_train.shape[1:] == (1, 16, 16) and digits.input_size == 16


def test_digits_split_follows_the_seed():
    a, b, c = load_digits(seed=0), load_digits(seed=0), load_digits(seed=1)
    assert torch.equal(a.x_test, b.x_test) and not torch.equal(a.y_test, c.y_test)


def test_signals1d_is_deterministic_one_dimensional_and_learnable():
    signals = make_signals1d(n=1000, seed=3)
    assert signals.x_train.shape[1:] == (1, 40) and signals.dims == 1 and signals.num_classes == 10
    assert torch.equal(signals.x_train, make_signals1d(n=1000, seed=3).x_train)
    assert not torch.equal(signals.x_train, make_signals1d(n=1000, seed=4).x_train)
    # A linear least-squares classifier is far above chance (10%): the classes carry signal.
    x = np.c_[signals.x_train.reshape(len(signals.y_train), -1).numpy(), np.ones(len(signals.y_train))]
    w = np.linalg.lstsq(x, np.eye(10)[signals.y_train.numpy()], rcond=None)[0]
    xt = np.c_[signals.x_test.reshape(len(signals.y_test), -1).numpy(), np.ones(len(signals.y_test))]
    assert ((xt @ w).argmax(1) == signals.y_test.numpy()).mean() > 0.2
    assert_normalised(signals)


@pytest.mark.parametrize("dims,shape", [(2, (3, 6, 6)), (1, (3, 6))], ids=["images", "signals"])
def test_synthetic_shapes(dims, shape):
    data = make_synthetic(n=40, num_classes=4, channels=3, size=6, dims=dims, test_fraction=0.2)
    assert data.x_train.shape[1:] == shape and data.num_classes == 4
    assert len(data.y_train) == 32 and len(data.y_test) == 8          # 2 of the 10 of every class


# --- image folders --------------------------------------------------------------------------------------------

def write_image_folder(root, classes=("cat", "dog"), per_class=5, size=(10, 12)):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i}.png")
    return root


@pytest.mark.parametrize("grayscale,channels", [(False, 3), (True, 1)], ids=["rgb", "grayscale"])
def test_image_folder_loads_resized_images_with_class_names(tmp_path, grayscale, channels):
    root = write_image_folder(tmp_path / "pets")
    data = load_image_folder(root, image_size=8, grayscale=grayscale)
    assert data.classes == ("cat", "dog")
    assert data.x_train.shape[1:] == (channels, 8, 8)
    assert len(data.y_train) + len(data.y_test) == 10 and sorted(data.y_test.tolist()) == [0, 1]


def test_image_folder_limit_takes_a_subset(tmp_path):
    data = load_image_folder(write_image_folder(tmp_path / "pets"), image_size=4, limit=6)
    assert len(data.y_train) + len(data.y_test) == 6


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist; expected .*<class name>"):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="is not an image folder"):
        load_image_folder(tmp_path / "empty")
    one = write_image_folder(tmp_path / "one", classes=("only",))
    with pytest.raises(DataError, match="a classifier needs at least 2"):
        load_image_folder(one)
    assert load_image_folder(write_image_folder(tmp_path / "ok"), image_size=4).num_classes == 2


# --- torchvision sets from a local root ----------------------------------------------------------------------

def write_idx(raw, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    """The uncompressed MNIST idx files torchvision reads (magic 2051 images, 2049 labels)."""
    raw.mkdir(parents=True, exist_ok=True)
    n, rows, cols = images.shape
    (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, rows, cols) + images.tobytes())
    (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.tobytes())


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")],
                         ids=["mnist", "fashion-mnist"])
def test_mnist_family_loads_from_local_idx_files(tmp_path, name, folder):
    rng = np.random.default_rng(0)
    raw = tmp_path / folder / "raw"
    train = rng.integers(0, 256, (12, 28, 28), dtype=np.uint8)
    write_idx(raw, "train", train, (np.arange(12) % 10).astype(np.uint8))
    write_idx(raw, "t10k", rng.integers(0, 256, (5, 28, 28), dtype=np.uint8), np.arange(5, dtype=np.uint8))
    data = load_torchvision(name, tmp_path)
    assert data.x_train.shape == (12, 1, 28, 28) and data.x_test.shape == (5, 1, 28, 28)
    assert data.y_train.tolist() == (np.arange(12) % 10).tolist() and data.num_classes == 10
    expected = torch.tensor(train[3], dtype=torch.float32) / 255
    assert torch.corrcoef(torch.stack([data.x_train[3, 0].flatten(), expected.flatten()]))[0, 1] > 0.9999
    small = load_torchvision(name, tmp_path, image_size=14, limit=4)
    assert small.x_train.shape == (4, 1, 14, 14) and small.x_test.shape == (4, 1, 14, 14)


def test_cifar10_loads_from_local_batches(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)   # md5s of the real files
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), "labels": [1, 7]}
        (base / name).write_bytes(pickle.dumps(batch))
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    data = dx.load_dataset("cifar10", root=tmp_path)
    assert data.x_train.shape == (10, 3, 32, 32) and data.x_test.shape == (2, 3, 32, 32)
    assert data.classes[7] == "c7" and data.y_test.tolist() == [1, 7]


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10"], ids=["mnist", "fashion-mnist", "cifar10"])
def test_missing_torchvision_files_say_where_and_never_download(tmp_path, name, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr("urllib.request.urlopen", no_network)
    (tmp_path / "root").mkdir()
    with pytest.raises(DataError, match="not found in .*pass download=True") as info:
        load_torchvision(name, tmp_path / "root")
    assert str(tmp_path / "root") in str(info.value)
    with pytest.raises(DataError, match="does not exist"):
        load_torchvision(name, tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()


# --- by name ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,options,message", [
    ("imagenet", {}, "unknown dataset 'imagenet'"),
    ("folder", {}, "reads from disk: give its root folder"),
    ("mnist", {}, "reads from disk: give its root folder"),
    ("digits", {"colour": True}, "bad option for dataset 'digits'"),
    ("digits", {"upsample": 0}, "upsample must be a positive integer"),
], ids=["unknown", "folder-no-root", "mnist-no-root", "bad-option", "bad-upsample"])
def test_load_dataset_errors(name, options, message):
    with pytest.raises(DataError, match=message) as info:
        dx.load_dataset(name, **options)
    assert isinstance(info.value, dx.DiagnosticsError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("name", ["digits", "signals1d", "synthetic"], ids=["digits", "signals1d", "synthetic"])
def test_offline_datasets_by_name(name):
    data = dx.load_dataset(name, seed=0)
    assert data.name == name and name in DATASETS
    assert data.info()["train"] == len(data.y_train) and data.x_train.dtype == torch.float32
