"""What the scripts share: flags, quiet logging, one clear error line on bad input, and the
same ending on SIGINT, SIGTERM and SIGHUP.

`run(main)` runs a script's main:
- a ConfigError (a mistake of the user's: a path, a key, a model a runtime cannot run) becomes
  one line on stderr and exit code 2; an ExportError (paddle2onnx failed on the model) one
  line and exit code 1;
- SIGINT, SIGTERM and SIGHUP raise `Interrupted` in the main thread (a KeyboardInterrupt, so
  `except Exception` does not catch it): every `finally` and context manager on the way out
  runs (atomic_dir removes its temporary, quantize_files the recovery step's temporary FP32
  model), then one line "interrupted by SIGTERM" and exit code 128 + the signal's number, as a
  shell reports a process the signal ended.

How signals are caught and why (libraries that swallow them, or install their own handlers):
ptqdet/signals.py.
"""
from __future__ import annotations

import argparse
import gc
import signal
import sys
from collections.abc import Callable

from .config import ConfigError
from .signals import (
    Interrupted,
    check_interrupted,
    forget_signal,
    install_signal_handlers,
    pending_signal,
    signals_raise_interrupted,
)
from .stdout import quiet_libraries as _quiet_libraries


def quiet_libraries(quiet: bool = False) -> None:
    """ptqdet.stdout.quiet_libraries (it imports paddle), then this module's signal handlers
    back in place of the one paddle's import installs."""
    _quiet_libraries(quiet)
    install_signal_handlers()


def one_line(text: str) -> str:
    """A message on one line, even when it quotes a library's multi-line text."""
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config_path", required=True,
                        help="ptqdet YAML config (model_dir, datasets, EvalReader, PTQ section; see README)")
    parser.add_argument("--devices", choices=("cpu", "gpu"), default="cpu",
                        help="where to run: cpu (default) or gpu (needs paddlepaddle-gpu)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for inference (default: all cores, at most 4; env PTQDET_THREADS)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def add_deploy_threads_flag(parser: argparse.ArgumentParser, what: str) -> None:
    """--deploy_threads: the threads of the latency runs on the deployment runtime (what: of what)."""
    parser.add_argument("--deploy_threads", type=int, default=1,
                        help=f"CPU threads of the deployment runtime for {what} (default 1, batch 1: steadier than "
                             "more on a shared machine)")


def add_ray_flags(parser: argparse.ArgumentParser, what: str) -> None:
    """--workers, --worker_threads, --ray_address (what: the work they spread)."""
    parser.add_argument("--workers", type=int, default=None,
                        help=f"run {what} as Ray tasks on N workers (default: none, in this process, "
                             "Ray not imported)")
    parser.add_argument("--worker_threads", type=int, default=1,
                        help="CPU threads of each worker (OMP/MKL; default 1: Paddle's CPU kernels scale poorly over "
                             "threads, N one-thread workers on N cores beat one N-thread run)")
    parser.add_argument("--ray_address", default=None,
                        help="join this Ray cluster (e.g. HEAD_IP:6379, from `ray start --head`) instead of starting "
                             "a local Ray instance; needs --workers. Anyone who reaches a Ray cluster's ports can run "
                             "code in it unless its token authentication is on: `ray start --head` turns it on only "
                             "when a token exists (make one first: `ray get-auth-token --generate` on the head), and "
                             "that token must reach this machine and every worker machine (~/.ray/auth_token, "
                             "RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN); keep the cluster on a private network all the "
                             "same (Ray's traffic is not encrypted unless RAY_USE_TLS is set up)")


def add_search_width_flag(parser: argparse.ArgumentParser) -> None:
    """--search_width (analysis.py, with --workers)."""
    parser.add_argument("--search_width", type=int, default=1,
                        help="with --workers: prefix lengths the target search simulates per round (a k-ary search: "
                             "fewer rounds, more simulations); default 1: the binary search of a serial run, each "
                             "simulation split over the workers (faster on few workers)")


def parallel_options(args: argparse.Namespace):
    """ParallelOptions of the --workers flags (None without --workers); ConfigError on bad values."""
    if args.workers is None:
        if args.ray_address:
            raise ConfigError("--ray_address needs --workers N (the Ray workers to start on the cluster)")
        return None
    if args.workers < 1 or args.worker_threads < 1:
        raise ConfigError(f"--workers ({args.workers}) and --worker_threads ({args.worker_threads}) must be at least 1")
    from .ray_pool import ParallelOptions

    width = getattr(args, "search_width", 1)
    if width < 1:
        raise ConfigError(f"--search_width ({width}) must be at least 1")
    return ParallelOptions(workers=args.workers, address=args.ray_address, threads=args.worker_threads,
                           search_width=width)


def run(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run a script's main: a ConfigError becomes one line on stderr and exit code 2, an
    ExportError one line and exit code 1, a signal (SIGINT, SIGTERM, SIGHUP) one line and exit
    code 128 + its number, after the cleanups on the way out ran (whatever exception the
    interruption turned into on its way: a library that caught it may raise another)."""
    try:
        with signals_raise_interrupted():
            code = main(argv)
            check_interrupted()  # a signal whose exception a library swallowed (a finalizer's) still ends the run
            return code
    except BaseException as exc:
        ending = _ending(exc)
        if ending is None:
            raise
        message, code = ending
        if code > 128 and _bar_open():
            message = "\n" + message  # on a line of its own, not after the interrupted progress bar
        print(message, file=sys.stderr)
        if code > 128:  # stopping: the interpreter's last garbage collection over Paddle's objects
            gc.freeze()  # takes seconds on a loaded machine, and frees nothing the exit would not
        return code
    finally:
        forget_signal()


def _bar_open() -> bool:
    """True when a tqdm progress bar was left open (its line not ended)."""
    tqdm = sys.modules.get("tqdm.std")
    return bool(tqdm is not None and getattr(tqdm.tqdm, "_instances", None))


def _ending(exc: BaseException) -> tuple[str, int] | None:
    """(line, exit code) of an exception run() reports in one line; None: a bug, let it show."""
    if pending_signal() is not None:
        return f"interrupted by {signal.Signals(pending_signal()).name}", 128 + pending_signal()
    if isinstance(exc, Interrupted):
        return f"interrupted by {exc.name}", exc.exit_code
    if isinstance(exc, KeyboardInterrupt):  # raised by some library's own handler
        return "interrupted", 128 + signal.SIGINT
    if isinstance(exc, ConfigError):  # one line, even when the message quotes a library's multi-line text
        return "error: " + one_line(str(exc)), 2
    export = sys.modules.get("ptqdet.export")  # not imported: the error cannot be one of its
    if export is not None and isinstance(exc, export.ExportError):
        return "error: " + one_line(str(exc)), 1
    return None
