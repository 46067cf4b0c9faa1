"""Learning evolution: the report of issue 13's comparison, drawn from two lrwa studies.

Test accuracy against epochs on mnist5k (embedded LeNet-5 teacher -> lenet5-half) for
DFAD-style acquire, MB-DFKD and PRE-DFKD in their authors' concatenated form, LRWA by the
paper's equation (memory bank, generative replay), LRWA in LRA's loss form with theta'
connected, and the update LRA's released code computes. Both studies run with `lrwa tune`
and resume like any study; this script only reads them back (`lrwa.tune.load_study`, and
the Optuna journal for the wall time) and writes the tables, verdicts and plot:

    lrwa tune learning_evolution_tuning --storage runs/evidence   # equal tuning budgets, val
    lrwa tune learning_evolution --storage runs/evidence          # 8 variants x 5 seeds, test
    python benchmarks/learning_evolution.py --storage runs/evidence

It writes, into --out-dir (default benchmarks/): BENCHMARKS.md, whose discussion comes
from learning_evolution_notes.md; learning_evolution_curves.csv (the final study, one row
per run and epoch); learning_evolution_tuning.csv (one row per tuning trial); and
learning_evolution_mnist5k.png.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

HERE = Path(__file__).resolve().parent
TUNING_STUDY = "learning_evolution_tuning"
FINAL_STUDY = "learning_evolution"
COMPLETED = "completed"
# The final study's variants, in the order of every table and legend.
SYSTEMS = {
    "dfad": "DFAD (acquire)",
    "mb-dfkd": "MB-DFKD",
    "pre-dfkd": "PRE-DFKD",
    "lrwa-memory": "LRWA (memory bank)",
    "lrwa-generative": "LRWA (generative replay)",
    "lrwa-lra-form": "LRWA, LRA's loss form (θ′ connected)",
    "released": "released update (θ′ detached)",
    "lrwa-memory-mb-lr": "control: LRWA (memory bank) at MB-DFKD's student_lr",
}
COLOURS = {"dfad": "C0", "mb-dfkd": "C1", "pre-dfkd": "C2", "lrwa-memory": "C3",
           "lrwa-generative": "C4", "lrwa-lra-form": "C5", "released": "C6",
           "lrwa-memory-mb-lr": "C3"}
# A control is not tuned: it takes each value from a tuned system (key -> system).
CONTROLS = {"lrwa-memory-mb-lr": {"student_lr": "mb-dfkd", "alpha": "lrwa-memory"}}
# The systems with an inner step tune alpha as their second axis; the others tune seeds.
ALPHA_SYSTEMS = ("lrwa-memory", "lrwa-generative", "lrwa-lra-form")
# The plot's first two panels, as in the seed's figures: each joint baseline against LRWA
# with the same replay (and the control at the baseline's learning rate).
PANELS = ((("mb-dfkd", "lrwa-memory", "lrwa-memory-mb-lr"), "MB-DFKD vs LRWA (memory bank)"),
          (("pre-dfkd", "lrwa-generative"), "PRE-DFKD vs LRWA (generative replay)"))
# Verdicts: (baseline, LRWA system). The paper claims a higher mean accuracy over epochs
# and a lower variance over epochs than the baseline with the same replay.
COMPARISONS = (("mb-dfkd", "lrwa-memory"), ("mb-dfkd", "lrwa-memory-mb-lr"),
               ("pre-dfkd", "lrwa-generative"), ("mb-dfkd", "lrwa-lra-form"),
               ("dfad", "lrwa-memory"), ("dfad", "lrwa-generative"))
# The released update is MB-DFKD's step (the engine's tests prove it for single steps).
IDENTICAL = ("mb-dfkd", "released")
COLUMNS = (("best", "best %"), ("mean", "mean %"), ("var", "var %²"), ("first", "epoch 1 %"),
           ("final", "final %"),
           ("max_drop", "largest drop"), ("gap", "teacher gap"), ("s_per_epoch", "s / epoch"))


def name_of(system: str) -> str:
    return SYSTEMS.get(system, system)


def ordered(names: Iterable[str]) -> list[str]:
    present = set(names)
    return [name for name in SYSTEMS if name in present] + sorted(present - set(SYSTEMS))


# -- reading the studies ----------------------------------------------------------------------

def load(storage: Path, name: str) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """(trials, curves, resolved study) of STORAGE/<name>. Both frames get a `system`
    column; the trials also get each run's student_lr and alpha from its config."""
    from lrwa.errors import LrwaError
    from lrwa.tune import load_study
    from lrwa.tune.results import open_results, read_study_record

    location = str(storage / name)
    try:
        trials, curves = load_study(location)
    except LrwaError as error:
        raise LrwaError(f"{error}; run `lrwa tune {name} --storage {storage}` first") from None
    if trials.empty:
        raise LrwaError(f"{location} has no trials yet; run `lrwa tune {name} --storage "
                        f"{storage}` first")
    record = read_study_record(open_results(location)) or {}
    settings = pd.DataFrame([json.loads(text) for text in trials["config"]])
    trials = trials.assign(system=trials["variant"].map(system_of),
                           student_lr=settings["student_lr"].to_numpy(),
                           alpha=settings["alpha"].to_numpy())
    if not curves.empty:
        curves = curves.assign(system=curves["variant"].map(system_of))
    return trials, curves, record.get("study", {})


