"""The trained zoo's bookkeeping (ptqdet.zoo, ptqdet.demo.train): cache keys, resume, row merge
and the trained table. No training here: `make zoo` trains."""
from __future__ import annotations

import json
from pathlib import Path

from ptqdet import coverage, zoo
from ptqdet.demo.train import last_checkpoint


def _arch(tmp_path: Path, text: str, base: str = "lr: 0.1\n") -> zoo.ZooArch:
    (tmp_path / "base.yml").write_text(base)
    (tmp_path / "m.yml").write_text("_BASE_: ['base.yml']\n" + text)
    return zoo.ZooArch("m", "M", source_config=str(tmp_path / "m.yml"))


def test_train_key_follows_config_bytes_base_and_dataset(tmp_path):
    key = zoo.train_key(_arch(tmp_path, "epoch: 4\n"), "data1")
    assert zoo.train_key(_arch(tmp_path, "epoch: 4\n"), "data1") == key
    assert zoo.train_key(_arch(tmp_path, "epoch: 5\n"), "data1") != key
    assert zoo.train_key(_arch(tmp_path, "epoch: 4\n", base="lr: 0.2\n"), "data1") != key
    assert zoo.train_key(_arch(tmp_path, "epoch: 4\n"), "data2") != key


def test_dataset_digest_follows_annotations_and_images(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "train").mkdir()
    (tmp_path / "annotations" / "instances_train.json").write_text("{}")
    (tmp_path / "train" / "a.jpg").write_bytes(b"12")
    first = zoo.dataset_digest(tmp_path)
    (tmp_path / "train" / "b.jpg").write_bytes(b"1")
    second = zoo.dataset_digest(tmp_path)
    (tmp_path / "annotations" / "instances_train.json").write_text("{ }")
    assert len({first, second, zoo.dataset_digest(tmp_path)}) == 3


def test_resume_picks_last_complete_checkpoint(tmp_path):
    assert last_checkpoint(tmp_path) is None
    for n in (1, 2, 10):
        (tmp_path / f"{n}.pdparams").write_bytes(b"")
        (tmp_path / f"{n}.pdopt").write_bytes(b"")
    (tmp_path / "11.pdparams").write_bytes(b"")  # no optimizer state: written while it was killed
    (tmp_path / "model_final.pdparams").write_bytes(b"")
    assert last_checkpoint(tmp_path) == tmp_path / "10"


def test_results_saved_atomically_and_steps_keyed(tmp_path):
    arch = zoo.ZooArch("m", "M")
    assert zoo.read_results(arch, tmp_path) == {}
    zoo.save_results(arch, {"train": {"key": "k1", "done": True}}, tmp_path)
    results = zoo.read_results(arch, tmp_path)
    assert zoo.step_done(results, "train", "k1")
    assert not zoo.step_done(results, "train", "k2")
    assert not zoo.step_done(results, "export", "k1")
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def _measure(fp32=0.30, sim=0.295, ov=0.294):
    ours = {"recipe": zoo.CONFIG_RECIPE_NAME, "fp32_map": fp32, "sim_map": sim, "runtime_map": ov,
            "float_layers": 0, "total_layers": 40, "ptq_seconds": 12.3, "error": None,
            "latency": {"1": {"FP32": 10.0, "FP32 (bf16)": 8.0, "INT8": 6.0}}}
    nncf = {"recipe": "NNCF performance", "runtime_map": 0.28, "error": None,
            "latency": {"1": {"FP32": 10.0, "INT8": 7.0}}}
    return {"done": True, "key": "k", "rows": [ours, nncf], "header": "- date: x\n"}


