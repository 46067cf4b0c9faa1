"""The wheel: the study files ship as `lrwa.studies`, and nothing but `lrwa` lands in site-packages.

The repository keeps the study files in its top-level tune_studies/ (where `lrwa tune
tune_studies/x.yaml` finds them from a clone); pyproject.toml maps that folder to the
package lrwa.studies. The wheel is built without build isolation from a copy of the source
(a few seconds, no network), then installed with pip into a folder of its own and imported
from outside the repository, as a user's `pip install .` would be.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STUDY_FILES = sorted(path.name for path in (ROOT / "tune_studies").glob("*.yaml"))
SOURCES = ("pyproject.toml", "setup.py", "README.md", "lrwa", "tune_studies")
GIT = ("git", "-c", "user.name=lrwa-test", "-c", "user.email=test@lrwa.invalid",
       "-c", "commit.gpgsign=false")


def pip(*arguments: str, cwd: Path) -> None:
    # Without build isolation the build uses this environment's setuptools (the test extra
    # asks for the version pyproject's build-system needs).
    done = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check",
                           *arguments], cwd=cwd, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, f"pip {arguments[0]} failed:\n{done.stderr[-3000:]}"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the sources as a checkout of one commit of its own, as a clone is."""
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, source / name)
    for command in (("init", "-q"), ("add", "-A"), ("commit", "-q", "-m", "source")):
        subprocess.run([*GIT, *command], cwd=source, check=True, capture_output=True,
                       timeout=60)
    return source


@pytest.fixture(scope="module")
def revision(source: Path) -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, check=True,
                          capture_output=True, text=True, timeout=60).stdout.strip()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory, source: Path) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    pip("wheel", str(source), "--no-deps", "--no-build-isolation", "--no-index", "-w", str(out),
        cwd=out)
    [built] = out.glob("lrwa-*.whl")
    return built


@pytest.fixture(scope="module")
def wheel_files(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def test_study_files_are_in_the_wheel_under_lrwa_studies(wheel_files: list[str]) -> None:
    assert len(STUDY_FILES) >= 4 and "quickstart.yaml" in STUDY_FILES
    shipped = sorted(name.removeprefix("lrwa/studies/") for name in wheel_files
                     if name.startswith("lrwa/studies/") and name.endswith(".yaml"))
    assert shipped == STUDY_FILES
    assert "lrwa/studies/__init__.py" in wheel_files


def test_nothing_but_lrwa_is_top_level(wheel: Path, wheel_files: list[str]) -> None:
    top_level = {name.split("/")[0] for name in wheel_files
                 if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"lrwa"}
    assert not any("tune_studies" in name for name in wheel_files)
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read("lrwa-0.1.0.dist-info/top_level.txt").decode().split() == ["lrwa"]


def test_every_module_under_lrwa_is_in_the_wheel(wheel_files: list[str]) -> None:
    # pyproject lists the packages by name (a mapped package cannot be found by scanning):
    # a new subpackage left off that list would silently be missing from the wheel.
    modules = sorted(path.relative_to(ROOT).as_posix() for path in (ROOT / "lrwa").rglob("*.py")
                     if "__pycache__" not in path.parts)
    assert "lrwa/tune/study.py" in modules
    assert [module for module in modules if module not in wheel_files] == []


def test_license_is_an_spdx_expression(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        metadata = archive.read("lrwa-0.1.0.dist-info/METADATA").decode()
    assert "License-Expression: MIT" in metadata.splitlines()
    assert not any(line.startswith("License:") for line in metadata.splitlines())


def test_installed_wheel_finds_the_study_files_through_importlib_resources(
        wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    pip("install", "--no-deps", "--no-index", "--target", str(target), str(wheel), cwd=tmp_path)
    assert sorted(path.name for path in target.iterdir()
                  if not path.name.endswith(".dist-info")) == ["bin", "lrwa"]
    probe = ("import importlib.resources, importlib.util, json, lrwa.studies\n"
             "files = importlib.resources.files('lrwa.studies')\n"
             "print(json.dumps({'module': lrwa.studies.__file__,\n"
             "  'yaml': sorted(p.name for p in files.iterdir() if p.name.endswith('.yaml')),\n"
             "  'quickstart': files.joinpath('quickstart.yaml').read_text()}))\n")
    # Run from outside the repository, so the clone's own folders cannot be imported.
    found = json.loads(subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, check=True, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(target)}, timeout=120).stdout)
    assert Path(found["module"]).is_relative_to(target)
    assert found["yaml"] == STUDY_FILES
    assert found["quickstart"] == (ROOT / "tune_studies" / "quickstart.yaml").read_text()


def test_this_install_finds_the_study_files_through_importlib_resources() -> None:
    # In the development venv this is the editable install, which maps lrwa.studies to the
    # repository's tune_studies/ (reinstall with `pip install -e .` after pyproject changes).
    files = importlib.resources.files("lrwa.studies")
    assert sorted(path.name for path in files.iterdir() if path.name.endswith(".yaml")) \
        == STUDY_FILES


def test_installed_wheel_records_the_git_revision_it_was_built_from(
        wheel: Path, revision: str, tmp_path: Path) -> None:
    # `pip install .` builds this wheel; installed, it has no checkout beside it, and the
    # working directory (here, not a repository at all) is not asked.
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read("lrwa/_revision.txt").decode().strip() == revision
    target = tmp_path / "site"
    pip("install", "--no-deps", "--no-index", "--target", str(target), str(wheel), cwd=tmp_path)
    probe = "from lrwa.provenance import versions; print(versions()['git'])"
    found = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, check=True,
                           capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PYTHONPATH": str(target)}).stdout.strip()
    assert len(revision) == 40 and found == revision


def test_a_checkout_is_asked_only_at_its_top(source: Path, revision: str,
                                             tmp_path: Path) -> None:
    # lrwa imported in place from the checkout: the checkout answers (an editable install).
    probe = "from lrwa.provenance import versions; print(versions()['git'])"
    found = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, check=True,
                           capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PYTHONPATH": str(source)}).stdout.strip()
    assert found == revision
    # A copy of lrwa inside another repository (site-packages in a clone) is not that
    # repository's code: no revision rather than a wrong one.
    nested = source / "vendored"
    shutil.copytree(source / "lrwa", nested / "lrwa")
    found = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, check=True,
                           capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PYTHONPATH": str(nested)}).stdout.strip()
    assert found == "None"
