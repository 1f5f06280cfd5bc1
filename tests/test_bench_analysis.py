"""tools/bench_analysis.py: its flags, its bad-input path, and the counters it puts on paddleslim's Analysis."""
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT


def _run(*args):
    return subprocess.run([sys.executable, str(ROOT / "tools" / "bench_analysis.py"), *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)


def test_help_explains_every_flag():
    r = _run("--help")
    assert r.returncode == 0, r.stderr[-1500:]
    for flag in ("--config_path", "--out", "--max_drop", "--skip_paddleslim", "--skip_ours", "--max_layers",
                 "--threads", "--quiet"):
        assert flag in r.stdout, flag
    assert "debugging only" in r.stdout  # --max_layers is not for real measurements


def test_bad_config_path_exits_2_with_one_line(tmp_path):
    out = tmp_path / "bench"
    r = _run("--config_path", str(tmp_path / "nope.yaml"), "--out", str(out), "--quiet")
    assert r.returncode == 2, r.stderr[-1500:]
    assert f"config file not found: {tmp_path / 'nope.yaml'}" in r.stderr
    assert r.stderr.strip().count("\n") == 0  # one line, no traceback
    assert not out.exists()


def test_skipping_both_sides_is_refused(tmp_path):
    r = _run("--skip_ours", "--skip_paddleslim", "--out", str(tmp_path / "bench"))
    assert r.returncode == 2
    assert "nothing to run" in r.stderr


def _toy_model(model_dir):
    """Two 3x3 convs (8x8 input) saved as an inference model: two quantizable layers."""
    import paddle

    paddle.enable_static()
    main, startup = paddle.static.Program(), paddle.static.Program()
    with paddle.static.program_guard(main, startup):
        x = paddle.static.data("x", [None, 3, 8, 8], "float32")
        y = paddle.static.nn.conv2d(x, 4, 3, padding=1, act="relu")
        y = paddle.static.nn.conv2d(y, 2, 3, padding=1)
    exe = paddle.static.Executor(paddle.CPUPlace())
    scope = paddle.static.Scope()
    with paddle.static.scope_guard(scope):
        exe.run(startup)
        paddle.static.save_inference_model(str(model_dir / "model"), [x], [y], exe, program=main)
    return sorted(p.name for p in main.list_vars() if p.persistable and p.name.endswith(".w_0"))


def test_counters_match_paddleslim_analysis_on_a_toy_model(tmp_path):
    """The real paddleslim Analysis on a 2-layer toy model, with an eval function whose value is
    1 - 0.1 x (quantized layers): 1 + 2 calibrations to rank, then 2 for the target search
    (one layer in float: 0.9 < 0.95; both: 1.0), and 2 + 2 + 2 evaluations."""
    import paddle
    from paddleslim.quant.analysis import Analysis

    from ptqdet.analysis.reference import ReferenceCounters, counted_eval, instrument, ptq_quant_config
    from ptqdet.config import PTQSettings

    weights = _toy_model(tmp_path)
    assert len(weights) == 2
    rng = np.random.default_rng(0)
    batches = [{"x": rng.normal(size=(2, 3, 8, 8)).astype("float32")} for _ in range(2)]

    class Loader(paddle.io.DataLoader):
        def __init__(self):  # no dataset, pre-made batches
            self.batch_size = 2

        def __len__(self):
            return len(batches)

        def __iter__(self):
            return iter(batches)

        def __call__(self):
            return iter(batches)

    def toy_metric(executor, program, feed_list, fetch_list):
        quantized = sum(op.type.startswith(("fake_dequantize", "fake_channel_wise_dequantize"))
                        for op in program.global_block().ops)
        return 1.0 - 0.1 * quantized

    counters = ReferenceCounters()
    settings = PTQSettings(algo="avg", batch_size=2, batch_nums=2, onnx_format=True)
    config = ptq_quant_config(settings, [])
    assert config["onnx_format"] is False and "skip_tensor_list" not in config
    analyzer = Analysis(float_model_dir=str(tmp_path), data_loader=Loader(), save_dir=str(tmp_path / "ps"),
                        eval_function=counted_eval(toy_metric, counters), quant_config=config)
    seen = []
    state = instrument(analyzer, counters, on_layers=seen.append)
    analyzer.metric_error_analyse()
    assert seen == [2] and counters.analysed_layers == 2
    assert analyzer.fp_metric == pytest.approx(1.0) and analyzer.quant_metric == pytest.approx(0.8)
    assert (counters.calibrations, counters.evaluations) == (3, 4)
    analyzer.get_target_quant_model(0.95)
    assert (counters.calibrations, counters.evaluations) == (5, 6)
    assert sorted(state["last_skip"]) == weights  # the saved model keeps both layers in float
    assert (tmp_path / "ps" / "target_quant_model" / "model.pdmodel").is_file()


def test_max_layers_limits_the_reference_ranking(tmp_path):
    import paddle
    from paddleslim.quant.analysis import Analysis

    from ptqdet.analysis.reference import ReferenceCounters, counted_eval, instrument, ptq_quant_config
    from ptqdet.config import PTQSettings

    _toy_model(tmp_path)
    batch = {"x": np.ones((1, 3, 8, 8), "float32")}

    class Loader(paddle.io.DataLoader):
        def __init__(self):  # no dataset, pre-made batches
            self.batch_size = 1

        def __len__(self):
            return 1

        def __call__(self):
            return iter([batch])

    counters = ReferenceCounters()
    analyzer = Analysis(float_model_dir=str(tmp_path), data_loader=Loader(), save_dir=str(tmp_path / "ps"),
                        eval_function=counted_eval(lambda *a: 0.5, counters),
                        quant_config=ptq_quant_config(PTQSettings(algo="avg", batch_size=1, batch_nums=1), []))
    instrument(analyzer, counters, max_layers=1)
    analyzer.metric_error_analyse()
    assert len(analyzer.layer_metrics) == 1 and counters.analysed_layers == 1
    assert (counters.calibrations, counters.evaluations) == (2, 3)
