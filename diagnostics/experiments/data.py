"""Datasets for comparisons: bundled digits, generated 1-D signals, synthetic, image folders, torchvision sets."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError
from ..serving.roots import scan_files


@dataclass(frozen=True)
class DataSplit:
    """A dataset in memory, split into a training and a held-out part, normalised per channel.

    Inputs are float32 of shape (N, C, H, W) for images or (N, C, L) for signals, labels int64 of shape
    (N,). Normalisation statistics come from the training part only.
    """

    name: str
    x_train: torch.Tensor            # (N_train, C, H, W) or (N_train, C, L)
    y_train: torch.Tensor            # (N_train,)
    x_test: torch.Tensor             # (N_test, C, H, W) or (N_test, C, L)
    y_test: torch.Tensor             # (N_test,)
    classes: tuple[str, ...]
    description: str = ""

    @property
    def dims(self) -> int:
        """2 for images, 1 for signals."""
        return self.x_train.dim() - 2

    @property
    def in_channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def input_size(self) -> int:
        """H (= W) of images or L of signals."""
        return int(self.x_train.shape[-1])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def info(self) -> dict[str, Any]:
        """Plain-typed summary for run metadata."""
        return {"name": self.name, "train": int(len(self.y_train)), "test": int(len(self.y_test)),
                "shape": list(self.x_train.shape[1:]), "classes": len(self.classes),
                "description": self.description}


# --- helpers ------------------------------------------------------------------------------------------------

def _check_fraction(test_fraction: float) -> None:
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction}")


def split_indices(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded split: about ``test_fraction`` of every class goes to the held-out part.

    Args:
        labels: Integer labels of shape (N,).
        test_fraction: Share of each class held out, in (0, 1).
        seed: Seed of the shuffle (the same seed gives the same split).

    Returns:
        Sorted train and held-out indices into ``labels``.
    """
    _check_fraction(test_fraction)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        n_test = int(round(test_fraction * len(idx)))
        if len(idx) >= 2:
            n_test = min(max(n_test, 1), len(idx) - 1)      # at least one sample on each side
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _normalise(x_train: torch.Tensor, x_test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel standardisation with the training part's mean and std."""
    dims = [0, *range(2, x_train.dim())]
    mean = x_train.mean(dim=dims, keepdim=True)            # (1, C, 1[, 1])
    std = x_train.std(dim=dims, keepdim=True).clamp_min(1e-6)  # (1, C, 1[, 1])
    return (x_train - mean) / std, (x_test - mean) / std


def _resize(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """Bilinear resize of images (N, C, H, W) to (N, C, size, size); unchanged when ``size`` is None."""
    if size is None or (x.shape[-1] == size and x.shape[-2] == size):
        return x
    if size < 1:
        raise DataError(f"image_size must be a positive number of pixels, got {size}")
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)  # (N, C, size, size)


def _subset(n: int, limit: int | None, seed: int) -> np.ndarray:
    """Sorted seeded random subset of ``range(n)`` of at most ``limit`` indices (all when ``limit`` is None)."""
    if limit is None or limit >= n:
        return np.arange(n)
    if limit < 1:
        raise DataError(f"limit must be a positive number of samples, got {limit}")
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def _from_arrays(name: str, x: torch.Tensor, y: np.ndarray, classes: tuple[str, ...], *, test_fraction: float,
                 seed: int, description: str) -> DataSplit:
    train, test = split_indices(y, test_fraction, seed)
    y_t = torch.as_tensor(y, dtype=torch.int64)
    x_train, x_test = _normalise(x[train], x[test])
    return DataSplit(name, x_train.contiguous(), y_t[train], x_test.contiguous(), y_t[test], classes, description)


# --- bundled and generated data -------------------------------------------------------------------------------

def load_digits(*, seed: int = 0, test_fraction: float = 0.2, upsample: int = 1) -> DataSplit:
    """scikit-learn's bundled handwritten digits: 1,797 real 8×8 grey images of 0–9, nothing downloaded.

    Args:
        seed: Seed of the stratified train/held-out split.
        test_fraction: Share held out for accuracy.
        upsample: Integer factor of a bilinear upsampling (2 gives 16×16 images).
    """
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError:
        raise DataError("the digits dataset needs scikit-learn: pip install scikit-learn") from None
    if not isinstance(upsample, int) or upsample < 1:
        raise DataError(f"upsample must be a positive integer factor, got {upsample!r}")
    bunch = sklearn_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0   # (1797, 1, 8, 8) in [0, 1]
    if upsample > 1:
        x = F.interpolate(x, scale_factor=upsample, mode="bilinear", align_corners=False)  # (1797, 1, 8u, 8u)
    side = x.shape[-1]
    return _from_arrays("digits", x, np.asarray(bunch.target), tuple(str(i) for i in range(10)),
                        test_fraction=test_fraction, seed=seed,
                        description=f"scikit-learn handwritten digits, 1797 images {side}x{side}")


def _signal_templates(num_classes: int, width: int = 12) -> np.ndarray:
    """Fixed class templates (the same for every seed): smooth curves of length ``width``, unit peak."""
    rng = np.random.default_rng(20_240_101)
    t = np.linspace(0.0, 1.0, width)
    templates = []
    for _ in range(num_classes):
        # A few random bumps and a slope: distinct, smooth shapes in the spirit of MNIST-1D's digit templates.
        centres, scales, heights = rng.uniform(0, 1, 3), rng.uniform(0.08, 0.3, 3), rng.uniform(-1, 1, 3)
        curve = sum(h * np.exp(-0.5 * ((t - c) / s) ** 2) for c, s, h in zip(centres, scales, heights))
        curve = curve + rng.uniform(-0.5, 0.5) * (t - 0.5)
        templates.append(curve / np.abs(curve).max())
    return np.stack(templates)                                           # (classes, width)


def make_signals1d(n: int = 4000, *, length: int = 40, num_classes: int = 10, seed: int = 0,
                   test_fraction: float = 0.2) -> DataSplit:
    """A generated 1-D classification set in the style of MNIST-1D (Greydanus, 2020), for the Conv1d family.

    Every class has a fixed template (the same for every seed); each sample is its template padded, scaled
    in amplitude, stretched in time, sheared by a linear trend, shifted, and noised with correlated and white
    noise, then resampled to ``length`` points. Deterministic from ``seed``.

    Args:
        n: Number of samples in total.
        length: Points per signal (L).
        num_classes: Number of templates/classes (2–10).
        seed: Seed of the samples and the split.
        test_fraction: Share held out.
    """
    if not 2 <= num_classes <= 10:
        raise DataError(f"num_classes must be from 2 to 10, got {num_classes}")
    if n < 2 * num_classes or length < 8:
        raise DataError(f"need n >= 2 * num_classes and length >= 8; got n={n}, length={length}")
    rng = np.random.default_rng(seed)
    templates = _signal_templates(num_classes)                           # (classes, 12)
    labels = rng.integers(0, num_classes, size=n)                        # (n,)
    base = 36
    grid = np.linspace(0.0, 1.0, base)
    smooth = np.exp(-0.5 * (np.arange(-6, 7) / 2.0) ** 2)
    smooth /= smooth.sum()
    out = np.empty((n, length), dtype=np.float32)
    for i, label in enumerate(labels):
        padded = np.zeros(base)
        padded[12:24] = templates[label]                                 # template in the middle third
        stretch = rng.uniform(0.8, 1.25)
        shift = rng.uniform(-0.25, 0.25)
        src = (grid - 0.5) / stretch + 0.5 - shift                       # where each point reads from
        signal = np.interp(src, grid, padded, left=0.0, right=0.0) * rng.uniform(0.7, 1.3)
        signal += rng.uniform(-0.5, 0.5) * (grid - 0.5)                  # shear: a random linear trend
        signal += np.convolve(rng.normal(0, 0.25, base), smooth, mode="same")  # correlated noise
        signal += rng.normal(0, 0.05, base)                              # white noise
        out[i] = np.interp(np.linspace(0, 1, length), grid, signal)      # resample to (length,)
    x = torch.from_numpy(out).unsqueeze(1)                               # (n, 1, length)
    return _from_arrays("signals1d", x, labels, tuple(str(i) for i in range(num_classes)),
                        test_fraction=test_fraction, seed=seed,
                        description=f"generated MNIST-1D-style signals, {n} samples of length {length}")


def make_synthetic(n: int = 256, *, num_classes: int = 4, channels: int = 1, size: int = 8, dims: int = 2,
                   noise: float = 0.5, seed: int = 0, test_fraction: float = 0.25) -> DataSplit:
    """A small learnable synthetic set for tests: a random template per class plus Gaussian noise.

    Args:
        n: Samples in total.
        num_classes: Number of classes (>= 2).
        channels: Input channels (C).
        size: H = W for ``dims=2``, L for ``dims=1``.
        dims: 2 for images, 1 for signals.
        noise: Standard deviation of the noise added to the unit-variance templates.
        seed: Seed of templates, samples and split.
        test_fraction: Share held out.
    """
    if dims not in (1, 2):
        raise DataError(f"dims must be 1 or 2, got {dims}")
    if num_classes < 2 or n < 2 * num_classes:
        raise DataError(f"need num_classes >= 2 and n >= 2 * num_classes; got {num_classes}, n={n}")
    gen = torch.Generator().manual_seed(seed)
    shape = (channels, size, size) if dims == 2 else (channels, size)
    templates = torch.randn(num_classes, *shape, generator=gen)         # (classes, C, H, W) or (classes, C, L)
    labels = torch.arange(n) % num_classes                               # (n,) balanced
    x = templates[labels] + noise * torch.randn(n, *shape, generator=gen)  # (n, C, H, W) or (n, C, L)
    return _from_arrays("synthetic", x, labels.numpy(), tuple(str(i) for i in range(num_classes)),
                        test_fraction=test_fraction, seed=seed,
                        description=f"synthetic templates + noise, {n} samples {'x'.join(map(str, shape))}")


# --- data on disk ---------------------------------------------------------------------------------------------

def load_image_folder(root: str | os.PathLike[str], *, image_size: int = 32, grayscale: bool = False,
                      seed: int = 0, test_fraction: float = 0.2, limit: int | None = None) -> DataSplit:
    """Images in class sub-folders (``root/<class>/<image>``), in ``torchvision.datasets.ImageFolder``'s layout.

    The folder is walked within a budget (:func:`~diagnostics.serving.roots.scan_files`: entries and seconds),
    never through a folder symlink or a file symlink that leaves it; hidden files are skipped.

    Args:
        root: The folder holding one sub-folder per class.
        image_size: Every image is resized to ``image_size`` × ``image_size``.
        grayscale: Read as one channel instead of RGB.
        seed: Seed of the subset (``limit``) and the stratified split.
        test_fraction: Share held out.
        limit: Read at most this many images (a seeded random subset).
    """
    from torchvision import transforms
    from torchvision.datasets.folder import IMG_EXTENSIONS, default_loader

    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"image folder {path} does not exist; expected {path}/<class name>/<image files>")
    steps: list[Callable[..., Any]] = [transforms.Grayscale(1)] if grayscale else []
    transform = transforms.Compose([*steps, transforms.Resize((image_size, image_size)), transforms.ToTensor()])
    top = Path(os.path.realpath(path))
    samples = [(f, f.relative_to(top).parts[0]) for f in scan_files(top, IMG_EXTENSIONS)
               if len(f.relative_to(top).parts) > 1]               # bounded, no symlink out of the folder
    classes = sorted({label for _, label in samples})
    if not classes:
        raise DataError(f"{path} is not an image folder (no sub-folder holds image files); expected one "
                        "sub-folder per class holding image files (.png, .jpg, ...)")
    if len(classes) < 2:
        raise DataError(f"{path} has {len(classes)} class folder(s) holding images; a classifier needs at least "
                        "2, each a sub-folder of image files (.png, .jpg, ...)")
    index = {name: i for i, name in enumerate(classes)}
    picked = _subset(len(samples), limit, seed)
    images, labels = [], []
    for i in picked:
        file, label = samples[int(i)]
        try:
            image = transform(default_loader(str(file)))             # (C, image_size, image_size)
        except (OSError, ValueError) as exc:
            raise DataError(f"could not read image {file.relative_to(top)} ({exc})") from None
        images.append(image)
        labels.append(index[label])
    x = torch.stack(images)                                              # (N, C, image_size, image_size)
    return _from_arrays(f"folder:{path.name}", x, np.asarray(labels), tuple(classes),
                        test_fraction=test_fraction, seed=seed,
                        description=f"image folder {path}, {len(labels)} images resized to {image_size}")


