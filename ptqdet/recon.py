"""Making paddleslim 2.6's reconstruction PTQ (quant_recon_static: AdaRound, BRECQ, QDrop) run
in minutes on CPU (docs/recovery.md; measurements in docs/results/findings.md). Two costs of
its own dominate on a detector of a few hundred ops:

- RegionBuilder (BRECQ, QDrop) asks its GraphWrapper for every op's producers and consumers,
  each a scan of all ops and their variables: quadratic in the ops, minutes on a detector.
  The program does not change while regions are built, so the answers are cached per op.
- ReconstructionQuanter._run appends each region's loss, backward and Adam ops to one program
  that it then runs whole: region k's iterations also run the losses, backward passes and
  optimizers of regions 0..k-1 (which keep changing those regions' roundings) and the whole
  detector including NMS, and Paddle rebuilds its executor for the grown program every region:
  each region costs more than the one before. Here each region gets its own copy of the
  student program, run pruned to what its loss needs (teacher and student up to the region's
  output), as in the BRECQ paper: one region's rounding learned at a time with the earlier ones
  fixed.

A third is not about time: paddleslim's (and Paddle's, for PTQ.round_type adaround) final
weights are floor(w/s) + h(alpha) with h the *soft* rounding in [0, 1], not AdaRound's hard
h >= 0.5: weights that should be INT8 keep fractions. Paddle Inference's oneDNN INT8 pass takes
a conv's weights for INT8 only when every value is an integer (quant2_int8_mkldnn_pass
_is_int8_weights), so it leaves such weights 127/s too large and the model detects nothing.
Here the rounding is made hard, as AdaRound defines it.

Everything else (the soft rounding while learning, the losses, the learning rate) is
paddleslim's own.
"""
from __future__ import annotations

import contextlib
import time

import numpy as np


def _name_index(ops) -> tuple[dict[str, list[int]], dict[str, list[int]], dict[int, object]]:
    """Which ops write and read each variable name, and the ops by index."""
    writers: dict[str, list[int]] = {}
    readers: dict[str, list[int]] = {}
    by_idx = {}
    for o in ops:
        by_idx[o.idx()] = o
        for name in o._op.output_arg_names:
            writers.setdefault(name, []).append(o.idx())
        inputs = o._op.input_arg_names
        if inputs:  # next_ops skips ops whose first input is missing
            for name in inputs:
                readers.setdefault(name, []).append(o.idx())
    return writers, readers, by_idx


def _cached_graph_class():
    from paddleslim.core.graph_wrapper import GraphWrapper

    class CachedGraphWrapper(GraphWrapper):
        """GraphWrapper whose ops(), pre_ops() and next_ops() are computed once (the program
        must not change meanwhile)."""

        def __init__(self, program):
            super().__init__(program)
            self._ops_cache = None
            self._pre_cache: dict[int, list] = {}
            self._next_cache: dict[int, list] = {}

        def ops(self):
            if self._ops_cache is None:
                self._ops_cache = super().ops()
            return list(self._ops_cache)

        def pre_ops(self, op):
            if op.idx() not in self._pre_cache:
                self._pre_cache[op.idx()] = self._link(op, before=True)
            return self._pre_cache[op.idx()]

        def next_ops(self, op):
            if op.idx() not in self._next_cache:
                self._next_cache[op.idx()] = self._link(op, before=False)
            return self._next_cache[op.idx()]

        def _link(self, op, before: bool) -> list:
            # the same answer as GraphWrapper.pre_ops / next_ops (including repeats, one per
            # shared variable), from a name index instead of a scan of wrapped variables
            if not hasattr(self, "_readers"):
                self._writers, self._readers, self._by_idx = _name_index(self.ops())
            found = []
            if before:
                for name in op._op.input_arg_names:
                    found += [i for i in self._writers.get(name, []) if i != op.idx()]
            else:
                for name in op._op.output_arg_names:
                    found += [i for i in self._readers.get(name, []) if i != op.idx()]
            # GraphWrapper lists an op once per variable of `op` that the other op writes (reads)
            counted = []
            for i in sorted(set(found)):
                other = self._by_idx[i]
                if before:
                    theirs, ours = set(other._op.output_arg_names), op._op.input_arg_names
                else:
                    theirs, ours = set(other._op.input_arg_names), op._op.output_arg_names
                counted += [other] * sum(1 for name in ours if name in theirs)
            return counted

    return CachedGraphWrapper


def _fast_region_builder(rq):
    cached_graph = _cached_graph_class()

    class FastRegionBuilder(rq.RegionBuilder):
        def __init__(self, program):  # RegionBuilder.__init__ with a cached graph
            self._program = program
            self._graph = cached_graph(program)
            self._op_idx_map = {op.idx(): op for op in self._graph.ops()}
            self._depth = {}
            self._init_depth()
            self._cache = {}
            self._regions = []
            self._region_weights_names = []

    return FastRegionBuilder


