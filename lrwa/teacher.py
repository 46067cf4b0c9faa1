"""Teachers: the per-dataset training recipe, safe checkpoints, and the embedded default.

A teacher checkpoint is a dict {"format", "metadata", "state_dict"} written
with `torch.save`, where metadata records the architecture, data set, image
shape, normalisation, test accuracy, lrwa version and seed. Loading always
goes through `torch.load(weights_only=True)`, so a file that would run code
when unpickled is refused before anything in it runs. A plain state_dict from
another project loads when the caller names its architecture and data set.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

import lrwa
from lrwa.atomic import write_with
from lrwa.data import DatasetSpec, dataset_spec, load_split
from lrwa.errors import LrwaError
from lrwa.losses import kl_logits
from lrwa.models import build_model
from lrwa.seeding import seed_everything

CHECKPOINT_FORMAT = "lrwa-teacher/1"


@dataclass(frozen=True)
class TeacherRecipe:
    """How a teacher is trained on one data set: SGD with momentum, one-cycle schedule.

    `threads` pins torch's CPU threads while training (None leaves them as they are).
    """

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    momentum: float = 0.9
    threads: int | None = None


# The CIFAR/SVHN recipes are the usual 200-epoch SGD ones (CIFAR-10 ResNet-34 about 95%,
# CIFAR-100 about 78%). mnist5k is the embedded teacher every quickstart trains first: the
# cheapest recipe measured to clear 98% test accuracy on each of ten seeds (98.1-98.7%; 10
# epochs miss on one seed; benchmarks/teacher_mnist5k.py), about 9 s of one core. One
# thread, because LeNet-5's small batches gain little from a second one and two threads on
# a busy machine wait for each other (the 30-epoch recipe took 200-430 s on two threads
# there, 36 s on one); and then the weights do not depend on the machine's core count.
RECIPES: dict[str, TeacherRecipe] = {
    "mnist5k": TeacherRecipe(epochs=12, batch_size=32, lr=0.05, weight_decay=5e-4, threads=1),
    "digits": TeacherRecipe(epochs=40, batch_size=32, lr=0.05, weight_decay=5e-4),
    "cifar10": TeacherRecipe(epochs=200, batch_size=128, lr=0.1, weight_decay=5e-4),
    "cifar100": TeacherRecipe(epochs=200, batch_size=128, lr=0.1, weight_decay=5e-4),
    "svhn": TeacherRecipe(epochs=40, batch_size=128, lr=0.05, weight_decay=5e-4),
}

DEFAULT_TEACHER = {"dataset": "mnist5k", "arch": "lenet5", "seed": 0}


@dataclass
class Teacher:
    model: nn.Module
    metadata: dict[str, Any]

    @property
    def spec(self) -> DatasetSpec:
        return dataset_spec(self.metadata["dataset"])


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and no gradients: the teacher is a fixed function during distillation."""
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             batch_size: int = 1024) -> float:
    """Top-1 accuracy in [0, 1], in eval mode; the model's mode is restored afterwards."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for start in range(0, len(images), batch_size):
        logits = model(images[start:start + batch_size].to(device))
        correct += (logits.argmax(1).cpu() == labels[start:start + batch_size]).sum().item()
    model.train(was_training)
    return correct / max(1, len(images))


def evaluate_on_split(model: nn.Module, dataset: str, split: str = "test",
                      data_root: str | None = None) -> float:
    images, labels = load_split(dataset, split, data_root=data_root).tensors()
    return accuracy(model, images, labels)


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run the block on `count` CPU threads (None: unchanged), then restore the caller's."""
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_teacher(dataset: str, arch: str, epochs: int | None = None, seed: int = 0,
                  data_root: str | None = None, download: bool = False,
                  device: str = "cpu", progress: bool = True,
                  kd_teacher: nn.Module | None = None, kd_temperature: float = 4.0,
                  recipe: TeacherRecipe | None = None) -> Teacher:
    """Train `arch` on the real training split with the data set's recipe (or `recipe`).

    With `kd_teacher`, the targets are that model's soft labels (KL at `kd_temperature`)
    instead of the true labels: knowledge distillation with real data, the upper bound a
    data-free method is measured against.
    """
    spec = dataset_spec(dataset)
    recipe = RECIPES[dataset] if recipe is None else recipe
    epochs = recipe.epochs if epochs is None else epochs
    if epochs < 1:
        raise LrwaError(f"--epochs must be at least 1, got {epochs}")
    if kd_teacher is not None:
        kd_teacher = freeze(kd_teacher.to(device))
    started = time.perf_counter()
    with torch_threads(recipe.threads):
        seed_everything(seed)
        train = load_split(dataset, "train", data_root=data_root, download=download,
                           augment=True)
        model = build_model(arch, spec.channels, spec.image_size, spec.num_classes).to(device)
        loader = DataLoader(train, batch_size=recipe.batch_size, shuffle=True, drop_last=True,
                            generator=torch.Generator().manual_seed(seed))
        _fit(model, loader, recipe, epochs, device, progress, kd_teacher, kd_temperature,
             started)
        test_accuracy = evaluate_on_split(model, dataset, "test", data_root)
    metadata = {
        "arch": arch, "dataset": dataset, "num_classes": spec.num_classes,
        "channels": spec.channels, "image_size": spec.image_size,
        "mean": list(spec.mean), "std": list(spec.std), "test_acc": test_accuracy,
        "lrwa_version": lrwa.__version__, "seed": seed, "epochs": epochs,
        "recipe": asdict(recipe), "train_seconds": time.perf_counter() - started,
    }
    if kd_teacher is not None:
        metadata["kd_temperature"] = kd_temperature
    return Teacher(model.cpu(), metadata)


