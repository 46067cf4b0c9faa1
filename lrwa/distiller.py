"""The adversarial DFKD engine: one object that owns a run's trainable state.

Data flows one way: teacher -> generator -> pseudo samples -> replay ->
student update (acquire / joint / meta) -> per-epoch metric dict. Each
iteration is `generator_steps` generator updates, then `student_steps`
student updates on fresh batches, then (every `insert_every` iterations) the
newest samples go into the replay scheme. The engine is plain PyTorch and
knows nothing of Ray: a data-parallel adapter passes `average_gradients` (an
all-reduce) and a per-worker `stream` index for the noise seed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from lrwa.config import DistillConfig
from lrwa.data import DatasetSpec
from lrwa.errors import LrwaError
from lrwa.generator import Generator
from lrwa.losses import GeneratorLossWeights, generator_loss, student_loss
from lrwa.models import build_model
from lrwa.probes import ProbeSets, parse_probe_epochs
from lrwa.replay import build_replay
from lrwa.seeding import capture_rng_state, restore_rng_state, seed_everything
from lrwa.student_update import Batch, UpdateRule, apply_gradient, student_gradient
from lrwa.teacher import accuracy, freeze

GradientAverager = Callable[[list[Tensor]], None]
PROBE_STREAM = 1 << 20  # offsets the probe sets' seed from every worker's noise stream


class NonFiniteLoss(LrwaError):
    """A loss became NaN or infinite: the engine stops, naming where."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise LrwaError("device 'cuda' was asked for but no CUDA GPU is visible")
    return torch.device(name)


def _no_averaging(gradients: list[Tensor]) -> None:
    del gradients


