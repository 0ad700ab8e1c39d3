"""Ctrl-C while a command works: stop where what finished can still be saved.

A KeyboardInterrupt raised wherever the signal lands (inside an import, a verdict, a file
write) would unwind past the results. Inside :class:`InterruptGate` the first Ctrl-C only sets
:attr:`InterruptGate.stop`, a ``threading.Event`` that the work polls at its own safe points:
the Monte Carlo engine after each merged block and the sweeps between points (their ``stop=``
argument), ``check`` and ``report`` between claims. A second Ctrl-C raises KeyboardInterrupt at
once. The command line turns any KeyboardInterrupt into exit code 130.
"""

from __future__ import annotations

import signal
import threading

__all__ = ["InterruptGate"]


class InterruptGate:
    """A context manager that turns the first Ctrl-C into a request to stop (module docstring)."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self._old = None

    @property
    def pending(self) -> bool:
        """True once Ctrl-C has been pressed inside the gate."""
        return self.stop.is_set()

    def __enter__(self) -> "InterruptGate":
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None

    def _on_sigint(self, signum, frame) -> None:
        if self.stop.is_set():
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        self.stop.set()
