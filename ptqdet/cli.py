"""What the three scripts share: flags, quiet logging, and one clear error line on bad input."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from .config import ConfigError
from .stdout import quiet_libraries  # noqa: F401 - the scripts call cli.quiet_libraries


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config_path", required=True,
                        help="ptqdet YAML config (model_dir, datasets, EvalReader, PTQ section; see README)")
    parser.add_argument("--devices", choices=("cpu", "gpu"), default="cpu",
                        help="where to run: cpu (default) or gpu (needs paddlepaddle-gpu)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for inference (default: all cores, at most 4; env PTQDET_THREADS)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


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
                             "a local Ray instance; needs --workers")


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


def one_line(text: str) -> str:
    """A message on one line, even when it quotes a library's multi-line text."""
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def run(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run a script's main: a ConfigError (a user's mistake: a path, a key, a model a runtime
    cannot run) becomes one line on stderr and exit code 2, an ExportError (paddle2onnx failed
    on the model) one line and exit code 1."""
    try:
        return main(argv)
    except ConfigError as exc:
        print("error: " + one_line(str(exc)), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        export = sys.modules.get("ptqdet.export")  # not imported: the error cannot be one of its
        if export is None or not isinstance(exc, export.ExportError):
            raise
        print("error: " + one_line(str(exc)), file=sys.stderr)
        return 1
