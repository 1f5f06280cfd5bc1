import shutil

import pytest
from pycocotools.coco import COCO

from conftest import MODELS
from ptqdet.backends import open_backend
from ptqdet.config import ConfigError
from ptqdet.data import build_source, feed_from_batch
from ptqdet.files import resolve_model_files
from ptqdet.model import BackendOptions
from ptqdet.postprocess import to_detections
from ptqdet.program import is_quantized


def test_legacy_file_names_are_accepted(tmp_path):
    src = MODELS / "picodet_s_shapes"
    shutil.copy(src / "model.pdmodel", tmp_path / "__model__")
    shutil.copy(src / "model.pdiparams", tmp_path / "__params__")
    files = resolve_model_files(tmp_path, "model.pdmodel", "model.pdiparams")
    assert (files.model_filename, files.params_filename) == ("__model__", "__params__")
    assert not is_quantized(files)


def test_missing_model_is_named(tmp_path):
    with pytest.raises(ConfigError, match="model_dir does not exist"):
        resolve_model_files(tmp_path / "none")
    with pytest.raises(ConfigError, match="model file not found: .*model.pdmodel"):
        resolve_model_files(tmp_path)


def _iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.mark.parametrize("config", ["picodet_s_ptq.yaml", "ppyoloe_s_ptq.yaml"])
def test_card_numbers_reproduce(config):
    """The FP32 mAP written in each model card is what eval measures on the committed model."""
    import re

    from ptqdet.config import load_config
    from ptqdet.metrics import evaluate

    cfg = load_config(f"configs/demo/{config}")
    card = (cfg.model_dir / "README.md").read_text()
    written = float(re.search(r"\*\*([0-9.]+)\*\*", card).group(1))
    measured = evaluate(open_backend("paddle", resolve_model_files(cfg.model_dir), BackendOptions(threads=2)), cfg,
                        progress=False).map
    assert 100 * measured == pytest.approx(written, abs=0.051)
    assert measured >= 0.30  # the demo's quality bar (the real PicoDet-s scores 32.5 on COCO)


@pytest.mark.parametrize("config", ["picodet_s_ptq.yaml", "ppyoloe_s_ptq.yaml"])
def test_committed_models_find_the_objects(config):
    """On 16 fixed val images, >= 80 % of the objects get a box of the right class at IoU >= 0.5
    scored >= 0.1."""
    from ptqdet.config import load_config

    cfg = load_config(f"configs/demo/{config}")
    files = resolve_model_files(cfg.model_dir)
    predictor = open_backend("paddle", files, BackendOptions(threads=2))
    source = build_source(cfg, "FastEvalDataset", batch_size=8)
    coco = COCO(source.dataset.get_anno())
    catid2clsid = source.dataset.catid2clsid
    found = total = 0
    for batch in source.batches(max_images=16):
        det = to_detections(predictor.run(feed_from_batch(batch, cfg.feed_names)), cfg.nms_outside, cfg.nms)
        start = 0
        for i, n in enumerate(det["bbox_num"]):
            rows = det["bbox"][start:start + n]
            start += n
            # score >= 0.1 (4-10x the models' NMS score thresholds): both heads are trained with
            # varifocal (IoU-aware) scores, which sit lower than class probabilities. Measured on
            # the 40 FastEval images, share of objects found at score >= 0.1 / 0.2 / 0.3:
            # PicoDet-s (52.7 mAP) 0.97 / 0.93 / 0.76, PP-YOLOE-s (32.2 mAP) 0.86 / 0.74 / 0.53.
            rows = rows[rows[:, 1] >= 0.1]
            for ann in coco.loadAnns(coco.getAnnIds(imgIds=int(batch["im_id"][i][0]))):
                x, y, w, h = ann["bbox"]
                box, cls = [x, y, x + w, y + h], catid2clsid[ann["category_id"]]
                total += 1
                found += any(int(r[0]) == int(cls) and _iou(r[2:], box) >= 0.5 for r in rows)
    assert total > 20
    assert found / total >= 0.8, f"{found}/{total} objects found"


def test_a_weight_two_matmuls_share_is_not_rescaled_per_use(tmp_path):
    """GFL's distribution projection: one weight, one matmul per FPN level, each scaled by its
    stride. Paddle Inference's matmul_v2_scale_fuse_pass folds each scale into the shared weight,
    once per use; ptqdet's predictor computes what the program computes."""
    import numpy as np
    import paddle

    from ptqdet.paddle_static import static_mode

    with static_mode():
        main, startup = paddle.static.Program(), paddle.static.Program()
        with paddle.static.program_guard(main, startup):
            x = paddle.static.data("image", [1, 4, 8], "float32")
            weight = paddle.create_parameter([8, 1], "float32", name="project")
            outs = [paddle.scale(paddle.matmul(x, weight), scale=s) for s in (8.0, 16.0)]
            out = paddle.concat(outs, axis=1)
        exe = paddle.static.Executor(paddle.CPUPlace())
        scope = paddle.static.Scope()
        with paddle.static.scope_guard(scope):
            exe.run(startup)
            feed = {"image": np.random.default_rng(0).random((1, 4, 8), dtype=np.float32)}
            expected = exe.run(main, feed=feed, fetch_list=[out])[0]
            paddle.static.save_inference_model(str(tmp_path / "model"), [x], [out], exe, program=main)
    for mkldnn in (False, True):
        got = open_backend("paddle", tmp_path, BackendOptions(mkldnn=mkldnn)).run(feed)[0]
        np.testing.assert_allclose(got, expected, rtol=1e-6)
