"""Study files: the strict schema of a hyperparameter study and its resolved form.

A study file is YAML with these top-level keys (see `tune_studies/quickstart.yaml`):

    name, description        folder name under the storage; free text
    base                     DistillConfig keys shared by every trial
    space                    searched DistillConfig keys, each {type, low, high, log, step,
                             choices}; type is loguniform, uniform, int or categorical;
                             `variant: {type: categorical, choices: [...]}` picks one of
    variants                 named bundles of DistillConfig keys laid over `base` (e.g. the
                             systems a comparison runs: {mb-dfkd: {mode: joint, ...}})
    objective                {metric, direction}, or a list of two for a Pareto front
    budget                   {trials, time_budget_s, max_concurrent}
    resources                per trial {cpus, gpus, workers}; cpus/gpus are per worker;
                             workers > 1 runs each trial data parallel with Ray Train
    sampler                  {type: tpe|random|grid, n_startup_trials}; seeded from `seed`;
                             grid runs every combination of the (categorical) space once
    scheduler                none, or {type: asha, grace_period, reduction_factor}
    points_to_evaluate       configurations tried first (missing keys come from `base`)
    seed                     sampler seed, and the trials' seed unless `base` names one
    smoke                    {base, budget, resources} overrides for `--smoke`
    loggers                  {mlflow: {tracking_uri, experiment}}: Ray Tune's MLflow logger
                             (TensorBoard event files are always written by Ray)

Unknown keys anywhere fail with an `LrwaError` naming the key path, and so does
every value a trial could not run with: the base config, each end of each range
and each choice go through `lrwa.config.from_mapping`, and so does every corner
of the space, so a study that starts will not fail on a config error later.
The base is resolved the way `lrwa distill` resolves a run: defaults, then the
data set's preset, then `base`; `teacher` and `data_root` become absolute paths.
With workers > 1 the keys Ray Train splits over workers (batch, bank and
insertion sizes) must divide by the worker count, so searched ones step by it.
The resolved study's hash guards resumption.
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
from typing import Any
from urllib.parse import urlsplit

from lrwa.config import PRESETS, DistillConfig, from_mapping
from lrwa.errors import LrwaError
from lrwa.yaml_files import load_yaml_mapping, shown

# The shipped study files: the repository's tune_studies/, installed as lrwa.studies.
STUDIES_PACKAGE = "lrwa.studies"
METRICS = ("best_acc", "mean_acc", "final_acc", "var_acc", "max_drop")
DIRECTIONS = ("max", "min")
SPACE_TYPES = ("loguniform", "uniform", "int", "categorical")
SAMPLERS = ("tpe", "random", "grid")
VARIANT = "variant"  # the space key that picks one of `variants`
# Keys that name where things are rather than how a run behaves: never searched.
UNSEARCHABLE = ("teacher", "teacher_arch", "dataset", "data_root", "download", "device")
MAX_CORNERS = 4096
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
CONFIG_KEYS = tuple(f.name for f in dataclasses.fields(DistillConfig))

TOP_KEYS = ("name", "description", "base", "space", "objective", "budget", "resources",
            "sampler", "scheduler", "points_to_evaluate", "seed", "smoke", "variants",
            "loggers")
LOGGER_KEYS = ("mlflow",)
MLFLOW_KEYS = ("tracking_uri", "experiment")
SPACE_KEYS = ("type", "low", "high", "log", "choices", "step")
# lrwa.ray_train gives each of N workers 1/N of these: with workers > 1 they must split.
SPLIT_KEYS = ("batch_size", "buffer_size", "insert_size")
BUDGET_KEYS = ("trials", "time_budget_s", "max_concurrent")
RESOURCE_KEYS = ("cpus", "gpus", "workers")
SAMPLER_KEYS = ("type", "n_startup_trials")
SCHEDULER_KEYS = ("type", "grace_period", "reduction_factor")
SMOKE_KEYS = ("base", "budget", "resources")

# `--smoke`: two trials of two tiny epochs on one CPU, enough to prove the plumbing.
SMOKE_BASE: dict[str, Any] = {
    "epochs": 2, "iters_per_epoch": 2, "student_steps": 2, "generator_steps": 1,
    "batch_size": 32, "generator_width": 8, "latent_dim": 16, "vae_latent_dim": 16,
    "insert_every": 1, "device": "cpu",
}
SMOKE_BUDGET: dict[str, Any] = {"trials": 2, "time_budget_s": None, "max_concurrent": 2}
SMOKE_RESOURCES: dict[str, Any] = {"cpus": 1, "gpus": 0, "workers": 1}


@dataclasses.dataclass(frozen=True)
class Parameter:
    """One searched DistillConfig key and its distribution."""

    name: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] | None = None
    step: int | None = None   # int ranges only: low, low + step, ..., high

    def contains(self, value: Any) -> bool:
        if self.type == "categorical":
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.type == "int" and not float(value).is_integer():
            return False
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


@dataclasses.dataclass(frozen=True)
class Objective:
    metric: str
    direction: str

    @property
    def mode(self) -> str:
        return self.direction


@dataclasses.dataclass(frozen=True)
class Study:
    name: str
    description: str
    base: dict[str, Any]          # the resolved DistillConfig, as a mapping
    space: tuple[Parameter, ...]
    objectives: tuple[Objective, ...]
    trials: int
    time_budget_s: float | None
    max_concurrent: int
    cpus: float
    gpus: float
    workers: int
    sampler: str
    n_startup_trials: int
    scheduler: str                # "asha" or "none"
    grace_period: int
    reduction_factor: float
    points_to_evaluate: tuple[dict[str, Any], ...]
    seed: int
    smoke: dict[str, Any]
    source: str
    variants: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    mlflow: dict[str, str] | None = None
    is_smoke: bool = False

    @property
    def searched(self) -> tuple[str, ...]:
        return tuple(parameter.name for parameter in self.space)

    @property
    def epochs(self) -> int:
        return int(self.base["epochs"])

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    def base_config(self) -> DistillConfig:
        return from_mapping(self.base)

    def trial_config(self, params: Mapping[str, Any]) -> DistillConfig:
        """The config a trial runs: base, then its variant's keys, then its other values."""
        values = dict(params)
        bundle = self.variants[values.pop(VARIANT)] if VARIANT in values else {}
        return from_mapping({**bundle, **values}, base=self.base_config())

    def trial_settings(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The trial's whole config as a mapping, with its variant's name when it has one."""
        settings = self.trial_config(params).to_dict()
        if VARIANT in params:
            settings[VARIANT] = params[VARIANT]
        return settings

    def to_dict(self) -> dict[str, Any]:
        """The resolved study: what the hash covers and what `study.json` records."""
        data = dataclasses.asdict(self)
        data.pop("source")
        data["space"] = {p.name: {key: value for key, value in dataclasses.asdict(p).items()
                                  if key != "name" and value is not None}
                         for p in self.space}
        data["objectives"] = [dataclasses.asdict(o) for o in self.objectives]
        data["points_to_evaluate"] = [dict(point) for point in self.points_to_evaluate]
        return json.loads(json.dumps(data, default=list))

    def fingerprint(self) -> str:
        """The hash that guards resumption. The time budget is left out: it belongs to each
        invocation (`lrwa tune` runs with the file's budget and a rerun may change it)."""
        resolved = {key: value for key, value in self.to_dict().items()
                    if key not in ("time_budget_s", "description")}
        canonical = json.dumps(resolved, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def smoke_variant(self) -> Study:
        """Two trials of two tiny epochs on one CPU; the folder gets a `-smoke` suffix."""
        if self.is_smoke:
            return self
        data = dict(_raw_of(self))
        data["name"] = f"{self.name}-smoke"
        data["base"] = {**self.base, **SMOKE_BASE, **self.smoke.get("base", {})}
        data["budget"] = {**SMOKE_BUDGET, **self.smoke.get("budget", {})}
        data["resources"] = {**SMOKE_RESOURCES, **self.smoke.get("resources", {})}
        data["scheduler"] = "none"
        trials = data["budget"]["trials"]
        data["points_to_evaluate"] = data["points_to_evaluate"][:trials]
        data.pop("smoke", None)
        return dataclasses.replace(parse_study(data, self.source), is_smoke=True)


def _raw_of(study: Study) -> dict[str, Any]:
    """A study file mapping that parses back to `study` (used to derive variants)."""
    return {
        "name": study.name, "description": study.description, "base": dict(study.base),
        "space": {p.name: {k: list(v) if isinstance(v, tuple) else v
                           for k, v in dataclasses.asdict(p).items()
                           if k != "name" and v is not None and not (k == "log" and not v)}
                  for p in study.space},
        "objective": [dataclasses.asdict(o) for o in study.objectives],
        "budget": {"trials": study.trials, "time_budget_s": study.time_budget_s,
                   "max_concurrent": study.max_concurrent},
        "resources": {"cpus": study.cpus, "gpus": study.gpus, "workers": study.workers},
        "sampler": {"type": study.sampler, "n_startup_trials": study.n_startup_trials},
        "scheduler": ({"type": "asha", "grace_period": study.grace_period,
                       "reduction_factor": study.reduction_factor}
                      if study.scheduler == "asha" else "none"),
        "points_to_evaluate": [dict(point) for point in study.points_to_evaluate],
        "seed": study.seed,
        "smoke": study.smoke,
        "variants": {name: dict(bundle) for name, bundle in study.variants.items()},
        "loggers": {"mlflow": dict(study.mlflow)} if study.mlflow else {},
    }


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


# -- checking one value at a time ----------------------------------------------------------

class _Checker:
    """Builds one-line errors that name the study file and the key path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key_path: str, message: str) -> LrwaError:
        where = f"{key_path}: " if key_path else ""
        return LrwaError(f"study {self.source}: {where}{message}")

    def mapping(self, key_path: str, value: Any, known: tuple[str, ...]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(key_path, f"must be a mapping, got {type(value).__name__}")
        for key in value:
            if key not in known:
                path = f"{key_path}.{key}" if key_path else str(key)
                raise self.fail("", f"unknown key '{path}' (known: {', '.join(known)})")
        return value

    def integer(self, key_path: str, value: Any, low: int, high: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                isinstance(value, float) and not value.is_integer()):
            raise self.fail(key_path, f"must be an integer, got {shown(value)}")
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise self.fail(key_path, f"must be {bound}, got {value}")
        return int(value)

    def number(self, key_path: str, value: Any, low: float, low_open: bool = False,
               high: float | None = None) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
                value):
            raise self.fail(key_path, f"must be a number, got {shown(value)}")
        if (value <= low if low_open else value < low) or (high is not None and value > high):
            relation = "above" if low_open else "at least"
            raise self.fail(key_path, f"must be {relation} {low:g}"
                            + (f" and at most {high:g}" if high is not None else "")
                            + f", got {value:g}")
        return float(value)

    def choice(self, key_path: str, value: Any, choices: tuple[str, ...]) -> str:
        if value not in choices:
            raise self.fail(key_path, f"is {shown(value)}; choose from: {', '.join(choices)}")
        return value

    def config(self, key_path: str, values: Mapping[str, Any],
               base: DistillConfig | None = None) -> DistillConfig:
        try:
            return from_mapping(values, base=base)
        except LrwaError as error:
            raise self.fail(key_path, str(error)) from None


# -- the base config -----------------------------------------------------------------------

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


def _resolve_base(check: _Checker, raw: Any) -> dict[str, Any]:
    from lrwa.models import model_names

    base = dict(check.mapping("base", raw, CONFIG_KEYS))
    for key in ("teacher", "data_root"):
        if base.get(key) is not None:
            base[key] = str(Path(str(base[key])).expanduser().resolve())
    check.config("base", base)  # the base alone, so its errors name its own keys
    layered = {**PRESETS.get(_preset_dataset(base) or "", {}), **base}
    config = check.config("base", layered)
    if config.student not in model_names():
        raise check.fail("base.student", f"unknown architecture {shown(config.student)} "
                         f"(choose from: {', '.join(model_names())})")
    return config.to_dict()


# -- the search space ----------------------------------------------------------------------

def field_kind(name: str) -> str:
    annotation = str(next(f for f in dataclasses.fields(DistillConfig) if f.name == name).type)
    return annotation.split(" ")[0].split("|")[0]


def _expand(values: Mapping[str, Any], variants: Mapping[str, Mapping[str, Any]]
            ) -> dict[str, Any]:
    """Config keys of a point of the space: its variant's bundle, then its other values."""
    values = dict(values)
    return {**variants.get(values.pop(VARIANT, None), {}), **values}


def _variants(check: _Checker, raw: Any, base: DistillConfig) -> dict[str, dict[str, Any]]:
    variants = check.mapping("variants", raw, tuple(raw or ()))
    result = {}
    for name, bundle in variants.items():
        key_path = f"variants.{name}"
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise check.fail(key_path, "a variant's name is letters, digits, '.', '_' or '-'")
        bundle = dict(check.mapping(key_path, bundle, CONFIG_KEYS))
        for key in bundle:
            if key in UNSEARCHABLE:
                raise check.fail(f"{key_path}.{key}", f"'{key}' says where things are and "
                                 "belongs in base")
        check.config(key_path, bundle, base)
        result[name] = bundle
    return result


def _variant_parameter(check: _Checker, raw: Any,
                       variants: Mapping[str, Any]) -> Parameter:
    entry = check.mapping(f"space.{VARIANT}", raw, SPACE_KEYS)
    if entry.get("type") != "categorical" or set(entry) - {"type", "choices"}:
        raise check.fail(f"space.{VARIANT}", "is {type: categorical, choices: [names from "
                         "variants]}")
    choices = entry.get("choices")
    if not isinstance(choices, list) or not choices or len(set(map(str, choices))) != len(
            choices):
        raise check.fail(f"space.{VARIANT}.choices", "must list distinct variant names")
    for index, choice in enumerate(choices):
        if choice not in variants:
            raise check.fail(f"space.{VARIANT}.choices[{index}]", f"{shown(choice)} is not "
                             f"in variants ({', '.join(variants) or 'none given'})")
    return Parameter(VARIANT, "categorical", choices=tuple(choices))


def _parameter(check: _Checker, name: str, raw: Any, base: DistillConfig) -> Parameter:
    key_path = f"space.{name}"
    if name not in CONFIG_KEYS:
        raise check.fail(key_path, f"'{name}' is not a DistillConfig key")
    if name in UNSEARCHABLE:
        raise check.fail(key_path, f"'{name}' says where things are and cannot be searched")
    entry = check.mapping(key_path, raw, SPACE_KEYS)
    kind = check.choice(f"{key_path}.type", entry.get("type"), SPACE_TYPES)
    kind_of_field = field_kind(name)
    if kind == "categorical":
        for key in ("low", "high", "log", "step"):
            if key in entry:
                raise check.fail(f"{key_path}.{key}", "a categorical entry takes only 'choices'")
        choices = entry.get("choices")
        if not isinstance(choices, list) or not choices:
            raise check.fail(f"{key_path}.choices", "must be a non-empty list")
        if len({json.dumps(c) for c in choices}) != len(choices):
            raise check.fail(f"{key_path}.choices", "lists a value twice")
        for index, choice in enumerate(choices):
            check.config(f"{key_path}.choices[{index}]", {name: choice}, base)
        return Parameter(name, kind, choices=tuple(choices))
    if "choices" in entry:
        raise check.fail(f"{key_path}.choices", f"only categorical entries take choices, "
                         f"not {kind}")
    if kind_of_field not in ("int", "float"):
        raise check.fail(f"{key_path}.type", f"'{name}' is a {kind_of_field}: search it "
                         "with type categorical")
    if kind_of_field == "int" and kind != "int":
        raise check.fail(f"{key_path}.type", f"'{name}' is an integer: use type int")
    for key in ("low", "high"):
        if key not in entry:
            raise check.fail(key_path, f"a {kind} entry needs '{key}'")
        if kind == "int":
            check.integer(f"{key_path}.{key}", entry[key], low=-(2**62))
        else:
            check.number(f"{key_path}.{key}", entry[key], low=-math.inf)
        # Each end on its own: a negative alpha or a ratio above 4 is named here.
        check.config(f"{key_path}.{key}", {name: entry[key]}, base)
    log = entry.get("log", kind == "loguniform")
    if not isinstance(log, bool):
        raise check.fail(f"{key_path}.log", f"must be true or false, got {shown(log)}")
    if kind == "loguniform" and not log:
        raise check.fail(f"{key_path}.log", "a loguniform entry is always on a log scale")
    low, high = entry["low"], entry["high"]
    if low >= high:
        raise check.fail(key_path, f"low {low:g} must be below high {high:g}"
                         + (" (inverted range)" if low > high else ""))
    if log and low <= 0:
        raise check.fail(f"{key_path}.low", f"a log-scale range needs low > 0, got {low:g}")
    step = entry.get("step")
    if step is not None:
        if kind != "int":
            raise check.fail(f"{key_path}.step", "only int entries take a step")
        step = check.integer(f"{key_path}.step", step, 1)
        if log:
            raise check.fail(f"{key_path}.step", "Optuna cannot step a log-scale range")
        if (high - low) % step:
            raise check.fail(f"{key_path}.step", f"high - low ({high - low}) is not a "
                             f"multiple of step {step}")
    cast = int if kind == "int" else float
    return Parameter(name, kind, cast(low), cast(high), log, step=step)


def _split_over_workers(check: _Checker, space: tuple[Parameter, ...], base: DistillConfig,
                        workers: int) -> tuple[Parameter, ...]:
    """With data-parallel trials every value of a split key must divide by `workers`."""
    if workers == 1:
        return space
    searched = {parameter.name for parameter in space}
    for key in SPLIT_KEYS:
        value = getattr(base, key)
        if key not in searched and value % workers:
            raise check.fail(f"base.{key}", f"{value} must split evenly over "
                             f"resources.workers {workers}")
    result = []
    for parameter in space:
        if parameter.name in SPLIT_KEYS:
            key_path = f"space.{parameter.name}"
            values = parameter.choices or (parameter.low, parameter.high)
            if any(value % workers for value in values):
                raise check.fail(key_path, f"every value must split evenly over "
                                 f"resources.workers {workers}")
            if parameter.type == "int":
                if parameter.log:
                    raise check.fail(key_path, f"with resources.workers {workers} the range "
                                     f"needs a step of {workers}, and Optuna cannot step a "
                                     "log scale: use log: false")
                if (parameter.step or workers) % workers:
                    raise check.fail(f"{key_path}.step", f"must be a multiple of "
                                     f"resources.workers {workers}")
                parameter = dataclasses.replace(parameter, step=parameter.step or workers)
        result.append(parameter)
    return tuple(result)


def _check_corners(check: _Checker, space: tuple[Parameter, ...], base: DistillConfig,
                   variants: Mapping[str, Mapping[str, Any]]) -> None:
    """Every combination of range ends and choices must be a valid config."""
    options = [p.choices if p.type == "categorical" else (p.low, p.high) for p in space]
    for count, combination in enumerate(itertools.product(*options)):
        if count >= MAX_CORNERS:
            return
        values = dict(zip((p.name for p in space), combination))
        try:
            from_mapping(_expand(values, variants), base=base)
        except LrwaError as error:
            corner = ", ".join(f"{k}={shown(v)}" for k, v in values.items())
            raise check.fail("space", f"the corner {{{corner}}} is not a valid config: "
                             f"{error}") from None


def _points(check: _Checker, raw: Any, space: tuple[Parameter, ...],
            base: DistillConfig, variants: Mapping[str, Mapping[str, Any]]
            ) -> tuple[dict[str, Any], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise check.fail("points_to_evaluate", "must be a list of mappings")
    names = tuple(p.name for p in space)
    points = []
    for index, point in enumerate(raw):
        key_path = f"points_to_evaluate[{index}]"
        point = check.mapping(key_path, point, names)
        filled = {}
        for parameter in space:
            if parameter.name in point:
                value = point[parameter.name]
                if not parameter.contains(value):
                    raise check.fail(f"{key_path}.{parameter.name}",
                                     f"{shown(value)} is outside the space "
                                     f"({parameter.describe()})")
            else:
                value = getattr(base, parameter.name)
                if not parameter.contains(value):
                    raise check.fail(key_path, f"'{parameter.name}' is not given and the "
                                     f"base value {shown(value)} is outside the space "
                                     f"({parameter.describe()})")
            filled[parameter.name] = int(value) if parameter.type == "int" else value
        check.config(key_path, _expand(filled, variants), base)
        points.append(filled)
    return tuple(points)


# -- the whole file ------------------------------------------------------------------------

def _mlflow(check: _Checker, raw: Any) -> dict[str, str] | None:
    """The MLflow logger's settings; a tracking URI may not carry credentials (they would
    land in study.json): MLflow reads MLFLOW_TRACKING_USERNAME/PASSWORD or a token instead."""
    loggers = check.mapping("loggers", raw, LOGGER_KEYS)
    if loggers.get("mlflow") is None:
        return None
    entry = check.mapping("loggers.mlflow", loggers["mlflow"], MLFLOW_KEYS)
    settings = {}
    for key in MLFLOW_KEYS:
        value = entry.get(key)
        if value is not None and not isinstance(value, str):
            raise check.fail(f"loggers.mlflow.{key}", f"must be text, got {shown(value)}")
        if value:
            settings[key] = value
    uri = settings.get("tracking_uri", "")
    if "@" in urlsplit(uri).netloc:
        raise check.fail("loggers.mlflow.tracking_uri", "must not carry credentials; set "
                         "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or "
                         "MLFLOW_TRACKING_TOKEN) in the environment instead")
    return settings


def _objectives(check: _Checker, raw: Any) -> tuple[Objective, ...]:
    entries = raw if isinstance(raw, list) else [raw]
    if raw is None or not entries or len(entries) > 2:
        raise check.fail("objective", "give one {metric, direction} or a list of two")
    objectives = []
    for index, entry in enumerate(entries):
        key_path = "objective" if not isinstance(raw, list) else f"objective[{index}]"
        entry = check.mapping(key_path, entry, ("metric", "direction"))
        metric = check.choice(f"{key_path}.metric", entry.get("metric"), METRICS)
        direction = check.choice(f"{key_path}.direction", entry.get("direction"), DIRECTIONS)
        objectives.append(Objective(metric, direction))
    if len({o.metric for o in objectives}) != len(objectives):
        raise check.fail("objective", "names the same metric twice")
    return tuple(objectives)


def parse_study(data: Mapping[str, Any], source: str) -> Study:
    check = _Checker(source)
    data = check.mapping("", dict(data), TOP_KEYS)
    name = data.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise check.fail("name", f"must be a folder name of letters, digits, '.', '_' or "
                         f"'-', got {shown(name)}")
    description = data.get("description") or ""
    if not isinstance(description, str):
        raise check.fail("description", "must be text")
    seed = check.integer("seed", data.get("seed", 0), 0, 2**32 - 1)

    base_raw = data.get("base")
    if base_raw is None or isinstance(base_raw, dict):
        base_raw = {"seed": seed, **(base_raw or {})}
    base = _resolve_base(check, base_raw)
    base_config = from_mapping(base)

    space_raw = data.get("space")
    if space_raw is not None and not isinstance(space_raw, dict):
        raise check.fail("space", "must be a mapping of DistillConfig keys to distributions")
    if not space_raw:
        raise check.fail("", "space is empty: name at least one DistillConfig key to "
                         "search, e.g. alpha: {type: loguniform, low: 0.01, high: 2}")
    variants = _variants(check, data.get("variants"), base_config)
    space = tuple(_variant_parameter(check, value, variants) if key == VARIANT
                  else _parameter(check, str(key), value, base_config)
                  for key, value in space_raw.items())
    if variants and VARIANT not in space_raw:
        raise check.fail("variants", f"are picked by space.{VARIANT}; add it to the space")
    _check_corners(check, space, base_config, variants)

    objectives = _objectives(check, data.get("objective"))

    budget = check.mapping("budget", data.get("budget"), BUDGET_KEYS)
    if "trials" not in budget:
        raise check.fail("budget", "needs 'trials'")
    trials = check.integer("budget.trials", budget["trials"], 1, 100_000)
    time_budget = budget.get("time_budget_s")
    if time_budget is not None:
        time_budget = check.number("budget.time_budget_s", time_budget, 0.0, low_open=True)
    max_concurrent = check.integer("budget.max_concurrent", budget.get("max_concurrent", 1),
                                   1, 10_000)

    resources = check.mapping("resources", data.get("resources"), RESOURCE_KEYS)
    cpus = check.number("resources.cpus", resources.get("cpus", 1), 0.0, low_open=True)
    gpus = check.number("resources.gpus", resources.get("gpus", 0), 0.0)
    workers = check.integer("resources.workers", resources.get("workers", 1), 1, 1024)
    if gpus > 1 and not float(gpus).is_integer():
        raise check.fail("resources.gpus", f"a fraction of a GPU must be below 1, got {gpus:g}")
    space = _split_over_workers(check, space, base_config, workers)

    sampler = check.mapping("sampler", data.get("sampler"), SAMPLER_KEYS)
    sampler_type = check.choice("sampler.type", sampler.get("type", "tpe"), SAMPLERS)
    startup = check.integer("sampler.n_startup_trials", sampler.get("n_startup_trials", 10),
                            0, 100_000)

    scheduler_raw = data.get("scheduler", "none")
    if scheduler_raw is None or scheduler_raw == "none":
        scheduler_raw = {"type": "none"}
    scheduler = check.mapping("scheduler", scheduler_raw, SCHEDULER_KEYS)
    scheduler_type = check.choice("scheduler.type", scheduler.get("type"), ("asha", "none"))
    grace = check.integer("scheduler.grace_period", scheduler.get("grace_period", 1), 1,
                          base_config.epochs)
    reduction = check.number("scheduler.reduction_factor",
                             scheduler.get("reduction_factor", 2), 1.0, low_open=True)
    if scheduler_type == "none" and set(scheduler) - {"type"}:
        raise check.fail("scheduler", "grace_period and reduction_factor apply to asha only")
    if scheduler_type == "asha" and len(objectives) > 1:
        raise check.fail("scheduler", "ASHA stops trials on one metric; a two-objective "
                         "study needs scheduler: none")

    points = _points(check, data.get("points_to_evaluate"), space, base_config, variants)
    if len(points) > trials:
        raise check.fail("points_to_evaluate", f"lists {len(points)} points but "
                         f"budget.trials is {trials}")
    if sampler_type == "grid":
        if any(parameter.type != "categorical" for parameter in space):
            raise check.fail("sampler", "a grid runs categorical choices only; give each "
                             "space entry type: categorical")
        if points:
            raise check.fail("points_to_evaluate", "a grid runs every point already")
        size = math.prod(len(parameter.choices) for parameter in space)
        if trials != size:
            raise check.fail("budget.trials", f"is {trials} but the grid has {size} points "
                             "(each runs once)")

    mlflow = _mlflow(check, data.get("loggers"))

    smoke = check.mapping("smoke", data.get("smoke"), SMOKE_KEYS)
    smoke = {
        "base": dict(check.mapping("smoke.base", smoke.get("base"), CONFIG_KEYS)),
        "budget": dict(check.mapping("smoke.budget", smoke.get("budget"), BUDGET_KEYS)),
        "resources": dict(check.mapping("smoke.resources", smoke.get("resources"),
                                        RESOURCE_KEYS)),
    }
    smoke = {key: value for key, value in smoke.items() if value}

    return Study(
        name=name, description=description.strip(), base=base, space=space,
        objectives=objectives, trials=trials, time_budget_s=time_budget,
        max_concurrent=max_concurrent, cpus=cpus, gpus=gpus, workers=workers,
        sampler=sampler_type, n_startup_trials=startup, scheduler=scheduler_type,
        grace_period=grace, reduction_factor=reduction, points_to_evaluate=points, seed=seed,
        smoke=smoke, source=source, variants=variants, mlflow=mlflow)
