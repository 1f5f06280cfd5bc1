"""Paddle static-graph plumbing shared by the modules that edit, run or write programs.

- the static/dygraph mode switches (`static_mode`, `dynamic_mode`), restored on exit;
- `load_static_model` and `loaded_program`: an inference model loaded into its own scope;
- `ProgramRunner`: one program run many times on one scope, without Executor.run's per-program
  preparation;
- the op tables: which ops PTQ quantizes (and through which input slots) and the name
  prefixes of the quantize/dequantize ops paddleslim writes (fake-quant and QDQ forms);
- `model_digest`/`fingerprint`: what a cached result built from a model depends on;
- `atomic_dir`: an output folder that appears only complete.

Paddle is imported inside the functions: importing this module costs nothing.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .signals import check_interrupted

if TYPE_CHECKING:
    from .files import ModelFiles

# the layers PTQ quantizes: op type -> (activation slot, weight slot)
WEIGHT_SLOTS = {"conv2d": ("Input", "Filter"), "depthwise_conv2d": ("Input", "Filter"),
                "conv2d_transpose": ("Input", "Filter"), "mul": ("X", "Y"), "matmul": ("X", "Y"),
                "matmul_v2": ("X", "Y")}
# op types that mark a model as quantized (fake-quant or ONNX-style QDQ)
QUANT_OP_PREFIXES = ("fake_quantize", "fake_channel_wise", "fake_dequantize", "quantize_linear", "dequantize_linear")
# fake-quant form (paddleslim's default): x -> fake_quantize*(x) -> layer(int8 weights) -> fake_*dequantize*(y)
ACT_QUANT_PREFIXES = ("fake_quantize", "fake_channel_wise_quantize")
DEQUANT_PREFIXES = ("fake_dequantize", "fake_channel_wise_dequantize")
# ops that dequantize a weight itself (QDQ form, onnx_format, and fake quantize-dequantize)
WEIGHT_DEQUANT_PREFIXES = ("dequantize_linear", "fake_quantize_dequantize", "fake_channel_wise_quantize_dequantize")
# QDQ form (PTQ.onnx_format): a quantize_linear/dequantize_linear pair per quantized tensor
QDQ_OP_TYPES = ("quantize_linear", "dequantize_linear")


def weight_slot(op_type: str) -> str | None:
    """The input slot holding a quantizable layer's weight (None: PTQ does not quantize this op)."""
    slots = WEIGHT_SLOTS.get(op_type)
    return slots[1] if slots else None


@contextlib.contextmanager
def static_mode() -> Iterator[None]:
    """Paddle in static-graph mode inside the block, restored to the caller's mode after it."""
    import paddle

    was_dynamic = paddle.in_dynamic_mode()
    paddle.enable_static()
    try:
        yield
    finally:
        if was_dynamic:
            paddle.disable_static()


@contextlib.contextmanager
def dynamic_mode() -> Iterator[None]:
    """Paddle in dygraph mode inside the block, restored to the caller's mode after it."""
    import paddle

    was_static = not paddle.in_dynamic_mode()
    if was_static:
        paddle.disable_static()
    try:
        yield
    finally:
        if was_static:
            paddle.enable_static()


def _link_to(graph, node_in, node_out):
    """IrGraph.link_to without its assert (a set of the whole graph per call)."""
    node_in.append_output(node_out)
    node_out.append_input(node_in)


def _relink(old_node, new_node, op_node, side: str) -> None:
    """Move op_node's link on `side` ("input" or "output") from old_node to new_node."""
    other = "output" if side == "input" else "input"
    getattr(old_node, f"remove_{other}")(op_node)
    getattr(op_node, f"remove_{side}")(old_node)
    getattr(new_node, f"append_{other}")(op_node)
    getattr(op_node, f"append_{side}")(new_node)
    getattr(op_node, f"rename_{side}")(old_node.name(), new_node.name())


def _update_input_link(graph, old_input_node, new_input_node, op_node):
    """IrGraph.update_input_link without its assert."""
    _relink(old_input_node, new_input_node, op_node, "input")


def _update_output_link(graph, old_output_node, new_output_node, op_node):
    """IrGraph.update_output_link without its assert."""
    _relink(old_output_node, new_output_node, op_node, "output")


