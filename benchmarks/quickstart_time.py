"""The cold quickstart's time and where it goes: `lrwa quickstart` in a fresh process,
from an empty cache, into an empty folder, as a new user runs it.

Parts, each measured in a fresh process of its own (the fastest of `--repeats`), then the
quickstart itself timed line by line from its output:

    interpreter start          python -c pass
    import torch               beyond the interpreter
    import torch._dynamo       beyond torch (pulled in by torch.optim / torch.func users)
    import ray.tune + optuna   beyond the interpreter
    Ray start                  ray.init + shutdown, beyond its import
    quickstart: to the teacher, the teacher (trained once, cached), the study's trials,
    the report and the rest, and the whole.

The machine's load (1-minute average, from os.getloadavg) is printed beside the total:
the target (at most the README's figure, on 2 idle cores) holds only on an idle machine.

    python benchmarks/quickstart_time.py                 # about 3 minutes on 2 cores
    python benchmarks/quickstart_time.py --repeats 3     # steadier import times
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# (name, statement run in a fresh interpreter, the part it is measured beyond)
PROBES = (
    ("interpreter start", "pass", None),
    ("import torch", "import torch", "interpreter start"),
    ("import torch._dynamo", "import torch, torch._dynamo", "import torch"),
    ("import ray.tune + optuna", "import ray.tune, optuna", "interpreter start"),
    ("Ray start (2 CPUs)", ("import ray.tune, optuna, ray; ray.init(num_cpus=2, "
                            "include_dashboard=False, address='local'); ray.shutdown()"),
     "import ray.tune + optuna"),
)
# Lines of the quickstart's output that end each of its parts.
MARKERS = (
    ("to the teacher (imports, study file)", re.compile(r"training the embedded")),
    ("teacher (trained once, cached)", re.compile(r"^teacher: .* test accuracy")),
    ("trials (Ray start included)", re.compile(r"^study .*: \d+ ")),
    ("report and exit", None),
)


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.2f} (5 min {five:.2f}) on {os.cpu_count()} cores"


def _seconds(statement: str, environment: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", statement], check=True, env=environment,
                   capture_output=True, timeout=600)
    return time.perf_counter() - started


def probes(repeats: int, environment: dict[str, str]) -> dict[str, float]:
    totals = {name: min(_seconds(statement, environment) for _ in range(repeats))
              for name, statement, _ in PROBES}
    return {name: totals[name] - (totals[base] if base else 0.0)
            for name, _, base in PROBES}


def quickstart(folder: Path, environment: dict[str, str]) -> tuple[list[tuple[str, float]],
                                                                   float, list[str]]:
    """Run `lrwa quickstart` in `folder`; (part, seconds) from the output's markers."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "lrwa", "quickstart", "--storage",
                                str(folder / "tune_results")], cwd=folder, env=environment,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    marks: dict[str, float] = {}
    lines = []
    for line in process.stdout:
        now = time.perf_counter() - started
        lines.append(f"{now:7.1f}  {line.rstrip()}")
        for name, pattern in MARKERS:
            if pattern is not None and name not in marks and pattern.search(line):
                marks[name] = now
    if process.wait() != 0:
        sys.exit("quickstart failed:\n" + "\n".join(lines[-20:]))
    total = time.perf_counter() - started
    parts, previous = [], 0.0
    for name, _ in MARKERS:
        end = marks.get(name, total if name == MARKERS[-1][0] else None)
        if end is None:
            parts.append((name, float("nan")))
            continue
        parts.append((name, end - previous))
        previous = end
    return parts, total, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=1, help="runs of each import probe")
    parser.add_argument("--log", action="store_true", help="print the quickstart's output")
    parser.add_argument("--keep", metavar="DIR",
                        help="run in DIR (new or empty) and keep the study there")
    args = parser.parse_args()
    if args.keep and Path(args.keep).exists() and any(Path(args.keep).iterdir()):
        sys.exit(f"--keep {args.keep} is not empty")
    with tempfile.TemporaryDirectory(prefix="lrwa-quickstart-time-") as scratch:
        folder = Path(args.keep or scratch).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        environment = {**os.environ, "LRWA_CACHE_DIR": str(folder / "cache")}
        print(f"before: {_load()}")
        measured = probes(args.repeats, environment)
        print(f"{'part (fresh process each)':<40} {'s':>7}")
        for name, seconds in measured.items():
            print(f"{name:<40} {seconds:7.1f}")
        before = _load()
        parts, total, lines = quickstart(folder, environment)
        print(f"\n{'lrwa quickstart, cold (empty cache)':<40} {'s':>7}")
        for name, seconds in parts:
            print(f"{name:<40} {seconds:7.1f}")
        print(f"{'total':<40} {total:7.1f}   ({before} before, {_load()} after)")
        if args.log:
            print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
