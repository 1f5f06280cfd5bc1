import pytest

from ptqdet.config import ConfigError, load_config
from conftest import write_config


def test_demo_config_loads_with_ptq_section(pico_cfg):
    assert pico_cfg.ptq.algo == "avg"
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


def test_skip_op_types_must_be_quantizable_op_types(tmp_path):
    assert load_config("configs/demo/picodet_s_ptq_deploy.yaml").skip_op_types == ["depthwise_conv2d"]
    path = write_config(tmp_path, "_BASE_: ['@DEMO@/picodet_s_ptq.yaml']\nskip_op_types: [matmul_v2]\n")
    with pytest.raises(ConfigError, match=r"skip_op_types \['matmul_v2'\] are not in PTQ.quantizable_op_type"):
        load_config(path)
    path = write_config(tmp_path, "_BASE_: ['@DEMO@/picodet_s_ptq.yaml']\nskip_op_types: depthwise_conv2d\n", "b.yaml")
    with pytest.raises(ConfigError, match=r"skip_op_types must be a list"):
        load_config(path)


def test_unknown_ptq_key_and_bad_algo(tmp_path):
    path = write_config(tmp_path, "_BASE_: ['@DEMO@/picodet_s_ptq.yaml']\nPTQ:\n  batch_num: 3\n")
    with pytest.raises(ConfigError, match=r"PTQ.batch_num"):
        load_config(path)
    path = write_config(tmp_path, "_BASE_: ['@DEMO@/picodet_s_ptq.yaml']\nPTQ:\n  algo: best\n", "b.yaml")
    with pytest.raises(ConfigError, match=r"PTQ.algo 'best'"):
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
