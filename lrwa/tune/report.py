"""`lrwa report STUDY`: the best trials, best_config.yaml and plots, from a study's files.

Trials are ranked as the Optuna journal ranks them: completed trials by the first
objective (the journal's COMPLETE trials and their values), then trials ASHA stopped
early (PRUNED in the journal) by the same metric over the epochs they ran. With two
objectives a `pareto` column marks the front. `best_config.yaml` is a DistillConfig
mapping that `lrwa distill --config best_config.yaml --out DIR` reruns as is. The
PNGs under `report/` show accuracy in %, integer epochs, each trial's status and
searched values, and how many trials each averaged point covers. STUDY is a study
folder or `s3://bucket/prefix/<study>`; the report's files are written beside the
study's, in the same storage.
"""

from __future__ import annotations

import io
import json
import math
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from lrwa.errors import LrwaError
from lrwa.tune.layout import (
    BEST_CONFIG,
    COMPLETED,
    OPTUNA_FILE,
    REPORT_DIR,
    STOPPED_EARLY,
)
from lrwa.tune.results import load_curves, load_trials, open_results, read_study_record
from lrwa.tune.storage import StudyStore
from lrwa.tune.study import VARIANT

RANKED_STATUSES = (COMPLETED, STOPPED_EARLY)
PERCENT_METRICS = ("best_acc", "mean_acc", "final_acc", "max_drop")


# -- ranking ---------------------------------------------------------------------------------

def pareto_mask(values: np.ndarray, directions: list[str]) -> np.ndarray:
    """True for rows no other row beats in every objective (and strictly in one)."""
    signed = values * np.array([1.0 if d == "max" else -1.0 for d in directions])
    mask = np.ones(len(signed), dtype=bool)
    for index, row in enumerate(signed):
        others = np.delete(signed, index, axis=0)
        dominated = np.any(np.all(others >= row, axis=1) & np.any(others > row, axis=1))
        mask[index] = not dominated
    return mask


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
    ranked["_complete"] = complete
    ranked = ranked.sort_values(["_complete", metrics[0], "number"],
                                ascending=[False, ascending, True], kind="stable")
    return ranked.drop(columns="_complete").reset_index(drop=True)


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

def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display on clusters and CI
    import matplotlib.pyplot as plt

    return plt


def _integer_axis(axis: Any) -> None:
    """Whole numbers only, written out (no 1.5 epochs, no 1e3 buffer sizes)."""
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    axis.set_major_locator(MaxNLocator(integer=True))
    formatter = ScalarFormatter()
    formatter.set_scientific(False)
    axis.set_major_formatter(formatter)


def _save(store: StudyStore, figure: Any, name: str) -> str:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=110)
    _pyplot().close(figure)
    relative = f"{REPORT_DIR}/{name}"
    store.write_bytes(relative, buffer.getvalue())
    return relative


def _finish(axis: Any, xlabel: str, ylabel: str, title: str, legend: float | None) -> None:
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    if legend is not None:
        axis.legend(fontsize=legend)


def metric_label(metric: str) -> str:
    if metric in PERCENT_METRICS:
        return f"{metric} (%)"
    return f"{metric} (%²)" if metric == "var_acc" else metric


def metric_values(metric: str, values: Any) -> Any:
    """Accuracies as %, their variance as %²."""
    if metric in PERCENT_METRICS:
        return 100 * values
    return 1e4 * values if metric == "var_acc" else values


def show_value(value: Any) -> str:
    if isinstance(value, (float, np.floating)) and not float(value).is_integer():
        return f"{value:.3g}"
    if isinstance(value, (float, np.floating)):
        return str(int(value))
    return str(value)


def trial_label(row: pd.Series, searched: list[str]) -> str:
    settings = " ".join(f"{name}={show_value(row[name])}" for name in searched)
    return f"{row['trial_id']} ({row['status']}) {settings}"


