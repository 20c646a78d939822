"""Coupled channels: which weights must shrink together when a layer loses output channels.

Torch-Pruning's dependency graph, built on linalg indexing maps instead of
``nn.Module`` types, so every op is handled the same way. Each weighted op's
output channels (a linear's out features, a conv's OC) are followed forward
through the SSA uses: a linalg op's indexing maps say which loop dim carries the
channel and which operand dims it indexes (bias adds, folded batch-norm,
activations, pooling, depthwise convs, residual adds, the contraction of the
next layer); reshapes, pads, concats and slices move it between dims and
offsets (a flatten into a linear layer turns channel ``c`` into a contiguous
range of that layer's input columns). Constant operands indexed by the channel
(bias, batch-norm statistics, the next layer's weight columns) are traced back
through their view/elementwise chain to the named parameters.

Channels are tracked one by one (a node per producer output channel): a
residual add unions the two sides' channels position by position, a concat
places each half at its offset, so a group's channels are the classes of
channels that must go together and its ``producers`` all the layers involved.

    groups = channel_groups(program)
    g = next(g for g in groups if g.prunable)
    prune_channels(program, g, keep=np.arange(g.size) % 2 == 0)

``prune_channels`` shrinks every op of the group: producers' weight rows and
bias, every elementwise op's tensors and constants, consumers' weight input
columns. Groups describe one program state: recompute them after any rewrite.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
from torch_mlir import ir
from torch_mlir.dialects import arith, tensor

from optc.builder import indexing_maps
from optc.program import CONTRACTIONS, Program, WeightedOp, reassociation, resource_name, shape_of

__all__ = ["Why", "NotPrunable", "Role", "ChannelUse", "ChannelGroup", "channel_groups", "prune_channels"]

_UNTRACKED = -1  # a position along a dim that carries no tracked channel


class Why(enum.Enum):
    """Why a group's channels cannot be removed."""

    REACHES_OUTPUT = "reaches the model output"
    UNMAPPED_OP = "is read by an op whose indexing is not mapped"
    REDUCED = "is reduced over by an op that is not a contraction"
    RESHAPED = "is split or mixed with another dim by a reshape (e.g. into conv groups)"
    WINDOWED = "indexes an operand through a compound expression (a window or stride)"
    UNTRACKED_OPERAND = "is combined with an activation whose channels are not tracked"
    INDEX_IN_BODY = "the op's body reads the channel index"
    CONSTANT_UNTRACEABLE = "a constant operand indexed by the channel cannot be sliced"


@dataclass(frozen=True)
class NotPrunable:
    """A typed reason with the op it was found at (``linalg.generic #12``: 12th op of the function)."""

    why: Why
    op: str

    def __str__(self) -> str:
        return f"the channel {self.why.value} ({self.op})"


class Role(enum.Enum):
    PRODUCER = "output channels"  # weight rows (and bias) of the op that creates the channels
    CONSUMER = "input channels"  # weight columns of an op that contracts over them
    CHANNELWISE = "per channel"  # bias, batch-norm constants, depthwise filters


@dataclass
class ChannelUse:
    """One parameter read along the group's channels: ``channels[i]`` is the group
    channel that index ``i`` along ``axis`` belongs to (-1: not this group's)."""

    param: str
    axis: int
    channels: np.ndarray
    role: Role
    op: str


