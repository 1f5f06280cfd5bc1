"""Calibration in one forward pass of the FP32 model.

paddleslim's calibration (quant_post_static) runs the model on each batch with every sampled
activation made persistable, and reads each activation back into numpy to take its max |x|
(`abs_max`) or the mean over the batch of each image's max |x| (`avg`). With depthwise
equalization (ptqdet.recovery) the model ran once more before that, for the channel ranges of
the depthwise inputs. Here one pass gives all of it: the reductions are ops appended to a copy
of the program (|x|, then the max over the axes not kept), so only the reduced values leave
Paddle, run by one executor on the same kernels as before.

The equalized model's statistics are read off the original model: its activations are the
original's (up to float rounding) except the equalized depthwise inputs, whose maxima the
equalization knows exactly (they are set to those, as the two-pass path does after
calibration). paddleslim then inserts its quantize/dequantize ops from these statistics as it
does from its own (`_update_program` and the rest of `PostTrainingQuantization.quantize`). The
algorithms that keep more than maxima (hist, KL, mse, ...), AdaRound, bias correction and the
reconstruction methods keep paddleslim's own sampling (`supports`).
"""
from __future__ import annotations

import contextlib
import queue
import sys
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FAST_ALGOS = ("abs_max", "avg")
ONEDNN_CALIBRATION_OPS = ("conv2d", "depthwise_conv2d")  # most of a detector's forward time
FLOAT_TYPES = ("float32", "float64", "float16")


class StatisticsUnsupported(Exception):
    """This model's activations cannot be reduced in the graph (the caller falls back to paddleslim)."""


@dataclass
class ActivationStats:
    """Per variable: each batch's per-image max |x| (axis 0 is the image), and the per-channel
    (axis 1) max |x| over every batch."""

    sample_max: dict[str, list[np.ndarray]] = field(default_factory=dict)
    channel_max: dict[str, np.ndarray] = field(default_factory=dict)

    def threshold(self, name: str, algo: str) -> float | None:
        """paddleslim's activation threshold for `algo` from these statistics (None: the
        variable was empty in every batch, which paddleslim leaves without a threshold)."""
        per_batch = [m for m in self.sample_max[name] if m.size]
        if not per_batch:
            return None
        if algo == "abs_max":
            return max(float(np.max(m)) for m in per_batch)
        # avg: paddleslim's _sample_avg takes float(np.mean(...)) per batch, then the mean of those
        return np.array([float(np.mean(m)) for m in per_batch]).mean()

    def empty(self) -> set[str]:
        """Variables that were empty in some batch (paddleslim's _zero_size_var_names)."""
        return {name for name, batches in self.sample_max.items() if any(m.size == 0 for m in batches)}


def supports(settings: Any) -> bool:
    """Whether PTQ with these PTQSettings can calibrate from one pass of maxima."""
    return (settings.algo in FAST_ALGOS and settings.round_type == "round" and settings.reconstruction == "none"
            and not settings.bias_correction)


def collect_statistics(program: Any, scope: Any, place: Any, feed_names: list[str],
                       feeds: Iterable[dict[str, np.ndarray]], sample_vars: Iterable[str] = (),
                       channel_vars: Iterable[str] = (), progress: bool = False, onednn: bool = False,
                       threads: int = 1) -> ActivationStats:
    """Run `program` (not changed: a copy gets the reductions) on each feed and return the
    per-image maxima of sample_vars and the per-channel maxima of channel_vars. A sampled
    variable inside a control-flow block is not read (recorded empty: paddleslim's zero-size
    variables, left without a threshold); one that is 0-D counts as one image; one that is
    empty in a batch (a post-process' boxes after a score filter: Paddle cannot reduce it) is
    read out and reduced in numpy from that batch on. `onednn`: the convolutions run on Paddle's
    oneDNN kernels (about twice as fast as its plain ones; other rounding: the maxima move by
    about 1e-4 of themselves), the reductions on its plain ones. A batch the model itself cannot
    run in Paddle's executor is left out with a warning (paddleslim's sampling stops there).
    Raises StatisticsUnsupported for a channel variable that is not a float tensor of the main
    block with two or more axes or is empty, or when no batch runs."""

    run = _StatisticsRun(program, scope, place, list(feed_names), list(sample_vars), list(channel_vars), onednn)
    stats = ActivationStats({name: [] for kind, name in run.plan if kind != "channel"}, {})
    feeds = [{k: feed[k] for k in feed_names} for feed in feeds]
    with _progress_bar(progress, len(feeds)) as bar:
        parallel = run.parallel(feeds, threads, bar) if threads > 1 else None
        if parallel is not None:
            for values in parallel:
                _record(stats, run.fetched(), values)
            return stats
        failed = _serial_pass(run, feeds, stats, bar)
    if failed:
        if len(failed) == len(feeds):
            raise StatisticsUnsupported(f"no calibration batch runs in Paddle's executor: {failed[0]}")
        print(f"warning: calibrated on {len(feeds) - len(failed)} of {len(feeds)} batches: Paddle's executor cannot "
              f"run the model on the others ({failed[0]}; paddleslim's calibration stops there)", file=sys.stderr)
    return stats


