"""The signals that ask a command to stop, and the one way commands set their handlers.

Ctrl-C (SIGINT), SIGTERM (a service manager, CI cancelling a job) and SIGHUP (the terminal or
SSH session closed) all mean "stop"; each command decides what stopping does (set a flag,
raise KeyboardInterrupt, exit with a code). Python lets only the main thread set handlers: off
it these helpers do nothing, so a command called from a thread leaves the process's own.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM", signal.SIGHUP: "SIGHUP"}

Handler = Callable[[int, object], object]


def in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def handling(handlers: dict[int, Handler]) -> Iterator[dict[int, object]]:
    """`handlers` for the block, the earlier ones back after it (they are what it yields).
    Off the main thread: nothing is set, and it yields {}."""
    if not in_main_thread():
        yield {}
        return
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    try:
        yield previous
    finally:
        restore(previous)


def restore(handlers: dict[int, object]) -> None:
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def put_back() -> None:
    """Set each stop signal's Python handler again. Ray's native clean-up (at `ray.shutdown`,
    and again some seconds later) resets SIGINT, SIGTERM and SIGHUP to their default actions
    behind Python's back: the handler Python still reported never ran, and `reproduce` died on
    SIGTERM (exit 143) with its workers left running."""
    if in_main_thread():
        for sig in STOP_SIGNALS:
            handler = signal.getsignal(sig)
            if handler is not None:  # None: not set from Python; nothing to put back
                signal.signal(sig, handler)
