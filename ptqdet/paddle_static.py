"""Paddle static-graph plumbing shared by the modules that edit or run programs."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def static_mode() -> Iterator[None]:
    """Paddle in static-graph mode inside the block, restored to the caller's mode after it."""
    import paddle

    was_dynamic = paddle.in_dynamic_mode()
    paddle.enable_static()
    try:
        yield
    finally:
        if was_dynamic:
            paddle.disable_static()
