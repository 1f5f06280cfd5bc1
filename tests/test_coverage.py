"""Architecture coverage (ptqdet.coverage, docs/models.md): every architecture built from its
PaddleDetection config with random weights, exported, and run through every stage.

The stages run once per session, in two child processes of tools/coverage.py (one per core; each
takes the next architecture the other has not taken, the slowest first), writing their rows to
JSON files under pytest's tmp folder; exports are cached in outputs/coverage/models/ across
sessions (keyed by the configs' bytes). Each architecture's test then checks its row; the last
tests check the totals and that docs/results/models.json and docs/models.md say what the stages
found.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from ptqdet import coverage

pytestmark = pytest.mark.slow

ROOT = coverage.ROOT
INT8_RUNTIMES = ("onednn_int8", "openvino_int8", "onnxruntime_int8")
WORKERS = 2
# the architectures whose stages took longest (30-80 s each on the 2-core machine): started first
SLOWEST = ("yolox_nano", "gfl_r18", "yolov3_mbv3", "fcos_r18", "centernet_mbv3_small", "detr_r18", "pafnet_lite")


@pytest.fixture(scope="session")
def coverage_rows(tmp_path_factory) -> dict[str, dict]:
    """{arch: row} of this session's run of every architecture through every stage."""
    tmp = tmp_path_factory.mktemp("coverage")
    names = sorted((a.name for a in coverage.ARCHS), key=lambda n: n not in SLOWEST)  # the slowest first
    procs = []
    for i in range(WORKERS):
        results = tmp / f"part{i}.json"
        # every process gets every architecture and takes the next one no other has taken
        cmd = [sys.executable, str(ROOT / "tools" / "coverage.py"), "--archs", *names, "--claim_dir",
               str(tmp / "claims"), "--results", str(results), "--docs", str(tmp / f"part{i}.md")]
        log = open(tmp / f"part{i}.log", "w")  # noqa: SIM115 - closed below, after the process ends
        procs.append((subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT), results, log))
    rows = {}
    for proc, results, log in procs:
        code = proc.wait(timeout=900)
        log.close()
        assert code == 0, f"tools/coverage.py exited with {code}: see {log.name}"
        rows.update({r["arch"]: r for r in json.loads(results.read_text())})
    assert sorted(rows) == sorted(names)  # each architecture run by one process
    (tmp / "found.json").write_text(json.dumps(list(rows.values()), indent=1))
    return rows


def test_untie_scores_spreads_only_the_prediction_convolutions():
    """The coverage models' prediction convolutions (those with a bias) get larger, seeded random
    weights and biases; a convolution feeding a BatchNorm (no bias) is left as built."""
    import numpy as np
    import paddle

    with paddle.base.dygraph.guard():
        paddle.seed(0)
        model = paddle.nn.Sequential(paddle.nn.Conv2D(3, 4, 3, bias_attr=False), paddle.nn.BatchNorm2D(4),
                                     paddle.nn.Conv2D(4, 5, 1))
        before = [p.numpy().copy() for p in model.parameters()]
        assert coverage.untie_scores(model) == 1
        after = {id(p): p.numpy() for p in model.parameters()}
        backbone, head = model[0], model[2]
        np.testing.assert_array_equal(after[id(backbone.weight)], before[0])
        np.testing.assert_allclose(after[id(head.weight)], before[-2] * coverage.UNTIE_WEIGHT_SCALE, rtol=1e-6)
        shift = after[id(head.bias)] - before[-1]
        assert np.all(shift != 0) and np.abs(shift).max() < 5 * coverage.UNTIE_BIAS_STD


def test_untie_scores_leaves_the_backbone_as_built():
    """A biased convolution in the backbone (MobileNetV3's squeeze-excitation) is not a prediction."""
    import numpy as np
    import paddle

    with paddle.base.dygraph.guard():
        paddle.seed(0)
        model = paddle.nn.LayerDict({"backbone": paddle.nn.Conv2D(3, 4, 1), "head": paddle.nn.Conv2D(4, 5, 1)})
        before = model["backbone"].weight.numpy().copy(), model["backbone"].bias.numpy().copy()
        assert coverage.untie_scores(model) == 1
        np.testing.assert_array_equal(model["backbone"].weight.numpy(), before[0])
        np.testing.assert_array_equal(model["backbone"].bias.numpy(), before[1])