def test_zoo_row_merge_and_table():
    arch = zoo.ZooArch("yolox_nano", "YOLOX-nano")
    results = {"train": {"epochs_done": 14, "epochs": 14, "minutes": 33.0}, "measure": _measure()}
    trained = {"yolox_nano": zoo.zoo_row(arch, results, header="- date: x\n"),
               "new_arch": zoo.zoo_row(zoo.ZooArch("new_arch", "New"), results)}
    rows = [{"arch": "yolox_nano", "stages": {"ptq": "ok"}, "fp32_map": None, "quantizable_layers": None},
            {"arch": "detr_r18", "stages": {}, "fp32_map": None}]
    merged = zoo.merge_rows(rows, trained)
    assert [r["arch"] for r in merged] == ["yolox_nano", "detr_r18", "new_arch"]
    assert merged[0]["stages"] == {"ptq": "ok"} and merged[0]["fp32_map"] == 0.30
    assert merged[0]["int8_map_openvino"] == 0.294 and merged[0]["quantizable_layers"] == 40
    assert merged[0]["zoo"]["int8_fp32"] == 0.6 and merged[0]["zoo"]["int8_bf16"] == 0.75
    assert merged[0]["zoo"]["nncf"]["int8_fp32"] == 0.7
    table = coverage.trained_table(merged)
    lines = table.splitlines()
    assert len(lines) == 4 and "detr_r18" not in table
    assert coverage.trained_cells(merged[0]) == ["YOLOX-nano", "14/14 ep, 33 min", "30.0", "29.5", "29.4",
                                                 "40 / 40", "-", "12", "0.60", "0.75", "28.0", "0.70"]
    assert lines[2].split("|")[1].strip() == "YOLOX-nano"
    assert coverage.trained_headers(merged) == "- date: x\n"
    json.dumps(merged)  # models.json stays JSON


def test_a_full_coverage_run_keeps_the_trained_fields(tmp_path):
    """tools/coverage.py without --archs drops the rows of architectures it did not run, never
    the zoo's measurements of those it did."""
    path = tmp_path / "models.json"
    path.write_text(json.dumps([{"arch": "gfl_r18", "stages": {"ptq": "ok"}, "fp32_map": 0.38, "zoo": {"x": 1}},
                                {"arch": "gone", "stages": {}}]))
    coverage.write_results([{"arch": "gfl_r18", "stages": {"ptq": "no"}, "fp32_map": None}], path, merge=False)
    rows = json.loads(path.read_text())
    assert [r["arch"] for r in rows] == ["gfl_r18"]
    assert rows[0]["stages"] == {"ptq": "no"} and rows[0]["fp32_map"] == 0.38 and rows[0]["zoo"] == {"x": 1}


def test_analysis_only_when_int8_loses_more_than_a_point():
    assert not zoo.needs_analysis(_measure())
    assert zoo.needs_analysis(_measure(ov=0.285))
    assert zoo.needs_analysis(_measure(sim=0.25))
    assert not zoo.needs_analysis({})


def test_zoo_configs_exist_for_every_arch():
    for arch in zoo.ZOO:
        assert arch.train_config.is_file(), arch.train_config
        assert arch.ptq_config.is_file(), arch.ptq_config
        assert arch.reuse is None or arch.source_config


def test_epochs_done_counts_ppdet_checkpoints(tmp_path):
    assert zoo.epochs_done(tmp_path, 8) == 0
    (tmp_path / "0.pdparams").write_bytes(b"")
    (tmp_path / "0.pdopt").write_bytes(b"")
    assert zoo.epochs_done(tmp_path, 8) == 1  # ppdet names epoch index 0 "0"
    (tmp_path / "model_final.pdparams").write_bytes(b"")
    assert zoo.epochs_done(tmp_path, 8) == 8


