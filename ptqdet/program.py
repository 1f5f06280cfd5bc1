"""What an inference model's program holds, read without running it: ops, parameters,
inputs; the up-front checks of a detector export; which layers a quantized model quantizes."""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .config import ConfigError, PTQDetConfig
from .files import ModelFiles
from .paddle_static import QUANT_OP_PREFIXES, WEIGHT_SLOTS

# NMS ops of PaddleDetection exports (a model without one needs ptqdet's NMS: arch PPYOLOE)
NMS_OP_TYPES = ("multiclass_nms3", "multiclass_nms2", "multiclass_nms", "matrix_nms")
# bytes per element of Paddle's VarType data types (framework.proto), as stored in .pdiparams
PARAM_DTYPE_BYTES = {0: 1, 1: 2, 2: 4, 3: 8, 4: 2, 5: 4, 6: 8, 20: 1, 21: 1, 22: 2}


@dataclass(frozen=True)
class OpInfo:
    type: str
    inputs: dict[str, list[str]]
    outputs: dict[str, list[str]]


@dataclass(frozen=True)
class ProgramInfo:
    ops: list[OpInfo]
    persistables: frozenset[str]  # parameter names
    # shapes of the tensors stored in the params file, and of every variable the program feeds
    params: dict[str, tuple[int, ...]] = field(default_factory=dict)
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    output_shapes: tuple[tuple[int, ...], ...] = ()  # of the fetched variables, in fetch order

    @property
    def final_detections(self) -> bool:
        """The model outputs detections rows [N, 6] (class, score, box) and per-image counts
        without an NMS op: its post-processing keeps the top scores itself (DETR, CenterNet, TTFNet)."""
        return not self.has_nms and len(self.output_shapes) >= 2 and len(self.output_shapes[0]) == 2 \
            and self.output_shapes[0][-1] == 6

    @property
    def feed_names(self) -> list[str]:
        return [n for op in self.ops if op.type == "feed" for n in op.outputs.get("Out", [])]

    @property
    def num_outputs(self) -> int:
        return sum(op.type == "fetch" for op in self.ops)

    @property
    def has_nms(self) -> bool:
        return any(op.type in NMS_OP_TYPES for op in self.ops)


def read_program(files: ModelFiles) -> ProgramInfo:
    """The ops and parameters of the model's main block, read from the program file
    (no executor, works in static and dynamic mode). ConfigError when it is not a program."""
    from paddle.base import core

    try:
        desc = core.ProgramDesc(files.model_path.read_bytes())
    except ValueError as exc:  # paddle's InvalidArgument: the protobuf does not parse
        raise ConfigError(f"model file is not a Paddle program (truncated or corrupt?): {files.model_path}") from exc
    return program_info(desc)


def program_info(desc: Any) -> ProgramInfo:
    """The ProgramInfo of a program desc (a loaded program's `.desc`)."""
    from paddle.base import core

    block = desc.block(0)
    ops = []
    for i in range(block.op_size()):
        op = block.op(i)
        ops.append(OpInfo(op.type(), {n: list(op.input(n)) for n in op.input_names()},
                          {n: list(op.output(n)) for n in op.output_names()}))
    variables = [v for v in block.all_vars() if v.persistable()]
    params = {v.name(): tuple(v.shape()) for v in variables if v.type() == core.VarDesc.VarType.LOD_TENSOR}
    fed = [n for op in ops if op.type == "feed" for n in op.outputs.get("Out", [])]
    inputs = {n: tuple(block.var(n.encode()).shape()) for n in fed if block.has_var(n.encode())}
    fetched = [n for op in ops if op.type == "fetch" for n in op.inputs.get("X", [])]
    outputs = tuple(tuple(block.var(n.encode()).shape()) if block.has_var(n.encode()) else () for n in fetched)
    return ProgramInfo(ops, frozenset(v.name() for v in variables), params, inputs, outputs)


