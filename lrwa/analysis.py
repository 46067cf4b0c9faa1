"""Reading a finished (or running) study back: pandas frames, the best trials, plots.

`load_study(STUDY)` returns `(trials, curves)`: `trials.parquet` as one row
per trial and every trial's learning curve as one row per (trial, epoch), read
with `pyarrow.dataset` from the hive-partitioned `curves/` folder. `write_report`
is `lrwa report`: a table of the best trials, `best_config.yaml` (a DistillConfig
mapping that `lrwa distill --config best_config.yaml --out DIR` reruns as is) and
PNGs under `report/`: learning curves of the top trials and per mode, the
objective over alpha x replay ratio, the effect of buffer size, and Optuna's
parameter importances. STUDY is a study folder or its object-store URI
(`s3://bucket/prefix/<study>`), which is read through a local copy; the report's
files are written back to the store.
"""

from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import yaml

from lrwa.atomic import atomic_path, write_text
from lrwa.errors import LrwaError
from lrwa.tune.curves import CURVES_DIR, OPTUNA_FILE, PARTITION, STUDY_JSON, TRIALS_FILE
from lrwa.tune.storage import TreePusher, fetch_study, is_remote, split_study_uri

REPORT_DIR = "report"
BEST_CONFIG = "best_config.yaml"
RANKED_STATUSES = ("completed", "stopped early")


def _study_dir(path: str | Path) -> Path:
    if is_remote(path):
        return fetch_study(str(path))[2]
    study_dir = Path(path)
    if not study_dir.is_dir():
        raise LrwaError(f"study folder {study_dir} does not exist")
    if not (study_dir / TRIALS_FILE).is_file() and not (study_dir / CURVES_DIR).is_dir():
        raise LrwaError(f"{study_dir} holds no study results ({TRIALS_FILE} or {CURVES_DIR}/)")
    return study_dir


def load_curves(study_dir: str | Path) -> pd.DataFrame:
    folder = Path(study_dir) / CURVES_DIR
    if not folder.is_dir():
        return pd.DataFrame()
    partitioning = ds.partitioning(pa.schema([(PARTITION, pa.string())]), flavor="hive")
    # Files starting with '.' are atomic writes in flight; pyarrow skips them by default.
    table = ds.dataset(folder, format="parquet", partitioning=partitioning).to_table()
    curves = table.to_pandas()
    if curves.empty:
        return curves
    first = [column for column in ("study", "trial_id", "epoch") if column in curves]
    curves = curves[first + [column for column in curves if column not in first]]
    return curves.sort_values(["trial_id", "epoch"], kind="stable").reset_index(drop=True)


