"""Trial models built from one calibration.

PTQ runs once (all layers quantized) and is saved in paddleslim's fake-quant form:

    x -> fake_quantize_*(x) -> x.quantized -> conv2d(Filter=int8 values) -> y -> fake_*dequantize*(y) -> y.dequantized

Putting a layer back to float is a rewiring of that program: the conv reads x again, uses
the FP32 weights (kept in the scope under `<weight>@fp32`), and its consumers read y
instead of y.dequantized. Every other layer keeps the scales of the one calibration, so a
trial model costs a copy of the program's desc, not a calibration.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..files import ModelFiles
from ..paddle_static import (
    ACT_QUANT_PREFIXES,
    DEQUANT_PREFIXES,
    WEIGHT_SLOTS,
    ProgramRunner,
    load_static_model,
    static_mode,
)

RUNNERS_KEPT = 4  # (program, fetch) runners kept: each holds its executor's memory


@dataclass
class Layer:
    weight: str  # weight name, e.g. conv2d_1.w_0 (what skip_tensor_list holds)
    op_type: str
    uses: int = 1  # ops sharing this weight (PP-YOLOE's DFL projection conv runs once per level)


class QuantGraph:
    """A calibrated fake-quant program plus the FP32 weights, able to revert any layer set."""

    def __init__(self, quant_files: ModelFiles, fp32_files: ModelFiles, place=None):
        import paddle

        self.place = place or paddle.CPUPlace()
        self.quant_files, self.fp32_files = quant_files, fp32_files  # what parallel.py ships to its workers
        # Plain CPU kernels, not oneDNN: every trial program is new to oneDNN, which builds and
        # caches its primitives again for each one and never frees them (memory grows with every
        # trial until a full ranking runs out of it); plain kernels keep the memory flat.
        paddle.set_flags({"FLAGS_use_mkldnn": False})
        with static_mode():
            self.scope = paddle.static.Scope()
            self.exe = paddle.static.Executor(self.place)
            with paddle.static.scope_guard(self.scope):
                self.program, self.feed_names, self.fetch_targets = load_static_model(quant_files, self.exe)
            self.layers = self._find_layers()
            self._load_fp32_weights(fp32_files)
        self.pre_nms = self._pre_nms_vars()
        self._runners: list[tuple[Any, tuple[str, ...], ProgramRunner]] = []  # the last few, newest last

    def _find_layers(self) -> dict[str, Layer]:
        ops = self.program.global_block().ops
        self.float_of: dict[str, str] = {}  # quantized activation -> the float one it came from
        self.dequant_of: dict[str, str] = {}  # layer output -> its dequantized output
        for op in ops:
            if op.type.startswith(ACT_QUANT_PREFIXES):
                self.float_of[op.output("Out")[0]] = op.input("X")[0]
            elif op.type.startswith(DEQUANT_PREFIXES):
                self.dequant_of[op.input("X")[0]] = op.output("Out")[0]
        layers: dict[str, Layer] = {}
        for op in ops:
            if op.type in WEIGHT_SLOTS and op.output_arg_names[0] in self.dequant_of:
                weight = op.input(WEIGHT_SLOTS[op.type][1])[0]
                if weight in layers:
                    layers[weight].uses += 1
                else:
                    layers[weight] = Layer(weight, op.type)
        return layers

    def _load_fp32_weights(self, fp32_files: ModelFiles) -> None:
        import paddle

        fp_scope = paddle.static.Scope()
        with paddle.static.scope_guard(fp_scope):
            load_static_model(fp32_files, self.exe)
        block = self.program.global_block()
        self.fp32_weights: dict[str, np.ndarray] = {}
        for weight in self.layers:
            value = np.array(fp_scope.find_var(weight).get_tensor())
            self.fp32_weights[weight] = value
            var = block.var(weight)
            block.create_var(name=f"{weight}@fp32", shape=var.shape, dtype=var.dtype, persistable=True)
            self.scope.var(f"{weight}@fp32").get_tensor().set(value, self.place)

    def _pre_nms_vars(self) -> list[str] | None:
        for op in self.program.global_block().ops:
            if op.type.startswith("multiclass_nms"):
                return [op.input("BBoxes")[0], op.input("Scores")[0]]
        return None

    def variant(self, reverted: set[str] | list[str]):
        """A program with the given layers (weight names) back in float."""
        import paddle

        with static_mode():  # programs are static; other stages may have left dygraph on
            return paddle.static.Program.parse_from_string(self.variant_desc(reverted).serialize_to_string())

    def runner(self, reverted: set[str] | list[str], fetch: list[str] | None = None) -> ProgramRunner:
        """A runner of the program with the given layers back in float (fetch: variable names,
        default the model's outputs). Each trial builds one: no Python program is made."""
        with static_mode():
            return ProgramRunner(self.variant_desc(reverted), self.feed_names, self._fetch_names(fetch), self.place,
                                 self.scope)

    def variant_desc(self, reverted: set[str] | list[str]):
        """A copy of the program's desc with the reverted layers reading float inputs and FP32 weights
        (their dequantize ops removed): edited in C++, which a Python clone of the program is not."""
        from paddle.base import core

        reverted = set(reverted)
        unknown = reverted - set(self.layers)
        if unknown:
            raise KeyError(f"not quantized layers: {sorted(unknown)}")
        desc = core.ProgramDesc(self.program.desc)
        block = desc.block(0)
        remove = []
        renames: dict[str, str] = {}
        for idx in range(block.op_size()):
            op = block.op(idx)
            if op.type() in WEIGHT_SLOTS:
                act_slot, w_slot = WEIGHT_SLOTS[op.type()]
                weight = op.input(w_slot)[0]
                if weight in reverted:
                    act = op.input(act_slot)[0]
                    op._rename_input(act, self.float_of.get(act, act))
                    op._rename_input(weight, f"{weight}@fp32")
                    out = op.output_arg_names()[0]
                    renames[self.dequant_of[out]] = out
            elif op.type().startswith(DEQUANT_PREFIXES) and op.output("Out")[0] in renames:
                remove.append(idx)
        for idx in range(block.op_size()):
            op = block.op(idx)
            for old in set(op.input_arg_names()) & set(renames):
                op._rename_input(old, renames[old])
        for idx in reversed(remove):
            block._remove_op(idx, idx + 1)
        return desc

    def _fetch_names(self, fetch: list[str] | None) -> list[str]:
        return list(fetch) if fetch is not None else [t.name for t in self.fetch_targets]

    def run(self, program, feed: dict[str, np.ndarray], fetch: list[str] | None = None) -> list[np.ndarray]:
        """`program`'s outputs (fetch: variable names; default the model's outputs) for one feed.
        The runners of the last few (program, fetch) pairs are kept: a program run on every batch
        is new to the executor only once."""
        fetch_names = tuple(self._fetch_names(fetch))
        runner = next((r for p, f, r in self._runners if p is program and f == fetch_names), None)
        if runner is None:
            with static_mode():
                runner = ProgramRunner(program.desc, self.feed_names, list(fetch_names), self.place, self.scope)
            self._runners = [*self._runners[-(RUNNERS_KEPT - 1):], (program, fetch_names, runner)]
        return runner.run(feed)

    def save(self, program, out_dir: Path) -> None:
        """Save a variant as an inference model (weights of reverted layers in float)."""
        import paddle

        with static_mode(), paddle.static.scope_guard(self.scope):
            feed_vars = [program.global_block().var(n) for n in self.feed_names]
            fetch_vars = [program.global_block().var(t.name) for t in self.fetch_targets]
            paddle.static.save_inference_model(str(out_dir / "model"), feed_vars, fetch_vars, self.exe,
                                               program=program)
