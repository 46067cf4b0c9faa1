"""Study files: the schema of a hyperparameter study, and the study it resolves to.

A study file is YAML (see `tune_studies/quickstart.yaml`). `Study` and its sections are its
schema, declared with pydantic once: unknown keys at any depth, wrong types and numbers out
of range are refused there. What needs `DistillConfig` is checked as `parse_study` fills
the same model in, resolving the file: the base config, each end of each range, each
choice, each variant, every corner of the space and every point to evaluate go through
`lrwa.config.from_mapping`, so a study that starts will not fail on a config error later.
The base is resolved the way `lrwa distill` resolves a run: defaults, then the data set's
preset, then `base`; `teacher` and `data_root` become absolute paths. With workers > 1 the
keys Ray Train splits over workers (batch, bank and insertion sizes) must divide by the
worker count, so searched ones step by it. Every problem is one LrwaError line, "study
<file>: <key path>: <what is wrong>": pydantic's own report never reaches the user. The
resolved study's hash guards resumption.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import itertools
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from lrwa.config import PATH_KEYS, PRESETS, DistillConfig, from_mapping, resolved_path
from lrwa.errors import LrwaError
from lrwa.tune.layout import OBJECTIVE_METRICS
from lrwa.yaml_files import clipped, load_yaml_mapping, shown

# The shipped study files: the repository's tune_studies/, installed as lrwa.studies.
STUDIES_PACKAGE = "lrwa.studies"
VARIANT = "variant"  # the space key that picks one of `variants`
# Sections whose keys the study's flat record (Study.to_dict) lists as its own.
FLAT_SECTIONS = ("budget", "resources", "sampler", "scheduler")
# Keys that name where things are rather than how a run behaves: never searched.
UNSEARCHABLE = ("teacher", "teacher_arch", "dataset", "data_root", "download", "device")
MAX_CORNERS = 4096
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
CONFIG_KEYS = tuple(f.name for f in dataclasses.fields(DistillConfig))
# lrwa.ray_train gives each of N workers 1/N of these: with workers > 1 they must split.
SPLIT_KEYS = ("batch_size", "buffer_size", "insert_size")

# `--smoke`: two trials of two tiny epochs on one CPU, enough to prove the plumbing.
SMOKE_BASE: dict[str, Any] = {
    "epochs": 2, "iters_per_epoch": 2, "student_steps": 2, "generator_steps": 1,
    "batch_size": 32, "generator_width": 8, "latent_dim": 16, "vae_latent_dim": 16,
    "insert_every": 1, "device": "cpu",
}
SMOKE_BUDGET: dict[str, Any] = {"trials": 2, "time_budget_s": None, "max_concurrent": 2}
SMOKE_RESOURCES: dict[str, Any] = {"cpus": 1, "gpus": 0, "workers": 1}


# -- the schema: shapes, types and ranges -------------------------------------------------

def _known_keys(raw: Any, known: tuple[str, ...]) -> dict[Any, Any]:
    """A section's mapping (null is an empty one) naming only keys the schema knows."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise PydanticCustomError("mapping", "must be a mapping, got {kind}",
                                  {"kind": type(raw).__name__})
    for key in raw:
        if key not in known:
            raise PydanticCustomError("unknown_key", "unknown key",
                                      {"key": str(key), "known": ", ".join(known)})
    return raw


def _keys(known: tuple[str, ...]) -> Any:
    """A mapping of `known` keys whose values are checked later (config keys, smoke)."""
    return Annotated[dict[Any, Any], BeforeValidator(lambda raw: _known_keys(raw, known))]


def _folder_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"must be a folder name of letters, digits, '.', '_' or '-', "
                         f"got {shown(name)}")
    return name


def _searchable(name: Any) -> Any:
    if name != VARIANT and name not in CONFIG_KEYS:
        raise ValueError(f"'{_one_line(name)}' is not a DistillConfig key")
    if name in UNSEARCHABLE:
        raise ValueError(f"'{name}' says where things are and cannot be searched")
    return name


def _no_credentials(uri: str | None) -> str | None:
    # They would land in study.json; MLflow reads them from the environment instead. A URL
    # urlsplit cannot read fails here too, in its words (ValueError).
    if uri and "@" in urlsplit(uri).netloc:
        raise ValueError("must not carry credentials; set MLFLOW_TRACKING_USERNAME and "
                         "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) in the "
                         "environment instead")
    return uri