def load_study(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trials, curves) of the study folder or study URI `path` as pandas frames."""
    study_dir = _study_dir(path)
    trials_file = study_dir / TRIALS_FILE
    trials = pd.read_parquet(trials_file) if trials_file.is_file() else pd.DataFrame()
    return trials, load_curves(study_dir)


def read_study_json(study_dir: str | Path) -> dict[str, Any]:
    try:
        return json.loads((Path(study_dir) / STUDY_JSON).read_text())["study"]
    except (OSError, ValueError, KeyError):
        raise LrwaError(f"{study_dir} is not an lrwa study folder (no readable "
                        f"{STUDY_JSON})") from None


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
    """Completed and early-stopped trials, best first by the first objective; with two
    objectives a `pareto` column marks the front."""
    metrics = [objective["metric"] for objective in objectives]
    if trials.empty:
        return trials
    ranked = trials[trials["status"].isin(RANKED_STATUSES)].dropna(subset=metrics).copy()
    if ranked.empty:
        return ranked
    if len(metrics) > 1:
        ranked["pareto"] = pareto_mask(ranked[metrics].to_numpy(float),
                                       [objective["direction"] for objective in objectives])
    ascending = objectives[0]["direction"] == "min"
    # Completed trials rank above ones ASHA stopped: their numbers cover the whole run.
    ranked["_complete"] = ranked["status"] == "completed"
    ranked = ranked.sort_values(["_complete", metrics[0]], ascending=[False, ascending],
                                kind="stable")
    return ranked.drop(columns="_complete").reset_index(drop=True)


def best_config(trials: pd.DataFrame, objectives: list[dict[str, str]]) -> tuple[str, dict]:
    ranked = rank_trials(trials, objectives)
    if ranked.empty:
        raise LrwaError("no completed trial yet: nothing to report as best")
    if "pareto" in ranked:
        front = ranked[ranked["pareto"]]
        ranked = front if not front.empty else ranked
    row = ranked.iloc[0]
    return str(row["trial_id"]), json.loads(row["config"])


# -- plots ---------------------------------------------------------------------------------

def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display on clusters and CI
    import matplotlib.pyplot as plt

    return plt


def _save(figure: Any, path: Path) -> Path:
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=110)
    _pyplot().close(figure)
    return path


def _finish_plot(figure: Any, axis: Any, path: Path, xlabel: str, ylabel: str, title: str,
                 legend_size: float | None = None) -> Path:
    """Labels, grid, optional legend, then the atomic save every report plot shares."""
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    if legend_size is not None:
        axis.legend(fontsize=legend_size)
    figure.tight_layout()
    return _save(figure, path)


def _ranked_settings(ranked: pd.DataFrame, settings: pd.DataFrame) -> pd.DataFrame:
    """The settings rows of the ranked trials (none when nothing is ranked)."""
    return settings.loc[ranked.index] if not ranked.empty else settings.iloc[:0]


def _settings(trials: pd.DataFrame) -> pd.DataFrame:
    """Every DistillConfig key of every trial as columns (searched or not)."""
    configs = [json.loads(text) if isinstance(text, str) else {} for text in trials["config"]]
    return pd.DataFrame(configs, index=trials.index)


def plot_top_curves(curves: pd.DataFrame, ranked: pd.DataFrame, path: Path,
                    top: int) -> Path | None:
    if curves.empty or ranked.empty:
        return None
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 4))
    for trial_id in ranked["trial_id"].head(top):
        curve = curves[curves["trial_id"] == trial_id].dropna(subset=["test_acc"])
        axis.plot(curve["epoch"], 100 * curve["test_acc"], marker="o", markersize=2,
                  label=trial_id)
    return _finish_plot(figure, axis, path, "epoch", "test accuracy (%)",
                        f"learning curves of the top {min(top, len(ranked))} trials", 7)


def plot_curves_by_mode(curves: pd.DataFrame, path: Path) -> Path | None:
    if curves.empty or "mode" not in curves:
        return None
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 4))
    groups = curves.dropna(subset=["test_acc"]).groupby(["mode", "replay"])
    for index, ((mode, replay), group) in enumerate(groups):
        colour = f"C{index % 10}"
        for _, curve in group.groupby("trial_id"):
            axis.plot(curve["epoch"], 100 * curve["test_acc"], color=colour, alpha=0.25)
        mean = group.groupby("epoch")["test_acc"].mean()
        axis.plot(mean.index, 100 * mean.to_numpy(), color=colour, linewidth=2.5,
                  label=f"{mode} / {replay} (mean of {group['trial_id'].nunique()})")
    return _finish_plot(figure, axis, path, "epoch", "test accuracy (%)",
                        "learning curves by mode and replay", 8)


def plot_alpha_ratio(ranked: pd.DataFrame, settings: pd.DataFrame, metric: str,
                     path: Path) -> Path | None:
    frame = _ranked_settings(ranked, settings)
    if frame.empty or frame["alpha"].nunique() < 2 and frame["replay_ratio"].nunique() < 2:
        return None
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4.5))
    points = axis.scatter(frame["alpha"], frame["replay_ratio"], c=ranked[metric], s=60,
                          cmap="viridis", edgecolors="black")
    figure.colorbar(points, ax=axis, label=metric)
    if (frame["alpha"] > 0).all() and frame["alpha"].nunique() > 1:
        axis.set_xscale("log")
    return _finish_plot(figure, axis, path, "alpha (inner step size)", "replay ratio",
                        f"{metric} over alpha x replay ratio")


def plot_buffer_size(ranked: pd.DataFrame, settings: pd.DataFrame, metric: str,
                     path: Path) -> Path | None:
    frame = _ranked_settings(ranked, settings)
    if frame.empty or frame["buffer_size"].nunique() < 2:
        return None
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    for index, (mode, group) in enumerate(ranked.groupby(frame["mode"])):
        axis.scatter(frame.loc[group.index, "buffer_size"], group[metric], label=mode,
                     color=f"C{index}", s=50, edgecolors="black")
    axis.set_xscale("log")
    return _finish_plot(figure, axis, path, "buffer size (samples)", metric,
                        f"effect of buffer size on {metric}", 10)


def parameter_importances(study_dir: Path, name: str,
                          multi_objective: bool) -> tuple[dict[str, float] | None, str]:
    """Optuna's importances of the searched keys, or None and the reason."""
    import optuna

    journal = study_dir / OPTUNA_FILE
    if not journal.is_file():
        return None, "no Optuna journal in the study folder"
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name,
                              storage=JournalStorage(JournalFileBackend(str(journal))))
    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(completed) < 2:
        return None, f"parameter importances need 2 completed trials, found {len(completed)}"
    target = (lambda trial: trial.values[0]) if multi_objective else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "importances will be equal" on few trials
            return optuna.importance.get_param_importances(study, target=target), ""
    except (RuntimeError, ValueError, ZeroDivisionError) as error:
        return None, f"parameter importances not available ({error})"


