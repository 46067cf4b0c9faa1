"""Does the authors' generative replay retain? The check issue 18 asks for, as a table.

Runs DFAD, MB-DFKD and PRE-DFKD (`--preset dfad|mb-dfkd|pre-dfkd`) at lrwa's CPU scale on
mnist5k (the embedded LeNet-5 teacher -> LeNet-5-half) over the same seeds, and reports:
- after a warm-up of W epochs, the mean retention loss (loss_ret) and gradient cosine
  cos(grad L_acq, grad L_ret) of each replay system: near 0 means the replayed samples teach
  the student nothing the fresh ones do not;
- per system, the mean test accuracy over epochs (the papers' learning-curve mean);
- PRE-DFKD - DFAD and MB-DFKD - DFAD paired over seeds (lrwa.paired_seeds): the mean
  difference with its 95% t-interval, the paired t and exact sign-flip p-values, the
  difference detectable at 80% power, and the verdict.

Each run is an ordinary lrwa run folder under --out, so an interrupted benchmark resumes
where it stopped (a finished run is read, not rerun).

    python benchmarks/authors_replay.py --out runs/authors_replay --seeds 5 --epochs 12
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import pandas as pd

from lrwa.atomic import write_text
from lrwa.config import build_config
from lrwa.paired_seeds import compare
from lrwa.provenance import versions
from lrwa.run import run_distillation
from lrwa.sinks import read_metrics
from lrwa.teacher import default_teacher

SYSTEMS = ("dfad", "mb-dfkd", "pre-dfkd")


def run_all(out: Path, seeds: int, epochs: int, iters: int) -> pd.DataFrame:
    teacher = default_teacher(progress=False)
    curves = []
    # Seed by seed, so that a benchmark cut short still holds complete pairs.
    for seed, system in itertools.product(range(seeds), SYSTEMS):
        folder = out / f"{system}-seed{seed}"
        config = build_config("mnist5k", overrides={
            "preset": system, "seed": seed, "epochs": epochs, "iters_per_epoch": iters,
            "eval_split": "test", "grad_cos_every": 5})
        done = (folder / "metrics.parquet").is_file() and len(read_metrics(folder)) == epochs
        if not done:
            resume = (folder / "checkpoint.pt").is_file()
            run_distillation(None if resume else config, folder, resume=resume,
                             teacher=teacher, progress=False)
        curve = read_metrics(folder)
        curves.append(curve.assign(system=system, seed=seed))
    return pd.concat(curves, ignore_index=True)


def paired(a: pd.Series, b: pd.Series, names: tuple[str, str]) -> str:
    result = compare(a.to_numpy(), b.to_numpy(), names)
    return (f"{100 * result.mean:+.2f} pts [{100 * result.ci_low:+.2f}, "
            f"{100 * result.ci_high:+.2f}]  t p={result.t_p:.3f}  sign-flip "
            f"p={result.sign_flip_p:.3f}  ({result.higher}/{result.n} seeds higher; "
            f"detectable at 80% power: {100 * result.detectable:.1f} pts)  {result.verdict}")


def report(curves: pd.DataFrame, warmup: int) -> list[str]:
    """The tables, as lines of Markdown."""
    late = curves[curves["epoch"] > warmup]
    per_seed = curves.groupby(["system", "seed"])["test_acc"].mean().unstack(0)
    lines = [(f"After warm-up (epochs {warmup + 1}-{curves['epoch'].max()}), mean over "
             f"{per_seed.shape[0]} seeds:"), "",
             "| system | loss_ret | grad_cos | loss_acq | mean test acc over epochs |",
             "|---|---|---|---|---|"]
    for system in SYSTEMS:
        rows = late[late["system"] == system]
        lines.append(f"| {system} | {rows['loss_ret'].mean():.4f} | "
                     f"{rows['grad_cos'].mean():.3f} | {rows['loss_acq'].mean():.4f} | "
                     f"{100 * per_seed[system].mean():.2f}% |")
    lines += ["", "cos(grad L_acq, grad L_ret) per epoch, mean over seeds:", "",
              "| system | " + " | ".join(str(e) for e in sorted(curves["epoch"].unique()))
              + " |", "|---|" + "---|" * curves["epoch"].nunique()]
    for system in ("mb-dfkd", "pre-dfkd"):
        by_epoch = curves[curves["system"] == system].groupby("epoch")["grad_cos"].mean()
        lines.append(f"| {system} | " + " | ".join(f"{v:.2f}" for v in by_epoch) + " |")
    lines += ["", "Paired over seeds, mean test accuracy over all epochs:", ""]
    for first, second in (("pre-dfkd", "dfad"), ("mb-dfkd", "dfad"), ("pre-dfkd", "mb-dfkd")):
        lines.append(f"- {first} - {second}: "
                     f"{paired(per_seed[first], per_seed[second], (first, second))}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/authors_replay"))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--iters", type=int, default=10, help="iterations per epoch")
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--report", type=Path, help="also write the tables to this Markdown file")
    args = parser.parse_args()
    curves = run_all(args.out, args.seeds, args.epochs, args.iters)
    curves.to_csv(args.out / "curves.csv", index=False)
    lines = report(curves, args.warmup)
    print("\n".join(lines))
    if args.report:
        header = [f"# {__doc__.splitlines()[0]}", "", ("Written by `python benchmarks/"
                  f"authors_replay.py --seeds {args.seeds} --epochs {args.epochs} --iters "
                  f"{args.iters} --warmup {args.warmup} --report {args.report}` "
                  f"(lrwa {versions()['lrwa']}, git {versions()['git']})."), ""]
        write_text(args.report, "\n".join(header + lines) + "\n")


if __name__ == "__main__":
    main()
