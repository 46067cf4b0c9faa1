"""Learning evolution: the seed's five systems (plus two LRWA variants) on the offline data.

Reproduces the comparison of the seed's central figures at CPU scale: test accuracy
against epochs for DFAD-style acquire-only, MB-DFKD, PRE-DFKD and LRWA with either replay,
teacher `lenet5` -> student `lenet5-half`, several seeds each, on mnist5k and, as a
smaller second pass, on digits. Every system gets the same tuning budget first: three
short runs on the validation split over its one most sensitive knob (the student learning
rate for the baselines, the inner step size alpha for LRWA), the best mean validation
accuracy wins. The supervised upper bounds (the student trained on real data, and KD with
the teacher on real data) and the step-cost ratios of `benchmarks/step_cost.py` complete
the picture.

    python benchmarks/learning_evolution.py           # full run, ~85 min on 2 cores
    python benchmarks/learning_evolution.py --quick   # a look in < 5 min (not committed)
    python benchmarks/learning_evolution.py --report-only   # redo tables/plots from runs
    python benchmarks/learning_evolution.py --diagnose runs/learning_evolution/runs/digits/mb-dfkd/seed-0

The full run writes benchmarks/BENCHMARKS.md, the curves (learning_evolution_curves.csv)
and the plots (learning_evolution_<dataset>.png); runs live under --work-dir and a killed
benchmark picks up where it stopped (finished runs are kept, unfinished ones resume).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd

HERE = Path(__file__).resolve().parent
TUNE_SEED = 100  # tuning runs use their own seed and the validation split, never the test set
KNOB_VALUES = {"student_lr": (0.05, 0.1, 0.2), "alpha": (0.03, 0.1, 0.3)}


@dataclasses.dataclass(frozen=True)
class System:
    name: str
    overrides: dict[str, Any]
    knob: str | None = None  # tuned over KNOB_VALUES[knob]
    tuned_like: tuple[str, ...] = ()  # takes the knob values chosen for these systems
    detach_inner: bool = False


SYSTEMS = (
    System("DFAD (acquire)", {"mode": "acquire", "replay": "none"}, knob="student_lr"),
    System("MB-DFKD", {"mode": "joint", "replay": "memory"}, knob="student_lr"),
    System("PRE-DFKD", {"mode": "joint", "replay": "generative"}, knob="student_lr"),
    System("LRWA (memory bank)", {"mode": "meta", "replay": "memory"}, knob="alpha"),
    System("LRWA (generative replay)", {"mode": "meta", "replay": "generative"}, knob="alpha"),
    System("LRWA first order (memory bank)",
           {"mode": "meta", "replay": "memory", "first_order": True},
           tuned_like=("LRWA (memory bank)",)),
    System("released code, θ′ detached (memory bank)", {"mode": "meta", "replay": "memory"},
           tuned_like=("LRWA (memory bank)",), detach_inner=True),
    # Controls for the tuning design: LRWA tuned alpha at the preset learning rate (0.1)
    # while MB-DFKD tuned the learning rate, so each also runs at the other's learning rate.
    System("LRWA (memory bank), MB-DFKD's student_lr", {"mode": "meta", "replay": "memory"},
           tuned_like=("LRWA (memory bank)", "MB-DFKD")),
    System("MB-DFKD, the preset student_lr", {"mode": "joint", "replay": "memory"}),
)
MAIN_SYSTEMS = tuple(system.name for system in SYSTEMS[:5])
# The seed's two panels: each joint baseline against LRWA with the same replay.
PAIRS = (("MB-DFKD", "LRWA (memory bank)"), ("PRE-DFKD", "LRWA (generative replay)"))
# The same comparison with both sides at one learning rate (see the control systems).
CONTROL_PAIRS = (("MB-DFKD, the preset student_lr", "LRWA (memory bank)"),
                 ("MB-DFKD", "LRWA (memory bank), MB-DFKD's student_lr"))


@dataclasses.dataclass(frozen=True)
class Pass:
    dataset: str
    systems: tuple[str, ...]
    seeds: tuple[int, ...]
    epochs: int
    tune_epochs: int  # 0: no tuning stage on this data set (reuse the first pass's choices)
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)


FULL = (
    Pass("mnist5k", tuple(system.name for system in SYSTEMS), (0, 1, 2), epochs=12,
         tune_epochs=3),
    Pass("digits", MAIN_SYSTEMS, (0, 1, 2), epochs=10, tune_epochs=0),
)
QUICK = (
    Pass("mnist5k", MAIN_SYSTEMS, (0,), epochs=3, tune_epochs=0, overrides={"iters_per_epoch": 8}),
    Pass("digits", MAIN_SYSTEMS, (0,), epochs=2, tune_epochs=0, overrides={"iters_per_epoch": 8}),
)


# -- jobs (each runs in a worker process with its own torch threads) --------------------------

@dataclasses.dataclass(frozen=True)
class Job:
    kind: str  # "distill" or "upper"
    folder: str
    dataset: str
    seed: int
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    detach_inner: bool = False
    upper: str = ""  # "supervised" or "kd" for kind == "upper"


def _start_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def run_job(job: Job) -> dict[str, Any]:
    """Run (or resume, or just read back) one job; never raises, failures are recorded."""
    folder = Path(job.folder)
    try:
        return _upper_bound(job, folder) if job.kind == "upper" else _distill(job, folder)
    except Exception as error:  # noqa: BLE001 - a diverged run is a result, not a crash
        return {"folder": job.folder, "error": f"{type(error).__name__}: {error}"}


def _distill(job: Job, folder: Path) -> dict[str, Any]:
    from lrwa.config import build_config
    from lrwa.run import CHECKPOINT_FILE, run_distillation
    from lrwa.sinks import SUMMARY_FILE

    summary_path = folder / SUMMARY_FILE
    if summary_path.is_file() and json.loads(summary_path.read_text()).get("complete"):
        return {"folder": job.folder, "skipped": True}
    config = build_config(job.dataset, overrides={**job.overrides, "seed": job.seed})
    resume = (folder / CHECKPOINT_FILE).is_file()
    run_distillation(None if resume else config, folder, resume=resume, progress=False,
                     detach_inner=job.detach_inner)
    return {"folder": job.folder}


def _upper_bound(job: Job, folder: Path) -> dict[str, Any]:
    from lrwa.teacher import load_teacher, train_teacher

    result_path = folder / "upper.json"
    if result_path.is_file():
        return {"folder": job.folder, "skipped": True}
    teacher = load_teacher(job.overrides["teacher"]) if job.upper == "kd" else None
    student = train_teacher(job.dataset, job.overrides["student"], seed=job.seed,
                            progress=False, kd_teacher=teacher.model if teacher else None)
    _write_json(result_path, {"dataset": job.dataset, "bound": job.upper, "seed": job.seed,
                              "test_acc": student.metadata["test_acc"]})
    return {"folder": job.folder}


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    from lrwa.atomic import write_text

    write_text(path, json.dumps(payload, indent=2) + "\n")


def run_all(jobs: Sequence[Job], workers: int, threads: int, stage: str, work_dir: Path) -> None:
    if not jobs:
        return
    started = time.perf_counter()
    print(f"{stage}: {len(jobs)} runs on {workers} processes", flush=True)
    with ProcessPoolExecutor(max_workers=workers, initializer=_start_worker,
                             initargs=(threads,)) as pool:
        for done, result in enumerate(pool.map(run_job, jobs), start=1):
            status = "kept" if result.get("skipped") else result.get("error", "done")
            where = Path(result["folder"]).relative_to(work_dir)
            print(f"  [{done}/{len(jobs)}] {where}  {status}  "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)


# -- the plan ---------------------------------------------------------------------------------

def prepare_teacher(dataset: str, work_dir: Path) -> str:
    """The pass's teacher file: the embedded mnist5k teacher, or digits trained once here."""
    from lrwa.teacher import default_teacher, save_teacher, train_teacher

    path = work_dir / "teachers" / f"{dataset}-lenet5.pt"
    if not path.is_file():
        teacher = (default_teacher(progress=False) if dataset == "mnist5k"
                   else train_teacher(dataset, "lenet5", seed=0, progress=False))
        save_teacher(teacher, path)
    return str(path)


