"""The README and docs: a short front door, no dated narratives, every reference real, and the
measured tables generated into docs/results/ (ptqdet.report). Fast: no model runs."""
from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

README = ROOT / "README.md"
RESULTS = ROOT / "docs" / "results"
DOCS = sorted(p for p in (ROOT / "docs").rglob("*.md") if RESULTS not in p.parents)
PAGES = [README, *DOCS]
MAX_README_LINES = 150
DATE = re.compile(r"20\d\d-\d\d-\d\d")

# named in the docs, but PaddleDetection's files (its export and deploy client), not this repository's
EXTERNAL_PATHS = {"tools/export_model.py", "deploy/python/infer.py", "configs/ppyoloe/ppyoloe_crn_s_300e_coco.yml",
                  "configs/picodet/picodet_s_416_coco_lcnet.yml"}
# flags of other programs the docs show: pip, PaddleDetection's export and client, `ray start`
EXTERNAL_FLAGS = {"--no-deps", "--output_dir", "--enable_mkldnn", "--head", "--port", "--address", "--num-cpus",
                  "--object-store-memory"}
SCRIPTS = ("post_quant.py", "eval.py", "analysis.py", "export_onnx.py")
MODULES = ("ptqdet.annotations", "ptqdet.fetch", "ptqdet.demo.shapes")


def repo_files() -> set[str]:
    """Every file of the working tree, relative to ROOT, without venvs, data and outputs."""
    skip = {".git", ".venv", ".venv-nncf", "outputs", "dataset", "__pycache__", ".pytest_cache", ".ruff_cache"}
    found = set()
    for top, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in skip]
        found.update(str((Path(top) / f).relative_to(ROOT)) for f in files)
    return found


def code_spans(text: str) -> list[str]:
    """Fenced code blocks and inline code of a Markdown page."""
    blocks = re.findall(r"```[^\n]*\n(.*?)```", text, flags=re.S)
    inline = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    return blocks + inline


def test_readme_is_a_short_front_door():
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines (at most {MAX_README_LINES})"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_measurement_dates_outside_docs_results(page):
    dated = [f"{i}: {line.strip()}" for i, line in enumerate(page.read_text().splitlines(), 1) if DATE.search(line)]
    assert not dated, f"{page.relative_to(ROOT)}: dates belong in docs/results/ headers:\n" + "\n".join(dated)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_named_file_exists(page):
    files, text = repo_files(), page.read_text()
    basenames = {Path(f).name for f in files}
    missing = []
    # a path written with a placeholder (<name>_analyzed_ptq.yaml, *_ptq_deploy.yaml) is not checked
    for path in set(re.findall(r"(?<![\w./<>*{}-])([\w./-]*\w\.(?:py|ya?ml))\b", text)):
        if path in EXTERNAL_PATHS or path.startswith(("outputs/", "analysis_results/")) or "my_model" in path:
            continue
        if ("/" in path and path not in files) or ("/" not in path and path not in basenames):
            missing.append(path)
    for path in set(re.findall(r"(?<![\w./-])(docs/[\w./-]*\w)", text)):
        if not (ROOT / path).exists():
            missing.append(path)
    assert not missing, f"{page.relative_to(ROOT)} names files that do not exist: {sorted(missing)}"


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", heading.strip().lower()))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves(page):
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md":
            headings = re.findall(r"(?m)^#+ (.+)$", resolved.read_text())
            if anchor not in {slug(h) for h in headings}:
                broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)}: broken links {broken}"


def make_targets() -> set[str]:
    return set(re.findall(r"(?m)^([a-z][\w-]*):", (ROOT / "Makefile").read_text()))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_make_target_exists(page):
    named = set()
    for span in code_spans(page.read_text()):
        for targets in re.findall(r"\bmake\s+(?:[A-Z_]+=\S*\s+)*([a-z][\w-]*(?:[ \t]+[a-z][\w-]*)*)", span):
            named.update(targets.split())
    assert named - make_targets() == set(), f"{page.relative_to(ROOT)}: no such make target"


