"""Tests for lrwa.data: bundled splits, readers for fake on-disk CIFAR/SVHN, and refusals.

Everything runs offline: CIFAR and SVHN are tiny fakes written in torchvision's on-disk
layout under tmp_path, and sockets are blocked so an accidental download fails loudly.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import socket
import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from lrwa import data
from lrwa.data import DATASETS, ImageDataset, dataset_spec, load_split
from lrwa.errors import LrwaError

# Protocol 4 as Python 3 writes it; protocols 2 and 5 have tests of their own.
PICKLE_PROTOCOL = 4


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("test tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# ---------------------------------------------------------------- helpers


def row_hashes(images: torch.Tensor | np.ndarray) -> set[bytes]:
    array = images.numpy() if isinstance(images, torch.Tensor) else images
    return {hashlib.sha1(np.ascontiguousarray(row).tobytes()).digest() for row in array}


def denormalise(x: torch.Tensor, ds: ImageDataset) -> torch.Tensor:
    mean = torch.tensor(ds.spec.mean).view(-1, 1, 1)
    std = torch.tensor(ds.spec.std).view(-1, 1, 1)
    return torch.round((x * std + mean) * 255).to(torch.uint8)


def fake_images(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)


def dump(path: Path, obj: object) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=PICKLE_PROTOCOL)


def write_fake_cifar10(root: Path, per_batch: int = 10, n_test: int = 10) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train_x, train_y = fake_images(rng, 5 * per_batch), rng.integers(0, 10, 5 * per_batch)
    for i in range(5):
        rows = slice(i * per_batch, (i + 1) * per_batch)
        batch = {
            b"batch_label": f"training batch {i + 1} of 5".encode(),
            b"labels": train_y[rows].tolist(),
            b"data": train_x[rows].reshape(per_batch, 3072),
            b"filenames": [b"x.png"] * per_batch,
        }
        dump(folder / f"data_batch_{i + 1}", batch)
    test_x, test_y = fake_images(rng, n_test), rng.integers(0, 10, n_test)
    dump(folder / "test_batch", {b"labels": test_y.tolist(), b"data": test_x.reshape(n_test, -1)})
    dump(folder / "batches.meta", {b"label_names": [b"c%d" % i for i in range(10)]})
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}


def write_fake_cifar100(root: Path, n_train: int = 60, n_test: int = 12) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x, fine = fake_images(rng, n), rng.integers(0, 100, n)
        entry = {
            b"filenames": [b"x.png"] * n,
            b"fine_labels": fine.tolist(),
            b"coarse_labels": (fine // 5).tolist(),
            b"data": x.reshape(n, 3072),
        }
        dump(folder / split, entry)
        out[f"{split}_x"], out[f"{split}_y"] = x, fine
    meta = {b"fine_label_names": [b"f%d" % i for i in range(100)]}
    meta[b"coarse_label_names"] = [b"c%d" % i for i in range(20)]
    dump(folder / "meta", meta)
    return out


def write_fake_svhn(root: Path, n_train: int = 30, n_test: int = 8) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = fake_images(rng, n)  # N, C, H, W
        y = rng.integers(1, 11, n)  # SVHN's labels are 1..10, with 10 meaning the digit 0
        y[0] = 10
        mat = {"X": x.transpose(2, 3, 1, 0), "y": y.reshape(n, 1).astype(np.uint8)}
        scipy.io.savemat(root / f"{split}_32x32.mat", mat)
        out[f"{split}_x"], out[f"{split}_y"] = x, np.where(y == 10, 0, y)
    return out


def python2_batch(images: np.ndarray, labels: list[int]) -> bytes:
    """A batch pickled the way the real (Python 2) files are: str keys, str array data,
    and the `numpy.core.multiarray` spelling. Python 3 cannot write this, so build opcodes."""

    def py2_str(b: bytes) -> bytes:  # BINSTRING: a Python 2 str, decoded via latin1
        return b"T" + struct.pack("<i", len(b)) + b

    def int32(v: int) -> bytes:
        return b"J" + struct.pack("<i", v)

    dtype = b"cnumpy\ndtype\n" + py2_str(b"u1") + b"K\x00K\x01\x87R"  # dtype('u1', 0, 1)
    dtype += b"(K\x03" + py2_str(b"|") + b"NNN" + int32(-1) + int32(-1) + b"K\x00tb"
    shape = b"(" + b"".join(int32(d) for d in images.shape) + b"t"
    array = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
    array += b"K\x00\x85" + py2_str(b"b") + b"\x87R"  # _reconstruct(ndarray, (0,), "b")
    array += b"(K\x01" + shape + dtype + b"\x89" + py2_str(images.tobytes()) + b"tb"
    label_list = b"](" + b"".join(b"K" + bytes([v]) for v in labels) + b"e"
    return b"\x80\x02}(" + py2_str(b"data") + array + py2_str(b"labels") + label_list + b"u."


WRITERS = {"cifar10": write_fake_cifar10, "cifar100": write_fake_cifar100, "svhn": write_fake_svhn}


# ---------------------------------------------------------------- normalisation statistics


def test_every_spec_normalises_each_of_its_channels() -> None:
    # A one-value mean would broadcast over three channels without an error.
    for spec in DATASETS.values():
        assert len(spec.mean) == len(spec.std) == spec.channels, spec.name


def test_digits_statistics_are_those_of_its_images() -> None:
    from sklearn.datasets import load_digits

    # All 1,797 images on lrwa's uint8 scale, in [0, 1]; population std.
    pixels = np.rint(load_digits().images * 255 / 16) / 255
    spec = dataset_spec("digits")
    assert spec.mean == pytest.approx((pixels.mean(),), abs=5e-5)
    assert spec.std == pytest.approx((pixels.std(),), abs=5e-5)


def test_cifar100_uses_its_own_statistics_not_cifar10s() -> None:
    # The paper's released code normalised CIFAR-100 with CIFAR-10's statistics. These are
    # the per-channel mean and std of CIFAR-100's 50,000 training images.
    spec = dataset_spec("cifar100")
    assert spec.mean == pytest.approx((0.5071, 0.4865, 0.4409), abs=2e-4)
    assert spec.std == pytest.approx((0.2673, 0.2564, 0.2762), abs=2e-4)


def test_unknown_dataset_and_split() -> None:
    with pytest.raises(LrwaError, match=r"unknown dataset 'imagenet'.*mnist5k"):
        dataset_spec("imagenet")
    with pytest.raises(LrwaError, match="unknown dataset 'imagenet'"):
        load_split("imagenet", "train")
    with pytest.raises(LrwaError, match=r"unknown split 'dev'.*train, val, test"):
        load_split("digits", "dev")


# ---------------------------------------------------------------- bundled data sets


@pytest.mark.parametrize(
    ("name", "sizes", "side"), [("mnist5k", (3500, 500, 1000), 28), ("digits", (1257, 180, 360), 8)]
)
def test_bundled_splits(name: str, sizes: tuple[int, int, int], side: int) -> None:
    splits = {s: load_split(name, s) for s in ("train", "val", "test")}
    assert tuple(len(ds) for ds in splits.values()) == sizes
    hashes = {s: row_hashes(ds.images) for s, ds in splits.items()}
    # Neither data set contains duplicate images, so distinct hashes mean distinct samples.
    assert tuple(len(h) for h in hashes.values()) == sizes
    assert not hashes["train"] & hashes["val"]
    assert not hashes["train"] & hashes["test"]
    assert not hashes["val"] & hashes["test"]
    for ds in splits.values():
        assert ds.images.dtype == torch.uint8 and ds.labels.dtype == torch.int64
        x, y = ds[0]
        assert x.shape == (1, side, side) and x.dtype == torch.float32
        assert torch.equal(x, ds.tensors()[0][0]) and (type(y), y) == (int, ds.labels[0].item())
    train = splits["train"]
    assert set(train.labels.tolist()) == set(range(10))
    x, y = train.tensors()
    assert x.shape == (sizes[0], 1, side, side) and y.dtype == torch.int64
    if name == "mnist5k":  # normalised with MNIST's own statistics: roughly standardised
        assert abs(x.mean().item()) < 0.05 and abs(x.std().item() - 1) < 0.05


def test_bundled_splits_are_deterministic() -> None:
    first = load_split("mnist5k", "val")
    data._load_bundled.cache_clear()  # re-parse from scratch: the split must not change
    second = load_split("mnist5k", "val")
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)


def test_cached_arrays_are_not_shared() -> None:
    ds = load_split("digits", "test")
    ds.images.zero_()
    assert load_split("digits", "test").images.any()


def test_digits_pixel_scale() -> None:
    from sklearn.datasets import load_digits

    raw = load_digits().images
    expected = set(np.rint(np.unique(raw) * 255 / 16).astype(int).tolist())
    ds = load_split("digits", "train")
    assert set(ds.images.unique().tolist()) <= expected and ds.images.max() == 255


def placements(original: torch.Tensor, augmented: torch.Tensor,
               padding: int) -> set[tuple[int, int, bool]]:
    """Every (dy, dx, mirrored) for which `original`, zero-padded by `padding`, cropped back
    to its size at offset (dy, dx) and mirrored left to right or not, is `augmented`."""
    side = original.shape[-1]
    padded = torch.nn.functional.pad(original, (padding,) * 4)
    found = set()
    for dy in range(-padding, padding + 1):
        for dx in range(-padding, padding + 1):
            crop = padded[:, padding + dy:padding + dy + side, padding + dx:padding + dx + side]
            for mirrored in (False, True):
                if torch.equal(crop.flip(-1) if mirrored else crop, augmented):
                    found.add((dy, dx, mirrored))
    return found


def test_digits_augmentation_is_a_seeded_shift_of_at_most_one_pixel() -> None:
    ds = load_split("digits", "train", augment=True)

    def draw() -> torch.Tensor:
        torch.manual_seed(0)
        return torch.stack([ds[i][0] for i in range(64)])

    first, second = draw(), draw()
    assert first.shape == (64, 1, 8, 8) and torch.equal(first, second)
    found = [placements(ds.images[i], denormalise(first[i], ds), padding=1) for i in range(64)]
    # Each is its image moved by at most 1 px with zeros shifted in, never mirrored: a
    # mirrored digit is not that digit.
    assert all(any(not mirrored for *_, mirrored in ways) for ways in found)
    # A shift is drawn from 9 of which 1 is none: about 57 of 64 move (53 under seed 0).
    assert sum((0, 0, False) not in ways for ways in found) >= 40


# ---------------------------------------------------------------- on-disk data sets


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn"])
def test_fake_dataset_round_trip(name: str, tmp_path: Path) -> None:
    truth = WRITERS[name](tmp_path)
    spec = dataset_spec(name)
    splits = {s: load_split(name, s, data_root=str(tmp_path)) for s in ("train", "val", "test")}
    n_train = len(truth["train_y"])
    assert len(splits["val"]) == n_train // 10  # fakes are below 50,000: 10% held out
    assert len(splits["train"]) + len(splits["val"]) == n_train
    assert len(splits["test"]) == len(truth["test_y"])
    for ds in splits.values():
        x, y = ds.tensors()
        assert x.shape == (len(ds), 3, 32, 32) and x.dtype == torch.float32
        assert y.min() >= 0 and y.max() < spec.num_classes
        assert ds[0][0].shape == (3, 32, 32)
    # The official test set keeps its order: image 0 comes back pixel for pixel.
    test = splits["test"]
    assert torch.equal(denormalise(test[0][0], test), torch.from_numpy(truth["test_x"][0]))
    assert test.labels.tolist() == truth["test_y"].tolist()
    # val and train partition the official train set, labels travelling with their images.
    train_hashes, val_hashes = row_hashes(splits["train"].images), row_hashes(splits["val"].images)
    assert not train_hashes & val_hashes
    assert train_hashes | val_hashes == row_hashes(truth["train_x"])
    by_hash = {
        hashlib.sha1(x.tobytes()).digest(): y
        for x, y in zip(truth["train_x"], truth["train_y"], strict=True)
    }
    val = splits["val"]
    for image, label in zip(val.images.numpy(), val.labels.tolist(), strict=True):
        assert by_hash[hashlib.sha1(image.tobytes()).digest()] == label
    # The held-out slice is fixed, whatever the caller's RNG state.
    np.random.seed(123)
    torch.manual_seed(123)
    again = load_split(name, "val", data_root=str(tmp_path))
    assert torch.equal(again.images, val.images)


def test_reads_python2_pickled_batch(tmp_path: Path) -> None:
    write_fake_cifar10(tmp_path)
    images = np.random.default_rng(4).integers(0, 256, size=(3, 3072), dtype=np.uint8)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(python2_batch(images, [3, 0, 9]))
    test = load_split("cifar10", "test", data_root=str(tmp_path))
    assert test.labels.tolist() == [3, 0, 9]
    assert torch.equal(test.images, torch.from_numpy(images.reshape(3, 3, 32, 32)))


@pytest.mark.parametrize("protocol", [2, 5])
def test_reads_a_batch_repickled_by_python3(tmp_path: Path, protocol: int) -> None:
    # Protocol 2 under Python 3 writes bytes as `_codecs.encode(text, "latin1")`; protocol 5
    # rebuilds arrays with numpy's `_frombuffer`. torchvision's plain pickle.load reads both.
    expected = write_fake_cifar10(tmp_path)
    batch = {b"labels": expected["test_y"].tolist(),
             b"data": expected["test_x"].reshape(len(expected["test_y"]), 3072)}
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(pickle.dumps(batch, protocol=protocol))
    assert (b"_codecs" in path.read_bytes()) == (protocol == 2)
    test = load_split("cifar10", "test", data_root=str(tmp_path))
    assert test.labels.tolist() == expected["test_y"].tolist()
    assert torch.equal(test.images, torch.from_numpy(expected["test_x"]))


class _EncodesOtherwise:
    """`_codecs.encode` with a codec other than latin1: not how any pickler writes bytes."""

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        import _codecs

        return (_codecs.encode, ("payload", "rot13"))


def test_codecs_encode_is_accepted_only_as_protocol_2_writes_bytes(tmp_path: Path) -> None:
    write_fake_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0],
                                   b"x": _EncodesOtherwise()}, protocol=2))
    with pytest.raises(LrwaError, match=r"refusing to unpickle _codecs.encode .*test_batch"):
        load_split("cifar10", "test", data_root=str(tmp_path))


def test_svhn_label_ten_is_zero(tmp_path: Path) -> None:
    write_fake_svhn(tmp_path)
    test = load_split("svhn", "test", data_root=str(tmp_path))
    assert test.labels[0] == 0 and test.labels.max() <= 9


@pytest.mark.parametrize(("name", "mirrors"), [("cifar10", True), ("svhn", False)])
def test_on_disk_augmentation_shifts_up_to_4_pixels_and_mirrors_only_cifar(
        name: str, mirrors: bool, tmp_path: Path) -> None:
    WRITERS[name](tmp_path)
    ds = load_split(name, "train", data_root=str(tmp_path), augment=True)
    torch.manual_seed(0)
    found = [placements(ds.images[i], denormalise(ds[i][0], ds), padding=4)
             for i in range(len(ds)) for _ in range(2)]
    # Random pixels: each augmented image has exactly one explanation.
    assert all(len(ways) == 1 for ways in found)
    ways = set().union(*found)
    assert len({(dy, dx) for dy, dx, _ in ways}) > 20  # of 81 shifts, from 54 or 90 draws
    assert {mirrored for *_, mirrored in ways} == ({False, True} if mirrors else {False})


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn"])
def test_missing_root(name: str) -> None:
    with pytest.raises(LrwaError, match=f"dataset '{name}' needs --data-root"):
        load_split(name, "train")


@pytest.mark.parametrize(
    ("name", "expected"),
    [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python"), ("svhn", "32x32.mat")],
)
def test_root_without_dataset(name: str, expected: str, tmp_path: Path) -> None:
    with pytest.raises(LrwaError) as info:
        load_split(name, "test", data_root=str(tmp_path))
    message = str(info.value)
    assert f"no {name} under {tmp_path}" in message and expected in message
    assert "--download" in message and "\n" not in message


def test_missing_batch_is_named(tmp_path: Path) -> None:
    write_fake_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(LrwaError, match="data_batch_3"):
        load_split("cifar10", "train", data_root=str(tmp_path))


def test_corrupt_files_are_named(tmp_path: Path) -> None:
    write_fake_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"\x80\x04garbage")
    with pytest.raises(LrwaError, match="test_batch"):
        load_split("cifar10", "test", data_root=str(tmp_path))
    write_fake_svhn(tmp_path / "svhn")
    (tmp_path / "svhn" / "test_32x32.mat").write_bytes(b"not a mat file" * 20)
    with pytest.raises(LrwaError, match=r"test_32x32\.mat"):
        load_split("svhn", "test", data_root=str(tmp_path / "svhn"))


def test_wrong_shaped_batch_is_refused(tmp_path: Path) -> None:
    write_fake_cifar10(tmp_path)
    bad = {b"data": np.zeros((4, 100), np.uint8), b"labels": [0, 1, 2, 3]}
    dump(tmp_path / "cifar-10-batches-py" / "test_batch", bad)
    with pytest.raises(LrwaError, match=r"test_batch.*3072"):
        load_split("cifar10", "test", data_root=str(tmp_path))


class _WritesMarker:
    """Unpickling this opens (so creates) a file: a stand-in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.marker, "w"))