def _fit(model: nn.Module, loader: DataLoader, recipe: TeacherRecipe, epochs: int, device: str,
         progress: bool, kd_teacher: nn.Module | None, kd_temperature: float,
         started: float) -> None:
    """The recipe's optimisation: SGD with Nesterov momentum under a one-cycle schedule.

    Progress lines count from `started`, the start of `train_teacher` (data loading
    included), so the last one agrees with the `train_seconds` the teacher records.
    """
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                weight_decay=recipe.weight_decay, nesterov=True)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.lr, epochs=epochs,
                                                   steps_per_epoch=len(loader))
    loss_function = nn.CrossEntropyLoss(label_smoothing=0.05)
    for epoch in range(epochs):
        model.train()
        for images, labels in loader:
            optimizer.zero_grad(set_to_none=True)
            images = images.to(device)
            if kd_teacher is None:
                loss = loss_function(model(images), labels.to(device))
            else:
                with torch.no_grad():
                    targets = kd_teacher(images)
                loss = kl_logits(model(images), targets, kd_temperature)
            loss.backward()
            optimizer.step()
            schedule.step()
        if progress:
            print(f"teacher epoch {epoch + 1}/{epochs}  loss {loss.item():.3f}  "
                  f"{time.perf_counter() - started:.0f}s", flush=True)


def save_teacher(teacher: Teacher, path: str | Path) -> None:
    payload = {"format": CHECKPOINT_FORMAT, "metadata": teacher.metadata,
               "state_dict": teacher.model.state_dict()}
    # torch.save to a file name turns a full disk into "RuntimeError: unexpected pos";
    # writing to a stream keeps the OSError, which lrwa reports in one line.
    write_with(path, lambda stream: torch.save(payload, stream))


def _read_checkpoint(path: Path) -> Any:
    if not path.exists():
        raise LrwaError(f"teacher file {path} does not exist")
    if not path.is_file():
        raise LrwaError(f"teacher file {path} is not a file")
    if path.stat().st_size == 0:
        raise LrwaError(f"teacher file {path} is empty")
    try:
        with warnings.catch_warnings():
            # torch warns about foreign pickle protocols; the user gets our one line instead.
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # weights_only refuses any global it does not know before calling it; torch words
        # this "Unsupported global: GLOBAL io.open" or "unsupported GLOBAL posix.system".
        refused = re.search(r"GLOBAL ([\w.]+)", str(error))
        if refused:
            raise LrwaError(f"teacher file {path} refused: unpickling it would call "
                            f"{refused.group(1)}; lrwa loads only plain state_dicts") from None
        raise LrwaError(f"teacher file {path} is not a readable PyTorch checkpoint "
                        "(corrupt, or not written by torch.save)") from None
    except Exception:  # noqa: BLE001 - the legacy loader fails on garbage with any type
        raise LrwaError(f"teacher file {path} is not a readable PyTorch checkpoint "
                        "(corrupt or truncated)") from None


def _check_fits(path: Path, metadata: dict[str, Any], spec: DatasetSpec) -> None:
    """Refuse a teacher whose recorded input/output shape differs from the data set's."""
    for key, expected in (("channels", spec.channels), ("image_size", spec.image_size),
                          ("num_classes", spec.num_classes)):
        found = metadata.get(key)
        if found is not None and found != expected:
            raise LrwaError(f"teacher file {path} has {key}={found} but dataset "
                            f"'{spec.name}' has {key}={expected}")


