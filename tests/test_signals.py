"""SIGTERM and SIGINT at several points of post_quant.py and analysis.py, beside a CPU-bound
neighbour: the script stops within 5 s, exits with 128 + the signal's number and one line
("interrupted by SIGTERM"), and leaves no temporary behind (atomic_dir's `.<save_dir>.tmp<pid>`,
the recovery step's `.<save_dir>.tmp<pid>.fp32`); save_dir is absent, or as it was. The
analysis keeps the cache it completed before the signal.

The point of each signal is found by watching the script's progress output (its bars on
stderr): "loading calibration images" (data and model loaded and checked), "calibrating"
(the one forward pass of ptqdet.calibration; the analysis writes its recovered FP32 model
to a temporary folder after it),
"Adding quant activation op" (quant ops inserted, the model about to be saved).
"""
from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import DEMO_CONFIGS, MODELS, ROOT, coco_slice

pytestmark = pytest.mark.slow

STOP_WITHIN_S = 5.0
START_TIMEOUT_S = 240  # until the point is reached, on a loaded machine


@pytest.fixture(scope="module")
def neighbour():
    """A CPU-bound process beside the script (the load the issue measured under)."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """8 calibration and 8 evaluation images of the demo dataset."""
    root = tmp_path_factory.mktemp("data")
    coco_slice("calib", root, 8)
    coco_slice("val", root, 8)
    return root


def _config(folder: Path, data: Path, base: str, extra: str = "") -> Path:
    path = folder / "cfg.yaml"
    datasets = "".join(f"{key}: !COCODataSet {{image_dir: {split}, anno_path: {split}.json, dataset_dir: {data}}}\n"
                       for key, split in (("TrainDataset", "calib"), ("EvalDataset", "val"),
                                          ("FastEvalDataset", "val")))
    path.write_text(f"_BASE_: ['{DEMO_CONFIGS / base}']\nmodel_dir: {MODELS / 'picodet_s_shapes'}\n{datasets}"
                    "PTQ:\n  batch_size: 2\n  batch_nums: 2\n" + extra)
    return path


class Output:
    """What a process writes to a pipe, collected by a thread (progress bars included)."""

    def __init__(self, stream):
        self.chunks: list[bytes] = []
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream) -> None:
        for chunk in iter(lambda: stream.read1(4096), b""):
            self.chunks.append(chunk)

    @property
    def text(self) -> str:
        return b"".join(self.chunks).decode(errors="replace")


def _snapshot(folder: Path) -> dict[str, str]:
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def _temporaries(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*") if ".tmp" in p.name)


def interrupt(argv: list[str], marker: str, signum: int) -> tuple[int, float, str]:
    """Run a script until `marker` appears in its stderr, send `signum`; (exit code, seconds
    from the signal to its end, its stderr)."""
    proc = subprocess.Popen([sys.executable, *map(str, argv)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    err = Output(proc.stderr)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while marker not in err.text:
            assert proc.poll() is None, f"ended before {marker!r}: {err.text[-2000:]}"
            assert time.monotonic() < deadline, f"{marker!r} not reached: {err.text[-2000:]}"
            time.sleep(0.05)
        sent = time.monotonic()
        proc.send_signal(signum)
        code = proc.wait(timeout=60)
        seconds = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err.thread.join(timeout=5)
    return code, seconds, err.text


def _check_ending(code: int, seconds: float, err: str, signum: int) -> None:
    name = signal.Signals(signum).name
    lines = [line.strip() for line in err.replace("\r", "\n").splitlines() if line.strip()]
    assert seconds < STOP_WITHIN_S, f"{name} took {seconds:.1f} s to stop the script"
    assert code == 128 + signum, err[-2000:]
    assert lines[-1] == f"interrupted by {name}", err[-2000:]
    assert sum("interrupted" in line for line in lines) == 1 and "Traceback" not in err, err[-2000:]
    print(f"{name}: stopped in {seconds:.2f} s")


POST_QUANT_POINTS = {"loading": "loading calibration images", "calibration": "calibrating",
                     "saving": "Adding quant activation op"}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("point", list(POST_QUANT_POINTS))
def test_post_quant_stops_cleanly(tmp_path, data, neighbour, point, signum):
    """save_dir absent before (SIGTERM) or an earlier output (SIGINT): absent, or unchanged, after."""
    save_dir = tmp_path / "out" / "int8"
    if signum == signal.SIGINT:  # an earlier output, which the interrupted run must leave as it was
        save_dir.mkdir(parents=True)
        for name in ("model.pdmodel", "model.pdiparams", "ptq_report.json"):
            (save_dir / name).write_text(f"earlier {name}")
    before = _snapshot(save_dir)
    cfg = _config(tmp_path, data, "picodet_s_ptq.yaml")  # equalize_depthwise: the recovered FP32 temporary
    code, seconds, err = interrupt(["post_quant.py", "--config_path", cfg, "--save_dir", save_dir],
                                   POST_QUANT_POINTS[point], signum)
    _check_ending(code, seconds, err, signum)
    assert _temporaries(tmp_path) == []
    beside = sorted(p.name for p in save_dir.parent.iterdir()) if save_dir.parent.exists() else []
    assert beside == (["int8"] if before else [])
    assert _snapshot(save_dir) == before


ANALYSIS_POINTS = {"reference": "eval FP32", "calibration": "calibrating", "ranking": "mAP (revert one)"}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("point", list(ANALYSIS_POINTS))
def test_analysis_stops_cleanly_and_keeps_its_cache(tmp_path, data, neighbour, point, signum):
    """Nothing but the work folder in save_dir (no report of a run that did not end); in it,
    what completed before the signal and nothing half-made."""
    marker = ANALYSIS_POINTS[point]
    save_dir = tmp_path / "ana"
    cfg = _config(tmp_path, data, "picodet_s_analysis.yaml", "plot_hist: False\nget_target_quant_model: False\n")
    code, seconds, err = interrupt(["analysis.py", "--config_path", cfg, "--save_dir", save_dir,
                                    "--rank_modes", "revert"], marker, signum)
    _check_ending(code, seconds, err, signum)
    assert _temporaries(tmp_path) == []
    assert (sorted(p.name for p in save_dir.iterdir()) if save_dir.exists() else []) in ([], [".work"])
    caches = list(save_dir.glob(".work/*/results.json"))
    if point == "reference":  # stopped in the first evaluation: nothing completed, nothing cached
        assert caches == []
        return
    assert len(caches) == 1  # the FP32 reference completed before the calibration
    cached = json.loads(caches[0].read_text())
    assert cached["reference"]["fp32_full"] > 0
    work = caches[0].parent
    if point == "calibration":  # it did not complete: neither its INT8 model nor the recovered FP32 one is kept
        assert sorted(p.name for p in work.iterdir()) == ["results.json"]
        return
    # stopped in the ranking: the calibration's two models kept whole, the finished trials cached
    for folder in ("calibrated", "recovered_fp32"):
        assert {"model.pdmodel", "model.pdiparams"} <= {p.name for p in (work / folder).iterdir()}, folder
    assert isinstance(cached.get("metric_revert", {}), dict)
    assert not [p for p in work.rglob("*") if ".tmp" in p.name]


class _SignalsItselfWhenCollected:
    """Its finalizer runs ptqdet's SIGTERM handler, as a SIGTERM arriving there does (no real
    signal: a test must not risk its own worker): Interrupted is raised inside __del__, which
    Python reports to sys.unraisablehook and goes on (as it did in tqdm's finalizer while
    post_quant.py saved its model)."""

    finished = False

    def __del__(self):
        from ptqdet.signals import _on_signal

        _on_signal(signal.SIGTERM, None)
        type(self).finished = True  # not reached: Interrupted ended the finalizer


@pytest.mark.parametrize("writer", ["atomic_dir", "atomic_write_text", "none"])
def test_a_signal_a_finalizer_swallowed_still_stops_the_commit_and_the_run(tmp_path, capfd, monkeypatch, writer):
    """The signal stays pending: the next output folder to be put in place (atomic_dir, as
    post_quant.py's save_dir) raises it and leaves nothing behind; a file written atomically after
    it (a resumable cache) is still written; either way the script ends with 128 + the signal's
    number and its one line (no "Exception ignored" traceback from the finalizer)."""
    from ptqdet import cli
    from ptqdet.paddle_static import atomic_dir
    from ptqdet.report import atomic_write_text

    out = tmp_path / "out"
    monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)  # Python's own: prints the traceback

    def main(argv):
        _SignalsItselfWhenCollected()  # collected at once: the signal arrives inside its __del__
        if writer == "atomic_dir":
            with atomic_dir(out) as tmp:
                (tmp / "model.pdmodel").write_text("model")
        elif writer == "atomic_write_text":
            atomic_write_text(out, "report")
        return 0

    _SignalsItselfWhenCollected.finished = False
    assert cli.run(main, []) == 128 + signal.SIGTERM
    assert not _SignalsItselfWhenCollected.finished  # the signal's exception did end the finalizer
    assert capfd.readouterr().err == "interrupted by SIGTERM\n"
    assert sys.unraisablehook is sys.__unraisablehook__  # restored after the run
    # no output folder, no temporary; a cache file is kept
    assert sorted(p.name for p in tmp_path.iterdir()) == (["out"] if writer == "atomic_write_text" else [])