def system_by_name(name: str) -> System:
    return next(system for system in SYSTEMS if system.name == name)


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def tuning_jobs(plan: Pass, base: dict[str, Any], work_dir: Path) -> list[Job]:
    jobs = []
    for name in plan.systems:
        system = system_by_name(name)
        for value in KNOB_VALUES.get(system.knob or "", ()):
            overrides = {**base, **system.overrides, system.knob: value,
                         "epochs": plan.tune_epochs, "eval_split": "val"}
            folder = work_dir / "tune" / plan.dataset / slug(name) / f"{system.knob}-{value}"
            jobs.append(Job("distill", str(folder), plan.dataset, TUNE_SEED, overrides,
                            system.detach_inner))
    return jobs


def best_tried(group: pd.DataFrame) -> pd.Series:
    """The tuning row with the best mean validation accuracy (a failed run never wins)."""
    return group.loc[group["val_mean_acc"].fillna(-1).idxmax()]


def choose_knobs(plan: Pass, work_dir: Path) -> tuple[dict[str, dict[str, Any]], pd.DataFrame]:
    """Per tuned system: the knob value with the best mean validation accuracy."""
    from lrwa.sinks import read_metrics

    rows = []
    for name in plan.systems:
        system = system_by_name(name)
        for value in KNOB_VALUES.get(system.knob or "", ()):
            folder = work_dir / "tune" / plan.dataset / slug(name) / f"{system.knob}-{value}"
            accuracy = (read_metrics(folder)["test_acc"].mean()
                        if (folder / "metrics.parquet").is_file() else math.nan)
            rows.append({"system": name, "knob": system.knob, "value": value,
                         "val_mean_acc": accuracy})
    table = pd.DataFrame(rows)
    chosen: dict[str, dict[str, Any]] = {}
    for name, group in table.groupby("system", sort=False):
        best = best_tried(group)
        chosen[str(name)] = {str(best["knob"]): float(best["value"])}
    for name in plan.systems:
        system = system_by_name(name)
        if system.tuned_like:
            chosen[name] = {key: value for source in system.tuned_like
                            for key, value in chosen.get(source, {}).items()}
    return chosen, table


