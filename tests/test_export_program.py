"""The Paddle program ptqdet hands paddle2onnx: SSD's prior boxes folded, its NMS settings read."""
import numpy as np
import pytest

from ptqdet.export import ExportError, _nms_settings, prepare_program
from ptqdet.files import ModelFiles
from ptqdet.program import read_ops

NMS_ATTRS = {"score_threshold": 0.01, "nms_threshold": 0.45, "nms_top_k": 400, "keep_top_k": 200,
             "normalized": True, "nms_eta": 1.0}


def test_nms_settings_keep_a_background_class_inside_the_scores():
    assert _nms_settings({**NMS_ATTRS, "background_label": 6}, "multiclass_nms3", 7).background_label == 6  # SSD
    assert _nms_settings({**NMS_ATTRS, "background_label": 80}, "multiclass_nms3", 80).background_label == -1  # YOLO
    with pytest.raises(ExportError, match="normalized=False"):
        _nms_settings({**NMS_ATTRS, "normalized": False}, "multiclass_nms3", 7)


def _save_prior_box_model(out_dir, image_shape) -> tuple[ModelFiles, dict, list]:
    """image -> conv -> prior_box (SSD's anchors) + the conv's mean: a model paddle2onnx cannot convert."""
    import paddle

    from ptqdet.paddle_static import static_mode

    with static_mode():
        main, startup = paddle.static.Program(), paddle.static.Program()
        with paddle.static.program_guard(main, startup):
            image = paddle.static.data("image", image_shape, "float32")
            feature = paddle.static.nn.conv2d(image, 4, 3, stride=4)
            boxes, variances = paddle.vision.ops.prior_box(feature, image, min_sizes=[8.0], max_sizes=[16.0],
                                                           aspect_ratios=[2.0], flip=True, clip=True)
            score = paddle.mean(feature)
        exe = paddle.static.Executor(paddle.CPUPlace())
        scope = paddle.static.Scope()
        with paddle.static.scope_guard(scope):
            exe.run(startup)
            paddle.static.save_inference_model(str(out_dir / "model"), [image], [boxes, variances, score], exe,
                                               program=main)
            feed = {"image": np.random.default_rng(0).random([1, 3, 32, 32]).astype("float32")}
            expected = exe.run(main, feed=feed, fetch_list=[boxes, variances, score])
    return ModelFiles(out_dir, "model.pdmodel", "model.pdiparams"), feed, expected


def test_prior_boxes_are_folded_into_parameters(tmp_path):
    files, feed, expected = _save_prior_box_model(tmp_path / "model", [1, 3, 32, 32])
    assert "prior_box" in {op.type for op in read_ops(files)}
    prepared = prepare_program(files, tmp_path / "folded", strip=False)
    folded, nms = prepared.files, prepared.nms
    assert nms is None and "prior_box" not in {op.type for op in read_ops(folded)}
    from ptqdet.backends import open_backend
    from ptqdet.model import BackendOptions

    got = open_backend("paddle", folded.model_dir, BackendOptions(threads=1, mkldnn=False)).run(feed)
    for want, have in zip(expected, got):
        np.testing.assert_allclose(np.asarray(have), np.asarray(want), rtol=1e-6, atol=1e-6)


def test_prior_boxes_of_a_dynamic_input_size_are_refused(tmp_path):
    files, _, _ = _save_prior_box_model(tmp_path / "model", [1, 3, -1, -1])
    with pytest.raises(ExportError, match="fixed TestReader image_shape"):
        prepare_program(files, tmp_path / "folded", strip=False)


def _program(*ops, persistables=("w", "b")):
    from ptqdet.program import OpInfo, ProgramInfo

    feeds = [OpInfo("feed", {"X": ["feed"]}, {"Out": [n]}) for n in ("image", "im_shape")]
    return ProgramInfo([*feeds, *(OpInfo(t, i, o) for t, i, o in ops)], frozenset(persistables))


NETWORK = (("conv2d", {"Input": ["image"], "Filter": ["w"]}, {"Output": ["c"]}),
           ("reshape2", {"X": ["b"]}, {"Out": ["rb"]}),
           ("elementwise_add", {"X": ["c"], "Y": ["rb"]}, {"Out": ["c1"]}))


def test_a_post_process_loop_is_split_where_the_network_ends():
    """RetinaNet's form: the head's maps (bias added) go to a per-image while loop and an NMS;
    the split hands the maps and the model inputs the loop reads to the post-process."""
    from ptqdet.program import post_process_split

    loop = _program(*NETWORK, ("shape", {"Input": ["c1"]}, {"Out": ["s"]}),
                    ("while", {"X": ["c1", "s", "im_shape"], "Condition": ["s"]}, {"Out": ["boxes"]}),
                    ("multiclass_nms3", {"BBoxes": ["boxes"]}, {"Out": ["det"]}),
                    ("fetch", {"X": ["det"]}, {"Out": ["fetch"]}))
    split = post_process_split(loop)
    assert split.network_outputs == ["c1"] and split.post_process_inputs == ["c1", "im_shape"]
    assert split.network_inputs == ["image"]
    assert post_process_split(_program(*NETWORK, ("fetch", {"X": ["c1"]}, {"Out": ["fetch"]}))) is None
    inside = _program(("while", {"X": ["image"]}, {"Out": ["x"]}),  # a loop the network itself runs
                      ("conv2d", {"Input": ["x"], "Filter": ["w"]}, {"Output": ["c"]}))
    assert post_process_split(inside) is None
