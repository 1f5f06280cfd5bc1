from pathlib import Path

import pytest

from conftest import write_config
from ptqdet.config import ConfigError, load_config


def test_demo_config_loads_with_ptq_section(pico_cfg):
    assert pico_cfg.ptq.algo == "avg" and pico_cfg.ptq.equalize_depthwise
    assert pico_cfg.ptq.batch_nums == 8
    assert pico_cfg.feed_names == {"image": "image", "scale_factor": "scale_factor"}
    assert not pico_cfg.nms_outside
    assert pico_cfg.has_dataset("FastEvalDataset")


def test_ppyoloe_arch_means_nms_outside(yoloe_cfg):
    assert yoloe_cfg.nms_outside
    assert yoloe_cfg.nms.keep_top_k == 300


def test_analysis_config_inherits_the_same_ptq_section():
    ptq = load_config("configs/demo/picodet_s_ptq.yaml").ptq
    ana = load_config("configs/demo/picodet_s_analysis.yaml")
    assert ana.ptq == ptq
    assert ana.get_target_quant_model


def test_unknown_key_is_named_with_a_suggestion(tmp_path):
    path = write_config(tmp_path, "_BASE_: ['@DEMO@/picodet_s_ptq.yaml']\nskip_tensor_lst: []\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'skip_tensor_lst'.*skip_tensor_list"):
        load_config(path)


def test_deploy_config_quantizes_depthwise_layers_after_equalizing_their_inputs():
    cfg = load_config("configs/demo/picodet_s_ptq_deploy.yaml")
    assert cfg.skip_op_types == [] and cfg.ptq.equalize_depthwise and cfg.ptq.onnx_format


@pytest.mark.parametrize("text, match", [
    ("PTQ:\n  batch_num: 3\n", r"PTQ.batch_num"),
    ("PTQ:\n  algo: best\n", r"PTQ.algo 'best'"),
    ("skip_op_types: [matmul_v2]\n", r"skip_op_types \['matmul_v2'\] are not in PTQ.quantizable_op_type"),
    ("skip_op_types: depthwise_conv2d\n", r"skip_op_types must be a list"),
])
def test_bad_values_are_named(tmp_path, text, match):
    path = write_config(tmp_path, f"_BASE_: ['@DEMO@/picodet_s_ptq.yaml']\n{text}")
    with pytest.raises(ConfigError, match=match):
        load_config(path)


def test_missing_file_and_bad_target(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    path = write_config(tmp_path, "_BASE_: ['@DEMO@/picodet_s_ptq.yaml']\ntarget_metric: 25\n")
    with pytest.raises(ConfigError, match="target_metric"):
        load_config(path)


def test_loads_do_not_leak_keys_between_configs(tmp_path):
    path = write_config(tmp_path, "_BASE_: ['@DEMO@/picodet_s_ptq.yaml']\nnum_classes: 3\n")
    assert load_config(path).num_classes == 3
    assert load_config("configs/demo/picodet_s_ptq.yaml").num_classes == 6


def test_a_config_kept_from_an_earlier_load_reads_its_own_dataset_and_transforms(tmp_path):
    """ppdet keeps one global config: a later load must not give an earlier config its reader (CI:
    the throughput test's 256-pixel demo model was fed a 160-pixel coverage image)."""
    from ptqdet.data import latency_feed

    demo = load_config("configs/demo/picodet_s_ptq.yaml")
    small = load_config(write_config(tmp_path, "_BASE_: ['@DEMO@/picodet_s_ptq.yaml']\nEvalReader:\n"
                                     "  sample_transforms:\n  - Decode: {}\n"
                                     "  - Resize: {interp: 2, target_size: [160, 160], keep_ratio: False}\n"
                                     "  - Permute: {}\n  batch_size: 2\n"))
    assert latency_feed(demo)["image"].shape[-2:] == (256, 256)
    assert latency_feed(small)["image"].shape[-2:] == (160, 160)
    assert demo.ppdet["EvalReader"]["batch_size"] == 8 and small.ppdet["EvalReader"]["batch_size"] == 2
    assert latency_feed(demo)["image"].shape[-2:] == (256, 256)


def test_docs_config_reference_is_generated_from_the_code():
    from ptqdet.config_doc import reference_markdown

    assert Path("docs/config.md").read_text() == reference_markdown(), (
        "run: python -m ptqdet.config_doc > docs/config.md")


def test_base_chain_problems_name_the_chain_of_files(tmp_path):
    (tmp_path / "a.yaml").write_text("_BASE_: ['sub/b.yml']\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.yml").write_text("_BASE_: ['../c.yml']\n")
    (tmp_path / "c.yml").write_text("_BASE_: ['a.yaml']\n")
    with pytest.raises(ConfigError, match=r"_BASE_ cycle: .*a\.yaml -> sub/b\.yml -> c\.yml -> a\.yaml \("):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yml").write_text("_BASE_: ['gone.yml']\n")
    with pytest.raises(ConfigError, match=r"_BASE_ file not found: .*gone\.yml \(chain: .*a\.yaml -> sub/b\.yml -> "
                                          r"c\.yml -> gone\.yml\)"):
        load_config(tmp_path / "a.yaml")


@pytest.mark.parametrize("text, match", [
    ("onnx_format: True\n", r"'onnx_format' at the top level: it is a setting of the PTQ section; indent it under"),
    ("batch_size: 4\n", r"'batch_size' at the top level: it is a setting of the PTQ section or of the EvalReader"),
    ("anno_path: a.json\n", r"'anno_path' at the top level: it is a setting of TrainDataset, EvalDataset"),
    ("NMS:\n  algo: KL\n", r"'NMS.algo': it is a setting of the PTQ section"),
    ("PTQ:\n  model_dir: x\n", r"'PTQ.model_dir': model_dir is a top-level key"),
])
def test_a_key_in_the_wrong_section_names_its_section(tmp_path, text, match):
    path = write_config(tmp_path, f"_BASE_: ['@DEMO@/picodet_s_ptq.yaml']\n{text}")
    with pytest.raises(ConfigError, match=match):
        load_config(path)
