"""SIGINT, SIGTERM and SIGHUP, ended the same way in every script (ptqdet.cli.run uses this).

Inside `signals_raise_interrupted()` the signals raise `Interrupted` in the main thread (a
KeyboardInterrupt, so `except Exception` does not catch it): every `finally` and context
manager on the way out runs, and the script ends with exit code 128 + the signal's number.

A library may swallow the exception (ppdet's image Decode has a bare `except:`, and turns it
into an AttributeError; Python itself ignores one raised inside a finalizer, e.g. tqdm's
`__del__`): the signal stays pending, long loops check it (`check_interrupted`, e.g. before each
calibration batch), so do the commit of an output folder (`paddle_static.replace_dir`) and the
end of `cli.run`, Interrupted is raised again every REPEAT_S until the script ends, and whatever
exception ends it is reported as the interruption.

Paddle's C++ runtime installs its own SIGTERM handler when it is imported (it prints a C++
"FatalError" report and ends the process at once, leaving temporaries behind), and ray.init
installs one that calls sys.exit: `install_signal_handlers()` puts ours back after either
(cli.quiet_libraries, which every script calls first, imports paddle; ray_pool.connect calls it
after ray.init).
"""
from __future__ import annotations

import _thread
import contextlib
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# after a signal, Interrupted is raised again every REPEAT_S until run() ends: a library that
# swallows it (ppdet's image Decode has a bare `except:`) cannot keep the script running; a
# repeated signal sooner than that is ignored (the cleanups of the first one are running)
REPEAT_S = 1.5


class Interrupted(KeyboardInterrupt):  # noqa: N818 - named like KeyboardInterrupt, which it is
    """A signal (SIGINT, SIGTERM, SIGHUP) asked the script to stop."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = int(signum)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@dataclass
class _SignalState:
    previous: dict[int, Any] | None = None  # the handlers run() replaced (None: run() is not active)
    pending: int | None = None  # the signal that asked to stop
    raised_at: float = 0.0  # when Interrupted was last raised


_state = _SignalState()


def _on_signal(signum: int, frame: object) -> None:
    now = time.monotonic()
    if _state.pending is not None and now - _state.raised_at < REPEAT_S:
        return  # raised a moment ago: its cleanups are running
    if _state.pending is None:
        _state.pending = signum
        threading.Thread(target=_repeat, name="ptqdet-interrupt", daemon=True).start()
    _state.raised_at = now
    raise Interrupted(_state.pending)


def _repeat() -> None:
    """Raise Interrupted in the main thread again every REPEAT_S while run() is still active
    (the handler runs there: _thread.interrupt_main simulates the signal)."""
    previous = _state.previous
    while True:
        time.sleep(REPEAT_S)
        if _state.previous is not previous or _state.previous is None or _state.pending is None:
            return
        _thread.interrupt_main(_state.pending)


def check_interrupted() -> None:
    """Raise Interrupted if a signal asked the script to stop: for long loops (calibration
    batches), in case a library swallowed the exception the signal raised."""
    if _state.pending is not None and _state.previous is not None:
        _state.raised_at = time.monotonic()
        raise Interrupted(_state.pending)


def install_signal_handlers() -> None:
    """(Re)install the handlers of run(), if run() is active in this process's main thread;
    call it after anything that installs its own (importing paddle, ray.init)."""
    if _state.previous is None or threading.current_thread() is not threading.main_thread():
        return
    for signum in HANDLED_SIGNALS:
        signal.signal(signum, _on_signal)


@contextlib.contextmanager
def signals_raise_interrupted() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP raise Interrupted inside the block (main thread only; the
    handlers before it are restored after it)."""
    if threading.current_thread() is not threading.main_thread() or _state.previous is not None:
        yield
        return
    _state.previous = {signum: signal.getsignal(signum) for signum in HANDLED_SIGNALS}
    _state.pending = None
    install_signal_handlers()
    unraisable_hook = sys.unraisablehook
    sys.unraisablehook = _quiet_about_interrupted(unraisable_hook)
    try:
        yield
    finally:
        previous, _state.previous = _state.previous, None
        sys.unraisablehook = unraisable_hook
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def _quiet_about_interrupted(previous: Any) -> Any:
    """sys.unraisablehook without Python's "Exception ignored in" traceback for an Interrupted
    raised inside a finalizer (the signal stays pending: the next commit or the end of the run
    reports it in one line); any other unraisable exception goes to `previous`."""

    def hook(unraisable: Any) -> None:
        if not isinstance(unraisable.exc_value, Interrupted):
            previous(unraisable)

    return hook


def pending_signal() -> int | None:
    """The signal that asked the script to stop (None: none)."""
    return _state.pending


def forget_signal() -> None:
    """The pending signal has been reported: forget it (run() ends)."""
    _state.pending = None
