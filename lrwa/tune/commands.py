"""The `lrwa tune` and `lrwa report` commands, and the study quickstart.

`add_commands(subparsers)` registers both subcommands on the CLI's argparse
subparsers, each with `func` set to its handler. Ray, Optuna and the plotting
stack are imported only inside the handlers, so `lrwa --help` stays fast.
"""

from __future__ import annotations

import argparse
from typing import Any

DEFAULT_STORAGE = "tune_results"
QUICKSTART_STUDY = "quickstart"


def add_commands(subparsers: Any) -> None:
    tune = subparsers.add_parser(
        "tune", help="run or resume a hyperparameter study (Ray Tune + Optuna)",
        description="Run a study file; rerunning the same command resumes it.")
    tune.add_argument("study", help="study YAML file, or a name in tune_studies/ "
                      "(e.g. quickstart)")
    tune.add_argument("--storage", default=DEFAULT_STORAGE,
                      help="folder or object store URI (s3://bucket/prefix) that holds the "
                           f"study's folder (default: ./{DEFAULT_STORAGE})")
    tune.add_argument("--smoke", action="store_true",
                      help="two trials of two tiny epochs on one CPU, into <name>-smoke/")
    tune.add_argument("--dry-run", action="store_true",
                      help="print the space, trials, resources and a cost estimate; run nothing")
    tune.add_argument("--restart", action="store_true",
                      help="move an existing study folder aside and start over")
    tune.set_defaults(func=tune_command)

    report = subparsers.add_parser(
        "report", help="best trials, best_config.yaml and plots of a study folder")
    report.add_argument("study_dir", help="e.g. tune_results/quickstart or "
                        "s3://bucket/prefix/quickstart")
    report.add_argument("--top", type=int, default=5, help="trials to show (default 5)")
    report.add_argument("--no-plots", action="store_true", help="skip the PNGs")
    report.set_defaults(func=report_command)


def _finish(outcome: Any) -> None:
    from lrwa.analysis import BEST_CONFIG, REPORT_DIR, write_report
    from lrwa.tune.storage import TreePusher

    study_dir = outcome.study_dir
    location = outcome.storage.location(study_dir.name)
    counts = ", ".join(f"{count} {status}" for status, count in outcome.statuses.items()
                       if count)
    print(f"study {location}: {counts or 'no trials'}", flush=True)
    if outcome.interrupted:
        print("interrupted: rerun the same command to resume the unfinished trials",
              flush=True)
    if outcome.statuses.get("completed", 0) + outcome.statuses.get("stopped early", 0):
        write_report(study_dir)
        TreePusher(outcome.storage, study_dir.name).push(BEST_CONFIG, REPORT_DIR)
    print(f"Parquet: {location}/curves/ (one row per trial and epoch, partitioned by "
          f"trial_id) and {location}/trials.parquet; in Python: "
          f"lrwa.analysis.load_study('{location}')", flush=True)


def tune_command(args: argparse.Namespace) -> None:
    from lrwa.tune.estimate import dry_run
    from lrwa.tune.runner import run_study
    from lrwa.tune.study import load_study_file

    study = load_study_file(args.study)
    if args.smoke:
        study = study.smoke_variant()
    if args.dry_run:
        dry_run(study, args.storage)
        return
    _finish(run_study(study, args.storage, restart=args.restart))


def report_command(args: argparse.Namespace) -> None:
    from lrwa.analysis import write_report
    from lrwa.errors import LrwaError

    if args.top < 1:
        raise LrwaError(f"--top must be at least 1, got {args.top}")
    write_report(args.study_dir, top=args.top, plots=not args.no_plots)


def run_quickstart() -> None:
    """`tune_studies/quickstart.yaml` end to end into ./tune_results, then the report."""
    import yaml

    from lrwa.tune.runner import run_study
    from lrwa.tune.study import load_study_file

    study = load_study_file(QUICKSTART_STUDY)
    print(f"quickstart: study '{study.name}' ({study.source}), {study.trials} trials; "
          "about 10 minutes on 2 CPU cores", flush=True)
    outcome = run_study(study, DEFAULT_STORAGE)
    _finish(outcome)
    best = outcome.study_dir / "best_config.yaml"
    if best.is_file():
        config = yaml.safe_load(best.read_text())
        shown = ", ".join(f"{key}={config[key]:.4g}" if isinstance(config[key], float)
                          else f"{key}={config[key]}"
                          for key in (*study.searched, "mode", "replay", "epochs"))
        print(f"\nbest configuration: {shown}\nrerun it: lrwa distill --config {best} "
              f"--out runs/quickstart-best", flush=True)
