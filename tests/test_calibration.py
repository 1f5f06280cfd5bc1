"""ptqdet.calibration: PTQ's statistics from one forward pass of the FP32 model, reduced in the
graph, write the model paddleslim's own sampling writes."""
import dataclasses
from collections import Counter

import numpy as np
import pytest

from conftest import DEMO_CONFIGS
from ptqdet.config import load_config


def _tiny_program():
    import paddle

    main, startup = paddle.static.Program(), paddle.static.Program()
    with paddle.static.program_guard(main, startup):
        x = paddle.static.data("x", [-1, 3, 4, 5], "float32")
        y = paddle.nn.functional.relu(x) * 2.0 - 1.0
        total = paddle.sum(y)  # 0-D
        count = paddle.cast(paddle.sum(paddle.cast(x > 0, "int32"), axis=[1, 2, 3]), "int32")  # [N] int32
        flat = paddle.reshape(x, [-1, 1])
        kept = paddle.gather(flat, paddle.nonzero(flat > 2.5)[:, 0])  # [K, 1]: boxes past a score filter
    return main, startup, x, y, total, count, kept


def test_statistics_are_numpys_maxima_per_image_and_per_channel():
    import paddle

    from ptqdet.calibration import ActivationStats, StatisticsUnsupported, collect_statistics
    from ptqdet.paddle_static import static_mode

    rng = np.random.default_rng(0)
    feeds = [{"x": rng.standard_normal((n, 3, 4, 5)).astype(np.float32)} for n in (2, 3)]
    with static_mode(), paddle.static.scope_guard(paddle.static.Scope()):
        main, startup, x, y, total, count, kept = _tiny_program()
        exe = paddle.static.Executor(paddle.CPUPlace())
        exe.run(startup)
        stats = collect_statistics(main, paddle.static.global_scope(), exe.place, ["x"], feeds,
                                   sample_vars=[y.name, count.name, total.name, kept.name, "in_a_sub_block"],
                                   channel_vars=[x.name])
        threaded = collect_statistics(main, paddle.static.global_scope(), exe.place, ["x"], feeds,
                                      sample_vars=[y.name, count.name, total.name, kept.name, "in_a_sub_block"],
                                      channel_vars=[x.name], threads=2)
        with pytest.raises(StatisticsUnsupported, match="channels"):
            collect_statistics(main, paddle.static.global_scope(), exe.place, ["x"], feeds, channel_vars=[count.name])
    ys = [np.maximum(f["x"], 0) * 2.0 - 1.0 for f in feeds]
    for batch, y_np in zip(stats.sample_max[y.name], ys):
        np.testing.assert_array_equal(batch, np.abs(y_np).reshape(len(y_np), -1).max(1))
    for batch, f in zip(stats.sample_max[count.name], feeds):  # an int tensor: reduced in numpy
        np.testing.assert_array_equal(batch, (f["x"] > 0).reshape(len(f["x"]), -1).sum(1))
    for batch, f in zip(stats.sample_max[total.name], feeds):  # 0-D (shape arithmetic): one image
        np.testing.assert_allclose(batch, [abs((np.maximum(f["x"], 0) * 2.0 - 1.0).sum())], rtol=1e-5)
    # empty in some batch (Paddle cannot reduce it): read out and reduced in numpy; paddleslim's zero-size
    kept_np = [f["x"][f["x"] > 2.5] for f in feeds]
    assert [v.size for v in kept_np].count(0) >= 1 and any(v.size for v in kept_np), "the feeds must test both"
    for batch, v in zip(stats.sample_max[kept.name], kept_np):
        np.testing.assert_array_equal(batch, np.abs(v))
    assert kept.name in stats.empty() and "in_a_sub_block" in stats.empty()
    assert stats.threshold("in_a_sub_block", "abs_max") is None
    np.testing.assert_array_equal(stats.channel_max[x.name],
                                  np.maximum(*(np.abs(f["x"]).max(axis=(0, 2, 3)) for f in feeds)))
    # paddleslim's thresholds: abs_max the largest, avg the mean over batches of each batch's mean
    assert stats.threshold(y.name, "abs_max") == max(float(np.abs(v).max()) for v in ys)
    per_batch = [float(np.mean(np.abs(v).reshape(len(v), -1).max(1))) for v in ys]
    assert stats.threshold(y.name, "avg") == np.array(per_batch).mean()
    assert ActivationStats({"e": [np.zeros(0, np.float32)]}).threshold("e", "avg") is None
    # two threads, each batch on one of them: the same statistics, batch for batch
    assert threaded.sample_max.keys() == stats.sample_max.keys()
    for name, batches in stats.sample_max.items():
        assert all(np.array_equal(a, b) for a, b in zip(batches, threaded.sample_max[name], strict=True)), name
    np.testing.assert_array_equal(threaded.channel_max[x.name], stats.channel_max[x.name])


