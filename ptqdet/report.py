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