def scripts_in(line: str) -> list[str]:
    """The scripts of this repository a line names (top-level, tools/, python -m ptqdet.*)."""
    found = [s for s in SCRIPTS if re.search(rf"(?<![\w/]){re.escape(s)}", line)]
    found += [f"tools/{name}" for name in re.findall(r"(?<![\w])(?:tools/)?(\w+\.py)", line)
              if (ROOT / "tools" / name).is_file()]
    found += [m for m in MODULES if re.search(rf"-m {re.escape(m)}\b", line)]
    return found


@functools.cache
def help_flags(script: str) -> frozenset[str]:
    """The flags a script's --help lists."""
    cmd = [sys.executable, "-m", script] if script in MODULES else [sys.executable, str(ROOT / script)]
    r = subprocess.run([*cmd, "--help"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, f"{script} --help failed: {r.stderr[-500:]}"
    return frozenset(re.findall(r"(?<![\w-])--[a-z][\w-]*", r.stdout))


def all_scripts() -> list[str]:
    tools = [f"tools/{p.name}" for p in sorted((ROOT / "tools").glob("*.py"))]
    return [*SCRIPTS, *tools, *MODULES]


def flag_uses(page: Path) -> list[tuple[int, tuple[str, ...], str]]:
    """(line number, scripts named on the line or, in a code block, by the command it continues,
    flag) for every --flag of the page."""
    uses, in_block, block_scripts = [], False, []
    for i, line in enumerate(page.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            in_block, block_scripts = not in_block, []
            continue
        named = scripts_in(line)
        if in_block:
            block_scripts = named or block_scripts
            named = block_scripts
        uses += [(i, tuple(named), flag) for flag in re.findall(r"(?<![\w-])--[a-z][\w-]*", line)]
    return uses


def unknown_flags(page: Path) -> list[tuple[int, tuple[str, ...], str]]:
    every = frozenset().union(*(help_flags(s) for s in all_scripts()))
    bad = []
    for i, named, flag in flag_uses(page):
        known = frozenset().union(*(help_flags(s) for s in named)) if named else every
        if flag not in known and flag not in EXTERNAL_FLAGS:
            bad.append((i, named, flag))
    return bad


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_flag_exists_in_the_script_named_with_it(page):
    bad = unknown_flags(page)
    assert not bad, f"{page.relative_to(ROOT)}: flags no named script has (line, scripts, flag): {bad}"


def readme_block(name: str) -> str:
    match = re.search(rf"<!-- results:{name} -->\n(.*?)<!-- /results:{name} -->", README.read_text(), flags=re.S)
    assert match, f"README.md has no results:{name} block"
    return match.group(1).strip()


def first_table(text: str) -> str:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return "\n".join(lines[start:end])


def test_readme_demo_table_is_the_one_in_docs_results():
    assert readme_block("demo") == first_table((RESULTS / "demo.md").read_text())


@pytest.mark.parametrize("result", sorted(RESULTS.glob("*.md")), ids=lambda p: p.name)
def test_every_results_file_says_when_where_and_how(result):
    text = result.read_text()
    assert text.startswith("# ")
    for field in ("- date:", "- CPU:", "- command:", "- machine idle:"):
        assert f"\n{field}" in text, f"{result.name}: no {field!r} line in its header"


# ---- ptqdet.report: results_header, write_results, update_readme_block

MACHINE = {"date": "x", "cpu": "AMD EPYC (family 25, model 17)", "cores": 2,
           "cpu_features": ["avx512_vnni", "avx512_bf16"], "python": "3.11", "paddle": "2.6.2"}


@pytest.fixture
def machine(monkeypatch):
    from ptqdet import report

    monkeypatch.setattr(report, "machine_info", lambda: dict(MACHINE))
    return report


def test_results_header_says_when_where_how_and_whether_idle(machine, monkeypatch):
    text = machine.results_header("make demo", idle=True)
    lines = text.splitlines()
    assert re.fullmatch(r"- date: 20\d\d-\d\d-\d\d \d\d:\d\d UTC", lines[0])
    assert lines[1] == "- CPU: AMD EPYC (family 25, model 17) (avx512_vnni yes, avx512_bf16 yes, amx no), 2 cores"
    assert lines[2] == "- command: `make demo`" and lines[3] == "- machine idle: yes"
    assert "Paddle 2.6.2" in lines[4]
    assert "- machine idle: no" in machine.results_header("c", idle=False)
    cores = os.cpu_count() or 1
    monkeypatch.setattr(os, "getloadavg", lambda: (0.29 * cores, 0.0, 0.0))
    assert "- machine idle: yes" in machine.results_header("c", idle=None)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.31 * cores, 0.0, 0.0))
    assert "- machine idle: no" in machine.results_header("c", idle=None)

    def unreadable():
        raise OSError

    monkeypatch.setattr(os, "getloadavg", unreadable)
    assert "- machine idle: unknown" in machine.results_header("c", idle=None)


def test_write_results_puts_the_header_above_the_body(machine, monkeypatch, tmp_path):
    monkeypatch.setattr(machine, "RESULTS_DIR", tmp_path / "results")
    path = machine.write_results("demo", "Demo", "| a |\n|---|\n| 1 |\n", "make demo", idle=False)
    assert path == tmp_path / "results" / "demo.md"
    text = path.read_text()
    assert text.startswith("# Demo\n\n- date: ")
    assert "- command: `make demo`\n" in text and "- machine idle: no\n" in text
    assert text.endswith("\n\n| a |\n|---|\n| 1 |\n")
    assert [p.name for p in path.parent.iterdir()] == ["demo.md"]  # no temporary file left


def test_update_readme_block_replaces_only_its_block(tmp_path):
    from ptqdet.report import update_readme_block

    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:demo -->\nold\ntable\n<!-- /results:demo -->\n"
                      "<!-- results:other -->\nkeep\n<!-- /results:other -->\nend\n")
    update_readme_block(readme, "demo", "| new |\n")
    assert readme.read_text() == ("intro\n<!-- results:demo -->\n| new |\n<!-- /results:demo -->\n"
                                  "<!-- results:other -->\nkeep\n<!-- /results:other -->\nend\n")
    with pytest.raises(ValueError, match="results:missing"):
        update_readme_block(readme, "missing", "x")
    assert [p.name for p in tmp_path.iterdir()] == ["README.md"]