def test_statistics_program_runs_only_what_the_statistics_need():
    import paddle

    from ptqdet.calibration import _statistics_runner
    from ptqdet.paddle_static import static_mode

    with static_mode(), paddle.static.scope_guard(paddle.static.Scope()):
        main, _, x, y, total, count, kept = _tiny_program()
        runner, plan = _statistics_runner(main, paddle.static.global_scope(), paddle.CPUPlace(), ["x"], [y.name],
                                          [], set())
    block = runner._desc.block(0)
    types = {block.op(i).type() for i in range(block.op_size())}
    assert plan == [("sample", y.name)] and {"relu", "abs", "reduce_max"} <= types
    assert not types & {"reduce_sum", "cast", "where_index", "gather"}  # total's, count's, kept's


def _cfg(**ptq):
    cfg = load_config(DEMO_CONFIGS / "picodet_s_ptq.yaml")
    return dataclasses.replace(cfg, ptq=dataclasses.replace(cfg.ptq, batch_size=2, batch_nums=3, onnx_format=True,
                                                            **ptq))


def _read(model_dir):
    """The quantized model's op types and every persistable tensor by name."""
    from ptqdet.files import ModelFiles
    from ptqdet.paddle_static import loaded_program

    with loaded_program(ModelFiles(model_dir, "model.pdmodel", "model.pdiparams")) as model:
        ops = Counter(op.type for op in model.program.global_block().ops if op.type not in ("feed", "fetch", "scale"))
        tensors = {v.name: np.array(model.scope.find_var(v.name).get_tensor()) for v in model.program.list_vars()
                   if v.persistable and v.name not in ("feed", "fetch")}
    return ops, tensors


def _quantize_both(cfg, tmp_path, monkeypatch):
    """The one-pass model (run_paddle_ptq must not be reached; one run per batch) and paddleslim's."""
    from ptqdet import calibration
    from ptqdet import quantize as quantize_module
    from ptqdet.paddle_static import ProgramRunner

    monkeypatch.setenv("PTQDET_THREADS", "2")  # the one-pass statistics on two threads: bit for bit all the same
    runs = []
    real_run = ProgramRunner.run
    monkeypatch.setattr(ProgramRunner, "run", lambda self, feed: runs.append(1) or real_run(self, feed))

    def not_paddleslim(*args, **kwargs):
        raise AssertionError("the one-pass path fell back to paddleslim's sampling")

    with monkeypatch.context() as patch:
        patch.setattr(quantize_module, "run_paddle_ptq", not_paddleslim)
        one = quantize_module.quantize(cfg, tmp_path / "one_pass", progress=False)
    assert len(runs) == cfg.ptq.batch_nums  # one forward per calibration batch, equalization included
    monkeypatch.setattr(calibration, "supports", lambda settings: False)
    two = quantize_module.quantize(cfg, tmp_path / "paddleslim", progress=False)
    assert one.quantized_layers == two.quantized_layers and len(one.quantized_layers) == 98
    return _read(tmp_path / "one_pass"), _read(tmp_path / "paddleslim")


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["avg", "abs_max"])
def test_one_pass_writes_paddleslims_model_exactly(tmp_path, monkeypatch, algo):
    """Without equalization both passes read the same activations: every weight and every scale
    is bit-identical."""
    (ops, tensors), (ops_ref, tensors_ref) = _quantize_both(_cfg(algo=algo, equalize_depthwise=False), tmp_path,
                                                           monkeypatch)
    assert ops == ops_ref and ops["quantize_linear"] > 98
    assert tensors.keys() == tensors_ref.keys()
    for name, value in tensors.items():
        assert np.array_equal(value, tensors_ref[name]), name


