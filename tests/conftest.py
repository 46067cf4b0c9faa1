"""Test-session settings: no test writes to the user's cache or needs a display, and torch
uses one thread; `ray_session`, the one Ray session of a test module; `teacher_file`, the
tiny digits teacher every study test uses, and `mnist_teacher` with `mnist_test_split`, what
the engine tests distil from (each made once per session). Tests that need Ray
are marked `slow`; the fast lane is `pytest -m "not slow and not cluster"`."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

os.environ.setdefault("LRWA_CACHE_DIR", tempfile.mkdtemp(prefix="lrwa-test-cache-"))
os.environ.setdefault("MPLBACKEND", "Agg")
# The key that signs studies' Ray state (lrwa.tune.integrity), never the user's own.
os.environ.setdefault("LRWA_STATE_KEY_FILE",
                      os.path.join(tempfile.mkdtemp(prefix="lrwa-test-key-"), "state.key"))

# The suite's models are tiny, and Ray workers running beside the test process made 2-thread
# torch up to 10x slower on a 2-core machine through oversubscription.
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def ray_session():
    """A 2-CPU local Ray for the module, quiet, shut down after its last test."""
    import logging

    import ray

    # address="local": a Ray of its own, never another one running on the machine.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def teacher_file(tmp_path_factory):
    """A digits LeNet-5 teacher trained for one epoch (a second of CPU)."""
    from tiny_study import write_tiny_teacher

    return write_tiny_teacher(tmp_path_factory.mktemp("teacher"))


# Fixtures that make a test slow: a Ray session, an S3 server with studies on it.
SLOW_FIXTURES = {"ray_session", "endpoint"}
# Modules that start Ray clusters of their own, or `lrwa tune` drivers on Ray.
SLOW_MODULES = {"test_multinode.py", "test_signals.py"}


def pytest_collection_modifyitems(config, items):
    """Every test that starts or joins Ray is `slow`: the fast lane,
    `pytest -m "not slow and not cluster"`, runs the rest."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) or (
                item.path.name in SLOW_MODULES):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def mnist_teacher():
    """A LeNet-5 trained one epoch on mnist5k (seconds): the engine tests' teacher."""
    from lrwa.teacher import train_teacher

    return train_teacher("mnist5k", "lenet5", epochs=1, progress=False)


@pytest.fixture(scope="session")
def mnist_test_split():
    from lrwa.data import load_split

    return load_split("mnist5k", "test").tensors()