#: torchvision datasets that load from a local root: name -> (class name, folder torchvision expects, files).
TORCHVISION_SETS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "mnist": ("MNIST", "MNIST/raw", ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                     "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")),
    "fashion-mnist": ("FashionMNIST", "FashionMNIST/raw",
                      ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                       "t10k-labels-idx1-ubyte")),
    "cifar10": ("CIFAR10", "cifar-10-batches-py", ("data_batch_1", "...", "data_batch_5", "test_batch",
                                                   "batches.meta")),
}


def load_torchvision(name: str, root: str | os.PathLike[str], *, download: bool = False,
                     image_size: int | None = None, limit: int | None = None, seed: int = 0) -> DataSplit:
    """MNIST, FashionMNIST or CIFAR-10 from a local root, with the official test set held out.

    Nothing is downloaded unless ``download=True`` (then torchvision fetches the files into ``root``).

    Args:
        name: ``"mnist"``, ``"fashion-mnist"`` or ``"cifar10"``.
        root: The folder that holds (or will hold) the dataset's own folder, e.g. ``root/MNIST/raw``.
        download: Fetch the files when they are missing (needs the network).
        image_size: Resize the images to this size (default: keep 28 or 32).
        limit: Keep at most this many training and this many test images (seeded random subsets).
        seed: Seed of the subsets.
    """
    from torchvision import datasets

    if name not in TORCHVISION_SETS:
        raise DataError(f"unknown torchvision dataset {name!r}; choose from {list(TORCHVISION_SETS)}")
    cls_name, folder, files = TORCHVISION_SETS[name]
    path = Path(root).expanduser()
    if not download and not path.is_dir():
        raise DataError(f"dataset root {path} does not exist; put {name} files in {path}/{folder}/ "
                        f"({', '.join(files)}) or pass download=True")
    cls = getattr(datasets, cls_name)
    parts = []
    for train in (True, False):
        try:
            ds = cls(str(path), train=train, download=download)
        except RuntimeError as exc:
            hint = "pass download=True to fetch it" if not download else "the download did not complete"
            raise DataError(f"{name} not found in {path} ({exc}); expected {path}/{folder}/ with "
                            f"{', '.join(files)}; {hint}") from None
        except OSError as exc:
            raise DataError(f"{name} could not be read or downloaded into {path} ({exc})") from None
        data = torch.as_tensor(np.asarray(ds.data))
        x = data.unsqueeze(1) if data.dim() == 3 else data.permute(0, 3, 1, 2)  # (N, C, H, W) uint8
        y = np.asarray(ds.targets, dtype=np.int64)
        keep = _subset(len(y), limit, seed + (0 if train else 1))
        x = _resize(x[torch.as_tensor(keep)].float() / 255.0, image_size)  # (N, C, S, S) in [0, 1]
        parts.append((x, torch.as_tensor(y[keep])))
        classes = tuple(str(c) for c in ds.classes)
    (x_train, y_train), (x_test, y_test) = parts
    x_train, x_test = _normalise(x_train, x_test)
    side = x_train.shape[-1]
    return DataSplit(name, x_train.contiguous(), y_train, x_test.contiguous(), y_test, classes,
                     f"torchvision {cls_name} from {path}, {len(y_train)}+{len(y_test)} images {side}x{side}")


