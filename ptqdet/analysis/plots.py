"""Pictures of the analysis: the sensitivity chart and activation/weight distribution box plots."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def outlier_stats(values: np.ndarray) -> dict[str, float]:
    """max|x| over the 99.99th percentile of |x|: large means a few outliers set the INT8 scale."""
    a = np.abs(values.astype(np.float64).ravel())
    if a.size == 0:
        return {"absmax": 0.0, "p9999": 0.0, "outlier_ratio": 0.0}
    p = float(np.percentile(a, 99.99))
    m = float(a.max())
    return {"absmax": m, "p9999": p, "outlier_ratio": m / p if p > 0 else float("inf") if m > 0 else 1.0}


def sensitivity_chart(scores: dict[str, float], path: Path, title: str, xlabel: str, top: int = 30,
                      proxy: dict[str, float] | None = None) -> list[Path]:
    plt = _plt()
    names = sorted(scores, key=scores.get, reverse=True)[:top]
    fig, ax = plt.subplots(figsize=(10, max(3.0, 0.28 * len(names) + 1)))
    y = np.arange(len(names))
    ax.barh(y, [100 * scores[n] for n in names], color="#c0392b", label="mAP damage")
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    if proxy:
        ax2 = ax.twiny()
        ax2.plot([proxy.get(n, np.nan) for n in names], y, "o", color="#2c3e50", ms=4, label="proxy (SQNR loss, dB)")
        ax2.set_xlabel("proxy: SQNR loss of head outputs (dB)")
        ax2.legend(loc="lower right", fontsize=8)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return _save(fig, path, plt)


def distribution_boxplot(samples: dict[str, np.ndarray], path: Path, title: str, highlight: set[str]) -> list[Path]:
    """One box per layer (program order), whiskers at the 0.01/99.99 percentiles, outliers dotted."""
    plt = _plt()
    names = list(samples)
    fig, ax = plt.subplots(figsize=(max(10, 0.16 * len(names)), 5))
    box = ax.boxplot([samples[n].ravel() for n in names], whis=(0.01, 99.99), sym=".", widths=0.6,
                     flierprops={"markersize": 1.5, "alpha": 0.4}, patch_artist=True)
    for patch, name in zip(box["boxes"], names):
        patch.set_facecolor("#e74c3c" if name in highlight else "#5dade2")
    ax.set_xticks(np.arange(1, len(names) + 1), names, rotation=90, fontsize=6)
    ax.set_title(title + "  (red: layers the analysis keeps in float)")
    ax.set_ylabel("value")
    fig.tight_layout()
    return _save(fig, path, plt)


def _save(fig, path: Path, plt) -> list[Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for suffix in (".png", ".pdf"):
        p = path.with_suffix(suffix)
        fig.savefig(p, dpi=110)
        out.append(p)
    plt.close(fig)
    return out
