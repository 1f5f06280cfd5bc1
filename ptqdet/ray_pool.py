"""Ray plumbing shared by every --workers run (analysis.py and the PTQ recipe search): the
options of the flags, the connection (a local instance, or a cluster at --ray_address), each
worker's thread budget, a task beside the driver, and model files shipped as bytes.

Ray is imported inside the functions, only with --workers.
"""
from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .files import ModelFiles


@dataclass(frozen=True)
class ParallelOptions:
    """--workers, --worker_threads, --ray_address."""

    workers: int
    address: str | None = None  # None: a local Ray instance for this run
    threads: int = 1  # OMP/MKL threads per worker
    # prefix lengths the target search simulates per round (k-ary search); each simulation is split
    # over workers // width workers. 1 (default): the serial run's binary search, each simulation on
    # all the workers at once: on few workers, more rounds of part of a simulation beat fewer
    # rounds of whole ones, and cost less CPU (docs/results/parallel.md)
    search_width: int = 1
    object_store_mb: int = 500  # local instance only


def thread_env(threads: int) -> dict[str, str]:
    """A worker's environment: its thread budget, and Paddle's logging as analysis.py sets it."""
    env = {name: str(threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                           "PTQDET_THREADS")}
    return {**env, "GLOG_minloglevel": "2", "FLAGS_call_stack_level": "1"}


def connect(opts: ParallelOptions, quiet: bool) -> Any:
    """The ray module, initialized: the running instance (a test's), the cluster at opts.address,
    or a local instance (opts.workers x opts.threads CPUs, small object store, no dashboard,
    token authentication on: warn_if_unauthenticated)."""
    import ray

    if ray.is_initialized():
        return ray
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray runs its workers at nice 15 by default: on a machine shared with other work they would
    # get the CPU last, and the comparison with a serial run (nice 0) would be unfair
    os.environ.setdefault("RAY_worker_niceness", "0")
    common = dict(logging_level=logging.ERROR if quiet else logging.WARNING, log_to_driver=not quiet)
    if opts.address:
        package = Path(__file__).resolve().parents[1]
        ray.init(address=opts.address, runtime_env={"py_modules": [str(package)]}, **common)
    else:
        ray.init(num_cpus=opts.workers * opts.threads, object_store_memory=opts.object_store_mb * 2**20,
                 include_dashboard=False, **common)
        warn_if_unauthenticated()
    from .signals import install_signal_handlers

    install_signal_handlers()  # ray.init's SIGTERM handler calls sys.exit(15): the scripts' ending instead
    return ray


def warn_if_unauthenticated() -> bool:
    """The local instance's GCS server and raylet listen on every network interface (Ray 2.60
    offers no switch to bind them to localhost; tests/test_ray_auth.py shows both): what keeps
    other machines out is Ray's token authentication, on by default for a local instance since
    Ray 2.5x (the token in ~/.ray/auth_token, made at the first start). ptqdet never turns it
    off; when the environment does (RAY_AUTH_MODE=disabled), one warning line says what that
    opens. Returns whether token authentication is on."""
    try:
        from ray._private.authentication.authentication_utils import is_token_auth_enabled
    except ImportError:  # a Ray without token authentication
        return False
    enabled = is_token_auth_enabled()
    if not enabled:
        print("warning: token authentication of the local Ray instance is off (RAY_AUTH_MODE=disabled) and it "
              "listens on every network interface: anyone who can reach this machine can run code in it; unset "
              "RAY_AUTH_MODE", file=sys.stderr)
    return enabled


def start_beside(opts: ParallelOptions, progress: bool, fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args) as a Ray task in a process of its own on the driver's machine (its files are
    the driver's), taking no worker's CPU slot: the driver's own single-core work (a PTQ and
    its exports) run while the driver calibrates and the workers rank. Returns its object ref
    (ray.get: the result, or the task's error)."""
    ray = connect(opts, quiet=not progress)
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    task = ray.remote(fn).options(num_cpus=0, max_retries=0, scheduling_strategy=here,
                                  runtime_env={"env_vars": thread_env(1)})
    return task.remote(*args)


def model_bytes(files: ModelFiles) -> dict[str, bytes]:
    return {files.model_filename: files.model_path.read_bytes(), files.params_filename: files.params_path.read_bytes()}


def write_model(folder: Path, shipped: dict[str, bytes]) -> ModelFiles:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in shipped.items():
        (folder / name).write_bytes(data)
    model, params = (n for n in shipped)
    return ModelFiles(folder, model, params)
