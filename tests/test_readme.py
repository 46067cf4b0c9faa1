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


def test_the_quickstart_time_is_said_one_way_everywhere(tmp_path):
    """README, `lrwa --help`, the study file and the dry run quote one measured figure
    (benchmarks/quickstart_time.py measures it: QUICKSTART_MINUTES)."""
    from lrwa.cli import build_parser
    from lrwa.tune.commands import QUICKSTART_MINUTES
    from lrwa.tune.estimate import dry_run
    from lrwa.tune.study import load_study_file

    figure = f"about {QUICKSTART_MINUTES} min on 2 CPU cores, the teacher's training included"
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert figure in readme.split("```")[0], "README's opening says another time"
    study = load_study_file("quickstart")
    assert figure in " ".join(study.description.split())
    assert figure in " ".join(build_parser().format_help().split())
    lines = []
    dry_run(study, tmp_path, out=lines.append, measure=False)
    assert any(figure in line for line in lines), lines


def test_a_cpu_user_meets_the_cpu_torch_line_before_the_command_they_copy():
    readme = (ROOT / "README.md").read_text()
    cpu_line = readme.index("pip install torch torchvision --index-url "
                            "https://download.pytorch.org/whl/cpu")
    assert cpu_line < readme.index("```bash")


def test_the_cache_and_the_quickstart_storage_are_documented():
    from lrwa.cli import build_parser

    opening = (ROOT / "README.md").read_text().split("---")[0]
    assert "LRWA_CACHE_DIR" in opening and "lrwa quickstart --storage" in opening
    args = build_parser().parse_args(["quickstart", "--storage", "elsewhere"])
    assert args.storage == "elsewhere"


def test_nothing_cites_a_file_outside_the_repository():
    """The method notes lrwa needs are its own docs (docs/method.md, docs/presets.md)."""
    tracked = project_files()
    offenders = [path for path in tracked
                 if path.suffix in (".py", ".md", ".yaml", ".toml", ".cfg")
                 and ("METHOD.md" in path.read_text(errors="replace")
                      or "../shared" in path.read_text(errors="replace"))
                 and path.name != "test_readme.py"]
    assert offenders == []
    for doc in ("docs/method.md", "docs/presets.md"):
        assert (ROOT / doc).is_file()


def project_files() -> list[Path]:
    """Every file of the project, outside git's metadata and virtual environments."""
    return [path for path in ROOT.rglob("*") if path.is_file()
            and not any(part.startswith(".") for part in path.relative_to(ROOT).parts)
            and "site-packages" not in path.parts and "runs" not in path.parts]