@dataclass(eq=False)
class ChannelGroup:
    """Channels that must be removed together, and every parameter that reads them."""

    key: str  # the first producer's layer: stable across recomputations
    size: int  # number of group channels
    producers: list[str]  # layers whose output channels these are
    uses: list[ChannelUse]
    blocked: list[NotPrunable]
    _analysis: "_Analysis" = field(repr=False)
    _class_nodes: list[np.ndarray] = field(repr=False)  # group channel -> its node ids

    @property
    def prunable(self) -> bool:
        return not self.blocked

    @property
    def consumers(self) -> list[str]:
        return sorted({u.param for u in self.uses if u.role is Role.CONSUMER})

    def zeroed(self, params: dict[str, np.ndarray], remove: Iterable[int]) -> dict[str, np.ndarray]:
        """Copies of every parameter the group reads, with the slices of the
        channels ``remove`` set to zero (the dense model a pruned one must equal)."""
        remove = np.asarray(list(remove), dtype=np.int64)
        out: dict[str, np.ndarray] = {}
        for use in self.uses:
            array = out.get(use.param)
            if array is None:
                array = out[use.param] = np.array(params[use.param], copy=True)
            hit = np.isin(use.channels, remove) & (use.channels >= 0)
            index = [slice(None)] * array.ndim
            index[use.axis] = hit
            array[tuple(index)] = 0
        return out


# ---------------------------------------------------------------- dim mapping helpers
def _merge(shape: tuple[int, ...], arrays: dict[int, np.ndarray]) -> np.ndarray | None:
    """Dims ``shape`` collapsed into one: the tracked array of one of them broadcast
    over the others (None when two of them are tracked)."""
    if len(arrays) > 1:
        return None
    full = np.full(shape, _UNTRACKED, dtype=np.int64)
    for axis, arr in arrays.items():
        view = [1] * len(shape)
        view[axis] = shape[axis]
        full[...] = arr.reshape(view)
    return full.reshape(-1)


def _split(shape: tuple[int, ...], arr: np.ndarray) -> dict[int, np.ndarray] | None:
    """One dim expanded into ``shape``: the single dim that carries ``arr`` (None
    when the channels end up spread over several dims)."""
    full = arr.reshape(shape)
    if np.all(full == _UNTRACKED):
        return {}
    for axis in range(len(shape)):
        proj = full[tuple(slice(None) if d == axis else 0 for d in range(len(shape)))]
        view = [1] * len(shape)
        view[axis] = shape[axis]
        if np.array_equal(full, np.broadcast_to(proj.reshape(view), shape)):
            return {axis: proj} if np.any(proj != _UNTRACKED) else {}
    return None


def _merge_groups(groups: list[list[int]], fine_shape: tuple[int, ...], fine_dims: dict[int, Any]) -> dict[int, Any]:
    """Through a reshape whose coarse dim i holds the fine dims ``groups[i]``: the
    channel maps of the coarse dims, from the tracked fine ones."""
    dims = {}
    for i, group in enumerate(groups):
        tracked = {j: fine_dims[d] for j, d in enumerate(group) if d in fine_dims}
        if tracked:
            merged = _merge(tuple(fine_shape[d] for d in group), tracked)
            if merged is None:
                raise _Unmapped(Why.RESHAPED)
            dims[i] = merged
    return dims


def _split_groups(groups: list[list[int]], fine_shape: tuple[int, ...], coarse_dims: dict[int, Any]) -> dict[int, Any]:
    """The inverse direction of :func:`_merge_groups`: the fine dims' channel maps
    from the tracked coarse ones."""
    dims = {}
    for i, group in enumerate(groups):
        if i in coarse_dims:
            split = _split(tuple(fine_shape[d] for d in group), coarse_dims[i])
            if split is None:
                raise _Unmapped(Why.RESHAPED)
            dims.update({group[j]: a for j, a in split.items()})
    return dims


def _dense_i64(op: ir.Operation, name: str) -> list[int]:
    return list(ir.DenseI64ArrayAttr(op.attributes[name]))


def _is_linalg(op: ir.Operation) -> bool:
    return op.name.startswith("linalg.") and op.name not in ("linalg.yield", "linalg.index")


def _loop_dim(expr: Any) -> int | None:
    """The loop dim of a pure dim expression, else None."""
    try:
        return ir.AffineDimExpr(expr).position
    except (ValueError, TypeError):
        return None