class Distiller:
    def __init__(self, config: DistillConfig, teacher: nn.Module, spec: DatasetSpec,
                 eval_images: Tensor, eval_labels: Tensor, device: torch.device | None = None,
                 average_gradients: GradientAverager = _no_averaging, stream: int = 0,
                 inner_average: Callable[[list[Tensor]], list[Tensor]] | None = None) -> None:
        self.config = config
        self.device = device or resolve_device(config.device)
        self.spec = spec
        # Every worker builds identical initial weights from the run's seed, then draws its
        # own noise and replay indices from stream `stream` (0 for a single process).
        seed_everything(config.seed)
        self.teacher = freeze(teacher.to(self.device))
        self.student = build_model(config.student, spec.channels, spec.image_size,
                                   spec.num_classes).to(self.device)
        self.generator = Generator(config.latent_dim, spec.channels, spec.image_size,
                                   width=config.generator_width,
                                   style=config.generator_arch).to(self.device)
        if config.channels_last:
            # NHWC weights make the generator's images NHWC too, so every convolution of the
            # step runs in the layout GPU tensor cores want; the arithmetic is the same.
            for model in (self.teacher, self.student, self.generator):
                model.to(memory_format=torch.channels_last)
        self.student_optimizer = torch.optim.SGD(
            self.student.parameters(), lr=config.student_lr, momentum=config.momentum,
            weight_decay=config.weight_decay)
        self.generator_optimizer = torch.optim.Adam(
            self.generator.parameters(), lr=config.generator_lr,
            betas=(config.generator_beta1, 0.999))
        self.noise = torch.Generator(device=self.device).manual_seed(config.seed + stream)
        self.replay = build_replay(
            config, (spec.channels, spec.image_size, spec.image_size), self.teacher,
            device=self.device, seed=config.seed + stream)
        autocast = torch.bfloat16 if config.bf16 and self.device.type == "cuda" else None
        self.rule = UpdateRule(
            mode=config.mode, loss=student_loss(config.student_loss, config.kl_temperature),
            alpha=config.alpha, inner_weight_decay=config.inner_weight_decay,
            first_order=config.first_order, detach_inner=config.detach_inner,
            replay_loss=config.replay_loss, autocast_dtype=autocast, inner_average=inner_average)
        self.generator_objective = generator_loss(config.generator_loss)
        self.generator_weights = GeneratorLossWeights(
            config.weight_onehot, config.weight_entropy, config.weight_activation,
            config.weight_adversarial, config.js_temperature)
        self.average_gradients = average_gradients
        self.eval_images = eval_images
        self.eval_labels = eval_labels
        self.epoch = 0       # epochs completed
        self.iteration = 0   # iterations completed, over the whole run
        self.step = 0        # student steps completed, over the whole run
        self.history: list[dict[str, Any]] = []
        self.teacher_acc = accuracy(self.teacher, eval_images, eval_labels)
        # A stream of its own, so drawing probe sets leaves training's draws alone.
        self.probes = ProbeSets(parse_probe_epochs(config.probe_epochs), config.probe_size,
                                self.device, seed=config.seed + stream + PROBE_STREAM)

    def _set_student_lr(self) -> None:
        """The schedule is a pure function of the epoch, so resume needs no scheduler state."""
        factor = 1.0
        if self.config.schedule == "cosine":
            factor = 0.5 * (1.0 + math.cos(math.pi * self.epoch / self.config.epochs))
        for group in self.student_optimizer.param_groups:
            group["lr"] = self.config.student_lr * factor

    # -- one iteration, top to bottom -------------------------------------------------------

    def _fresh_images(self) -> Tensor:
        with torch.no_grad():
            latent = self.generator.sample_latent(self.config.batch_size, self.noise, self.device)
            return self.generator(latent)

    def _check_finite(self, name: str, value: Tensor) -> None:
        if not torch.isfinite(value):
            raise NonFiniteLoss(f"non-finite {name} at epoch {self.epoch + 1}, iteration "
                                f"{self.iteration + 1} (student step {self.step + 1})")

    def generator_step(self) -> Tensor:
        latent = self.generator.sample_latent(self.config.batch_size, self.noise, self.device)
        images = self.generator(latent)
        teacher_logits, teacher_features = self.teacher.forward_with_features(images)
        loss = self.generator_objective(teacher_logits, teacher_features, self.student(images),
                                        self.generator_weights)
        self._check_finite("loss_gen", loss.detach())
        parameters = list(self.generator.parameters())
        gradients = list(torch.autograd.grad(loss, parameters))
        self.average_gradients(gradients)
        for parameter, gradient in zip(parameters, gradients):
            parameter.grad = gradient
        self.generator_optimizer.step()
        return loss.detach()

    def student_step(self, probe_cosine: bool) -> tuple[Tensor, Any]:
        fresh_images = self._fresh_images()
        replay_count = self.config.replay_batch_size
        replayed_images = (self.replay.sample(replay_count)
                           if self.replay.can_sample(replay_count) else None)
        with torch.no_grad():
            # One teacher pass for both batches: the teacher is in eval mode, so concatenating
            # changes nothing but the number of kernel launches.
            inputs = (fresh_images if replayed_images is None
                      else torch.cat([fresh_images, replayed_images]))
            targets = self.teacher(inputs)
        fresh = Batch(fresh_images, targets[:len(fresh_images)])
        replayed = (None if replayed_images is None
                    else Batch(replayed_images, targets[len(fresh_images):]))
        result = student_gradient(self.student, self.rule, fresh, replayed, probe_cosine)
        self._check_finite("loss_acq", result.loss_acq)
        if result.loss_ret is not None:
            self._check_finite("loss_ret", result.loss_ret)
        self.average_gradients(result.gradients)
        apply_gradient(self.student, result.gradients)
        self.student_optimizer.step()
        return fresh_images, result

    def _offer_to_replay(self, fresh_images: Tensor, student_step: int) -> None:
        """Fresh samples for the replay scheme, at the cadence its authors used.

        Generative replay: one VAE step on the fresh batch of each of the first
        `vae_steps_per_iteration` student steps of an iteration (LRA). A memory bank: the
        newest samples of an iteration's last student step, every `insert_every` iterations
        from iteration 0, unless it inserts per epoch (the end of `train_epoch`)."""
        config = self.config
        if config.replay == "generative":
            if student_step < config.vae_steps_per_iteration:
                self.replay.add(fresh_images.detach())
        elif (config.insert_every_epochs == 0 and student_step == config.student_steps - 1
              and self.iteration % config.insert_every == 0):
            self.replay.add(fresh_images[:config.samples_per_insertion].detach())

    def train_epoch(self) -> dict[str, Any]:
        """One epoch of iterations; returns the epoch's training metrics."""
        config = self.config
        self._set_student_lr()
        self.student.train()
        self.generator.train()
        sums = {"loss_gen": 0.0, "loss_acq": 0.0, "loss_ret": 0.0, "grad_cos": 0.0}
        counts = dict.fromkeys(sums, 0)
        started = time.perf_counter()

        def generator_steps() -> None:
            for _ in range(config.generator_steps):
                sums["loss_gen"] += self.generator_step().item()
                counts["loss_gen"] += 1

        for _ in range(config.iters_per_epoch):
            if config.step_order == "generator-first":
                generator_steps()
            for student_step in range(config.student_steps):
                probe = config.grad_cos_every > 0 and self.step % config.grad_cos_every == 0
                fresh_images, result = self.student_step(probe)
                self.step += 1
                sums["loss_acq"] += result.loss_acq.item()
                counts["loss_acq"] += 1
                if result.loss_ret is not None:
                    sums["loss_ret"] += result.loss_ret.item()
                    counts["loss_ret"] += 1
                if result.grad_cos is not None:
                    sums["grad_cos"] += result.grad_cos.item()
                    counts["grad_cos"] += 1
                self._offer_to_replay(fresh_images, student_step)
            if config.step_order == "student-first":
                generator_steps()
            self.iteration += 1
        # MB-DFKD as LRA runs it stores the epoch's last fresh batch after epochs 1, 6, 11...
        if (config.replay == "memory" and config.insert_every_epochs
                and self.epoch % config.insert_every_epochs == 0):
            self.replay.add(fresh_images[:config.samples_per_insertion].detach())
        train_seconds = time.perf_counter() - started
        self.epoch += 1
        fresh_samples = config.iters_per_epoch * config.student_steps * config.batch_size
        metrics = {name: sums[name] / counts[name] if counts[name] else math.nan
                   for name in sums}
        return {"epoch": self.epoch, **metrics, "buffer_fill": self.replay.fill(),
                "samples_per_s": fresh_samples / train_seconds, "train_s": train_seconds,
                # The rate this epoch ran at under the schedule; `lr`, not `student_lr`, so a
                # study that searches student_lr keeps both in one table.
                "lr": self.student_optimizer.param_groups[0]["lr"]}

    def evaluate(self) -> float:
        return accuracy(self.student, self.eval_images, self.eval_labels)

    def epochs(self) -> Iterator[dict[str, Any]]:
        """Train to `config.epochs`, yielding one metric dict per completed epoch."""
        while self.epoch < self.config.epochs:
            started = time.perf_counter()
            row = self.train_epoch()
            evaluate = self.epoch % self.config.eval_every == 0 or self.epoch == self.config.epochs
            row["test_acc"] = self.evaluate() if evaluate else math.nan
            row.update(self.probes.after_epoch(self.epoch, self.generator, self.teacher,
                                               self.student))
            row["wall_s"] = time.perf_counter() - started
            self.history.append(row)
            yield row

    # -- resume ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "student": self.student.state_dict(),
            "generator": self.generator.state_dict(),
            "student_optimizer": self.student_optimizer.state_dict(),
            "generator_optimizer": self.generator_optimizer.state_dict(),
            "replay": self.replay.state_dict(),
            "noise": self.noise.get_state(),
            "rng": capture_rng_state(),
            "epoch": self.epoch,
            "iteration": self.iteration,
            "step": self.step,
            "history": [dict(row) for row in self.history],
            "probes": self.probes.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.student.load_state_dict(state["student"])
        self.generator.load_state_dict(state["generator"])
        self.student_optimizer.load_state_dict(state["student_optimizer"])
        self.generator_optimizer.load_state_dict(state["generator_optimizer"])
        self.replay.load_state_dict(state["replay"])
        self.noise.set_state(state["noise"])
        restore_rng_state(state["rng"])
        self.epoch = state["epoch"]
        self.iteration = state["iteration"]
        self.step = state["step"]
        self.history = [dict(row) for row in state["history"]]
        self.probes.load_state_dict(state.get("probes"))
