"""Test-session settings: no test writes to the user's cache or needs a display, and torch
uses one thread."""

from __future__ import annotations

import os
import tempfile

import torch

os.environ.setdefault("LRWA_CACHE_DIR", tempfile.mkdtemp(prefix="lrwa-test-cache-"))
os.environ.setdefault("MPLBACKEND", "Agg")

# The suite's models are tiny, and Ray workers running beside the test process made 2-thread
# torch up to 10x slower on a 2-core machine through oversubscription.
torch.set_num_threads(1)