def main_jobs(plan: Pass, base: dict[str, Any], chosen: dict[str, dict[str, Any]],
              work_dir: Path) -> list[Job]:
    jobs = []
    for seed in plan.seeds:  # seed-major, so a cut-short run still has whole seeds
        for name in plan.systems:
            system = system_by_name(name)
            overrides = {**base, **system.overrides, **chosen.get(name, {}),
                         "epochs": plan.epochs}
            folder = work_dir / "runs" / plan.dataset / slug(name) / f"seed-{seed}"
            jobs.append(Job("distill", str(folder), plan.dataset, seed, overrides,
                            system.detach_inner))
    return jobs


def upper_jobs(plan: Pass, teacher: str, work_dir: Path) -> list[Job]:
    return [Job("upper", str(work_dir / "upper" / plan.dataset / f"{bound}-seed-{seed}"),
                plan.dataset, seed, {"teacher": teacher, "student": "lenet5-half"}, upper=bound)
            for bound in ("supervised", "kd") for seed in plan.seeds]


# -- collecting and reporting -----------------------------------------------------------------

def collect_curves(plan: Pass, work_dir: Path) -> pd.DataFrame:
    from lrwa.sinks import read_metrics

    frames = []
    for name in plan.systems:
        for seed in plan.seeds:
            folder = work_dir / "runs" / plan.dataset / slug(name) / f"seed-{seed}"
            if not (folder / "metrics.parquet").is_file():
                continue
            frame = read_metrics(folder)[["epoch", "test_acc", "wall_s", "samples_per_s"]]
            summary = json.loads((folder / "summary.json").read_text())
            frames.append(frame.assign(dataset=plan.dataset, system=name, seed=seed,
                                       teacher_acc=summary["teacher_acc"],
                                       complete=summary["complete"]))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def collect_upper(plan: Pass, work_dir: Path) -> pd.DataFrame:
    rows = [json.loads(path.read_text())
            for path in sorted((work_dir / "upper" / plan.dataset).glob("*/upper.json"))]
    return pd.DataFrame(rows)


def per_run_statistics(curves: pd.DataFrame) -> pd.DataFrame:
    """One row per (system, seed): the papers' curve statistics, in percent."""
    from lrwa.summary import curve_statistics

    rows = []
    for (system, seed), run in curves.groupby(["system", "seed"], sort=False):
        statistics = curve_statistics(run["test_acc"].tolist())
        teacher = run["teacher_acc"].iloc[0]
        rows.append({"system": system, "seed": seed,
                     "best": 100 * statistics["best_acc"], "mean": 100 * statistics["mean_acc"],
                     "var": 1e4 * statistics["var_acc"], "final": 100 * statistics["final_acc"],
                     "max_drop": 100 * statistics["max_drop"],
                     "gap": 100 * (teacher - statistics["best_acc"]),
                     "best_of_teacher": 100 * statistics["best_acc"] / teacher,
                     "s_per_epoch": run["wall_s"].mean(), "epochs": len(run)})
    return pd.DataFrame(rows)