def _uses_dim(expr: Any, dim: int) -> bool:
    """Whether an affine expression involves loop dim ``dim`` (the bindings have no walker)."""
    return re.search(rf"\bd{dim}\b", str(expr)) is not None


def _dense(attr: ir.Attribute) -> ir.DenseElementsAttr | None:
    try:
        return ir.DenseElementsAttr(attr)
    except ValueError:
        return None


def _body_reads_index(op: ir.Operation, dims: Iterable[int]) -> bool:
    """Whether a linalg op's body uses ``linalg.index`` of one of ``dims`` or reads
    another tensor (``tensor.extract``): slicing the loop would change its values."""
    if not op.regions or not op.regions[0].blocks:
        return False
    dims = set(dims)
    for inner in op.regions[0].blocks[0].operations:
        if inner.name == "linalg.index" and ir.IntegerAttr(inner.attributes["dim"]).value in dims:
            return True
        if inner.name == "tensor.extract":
            return True
    return False


def _slice_result_dims(op: ir.Operation) -> list[int | None]:
    """For each source dim of a ``tensor.extract_slice``: its result dim (None: a
    unit dim the slice drops; matched left to right, as rank reduction does)."""
    sizes = _dense_i64(op, "static_sizes")
    res = shape_of(op.results[0])
    out: list[int | None] = []
    for i, size in enumerate(sizes):
        j = sum(d is not None for d in out)
        keep_it = j < len(res) and res[j] == size and len(res) - j <= len(sizes) - i
        out.append(j if keep_it and (size != 1 or len(res) - j == len(sizes) - i or res[j] == 1) else None)
    return out


class _Unmapped(Exception):
    def __init__(self, why: Why):
        self.why = why


def _backward_dims(op: ir.Operation, result_dims: dict[int, np.ndarray]) -> list[tuple[int, dict[int, np.ndarray]]]:
    """Which operand dims carry the tracked dims of ``op``'s (first) result:
    [(operand index, {dim: array})]. Raises _Unmapped for ops it cannot map."""
    name = op.name
    if not result_dims:
        return []
    if _is_linalg(op):
        maps = indexing_maps(op)
        n_in = len(op.operands) - len(op.results)  # DPS: one init per result
        out_map = maps[n_in]
        loops: dict[int, np.ndarray] = {}
        for r, arr in result_dims.items():
            L = _loop_dim(out_map.results[r])
            if L is None:
                raise _Unmapped(Why.WINDOWED)
            loops[L] = arr
        if _body_reads_index(op, loops):
            raise _Unmapped(Why.INDEX_IN_BODY)
        found = []
        for k, m in enumerate(maps):
            dims: dict[int, np.ndarray] = {}
            for r, expr in enumerate(m.results):
                L = _loop_dim(expr)
                if L in loops:
                    dims[r] = loops[L]
                elif L is None and any(_uses_dim(expr, d) for d in loops):
                    raise _Unmapped(Why.WINDOWED)
            found.append((k, dims))
        return found
    if name == "tensor.expand_shape":
        return [(0, _merge_groups(reassociation(op), shape_of(op.results[0]), result_dims))]
    if name == "tensor.collapse_shape":
        return [(0, _split_groups(reassociation(op), shape_of(op.operands[0]), result_dims))]
    if name == "tensor.pad":
        low, high = _dense_i64(op, "static_low"), _dense_i64(op, "static_high")
        if any(low[d] or high[d] for d in result_dims):
            raise _Unmapped(Why.WINDOWED)
        return [(0, dict(result_dims))]
    if _is_elementwise(op):
        return [(k, dict(result_dims)) for k in range(len(op.operands))]
    raise _Unmapped(Why.UNMAPPED_OP)


def _is_elementwise(op: ir.Operation) -> bool:
    """An arith/math op on tensors whose operands and result share one shape (e.g. ``arith.extf``)."""
    if not op.name.startswith(("arith.", "math.")) or len(op.results) != 1 or not ir.RankedTensorType.isinstance(op.results[0].type):
        return False
    shape = shape_of(op.results[0])
    return all(ir.RankedTensorType.isinstance(v.type) and shape_of(v) == shape for v in op.operands)


