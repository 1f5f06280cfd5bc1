"""ONNX export of FP32 and INT8 (QDQ) inference models through paddle2onnx.

A model exported with NMS inside (PicoDet) is first cut before its `multiclass_nms3` op: the
ONNX graph ends at the pre-NMS boxes [B, M, 4] and scores [B, C, M], and the NMS settings of
the cut op are stored beside it (`export.json`), so that ptqdet.backends applies the very
same NMS on any runtime (OpenVINO cannot compile paddle2onnx's NMS: it gets its own
MulticlassNms appended; ONNX Runtime's output goes through PaddleDetection's op). A model exported
without NMS (PP-YOLOE, exclude_nms=True) is converted as it is.

An INT8 (QDQ) model is exported, by default, as its float program plus QDQ nodes that ptqdet
writes from the model's integer weights and scales (ptqdet.qdq): the ONNX model computes what
Paddle Inference runs in INT8. `qdq="paddle2onnx"` keeps paddle2onnx's own conversion of the
QDQ ops (for comparison: it quantizes more than the model does, see ptqdet.qdq).

After paddle2onnx, ptqdet.onnx_graph rewrites what the runtimes run slowly into the same
computation (FP32 and INT8 alike; `export.json` lists them under `rewrites`).

paddle2onnx runs in a child process: on some graphs it aborts the whole process (e.g.
"Require the scale >= 0" on PicoDet's QDQ model with paddle2onnx 1.3.1); the child's last
error line becomes an ExportError naming the model.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .config import ConfigError, NMSSettings
from .files import ModelFiles, check_output_dir
from .onnx_graph import rewrite_onnx
from .paddle_static import LoadedProgram, atomic_dir, loaded_program
from .program import (
    CONTROL_FLOW_OPS,
    NMS_OP_TYPES,
    OpInfo,
    is_quantized,
    needed_ops,
    post_process_split,
    program_info,
    read_ops,
)
from .qdq import QDQ_FORMAT, QDQExportError, QuantizedLayer, insert_qdq, strip_qdq

EXPORT_META = "export.json"
ONNX_FILE = "model.onnx"
# an OpenVINO IR (model.xml + model.bin) in place of model.onnx: a model another tool quantized
# from ptqdet's FP32 export (NNCF, ptqdet.peers); it runs on OpenVINO only, with the export's NMS
IR_FILE = "model.xml"
# the Paddle post-process of a model whose post-process paddle2onnx cannot convert (control flow)
POST_PROCESS_DIR = "post_process"
DEFAULT_OPSET = 13
# INT8: "ptqdet" writes the QDQ nodes itself (ptqdet.qdq: what Paddle Inference runs in INT8);
# "paddle2onnx" lets paddle2onnx convert the QDQ model's own quantize/dequantize ops
QDQ_MODES = ("ptqdet", "paddle2onnx")


class ExportError(RuntimeError):
    """paddle2onnx (or the cut before NMS) failed for one model; the message holds its error."""


class FakeQuantModelError(ExportError, ConfigError):
    """An INT8 model in fake-quant form (PTQ.onnx_format: False) given to the ONNX export, or to
    a runtime that runs the export (OpenVINO, ONNX Runtime): the user's choice of form, not a
    converter failure, so a ConfigError too (one line, exit code 2 in the scripts)."""


def fake_quant_message(model_dir: Path) -> str:
    return (f"{model_dir} is an INT8 model in fake-quant form (made with PTQ.onnx_format: False), which the ONNX "
            "export, OpenVINO and ONNX Runtime cannot run (they need its QDQ form): quantize with "
            "`PTQ.onnx_format: True`, as configs/demo/*_ptq_deploy.yaml do, or run this model with --backend paddle")


@dataclass
class OnnxExport:
    """An exported ONNX model and what is needed to run it like the Paddle model."""

    onnx_path: Path
    source: str  # the Paddle model folder it came from
    precision: str  # FP32 or INT8
    input_names: list[str]
    output_names: list[str]
    nms: NMSSettings | None  # NMS cut from the model, for the runtime to apply (None: outputs are the model's)
    opset: int
    paddle2onnx: str
    qdq: str | None = None  # INT8: who wrote the QDQ nodes (QDQ_MODES)
    quantized_layers: int | None = None  # INT8 with qdq "ptqdet": Conv nodes with QDQ
    qdq_format: str | None = None  # INT8 with qdq "ptqdet": ptqdet.qdq.QDQ_FORMAT of the writer
    # a post-process with control flow left in Paddle (POST_PROCESS_DIR beside the ONNX model): its
    # inputs, the ONNX model's outputs in order, then model inputs (None: none)
    post_process_inputs: list[str] | None = None
    # graph rewrites applied after paddle2onnx (ptqdet.onnx_graph): rewrite -> places changed
    rewrites: dict[str, int] | None = None

    @property
    def post_process_dir(self) -> Path:
        return self.onnx_path.parent / POST_PROCESS_DIR

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["onnx_path"] = self.onnx_path.name
        return data


def load_export(path: str | Path) -> OnnxExport:
    """An export folder (model.onnx + export.json) or a model.onnx inside one; model.xml
    (an OpenVINO IR, IR_FILE) in place of model.onnx too."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    meta_path = folder / EXPORT_META
    model_file = next((folder / f for f in (ONNX_FILE, IR_FILE) if (folder / f).is_file()), None)
    if model_file is None or not meta_path.is_file():
        raise ConfigError(f"not an ONNX export of ptqdet (needs {ONNX_FILE} or {IR_FILE}, and {EXPORT_META}): {folder}")
    try:
        data = json.loads(meta_path.read_text())
        nms = NMSSettings(**data["nms"]) if data.get("nms") else None
        return OnnxExport(onnx_path=model_file, source=data["source"], precision=data["precision"],
                          input_names=list(data["input_names"]), output_names=list(data["output_names"]), nms=nms,
                          opset=int(data["opset"]), paddle2onnx=data["paddle2onnx"], qdq=data.get("qdq"),
                          quantized_layers=data.get("quantized_layers"), qdq_format=data.get("qdq_format"),
                          post_process_inputs=data.get("post_process_inputs"), rewrites=data.get("rewrites"))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{meta_path} is truncated or not an export.json of ptqdet ({type(exc).__name__}: "
                          f"{exc}): export the model again with export_onnx.py") from exc


