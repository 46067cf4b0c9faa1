"""The `lrwa tune` and `lrwa report` commands, and the study quickstart.

`add_commands(subparsers)` registers both subcommands on the CLI's argparse
subparsers, each with `func` set to its handler. Ray, Optuna and the plotting
stack are imported only inside the handlers, so `lrwa --help` stays fast.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from typing import Any

# The default storage, like every file name, is named once: in layout.py.
from lrwa.tune.layout import BEST_CONFIG, COMPLETED, DEFAULT_STORAGE, STOPPED_EARLY

QUICKSTART_STUDY = "quickstart"
# The cold quickstart's time on 2 idle CPU cores, the teacher's training included, as
# benchmarks/quickstart_time.py measures it (124.6 s cold at load 0.3 when last set); README,
# --help and the study file say it too.
QUICKSTART_MINUTES = 2

Printer = Callable[[str], None]
print_line: Printer = functools.partial(print, flush=True)  # in order with Ray's output


def add_commands(subparsers: Any) -> None:
    tune = subparsers.add_parser(
        "tune", help="run or continue a hyperparameter study (Ray Tune + Optuna)",
        description="Run a study file; rerunning the same command continues it.")
    tune.add_argument("study", help="study YAML file, or the name of a shipped study "
                      "(e.g. quickstart)")
    add_storage_flag(tune)
    tune.add_argument("--smoke", action="store_true",
                      help="two trials of two tiny epochs on one CPU, into <name>-smoke/")
    tune.add_argument("--dry-run", action="store_true",
                      help="print the space, trials, resources and a cost estimate; run nothing")
    tune.add_argument("--restart", action="store_true",
                      help="move an existing study folder aside and start over")
    tune.set_defaults(func=tune_command)

    report = subparsers.add_parser(
        "report", help="best trials, best_config.yaml and plots of a study")
    report.add_argument("study_dir", help="e.g. tune_results/quickstart or "
                        "s3://bucket/prefix/quickstart")
    report.add_argument("--top", type=int, default=5, help="trials to show (default 5)")
    report.add_argument("--no-plots", action="store_true", help="skip the PNGs")
    report.set_defaults(func=report_command)


def add_storage_flag(parser: Any) -> None:
    parser.add_argument("--storage", default=DEFAULT_STORAGE,
                        help="folder or object store URI (s3://bucket/prefix) that holds the "
                             f"study's folder (default: ./{DEFAULT_STORAGE})")


def _run_and_report(study: Any, storage: str, restart: bool) -> Any:
    from lrwa.tune.report import write_report
    from lrwa.tune.runner import run_study, summarise

    outcome = run_study(study, storage, restart=restart)
    for line in summarise(outcome, study):
        print_line(line)
    if outcome.ran and any(outcome.statuses.get(key) for key in (COMPLETED, STOPPED_EARLY)):
        write_report(outcome.store.uri(), tally=False)  # summarise printed the tally
    location = outcome.store.location()
    print_line(f"Parquet: {location}/curves/ (one file per trial, one row per epoch) and "
               f"{location}/trials.parquet; in Python: lrwa.tune.load_study('{location}')")
    return outcome


def tune_command(args: argparse.Namespace) -> None:
    from lrwa.tune.estimate import dry_run
    from lrwa.tune.study import load_study_file

    study = load_study_file(args.study)
    if args.smoke:
        study = study.smoke_variant()
    if args.dry_run:
        dry_run(study, args.storage)
        return
    _run_and_report(study, args.storage, args.restart)


def report_command(args: argparse.Namespace) -> None:
    from lrwa.errors import LrwaError
    from lrwa.tune.report import write_report

    if args.top < 1:
        raise LrwaError(f"--top must be at least 1, got {args.top}")
    write_report(args.study_dir, top=args.top, plots=not args.no_plots)


def run_quickstart(storage: str = DEFAULT_STORAGE) -> None:
    """The shipped quickstart study end to end into `storage`, then the report."""
    import yaml

    from lrwa.tune.study import load_study_file

    study = load_study_file(QUICKSTART_STUDY)
    print_line(f"quickstart: study '{study.name}', {study.budget.trials} trials; "
               f"{study.description}")
    outcome = _run_and_report(study, storage, restart=False)
    data = outcome.store.read_bytes(BEST_CONFIG)
    if data is not None:
        config = yaml.safe_load(data)
        shown = ", ".join(f"{key}={config[key]:.4g}" if isinstance(config[key], float)
                          else f"{key}={config[key]}"
                          for key in (*study.searched, "mode", "replay", "epochs"))
        print_line(f"\nbest configuration: {shown}\nrerun it: lrwa distill --config "
                   f"{outcome.store.location(BEST_CONFIG)} --out runs/quickstart-best")
