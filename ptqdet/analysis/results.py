"""What an analysis is asked (AnalysisOptions) and what it answers (AnalysisResult, TargetResult)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .context import Counters
from .search import RANK_MODES

if TYPE_CHECKING:  # parallel.py is imported only with --workers
    from ..ray_pool import ParallelOptions


@dataclass
class AnalysisOptions:
    save_dir: Path
    device: str = "cpu"
    threads: int | None = None
    rank_modes: tuple[str, ...] = RANK_MODES
    proxy_batches: int = 0  # the SQNR proxy does not predict the mAP ranking (README): off unless asked
    max_drop: float | None = None  # alternative to target_metric: FP32 mAP - max_drop
    progress: bool = True
    parallel: ParallelOptions | None = None  # --workers: trials on Ray workers (parallel.py); None: in this process
    deploy_threads: int = 1  # threads of the deployment runtime's latency measurements (batch 1)
    latency_aware: bool = True  # choose float layers by mAP per ms on the deployment runtime (else by mAP only)


@dataclass
class Choice:
    """A set of float layers and what it gives on the deployment runtime."""

    num_float: int
    simulated_map: float | None  # trial model on the search images
    latency_ms: float | None = None  # median, batch 1, deployment runtime
    ratio: float | None = None  # latency / FP32 latency on the same runtime, same rounds


@dataclass
class TargetResult:
    """The model that keeps `skip` in float, searched on the search images to meet the target
    and verified on the held-out images (the same drop from FP32 on each image set)."""

    target: float  # mAP on EvalDataset (all images): FP32 mAP - allowed drop
    skip: list[str]  # the layers kept in float (weight names): the latency base, then a prefix of the order
    num_skipped: int
    simulated_map: float | None  # the trial model of the one calibration, search images (None: not evaluated)
    verified_map: float | None  # the real model (PTQ with that skip list), fake-quant on FP32 kernels, held-out
    met: bool  # verified_map >= heldout_target
    deployed_map: float  # the real model on the deployment runtime, held-out images
    deployed_runtime: str
    verifications: int
    search_evaluations: int  # full evaluations of the binary search and the verifications
    model_dir: str
    tried: dict[int, float] = field(default_factory=dict)  # binary search: prefix length -> simulated mAP
    search_rounds: int | None = None  # rounds of simulations (--workers k: k at once; serial: one each)
    search_target: float | None = None  # FP32 mAP on the search images - drop
    heldout_target: float | None = None  # FP32 mAP on the held-out images - drop
    search_map: float | None = None  # the real model on the search images (simulated)
    parity_flag: bool = False  # |deployed_map - verified_map| > PARITY_POINTS
    selection: str = "accuracy"  # latency (mAP per ms on the runtime) or accuracy (mAP damage only)
    latency_base: list[str] = field(default_factory=list)  # layers in float because they are faster in float
    latency: dict[str, float] = field(default_factory=dict)  # model -> median ms on the deployment runtime
    ratio: float | None = None  # target model / FP32 latency on the deployment runtime
    accuracy_only: Choice | None = None  # the shortest prefix of the mAP ranking, for comparison
    # the model returned: the fastest candidate (latency row) verified on the held-out images;
    # "INT8 target" is the searched model, "INT8 all layers" and "INT8 accuracy-only" the others
    chosen: str = "INT8 target"
    candidates: dict[str, dict[str, Any]] = field(default_factory=dict)  # row -> num_float, verified_map, met
    comparison_evaluations: int = 0  # full (search-image) evaluations spent on the accuracy-only choice

    def to_dict(self) -> dict[str, Any]:
        """ranking.json's "target" (same keys and order as the fields)."""
        return asdict(self)


@dataclass
class DeployInfo:
    """The deployment runtime of the analysis and what was measured on it before the search."""

    backend: str
    threads: int
    layer_costs: dict[str, dict[str, float]] = field(default_factory=dict)  # layer -> fp32_us, int8_us, cost_ms
    split: str = ""  # which images the search and the verification used (analysis.md)
    fp32_maps: dict[str, float] = field(default_factory=dict)  # FP32 mAP per image set (all, search, heldout)
    base: list[str] = field(default_factory=list)  # layers measured to make the model faster in float
    base_trials: list[dict[str, Any]] = field(default_factory=list)  # the candidates measured for it
    models: Any = None  # benchmark.ModelSet: FP32 and all-INT8 models in the runtime's form
    feed: dict[str, Any] = field(default_factory=dict)  # one image, batch 1, for latency


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
    deploy: DeployInfo | None = None
