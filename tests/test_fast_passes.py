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


def _loop_program():
    """A program whose `while` body rewrites a variable an observed op made before the loop (the
    boxes of a per-image post-process, as TOOD's export clips them): its name has two versions."""
    import paddle

    main, startup = paddle.static.Program(), paddle.static.Program()
    with paddle.static.program_guard(main, startup):
        x = paddle.static.data("x", [2, 4], "float32")
        boxes = paddle.concat([x, x], axis=1)
        i, n = paddle.full([1], 0, "int64"), paddle.full([1], 2, "int64")
        cond = paddle.less_than(i, n)
        loop = paddle.static.nn.control_flow.While(cond)
        with loop.block():
            paddle.assign(paddle.clip(paddle.scale(boxes, 0.5), 0.0, 1.0), boxes)
            paddle.increment(i)
            paddle.assign(paddle.less_than(i, n), cond)
        out = paddle.scale(boxes, 1.0)
    return main, startup, out


@pytest.mark.parametrize("patched", [True, False])
def test_observer_pass_leaves_a_variable_rewritten_in_a_loop_without_a_qdq_pair(patched):
    """Paddle's AddQuantDequantForInferencePass, applied to every sub-graph as PTQ's
    _update_program does, with a scale for every output: unpatched it links the pair on the
    loop body's version into the body's readers and the graph has a cycle; under
    observe_single_versions the program is written and computes the loop's value."""
    import paddle
    from paddle.base import core
    from paddle.base.framework import IrGraph
    from paddle.static.quantization.quantization_pass import AddQuantDequantForInferencePass

    from ptqdet.paddle_static import observe_single_versions, static_mode

    with static_mode():
        main, startup, out = _loop_program()
        scope, exe = paddle.static.Scope(), paddle.static.Executor(paddle.CPUPlace())
        with paddle.static.scope_guard(scope):
            exe.run(startup)
            names = {name for block in main.blocks for op in block.ops for name in op.output_arg_names}
            graph = IrGraph(core.Graph(main.desc), for_test=True)
            with observe_single_versions() if patched else contextlib.nullcontext():
                observer = AddQuantDequantForInferencePass(scope, paddle.CPUPlace(),
                                                           quantizable_op_type=["concat", "assign", "scale", "clip"],
                                                           calibration_range_dict={name: 1.0 for name in names})
                for sub_graph in graph.all_sub_graphs():
                    sub_graph._for_test = True
                    observer.apply(sub_graph)
            if not patched:
                with pytest.raises(ValueError, match="shouldn't contain cycle"):
                    graph.to_program()
                return
            program = graph.to_program()
            (value,) = exe.run(program, feed={"x": np.full((2, 4), 3.0, "float32")}, fetch_list=[out.name])
    ops = [op.type for op in program.global_block().ops]
    assert "quantize_linear" in ops  # the single-version output kept its pair
    np.testing.assert_allclose(value, 0.5)  # 6 -> clip(3) = 1 -> 0.5