# --- by name ----------------------------------------------------------------------------------------------

#: Dataset names understood by :func:`load_dataset` (``folder`` and the torchvision sets need ``root``).
DATASETS: tuple[str, ...] = ("digits", "signals1d", "synthetic", "folder", *TORCHVISION_SETS)


def load_dataset(name: str, *, root: str | os.PathLike[str] | None = None, seed: int = 0,
                 download: bool = False, **options: Any) -> DataSplit:
    """Load a dataset by name (see :data:`DATASETS`).

    Args:
        name: ``digits`` (default of the comparisons), ``signals1d``, ``synthetic``, ``folder`` or a
            torchvision set (``mnist``, ``fashion-mnist``, ``cifar10``).
        root: The folder for ``folder`` and the torchvision sets.
        seed: Seed of generation, subsets and split.
        download: Let torchvision fetch missing files.
        **options: Passed to the loader (``upsample``, ``image_size``, ``limit``, ``n``, ...).

    Raises:
        DataError: Unknown name, missing ``root``, missing files, wrong layout or a bad option.
    """
    loaders: dict[str, Callable[..., DataSplit]] = {
        "digits": load_digits, "signals1d": make_signals1d, "synthetic": make_synthetic}
    if name in loaders:
        return _call(name, loaders[name], seed=seed, **options)
    if name == "folder" or name in TORCHVISION_SETS:
        if root is None or not str(root).strip():
            raise DataError(f"dataset {name!r} reads from disk: give its root folder")
        if name == "folder":
            return _call(name, load_image_folder, root, seed=seed, **options)
        return _call(name, load_torchvision, name, root, download=download, seed=seed, **options)
    raise DataError(f"unknown dataset {name!r}; choose from {list(DATASETS)}")


def _call(name: str, loader: Callable[..., DataSplit], *args: Any, **kwargs: Any) -> DataSplit:
    """Call ``loader`` after checking that it accepts the options (a wrong option names itself)."""
    try:
        inspect.signature(loader).bind(*args, **kwargs)
    except TypeError as exc:
        raise DataError(f"bad option for dataset {name!r}: {exc}") from None
    return loader(*args, **kwargs)
