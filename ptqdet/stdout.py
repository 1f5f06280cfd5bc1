"""Libraries kept quiet: what they print to stdout (pycocotools' summaries, ppdet's indexing),
their log chatter and warnings. A neutral module: scripts, Ray workers and benchmarks use it."""
from __future__ import annotations

import contextlib
import io
import logging
import os
import threading
import warnings
from collections.abc import Iterator

# sys.stdout is one per process: contextlib.redirect_stdout swaps it, and two threads swapping
# it at once (analysis.py --workers scores the workers' detections in a thread while the main
# thread evaluates) can leave it pointing at a buffer for good; one lock orders the swaps
_SWAP = threading.RLock()


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """What the block prints to stdout is dropped (thread-safe)."""
    with _SWAP, contextlib.redirect_stdout(io.StringIO()):
        yield


def quiet_libraries(quiet: bool = False) -> None:
    """Keep paddle/ppdet/paddleslim INFO chatter out of the results; quiet (--quiet): their
    warnings too (e.g. paddle.static.io's "The old way to load inference model is deprecated",
    logged when paddleslim loads the model), and every Python warning. ptqdet's own warnings
    (skipped images) are printed, not logged: they still show."""
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("FLAGS_call_stack_level", "1")
    warnings.filterwarnings("ignore")
    # Pillow's image module before paddle: loaded after it, Pillow's PNG encoder runs into paddle's
    # zlib symbols and segfaults (matplotlib's savefig); paddle before ppdet/pycocotools (requirements.txt)
    # isort: off
    import PIL.Image  # noqa: F401
    import paddle  # noqa: F401
    # isort: on

    # ppdet prints "Warning: Unable to use JDE/FairMOT/..." for tracking extras it never needs here
    with contextlib.redirect_stdout(io.StringIO()):
        import ppdet  # noqa: F401 - creates its loggers
        import ppdet.metrics  # noqa: F401

    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("ppdet", "paddleslim", "paddle")):
            logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger().setLevel(logging.WARNING)
    if quiet:  # also loggers created later (paddleslim's, when quantize imports it)
        logging.disable(logging.WARNING)
        warnings.showwarning = _drop_warning


def _drop_warning(*args: object, **kwargs: object) -> None:
    """warnings.showwarning under --quiet: a library that resets the filters still prints nothing."""
