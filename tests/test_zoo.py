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
