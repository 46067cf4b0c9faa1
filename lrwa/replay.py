"""Replay of past pseudo samples for the student's retention loss (docs/method.md).

One interface, `ReplayScheme` (`add`, `sample`, `can_sample`, `fill`,
`state_dict`, `load_state_dict`), and three schemes behind it, chosen by name
in `build_replay`:

- `NoReplay`: nothing is kept; acquisition-only runs.
- `MemoryBank` (MB-DFKD): a fixed-capacity store of past samples, FIFO or
  reservoir insertion, kept on the CPU as float16.
- `GenerativeReplay` (PRE-DFKD): a VAE trained online on fresh samples plus
  its own replays, sampled in place of a stored bank.

Every random decision a scheme makes comes from its own seeded
`torch.Generator`, whose state is part of `state_dict()`, so a resumed run
replays exactly the samples an uninterrupted one would have.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lrwa.config import DistillConfig
from lrwa.errors import LrwaError
from lrwa.losses import negative_entropy, onehot_loss
from lrwa.vae import VAE, kl_to_standard_normal

INSERTIONS = ("fifo", "reservoir")
SAMPLINGS = ("uniform", "slot")
REPLAY_KINDS = ("none", "memory", "generative")


class ReplayScheme(Protocol):
    device: torch.device

    def add(self, images: Tensor) -> None:
        """Offer a batch (N, C, H, W) of fresh pseudo samples, on any device."""
        ...

    def sample(self, count: int) -> Tensor:
        """`count` replayed samples, (count, C, H, W) float32 on `self.device`."""
        ...

    def can_sample(self, count: int) -> bool:
        """Whether `sample(count)` would succeed now."""
        ...

    def fill(self) -> float:
        """How full the scheme is, 0..1, for logging."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def _check_kind(state: dict[str, Any], kind: str) -> None:
    found = state.get("kind")
    if found != kind:
        raise LrwaError(f"replay state is for '{found}' replay, not '{kind}'")