def _check_weights(path: Path, state_dict: dict[str, torch.Tensor]) -> None:
    """Refuse weights that would load but poison every loss downstream: NaN or inf.

    Sparse and meta tensors are refused first, since they hold no dense values to check.
    """
    for name, tensor in state_dict.items():
        if tensor.is_meta or tensor.layout != torch.strided:
            kind = "meta" if tensor.is_meta else str(tensor.layout).removeprefix("torch.")
            raise LrwaError(f"teacher file {path} holds a {kind} tensor in {name!r}; "
                            "lrwa loads only dense weights")
        if tensor.is_floating_point() or tensor.is_complex():
            bad = tensor.numel() - int(torch.isfinite(tensor).sum())
            if bad:
                raise LrwaError(f"teacher file {path} has non-finite weights (NaN or inf): "
                                f"{bad} of {tensor.numel()} values in {name!r}")


def load_teacher(path: str | Path, arch: str | None = None,
                 dataset: str | None = None) -> Teacher:
    """Load an lrwa teacher checkpoint, or a plain state_dict given `arch` and `dataset`."""
    path = Path(path)
    loaded = _read_checkpoint(path)
    if not isinstance(loaded, dict):
        raise LrwaError(f"teacher file {path} holds a {type(loaded).__name__}, not a state_dict")
    if loaded.get("format") == CHECKPOINT_FORMAT:
        metadata = loaded.get("metadata")
        if not isinstance(metadata, dict):
            metadata = {}
        missing = [key for key in ("arch", "dataset") if key not in metadata]
        missing += [] if "state_dict" in loaded else ["state_dict"]
        if missing:
            raise LrwaError(f"teacher file {path} is a damaged lrwa checkpoint "
                            f"(missing {', '.join(missing)})")
        metadata = dict(metadata)
        state_dict = loaded["state_dict"]
        for key, named in (("arch", arch), ("dataset", dataset)):
            if named is not None and named != metadata[key]:
                raise LrwaError(f"teacher file {path} records {key} '{metadata[key]}', "
                                f"not '{named}'")
    else:
        if arch is None or dataset is None:
            raise LrwaError(f"teacher file {path} is a plain state_dict: name its "
                            "architecture and dataset (--teacher-arch, --dataset)")
        spec = dataset_spec(dataset)
        state_dict = loaded.get("state_dict", loaded)
        metadata = {"arch": arch, "dataset": dataset, "num_classes": spec.num_classes,
                    "channels": spec.channels, "image_size": spec.image_size,
                    "mean": list(spec.mean), "std": list(spec.std), "test_acc": None}
    spec = dataset_spec(metadata["dataset"])
    _check_fits(path, metadata, spec)
    model = build_model(metadata["arch"], spec.channels, spec.image_size, spec.num_classes)
    if not isinstance(state_dict, dict) or not all(
            isinstance(value, torch.Tensor) for value in state_dict.values()):
        raise LrwaError(f"teacher file {path} is not a state_dict of tensors")
    _check_weights(path, state_dict)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as error:
        first = str(error).split("\n\t")[1] if "\n\t" in str(error) else str(error)[:160]
        raise LrwaError(f"teacher file {path} does not fit {metadata['arch']} for "
                        f"'{spec.name}': {first.strip()}") from None
    return Teacher(model, metadata)


def cache_dir() -> Path:
    """The user's cache folder for lrwa ($LRWA_CACHE_DIR, else $XDG_CACHE_HOME/lrwa)."""
    configured = os.environ.get("LRWA_CACHE_DIR")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lrwa"


def default_teacher_path() -> Path:
    """Where the embedded teacher is cached; the key covers everything that determines the
    weights, so changing the recipe or lrwa's version trains a fresh teacher."""
    dataset, arch = DEFAULT_TEACHER["dataset"], DEFAULT_TEACHER["arch"]
    key_source = json.dumps({**DEFAULT_TEACHER, "recipe": asdict(RECIPES[dataset]),
                             "version": lrwa.__version__}, sort_keys=True)
    key = hashlib.sha256(key_source.encode()).hexdigest()[:12]
    return cache_dir() / "teachers" / f"{dataset}-{arch}-{key}.pt"


def default_teacher(progress: bool = True) -> Teacher:
    """The embedded mnist5k LeNet-5 teacher: trained once, then read from the cache."""
    dataset, arch = DEFAULT_TEACHER["dataset"], DEFAULT_TEACHER["arch"]
    path = default_teacher_path()
    if path.is_file():
        try:
            return load_teacher(path)
        except LrwaError:
            pass  # a damaged cache entry is rebuilt, never trusted
    if progress:
        print(f"training the embedded {dataset} {arch} teacher once (cached at {path})",
              flush=True)
    teacher = train_teacher(dataset, arch, seed=DEFAULT_TEACHER["seed"], progress=progress)
    save_teacher(teacher, path)
    return teacher