class _RunsShell:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [2, PICKLE_PROTOCOL])
@pytest.mark.parametrize("payload", [_WritesMarker, _RunsShell])
def test_malicious_batch_is_refused(payload: type, tmp_path: Path, protocol: int) -> None:
    write_fake_cifar10(tmp_path / "root")
    # Sanity: the payload really does run under a plain pickle.load.
    armed = tmp_path / "armed"
    pickle.loads(pickle.dumps(payload(armed), protocol=PICKLE_PROTOCOL))
    assert armed.exists()

    marker = tmp_path / "pwned"
    evil = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1], b"x": payload(marker)}
    path = tmp_path / "root" / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(pickle.dumps(evil, protocol=protocol))
    with pytest.raises(LrwaError, match=r"refusing to unpickle .*test_batch: not a plain CIFAR"):
        load_split("cifar10", "test", data_root=str(tmp_path / "root"))
    assert not marker.exists()


# ---------------------------------------------------------------- downloads


def test_download_false_never_fetches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets.utils as tv_utils

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("download attempted")

    for helper in ("download_url", "download_and_extract_archive"):
        monkeypatch.setattr(tv_utils, helper, fail)
    for name in ("cifar10", "cifar100", "svhn"):
        with pytest.raises(LrwaError, match="--download"):
            load_split(name, "train", data_root=str(tmp_path))


def test_download_svhn_uses_torchvision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets.utils as tv_utils
    from torchvision.datasets import SVHN

    calls = []

    def fake_download_url(url: str, root: str, filename: str, md5: str) -> None:
        calls.append((url, filename, md5))
        write_fake_svhn(Path(root))

    monkeypatch.setattr(tv_utils, "download_url", fake_download_url)
    ds = load_split("svhn", "test", data_root=str(tmp_path / "new"), download=True)
    assert len(ds) == 8
    assert calls == [tuple(SVHN.split_list["test"])]


def test_download_failure_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets.utils as tv_utils

    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("network is unreachable\nsecond line")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", offline)
    with pytest.raises(LrwaError, match="could not download cifar10") as info:
        load_split("cifar10", "train", data_root=str(tmp_path), download=True)
    assert "\n" not in str(info.value)
