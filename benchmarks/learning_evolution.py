"""Learning evolution: does LRWA's meta update retain more than the joint update it extends?

The evidence of issue 19, read back from three lrwa studies (each runs with `lrwa tune` and
resumes like any study; this script only reads their Parquet and Optuna journals):

    lrwa teacher train --dataset digits --arch lenet5 --out runs/evidence/digits_teacher.pt
    lrwa tune learning_evolution_horizon --storage runs/evidence  # do the baselines drift?
    lrwa tune learning_evolution_tuning --storage runs/evidence   # alpha, validation split
    lrwa tune learning_evolution --storage runs/evidence          # 8 pairs x 10 seeds, test
    python benchmarks/learning_evolution.py --storage runs/evidence

Each pair of the final study is a joint baseline and the meta update one setting away
(tests/test_evidence_study.py). Every comparison is paired over seeds
(`lrwa.paired_seeds.compare`): per-seed differences, their mean with a 95% t-interval, the
paired t and exact sign-flip p-values, the effect detectable with 80% power, and the rule
"a winner only when the interval excludes 0 and the sign-flip p is below 0.05".

It writes, into --out-dir (default benchmarks/): BENCHMARKS.md (the discussion comes from
learning_evolution_notes.md), learning_evolution_runs.csv (one row per final run),
learning_evolution_pairs.csv (one row per pair, metric and seed: the differences),
learning_evolution_tuning.csv, learning_evolution_horizon.csv and learning_evolution.png;
with --readme it also writes the verdicts into README.md between its evidence markers.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
FINAL, TUNING, HORIZON = ("learning_evolution", "learning_evolution_tuning",
                          "learning_evolution_horizon")
COMPLETED = "completed"
REPLAYS = {"memory": "memory bank", "generative": "generative replay"}
FORMS = {"separate": "separate means", "concatenated": "concatenated batch"}
ALPHAS = {"alpha-0.9": "α = 0.9", "tuned": "α tuned"}
# (column, label, better): +1 when higher is better, -1 when lower is. Accuracies in %,
# variance in %², agreement in % of the probe set.
METRICS = (
    ("mean_acc", "mean accuracy over epochs (%)", 1),
    ("late_mean_acc", "mean accuracy after warm-up (%)", 1),
    ("final_acc", "final accuracy (%)", 1),
    ("var_acc_after_warmup", "variance after warm-up (%²)", -1),
    ("max_drop_after_warmup", "largest drop after warm-up (points)", -1),
    ("retention", "probe agreement at the last epoch (%)", 1),
    ("forgetting", "probe forgetting, peak − last (points)", -1),
)
# The metrics each verdict line of the summary states (all three in points).
SUMMARY_METRICS = ("mean_acc", "max_drop_after_warmup", "forgetting")
README_START, README_END = "<!-- evidence verdicts: start -->", "<!-- evidence verdicts: end -->"


def pairs() -> list[tuple[str, str, str]]:
    """(label, joint baseline, meta variant) for the 8 pairs of the final study."""
    return [(f"{REPLAYS[replay]}, {FORMS[form]}, {ALPHAS[alpha]}", f"{replay}.{form}.joint",
             f"{replay}.{form}.meta.{alpha}")
            for replay in REPLAYS for form in FORMS for alpha in ALPHAS]


# -- reading the studies ----------------------------------------------------------------------

def load(storage: Path, name: str) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """(trials, curves, resolved study) of STORAGE/<name>; each trial row gets its config."""
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
    configs = [json.loads(text) for text in trials["config"]]
    trials = trials.assign(alpha=[config["alpha"] for config in configs],
                           warmup=[config["warmup_epochs"] for config in configs])
    return trials, curves, record.get("study", {})


def finished(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials that ran every epoch (a study cut short has unfinished or errored ones)."""
    return trials[(trials["status"] == COMPLETED) & (trials["epochs_run"] == trials["epochs"])]


def active_wall_s(storage: Path, name: str) -> float | None:
    """The study's wall time: the union of its trials' [start, end] in the Optuna journal,
    so pauses between interrupted invocations are not counted."""
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
        if end is None or stop > end:
            total += (stop - max(start, end if end is not None else start)).total_seconds()
            end = stop
    return total


def probe_columns(curves: pd.DataFrame) -> list[str]:
    from lrwa.probes import columns_in

    return columns_in(curves.columns)