COLUMNS = (("best", "best %"), ("mean", "mean %"), ("var", "var %²"), ("final", "final %"),
           ("max_drop", "largest drop"), ("gap", "teacher gap"), ("s_per_epoch", "s / epoch"))


def statistics_table(runs: pd.DataFrame, order: Iterable[str]) -> str:
    grouped = runs.groupby("system")
    lines = ["| system | seeds | " + " | ".join(title for _, title in COLUMNS) + " |",
             "|---|---:|" + "---:|" * len(COLUMNS)]
    for system in order:
        if system not in grouped.groups:
            continue
        group = grouped.get_group(system)
        cells = [f"{group[column].mean():.2f} ± {group[column].std(ddof=0):.2f}"
                 for column, _ in COLUMNS]
        lines.append(f"| {system} | {len(group)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def upper_table(upper: pd.DataFrame, teacher_acc: float) -> str:
    lines = ["| reference | seeds | test acc % |", "|---|---:|---:|",
             f"| teacher (lenet5) | 1 | {100 * teacher_acc:.2f} |"]
    names = {"supervised": "student on real data (labels)",
             "kd": "KD on real data (teacher soft labels, T = 4)"}
    for bound, group in upper.groupby("bound", sort=False) if not upper.empty else ():
        accuracy = 100 * group["test_acc"]
        lines.append(f"| {names[bound]} | {len(group)} | "
                     f"{accuracy.mean():.2f} ± {accuracy.std(ddof=0):.2f} |")
    return "\n".join(lines)


def tuning_table(tuning: pd.DataFrame) -> str:
    lines = ["| system | knob | tried: mean val acc % | chosen |", "|---|---|---|---|"]
    for system, group in tuning.groupby("system", sort=False):
        tried = ", ".join(f"{value:g}: {100 * accuracy:.2f}"
                          for value, accuracy in zip(group["value"], group["val_mean_acc"],
                                                     strict=True))
        best = best_tried(group)["value"]
        lines.append(f"| {system} | {group['knob'].iloc[0]} | {tried} | {best:g} |")
    return "\n".join(lines)


def target_lines(runs: pd.DataFrame) -> list[str]:
    """The issue's targets, each with its verdict and the numbers behind it."""
    grouped = runs.groupby("system")
    lines = []
    below = [f"{system} {group['best_of_teacher'].mean():.1f}%" for system, group in grouped
             if group["best_of_teacher"].mean() < 95]
    lines.append("- every system's best >= 95% of the teacher's: "
                 + ("holds" if not below else "MISSED by " + ", ".join(below)))
    for system in ("LRWA (memory bank)", "LRWA (generative replay)"):
        if system in grouped.groups:
            share = grouped.get_group(system)["best_of_teacher"]
            verdict = "holds" if share.mean() >= 99 else "MISSED"
            lines.append(f"- {system} best >= 99% of the teacher's: {verdict} "
                         f"({share.mean():.1f}% ± {share.std(ddof=0):.1f})")
    for baseline, ours in PAIRS + CONTROL_PAIRS:
        if baseline not in grouped.groups or ours not in grouped.groups:
            continue
        for column, better, word in (("mean", 1, "mean accuracy higher"),
                                     ("var", -1, "variance over epochs lower")):
            a, b = grouped.get_group(ours)[column], grouped.get_group(baseline)[column]
            difference = better * (a.mean() - b.mean())
            spread = math.hypot(a.std(ddof=0), b.std(ddof=0))
            verdict = ("holds" if difference > spread else
                       "within the seed spread" if difference > -spread else "REVERSED")
            lines.append(f"- {ours} {word} than {baseline}: {verdict} "
                         f"({a.mean():.2f} vs {b.mean():.2f}; seed spread "
                         f"sqrt(std²+std²) = {spread:.2f})")
    return lines


def plot_pass(curves: pd.DataFrame, dataset: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lrwa.atomic import atomic_path

    teacher = 100 * curves["teacher_acc"].iloc[0]
    panels = [list(pair) for pair in PAIRS] + [[s for s in curves["system"].unique()]]
    titles = [f"{a} vs {b}" for a, b in PAIRS] + ["all systems"]
    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5))
    for axis, systems, title in zip(axes, panels, titles, strict=True):
        for system in systems:
            run = curves[curves["system"] == system]
            if run.empty:
                continue
            by_epoch = (100 * run.pivot_table(index="epoch", columns="seed",
                                              values="test_acc"))
            mean, low, high = by_epoch.mean(axis=1), by_epoch.min(axis=1), by_epoch.max(axis=1)
            colour = f"C{[known.name for known in SYSTEMS].index(system) % 10}"
            axis.plot(mean.index, mean, label=system, color=colour)
            axis.fill_between(mean.index, low, high, color=colour, alpha=0.2)
        axis.axhline(teacher, color="grey", linestyle="--", label="teacher")
        # The first epoch starts near chance; the scale is set by what follows it.
        later = 100 * curves[curves["epoch"] > 1]["test_acc"]
        axis.set_ylim(max(0, min(teacher - 30, later.min() - 5)), min(100, teacher + 3))
        axis.set_xlabel("epoch")
        axis.set_ylabel("test accuracy (%)")
        axis.set_title(f"{dataset}: {title}", fontsize=10)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, loc="lower right")
    figure.suptitle(f"{dataset}, lenet5 -> lenet5-half: mean over seeds, band = min..max")
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=110)
    plt.close(figure)