def plot_top_curves(store: StudyStore, curves: pd.DataFrame, ranked: pd.DataFrame,
                    searched: list[str], top: int) -> str | None:
    if curves.empty or ranked.empty:
        return None
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(8, 4.5))
    for _, row in ranked.head(top).iterrows():
        curve = curves[curves["trial_id"] == row["trial_id"]].dropna(subset=["test_acc"])
        axis.plot(curve["epoch"], 100 * curve["test_acc"], marker="o", markersize=3,
                  label=trial_label(row, searched))
    _integer_axis(axis.xaxis)
    _finish(axis, "epoch", "test accuracy (%)",
            f"learning curves of the top {min(top, len(ranked))} trials", 7)
    return _save(store, figure, "top_learning_curves.png")


def plot_curves_by_mode(store: StudyStore, curves: pd.DataFrame) -> str | None:
    if curves.empty:
        return None
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(8, 4.5))
    counts_axis = axis.twinx()
    groups = curves.dropna(subset=["test_acc"]).groupby(["mode", "replay"])
    for index, ((mode, replay), group) in enumerate(groups):
        colour = f"C{index % 10}"
        for _, curve in group.groupby("trial_id"):
            axis.plot(curve["epoch"], 100 * curve["test_acc"], color=colour, alpha=0.25)
        by_epoch = group.groupby("epoch")["test_acc"]
        mean, count = by_epoch.mean(), by_epoch.count()
        spread = (f"{count.iloc[0]}" if count.nunique() == 1
                  else f"{count.max()} to {count.min()}")
        trials = "trial" if spread == "1" else "trials"
        axis.plot(mean.index, 100 * mean.to_numpy(), color=colour, linewidth=2.5,
                  label=f"{mode} / {replay}: mean of {spread} {trials} per epoch")
        counts_axis.step(count.index, count.to_numpy(), where="mid", color=colour,
                         linestyle=":", alpha=0.6)
    counts_axis.set_ylabel("trials averaged (dotted)")
    counts_axis.set_ylim(bottom=0)
    _integer_axis(counts_axis.yaxis)
    _integer_axis(axis.xaxis)
    _finish(axis, "epoch", "test accuracy (%)", "learning curves by mode and replay", None)
    axis.legend(fontsize=8, loc="best")
    return _save(store, figure, "learning_curves_by_mode.png")


STATUS_MARKERS = {COMPLETED: "o", STOPPED_EARLY: "v"}


def _plain_log_axis(axis: Any) -> None:
    """A log axis labelled 0.05, 0.1, 0.2, 512, 1024: plain numbers, never 1e-1."""
    from matplotlib.ticker import LogLocator, NullFormatter, StrMethodFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(StrMethodFormatter("{x:g}"))
    axis.set_minor_formatter(NullFormatter())


def _by_status(ranked: pd.DataFrame) -> Any:
    """(status, marker, rows) per status: a stopped trial's numbers cover fewer epochs."""
    for status, marker in STATUS_MARKERS.items():
        rows = ranked[ranked["status"] == status]
        if not rows.empty:
            yield status, marker, rows


def plot_alpha_ratio(store: StudyStore, ranked: pd.DataFrame, metric: str) -> str | None:
    if ranked.empty or "alpha" not in ranked or "replay_ratio" not in ranked or (
            ranked["alpha"].nunique() < 2 and ranked["replay_ratio"].nunique() < 2):
        return None
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 4.5))
    values = metric_values(metric, ranked[metric])
    for status, marker, rows in _by_status(ranked):
        points = axis.scatter(rows["alpha"], rows["replay_ratio"], c=values[rows.index],
                              vmin=values.min(), vmax=values.max(), s=70, marker=marker,
                              cmap="viridis", edgecolors="black", label=status)
    figure.colorbar(points, ax=axis, label=metric_label(metric))
    if (ranked["alpha"] > 0).all() and ranked["alpha"].nunique() > 1:
        axis.set_xscale("log")
        _plain_log_axis(axis.xaxis)
    _finish(axis, "alpha (inner step size)", "replay ratio",
            f"{metric} over alpha x replay ratio", 8)
    return _save(store, figure, "alpha_replay_ratio.png")