def plot_importances(importances: dict[str, float], path: Path) -> Path:
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 0.5 + 0.45 * len(importances)))
    names = list(importances)[::-1]
    axis.barh(names, [importances[name] for name in names], color="C0")
    axis.set_xlabel("importance (Optuna)")
    axis.set_title("hyperparameter importances")
    figure.tight_layout()
    return _save(figure, path)


# -- the report ------------------------------------------------------------------------------

def _show(value: Any, metric: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if metric == "var_acc":
        return f"{1e4 * value:.2f}"
    if metric in ("best_acc", "mean_acc", "final_acc", "max_drop"):
        return f"{100 * value:.2f}"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def print_best(ranked: pd.DataFrame, study: dict[str, Any], top: int) -> None:
    from rich.console import Console
    from rich.table import Table

    metrics = [objective["metric"] for objective in study["objectives"]]
    searched = list(study["space"])
    table = Table(title=f"best trials of '{study['name']}' (accuracy in %, var in %^2)")
    columns = ["rank", "trial", "status", *dict.fromkeys(
        [*metrics, "best_acc", "mean_acc", "var_acc"]), *searched, "epochs"]
    if "pareto" in ranked:
        columns.insert(3, "pareto")
    for column in columns:
        table.add_column(column, justify="left" if column in ("trial", "status") else "right")
    for rank, (_, row) in enumerate(ranked.head(top).iterrows(), start=1):
        cells = []
        for column in columns:
            if column == "rank":
                cells.append(str(rank))
            elif column == "trial":
                cells.append(str(row["trial_id"]))
            elif column == "epochs":
                cells.append(f"{row['epochs_run']}/{row['epochs']}")
            elif column == "pareto":
                cells.append("*" if row["pareto"] else "")
            else:
                cells.append(_show(row[column], column))
        table.add_row(*cells)
    # Off a terminal (a log, a pipe) rich would squeeze the table into 80 columns.
    Console(width=None if sys.stdout.isatty() else 160).print(table)


def write_report(path: str | Path, top: int = 5, plots: bool = True,
                 out: Any = print) -> dict[str, Any]:
    """`lrwa report STUDY`: the best trials, best_config.yaml and the plots."""
    study_dir = _study_dir(path)
    result = _write_report(study_dir, top, plots, out)
    if is_remote(path):
        storage, name = split_study_uri(str(path))
        TreePusher(storage, name).push(BEST_CONFIG, REPORT_DIR)
        out(f"report copied to {storage.location(name)}/ ({BEST_CONFIG}, {REPORT_DIR}/)")
    return result


def _write_report(study_dir: Path, top: int, plots: bool, out: Any) -> dict[str, Any]:
    study = read_study_json(study_dir)
    trials, curves = load_study(study_dir)
    objectives = study["objectives"]
    metric = objectives[0]["metric"]
    counts = trials["status"].value_counts().to_dict() if not trials.empty else {}
    out(f"study '{study['name']}': {len(trials)} trials ("
        + ", ".join(f"{count} {status}" for status, count in counts.items()) + ")")
    errored = trials[trials["status"] == "errored"] if not trials.empty else trials
    for _, row in errored.iterrows():
        out(f"  errored {row['trial_id']}: {row['error']}")
    ranked = rank_trials(trials, objectives)
    result: dict[str, Any] = {"ranked": ranked, "plots": [], "notes": []}
    if ranked.empty:
        out("no completed trial yet: no best configuration to write")
        return result
    print_best(ranked, study, top)
    trial_id, config = best_config(trials, objectives)
    best_file = study_dir / BEST_CONFIG
    header = (f"# best trial {trial_id} of study '{study['name']}' by "
              f"{objectives[0]['direction']} {metric}\n"
              f"# rerun: lrwa distill --config {best_file} --out runs/{study['name']}-best\n")
    write_text(best_file, header + yaml.safe_dump(config, sort_keys=False))
    result.update({"best_trial": trial_id, "best_config": best_file})
    out(f"best configuration (trial {trial_id}) -> {best_file}")
    if not plots:
        return result
    report_dir = study_dir / REPORT_DIR
    settings = _settings(ranked)
    drawn = [
        plot_top_curves(curves, ranked, report_dir / "top_learning_curves.png", top),
        plot_curves_by_mode(curves, report_dir / "learning_curves_by_mode.png"),
        plot_alpha_ratio(ranked, settings, metric, report_dir / "alpha_replay_ratio.png"),
        plot_buffer_size(ranked, settings, metric, report_dir / "buffer_size.png"),
    ]
    importances, note = parameter_importances(study_dir, study["name"],
                                              len(objectives) > 1)
    if importances:
        drawn.append(plot_importances(importances, report_dir / "importances.png"))
        out("importances: " + ", ".join(f"{name} {value:.2f}"
                                        for name, value in importances.items()))
    else:
        result["notes"].append(note)
        out(f"note: {note}")
    result["plots"] = [plot for plot in drawn if plot is not None]
    out(f"plots -> {report_dir}/ ({', '.join(p.name for p in result['plots'])})")
    return result
