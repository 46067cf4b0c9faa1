"""Test-session settings: no test writes to the user's cache or needs a display."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("LRWA_CACHE_DIR", tempfile.mkdtemp(prefix="lrwa-test-cache-"))
os.environ.setdefault("MPLBACKEND", "Agg")