def plot_buffer_size(store: StudyStore, ranked: pd.DataFrame, metric: str) -> str | None:
    if ranked.empty or "buffer_size" not in ranked or ranked["buffer_size"].nunique() < 2:
        return None
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for index, (mode, group) in enumerate(ranked.groupby("mode")):
        for status, marker, rows in _by_status(group):
            axis.scatter(rows["buffer_size"], metric_values(metric, rows[metric]),
                         label=f"{mode}, {status}", color=f"C{index}", marker=marker, s=60,
                         edgecolors="black")
    axis.set_xscale("log")
    _plain_log_axis(axis.xaxis)
    _finish(axis, "buffer size (samples)", metric_label(metric),
            f"effect of buffer size on {metric}", 8)
    return _save(store, figure, "buffer_size.png")


def parameter_importances(store: StudyStore, name: str,
                          multi_objective: bool) -> tuple[dict[str, float] | None, str]:
    """Optuna's importances of the searched keys, or None and the reason."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    data = store.read_bytes(OPTUNA_FILE)
    if data is None:
        return None, "no Optuna journal in the study"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="lrwa-journal-") as folder:
        copy = Path(folder, OPTUNA_FILE)
        copy.write_bytes(data)  # a reader's copy: Optuna's file backend takes locks
        study = optuna.load_study(study_name=name,
                                  storage=JournalStorage(JournalFileBackend(str(copy))))
        completed = study.get_trials(deepcopy=False,
                                     states=(optuna.trial.TrialState.COMPLETE,))
        if len(completed) < 2:
            return None, ("parameter importances need 2 completed trials, found "
                          f"{len(completed)}")
        target = (lambda trial: trial.values[0]) if multi_objective else None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. "importances will be equal"
                return optuna.importance.get_param_importances(study, target=target), ""
        except (RuntimeError, ValueError, ZeroDivisionError) as error:
            return None, f"parameter importances not available ({error})"


def plot_importances(store: StudyStore, importances: dict[str, float]) -> str:
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 0.8 + 0.45 * len(importances)))
    names = list(importances)[::-1]
    axis.barh(names, [importances[name] for name in names], color="C0")
    axis.set_xlabel("importance (Optuna, fANOVA)")
    axis.set_title("hyperparameter importances")
    return _save(store, figure, "importances.png")


# -- the report ------------------------------------------------------------------------------

def _cell(value: Any, metric: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if metric in PERCENT_METRICS or metric == "var_acc":
        return f"{metric_values(metric, value):.2f}"
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
        table.add_row(*[cells.get(column) or _cell(row[column], column)
                        for column in columns])
    # Off a terminal (a log, a pipe) rich would squeeze the table into 80 columns.
    Console(width=None if sys.stdout.isatty() else 160).print(table)


def write_report(location: str | Path, top: int = 5, plots: bool = True,
                 out: Any = print) -> dict[str, Any]:
    """`lrwa report STUDY`: the best trials, best_config.yaml and the plots."""
    store = open_results(str(location))
    study = (read_study_record(store) or {})["study"]
    trials, curves = load_trials(store), load_curves(store)
    objectives = study["objectives"]
    metric = objectives[0]["metric"]
    counts = trials["status"].value_counts().to_dict() if not trials.empty else {}
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
    drawn = [plot_top_curves(store, curves, ranked, searched, top),
             plot_curves_by_mode(store, curves),
             plot_alpha_ratio(store, ranked, metric),
             plot_buffer_size(store, ranked, metric)]
    importances, note = parameter_importances(store, study["name"], len(objectives) > 1)
    if importances:
        drawn.append(plot_importances(store, importances))
        out("importances: " + ", ".join(f"{name} {value:.2f}"
                                        for name, value in importances.items()))
    else:
        result["notes"].append(note)
        out(f"note: {note}")
    result["plots"] = [plot for plot in drawn if plot is not None]
    out(f"plots -> {store.location(REPORT_DIR)}/ "
        f"({', '.join(Path(p).name for p in result['plots'])})")
    return result