def check_params(files: ModelFiles, program: ProgramInfo) -> None:
    """ConfigError unless the params file holds exactly the program's parameters (Paddle's
    combined format: each tensor, in name order, as a header, a TensorDesc and its data)."""
    from google.protobuf.message import DecodeError
    from paddle.base.proto import framework_pb2

    data = files.params_path.read_bytes()
    corrupt = ConfigError(f"params file is truncated or corrupt: {files.params_path}")
    offset = 0

    def take(size: int) -> bytes:
        nonlocal offset
        if size < 0 or offset + size > len(data):
            raise corrupt
        offset += size
        return data[offset - size:offset]

    for name in sorted(program.params):
        take(4)  # version
        (lod_levels,) = struct.unpack("<Q", take(8))
        if lod_levels > 8:  # detector parameters have none; a large count is a corrupt header
            raise corrupt
        for _ in range(lod_levels):
            take(struct.unpack("<Q", take(8))[0])
        take(4)  # version
        desc = framework_pb2.VarType.TensorDesc()
        try:
            desc.ParseFromString(take(struct.unpack("<i", take(4))[0]))
        except DecodeError:
            raise corrupt from None
        shape = program.params[name]
        numel = int(np.prod(desc.dims, dtype=np.int64))
        if numel != int(np.prod(shape, dtype=np.int64)):  # scales: () in the params, (1,) in the program
            raise ConfigError(f"params file does not match the model ({name}: {tuple(desc.dims)} in the params, "
                              f"{shape} in the program): {files.params_path}")
        take(numel * PARAM_DTYPE_BYTES.get(desc.data_type, 4))
    if offset != len(data):
        raise corrupt


def check_model(files: ModelFiles, feed_names: list[str] | None = None, nms_outside: bool | None = None
                ) -> ProgramInfo:
    """Up-front checks of a detector export; ConfigError naming the file or key.
    feed_names: the model inputs the config feeds (input_list); nms_outside: the config's arch
    says the model has no NMS (PPYOLOE). Returns the program."""
    program = read_program(files)
    inputs = program.feed_names
    if not any(len(shape) == 4 for shape in program.input_shapes.values()) or program.num_outputs < 2:
        raise ConfigError(f"not a detector export (inputs {program.input_shapes}, {program.num_outputs} output(s); "
                          f"expected an image input [N, C, H, W] and box outputs): {files.model_path}")
    check_params(files, program)
    if feed_names is not None:
        unknown = [n for n in feed_names if n not in inputs]
        if unknown:
            raise ConfigError(f"input_list names {unknown}, which the model does not have (its inputs: {inputs}): "
                              f"{files.model_path}")
        unfed = [n for n in inputs if n not in feed_names]
        if unfed:
            raise ConfigError(f"input_list does not feed the model inputs {unfed}: {files.model_path}")
    if nms_outside is False and program.final_detections:
        return program  # detections without an NMS op (DETR, CenterNet, TTFNet): nothing to add
    if nms_outside is not None and nms_outside == program.has_nms:
        raise ConfigError(f"arch: the model {'has' if program.has_nms else 'has no'} NMS inside, so arch must "
                          f"{'not ' if program.has_nms else ''}be PPYOLOE: {files.model_path}")
    return program


def check_config_model(cfg: PTQDetConfig, files: ModelFiles) -> ProgramInfo:
    """check_model with what the config says about the model (input_list, arch)."""
    return check_model(files, list(cfg.feed_names.values()), cfg.nms_outside)


# ops that run a sub-block: paddle2onnx converts none of them (RetinaNet's and YOLOF's
# post-process loops over the images of a batch)
CONTROL_FLOW_OPS = ("while", "conditional_block", "conditional_block_infer")


@dataclass(frozen=True)
class PostProcessSplit:
    """A model whose post-process holds control flow, split where its network ends: the
    network (every op the weight layers' outputs need, each through its bias add) and the
    post-process (every other op)."""

    network_inputs: list[str]  # the model inputs the network reads
    network_outputs: list[str]  # what the network hands to the post-process, in program order
    post_process_inputs: list[str]  # network_outputs, then the model inputs the post-process reads