def is_onnx_export(path: str | Path) -> bool:
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    return (folder / EXPORT_META).is_file() and any((folder / f).is_file() for f in (ONNX_FILE, IR_FILE))


def _nms_settings(attrs: dict[str, Any], op_type: str, num_classes: int | None = None) -> NMSSettings:
    """The NMS ptqdet.postprocess.multiclass_nms can reproduce; refuse others clearly.
    num_classes: the scores' class count; a background_label outside [0, num_classes) (YOLOv3 and
    PP-YOLO exports set it to num_classes) drops no class, as -1 does; one inside (SSD's
    background score) is dropped, as Paddle's op does."""
    if op_type != "multiclass_nms3":
        raise ExportError(f"cannot move {op_type} out of the model: only multiclass_nms3 is supported")
    background = int(attrs.get("background_label", -1))
    if num_classes is not None and num_classes > 0 and not 0 <= background < num_classes:
        background = -1
    if not attrs.get("normalized", True) or background < -1 or attrs.get("nms_eta", 1.0) != 1.0:
        raise ExportError(f"the model's NMS has normalized={attrs.get('normalized')}, background_label="
                          f"{attrs.get('background_label')}, nms_eta={attrs.get('nms_eta')}; ptqdet's NMS "
                          "supports normalized=True, nms_eta=1.0 only: evaluate and deploy this "
                          "model on Paddle Inference (--backend paddle), which runs its NMS inside")
    # the attributes are float32: round away the float32 noise (0.025 reads 0.02500000037)
    return NMSSettings(score_threshold=round(float(attrs["score_threshold"]), 6),
                       nms_threshold=round(float(attrs["nms_threshold"]), 6),
                       nms_top_k=int(attrs["nms_top_k"]), keep_top_k=int(attrs["keep_top_k"]),
                       background_label=background)


@dataclass
class PreparedProgram:
    """What prepare_program made of a model."""

    files: ModelFiles  # the model paddle2onnx converts
    nms: NMSSettings | None  # the NMS cut from its end, for the runtime to apply
    layers: list[QuantizedLayer]  # strip: the quantized layers, for insert_qdq
    # the post-process left in Paddle (saved in post_process_dir): its inputs, the converted
    # model's outputs first, then model inputs; None: no post-process left out
    post_process_inputs: list[str] | None = None


