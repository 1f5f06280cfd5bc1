"""Libraries that print to stdout (pycocotools' summaries, ppdet's indexing), kept quiet."""
from __future__ import annotations

import contextlib
import io
import threading
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
