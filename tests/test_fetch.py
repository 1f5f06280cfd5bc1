"""ptqdet.fetch: checksums and extraction on a small fake wheel (no network), and the shared copy."""
from __future__ import annotations

import hashlib
import subprocess
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT
from ptqdet import fetch as fetch_mod
from ptqdet.fetch import FetchError, ModelSource, fetch, is_present

SHARED_MODEL = ROOT.parent / "shared" / "models" / "picodet_s_416_coco_lcnet"
MEMBER_DIR = "fake_pkg/model/PicoDet/ckpt/"
CONTENTS = {"model.pdmodel": b"graph", "model.pdiparams": b"\x00weights" * 100,
            "model.pdiparams.info": b"info", "infer_cfg.yml": b"arch: GFL\n"}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _wheel(tmp_path: Path, contents: dict[str, bytes] = CONTENTS) -> Path:
    path = tmp_path / "fake_pkg-1.0.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("fake_pkg/__init__.py", "")
        for name, data in contents.items():
            zf.writestr(MEMBER_DIR + name, data)
    return path


def _source(wheel: Path, files: dict[str, str] | None = None) -> ModelSource:
    return ModelSource(requirement="fake-pkg==1.0.0", wheel_sha256=fetch_mod.sha256_of(wheel), member_dir=MEMBER_DIR,
                       files=files or {name: _sha(data) for name, data in CONTENTS.items()})


@pytest.fixture
def no_download(monkeypatch):
    """Any attempt to download fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("download attempted")
    monkeypatch.setattr(fetch_mod, "download_wheel", refuse)


def test_extracts_checked_files_then_skips_when_present(tmp_path, no_download):
    wheel = _wheel(tmp_path)
    source = _source(wheel)
    out = tmp_path / "model"
    assert fetch(out, source, wheel=wheel) is True
    assert sorted(p.name for p in out.iterdir()) == sorted(CONTENTS)
    assert all((out / name).read_bytes() == data for name, data in CONTENTS.items())
    assert fetch(out, source) is False  # already there: no download (no_download would raise)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left


def test_incomplete_folder_is_replaced(tmp_path, no_download):
    wheel = _wheel(tmp_path)
    source = _source(wheel)
    out = tmp_path / "model"
    out.mkdir()
    (out / "model.pdmodel").write_bytes(b"truncated")
    assert not is_present(out, source)
    assert fetch(out, source, wheel=wheel) is True
    assert is_present(out, source)


def test_bad_wheel_checksum_writes_nothing(tmp_path):
    wheel = _wheel(tmp_path)
    source = ModelSource("fake-pkg==1.0.0", "0" * 64, MEMBER_DIR, _source(wheel).files)
    out = tmp_path / "model"
    with pytest.raises(FetchError, match="sha256 .* is not the expected 0000"):
        fetch(out, source, wheel=wheel)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [wheel.name]


def test_bad_file_checksum_names_the_file_and_writes_nothing(tmp_path):
    wheel = _wheel(tmp_path)
    files = {name: _sha(data) for name, data in CONTENTS.items()}
    files["model.pdiparams"] = "f" * 64
    out = tmp_path / "model"
    with pytest.raises(FetchError, match="mismatch for model.pdiparams$"):
        fetch(out, _source(wheel, files), wheel=wheel)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [wheel.name]


def test_missing_member_is_named(tmp_path):
    contents = {k: v for k, v in CONTENTS.items() if k != "infer_cfg.yml"}
    wheel = _wheel(tmp_path, contents)
    with pytest.raises(FetchError, match=f"no {MEMBER_DIR}infer_cfg.yml inside"):
        fetch(tmp_path / "model", _source(wheel), wheel=wheel)


def test_failed_download_is_one_clear_error(tmp_path, monkeypatch):
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "",
                                           "ERROR: Could not find a version\nERROR: No matching distribution")

    monkeypatch.setattr(fetch_mod.subprocess, "run", fake_run)
    with pytest.raises(FetchError, match=r"pip download fake-pkg==1.0.0 failed \(exit 1\): ERROR: No matching"):
        fetch(tmp_path / "model", _source(_wheel(tmp_path)))
    assert calls and calls[0][1:4] == ["-m", "pip", "download"] and "--no-deps" in calls[0]
    assert not (tmp_path / "model").exists()


def test_cli_bad_checksum_exits_2_with_one_line(tmp_path, capsys):
    # the fake wheel is not paddlelabel-ml's: its sha256 differs from the hard-coded one
    code = fetch_mod.main(["--out", str(tmp_path / "model"), "--wheel", str(_wheel(tmp_path))])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "sha256" in err
    assert not (tmp_path / "model").exists()


@pytest.mark.slow
def test_shared_copy_is_accepted_as_present(no_download, capsys):
    if not SHARED_MODEL.is_dir():
        pytest.skip(f"{SHARED_MODEL} not found")
    assert fetch_mod.main(["--out", str(SHARED_MODEL)]) == 0
    assert "already present" in capsys.readouterr().out