class _IndexedNodes(set):
    """A set of graph nodes with an index by name (persistable names are unique); a copy shares
    the index until either changes (the passes mostly read their copies)."""

    def __init__(self, nodes: Any = ()):
        super().__init__(nodes)
        self.by_name = {node.name(): node for node in self}
        self.shared = False

    def _own_index(self) -> None:
        if self.shared:
            self.by_name, self.shared = dict(self.by_name), False

    def add(self, node: Any) -> None:
        self._own_index()
        super().add(node)
        self.by_name[node.name()] = node

    def discard(self, node: Any) -> None:
        self._own_index()
        super().discard(node)
        if self.by_name.get(node.name()) is node:
            del self.by_name[node.name()]

    def remove(self, node: Any) -> None:
        if node not in self:
            raise KeyError(node)
        self.discard(node)

    def copy(self) -> _IndexedNodes:
        copied = _IndexedNodes.__new__(_IndexedNodes)
        set.__init__(copied, self)
        copied.by_name, copied.shared, self.shared = self.by_name, True, True
        return copied


@contextlib.contextmanager
def fast_ir_graph() -> Iterator[None]:
    """Paddle's IrGraph without its quadratic checks, meanwhile: PTQ's passes (the QDQ inserts
    of AddQuantDequantForInferencePass, QuantizationTransformPassV2) link nodes through
    link_to/update_*_link, which first assert that each node is in a set of the whole graph
    built anew for every call, and look a scale up in all_persistable_nodes(), also rebuilt per
    call, by a scan of its names (_find_node_by_name). Here the links skip those asserts (the
    passes link only nodes they hold) and the persistable nodes are read once per graph and kept,
    with an index by name, as nodes are created; any removal reads them again. The passes write
    the same program (tested)."""
    from paddle.base.framework import IrGraph

    saved = {name: getattr(IrGraph, name) for name in (
        "link_to", "update_input_link", "update_output_link", "all_persistable_nodes", "create_persistable_node",
        "create_var_node_from_desc", "safe_remove_nodes", "_find_node_by_name")}

    def persistables(self) -> _IndexedNodes:
        cached = self.__dict__.get("_ptqdet_persistables")
        if cached is None:
            cached = self.__dict__["_ptqdet_persistables"] = _IndexedNodes(saved["all_persistable_nodes"](self))
        return cached

    def all_persistable_nodes(self):
        return persistables(self).copy()

    def create_persistable_node(self, *args, **kwargs):
        node = saved["create_persistable_node"](self, *args, **kwargs)
        if "_ptqdet_persistables" in self.__dict__:
            persistables(self).add(node)
        return node

    def find_node_by_name(self, nodes, node_name):
        if isinstance(nodes, _IndexedNodes):
            found = nodes.by_name.get(node_name)
            assert found is not None, f"Cannot find the target node ({node_name})in the giving set."
            return found
        return saved["_find_node_by_name"](self, nodes, node_name)

    def forget(name):
        def method(self, *args, **kwargs):
            self.__dict__.pop("_ptqdet_persistables", None)
            return saved[name](self, *args, **kwargs)
        return method

    patched = {"link_to": _link_to, "update_input_link": _update_input_link, "update_output_link": _update_output_link,
               "all_persistable_nodes": all_persistable_nodes, "create_persistable_node": create_persistable_node,
               "create_var_node_from_desc": forget("create_var_node_from_desc"),
               "safe_remove_nodes": forget("safe_remove_nodes"), "_find_node_by_name": find_node_by_name}
    for name, method in patched.items():
        setattr(IrGraph, name, method)
    try:
        yield
    finally:
        for name, method in saved.items():
            setattr(IrGraph, name, method)