def run_statistics(trials: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame:
    """One row per finished run: variant, seed and every metric of METRICS.

    The accuracy statistics come from trials.parquet (the warm-up W is the run's
    `warmup_epochs`); from its curve, the mean accuracy after W, and from its probe
    columns the agreement at the last epoch and the forgetting (each set's highest
    agreement from its epoch on, minus its last; averaged over the sets)."""
    probes = probe_columns(curves)
    rows = []
    for _, trial in finished(trials).iterrows():
        curve = curves[curves["trial_id"] == trial["trial_id"]].sort_values("epoch")
        late = curve[curve["epoch"] > trial["warmup"]]
        last = curve.iloc[-1] if len(curve) else None
        drawn = [column for column in probes if last is not None and not math.isnan(last[column])]
        rows.append({
            "variant": trial["variant"], "seed": int(trial["seed"]), "alpha": trial["alpha"],
            "mean_acc": 100 * trial["mean_acc"], "late_mean_acc": 100 * late["test_acc"].mean(),
            "final_acc": 100 * trial["final_acc"],
            "var_acc_after_warmup": 1e4 * trial["var_acc_after_warmup"],
            "max_drop_after_warmup": 100 * trial["max_drop_after_warmup"],
            "retention": 100 * float(np.mean([last[c] for c in drawn])) if drawn else math.nan,
            "forgetting": 100 * float(np.mean([curve[c].max() - last[c] for c in drawn]))
            if drawn else math.nan,
            "wall_s": trial["wall_s"]})
    return pd.DataFrame(rows)


# -- the comparisons --------------------------------------------------------------------------

def verdict_text(verdict: str, better: int) -> str:
    """compare()'s verdict on meta − joint, read with the metric's direction."""
    if verdict == "meta higher":
        return "meta better" if better > 0 else "joint better"
    if verdict == "joint higher":
        return "joint better" if better > 0 else "meta better"
    return verdict


def compare_pairs(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per pair and metric, one row per pair, metric and seed) on common seeds."""
    from lrwa.paired_seeds import compare, seeds_needed

    table, differences = [], []
    for label, baseline, variant in pairs():
        joint = runs[runs["variant"] == baseline].set_index("seed")
        meta = runs[runs["variant"] == variant].set_index("seed")
        seeds = sorted(set(joint.index) & set(meta.index))
        for column, name, better in METRICS:
            a, b = meta.loc[seeds, column].to_numpy(), joint.loc[seeds, column].to_numpy()
            usable = ~(np.isnan(a) | np.isnan(b))
            row = {"pair": label, "baseline": baseline, "variant": variant, "metric": name,
                   "better": better, "alpha": meta["alpha"].iloc[0] if len(meta) else None,
                   "n": int(usable.sum()), "meta": float(np.mean(a[usable])) if usable.any()
                   else math.nan, "joint": float(np.mean(b[usable])) if usable.any()
                   else math.nan}
            if usable.sum() >= 2:
                result = compare(a[usable], b[usable], ("meta", "joint"))
                sd = float(np.std(a[usable] - b[usable], ddof=1))
                row.update(mean=result.mean, ci_low=result.ci_low, ci_high=result.ci_high,
                           t_p=result.t_p, sign_flip_p=result.sign_flip_p,
                           higher=result.higher, detectable=result.detectable,
                           seeds_for_1=seeds_needed(1.0, sd) if sd > 0 else 2,
                           verdict=verdict_text(result.verdict, better))
            else:
                row.update(verdict="too few seeds to judge")
            table.append(row)
            differences += [{"pair": label, "metric": name, "seed": seed, "meta": x,
                             "joint": y, "difference": x - y}
                            for seed, x, y, ok in zip(seeds, a, b, usable, strict=True) if ok]
    return pd.DataFrame(table), pd.DataFrame(differences)


def signed(value: float, digits: int = 2) -> str:
    return f"{value:+.{digits}f}".replace("-", "−")


def p_text(value: float) -> str:
    return f"{value:.3f}" if value >= 0.001 else f"{value:.1e}"


def verdict_lines(table: pd.DataFrame) -> list[str]:
    """The summary, one line per pair: README.md repeats these lines word for word."""
    lines = []
    for label, _, _ in pairs():
        parts = []
        for column, name, _ in METRICS:
            if column not in SUMMARY_METRICS:
                continue
            row = table[(table["pair"] == label) & (table["metric"] == name)].iloc[0]
            if "mean" not in row or pd.isna(row.get("mean")):
                parts.append(f"{name.split(' (')[0]}: {row['verdict']}")
                continue
            parts.append(f"{name.split(' (')[0]} {signed(row['mean'])} points "
                         f"[{signed(row['ci_low'])}, {signed(row['ci_high'])}], "
                         f"sign-flip p {p_text(row['sign_flip_p'])}: {row['verdict']}")
        n = int(table[table["pair"] == label]["n"].max())
        lines.append(f"- {label} (meta − joint, {n} seeds): " + "; ".join(parts) + ".")
    return lines


def pair_tables(table: pd.DataFrame) -> list[str]:
    out = []
    for label, baseline, variant in pairs():
        rows = table[table["pair"] == label]
        alpha = rows["alpha"].iloc[0]
        out += [f"### {label}: `{variant}` (α = {alpha:g}) − `{baseline}`", "",
                ("| metric | joint | meta | meta − joint [95% CI] | t p | sign-flip p | "
                 "meta higher | detectable (80% power) | seeds to detect 1 | verdict |"),
                "|---|---|---|---|---|---|---|---|---|---|"]
        for _, row in rows.iterrows():
            if pd.isna(row.get("mean")):
                out.append(f"| {row['metric']} | – | – | – | – | – | – | – | – | "
                           f"{row['verdict']} |")
                continue
            out.append(
                f"| {row['metric']} | {row['joint']:.2f} | {row['meta']:.2f} | "
                f"{signed(row['mean'])} [{signed(row['ci_low'])}, {signed(row['ci_high'])}] | "
                f"{p_text(row['t_p'])} | {p_text(row['sign_flip_p'])} | "
                f"{int(row['higher'])}/{int(row['n'])} | {row['detectable']:.2f} | "
                f"{int(row['seeds_for_1'])} | {row['verdict']} |")
        out.append("")
    return out


# -- tuning and horizon -----------------------------------------------------------------------

def tuning_choice(trials: pd.DataFrame) -> pd.DataFrame:
    """Mean validation accuracy (%) over seeds for each (replay.form, alpha), the chosen
    alpha of each (the best mean), and whether it sits at the edge of the grid."""
    done = finished(trials).assign(system=lambda t: t["variant"].str.rsplit(".", n=2).str[0],
                                   val_mean_acc=lambda t: 100 * t["mean_acc"])
    grid = done.groupby(["system", "alpha"], as_index=False).agg(
        val_mean_acc=("val_mean_acc", "mean"), seeds=("seed", "nunique"))
    best = grid.loc[grid.groupby("system")["val_mean_acc"].idxmax()].set_index("system")
    alphas = sorted(grid["alpha"].unique())
    best["edge"] = best["alpha"].map(lambda a: "low edge" if a == alphas[0] else
                                     "high edge" if a == alphas[-1] else "")
    return grid.assign(chosen=lambda g: [best.loc[s, "alpha"] == a
                                         for s, a in zip(g["system"], g["alpha"], strict=True)])


def tuning_table(grid: pd.DataFrame) -> list[str]:
    alphas = sorted(grid["alpha"].unique())
    out = ["| meta system | " + " | ".join(f"α = {a:g}" for a in alphas) + " | chosen |",
           "|---" * (len(alphas) + 2) + "|"]
    for system, rows in grid.groupby("system", sort=False):
        cells = []
        for a in alphas:
            row = rows[rows["alpha"] == a]
            text = f"{row['val_mean_acc'].iloc[0]:.2f}" if len(row) else "–"
            cells.append(f"**{text}**" if len(row) and row["chosen"].iloc[0] else text)
        chosen = rows[rows["chosen"]]["alpha"].iloc[0]
        edge = " (" + ("lowest" if chosen == alphas[0] else "highest") + " tried)" if (
            chosen in (alphas[0], alphas[-1])) else ""
        out.append(f"| {system} | " + " | ".join(cells) + f" | {chosen:g}{edge} |")
    return out


def horizon_table(runs: pd.DataFrame) -> list[str]:
    """Each joint baseline under a constant and a cosine learning rate: mean over seeds."""
    out = [("| baseline | schedule | seeds | mean acc after warm-up % | final % | "
            "var after warm-up %² | largest drop after warm-up | probe forgetting |"),
           "|---|---|---|---|---|---|---|---|"]
    for variant, rows in runs.groupby("variant", sort=True):
        system, _, schedule = variant.rpartition(".")
        out.append(f"| {system} | {schedule} | {len(rows)} | {rows['late_mean_acc'].mean():.2f}"
                   f" | {rows['final_acc'].mean():.2f} | "
                   f"{rows['var_acc_after_warmup'].mean():.2f} | "
                   f"{rows['max_drop_after_warmup'].mean():.2f} | "
                   f"{rows['forgetting'].mean():.2f} |")
    return out


# -- the plot ---------------------------------------------------------------------------------

def plot(curves: pd.DataFrame, trials: pd.DataFrame, path: Path) -> None:
    """For each replay and loss form: test accuracy (top) and agreement on the probe set of
    epoch 10 (bottom) against epochs; line = mean over seeds, band = mean ± sd."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lrwa.atomic import atomic_path

    done = curves[curves["trial_id"].isin(finished(trials)["trial_id"])]
    probes = probe_columns(done)
    probe = "probe_agree_e10" if "probe_agree_e10" in probes else (probes or [None])[-1]
    systems = [(replay, form) for replay in REPLAYS for form in FORMS]
    figure, axes = plt.subplots(2, len(systems), figsize=(4.6 * len(systems), 7.4),
                                sharex=True, squeeze=False)
    for column, (replay, form) in enumerate(systems):
        for suffix, colour in (("joint", "C0"), ("meta.alpha-0.9", "C3"), ("meta.tuned", "C2")):
            variant = f"{replay}.{form}.{suffix}"
            rows = done[done["variant"] == variant]
            for row_index, metric in enumerate(("test_acc", probe)):
                if metric is None or rows.empty:
                    continue
                by_epoch = 100 * rows.pivot_table(index="epoch", columns="seed", values=metric)
                mean, sd = by_epoch.mean(axis=1), by_epoch.std(axis=1, ddof=1)
                axis = axes[row_index][column]
                axis.plot(by_epoch.index, mean, color=colour, linewidth=1.4,
                          label=f"{suffix} ({by_epoch.shape[1]} seeds)")
                axis.fill_between(by_epoch.index, mean - sd, mean + sd, color=colour,
                                  alpha=0.15, linewidth=0)
        axes[0][column].set_title(f"{REPLAYS[replay]}, {FORMS[form]}", fontsize=10)
        axes[0][column].set_ylabel("test accuracy (%)")
        axes[1][column].set_ylabel(f"agreement on {probe} (%)" if probe else "no probes")
        axes[1][column].set_xlabel("epoch")
        for axis in (axes[0][column], axes[1][column]):
            axis.grid(alpha=0.3)
            axis.legend(fontsize=7, loc="lower right")
    figure.suptitle("meta against joint, one setting apart (mean ± sd over seeds)")
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100)
    plt.close(figure)


