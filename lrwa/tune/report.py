"""`lrwa report STUDY`: the best trials, best_config.yaml and plots, from a study's files.

Trials are ranked as the Optuna journal ranks them: completed trials by the first
objective (the journal's COMPLETE trials and their values), then trials ASHA stopped
early (PRUNED in the journal) by the same metric over the epochs they ran. With two
objectives a `pareto` column marks the front. `best_config.yaml` is a DistillConfig
mapping that `lrwa distill --config best_config.yaml --out DIR` reruns as is, with the
trial's threads and device. The PNGs under `report/` show accuracy in % on an axis
from the chance level (dotted) spanning at least ten points, integer epochs, each
trial's status and searched values. Means are over the completed trials only (a fixed
set, so the mean's population does not change along the curve), and stopped-early
trials are marked and kept off the completed trials' colour and y scales. Parameter
importances are given only over at least `MIN_IMPORTANCE_TRIALS` completed trials in
which two or more parameters varied, with the count beside them. STUDY is a study
folder or `s3://bucket/prefix/<study>`; the report's files are written beside the
study's, in the same storage.
"""

from __future__ import annotations

import io
import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from lrwa.errors import LrwaError
from lrwa.plot_axes import accuracy_axis, chance_percent
from lrwa.tune.layout import BEST_CONFIG, COMPLETED, REPORT_DIR, STOPPED_EARLY
from lrwa.tune.results import open_results, read_study_record
from lrwa.tune.storage import StudyStore
from lrwa.tune.study import VARIANT
from lrwa.tune.views import read_views

RANKED_STATUSES = (COMPLETED, STOPPED_EARLY)
PERCENT_METRICS = ("best_acc", "mean_acc", "final_acc", "max_drop")
SCALES = {**dict.fromkeys(PERCENT_METRICS, 100), "var_acc": 1e4}  # accuracies to %, var_acc to %²
ACCURACY_METRICS = ("best_acc", "mean_acc", "final_acc")
# fANOVA fits a forest to (parameters -> objective); with fewer trials its shares follow
# the sampler's few draws, not the objective (2 trials gave "alpha 0.62" for one alpha).
MIN_IMPORTANCE_TRIALS = 10


# -- ranking ---------------------------------------------------------------------------------

def pareto_mask(values: np.ndarray, directions: list[str]) -> np.ndarray:
    """True for rows no other row beats in every objective (and strictly in one)."""
    signed = values * np.array([1.0 if d == "max" else -1.0 for d in directions])
    other, row = signed[:, None], signed[None, :]  # [i, j]: row i against row j
    beats = (other >= row).all(axis=2) & (other > row).any(axis=2)
    return ~beats.any(axis=0)


def rank_trials(trials: pd.DataFrame, objectives: list[dict[str, str]]) -> pd.DataFrame:
    """Completed trials best first by the first objective, then stopped-early ones; with
    two objectives a `pareto` column marks the front of the completed trials."""
    metrics = [objective["metric"] for objective in objectives]
    if trials.empty:
        return trials
    ranked = trials[trials["status"].isin(RANKED_STATUSES)].dropna(subset=metrics).copy()
    if ranked.empty:
        return ranked
    complete = ranked["status"] == COMPLETED
    if len(metrics) > 1:
        ranked["pareto"] = False
        if complete.any():
            ranked.loc[complete, "pareto"] = pareto_mask(
                ranked.loc[complete, metrics].to_numpy(float),
                [objective["direction"] for objective in objectives])
    ascending = objectives[0]["direction"] == "min"
    return ranked.assign(_complete=complete).sort_values(
        ["_complete", metrics[0], "number"], ascending=[False, ascending, True], kind="stable"
    ).drop(columns="_complete").reset_index(drop=True)


def best_config(trials: pd.DataFrame, objectives: list[dict[str, str]]) -> tuple[str, dict]:
    ranked = rank_trials(trials, objectives)
    if ranked.empty:
        raise LrwaError("no completed trial yet: nothing to report as best")
    if "pareto" in ranked and ranked["pareto"].any():
        ranked = ranked[ranked["pareto"]]
    row = ranked.iloc[0]
    config = json.loads(row["config"])
    config.pop(VARIANT, None)  # a name in the study file; its keys are in the config
    return str(row["trial_id"]), config


