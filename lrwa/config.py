"""The one typed configuration of a distillation run, and its strict loading.

`DistillConfig` is a frozen dataclass whose defaults are the paper's CIFAR
values (docs/method.md); `SMALL_PRESET` holds the CPU-sized values used for the
offline data sets. A run's config is built in layers: defaults, then the
dataset's preset, then a YAML file, then command-line flags. Every layer goes
through `from_mapping`, which rejects unknown keys and out-of-range values
with a one-line `LrwaError` naming the key and what it accepts; each layer is
also checked on its own, so a bad value in a file is reported even when a flag
overrides it. Values quoted in messages are shortened (`yaml_files.shown`).
YAML files are read by the one strict loader, `yaml_files.load_yaml_mapping`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lrwa.errors import LrwaError
from lrwa.presets import SYSTEM_PRESETS, preset_values
from lrwa.probes import parse_probe_epochs
from lrwa.yaml_files import load_yaml_mapping, shown

MODES = ("acquire", "joint", "meta")
REPLAYS = ("none", "memory", "generative")
REPLAY_LOSSES = ("separate", "concatenated")
MAX_REPLAY_RATIO = 4.0
# Keys that name files or folders: stored absolute in a run folder, so the run resumes
# from any working directory, and compared as resolved paths on resume.
PATH_KEYS = ("teacher", "data_root")


def _field(default: Any, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, choices: tuple[str, ...] | None = None, doc: str = "") -> Any:
    """A dataclass field that carries its own allowed range, so validation is declared once."""
    return dataclasses.field(default=default, metadata={
        "low": low, "high": high, "low_open": low_open, "choices": choices, "doc": doc})


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    # A named system (lrwa.presets): the authors' config, expanded beneath the keys given
    # with it. `scale` says whether a preset's sizes (batch, epochs, models) apply: "small"
    # (the CPU-sized data sets) keeps the sizes already set and takes only its method.
    preset: str | None = _field(None, choices=tuple(SYSTEM_PRESETS),
                                doc="a named system: the authors' config (docs/presets.md)")
    scale: str = _field("paper", choices=("paper", "small"),
                        doc="small: a preset leaves batch, epochs and model sizes alone")

    # What is distilled into what. teacher=None means the embedded mnist5k LeNet-5 teacher.
    teacher: str | None = _field(None, doc="teacher checkpoint file")
    teacher_arch: str | None = _field(None, doc="architecture of a plain state_dict teacher")
    dataset: str | None = _field(None, doc="dataset of a plain state_dict teacher")
    student: str = _field("resnet18", doc="student architecture")
    data_root: str | None = _field(None, doc="folder holding CIFAR/SVHN files")
    download: bool = _field(False, doc="download CIFAR/SVHN into data_root if missing")

    # The student update (docs/method.md): acquire-only, joint (baselines) or meta (LRWA).
    mode: str = _field("meta", choices=MODES)
    alpha: float = _field(0.9, low=0.0, high=100.0, doc="inner SGD step size of the meta step")
    # The paper's theta' = theta - alpha grad L_acq has no weight decay; LRA's inner SGD used 5e-4.
    inner_weight_decay: float = _field(0.0, low=0.0, high=1.0,
                                       doc="weight decay inside theta' (LRA's code: 5e-4)")
    first_order: bool = _field(False, doc="drop the second-order terms of the meta gradient")
    # separate: the paper's L_acq + L_ret, two means; concatenated: one L1 mean over
    # [fresh; replayed] in one forward, as MB-DFKD, PRE-DFKD and LRA's code compute it.
    replay_loss: str = _field("separate", choices=REPLAY_LOSSES)
    detach_inner: bool = _field(False, doc="build theta' from detached weights, as LRA's released "
                                           "code does (the retention term then adds 0)")
    student_loss: str = _field("l1", choices=("l1", "kl"))
    kl_temperature: float = _field(4.0, low=0.0, low_open=True, high=100.0)

    # Replay of past pseudo samples for the retention loss.
    replay: str = _field("memory", choices=REPLAYS)
    buffer_size: int = _field(640, low=1, high=10_000_000, doc="memory bank capacity, samples")
    replay_ratio: float = _field(0.125, low=0.0, low_open=True, high=MAX_REPLAY_RATIO,
                                 doc="replayed batch / fresh batch")
    insertion: str = _field("fifo", choices=("fifo", "reservoir"))
    # MB-DFKD as LRA runs it: one batch/8 slot stored every 5 epochs into 10 slots, and each
    # student step replays one whole slot (samples of one time point).
    replay_sampling: str = _field("slot", choices=("slot", "uniform"),
                                  doc="slot: replay one stored insertion whole; uniform: rows")
    memory_slots: int = _field(10, low=0, high=10_000_000,
                               doc="bank capacity in insertions; 0: buffer_size rows")
    insert_every_epochs: int = _field(5, low=0, high=100_000,
                                      doc="insert at the end of epochs 1, 1+k, ...; 0: every "
                                          "insert_every iterations")
    insert_every: int = _field(72, low=1, high=10_000_000,
                               doc="iterations between insertions (insert_every_epochs 0); "
                                   "the first is at iteration 0")
    insert_size: int = _field(0, low=0, high=1_000_000,
                              doc="samples per insertion; 0 means one replayed batch")
    # PRE-DFKD's VAE as LRA trains it: one step at each of the first 4 student steps of an
    # iteration, Adam at generator_lr / 40, latents of the generator's size.
    vae_steps_per_iteration: int = _field(4, low=0, high=1000,
                                          doc="VAE steps per iteration, at the first student "
                                              "steps")
    vae_latent_dim: int = _field(1000, low=1, high=100_000)
    vae_lr: float = _field(5e-4, low=0.0, low_open=True, high=10.0)
    vae_kl_weight: float = _field(1e-5, low=0.0, high=1e3)

    # The generator and its adversarial loss.
    generator_loss: str = _field("pre-dfkd", choices=("pre-dfkd", "dfad", "jsd-nats"))
    generator_arch: str = _field("pre-dfkd", choices=("pre-dfkd", "dfad"),
                                 doc="pre-dfkd: spectral norm, U(-0.08, 0.08) init; dfad: "
                                     "neither")
    latent_dim: int = _field(1000, low=1, high=100_000)
    generator_width: int = _field(128, low=2, high=4096, doc="channels of the generator's body")
    generator_lr: float = _field(0.02, low=0.0, low_open=True, high=10.0)
    # The authors' Adam(generator, lr) has torch's default betas (0.9, 0.999).
    generator_beta1: float = _field(0.9, low=0.0, high=0.999)
    weight_onehot: float = _field(1.0, low=0.0, high=1e3)
    weight_entropy: float = _field(5.0, low=0.0, high=1e3)
    weight_activation: float = _field(0.1, low=0.0, high=1e3)
    weight_adversarial: float = _field(1.0, low=0.0, high=1e3)
    js_temperature: float = _field(3.0, low=0.0, low_open=True, high=100.0)

    # The loop: each iteration is generator steps, then student steps on fresh batches.
    epochs: int = _field(400, low=1, high=100_000)
    iters_per_epoch: int = _field(72, low=1, high=10_000_000)
    generator_steps: int = _field(1, low=0, high=1000)
    student_steps: int = _field(10, low=1, high=1000)
    # DFAD's loop takes its student steps before the generator step.
    step_order: str = _field("generator-first", choices=("generator-first", "student-first"))
    batch_size: int = _field(512, low=1, high=1_000_000)
    student_lr: float = _field(0.1, low=0.0, low_open=True, high=10.0)
    momentum: float = _field(0.9, low=0.0, high=1.0)
    weight_decay: float = _field(5e-4, low=0.0, high=1.0)
    schedule: str = _field("cosine", choices=("cosine", "constant"))

    # Measurement and bookkeeping.
    eval_every: int = _field(1, low=1, high=100_000, doc="epochs between test evaluations")
    eval_split: str = _field("test", choices=("test", "val"))
    grad_cos_every: int = _field(10, low=0, high=1_000_000,
                                 doc="student steps between cos(grad acq, grad ret) probes; 0 off")
    # Retention measured directly (lrwa.probes): the student's agreement with the teacher on
    # pseudo samples frozen at these epochs, every epoch after.
    probe_size: int = _field(0, low=0, high=1_000_000,
                             doc="samples per frozen probe set; 0: no probe sets")
    probe_epochs: str = _field("1,5,10,20", doc="epochs whose samples are frozen as probes")
    # The papers' variance and largest drop also after a warm-up: early epochs' climb is
    # not forgetting.
    warmup_epochs: int = _field(4, low=0, high=100_000,
                                doc="epochs left out of var_acc_after_warmup and "
                                    "max_drop_after_warmup")
    seed: int = _field(0, low=0, high=2**32 - 1)
    device: str = _field("auto", choices=("auto", "cpu", "cuda"))
    bf16: bool = _field(False, doc="bf16 autocast of the student update on CUDA")
    channels_last: bool = _field(False, doc="channels_last memory format for teacher, student "
                                            "and generator (tensor-core convolutions on GPUs)")
    # Execution settings that change the numbers: a CPU float sum splits over threads, so
    # the thread count is part of a run; a run folder records the count it used.
    torch_threads: int = _field(0, low=0, high=4096,
                                doc="torch's CPU threads; 0: torch's default (every core)")
    deterministic: bool = _field(False, doc="torch.use_deterministic_algorithms (GPU kernels "
                                            "without atomics; slower, refuses some ops)")

    @property
    def replay_batch_size(self) -> int:
        """Replayed samples per student step: replay_ratio x the fresh batch, at least one."""
        return max(1, round(self.replay_ratio * self.batch_size))

    @property
    def samples_per_insertion(self) -> int:
        return self.insert_size or self.replay_batch_size

    @property
    def bank_capacity(self) -> int:
        """Rows the memory bank holds: memory_slots insertions, or buffer_size rows."""
        return self.memory_slots * self.samples_per_insertion or self.buffer_size

    def replace(self, **changes: Any) -> DistillConfig:
        return from_mapping(changes, base=self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# CPU-sized values for the offline data sets: minutes, not hours, on two cores. Besides
# sizes, lrwa's own memory-bank policy for short runs: at 20 epochs MB-DFKD's (a slot every
# 5 epochs) would store four batches in all. The named presets bring the authors' policy.
SMALL_PRESET: dict[str, Any] = {
    "scale": "small",
    "replay_sampling": "uniform",
    "memory_slots": 0,
    "insert_every_epochs": 0,
    "student": "lenet5-half",
    "latent_dim": 100,
    # At this scale alpha = 0.9 (the CIFAR value) slowed learning: 65% after 5 epochs against
    # 93% for alpha = 0.1 and for joint (4 epochs, mnist5k, seed 0); studies search alpha.
    "alpha": 0.1,
    "generator_width": 32,  # the 128-wide generator costs ~30 GFLOP a batch at 28x28
    "epochs": 20,
    "iters_per_epoch": 20,
    "student_steps": 5,
    "batch_size": 256,
    "buffer_size": 2048,
    "replay_ratio": 0.25,
    "insert_every": 2,
    "insertion": "reservoir",
    "vae_latent_dim": 64,
}
PRESETS: dict[str, dict[str, Any]] = {"mnist5k": SMALL_PRESET, "digits": SMALL_PRESET}

_FIELDS = {f.name: f for f in dataclasses.fields(DistillConfig)}


def _coerce(name: str, value: Any, annotation: str) -> Any:
    """Turn a YAML/CLI value into the field's type, or fail naming the key."""
    if value is None and "None" in annotation:
        return None
    try:
        if annotation.startswith("bool"):
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            raise ValueError
        if annotation.startswith("int"):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if annotation.startswith("float"):
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
            if not math.isfinite(number):
                raise ValueError
            return number
        if isinstance(value, (str, Path)):
            return str(value)
        raise ValueError
    except (TypeError, ValueError, OverflowError):
        kind = annotation.split(" ")[0]
        article = "an" if kind == "int" else "a"
        raise LrwaError(f"config key '{name}' must be {article} {kind}, "
                        f"got {shown(value)}") from None