def prepare_program(files: ModelFiles, out_dir: Path, strip: bool, ops: list[OpInfo] | None = None,
                    post_process_dir: Path | None = None) -> PreparedProgram:
    """The Paddle model paddle2onnx converts: cut before its NMS op (if it has one), its prior
    boxes folded (fold_prior_boxes) and, with `strip`, turned into its float program
    (ptqdet.qdq.strip_qdq, which also returns the quantized layers). The model as it is when
    none applies; otherwise saved in out_dir. With `post_process_dir`, a model whose
    post-process holds control flow (ptqdet.program.post_process_split; paddle2onnx converts
    none) is cut where its network ends instead, and the post-process (NMS included) saved
    there as a Paddle model of its own.
    `ops`: the model's ops, if already read."""
    ops = read_ops(files) if ops is None else ops
    has_nms = any(op.type in NMS_OP_TYPES for op in ops)
    loops = post_process_dir is not None and any(op.type in CONTROL_FLOW_OPS for op in ops)
    if not has_nms and not strip and not loops and not any(op.type == "prior_box" for op in ops):
        return PreparedProgram(files, None, [])
    try:
        with loaded_program(files) as loaded:
            block = loaded.program.global_block()
            layers = strip_qdq(loaded.program, loaded.scope, loaded.place) if strip else []
            fold_prior_boxes(loaded)
            fetch_names = [v.name for v in loaded.fetch_vars]
            split = post_process_split(program_info(loaded.program.desc)) if loops else None
            renamed = _free_fetch_names(block)
            nms = None
            if split is not None:
                post_process = LoadedProgram(loaded.program.clone(), loaded.feed_names, loaded.fetch_vars,
                                             loaded.scope, loaded.exe, loaded.place)
                post_process.save(post_process_dir, [block.var(renamed.get(n, n)) for n in fetch_names],
                                  split.post_process_inputs)
                loaded.save(out_dir, [block.var(n) for n in split.network_outputs], split.network_inputs)
                return PreparedProgram(ModelFiles(out_dir, "model.pdmodel", "model.pdiparams"), None, layers,
                                       split.post_process_inputs)
            if has_nms:
                nms_ops = [op for op in block.ops if op.type in NMS_OP_TYPES]
                if len(nms_ops) != 1:
                    raise ExportError(f"{files.model_path}: expected one NMS op, found {len(nms_ops)}")
                op = nms_ops[0]
                fetch = [block.var(op.input("BBoxes")[0]), block.var(op.input("Scores")[0])]
                scores_shape = list(fetch[1].shape)
                nms = _nms_settings({name: op.attr(name) for name in op.attr_names}, op.type,
                                    scores_shape[1] if len(scores_shape) == 3 else None)
            else:
                fetch = [block.var(renamed.get(name, name)) for name in fetch_names]
            loaded.save(out_dir, fetch)
    except QDQExportError as exc:
        raise ExportError(f"{files.model_dir}: {exc}") from exc
    return PreparedProgram(ModelFiles(out_dir, "model.pdmodel", "model.pdiparams"), nms, layers)


def fold_prior_boxes(loaded: Any) -> int:
    """Replace the program's prior_box ops (SSD's anchors; paddle2onnx cannot convert them) by
    their outputs as parameters: they depend only on the input size, which must then be fixed
    in the export. Returns how many ops it folded."""
    import numpy as np
    from paddle.base.data_feeder import convert_dtype

    block = loaded.program.global_block()
    indices = [i for i, op in enumerate(block.ops) if op.type == "prior_box"]
    if not indices:
        return 0
    feed = {}
    for name in loaded.feed_names:
        var = block.var(name)
        shape = [1 if i == 0 and d < 0 else d for i, d in enumerate(var.shape)]
        if any(d < 0 for d in shape):
            raise ExportError(f"the model's prior_box ops (SSD anchors) are written into the ONNX model for one "
                              f"input size, and its input {name} has shape {list(var.shape)}: export it from "
                              "PaddleDetection with a fixed TestReader image_shape")
        feed[name] = np.ones(shape, dtype=convert_dtype(var.dtype))
    outputs = [name for i in indices for name in block.ops[i].output_arg_names]
    values = loaded.exe.run(loaded.program, feed=feed, fetch_list=outputs, return_numpy=True)
    block._sync_with_cpp()  # noqa: SLF001 - once, as ptqdet.qdq.strip_qdq
    for i in reversed(indices):
        block._remove_op(i, sync=False)  # noqa: SLF001
    for name, value in zip(outputs, values):
        block.var(name).persistable = True
        loaded.scope.var(name).get_tensor().set(np.asarray(value), loaded.place)
    return len(indices)


