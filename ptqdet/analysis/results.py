"""What an analysis is asked (AnalysisOptions) and what it answers (AnalysisResult, TargetResult)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .context import Counters
from .search import RANK_MODES

if TYPE_CHECKING:  # parallel.py is imported only with --workers
    from .parallel import ParallelOptions


@dataclass
class AnalysisOptions:
    save_dir: Path
    device: str = "cpu"
    threads: int | None = None
    rank_modes: tuple[str, ...] = RANK_MODES
    proxy_batches: int = 2
    max_drop: float | None = None  # alternative to target_metric: FP32 mAP - max_drop
    progress: bool = True
    parallel: ParallelOptions | None = None  # --workers: trials on Ray workers (parallel.py); None: in this process


@dataclass
class TargetResult:
    """The model that keeps the first `num_skipped` layers of the ranking in float, searched
    to meet `target` (mAP on EvalDataset) and verified."""

    target: float
    skip: list[str]  # the layers kept in float (weight names), a prefix of the ranking
    num_skipped: int
    simulated_map: float | None  # the trial model of the one calibration (None: not evaluated at num_skipped)
    verified_map: float | None  # the real model (PTQ with that skip list), fake-quant graph on FP32 kernels
    met: bool  # verified_map >= target
    deployed_map: float  # the real model on the runtime that deploys it
    deployed_runtime: str
    verifications: int
    search_evaluations: int  # full evaluations of the binary search and the verifications
    model_dir: str
    tried: dict[int, float] = field(default_factory=dict)  # binary search: layers in float -> simulated mAP
    search_rounds: int | None = None  # rounds of simulations (--workers k: k at once; serial: one each)

    def to_dict(self) -> dict[str, Any]:
        """ranking.json's "target" (same keys and order as the fields)."""
        return asdict(self)


@dataclass
class AnalysisResult:
    fp32_map: float
    int8_map: float
    ranking: list[str]
    metric_scores: dict[str, dict[str, float]]
    proxy_scores: dict[str, dict[str, float]]
    spearman: dict[str, float]
    counters: Counters
    target: TargetResult | None = None
    files: dict[str, str] = field(default_factory=dict)
    op_types: dict[str, str] = field(default_factory=dict)  # layer (weight name) -> conv2d, matmul_v2, ...
