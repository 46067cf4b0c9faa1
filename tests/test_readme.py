"""README's two commands are the ones CI and users run; keep them true."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)


def test_readme_opens_with_the_install_and_test_commands():
    first, second = (block.strip() for block in _bash_blocks()[:2])
    assert first.startswith("pip install .") and "lrwa quickstart" in first
    assert second == 'pip install ".[test]" && pytest'


def test_ci_runs_readme_test_command_and_fails_on_no_tests():
    ci = (ROOT / ".ci" / "run").read_text()
    assert _bash_blocks()[1].strip() in ci
    assert '"$status" -eq 5' in ci


def test_quickstart_command_exists():
    from lrwa.cli import build_parser

    assert build_parser().parse_args(["quickstart"]).command == "quickstart"


def test_the_quickstart_time_is_said_one_way_everywhere():
    """README, `lrwa --help` and the study file quote one measured estimate."""
    from lrwa.cli import build_parser
    from lrwa.tune.study import load_study_file

    readme = " ".join((ROOT / "README.md").read_text().split())
    estimate = re.search(r"about \d+ min on 2 CPU cores, the teacher's training included",
                         readme)
    assert estimate, "README's opening no longer says how long the quickstart takes"
    assert estimate.group(0) in " ".join(load_study_file("quickstart").description.split())
    assert estimate.group(0) in " ".join(build_parser().format_help().split())