def _free_fetch_names(block: Any) -> dict[str, str]:
    """save_inference_model names its fetch scale ops save_infer_model/scale_<i>: free those
    names in a loaded model's block (its old fetch ops are pruned anyway); returns old -> new."""
    renamed = {}
    for var_name in [v for v in block.vars if v.startswith("save_infer_model/")]:
        renamed[var_name] = f"orig_{var_name.replace('/', '_')}"
        block._rename_var(var_name, renamed[var_name])  # noqa: SLF001
    return renamed


def cut_program(files: ModelFiles, out_dir: Path, fetch_names: list[str]) -> ModelFiles:
    """The model with `fetch_names` (variables of its program) as its outputs and the inputs
    they need as its inputs, saved in out_dir."""
    with loaded_program(files) as loaded:
        block = loaded.program.global_block()
        renamed = _free_fetch_names(block)
        fetch = [renamed.get(name, name) for name in fetch_names]
        ops = [(op.input_arg_names, op.output_arg_names) for op in block.ops]
        needed = {n for i in needed_ops(ops, set(fetch)) for n in ops[i][0]}
        loaded.save(out_dir, [block.var(name) for name in fetch], [n for n in loaded.feed_names if n in needed])
    return ModelFiles(out_dir, "model.pdmodel", "model.pdiparams")


def _paddle2onnx_version() -> str:
    try:
        import paddle2onnx
    except ImportError as exc:
        raise ConfigError("ONNX export needs paddle2onnx, which is not installed: "
                          "pip install paddle2onnx==1.3.1 (see requirements.txt)") from exc
    return str(paddle2onnx.__version__)


def _last_error(text: str) -> str:
    """The line of paddle2onnx's output that says what went wrong."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    unsupported = [line.split("including", 1)[1].strip(" ,") for line in lines
                   if "not supported yet" in line and "including" in line]
    if unsupported:  # "Oops, there are some operators not supported yet, including while,write_to_array,"
        ops = ", ".join(op for op in unsupported[-1].split(",") if op)
        return f"operators paddle2onnx cannot convert: {ops}"[:400]
    for marker in ("Require", "Error", "error", "Cannot", "Failed", "failed", "abort"):
        hits = [line for line in lines if marker in line]
        if hits:
            return hits[-1][:400]
    return (lines[-1] if lines else "no output")[:400]


# paddle2onnx's converter is a C++ extension that needs nothing of Paddle; its package and command
# import all of Paddle first (seconds per export). The child loads the extension alone and calls
# it as `python -m paddle2onnx.command` does (the same ONNX bytes).
_P2O_CHILD = """
import importlib.machinery, importlib.util, sys
so, model, params, out, opset, external = sys.argv[1:7]
name = "paddle2onnx.paddle2onnx_cpp2py_export"
spec = importlib.util.spec_from_loader(name, importlib.machinery.ExtensionFileLoader(name, so))
converter = importlib.util.module_from_spec(spec)
spec.loader.exec_module(converter)
onnx_bytes = converter.export(model, params, int(opset), True, True, True, True, True, {}, "onnxruntime", "",
                              external, False)
with open(out, "wb") as f:
    f.write(onnx_bytes)
