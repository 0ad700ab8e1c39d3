"""Ctrl-C while a command works: stop at a place where what finished can still be saved.

A KeyboardInterrupt raised wherever the signal lands (inside an import, a verdict, a file
write) would unwind past the results. Inside :class:`InterruptGate` the first Ctrl-C is only
recorded; it is raised where it is safe:

* ``engine=True`` (``mc``): inside the Monte Carlo engine's block loop once a block is merged,
  where the engine turns it into a result flagged ``incomplete`` and the sweep stops there;
  until then the gate looks again every ``poll_s`` seconds.
* otherwise (``check``, ``report``): never; the command asks :attr:`InterruptGate.pending`
  between claims.

A second Ctrl-C raises KeyboardInterrupt at once. The command line turns any KeyboardInterrupt
into exit code 130.
"""

from __future__ import annotations

import signal
import threading

__all__ = ["InterruptGate"]


def _engine_frames(frame):
    """The engine's ``run_mc`` frame and whether a block loop runs below it, or (None, False)."""
    in_loop = False
    while frame is not None:
        code = frame.f_code
        if code.co_filename.endswith("engine.py"):
            if code.co_name in ("compute_block", "_run_threaded"):
                in_loop = True
            elif code.co_name == "run_mc":
                return frame, in_loop
        frame = frame.f_back
    return None, False


def safe_in_engine(frame) -> bool:
    """True when ``frame`` is inside the engine's block loop with at least one block merged."""
    run_frame, in_loop = _engine_frames(frame)
    if run_frame is None or not in_loop:
        return False
    state = run_frame.f_locals.get("state")
    try:
        return int(state["snap"][1]) >= 1
    except (TypeError, KeyError, IndexError, ValueError):
        return False  # an engine this gate does not know: wait for the command's own safe point


class InterruptGate:
    """A context manager that defers Ctrl-C to a safe point (see the module docstring)."""

    def __init__(self, *, engine: bool = False, poll_s: float = 0.02):
        self.engine, self.poll_s = engine, poll_s
        self.pending = False
        self._old = None
        self._old_alarm = None
        self._polling = False

    def __enter__(self) -> "InterruptGate":
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc) -> None:
        self._stop_polling()
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None

    def _on_sigint(self, signum, frame) -> None:
        if self.pending:
            self._stop_polling()
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        self.pending = True
        if self.engine:
            if safe_in_engine(frame):
                raise KeyboardInterrupt
            self._start_polling()

    def _on_poll(self, signum, frame) -> None:
        if self._polling and safe_in_engine(frame):
            self._stop_polling()
            raise KeyboardInterrupt

    def _start_polling(self) -> None:
        if not hasattr(signal, "setitimer") or self._polling:
            return  # no timer (Windows): the interrupt waits for the command's safe point
        self._old_alarm = signal.signal(signal.SIGALRM, self._on_poll)
        self._polling = True
        signal.setitimer(signal.ITIMER_REAL, self.poll_s, self.poll_s)

    def _stop_polling(self) -> None:
        if self._polling:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._old_alarm or signal.SIG_DFL)
            self._polling = False