@contextlib.contextmanager
def observe_single_versions() -> Iterator[None]:
    """Paddle's AddQuantDequantForInferencePass (the last step of PTQ's `_update_program`, which
    writes a quantize/dequantize pair after each output it observed) without a pair on a variable
    that has more than one version in the graph: a name written again in place or carried around
    a loop (a per-image `while` in a detector's post-process, whose body rewrites the boxes it
    reads). The pass finds readers by name, so the pair on one version was linked into the
    readers of every version; in a loop body that closed a cycle and `to_program` failed
    ("Generated graph shouldn't contain cycle"). Such variables keep no scale; nothing else
    changes."""
    from paddle.static.quantization.quantization_pass import AddQuantDequantForInferencePass

    apply, insert = AddQuantDequantForInferencePass.apply, AddQuantDequantForInferencePass._insert_quant_dequant_op

    def versioned_names(graph) -> set[str]:
        seen: set[str] = set()
        repeated: set[str] = set()
        for node in graph.all_var_nodes():
            (repeated if node.name() in seen else seen).add(node.name())
        return repeated

    def patched_apply(self, graph):
        self._ptqdet_versioned = versioned_names(graph)
        try:
            return apply(self, graph)
        finally:
            del self._ptqdet_versioned

    def patched_insert(self, graph, var_node):
        if var_node.name() in getattr(self, "_ptqdet_versioned", ()):
            return None  # the pass then leaves the variable and its readers as they are
        return insert(self, graph, var_node)

    AddQuantDequantForInferencePass.apply = patched_apply
    AddQuantDequantForInferencePass._insert_quant_dequant_op = patched_insert
    try:
        yield
    finally:
        AddQuantDequantForInferencePass.apply = apply
        AddQuantDequantForInferencePass._insert_quant_dequant_op = insert

def load_static_model(files: ModelFiles, exe: Any) -> tuple[Any, list[str], list[Any]]:
    """paddle.static.load_inference_model on these files (program, feed names, fetch vars), by
    path prefix when the two files share one (the other form prints a deprecation warning)."""
    import paddle

    model, params = Path(files.model_filename), Path(files.params_filename)
    if model.suffix == ".pdmodel" and params.suffix == ".pdiparams" and model.stem == params.stem:
        return paddle.static.load_inference_model(str(files.model_dir / model.stem), exe)
    return paddle.static.load_inference_model(str(files.model_dir), exe, model_filename=files.model_filename,
                                              params_filename=files.params_filename)


class ProgramRunner:
    """One static program (its desc) run again and again on a scope, through one StandaloneExecutor
    built on a C++ copy of the desc with feed and fetch ops added. Executor.run prepares every new
    program in Python (clones, an inplace pass: a few tenths of a second each), which is what
    each trial program of the analysis is; the outputs are the same (the same kernels run)."""

    def __init__(self, program_desc: Any, feed_names: list[str], fetch_names: list[str], place: Any, scope: Any):
        from paddle.base import core

        desc = core.ProgramDesc(program_desc)  # a copy: the caller's desc is not changed
        block = desc.block(0)
        for i in reversed(range(block.op_size())):  # a loaded inference program has its own: ours replace them
            if block.op(i).type() in ("feed", "fetch", "fetch_v2"):
                block._remove_op(i, i + 1)
        block.var(b"feed").set_type(core.VarDesc.VarType.FEED_MINIBATCH)
        block.var(b"fetch").set_type(core.VarDesc.VarType.FETCH_LIST)
        for var in (b"feed", b"fetch"):
            block.var(var).set_persistable(True)
        self.dtypes = {name: block.find_var(name.encode()).dtype() for name in feed_names}
        for col, name in reversed(list(enumerate(feed_names))):  # prepended: the first ends up first
            self._set_op(block._prepend_op(), "feed", "feed", name, col)
        for col, name in enumerate(fetch_names):
            self._set_op(block.append_op(), "fetch_v2", name, "fetch", col)
            block.op(block.op_size() - 1)._set_attr("deepcopy", True)
        self.feed_names, self.fetch_names = list(feed_names), list(fetch_names)
        self.place, self.scope = place, scope
        exe_place = core.Place()
        exe_place.set_place(place)
        self._desc = desc  # the executor refers to it
        self._exe = core.StandaloneExecutor(exe_place, core.Plan([core.Job("default")], {"default": desc}), scope)

    def with_own_scope(self) -> ProgramRunner:
        """A runner of the same program on its own executor and its own root scope, whose
        parameters share their memory with this runner's: runners made so may run at once on
        separate threads (an executor keeps its feed and fetch lists in its scope's root)."""
        from paddle.base import core

        scope = core.Scope()
        for var in self._desc.block(0).all_vars():
            if var.persistable() and var.type() == core.VarDesc.VarType.LOD_TENSOR:
                found = self.scope.find_var(var.name())
                if found is not None and found.get_tensor()._is_initialized():
                    scope.var(var.name()).get_tensor()._share_data_with(found.get_tensor())
        return ProgramRunner(self._desc, self.feed_names, self.fetch_names, self.place, scope)

    def fresh(self) -> ProgramRunner:
        """A runner of the same program on a new executor (Paddle 2.6's executor cannot run a
        program with tensor arrays twice: "Tensor holds no memory")."""
        return ProgramRunner(self._desc, self.feed_names, self.fetch_names, self.place, self.scope)

    @staticmethod
    def _set_op(op: Any, op_type: str, source: str, target: str, col: int) -> None:
        op.set_type(op_type)
        op.set_input("X", [source])
        op.set_output("Out", [target])
        op._set_attr("col", col)

    def run(self, feed: dict[str, Any]) -> list[Any]:
        """The fetched outputs (numpy arrays) for one feed {name: array}."""
        import numpy as np
        from paddle.base import core
        from paddle.base.executor import _as_lodtensor

        for col, name in enumerate(self.feed_names):
            core.set_feed_variable(self.scope, _as_lodtensor(feed[name], self.place, self.dtypes[name]), "feed", col)
        return [np.array(t) for t in self._exe.run(self.feed_names, False)._move_to_list()]


