"""Frozen probe sets: retention measured directly, as a forgetting curve.

At the end of each epoch listed in `probe_epochs` the engine draws `probe_size` pseudo
samples from the generator as it is then, labels them with the teacher's argmax, and keeps
them. After every epoch it reports the student's agreement with the teacher on every probe
set drawn so far (`probe_agree_e<k>`, a fraction; NaN before epoch k): how much of what the
student could do on epoch k's samples it still can. A retention method should keep these
curves flat where a forgetting student's fall.

Drawing a probe set never changes training: its latents come from a generator of its own,
and the generator's BatchNorm statistics are put back after the draw, so a run with probes
trains exactly as one without.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from lrwa.errors import LrwaError

MAX_PROBE_SETS = 16
PREFIX = "probe_agree_e"  # + the epoch its set was drawn at: one metric column per set


def parse_probe_epochs(text: str) -> tuple[int, ...]:
    """'1,5,10,20' -> (1, 5, 10, 20): positive, increasing, at most MAX_PROBE_SETS."""
    if not text.strip():
        return ()
    try:
        epochs = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise LrwaError(f"config key 'probe_epochs' is {text!r}; give epochs separated by "
                        "commas, e.g. '1,5,10,20'") from None
    if (any(epoch < 1 for epoch in epochs) or list(epochs) != sorted(set(epochs))
            or len(epochs) > MAX_PROBE_SETS):
        raise LrwaError(f"config key 'probe_epochs' is {text!r}; epochs must be positive and "
                        f"increasing, at most {MAX_PROBE_SETS} of them")
    return epochs


def column(epoch: int) -> str:
    return f"{PREFIX}{epoch}"


def columns_in(names: Any) -> list[str]:
    """The probe columns among `names`, in the order of their epochs."""
    return sorted({name for name in names if str(name).startswith(PREFIX)},
                  key=lambda name: int(name[len(PREFIX):]))


def agreement(student: nn.Module, images: Tensor, labels: Tensor) -> float:
    """Fraction of `images` on which the student's argmax equals `labels` (eval mode)."""
    was_training = student.training
    student.eval()
    try:
        with torch.no_grad():
            return (student(images).argmax(dim=1) == labels).float().mean().item()
    finally:
        student.train(was_training)


class ProbeSets:
    """The probe sets of one run: drawn at the configured epochs, kept for the rest."""

    def __init__(self, epochs: tuple[int, ...], size: int, device: torch.device,
                 seed: int) -> None:
        self.epochs = epochs
        self.size = size
        self.sets: dict[int, tuple[Tensor, Tensor]] = {}
        self.rng = torch.Generator(device=device).manual_seed(seed)
        self.device = device

    def after_epoch(self, epoch: int, generator: nn.Module, teacher: nn.Module,
                    student: nn.Module) -> dict[str, float]:
        """Draw epoch `epoch`'s set if it is a probe epoch; the agreement on every set."""
        if self.size and epoch in self.epochs and epoch not in self.sets:
            self.sets[epoch] = self._draw(generator, teacher)
        return {column(k): (agreement(student, *self.sets[k]) if k in self.sets
                            else float("nan")) for k in self.epochs} if self.size else {}

    def _draw(self, generator: nn.Module, teacher: nn.Module) -> tuple[Tensor, Tensor]:
        # The samples training sees come from the generator in train mode (batch statistics);
        # that forward would also move its running statistics, so they are put back.
        saved = {name: buffer.clone() for name, buffer in generator.named_buffers()}
        try:
            with torch.no_grad():
                latent = generator.sample_latent(self.size, self.rng, self.device)
                images = generator(latent)
                labels = teacher(images).argmax(dim=1)
        finally:
            for name, buffer in generator.named_buffers():
                buffer.copy_(saved[name])
        return images.detach(), labels

    def state_dict(self) -> dict[str, Any]:
        return {"sets": {str(k): [images.cpu(), labels.cpu()]
                         for k, (images, labels) in self.sets.items()},
                "rng": self.rng.get_state()}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if not state:
            return  # a checkpoint from before probes existed: none were drawn
        self.sets = {int(k): (images.to(self.device), labels.to(self.device))
                     for k, (images, labels) in state["sets"].items()}
        self.rng.set_state(state["rng"].cpu())