def test_step_keys_chain_and_budget():
    arch = zoo.ZooArch("picodet_s", "P", reuse="demo/models/picodet_s_shapes",
                       source_config="configs/demo/picodet_s_lcnet_shapes.yml")
    results = {"train": {"key": "k", "done": True, "weights": "w/3", "epochs_done": 4}}
    assert zoo.step_key(arch, "measure", "k", results) is None  # not exported yet
    export_key = zoo.step_key(arch, "export", "k", results)
    results["export"] = {"key": export_key, "done": True}
    measure_key = zoo.step_key(arch, "measure", "k", results)
    assert measure_key and zoo.step_key(arch, "analysis", "k", results) is None
    results["measure"] = {"key": measure_key, "done": True}
    assert zoo.step_key(arch, "analysis", "k", results) == measure_key
    # more epochs trained: another export key, so export and measure run again
    more = {**results, "train": {**results["train"], "weights": "w/7", "epochs_done": 8}}
    assert zoo.step_key(arch, "export", "k", more) != export_key
    assert zoo.step_key(arch, "measure", "k", more) is None
    stopped = {"train": {"stopped_by_budget": True, "minutes": 45.2}}
    assert not zoo.more_budget(stopped, "train", 45.0)
    assert zoo.more_budget(stopped, "train", 90.0) and zoo.more_budget(stopped, "train", None)
    assert not zoo.more_budget({"train": {"stopped_by_budget": False}}, "train", None)


def test_status_says_where_a_run_stands():
    assert zoo.status({}) == "not run yet"
    train = {"done": False, "epochs_done": 3, "epochs": 10, "minutes": 12.5, "curve": [{"map": 0.051}]}
    assert zoo.status({"train": train}) == "training: 3 of 10 epochs in 12.5 CPU min, mAP 5.1 during training"
    assert zoo.status({"train": train, "export": {"error": "ValueError: x"}}) == "export failed: ValueError: x"
    assert zoo.status({"train": {"reused": "demo/models/x"}, "measure": {"done": True}}) == "measured"


class _Tensor:
    def __init__(self, name: str, shape: tuple[int, ...]):
        self.name, self.shape = name, shape


def test_backbone_state_matched_by_tensor_name_and_shape():
    import numpy as np
    import pytest

    from ptqdet.demo.backbone import BackboneMismatch, match_state_dict

    shared = _Tensor("conv2d_9.w_0", (6, 4, 1, 1))
    state = {"backbone.conv.weight": _Tensor("conv2d_0.w_0", (8, 3, 3, 3)),
             "backbone.bn._mean": _Tensor("batch_norm2d_0.w_1", (8,)),
             "head.cls.weight": shared, "head.cls_list.0.weight": shared,  # one parameter under two keys
             "head.scale": _Tensor("scale_0.w_0", (1,))}  # folded into the export: not there
    exported = {"conv2d_0.w_0": np.ones((8, 3, 3, 3)), "batch_norm2d_0.w_1": np.full(8, 2.0),
                "conv2d_9.w_0": np.zeros((6, 4, 1, 1))}
    out = match_state_dict(state, exported)
    assert sorted(out) == ["backbone.bn._mean", "backbone.conv.weight"] and out["backbone.bn._mean"][0] == 2.0
    with pytest.raises(BackboneMismatch, match="shape"):  # built with other widths than the export
        match_state_dict({**state, "backbone.bn._mean": _Tensor("batch_norm2d_0.w_1", (16,))}, exported)
    with pytest.raises(BackboneMismatch, match="not in the export"):  # names shifted by an earlier model
        match_state_dict({**state, "backbone.conv.weight": _Tensor("conv2d_1.w_0", (8, 3, 3, 3))}, exported)
    with pytest.raises(BackboneMismatch, match="two tensors"):
        match_state_dict({**state, "head.other": _Tensor("conv2d_9.w_0", (6, 4, 1, 1))}, exported)


