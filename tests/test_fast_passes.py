"""ptqdet.paddle_static.fast_ir_graph: PTQ's graph passes without their quadratic checks write
a model that computes exactly what the unpatched passes' model computes."""
import contextlib
import dataclasses

import numpy as np
import pytest

from conftest import DEMO_CONFIGS
from ptqdet.config import load_config

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("onnx_format", [True, False])
def test_fast_ir_graph_ptq_computes_what_paddles_passes_compute(tmp_path, monkeypatch, onnx_format):
    from ptqdet import quantize as quantize_module
    from ptqdet.backends import open_backend
    from ptqdet.data import build_source, feed_from_batch
    from ptqdet.model import BackendOptions
    from ptqdet.paddle_static import fast_ir_graph

    cfg = load_config(DEMO_CONFIGS / "picodet_s_ptq.yaml")
    ptq = dataclasses.replace(cfg.ptq, batch_size=2, batch_nums=1, equalize_depthwise=False, onnx_format=onnx_format)
    cfg = dataclasses.replace(cfg, ptq=ptq)
    assert quantize_module.fast_ir_graph is fast_ir_graph  # what PTQ runs under
    import paddle

    stale = paddle.static.global_scope().var("conv2d_0.w_0")  # a variable of the same name, as an earlier
    stale.get_tensor()  # model in this process leaves behind: PTQ calibrates in a scope of its own
    quantize_module.quantize(cfg, tmp_path / "fast", progress=False)
    assert not paddle.static.global_scope().find_var("conv2d_0.w_0").get_tensor()._is_initialized()
    assert paddle.static.global_scope().find_var("conv2d_1.w_0") is None
    monkeypatch.setattr(quantize_module, "fast_ir_graph", contextlib.nullcontext)
    quantize_module.quantize(cfg, tmp_path / "plain", progress=False)

    batch = next(build_source(cfg, "FastEvalDataset", batch_size=4).batches(max_images=4))
    feed = feed_from_batch(batch, cfg.feed_names)
    options = BackendOptions(mkldnn=False, threads=2)
    fast, plain = (open_backend("paddle", tmp_path / name, options).run(feed) for name in ("fast", "plain"))
    assert len(fast) == len(plain) and fast[0].size > 0
    for a, b in zip(fast, plain):
        assert np.array_equal(a, b)


def test_fast_ir_graph_restores_paddles_methods():
    from paddle.base.framework import IrGraph

    from ptqdet.paddle_static import fast_ir_graph

    before = {name: getattr(IrGraph, name) for name in ("link_to", "all_persistable_nodes", "safe_remove_nodes")}
    with pytest.raises(RuntimeError), fast_ir_graph():
        assert IrGraph.link_to is not before["link_to"]
        raise RuntimeError("an error inside")
    assert {name: getattr(IrGraph, name) for name in before} == before
