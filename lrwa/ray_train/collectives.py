"""The collectives that make N workers one data-parallel run: gradient and metric averaging.

Plain `torch.distributed`, no Ray: these run inside the workers' process group (gloo on
CPU, NCCL on GPU) and are what the Distiller's hooks call.

- `average_in_place` is the Distiller's `average_gradients`: the generator's and the
  student's gradients are averaged before each optimiser step, so every worker takes
  the same step from the same weights and the replicas never drift apart.
- `differentiable_average` is `UpdateRule.inner_average`: grad L_acq is averaged before
  theta' is formed, so every worker adapts with the global batch's gradient. In the
  second-order meta step theta' stays a function of theta through this average, so it
  must be autograd-aware: `torch.distributed.nn.functional.all_reduce`, whose backward
  is itself an all-reduce of the incoming gradients. With it, each worker's outer
  gradient is that of L_ret^k(theta - alpha (mean_j grad L_acq^j + wd theta)); their mean
  is exactly the single-process gradient on the concatenated batch (for a model
  without BatchNorm). DistributedDataParallel is not used: it does not support the
  double backward of the meta step.

Each call flattens the list into one buffer, so a step costs one all-reduce, not one
per parameter tensor.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

# Averaged over workers; the others are either per-worker facts (buffer_fill, student_lr)
# or recomputed for the whole run (samples_per_s, train_s).
AVERAGED_METRICS = ("loss_gen", "loss_acq", "loss_ret", "grad_cos")


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _flatten(tensors: list[Tensor]) -> Tensor:
    return torch.cat([tensor.reshape(-1) for tensor in tensors])


def average_in_place(tensors: list[Tensor]) -> None:
    """Replace every tensor by its mean over the workers (one all-reduce)."""
    workers = world_size()
    if workers == 1 or not tensors:
        return
    flat = _flatten([tensor.detach() for tensor in tensors])
    dist.all_reduce(flat)
    flat /= workers
    for tensor, piece in zip(tensors, flat.split([t.numel() for t in tensors])):
        tensor.detach().copy_(piece.view_as(tensor))


def differentiable_average(tensors: list[Tensor]) -> list[Tensor]:
    """The mean over the workers as new tensors that stay in the autograd graph."""
    workers = world_size()
    if workers == 1:
        return list(tensors)
    with warnings.catch_warnings():
        # torch 2.14 deprecates it in favour of the private _functional_collectives; the
        # public function works on every torch lrwa supports (>= 2.4) and its backward
        # all-reduces the incoming gradient, which is what the second-order step needs.
        warnings.simplefilter("ignore", FutureWarning)
        from torch.distributed.nn.functional import all_reduce

        summed = all_reduce(_flatten(list(tensors)))
    mean = summed / workers
    return [piece.view_as(tensor)
            for tensor, piece in zip(tensors, mean.split([t.numel() for t in tensors]))]


def reduce_epoch_metrics(row: dict[str, Any], global_fresh_samples: int,
                         device: torch.device) -> None:
    """Turn one worker's epoch row into the run's row, in place, on every worker.

    Losses and the gradient cosine are averaged over workers (each saw 1/N of the batch);
    the epoch took as long as its slowest worker, and the throughput counts every
    worker's fresh samples. A NaN (no retention batch yet) is NaN on every worker alike.
    """
    workers = world_size()
    if workers == 1:
        return
    losses = torch.tensor([row[name] for name in AVERAGED_METRICS], dtype=torch.float64,
                          device=device)
    dist.all_reduce(losses)
    seconds = torch.tensor([row["train_s"]], dtype=torch.float64, device=device)
    dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
    for name, value in zip(AVERAGED_METRICS, (losses / workers).tolist()):
        row[name] = value
    row["train_s"] = seconds.item()
    row["samples_per_s"] = global_fresh_samples / row["train_s"] if row["train_s"] else math.nan
