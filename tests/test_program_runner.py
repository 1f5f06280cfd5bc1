"""ptqdet.paddle_static.ProgramRunner: the analysis' trial programs run through one
StandaloneExecutor each, and compute what paddle.static.Executor.run computes."""
import numpy as np

from conftest import MODELS
from ptqdet.files import resolve_model_files


def test_program_runner_computes_what_executor_run_computes():
    from ptqdet.paddle_static import ProgramRunner, loaded_program

    rng = np.random.default_rng(0)
    feeds = [{"image": rng.random((2, 3, 256, 256), dtype=np.float32),
              "scale_factor": np.ones((2, 2), np.float32)} for _ in range(2)]
    with loaded_program(resolve_model_files(MODELS / "picodet_s_shapes")) as model:
        ops = model.program.global_block().ops
        assert ops[0].type == "feed" and ops[-1].type == "fetch"  # the loaded program's own: replaced
        inner = next(op.output_arg_names[0] for op in ops if op.type == "conv2d")
        fetch_names = [v.name for v in model.fetch_vars] + [inner]
        runner = ProgramRunner(model.program.desc, model.feed_names, fetch_names, model.place, model.scope)
        outputs = []
        for feed in feeds:
            expected = model.exe.run(model.program, feed=feed, fetch_list=fetch_names, scope=model.scope)
            got = runner.run(feed)
            assert len(got) == len(expected) == 3
            for a, b in zip(got, expected):
                assert a.shape == np.asarray(b).shape and np.array_equal(a, np.asarray(b))
            outputs.append(got)
        assert not np.array_equal(outputs[0][2], outputs[1][2])  # each run reads its own feed
        # the program itself is not changed (the runner edits a copy of its desc)
        assert [op.type for op in model.program.global_block().ops] == [op.type for op in ops]
        assert model.program.desc.block(0).op_size() == len(ops)