def _number(value: float) -> str:
    """A bound as the user would type it: 10000000, not 1e+07."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _check_range(name: str, value: Any) -> None:
    meta = _FIELDS[name].metadata
    if meta["choices"] and value is not None and value not in meta["choices"]:
        raise LrwaError(f"config key '{name}' is {shown(value)}; choose from: "
                        f"{', '.join(meta['choices'])}")
    low, high = meta["low"], meta["high"]
    if value is None or low is None:
        return
    too_low = value <= low if meta["low_open"] else value < low
    if too_low or value > high:
        bracket = "(" if meta["low_open"] else "["
        raise LrwaError(f"config key '{name}' is {shown(value)}; allowed range is "
                        f"{bracket}{_number(low)}, {_number(high)}]")


def checked_values(values: Mapping[Any, Any]) -> dict[str, Any]:
    """`values` coerced to the fields' types, each key and value checked on its own."""
    unknown = sorted(set(values) - set(_FIELDS), key=str)  # YAML keys need not be strings
    if unknown:
        raise LrwaError(f"unknown config key {shown(str(unknown[0]))} "
                        f"(known keys: {', '.join(_FIELDS)})")
    coerced = {}
    for name, value in values.items():
        coerced[name] = _coerce(name, value, str(_FIELDS[name].type))
        _check_range(name, coerced[name])
        if name in PATH_KEYS and "\0" in (coerced[name] or ""):
            raise LrwaError(f"config key '{name}' is {shown(value)}, not a usable path "
                            "(it holds a NUL character)")
    return coerced