# YAML may write the integer 2 as 2.0; 2.5 stays a float for the int check to refuse.
Whole = Annotated[int, BeforeValidator(
    lambda value: int(value) if isinstance(value, float) and value.is_integer() else value)]
FolderName = Annotated[Any, AfterValidator(_folder_name)]
ConfigKeys = _keys(CONFIG_KEYS)


class _Section(BaseModel):
    """Known keys with strict types ('2' is no number, true no integer). A section left out
    or null is an empty mapping, so it takes its defaults (hence the `= None` below)."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False,
                              validate_default=True)

    @model_validator(mode="before")
    @classmethod
    def _only_known_keys(cls, raw: Any) -> dict[Any, Any]:
        return _known_keys(raw, tuple(cls.model_fields))


class Objective(_Section):
    model_config = ConfigDict(frozen=True)
    metric: Literal[OBJECTIVE_METRICS]
    direction: Literal["max", "min"]

    @property
    def mode(self) -> str:
        return self.direction


class SpaceEntry(_Section):
    """One searched key: a range (loguniform, uniform, int) or a list of choices. Resolved,
    a range's ends are of its type (int or float) and `log` is set."""

    type: Literal["loguniform", "uniform", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool | None = None  # left out: true for loguniform only
    choices: list[Any] | None = None
    step: Whole | None = Field(None, ge=1)  # int ranges only: low, low + step, ..., high

    def contains(self, value: Any) -> bool:
        if self.type == "categorical":
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.type == "int" and isinstance(value, float) and not value.is_integer():
            return False  # an int is whole already (and float() of a huge one overflows)
        if self.step and (value - self.low) % self.step:
            return False
        return self.low <= value <= self.high

    def describe(self) -> str:
        if self.type == "categorical":
            return f"one of {list(self.choices)}"
        scale = "log " if self.log else ""
        kind = "int" if self.type == "int" else "float"
        step = f" step {self.step}" if self.step else ""
        return f"{scale}{kind} in [{self.low:g}, {self.high:g}]{step}"


class Budget(_Section):
    trials: Whole = Field(ge=1, le=100_000)
    time_budget_s: float | None = Field(None, gt=0)  # per invocation, so not in the hash
    max_concurrent: Whole = Field(1, ge=1, le=10_000)


class Resources(_Section):
    """Per trial; cpus and gpus per worker, workers > 1 runs it data parallel (Ray Train)."""

    cpus: float = Field(1.0, gt=0)
    gpus: float = Field(0.0, ge=0)
    workers: Whole = Field(1, ge=1, le=1024)
    # Epochs between checkpoints Ray persists (and the last epoch always): a paper-scale
    # ResNet trial uploads ~220 MB a checkpoint; a restart repeats at most this many epochs.
    checkpoint_every: Whole = Field(1, ge=1, le=100_000)


class Sampler(_Section):
    """Seeded from the study's seed; grid runs every combination of a categorical space."""

    type: Literal["tpe", "random", "grid"] = "tpe"
    n_startup_trials: Whole = Field(10, ge=0, le=100_000)


class Scheduler(_Section):
    type: Literal["asha", "none"]
    grace_period: Whole = Field(1, ge=1)  # at most the base's epochs
    reduction_factor: float = Field(2.0, gt=1)


class Mlflow(_Section):
    """Ray Tune's MLflow logger (Ray always writes TensorBoard event files)."""

    tracking_uri: Annotated[str | None, AfterValidator(_no_credentials)] = None
    experiment: str | None = None


class Loggers(_Section):
    mlflow: Mlflow | None = None


class Smoke(_Section):
    """Overrides for `--smoke`, over SMOKE_BASE, SMOKE_BUDGET and SMOKE_RESOURCES."""

    base: ConfigKeys = None
    budget: _keys(tuple(Budget.model_fields)) = None
    resources: _keys(tuple(Resources.model_fields)) = None


class Study(_Section):
    """A study file, and once `parse_study` has resolved it, the study every other module
    uses: `base` is then the whole DistillConfig, each range of `space` has ends of its type
    and its worker step, `objective` lists one or two, and each point of
    `points_to_evaluate` is filled from the base."""

    model_config = ConfigDict(frozen=True)
    name: FolderName = None  # the study's folder under the storage
    description: str | None = None
    base: ConfigKeys = None  # DistillConfig keys shared by every trial
    space: dict[Annotated[Any, AfterValidator(_searchable)], SpaceEntry] | None = None
    objective: Any = None  # one Objective, or a list of two for a Pareto front
    budget: Budget = None
    resources: Resources = None
    sampler: Sampler = None
    scheduler: Annotated[Scheduler, BeforeValidator(
        lambda raw: {"type": "none"} if raw is None or raw == "none" else raw)] = None
    points_to_evaluate: list[Any] | None = None  # tried first; missing keys come from base
    seed: Whole = Field(0, ge=0, le=2**32 - 1)  # the sampler's; the trials' unless in base
    smoke: Smoke = None
    # Named bundles of DistillConfig keys laid over base, picked by space.variant.
    variants: dict[FolderName, ConfigKeys] | None = None
    loggers: Loggers = None
    _source: str = PrivateAttr("")  # the file it came from, for messages
    _is_smoke: bool = PrivateAttr(False)

    @property
    def source(self) -> str:
        return self._source

    @property
    def is_smoke(self) -> bool:
        return self._is_smoke

    @property
    def searched(self) -> tuple[str, ...]:
        return tuple(self.space)

    @property
    def epochs(self) -> int:
        return int(self.base["epochs"])

    @property
    def objectives(self) -> tuple[Objective, ...]:
        return tuple(self.objective)

    @property
    def multi_objective(self) -> bool:
        return len(self.objective) > 1

    @property
    def mlflow(self) -> dict[str, str] | None:
        """The MLflow logger's settings the file gave, or None without the logger."""
        given = self.loggers.mlflow
        return None if given is None else {k: v for k, v in given.model_dump().items() if v}

    def base_config(self) -> DistillConfig:
        return from_mapping(self.base)

    def trial_config(self, params: Mapping[str, Any]) -> DistillConfig:
        """The config a trial runs: base, then its variant's keys, then its other values."""
        config = from_mapping(_expand(params, self.variants), base=self.base_config())
        if config.teacher is None:
            # The embedded teacher, named as a run's config.yaml names it, so best_config.yaml
            # says what the trial distilled.
            from lrwa.teacher import DEFAULT_TEACHER

            config = config.replace(dataset=DEFAULT_TEACHER["dataset"],
                                    teacher_arch=DEFAULT_TEACHER["arch"])
        if self.resources.workers > 1:
            return config
        # A trial runs on its share of the machine: that is part of its numbers, so it is
        # in its config (and best_config.yaml), and `lrwa distill` reruns it the same way.
        return config.replace(
            torch_threads=config.torch_threads or max(1, int(self.resources.cpus)),
            device=("cuda" if self.resources.gpus > 0 else "cpu") if config.device == "auto"
            else config.device)

    def trial_settings(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The trial's whole config as a mapping, with its variant's name when it has one."""
        settings = self.trial_config(params).to_dict()
        if VARIANT in params:
            settings[VARIANT] = params[VARIANT]
        return settings

    def as_file(self) -> dict[str, Any]:
        """A study file that parses back to this study: what the file gave, and what
        resolving filled in (the whole base, each point, each range's ends and step). Smoke
        variants derive from it, and study.json keeps it for `views.py` to parse back."""
        return self.model_dump(exclude_unset=True)

    def to_dict(self) -> dict[str, Any]:
        """The resolved study as one flat mapping: what the hash covers and what `study.json`
        records. The hash fixed its shape: the FLAT_SECTIONS' keys at the top (a section's
        type under the section's name), `objectives`, the given `mlflow` settings, and in the
        space each entry's `log` (false for choices)."""
        data = self.model_dump(exclude={"objective", "smoke", "loggers", *FLAT_SECTIONS})
        data["space"] = {name: {"log": False, **{k: v for k, v in entry.items()
                                                 if v is not None}}
                         for name, entry in data["space"].items()}
        data["objectives"] = self.model_dump(include={"objective"})["objective"]
        for section in FLAT_SECTIONS:
            data.update({section if key == "type" else key: value
                         for key, value in getattr(self, section).model_dump().items()})
        data["smoke"] = {key: value for key, value in self.smoke.model_dump().items() if value}
        data.update(mlflow=self.mlflow, is_smoke=self.is_smoke)
        return json.loads(json.dumps(data, default=list))

    def fingerprint(self) -> str:
        """The hash that guards resumption. The time budget and the checkpoint interval are
        left out: they belong to each invocation, and a rerun may change them."""
        resolved = {key: value for key, value in self.to_dict().items()
                    if key not in ("time_budget_s", "description", "checkpoint_every")}
        canonical = json.dumps(resolved, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def smoke_variant(self) -> Study:
        """Two trials of two tiny epochs on one CPU; the folder gets a `-smoke` suffix."""
        if self.is_smoke:
            return self
        data, smoke = self.as_file(), self.smoke
        data.pop("smoke", None)
        if not self.mlflow:  # logs nothing (runner.py); smoke variants have always dropped it
            data.pop("loggers", None)
        budget = {**SMOKE_BUDGET, **(smoke.budget or {})}
        data.update(name=f"{self.name}-smoke", base={**self.base, **SMOKE_BASE,
                                                     **(smoke.base or {})},
                    budget=budget, resources={**SMOKE_RESOURCES, **(smoke.resources or {})},
                    scheduler="none",
                    points_to_evaluate=self.points_to_evaluate[:budget["trials"]])
        if self.sampler.type == "grid":  # two trials cannot run a whole grid: two random points
            data["sampler"] = {**data.get("sampler", {}), "type": "random"}
        study = parse_study(data, self.source)
        study._is_smoke = True
        return study


# -- locating and reading ------------------------------------------------------------------

def studies_dir() -> Path:
    return Path(str(importlib.resources.files(STUDIES_PACKAGE)))


def shipped_studies() -> list[str]:
    return sorted(path.stem for path in studies_dir().glob("*.yaml"))


def resolve_study_path(name_or_path: str | Path) -> Path:
    """A path to a YAML file, or the name of a shipped study (e.g. quickstart)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.suffix not in (".yaml", ".yml") and len(path.parts) == 1:
        candidate = studies_dir() / f"{path.name}.yaml"
        if candidate.is_file():
            return candidate
        raise LrwaError(f"study '{name_or_path}' not found: no such file, and no shipped "
                        f"study of that name (shipped: {', '.join(shipped_studies())})")
    raise LrwaError(f"study file {path} does not exist")


def load_study_file(name_or_path: str | Path) -> Study:
    path = resolve_study_path(name_or_path)
    data = load_yaml_mapping(path, "study file")
    data.setdefault("name", path.stem)
    return parse_study(data, str(path))


def parse_study(data: Mapping[str, Any], source: str) -> Study:
    try:
        study = _resolve(_validated(Study, dict(data), ""))
    except _Problem as problem:
        raise LrwaError(f"study {source}: {problem}") from None
    study._source = source
    return study


# -- resolving: the checks that need DistillConfig -----------------------------------------

def _resolve(file: Study) -> Study:
    base = _resolve_base({"seed": file.seed, **file.base})
    if not file.space:
        raise _Problem("", "space is empty: name at least one DistillConfig key to search, "
                       "e.g. alpha: {type: loguniform, low: 0.01, high: 2}")
    variants = _variants(file.variants or {}, base)
    space = {name: _variant_parameter(entry, variants) if name == VARIANT
             else _parameter(str(name), entry, base) for name, entry in file.space.items()}
    if variants and VARIANT not in file.space:
        raise _Problem("variants", f"are picked by space.{VARIANT}; add it to the space")
    _check_corners(space, base, variants)
    objectives = _objectives(file.objective)
    scheduler = file.scheduler
    if scheduler.type == "none" and scheduler.model_fields_set - {"type"}:
        raise _Problem("scheduler", "grace_period and reduction_factor apply to asha only")
    if scheduler.grace_period > base.epochs:
        raise _Problem("scheduler.grace_period", f"must be between 1 and {base.epochs}, "
                       f"got {scheduler.grace_period}")
    if scheduler.type == "asha" and len(objectives) > 1:
        raise _Problem("scheduler", "ASHA stops trials on one metric; a two-objective study "
                       "needs scheduler: none")
    budget, resources = file.budget, file.resources
    if resources.gpus > 1 and not resources.gpus.is_integer():
        raise _Problem("resources.gpus", f"a fraction of a GPU must be below 1, got "
                       f"{resources.gpus:g}")
    space = _split_over_workers(space, base, resources.workers)
    points = _points(file.points_to_evaluate or [], space, base, variants)
    if len(points) > budget.trials:
        raise _Problem("points_to_evaluate", f"lists {len(points)} points but budget.trials "
                       f"is {budget.trials}")
    if file.sampler.type == "grid":
        if any(entry.type != "categorical" for entry in space.values()):
            raise _Problem("sampler", "a grid runs categorical choices only; give each space "
                           "entry type: categorical")
        if points:
            raise _Problem("points_to_evaluate", "a grid runs every point already")
        size = math.prod(len(entry.choices) for entry in space.values())
        if budget.trials != size:
            raise _Problem("budget.trials", f"is {budget.trials} but the grid has {size} "
                           "points (each runs once)")
    return file.model_copy(update={
        "description": (file.description or "").strip(), "base": base.to_dict(),
        "space": space, "objective": list(objectives), "points_to_evaluate": points,
        "variants": variants})


def _config(key_path: str, values: Mapping[str, Any],
            base: DistillConfig | None = None) -> DistillConfig:
    try:
        return from_mapping(values, base=base)
    except LrwaError as error:
        raise _Problem(key_path, str(error)) from None


def _preset_dataset(base: Mapping[str, Any]) -> str | None:
    """The data set whose preset sits under `base`, as `lrwa distill` would pick it."""
    if base.get("dataset"):
        return str(base["dataset"])
    if base.get("teacher") is None:
        return "mnist5k"  # the embedded default teacher
    teacher = Path(str(base["teacher"]))
    if not teacher.is_file():
        return None  # checked again, loudly, when the study runs
    from lrwa.teacher import load_teacher

    try:
        return load_teacher(teacher, base.get("teacher_arch")).metadata["dataset"]
    except LrwaError:
        return None


def _resolve_base(raw: dict[str, Any]) -> DistillConfig:
    _config("base", raw)  # the base alone, so its errors name its own keys
    try:
        base = {**raw, **{key: resolved_path(key, raw[key]) for key in PATH_KEYS
                          if raw.get(key) is not None}}
    except LrwaError as error:
        raise _Problem("base", str(error)) from None
    # As `lrwa distill` layers it: the data set's preset, then the base (and a named
    # preset in it) above that.
    return _config("base", base,
                   base=_config("base", PRESETS.get(_preset_dataset(base) or "", {})))


def field_kind(name: str) -> str:
    annotation = str(next(f for f in dataclasses.fields(DistillConfig) if f.name == name).type)
    return annotation.split(" ")[0].split("|")[0]


def _expand(values: Mapping[str, Any], variants: Mapping[str, Mapping[str, Any]]
            ) -> dict[str, Any]:
    """Config keys of a point of the space: its variant's bundle, then its other values."""
    values = dict(values)
    return {**(variants[values.pop(VARIANT)] if VARIANT in values else {}), **values}


def _variants(raw: Mapping[str, dict[str, Any]], base: DistillConfig
              ) -> dict[str, dict[str, Any]]:
    for name, bundle in raw.items():
        for key in bundle:
            if key in UNSEARCHABLE:
                raise _Problem(f"variants.{name}.{key}", f"'{key}' says where things are "
                               "and belongs in base")
        _config(f"variants.{name}", bundle, base)
    return {name: dict(bundle) for name, bundle in raw.items()}


def _variant_parameter(entry: SpaceEntry, variants: Mapping[str, Any]) -> SpaceEntry:
    if entry.type != "categorical" or entry.model_fields_set - {"type", "choices"}:
        raise _Problem(f"space.{VARIANT}", "is {type: categorical, choices: [names from "
                       "variants]}")
    choices = entry.choices or []
    if not choices or len(set(map(str, choices))) != len(choices):
        raise _Problem(f"space.{VARIANT}.choices", "must list distinct variant names")
    for index, choice in enumerate(choices):
        if not isinstance(choice, str) or choice not in variants:
            raise _Problem(f"space.{VARIANT}.choices[{index}]", f"{shown(choice)} is not in "
                           f"variants ({', '.join(variants) or 'none given'})")
    return entry


def _parameter(name: str, entry: SpaceEntry, base: DistillConfig) -> SpaceEntry:
    key_path, kind = f"space.{name}", entry.type
    if kind == "categorical":
        for key in ("low", "high", "log", "step"):
            if key in entry.model_fields_set:
                raise _Problem(f"{key_path}.{key}", "a categorical entry takes only 'choices'")
        choices = entry.choices or []
        if not choices:
            raise _Problem(f"{key_path}.choices", "must be a non-empty list")
        if len({json.dumps(c, default=repr) for c in choices}) != len(choices):
            raise _Problem(f"{key_path}.choices", "lists a value twice")
        for index, choice in enumerate(choices):
            _config(f"{key_path}.choices[{index}]", {name: choice}, base)
        return entry
    if entry.choices is not None:
        raise _Problem(f"{key_path}.choices", f"only categorical entries take choices, "
                       f"not {kind}")
    kind_of_field = field_kind(name)
    if kind_of_field not in ("int", "float"):
        raise _Problem(f"{key_path}.type", f"'{name}' is a {kind_of_field}: search it with "
                       "type categorical")
    if kind_of_field == "int" and kind != "int":
        raise _Problem(f"{key_path}.type", f"'{name}' is an integer: use type int")
    cast = int if kind == "int" else float
    for key in ("low", "high"):
        end = getattr(entry, key)
        if end is None:
            raise _Problem(key_path, f"a {kind} entry needs '{key}'")
        if kind == "int" and not end.is_integer():
            raise _Problem(f"{key_path}.{key}", f"must be an integer, got {shown(end)}")
        # Each end on its own: a negative alpha or a ratio above 4 is named here.
        _config(f"{key_path}.{key}", {name: cast(end)}, base)
    log = kind == "loguniform" if entry.log is None else entry.log
    if kind == "loguniform" and not log:
        raise _Problem(f"{key_path}.log", "a loguniform entry is always on a log scale")
    low, high, step = cast(entry.low), cast(entry.high), entry.step
    if low >= high:
        raise _Problem(key_path, f"low {low:g} must be below high {high:g}"
                       + (" (inverted range)" if low > high else ""))
    if log and low <= 0:
        raise _Problem(f"{key_path}.low", f"a log-scale range needs low > 0, got {low:g}")
    if step is not None:
        if kind != "int":
            raise _Problem(f"{key_path}.step", "only int entries take a step")
        if log:
            raise _Problem(f"{key_path}.step", "Optuna cannot step a log-scale range")
        if (high - low) % step:
            raise _Problem(f"{key_path}.step", f"high - low ({high - low}) is not a multiple "
                           f"of step {step}")
    return entry.model_copy(update={"low": low, "high": high, "log": log})


def _split_over_workers(space: dict[str, SpaceEntry], base: DistillConfig, workers: int
                        ) -> dict[str, SpaceEntry]:
    """With data-parallel trials every value of a split key must divide by `workers`."""
    if workers == 1:
        return space
    for key in SPLIT_KEYS:
        value = getattr(base, key)
        if key not in space and value % workers:
            raise _Problem(f"base.{key}", f"{value} must split evenly over resources.workers "
                           f"{workers}")
    result = dict(space)
    for name in [name for name in space if name in SPLIT_KEYS]:
        entry, key_path = space[name], f"space.{name}"
        if any(value % workers for value in entry.choices or (entry.low, entry.high)):
            raise _Problem(key_path, f"every value must split evenly over "
                           f"resources.workers {workers}")
        if entry.type == "int":
            if entry.log:
                raise _Problem(key_path, f"with resources.workers {workers} the range "
                               f"needs a step of {workers}, and Optuna cannot step a log "
                               "scale: use log: false")
            if (entry.step or workers) % workers:
                raise _Problem(f"{key_path}.step", f"must be a multiple of "
                               f"resources.workers {workers}")
            result[name] = entry.model_copy(update={"step": entry.step or workers})
    return result


def _check_corners(space: dict[str, SpaceEntry], base: DistillConfig,
                   variants: Mapping[str, Mapping[str, Any]]) -> None:
    """Every combination of range ends and choices must be a valid config."""
    options = [p.choices if p.type == "categorical" else (p.low, p.high)
               for p in space.values()]
    for combination in itertools.islice(itertools.product(*options), MAX_CORNERS):
        values = dict(zip(space, combination))
        try:
            from_mapping(_expand(values, variants), base=base)
        except LrwaError as error:
            corner = ", ".join(f"{k}={shown(v)}" for k, v in values.items())
            raise _Problem("space", f"the corner {{{corner}}} is not a valid config: "
                           f"{error}") from None


def _points(raw: list[Any], space: dict[str, SpaceEntry], base: DistillConfig,
            variants: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    points = []
    for index, point in enumerate(raw):
        key_path = f"points_to_evaluate[{index}]"
        point = _validated(_keys(tuple(space)), point, key_path)
        filled = {}
        for name, entry in space.items():
            if name == VARIANT and name not in point:  # the base has no variant to fall back on
                raise _Problem(key_path, f"names no '{VARIANT}': a point picks one of "
                               f"variants ({', '.join(variants)})")
            value = point[name] if name in point else getattr(base, name)
            if not entry.contains(value):
                outside = f"{shown(value)} is outside the space ({entry.describe()})"
                if name in point:
                    raise _Problem(f"{key_path}.{name}", outside)
                raise _Problem(key_path, f"'{name}' is not given and the base value {outside}")
            filled[name] = int(value) if entry.type == "int" else value
        _config(key_path, _expand(filled, variants), base)
        points.append(filled)
    return points


def _objectives(raw: Any) -> tuple[Objective, ...]:
    """One {metric, direction}, or a list of two for a Pareto front; a lone one's errors
    name objective.metric, not objective[0].metric, so each entry is validated alone."""
    listed = isinstance(raw, list)
    entries = raw if listed else [raw]
    if raw is None or not 1 <= len(entries) <= 2:
        raise _Problem("objective", "give one {metric, direction} or a list of two")
    objectives = tuple(_validated(Objective, entry, f"objective[{index}]" if listed
                                  else "objective") for index, entry in enumerate(entries))
    if len({o.metric for o in objectives}) != len(objectives):
        raise _Problem("objective", "names the same metric twice")
    return objectives


# -- pydantic's first error, in one line ---------------------------------------------------

class _Problem(Exception):
    """A problem at a key path of the study file; `parse_study` names the file."""

    def __init__(self, key_path: str, message: str) -> None:
        super().__init__(f"{key_path}: {message}" if key_path else message)


def _one_line(key: Any) -> str:
    """A key as written, with a newline or tab in it escaped and a long one cut."""
    return clipped(repr(str(key))[1:-1])


def _key_path(*parts: Any) -> str:
    """("budget", "trials") -> budget.trials; ("points", 0, "alpha") -> points[0].alpha."""
    path = "".join(f"[{part}]" if isinstance(part, int) else f".{_one_line(part)}"
                   for part in parts if part != "")
    return path.removeprefix(".")


def _validated(schema: Any, raw: Any, key_path: str) -> Any:
    """`raw` validated as `schema`, or pydantic's first error as one line at its key path."""
    try:
        return TypeAdapter(schema).validate_python(raw)
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
    kind, context = first["type"], first.get("ctx", {})
    # pydantic adds "[key]" after a dict key whose own check failed: the key names the place.
    loc = [key_path, *(part for part in first["loc"] if part != "[key]")]
    if kind == "missing":
        raise _Problem(_key_path(*loc[:-1]), f"needs '{loc[-1]}'")
    if kind == "unknown_key":
        raise _Problem("", f"unknown key '{_key_path(*loc, context['key'])}' "
                       f"(known: {context['known']})")
    if kind in ("mapping", "value_error"):  # ours: _known_keys' and our validators' words
        raise _Problem(_key_path(*loc), str(context.get("error", first["msg"])))
    words = first["msg"]  # pydantic's own, e.g. "Input should be greater than 0"
    raise _Problem(_key_path(*loc), f"{words[0].lower()}{words[1:]}, got {shown(first['input'])}")