@dataclass
class LoadedProgram:
    """An inference model loaded in static mode into its own scope, on CPU."""

    program: Any
    feed_names: list[str]
    fetch_vars: list[Any]
    scope: Any
    exe: Any
    place: Any

    def save(self, out_dir: Path, fetch_vars: list[Any] | None = None, feed_names: list[str] | None = None) -> None:
        """save_inference_model to out_dir/model.pdmodel + .pdiparams (default: the loaded fetch
        vars and feeds)."""
        import paddle

        block = self.program.global_block()
        feed_names = self.feed_names if feed_names is None else feed_names
        paddle.static.save_inference_model(str(Path(out_dir) / "model"), [block.var(n) for n in feed_names],
                                           self.fetch_vars if fetch_vars is None else fetch_vars, self.exe,
                                           program=self.program)


@contextlib.contextmanager
def loaded_program(files: ModelFiles) -> Iterator[LoadedProgram]:
    """files' model in static mode, its own scope active inside the block; the caller's mode
    and scope are restored after it."""
    import paddle

    with static_mode():
        place = paddle.CPUPlace()
        exe = paddle.static.Executor(place)
        scope = paddle.static.Scope()
        with paddle.static.scope_guard(scope):
            program, feed_names, fetch_vars = load_static_model(files, exe)
            yield LoadedProgram(program, feed_names, fetch_vars, scope, exe, place)


def model_digest(files: ModelFiles, *parts: Any) -> Any:
    """sha256 over the model's program and params files, then each part as sorted-key JSON;
    callers may update it further before taking its hexdigest."""
    digest = hashlib.sha256()
    for path in (files.model_path, files.params_path):
        digest.update(path.read_bytes())
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest


def fingerprint(files: ModelFiles, settings: dict[str, Any]) -> str:
    """What a model built from `files` with `settings` depends on (hex sha256)."""
    return model_digest(files, settings).hexdigest()


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def replace_dir(tmp_dir: Path, save_dir: Path) -> None:
    """Move a finished output folder into place; an old one (folder or link) is replaced only now.
    A signal that asked the script to stop is raised here first (a library may have swallowed the
    exception it raised: ptqdet.signals), so an interrupted run never puts its output in place."""
    check_interrupted()
    if save_dir.exists() or save_dir.is_symlink():
        old = save_dir.with_name(f".{save_dir.name}.old")
        _remove(old)
        os.replace(save_dir, old)
        os.replace(tmp_dir, save_dir)
        _remove(old)
    else:
        os.replace(tmp_dir, save_dir)


@contextlib.contextmanager
def atomic_dir(out_dir: Path, create: bool = True) -> Iterator[Path]:
    """A temporary folder beside out_dir to write the output into: when the block ends without
    an error it replaces out_dir (an old out_dir is removed only then); otherwise it is
    removed and out_dir is left as it was. create=False: the folder is not made (for writers
    that refuse an existing folder)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = out_dir.with_name(f".{out_dir.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    if create:
        tmp_dir.mkdir()
    try:
        yield tmp_dir
        replace_dir(tmp_dir, out_dir)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