def post_process_split(program: ProgramInfo) -> PostProcessSplit | None:
    """The split of a model with control flow after its network; None for a model without
    control flow in its main block, or with it inside the network."""
    ops = program.ops
    if not any(op.type in CONTROL_FLOW_OPS for op in ops):
        return None
    producer = {name: i for i, op in enumerate(ops) for names in op.outputs.values() for name in names}
    users: dict[str, list[OpInfo]] = {}
    for op in ops:
        for name in {n for names in op.inputs.values() for n in names}:
            users.setdefault(name, []).append(op)

    def constant(name: str) -> bool:  # a parameter, or computed from parameters alone (a reshaped bias)
        if name in program.persistables:
            return True
        op = ops[producer[name]] if name in producer else None
        return op is not None and all(n in program.persistables for names in op.inputs.values() for n in names)

    def through_bias(name: str) -> str:  # past the fake quantization PTQ may put between, to the bias add
        following = users.get(name, [])
        if len(following) == 1 and following[0].type in ("quantize_linear", "dequantize_linear"):
            return through_bias(following[0].outputs["Y"][0])
        if len(following) == 1 and following[0].type == "elementwise_add" and constant(following[0].inputs["Y"][0]):
            return following[0].outputs["Out"][0]
        return name

    targets = {through_bias(out) for op in ops if op.type in WEIGHT_SLOTS
               for out in op.outputs.get("Output", op.outputs.get("Out", []))}
    network = _needed_ops(ops, targets, set())
    if any(ops[i].type in CONTROL_FLOW_OPS for i in network):
        return None
    made = {n for i in network for names in ops[i].outputs.values() for n in names}
    # the post-process: what the fetched outputs need beyond the network
    needed = _needed_ops(ops, {n for op in ops if op.type == "fetch" for n in op.inputs.get("X", [])}, network)
    read = [n for i in sorted(needed) for names in ops[i].inputs.values() for n in names]
    outputs = [n for n in dict.fromkeys(read) if n in made and n not in program.persistables]
    network_read = {n for i in network for names in ops[i].inputs.values() for n in names}
    return PostProcessSplit([n for n in program.feed_names if n in network_read], outputs,
                            outputs + [n for n in program.feed_names if n in set(read)])


def needed_ops(ops: list[tuple[list[str], list[str]]], outputs: set[str], excluded: set[int] = frozenset()
               ) -> set[int]:
    """Indices of the ops ((read, written) variable names each, in program order; not the
    excluded) that computing `outputs` runs: a backward pass in program order, so that an op
    writing the variable it reads (the scale ops of a model saved twice) leads on to the op
    before it."""
    live, needed = set(outputs), set()
    for i in reversed(range(len(ops))):
        read, written = ops[i]
        if i not in excluded and live & set(written):
            needed.add(i)
            live |= set(read)
    return needed


def _needed_ops(ops: list[OpInfo], outputs: set[str], excluded: set[int]) -> set[int]:
    """needed_ops on OpInfo (fetch ops left out)."""
    pairs = [([n for names in op.inputs.values() for n in names], [n for names in op.outputs.values() for n in names])
             for op in ops]
    return needed_ops(pairs, outputs, excluded | {i for i, op in enumerate(ops) if op.type == "fetch"})


def read_ops(files: ModelFiles) -> list[OpInfo]:
    return read_program(files).ops


def is_quantized(files: ModelFiles, ops: list[OpInfo] | None = None) -> bool:
    """`ops`: the model's ops, if already read."""
    return any(op.type.startswith(QUANT_OP_PREFIXES) for op in (read_ops(files) if ops is None else ops))


def quantized_layer_types(files: ModelFiles, ops: list[OpInfo] | None = None) -> set[str]:
    """Op types of the layers the model was quantized for (conv2d, matmul_v2, ...): weight
    layers that read the output of a quant/dequant op. `ops`: the model's ops, if already read."""
    ops = read_ops(files) if ops is None else ops
    quantized = {n for op in ops if op.type.startswith(QUANT_OP_PREFIXES) for out in op.outputs.values() for n in out}
    return {op.type for op in ops
            if op.type in WEIGHT_SLOTS and any(n in quantized for names in op.inputs.values() for n in names)}
