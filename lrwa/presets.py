"""Named systems: each the configuration its authors' released code trains with.

`lrwa distill --preset NAME` or `preset: NAME` in a config or study file expands one of
these beneath the keys given with it. A preset has two parts: its method (losses, update
rule, replay policy, learning rates, loop, constants of the authors' code) and its sizes
(batch, epochs, iterations, models, latent sizes). On a config whose `scale` is "small"
(the CPU-sized data sets mnist5k and digits) only the method applies, so a preset there is
the authors' system at lrwa's CPU scale. docs/presets.md maps every key of the authors'
config files to these values and says what lrwa does not reproduce.

Sources: LRA (gaurav104/LRA: src/configs/MB-DFKD.json, PRE-DFKD.json, Ours-1.json,
Ours-2.json and the agents that read them) and DFAD (VainF/Data-Free-Adversarial-
Distillation, DFAD_cifar.py's defaults). Adding a system is one entry here and its test.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lrwa.errors import LrwaError

# What every LRA agent shares: the PRE-DFKD generator objective (oh 1, ie 5, a 0.1, the
# clamped disagreement at T = 3), Adam(lr_G = 0.02) with torch's default betas, one
# generator step then kd_iter = 10 student steps, SGD 0.1 (momentum 0.9, wd 5e-4) on a
# cosine schedule, L1 between logits, and batch // 8 replayed samples per step.
_LRA_METHOD: dict[str, Any] = {
    "generator_loss": "pre-dfkd", "generator_arch": "pre-dfkd", "generator_lr": 0.02,
    "generator_beta1": 0.9, "weight_onehot": 1.0, "weight_entropy": 5.0,
    "weight_activation": 0.1, "weight_adversarial": 1.0, "js_temperature": 3.0,
    "generator_steps": 1, "step_order": "generator-first", "student_loss": "l1",
    "student_lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "cosine",
    "replay_ratio": 0.125, "replay_loss": "concatenated", "first_order": False,
}
# MB-DFKD's bank as LRA runs it: batch // 8 samples every 5 epochs into 10 cyclic slots,
# one whole slot replayed per student step.
_LRA_MEMORY: dict[str, Any] = {
    "replay": "memory", "insertion": "fifo", "replay_sampling": "slot", "memory_slots": 10,
    "insert_every_epochs": 5, "insert_size": 0,
}
# PRE-DFKD's VAE as LRA trains it: at the first 4 of the 10 student steps, Adam at
# lr_G / 40, KL weight 1e-5.
_LRA_GENERATIVE: dict[str, Any] = {
    "replay": "generative", "vae_steps_per_iteration": 4, "vae_lr": 0.02 / 40,
    "vae_kl_weight": 1e-5,
}
# LRA's meta agents: the inner SGD at lr_S_in = 0.9 with weight decay 5e-4.
_LRA_META: dict[str, Any] = {"mode": "meta", "alpha": 0.9, "inner_weight_decay": 5e-4}


def _lra_sizes(batch_size: int) -> dict[str, Any]:
    # LRA runs 36 * (1024 // batch) iterations an epoch: 36 at 1024, 72 at 512.
    return {"student": "resnet18", "epochs": 400, "batch_size": batch_size,
            "iters_per_epoch": 36 * (1024 // batch_size), "student_steps": 10,
            "latent_dim": 1000, "generator_width": 128, "vae_latent_dim": 1000}


@dataclass(frozen=True)
class SystemPreset:
    description: str
    method: dict[str, Any]
    sizes: dict[str, Any] = field(default_factory=dict)


SYSTEM_PRESETS: dict[str, SystemPreset] = {
    "dfad": SystemPreset(
        "DFAD (Fang et al.): adversarial distillation, fresh samples only",
        {"mode": "acquire", "replay": "none", "generator_loss": "dfad",
         "generator_arch": "dfad", "generator_lr": 1e-3, "generator_beta1": 0.9,
         "generator_steps": 1, "step_order": "student-first", "student_loss": "l1",
         "student_lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "constant"},
        {"student": "resnet18", "epochs": 500, "batch_size": 256, "iters_per_epoch": 50,
         "student_steps": 5, "latent_dim": 256, "generator_width": 128}),
    "mb-dfkd": SystemPreset(
        "MB-DFKD (Binici et al.) as LRA runs it: LRA's MB-DFKD.json",
        {**_LRA_METHOD, **_LRA_MEMORY, "mode": "joint"}, _lra_sizes(1024)),
    "pre-dfkd": SystemPreset(
        "PRE-DFKD (Binici et al.) as LRA runs it: LRA's PRE-DFKD.json",
        {**_LRA_METHOD, **_LRA_GENERATIVE, "mode": "joint"}, _lra_sizes(1024)),
    "lrwa-memory": SystemPreset(
        "LRWA with a memory bank: LRA's Ours-1.json, theta' connected to theta",
        {**_LRA_METHOD, **_LRA_MEMORY, **_LRA_META, "detach_inner": False}, _lra_sizes(512)),
    "lrwa-generative": SystemPreset(
        "LRWA with generative replay: LRA's Ours-2.json, theta' connected to theta",
        {**_LRA_METHOD, **_LRA_GENERATIVE, **_LRA_META, "detach_inner": False},
        _lra_sizes(512)),
    "lrwa-memory-released": SystemPreset(
        "Ours-1.json exactly as released: theta' detached, so equal to MB-DFKD's update",
        {**_LRA_METHOD, **_LRA_MEMORY, **_LRA_META, "detach_inner": True}, _lra_sizes(512)),
    "lrwa-generative-released": SystemPreset(
        "Ours-2.json exactly as released: theta' detached, so equal to PRE-DFKD's update",
        {**_LRA_METHOD, **_LRA_GENERATIVE, **_LRA_META, "detach_inner": True},
        _lra_sizes(512)),
}


def preset_values(name: str, with_sizes: bool) -> dict[str, Any]:
    """The config keys preset `name` sets: its method, and its sizes when asked."""
    if name not in SYSTEM_PRESETS:
        raise LrwaError(f"unknown preset {name!r} (choose from: {', '.join(SYSTEM_PRESETS)})")
    preset = SYSTEM_PRESETS[name]
    return {**preset.method, **(preset.sizes if with_sizes else {})}