# ---- configs/template_ptq.yaml

def test_template_config_loads_once_pointed_at_the_demo(tmp_path):
    from ptqdet.config import load_config

    text = (ROOT / "configs" / "template_ptq.yaml").read_text()
    for pattern, value in ((r"(?m)^model_dir:.*$", "model_dir: demo/models/picodet_s_shapes"),
                           (r"(?m)^num_classes:.*$", "num_classes: 6"),
                           (r"(?m)^(\s+dataset_dir:).*$", r"\1 dataset/shapes"),
                           (r"(?m)^(\s+image_dir:) train2017.*$", r"\1 calib"),
                           (r"(?m)^(\s+anno_path:) annotations/instances_train2017\.json.*$",
                            r"\1 annotations/instances_calib.json"),
                           (r"(?m)^(\s+image_dir:) val2017.*$", r"\1 val"),
                           (r"(?m)^(\s+anno_path:) annotations/instances_val2017\.json.*$",
                            r"\1 annotations/instances_val.json")):
        text, count = re.subn(pattern, value, text)
        assert count >= 1, f"the template has no line matching {pattern}"
    path = tmp_path / "my_model_ptq.yaml"
    path.write_text(text)
    cfg = load_config(path)
    assert (cfg.model_dir / cfg.model_filename).is_file()
    assert cfg.ptq.onnx_format and cfg.ptq.equalize_depthwise
    for key in ("TrainDataset", "EvalDataset"):
        dataset = cfg.ppdet[key]
        assert (ROOT / dataset.dataset_dir / dataset.anno_path).is_file(), key
