"""Time-batched input projections: a built-in pass every program gets.

In an RNN stepped in Python (``nn.LSTMCell``/``nn.GRUCell`` in a loop) each
step multiplies its own input by the same input-to-hidden weight. Those
matmuls do not depend on the recurrence, so they become ONE matmul over all
steps before the first step (the cuDNN/oneDNN optimization), and each step
takes its rows of the result; only the hidden-to-hidden matmul stays per step.

A *group* is every 2-D ``linalg.matmul`` reading the same weight (the same
parameter through the same view chain) as its right operand. A group is
batched when no step input depends on another member's result (that would be
the recurrence: the hidden-to-hidden weight is left alone, with the reason in
the report). When the step inputs are the T slices ``X[..., t, ...]`` of one
tensor X, the batched matmul reads X itself, collapsed to rows (no copy);
otherwise the step inputs are concatenated.

The pass runs *after* the methods: a method rewrites each step's matmul by
itself (lowrank's ``x·A·B``, admm's dequantized weight) and the pass then
batches whatever per-step matmuls share a weight — both factors of lowrank's
chain, since the second factor's inputs become slices of the first batched
result. Running it before would hand methods one big matmul per layer and
per-step slices, which they rewrite just as well, but every method's per-step
bookkeeping (lowrank's shared factors, calibration per use) was written
against the unrolled form, so after is the order that composes with all of
them. ``nn.LSTM``/``nn.GRU`` already arrive batched from torch's
decomposition: their input projection is one op and nothing is done.
"""

from __future__ import annotations

from torch_mlir import ir

from optc.api import LayerChange, MethodResult, Skip, SkipReason
from optc.builder import defining_op, is_zero_fill, shape_of
from optc.program import Program, WeightedOp, operands_from_outside

NAME = "time_batching"
_PURE_PREFIXES = ("arith.", "linalg.", "tensor.", "math.")


class _Recurrent(Exception):
    """A step input depends on a member of its own group (the recurrence)."""


def time_batch(program: Program) -> MethodResult:
    """Batch every group of per-step matmuls sharing a weight into one matmul;
    one change per layer considered (batched, or skipped with the reason)."""
    changes: dict[str, LayerChange] = {}
    for w in program.weighted_ops():  # nn.LSTM/GRU at batch > 1: one matmul per step, as a batch_matmul
        steps = shared_weight_batch_matmul(program, w)
        if steps:
            changes[w.layer] = LayerChange(w.layer, f"input projection of {steps} steps: a batch_matmul over a broadcast weight became one matmul", {"steps": steps, "matmuls": 1})
    tried: set[tuple[str, str]] = set()
    while True:
        group = _next_group(program, tried)
        if group is None:
            break
        key = (group[0].param, repr(group[0].chain))
        tried.add(key)
        layer = group[0].layer
        skip = TimeBatchRewrite(program, group).apply()
        if skip is None:
            prev = changes.get(layer)
            factors = (prev.details.get("matmuls", 0) if prev is not None and prev.changed else 0) + 1
            changes[layer] = LayerChange(layer, f"input projection of {len(group)} steps batched into one matmul per weight", {"steps": len(group), "matmuls": factors})
        elif layer not in changes or not changes[layer].changed:
            changes[layer] = LayerChange.skipped(layer, skip)
    for group in _shared_weight_uses(program):  # per-step uses in a form a method left that is not matched
        layer = group[0].layer
        if layer not in changes:
            changes[layer] = LayerChange.skipped(layer, Skip(SkipReason.UNSUPPORTED, f"{len(group)} uses as {group[0].kind} with the weight as operand {group[0].operand_index} (only 2-D matmuls x·W are batched)"))
    program.verify()
    return MethodResult(NAME, list(changes.values()))


def shared_weight_batch_matmul(program: Program, w: WeightedOp) -> int:
    """``x[T, B, in] · broadcast(M)[T, in, out]`` (how torch lowers nn.LSTM/GRU's input
    projection at batch > 1) → one ``[T·B, in]·M`` matmul, with no broadcast copy of
    the weight. Returns the steps T, or 0 when ``w`` is not that form."""
    if w.kind != "batch_matmul" or w.operand_index != 1 or not w.batch_shared:
        return 0
    bcast = defining_op(w.op.operands[1])
    kind, arg = w.chain[-1]
    added = arg[0] if kind == "broadcast" else [d for d in range(3) if d not in arg[0]]
    if bcast is None or added != [0]:
        return 0
    matrix = bcast.operands[0]
    if kind == "generic_broadcast" and list(arg[0]) != [1, 2]:
        return 0  # a permuting broadcast: not the matrix as the matmul reads it
    if shape_of(matrix) != tuple(w.weight_shape[1:]):
        return 0
    with program.at(w.op) as b:
        y = b.linear(w.op.operands[0], matrix, w.op.operands[2])
    program.replace(w.op, y)
    return w.weight_shape[0]


def _shared_weight_uses(program: Program) -> list[list[WeightedOp]]:
    groups: dict[tuple[str, str], list[WeightedOp]] = {}
    for w in program.weighted_ops():
        groups.setdefault((w.param, repr(w.chain)), []).append(w)
    return [g for g in groups.values() if len(g) > 1]


def _next_group(program: Program, tried: set[tuple[str, str]]) -> list[WeightedOp] | None:
    """The first group not yet tried of ≥ 2 plain 2-D matmuls sharing one weight view."""
    groups: dict[tuple[str, str], list[WeightedOp]] = {}
    for w in program.weighted_ops():
        if w.kind == "matmul" and w.operand_index == 1 and len(w.input_shape) == 2:
            groups.setdefault((w.param, repr(w.chain)), []).append(w)
    for key, group in groups.items():
        if key not in tried and len(group) > 1:
            return group
    return None


