"""Test-session settings: no test writes to the user's cache or needs a display, and torch
uses one thread; `ray_session`, the one Ray session of a test module."""

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
