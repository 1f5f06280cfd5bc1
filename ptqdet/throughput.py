"""Throughput on OpenVINO: images per second of a server that keeps the CPU busy.

Latency (ptqdet.benchmark) is batch 1 on one stream. A server instead runs OpenVINO's
THROUGHPUT performance hint: several streams (the number OpenVINO picks for the threads it is
given), each request holding a batch, as many requests in flight as OpenVINO says is optimal
(an AsyncInferQueue). There INT8's smaller memory traffic counts most. Each model is run for a
fixed time per round, the models in turn and the order reversed every other round, so a
machine shared with other work slows them alike; images/s is the median over the rounds.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .backends import OpenVINOBackend, open_backend
from .model import BackendOptions


@dataclass
class ThroughputRow:
    model: str  # FP32 f32, FP32 bf16, INT8
    batch: int
    runtime: str = ""
    streams: int | None = None
    requests: int | None = None
    images_per_s: list[float] = field(default_factory=list)  # one per round
    error: str | None = None

    @property
    def median(self) -> float | None:
        return statistics.median(self.images_per_s) if self.images_per_s else None


def batched(feed: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """One image's feed repeated `batch` times on the batch axis."""
    return {name: np.ascontiguousarray(np.repeat(array[:1], batch, axis=0)) for name, array in feed.items()}


class ThroughputRunner:
    """One model compiled under the THROUGHPUT hint for one batch size, with its request queue."""

    def __init__(self, export_dir: Path, precision: str, batch: int, threads: int, feed: dict[str, np.ndarray]):
        runner = open_backend("openvino", export_dir, BackendOptions(threads=threads, openvino_precision=precision))
        assert isinstance(runner, OpenVINOBackend)
        if batch > 1 and runner.batch1:
            raise ValueError("the export fixes an input's batch dimension to 1 (paddle2onnx); batch 1 only")
        import openvino as ov

        self.feed = runner._feed(batched(feed, batch))  # noqa: SLF001 - the runner's own input selection
        # the latency runner's NUM_STREAMS 1 dropped: the hint chooses the streams for the threads
        self.compiled = runner.compile_for(self.feed, {"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": None})
        self.requests = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self.streams = int(self.compiled.get_property("NUM_STREAMS"))
        self.queue = ov.AsyncInferQueue(self.compiled, self.requests)
        self.batch = batch
        self.runtime = runner.mode

    def images_per_second(self, seconds: float) -> float:
        """Keep every request busy for `seconds`; images finished per second."""
        done = [0]

        def finished(_request: Any, _userdata: Any) -> None:
            done[0] += 1

        self.queue.set_callback(finished)
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            self.queue.start_async(self.feed)  # waits for a free request
        self.queue.wait_all()
        return done[0] * self.batch / (time.perf_counter() - start)


def measure_throughput(models: dict[str, tuple[Path, str]], batches: list[int], threads: int,
                       feed: dict[str, np.ndarray], rounds: int = 3, seconds: float = 2.0,
                       progress: bool = True) -> list[ThroughputRow]:
    """Rows per batch size and model (name -> (export folder, OpenVINO precision)): images/s
    under the THROUGHPUT hint, the models of one batch size measured in alternating rounds."""
    rows: list[ThroughputRow] = []
    for batch in batches:
        runners: list[tuple[ThroughputRow, ThroughputRunner]] = []
        for name, (export_dir, precision) in models.items():
            row = ThroughputRow(name, batch)
            rows.append(row)
            try:
                runner = ThroughputRunner(export_dir, precision, batch, threads, feed)
            except (ValueError, RuntimeError) as exc:
                row.error = " ".join(str(exc).split())[:200]
                continue
            row.runtime, row.streams, row.requests = runner.runtime, runner.streams, runner.requests
            runner.images_per_second(min(seconds, 1.0))  # warm-up
            runners.append((row, runner))
        order = range(rounds)
        if progress:
            from tqdm import tqdm
            order = tqdm(order, desc=f"throughput batch {batch}", unit="round", leave=False)
        for r in order:
            for row, runner in (runners if r % 2 == 0 else runners[::-1]):
                row.images_per_s.append(runner.images_per_second(seconds))
    return rows


def throughput_table(title: str, rows: list[ThroughputRow]) -> list[list[Any]]:
    """Table rows: images/s per model and batch, and the ratio to FP32 f32 at the same batch."""
    base = {row.batch: row.median for row in rows if row.model == "FP32 f32"}
    out = []
    for row in rows:
        ratio = row.median / base[row.batch] if row.median and base.get(row.batch) else None
        out.append([title, row.model, row.batch, row.runtime or "-", row.streams, row.requests,
                    f"{row.median:.1f}" if row.median else None, f"{ratio:.2f}" if ratio else None,
                    row.error or "ok"])
    return out


THROUGHPUT_HEADERS = ["model", "precision", "batch", "runtime", "streams", "requests in flight", "images/s (median)",
                      "ratio to FP32 f32", "status"]