# -- the report -------------------------------------------------------------------------------

def seed_list(trials: pd.DataFrame) -> str:
    """The seeds of `trials` as a heading writes them: "100, 101" (plain ints, not NumPy's
    repr, which a sorted list of np.int64 would print)."""
    return ", ".join(str(int(seed)) for seed in sorted(trials["seed"].unique()))


def hours(seconds: float | None) -> str:
    return "unknown" if seconds is None else f"{seconds / 60:.0f} min ({seconds / 3600:.2f} h)"


def partial_note(trials: pd.DataFrame, study: dict[str, Any], name: str) -> str:
    done, budget = len(finished(trials)), study.get("trials", len(trials))
    return "" if done == budget else (f" **Partial: {done} of {budget} trials of `{name}` have "
                                      "finished; rerun its `lrwa tune` command to complete it.**")


def readme_with(readme: str, lines: Sequence[str]) -> str:
    """README.md's text with the evidence verdicts between its markers replaced."""
    start, end = readme.find(README_START), readme.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"README.md has no {README_START} ... {README_END} block")
    return (readme[:start + len(README_START)] + "\n" + "\n".join(lines) + "\n"
            + readme[end:])


def report(storage: Path, out_dir: Path) -> tuple[str, list[str]]:
    trials, curves, study = load(storage, FINAL)
    tuning_trials, _, tuning_study = load(storage, TUNING)
    horizon_trials, horizon_curves, horizon_study = load(storage, HORIZON)
    runs = run_statistics(trials, curves)
    table, differences = compare_pairs(runs)
    grid = tuning_choice(tuning_trials)
    horizon = run_statistics(horizon_trials, horizon_curves)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs.to_csv(out_dir / "learning_evolution_runs.csv", index=False, float_format="%.6g")
    differences.to_csv(out_dir / "learning_evolution_pairs.csv", index=False,
                       float_format="%.6g")
    grid.to_csv(out_dir / "learning_evolution_tuning.csv", index=False, float_format="%.6g")
    horizon.to_csv(out_dir / "learning_evolution_horizon.csv", index=False, float_format="%.6g")
    image = out_dir / "learning_evolution.png"
    plot(curves, trials, image)
    walls = [active_wall_s(storage, name) for name in (HORIZON, TUNING, FINAL)]
    base = study.get("base", {})
    shas = sorted(set(trials["version_git"].dropna()))
    verdicts = verdict_lines(table)
    notes = (HERE / "learning_evolution_notes.md").read_text()
    lines = [
        "# Benchmarks: does the meta update retain more than the joint update?",
        "",
        (f"Generated by `python benchmarks/learning_evolution.py --storage {storage}` from "
         f"the studies `{HORIZON}`, `{TUNING}` and `{FINAL}` (lrwa "
         f"{trials['version_lrwa'].iloc[0]}, torch {trials['version_torch'].iloc[0]}, git "
         f"{', '.join(sha[:7] for sha in shas) or 'unknown'}). Do not edit by hand; the "
         "discussion comes from `benchmarks/learning_evolution_notes.md`."),
        "",
        "    lrwa teacher train --dataset digits --arch lenet5 --out runs/evidence/digits_teacher.pt",
        f"    lrwa tune {HORIZON} --storage runs/evidence",
        f"    lrwa tune {TUNING} --storage runs/evidence",
        f"    lrwa tune {FINAL} --storage runs/evidence",
        "    python benchmarks/learning_evolution.py --storage runs/evidence",
        "",
        (f"Wall time on this machine (2 CPU cores, {study.get('max_concurrent')} runs side by "
         f"side): horizon {hours(walls[0])}, tuning {hours(walls[1])}, final {hours(walls[2])}; "
         f"{(sum(w for w in walls if w) / 3600):.2f} h in all (the time trials were running, "
         "from the Optuna journals)."),
        "",
        "## Verdicts",
        "",
        ("Meta − joint per pair, over the seeds both ran; a verdict names a winner only when "
         "the 95% t-interval of the paired differences excludes 0 and the exact sign-flip "
         "p-value is below 0.05, else \"no difference detected\"."
         + partial_note(trials, study, FINAL)),
        "",
        *verdicts,
        "",
        notes.strip(),
        "",
        (f"## The pairs: digits, {base.get('epochs')} epochs, {runs['seed'].nunique()} seeds, "
         "test split"),
        "",
        (f"Setup: {base.get('teacher_arch') or 'LeNet-5'} teacher on digits "
         f"({100 * float(trials['teacher_acc'].dropna().iloc[0]):.2f}% test accuracy) -> "
         f"`{base.get('student')}`; the authors' method (`preset: mb-dfkd`, docs/presets.md) "
         f"at lrwa's CPU sizes: batch {base.get('batch_size')}, {base.get('iters_per_epoch')} "
         f"iterations of {base.get('generator_steps')} generator and "
         f"{base.get('student_steps')} student steps an epoch, SGD {base.get('student_lr')} "
         f"with a {base.get('schedule')} schedule, replay ratio {base.get('replay_ratio')}, "
         f"warm-up W = {base.get('warmup_epochs')} epochs for the *after warm-up* metrics, "
         f"{base.get('probe_size')} samples per probe set (epochs {base.get('probe_epochs')}). "
         "Detectable: the true difference the paired t-test finds with 80% power at this n "
         "and spread of differences, in the metric's unit; seeds to detect 1: the n needed "
         "to find a difference of 1 (point, or %² for the variance) so."),
        "",
        *pair_tables(table),
        "![meta against joint](learning_evolution.png)",
        "",
        f"## Tuning alpha (validation split, seeds {seed_list(tuning_trials)})"
        + partial_note(tuning_trials, tuning_study, TUNING),
        "",
        "Mean validation accuracy over epochs (%), mean over seeds; the chosen alpha in bold.",
        "",
        *tuning_table(grid),
        "",
        (f"## The horizon: do the baselines drift? (validation split, seeds "
         f"{seed_list(horizon_trials)}, W = "
         f"{int(horizon_trials['warmup'].max())})"
         + partial_note(horizon_trials, horizon_study, HORIZON)),
        "",
        *horizon_table(horizon),
        "",
    ]
    text = "\n".join(lines)
    (out_dir / "BENCHMARKS.md").write_text(text)
    return text, verdicts


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--storage", type=Path, default=Path("runs/evidence"),
                        help="the folder holding the three studies (default: runs/evidence)")
    parser.add_argument("--out-dir", type=Path, default=HERE,
                        help="where BENCHMARKS.md, the CSVs and the plot go")
    parser.add_argument("--readme", type=Path, default=None,
                        help="also write the verdicts into this README.md's evidence block")
    arguments = parser.parse_args(argv)
    from lrwa.errors import LrwaError

    try:
        _, verdicts = report(arguments.storage, arguments.out_dir)
        if arguments.readme:
            arguments.readme.write_text(readme_with(arguments.readme.read_text(), verdicts))
    except (LrwaError, ValueError) as error:
        print(f"learning_evolution: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"wrote {arguments.out_dir / 'BENCHMARKS.md'}")


if __name__ == "__main__":
    main()