# ---------------------------------------------------------------- analysis
class _Analysis:
    """One forward pass over the function: node ids on every activation dim that
    carries tracked channels, unions from residual adds, constant reads, reasons."""

    def __init__(self, program: Program):
        self.program = program
        self.tracked: dict[ir.Value, dict[int, np.ndarray]] = {}
        self.parent: list[int] = []
        self.node_keys: dict[tuple[str, int], int] = {}
        self.node_param: list[str] = []
        self.node_order: list[tuple[int, int]] = []  # (source op index, position) for ordering
        self.blocked: list[tuple[np.ndarray, NotPrunable]] = []
        # static operands indexed by tracked channels: op -> [(operand index, {dim: nodes})]
        self.static_operands: dict[ir.Operation, list[tuple[int, dict[int, np.ndarray]]]] = {}
        self.uses: list[tuple[str, int, np.ndarray, Role, str]] = []  # (param, axis, nodes, role, op)
        self.order: dict[ir.Operation, int] = {}
        self.stale = False
        self._run()

    # union-find over channel nodes
    def _node(self, param: str, index: int, where: tuple[int, int]) -> int:
        key = (param, index)
        if key not in self.node_keys:
            self.node_keys[key] = len(self.parent)
            self.parent.append(len(self.parent))
            self.node_param.append(param)
            self.node_order.append(where)
        return self.node_keys[key]

    def find(self, n: int) -> int:
        while self.parent[n] != n:
            self.parent[n] = self.parent[self.parent[n]]
            n = self.parent[n]
        return n

    def _union(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Elementwise union of two node arrays at the same positions; the merged array."""
        out = a.copy()
        for i, (x, y) in enumerate(zip(a.tolist(), b.tolist())):
            if x >= 0 and y >= 0:
                rx, ry = self.find(x), self.find(y)
                if rx != ry:
                    self.parent[max(rx, ry)] = min(rx, ry)
            elif x < 0:
                out[i] = y
        return out

    def _block(self, nodes: Iterable[np.ndarray], why: Why, op: ir.Operation) -> None:
        where = NotPrunable(why, f"{op.name} #{self.order.get(op, -1)}")
        for arr in nodes:
            if np.any(arr >= 0):
                self.blocked.append((arr, where))

    def _run(self) -> None:
        program = self.program
        active: set[ir.Value] = set(program.body.arguments)
        weighted: dict[ir.Operation, WeightedOp] = {w.op: w for w in program.weighted_ops()}
        for i, op in enumerate(program.ops()):
            self.order[op] = i
            if any(v in active for v in op.operands):
                active.update(op.results)
        self.active = active
        for op in program.ops():
            tracked_in = [(k, dims) for k, v in enumerate(op.operands) if (dims := self.tracked.get(v))]
            source = weighted.get(op) if op.results and op.results[0] in active else None
            if not tracked_in and source is None:
                continue
            try:
                if op.name == "func.return":
                    raise _Unmapped(Why.REACHES_OUTPUT)
                if _is_linalg(op):
                    self._linalg(op, source)
                else:
                    self._tensor_op(op)
            except _Unmapped as e:
                self._block([a for _, dims in tracked_in for a in dims.values()], e.why, op)

    def _activation_dims(self, value: ir.Value) -> dict[int, np.ndarray]:
        return self.tracked.get(value, {})  # {} for a value that carries no tracked channel

    def _linalg(self, op: ir.Operation, source: WeightedOp | None) -> None:
        maps = indexing_maps(op)
        n_in = len(op.operands) - len(op.results)  # DPS: one init per result
        operands = list(op.operands)
        out_dims = {_loop_dim(e) for m in maps[n_in:] for e in m.results}
        act = [k for k, v in enumerate(operands) if v in self.active]
        loops: dict[int, np.ndarray] = {}
        # the channels a weighted op creates: loop dims of its weight and output, not of its activations
        if source is not None:
            wk = source.operand_index
            act_loops = {_loop_dim(e) for k in act if k != wk for e in maps[k].results}
            for r, e in enumerate(maps[wk].results):
                L = _loop_dim(e)
                if L is None or L not in out_dims or L in act_loops:
                    continue
                n = shape_of(operands[wk])[r]
                traced = self._trace_static(operands[wk], {r: np.arange(n)})
                if traced is None:
                    continue  # a weight view we cannot slice: its channels are not offered
                nodes = np.full(n, _UNTRACKED, dtype=np.int64)
                for param, axis, positions in traced:
                    for p in range(n):
                        js = np.flatnonzero(positions == p)
                        if len(js):
                            nodes[p] = self._node(param, int(js.min()), (self.order[op], p))
                loops[L] = nodes
        # the channels its activation operands carry
        for k in act:
            dims = self._activation_dims(operands[k])
            for r, arr in dims.items():
                L = _loop_dim(maps[k].results[r])
                if L is None:
                    raise _Unmapped(Why.WINDOWED)
                loops[L] = self._union(loops[L], arr) if L in loops else arr
        if not loops:
            return
        if _body_reads_index(op, loops):
            raise _Unmapped(Why.INDEX_IN_BODY)
        for L in loops:
            if L not in out_dims and op.name not in CONTRACTIONS:
                self._block([loops[L]], Why.REDUCED, op)
        # every operand indexed by a tracked loop dim
        for k, m in enumerate(maps):
            dims: dict[int, np.ndarray] = {}
            for r, expr in enumerate(m.results):
                L = _loop_dim(expr)
                if L in loops:
                    dims[r] = loops[L]
                elif L is None and any(_uses_dim(expr, d) for d in loops):
                    self._block([loops[d] for d in loops if _uses_dim(expr, d)], Why.WINDOWED, op)
            if not dims:
                continue
            if k in act:
                for r, arr in dims.items():
                    have = self._activation_dims(operands[k]).get(r)
                    if have is None or np.any((have < 0) & (arr >= 0)):
                        self._block([arr], Why.UNTRACKED_OPERAND, op)
                continue
            if self._trace_static(operands[k], dims) is None:
                self._block(dims.values(), Why.CONSTANT_UNTRACEABLE, op)
                continue
            self.static_operands.setdefault(op, []).append((k, dims))
            act_loops = {_loop_dim(e) for j in act for e in maps[j].results}
            for r, arr in dims.items():
                L = _loop_dim(m.results[r])
                if L not in out_dims:
                    role = Role.CONSUMER
                elif source is not None and k == source.operand_index and L not in act_loops:
                    role = Role.PRODUCER
                else:
                    role = Role.CHANNELWISE
                for param, axis, nodes in self._trace_static(operands[k], {r: arr}) or []:
                    self.uses.append((param, axis, nodes, role, f"{op.name} #{self.order[op]}"))
        for j, res in enumerate(op.results):
            dims = {}
            for r, expr in enumerate(maps[n_in + j].results):
                L = _loop_dim(expr)
                if L in loops:
                    dims[r] = loops[L]
            if dims:
                self.tracked[res] = dims

    def _tensor_op(self, op: ir.Operation) -> None:
        name = op.name
        operands = list(op.operands)
        src = self._activation_dims(operands[0]) if operands else {}
        if name == "tensor.expand_shape":
            self._set(op.results[0], _split_groups(reassociation(op), shape_of(op.results[0]), src))
        elif name == "tensor.collapse_shape":
            self._set(op.results[0], _merge_groups(reassociation(op), shape_of(operands[0]), src))
        elif name == "tensor.pad":
            low, high = _dense_i64(op, "static_low"), _dense_i64(op, "static_high")
            if any(low[d] or high[d] for d in src):
                raise _Unmapped(Why.WINDOWED)
            self._set(op.results[0], dict(src))
        elif name == "tensor.concat":
            axis = ir.IntegerAttr(op.attributes["dim"]).value
            parts = [self._activation_dims(v) for v in operands]
            dims = {}
            pieces = [p.get(axis, np.full(shape_of(v)[axis], _UNTRACKED, dtype=np.int64)) for p, v in zip(parts, operands)]
            if any(axis in p for p in parts):
                dims[axis] = np.concatenate(pieces)
            others = {d for p in parts for d in p if d != axis}
            for d in others:
                arrs = [p.get(d) for p in parts]
                if any(a is None for a in arrs):
                    raise _Unmapped(Why.UNTRACKED_OPERAND)
                merged = arrs[0]
                for a in arrs[1:]:
                    merged = self._union(merged, a)
                dims[d] = merged
            self._set(op.results[0], dims)
        elif name == "tensor.extract_slice":
            if len(operands) > 1:
                raise _Unmapped(Why.UNMAPPED_OP)  # dynamic offsets or sizes
            offsets, sizes, strides = (_dense_i64(op, a) for a in ("static_offsets", "static_sizes", "static_strides"))
            to_result = _slice_result_dims(op)
            dims = {}
            for d, arr in src.items():
                if to_result[d] is None or strides[d] != 1:
                    raise _Unmapped(Why.WINDOWED)
                dims[to_result[d]] = arr[offsets[d]:offsets[d] + sizes[d]]
            self._set(op.results[0], dims)
        elif _is_elementwise(op):
            if any(v not in self.active for v in operands):
                raise _Unmapped(Why.CONSTANT_UNTRACEABLE)  # only generics' constant operands are sliced
            dims = {}
            for v in operands:
                for d, arr in self._activation_dims(v).items():
                    dims[d] = self._union(dims[d], arr) if d in dims else arr
            self._set(op.results[0], dims)
        else:
            raise _Unmapped(Why.UNMAPPED_OP)

    def _set(self, value: ir.Value, dims: dict[int, np.ndarray]) -> None:
        dims = {d: a for d, a in dims.items() if np.any(a >= 0)}
        if dims:
            self.tracked[value] = dims

    def _trace_static(self, value: ir.Value, dims: dict[int, np.ndarray]) -> list[tuple[str, int, np.ndarray]] | None:
        """The parameters a constant operand reads along ``dims``: [(param, axis, array
        over that axis)], or None when some op on the way cannot be sliced."""
        owner = value.owner
        if not isinstance(owner, (ir.Operation, ir.OpView)):
            return None
        op = owner.operation
        if op.name == "arith.constant":
            param = resource_name(op.attributes["value"])
            if param is not None and param in self.program.params:
                return [(param, d, a) for d, a in dims.items()]
            return [] if _dense(op.attributes["value"]) is not None else None
        if op.name == "tensor.empty":
            return []
        try:
            found: list[tuple[str, int, np.ndarray]] = []
            for k, kdims in _backward_dims(op, dims):
                if kdims:
                    inner = self._trace_static(op.operands[k], kdims)
                    if inner is None:
                        return None
                    found += inner
            return found
        except _Unmapped:
            return None

    # ------------------------------------------------------------ groups
    def groups(self) -> list[ChannelGroup]:
        n = len(self.parent)
        classes = sorted({self.find(i) for i in range(n)}, key=lambda r: self.node_order[r])
        # a group: classes linked through a shared producer parameter
        cls_parent = {c: c for c in classes}

        def cfind(c: int) -> int:
            while cls_parent[c] != c:
                c = cls_parent[c]
            return c

        by_param: dict[str, int] = {}
        for i in range(n):
            c = self.find(i)
            p = self.node_param[i]
            if p in by_param:
                a, b = cfind(by_param[p]), cfind(c)
                if a != b:
                    first, second = sorted((a, b), key=lambda r: self.node_order[r])
                    cls_parent[second] = first
            else:
                by_param[p] = c
        members: dict[int, list[int]] = {}
        for c in classes:
            members.setdefault(cfind(c), []).append(c)
        nodes_of: dict[int, list[int]] = {}
        for i in range(n):
            nodes_of.setdefault(self.find(i), []).append(i)
        out = []
        for root in sorted(members, key=lambda r: self.node_order[r]):
            cls = members[root]
            channel_of = {c: idx for idx, c in enumerate(cls)}

            def to_channels(nodes: np.ndarray) -> np.ndarray:
                return np.array([channel_of.get(self.find(x), -1) if x >= 0 else -1 for x in nodes.tolist()], dtype=np.int64)

            uses = []
            for param, axis, nodes, role, where in self.uses:
                ch = to_channels(nodes)
                if np.any(ch >= 0):
                    uses.append(ChannelUse(param, axis, ch, role, where))
            blocked: list[NotPrunable] = []
            for nodes, reason in self.blocked:
                if np.any(to_channels(nodes) >= 0) and reason not in blocked:
                    blocked.append(reason)
            params = []
            for c in cls:
                for i in nodes_of[c]:
                    if self.node_param[i] not in params:
                        params.append(self.node_param[i])
            producers = list(dict.fromkeys(self.program.layer_of(p) for p in params))
            out.append(ChannelGroup(
                key=producers[0], size=len(cls), producers=producers, uses=uses, blocked=blocked,
                _analysis=self, _class_nodes=[np.array(nodes_of[c]) for c in cls],
            ))
        return out


def channel_groups(program: Program) -> list[ChannelGroup]:
    """Every group of coupled output channels in ``program``, in program order of
    their first producer; a group that cannot be pruned says why (``blocked``)."""
    return _Analysis(program).groups()


# ---------------------------------------------------------------- rewrite
def prune_channels(program: Program, group: ChannelGroup, keep: np.ndarray) -> None:
    """Remove the channels of ``group`` not in ``keep`` (a boolean mask over the
    group's channels, or the indices to keep) from every op that reads them."""
    analysis = group._analysis
    if analysis.program is not program:
        raise ValueError("the group was computed on another program")
    if analysis.stale:
        raise ValueError("the program was pruned since this group was computed; recompute channel_groups")
    if not group.prunable:
        raise ValueError(f"group {group.key} cannot be pruned: {'; '.join(map(str, group.blocked))}")
    keep = np.asarray(keep)
    mask = keep.astype(bool) if keep.dtype == bool else np.isin(np.arange(group.size), keep)
    if mask.shape != (group.size,):
        raise ValueError(f"keep has {mask.shape[0]} entries; group {group.key} has {group.size} channels")
    if not mask.any():
        raise ValueError(f"keep removes every channel of group {group.key}")
    removed = np.concatenate([group._class_nodes[c] for c in np.flatnonzero(~mask)] or [np.zeros(0, np.int64)])
    analysis.stale = True  # its values and ops are rewritten below
    _Pruner(program, analysis, removed).run()


class _Pruner:
    def __init__(self, program: Program, analysis: _Analysis, removed: np.ndarray):
        self.program = program
        self.analysis = analysis
        self.removed = removed
        self.memo: dict[tuple, ir.Value] = {}

    def keep(self, nodes: np.ndarray) -> np.ndarray:
        return ~np.isin(nodes, self.removed)

    def touched(self, dims: dict[int, np.ndarray]) -> bool:
        return any(np.isin(a, self.removed).any() for a in dims.values())

    def new_type(self, value: ir.Value, dims: dict[int, np.ndarray]) -> ir.RankedTensorType:
        shape = list(shape_of(value))
        for d, arr in dims.items():
            shape[d] = int(self.keep(arr).sum())
        return ir.RankedTensorType.get(shape, ir.RankedTensorType(value.type).element_type)

    def run(self) -> None:
        a = self.analysis
        with self.program.context, ir.Location.unknown():
            for op in list(self.program.ops()):
                statics = [(k, d) for k, d in a.static_operands.get(op, []) if self.touched(d)]
                ins = {k: d for k, v in enumerate(op.operands) if (d := a.tracked.get(v)) and self.touched(d)}
                outs = {j: d for j, r in enumerate(op.results) if (d := a.tracked.get(r)) and self.touched(d)}
                if not (statics or ins or outs):
                    continue
                for k, dims in statics:
                    op.operands[k] = self.sliced(op.operands[k], dims, op)
                if op.name == "tensor.extract_slice" and 0 in ins:
                    self._fix_slice(op, ins[0])
                if op.name == "tensor.expand_shape" and 0 in outs:
                    op.attributes["static_output_shape"] = ir.DenseI64ArrayAttr.get(self.new_type(op.results[0], outs[0]).shape)
                for j, dims in outs.items():
                    op.results[j].set_type(self.new_type(op.results[j], dims))
        self.program.erase_dead()
        self.program.verify()

    def _fix_slice(self, op: ir.Operation, src_dims: dict[int, np.ndarray]) -> None:
        offsets, sizes = _dense_i64(op, "static_offsets"), _dense_i64(op, "static_sizes")
        for d, arr in src_dims.items():
            kept = self.keep(arr)
            offsets[d], sizes[d] = int(kept[: offsets[d]].sum()), int(kept[offsets[d]:offsets[d] + sizes[d]].sum())
        op.attributes["static_offsets"] = ir.DenseI64ArrayAttr.get(offsets)
        op.attributes["static_sizes"] = ir.DenseI64ArrayAttr.get(sizes)

    def sliced(self, value: ir.Value, dims: dict[int, np.ndarray], before: ir.Operation) -> ir.Value:
        """``value`` (a constant-derived operand) with the removed positions along
        ``dims`` dropped, rebuilt op by op from its parameters (shared ops are cloned)."""
        dims = {d: a for d, a in dims.items() if np.isin(a, self.removed).any()}
        if not dims:
            return value
        key = (value, tuple(sorted((d, a.tobytes()) for d, a in dims.items())))
        if key in self.memo:
            return self.memo[key]
        op = value.owner.operation
        new_type = self.new_type(value, dims)
        if op.name == "arith.constant":
            attr = op.attributes["value"]
            param = resource_name(attr)
            if param is not None and param in self.program.params:
                array = self.program.params[param]
                for d, arr in dims.items():
                    array = np.compress(self.keep(arr), array, axis=d)
                result = self.program.constant(self.program.layer_of(param), array, origin=self.program.layer_of(param))
            else:
                dense = _dense(attr)
                with ir.InsertionPoint(before):
                    if dense.is_splat:
                        result = arith.ConstantOp(new_type, ir.DenseElementsAttr.get_splat(new_type, dense.get_splat_value())).result
                    else:
                        array = np.array(dense)
                        for d, arr in dims.items():
                            array = np.compress(self.keep(arr), array, axis=d)
                        result = arith.ConstantOp(new_type, ir.DenseElementsAttr.get(np.ascontiguousarray(array), type=new_type.element_type)).result
        elif op.name == "tensor.empty":
            with ir.InsertionPoint(before):
                result = tensor.EmptyOp(list(new_type.shape), new_type.element_type).result
        else:  # every other op the analysis accepted maps dims with _backward_dims
            operands = {k: self.sliced(op.operands[k], kdims, before) for k, kdims in _backward_dims(op, dims) if kdims}
            clone = op.clone(ip=ir.InsertionPoint(before))
            for k, v in operands.items():
                clone.operands[k] = v
            if op.name == "tensor.expand_shape":
                clone.attributes["static_output_shape"] = ir.DenseI64ArrayAttr.get(list(new_type.shape))
            clone.results[0].set_type(new_type)
            result = clone.results[0]
        self.memo[key] = result
        return result