def from_mapping(values: Mapping[str, Any], base: DistillConfig | None = None) -> DistillConfig:
    """Apply `values` on top of `base` (default: the defaults), strictly.

    A `preset` among `values` is expanded between `base` and the other values: its method
    always, its sizes only where the resulting `scale` is "paper"."""
    checked = checked_values(values)
    if checked.get("preset"):
        scale = checked.get("scale", (base or DistillConfig()).scale)
        checked = {**preset_values(checked["preset"], with_sizes=scale == "paper"), **checked}
    config = dataclasses.replace(base or DistillConfig(), **checked)
    validate(config)
    return config


def validate(config: DistillConfig) -> None:
    """Checks that involve more than one key, or a registry."""
    from lrwa.models import model_names

    if config.student not in model_names():
        raise LrwaError(f"config key 'student' is {config.student!r}; choose from: "
                        f"{', '.join(model_names())}")
    if config.mode in ("joint", "meta") and config.replay == "none":
        raise LrwaError(f"mode '{config.mode}' needs a replay scheme: pass --replay memory "
                        "or --replay generative")
    if config.mode == "acquire" and config.replay != "none":
        # Acquire-only trains on fresh samples alone: a replay would cost time, change nothing.
        raise LrwaError(f"mode 'acquire' does not replay: replay '{config.replay}' would only "
                        "cost time; pass --replay none, or --mode joint or meta")
    if config.replay == "memory" and config.replay_sampling == "slot":
        if config.insertion != "fifo":
            raise LrwaError("replay_sampling 'slot' keeps insertions whole in a cyclic buffer: "
                            "it needs insertion 'fifo'")
        if config.samples_per_insertion != config.replay_batch_size:
            raise LrwaError(f"replay_sampling 'slot' replays one insertion as the replayed "
                            f"batch: insert_size {config.samples_per_insertion} must equal "
                            f"the replayed batch {config.replay_batch_size} (or be 0)")
        if config.bank_capacity < config.samples_per_insertion:
            raise LrwaError(f"buffer_size {config.buffer_size} is smaller than one slot "
                            f"({config.samples_per_insertion} samples)")
    if (config.replay == "memory" and not config.memory_slots
            and config.buffer_size < config.replay_batch_size):
        raise LrwaError(f"buffer_size {config.buffer_size} is smaller than one replayed batch "
                        f"({config.replay_batch_size} = replay_ratio x batch_size)")
    if config.replay == "memory" and config.samples_per_insertion > config.bank_capacity:
        raise LrwaError(f"insert_size {config.samples_per_insertion} exceeds buffer_size "
                        f"{config.buffer_size}")
    if config.detach_inner and config.mode != "meta":
        raise LrwaError(f"detach_inner changes only the meta step's theta'; mode "
                        f"'{config.mode}' has none (use mode meta or drop detach_inner)")
    parse_probe_epochs(config.probe_epochs)
    if config.detach_inner and config.first_order:
        # Two different theta': first order keeps theta' a function of theta and drops the
        # Hessian; detach_inner cuts theta' off theta entirely. No update is both.
        raise LrwaError("first_order and detach_inner cannot be combined; choose one")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a config file's mapping with the strict loader, failing in one line."""
    return load_yaml_mapping(path, "config file")