class NoReplay:
    """The absence of replay: nothing is stored and nothing can be sampled."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)

    def add(self, images: Tensor) -> None:
        del images  # nothing is kept

    def sample(self, count: int) -> Tensor:
        raise RuntimeError("NoReplay cannot sample; check can_sample() first")

    def can_sample(self, count: int) -> bool:
        return False

    def fill(self) -> float:
        return 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "none"}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_kind(state, "none")


class MemoryBank:
    """A fixed-capacity bank of past samples (MB-DFKD).

    Rows live in one preallocated float16 CPU tensor: half the memory of
    float32 and none of the accelerator's, and the samples are standardised
    pseudo images whose values float16 holds to about three significant digits.
    `sample` moves only the chosen rows to `device`.

    Insertion "fifo" is a ring buffer (the newest `capacity` samples survive);
    "reservoir" is Vitter's algorithm R, so the bank is a uniform sample of
    every sample ever offered, whatever the length of the run.

    Sampling "uniform": `sample(count)` draws rows without replacement when the
    bank holds at least `count` rows and with replacement otherwise: early in a
    run the bank may hold fewer rows than one replayed batch, and a smaller
    retention batch would change the loss's scale, so rows are repeated instead.

    Sampling "slot" is MB-DFKD's bank as LRA runs it: the bank is a cyclic
    buffer of capacity / slot_size slots, each insertion fills one slot with
    exactly `slot_size` samples (FIFO), and `sample` returns one whole stored
    slot chosen uniformly at random: every replayed batch is the samples of one
    time point.
    """

    def __init__(self, capacity: int, image_shape: tuple[int, int, int], insertion: str = "fifo",
                 device: torch.device | str = "cpu", seed: int = 0, sampling: str = "uniform",
                 slot_size: int = 1) -> None:
        if capacity < 1:
            raise LrwaError(f"memory bank capacity must be at least 1, got {capacity}")
        if insertion not in INSERTIONS:
            raise LrwaError(f"unknown insertion '{insertion}' (choose from: "
                            f"{', '.join(INSERTIONS)})")
        if sampling not in SAMPLINGS:
            raise LrwaError(f"unknown replay sampling '{sampling}' (choose from: "
                            f"{', '.join(SAMPLINGS)})")
        if sampling == "slot" and (insertion != "fifo" or slot_size < 1
                                   or capacity % slot_size):
            raise LrwaError(f"slot sampling needs FIFO insertion and a capacity that is a "
                            f"whole number of slots; got {insertion}, capacity {capacity}, "
                            f"slot {slot_size}")
        if len(image_shape) != 3 or min(image_shape) < 1:
            raise LrwaError(f"image shape must be (channels, height, width), got {image_shape}")
        self.capacity = capacity
        self.image_shape = tuple(int(size) for size in image_shape)
        self.insertion = insertion
        self.sampling = sampling
        self.slot_size = slot_size
        self.device = torch.device(device)
        self.images = torch.zeros((capacity, *self.image_shape), dtype=torch.float16)
        self.stored = 0     # filled rows, always the first `stored` slots
        self.position = 0   # fifo: the slot the next sample overwrites
        self.seen = 0       # every sample ever offered (reservoir's denominator)
        # The bank's own CPU generator: indices are drawn where the rows live.
        self.rng = torch.Generator(device="cpu")
        self.rng.manual_seed(seed)

    def add(self, images: Tensor) -> None:
        if images.dim() != 4 or tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(f"expected images of shape (N, {', '.join(map(str, self.image_shape))})"
                             f", got {tuple(images.shape)}")
        rows = images.detach().to(device="cpu", dtype=torch.float16)
        if rows.shape[0] == 0:
            return
        if self.sampling == "slot" and rows.shape[0] != self.slot_size:
            raise ValueError(f"a slot holds exactly {self.slot_size} samples, got {rows.shape[0]}")
        if self.insertion == "fifo":
            self._add_fifo(rows)
        else:
            self._add_reservoir(rows)

    def _add_fifo(self, rows: Tensor) -> None:
        count = rows.shape[0]
        # Of a batch longer than the bank only its last `capacity` rows would survive.
        kept = rows[-self.capacity:]
        start = self.position + count - kept.shape[0]
        slots = (start + torch.arange(kept.shape[0])) % self.capacity
        self.images[slots] = kept
        self.position = (self.position + count) % self.capacity
        self.stored = min(self.capacity, self.stored + count)
        self.seen += count

    def _add_reservoir(self, rows: Tensor) -> None:
        count = rows.shape[0]
        # The first `capacity` samples ever offered fill the empty slots in order.
        direct = min(count, self.capacity - self.stored)
        if direct > 0:
            self.images[self.stored:self.stored + direct] = rows[:direct]
            self.stored += direct
        rest = count - direct
        if rest > 0:
            # Sample number t (0-based) replaces slot j ~ U{0..t} when j < capacity.
            # float64 draws keep floor(u * (t + 1)) uniform for any realistic t (< 2**53).
            t = torch.arange(self.seen + direct, self.seen + count, dtype=torch.float64)
            uniform = torch.rand(rest, generator=self.rng, dtype=torch.float64)
            slots = torch.floor(uniform * (t + 1)).to(torch.int64)
            accepted = slots < self.capacity
            slots, sources = slots[accepted], torch.nonzero(accepted).squeeze(1) + direct
            if slots.numel():
                # Within one batch a later sample that lands on the same slot wins, as in
                # the sequential algorithm; indexed assignment with duplicates does not
                # guarantee that order, so keep only each slot's last writer.
                last = torch.full((self.capacity,), -1, dtype=torch.int64)
                last.scatter_reduce_(0, slots, sources, reduce="amax")
                winners = torch.nonzero(last >= 0).squeeze(1)
                self.images[winners] = rows[last[winners]]
        self.seen += count

    def sample(self, count: int) -> Tensor:
        if self.stored == 0:
            raise RuntimeError("the memory bank is empty; check can_sample() first")
        if self.sampling == "slot":
            if count != self.slot_size:
                raise ValueError(f"slot sampling returns whole slots of {self.slot_size}, "
                                 f"not {count}")
            slot = int(torch.randint(self.stored // self.slot_size, (1,), generator=self.rng))
            start = slot * self.slot_size
            return self.images[start:start + self.slot_size].to(self.device).float()
        if count <= self.stored:
            indices = torch.randperm(self.stored, generator=self.rng)[:count]
        else:
            indices = torch.randint(self.stored, (count,), generator=self.rng)
        # Index on the CPU, move the float16 rows, widen on the device: half the transfer.
        return self.images[indices].to(self.device).float()

    def can_sample(self, count: int) -> bool:
        return self.stored > 0 and count >= 0

    def fill(self) -> float:
        return self.stored / self.capacity

    def contents(self) -> Tensor:
        """The stored rows as float16 on the CPU; for fifo, oldest first."""
        if self.insertion == "fifo" and self.stored == self.capacity:
            return self.images.roll(-self.position, dims=0)
        return self.images[:self.stored].clone()

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": "memory",
            "capacity": self.capacity,
            "image_shape": list(self.image_shape),
            "insertion": self.insertion,
            # Only the filled rows; clone so the saved storage is not the whole bank.
            "images": self.images[:self.stored].clone(),
            "stored": self.stored,
            "position": self.position,
            "seen": self.seen,
            "rng": self.rng.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_kind(state, "memory")
        if int(state["capacity"]) != self.capacity:
            raise LrwaError(f"memory bank capacity mismatch: the state holds {state['capacity']}, "
                            f"this bank {self.capacity}")
        shape = tuple(int(size) for size in state["image_shape"])
        if shape != self.image_shape:
            raise LrwaError(f"memory bank image shape mismatch: the state holds {shape}, "
                            f"this bank {self.image_shape}")
        if state["insertion"] != self.insertion:
            raise LrwaError(f"memory bank insertion mismatch: the state holds "
                            f"'{state['insertion']}', this bank '{self.insertion}'")
        stored = int(state["stored"])
        self.images.zero_()
        self.images[:stored] = state["images"].to(device="cpu", dtype=torch.float16)
        self.stored = stored
        self.position = int(state["position"])
        self.seen = int(state["seen"])
        self.rng.set_state(state["rng"].cpu())


class GenerativeReplay:
    """PRE-DFKD's generative replay, trained as LRA's code trains it (docs/method.md).

    A VAE (`lrwa.vae`: the authors' encoder, and their MemoryGenerator as decoder) learns
    the stream of pseudo samples. The distiller calls `add` with the fresh batch of each of
    the first `steps_per_iteration` student steps of every iteration; each call is one Adam
    step (encoder and decoder at `lr`, LRA's lr_G/40) on the first `fresh_count` fresh
    samples (batch/2) plus `replay_count` memory samples (batch/8) decoded from latents
    tuned as in `sample`. Until the VAE has trained through one iteration it reconstructs
    the fresh samples alone (LRA: only at epoch 0, iteration 0). The loss is L1
    reconstruction + L1 between the teacher's outputs on the reconstruction and on the
    input + `kl_weight` x KL(q(z|x) || N(0, I)).

    LRA's code also leaves the gradient of its latent-tuning loss (taken with the decoder
    in train mode) in the decoder's `.grad` when it steps the decoder; lrwa adds that
    gradient to the decoder's step in the same way, so the step is theirs.

    `sample(count)`: `count` latents z ~ N(0, I) take one Adam step (lr `latent_lr`, LRA's
    lr_G, from a fresh optimiser) on oh x CE(teacher, its argmax) + ie x sum p log10 p of
    the batch-mean teacher softmax + MSE(batch variance of z, 1) + MSE(batch mean of z, 0),
    with the decoder in eval mode; the decoded tuned latents are the samples. As in LRA,
    the student replays from the first step, from the untrained decoder if it must.

    The teacher is only read: it must already be in eval mode, and gradients are taken with
    respect to the VAE's parameters and the latents alone, so the teacher's parameters get
    no `.grad` and its BatchNorm statistics do not move.
    """

    def __init__(self, vae: VAE, teacher: nn.Module, lr: float = 5e-4, kl_weight: float = 1e-5,
                 replay_count: int = 64, fresh_count: int = 256, latent_lr: float = 0.02,
                 weight_onehot: float = 1.0, weight_entropy: float = 5.0,
                 steps_per_iteration: int = 4, device: torch.device | str = "cpu",
                 seed: int = 0) -> None:
        if replay_count < 1:
            raise LrwaError(f"replay_count must be at least 1, got {replay_count}")
        if fresh_count < 1:
            raise LrwaError(f"fresh_count must be at least 1, got {fresh_count}")
        self.device = torch.device(device)
        self.vae = vae.to(self.device)
        self.teacher = teacher
        self.kl_weight = kl_weight
        self.replay_count = replay_count
        self.fresh_count = fresh_count
        self.latent_lr = latent_lr
        self.weight_onehot = weight_onehot
        self.weight_entropy = weight_entropy
        self.steps_per_iteration = steps_per_iteration
        # LRA keeps one Adam for the encoder and one for the decoder at the same settings;
        # Adam's update is per parameter, so one optimiser over both is the same step.
        self.optimizer = torch.optim.Adam(self.vae.parameters(), lr=lr)
        self.steps = 0
        self.last_losses: dict[str, float] = {}
        # On the VAE's device: latent codes and reparameterisation noise are drawn there.
        self.rng = torch.Generator(device=self.device)
        self.rng.manual_seed(seed)

    def _check_teacher(self) -> None:
        if self.teacher.training:
            # A teacher in train mode would move its BatchNorm statistics on every VAE step.
            raise RuntimeError("GenerativeReplay needs the teacher in eval mode")

    def latent_tuning_loss(self, z: Tensor) -> Tensor:
        """The loss one Adam step on the latents lowers: confident, balanced teacher outputs
        on the decoded samples, and a batch of latents with mean 0 and variance 1."""
        logits = self.teacher(self.vae.decode(z))
        match = (self.weight_onehot * onehot_loss(logits)
                 + self.weight_entropy * negative_entropy(logits, torch.log10))
        moments = (F.mse_loss(torch.var(z, dim=0), torch.ones_like(z[0]))
                   + F.mse_loss(torch.mean(z, dim=0), torch.zeros_like(z[0])))
        return match + moments

    def _tuned_latents(self, count: int, decoder_gradient: bool) -> tuple[Tensor, list[Tensor]]:
        """Latents after their one Adam step, and (when asked) the tuning loss's gradient
        with respect to the decoder's parameters."""
        z = torch.randn(count, self.vae.latent_dim, generator=self.rng, device=self.device)
        z.requires_grad_(True)
        decoder_params = list(self.vae.decoder.parameters()) if decoder_gradient else []
        with torch.enable_grad():
            gradients = torch.autograd.grad(self.latent_tuning_loss(z), [z, *decoder_params])
        z.grad = gradients[0]
        torch.optim.Adam([z], lr=self.latent_lr).step()
        return z.detach(), list(gradients[1:])

    def add(self, images: Tensor) -> None:
        self._check_teacher()
        fresh = images.detach()[:self.fresh_count].to(device=self.device, dtype=torch.float32)
        self.vae.train()
        decoder_params = list(self.vae.decoder.parameters())
        tuning_gradients: list[Tensor] | None = None
        if self.steps >= self.steps_per_iteration:
            z, tuning_gradients = self._tuned_latents(self.replay_count, decoder_gradient=True)
            with torch.no_grad():
                fresh = torch.cat([fresh, self.vae.decode(z)])
        reconstruction, mu, logvar = self.vae(fresh, self.rng)
        with torch.no_grad():
            target_logits = self.teacher(fresh)
        reconstruction_loss = F.l1_loss(reconstruction, fresh)
        logit_loss = F.l1_loss(self.teacher(reconstruction), target_logits)
        kl = kl_to_standard_normal(mu, logvar)
        loss = reconstruction_loss + logit_loss + self.kl_weight * kl
        encoder_params = list(self.vae.encoder.parameters())
        # autograd.grad, not backward(): the teacher's parameters must never collect .grad.
        grads = torch.autograd.grad(loss, encoder_params + decoder_params)
        if tuning_gradients is not None:
            grads = (*grads[:len(encoder_params)],
                     *(g + t for g, t in zip(grads[len(encoder_params):], tuning_gradients)))
        self.optimizer.zero_grad(set_to_none=True)
        for param, grad in zip(encoder_params + decoder_params, grads):
            param.grad = grad
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps += 1
        self.last_losses = {"reconstruction": reconstruction_loss.item(),
                            "logits": logit_loss.item(), "kl": kl.item()}

    def sample(self, count: int) -> Tensor:
        self._check_teacher()
        was_training = self.vae.training
        # Eval mode: BatchNorm uses running statistics, so a sample does not depend on
        # the rest of its batch and leaves the VAE's state untouched.
        self.vae.eval()
        try:
            z, _ = self._tuned_latents(count, decoder_gradient=False)
            with torch.no_grad():
                return self.vae.decode(z).float()
        finally:
            self.vae.train(was_training)

    def reconstruction_error(self, images: Tensor) -> float:
        """Mean L1 between images and their eval-mode reconstructions from the posterior mean.

        Decoding the mean draws no noise, so measuring does not advance the scheme's RNG.
        """
        was_training = self.vae.training
        self.vae.eval()
        try:
            with torch.no_grad():
                x = images.detach().to(device=self.device, dtype=torch.float32)
                mu, _ = self.vae.encode(x)
                return F.l1_loss(self.vae.decode(mu), x).item()
        finally:
            self.vae.train(was_training)

    def can_sample(self, count: int) -> bool:
        return count >= 0

    def fill(self) -> float:
        return 1.0 if self.steps > 0 else 0.0

    def state_dict(self) -> dict[str, Any]:
        # Like nn.Module.state_dict, the VAE and optimiser entries reference live tensors:
        # save them before training on.
        return {
            "kind": "generative",
            "vae": self.vae.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "steps": self.steps,
            "rng": self.rng.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_kind(state, "generative")
        try:
            self.vae.load_state_dict(state["vae"])
        except RuntimeError as error:
            # torch lists every mismatch on its own line; the first one names the problem.
            lines = [line.strip() for line in str(error).strip().splitlines()]
            detail = lines[1] if len(lines) > 1 else lines[0]
            raise LrwaError(f"replay VAE state does not fit this VAE: {detail}") from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps = int(state["steps"])
        self.rng.set_state(state["rng"].cpu())


def build_replay(config: DistillConfig, image_shape: tuple[int, int, int], teacher: nn.Module,
                 device: torch.device | str, seed: int) -> ReplayScheme:
    """The replay scheme `config.replay` names, with the settings of `config` it uses."""
    if config.replay == "none":
        return NoReplay(device)
    if config.replay == "memory":
        return MemoryBank(config.bank_capacity, image_shape, config.insertion, device=device,
                          seed=seed, sampling=config.replay_sampling,
                          slot_size=config.samples_per_insertion)
    if config.replay == "generative":
        channels, height, width = image_shape
        if height != width:
            raise LrwaError(f"generative replay needs square images, got {height}x{width}")
        vae = VAE(config.vae_latent_dim, channels, height, width=config.generator_width)
        return GenerativeReplay(
            vae, teacher, lr=config.vae_lr, kl_weight=config.vae_kl_weight,
            replay_count=config.replay_batch_size, fresh_count=max(1, config.batch_size // 2),
            latent_lr=config.generator_lr, weight_onehot=config.weight_onehot,
            weight_entropy=config.weight_entropy,
            steps_per_iteration=config.vae_steps_per_iteration, device=device, seed=seed)
    raise LrwaError(f"unknown replay '{config.replay}' (choose from: {', '.join(REPLAY_KINDS)})")
