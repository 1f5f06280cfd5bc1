"""Result tables (terminal and Markdown) and JSON reports, written atomically."""
from __future__ import annotations

import json
import os
import platform
import tempfile
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def atomic_write_text(path: Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "__dataclass_fields__"):
        from dataclasses import asdict
        return asdict(obj)
    raise TypeError(f"not JSON serializable: {type(obj)}")


def write_json(path: Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, default=_default) + "\n")


def machine_info() -> dict[str, Any]:
    import paddle

    try:
        cpu = cpu_name(Path("/proc/cpuinfo").read_text())
    except OSError:
        cpu = ""
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "cpu": cpu or platform.processor() or
            platform.machine(), "cores": os.cpu_count(),
            "cpu_features": cpu_features(), "python": platform.python_version(), "paddle": paddle.__version__}


def cpu_name(cpuinfo: str) -> str:
    """The first CPU's model name with its family and model numbers: a VM may name only the
    vendor line ("AMD EPYC"), and the numbers still tell the generation (family 25, model 17:
    Zen 4), which decides what INT8 costs. Empty when /proc/cpuinfo has no model name."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            break  # the first processor only
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name", "")
    if name and "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


# CPU flags that decide what INT8 and bf16 cost (x86): VNNI int8 dot products, native bf16, AMX tiles
CPU_FEATURES = ("avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")


def cpu_features() -> list[str]:
    """Which of CPU_FEATURES this CPU has (from /proc/cpuinfo; empty where it cannot be read)."""
    try:
        flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("flags")), [])
    except OSError:
        return []
    return [f for f in CPU_FEATURES if f in flags]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        # mAP points and milliseconds get one decimal; small values (ratios, mAP 0-1) three
        return f"{value:.1f}" if abs(value) >= 1 else f"{value:.3f}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(list(headers)), sep, *(line(r) for r in cells)])


def mAP_points(value: float | None) -> float | None:
    """mAP 0-1 as the percentage points tables use (32.5)."""
    return None if value is None else round(100.0 * value, 1)


# docs/results/: the tables benchmark commands write (write_results), each under a header saying
# when, where and how it was measured; README blocks between <!-- results:<name> --> markers are
# copied from them (update_readme_block)
RESULTS_DIR = Path(__file__).resolve().parents[1] / "docs" / "results"
IDLE_LOAD_PER_CORE = 0.3  # 1-minute load average per core under which the machine counts as idle


def machine_idle() -> bool | None:
    """Whether the machine is idle now: 1-minute load average under IDLE_LOAD_PER_CORE per core
    (None where the load average cannot be read). Benchmarks call it before they start, since
    their own work raises the load."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return None
    return load < IDLE_LOAD_PER_CORE * (os.cpu_count() or 1)


def _package_version(*names: str) -> str | None:
    from importlib import metadata

    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def results_header(command: str, idle: bool | None) -> str:
    """Markdown lines saying when, where and how a result was measured: UTC date and time, the
    CPU (name, family/model, the INT8/bf16 features that decide its speed), cores, the exact
    command, whether the machine was idle (None: judged from the load average now) and the
    OpenVINO and Paddle versions installed."""
    try:
        machine = machine_info()
    except ImportError:  # no paddle: the CPU part still holds
        machine = {"cpu": cpu_name(Path("/proc/cpuinfo").read_text()) if Path("/proc/cpuinfo").is_file() else "",
                   "cores": os.cpu_count(), "cpu_features": cpu_features()}
    features = set(machine.get("cpu_features") or [])
    flags = ", ".join(f"{name} {'yes' if any(f.startswith(name) for f in features) else 'no'}"
                      for name in ("avx512_vnni", "avx512_bf16", "amx"))
    if idle is None:
        idle = machine_idle()
    versions = [f"{name} {v}" for name, v in (("OpenVINO", _package_version("openvino")),
                                              ("Paddle", machine.get("paddle") or _package_version(
                                                  "paddlepaddle", "paddlepaddle-gpu"))) if v]
    lines = [f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M')} UTC",
             f"- CPU: {machine.get('cpu') or 'unknown'} ({flags}), {machine.get('cores')} cores",
             f"- command: `{command}`",
             f"- machine idle: {'unknown' if idle is None else 'yes' if idle else 'no'}"]
    if versions:
        lines.append(f"- {', '.join(versions)}")
    return "\n".join(lines) + "\n"


def write_results(name: str, title: str, body_markdown: str, command: str, idle: bool | None = None) -> Path:
    """docs/results/<name>.md, atomically: the title, results_header(command, idle), then the body
    (the table and its notes). Returns the path."""
    text = f"# {title}\n\n{results_header(command, idle)}\n{body_markdown.strip()}\n"
    return atomic_write_text(RESULTS_DIR / f"{name}.md", text)


def update_readme_block(readme: Path, block: str, text: str) -> Path:
    """Replace what stands between `<!-- results:<block> -->` and `<!-- /results:<block> -->` in
    `readme` with `text`, atomically. Raises ValueError when the markers are missing."""
    readme = Path(readme)
    content = readme.read_text()
    start, end = f"<!-- results:{block} -->", f"<!-- /results:{block} -->"
    i = content.find(start)
    j = content.find(end, i + len(start)) if i >= 0 else -1
    if i < 0 or j < 0:
        raise ValueError(f"{readme}: no {start} ... {end} block")
    return atomic_write_text(readme, content[:i + len(start)] + "\n" + text.strip() + "\n" + content[j:])