"""


def _paddle2onnx_extension() -> Path | None:
    """The converter extension of the installed paddle2onnx (None: not found where 1.x keeps it)."""
    import importlib.util

    spec = importlib.util.find_spec("paddle2onnx")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("paddle2onnx_cpp2py_export*.so"))
    return found[0] if found else None


def run_paddle2onnx(files: ModelFiles, onnx_path: Path, opset: int = DEFAULT_OPSET, timeout: float = 600,
                    label: str | None = None) -> None:
    """paddle2onnx in a child process (it can abort); ExportError with its message on failure."""
    extension = _paddle2onnx_extension()
    if extension is not None:
        cmd = [sys.executable, "-c", _P2O_CHILD, str(extension), str(files.model_path), str(files.params_path),
               str(onnx_path), str(opset), str(Path(onnx_path).parent / "external_data")]
    else:
        cmd = [sys.executable, "-m", "paddle2onnx.command", "--model_dir", str(files.model_dir),
               "--model_filename", files.model_filename, "--params_filename", files.params_filename,
               "--save_file", str(onnx_path), "--opset_version", str(opset), "--enable_onnx_checker", "True",
               "--enable_auto_update_opset", "True"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)  # noqa: S603 - our own interpreter
    if proc.returncode != 0 or not onnx_path.is_file():
        raise ExportError(f"paddle2onnx failed on {label or files.model_dir} (exit {proc.returncode}): "
                          f"{_last_error(proc.stderr + proc.stdout)}")


def _onnx_io(onnx_path: Path) -> tuple[list[str], list[str], int]:
    import onnx

    model = onnx.load(str(onnx_path))
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in initializers]
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return inputs, [o.name for o in model.graph.output], opset


def export_onnx(files: ModelFiles, out_dir: str | Path, opset: int = DEFAULT_OPSET, qdq: str = "ptqdet",
                inside_model: bool = False) -> OnnxExport:
    """Export one Paddle inference model to out_dir/model.onnx (+ export.json); atomic: out_dir
    appears only when the export is complete. INT8 models are QDQ models (PTQ.onnx_format);
    `qdq` says who writes their ONNX QDQ nodes (QDQ_MODES). inside_model: out_dir may lie in
    the model's folder (post_quant.py --deploy: the runtime form beside the INT8 model). Raises
    ExportError when the export fails."""
    out_dir = Path(out_dir)
    check_output_dir(out_dir, None if inside_model else files.model_dir)
    if qdq not in QDQ_MODES:
        raise ConfigError(f"qdq must be one of {QDQ_MODES}, not {qdq!r}")
    version = _paddle2onnx_version()
    ops = read_ops(files)
    quantized = is_quantized(files, ops)
    if quantized and not any(op.type == "quantize_linear" for op in ops):
        raise FakeQuantModelError(fake_quant_message(files.model_dir))
    strip = quantized and qdq == "ptqdet"
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.", dir=out_dir.parent) as tmp, \
            atomic_dir(out_dir) as staged:
        prepared = prepare_program(files, Path(tmp) / "paddle", strip, ops, post_process_dir=staged / POST_PROCESS_DIR)
        source, nms, layers = prepared.files, prepared.nms, prepared.layers
        onnx_path = staged / ONNX_FILE
        steps = [s for s, on in (("cut before NMS", nms is not None), ("float program", strip),
                                 ("post-process left in Paddle", prepared.post_process_inputs is not None)) if on]
        run_paddle2onnx(source, onnx_path, opset,
                        label=str(files.model_dir) + (f" ({', '.join(steps)})" if steps else ""))
        rewrites = rewrite_onnx(onnx_path)
        written = None
        if strip:
            try:
                written = insert_qdq(onnx_path, layers)
            except QDQExportError as exc:
                raise ExportError(f"{files.model_dir}: {exc}") from exc
        inputs, outputs, real_opset = _onnx_io(onnx_path)
        export = OnnxExport(onnx_path=out_dir / ONNX_FILE, source=str(files.model_dir),
                            precision="INT8" if quantized else "FP32", input_names=inputs,
                            output_names=outputs, nms=nms, opset=real_opset, paddle2onnx=version,
                            qdq=qdq if quantized else None, quantized_layers=written,
                            qdq_format=QDQ_FORMAT if strip else None,
                            post_process_inputs=prepared.post_process_inputs, rewrites=rewrites)
        (staged / EXPORT_META).write_text(json.dumps(export.to_dict(), indent=2) + "\n")
    return export


def check_onnx(path: str | Path) -> None:
    """onnx.checker on an exported model (full check, with shape inference)."""
    import onnx

    onnx.checker.check_model(str(path), full_check=True)