def absolute_paths(config: DistillConfig) -> DistillConfig:
    """`config` with its file and folder keys resolved against the working directory."""
    return config.replace(**{key: resolved_path(key, getattr(config, key))
                             for key in PATH_KEYS if getattr(config, key) is not None})


def resolved_path(key: str, value: str) -> str:
    """Config key `key`'s path `value`, absolute and with symlinks resolved."""
    try:
        return str(Path(value).expanduser().resolve())
    except (OSError, ValueError, RuntimeError) as error:  # a NUL byte, a loop, no such ~user
        raise LrwaError(f"config key '{key}' is {shown(value)}, not a usable path "
                        f"({error})") from None


def build_config(dataset: str | None, file_values: Mapping[str, Any] | None = None,
                 overrides: Mapping[str, Any] | None = None) -> DistillConfig:
    """Defaults, then the dataset's preset, then the file, then explicit overrides.

    The file and the overrides are each checked on their own first, so a bad value in
    the file is reported even when an override would have replaced it.
    """
    checked_values(file_values or {})
    checked_values({key: value for key, value in (overrides or {}).items() if value is not None})
    layered: dict[str, Any] = dict(file_values or {})
    layered.update({key: value for key, value in (overrides or {}).items() if value is not None})
    return from_mapping(layered, base=from_mapping(PRESETS.get(dataset or "", {})))