@contextlib.contextmanager
def _progress_bar(progress: bool, total: int) -> Iterator[Any]:
    """A "calibrating" bar over the batches (None without `progress`), closed on the way out
    whatever ends the block: nothing of it is printed after a signal's message."""
    if not progress:
        yield None
        return
    from tqdm import tqdm

    bar = tqdm(total=total, desc="calibrating", unit="batch")
    try:
        yield bar
    finally:
        bar.close()


def _serial_pass(run: _StatisticsRun, feeds: list[dict[str, np.ndarray]], stats: ActivationStats,
                 bar: Any) -> list[str]:
    """Each batch through `run` in turn, recorded in `stats`; returns the errors of the batches
    the model itself cannot run (left out)."""
    from .signals import check_interrupted

    failed: list[str] = []
    for feed in feeds:
        check_interrupted()  # a signal's exception swallowed by a library stops the loop all the same
        try:
            values = run.batch(feed)
        except _BatchFailed as exc:
            failed.append(str(exc))
            continue
        _record(stats, run.fetched(), values)  # the plan of this batch's run (a batch may rebuild it)
        if bar is not None:
            bar.update()
    return failed


class _BatchFailed(Exception):
    """The model itself cannot run this batch in Paddle's executor."""


class _StatisticsRun:
    """The statistics program (_statistics_runner) run batch by batch, rebuilt where a batch
    needs it: a fresh executor for every batch once one cannot run twice, numpy reductions for
    the variables a batch left empty."""

    def __init__(self, program: Any, scope: Any, place: Any, feed_names: list[str], sample_vars: list[str],
                 channel_vars: list[str], onednn: bool):
        self.program, self.scope, self.place, self.feed_names = program, scope, place, feed_names
        self.sample_vars, self.channel_vars, self.onednn = sample_vars, channel_vars, onednn
        self.read_out: set[str] = set()
        self.fresh_executor = False
        self.rebuild()

    def rebuild(self) -> None:
        self.runner, self.plan = _statistics_runner(self.program, self.scope, self.place, self.feed_names,
                                                    self.sample_vars, self.channel_vars, self.read_out, self.onednn)

    def fetched(self) -> list[tuple[str, str]]:
        """The plan's statistics that the runner fetches, in its fetch order."""
        return [entry for entry in self.plan if entry[0] != "unread"]

    def parallel(self, feeds: list[dict[str, np.ndarray]], threads: int, bar: Any = None
                 ) -> list[list[np.ndarray]] | None:
        """Each batch's fetched values, the batches shared out among `threads` threads (each a
        runner of the statistics program on a scope of its own, ProgramRunner.with_own_scope);
        None when a batch fails (the caller's serial loop then runs every batch with its
        fallbacks). Only this thread touches the bar; whatever ends the pass (a signal's
        exception), the threads finish their batch and stop before it returns or raises."""
        from .signals import check_interrupted

        threads = min(threads, len(feeds))
        done: queue.Queue = queue.Queue()
        stop = threading.Event()

        def work(first: int) -> None:
            try:
                runner = self.runner.with_own_scope()
                for i in range(first, len(feeds), threads):
                    if stop.is_set():
                        return
                    done.put((i, runner.run(feeds[i])))
            except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
                done.put((None, exc))

        values: list[Any] = [None] * len(feeds)
        with ThreadPoolExecutor(threads) as pool:  # leaving it waits for the threads
            try:
                for first in range(threads):
                    pool.submit(work, first)
                for _ in feeds:
                    check_interrupted()
                    i, result = done.get()
                    if i is None:
                        raise result
                    values[i] = result
                    if bar is not None:
                        bar.update()
            except (RuntimeError, ValueError):
                stop.set()
                if bar is not None:
                    bar.reset()
                return None
            except BaseException:
                stop.set()
                raise
        return values

    def batch(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self.fresh_executor:
            self.runner = self.runner.fresh()
        try:
            return self.runner.run(feed)
        except (RuntimeError, ValueError) as exc:
            self.runner = self.runner.fresh()
            try:  # a program with tensor arrays (RetinaNet's post-process, its boxes found per level)
                values = self.runner.run(feed)
                self.fresh_executor = True
                return values
            except (RuntimeError, ValueError):  # e.g. a reduction over an empty tensor
                empty = _empty_variables(self.program, self.scope, self.place, self.feed_names, feed,
                                         [name for kind, name in self.plan if kind in ("sample", "channel")])
                if empty is None:
                    raise _BatchFailed(_first_error_line(exc)) from exc
                if not empty or empty & set(self.channel_vars):
                    raise StatisticsUnsupported(_first_error_line(exc)) from exc
                self.read_out |= empty
                self.rebuild()
                return self.runner.run(feed)


def _first_error_line(exc: BaseException) -> str:
    """The line of a Paddle error that names it (its messages start with the user-code trace)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    named = [line for line in lines if "Error" in line.split(":")[0]]
    return f"{type(exc).__name__}: {(named or lines or [''])[0][:200]}"


def _statistics_runner(program: Any, scope: Any, place: Any, feed_names: list[str], sample_vars: list[str],
                       channel_vars: list[str], read_out: set[str], onednn: bool = False
                       ) -> tuple[Any, list[tuple[str, str]]]:
    """A ProgramRunner of a copy of `program` with the |x| + max reductions appended (and its
    convolutions on oneDNN kernels with `onednn`), and its plan: (kind, variable) per statistic,
    kind sample / channel (reduced in the graph), raw (fetched whole, reduced in numpy) or unread
    (not in the main block: not fetched)."""
    import paddle

    from .paddle_static import ProgramRunner

    stats_program = program.clone(for_test=True)
    block = stats_program.global_block()
    if onednn and paddle.base.core.is_compiled_with_mkldnn():
        for op in block.ops:
            if op.type in ONEDNN_CALIBRATION_OPS:
                op._set_attr("use_mkldnn", True)  # noqa: SLF001 - the attribute Paddle's kernel choice reads
    plan: list[tuple[str, str]] = []
    fetch: list[str] = []
    absolute: dict[str, Any] = {}
    with paddle.static.program_guard(stats_program):
        for kind, names in (("sample", sample_vars), ("channel", channel_vars)):
            for name in names:
                if not block.has_var(name):
                    if kind == "channel":
                        raise StatisticsUnsupported(f"{name} is not a variable of the main block")
                    plan.append(("unread", name))  # inside a control-flow block: no statistic, as an empty one
                    continue
                var = block.var(name)
                ndim = len(var.shape)
                if kind == "channel" and (str(var.dtype).split(".")[-1] not in FLOAT_TYPES or ndim < 2):
                    raise StatisticsUnsupported(f"{name}: {var.dtype}, {ndim} axes, has no channels")
                if kind == "sample" and (str(var.dtype).split(".")[-1] not in FLOAT_TYPES or ndim <= 1
                                         or name in read_out):
                    plan.append(("raw", name))  # small (counts, per-image scalars, boxes): reduced in numpy
                    fetch.append(name)
                    continue
                if name not in absolute:
                    absolute[name] = paddle.abs(var)
                axes = list(range(1, ndim)) if kind == "sample" else [a for a in range(ndim) if a != 1]
                plan.append((kind, name))
                fetch.append(paddle.max(absolute[name], axis=axes).name)
    _prune(stats_program, fetch)
    return ProgramRunner(stats_program.desc, feed_names, fetch, place, scope), plan


def _prune(program: Any, fetch_names: list[str]) -> int:
    """Remove the ops of a one-block program that no fetched variable needs (a detector's
    decode and NMS after its last quantized layer); returns how many. A program with
    control-flow blocks is left as it is."""
    from .program import needed_ops

    if program.num_blocks != 1:
        return 0
    block = program.global_block()
    kept = needed_ops([(op.input_arg_names, op.output_arg_names) for op in block.ops], set(fetch_names))
    unneeded = [i for i in reversed(range(len(block.ops))) if i not in kept]
    for i in unneeded:  # descending
        block._remove_op(i, sync=False)  # noqa: SLF001 - the block is in sync: ops only appended so far
    return len(unneeded)


def _empty_variables(program: Any, scope: Any, place: Any, feed_names: list[str], feed: dict[str, np.ndarray],
                     names: list[str]) -> set[str] | None:
    """Which of `names` the program computes empty for this feed (None: it cannot run it)."""
    from .paddle_static import ProgramRunner

    names = list(dict.fromkeys(names))
    try:
        values = ProgramRunner(program.desc, feed_names, names, place, scope).run(feed)
    except (RuntimeError, ValueError):
        return None
    return {name for name, value in zip(names, values) if value.size == 0}


def _record(stats: ActivationStats, fetched: list[tuple[str, str]], values: list[np.ndarray]) -> None:
    for name in stats.sample_max.keys() - {name for _, name in fetched}:
        stats.sample_max[name].append(np.zeros(0, np.float32))
    for (kind, name), value in zip(fetched, values):
        if kind == "raw":  # as paddleslim's _sample_avg reads it; a 0-D value (shape arithmetic) as one image
            value = np.atleast_1d(value)
            stats.sample_max[name].append(np.max(np.abs(value.reshape(value.shape[0], -1)), axis=1)
                                          if value.size else np.zeros(0, np.float32))
        elif kind == "sample":
            stats.sample_max[name].append(value)
        else:
            stats.channel_max[name] = value if name not in stats.channel_max else np.maximum(
                stats.channel_max[name], value)


def post_training_quantization(model: Any, loader: Any, settings: Any, skip_tensor_list: list[str],
                               program: Any = None) -> Any:
    """paddle's PostTrainingQuantization with the arguments quant_post_static gives it, on the
    loaded model's program (or `program`, e.g. a copy that collecting its variables may mark)
    and scope, its quantized variables collected."""
    from paddle.static.quantization import PostTrainingQuantization

    ptq = PostTrainingQuantization(
        executor=model.exe, scope=model.scope, model_dir=None, data_loader=loader, batch_size=settings.batch_size,
        batch_nums=settings.batch_nums, algo=settings.algo, round_type=settings.round_type,
        hist_percent=settings.hist_percent, bias_correction=settings.bias_correction,
        quantizable_op_type=list(settings.quantizable_op_type), is_full_quantize=settings.is_full_quantize,
        activation_quantize_type=settings.activation_quantize_type,
        weight_quantize_type=settings.weight_quantize_type, onnx_format=settings.onnx_format,
        skip_tensor_list=list(skip_tensor_list) or None, optimize_model=False)
    ptq._program = model.program if program is None else program
    block = ptq._program.global_block()
    ptq._feed_list, ptq._fetch_list = list(model.feed_names), [block.var(v.name) for v in model.fetch_vars]
    ptq._collect_target_varnames()
    return ptq


def quantize_from_statistics(ptq: Any, stats: ActivationStats, maxima: dict[str, float], out_dir: Path,
                             filenames: tuple[str, str]) -> None:
    """The rest of PostTrainingQuantization.quantize (round_type round) with the activation
    thresholds taken from `stats` (and `maxima`, exact ones that win), then its save."""
    from paddle.static.quantization import utils

    activations = ptq._quantized_act_var_name
    ptq._quantized_act_var_name = set()
    try:
        ptq._sampling()  # with no activation to read: the weights' thresholds, as paddleslim takes them
    finally:
        ptq._quantized_act_var_name = activations
    ptq._zero_size_var_names |= stats.empty() & activations
    for name in activations:
        if name in maxima:
            ptq._quantized_threshold[name] = maxima[name]
        elif name in stats.sample_max:
            threshold = stats.threshold(name, ptq._algo)
            if threshold is not None:
                ptq._quantized_threshold[name] = threshold
    ptq._update_program()
    if not ptq.FLAG:
        ptq._save_output_threshold()
    if any(t in ptq.quant_config.activation_quant_operation_types for t in ptq._dynamic_quantize_op_type):
        ptq._collect_dynamic_quantize_op_threshold(ptq._dynamic_quantize_op_type)
    utils.move_persistable_var_to_global_block(ptq._program)
    ptq.save_quantized_model(str(out_dir), model_filename=filenames[0], params_filename=filenames[1])