class TimeBatchRewrite:
    """One group: ``y_t = init_t + x_t·W`` for t = 1..T  →  ``Y = X·W`` once before
    the first step, ``y_t = init_t + Y[rows of t]``."""

    def __init__(self, program: Program, group: list[WeightedOp]):
        self.program = program
        self.group = group
        self.order = {op: i for i, op in enumerate(program.ops())}
        self.first = min((w.op for w in group), key=lambda op: self.order[op])

    def apply(self) -> Skip | None:
        if len({shape_of(w.op.operands[0]) for w in self.group}) != 1:
            return Skip(SkipReason.UNSUPPORTED, "the steps' inputs differ in shape")
        try:
            hoisted = self._hoistable_inputs()
        except _Recurrent:
            return Skip(SkipReason.NOTHING_TO_DO, "recurrent: a step's input depends on an earlier step's result (hidden-to-hidden)")
        for op in sorted(hoisted, key=lambda op: self.order[op]):
            op.move_before(self.first)
        self._rewrite()
        return None

    # ------------------------------------------------------------ analysis
    def _hoistable_inputs(self) -> set[ir.Operation]:
        """Ops after the first step that the step inputs need (moved before it), or
        :class:`_Recurrent` when an input depends on the group itself."""
        members = {w.op for w in self.group}
        first_at = self.order[self.first]
        needed: set[ir.Operation] = set()
        stack = [w.op.operands[0] for w in self.group]
        while stack:
            owner = defining_op(stack.pop())
            if owner is None or self.order.get(owner, -1) < first_at or owner in needed:
                continue  # a block argument, or already available before the first step
            if owner in members or not owner.name.startswith(_PURE_PREFIXES):
                raise _Recurrent()
            needed.add(owner)
            stack.extend(operands_from_outside(owner))
        return needed

    # ------------------------------------------------------------ rewrite
    def _rewrite(self) -> None:
        group = sorted(self.group, key=lambda w: self.order[w.op])
        weight = self.first.operands[1]  # defined before the first step
        slices = _slices_of_one_tensor([w.op.operands[0] for w in group])
        n_out = shape_of(self.first.results[0])[1]
        with self.program.at(self.first) as b:
            if slices is not None:
                source, cuts = slices
                lead = list(shape_of(source)[:-1])
                rows = b.collapse(source, [list(range(len(lead))), [len(lead)]])
                y = b.matmul(rows, weight, b.zeros((shape_of(rows)[0], n_out), like=rows))
                y_full = b.expand(y, [list(range(len(lead))), [len(lead)]], lead + [n_out])
            else:
                x_all = b.concat([w.op.operands[0] for w in group], 0)
                y = b.matmul(x_all, weight, b.zeros((shape_of(x_all)[0], n_out), like=x_all))
        step_rows = shape_of(group[0].op.operands[0])[0]
        for t, w in enumerate(group):
            init = w.op.operands[2]
            with self.program.at(w.op) as b:
                if slices is not None:
                    offsets, sizes, reassoc = cuts[t]
                    part = b.slice(y_full, offsets[:-1] + [0], sizes[:-1] + [n_out])
                    part = b.collapse(part, reassoc)
                else:
                    part = b.slice(y, [t * step_rows, 0], [step_rows, n_out])
                if not is_zero_fill(init):
                    part = b.generic([init, part], b.empty(shape_of(part), part), ["(i, j) -> (i, j)"] * 3, lambda a, c, _o: b.add(a, c))
            self.program.replace(w.op, part)


def _slices_of_one_tensor(inputs: list[ir.Value]) -> tuple[ir.Value, list[tuple[list[int], list[int], list[list[int]]]]] | None:
    """When every step input is ``collapse_shape(extract_slice(X, …))`` of one X,
    unit-strided, all T slices together covering X exactly: (X, per step the
    slice's offsets, sizes and the collapse's reassociation)."""
    source = None
    cuts = []
    for x in inputs:
        collapse = defining_op(x)
        if collapse is None or collapse.name != "tensor.collapse_shape":
            return None
        extract = defining_op(collapse.operands[0])
        if extract is None or extract.name != "tensor.extract_slice" or len(extract.operands) != 1:
            return None
        if source is None:
            source = extract.operands[0]
        elif extract.operands[0] != source:
            return None
        offsets = list(ir.DenseI64ArrayAttr(extract.attributes["static_offsets"]))
        sizes = list(ir.DenseI64ArrayAttr(extract.attributes["static_sizes"]))
        strides = list(ir.DenseI64ArrayAttr(extract.attributes["static_strides"]))
        if any(s != 1 for s in strides):
            return None
        reassoc = [[int(ir.IntegerAttr(d).value) for d in ir.ArrayAttr(g)] for g in ir.ArrayAttr(collapse.attributes["reassociation"])]
        cuts.append((offsets, sizes, reassoc))
    full = list(shape_of(source))
    if cuts[0][1][-1] != full[-1] or any(reassoc[-1] != [len(full) - 1] for _, _, reassoc in cuts):
        return None  # the feature dim must be whole and stay the matmul's K
    covered = sum(_prod(sizes) for _, sizes, _ in cuts)
    starts = {tuple(offsets) for offsets, _, _ in cuts}
    if covered != _prod(full) or len(starts) != len(cuts) or len({tuple(s) for _, s, _ in cuts}) != 1:
        return None
    sizes = cuts[0][1]
    for offsets, _, _ in cuts:  # the slices tile X: each offset on the grid of the slice size
        if any(o % s or o + s > f for o, s, f in zip(offsets, sizes, full)):
            return None
    return source, cuts


def _prod(xs: list[int]) -> int:
    n = 1
    for x in xs:
        n *= x
    return n