def _run_region_by_region(self):
    """ReconstructionQuanter._run with a fresh program per region, run pruned to the loss."""
    import paddle
    import paddleslim.quant.reconstruction_quantization as rq
    from paddleslim.quant.reconstruction_quantization import ReconstructionQuanterLoss

    self._preprocess()
    learned = set(self._weight_var_names) - set(self._skip_tensor_list or ())
    for k, (region, names) in enumerate(zip(self._regions, self._region_weights_names)):
        start = time.perf_counter()
        # RegionBuilder lists the weights of every conv, mul and matmul in a region, quantized or
        # not (PicoDet's DFL matmul_v2 with a constant): only quantized weights have a rounding
        names = [name for name in names if name in learned]
        if not names:
            continue
        program = self._student_program.clone()
        startup = paddle.static.Program()
        block = program.global_block()
        for index in reversed(range(len(block.ops))):  # the executor adds its own (pruning needs them gone)
            if block.ops[index].type in ("feed", "fetch"):
                block._remove_op(index)
        block.var(region[0]).stop_gradient = True
        loss_function = ReconstructionQuanterLoss(program=program, weight_region_names=names)
        params = [block.var(name + ".alpha") for name in names]
        with paddle.static.program_guard(program, startup):
            total_loss, recon_loss, round_loss = loss_function.get_loss(
                block.var(region[1]), block.var("teacher_" + region[1]))
            paddle.optimizer.Adam(learning_rate=self._lr, parameters=params).minimize(total_loss)
        self._exe.run(startup)
        losses = []
        for _ in range(self._epochs):
            for i, data in enumerate(self._data_loader()):
                out = self._exe.run(program, feed=data, fetch_list=[total_loss.name, recon_loss.name],
                                    return_numpy=True, use_prune=True)
                losses.append((float(np.mean(out[0])), float(np.mean(out[1]))))
                if i + 1 == self._num_iterations:
                    break
        rq._logger.info("region %d/%d %s -> %s, weights %s: loss %.4g -> %.4g (recon %.4g -> %.4g), %.1fs",
                  k + 1, len(self._regions), region[0], region[1], names, losses[0][0], losses[-1][0],
                  losses[0][1], losses[-1][1], time.perf_counter() - start)
    if self._weight_quantize_type == "channel_wise_abs_max":
        self._update_scale()
    _update_weights_to_int_hard(self)
    if self._bias_correction:
        self._bias_correction_w()
    return self._program, self._scale_dict


def _update_weights_to_int_hard(self) -> None:
    """ReconstructionQuanter._update_weights_to_int with AdaRound's hard rounding: floor(w/s) + [h >= 0.5]."""
    from paddle.static.quantization import utils

    for name in self._weight_var_names:
        if self._skip_tensor_list is not None and name in self._skip_tensor_list:
            continue
        h = self._compute_soft_rounding_np(utils.load_variable_data(self._scope, name + ".alpha"))
        axis = 1 if self._weight_op_pairs[name] in utils._channelwise_quant_axis1_ops else 0
        scaled = utils.quant_tensor(x=utils.load_variable_data(self._scope, name), scale=self._scale_dict[name],
                                    weight_bits=self._weight_bits, quant_axis=axis)
        utils.set_variable_data(self._scope, self._place, name, np.floor(scaled) + (h >= 0.5))


def _adaround_final_weights_hard(self):
    """paddle AdaRound.update_final_weights with the hard rounding: floor(w/s) + [h >= 0.5]."""
    from paddle.static.quantization.adaround import compute_soft_rounding_np, load_variable_data, quant_tensor

    h = compute_soft_rounding_np(load_variable_data(self.scope, self.alpha_name))
    scaled = quant_tensor(self.ori_weight_tensor.copy(), self.scale, quant_axis=self.quant_axis)
    return np.floor(scaled) + (h >= 0.5)


@contextlib.contextmanager
def hard_adaround():
    """Within: Paddle's PTQ round_type adaround ends with integer weights (hard rounding)."""
    from paddle.static.quantization import adaround

    saved = adaround.AdaRound.update_final_weights
    adaround.AdaRound.update_final_weights = _adaround_final_weights_hard
    try:
        yield
    finally:
        adaround.AdaRound.update_final_weights = saved


@contextlib.contextmanager
def fast_reconstruction():
    """Within: quant_recon_static builds regions with cached graph queries and learns each
    region's rounding in a program of its own, pruned to the region's loss."""
    import paddleslim.quant.reconstruction_quantization as rq

    saved = rq.RegionBuilder, rq.ReconstructionQuanter._run
    rq.RegionBuilder = _fast_region_builder(rq)
    rq.ReconstructionQuanter._run = _run_region_by_region
    try:
        yield
    finally:
        rq.RegionBuilder, rq.ReconstructionQuanter._run = saved