def system_of(variant: str) -> str:
    """A tuning variant is `<system>.lr-<value>.<axis>-<value>`; a final one is the system."""
    return variant.split(".", 1)[0]


def finished(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials that ran every epoch (a study cut short has unfinished or errored ones)."""
    return trials[(trials["status"] == COMPLETED) & (trials["epochs_run"] == trials["epochs"])]


def active_wall_s(storage: Path, name: str) -> float | None:
    """The study's wall time: the union of its trials' [start, end] in the Optuna journal,
    so the pauses between interrupted invocations are not counted."""
    from lrwa.tune.journal import open_optuna_study
    from lrwa.tune.results import open_results

    optuna_study = open_optuna_study(open_results(str(storage / name)))
    if optuna_study is None:
        return None
    spans = sorted((trial.datetime_start, trial.datetime_complete)
                   for trial in optuna_study.get_trials(deepcopy=False)
                   if trial.datetime_start and trial.datetime_complete)
    total, end = 0.0, None
    for start, stop in spans:
        if end is None or start > end:
            total += (stop - start).total_seconds()
            end = stop
        elif stop > end:
            total += (stop - end).total_seconds()
            end = stop
    return total


def resumed_trials(storage: Path, name: str) -> int | None:
    """How many trials Ray resumed from a checkpoint (after their process or the driver
    stopped): those whose results restart the count `iterations_since_restore` mid-run.
    Read from Ray's per-trial result.json, so only for folder storage."""
    folder = storage / name / "ray"
    if not folder.is_dir():
        return None
    resumed = 0
    for results in folder.glob("*/result.json"):
        rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
        resumed += any(row.get("iterations_since_restore") != row.get("training_iteration")
                       for row in rows)
    return resumed


# -- the tuning study -------------------------------------------------------------------------

def tuning_grid(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per tuning trial: system, student_lr, its second axis (alpha or seed) and
    value, and the mean validation accuracy in % (NaN when it did not finish)."""
    ok = trials.index.isin(finished(trials).index)
    axis = trials["system"].map(lambda system: "alpha" if system in ALPHA_SYSTEMS else "seed")
    return pd.DataFrame({
        "system": trials["system"], "student_lr": trials["student_lr"].astype(float),
        "axis": axis,
        "value": [float(trial[name]) for (_, trial), name in zip(trials.iterrows(), axis,
                                                                 strict=True)],
        "val_mean_acc": (100 * trials["mean_acc"]).where(ok),
        "status": trials["status"],
    }).sort_values(["system", "student_lr", "value"]).reset_index(drop=True)


def choose(grid: pd.DataFrame) -> pd.DataFrame:
    """Per system: the chosen student_lr (and alpha), by the best mean validation accuracy.
    The seed-axis systems judge each learning rate by its mean over the seeds; a failed
    trial never wins, and a learning rate with a failed seed is not chosen."""
    rows = []
    for system, group in grid.groupby("system", sort=False):
        by_alpha = group["axis"].iloc[0] == "alpha"
        keys = ["student_lr", "value"] if by_alpha else ["student_lr"]
        scores = group.groupby(keys)["val_mean_acc"].apply(
            lambda values: values.mean() if values.notna().all() else math.nan)
        best = scores.idxmax() if scores.notna().any() else None
        lr, alpha = (best if by_alpha else (best, None)) if best is not None else (None, None)
        rows.append({"system": system, "student_lr": lr, "alpha": alpha,
                     "val_mean_acc": scores.max(),
                     "lr_edge": edge(lr, group["student_lr"]),
                     "alpha_edge": edge(alpha, group["value"]) if by_alpha else ""})
    return pd.DataFrame(rows).set_index("system")


def edge(chosen: float | None, tried: pd.Series) -> str:
    """Where the chosen value sits among the values tried: 'low edge', 'high edge' or ''."""
    values = sorted(set(tried))
    if chosen is None or len(values) < 3:
        return "nothing chosen" if chosen is None else "grid too small"
    return "low edge" if chosen == values[0] else "high edge" if chosen == values[-1] else ""


def chosen_table(chosen: pd.DataFrame) -> list[str]:
    lines = ["| system | student_lr | alpha | mean val acc % | at an edge? |",
             "|---|---:|---:|---:|---|"]
    for system in ordered(chosen.index):
        row = chosen.loc[system]
        if row["student_lr"] is None or pd.isna(row["student_lr"]):
            lines.append(f"| {name_of(system)} | – | – | – | nothing chosen: no learning rate "
                         "finished on every trial |")
            continue
        where = ", ".join(f"{knob} at its {side}" for knob, side in
                          (("student_lr", row["lr_edge"]), ("alpha", row["alpha_edge"])) if side)
        alpha = "–" if row["alpha"] is None or pd.isna(row["alpha"]) else f"{row['alpha']:g}"
        lines.append(f"| {name_of(system)} | {row['student_lr']:g} | {alpha} "
                     f"| {row['val_mean_acc']:.2f} | {'YES: ' + where if where else 'no'} |")
    return lines


def trial_tables(grid: pd.DataFrame, chosen: pd.DataFrame) -> list[str]:
    """Every tuning trial: rows (system, student_lr), columns the second axis' values."""
    lines = []
    for axis in ("alpha", "seed"):
        part = grid[grid["axis"] == axis]
        if part.empty:
            continue
        values = sorted(part["value"].unique())
        head = [f"{axis} {value:g}" for value in values] + (["mean"] if axis == "seed" else [])
        lines += ["| system | student_lr | " + " | ".join(head) + " |",
                  "|---|---:|" + "---:|" * len(head)]
        for system in ordered(part["system"]):
            pick = chosen.loc[system]
            for lr, group in part[part["system"] == system].groupby("student_lr"):
                scores = group.set_index("value")["val_mean_acc"]
                cells = [float(scores.get(value, math.nan)) for value in values]
                here = lr == pick["student_lr"]
                bold = [here and axis == "alpha" and value == pick["alpha"] for value in values]
                if axis == "seed":
                    cells.append(math.nan if any(map(math.isnan, cells))
                                 else sum(cells) / len(cells))
                    bold.append(here)
                text = [cell_text(cell, mark) for cell, mark in zip(cells, bold, strict=True)]
                lines.append(f"| {name_of(system)} | {lr:g} | " + " | ".join(text) + " |")
        lines.append("")
    return lines


def cell_text(value: float, bold: bool) -> str:
    text = "–" if math.isnan(value) else f"{value:.2f}"
    return f"**{text}**" if bold else text


def budget_text(grid: pd.DataFrame) -> str:
    """'12 per system', or each system's count when the budgets differ (they should not)."""
    counts = grid.groupby("system").size()
    if counts.nunique() == 1:
        return f"{counts.iloc[0]} per system"
    return "UNEQUAL budgets: " + ", ".join(f"{name_of(name)} {count}"
                                          for name, count in counts.items())


# -- the final study --------------------------------------------------------------------------

def per_run_statistics(trials: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame:
    """One row per finished run: the papers' curve statistics in percent, and s / epoch
    (the median over the run's epochs: on a shared machine a few epochs wait on others)."""
    runs = finished(trials)
    seconds = curves.groupby("trial_id")["wall_s"].median()
    # The variance over epochs weighs the climb from chance: a curve that starts higher has
    # a lower variance without learning any steadier, so the first epoch is shown beside it.
    first = curves.sort_values("epoch").groupby("trial_id")["test_acc"].first()
    return pd.DataFrame({
        "system": runs["system"], "seed": runs["seed"],
        "best": 100 * runs["best_acc"], "mean": 100 * runs["mean_acc"],
        "var": 1e4 * runs["var_acc"], "first": 100 * runs["trial_id"].map(first),
        "final": 100 * runs["final_acc"],
        "max_drop": 100 * runs["max_drop"], "gap": 100 * runs["teacher_gap"],
        "best_of_teacher": 100 * runs["best_acc"] / runs["teacher_acc"],
        "s_per_epoch": runs["trial_id"].map(seconds),
    }).reset_index(drop=True)


def spread(values: pd.Series) -> float:
    """The standard deviation over seeds (n - 1: five seeds are a sample)."""
    return float(values.std(ddof=1)) if len(values) > 1 else math.nan


def statistics_table(runs: pd.DataFrame) -> list[str]:
    lines = ["| system | seeds | " + " | ".join(title for _, title in COLUMNS) + " |",
             "|---|---:|" + "---:|" * len(COLUMNS)]
    for system in ordered(runs["system"]):
        group = runs[runs["system"] == system]
        cells = [f"{group[column].mean():.2f} ± {spread(group[column]):.2f}"
                 for column, _ in COLUMNS]
        lines.append(f"| {name_of(system)} | {len(group)} | " + " | ".join(cells) + " |")
    return lines


def compare(ours: pd.Series, baseline: pd.Series, better: int) -> tuple[str, float]:
    """The verdict on `ours` against `baseline` (`better`: 1 when higher is better, -1 when
    lower is), and the spread it was judged by: the difference of the means against
    sqrt(std_a² + std_b²), the spread of the difference between one run of each."""
    difference = better * (ours.mean() - baseline.mean())
    width = math.hypot(spread(ours), spread(baseline))
    if math.isnan(width):
        return "too few seeds to judge", width
    verdict = ("holds, outside the seed spread" if difference > width else
               "within the seed spread" if difference > -width
               else "REVERSED, outside the seed spread")
    return verdict, width


def target_lines(runs: pd.DataFrame) -> list[str]:
    shares = runs.groupby("system")["best_of_teacher"]
    missed = [(name_of(name), shares.get_group(name).mean()) for name in ordered(runs["system"])
              if shares.get_group(name).mean() < 95]
    lines = ["- every system's best >= 95% of the teacher's: " + (
        "holds" if not missed else "MISSED by " + ", ".join(f"{name} {share:.1f}%"
                                                            for name, share in missed))]
    for system in ("lrwa-memory", "lrwa-generative"):
        if system in shares.groups:
            share = shares.get_group(system)
            verdict = "holds" if share.mean() >= 99 else "MISSED"
            lines.append(f"- {name_of(system)} best >= 99% of the teacher's: {verdict} "
                         f"({share.mean():.1f}% ± {spread(share):.1f})")
    return lines


def verdict_lines(runs: pd.DataFrame) -> list[str]:
    lines = []
    for baseline, ours in COMPARISONS:
        a, b = runs[runs["system"] == ours], runs[runs["system"] == baseline]
        if a.empty or b.empty:
            continue
        for column, better, words in (("mean", 1, "mean accuracy over epochs higher"),
                                      ("var", -1, "variance over epochs lower")):
            verdict, width = compare(a[column], b[column], better)
            lines.append(f"- {name_of(ours)}: {words} than {name_of(baseline)}: {verdict} "
                         f"({a[column].mean():.2f} vs {b[column].mean():.2f}; seed spread "
                         f"sqrt(std²+std²) = {width:.2f})")
    return lines


def identical_line(curves: pd.DataFrame, trials: pd.DataFrame) -> str:
    """Whether the released update's runs equal MB-DFKD's epoch for epoch, seed for seed."""
    first, second = IDENTICAL
    claim = f"- {name_of(second)} == {name_of(first)} epoch for epoch"
    runs = finished(trials).set_index(["system", "seed"])
    seeds = sorted(set(runs.loc[first].index) & set(runs.loc[second].index)) if {
        first, second} <= set(runs.index.get_level_values(0)) else []
    if not seeds:
        return f"{claim}: not checked (no seed has finished runs of both)"
    differing = []
    for seed in seeds:
        rates = runs.loc[(first, seed), "student_lr"], runs.loc[(second, seed), "student_lr"]
        if rates[0] != rates[1]:
            return f"{claim}: not checked (student_lr {rates[1]:g} vs {rates[0]:g})"
        one, two = (curves[(curves["seed"] == seed) & (curves["system"] == system)]
                    .set_index("epoch")["test_acc"] for system in (first, second))
        if not one.equals(two):
            differing.append(seed)
    if differing:
        return f"{claim}: NO, seeds {differing} differ"
    return (f"{claim}: holds (test accuracy identical at all {len(seeds)} seeds x "
            f"{int(runs['epochs'].max())} epochs)")


def tuning_identical_line(grid: pd.DataFrame) -> str:
    """The same check on the tuning trials, where both ran the same learning rates and seeds."""
    first, second = IDENTICAL
    one, two = (grid[grid["system"] == system].set_index(["student_lr", "value"])["val_mean_acc"]
                for system in IDENTICAL)
    shared = one.index.intersection(two.index)
    same = sum(1 for key in shared if one[key] == two[key]
               or (math.isnan(one[key]) and math.isnan(two[key])))
    return (f"- the same in the tuning study: {same} of {len(shared)} tuning trials of "
            f"{name_of(second)} have exactly {name_of(first)}'s mean validation accuracy "
            "at the same student_lr and seed")


def uses_chosen_line(trials: pd.DataFrame, chosen: pd.DataFrame) -> str:
    """Whether the final study runs each system at the values its tuning chose (and each
    control at the values of the systems it borrows from)."""
    problems = []
    for system, group in trials.groupby("system"):
        sources = CONTROLS.get(system, {"student_lr": system, "alpha": system})
        for key, source in sources.items():
            if key == "alpha" and source not in ALPHA_SYSTEMS:
                continue
            if source not in chosen.index:
                problems.append(f"{system} has no tuned {key} ({source} was not tuned)")
                continue
            wanted, used = chosen.loc[source, key], sorted(set(group[key]))
            if used != [wanted]:
                problems.append(f"{system} runs {key} {used}, tuning chose {wanted:g}")
    return ("- the final study runs every system at its tuned values: "
            + ("holds" if not problems else "NO: " + "; ".join(problems)))


# -- the plot ---------------------------------------------------------------------------------

def plot(curves: pd.DataFrame, teacher_acc: float, path: Path, title: str) -> None:
    """The seed's two panels and every system: mean over seeds, band = min..max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from lrwa.atomic import atomic_path

    systems = [name for name in ordered(curves["system"]) if name not in CONTROLS]
    panels = [*PANELS, (tuple(systems), "all systems (the control left out)")]
    figure, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 5.0))
    # The first quarter climbs from chance; the scale is set by the rest of the run.
    later = 100 * curves[curves["epoch"] > curves["epoch"].max() // 4]["test_acc"]
    low = max(0.0, min(100 * teacher_acc - 12, later.min() - 2))
    for axis, (members, heading) in zip(axes, panels, strict=True):
        for system in members:
            draw_system(axis, curves, system, band_alpha=0.2 if len(members) <= 3 else 0.07)
        axis.axhline(100 * teacher_acc, color="grey", linestyle=":", label="teacher")
        axis.set_ylim(low, min(100.0, 100 * teacher_acc + 1.5))
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_xlabel("epoch")
        axis.set_ylabel("test accuracy (%)")
        axis.set_title(heading, fontsize=10)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7.5, loc="lower right")
    figure.suptitle(title)
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=110)
    plt.close(figure)


def draw_system(axis: Any, curves: pd.DataFrame, system: str, band_alpha: float) -> None:
    by_epoch = 100 * curves[curves["system"] == system].pivot_table(
        index="epoch", columns="seed", values="test_acc")
    if by_epoch.empty:
        return
    # The released update lies exactly on MB-DFKD: dashed, so both stay visible; a control
    # is dashed in the colour of the system it varies.
    colour = COLOURS.get(system)
    style = "--" if system == IDENTICAL[1] or system in CONTROLS else "-"
    seeds = by_epoch.shape[1]
    axis.plot(by_epoch.index, by_epoch.mean(axis=1), style, color=colour, linewidth=1.6,
              label=f"{name_of(system)} ({seeds} seed{'s' if seeds != 1 else ''})")
    axis.fill_between(by_epoch.index, by_epoch.min(axis=1), by_epoch.max(axis=1),
                      color=colour, alpha=band_alpha, linewidth=0)


# -- the whole report -------------------------------------------------------------------------

def hours(seconds: float | None) -> str:
    return "unknown" if seconds is None else f"{seconds / 60:.0f} min ({seconds / 3600:.2f} h)"


def partial_note(trials: pd.DataFrame, study: dict[str, Any], name: str) -> str:
    done, budget = len(finished(trials)), study.get("trials", len(trials))
    return "" if done == budget else (f" **Partial: {done} of {budget} trials of `{name}` have "
                                      "finished; rerun its `lrwa tune` command to complete it.**")


def setup_text(study: dict[str, Any], teacher_acc: float) -> str:
    base = study.get("base", {})
    return (f"Teacher: the embedded mnist5k LeNet-5 ({100 * teacher_acc:.2f}% test accuracy) "
            f"-> student `{base.get('student')}`, the small preset of `lrwa.config` at "
            f"{base.get('iters_per_epoch')} iterations an epoch (batch {base.get('batch_size')}, "
            f"{base.get('student_steps')} student steps an iteration, memory bank of "
            f"{base.get('buffer_size')} ({base.get('insertion')}), replay ratio "
            f"{base.get('replay_ratio')}, SGD with a cosine schedule), "
            f"{base.get('epochs')} epochs; {study.get('max_concurrent')} runs side by side, "
            f"{study.get('cpus', 1):g} CPU each. Statistics are over the epochs of one run, "
            "then mean ± std over seeds (std with n - 1); var is in %²; s / epoch is the "
            "median wall time of a run's epochs.")


def header(storage: Path, trials: pd.DataFrame, tuning_trials: pd.DataFrame,
           walls: tuple[float | None, float | None],
           resumed: tuple[int | None, int | None]) -> list[str]:
    shas = sorted(set(trials["version_git"].dropna()) | set(tuning_trials["version_git"]
                                                             .dropna()))
    trial_hours = (tuning_trials["wall_s"].sum() + trials["wall_s"].sum()) / 3600
    return [
        "# Benchmarks: learning evolution on mnist5k",
        "",
        (f"Generated by `python benchmarks/learning_evolution.py --storage {storage}` from "
         f"the studies `{TUNING_STUDY}` and `{FINAL_STUDY}` (lrwa "
         f"{trials['version_lrwa'].iloc[0]}, torch {trials['version_torch'].iloc[0]}, git "
         f"{', '.join(sha[:7] for sha in shas) or 'unknown'}). Do not edit by hand; the "
         "discussion at the end comes from `benchmarks/learning_evolution_notes.md`."),
        "",
        "    lrwa tune learning_evolution_tuning --storage runs/evidence",
        "    lrwa tune learning_evolution --storage runs/evidence",
        "    python benchmarks/learning_evolution.py --storage runs/evidence",
        "",
        (f"Wall time: tuning {hours(walls[0])}, final study {hours(walls[1])}: the time "
         f"trials were running, from the Optuna journals ({len(tuning_trials)} + "
         f"{len(trials)} trials, {trial_hours:.2f} h of trial time in all)."
         + ("" if None in resumed else
            f" Ray resumed {resumed[0]} tuning and {resumed[1]} final trials from their last "
            "checkpoint after their process or the driver had stopped (`ray/*/result.json`); "
            "on the CPU a resumed run continues exactly as if uninterrupted "
            "(tests/test_distiller.py).")),
    ]


def final_section(trials: pd.DataFrame, curves: pd.DataFrame, study: dict[str, Any],
                  grid: pd.DataFrame, chosen: pd.DataFrame, image: Path) -> list[str]:
    runs = per_run_statistics(trials, curves)
    teacher_acc = float(trials["teacher_acc"].dropna().iloc[0])
    return [
        f"## mnist5k: {runs['seed'].nunique()} seeds x {int(trials['epochs'].max())} epochs, "
        "test split" + partial_note(trials, study, FINAL_STUDY),
        "",
        setup_text(study, teacher_acc),
        "",
        *statistics_table(runs),
        "",
        "Verdicts (computed by the script from the runs above):",
        "",
        *target_lines(runs),
        *verdict_lines(runs),
        identical_line(curves, trials),
        tuning_identical_line(grid),
        uses_chosen_line(finished(trials), chosen),
        "",
        f"![mnist5k]({image.name})",
    ]


def tuning_section(tuning_trials: pd.DataFrame, study: dict[str, Any], grid: pd.DataFrame,
                   chosen: pd.DataFrame) -> list[str]:
    return [
        "## Tuning: the same budget for every system"
        + partial_note(tuning_trials, study, TUNING_STUDY),
        "",
        (f"{len(tuning_trials)} trials of {int(tuning_trials['epochs'].max())} epochs on the "
         f"validation split (never the test split), {budget_text(grid)}: learning rates x "
         "alpha for the systems with an inner step, learning rates x seeds for the others, "
         "which judge each learning rate by its mean over the seeds. Chosen: the best mean "
         "validation accuracy over epochs. A value at the end of its grid is flagged, because "
         "a wider grid could move it."),
        "",
        *chosen_table(chosen),
        "",
        ("Every tuning trial (mean validation accuracy % over epochs; – did not finish; the "
        "chosen cell in bold):"),
        "",
        *trial_tables(grid, chosen),
    ]


def report(storage: Path, out_dir: Path) -> str:
    """Read both studies, write the CSVs and the plot into `out_dir`, return BENCHMARKS.md."""
    tuning_trials, _, tuning_study = load(storage, TUNING_STUDY)
    trials, curves, study = load(storage, FINAL_STUDY)
    if trials["teacher_acc"].dropna().empty or finished(trials).empty:
        from lrwa.errors import LrwaError

        raise LrwaError(f"{storage / FINAL_STUDY} has no finished run yet; run `lrwa tune "
                        f"{FINAL_STUDY} --storage {storage}` to continue it")
    grid = tuning_grid(tuning_trials)
    chosen = choose(grid)
    kept = curves[curves["trial_id"].isin(finished(trials)["trial_id"])]
    columns = ["system", "seed", "epoch", "test_acc", "loss_acq", "loss_ret", "grad_cos",
               "wall_s", "lr"]
    kept[columns].sort_values(["system", "seed", "epoch"]).to_csv(
        out_dir / "learning_evolution_curves.csv", index=False)
    grid.to_csv(out_dir / "learning_evolution_tuning.csv", index=False)
    image = out_dir / "learning_evolution_mnist5k.png"
    plot(kept, float(trials["teacher_acc"].dropna().iloc[0]), image,
         f"mnist5k, lenet5 -> lenet5-half, test split: mean over {kept['seed'].nunique()} "
         "seeds, band = min..max over seeds")
    walls = (active_wall_s(storage, TUNING_STUDY), active_wall_s(storage, FINAL_STUDY))
    resumed = (resumed_trials(storage, TUNING_STUDY), resumed_trials(storage, FINAL_STUDY))
    sections = [*header(storage, trials, tuning_trials, walls, resumed), "",
                *final_section(trials, kept, study, grid, chosen, image), "",
                *tuning_section(tuning_trials, tuning_study, grid, chosen)]
    notes = HERE / "learning_evolution_notes.md"
    if notes.is_file():
        sections += ["", notes.read_text().strip()]
    return "\n".join(sections).rstrip() + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--storage", type=Path, default=Path("runs/evidence"),
                        help="the --storage both studies ran with (default runs/evidence)")
    parser.add_argument("--out-dir", type=Path, default=HERE,
                        help="where BENCHMARKS.md, the CSVs and the plot go "
                             "(default benchmarks/)")
    args = parser.parse_args(argv)
    from lrwa.atomic import write_text
    from lrwa.errors import LrwaError

    try:
        if args.out_dir.exists() and not args.out_dir.is_dir():
            raise LrwaError(f"--out-dir {args.out_dir} is a file, not a folder")
        args.out_dir.mkdir(parents=True, exist_ok=True)
        text = report(args.storage, args.out_dir)
    except LrwaError as error:
        print(f"learning_evolution.py: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    write_text(args.out_dir / "BENCHMARKS.md", text)
    print(text)
    print(f"written: {args.out_dir / 'BENCHMARKS.md'}")


if __name__ == "__main__":
    main()