def test_backbone_recovered_from_the_demo_picodet_export(tmp_path):
    """The real recovery (a child process, as ptqdet.zoo runs it): every LCNet key found, the
    values the export's."""
    import subprocess
    import sys

    import numpy as np
    import paddle

    from ptqdet.demo.backbone import export_tensors

    out = tmp_path / "lcnet.pdparams"
    subprocess.run([sys.executable, "-m", "ptqdet.demo.backbone", "lcnet_x0_75", "--out", str(out)], check=True,
                   capture_output=True)
    state = paddle.load(str(out))
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["backbone_keys"] == len(state) > 100 and all(k.startswith("backbone.") for k in state)
    exported = export_tensors(Path("demo/models/picodet_s_shapes"))
    means = [k for k in state if k.endswith("._mean")]
    assert means and all(any(np.array_equal(np.array(state[k]), v) for v in exported.values()) for k in means[:3])


def test_strided_lcnet_tells_fpn_its_strides():
    import paddle

    from ptqdet.demo.backbone import register_ppdet_backbones

    register_ppdet_backbones()
    from ptqdet.demo import backbone

    net = backbone.StridedLCNet(scale=0.75, feature_maps=[3, 4, 5])
    shapes = net.out_shape
    outs = net({"image": paddle.zeros([1, 3, 160, 160])})
    assert [s.stride for s in shapes] == [8, 16, 32] == [160 // o.shape[-1] for o in outs]
    assert [s.channels for s in shapes] == [o.shape[1] for o in outs]


def test_pretrained_backbone_in_train_key_and_configs(tmp_path, monkeypatch):
    from ppdet.core.workspace import load_config

    from ptqdet.config import _reset_ppdet_workspace
    from ptqdet.demo import backbone

    export = tmp_path / "export"
    export.mkdir()
    for name in ("model.pdmodel", "model.pdiparams"):
        (export / name).write_bytes(b"1")
    monkeypatch.setitem(backbone.SOURCES, "fake", backbone.Source("fake", str(export), "c.yml", "Fake"))
    arch = _arch(tmp_path, "epoch: 4\n")
    with_backbone = zoo.ZooArch("m", "M", source_config=arch.source_config, backbone="fake")
    key = zoo.train_key(with_backbone, "d")
    assert key != zoo.train_key(arch, "d")
    (export / "model.pdiparams").write_bytes(b"2")  # the demo model retrained: train again
    assert zoo.train_key(with_backbone, "d") != key
    for a in zoo.ZOO:
        if a.backbone:
            _reset_ppdet_workspace()
            cfg = load_config(str(a.train_config))
            assert Path(cfg.pretrain_weights) == backbone.stable_path(a.backbone), a.name


def test_rows_show_only_records_of_the_current_configs():
    arch = zoo.ZooArch("ppyolo_tiny", "P")
    results = {"train": {"key": "k", "done": True, "weights": "w/3", "epochs_done": 4}}
    results["export"] = {"key": zoo.step_key(arch, "export", "k", results), "done": True}
    results["measure"] = {"key": zoo.step_key(arch, "measure", "k", results), "done": True, "rows": []}
    assert zoo.current_results(arch, results, "k") == results
    assert zoo.current_results(arch, results, "other") == {}  # trained with another config: not its row
    stale = {**results, "measure": {**results["measure"], "key": "old"}}
    assert sorted(zoo.current_results(arch, stale, "k")) == ["export", "train"]
    running = {"train": {"key": "k", "done": False, "epochs_done": 1}, "measure": results["measure"]}
    assert zoo.current_results(arch, running, "k") == {"train": running["train"]}


def test_rows_left_out_without_a_record(tmp_path):
    """A cache without an architecture's record (a fresh checkout) leaves its row alone."""
    arch = zoo.ZooArch("ppyolo_tiny", "P", source_config=str(tmp_path / "c.yml"))
    (tmp_path / "c.yml").write_text("epoch: 4\n")
    assert zoo.collect_rows((arch,), tmp_path, data_digest="d") == {}
    zoo.save_results(arch, {}, tmp_path)
    rows = zoo.collect_rows((arch,), tmp_path, data_digest="d")
    assert rows["ppyolo_tiny"]["zoo"]["status"] == "not run yet"