def test_claims_split_the_architectures(tmp_path):
    assert set(SLOWEST) <= set(coverage.ARCH_BY_NAME)
    taken = [[n for n in ("a", "b", "c") if coverage.claim(tmp_path / "claims", n)] for _ in range(2)]
    assert taken == [["a", "b", "c"], []]


def _one_line_error(value: str) -> bool:
    return bool(value) and "\n" not in value and "Traceback" not in value and len(value) <= 600


@pytest.mark.parametrize("name", [a.name for a in coverage.ARCHS])
def test_architecture(coverage_rows, name):
    """Each stage is ok (an INT8 runtime agreeing with the simulated INT8 model), or one line
    saying why not, or skipped because a stage it needs failed."""
    row = coverage_rows[name]
    assert list(row["stages"]) == list(coverage.STAGES)
    for stage, value in row["stages"].items():
        if value == "ok":
            if stage in INT8_RUNTIMES:
                agree = row["agreement"][stage]
                assert agree["ok"]
                if agree["by"] == "detections":
                    assert agree["boxes"] >= coverage.MIN_BOXES and agree["map"] >= coverage.MIN_AGREEMENT_MAP
                else:
                    assert agree["cosine"] >= coverage.MIN_COSINE
        elif value.startswith("skipped: needs "):
            assert row["stages"][coverage.NEEDS[stage]] != "ok"
        else:
            assert _one_line_error(value), f"{name} {stage}: {value!r}"
    if row["stages"]["ptq"] == "ok":
        assert 0 < row["quantized_layers"] <= row["quantizable_layers"]


def test_totals(coverage_rows):
    """At least 12 architectures, 10 of them through PTQ, simulated INT8 and OpenVINO INT8;
    a transformer detector among them."""
    assert len(coverage_rows) >= 12
    through = [n for n, r in coverage_rows.items() if coverage.passes(r, ("ptq", "int8_sim", "openvino_int8"))]
    assert len(through) >= 10, through
    assert len(coverage.distinct_models(through)) >= 10, through  # PicoDet with and without NMS: one model
    assert any(coverage.ARCH_BY_NAME[n].family == "transformer" for n in through)


def test_transformer_matmuls_int8_on_openvino(coverage_rows):
    """DETR quantized with matmul_v2: its linear layers are QDQ MatMuls in the ONNX export, and
    OpenVINO runs them as INT8 FullyConnected layers, agreeing with the simulated model."""
    row = coverage_rows["detr_r18_int8_matmul"]
    assert row["stages"]["openvino_int8"] == "ok", row["stages"]
    assert row["onnx_int8_nodes"].get("MatMul", 0) > 0
    assert row["openvino_int8_layers"].get("FullyConnected", 0) > 0


def _shape(value: str) -> str:
    """A stage's result without its measured numbers (an agreement's mAP may move in the last digits)."""
    return re.sub(r"\d+(\.\d+)?", "#", value)


def test_results_match_this_run(coverage_rows):
    """docs/results/models.json holds, per architecture, the stages this run found."""
    committed = {r["arch"]: r for r in json.loads((ROOT / coverage.RESULTS_JSON).read_text())}
    assert set(committed) == set(coverage_rows), "run tools/coverage.py to add or drop architectures"
    for name, row in coverage_rows.items():
        assert {s: _shape(v) for s, v in committed[name]["stages"].items()} == \
            {s: _shape(v) for s, v in row["stages"].items()}, f"{name}: run tools/coverage.py --archs {name}"


def test_models_md_is_generated():
    """docs/models.md is what `tools/coverage.py --write_docs` makes of docs/results/models.json."""
    rows = json.loads((ROOT / coverage.RESULTS_JSON).read_text())
    assert (ROOT / coverage.MODELS_MD).read_text() == coverage.render_markdown(rows)