# -- plots ---------------------------------------------------------------------------------

def _figure(width: float, height: float) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")  # no display on clusters and CI
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


def _save(store: StudyStore, figure: Any, name: str) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    relative = f"{REPORT_DIR}/{name}"
    store.write_bytes(relative, buffer.getvalue())
    return relative


def _finish(store: StudyStore, figure: Any, axis: Any, name: str, xlabel: str, ylabel: str,
            title: str, legend_size: float = 8) -> str:
    """Label the axis, add its grid and legend, and save the figure as report/<name>."""
    from matplotlib.ticker import MaxNLocator

    if xlabel == "epoch":
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # no epoch 1.5
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=legend_size)
    return _save(store, figure, name)


def metric_label(metric: str) -> str:
    if metric in PERCENT_METRICS:
        return f"{metric} (%)"
    return f"{metric} (%²)" if metric == "var_acc" else metric


def metric_values(metric: str, values: Any) -> Any:
    """Accuracies as %, their variance as %²."""
    return SCALES[metric] * values if metric in SCALES else values


def show_value(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return str(int(value)) if float(value).is_integer() else f"{value:.3g}"
    return str(value)


def chance_level(config: dict[str, Any]) -> float | None:
    """Chance accuracy (%) of the study's data set, from a trial's config; None if unknown.

    The data set is the config's, or the embedded teacher's, or the one the teacher file's
    metadata names (read without unpickling code, and mapped rather than read whole)."""
    import torch

    from lrwa.data import dataset_spec
    from lrwa.teacher import DEFAULT_TEACHER

    dataset = config.get("dataset")
    if dataset is None and config.get("teacher") is None:
        dataset = DEFAULT_TEACHER["dataset"]
    if dataset is None:
        try:
            saved = torch.load(config["teacher"], map_location="cpu", weights_only=True,
                               mmap=True)
            dataset = saved["metadata"]["dataset"]
        except Exception:  # noqa: BLE001 - a missing or foreign teacher: no chance line
            return None
    try:
        return chance_percent(dataset_spec(dataset).num_classes)
    except LrwaError:
        return None


def plot_top_curves(store: StudyStore, curves: pd.DataFrame, ranked: pd.DataFrame,
                    searched: list[str], top: int, chance: float | None = None) -> str | None:
    if curves.empty or ranked.empty:
        return None
    figure, axis = _figure(8, 4.5)
    shown = ranked.head(top)
    for _, row in shown.iterrows():
        curve = curves[curves["trial_id"] == row["trial_id"]].dropna(subset=["test_acc"])
        stopped = row["status"] != COMPLETED
        settings = " ".join(f"{name}={show_value(row[name])}" for name in searched)
        axis.plot(curve["epoch"], 100 * curve["test_acc"], marker="v" if stopped else "o",
                  markersize=3, linestyle="--" if stopped else "-",
                  label=f"{row['trial_id']} ({row['status']}) {settings}")
    accuracy_axis(axis, 100 * curves.loc[curves["trial_id"].isin(shown["trial_id"]), "test_acc"],
                  chance)
    dashed = " (dashed: stopped early)" if (shown["status"] != COMPLETED).any() else ""
    return _finish(store, figure, axis, "top_learning_curves.png", "epoch", "test accuracy (%)",
                   f"learning curves of the top {len(shown)} trials{dashed}", 7)


def plot_curves_by_mode(store: StudyStore, curves: pd.DataFrame, trials: pd.DataFrame,
                        chance: float | None = None) -> str | None:
    """Each mode / replay's trials (thin; stopped early: dashed) and the mean of its
    completed trials (thick), a fixed set, so the mean does not jump as ASHA stops trials."""
    if curves.empty:
        return None
    done = set(trials.loc[trials["status"] == COMPLETED, "trial_id"])
    figure, axis = _figure(8, 4.5)
    groups = curves.dropna(subset=["test_acc"]).groupby(["mode", "replay"])
    for index, ((mode, replay), group) in enumerate(groups):
        colour = f"C{index % 10}"
        completed = set(group["trial_id"]) & done
        others = group["trial_id"].nunique() - len(completed)
        for trial_id, curve in group.groupby("trial_id"):
            axis.plot(curve["epoch"], 100 * curve["test_acc"], color=colour, alpha=0.3,
                      linestyle="-" if trial_id in completed else "--", linewidth=1)
        aside = f"; {others} stopped early or unfinished (dashed), not averaged" if others else ""
        if completed:
            mean = group[group["trial_id"].isin(completed)].groupby("epoch")["test_acc"].mean()
            trials_word = "trial" if len(completed) == 1 else "trials"
            axis.plot(mean.index, 100 * mean.to_numpy(), color=colour, linewidth=2.5,
                      label=f"{mode} / {replay}: mean of {len(completed)} completed "
                            f"{trials_word}{aside}")
        else:
            axis.plot([], [], color=colour, linestyle="--",
                      label=f"{mode} / {replay}: no completed trial to average{aside}")
    accuracy_axis(axis, 100 * curves["test_acc"].dropna(), chance)
    return _finish(store, figure, axis, "learning_curves_by_mode.png", "epoch",
                   "test accuracy (%)", "learning curves by mode and replay")


def _log_x(axis: Any, values: Any) -> None:
    """A log x axis labelled 0.05, 0.1, 0.2, 512, 1024: plain numbers, never 1e-1. With a
    few distinct `values` (a small study) the ticks are those values, since 1-2-5 steps
    may leave a narrow range with one label."""
    from matplotlib import ticker

    axis.set_xscale("log")
    distinct, xaxis = sorted(set(values)), axis.xaxis
    if 2 <= len(distinct) <= 6:
        xaxis.set_major_locator(ticker.FixedLocator(distinct))
        xaxis.set_major_formatter(ticker.FuncFormatter(
            lambda x, _: f"{x:.0f}" if abs(x) >= 100 else f"{x:.3g}"))
    else:
        xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        xaxis.set_major_formatter(ticker.StrMethodFormatter("{x:g}"))
    xaxis.set_minor_formatter(ticker.NullFormatter())


def _split(ranked: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Completed trials, and the others: a stopped trial's numbers cover fewer epochs, so
    they are never put on the completed trials' scale."""
    complete = ranked["status"] == COMPLETED
    return ranked[complete], ranked[~complete]


def _stopped_label(stopped: pd.DataFrame) -> str:
    return f"stopped early ({len(stopped)}): tried here, no score (fewer epochs)"


def plot_alpha_ratio(store: StudyStore, ranked: pd.DataFrame, metric: str) -> str | None:
    if ranked.empty or "alpha" not in ranked or "replay_ratio" not in ranked or (
            ranked["alpha"].nunique() < 2 and ranked["replay_ratio"].nunique() < 2):
        return None
    figure, axis = _figure(7, 4.5)
    completed, stopped = _split(ranked)
    if not completed.empty:
        points = axis.scatter(completed["alpha"], completed["replay_ratio"],
                              c=metric_values(metric, completed[metric]), s=70, marker="o",
                              cmap="viridis", edgecolors="black",
                              label=f"completed ({len(completed)})")
        figure.colorbar(points, ax=axis, label=f"{metric_label(metric)}, completed trials")
    if not stopped.empty:
        axis.scatter(stopped["alpha"], stopped["replay_ratio"], s=60, marker="v",
                     facecolors="none", edgecolors="grey", label=_stopped_label(stopped))
    if (ranked["alpha"] > 0).all() and ranked["alpha"].nunique() > 1:
        _log_x(axis, ranked["alpha"])
    return _finish(store, figure, axis, "alpha_replay_ratio.png", "alpha (inner step size)",
                   "replay ratio", f"{metric} over alpha x replay ratio")


def plot_buffer_size(store: StudyStore, ranked: pd.DataFrame, metric: str,
                     chance: float | None = None) -> str | None:
    if ranked.empty or "buffer_size" not in ranked or ranked["buffer_size"].nunique() < 2:
        return None
    figure, axis = _figure(7, 4.5)
    completed, stopped = _split(ranked)
    for index, (mode, group) in enumerate(completed.groupby("mode")):
        axis.scatter(group["buffer_size"], metric_values(metric, group[metric]),
                     label=f"{mode}, completed ({len(group)})", color=f"C{index}", marker="o",
                     s=60, edgecolors="black")
    if not stopped.empty:
        # Along the bottom edge, off the metric's scale: where the search went, unscored.
        axis.scatter(stopped["buffer_size"], [0.02] * len(stopped), marker="v", s=50,
                     facecolors="none", edgecolors="grey", clip_on=False,
                     transform=axis.get_xaxis_transform(), label=_stopped_label(stopped))
    if metric in ACCURACY_METRICS:
        accuracy_axis(axis, metric_values(metric, completed[metric]), chance)
    _log_x(axis, ranked["buffer_size"])
    return _finish(store, figure, axis, "buffer_size.png", "buffer size (samples)",
                   metric_label(metric), f"effect of buffer size on {metric}")


def _varied(trials: list[Any]) -> tuple[list[str], list[str]]:
    """The searched parameters that take two or more values among `trials`, and the rest."""
    names = sorted({name for trial in trials for name in trial.params})
    varied = [name for name in names
              if len({repr(trial.params.get(name)) for trial in trials}) > 1]
    return varied, [name for name in names if name not in varied]


def importances_refusal(trials: list[Any], objective: Any) -> str:
    """Why the completed `trials` cannot carry importances ("" when they can)."""
    if len(trials) < MIN_IMPORTANCE_TRIALS:
        return (f"no parameter importances: they need at least {MIN_IMPORTANCE_TRIALS} "
                f"completed trials, the study has {len(trials)}")
    varied, _ = _varied(trials)
    if len(varied) < 2:
        only = f"only {varied[0]} varied" if varied else "no parameter varied"
        return (f"no parameter importances: {only} among the {len(trials)} completed trials "
                "(importances are shares of the variance, so one parameter would get 1.00)")
    if len({objective(trial) for trial in trials}) < 2:
        return (f"no parameter importances: all {len(trials)} completed trials have the same "
                "objective")
    return ""


def parameter_importances(store: StudyStore, multi_objective: bool
                          ) -> tuple[dict[str, float] | None, str]:
    """Optuna's importances of the varied searched keys and a line saying over what, or
    None and the reason: too few completed trials (`MIN_IMPORTANCE_TRIALS`), fewer than
    two parameters that took two values, or one objective value for all."""
    import optuna

    from lrwa.tune.journal import journal_copy

    with journal_copy(store) as study:
        if study is None:
            return None, "no Optuna journal in the study"
        completed = study.get_trials(deepcopy=False,
                                     states=(optuna.trial.TrialState.COMPLETE,))
        first = (lambda trial: trial.values[0]) if multi_objective else (
            lambda trial: trial.value)
        refusal = importances_refusal(completed, first)
        if refusal:
            return None, refusal
        varied, fixed = _varied(completed)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                importances = optuna.importance.get_param_importances(
                    study, params=varied, target=first if multi_objective else None)
        except (RuntimeError, ValueError, ZeroDivisionError) as error:
            return None, f"parameter importances not available ({error})"
    held = f"; not varied: {', '.join(fixed)}" if fixed else ""
    return importances, (f"over {len(completed)} completed trials, {len(varied)} varied "
                         f"parameters{held}")


def plot_importances(store: StudyStore, importances: dict[str, float], basis: str) -> str:
    figure, axis = _figure(6, 1.2 + 0.45 * len(importances))
    names = list(importances)[::-1]
    axis.barh(names, [importances[name] for name in names], color="C0")
    axis.set_xlabel("importance (Optuna, fANOVA; shares sum to 1)")
    axis.set_title(f"hyperparameter importances\n{basis}", fontsize=9)
    return _save(store, figure, "importances.png")


# -- the report ------------------------------------------------------------------------------

def _cell(value: Any, metric: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if metric in SCALES:
        return f"{SCALES[metric] * value:.2f}"
    return show_value(value)


def print_best(ranked: pd.DataFrame, study: dict[str, Any], top: int) -> None:
    from rich.console import Console
    from rich.table import Table

    metrics = [objective["metric"] for objective in study["objectives"]]
    searched = list(study["space"])
    table = Table(title=f"best trials of '{study['name']}' (accuracy in %, var in %²)")
    columns = ["rank", "trial", "status", *dict.fromkeys(
        [*metrics, "best_acc", "mean_acc", "var_acc"]), *searched, "epochs"]
    if "pareto" in ranked:
        columns.insert(3, "pareto")
    for column in columns:
        table.add_column(column, justify="left" if column in ("trial", "status") else "right")
    for rank, (_, row) in enumerate(ranked.head(top).iterrows(), start=1):
        cells = {"rank": str(rank), "trial": str(row["trial_id"]),
                 "epochs": f"{row['epochs_run']}/{row['epochs']}",
                 "pareto": "*" if row.get("pareto") else ""}
        table.add_row(*[cells[column] if column in cells else _cell(row[column], column)
                        for column in columns])
    # Off a terminal (a log, a pipe) rich would squeeze the table into 80 columns.
    Console(width=None if sys.stdout.isatty() else 160).print(table)


def write_report(location: str | Path, top: int = 5, plots: bool = True,
                 out: Any = print, tally: bool = True) -> dict[str, Any]:
    """`lrwa report STUDY`: the best trials, best_config.yaml and the plots (`tally`: begin
    with the trials' count by status; `lrwa tune` has just printed it)."""
    store = open_results(str(location))
    study = (read_study_record(store) or {})["study"]
    trials, curves = read_views(store, out)  # rebuilds a missing or damaged view
    objectives = study["objectives"]
    metric = objectives[0]["metric"]
    counts = trials["status"].value_counts().to_dict() if not trials.empty else {}
    if tally:
        out(f"study '{study['name']}': {len(trials)} trials ("
            + ", ".join(f"{count} {status}" for status, count in counts.items()) + ")")
    for _, row in (trials[trials["status"] == "errored"] if not trials.empty
                   else trials).iterrows():
        out(f"  errored {row['trial_id']}: {row['error']}")
    ranked = rank_trials(trials, objectives)
    result: dict[str, Any] = {"ranked": ranked, "plots": [], "notes": []}
    if ranked.empty:
        out("no completed trial yet: no best configuration to write")
        return result
    print_best(ranked, study, top)
    trial_id, config = best_config(trials, objectives)
    header = (f"# best trial {trial_id} of study '{study['name']}' by "
              f"{objectives[0]['direction']} {metric}\n"
              f"# rerun: lrwa distill --config {store.location(BEST_CONFIG)} --out "
              f"runs/{study['name']}-best\n")
    store.write_bytes(BEST_CONFIG, (header + yaml.safe_dump(config, sort_keys=False)).encode())
    result.update({"best_trial": trial_id, "best_config": store.location(BEST_CONFIG)})
    out(f"best configuration (trial {trial_id}) -> {store.location(BEST_CONFIG)}")
    if not plots:
        return result
    searched = list(study["space"])
    chance = chance_level(config)
    drawn = [plot_top_curves(store, curves, ranked, searched, top, chance),
             plot_curves_by_mode(store, curves, trials, chance),
             plot_alpha_ratio(store, ranked, metric),
             plot_buffer_size(store, ranked, metric, chance)]
    importances, note = parameter_importances(store, len(objectives) > 1)
    if importances:
        drawn.append(plot_importances(store, importances, note))
        result["importances"] = importances
        out(f"importances ({note}): " + ", ".join(f"{name} {value:.2f}"
                                                  for name, value in importances.items()))
    else:
        result["notes"].append(note)
        out(f"note: {note}")
    result["plots"] = [plot for plot in drawn if plot is not None]
    out(f"plots -> {store.location(REPORT_DIR)}/ "
        f"({', '.join(Path(p).name for p in result['plots'])})")
    return result
