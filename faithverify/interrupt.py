"""Ctrl-C, wherever it lands: one flag that every long computation can see.

Python turns SIGINT into ``KeyboardInterrupt`` in the main thread, but the MILP solvers get in the way: Gurobi
installs its own SIGINT handler for the length of ``optimize()`` and ends the solve with status ``INTERRUPTED``
(which looks like any early stop), and HiGHS runs our Python callbacks inside its branch and bound, where the
``KeyboardInterrupt`` becomes a failed callback and ``run()`` returns an error status. So the solver wrappers
ask :func:`requested` after each solve (and HiGHS's callback asks it during one) and raise
``KeyboardInterrupt`` themselves: the run stops, keeps what is finished, and reports nothing false.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

_requested = threading.Event()


def request() -> None:
    """Note that the user asked to stop (a solver saw Ctrl-C before Python did)."""
    _requested.set()


def requested() -> bool:
    return _requested.is_set()


def raise_if_requested() -> None:
    """Raise the pending Ctrl-C, once: the flag is consumed, so that a library user (a notebook) who catches the
    KeyboardInterrupt can solve again afterwards."""
    if _requested.is_set():
        _requested.clear()
        raise KeyboardInterrupt


def clear() -> None:
    _requested.clear()


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    _requested.set()
    signal.default_int_handler(signum, frame)  # raises KeyboardInterrupt, as Python's own handler does


def install() -> None:
    """Route SIGINT through the flag (from the main thread; elsewhere Python keeps its handler)."""
    _requested.clear()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _on_sigint)


@contextlib.contextmanager
def workers_ignore_sigint() -> Iterator[None]:
    """Start worker processes inside this block so that they ignore SIGINT from birth.

    A terminal's Ctrl-C reaches every process of the foreground group; a spawned worker still importing torch
    would die with a traceback. An ignored signal stays ignored across exec and Python keeps it so, so the
    workers never see it: the driver alone handles Ctrl-C and then terminates them.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