@pytest.mark.slow
def test_one_pass_with_equalization_matches_two_passes_to_float_rounding(tmp_path, monkeypatch):
    """With equalization paddleslim calibrated the equalized model in a second pass; the one pass
    reads the original's activations: the same weights (the same channel ranges), the equalized
    inputs' scales their exact maxima in both, the others equal up to float rounding."""
    (ops, tensors), (ops_ref, tensors_ref) = _quantize_both(_cfg(algo="avg"), tmp_path, monkeypatch)
    assert ops == ops_ref and ops["elementwise_mul"] >= 20  # the equalizing multiplies
    assert tensors.keys() == tensors_ref.keys()
    rounding = []
    for name, value in tensors.items():
        if ".dw_eq." in name or not name.endswith("@scale"):
            assert np.array_equal(value, tensors_ref[name]), name
        elif not np.array_equal(value, tensors_ref[name]):
            np.testing.assert_allclose(value, tensors_ref[name], rtol=1e-5, err_msg=name)
            rounding.append(name)
    assert len(rounding) < len([n for n in tensors if n.endswith("@scale")]) // 2


@pytest.mark.slow
def test_keeping_the_recovered_model_leaves_the_int8_model_as_it_is(tmp_path):
    """The analysis keeps the equalized FP32 model (recovered_dir): saving it must not change the
    program the INT8 model is made from (Paddle's save appends its output ops to the program)."""
    from ptqdet.files import resolve_model_files
    from ptqdet.program import read_program
    from ptqdet.quantize import quantize_files

    cfg = _cfg(algo="avg")
    files = resolve_model_files(cfg.model_dir)
    quantize_files(cfg, files, tmp_path / "kept", cfg.ptq, [], progress=False, recovered_dir=tmp_path / "recovered")
    quantize_files(cfg, files, tmp_path / "alone", cfg.ptq, [], progress=False)
    (ops, tensors), (ops_alone, tensors_alone) = _read(tmp_path / "kept"), _read(tmp_path / "alone")
    assert ops == ops_alone and tensors.keys() == tensors_alone.keys()
    for name, value in tensors.items():
        assert np.array_equal(value, tensors_alone[name]), name
    recovered = Counter(op.type for op in read_program(resolve_model_files(tmp_path / "recovered")).ops)
    original = Counter(op.type for op in read_program(files).ops)
    assert recovered["elementwise_mul"] - original["elementwise_mul"] == ops["elementwise_mul"] - original[
        "elementwise_mul"] > 0  # the equalizing multiplies, in both
    assert recovered["scale"] == original["scale"] and "quantize_linear" not in recovered


@pytest.mark.slow
def test_onednn_calibration_reads_the_plain_kernels_maxima_to_rounding():
    """PTQ.calibration_kernels onednn: the convolutions on oneDNN kernels give the same maxima up
    to their other rounding (not bit for bit), every other op still on the plain kernels."""
    import paddle

    from ptqdet.calibration import _statistics_runner, collect_statistics, post_training_quantization
    from ptqdet.data import calibration_loader
    from ptqdet.files import resolve_model_files
    from ptqdet.paddle_static import loaded_program

    cfg = _cfg(algo="avg")
    loader = calibration_loader(cfg, 2, 2, progress=False)
    with loaded_program(resolve_model_files(cfg.model_dir)) as model:
        names = sorted(post_training_quantization(model, loader, cfg.ptq, [])._quantized_act_var_name)
        stats = {onednn: collect_statistics(model.program, model.scope, model.place, model.feed_names, loader,
                                            names, onednn=onednn) for onednn in (False, True)}
        runner, _ = _statistics_runner(model.program, model.scope, model.place, model.feed_names, names, [], set(),
                                       onednn=True)
    block = runner._desc.block(0)
    ops = [block.op(i) for i in range(block.op_size())]
    marked = {op.type() for op in ops if op.has_attr("use_mkldnn") and op.attr("use_mkldnn")}
    assert paddle.base.core.is_compiled_with_mkldnn() and marked == {"conv2d", "depthwise_conv2d"}
    differ = 0
    for name in names:
        plain, onednn = stats[False].threshold(name, "avg"), stats[True].threshold(name, "avg")
        assert onednn == pytest.approx(plain, rel=1e-3), name
        differ += onednn != plain
    assert differ > 0  # other kernels indeed ran


def test_calibration_kernels_is_checked(tmp_path):
    from ptqdet.config import ConfigError

    config = tmp_path / "bad.yaml"
    config.write_text(f"_BASE_: ['{DEMO_CONFIGS / 'picodet_s_ptq.yaml'}']\nPTQ:\n  calibration_kernels: gpu\n")
    with pytest.raises(ConfigError, match="PTQ.calibration_kernels must be one of onednn, plain, got 'gpu'"):
        load_config(config)