def step_cost_section(quick: bool, work_dir: Path) -> str:
    """step_cost.py's tables, run once per work dir (kept for --report-only)."""
    from lrwa.atomic import write_text

    kept = work_dir / "step_cost.txt"
    if kept.is_file():
        return kept.read_text().strip()
    command = [sys.executable, str(HERE / "step_cost.py"), "--rounds", "5" if quick else "20"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return f"step_cost.py failed: {result.stderr.strip().splitlines()[-1:]}"
    write_text(kept, result.stdout)
    return result.stdout.strip()


def diagnose(run_dir: Path, samples: int = 2000) -> None:
    """Why a run plateaus: the teacher's classes on generated samples, and how often the
    student agrees with the teacher there and on the real test split."""
    import numpy as np
    import torch

    from lrwa.data import load_split
    from lrwa.generator import Generator
    from lrwa.models import build_model
    from lrwa.run import load_checkpoint, resolve_teacher, saved_config

    config = saved_config(run_dir)
    state = load_checkpoint(run_dir)["distiller"]
    teacher = resolve_teacher(config, progress=False)
    spec = teacher.spec
    generator = Generator(config.latent_dim, spec.channels, spec.image_size,
                          width=config.generator_width)
    generator.load_state_dict(state["generator"])
    student = build_model(config.student, spec.channels, spec.image_size, spec.num_classes)
    student.load_state_dict(state["student"])
    teacher.model.eval(), student.eval(), generator.train()  # train: batch statistics, as used
    torch.manual_seed(0)
    images, labels = load_split(spec.name, "test").tensors()
    with torch.no_grad():
        generated = generator(torch.randn(samples, config.latent_dim))
        on_generated = teacher.model(generated).argmax(1)
        agree_generated = (student(generated).argmax(1) == on_generated).float().mean()
        teacher_real = teacher.model(images).argmax(1)
        agree_real = (student(images).argmax(1) == teacher_real).float().mean()
        student_real = (student(images).argmax(1) == labels).float().mean()
    print(f"{run_dir}: teacher's class counts on {samples} generated samples "
          f"{np.bincount(on_generated.numpy(), minlength=spec.num_classes).tolist()}")
    print(f"student agrees with the teacher on generated samples {100 * agree_generated:.1f}%, "
          f"on the real test split {100 * agree_real:.1f}% (student test accuracy "
          f"{100 * student_real:.1f}%)")


def report(passes: Sequence[Pass], work_dir: Path, out_dir: Path, quick: bool,
           tuning: dict[str, pd.DataFrame], command: str, wall_s: float | None) -> str:
    import torch

    import lrwa

    sections = [
        "# Benchmarks: learning evolution on the offline data sets",
        "",
        f"Generated by `{command}` (lrwa {lrwa.__version__}, torch {torch.__version__}, "
        f"{os.cpu_count()} CPUs" + (f", wall time {wall_s / 60:.1f} min in all" if wall_s else "")
        + "). Do not edit by hand; the discussion at the end comes from "
          "`benchmarks/learning_evolution_notes.md`.",
        "",
        ("Teacher `lenet5` -> student `lenet5-half`, the small preset of `lrwa.config` "
        "(batch 256, 20 iterations x 5 student steps an epoch, memory bank 2048 reservoir, "
        "replay ratio 0.25). Statistics are over the epochs of one run, then mean ± std over "
        "seeds; var is in %². s / epoch: two runs side by side, one torch thread each."),
    ]
    all_curves = []
    for plan in passes:
        curves = collect_curves(plan, work_dir)
        if curves.empty:
            continue
        all_curves.append(curves)
        runs = per_run_statistics(curves)
        teacher = curves["teacher_acc"].iloc[0]
        image = out_dir / f"learning_evolution_{plan.dataset}.png"
        plot_pass(curves, plan.dataset, image)
        sections += ["", f"## {plan.dataset}: {len(plan.seeds)} seeds x {plan.epochs} epochs",
                     "", statistics_table(runs, plan.systems), "",
                     upper_table(collect_upper(plan, work_dir), teacher), "",
                     "Targets:", "", *target_lines(runs), "", f"![{plan.dataset}]({image.name})"]
        if plan.dataset in tuning:
            sections += ["", (f"Tuning ({plan.tune_epochs} epochs, seed {TUNE_SEED}, mean "
                         "validation accuracy %; baselines tune student_lr, LRWA tunes alpha; "
                         "first order and θ′-detached reuse LRWA (memory bank)'s alpha; "
                         "digits reuses these choices):"), "", tuning_table(tuning[plan.dataset])]
    if all_curves:
        pd.concat(all_curves).to_csv(out_dir / "learning_evolution_curves.csv", index=False)
    sections += ["", "## Step cost (`python benchmarks/step_cost.py`)", "",
                 step_cost_section(quick, work_dir)]
    notes = HERE / "learning_evolution_notes.md"
    if notes.is_file() and not quick:
        sections += ["", notes.read_text().strip()]
    return "\n".join(sections) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, few epochs, < 5 minutes")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="where runs live (default runs/learning_evolution[-quick])")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="where BENCHMARKS.md, the CSV and plots go "
                             "(default benchmarks/, or the work dir with --quick)")
    parser.add_argument("--workers", type=int, default=2, help="runs side by side")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--report-only", action="store_true", help="tables and plots only")
    parser.add_argument("--diagnose", type=Path, metavar="RUN_DIR",
                        help="print why a run plateaus (class coverage, student-teacher "
                             "agreement on generated and real images) and stop")
    args = parser.parse_args()
    if args.diagnose:
        diagnose(args.diagnose)
        return

    passes = QUICK if args.quick else FULL
    work_dir = (args.work_dir or Path("runs") / ("learning_evolution-quick" if args.quick
                                                  else "learning_evolution")).resolve()
    out_dir = (args.out_dir or (work_dir if args.quick else HERE)).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    tuning: dict[str, pd.DataFrame] = {}
    chosen: dict[str, dict[str, Any]] = {}
    for plan in passes:
        teacher = prepare_teacher(plan.dataset, work_dir)
        base = {**plan.overrides, "teacher": teacher}
        if plan.tune_epochs:
            if not args.report_only:
                run_all(tuning_jobs(plan, base, work_dir), args.workers, args.threads,
                        f"{plan.dataset} tuning", work_dir)
            chosen, tuning[plan.dataset] = choose_knobs(plan, work_dir)
            print(f"chosen: {chosen}", flush=True)
        if not args.report_only:
            run_all(upper_jobs(plan, teacher, work_dir) + main_jobs(plan, base, chosen, work_dir),
                    args.workers, args.threads, f"{plan.dataset} runs", work_dir)
    command = "python benchmarks/learning_evolution.py" + (" --quick" if args.quick else "")
    # Wall time summed over the invocations that ran something (a resumed or extended run
    # adds its own), kept for --report-only.
    wall_file = work_dir / "wall.json"
    record = json.loads(wall_file.read_text()) if wall_file.is_file() else {"wall_s": 0.0,
                                                                            "invocations": 0}
    if not args.report_only:
        record = {"wall_s": record["wall_s"] + time.perf_counter() - started,
                  "invocations": record.get("invocations", 1) + 1}
        _write_json(wall_file, record)
    wall = record["wall_s"] or None
    text = report(passes, work_dir, out_dir, args.quick, tuning, command, wall)
    from lrwa.atomic import write_text

    write_text(out_dir / "BENCHMARKS.md", text)
    print("\n" + text)
    print(f"written: {out_dir / 'BENCHMARKS.md'}")


if __name__ == "__main__":
    main()
