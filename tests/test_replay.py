"""Tests for the replay schemes: capacity, insertion order, reservoir uniformity, float16
storage, exact resume, and the generative-replay VAE (learning, frozen teacher, resume)."""

from __future__ import annotations

import io
import math
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lrwa.errors import LrwaError
from lrwa.replay import GenerativeReplay, MemoryBank, NoReplay, build_replay
from lrwa.vae import VAE

SHAPE = (1, 2, 2)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """These models are tiny, so intra-op threads only add overhead, and on a loaded machine
    their spin-waiting made the VAE tests ten times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def constant_images(values: range | list[int], shape: tuple[int, int, int] = SHAPE) -> torch.Tensor:
    """One image per value, every pixel equal to it: a row says which insertion it was."""
    return torch.tensor(list(values), dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, *shape)


def labels(rows: torch.Tensor) -> list[int]:
    return [int(v) for v in rows.float().flatten(1)[:, 0]]


def round_trip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


# ---------------------------------------------------------------- memory bank


@pytest.mark.parametrize("insertion", ["fifo", "reservoir"])
def test_capacity_never_exceeded_and_fill_rises_to_one(insertion: str) -> None:
    bank = MemoryBank(10, SHAPE, insertion)
    assert bank.fill() == 0.0 and not bank.can_sample(1)
    fills = []
    for start in range(0, 40, 3):
        bank.add(constant_images(range(start, start + 3)))
        fills.append(bank.fill())
        assert bank.stored <= 10 and bank.images.shape == (10, *SHAPE)
    assert fills[:3] == [0.3, 0.6, 0.9] and all(f == 1.0 for f in fills[3:])
    assert bank.seen == 42 and bank.can_sample(1)


def test_fifo_keeps_the_newest_samples_in_insertion_order() -> None:
    bank = MemoryBank(5, SHAPE, "fifo")
    bank.add(constant_images(range(3)))
    assert labels(bank.contents()) == [0, 1, 2]
    bank.add(constant_images(range(3, 7)))
    assert labels(bank.contents()) == [2, 3, 4, 5, 6]
    bank.add(constant_images(range(7, 19)))  # a batch longer than the bank
    assert labels(bank.contents()) == [14, 15, 16, 17, 18]
    bank.add(constant_images([19]))
    assert labels(bank.contents()) == [15, 16, 17, 18, 19]
    assert sorted(labels(bank.sample(5))) == [15, 16, 17, 18, 19]


def test_reservoir_survival_is_uniform_over_the_whole_history() -> None:
    capacity, batches = 5, [1, 3, 7, 2, 9, 4]  # uneven batches exercise the batched algorithm R
    seen = sum(batches)
    trials = 2000
    survived = torch.zeros(seen)
    for trial in range(trials):
        bank = MemoryBank(capacity, SHAPE, "reservoir", seed=trial)
        start = 0
        for size in batches:
            bank.add(constant_images(range(start, start + size)))
            start += size
        kept = labels(bank.contents())
        assert bank.stored == capacity and bank.seen == seen and len(set(kept)) == capacity
        survived[kept] += 1
    p = capacity / seen
    bound = 5 * math.sqrt(trials * p * (1 - p))  # 5 standard deviations of a binomial count
    assert (survived - trials * p).abs().max().item() < bound, survived.tolist()


def test_reservoir_keeps_the_first_samples_until_full() -> None:
    bank = MemoryBank(6, SHAPE, "reservoir")
    bank.add(constant_images(range(4)))
    bank.add(constant_images(range(4, 6)))
    assert labels(bank.contents()) == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("device", DEVICES)
def test_float16_storage_and_float32_samples(device: str) -> None:
    images = torch.randn(8, *SHAPE) * 3
    bank = MemoryBank(8, SHAPE, device=device)
    bank.add(images.to(device))
    assert bank.images.dtype == torch.float16 and bank.images.device.type == "cpu"
    drawn = bank.sample(8)
    assert drawn.dtype == torch.float32 and drawn.device.type == device
    expected = images.half().float()
    assert not torch.equal(expected, images)  # the rounding is real
    # Every sampled row is exactly one rounded input row.
    distances = torch.cdist(drawn.cpu().flatten(1), expected.flatten(1))
    assert (distances.min(dim=1).values == 0).all()
    assert torch.equal(bank.contents().float(), expected)


@pytest.mark.parametrize("insertion", ["fifo", "reservoir"])
def test_state_round_trip_restores_contents_and_rng(insertion: str) -> None:
    bank = MemoryBank(16, SHAPE, insertion, seed=3)
    for start in range(0, 40, 8):
        bank.add(constant_images(range(start, start + 8)))
    bank.sample(4)  # advance the RNG past its seed
    state = round_trip(bank.state_dict())
    fresh = MemoryBank(16, SHAPE, insertion, seed=99)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.contents(), bank.contents())
    assert (fresh.stored, fresh.position, fresh.seen) == (bank.stored, bank.position, bank.seen)
    for _ in range(5):
        assert torch.equal(fresh.sample(6), bank.sample(6))
    # Insertion decisions continue identically too.
    bank.add(constant_images(range(40, 48)))
    fresh.add(constant_images(range(40, 48)))
    assert torch.equal(fresh.contents(), bank.contents())


def test_state_saves_only_the_filled_rows() -> None:
    bank = MemoryBank(1000, SHAPE)
    bank.add(constant_images(range(3)))
    assert bank.state_dict()["images"].shape == (3, *SHAPE)


def test_state_mismatch_is_a_user_error() -> None:
    state = MemoryBank(8, SHAPE).state_dict()
    with pytest.raises(LrwaError, match="capacity"):
        MemoryBank(9, SHAPE).load_state_dict(state)
    with pytest.raises(LrwaError, match="image shape"):
        MemoryBank(8, (3, 2, 2)).load_state_dict(state)
    with pytest.raises(LrwaError, match="insertion"):
        MemoryBank(8, SHAPE, "reservoir").load_state_dict(state)


def test_sample_without_replacement_when_enough_rows() -> None:
    bank = MemoryBank(50, SHAPE, seed=1)
    bank.add(constant_images(range(30)))
    for count in (1, 10, 30):
        drawn = labels(bank.sample(count))
        assert len(drawn) == count and len(set(drawn)) == count
    # More than stored: rows repeat rather than the batch shrinking.
    drawn = labels(bank.sample(45))
    assert len(drawn) == 45 and set(drawn) <= set(range(30))


def test_empty_bank_and_no_replay() -> None:
    bank = MemoryBank(4, SHAPE)
    assert not bank.can_sample(1)
    with pytest.raises(RuntimeError):
        bank.sample(1)
    none = NoReplay()
    none.add(torch.randn(3, *SHAPE))
    assert not none.can_sample(1) and none.fill() == 0.0
    with pytest.raises(RuntimeError):
        none.sample(1)
    none.load_state_dict(round_trip(none.state_dict()))


def test_bad_arguments_are_user_errors() -> None:
    with pytest.raises(LrwaError, match="'lifo'.*fifo, reservoir"):
        MemoryBank(4, SHAPE, "lifo")
    with pytest.raises(LrwaError, match="capacity"):
        MemoryBank(0, SHAPE)
    with pytest.raises(LrwaError, match="'vae'.*none, memory, generative"):
        build_replay("vae", capacity=4, image_shape=SHAPE, insertion="fifo", teacher=nn.Identity(),
                     replay_count=1, vae_latent_dim=2, vae_lr=1e-3, vae_kl_weight=0.0,
                     device="cpu", seed=0)


BUILD = {"capacity": 4, "image_shape": (1, 8, 8), "insertion": "reservoir", "replay_count": 2,
         "vae_latent_dim": 4, "vae_lr": 1e-2, "vae_kl_weight": 1e-3, "device": "cpu", "seed": 5}


def test_build_replay_none_keeps_nothing() -> None:
    none = build_replay("none", teacher=tiny_teacher(), **BUILD)
    none.add(constant_images(range(10), (1, 8, 8)))
    assert not none.can_sample(1) and none.fill() == 0.0 and none.state_dict() == {"kind": "none"}


def test_build_replay_memory_is_the_bank_its_settings_describe() -> None:
    built = build_replay("memory", teacher=tiny_teacher(), **BUILD)
    direct = MemoryBank(4, (1, 8, 8), "reservoir", seed=5)
    for bank in (built, direct):
        bank.add(constant_images(range(10), (1, 8, 8)))
    # Seed 5's reservoir keeps neither FIFO's newest [6, 7, 8, 9] nor seed 0's choice.
    assert labels(built.contents()) == labels(direct.contents()) == [0, 5, 8, 4]
    assert torch.equal(built.sample(3), direct.sample(3))


def test_build_replay_generative_is_the_vae_its_settings_describe() -> None:
    teacher = tiny_teacher()
    torch.manual_seed(0)  # the VAE's initial weights come from torch's global RNG
    built = build_replay("generative", teacher=teacher, **BUILD)
    torch.manual_seed(0)
    direct = GenerativeReplay(VAE(4, 1, 8), teacher, lr=1e-2, kl_weight=1e-3, replay_count=2,
                              seed=5)
    # Two steps: the second also replays replay_count of the VAE's own samples. Any setting
    # not passed on (latent size, lr, KL weight, replay count, seed) changes the samples.
    for replay in (built, direct):
        replay.add(fixed_batch())
        replay.add(fixed_batch())
    assert torch.equal(built.sample(3), direct.sample(3))
    with pytest.raises(LrwaError, match="generative replay needs square images, got 8x6"):
        build_replay("generative", teacher=teacher, **{**BUILD, "image_shape": (1, 8, 6)})


# ---------------------------------------------------------------- generative replay


def tiny_teacher(channels: int = 1, size: int = 8) -> nn.Module:
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                            nn.Flatten(), nn.Linear(4 * size * size, 5))
    return teacher.eval()


def make_replay(seed: int = 0, teacher: nn.Module | None = None,
                device: str = "cpu") -> GenerativeReplay:
    torch.manual_seed(seed)
    teacher = (teacher or tiny_teacher()).to(device)
    return GenerativeReplay(VAE(8, 1, 8), teacher, lr=1e-3, replay_count=8, device=device,
                            seed=seed)


def fixed_batch() -> torch.Tensor:
    """Smooth standardised images: structured like pseudo samples, unlike white noise, which
    an 8-dimensional code cannot memorise in a few dozen steps."""
    generator = torch.Generator().manual_seed(0)
    coarse = torch.randn(16, 1, 3, 3, generator=generator)
    images = F.interpolate(coarse, size=8, mode="bilinear")
    return (images - images.mean()) / images.std()


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_vae_shapes(shape: tuple[int, int, int]) -> None:
    vae = VAE(6, shape[0], shape[1])
    x = torch.randn(3, *shape)
    reconstruction, mu, logvar = vae(x, torch.Generator().manual_seed(0))
    assert reconstruction.shape == x.shape and mu.shape == logvar.shape == (3, 6)
    with pytest.raises(LrwaError, match="divisible by 4"):
        VAE(6, shape[0], 30)


def test_vae_learns_a_fixed_batch_and_leaves_the_teacher_alone() -> None:
    teacher = tiny_teacher()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    replay = make_replay(teacher=teacher)
    assert not replay.can_sample(1) and replay.fill() == 0.0
    images = fixed_batch()
    start = replay.reconstruction_error(images)
    for _ in range(60):
        replay.add(images)
    end = replay.reconstruction_error(images)
    assert end < 0.7 * start, (start, end)
    assert replay.can_sample(4) and replay.fill() == 1.0
    drawn = replay.sample(4)
    assert drawn.shape == (4, 1, 8, 8) and drawn.dtype == torch.float32
    # Parameters and BatchNorm statistics untouched; no gradient ever reached the teacher.
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(p.grad is None for p in teacher.parameters())
    assert not teacher.training


def test_untrained_vae_cannot_sample_and_train_mode_teacher_is_refused() -> None:
    replay = make_replay()
    with pytest.raises(RuntimeError):
        replay.sample(1)
    replay.teacher.train()
    with pytest.raises(RuntimeError, match="eval mode"):
        replay.add(fixed_batch())


def test_schemes_leave_the_global_rng_alone() -> None:
    bank = MemoryBank(4, SHAPE, "reservoir")
    replay = make_replay()
    state = torch.get_rng_state()
    bank.add(constant_images(range(10)))
    bank.sample(3)
    replay.add(fixed_batch())
    replay.add(fixed_batch())
    replay.sample(3)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("device", DEVICES)
def test_generative_state_round_trip(device: str) -> None:
    replay = make_replay(seed=0, device=device)
    for _ in range(3):
        replay.add(fixed_batch())
    replay.sample(2)  # advance the RNG past its seed
    state = round_trip(replay.state_dict())
    fresh = make_replay(seed=1, device=device)
    fresh.load_state_dict(state)
    assert fresh.steps == replay.steps
    assert torch.equal(fresh.sample(5), replay.sample(5))
    # Optimiser moments and RNG restored: training continues identically.
    replay.add(fixed_batch())
    fresh.add(fixed_batch())
    assert torch.equal(fresh.sample(5), replay.sample(5))


def test_generative_state_for_another_vae_is_a_user_error() -> None:
    state = make_replay().state_dict()
    other = GenerativeReplay(VAE(4, 1, 8), tiny_teacher())
    with pytest.raises(LrwaError, match="does not fit"):
        other.load_state_dict(state)
