"""The execution settings that change a run's numbers, resolved and applied.

A CPU float sum is split over torch's threads, so the same config on 1 and on 16
threads gives different curves; `auto` picks a GPU where one is visible, and GPU
kernels differ from CPU ones. A run therefore records what it ran with: the
device and the thread count are resolved to this process's values before the
run folder's config.yaml is written, and a rerun of that config (or of a study's
best_config.yaml) applies them again. On the CPU a rerun then matches epoch for
epoch, bit for bit. On a GPU, cuDNN and atomics-based kernels are free to sum in
any order; `deterministic: true` asks torch for kernels that do not, at some
speed cost, and refuses the operations that have none.
"""

from __future__ import annotations

import os

import torch

from lrwa.config import DistillConfig
from lrwa.distiller import resolve_device

# cuBLAS needs a fixed workspace to be deterministic; it reads this when it starts.
CUBLAS_WORKSPACE = ":4096:8"


def resolved_execution(config: DistillConfig) -> DistillConfig:
    """`config` with `device` and `torch_threads` set to what this process will use."""
    threads = config.torch_threads or torch.get_num_threads()
    return config.replace(device=resolve_device(config.device).type, torch_threads=threads)


def apply_execution(config: DistillConfig) -> None:
    """Set torch's threads and determinism as `config` says (both are per process)."""
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(config.deterministic)
