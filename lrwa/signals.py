"""The signals a cloud sends stop lrwa the way Ctrl+C does.

Preemption, `ray stop`, `ray job stop` and most schedulers send SIGTERM first; a closed
terminal or SSH session sends SIGHUP. Both are handed to whatever SIGINT does at that
moment: inside `Tuner.fit` that is Ray Tune's own handler, which ends the run after saving
the experiment state (trials stay resumable and a rerun continues them); elsewhere it is
Python's, a KeyboardInterrupt, which `lrwa distill` survives with its last checkpoint kept
and the CLI reports in one line. `ray.init` installs a SIGTERM handler that exits at once,
so `connect_ray` installs these again after it.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP")
                     if hasattr(signal, name))


def _as_ctrl_c(signum: int, frame: FrameType | None) -> None:
    del signum
    handler = signal.getsignal(signal.SIGINT)
    if handler is signal.SIG_IGN:
        return
    if callable(handler):
        handler(signal.SIGINT, frame)
        return
    raise KeyboardInterrupt  # SIG_DFL, or a handler installed outside Python


def stop_like_ctrl_c() -> None:
    """From now on SIGTERM and SIGHUP do what SIGINT does (main thread only; elsewhere
    Python cannot install handlers, and nothing is changed)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in STOP_SIGNALS:
        signal.signal(signum, _as_ctrl_c)
