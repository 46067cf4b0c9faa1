"""A Ray cluster that cannot be reached, or refuses this driver, is one line and exit 2.

`lrwa tune` and `lrwa distill --workers 2` run as commands against a closed port (as
host:port and as ray://), and against a head of this test's own that wants an
authentication token the driver does not send. Each must end within the 30 s the
subprocess is given, with a single `lrwa: error:` line naming the address and the fix.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from ray_heads import free_port, start_head
from tiny_study import write_study_file, write_tiny_teacher

HANG_LIMIT_S = 30  # the bound: a hang past it fails the test


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    return write_tiny_teacher(tmp_path_factory.mktemp("teacher"))


def _commands(teacher_file, folder):
    study = write_study_file(folder, teacher_file)
    return {
        "tune": ["tune", str(study), "--storage", str(folder / "studies")],
        "distill": ["distill", "--teacher", str(teacher_file), "--workers", "2",
                    "--epochs", "1", "--iters-per-epoch", "1", "--batch-size", "32",
                    "--out", str(folder / "run")],
    }


def _lrwa(arguments, env):
    return subprocess.run(check=False, args=[sys.executable, "-m", "lrwa", *arguments], capture_output=True,
                          text=True, env=env, timeout=HANG_LIMIT_S)


def _one_error_line(result):
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lrwa: error: "), result.stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("command", ["tune", "distill"])
@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_a_closed_port_is_one_line_naming_the_address(teacher_file, tmp_path, command, scheme):
    address = f"{scheme}127.0.0.1:{free_port()}"  # bound a moment ago, now closed
    env = {**os.environ, "RAY_ADDRESS": address}
    line = _one_error_line(_lrwa(_commands(teacher_file, tmp_path)[command], env))
    assert f"cannot reach the Ray cluster at {address} (RAY_ADDRESS)" in line
    assert "connection refused" in line and "port" in line
    assert not (tmp_path / "run" / "ray_run.json").exists()


@pytest.fixture(scope="module")
def token_head(tmp_path_factory):
    token = os.urandom(16).hex()
    head = start_head(tmp_path_factory.mktemp("token-head"),
                      env={"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token})
    yield head, token
    head.stop()


@pytest.mark.parametrize("command", ["tune", "distill"])
def test_a_token_head_names_ray_auth_mode(token_head, teacher_file, tmp_path, command):
    head, _ = token_head
    # A driver joining an explicit address sends no token unless RAY_AUTH_MODE=token.
    env = {**head.ray_env(), "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_AUTH_TOKEN", None)
    line = _one_error_line(_lrwa(_commands(teacher_file, tmp_path)[command], env))
    assert f"the Ray cluster at {head.address} (RAY_ADDRESS) refused" in line
    assert "set RAY_AUTH_MODE=token" in line


def test_the_probe_lets_the_right_token_through(token_head):
    """The refusal above is the token's, not the probe's: with it, the head answers."""
    head, token = token_head
    probe = ("from lrwa.ray_connect import check_reachable; "
             f"check_reachable({head.address!r}); print('reached')")
    for mode, token_given, expected in [("token", token, "reached"),
                                        ("token", os.urandom(16).hex(), "refused")]:
        env = {**head.ray_env(), "RAY_AUTH_MODE": mode, "RAY_AUTH_TOKEN": token_given}
        result = subprocess.run(check=False, args=[sys.executable, "-c", probe], capture_output=True, text=True,
                                env=env, timeout=HANG_LIMIT_S)
        assert expected in result.stdout + result.stderr, result.stderr[-2000:]


def test_a_lost_node_is_one_console_line_not_its_raylet_log(capsys):
    """The hook into Ray's driver that prints what nodes publish: a node's death is one line
    (Ray prints the raylet's log tail, ~25 lines), anything else passes unchanged. Fails
    when a Ray release renames the function lrwa wraps."""
    import ray._private.worker as ray_worker

    from lrwa.ray_connect import quiet_node_reports

    original = ray_worker.print_to_stdstream
    quiet_node_reports()
    try:
        lost = ("Raylet is terminated. Termination is unexpected. Last 20 lines of the Raylet "
                "logs:\n" + "    [state-dump] NodeManager:\n" * 20)
        ray_worker.print_to_stdstream({"lines": [lost], "pid": "raylet", "is_err": False},
                                      ignore_prefix=False)
        ray_worker.print_to_stdstream({"lines": ["worker 7 ran out of memory"],
                                       "pid": "raylet", "is_err": False}, ignore_prefix=False)
    finally:
        ray_worker.print_to_stdstream = original
    captured = capsys.readouterr()
    assert "state-dump" not in captured.out + captured.err
    assert captured.err.count("a node was lost") == 1
    assert "worker 7 ran out of memory" in captured.out
